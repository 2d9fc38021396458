//! Invitations to join an organization, redeemed with a one-time token
//! (only its hash is stored).

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, token, Error};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::list::{FieldSql, Resource};
use crate::{db_err, json_col, to_json, Store, Tx};

#[derive(Debug, Clone, PartialEq)]
pub struct Invitation {
    pub id: String,
    pub organization_id: String,
    pub email: String,
    pub role: String,
    pub resources: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl Invitation {
    pub fn status(&self) -> &'static str {
        if self.accepted_at.is_some() {
            "accepted"
        } else if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now() {
            "expired"
        } else {
            "pending"
        }
    }
}

const COLUMNS: &str = "t.id, t.organization_id, t.email, t.role, t.resources, t.created_at, t.expires_at, t.accepted_at, t.revoked_at";

pub fn from_row(row: &AnyRow) -> Result<Invitation, Error> {
    let opt = |c: &str| -> Result<Option<Timestamp>, Error> {
        Ok(row
            .try_get::<Option<i64>, _>(c)
            .map_err(db_err)?
            .map(from_micros))
    };
    Ok(Invitation {
        id: row.try_get("id").map_err(db_err)?,
        organization_id: row.try_get("organization_id").map_err(db_err)?,
        email: row.try_get("email").map_err(db_err)?,
        role: row.try_get("role").map_err(db_err)?,
        resources: json_col(row, "resources")?,
        created_at: from_micros(row.try_get("created_at").map_err(db_err)?),
        expires_at: from_micros(row.try_get("expires_at").map_err(db_err)?),
        accepted_at: opt("accepted_at")?,
        revoked_at: opt("revoked_at")?,
    })
}

pub static INVITATIONS: Resource = Resource {
    schema: &ListSchema {
        name: "invitations",
        fields: &[
            FieldSpec::new("email", Kind::Text),
            FieldSpec::new("role", Kind::Text),
            FieldSpec::new("created_at", Kind::Time),
            FieldSpec::new("expires_at", Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", Dir::Desc)],
    },
    from: "invitations t",
    columns: COLUMNS,
    fields: &[
        FieldSql::new("email", "t.email"),
        FieldSql::new("role", "t.role"),
        FieldSql::new("created_at", "t.created_at"),
        FieldSql::new("expires_at", "t.expires_at"),
    ],
    search: &["t.email"],
    labels: None,
};

/// Create an invitation; returns it with its one-time token (`inv_…`).
pub async fn create(
    tx: &mut Tx,
    org_id: &str,
    email: &str,
    role: &str,
    resources: &[String],
    lifetime: std::time::Duration,
    created_by: Option<&str>,
) -> Result<(Invitation, String), Error> {
    let t = token::generate(token::TokenKind::Temp);
    let secret = format!("inv_{}", &t.secret["temp_".len()..]);
    let id = id::new_id("inv");
    let created = to_micros(now());
    let expires = created + i64::try_from(lifetime.as_micros()).unwrap_or(i64::MAX / 2);
    sqlx::query(
        "INSERT INTO invitations (id, organization_id, email, email_normalized, role, resources, token_hash, created_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(org_id)
    .bind(email.trim())
    .bind(email.trim().to_lowercase())
    .bind(role)
    .bind(to_json(&resources))
    .bind(token::hash(&secret))
    .bind(created_by)
    .bind(created)
    .bind(expires)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    let inv = Invitation {
        id,
        organization_id: org_id.into(),
        email: email.trim().into(),
        role: role.into(),
        resources: resources.to_vec(),
        created_at: from_micros(created),
        expires_at: from_micros(expires),
        accepted_at: None,
        revoked_at: None,
    };
    Ok((inv, secret))
}

/// The invitation a token stands for (in a transaction, locked for update
/// on PostgreSQL).
pub async fn by_token(
    tx: &mut Tx,
    secret: &str,
    postgres: bool,
) -> Result<Option<Invitation>, Error> {
    let lock = if postgres { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM invitations t WHERE t.token_hash = $1{lock}"
    ))
    .bind(token::hash(secret))
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?;
    row.as_ref().map(from_row).transpose()
}

pub async fn mark_accepted(tx: &mut Tx, inv_id: &str, user_id: &str) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE invitations SET accepted_at = $1, accepted_by = $2 WHERE id = $3 AND accepted_at IS NULL AND revoked_at IS NULL")
        .bind(to_micros(now()))
        .bind(user_id)
        .bind(inv_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

pub async fn revoke(tx: &mut Tx, org_id: &str, inv_id: &str) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE invitations SET revoked_at = $1 WHERE id = $2 AND organization_id = $3 AND revoked_at IS NULL AND accepted_at IS NULL")
        .bind(to_micros(now()))
        .bind(inv_id)
        .bind(org_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

impl Store {
    pub fn is_postgres(&self) -> bool {
        self.backend() == crate::Backend::Postgres
    }
}

impl Store {
    /// The invitation a token stands for, read without locking.
    pub async fn invitation_by_token(&self, secret: &str) -> Result<Option<Invitation>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM invitations t WHERE t.token_hash = $1"
        ))
        .bind(token::hash(secret))
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(from_row).transpose()
    }
}
