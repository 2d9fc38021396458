//! `shellwego bench …`: benchmarks that print figures (never timed tests).

mod agent_memory;
mod apps;
mod cluster;
mod deploy;
mod events;
mod ingress;
mod kit;
mod logs;
mod replicas;
mod sim;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use shellwego_core::list::ListParams;
use shellwego_store::events::EVENTS;
use shellwego_store::list::{Arg, Scope, Sql};
use shellwego_store::Store;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Keyset pagination: latency of the first and the 400th page of a
    /// 100k-row list (limit 100), on SQLite and, with --postgres-url, PostgreSQL.
    List {
        /// Rows to seed.
        #[arg(long, default_value_t = 100_000)]
        rows: u32,
        /// Page to compare with the first.
        #[arg(long, default_value_t = 400)]
        page: u32,
        /// PostgreSQL server URL; a scratch database is created on it and dropped.
        #[arg(long, env = "SHELLWEGO_TEST_DATABASE_URL")]
        postgres_url: Option<String>,
    },
    /// Requests per second of an authenticated GET /v1/user at N concurrent
    /// connections against an in-process server (SQLite in a temp dir).
    Http {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Scheduler placements per second: N instances (of N/10 apps) onto M
    /// simulated nodes in 4 zones, with the control plane's placement code
    /// (in memory, one placement at a time).
    Scheduler {
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
    },
    /// A real `shellwego server` (a child process) with N simulated agents
    /// in this process (tokio tasks long-polling the agent channel, one
    /// connection pool): placements/s end to end (apps created → every
    /// instance healthy in the store), the latency of a change reaching
    /// its agent's held sync (p50/p99), and the control plane's CPU and
    /// peak memory. PostgreSQL (a scratch database) with --postgres-url or
    /// SHELLWEGO_TEST_DATABASE_URL, else SQLite in a temp dir.
    Cluster {
        /// Simulated nodes, each with its own agent (at most 1000: the
        /// bootstrap organization's plan).
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
        /// Apps to create (image apps; nothing runs, the agents report
        /// every instance healthy at once).
        #[arg(long, default_value_t = 200)]
        apps: usize,
        /// Replicas per app.
        #[arg(long, default_value_t = 5)]
        replicas: usize,
        /// Scale changes (one up, one back down, …) made one at a time
        /// for the sync latency.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// Registrations, joins and app creations in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Seconds of each idle CPU reading (before the apps, and after).
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
        /// PostgreSQL server URL; a scratch database is created on it and
        /// dropped [default: SQLite in a temp dir].
        #[arg(long, env = "SHELLWEGO_TEST_DATABASE_URL")]
        postgres_url: Option<String>,
    },
    /// Two `shellwego server` replicas on one PostgreSQL database and a
    /// simulated agent long-polling replica B: the latency of a change made
    /// through replica A reaching the agent (p50/p99; through B too, for
    /// reference), then failover: the replica leading `reconcile` is
    /// killed (SIGKILL) and the time until the other one leads it, per
    /// round (the killed one is started again between rounds).
    Replicas {
        /// Scale changes through each replica, one at a time.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// Leaders killed, one after another.
        #[arg(long, default_value_t = 5)]
        failovers: usize,
        /// PostgreSQL server URL (required); a scratch database is
        /// created on it and dropped.
        #[arg(long, env = "SHELLWEGO_TEST_DATABASE_URL")]
        postgres_url: Option<String>,
    },
    /// Time from `shellwego server` exec on an empty data dir to a ready API.
    Startup {
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// Create-to-healthy latency (p50/p90/p99/max) of N apps created one
    /// after another on a real `shellwego up` in a temp dir, per driver.
    Apps {
        #[arg(long, default_value_t = 50)]
        apps: usize,
        /// The driver to measure [default: process, then container].
        #[arg(long, value_parser = ["process", "container", "microvm"])]
        runtime: Option<String>,
        /// The app: `hello` (examples/hello, python3) or `busybox` (a root
        /// filesystem of one static busybox running its httpd) [default:
        /// hello for process, busybox for container].
        #[arg(long, value_parser = ["hello", "busybox"])]
        app: Option<String>,
    },
    /// Time from `POST …/deploy` to all traffic on the new version, per
    /// strategy (rolling, blue-green, canary), on a real `shellwego up`.
    Deploy {
        /// Deployments per strategy.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 3)]
        replicas: i64,
    },
    /// Resident memory of a `shellwego agent` process idle and with N
    /// instances running and healthy (the instances' own memory apart).
    AgentMemory {
        #[arg(long, default_value_t = 100)]
        instances: usize,
    },
    /// Requests/second and latency of an upstream called directly, through
    /// the ingress, and through nginx as a reverse proxy (when installed).
    Ingress {
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// App logs: lines per second a node's agent stores (N real processes'
    /// output, read, classified and stored by its tailer thread), and the
    /// latency from a line printed by an instance to a follower's SSE
    /// stream on a real `shellwego up` (p50/p99).
    Logs {
        /// Lines in all (100 bytes each).
        #[arg(long, default_value_t = 1_000_000)]
        lines: u64,
        /// Instances writing them.
        #[arg(long, default_value_t = 8)]
        instances: u64,
        /// Lines followed for the latency.
        #[arg(long, default_value_t = 50)]
        samples: usize,
    },
    /// The event log: events per second the recorder and the SSE fan-out
    /// sustain with N subscribers on GET /v1/events/stream, and the latency
    /// from an event's commit to each subscriber reading it (p50/p99). An
    /// in-process server, SQLite in a temp dir or a scratch PostgreSQL
    /// database (--postgres-url / SHELLWEGO_TEST_DATABASE_URL).
    Events {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Seconds of producing.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent producers (each commits one event per transaction).
        #[arg(long, default_value_t = 4)]
        producers: usize,
        /// Events per second offered in all; 0: as fast as they commit.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, env = "SHELLWEGO_TEST_DATABASE_URL")]
        postgres_url: Option<String>,
    },
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Scheduler { instances, nodes } => {
            bench_scheduler(instances, nodes);
            Ok(())
        }
        BenchCommand::List {
            rows,
            page,
            postgres_url,
        } => {
            let dir = tempfile::tempdir()?;
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("bench.db").display()
            );
            bench_list("sqlite", &url, rows, page).await?;
            match postgres_url {
                Some(pg) => {
                    let db = shellwego_testkit::db::PgDb::empty(&pg, "swbench").await?;
                    let r = bench_list("postgres", db.url(), rows, page).await;
                    db.drop_now().await?;
                    r?;
                }
                None => println!(
                    "postgres: skipped (pass --postgres-url or set SHELLWEGO_TEST_DATABASE_URL)"
                ),
            }
            Ok(())
        }
        BenchCommand::Http {
            connections,
            seconds,
        } => bench_http(connections, Duration::from_secs(seconds)).await,
        BenchCommand::Startup { runs } => bench_startup(runs).await,
        BenchCommand::Cluster {
            nodes,
            apps,
            replicas,
            changes,
            concurrency,
            idle_secs,
            postgres_url,
        } => {
            cluster::run(cluster::Opts {
                nodes,
                apps,
                replicas,
                changes,
                concurrency,
                idle_secs,
                // An empty URL (SHELLWEGO_TEST_DATABASE_URL=) means SQLite.
                postgres_url: postgres_url.filter(|u| !u.is_empty()),
            })
            .await
        }
        BenchCommand::Replicas {
            changes,
            failovers,
            postgres_url,
        } => replicas::run(changes, failovers, postgres_url.filter(|u| !u.is_empty())).await,
        BenchCommand::Apps { apps, runtime, app } => apps::run(apps, runtime, app).await,
        BenchCommand::AgentMemory { instances } => agent_memory::run(instances).await,
        BenchCommand::Deploy { runs, replicas } => deploy::run(runs, replicas).await,
        BenchCommand::Ingress {
            seconds,
            connections,
        } => ingress::run(seconds, connections).await,
        BenchCommand::Logs {
            lines,
            instances,
            samples,
        } => logs::run(lines, instances, samples).await,
        BenchCommand::Events {
            subscribers,
            seconds,
            producers,
            rate,
            postgres_url,
        } => {
            events::run(events::Opts {
                subscribers,
                seconds,
                producers,
                rate,
                postgres_url: postgres_url.filter(|u| !u.is_empty()),
            })
            .await
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn bench_list(backend: &str, url: &str, rows: u32, page: u32) -> anyhow::Result<()> {
    let store = Store::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.migrate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let org = "org_bench";
    let t0 = Instant::now();
    seed_events(&store, org, rows).await?;
    let seeded = t0.elapsed();

    let scope = Scope::new().is_in("t.organization_id", [org.to_string()]);
    let mut params = ListParams {
        limit: 100,
        ..Default::default()
    };
    let list = |p: ListParams| {
        let (store, scope) = (store.clone(), scope.clone());
        async move {
            let page = async {
                let key = store.cursor_key()?;
                let q = p.resolve(EVENTS.schema, key)?;
                let mut conn = store.conn().await?;
                shellwego_store::list::list(&mut conn, &EVENTS, &scope, &q, key, |_| Ok(())).await
            };
            page.await.map_err(|e| anyhow::anyhow!("{e}"))
        }
    };
    // Walk to the target page.
    let mut cursor_for_page = None;
    for _ in 1..page {
        let p = list(params.clone()).await?;
        match p.pagination.next_cursor {
            Some(c) => params.cursor = Some(c),
            None => bail!("the list ended before page {page}; seed more rows"),
        }
        cursor_for_page = params.cursor.clone();
    }
    let first = ListParams {
        limit: 100,
        ..Default::default()
    };
    let deep = ListParams {
        limit: 100,
        cursor: cursor_for_page,
        ..Default::default()
    };
    let runs = 30;
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..runs {
        let t = Instant::now();
        list(first.clone()).await?;
        a.push(t.elapsed());
        let t = Instant::now();
        list(deep.clone()).await?;
        b.push(t.elapsed());
    }
    let (ma, mb) = (median(a), median(b));
    println!(
        "{backend:8} rows={rows} seed={:.1}s  page 1: {:.2} ms  page {page}: {:.2} ms  ratio {:.2}  (median of {runs}, limit 100, includes the total count)",
        seeded.as_secs_f64(),
        ma.as_secs_f64() * 1e3,
        mb.as_secs_f64() * 1e3,
        mb.as_secs_f64() / ma.as_secs_f64().max(1e-9)
    );
    store.close().await;
    Ok(())
}

async fn seed_events(store: &Store, org: &str, rows: u32) -> anyhow::Result<()> {
    let base =
        shellwego_core::time::to_micros(shellwego_core::time::now()) - i64::from(rows) * 1000;
    let batch = 500u32;
    let mut tx = store.begin().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut i = 0u32;
    while i < rows {
        let n = batch.min(rows - i);
        let mut sql = Sql::default();
        sql.push("INSERT INTO events (id, organization_id, event_type, severity, actor_type, resource_type, resource_id, metadata, created_at) VALUES ");
        for j in 0..n {
            if j > 0 {
                sql.push(", ");
            }
            let k = i + j;
            sql.push("(")
                .arg(Arg::Text(shellwego_core::id::new_id("evt")))
                .push(", ")
                .arg(Arg::Text(org.into()))
                .push(", ")
                .arg(Arg::Text(
                    ["app.deployed", "node.offline", "user.login"][(k % 3) as usize].into(),
                ))
                .push(", 'info', 'system', 'app', ")
                .arg(Arg::Text(format!("app_{k}")))
                .push(", '{}', ")
                .arg(Arg::Int(base + i64::from(k) * 1000))
                .push(")");
        }
        sql.query().execute(&mut *tx).await?;
        i += n;
    }
    tx.commit().await?;
    // Fresh statistics, as a long-running database would have.
    let analyze = match store.backend() {
        shellwego_store::Backend::Sqlite => "ANALYZE",
        shellwego_store::Backend::Postgres => "ANALYZE events",
    };
    sqlx::query(analyze).execute(store.pool()).await?;
    Ok(())
}

async fn bench_http(connections: usize, duration: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config =
        shellwego_server::ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir.path());
    config.admin_password = Some("bench-password".into());
    let server = shellwego_server::serve::start(config.clone()).await?;
    let base = format!("http://{}", server.addr);
    let admin = std::fs::read_to_string(config.admin_token_path())?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    // One token per connection: each token has its own rate-limit bucket,
    // as 64 separate clients would.
    let mut tokens = vec![];
    for i in 0..connections {
        let r: serde_json::Value = client
            .post(format!("{base}/v1/user/tokens"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"name": format!("bench-{i}")}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(
            r["token"]
                .as_str()
                .context("no token in response")?
                .to_string(),
        );
    }
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = vec![];
    for tok in tokens {
        let (client, base, ok, other) = (client.clone(), base.clone(), ok.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let t = Instant::now();
                match client
                    .get(format!("{base}/v1/user"))
                    .bearer_auth(&tok)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed());
                    }
                    _ => {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "GET /v1/user (authenticated, SQLite): {connections} connections, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} ok, {} failed",
        ok.load(Ordering::Relaxed) as f64 / secs,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        ok.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    server.shutdown().await?;
    Ok(())
}

async fn bench_startup(runs: u32) -> anyhow::Result<()> {
    let exe: PathBuf = std::env::current_exe()?;
    let mut times = vec![];
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let port = kit::free_port()?;
        let t = Instant::now();
        // Ready: its admin token written and /readyz answering 200.
        let mut server = kit::Platform::server(&exe)
            .dir(dir.path())
            .data_dir(dir.path())
            .ports(port, 0)
            .env("SHELLWEGO_LOG", "warn")
            .timeout(Duration::from_secs(30))
            .poll(Duration::from_millis(2))
            .start_async()
            .await
            .context("server did not become ready in 30 s")?;
        times.push(t.elapsed());
        server.kill();
    }
    println!(
        "startup on an empty data dir (exec → admin-token written → /readyz 200): median {:.0} ms over {runs} runs",
        median(times).as_secs_f64() * 1e3
    );
    Ok(())
}

/// Place `instances` replicas (10 per app) on `nodes` nodes, every one
/// through `Cluster::place` (spread by app and zone, resources checked).
fn bench_scheduler(instances: usize, nodes: usize) {
    use shellwego_core::sched::{Cluster, NodeState, Request};
    let mk = || {
        Cluster::new(
            (0..nodes)
                .map(|i| NodeState {
                    id: format!("node_{i}"),
                    ready: true,
                    region: "eu".into(),
                    zone: format!("z{}", i % 4),
                    drivers: vec!["process".into(), "container".into()],
                    labels: Default::default(),
                    free_cpu_millis: 32_000,
                    free_memory: 64 << 30,
                    free_slots: 256,
                })
                .collect(),
        )
    };
    let mut best = f64::MAX;
    let mut placed = 0;
    for _ in 0..3 {
        let mut c = mk();
        let t = std::time::Instant::now();
        placed = 0;
        for i in 0..instances {
            let r = Request {
                app_id: format!("app_{}", i / 10),
                memory: 256 << 20,
                cpu_millis: 250,
                ..Default::default()
            };
            if c.place(&r).is_ok() {
                placed += 1;
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "scheduler: {placed} of {instances} instances on {nodes} nodes in {:.1} ms (best of 3) = {:.0} placements/s",
        best * 1000.0,
        placed as f64 / best
    );
}
