//! `shellwego bench cluster`: a real `shellwego server` (a child process;
//! PostgreSQL on a scratch database when a server URL is given, else
//! SQLite in a temp dir) with N simulated agents in the benchmark process
//! (see [`super::sim`]): placements per second end to end, the latency of
//! a change reaching its agent's held sync, and the control plane's CPU
//! and memory meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use shellwego_store::Store;
use shellwego_testkit::db::PgDb;
use tokio::sync::watch;

use super::kit::{self, Api, Platform};
use super::sim::{self, Seen};

pub struct Opts {
    pub nodes: usize,
    pub apps: usize,
    pub replicas: usize,
    pub changes: usize,
    pub concurrency: usize,
    pub idle_secs: u64,
    pub postgres_url: Option<String>,
}

/// What each simulated node offers: enough for its share of instances.
const NODE_CORES: i64 = 8;
const NODE_MEMORY: i64 = 16 << 30;
/// The longest the benchmark waits for anything.
const LIMIT: Duration = Duration::from_secs(600);

pub async fn run(o: Opts) -> anyhow::Result<()> {
    if o.nodes == 0 || o.apps == 0 || o.replicas == 0 || o.concurrency == 0 {
        bail!("--nodes, --apps, --replicas and --concurrency must be at least 1");
    }
    if o.replicas as i64 >= shellwego_api::apps::MAX_REPLICAS {
        bail!(
            "--replicas must be below {} (a change scales one up by one)",
            shellwego_api::apps::MAX_REPLICAS
        );
    }
    if o.nodes > 1000 {
        // The bootstrap organization's plan (enterprise) takes 1000 nodes.
        bail!("--nodes may be at most 1000 (the enterprise plan's node limit)");
    }
    let dir = tempfile::tempdir()?;
    let db = match &o.postgres_url {
        Some(url) => Some(PgDb::from_template(url, "swbench").await?),
        None => None,
    };
    // Every agent holds a connection from 127.0.0.1 (one long-poll each),
    // more than the default cap of 256 per client address.
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nmax_connections_per_ip = {}\nmax_connections = {}\n",
            o.nodes + 256,
            (2 * o.nodes + 512).max(8192)
        ),
    )?;
    let data = dir.path().join("server");
    let mut args = vec!["--config".to_string(), config.display().to_string()];
    let store_url = match &db {
        Some(db) => {
            args.extend(["--database-url".to_string(), db.url().to_string()]);
            db.url().to_string()
        }
        None => format!("sqlite://{}", data.join("shellwego.db").display()),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = kit::server(dir.path(), &args)?
        .data_dir(&data)
        .timeout(Duration::from_secs(60))
        .start_async()
        .await;
    let mut server = match started {
        Ok(s) => s,
        Err(e) => {
            if let Some(db) = db {
                let _ = db.drop_now().await;
            }
            return Err(e);
        }
    };
    let res = measure(&o, &mut server, &store_url, db.as_ref().map(PgDb::name)).await;
    server.terminate_async(Duration::from_secs(30)).await;
    if res.is_err() {
        let mut dir = dir;
        dir.disable_cleanup(true);
        eprintln!(
            "the end of the server's log ({}, kept):\n{}",
            server.log_path().display(),
            server.log_tail(40)
        );
    }
    if let Some(db) = db {
        db.drop_now().await?;
    }
    res
}

/// CPU used so far by the control plane, by the PostgreSQL backends
/// serving its database, and by this process (the simulated agents and
/// the load).
struct Mark {
    at: Instant,
    server: Duration,
    pg: HashMap<u32, Duration>,
    me: Duration,
    /// PostgreSQL's counts for the database: transactions, and lookups
    /// of a node row by its index (`pg_stat_*`, flushed by the backends
    /// about once a second: approximate over a short phase).
    pg_stats: Option<(i64, i64)>,
}

struct Meter {
    server_pid: u32,
    probe: Store,
    /// The scratch database's name (PostgreSQL), and the backend of the
    /// benchmark's own probe connection (not counted).
    pg: Option<(String, u32)>,
}

