//! Scratch PostgreSQL databases for tests and benchmarks: each gets a fresh
//! database on the given server, dropped afterwards.

use shellwego_core::{id, Error};

use crate::{db_err, Store};

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

/// Create an empty database; returns its URL and name.
pub async fn create(server_url: &str, prefix: &str) -> Result<(String, String), Error> {
    let admin = Store::connect(server_url).await?;
    let name = id::new_id(prefix);
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await
        .map_err(db_err)?;
    admin.close().await;
    Ok((with_database(server_url, &name), name))
}

/// Drop a database made by `create`, disconnecting its users.
pub async fn drop(server_url: &str, name: &str) -> Result<(), Error> {
    let admin = Store::connect(server_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(admin.pool())
        .await
        .map_err(db_err)?;
    admin.close().await;
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
}
