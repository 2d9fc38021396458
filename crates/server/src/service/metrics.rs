//! App metrics: samples from the nodes' agents (every 10 s, with their
//! syncs), request counts from the ingress (`controller::routes`), kept
//! raw for a day and downsampled by `controller::metrics`; and
//! `GET /v1/apps/{id}/metrics`.
//!
//! A 10-second slot's value of an app combines its instances' samples:
//! CPU and memory percentages are their mean (a share of each instance's
//! allocation), bytes and requests their sum; latency is the mean over
//! the slot's requests. A data point of a coarser resolution is the mean
//! of its slots' values, but for request counts, which are summed (so a
//! 1-minute point of `requests` is the requests in that minute).

use std::collections::{BTreeMap, HashMap};

use shellwego_api::metrics::{
    AppMetrics, DataPoint, MetricsParams, Sample, Series, Statistics, METRICS,
};
use shellwego_core::time::{from_micros, now, parse_rfc3339, to_micros};
use shellwego_core::Error;
use shellwego_store::metrics::{self as store, SampleRow};

use crate::auth::Principal;
use crate::ctx::ServerCtx;

pub const SLOT: i64 = 10_000_000;
/// Resolutions offered (seconds).
pub const RESOLUTIONS: &[(&str, i64)] = &[
    ("10s", 10),
    ("1m", 60),
    ("5m", 300),
    ("1h", 3600),
    ("1d", 86_400),
];

pub use crate::ctx::MetricsRetention as Retention;

/// Store a node's samples: those of its own instances (others are
/// dropped: a node speaks only for itself), and its own usage.
pub async fn ingest(ctx: &ServerCtx, node_id: &str, samples: &[Sample]) -> Result<(), Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut tx = ctx.begin().await?;
    let mine: HashMap<String, String> = store::instances_on_node(&mut tx, node_id)
        .await?
        .into_iter()
        .collect();
    let mut rows = Vec::with_capacity(samples.len());
    let mut latest_node: Option<&Sample> = None;
    for s in samples {
        let slot = s.at - s.at.rem_euclid(SLOT);
        let (owner, instance) = match &s.instance_id {
            Some(i) => match mine.get(i) {
                Some(app) => (app.clone(), i.clone()),
                None => continue,
            },
            None => {
                if latest_node.is_none_or(|l| l.at < s.at) {
                    latest_node = Some(s);
                }
                (node_id.to_string(), node_id.to_string())
            }
        };
        let finite = |x: Option<f64>| x.filter(|v| v.is_finite());
        rows.push(SampleRow {
            owner_id: owner,
            instance_id: instance,
            slot,
            cpu_percent: finite(s.cpu_percent),
            memory_bytes: finite(s.memory_bytes),
            memory_percent: finite(s.memory_percent),
            disk_bytes: finite(s.disk_bytes),
            disk_percent: finite(s.disk_percent),
            network_rx: finite(s.network_rx),
            network_tx: finite(s.network_tx),
        });
    }
    store::put_samples(&mut tx, node_id, &rows).await?;
    if let Some(n) = latest_node {
        store::set_node_usage(
            &mut tx,
            node_id,
            n.cpu_percent,
            n.memory_percent,
            n.disk_percent,
        )
        .await?;
    }
    shellwego_store::commit(tx).await
}

/// `from`/`to`: RFC 3339 or a time ago.
fn parse_time(field: &str, v: &str) -> Result<i64, Error> {
    if let Some(t) = parse_rfc3339(v.trim()) {
        return Ok(to_micros(t));
    }
    if let Some(ago) = shellwego_core::units::parse_duration(v) {
        return Ok(to_micros(now()) - i64::try_from(ago.as_micros()).unwrap_or(i64::MAX / 2));
    }
    Err(Error::field(
        field,
        "invalid_value",
        format!("{v:?} is not a time: give an RFC 3339 timestamp or a time ago (1h, 7d)"),
    ))
}

/// The metric names a `metric` parameter asks for.
fn wanted(metric: Option<&str>) -> Result<Vec<&'static str>, Error> {
    let Some(m) = metric.filter(|m| !m.is_empty()) else {
        return Ok(METRICS.iter().map(|(n, _)| *n).collect());
    };
    let mut out = vec![];
    for part in m.split(',').map(str::trim) {
        let names: &[&'static str] = match part {
            "cpu" => &["cpu"],
            "memory" => &["memory", "memory_percent"],
            "disk" => &["disk"],
            "network" => &["network_rx", "network_tx"],
            "requests" => &[
                "requests",
                "status_2xx",
                "status_3xx",
                "status_4xx",
                "status_5xx",
            ],
            "latency" => &["latency"],
            other => {
                return Err(Error::field(
                    "metric",
                    "invalid_value",
                    format!("{other:?}: use cpu, memory, disk, network, requests or latency"),
                ))
            }
        };
        for n in names {
            if !out.contains(n) {
                out.push(*n);
            }
        }
    }
    Ok(out)
}

