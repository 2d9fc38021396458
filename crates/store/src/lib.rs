//! ShellWeGo persistence: one schema (numbered SQL migrations embedded in the
//! binary) and one set of queries, run on SQLite (the embedded default) and
//! PostgreSQL (for HA) through sqlx's `Any` driver. Every query is written
//! once, with `$n` placeholders, which both backends accept.
//!
//! One calling convention: every query is a free function in its table's
//! module whose first parameter is `db: &mut Conn` (sqlx's
//! `AnyConnection`). A transaction ([`Tx`], or anything that dereferences
//! to one) coerces to it, so writes pass `&mut tx`; reads outside a
//! transaction pass a pooled connection from [`Store::conn`], held only as
//! long as the reads (a caller that then begins a transaction drops it
//! first, so one request never holds two of the pool's connections).
//! [`Store`] itself only manages connections. Rows are decoded by
//! `#[derive(sqlx::FromRow)]` structs: a public struct derives it when its
//! fields are the columns as stored; otherwise a private `…Row` struct holds
//! the columns as stored (times as BIGINT microseconds, JSON documents as
//! TEXT) and `TryFrom` turns it into the public one, a document that does
//! not parse being an error that names its table, row and column.

pub mod apps;
pub mod bootstrap;
pub mod deployments;
pub mod domains;
pub mod events;
pub mod exec_sessions;
pub mod invitations;
pub mod leases;
pub mod list;
pub mod log_follows;
pub mod logins;
pub mod metrics;
pub mod nodes;
pub mod notify;
pub mod objects;
pub mod operations;
pub mod orgs;
pub mod overlay;
pub mod rate_limits;
pub mod secrets;
pub mod service_accounts;
pub mod system;
pub mod tasks;
pub mod tokens;
pub mod users;
pub mod webhooks;

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shellwego_core::Error;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Executor, FromRow, Transaction};

pub use sqlx::any::AnyRow;
/// What every query runs on: a transaction or a pooled connection.
pub use sqlx::AnyConnection as Conn;
pub use sqlx::Row;

pub type Tx = Transaction<'static, Any>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The store: a connection pool and which backend it talks to.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The installation's key for signing list cursors (loaded by `migrate`).
    cursor_key: Arc<OnceLock<Vec<u8>>>,
}

/// The embedded migrations. A database migrated by a newer release (with
/// migrations this binary does not know) is accepted: during a rolling
/// upgrade the older replicas keep serving on the newer schema, which is
/// safe because a migration only ever adds (see docs/operations.md and
/// the test that holds every migration from 0012 on to that).
static MIGRATOR: sqlx::migrate::Migrator = {
    let mut m = sqlx::migrate!("./migrations");
    m.ignore_missing = true;
    m
};

/// What the store refuses because of the values it was given: a 400 that
/// says why, naming no request field (the store does not know which field
/// a value came from; a service that does names it).
fn refused(why: &str) -> Error {
    Error::Validation {
        detail: why.to_string(),
        errors: vec![],
    }
}

/// The embedded migrations (the test kit fingerprints them to reuse a
/// migrated template database).
pub fn migrator() -> &'static sqlx::migrate::Migrator {
    &MIGRATOR
}

/// Map a database error to the domain error. Unique violations are
/// conflicts; connection trouble is "unavailable"; the rest are bugs.
pub fn db_err(e: sqlx::Error) -> Error {
    match &e {
        // PostgreSQL "data exception" (22xxx): a value the database refuses,
        // such as text with a NUL byte. The caller's input, so a 400.
        sqlx::Error::Database(d)
            if d.code()
                .is_some_and(|c| c.len() == 5 && c.starts_with("22")) =>
        {
            refused("a value was refused by the store (text may not contain NUL bytes)")
        }
        // The request was too big for the database to plan (a huge filter:
        // SQLite's "Expression tree is too large", "too many SQL
        // variables"; PostgreSQL's program_limit_exceeded, 54xxx). Caused
        // by the input, so a 400.
        sqlx::Error::Database(d)
            if d.code()
                .is_some_and(|c| c.len() == 5 && c.starts_with("54"))
                || [
                    "Expression tree is too large",
                    "too many SQL variables",
                    "too many terms in compound SELECT",
                    "LIKE or GLOB pattern too complex",
                    "string or blob too big",
                ]
                .iter()
                .any(|m| d.message().contains(m)) =>
        {
            refused("the request is too large for the store to answer; use fewer filters or values")
        }
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            Error::Conflict("a resource with these values already exists".into())
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => Error::Unavailable(format!("the store is not reachable: {e}")),
        _ => Error::internal_source("store", e),
    }
}

