//! Password login attempts: brute-force protection and the audit trail.

use shellwego_core::time::{now, to_micros};
use shellwego_core::{id, Error};

use crate::{db_err, Conn};

pub async fn record(db: &mut Conn, email: &str, ip: &str, succeeded: bool) -> Result<(), Error> {
    sqlx::query("INSERT INTO login_attempts (id, email_normalized, ip, succeeded, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(id::new_id("login"))
        .bind(email.trim().to_lowercase())
        .bind(ip)
        .bind(i64::from(succeeded))
        .bind(to_micros(now()))
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Failures since `since_micros` for the account and for the IP, with the
/// time of the oldest failure that counts toward each limit.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Failures {
    pub account: i64,
    pub ip: i64,
}

const FAILURES: &str = "SELECT
   (SELECT COUNT(*) FROM login_attempts WHERE email_normalized = $1 AND succeeded = 0 AND created_at >= $3) AS account,
   (SELECT COUNT(*) FROM login_attempts WHERE ip = $2 AND succeeded = 0 AND created_at >= $3) AS ip";

/// Failures since `since_micros` for the account and for the IP.
pub async fn failures(
    db: &mut Conn,
    email: &str,
    ip: &str,
    since_micros: i64,
) -> Result<Failures, Error> {
    sqlx::query_as(FAILURES)
        .bind(email.trim().to_lowercase())
        .bind(ip)
        .bind(since_micros)
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)
}

/// When the `n`-th most recent failure (for the account, or the IP) was,
/// to know when a lock ends.
pub async fn nth_recent_failure(
    db: &mut Conn,
    email: Option<&str>,
    ip: Option<&str>,
    n: i64,
) -> Result<Option<i64>, Error> {
    let (col, val) = match (email, ip) {
        (Some(e), _) => ("email_normalized", e.trim().to_lowercase()),
        (None, Some(i)) => ("ip", i.to_string()),
        (None, None) => return Ok(None),
    };
    sqlx::query_scalar(&format!(
        "SELECT created_at FROM login_attempts WHERE {col} = $1 AND succeeded = 0 ORDER BY created_at DESC LIMIT 1 OFFSET {}",
        (n - 1).max(0)
    ))
    .bind(val)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)
}

/// Start an attempt: it counts as a failure until `succeeded` marks it, so
/// that concurrent guesses are counted before any of them is checked. On
/// PostgreSQL attempts for one account are serialized with an advisory
/// lock (SQLite's write transactions are serialized anyway). Returns the
/// attempt id and the failures in the window, this attempt included.
pub async fn begin(
    db: &mut Conn,
    email: &str,
    ip: &str,
    since_micros: i64,
) -> Result<(String, Failures), Error> {
    let email = email.trim().to_lowercase();
    if db.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT CAST(1 AS BIGINT) AS locked FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS l")
            .bind(&email)
            .fetch_one(&mut *db)
            .await
            .map_err(db_err)?;
    }
    let id = id::new_id("login");
    sqlx::query("INSERT INTO login_attempts (id, email_normalized, ip, succeeded, created_at) VALUES ($1, $2, $3, 0, $4)")
        .bind(&id)
        .bind(&email)
        .bind(ip)
        .bind(to_micros(now()))
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    let f = failures(db, &email, ip, since_micros).await?;
    Ok((id, f))
}

/// The attempt turned out right.
pub async fn succeeded(db: &mut Conn, attempt_id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE login_attempts SET succeeded = 1 WHERE id = $1")
        .bind(attempt_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}
