//! Rate-limit buckets in the database, shared by every replica (GCRA; see
//! migration 0014 and `shellwego_server::ratelimit`).

use shellwego_core::Error;

use crate::{db_err, Conn};

/// Admit one request of bucket `key` at `now` (microseconds), where each
/// request costs `interval` and the bucket holds `capacity` (= burst ×
/// interval): `Ok(tat)` with the bucket's new theoretical arrival time, or
/// `Err(tat)` with its current one when the request is refused.
pub async fn admit(
    db: &mut Conn,
    key: &str,
    now: i64,
    interval: i64,
    capacity: i64,
) -> Result<Result<i64, i64>, Error> {
    // One statement: the update happens only when the request fits, so
    // two replicas admitting at once cannot both spend the last token.
    let admitted: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO rate_limits (key, tat) VALUES ($1, $2 + $3)
         ON CONFLICT (key) DO UPDATE
             SET tat = CASE WHEN rate_limits.tat > $2 THEN rate_limits.tat ELSE $2 END + $3
             WHERE CASE WHEN rate_limits.tat > $2 THEN rate_limits.tat ELSE $2 END + $3 - $2 <= $4
         RETURNING tat",
    )
    .bind(key)
    .bind(now)
    .bind(interval)
    .bind(capacity)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    if let Some((tat,)) = admitted {
        return Ok(Ok(tat));
    }
    let (tat,): (i64,) = sqlx::query_as("SELECT tat FROM rate_limits WHERE key = $1")
        .bind(key)
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(Err(tat))
}

/// Delete the buckets that are full again (their time has passed).
pub async fn sweep(db: &mut Conn, now: i64) -> Result<u64, Error> {
    let done = sqlx::query("DELETE FROM rate_limits WHERE tat <= $1")
        .bind(now)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(done.rows_affected())
}