impl Store {
    /// Connect to `url` (`sqlite://path?mode=rwc` or `postgres://…`).
    pub async fn connect(url: &str) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| {
            Error::field(
                "database_url",
                "invalid_value",
                "must start with sqlite: or postgres://",
            )
        })?;
        let opts = AnyConnectOptions::from_str(url)
            .map_err(|e| Error::field("database_url", "invalid_value", e.to_string()))?;
        let pool_opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(5));
        let pool_opts = match backend {
            Backend::Sqlite => pool_opts.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL: readers never block the writer. busy_timeout: a
                    // writer waits for another instead of failing.
                    // secure_delete: what is overwritten or deleted is
                    // zeroed in the file, not left in free pages (values
                    // that were plaintext before they were sealed).
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA secure_delete = ON;")
                        .await?;
                    Ok(())
                })
            }),
            Backend::Postgres => pool_opts.max_connections(16),
        };
        let pool = pool_opts.connect_with(opts).await.map_err(db_err)?;
        Ok(Store {
            pool,
            backend,
            cursor_key: Arc::new(OnceLock::new()),
        })
    }

    /// Apply the embedded migrations that have not run yet, then load (or
    /// create, once per installation) the key that signs list cursors.
    pub async fn migrate(&self) -> Result<(), Error> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| Error::internal_source("migrations failed", e))?;
        let fresh = shellwego_core::token::generate(shellwego_core::token::TokenKind::Temp).hash;
        sqlx::query("INSERT INTO system_state (key, value, updated_at) VALUES ('cursor_key', $1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(fresh)
            .bind(shellwego_core::time::to_micros(shellwego_core::time::now()))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        let key: String =
            sqlx::query_scalar("SELECT value FROM system_state WHERE key = 'cursor_key'")
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
        let _ = self.cursor_key.set(key.into_bytes());
        Ok(())
    }

    /// The key that signs list cursors (`list::list`, `ListParams::resolve`).
    pub fn cursor_key(&self) -> Result<&[u8], Error> {
        self.cursor_key
            .get()
            .map(Vec::as_slice)
            .ok_or_else(|| Error::Internal("the store was not migrated before use".into()))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// SQLite: copy the write-ahead log into the database file and empty
    /// it, so that page versions it still holds (values that were
    /// overwritten, such as plaintext just sealed) leave the disk; with
    /// `secure_delete` the file keeps none either. Best effort (a reader
    /// holding an old snapshot keeps its frames); PostgreSQL: nothing.
    pub async fn compact_log(&self) -> Result<(), Error> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// A pooled connection, for reads outside a transaction. It goes back
    /// to the pool when dropped: hold it only for the reads (not across a
    /// wait, nor while beginning a transaction).
    pub async fn conn(&self) -> Result<PoolConnection<Any>, Error> {
        self.pool.acquire().await.map_err(db_err)
    }

    /// Start a transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so two writers queue instead of one failing
    /// with "database is locked" when it upgrades a read to a write.
    ///
    /// The begin runs in its own task: if the caller's future is dropped
    /// while the `BEGIN` is in flight, sqlx 0.8 can return the connection to
    /// the pool still inside a transaction (launchbadge/sqlx#3932), and on
    /// SQLite that connection then holds the write lock for good. A spawned
    /// begin always completes, and an unused `Tx` rolls back when dropped.
    pub async fn begin(&self) -> Result<Tx, Error> {
        let pool = self.pool.clone();
        let backend = self.backend;
        tokio::spawn(async move {
            match backend {
                Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
                Backend::Postgres => pool.begin().await,
            }
        })
        .await
        .map_err(|e| Error::internal_source("the transaction task failed", e))?
        .map_err(db_err)
    }

    /// Is the store reachable? (`/readyz`)
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)
            .map(|_| ())
    }

    /// Close every connection (graceful shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Commit a transaction, mapping the error.
pub async fn commit(tx: Tx) -> Result<(), Error> {
    tx.commit().await.map_err(db_err)
}

/// Decode a row through its `FromRow` struct `R`, then into `T` (for the
/// list mappers, which get the row itself).
pub(crate) fn decode<R, T>(row: &AnyRow) -> Result<T, Error>
where
    R: for<'r> FromRow<'r, AnyRow>,
    T: TryFrom<R, Error = Error>,
{
    T::try_from(R::from_row(row).map_err(db_err)?)
}

/// Turn every decoded row into `T`.
pub(crate) fn convert<R, T: TryFrom<R, Error = Error>>(rows: Vec<R>) -> Result<Vec<T>, Error> {
    rows.into_iter().map(T::try_from).collect()
}

/// A time column: BIGINT microseconds since the epoch.
pub(crate) fn time(micros: i64) -> shellwego_core::time::Timestamp {
    shellwego_core::time::from_micros(micros)
}

/// A nullable time column.
pub(crate) fn opt_time(micros: Option<i64>) -> Option<shellwego_core::time::Timestamp> {
    micros.map(time)
}

/// A boolean column: an integer, 0 being false (SQLite has no boolean).
pub(crate) fn flag(v: i64) -> bool {
    v != 0
}

/// Parse a stored JSON document of row `id` of `table`.
pub fn doc<T: serde::de::DeserializeOwned>(
    table: &str,
    id: &str,
    col: &str,
    text: &str,
) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| doc_error(table, id, col, e))
}

/// A stored JSON document of row `id` of `table` that does not parse (for
/// callers that name the row only when it is needed).
pub(crate) fn doc_error(table: &str, id: &str, col: &str, e: serde_json::Error) -> Error {
    Error::internal_source(
        format!("store: {table} row {id}: the {col} document does not parse"),
        e,
    )
}

pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}
