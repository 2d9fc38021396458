//! Follows of app logs and the lines pushed for them (see migration 0022).

use shellwego_core::time::{now, to_micros, Timestamp};
use shellwego_core::Error;

use crate::{db_err, Conn};

pub struct Follow {
    pub id: String,
    pub app_id: String,
    /// The agent's filter (JSON).
    pub filter: String,
}

pub async fn insert(
    db: &mut Conn,
    id: &str,
    organization_id: &str,
    app_id: &str,
    filter: &str,
    expires_at: Timestamp,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO log_follows (id, organization_id, app_id, filter, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(organization_id)
    .bind(app_id)
    .bind(filter)
    .bind(to_micros(now()))
    .bind(to_micros(expires_at))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Keep the follow alive until `expires_at`; false when it is gone.
pub async fn renew(db: &mut Conn, id: &str, expires_at: Timestamp) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE log_follows SET expires_at = $1 WHERE id = $2")
        .bind(to_micros(expires_at))
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// End a follow: its row and whatever was pushed for it.
pub async fn delete(db: &mut Conn, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM log_follows WHERE id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM log_chunks WHERE follow_id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The organization's follows not expired, oldest first (its nodes' agents
/// push for them).
pub async fn live(db: &mut Conn, organization_id: &str) -> Result<Vec<Follow>, Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, app_id, filter FROM log_follows WHERE organization_id = $1 AND expires_at > $2
         ORDER BY created_at, id",
    )
    .bind(organization_id)
    .bind(to_micros(now()))
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|(id, app_id, filter)| Follow { id, app_id, filter })
        .collect())
}

/// How many follows are held (expired or not).
pub async fn count(db: &mut Conn) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM log_follows")
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)
}

/// Store a node's push for a live follow; false when there is no such
/// follow (it ended: the agent stops pushing).
pub async fn push(
    db: &mut Conn,
    follow_id: &str,
    node_id: &str,
    chunk_id: &str,
    body: &str,
) -> Result<bool, Error> {
    let at = to_micros(now());
    let r = sqlx::query(
        "INSERT INTO log_chunks (id, follow_id, node_id, body, created_at)
         SELECT $1, id, $3, $4, $5 FROM log_follows WHERE id = $2 AND expires_at > $5",
    )
    .bind(chunk_id)
    .bind(follow_id)
    .bind(node_id)
    .bind(body)
    .bind(at)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// Take the follow's pushes (node id, body), oldest first: read and
/// deleted.
pub async fn take(db: &mut Conn, follow_id: &str) -> Result<Vec<(String, String)>, Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, node_id, body FROM log_chunks WHERE follow_id = $1 ORDER BY created_at, id LIMIT 200",
    )
    .bind(follow_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    for (id, ..) in &rows {
        sqlx::query("DELETE FROM log_chunks WHERE id = $1")
            .bind(id)
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
    }
    Ok(rows.into_iter().map(|(_, n, b)| (n, b)).collect())
}

/// Remove follows that expired before `before` (their holder died) and
/// pushes no follow takes any more.
pub async fn delete_expired(db: &mut Conn, before: Timestamp) -> Result<u64, Error> {
    let r = sqlx::query("DELETE FROM log_follows WHERE expires_at < $1")
        .bind(to_micros(before))
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM log_chunks WHERE follow_id NOT IN (SELECT id FROM log_follows)")
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected())
}
