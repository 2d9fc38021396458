//! `shellwego bench replicas` (PostgreSQL): two `shellwego server`
//! replicas on one scratch database and one simulated agent long-polling
//! replica B (see [`super::sim`]). Measures how long a change made
//! through replica A takes to reach the agent's held sync on B (A's
//! NOTIFY, B's LISTEN, B's held sync re-reading the node's generation),
//! with the same through B as the in-process reference; then failover:
//! the replica leading `reconcile` is killed (SIGKILL) and the time until
//! the other one's `/readyz` lists it among what it leads.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use shellwego_testkit::db::PgDb;
use tokio::sync::watch;

use super::cluster::{pct, running_ids, sort};
use super::kit::{self, Platform};
use super::sim::{self, Seen};

/// Every replica's `SHELLWEGO_MASTER_KEY` (base64 of 32 bytes): replicas
/// must share it.
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The singleton controllers (their lease names).
const SINGLETONS: [&str; 9] = shellwego_server::controller::SINGLETONS;

pub async fn run(
    changes: usize,
    failovers: usize,
    postgres_url: Option<String>,
) -> anyhow::Result<()> {
    let Some(url) = postgres_url else {
        bail!("bench replicas needs PostgreSQL (replicas share one database): pass --postgres-url or set SHELLWEGO_TEST_DATABASE_URL");
    };
    let db = PgDb::from_template(&url, "swbench").await?;
    let dir = tempfile::tempdir()?;
    let res = async {
        let mut replicas = vec![];
        for name in ["a", "b"] {
            replicas.push(start_replica(dir.path(), name, db.url()).await?);
        }
        let res = measure(&mut replicas, changes, failovers).await;
        for r in &mut replicas {
            r.terminate_async(Duration::from_secs(30)).await;
        }
        if res.is_err() {
            for (r, name) in replicas.iter().zip(["a", "b"]) {
                eprintln!(
                    "the end of replica {name}'s log ({}):\n{}",
                    r.log_path().display(),
                    r.log_tail(30)
                );
            }
        }
        res
    }
    .await;
    if res.is_err() {
        let mut dir = dir;
        dir.disable_cleanup(true);
        eprintln!("(the logs are kept in {})", dir.path().display());
    }
    db.drop_now().await?;
    res
}

/// Replica `name` (`a` bootstraps; `b` gets a copy of its admin token).
async fn start_replica(dir: &Path, name: &str, db_url: &str) -> anyhow::Result<Platform> {
    let data = dir.join(name);
    if name != "a" {
        // A replica on a bootstrapped database writes no admin token.
        std::fs::create_dir_all(&data)?;
        std::fs::copy(dir.join("a").join("admin-token"), data.join("admin-token"))?;
    }
    kit::server(dir, &["--database-url", db_url])?
        .data_dir(&data)
        .log_name(format!("{name}.log"))
        .env("SHELLWEGO_MASTER_KEY", MASTER_KEY)
        .start_async()
        .await
        .with_context(|| format!("replica {name}"))
}

