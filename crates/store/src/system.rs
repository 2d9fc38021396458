//! Installation-wide values in `system_state` that every replica must agree
//! on.

use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;

use crate::{db_err, Conn};

/// The value of `key`, set to `value` if it had none: the first replica to
/// ask decides, every later one reads what it decided.
pub async fn claim_value(db: &mut Conn, key: &str, value: &str) -> Result<String, Error> {
    sqlx::query(
        "INSERT INTO system_state (key, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(value)
    .bind(to_micros(now()))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    let (v,): (String,) = sqlx::query_as("SELECT value FROM system_state WHERE key = $1")
        .bind(key)
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(v)
}
