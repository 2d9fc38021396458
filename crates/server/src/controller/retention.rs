//! Event retention: every organization's events older than its
//! `audit_log_retention` setting (default one year) are deleted, oldest
//! first, in batches, by the replica that leads this controller.

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
        }
        Ok(&[])
    }
}
