//! Usage metrics (see migration 0023): samples per instance and slot,
//! request counts per app, source and slot, and their downsampled
//! rollups.

use shellwego_core::Error;

use crate::{db_err, Conn};

/// One instance's (or node's) sample in a 10-second slot.
#[derive(Debug, Clone, Default)]
pub struct SampleRow {
    pub owner_id: String,
    pub instance_id: String,
    pub slot: i64,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<f64>,
    pub memory_percent: Option<f64>,
    pub disk_bytes: Option<f64>,
    pub disk_percent: Option<f64>,
    pub network_rx: Option<f64>,
    pub network_tx: Option<f64>,
}

/// Store samples (one sent again replaces itself).
pub async fn put_samples(db: &mut Conn, node_id: &str, rows: &[SampleRow]) -> Result<(), Error> {
    for r in rows {
        sqlx::query(
            "INSERT INTO metric_samples (owner_id, instance_id, node_id, slot, cpu_percent, memory_bytes, memory_percent, disk_bytes, disk_percent, network_rx, network_tx)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (instance_id, slot) DO UPDATE SET owner_id = excluded.owner_id, node_id = excluded.node_id,
               cpu_percent = excluded.cpu_percent, memory_bytes = excluded.memory_bytes, memory_percent = excluded.memory_percent,
               disk_bytes = excluded.disk_bytes, disk_percent = excluded.disk_percent,
               network_rx = excluded.network_rx, network_tx = excluded.network_tx",
        )
        .bind(&r.owner_id)
        .bind(&r.instance_id)
        .bind(node_id)
        .bind(r.slot)
        .bind(r.cpu_percent)
        .bind(r.memory_bytes)
        .bind(r.memory_percent)
        .bind(r.disk_bytes)
        .bind(r.disk_percent)
        .bind(r.network_rx)
        .bind(r.network_tx)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// The node's latest usage (percentages; each absent one left as it was).
pub async fn set_node_usage(
    db: &mut Conn,
    node_id: &str,
    cpu: Option<f64>,
    memory: Option<f64>,
    disk: Option<f64>,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE nodes SET usage_cpu = COALESCE($1, usage_cpu), usage_memory = COALESCE($2, usage_memory),
           usage_disk = COALESCE($3, usage_disk) WHERE id = $4",
    )
    .bind(cpu)
    .bind(memory)
    .bind(disk)
    .bind(node_id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Requests one ingress process proxied to an instance in a slot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRow {
    pub instance_id: String,
    pub slot: i64,
    pub requests: i64,
    pub status: [i64; 4],
    pub latency_ms_sum: f64,
}

/// Add an ingress's counts to the instances' apps (a slot flushed twice
/// adds up; an instance deleted meanwhile is skipped).
pub async fn put_requests(db: &mut Conn, source: &str, rows: &[RequestRow]) -> Result<(), Error> {
    for r in rows {
        sqlx::query(
            "INSERT INTO request_samples (app_id, source, slot, requests, status_2xx, status_3xx, status_4xx, status_5xx, latency_ms_sum)
             SELECT app_id, $2, $3, $4, $5, $6, $7, $8, $9 FROM instances WHERE id = $1
             ON CONFLICT (app_id, source, slot) DO UPDATE SET requests = request_samples.requests + excluded.requests,
               status_2xx = request_samples.status_2xx + excluded.status_2xx, status_3xx = request_samples.status_3xx + excluded.status_3xx,
               status_4xx = request_samples.status_4xx + excluded.status_4xx, status_5xx = request_samples.status_5xx + excluded.status_5xx,
               latency_ms_sum = request_samples.latency_ms_sum + excluded.latency_ms_sum",
        )
        .bind(&r.instance_id)
        .bind(source)
        .bind(r.slot)
        .bind(r.requests)
        .bind(r.status[0])
        .bind(r.status[1])
        .bind(r.status[2])
        .bind(r.status[3])
        .bind(r.latency_ms_sum)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// An app's values in one slot: its instances' samples combined (CPU and
/// memory % the mean, bytes the sum) and its requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotValues {
    pub slot: i64,
    /// metric name → value (only those measured in the slot).
    pub values: Vec<(&'static str, f64)>,
}

type UsageRow = (
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

/// The app's per-slot values in `[from, to)` (slots in microseconds),
/// oldest first.
pub async fn app_slots(
    db: &mut Conn,
    app_id: &str,
    from: i64,
    to: i64,
) -> Result<Vec<SlotValues>, Error> {
    let usage: Vec<UsageRow> = sqlx::query_as(
        "SELECT slot, AVG(cpu_percent), SUM(memory_bytes), AVG(memory_percent), SUM(disk_bytes), SUM(network_rx), SUM(network_tx)
         FROM metric_samples WHERE owner_id = $1 AND slot >= $2 AND slot < $3 GROUP BY slot ORDER BY slot",
    )
    .bind(app_id)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    let reqs: Vec<(i64, i64, i64, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT slot, CAST(SUM(requests) AS BIGINT), CAST(SUM(status_2xx) AS BIGINT), CAST(SUM(status_3xx) AS BIGINT),
                CAST(SUM(status_4xx) AS BIGINT), CAST(SUM(status_5xx) AS BIGINT), CAST(SUM(latency_ms_sum) AS DOUBLE PRECISION)
         FROM request_samples WHERE app_id = $1 AND slot >= $2 AND slot < $3 GROUP BY slot ORDER BY slot",
    )
    .bind(app_id)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    let mut by_slot: std::collections::BTreeMap<i64, Vec<(&'static str, f64)>> = Default::default();
    for (slot, cpu, mem, memp, disk, rx, tx) in usage {
        let v = by_slot.entry(slot).or_default();
        for (name, x) in [
            ("cpu", cpu),
            ("memory", mem),
            ("memory_percent", memp),
            ("disk", disk),
            ("network_rx", rx),
            ("network_tx", tx),
        ] {
            if let Some(x) = x {
                v.push((name, x));
            }
        }
    }
    for (slot, n, s2, s3, s4, s5, lat) in reqs {
        let v = by_slot.entry(slot).or_default();
        v.extend([
            ("requests", n as f64),
            ("status_2xx", s2 as f64),
            ("status_3xx", s3 as f64),
            ("status_4xx", s4 as f64),
            ("status_5xx", s5 as f64),
        ]);
        if n > 0 {
            v.push(("latency", lat / n as f64));
        }
    }
    Ok(by_slot
        .into_iter()
        .map(|(slot, values)| SlotValues { slot, values })
        .collect())
}

/// A downsampled bucket of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub metric: String,
    pub ts: i64,
    pub total: f64,
    pub n: i64,
    pub min: f64,
    pub max: f64,
}

pub async fn put_rollups(
    db: &mut Conn,
    app_id: &str,
    resolution: i64,
    rows: &[Rollup],
) -> Result<(), Error> {
    for r in rows {
        sqlx::query(
            "INSERT INTO metric_rollups (app_id, metric, resolution, ts, total, n, vmin, vmax)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (app_id, metric, resolution, ts) DO UPDATE SET total = excluded.total, n = excluded.n,
               vmin = excluded.vmin, vmax = excluded.vmax",
        )
        .bind(app_id)
        .bind(&r.metric)
        .bind(resolution)
        .bind(r.ts)
        .bind(r.total)
        .bind(r.n)
        .bind(r.min)
        .bind(r.max)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// The app's buckets of a resolution in `[from, to)`, oldest first.
pub async fn rollups(
    db: &mut Conn,
    app_id: &str,
    resolution: i64,
    from: i64,
    to: i64,
) -> Result<Vec<Rollup>, Error> {
    let rows: Vec<(String, i64, f64, i64, f64, f64)> = sqlx::query_as(
        "SELECT metric, ts, total, n, vmin, vmax FROM metric_rollups
         WHERE app_id = $1 AND resolution = $2 AND ts >= $3 AND ts < $4 ORDER BY ts, metric",
    )
    .bind(app_id)
    .bind(resolution)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|(metric, ts, total, n, min, max)| Rollup {
            metric,
            ts,
            total,
            n,
            min,
            max,
        })
        .collect())
}

/// Apps with samples or requests in `[from, to)`.
pub async fn active_apps(db: &mut Conn, from: i64, to: i64) -> Result<Vec<String>, Error> {
    sqlx::query_scalar(
        "SELECT owner_id FROM metric_samples WHERE slot >= $1 AND slot < $2 AND owner_id <> node_id AND owner_id <> instance_id
         UNION SELECT app_id FROM request_samples WHERE slot >= $1 AND slot < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// Apps with rollups of `resolution` in `[from, to)`.
pub async fn apps_with_rollups(
    db: &mut Conn,
    resolution: i64,
    from: i64,
    to: i64,
) -> Result<Vec<String>, Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT app_id FROM metric_rollups WHERE resolution = $1 AND ts >= $2 AND ts < $3",
    )
    .bind(resolution)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// Drop samples and request counts before `slot`, and rollups of a
/// resolution before `ts`.
pub async fn delete_samples_before(db: &mut Conn, slot: i64) -> Result<u64, Error> {
    let a = sqlx::query("DELETE FROM metric_samples WHERE slot < $1")
        .bind(slot)
        .execute(&mut *db)
        .await
        .map_err(db_err)?
        .rows_affected();
    let b = sqlx::query("DELETE FROM request_samples WHERE slot < $1")
        .bind(slot)
        .execute(&mut *db)
        .await
        .map_err(db_err)?
        .rows_affected();
    Ok(a + b)
}

pub async fn delete_rollups_before(db: &mut Conn, resolution: i64, ts: i64) -> Result<u64, Error> {
    Ok(
        sqlx::query("DELETE FROM metric_rollups WHERE resolution = $1 AND ts < $2")
            .bind(resolution)
            .bind(ts)
            .execute(&mut *db)
            .await
            .map_err(db_err)?
            .rows_affected(),
    )
}

/// The latest value of each app's CPU (mean over its instances) and
/// memory (sum) since `from`, for the Prometheus exposition: (app id,
/// app name, cpu %, memory bytes).
pub async fn latest_by_app(
    db: &mut Conn,
    from: i64,
) -> Result<Vec<(String, String, Option<f64>, Option<f64>)>, Error> {
    sqlx::query_as(
        "SELECT s.owner_id, a.name, AVG(s.cpu_percent), SUM(s.memory_bytes) FROM metric_samples s
         JOIN (SELECT owner_id, MAX(slot) AS slot FROM metric_samples WHERE slot >= $1 AND owner_id <> instance_id GROUP BY owner_id) l
           ON l.owner_id = s.owner_id AND l.slot = s.slot
         JOIN apps a ON a.id = s.owner_id
         GROUP BY s.owner_id, a.name ORDER BY s.owner_id",
    )
    .bind(from)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// The node's instances and their apps (samples are taken only for those).
pub async fn instances_on_node(
    db: &mut Conn,
    node_id: &str,
) -> Result<Vec<(String, String)>, Error> {
    sqlx::query_as("SELECT id, app_id FROM instances WHERE node_id = $1")
        .bind(node_id)
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}

/// The mean CPU (percent of allocation) of the app's instances' samples
/// in slots from `from` on, and how many samples that is.
pub async fn cpu_average(
    db: &mut Conn,
    app_id: &str,
    from: i64,
) -> Result<(Option<f64>, i64), Error> {
    sqlx::query_as(
        "SELECT AVG(cpu_percent), COUNT(cpu_percent) FROM metric_samples WHERE owner_id = $1 AND slot >= $2",
    )
    .bind(app_id)
    .bind(from)
    .fetch_one(&mut *db)
    .await
    .map_err(db_err)
}

/// Apps whose spec asks for autoscaling (candidates: their spec decides).
pub async fn autoscaled_apps(db: &mut Conn) -> Result<Vec<String>, Error> {
    sqlx::query_scalar("SELECT id FROM apps WHERE spec LIKE '%\"autoscale\"%' ORDER BY id")
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}

/// When the app's replicas were last changed by scaling.
pub async fn autoscaled_at(db: &mut Conn, app_id: &str) -> Result<Option<i64>, Error> {
    let r: Option<Option<i64>> = sqlx::query_scalar("SELECT autoscaled_at FROM apps WHERE id = $1")
        .bind(app_id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.flatten())
}

pub async fn set_autoscaled_at(db: &mut Conn, app_id: &str, at: i64) -> Result<(), Error> {
    sqlx::query("UPDATE apps SET autoscaled_at = $1 WHERE id = $2")
        .bind(at)
        .bind(app_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}
