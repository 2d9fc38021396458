//! ShellWeGo persistence: one schema (numbered SQL migrations embedded in the
//! binary) and one set of queries, run on SQLite (the embedded default) and
//! PostgreSQL (for HA) through sqlx's `Any` driver. Every query is written
//! once, with `$n` placeholders, which both backends accept.

pub mod apps;
pub mod bootstrap;
pub mod deployments;
pub mod events;
pub mod invitations;
pub mod list;
pub mod logins;
pub mod nodes;
pub mod operations;
pub mod orgs;
pub mod service_accounts;
pub mod tokens;
pub mod users;

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shellwego_core::Error;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Executor, Transaction};

pub use sqlx::any::AnyRow;
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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
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
            .map_err(|e| Error::Internal(format!("migrations failed: {e}")))?;
        let fresh = shellwego_core::token::generate(shellwego_core::token::TokenKind::Temp).hash;
        sqlx::query("INSERT INTO system_state (key, value, updated_at) VALUES ('cursor_key', $1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(fresh)
            .bind(shellwego_core::time::to_micros(shellwego_core::time::now()))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        let row = sqlx::query("SELECT value FROM system_state WHERE key = 'cursor_key'")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        let key: String = row.try_get("value").map_err(db_err)?;
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

    /// A connection from the pool, for the queries that take
    /// `db: &mut AnyConnection`.
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
        .map_err(|e| Error::Internal(format!("the transaction task failed: {e}")))?
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

/// Decode a JSON TEXT column.
/// One that does not parse is an error naming the column and the row (its
/// `id` column, when it has one), never a default.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &str,
) -> Result<T, Error> {
    let s: String = row.try_get(col).map_err(db_err)?;
    serde_json::from_str(&s).map_err(|e| {
        // The row is named only when it is needed (the hot path parses).
        let id = row
            .try_get::<String, _>("id")
            .unwrap_or_else(|_| "?".into());
        Error::internal_source(
            format!("store: row {id}: the {col} document does not parse"),
            e,
        )
    })
}

/// Decode a JSON document column of one row. A document that does not
/// parse is an error naming the table, the row and the column: never a
/// silent default.
pub(crate) fn doc_col<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    table: &str,
    id: &str,
    col: &str,
) -> Result<T, Error> {
    let s: String = row.try_get(col).map_err(db_err)?;
    doc(table, id, col, &s)
}

/// Parse a stored JSON document of row `id` of `table`.
pub fn doc<T: serde::de::DeserializeOwned>(
    table: &str,
    id: &str,
    col: &str,
    text: &str,
) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| {
        Error::internal_source(
            format!("store: {table} row {id}: the {col} document does not parse"),
            e,
        )
    })
}

pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}