impl Meter {
    async fn mark(&self) -> Mark {
        let pg_stats = match &self.pg {
            Some(_) => sqlx::query_as::<_, (i64, i64)>(
                "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()), \
                        (SELECT COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'nodes')",
            )
            .fetch_one(self.probe.pool())
            .await
            .ok(),
            None => None,
        };
        let pg = match &self.pg {
            Some((db, probe)) => kit::pg_backends(db)
                .into_iter()
                .filter(|p| p != probe)
                .filter_map(|p| Some((p, kit::cpu_time(p)?)))
                .collect(),
            None => HashMap::new(),
        };
        Mark {
            at: Instant::now(),
            server: kit::cpu_time(self.server_pid).unwrap_or_default(),
            pg,
            me: kit::cpu_time(std::process::id()).unwrap_or_default(),
            pg_stats,
        }
    }

    /// One line: the CPU each used between `a` and now.
    async fn since(&self, what: &str, a: &Mark) -> String {
        let b = self.mark().await;
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let share = |d: Duration| {
            format!(
                "{:.2} s = {:.0} %",
                d.as_secs_f64(),
                d.as_secs_f64() / wall * 100.0
            )
        };
        let mut line = format!(
            "cpu, {what} ({wall:.1} s): control plane {}",
            share(b.server.saturating_sub(a.server))
        );
        if self.pg.is_some() {
            let pg: Duration =
                b.pg.iter()
                    .map(|(p, t)| t.saturating_sub(a.pg.get(p).copied().unwrap_or_default()))
                    .sum();
            line.push_str(&format!(", PostgreSQL backends {}", share(pg)));
        }
        line.push_str(&format!(
            ", benchmark process (agents, load) {}  [% of one core]",
            share(b.me.saturating_sub(a.me))
        ));
        if let (Some((xa, ia)), Some((xb, ib))) = (a.pg_stats, b.pg_stats) {
            line.push_str(&format!(
                "; PostgreSQL: {} transactions, {} node-row index lookups",
                xb - xa,
                ib - ia
            ));
        }
        line
    }
}

async fn count(probe: &Store, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(probe.pool())
        .await?)
}

