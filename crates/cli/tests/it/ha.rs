//! Several `shellwego server` replicas on one PostgreSQL act as one
//! control plane (issue 14), as real processes:
//! - an agent given every replica's URL (`--control-plane r1,r2`) goes on
//!   with r2 when r1, which it long-polls, is killed (SIGKILL): its
//!   heartbeats come through r2 within 5 s, its instances serve every
//!   request meanwhile and are not restarted, and a change made through r2
//!   reaches it;
//! - a rolling deployment whose leader (the replica leading `reconcile`)
//!   is killed midway ends successful through the survivor, which leads
//!   every singleton controller within 5 s, with exactly the wanted
//!   instances in the end (no replacement made twice: the store's
//!   `instances.desired` is read directly, the API shows only what runs)
//!   and no failed request through a standalone `shellwego router`;
//!   whether the agent talked to the leader or to the other replica;
//! - an app created through r1, scaled through r2 and deployed through r3
//!   ends as asked, with one deployment per change on every replica.
//!
//! PostgreSQL only (SQLite is one process): skipped without
//! SHELLWEGO_TEST_DATABASE_URL. Each test has a scratch database of its own
//! (the test kit's `server` feature, which the CLI's `bench` feature turns
//! on: CI runs `--all-features`). Logs (`r1.log`, `r2.log`, `agent.log`,
//! `router.log`) go to the temp dir, which is kept, and their ends printed,
//! when a test fails.

#![cfg(feature = "bench")]
// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use shellwego_testkit::api::Api;
use shellwego_testkit::db::PgDb;
use shellwego_testkit::fixtures::app_serving;
use shellwego_testkit::platform::{free_port, Platform, Proc as Process, Ready};
use shellwego_testkit::server::DATABASE_URL_VAR;
use sqlx::Connection;

use crate::support::{
    all_instance_procs as all_instance_pids, bin, instance_proc as instance_pid, Deadline,
    Proc as Pid,
};

const APP: &str = "hello";
/// Every replica's `SHELLWEGO_MASTER_KEY` (base64 of 32 bytes).
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The singleton controllers (their lease names), each led by one replica.
const SINGLETONS: [&str; 4] = shellwego_server::controller::SINGLETONS;

/// `n` control-plane replicas on one scratch database, one agent given
/// all their URLs (process driver, `--sync-wait 1`), and optionally a
/// standalone router on the same database.
struct Ha {
    replicas: Vec<Platform>,
    apis: Vec<Api>,
    agent: Option<Process>,
    router: Option<Process>,
    router_port: u16,
    node: String,
    /// Dropped once every process is stopped.
    db: Option<PgDb>,
    // Last: removed after `drop` has stopped everything (kept on failure).
    dir: tempfile::TempDir,
}

