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
    org_from_row(row)
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

/// How many organizations on the Free plan `user_id` owns. Concurrent
/// calls for one user are serialized until the transaction ends (an
/// advisory lock on PostgreSQL; SQLite's write transactions are serialized
/// anyway), so two concurrent creations cannot both see room for one more.
pub async fn free_orgs_owned(tx: &mut Tx, user_id: &str) -> Result<i64, Error> {
    if tx.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT CAST(1 AS BIGINT) AS locked FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS l")
            .bind(format!("free-orgs:{user_id}"))
            .fetch_one(&mut **tx)
            .await
            .map_err(db_err)?;
    }
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM memberships m JOIN organizations o ON o.id = m.organization_id
         WHERE m.user_id = $1 AND m.role = 'owner' AND o.plan = 'free'",
    )
    .bind(user_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(db_err)?;
    row.try_get::<i64, _>("n").map_err(db_err)
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

/// Organizations a user belongs to, as a list resource (scope: `m.user_id`).
pub static ORGANIZATIONS: crate::list::Resource = crate::list::Resource {
    schema: &shellwego_core::list::ListSchema {
        name: "organizations",
        fields: &[
            shellwego_core::list::FieldSpec::new("name", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("slug", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("plan", shellwego_core::list::Kind::Text).one_of(&["free", "starter", "growth", "enterprise"]),
            shellwego_core::list::FieldSpec::new("role", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("created_at", shellwego_core::list::Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", shellwego_core::list::Dir::Desc)],
    },
    from: "(SELECT o.id, o.name, o.slug, o.plan, o.settings, o.billing, o.created_at, m.user_id AS member_id, m.role
            FROM organizations o JOIN memberships m ON m.organization_id = o.id) t",
    columns: "t.id, t.name, t.slug, t.plan, t.settings, t.billing, t.created_at, t.role",
    fields: &[
        crate::list::FieldSql::new("name", "t.name"),
        crate::list::FieldSql::new("slug", "t.slug"),
        crate::list::FieldSql::new("plan", "t.plan"),
        crate::list::FieldSql::new("role", "t.role"),
        crate::list::FieldSql::new("created_at", "t.created_at"),
    ],
    search: &["t.name", "t.slug"],
    labels: None,
};

pub fn org_from_row(row: &AnyRow) -> Result<Organization, Error> {
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

/// Change name, billing and settings (None leaves a field alone).
pub async fn update(
    tx: &mut Tx,
    org_id: &str,
    name: Option<&str>,
    billing: Option<&Value>,
    settings: Option<&Value>,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE organizations SET name = COALESCE($1, name), billing = COALESCE($2, billing), settings = COALESCE($3, settings), updated_at = $4 WHERE id = $5",
    )
    .bind(name)
    .bind(billing.map(crate::to_json))
    .bind(settings.map(crate::to_json))
    .bind(to_micros(now()))
    .bind(org_id)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A member of an organization, with the user's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub resources: Vec<String>,
    pub mfa_enabled: bool,
    pub joined_at: Timestamp,
}

pub static MEMBERS: crate::list::Resource = crate::list::Resource {
    schema: &shellwego_core::list::ListSchema {
        name: "members",
        fields: &[
            shellwego_core::list::FieldSpec::new("role", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("email", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("name", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("created_at", shellwego_core::list::Kind::Time),
            shellwego_core::list::FieldSpec::new("joined_at", shellwego_core::list::Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", shellwego_core::list::Dir::Asc)],
    },
    from: "(SELECT m.organization_id, m.user_id AS id, m.role, m.resources, m.created_at, u.email, u.name, u.mfa_enabled
            FROM memberships m JOIN users u ON u.id = m.user_id) t",
    columns: "t.id, t.role, t.resources, t.created_at, t.email, t.name, t.mfa_enabled",
    fields: &[
        crate::list::FieldSql::new("role", "t.role"),
        crate::list::FieldSql::new("email", "t.email"),
        crate::list::FieldSql::new("name", "t.name"),
        crate::list::FieldSql::new("created_at", "t.created_at"),
        crate::list::FieldSql::new("joined_at", "t.created_at"),
    ],
    search: &["t.email", "t.name"],
    labels: None,
};

pub fn member_from_row(row: &AnyRow) -> Result<Member, Error> {
    Ok(Member {
        user_id: row.try_get("id").map_err(db_err)?,
        email: row.try_get("email").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        role: row.try_get("role").map_err(db_err)?,
        resources: json_col(row, "resources")?,
        mfa_enabled: row.try_get::<i64, _>("mfa_enabled").map_err(db_err)? != 0,
        joined_at: from_micros(row.try_get("created_at").map_err(db_err)?),
    })
}

/// The role of `user_id` in `org_id`, inside a transaction.
pub async fn member_role(
    tx: &mut Tx,
    org_id: &str,
    user_id: &str,
) -> Result<Option<String>, Error> {
    let row =
        sqlx::query("SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2")
            .bind(org_id)
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
    row.map(|r| r.try_get::<String, _>("role").map_err(db_err))
        .transpose()
}

/// The number of owners, with their rows locked until the transaction
/// ends (PostgreSQL; SQLite's write transactions are serialized anyway), so
/// two concurrent demotions cannot both see "another owner is left".
pub async fn count_owners(tx: &mut Tx, org_id: &str) -> Result<i64, Error> {
    let lock = match tx.backend_name() {
        "PostgreSQL" => " FOR UPDATE",
        _ => "",
    };
    let rows = sqlx::query(&format!(
        "SELECT user_id FROM memberships WHERE organization_id = $1 AND role = 'owner'{lock}"
    ))
    .bind(org_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(rows.len() as i64)
}

pub async fn update_member(
    tx: &mut Tx,
    org_id: &str,
    user_id: &str,
    role: Option<&str>,
    resources: Option<&[String]>,
) -> Result<(), Error> {
    sqlx::query("UPDATE memberships SET role = COALESCE($1, role), resources = COALESCE($2, resources) WHERE organization_id = $3 AND user_id = $4")
        .bind(role)
        .bind(resources.map(crate::to_json))
        .bind(org_id)
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn remove_member(tx: &mut Tx, org_id: &str, user_id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    // Their tokens for this organization stop working with the membership
    // (authentication checks it); revoke them too, for the record.
    sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE organization_id = $2 AND user_id = $3 AND revoked_at IS NULL")
        .bind(to_micros(now()))
        .bind(org_id)
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn add_member_with(
    tx: &mut Tx,
    org_id: &str,
    user_id: &str,
    role: &str,
    resources: &[String],
) -> Result<(), Error> {
    sqlx::query("INSERT INTO memberships (organization_id, user_id, role, resources, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(org_id)
        .bind(user_id)
        .bind(role)
        .bind(crate::to_json(&resources))
        .bind(to_micros(now()))
        .execute(&mut **tx)
        .await
        .map_err(|e| match db_err(e) {
            Error::Conflict(_) => Error::Conflict("the user is already a member of this organization".into()),
            other => other,
        })?;
    Ok(())
}

impl Store {
    /// A membership's resource restrictions.
    pub async fn member_resources(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> Result<Vec<String>, Error> {
        let row = sqlx::query(
            "SELECT resources FROM memberships WHERE organization_id = $1 AND user_id = $2",
        )
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        match row {
            Some(r) => json_col(&r, "resources"),
            None => Ok(vec![]),
        }
    }

    /// Rows counted for an organization's usage.
    /// `(nodes, members, memory used, apps)`.
    pub async fn org_usage(&self, org_id: &str) -> Result<(i64, i64, i64, i64), Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM nodes WHERE organization_id = $1) AS nodes,
                    (SELECT COUNT(*) FROM apps WHERE organization_id = $1) AS apps,
                    (SELECT COUNT(*) FROM memberships WHERE organization_id = $1) AS members,
                    (SELECT CAST(COALESCE(SUM(memory_total - memory_available), 0) AS BIGINT) FROM nodes WHERE organization_id = $1) AS memory",
        )
        .bind(org_id)
        .fetch_one(self.pool())
        .await
        .map_err(db_err)?;
        Ok((
            row.try_get("nodes").map_err(db_err)?,
            row.try_get("members").map_err(db_err)?,
            row.try_get("memory").map_err(db_err)?,
            row.try_get("apps").map_err(db_err)?,
        ))
    }
}

impl Store {
    /// The oldest organization (the one bootstrap made).
    pub async fn first_organization(&self) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT id FROM organizations ORDER BY created_at, id LIMIT 1")
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.map(|r| r.try_get::<String, _>("id").map_err(db_err))
            .transpose()
    }
}

/// An organization's settings (JSON), read inside a transaction.
pub async fn org_settings(tx: &mut Tx, org: &str) -> Result<serde_json::Value, Error> {
    let row = sqlx::query("SELECT settings FROM organizations WHERE id = $1")
        .bind(org)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)?;
    match row {
        None => Ok(serde_json::Value::Null),
        Some(r) => {
            let s: String = r.try_get("settings").map_err(db_err)?;
            crate::doc("organizations", org, "settings", &s)
        }
    }
}