/// `GET /v1/apps/{id}/metrics`.
pub async fn app_metrics(
    ctx: &ServerCtx,
    p: &Principal,
    app_id: &str,
    q: &MetricsParams,
    retention: Retention,
) -> Result<AppMetrics, Error> {
    let names = wanted(q.metric.as_deref())?;
    let to =
        q.to.as_deref()
            .map(|v| parse_time("to", v))
            .transpose()?
            .unwrap_or_else(|| to_micros(now()));
    let from = q
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or(to - 3_600_000_000);
    if from >= to {
        return Err(Error::field("to", "invalid_value", "to must be after from"));
    }
    let span = to - from;
    let resolution = match q.resolution.as_deref() {
        Some(r) => RESOLUTIONS
            .iter()
            .find(|(n, _)| *n == r)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                Error::field("resolution", "invalid_value", "use 10s, 1m, 5m, 1h or 1d")
            })?,
        // About 300 points at most.
        None => RESOLUTIONS
            .iter()
            .map(|(_, s)| *s)
            .find(|s| span / (s * 1_000_000) <= 300)
            .unwrap_or(86_400),
    };
    let step = resolution * 1_000_000;
    if span / step > 10_000 {
        return Err(Error::field(
            "resolution",
            "out_of_range",
            "more than 10 000 points: choose a coarser resolution or a shorter range",
        ));
    }
    let now_us = to_micros(now());
    let raw_from = now_us - retention.raw * 1_000_000;
    if resolution == 10 && from < raw_from {
        return Err(Error::field(
            "resolution",
            "out_of_range",
            "10-second points are kept for a day; choose 1m or coarser for older times",
        ));
    }
    // The app, visible to the caller who may read it.
    p.authorize("apps", "read", Some(app_id))?;
    let mut db = ctx.store.conn().await?;
    let app = shellwego_store::apps::get_visible(&mut db, app_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("app", app_id))?;
    let start = from - from.rem_euclid(step);
    // bucket → metric → (sum, count) of slot values
    let mut buckets: BTreeMap<i64, HashMap<String, (f64, i64)>> = BTreeMap::new();
    if from >= raw_from {
        for s in store::app_slots(&mut db, &app.id, start, to).await? {
            let b = s.slot - s.slot.rem_euclid(step);
            let e = buckets.entry(b).or_default();
            for (name, v) in s.values {
                let x = e.entry(name.to_string()).or_default();
                x.0 += v;
                x.1 += 1;
            }
        }
    } else {
        let source = match resolution {
            60 | 300 => 60,
            3600 => 3600,
            _ => 86_400,
        };
        for r in store::rollups(&mut db, &app.id, source, start, to).await? {
            let b = r.ts - r.ts.rem_euclid(step);
            let x = buckets
                .entry(b)
                .or_default()
                .entry(r.metric.clone())
                .or_default();
            x.0 += r.total;
            x.1 += r.n;
        }
    }
    let unit_of = |n: &str| {
        METRICS
            .iter()
            .find(|(m, _)| *m == n)
            .map_or("", |(_, u)| *u)
            .to_string()
    };
    let mut series = BTreeMap::new();
    for name in names {
        let mut points = vec![];
        for (b, per) in &buckets {
            if let Some((sum, n)) = per.get(name) {
                if *n == 0 {
                    continue;
                }
                let value = if summed(name) { *sum } else { sum / *n as f64 };
                points.push(DataPoint {
                    timestamp: from_micros(*b).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    value: (value * 1000.0).round() / 1000.0,
                });
            }
        }
        let values: Vec<f64> = points.iter().map(|p| p.value).collect();
        series.insert(
            name.to_string(),
            Series {
                unit: unit_of(name),
                statistics: Statistics::of(&values),
                data_points: points,
            },
        );
    }
    Ok(AppMetrics {
        resolution_seconds: resolution,
        series,
    })
}

/// Whether a metric's points of a coarser resolution are the sum of its
/// slots (request counts) rather than their mean.
pub fn summed(metric: &str) -> bool {
    metric == "requests" || metric.starts_with("status_")
}

/// Each app's latest CPU and memory (of the last two minutes).
pub async fn latest_by_app(
    ctx: &ServerCtx,
) -> Result<Vec<(String, String, Option<f64>, Option<f64>)>, Error> {
    let since = to_micros(now()) - 120_000_000;
    store::latest_by_app(&mut *ctx.store.conn().await?, since).await
}

/// The per-app gauges in OpenMetrics text.
pub fn exposition(apps: &[(String, String, Option<f64>, Option<f64>)]) -> String {
    let mut out = String::new();
    let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    for (name, help, pick) in [
        (
            "shellwego_app_cpu_percent",
            "An app's CPU use, the mean over its instances of their share of their allocation",
            2usize,
        ),
        (
            "shellwego_app_memory_bytes",
            "An app's memory use, summed over its instances",
            3,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} gauge\n"));
        for (id, app, cpu, mem) in apps {
            let v = if pick == 2 { cpu } else { mem };
            if let Some(v) = v {
                out.push_str(&format!(
                    "{name}{{app_id=\"{}\",app=\"{}\"}} {v}\n",
                    label(id),
                    label(app)
                ));
            }
        }
    }
    out
}