impl Ha {
    /// `n` replicas (`r1` first: it bootstraps), the agent's
    /// `--control-plane` listing them from replica `agent_first` (index
    /// from 0) on, and a router when `router`. `None` (with a message) when
    /// SHELLWEGO_TEST_DATABASE_URL is not set.
    async fn start(n: usize, router: bool, agent_first: usize) -> Option<Ha> {
        let Ok(server_url) = std::env::var(DATABASE_URL_VAR) else {
            eprintln!("SKIPPED (PostgreSQL only): set {DATABASE_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/test) to run it");
            return None;
        };
        let db = PgDb::from_template(&server_url, "swha")
            .await
            .unwrap_or_else(|e| panic!("a scratch database: {e:#}"));
        let dir = tempfile::tempdir().unwrap();
        let mut ha = Ha {
            replicas: vec![],
            apis: vec![],
            agent: None,
            router: None,
            router_port: 0,
            node: String::new(),
            db: None,
            dir,
        };
        let url = db.url().to_string();
        ha.db = Some(db);
        for i in 1..=n {
            let data = ha.dir.path().join(format!("r{i}"));
            if i > 1 {
                // A replica on a bootstrapped database writes no admin
                // token: the first one's is everybody's.
                std::fs::create_dir_all(&data).unwrap();
                std::fs::copy(
                    ha.dir.path().join("r1").join("admin-token"),
                    data.join("admin-token"),
                )
                .unwrap();
            }
            let p = Platform::server(bin())
                .dir(ha.dir.path())
                .data_dir(&data)
                .log_name(format!("r{i}.log"))
                .args(&["--database-url", &url])
                .env("SHELLWEGO_MASTER_KEY", MASTER_KEY)
                .ready(Ready::Api)
                .start_async()
                .await
                .unwrap_or_else(|e| panic!("replica r{i}: {e:#}"));
            ha.apis.push(p.api());
            ha.replicas.push(p);
        }

        // The node, registered through r1; its agent knows every replica.
        let reg = ha.apis[0]
            .post("/v1/nodes", &json!({"hostname": "n1"}))
            .await
            .unwrap_or_else(|e| panic!("register the node: {e:#}"));
        ha.node = reg["id"].as_str().unwrap().to_string();
        let mut urls: Vec<String> = ha.replicas.iter().map(Platform::url).collect();
        urls.rotate_left(agent_first);
        let agent_dir = ha.agent_dir();
        let args: Vec<String> = vec![
            "agent".into(),
            "--control-plane".into(),
            urls.join(","),
            "--join-token".into(),
            reg["join_token"].as_str().unwrap().into(),
            "--data-dir".into(),
            agent_dir.display().to_string(),
            "--name".into(),
            "n1".into(),
            "--sync-wait".into(),
            "1".into(),
            "--drivers".into(),
            "process".into(),
            "--cpus".into(),
            "16".into(),
        ];
        ha.agent =
            Some(Process::shellwego(bin(), &args, &ha.dir.path().join("agent.log")).unwrap());
        ha.apis[0]
            .wait_node(Some(&ha.node), "process")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));

        if router {
            ha.router_port = free_port();
            let listen = format!("127.0.0.1:{}", ha.router_port);
            ha.router = Some(
                Process::shellwego(
                    bin(),
                    &["router", "--database-url", &url, "--listen", &listen],
                    &ha.dir.path().join("router.log"),
                )
                .unwrap(),
            );
        }
        Some(ha)
    }

    fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn api(&self, i: usize) -> Api {
        self.apis[i].clone()
    }

    /// SIGKILL replica `i` (index from 0).
    fn kill(&mut self, i: usize) {
        self.replicas[i].kill();
    }

    /// What replica `i` leads (`/readyz`); `None` when it does not answer.
    async fn leads(&self, i: usize) -> Option<BTreeSet<String>> {
        let (st, v) = self.apis[i].call(Method::GET, "/readyz", None).await;
        if st != 200 {
            return None;
        }
        Some(
            v["leads"]
                .as_array()?
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
        )
    }

    /// The running process of each of the app's instances.
    fn pids(&self, app: &Value) -> Vec<(String, Pid)> {
        instances(app)
            .iter()
            .map(|i| {
                let id = i["id"].as_str().unwrap().to_string();
                let p = instance_pid(&self.agent_dir(), &id)
                    .unwrap_or_else(|| panic!("no running process for {id}; app: {app}"));
                assert!(p.alive(), "instance {id} (pid {}) is not alive", p.pid);
                (id, p)
            })
            .collect()
    }

    /// Delete the app through `api`, wait until its processes are gone,
    /// then stop the agent, the router and the replicas still running.
    async fn shutdown(mut self, api: &Api, app_id: &str) {
        let procs = all_instance_pids(&self.agent_dir());
        let (status, body) = api
            .call(Method::DELETE, &format!("/v1/apps/{app_id}"), None)
            .await;
        assert!((200..300).contains(&status), "delete app: {status} {body}");
        let d = Deadline::new(
            "the deleted app's processes to exit",
            Duration::from_secs(60),
        );
        loop {
            let left: Vec<&Pid> = procs.iter().filter(|p| p.alive()).collect();
            if left.is_empty() {
                break;
            }
            d.tick(&format!("{left:?}")).await;
        }
        if let Some(mut a) = self.agent.take() {
            a.terminate_async(Duration::from_secs(15)).await;
        }
        if let Some(mut r) = self.router.take() {
            r.terminate_async(Duration::from_secs(15)).await;
        }
        for r in &mut self.replicas {
            r.terminate_async(Duration::from_secs(40)).await;
        }
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        // (Each process prints the end of its log when the test fails.)
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "----- the test's files (logs: r1.log, r2.log…, agent.log, router.log) are kept in {} -----",
                self.dir.path().display()
            );
        }
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
        if let Some(mut r) = self.router.take() {
            r.kill();
        }
        for r in &mut self.replicas {
            r.terminate(Duration::from_secs(10));
        }
        // Agents leave instances running when they stop.
        for p in all_instance_pids(&self.agent_dir()) {
            p.kill();
        }
        if let Ok(owner) = shellwego_agent::owner::Owner::for_data_dir(&self.agent_dir()) {
            shellwego_agent::owner::remove_all(&owner);
        }
        // The database last: nothing uses it any more.
        drop(self.db.take());
    }
}

