//! Interactive exec sessions and their relayed frames (migration 0025).

use shellwego_core::time::{now, to_micros, Timestamp};
use shellwego_core::Error;

use crate::{db_err, Conn};

pub async fn insert(
    db: &mut Conn,
    id: &str,
    organization_id: &str,
    node_id: &str,
    instance_id: &str,
    expires_at: Timestamp,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO exec_sessions (id, organization_id, node_id, instance_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(organization_id)
    .bind(node_id)
    .bind(instance_id)
    .bind(to_micros(now()))
    .bind(to_micros(expires_at))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// The session's node, while it lasts.
pub async fn node_of(db: &mut Conn, id: &str) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT node_id FROM exec_sessions WHERE id = $1 AND expires_at > $2")
        .bind(id)
        .bind(to_micros(now()))
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

pub async fn renew(db: &mut Conn, id: &str, expires_at: Timestamp) -> Result<(), Error> {
    sqlx::query("UPDATE exec_sessions SET expires_at = $1 WHERE id = $2")
        .bind(to_micros(expires_at))
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// End a session: its row and frames.
pub async fn delete(db: &mut Conn, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM exec_sessions WHERE id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM exec_frames WHERE session_id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn put_frame(
    db: &mut Conn,
    id: &str,
    dir: &str,
    seq: i64,
    body: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO exec_frames (session_id, dir, seq, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (session_id, dir, seq) DO NOTHING",
    )
    .bind(id)
    .bind(dir)
    .bind(seq)
    .bind(body)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Frames of a direction after `after`, oldest first (at most 500); those
/// up to `after` are deleted (the reader has them).
pub async fn frames_after(
    db: &mut Conn,
    id: &str,
    dir: &str,
    after: i64,
) -> Result<Vec<String>, Error> {
    sqlx::query("DELETE FROM exec_frames WHERE session_id = $1 AND dir = $2 AND seq <= $3")
        .bind(id)
        .bind(dir)
        .bind(after)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query_scalar(
        "SELECT body FROM exec_frames WHERE session_id = $1 AND dir = $2 AND seq > $3 ORDER BY seq LIMIT 500",
    )
    .bind(id)
    .bind(dir)
    .bind(after)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// Sessions whose holder died, and their frames.
pub async fn delete_expired(db: &mut Conn, before: Timestamp) -> Result<u64, Error> {
    let n = sqlx::query("DELETE FROM exec_sessions WHERE expires_at < $1")
        .bind(to_micros(before))
        .execute(&mut *db)
        .await
        .map_err(db_err)?
        .rows_affected();
    sqlx::query("DELETE FROM exec_frames WHERE session_id NOT IN (SELECT id FROM exec_sessions)")
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(n)
}
