//! Users.

use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{db_err, Store, Tx};

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub avatar_url: Option<String>,
    pub mfa_enabled: bool,
    pub created_at: Timestamp,
}

fn from_row(row: &AnyRow) -> Result<User, Error> {
    Ok(User {
        id: row.try_get("id").map_err(db_err)?,
        email: row.try_get("email").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        avatar_url: row.try_get("avatar_url").map_err(db_err)?,
        mfa_enabled: row.try_get::<i64, _>("mfa_enabled").map_err(db_err)? != 0,
        created_at: from_micros(row.try_get("created_at").map_err(db_err)?),
    })
}

/// Create a user. `password_hash` is an argon2id PHC string.
pub async fn create(
    tx: &mut Tx,
    email: &str,
    name: &str,
    password_hash: &str,
) -> Result<User, Error> {
    let id = id::new_id("usr");
    let t = to_micros(now());
    sqlx::query(
        "INSERT INTO users (id, email, email_normalized, name, avatar_url, password_hash, mfa_enabled, created_at, updated_at)
         VALUES ($1, $2, $3, $4, NULL, $5, 0, $6, $6)",
    )
    .bind(&id)
    .bind(email)
    .bind(email.to_lowercase())
    .bind(name)
    .bind(password_hash)
    .bind(t)
    .execute(&mut **tx)
    .await
    .map_err(|e| match db_err(e) {
        Error::Conflict(_) => Error::Conflict(format!("a user with email '{email}' already exists")),
        other => other,
    })?;
    Ok(User {
        id,
        email: email.into(),
        name: name.into(),
        avatar_url: None,
        mfa_enabled: false,
        created_at: from_micros(t),
    })
}

impl Store {
    pub async fn user(&self, user_id: &str) -> Result<Option<User>, Error> {
        let row = sqlx::query(
            "SELECT id, email, name, avatar_url, mfa_enabled, created_at FROM users WHERE id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(from_row).transpose()
    }
}
