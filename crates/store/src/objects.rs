//! Objects kept in the database: each one a sequence of chunks
//! (`object_chunks`, migration 0013), written one chunk per statement (an
//! archive of a gigabyte is never one transaction) and read one chunk at a
//! time (never whole in memory).

use shellwego_core::Error;

use crate::{db_err, Conn};

/// Store chunk `seq` of object `key`.
pub async fn put_chunk(db: &mut Conn, key: &str, seq: i64, data: &[u8]) -> Result<(), Error> {
    sqlx::query("INSERT INTO object_chunks (key, seq, data) VALUES ($1, $2, $3)")
        .bind(key)
        .bind(seq)
        .bind(data)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Chunk `seq` of object `key`, if there is one.
pub async fn chunk(db: &mut Conn, key: &str, seq: i64) -> Result<Option<Vec<u8>>, Error> {
    let row: Option<(Vec<u8>,)> =
        sqlx::query_as("SELECT data FROM object_chunks WHERE key = $1 AND seq = $2")
            .bind(key)
            .bind(seq)
            .fetch_optional(&mut *db)
            .await
            .map_err(db_err)?;
    Ok(row.map(|(d,)| d))
}

/// The size of object `key` in bytes; `None` when there is no such object.
pub async fn size(db: &mut Conn, key: &str) -> Result<Option<u64>, Error> {
    let (n, size): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) FROM object_chunks WHERE key = $1",
    )
    .bind(key)
    .fetch_one(&mut *db)
    .await
    .map_err(db_err)?;
    Ok((n > 0).then_some(size.max(0) as u64))
}

/// Delete object `key` (all its chunks).
pub async fn delete(db: &mut Conn, key: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM object_chunks WHERE key = $1")
        .bind(key)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}