async fn measure(
    replicas: &mut [Platform],
    changes: usize,
    failovers: usize,
) -> anyhow::Result<()> {
    let (a, b) = (replicas[0].api(), replicas[1].api());
    // The node, registered through A; its agent long-polls B (and would
    // go on with A if B could not be reached).
    let reg = a
        .post("/v1/nodes", &json!({"hostname": "sim-0", "region": "eu"}))
        .await?;
    let token = reg["join_token"].as_str().context("no join token")?;
    let client = sim::client(&format!("{},{}", b.base, a.base))?;
    let joined = sim::join(
        &client,
        None,
        &sim::machine(token, "sim-0", 8, 16 << 30, "z0"),
    )
    .await?;
    let seen = Arc::new(Seen::default());
    let (stop, stopping) = watch::channel(false);
    let agent = joined.spawn(seen.clone(), stopping);
    let res = async {
        let app = a
            .post(
                "/v1/apps",
                &json!({"name": "bench", "image": "nginx", "replicas": 1,
                        "resources": {"memory": "128m", "cpu": 0.1}}),
            )
            .await?;
        let app = app["id"].as_str().context("no app id")?.to_string();
        let (_, v) = a.get(&format!("/v1/apps/{app}")).await?;
        let mut known = running_ids(&v);
        for id in &known {
            seen.wait_for(Duration::from_secs(30), |s| s.appeared(id))
                .await
                .context("the agent did not receive the app's instance")?;
        }
        for (via, api) in [("A (across replicas)", &a), ("B (the agent's own replica)", &b)] {
            let mut from_answer = vec![];
            let mut from_request = vec![];
            let (mut early, mut missed) = (0, 0);
            for k in 0..changes {
                let up = k % 2 == 0;
                let sent = Instant::now();
                let v = api
                    .post(
                        &format!("/v1/apps/{app}/scale"),
                        &json!({"replicas": if up { 2 } else { 1 }}),
                    )
                    .await?;
                let answered = Instant::now();
                let now = running_ids(&v);
                let target: Vec<String> = if up {
                    now.difference(&known).cloned().collect()
                } else {
                    known.difference(&now).cloned().collect()
                };
                known = now;
                let [id] = target.as_slice() else {
                    bail!("a scale changed {} instance(s), not one: {v}", target.len());
                };
                let at = if up {
                    seen.wait_for(Duration::from_secs(30), |s| s.appeared(id)).await
                } else {
                    seen.wait_for(Duration::from_secs(30), |s| s.gone(id)).await
                };
                let Some(at) = at else {
                    missed += 1;
                    continue;
                };
                from_answer.push(if at >= answered {
                    at.duration_since(answered).as_secs_f64() * 1e3
                } else {
                    early += 1;
                    -answered.duration_since(at).as_secs_f64() * 1e3
                });
                from_request.push(at.saturating_duration_since(sent).as_secs_f64() * 1e3);
            }
            sort(&mut from_answer);
            sort(&mut from_request);
            println!(
                "change to agent, {} scales through {via}, agent long-polling B: p50 {:.2} ms p99 {:.2} ms from the API's answer (from sending the request: p50 {:.2} ms p99 {:.2} ms; {early} reached the agent before the answer reached the benchmark, {missed} not within 30 s)",
                from_answer.len(),
                pct(&from_answer, 0.5),
                pct(&from_answer, 0.99),
                pct(&from_request, 0.5),
                pct(&from_request, 0.99),
            );
        }
        failover(replicas, failovers).await
    }
    .await;
    let _ = stop.send(true);
    let _ = agent.await;
    res
}

/// Kill the leader of `reconcile`, time the other replica taking over,
/// start the killed one again; `rounds` times.
async fn failover(replicas: &mut [Platform], rounds: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut to_reconcile = vec![];
    let mut to_all = vec![];
    for round in 0..rounds {
        // Who leads reconcile (after a restart the lease may still be moving).
        let t = Instant::now();
        let leader = loop {
            let mut found = None;
            for (i, r) in replicas.iter().enumerate() {
                if leads(&http, &r.url()).await.contains("reconcile") {
                    found = Some(i);
                }
            }
            if let Some(i) = found {
                break i;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("no replica leads reconcile");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let other = 1 - leader;
        let url = replicas[other].url();
        // At a random point of the leader's renewal period (1 s), not in
        // step with the restart before: the time to take over depends on it.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        tokio::time::sleep(Duration::from_nanos(u64::from(jitter))).await;
        let killed = Instant::now();
        replicas[leader].kill();
        let (mut reconcile_at, mut all_at) = (None, None);
        while all_at.is_none() && killed.elapsed() < Duration::from_secs(30) {
            let l = leads(&http, &url).await;
            let now = killed.elapsed();
            if reconcile_at.is_none() && l.contains("reconcile") {
                reconcile_at = Some(now);
            }
            if SINGLETONS.iter().all(|s| l.contains(*s)) {
                all_at = Some(now);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (Some(r), Some(a)) = (reconcile_at, all_at) else {
            bail!("round {round}: the surviving replica did not lead every controller within 30 s");
        };
        println!(
            "failover {}: replica {} killed; the other leads reconcile after {} (every singleton after {})",
            round + 1,
            ["A", "B"][leader],
            kit::ms(r),
            kit::ms(a)
        );
        to_reconcile.push(r);
        to_all.push(a);
        let p = &mut replicas[leader];
        tokio::task::block_in_place(|| p.restart());
    }
    to_reconcile.sort();
    to_all.sort();
    if let (Some(min), Some(max)) = (to_reconcile.first(), to_reconcile.last()) {
        println!(
            "failover time (leader of reconcile killed → the other replica's /readyz lists it), {} rounds: min {} median {} max {} (every singleton: median {})",
            to_reconcile.len(),
            kit::ms(*min),
            kit::ms(kit::pct(&to_reconcile, 0.5)),
            kit::ms(*max),
            kit::ms(kit::pct(&to_all, 0.5)),
        );
    }
    Ok(())
}

/// What the replica at `base` leads, by its `/readyz` (nothing when it
/// does not answer).
async fn leads(http: &reqwest::Client, base: &str) -> BTreeSet<String> {
    let Ok(r) = http.get(format!("{base}/readyz")).send().await else {
        return BTreeSet::new();
    };
    let v: Value = r.json().await.unwrap_or_default();
    v["leads"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
