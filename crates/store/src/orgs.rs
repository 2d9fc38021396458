//! Organizations and memberships.

use serde_json::Value;
use shellwego_core::plan::Plan;
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{db_err, json_col, Store, Tx};

#[derive(Debug, Clone, PartialEq)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub plan: Plan,
    pub settings: Value,
    pub billing: Value,
    pub created_at: Timestamp,
}

const COLUMNS: &str = "o.id, o.name, o.slug, o.plan, o.settings, o.billing, o.created_at";

fn from_row(row: &AnyRow) -> Result<Organization, Error> {
    Ok(Organization {
        id: row.try_get("id").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        slug: row.try_get("slug").map_err(db_err)?,
        plan: Plan::parse(&row.try_get::<String, _>("plan").map_err(db_err)?),
        settings: json_col(row, "settings")?,
        billing: json_col(row, "billing")?,
        created_at: from_micros(row.try_get("created_at").map_err(db_err)?),
    })
}

pub async fn create(
    tx: &mut Tx,
    name: &str,
    slug: &str,
    plan: Plan,
) -> Result<Organization, Error> {
    let id = id::new_id("org");
    let t = now();
    sqlx::query("INSERT INTO organizations (id, name, slug, plan, settings, billing, created_at, updated_at) VALUES ($1, $2, $3, $4, '{}', '{}', $5, $5)")
        .bind(&id)
        .bind(name)
        .bind(slug)
        .bind(plan.as_str())
        .bind(to_micros(t))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(Organization {
        id,
        name: name.into(),
        slug: slug.into(),
        plan,
        settings: Value::Object(Default::default()),
        billing: Value::Object(Default::default()),
        created_at: from_micros(to_micros(t)),
    })
}

pub async fn add_member(tx: &mut Tx, org_id: &str, user_id: &str, role: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO memberships (organization_id, user_id, role, resources, created_at) VALUES ($1, $2, $3, '[]', $4)")
        .bind(org_id)
        .bind(user_id)
        .bind(role)
        .bind(to_micros(now()))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

impl Store {
    /// The organizations `user_id` belongs to, with the user's role in each,
    /// oldest membership first.
    pub async fn memberships_of(
        &self,
        user_id: &str,
    ) -> Result<Vec<(Organization, String)>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, m.role FROM memberships m JOIN organizations o ON o.id = m.organization_id WHERE m.user_id = $1 ORDER BY m.created_at, o.id"
        ))
        .bind(user_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    from_row(r)?,
                    r.try_get::<String, _>("role").map_err(db_err)?,
                ))
            })
            .collect()
    }

    pub async fn organization(&self, org_id: &str) -> Result<Option<Organization>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM organizations o WHERE o.id = $1"
        ))
        .bind(org_id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(from_row).transpose()
    }
}
