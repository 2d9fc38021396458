//! The autoscaler (a singleton): every 10 s, each app scaled with
//! `strategy: auto` gets the replicas its CPU asks for.
//!
//! The signal is the mean of its instances' CPU samples (percent of each
//! one's allocation) over the last minute, at least two of them. Above the
//! threshold (`cpu_threshold`, default 70%), replicas grow to
//! `ceil(replicas × cpu / threshold)` (at least one more), once the
//! scale-out cooldown since the last change has passed; below half the
//! threshold (the hysteresis band between is left alone), they shrink to
//! `ceil(replicas × cpu / threshold)` once the scale-in cooldown has
//! passed — never outside `[min, max]`. A stopped app, or one with a
//! deployment in progress, is left alone. Each change is an `app.scaled`
//! event with the numbers behind it.

use std::time::Duration;

use serde_json::json;
use shellwego_core::model::DesiredState;
use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;
use shellwego_store::apps;
use shellwego_store::events::{Actor, NewEvent};
use shellwego_store::metrics;

use crate::bus::Topic;
use crate::controller::reconcile::reconcile_in;
use crate::controller::Controller;
use crate::ctx::{ServerCtx, DESIRED};

/// The window the CPU is averaged over.
pub const WINDOW: Duration = Duration::from_secs(60);

pub struct Autoscaler;

impl Controller for Autoscaler {
    const NAME: &'static str = "autoscaler";

    fn wakes_on(&self) -> &'static [Topic] {
        &[]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        Duration::from_secs(10)
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        let ids = metrics::autoscaled_apps(&mut *ctx.store.conn().await?).await?;
        for id in ids {
            if let Err(e) = decide(ctx, &id).await {
                tracing::warn!(app_id = %id, error = %e, "autoscaler: cannot scale the app");
            }
        }
        Ok(&[])
    }
}

/// The replicas for `replicas` instances at `cpu`% against `threshold`%.
pub fn wanted(replicas: i64, cpu: f64, threshold: i64) -> i64 {
    let t = threshold.max(1) as f64;
    ((replicas.max(1) as f64) * cpu / t).ceil() as i64
}

/// Look at one app; scale it when its CPU says so.
async fn decide(ctx: &ServerCtx, app_id: &str) -> Result<(), Error> {
    let now_us = to_micros(now());
    let window_from = now_us - WINDOW.as_micros() as i64;
    let (avg, samples) =
        metrics::cpu_average(&mut *ctx.store.conn().await?, app_id, window_from).await?;
    let Some(cpu) = avg.filter(|_| samples >= 2) else {
        return Ok(());
    };
    let mut tx = ctx.unit().await?;
    let Some(mut a) = apps::get_for_update(&mut tx, app_id).await? else {
        return Ok(());
    };
    let Some(c) = a.spec.autoscale.clone() else {
        return Ok(());
    };
    if a.desired_state != DesiredState::Running
        || shellwego_store::deployments::active(&mut tx, app_id)
            .await?
            .is_some()
    {
        return Ok(());
    }
    let last = metrics::autoscaled_at(&mut tx, app_id).await?;
    let since = last.map(|l| Duration::from_micros((now_us - l).max(0) as u64));
    let cooled = |d: Duration| since.is_none_or(|s| s >= d);
    let threshold = c.cpu_threshold();
    let from = a.replicas;
    let to = if cpu > threshold as f64 && from < c.max && cooled(c.scale_out_cooldown()) {
        wanted(from, cpu, threshold).max(from + 1).min(c.max)
    } else if cpu < threshold as f64 / 2.0 && from > c.min && cooled(c.scale_in_cooldown()) {
        wanted(from, cpu, threshold).max(c.min).min(from)
    } else if from < c.min || from > c.max {
        from.clamp(c.min, c.max)
    } else {
        from
    };
    if to == from {
        return Ok(());
    }
    a.replicas = to;
    apps::update(&mut tx, &a).await?;
    metrics::set_autoscaled_at(&mut tx, app_id, now_us).await?;
    tx.touch(DESIRED);
    tx.record(
        NewEvent::info(
            "app.scaled",
            &Actor {
                kind: "system".into(),
                id: Some("autoscaler".into()),
                ip: None,
            },
            "app",
            app_id,
        )
        .in_org(&a.organization_id)
        .meta(json!({
            "from": from,
            "to": to,
            "strategy": "auto",
            "reason": if to > from { "cpu above the threshold" } else { "cpu below half the threshold" },
            "cpu_percent": (cpu * 10.0).round() / 10.0,
            "cpu_threshold": threshold,
            "window_seconds": WINDOW.as_secs(),
            "samples": samples,
            "min": c.min,
            "max": c.max,
        })),
    );
    reconcile_in(&mut tx, app_id).await?;
    tx.commit().await?;
    tracing::info!(app_id, from, to, cpu, threshold, "autoscaled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::wanted;

    #[test]
    fn replicas_follow_the_cpu() {
        assert_eq!(wanted(1, 100.0, 50), 2);
        assert_eq!(wanted(2, 100.0, 50), 4);
        assert_eq!(wanted(3, 10.0, 50), 1);
        assert_eq!(wanted(3, 0.0, 50), 0);
        assert_eq!(wanted(4, 60.0, 70), 4);
    }
}
