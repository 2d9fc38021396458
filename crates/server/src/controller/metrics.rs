//! Downsampling of app metrics (a singleton): every minute, the recent
//! 10-second slots become 1-minute buckets, recent minutes 1-hour buckets
//! and recent hours 1-day buckets; each pass recomputes the last few
//! buckets of each resolution (upserts), so samples that arrived late (an
//! agent that was away sends its backlog) are counted. Then what is past
//! its retention goes (`service::metrics::Retention`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;
use shellwego_store::metrics::{self as store, Rollup};

use crate::bus::Topic;
use crate::controller::Controller;
use crate::ctx::ServerCtx;

pub struct MetricRollups;

/// Per resolution (seconds): its source resolution, and how far back a
/// pass recomputes it (microseconds).
const LEVELS: [(i64, i64, i64); 3] = [
    (60, 10, 15 * 60 * 1_000_000),
    (3600, 60, 3 * 3600 * 1_000_000),
    (86_400, 3600, 2 * 86_400 * 1_000_000),
];

impl Controller for MetricRollups {
    const NAME: &'static str = "metric-rollups";

    fn wakes_on(&self) -> &'static [Topic] {
        &[]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        Duration::from_secs(60)
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        roll_up(ctx, to_micros(now())).await?;
        expire(ctx, to_micros(now())).await?;
        Ok(&[])
    }
}

/// Fold (sum, count, min, max) of values.
fn fold(acc: &mut (f64, i64, f64, f64), total: f64, n: i64, min: f64, max: f64) {
    if acc.1 == 0 {
        *acc = (total, n, min, max);
    } else {
        acc.0 += total;
        acc.1 += n;
        acc.2 = acc.2.min(min);
        acc.3 = acc.3.max(max);
    }
}

/// Recompute the recent buckets of every resolution as of `now_us`.
pub async fn roll_up(ctx: &ServerCtx, now_us: i64) -> Result<(), Error> {
    for (res, source, back) in LEVELS {
        let step = res * 1_000_000;
        let from = (now_us - back) - (now_us - back).rem_euclid(step);
        let apps = if source == 10 {
            store::active_apps(&mut *ctx.store.conn().await?, from, now_us).await?
        } else {
            store::apps_with_rollups(&mut *ctx.store.conn().await?, source, from, now_us).await?
        };
        for app in apps {
            let mut buckets: BTreeMap<(i64, String), (f64, i64, f64, f64)> = BTreeMap::new();
            {
                let mut db = ctx.store.conn().await?;
                if source == 10 {
                    for s in store::app_slots(&mut db, &app, from, now_us).await? {
                        let b = s.slot - s.slot.rem_euclid(step);
                        for (name, v) in s.values {
                            fold(
                                buckets.entry((b, name.to_string())).or_default(),
                                v,
                                1,
                                v,
                                v,
                            );
                        }
                    }
                } else {
                    for r in store::rollups(&mut db, &app, source, from, now_us).await? {
                        let b = r.ts - r.ts.rem_euclid(step);
                        fold(
                            buckets.entry((b, r.metric.clone())).or_default(),
                            r.total,
                            r.n,
                            r.min,
                            r.max,
                        );
                    }
                }
            }
            let rows: Vec<Rollup> = buckets
                .into_iter()
                .map(|((ts, metric), (total, n, min, max))| Rollup {
                    metric,
                    ts,
                    total,
                    n,
                    min,
                    max,
                })
                .collect();
            let mut tx = ctx.begin().await?;
            store::put_rollups(&mut tx, &app, res, &rows).await?;
            shellwego_store::commit(tx).await?;
        }
    }
    Ok(())
}

/// Delete what is past its retention.
pub async fn expire(ctx: &ServerCtx, now_us: i64) -> Result<(), Error> {
    let r = ctx.config.metrics;
    let s = |secs: i64| now_us - secs * 1_000_000;
    let mut db = ctx.store.conn().await?;
    store::delete_samples_before(&mut db, s(r.raw)).await?;
    let mut by_res: HashMap<i64, i64> = HashMap::new();
    by_res.insert(60, r.minute);
    by_res.insert(3600, r.hour);
    by_res.insert(86_400, r.day);
    for (res, keep) in by_res {
        store::delete_rollups_before(&mut db, res, s(keep)).await?;
    }
    Ok(())
}