async fn measure(
    o: &Opts,
    server: &mut Platform,
    store_url: &str,
    db_name: Option<&str>,
) -> anyhow::Result<()> {
    let api = server.api();
    let pid = server.pid().context("the server is not running")?;
    let probe = Store::connect(store_url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let meter = Meter {
        server_pid: pid,
        probe: probe.clone(),
        pg: match db_name {
            Some(db) => {
                let me: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(probe.pool())
                    .await?;
                Some((db.to_string(), u32::try_from(me).unwrap_or(0)))
            }
            None => None,
        },
    };
    let backend = if db_name.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let n = o.nodes;

    // 1. N nodes registered (as the admin) and joined (as their agents).
    let start = meter.mark().await;
    let client = sim::client(&server.url())?;
    let joined: Vec<sim::Joined> = futures::stream::iter(0..n)
        .map(|i| {
            let (api, client) = (api.clone(), client.clone());
            async move {
                let name = format!("sim-{i}");
                let reg = api
                    .post("/v1/nodes", &json!({"hostname": name, "region": "eu"}))
                    .await?;
                let token = reg["join_token"].as_str().context("no join token")?;
                let m = sim::machine(
                    token,
                    &name,
                    NODE_CORES,
                    NODE_MEMORY,
                    &format!("z{}", i % 4),
                );
                sim::join(&client, Some(sim::loopback(i)), &m).await
            }
        })
        .buffer_unordered(o.concurrency)
        .try_collect()
        .await?;
    println!(
        "cluster ({backend}): {n} nodes registered and joined in {:.1} s ({} at once)",
        start.at.elapsed().as_secs_f64(),
        o.concurrency
    );
    let seen = Arc::new(Seen::default());
    let (stop, stopping) = watch::channel(false);
    let t = Instant::now();
    let agents: Vec<_> = joined
        .into_iter()
        .map(|j| j.spawn(seen.clone(), stopping.clone()))
        .collect();
    let res = run_phases(o, &api, server, &probe, &meter, &seen, start, t).await;
    let _ = stop.send(true);
    for a in agents {
        let _ = a.await;
    }
    probe.close().await;
    res
}

#[allow(clippy::too_many_arguments)]
async fn run_phases(
    o: &Opts,
    api: &Api,
    server: &mut Platform,
    probe: &Store,
    meter: &Meter,
    seen: &Seen,
    start: Mark,
    agents_started: Instant,
) -> anyhow::Result<()> {
    let n = o.nodes;
    // Every agent has had its first answer and holds its next sync.
    loop {
        server.check_alive()?;
        let ready = count(probe, "SELECT COUNT(*) FROM nodes WHERE status = 'ready'").await?;
        if seen.first_synced.load(Ordering::Relaxed) >= n && ready >= n as i64 {
            break;
        }
        if agents_started.elapsed() > LIMIT {
            bail!(
                "only {} of {n} agents synced ({ready} nodes ready) in {LIMIT:?}; last error: {:?}",
                seen.first_synced.load(Ordering::Relaxed),
                seen.last_error()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "agents: all {n} syncing {:.1} s after their tasks started (one tokio task each, one shared connection pool)",
        agents_started.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        meter
            .since("registering and joining the nodes", &start)
            .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = meter.mark().await;
    let syncs0 = seen.syncs.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    println!(
        "{}; {:.0} syncs/s answered",
        meter
            .since(
                &format!("idle, {n} agents long-polling, no instance"),
                &idle
            )
            .await,
        (seen.syncs.load(Ordering::Relaxed) - syncs0) as f64 / o.idle_secs.max(1) as f64
    );

    // 2. Placements: A apps of R replicas, created C at a time, until
    // every instance is healthy in the store (reported so by its agent).
    let total = (o.apps * o.replicas) as i64;
    let placing = meter.mark().await;
    let next = Arc::new(AtomicUsize::new(0));
    let creators: Vec<_> = (0..o.concurrency.min(o.apps))
        .map(|_| {
            let (api, next, apps, replicas) = (api.clone(), next.clone(), o.apps, o.replicas);
            tokio::spawn(async move {
                let mut made = vec![];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= apps {
                        return Ok::<_, anyhow::Error>(made);
                    }
                    let t = Instant::now();
                    let a = api
                        .post(
                            "/v1/apps",
                            &json!({
                                "name": format!("bench-{i}"),
                                "image": "nginx",
                                "replicas": replicas,
                                "resources": {"memory": "128m", "cpu": 0.1},
                            }),
                        )
                        .await?;
                    let id = a["id"].as_str().context("no app id")?.to_string();
                    made.push((i, id, t.elapsed()));
                }
            })
        })
        .collect();
    let mut healthy_at = None;
    let mut last = 0;
    while placing.at.elapsed() < LIMIT {
        last = count(
            probe,
            "SELECT COUNT(*) FROM instances WHERE desired = 'running' AND status = 'healthy'",
        )
        .await?;
        if last >= total {
            healthy_at = Some(placing.at.elapsed());
            break;
        }
        server.check_alive()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut apps: Vec<(usize, String, Duration)> = vec![];
    for c in creators {
        apps.extend(c.await??);
    }
    apps.sort();
    let Some(healthy_at) = healthy_at else {
        bail!(
            "only {last} of {total} instances healthy after {LIMIT:?}; last agent error: {:?}",
            seen.last_error()
        );
    };
    let mut posts: Vec<Duration> = apps.iter().map(|a| a.2).collect();
    posts.sort();
    let (received, received_last) = seen.appeared_count_and_last();
    let (reported, reported_last) = seen.reported_count_and_last();
    let after = |t: Option<Instant>| {
        t.map_or("?".into(), |t| {
            format!("{:.2} s", t.duration_since(placing.at).as_secs_f64())
        })
    };
    println!(
        "placements: {total} instances ({} apps × {}, {} created at once) all healthy in the store {:.2} s after the first create = {:.0} placements/s end to end",
        o.apps,
        o.replicas,
        o.concurrency.min(o.apps),
        healthy_at.as_secs_f64(),
        total as f64 / healthy_at.as_secs_f64()
    );
    println!(
        "placements, in between: the last of {received} instances received by its agent at {}, the last of {reported} reported healthy at {}; POST /v1/apps p50 {} p99 {}",
        after(received_last),
        after(reported_last),
        kit::ms(kit::pct(&posts, 0.5)),
        kit::ms(kit::pct(&posts, 0.99)),
    );
    println!("{}", meter.since("placing", &placing).await);

    // 3. Changes, one at a time: an app scaled up by one, then down again;
    // from the API's answer to the affected agent's held sync returning
    // the desired state with the instance added (or without it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changing = meter.mark().await;
    let mut from_answer: Vec<f64> = vec![];
    let mut from_request: Vec<f64> = vec![];
    let mut early = 0;
    let mut missed = 0;
    let mut known: HashMap<String, BTreeSet<String>> = HashMap::new();
    for k in 0..o.changes {
        let app = &apps[(k / 2) % apps.len()].1;
        let up = k % 2 == 0;
        if !known.contains_key(app) {
            let (_, a) = api.get(&format!("/v1/apps/{app}")).await?;
            known.insert(app.clone(), running_ids(&a));
        }
        let before = known.get(app).cloned().unwrap_or_default();
        let replicas = if up { o.replicas + 1 } else { o.replicas };
        let sent = Instant::now();
        let a = api
            .post(
                &format!("/v1/apps/{app}/scale"),
                &json!({ "replicas": replicas }),
            )
            .await?;
        let answered = Instant::now();
        let now = running_ids(&a);
        let target: Vec<String> = if up {
            now.difference(&before).cloned().collect()
        } else {
            before.difference(&now).cloned().collect()
        };
        known.insert(app.clone(), now);
        let [id] = target.as_slice() else {
            bail!(
                "scaling {app} to {replicas} changed {} instance(s), not one: {a}",
                target.len()
            );
        };
        let at = if up {
            seen.wait_for(Duration::from_secs(30), |s| s.appeared(id))
                .await
        } else {
            seen.wait_for(Duration::from_secs(30), |s| s.gone(id)).await
        };
        let Some(at) = at else {
            missed += 1;
            continue;
        };
        let signed = if at >= answered {
            at.duration_since(answered).as_secs_f64()
        } else {
            early += 1;
            -answered.duration_since(at).as_secs_f64()
        };
        from_answer.push(signed * 1e3);
        from_request.push(at.saturating_duration_since(sent).as_secs_f64() * 1e3);
    }
    sort(&mut from_answer);
    sort(&mut from_request);
    println!(
        "agent sync latency (the API's answer to a scale → the affected agent's held sync returns the change), {} changes one at a time: p50 {:.2} ms p99 {:.2} ms (from sending the request: p50 {:.2} ms p99 {:.2} ms; {early} reached the agent before the answer reached the benchmark, {missed} not within 30 s)",
        from_answer.len(),
        pct(&from_answer, 0.5),
        pct(&from_answer, 0.99),
        pct(&from_request, 0.5),
        pct(&from_request, 0.99),
    );
    println!("{}", meter.since("changing", &changing).await);

    // 4. Idle again, every instance healthy; then the memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = meter.mark().await;
    let syncs0 = seen.syncs.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    println!(
        "{}; {:.0} syncs/s answered",
        meter
            .since(
                &format!("idle, {n} agents long-polling, {total} instances healthy"),
                &idle
            )
            .await,
        (seen.syncs.load(Ordering::Relaxed) - syncs0) as f64 / o.idle_secs.max(1) as f64
    );
    println!("{}", meter.since("the whole run", &start).await);
    let mem = kit::mem_of(meter.server_pid)?;
    println!(
        "control plane memory: peak (VmHWM) {}, now (VmRSS) {}, {} threads",
        kit::mib(mem.hwm),
        kit::mib(mem.rss),
        mem.threads
    );
    println!(
        "sync calls: {} answered, {} failed{}",
        seen.syncs.load(Ordering::Relaxed),
        seen.errors.load(Ordering::Relaxed),
        seen.last_error()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    );
    Ok(())
}

/// The ids of an app's instances that are not stopping.
pub(super) fn running_ids(app: &Value) -> BTreeSet<String> {
    app["instances"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|i| i["status"] != "stopping" && i["status"] != "stopped")
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn sort(v: &mut [f64]) {
    v.sort_by(f64::total_cmp);
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=1).
pub(super) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
