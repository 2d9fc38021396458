//! Service accounts: non-human members of an organization (CI/CD), holding
//! `sat_` tokens.

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::list::{FieldSql, Resource};
use crate::{db_err, json_col, to_json, Tx};

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccount {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub role: String,
    pub scope: Vec<String>,
    pub created_at: Timestamp,
}

pub fn from_row(row: &AnyRow) -> Result<ServiceAccount, Error> {
    Ok(ServiceAccount {
        id: row.try_get("id").map_err(db_err)?,
        organization_id: row.try_get("organization_id").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        role: row.try_get("role").map_err(db_err)?,
        scope: json_col(row, "scope")?,
        created_at: from_micros(row.try_get("created_at").map_err(db_err)?),
    })
}

pub static SERVICE_ACCOUNTS: Resource = Resource {
    schema: &ListSchema {
        name: "service_accounts",
        fields: &[
            FieldSpec::new("name", Kind::Text),
            FieldSpec::new("role", Kind::Text),
            FieldSpec::new("created_at", Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", Dir::Desc)],
    },
    // Deleted accounts are kept for the record, not listed.
    from: "(SELECT * FROM service_accounts WHERE deleted_at IS NULL) t",
    columns: "t.id, t.organization_id, t.name, t.role, t.scope, t.created_at",
    fields: &[
        FieldSql::new("name", "t.name"),
        FieldSql::new("role", "t.role"),
        FieldSql::new("created_at", "t.created_at"),
    ],
    search: &["t.name"],
    labels: None,
};

pub async fn create(
    tx: &mut Tx,
    org_id: &str,
    name: &str,
    role: &str,
    scope: &[String],
    created_by: Option<&str>,
) -> Result<ServiceAccount, Error> {
    let id = id::new_id("sa");
    let t = to_micros(now());
    sqlx::query("INSERT INTO service_accounts (id, organization_id, name, role, scope, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&id)
        .bind(org_id)
        .bind(name)
        .bind(role)
        .bind(to_json(&scope))
        .bind(created_by)
        .bind(t)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(ServiceAccount {
        id,
        organization_id: org_id.into(),
        name: name.into(),
        role: role.into(),
        scope: scope.to_vec(),
        created_at: from_micros(t),
    })
}

/// Delete a service account and revoke its tokens.
pub async fn delete(tx: &mut Tx, org_id: &str, sa_id: &str) -> Result<bool, Error> {
    let t = to_micros(now());
    let r = sqlx::query("UPDATE service_accounts SET deleted_at = $1 WHERE id = $2 AND organization_id = $3 AND deleted_at IS NULL")
        .bind(t)
        .bind(sa_id)
        .bind(org_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    sqlx::query(
        "UPDATE tokens SET revoked_at = $1 WHERE service_account_id = $2 AND revoked_at IS NULL",
    )
    .bind(t)
    .bind(sa_id)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}
