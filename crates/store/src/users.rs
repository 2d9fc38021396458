//! Users.

use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, Error};

use crate::{db_err, Conn};

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub avatar_url: Option<String>,
    pub mfa_enabled: bool,
    pub created_at: Timestamp,
}

/// A `users` row as stored (`USER_COLUMNS`).
#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    name: String,
    avatar_url: Option<String>,
    mfa_enabled: i64,
    created_at: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            id: r.id,
            email: r.email,
            name: r.name,
            avatar_url: r.avatar_url,
            mfa_enabled: crate::flag(r.mfa_enabled),
            created_at: crate::time(r.created_at),
        }
    }
}

const USER_COLUMNS: &str = "id, email, name, avatar_url, mfa_enabled, created_at";

/// Create a user. `password_hash` is an argon2id PHC string.
pub async fn create(
    db: &mut Conn,
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
    .execute(&mut *db)
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

pub async fn get(db: &mut Conn, user_id: &str) -> Result<Option<User>, Error> {
    let row =
        sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(user_id)
            .fetch_optional(&mut *db)
            .await
            .map_err(db_err)?;
    Ok(row.map(User::from))
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

/// A `users` row with its credentials (`CRED_COLUMNS`).
#[derive(sqlx::FromRow)]
struct CredentialsRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: Option<String>,
    mfa_secret_enc: Option<String>,
    mfa_pending_enc: Option<String>,
}

impl From<CredentialsRow> for Credentials {
    fn from(r: CredentialsRow) -> Credentials {
        Credentials {
            user: r.user.into(),
            password_hash: r.password_hash,
            mfa_secret_enc: r.mfa_secret_enc,
            mfa_pending_enc: r.mfa_pending_enc,
        }
    }
}

const CRED_COLUMNS: &str = "id, email, name, avatar_url, mfa_enabled, created_at, password_hash, mfa_secret_enc, mfa_pending_enc";

pub async fn credentials_by_email(
    db: &mut Conn,
    email: &str,
) -> Result<Option<Credentials>, Error> {
    let row = sqlx::query_as::<_, CredentialsRow>(&format!(
        "SELECT {CRED_COLUMNS} FROM users WHERE email_normalized = $1"
    ))
    .bind(email.trim().to_lowercase())
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(row.map(Credentials::from))
}

pub async fn credentials(db: &mut Conn, user_id: &str) -> Result<Option<Credentials>, Error> {
    let row = sqlx::query_as::<_, CredentialsRow>(&format!(
        "SELECT {CRED_COLUMNS} FROM users WHERE id = $1"
    ))
    .bind(user_id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(row.map(Credentials::from))
}

/// Change name and avatar (None leaves a field alone).
pub async fn update_profile(
    db: &mut Conn,
    user_id: &str,
    name: Option<&str>,
    avatar_url: Option<&str>,
) -> Result<(), Error> {
    sqlx::query("UPDATE users SET name = COALESCE($1, name), avatar_url = COALESCE($2, avatar_url), updated_at = $3 WHERE id = $4")
        .bind(name)
        .bind(avatar_url)
        .bind(to_micros(now()))
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn set_password(db: &mut Conn, user_id: &str, password_hash: &str) -> Result<(), Error> {
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(password_hash)
        .bind(to_micros(now()))
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Store an encrypted TOTP secret awaiting confirmation.
pub async fn set_mfa_pending(db: &mut Conn, user_id: &str, secret_enc: &str) -> Result<(), Error> {
    sqlx::query("UPDATE users SET mfa_pending_enc = $1, updated_at = $2 WHERE id = $3")
        .bind(secret_enc)
        .bind(to_micros(now()))
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Turn MFA on with the pending secret and these recovery code hashes, or
/// off (secret None), replacing any recovery codes.
pub async fn set_mfa(
    db: &mut Conn,
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
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    for h in recovery_hashes {
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash, used_at, created_at) VALUES ($1, $2, NULL, $3)")
            .bind(user_id)
            .bind(h)
            .bind(t)
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Use up a recovery code. False when it does not exist or was used.
pub async fn use_recovery_code(
    db: &mut Conn,
    user_id: &str,
    code_hash: &str,
) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL")
        .bind(to_micros(now()))
        .bind(user_id)
        .bind(code_hash)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// Accept a TOTP time step for a user if it is newer than the last one
/// accepted (a code cannot be replayed). False when it is not.
pub async fn use_totp_step(db: &mut Conn, user_id: &str, step: i64) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE users SET mfa_last_step = $1 WHERE id = $2 AND (mfa_last_step IS NULL OR mfa_last_step < $1)")
        .bind(step)
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// TOTP secrets still sealed by the master key directly (written before
/// data keys existed): (user id, column, sealed value).
pub async fn master_sealed(db: &mut Conn) -> Result<Vec<(String, &'static str, String)>, Error> {
    let mut out = vec![];
    for col in ["mfa_secret_enc", "mfa_pending_enc"] {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT id, {col} FROM users WHERE {col} IS NOT NULL AND {col} NOT LIKE 'v1.%'"
        ))
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)?;
        out.extend(rows.into_iter().map(|(id, v)| (id, col, v)));
    }
    Ok(out)
}

/// Replace a sealed TOTP column (`col` from [`master_sealed`]).
pub async fn set_sealed(
    db: &mut Conn,
    user_id: &str,
    col: &str,
    sealed: &str,
) -> Result<(), Error> {
    let col = match col {
        "mfa_secret_enc" => "mfa_secret_enc",
        "mfa_pending_enc" => "mfa_pending_enc",
        other => return Err(Error::Internal(format!("not a sealed column: {other}"))),
    };
    sqlx::query(&format!("UPDATE users SET {col} = $1 WHERE id = $2"))
        .bind(sealed)
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}
