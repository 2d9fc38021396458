//! PostgreSQL `NOTIFY`/`LISTEN`, for the server's event bus
//! (`shellwego_server::bus::PgBus`): how replicas sharing one database
//! tell each other that it changed.

use shellwego_core::Error;

use crate::{db_err, Store};

/// `NOTIFY channel, payload` (delivered to every listener once sent; the
/// payload is at most 8000 bytes).
pub async fn notify(store: &Store, channel: &str, payload: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(store.pool())
        .await
        .map_err(db_err)?;
    Ok(())
}

/// A connection that `LISTEN`s on some channels.
pub struct Listener(sqlx::postgres::PgListener);

/// One notification: its channel and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

impl Listener {
    /// Connect to the PostgreSQL at `url` and listen on `channels`.
    pub async fn connect(url: &str, channels: &[&str]) -> Result<Listener, Error> {
        let mut l = sqlx::postgres::PgListener::connect(url)
            .await
            .map_err(db_err)?;
        l.listen_all(channels.iter().copied())
            .await
            .map_err(db_err)?;
        Ok(Listener(l))
    }

    /// The next notification; `None` once the connection is lost (what was
    /// sent meanwhile is lost with it: connect again, then resynchronise).
    /// Not cancel-safe: read it from one task.
    pub async fn recv(&mut self) -> Option<Notification> {
        match self.0.try_recv().await {
            Ok(Some(n)) => Some(Notification {
                channel: n.channel().to_string(),
                payload: n.payload().to_string(),
            }),
            Ok(None) | Err(_) => None,
        }
    }
}
