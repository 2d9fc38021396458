//! Service accounts: non-human members of an organization (CI/CD), holding
//! `sat_` tokens.

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, to_json, Conn};

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccount {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub role: String,
    pub scope: Vec<String>,
    pub created_at: Timestamp,
}

/// A `service_accounts` row as stored ([`SERVICE_ACCOUNTS`]' columns).
#[derive(sqlx::FromRow)]
struct ServiceAccountRow {
    id: String,
    organization_id: String,
    name: String,
    role: String,
    scope: String,
    created_at: i64,
}

impl TryFrom<ServiceAccountRow> for ServiceAccount {
    type Error = Error;
    fn try_from(r: ServiceAccountRow) -> Result<ServiceAccount, Error> {
        Ok(ServiceAccount {
            scope: crate::doc("service_accounts", &r.id, "scope", &r.scope)?,
            id: r.id,
            organization_id: r.organization_id,
            name: r.name,
            role: r.role,
            created_at: crate::time(r.created_at),
        })
    }
}

/// A service account from a row of [`SERVICE_ACCOUNTS`]' columns.
pub fn from_row(row: &AnyRow) -> Result<ServiceAccount, Error> {
    crate::decode::<ServiceAccountRow, _>(row)
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
    db: &mut Conn,
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
        .execute(&mut *db)
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
pub async fn delete(db: &mut Conn, org_id: &str, sa_id: &str) -> Result<bool, Error> {
    let t = to_micros(now());
    let r = sqlx::query("UPDATE service_accounts SET deleted_at = $1 WHERE id = $2 AND organization_id = $3 AND deleted_at IS NULL")
        .bind(t)
        .bind(sa_id)
        .bind(org_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query(
        "UPDATE tokens SET revoked_at = $1 WHERE service_account_id = $2 AND revoked_at IS NULL",
    )
    .bind(t)
    .bind(sa_id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}