fn instances(app: &Value) -> Vec<Value> {
    app["instances"].as_array().cloned().unwrap_or_default()
}

/// Running with exactly `n` instances listed, all healthy.
fn running(app: &Value, n: usize) -> bool {
    let insts = instances(app);
    app["status"] == "running"
        && app["replicas"]["healthy"] == n
        && insts.len() == n
        && insts.iter().all(|i| i["status"] == "healthy")
}

async fn get_app(api: &Api, id: &str) -> Value {
    api.call(Method::GET, &format!("/v1/apps/{id}"), None)
        .await
        .1
}

/// Upload examples/hello and create the app with `replicas` and `env`
/// through `api`; its id.
async fn create_hello(api: &Api, replicas: i64, env: Value) -> String {
    let app = app_serving(APP, replicas)
        .with(json!({"env": env}))
        .create(api)
        .await
        .unwrap_or_else(|e| panic!("create app: {e:#}"));
    app["id"].as_str().unwrap().to_string()
}

async fn wait_running(api: &Api, id: &str, n: usize, limit: Duration) -> Value {
    let d = Deadline::new(format!("app running with {n} healthy instance(s)"), limit);
    loop {
        let a = get_app(api, id).await;
        if running(&a, n) {
            return a;
        }
        d.tick(&a).await;
    }
}

/// `POST /v1/apps/{id}/deploy` through `api`; the deployment's id.
async fn deploy(api: &Api, app_id: &str, body: Value) -> String {
    let (status, d) = api
        .call(
            Method::POST,
            &format!("/v1/apps/{app_id}/deploy"),
            Some(body),
        )
        .await;
    assert_eq!(status, 202, "deploy: {d}");
    d["deployment_id"].as_str().unwrap().to_string()
}

async fn deployment(api: &Api, dep: &str) -> Value {
    api.call(Method::GET, &format!("/v1/deployments/{dep}"), None)
        .await
        .1
}

/// A deployment's version as a number (`"v2"` → 2).
fn version_of(dep: &Value) -> i64 {
    dep["version"]
        .as_str()
        .and_then(|v| v.trim_start_matches('v').parse().ok())
        .unwrap_or_else(|| panic!("no version in {dep}"))
}

/// The app's instances as the store has them: (id, version, desired, status).
async fn instance_rows(
    db: &mut sqlx::PgConnection,
    app_id: &str,
) -> Vec<(String, i64, String, String)> {
    sqlx::query_as(
        "SELECT id, version, desired, status FROM instances WHERE app_id = $1 ORDER BY created_at, id",
    )
    .bind(app_id)
    .fetch_all(db)
    .await
    .unwrap()
}

