//! The event log's upkeep, each by the replica that leads it: retention
//! (every organization's events, and webhook deliveries, older than its
//! `audit_log_retention`, default one year, are deleted, oldest first, in
//! batches) and the
//! sequencer (the log's order).

use std::time::Duration;

use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;

use super::Controller;
use crate::bus::Topic;
use crate::ctx::ServerCtx;

/// Rows deleted per statement (a long delete holds its locks long).
const BATCH: i64 = 1000;

pub struct EventRetention;

impl Controller for EventRetention {
    const NAME: &'static str = "event-retention";

    fn wakes_on(&self) -> &'static [Topic] {
        &[]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        Duration::from_secs(600)
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        // Agent tasks whose requester is long gone (it deletes its own; a
        // replica that died while waiting leaves them).
        let old = now() - chrono::Duration::hours(1);
        shellwego_store::tasks::delete_expired(&mut *ctx.store.conn().await?, old).await?;
        // Exec sessions whose replica died with them held.
        shellwego_store::exec_sessions::delete_expired(
            &mut *ctx.store.conn().await?,
            now() - chrono::Duration::minutes(1),
        )
        .await?;
        // Log follows whose replica died with them held (and their pushes).
        shellwego_store::log_follows::delete_expired(
            &mut *ctx.store.conn().await?,
            now() - chrono::Duration::minutes(1),
        )
        .await?;
        let orgs = shellwego_store::orgs::all_settings(&mut *ctx.store.conn().await?).await?;
        for (org, settings) in orgs {
            let settings: serde_json::Value = serde_json::from_str(&settings).unwrap_or_default();
            let keep = shellwego_api::orgs::retention_of(&settings);
            let before = to_micros(now()) - i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
            let mut gone = 0;
            loop {
                let n = shellwego_store::events::delete_older(
                    &mut *ctx.store.conn().await?,
                    &org,
                    before,
                    BATCH,
                )
                .await?;
                gone += n;
                if n < BATCH as u64 {
                    break;
                }
            }
            if gone > 0 {
                tracing::info!(organization_id = %org, deleted = gone, retention = ?keep, "events past their retention deleted");
            }
            // Their webhook deliveries (and pings) go with them.
            let mut gone = 0;
            loop {
                let n = shellwego_store::webhooks::delete_older_deliveries(
                    &mut *ctx.store.conn().await?,
                    &org,
                    before,
                    BATCH,
                )
                .await?;
                gone += n;
                if n < BATCH as u64 {
                    break;
                }
            }
            if gone > 0 {
                tracing::info!(organization_id = %org, deleted = gone, retention = ?keep, "webhook deliveries past their retention deleted");
            }
        }
        Ok(&[])
    }
}

/// Rows numbered per transaction.
const SEQUENCE_BATCH: i64 = 1000;

/// The event log's order: numbers committed events (`events.seq`, see
/// migration 0017) in short fenced transactions, woken when events are
/// recorded; streams read by that number, so an event whose transaction
/// committed late is numbered after the ones already read, never skipped.
pub struct EventSequencer;

impl Controller for EventSequencer {
    const NAME: &'static str = "event-sequencer";

    fn wakes_on(&self) -> &'static [Topic] {
        &[Topic::Events]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        Duration::from_secs(1)
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        loop {
            let mut unit = ctx.unit().await?;
            let n = shellwego_store::events::sequence(&mut unit, SEQUENCE_BATCH).await?;
            if n > 0 {
                unit.touch(&[Topic::EventLog]);
            }
            unit.commit().await?;
            if n < SEQUENCE_BATCH as u64 {
                return Ok(&[]);
            }
        }
    }
}
