//! The event log as it grows, for `GET /v1/events/stream`: one tail per
//! replica reads the newly numbered events (see
//! `controller::retention::EventSequencer`) once and fans them out to every
//! stream of the replica through a bounded broadcast channel. It starts
//! with the first stream and is woken by the bus topic `event_log` (and
//! polls every second): an event committed through another replica reaches
//! this replica's streams as soon as it is numbered.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shellwego_core::Error;
use shellwego_store::events::{self, Logged};
use tokio::sync::{broadcast, watch};

use crate::bus::Topic;
use crate::ctx::ServerCtx;

/// Events buffered per stream before a slow one is told to resume by id.
pub const CAPACITY: usize = 1024;
/// Rows read per query.
const BATCH: i64 = 500;

pub struct EventFeed {
    tx: broadcast::Sender<Arc<Logged>>,
    /// The highest number sent so far (the tail's position).
    last: watch::Sender<i64>,
    started: OnceLock<()>,
}

impl Default for EventFeed {
    fn default() -> Self {
        EventFeed {
            tx: broadcast::channel(CAPACITY).0,
            last: watch::channel(-1).0,
            started: OnceLock::new(),
        }
    }
}

impl EventFeed {
    /// A receiver of every event numbered from now on, and the number it
    /// starts after (the tail starts with the first subscriber).
    pub async fn subscribe(
        self: &Arc<Self>,
        ctx: &Arc<ServerCtx>,
    ) -> Result<(broadcast::Receiver<Arc<Logged>>, i64), Error> {
        if self.started.get().is_none() {
            let top = events::max_seq(&mut *ctx.store.conn().await?).await?;
            if self.started.set(()).is_ok() {
                self.last.send_replace(top);
                tokio::spawn(self.clone().tail(ctx.clone()));
            }
        }
        // Subscribed first: whatever the tail sends from here on reaches
        // this receiver (the caller skips numbers it already has).
        let rx = self.tx.subscribe();
        let mut last = self.last.subscribe();
        // The tail's first position is set before it runs.
        let _ = last.wait_for(|l| *l >= 0).await;
        let at = *last.borrow();
        Ok((rx, at))
    }

    async fn tail(self: Arc<Self>, ctx: Arc<ServerCtx>) {
        let mut wake = ctx.bus.subscribe(&[Topic::EventLog]);
        let mut stopping = ctx.stopping.clone();
        loop {
            let mut last = *self.last.borrow();
            loop {
                let read = async {
                    let mut db = ctx.store.conn().await?;
                    events::after(&mut db, last, None, BATCH).await
                };
                match read.await {
                    Ok(rows) => {
                        let n = rows.len();
                        for r in rows {
                            last = r.seq;
                            // No stream listening is fine.
                            let _ = self.tx.send(Arc::new(r));
                        }
                        self.last.send_replace(last);
                        if (n as i64) < BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event feed: cannot read the log");
                        break;
                    }
                }
            }
            tokio::select! {
                woke = wake.changed() => if woke.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }
}