/// What the store wanted at once while a sampler ran: the most instances
/// wanted running, the most of them of the new version, and each
/// different set of rows seen.
#[derive(Debug, Default)]
struct Wanted {
    most: usize,
    most_new: usize,
    seen: Vec<String>,
}

/// Read the app's instance rows every 50 ms until `stop`.
fn sample_wanted(
    url: String,
    app_id: String,
    new_version: i64,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Wanted> {
    tokio::spawn(async move {
        let mut db = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
        let mut w = Wanted::default();
        let mut last = vec![];
        while !stop.load(Ordering::SeqCst) {
            let rows = instance_rows(&mut db, &app_id).await;
            let wanted: Vec<_> = rows.iter().filter(|r| r.2 == "running").collect();
            w.most = w.most.max(wanted.len());
            w.most_new = w
                .most_new
                .max(wanted.iter().filter(|r| r.1 == new_version).count());
            if rows != last {
                w.seen
                    .push(format!("{:+.2}s: {rows:?}", secs_since(origin)));
                last = rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = db.close().await;
        w
    })
}

/// The node's `last_seen` (its last heartbeat) as `api` tells it, and its status.
async fn node_seen(api: &Api, node: &str) -> (Option<DateTime<Utc>>, Value) {
    let (_, n) = api
        .call(Method::GET, &format!("/v1/nodes/{node}"), None)
        .await;
    let seen = n["last_seen"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    (seen, n)
}

/// Wait (up to 5 s after `killed`) until `api` has a heartbeat of `node`
/// later than `killed_wall` (so sent to a replica still alive): the time
/// from the kill to when the test saw it, and the heartbeat's own time.
async fn wait_heartbeat_after(
    api: &Api,
    node: &str,
    killed: Instant,
    killed_wall: DateTime<Utc>,
) -> (Duration, DateTime<Utc>) {
    loop {
        let (seen, n) = node_seen(api, node).await;
        if let Some(t) = seen.filter(|t| *t > killed_wall) {
            assert_eq!(n["status"], "ready", "{n}");
            return (killed.elapsed(), t);
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no heartbeat of the node through the surviving replica within 5 s of the kill (at {killed_wall}): {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Default)]
struct Probes {
    requests: u64,
    /// Every failure, with when it happened (from the probes' start).
    failed: Vec<String>,
}

/// GET `/` of each address in `addrs` every 100 ms until `stop`.
fn probe_instances(addrs: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Probes> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let start = Instant::now();
        let mut r = Probes::default();
        while !stop.load(Ordering::SeqCst) {
            for a in &addrs {
                r.requests += 1;
                let res = http.get(format!("http://{a}/")).send().await;
                let failure = match res {
                    Ok(res) if res.status() == 200 => None,
                    Ok(res) => Some(format!("{}", res.status())),
                    Err(e) => Some(format!("error: {e:?}")),
                };
                if let Some(f) = failure {
                    r.failed
                        .push(format!("{a} at {:.2}s: {f}", start.elapsed().as_secs_f64()));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        r
    })
}

#[derive(Debug, Default)]
struct Load {
    requests: u64,
    failures: u64,
    /// The first few failures, with when they happened.
    failed: Vec<String>,
    served_by: std::collections::BTreeMap<String, u64>,
}

/// Sequential GETs through the router as `hello.localhost` until `stop`;
/// `origin` is when the times in the failures count from.
fn load_through(
    port: u16,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Load> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/");
        let mut r = Load::default();
        while !stop.load(Ordering::SeqCst) {
            r.requests += 1;
            let res = http
                .get(&url)
                .header(reqwest::header::HOST, format!("{APP}.localhost"))
                .send()
                .await;
            let failure = match res {
                Ok(res) => {
                    let status = res.status();
                    let body = res.text().await.unwrap_or_default();
                    match serde_json::from_str::<Value>(&body) {
                        Ok(v) if status == 200 => {
                            let inst = v["instance"].as_str().unwrap_or("?").to_string();
                            *r.served_by.entry(inst).or_default() += 1;
                            None
                        }
                        _ => Some(format!("{status}: {}", body.trim())),
                    }
                }
                Err(e) => Some(format!("error: {e:?}")),
            };
            if let Some(f) = failure {
                r.failures += 1;
                if r.failed.len() < 20 {
                    r.failed
                        .push(format!("at {:+.2}s: {f}", secs_since(origin)));
                }
            }
        }
        r
    })
}

/// Seconds from `origin` to now, negative before it.
fn secs_since(origin: Instant) -> f64 {
    let now = Instant::now();
    if now >= origin {
        (now - origin).as_secs_f64()
    } else {
        -(origin - now).as_secs_f64()
    }
}

/// Wait (up to 30 s) until the router has served each of `ids`.
async fn wait_routed(port: u16, ids: &[String]) {
    let d = Deadline::new(
        format!("the router serving each of {ids:?}"),
        Duration::from_secs(30),
    );
    loop {
        let stop = Arc::new(AtomicBool::new(false));
        let load = load_through(port, Instant::now(), stop.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::SeqCst);
        let r = load.await.unwrap();
        if r.failures == 0 && ids.iter().all(|id| r.served_by.contains_key(id)) {
            return;
        }
        d.tick(&format!("{r:?}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_agents_replica_while_it_long_polls() {
    let t0 = Instant::now();
    let Some(mut ha) = Ha::start(2, false, 0).await else {
        return;
    };
    let (r1, r2) = (ha.api(0), ha.api(1));
    let node = ha.node.clone();
    // The archive is uploaded (and the app created) through r2; the agent,
    // talking to r1, fetches it from r1 and runs it.
    let app_id = create_hello(&r2, 2, json!({})).await;
    let app = wait_running(&r1, &app_id, 2, Duration::from_secs(90)).await;
    let before = ha.pids(&app);
    let addrs: Vec<String> = instances(&app)
        .iter()
        .map(|i| format!("{}:{}", i["ip"].as_str().unwrap(), i["port"]))
        .collect();
    // The agent talks to r1 (the first URL; nothing failed yet): r2 has
    // its heartbeats through the database.
    let (seen, n) = node_seen(&r2, &node).await;
    assert!(seen.is_some() && n["status"] == "ready", "{n}");

    let stop = Arc::new(AtomicBool::new(false));
    let probes = probe_instances(addrs.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    ha.kill(0);
    let killed_wall = Utc::now();

    // (a) The agent goes on with r2.
    let (seen_after, beat) = wait_heartbeat_after(&r2, &node, killed, killed_wall).await;
    // The node stays ready, and the probes run until 10 s after the kill.
    while killed.elapsed() < Duration::from_secs(10) {
        let (_, n) = node_seen(&r2, &node).await;
        assert_eq!(n["status"], "ready", "the node after the kill: {n}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let p = probes.await.unwrap();

    // (b) Its instances served every request, and were not restarted.
    assert!(
        p.failed.is_empty(),
        "requests to the instances failed (the probes started 0.5 s before the kill): {:#?}",
        p.failed
    );
    assert!(p.requests >= 100, "too few probes: {p:?}");
    let app = get_app(&r2, &app_id).await;
    assert!(running(&app, 2), "{app}");
    let after = ha.pids(&app);
    assert_eq!(before, after, "the instances were restarted");

    // (c) A change through r2 reaches the agent.
    let (st, body) = r2
        .call(
            Method::POST,
            &format!("/v1/apps/{app_id}/scale"),
            Some(json!({"replicas": 3})),
        )
        .await;
    assert_eq!(st, 200, "scale through r2: {body}");
    let scaled = Instant::now();
    let app = wait_running(&r2, &app_id, 3, Duration::from_secs(60)).await;
    let scaled_in = scaled.elapsed();
    let now = ha.pids(&app);
    for (id, pid) in &before {
        assert!(
            now.contains(&(id.clone(), *pid)),
            "{id} was replaced: {now:?}"
        );
    }
    println!(
        "agent failover: r1 killed; heartbeat through r2 seen {:.2}s after the kill (the heartbeat itself {:.2}s after it); {} probes of the 2 instances, 0 failed, same pids; scaled to 3 through r2 in {:.1}s; test took {:.1}s",
        seen_after.as_secs_f64(),
        (beat - killed_wall).num_milliseconds() as f64 / 1000.0,
        p.requests,
        scaled_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    ha.shutdown(&r2, &app_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_mid_rolling_deploy() {
    // The agent talks to r1, which leads (it started first): both go.
    leader_killed_mid_rolling_deploy(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_mid_rolling_deploy_while_the_agent_talks_to_the_other() {
    leader_killed_mid_rolling_deploy(1).await;
}

/// Two replicas, the agent talking to replica `agent_first` first; the
/// replica leading `reconcile` is killed midway through a rolling
/// deployment started through the other.
async fn leader_killed_mid_rolling_deploy(agent_first: usize) {
    let t0 = Instant::now();
    let Some(mut ha) = Ha::start(2, true, agent_first).await else {
        return;
    };
    let node = ha.node.clone();
    // What the store says the instances should be (the API shows what they are).
    let mut db = sqlx::postgres::PgConnection::connect(ha.db.as_ref().unwrap().url())
        .await
        .unwrap();
    // Instances take 2 s to listen: the rollout lasts long enough for the
    // kill to land in it.
    let app_id = create_hello(&ha.api(0), 2, json!({"START_DELAY": "2"})).await;
    let app = wait_running(&ha.api(0), &app_id, 2, Duration::from_secs(90)).await;
    let first: Vec<String> = instances(&app)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    wait_routed(ha.router_port, &first).await;

    // Who leads the rollouts.
    let d = Deadline::new("one replica leading reconcile", Duration::from_secs(30));
    let leader = loop {
        let (a, b) = (ha.leads(0).await, ha.leads(1).await);
        let la = a.as_ref().is_some_and(|l| l.contains("reconcile"));
        let lb = b.as_ref().is_some_and(|l| l.contains("reconcile"));
        if la != lb {
            break if la { 0 } else { 1 };
        }
        d.tick(&format!("r1 leads {a:?}, r2 leads {b:?}")).await;
    };
    let other = 1 - leader;
    let survivor = ha.api(other);

    // The traffic, through the router, from before the deployment.
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = load_through(ha.router_port, origin, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let dep = deploy(&survivor, &app_id, json!({"strategy": "rolling"})).await;
    let new_version = version_of(&deployment(&survivor, &dep).await);
    // Killed midway: one old instance replaced (a new one healthy, one old
    // one no longer wanted), the other not yet.
    let d = Deadline::new(
        "the rollout midway (one of the two old instances replaced)",
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(50));
    let at_kill = loop {
        let v = deployment(&survivor, &dep).await;
        assert_eq!(
            v["status"], "in_progress",
            "the deployment ended before the kill: {v:#}"
        );
        let rows = instance_rows(&mut db, &app_id).await;
        let old_wanted = rows
            .iter()
            .filter(|r| r.1 < new_version && r.2 == "running")
            .count();
        let new_healthy = rows
            .iter()
            .filter(|r| r.1 == new_version && r.2 == "running" && r.3 == "healthy")
            .count();
        if old_wanted == 1 && new_healthy >= 1 {
            break format!("deployment: {v}\ninstances: {rows:?}");
        }
        d.tick(&format!("deployment: {v}\ninstances: {rows:?}"))
            .await;
    };
    let agents_replica = leader == agent_first;
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_wanted(
        ha.db.as_ref().unwrap().url().to_string(),
        app_id.clone(),
        new_version,
        origin,
        sampling.clone(),
    );
    let killed = Instant::now();
    ha.kill(leader);
    let killed_wall = Utc::now();
    let kill_offset = secs_since(origin) - killed.elapsed().as_secs_f64();

    // Within 5 s of the kill, the survivor leads every singleton, and the
    // agent, when it talked to the leader, goes on with the survivor.
    let (mut led_in, mut beat) = (None, None);
    loop {
        let leads = ha.leads(other).await;
        if led_in.is_none()
            && leads
                .as_ref()
                .is_some_and(|l| SINGLETONS.iter().all(|s| l.contains(*s)))
        {
            led_in = Some(killed.elapsed());
        }
        let (seen, n) = node_seen(&survivor, &node).await;
        assert_eq!(n["status"], "ready", "the node after the kill: {n}");
        if beat.is_none() {
            if let Some(t) = seen.filter(|t| *t > killed_wall) {
                beat = Some((killed.elapsed(), t));
            }
        }
        if led_in.is_some() && (beat.is_some() || !agents_replica) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "5 s after the kill: the survivor leads {leads:?} (every one of {SINGLETONS:?} expected); the node's last heartbeat through it: {} (the kill at {killed_wall})",
            n["last_seen"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let led_in = led_in.unwrap();

    // The deployment ends successful through the survivor.
    let d = Deadline::new(
        format!("deployment {dep} successful"),
        Duration::from_secs(120),
    )
    .every(Duration::from_millis(100));
    let done = loop {
        let v = deployment(&survivor, &dep).await;
        let rows = instance_rows(&mut db, &app_id).await;
        if v["status"] == "successful" {
            break v;
        }
        assert_eq!(v["status"], "in_progress", "the deployment ended: {v:#}");
        d.tick(&format!("deployment: {v}\ninstances: {rows:?}"))
            .await;
    };
    let app = wait_running(&survivor, &app_id, 2, Duration::from_secs(60)).await;
    assert!(
        instances(&app).iter().all(|i| i["version"] == new_version),
        "not all of v{new_version}: {app}"
    );
    let rows = instance_rows(&mut db, &app_id).await;
    let wanted: Vec<_> = rows.iter().filter(|r| r.2 == "running").collect();
    assert!(
        wanted.len() == 2
            && wanted
                .iter()
                .all(|r| r.1 == new_version && r.3 == "healthy"),
        "instances wanted running in the store: {rows:?}"
    );
    sampling.store(true, Ordering::SeqCst);
    let wanted = sampler.await.unwrap();
    // Nothing else runs on the node: the old instances are gone.
    let ids: Vec<String> = instances(&app)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let d = Deadline::new(
        "only the app's 2 instances running on the node",
        Duration::from_secs(30),
    );
    loop {
        let live: Vec<Pid> = all_instance_pids(&ha.agent_dir())
            .into_iter()
            .filter(Pid::alive)
            .collect();
        if live.len() == 2 {
            break;
        }
        d.tick(&format!("{live:?}")).await;
    }
    wait_routed(ha.router_port, &ids).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let r = load.await.unwrap();
    let (_, list) = survivor
        .call(Method::GET, &format!("/v1/apps/{app_id}/deployments"), None)
        .await;
    let deps: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    println!(
        "leader failover: r{} (leader of reconcile{}) killed {:.2}s into the traffic, mid-rollout; the survivor led every singleton {:.2}s after the kill{}; the deployment took {} ms; from the kill on, at most {} instances wanted at once, {} of v{new_version}; {} requests through the router, {} failed; served by {:?}; test took {:.1}s",
        leader + 1,
        if agents_replica { " and the agent's replica" } else { "" },
        kill_offset,
        led_in.as_secs_f64(),
        beat.map(|(t, at)| format!(
            "; the agent's first heartbeat through it {:.2}s after (seen {:.2}s after)",
            (at - killed_wall).num_milliseconds() as f64 / 1000.0,
            t.as_secs_f64()
        ))
        .unwrap_or_default(),
        done["metrics"]["deploy_time_ms"],
        wanted.most,
        wanted.most_new,
        r.requests,
        r.failures,
        r.served_by,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        r.failures, 0,
        "requests through the router failed (times from the traffic's start; the kill at {kill_offset:+.2}s): {:#?}\nat the kill: {at_kill}\nthe instance rows from the kill on:\n{}\nfinally: {app}",
        r.failed,
        wanted.seen.join("\n")
    );
    assert!(r.requests >= 50, "too few requests: {r:?}");
    // 2 replicas and one surge instance; never a second copy of a
    // replacement (a new leader redoing what the old one did).
    assert!(
        wanted.most <= 3 && wanted.most_new <= 2,
        "{} instances wanted at once, {} of v{new_version}; the instance rows from the kill on:\n{}",
        wanted.most,
        wanted.most_new,
        wanted.seen.join("\n")
    );
    assert_eq!(deps.first().copied(), Some(dep.as_str()), "{list}");
    assert_eq!(deps.len(), 2, "the creation's and the rolling one: {list}");
    let _ = db.close().await;
    ha.shutdown(&survivor, &app_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_act_as_one() {
    let t0 = Instant::now();
    let Some(ha) = Ha::start(3, false, 0).await else {
        return;
    };
    let (r1, r2, r3) = (ha.api(0), ha.api(1), ha.api(2));
    let app_id = create_hello(&r1, 2, json!({})).await;
    wait_running(&r3, &app_id, 2, Duration::from_secs(90)).await;
    let (st, body) = r2
        .call(
            Method::POST,
            &format!("/v1/apps/{app_id}/scale"),
            Some(json!({"replicas": 3})),
        )
        .await;
    assert_eq!(st, 200, "scale through r2: {body}");
    wait_running(&r1, &app_id, 3, Duration::from_secs(60)).await;
    let bg = deploy(
        &r3,
        &app_id,
        json!({"strategy": "blue-green", "warm_window": "1s"}),
    )
    .await;
    let d = Deadline::new(
        format!("deployment {bg} successful"),
        Duration::from_secs(120),
    );
    let done = loop {
        let v = deployment(&r1, &bg).await;
        if v["status"] == "successful" {
            break v;
        }
        assert_eq!(v["status"], "in_progress", "the deployment ended: {v:#}");
        d.tick(&v).await;
    };
    let version = version_of(&done);
    let app = wait_running(&r2, &app_id, 3, Duration::from_secs(60)).await;
    assert!(
        instances(&app).iter().all(|i| i["version"] == version),
        "not all of v{version}: {app}"
    );
    // Every replica tells the same: two deployments, the blue-green one last.
    let mut lists = vec![];
    for api in [&r1, &r2, &r3] {
        let (_, list) = api
            .call(Method::GET, &format!("/v1/apps/{app_id}/deployments"), None)
            .await;
        let deps: Vec<(String, String, String)> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap_or("?").to_string(),
                    d["version"].as_str().unwrap_or("?").to_string(),
                    d["status"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        lists.push(deps);
    }
    assert_eq!(lists[0], lists[1]);
    assert_eq!(lists[0], lists[2]);
    assert_eq!(lists[0].len(), 2, "{:?}", lists[0]);
    assert_eq!(lists[0][0].0, bg, "{:?}", lists[0]);
    assert_eq!(lists[0][0].2, "successful", "{:?}", lists[0]);
    assert_eq!(lists[0][1].1, "v1", "{:?}", lists[0]);
    println!(
        "three replicas: created through r1, scaled through r2, deployed blue-green through r3 ({} ms); deployments {:?}; test took {:.1}s",
        done["metrics"]["deploy_time_ms"],
        lists[0],
        t0.elapsed().as_secs_f64()
    );
    ha.shutdown(&r1, &app_id).await;
}
