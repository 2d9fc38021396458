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

/// What a password login needs to know about a user.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: Option<String>,
    /// Encrypted TOTP secret, when MFA is on.
    pub mfa_secret_enc: Option<String>,
    /// Encrypted TOTP secret awaiting confirmation.
    pub mfa_pending_enc: Option<String>,
}

const CRED_COLUMNS: &str = "id, email, name, avatar_url, mfa_enabled, created_at, password_hash, mfa_secret_enc, mfa_pending_enc";

fn credentials_from_row(row: &AnyRow) -> Result<Credentials, Error> {
    Ok(Credentials {
        user: from_row(row)?,
        password_hash: row.try_get("password_hash").map_err(db_err)?,
        mfa_secret_enc: row.try_get("mfa_secret_enc").map_err(db_err)?,
        mfa_pending_enc: row.try_get("mfa_pending_enc").map_err(db_err)?,
    })
}

impl Store {
    pub async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {CRED_COLUMNS} FROM users WHERE email_normalized = $1"
        ))
        .bind(email.trim().to_lowercase())
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(credentials_from_row).transpose()
    }

    pub async fn credentials(&self, user_id: &str) -> Result<Option<Credentials>, Error> {
        let row = sqlx::query(&format!("SELECT {CRED_COLUMNS} FROM users WHERE id = $1"))
            .bind(user_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(credentials_from_row).transpose()
    }
}

/// Change name and avatar (None leaves a field alone).
pub async fn update_profile(
    tx: &mut Tx,
    user_id: &str,
    name: Option<&str>,
    avatar_url: Option<&str>,
) -> Result<(), Error> {
    sqlx::query("UPDATE users SET name = COALESCE($1, name), avatar_url = COALESCE($2, avatar_url), updated_at = $3 WHERE id = $4")
        .bind(name)
        .bind(avatar_url)
        .bind(to_micros(now()))
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn set_password(tx: &mut Tx, user_id: &str, password_hash: &str) -> Result<(), Error> {
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(password_hash)
        .bind(to_micros(now()))
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Store an encrypted TOTP secret awaiting confirmation.
pub async fn set_mfa_pending(tx: &mut Tx, user_id: &str, secret_enc: &str) -> Result<(), Error> {
    sqlx::query("UPDATE users SET mfa_pending_enc = $1, updated_at = $2 WHERE id = $3")
        .bind(secret_enc)
        .bind(to_micros(now()))
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Turn MFA on with the pending secret and these recovery code hashes, or
/// off (secret None), replacing any recovery codes.
pub async fn set_mfa(
    tx: &mut Tx,
    user_id: &str,
    secret_enc: Option<&str>,
    recovery_hashes: &[String],
) -> Result<(), Error> {
    let t = to_micros(now());
    sqlx::query("UPDATE users SET mfa_secret_enc = $1, mfa_pending_enc = NULL, mfa_enabled = $2, updated_at = $3 WHERE id = $4")
        .bind(secret_enc)
        .bind(i64::from(secret_enc.is_some()))
        .bind(t)
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    for h in recovery_hashes {
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash, used_at, created_at) VALUES ($1, $2, NULL, $3)")
            .bind(user_id)
            .bind(h)
            .bind(t)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Use up a recovery code. False when it does not exist or was used.
pub async fn use_recovery_code(tx: &mut Tx, user_id: &str, code_hash: &str) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL")
        .bind(to_micros(now()))
        .bind(user_id)
        .bind(code_hash)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// Accept a TOTP time step for a user if it is newer than the last one
/// accepted (a code cannot be replayed). False when it is not.
pub async fn use_totp_step(tx: &mut Tx, user_id: &str, step: i64) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE users SET mfa_last_step = $1 WHERE id = $2 AND (mfa_last_step IS NULL OR mfa_last_step < $1)")
        .bind(step)
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}
