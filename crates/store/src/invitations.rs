//! Invitations to join an organization, redeemed with a one-time token
//! (only its hash is stored).

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, token, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, to_json, Conn};

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

/// An `invitations` row as stored (`COLUMNS`).
#[derive(sqlx::FromRow)]
struct InvitationRow {
    id: String,
    organization_id: String,
    email: String,
    role: String,
    resources: String,
    created_at: i64,
    expires_at: i64,
    accepted_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<InvitationRow> for Invitation {
    type Error = Error;
    fn try_from(r: InvitationRow) -> Result<Invitation, Error> {
        Ok(Invitation {
            resources: crate::doc("invitations", &r.id, "resources", &r.resources)?,
            id: r.id,
            organization_id: r.organization_id,
            email: r.email,
            role: r.role,
            created_at: crate::time(r.created_at),
            expires_at: crate::time(r.expires_at),
            accepted_at: crate::opt_time(r.accepted_at),
            revoked_at: crate::opt_time(r.revoked_at),
        })
    }
}

/// An invitation from a row of `COLUMNS`.
pub fn from_row(row: &AnyRow) -> Result<Invitation, Error> {
    crate::decode::<InvitationRow, _>(row)
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
    db: &mut Conn,
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
    .execute(&mut *db)
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

/// The invitation a token stands for, locked for the rest of the
/// transaction (PostgreSQL; SQLite's write transactions are serialized).
pub async fn by_token_for_update(db: &mut Conn, secret: &str) -> Result<Option<Invitation>, Error> {
    let lock = if db.backend_name() == "PostgreSQL" {
        " FOR UPDATE"
    } else {
        ""
    };
    find_by_token(db, secret, lock).await
}

/// The invitation a token stands for, read without locking.
pub async fn by_token(db: &mut Conn, secret: &str) -> Result<Option<Invitation>, Error> {
    find_by_token(db, secret, "").await
}

async fn find_by_token(
    db: &mut Conn,
    secret: &str,
    lock: &str,
) -> Result<Option<Invitation>, Error> {
    sqlx::query_as::<_, InvitationRow>(&format!(
        "SELECT {COLUMNS} FROM invitations t WHERE t.token_hash = $1{lock}"
    ))
    .bind(token::hash(secret))
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?
    .map(Invitation::try_from)
    .transpose()
}

pub async fn mark_accepted(db: &mut Conn, inv_id: &str, user_id: &str) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE invitations SET accepted_at = $1, accepted_by = $2 WHERE id = $3 AND accepted_at IS NULL AND revoked_at IS NULL")
        .bind(to_micros(now()))
        .bind(user_id)
        .bind(inv_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

pub async fn revoke(db: &mut Conn, org_id: &str, inv_id: &str) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE invitations SET revoked_at = $1 WHERE id = $2 AND organization_id = $3 AND revoked_at IS NULL AND accepted_at IS NULL")
        .bind(to_micros(now()))
        .bind(inv_id)
        .bind(org_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}
