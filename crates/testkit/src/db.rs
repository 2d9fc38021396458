//! Databases for tests and benchmarks, each its own, migrated by copy:
//!
//! - PostgreSQL: the migrations run once per migration set into a template
//!   database named after their fingerprint (`swtpl_<hash>`), created
//!   under an advisory lock so that parallel test processes do not race,
//!   and kept for later runs; each test's database is then
//!   `CREATE DATABASE … TEMPLATE swtpl_<hash>` ([`PgDb::from_template`]),
//!   dropped when the test ends. [`PgDb::empty`] is an unmigrated one.
//! - SQLite: the migrations run once per process into a file whose bytes
//!   each test writes into its own data dir ([`write_sqlite_template`]).
//!
//! So a test's database costs a copy, not the migrations.

use sha2::{Digest, Sha256};
use shellwego_store::Store;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use tokio::sync::OnceCell;

/// `postgres://u@h:5432/db?x=y` with its database replaced by `name`.
pub fn with_database(server_url: &str, name: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server_url, String::new()),
    };
    // Keep "postgres://host" intact when the URL names no database.
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].rfind('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// A fingerprint of the store's embedded migrations (versions and
/// checksums): a schema change is a new template.
pub fn migrations_fingerprint() -> String {
    let mut h = Sha256::new();
    for m in shellwego_store::migrator().iter() {
        h.update(m.version.to_le_bytes());
        h.update(&m.checksum);
    }
    hex::encode(&h.finalize()[..8])
}

/// A fresh database name: `prefix_` and random lower-case hex (PostgreSQL
/// folds unquoted names to lower case).
fn fresh_name(prefix: &str) -> String {
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    h.update(
        COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    format!("{prefix}_{}", hex::encode(&h.finalize()[..10]))
}

async fn admin(server_url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(server_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {server_url}: {e}"))
}

/// The key of the advisory lock that serializes template creation ("SWTPL").
const TEMPLATE_LOCK: i64 = 0x0053_5754_504c;

/// The migrated template on `server_url`, created when missing: its name.
/// Per process, the first call looks (and creates); the others reuse it.
pub async fn pg_template(server_url: &str) -> anyhow::Result<String> {
    static TEMPLATE: OnceCell<(String, String)> = OnceCell::const_new();
    let (url, name) = TEMPLATE
        .get_or_try_init(|| async {
            Ok::<_, anyhow::Error>((server_url.to_string(), ensure_template(server_url).await?))
        })
        .await?;
    if url == server_url {
        Ok(name.clone())
    } else {
        ensure_template(server_url).await
    }
}

async fn ensure_template(server_url: &str) -> anyhow::Result<String> {
    let name = format!("swtpl_{}", migrations_fingerprint());
    let mut conn = admin(server_url).await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut conn)
        .await?;
    let made = make_template(&mut conn, server_url, &name).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    made.map(|()| name)
}

/// Under the lock: nobody else builds a template meanwhile.
async fn make_template(
    conn: &mut PgConnection,
    server_url: &str,
    name: &str,
) -> anyhow::Result<()> {
    let found: Option<(bool, bool)> =
        sqlx::query_as("SELECT datistemplate, datallowconn FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    match found {
        Some((true, false)) => return Ok(()),
        // Renamed, but its maker stopped before closing it to connections.
        Some(_) => return close_template(conn, name).await,
        None => {}
    }
    // A build a crashed process left behind is garbage now.
    let stale: Vec<(String,)> = sqlx::query_as(
        "SELECT datname FROM pg_database WHERE datname LIKE 'swtpl\\_%\\_build\\_%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (db,) in stale {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut *conn)
            .await?;
    }
    // Built under another name and renamed when done, so that a template
    // under its final name is always complete.
    let build = fresh_name(&format!("{name}_build"));
    let made = build_template(conn, server_url, &build, name).await;
    if made.is_err() {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {build} WITH (FORCE)"))
            .execute(&mut *conn)
            .await;
    }
    made
}

async fn build_template(
    conn: &mut PgConnection,
    server_url: &str,
    build: &str,
    name: &str,
) -> anyhow::Result<()> {
    sqlx::query(&format!("CREATE DATABASE {build}"))
        .execute(&mut *conn)
        .await?;
    let store = Store::connect(&with_database(server_url, build))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let migrated = store.migrate().await;
    store.close().await;
    migrated.map_err(|e| anyhow::anyhow!("migrating the template: {e}"))?;
    // A connection of the pool may outlive its close (seen with sqlx's Any
    // pool): nobody else knows this database, so end whatever is left.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(build)
    .execute(&mut *conn)
    .await?;
    execute_retrying(conn, &format!("ALTER DATABASE {build} RENAME TO {name}")).await?;
    close_template(conn, name).await
}

/// Mark `name` a template nobody may connect to (a connection would make
/// copying it fail).
async fn close_template(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Execute `sql`, again while PostgreSQL says its database is in use
/// (55006, object_in_use: a connection is still there or on its way out;
/// PostgreSQL itself waits up to 5 s before saying so), up to 20 times.
async fn execute_retrying(conn: &mut PgConnection, sql: &str) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match sqlx::query(sql).execute(&mut *conn).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(d))
                if d.code().as_deref() == Some("55006") && tries < 100 =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A scratch PostgreSQL database, dropped (its users disconnected) when
/// this is dropped.
#[derive(Debug)]
pub struct PgDb {
    server_url: String,
    name: String,
    url: String,
}

impl PgDb {
    /// A copy of the migrated template on `server_url`, named `prefix_…`.
    pub async fn from_template(server_url: &str, prefix: &str) -> anyhow::Result<PgDb> {
        let template = pg_template(server_url).await?;
        let name = fresh_name(prefix);
        let mut conn = admin(server_url).await?;
        execute_retrying(
            &mut conn,
            &format!("CREATE DATABASE {name} TEMPLATE {template}"),
        )
        .await?;
        let _ = conn.close().await;
        Ok(PgDb::named(server_url, name))
    }

    /// An empty (unmigrated) database on `server_url`, named `prefix_…`.
    pub async fn empty(server_url: &str, prefix: &str) -> anyhow::Result<PgDb> {
        let name = fresh_name(prefix);
        let mut conn = admin(server_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(PgDb::named(server_url, name))
    }

    fn named(server_url: &str, name: String) -> PgDb {
        PgDb {
            url: with_database(server_url, &name),
            server_url: server_url.to_string(),
            name,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drop it now, disconnecting its users (else when dropped).
    pub async fn drop_now(mut self) -> anyhow::Result<()> {
        let name = std::mem::take(&mut self.name);
        drop_database(&self.server_url, &name).await
    }
}

async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = admin(server_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(())
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let (url, name) = (self.server_url.clone(), self.name.clone());
        // Drop runs outside any runtime we may block on: use a thread.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(drop_database(&url, &name));
            }
        })
        .join();
    }
}

/// The bytes of a migrated SQLite database, made once per process.
async fn sqlite_template() -> anyhow::Result<&'static [u8]> {
    static TEMPLATE: OnceCell<Vec<u8>> = OnceCell::const_new();
    TEMPLATE
        .get_or_try_init(|| async {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("template.db");
            let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let migrated = store.migrate().await;
            // Everything into the main file, so that it alone is the database.
            let checkpoint = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(store.pool())
                .await;
            store.close().await;
            migrated.map_err(|e| anyhow::anyhow!("migrating the template: {e}"))?;
            checkpoint?;
            let wal = dir.path().join("template.db-wal");
            if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                anyhow::bail!("the SQLite template's WAL was not checkpointed");
            }
            Ok(std::fs::read(&path)?)
        })
        .await
        .map(Vec::as_slice)
}

/// Write a migrated SQLite database to `path` (a copy of this process's
/// template).
pub async fn write_sqlite_template(path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = sqlite_template().await?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database() {
        assert_eq!(
            super::with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            super::with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            super::with_database("postgres://u@h", "x"),
            "postgres://u@h/x"
        );
    }

    #[test]
    fn names_are_fresh_lower_case_identifiers() {
        let (a, b) = (super::fresh_name("swtest"), super::fresh_name("swtest"));
        assert_ne!(a, b);
        assert!(a.starts_with("swtest_"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
