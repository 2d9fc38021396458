//! Leases: which control-plane replica leads each singleton controller,
//! under which term (see migration 0012).
//!
//! - [`acquire`] takes a lease nobody holds or whose holder let it expire,
//!   with a new term (one conditional upsert, so two replicas cannot both
//!   win); [`renew`] extends one's own lease while its term is current.
//! - [`fence`] is the first statement of every transaction a leader's
//!   controller runs: it reads the lease row `FOR SHARE` (PostgreSQL) and
//!   fails unless the term is still the caller's. A replica taking the
//!   lease over updates that row, so it waits for such a transaction to
//!   end, and every later one of the deposed leader fails: a decision is
//!   committed by the current leader or not at all. (On SQLite there is
//!   one replica and `BEGIN IMMEDIATE` serialises writers anyway.)
//!
//! Times are the database's clock on PostgreSQL (`clock_timestamp()`), so
//! replicas whose clocks disagree still agree on when a lease expired.

use std::time::Duration;

use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;

use crate::{db_err, Backend, Conn};

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub term: i64,
    /// Microseconds since the epoch, by the database's clock.
    pub expires_at: i64,
    pub updated_at: i64,
}

/// The time by which leases are compared: the database's clock on
/// PostgreSQL, this process's on SQLite (one process).
pub async fn clock(db: &mut Conn, backend: Backend) -> Result<i64, Error> {
    match backend {
        Backend::Sqlite => Ok(to_micros(now())),
        Backend::Postgres => {
            let (t,): (i64,) = sqlx::query_as(
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
            )
            .fetch_one(&mut *db)
            .await
            .map_err(db_err)?;
            Ok(t)
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Take the lease `name` for `holder` for `ttl`, if nobody holds it or its
/// holder let it expire: its new term. `None`: someone else holds it.
pub async fn acquire(
    db: &mut Conn,
    backend: Backend,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<i64>, Error> {
    let t = clock(db, backend).await?;
    let term: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO leases (name, holder, term, expires_at, updated_at) VALUES ($1, $2, 1, $3, $4)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, term = leases.term + 1,
             expires_at = excluded.expires_at, updated_at = excluded.updated_at
         WHERE leases.expires_at < excluded.updated_at
         RETURNING term",
    )
    .bind(name)
    .bind(holder)
    .bind(t.saturating_add(micros(ttl)))
    .bind(t)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(term.map(|(t,)| t))
}

/// Extend `holder`'s lease `name` of `term` by `ttl` from now. `false`: the
/// lease expired or was taken over (the term is no longer current).
pub async fn renew(
    db: &mut Conn,
    backend: Backend,
    name: &str,
    holder: &str,
    term: i64,
    ttl: Duration,
) -> Result<bool, Error> {
    let t = clock(db, backend).await?;
    let done = sqlx::query(
        "UPDATE leases SET expires_at = $1, updated_at = $2
         WHERE name = $3 AND holder = $4 AND term = $5 AND expires_at >= $2",
    )
    .bind(t.saturating_add(micros(ttl)))
    .bind(t)
    .bind(name)
    .bind(holder)
    .bind(term)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected() == 1)
}

/// Give the lease up (a replica shutting down): others take it at once.
pub async fn release(db: &mut Conn, name: &str, holder: &str, term: i64) -> Result<(), Error> {
    sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND term = $3")
        .bind(name)
        .bind(holder)
        .bind(term)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Check, as the first statement of a transaction, that `holder` still
/// leads `name` under `term`, and keep the lease from being taken over
/// until the transaction ends (PostgreSQL: a share lock on its row).
/// `false`: it does not; the caller must not commit.
pub async fn fence(
    db: &mut Conn,
    backend: Backend,
    name: &str,
    holder: &str,
    term: i64,
) -> Result<bool, Error> {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT term FROM leases WHERE name = $1 AND holder = $2 AND term = $3 FOR SHARE"
        }
        Backend::Sqlite => "SELECT term FROM leases WHERE name = $1 AND holder = $2 AND term = $3",
    };
    let row: Option<(i64,)> = sqlx::query_as(sql)
        .bind(name)
        .bind(holder)
        .bind(term)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(row.is_some())
}

/// Every lease (`/readyz` of any replica can say who leads what).
pub async fn all(db: &mut Conn) -> Result<Vec<Lease>, Error> {
    sqlx::query_as("SELECT name, holder, term, expires_at, updated_at FROM leases ORDER BY name")
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}
