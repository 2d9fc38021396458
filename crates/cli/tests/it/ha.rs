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
//!   ends as asked, with one deployment per change on every replica;
//! - the same with two agents on hosts of their own (network namespaces on
//!   a bridge, `shellwego_testkit::netns::Lan`; the replicas listen on its
//!   gateway, the agents advertise their hosts' addresses): the instances
//!   end on both nodes, each made once (the store's rows), and a
//!   standalone router, reaching them across the bridge, is answered by
//!   instances of both nodes with no failed request during the
//!   blue-green deployment.
//!
//! PostgreSQL only (SQLite is one process): skipped without
//! SHELLWEGO_TEST_DATABASE_URL. Each test has a scratch database of its own
//! (the test kit's `server` feature, which the CLI's `bench` feature turns
//! on: CI runs `--all-features`). The LAN needs root: without it the test
//! of it skips saying why, unless SHELLWEGO_REQUIRE_NETNS=1 (CI), which
//! makes that a failure. Logs (`r1.log`, `r2.log`…, `n1.log`…,
//! `router.log`) go to the temp dir, which is kept, and their ends printed,
//! when a test fails.

#![cfg(feature = "bench")]
// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
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
use shellwego_testkit::netns::{self, Host, Lan};
use shellwego_testkit::platform::{free_port, Platform, Proc as Process, Ready};
use shellwego_testkit::server::DATABASE_URL_VAR;
use sqlx::Connection;

use crate::support::{
    all_instance_procs as all_instance_pids, bin, instance_ids, instance_proc as instance_pid,
    Deadline, Proc as Pid,
};

const APP: &str = "hello";
/// Every replica's `SHELLWEGO_MASTER_KEY` (base64 of 32 bytes).
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The singleton controllers (their lease names), each led by one replica.
const SINGLETONS: [&str; 9] = shellwego_server::controller::SINGLETONS;

/// How [`Ha::start`] starts the system.
#[derive(Debug, Clone, Copy)]
struct Setup {
    /// `shellwego server` replicas (`r1` first: it bootstraps).
    replicas: usize,
    /// A standalone `shellwego router` on the same database (on loopback).
    router: bool,
    /// Agent `i`'s `--control-plane` lists the replicas from replica
    /// `agent_first + i` on (index from 0, round the list).
    agent_first: usize,
    /// Agents (nodes `n1`, `n2`…; process driver, `--sync-wait 1`).
    agents: usize,
    /// Each agent on a host of its own (a network namespace of a
    /// [`Lan`], `--advertise-ip` its address), the replicas listening on
    /// the LAN's gateway; otherwise everything on loopback.
    lan: bool,
    /// The agents' driver (`--drivers`): `process`, or `container`.
    driver: &'static str,
}

impl Setup {
    /// `replicas` replicas, one agent on loopback, no router.
    fn replicas(replicas: usize) -> Setup {
        Setup {
            replicas,
            router: false,
            agent_first: 0,
            agents: 1,
            lan: false,
            driver: "process",
        }
    }
}

/// One `shellwego agent` and its node.
struct Agent {
    /// Its node's name (`n1`…) and id.
    name: String,
    node: String,
    dir: PathBuf,
    /// Its host on the LAN, when on one.
    host: Option<Host>,
    proc: Option<Process>,
}

/// Control-plane replicas on one scratch database, agents given all their
/// URLs, and optionally a standalone router on the same database; see
/// [`Setup`].
struct Ha {
    replicas: Vec<Platform>,
    apis: Vec<Api>,
    agents: Vec<Agent>,
    router: Option<Process>,
    router_port: u16,
    /// The agents' hosts (`Setup::lan`); removed once every process is stopped.
    lan: Option<Lan>,
    /// Dropped once every process is stopped.
    db: Option<PgDb>,
    // Last: removed after `drop` has stopped everything (kept on failure).
    dir: tempfile::TempDir,
}

impl Ha {
    /// Start as `setup` says and wait until every node is ready. `None`
    /// (with a message) when SHELLWEGO_TEST_DATABASE_URL is not set, or
    /// when `setup.lan` and no LAN can be made here (a failure instead
    /// with SHELLWEGO_REQUIRE_NETNS=1); `test` names the test then.
    async fn start(test: &str, setup: Setup) -> Option<Ha> {
        let Ok(server_url) = std::env::var(DATABASE_URL_VAR) else {
            eprintln!("SKIPPED (PostgreSQL only): set {DATABASE_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/test) to run it");
            return None;
        };
        let lan = if setup.lan {
            if !netns::skip_unless_available(test) {
                return None;
            }
            Some(Lan::new(setup.agents).unwrap_or_else(|e| panic!("the test LAN: {e:#}")))
        } else {
            None
        };
        let db = PgDb::from_template(&server_url, "swha")
            .await
            .unwrap_or_else(|e| panic!("a scratch database: {e:#}"));
        let dir = tempfile::tempdir().unwrap();
        let mut ha = Ha {
            replicas: vec![],
            apis: vec![],
            agents: vec![],
            router: None,
            router_port: 0,
            lan,
            db: None,
            dir,
        };
        let url = db.url().to_string();
        ha.db = Some(db);
        // Where the replicas listen: where the agents reach them.
        let listen_ip: IpAddr = ha
            .lan
            .as_ref()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |l| l.gateway().into());
        for i in 1..=setup.replicas {
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
                .listen_ip(listen_ip)
                .args(&["--database-url", &url])
                .env("SHELLWEGO_MASTER_KEY", MASTER_KEY)
                .ready(Ready::Api)
                .start_async()
                .await
                .unwrap_or_else(|e| panic!("replica r{i}: {e:#}"));
            ha.apis.push(p.api());
            ha.replicas.push(p);
        }

        // The nodes, registered through r1; each agent knows every replica.
        for i in 0..setup.agents {
            let name = format!("n{}", i + 1);
            let reg = ha.apis[0]
                .post("/v1/nodes", &json!({"hostname": name}))
                .await
                .unwrap_or_else(|e| panic!("register node {name}: {e:#}"));
            let mut urls: Vec<String> = ha.replicas.iter().map(Platform::url).collect();
            urls.rotate_left((setup.agent_first + i) % setup.replicas);
            let dir = ha.dir.path().join(&name);
            let host = ha.lan.as_ref().map(|l| l.host(i).clone());
            let mut args: Vec<String> = vec![
                "agent".into(),
                "--control-plane".into(),
                urls.join(","),
                "--join-token".into(),
                reg["join_token"].as_str().unwrap().into(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--name".into(),
                name.clone(),
                "--sync-wait".into(),
                "1".into(),
                "--drivers".into(),
                setup.driver.into(),
                // Apps can be pinned to a node (placement.labels).
                "--label".into(),
                format!("host={name}"),
                "--cpus".into(),
                "16".into(),
            ];
            let log = ha.dir.path().join(format!("{name}.log"));
            let proc = match &host {
                Some(h) => {
                    args.extend(["--advertise-ip".into(), h.ip.to_string()]);
                    Process::shellwego_in(&h.netns, bin(), &args, &log)
                }
                None => Process::shellwego(bin(), &args, &log),
            };
            ha.agents.push(Agent {
                node: reg["id"].as_str().unwrap().to_string(),
                name,
                dir,
                host,
                proc: Some(proc.unwrap()),
            });
        }
        for a in &ha.agents {
            ha.apis[0]
                .wait_node(Some(&a.node), setup.driver)
                .await
                .unwrap_or_else(|e| panic!("node {}: {e:#}", a.name));
        }

        if setup.router {
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

    /// The first agent's node.
    fn node(&self) -> String {
        self.agents[0].node.clone()
    }

    /// The data dir of the agent of `node`.
    fn agent_dir_of(&self, node: &str) -> PathBuf {
        self.agents
            .iter()
            .find(|a| a.node == node)
            .unwrap_or_else(|| panic!("no agent runs node {node}"))
            .dir
            .clone()
    }

    /// Every instance process the agents have recorded.
    fn all_instance_pids(&self) -> Vec<Pid> {
        self.agents
            .iter()
            .flat_map(|a| all_instance_pids(&a.dir))
            .collect()
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

    /// The running process of each of the app's instances (on the node
    /// the app says).
    fn pids(&self, app: &Value) -> Vec<(String, Pid)> {
        instances(app)
            .iter()
            .map(|i| {
                let id = i["id"].as_str().unwrap().to_string();
                let dir = self.agent_dir_of(i["node_id"].as_str().unwrap());
                let p = instance_pid(&dir, &id)
                    .unwrap_or_else(|| panic!("no running process for {id}; app: {app}"));
                assert!(p.alive(), "instance {id} (pid {}) is not alive", p.pid);
                (id, p)
            })
            .collect()
    }

    /// Delete the app through `api`, wait until its processes are gone,
    /// then stop the agents, the router and the replicas still running.
    async fn shutdown(mut self, api: &Api, app_id: &str) {
        let procs = self.all_instance_pids();
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
        for a in &mut self.agents {
            if let Some(mut p) = a.proc.take() {
                p.terminate_async(Duration::from_secs(15)).await;
            }
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
                "----- the test's files (logs: r1.log, r2.log…, n1.log…, router.log) are kept in {} -----",
                self.dir.path().display()
            );
        }
        for a in &mut self.agents {
            if let Some(mut p) = a.proc.take() {
                p.kill();
            }
        }
        if let Some(mut r) = self.router.take() {
            r.kill();
        }
        for r in &mut self.replicas {
            r.terminate(Duration::from_secs(10));
        }
        // Agents leave instances running when they stop.
        for p in self.all_instance_pids() {
            p.kill();
        }
        for a in &self.agents {
            if let Ok(owner) = shellwego_agent::owner::Owner::for_data_dir(&a.dir) {
                shellwego_agent::owner::remove_all(&owner);
                // The mesh interface outlives its agent, as on a real host
                // (wireguard-go ends with it).
                if let Some(h) = &a.host {
                    let iface: String = format!("swg-{}", owner.tag()).chars().take(15).collect();
                    let _ = netns::command_in(&h.netns, "ip")
                        .args(["link", "del", &iface])
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
        // The hosts and the database last: nothing uses them any more.
        drop(self.lan.take());
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

/// A blue-green deployment of the app started through `via`, watched
/// through `watch` until it is successful: (its id, it).
async fn blue_green(via: &Api, watch: &Api, app_id: &str) -> (String, Value) {
    let bg = deploy(
        via,
        app_id,
        json!({"strategy": "blue-green", "warm_window": "1s"}),
    )
    .await;
    let d = Deadline::new(
        format!("deployment {bg} successful"),
        Duration::from_secs(120),
    );
    loop {
        let v = deployment(watch, &bg).await;
        if v["status"] == "successful" {
            return (bg, v);
        }
        assert_eq!(v["status"], "in_progress", "the deployment ended: {v:#}");
        d.tick(&v).await;
    }
}

/// The app's deployments as each replica lists them: (id, version, status).
async fn deployments_seen_by(apis: &[&Api], app_id: &str) -> Vec<Vec<(String, String, String)>> {
    let mut lists = vec![];
    for api in apis {
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
    lists
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
/// wanted running, the most of them of each version, every instance seen
/// of each version, and each different set of rows seen.
#[derive(Debug, Default)]
struct Wanted {
    most: usize,
    most_of: BTreeMap<i64, usize>,
    ids: BTreeMap<i64, BTreeSet<String>>,
    seen: Vec<String>,
}

impl Wanted {
    /// The most instances of `version` wanted running at once.
    fn most_of(&self, version: i64) -> usize {
        self.most_of.get(&version).copied().unwrap_or(0)
    }

    /// How many instances of `version` there ever were.
    fn made_of(&self, version: i64) -> usize {
        self.ids.get(&version).map_or(0, BTreeSet::len)
    }
}

/// Read the app's instance rows every 50 ms until `stop`.
fn sample_wanted(
    url: String,
    app_id: String,
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
            let mut of = BTreeMap::<i64, usize>::new();
            for r in &wanted {
                *of.entry(r.1).or_default() += 1;
            }
            for (v, n) in of {
                let most = w.most_of.entry(v).or_default();
                *most = (*most).max(n);
            }
            for r in &rows {
                w.ids.entry(r.1).or_default().insert(r.0.clone());
            }
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
    let Some(mut ha) = Ha::start(
        "kill_9_of_the_agents_replica_while_it_long_polls",
        Setup::replicas(2),
    )
    .await
    else {
        return;
    };
    let (r1, r2) = (ha.api(0), ha.api(1));
    let node = ha.node();
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
    let setup = Setup {
        router: true,
        agent_first,
        ..Setup::replicas(2)
    };
    let Some(mut ha) = Ha::start("leader_killed_mid_rolling_deploy", setup).await else {
        return;
    };
    let node = ha.node();
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
        let live: Vec<Pid> = ha
            .all_instance_pids()
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
        wanted.most_of(new_version),
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
        wanted.most <= 3 && wanted.most_of(new_version) <= 2,
        "{} instances wanted at once, {} of v{new_version}; the instance rows from the kill on:\n{}",
        wanted.most,
        wanted.most_of(new_version),
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
    let Some(ha) = Ha::start("three_replicas_act_as_one", Setup::replicas(3)).await else {
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
    let (bg, done) = blue_green(&r3, &r1, &app_id).await;
    let version = version_of(&done);
    let app = wait_running(&r2, &app_id, 3, Duration::from_secs(60)).await;
    assert!(
        instances(&app).iter().all(|i| i["version"] == version),
        "not all of v{version}: {app}"
    );
    // Every replica tells the same: two deployments, the blue-green one last.
    let lists = deployments_seen_by(&[&r1, &r2, &r3], &app_id).await;
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

/// Which node each instance of `app` is on (added to `into`).
fn record_nodes(into: &mut BTreeMap<String, String>, app: &Value) {
    for i in instances(app) {
        if let (Some(id), Some(node)) = (i["id"].as_str(), i["node_id"].as_str()) {
            into.insert(id.to_string(), node.to_string());
        }
    }
}

/// The nodes `app`'s instances are on.
fn nodes_of(app: &Value) -> BTreeSet<String> {
    instances(app)
        .iter()
        .filter_map(|i| i["node_id"].as_str().map(str::to_string))
        .collect()
}

/// `/proc/<pid>/ns/net`'s link for a process in network namespace `netns`.
fn netns_link(netns: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/run/netns/{netns}"))
        .unwrap_or_else(|e| panic!("/run/netns/{netns}: {e}"))
        .ino();
    format!("net:[{ino}]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_and_two_agents_on_hosts_of_their_own() {
    let t0 = Instant::now();
    let setup = Setup {
        replicas: 3,
        router: true,
        agent_first: 0,
        agents: 2,
        lan: true,
        driver: "process",
    };
    let Some(ha) = Ha::start("three_replicas_and_two_agents_on_hosts_of_their_own", setup).await
    else {
        return;
    };
    let started_in = t0.elapsed();
    let (r1, r2, r3) = (ha.api(0), ha.api(1), ha.api(2));
    let nodes: BTreeSet<String> = ha.agents.iter().map(|a| a.node.clone()).collect();
    let url = ha.db.as_ref().unwrap().url().to_string();
    let mut node_of = BTreeMap::new();

    // Created through r1 (one instance on each node: replicas spread),
    // scaled through r2; the store's rows sampled from the start.
    let app_id = create_hello(&r1, 2, json!({})).await;
    let origin = Instant::now();
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_wanted(url.clone(), app_id.clone(), origin, sampling.clone());
    let app = wait_running(&r3, &app_id, 2, Duration::from_secs(90)).await;
    record_nodes(&mut node_of, &app);
    assert_eq!(nodes_of(&app), nodes, "one instance on each node: {app}");
    let (st, body) = r2
        .call(
            Method::POST,
            &format!("/v1/apps/{app_id}/scale"),
            Some(json!({"replicas": 3})),
        )
        .await;
    assert_eq!(st, 200, "scale through r2: {body}");
    let app = wait_running(&r1, &app_id, 3, Duration::from_secs(60)).await;
    record_nodes(&mut node_of, &app);
    assert_eq!(nodes_of(&app), nodes, "instances on both nodes: {app}");
    wait_routed(ha.router_port, &instance_ids(&app)).await;

    // Blue-green through r3, with traffic through the router from before.
    let stop = Arc::new(AtomicBool::new(false));
    let load_from = secs_since(origin);
    let load = load_through(ha.router_port, origin, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deployed_at = secs_since(origin);
    let (bg, done) = blue_green(&r3, &r1, &app_id).await;
    let version = version_of(&done);
    let app = wait_running(&r2, &app_id, 3, Duration::from_secs(60)).await;
    record_nodes(&mut node_of, &app);
    assert!(
        instances(&app).iter().all(|i| i["version"] == version),
        "not all of v{version}: {app}"
    );
    assert_eq!(nodes_of(&app), nodes, "new instances on both nodes: {app}");
    // The old instances' processes are gone: each node runs its own.
    let d = Deadline::new(
        "only the app's 3 instances running on the nodes",
        Duration::from_secs(30),
    );
    loop {
        let live: Vec<Pid> = ha
            .all_instance_pids()
            .into_iter()
            .filter(Pid::alive)
            .collect();
        if live.len() == 3 {
            break;
        }
        d.tick(&format!("{live:?}")).await;
    }
    let ids = instance_ids(&app);
    wait_routed(ha.router_port, &ids).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let r = load.await.unwrap();
    sampling.store(true, Ordering::SeqCst);
    let wanted = sampler.await.unwrap();

    // Each instance runs on its node's host: its address, a process its
    // agent recorded, in that host's network namespace.
    let pids = ha.pids(&app);
    for i in instances(&app) {
        let agent = ha
            .agents
            .iter()
            .find(|a| i["node_id"] == a.node.as_str())
            .unwrap();
        let host = agent.host.as_ref().unwrap();
        assert_eq!(
            i["ip"],
            host.ip.to_string(),
            "{} on {}: {i}",
            i["id"],
            agent.name
        );
        let pid = pids
            .iter()
            .find(|(id, _)| i["id"] == id.as_str())
            .unwrap()
            .1;
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/ns/net", pid.pid))
                .unwrap()
                .to_string_lossy(),
            netns_link(&host.netns),
            "instance {} (pid {}) is not in {}'s namespace",
            i["id"],
            pid.pid,
            host.netns
        );
    }

    // Served by instances on both nodes, none failed.
    let served_nodes: BTreeSet<String> = r
        .served_by
        .keys()
        .map(|id| {
            node_of
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("? ({id})"))
        })
        .collect();
    // The store made each instance once: v1's two and the scale's one,
    // and three of the new version; never more wanted at once than the
    // old and the new set.
    let mut db = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    let rows = instance_rows(&mut db, &app_id).await;
    let _ = db.close().await;
    // Every replica tells the same: two deployments, the blue-green one last.
    let lists = deployments_seen_by(&[&r1, &r2, &r3], &app_id).await;
    let per_node: BTreeMap<&str, usize> = ha
        .agents
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                instances(&app)
                    .iter()
                    .filter(|i| i["node_id"] == a.node.as_str())
                    .count(),
            )
        })
        .collect();
    println!(
        "three replicas, two agents on hosts of their own ({}, gateway {}; started in {:.1}s): created through r1, scaled through r2, deployed blue-green through r3 ({} ms); instances per node {per_node:?}; {} requests through the router (from {:.2}s after the creation; the deployment at {:.2}s), {} failed, served by {} instances on {} nodes; instances made: {:?}; deployments {:?}; test took {:.1}s",
        ha.lan.as_ref().unwrap().cidr(),
        ha.lan.as_ref().unwrap().gateway(),
        started_in.as_secs_f64(),
        done["metrics"]["deploy_time_ms"],
        r.requests,
        load_from,
        deployed_at,
        r.failures,
        r.served_by.len(),
        served_nodes.len(),
        wanted
            .ids
            .iter()
            .map(|(v, ids)| (*v, ids.len()))
            .collect::<Vec<_>>(),
        lists[0],
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        r.failures, 0,
        "requests through the router failed (times from the creation; the deployment at {deployed_at:+.2}s): {:#?}\nthe instance rows:\n{}",
        r.failed,
        wanted.seen.join("\n")
    );
    assert!(r.requests >= 50, "too few requests: {r:?}");
    assert_eq!(
        served_nodes, nodes,
        "served by {:?} (instance → node: {node_of:?})",
        r.served_by
    );
    let history = wanted.seen.join("\n");
    assert_eq!(
        wanted.ids.keys().copied().collect::<Vec<_>>(),
        vec![1, version],
        "{history}"
    );
    assert_eq!(wanted.made_of(1), 3, "instances of v1:\n{history}");
    assert_eq!(
        wanted.made_of(version),
        3,
        "instances of v{version}:\n{history}"
    );
    assert!(
        wanted.most_of(1) <= 3 && wanted.most_of(version) <= 3 && wanted.most <= 6,
        "{} instances wanted at once, {} of v1, {} of v{version}:\n{history}",
        wanted.most,
        wanted.most_of(1),
        wanted.most_of(version)
    );
    let running: Vec<_> = rows.iter().filter(|r| r.2 == "running").collect();
    assert!(
        running.len() == 3 && running.iter().all(|r| r.1 == version && r.3 == "healthy"),
        "instances wanted running in the store: {rows:?}"
    );
    assert_eq!(lists[0], lists[1]);
    assert_eq!(lists[0], lists[2]);
    assert_eq!(lists[0].len(), 2, "{:?}", lists[0]);
    assert_eq!(lists[0][0].0, bg, "{:?}", lists[0]);
    assert_eq!(lists[0][0].2, "successful", "{:?}", lists[0]);
    assert_eq!(lists[0][1].1, "v1", "{:?}", lists[0]);
    ha.shutdown(&r1, &app_id).await;
}

/// `wg show <agent i's mesh interface> <what>`, in its host.
fn wg(ha: &Ha, i: usize, what: &[&str]) -> String {
    let owner = shellwego_agent::owner::Owner::for_data_dir(&ha.agents[i].dir).unwrap();
    let iface: String = format!("swg-{}", owner.tag()).chars().take(15).collect();
    let out = netns::command_in(&ha.lan.as_ref().unwrap().host(i).netns, "wg")
        .arg("show")
        .arg(&iface)
        .args(what)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wg show {iface}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mesh_key(ha: &Ha, i: usize) -> String {
    wg(ha, i, &["public-key"]).trim().to_string()
}

/// Agent `i`'s address on the mesh (its interface's IPv4 address).
fn mesh_address(ha: &Ha, i: usize) -> String {
    let owner = shellwego_agent::owner::Owner::for_data_dir(&ha.agents[i].dir).unwrap();
    let iface: String = format!("swg-{}", owner.tag()).chars().take(15).collect();
    let out = netns::command_in(&ha.lan.as_ref().unwrap().host(i).netns, "ip")
        .args(["-4", "-o", "addr", "show", "dev", &iface])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address on {iface}: {text}"))
        .to_string()
}

/// Nodes on hosts of their own, talking across the (virtual) network:
/// `db` (private) runs in a container on n1, `web` in a container on n2
/// with `allowed_egress` the LAN's CIDR. web asks its resolver for
/// `db.internal` (A for the address, SRV for the port) and gets n1's
/// address on the nodes' WireGuard mesh (kernel WireGuard, else
/// wireguard-go), where db's port is published; it reaches db through the
/// tunnel (its connections leave n2 masqueraded as n2's mesh address); the
/// nodes show their real public keys and the tunnel counted the bytes. Its policy lets it reach the
/// LAN's gateway and refuses an address outside the CIDR that is reachable
/// from n2 (a second address of the gateway's, in 10.98.0.0/16). The
/// router, in the root namespace, routes web and answers 404 for db.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_hosts_an_instance_reaches_a_private_app_by_name_and_its_egress_policy_holds() {
    const TEST: &str =
        "across_hosts_an_instance_reaches_a_private_app_by_name_and_its_egress_policy_holds";
    if !crate::orphans::containers_work() {
        return;
    }
    let setup = Setup {
        replicas: 1,
        router: true,
        agent_first: 0,
        agents: 2,
        lan: true,
        driver: "container",
    };
    let Some(ha) = Ha::start(TEST, setup).await else {
        return;
    };
    let api = ha.api(0);
    let lan = ha.lan.as_ref().unwrap();
    // Inside the policy: a listener on the gateway; outside it: one on a
    // second address of the bridge, reachable from the hosts (their
    // default route is the gateway) and outside the LAN's /24.
    let third = lan.gateway().octets()[2];
    let outside = Ipv4Addr::new(10, 98, third, 1);
    let st = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{outside}/32"), "dev", lan.bridge()])
        .status()
        .unwrap();
    assert!(st.success(), "ip addr add {outside}");
    let listen = |ip: Ipv4Addr| {
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c);
            }
        });
        port
    };
    let (in_port, out_port) = (listen(lan.gateway()), listen(outside));
    // Without a policy, n2 reaches the outside address (the control).
    let control = netns::command_in(&lan.host(1).netns, "/bin/busybox")
        .args(["nc", "-w", "2", &outside.to_string(), &out_port.to_string()])
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        control.success(),
        "n2 cannot reach {outside}:{out_port} at all"
    );

    let root = ha.dir.path().join("rootfs");
    shellwego_testkit::fixtures::write_busybox_rootfs(&root).unwrap();
    let upload = api
        .upload(shellwego_testkit::fixtures::tar_gz(&root).unwrap())
        .await
        .unwrap();
    let create = |name: &'static str, host: &'static str, script: String, extra: Value| {
        let api = api.clone();
        let mut body = crate::support::busybox_app(name, &upload, &script, extra);
        body["placement"] = json!({"labels": {"host": host}});
        async move {
            let created = api
                .post("/v1/apps", &body)
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e:#}"));
            created["id"].as_str().unwrap().to_string()
        }
    };
    let db = create(
        "db",
        "n1",
        "echo \"db says hi from $SHELLWEGO_INSTANCE_ID\" > /www/index.html; \
         exec /bin/busybox httpd -f -p $PORT -h /www"
            .into(),
        json!({"networking": {"public": false}}),
    )
    .await;
    let web = create(
        "web",
        "n2",
        "B=/bin/busybox; echo waiting > /www/index.html; \
         ( while true; do \
             A=$($B nslookup -type=a db.internal 2>&1 | $B awk '/^Address: / {print $2}' | $B tail -n 1); \
             P=$($B nslookup -type=srv db.internal 2>&1 | $B awk '/service =/ {print $(NF-1)}' | $B head -n 1); \
             if [ -n \"$A\" ] && [ -n \"$P\" ] && printf 'GET / HTTP/1.0\\r\\n\\r\\n' | $B nc -w 2 \"$A\" \"$P\" > /tmp/db.html && $B grep -q 'db says' /tmp/db.html; then \
               DB=$($B grep 'db says' /tmp/db.html); else DB=\"no answer from $A:$P\"; fi; \
             if $B nc -w 2 $IN_IP $IN_PORT </dev/null; then IN=ok; else IN=refused; fi; \
             if $B nc -w 2 $OUT_IP $OUT_PORT </dev/null; then OUT=ok; else OUT=refused; fi; \
             echo \"db.internal is $A:$P; $DB; inside=$IN outside=$OUT\" > /www/index.new && $B mv /www/index.new /www/index.html; \
             $B sleep 0.5; \
           done ) & \
         exec $B httpd -f -p $PORT -h /www"
            .into(),
        json!({
            "networking": {"allowed_egress": [lan.cidr()]},
            "env": {"IN_IP": lan.gateway().to_string(), "IN_PORT": in_port.to_string(),
                    "OUT_IP": outside.to_string(), "OUT_PORT": out_port.to_string()},
        }),
    )
    .await;
    let d = wait_running(&api, &db, 1, Duration::from_secs(120)).await;
    let w = wait_running(&api, &web, 1, Duration::from_secs(120)).await;
    let node_of = |a: &Value| instances(a)[0]["node_id"].as_str().unwrap().to_string();
    assert_eq!(node_of(&d), ha.agents[0].node, "db on n1: {d:#}");
    assert_eq!(node_of(&w), ha.agents[1].node, "web on n2: {w:#}");
    // Reported at their nodes' addresses (the routers and other nodes
    // reach them there).
    assert_eq!(instances(&d)[0]["ip"], lan.host(0).ip.to_string(), "{d:#}");
    let db_inst = instances(&d)[0]["id"].as_str().unwrap().to_string();

    let router = std::net::SocketAddr::from(([127, 0, 0, 1], ha.router_port));
    let dl = Deadline::new("web's page to show db's answer", Duration::from_secs(60));
    let page = loop {
        if let Ok((200, page)) = shellwego_testkit::platform::through_at(router, "web") {
            if page.contains("db says hi") {
                break page;
            }
            dl.tick(&page).await;
        } else {
            dl.tick(&"no answer from web through the router").await;
        }
    };
    println!("web's page (through the router): {}", page.trim());
    assert!(page.contains(&db_inst), "{page}");
    // Over the mesh: db.internal is n1's WireGuard address.
    let n1_key = mesh_key(&ha, 0);
    let n2_key = mesh_key(&ha, 1);
    let n1_mesh = mesh_address(&ha, 0);
    assert!(
        page.contains(&format!("db.internal is {n1_mesh}:")),
        "db is reached at n1's mesh address {n1_mesh}: {page}"
    );
    // The nodes show their real public keys, and each has had a handshake
    // with the other and moved bytes through the tunnel.
    for (i, key) in [(0, &n1_key), (1, &n2_key)] {
        let (st, n) = api
            .call(
                Method::GET,
                &format!("/v1/nodes/{}", ha.agents[i].node),
                None,
            )
            .await;
        assert_eq!(st, 200, "{n}");
        assert_eq!(n["networking"]["wireguard_pubkey"], key.as_str(), "{n:#}");
    }
    let transfer = wg(&ha, 0, &["transfer"]);
    let (rx, tx) = transfer
        .lines()
        .find(|l| l.starts_with(&n2_key))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(1)?.parse::<u64>().ok()?,
                f.get(2)?.parse::<u64>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("n1 has no peer n2: {transfer}"));
    assert!(
        rx > 0 && tx > 0,
        "no traffic through the tunnel: {transfer}"
    );
    println!("n1 <-> n2 over WireGuard: {rx} bytes in, {tx} out");
    assert!(page.contains("inside=ok"), "{page}");
    assert!(page.contains("outside=refused"), "{page}");
    let (st, body) = shellwego_testkit::platform::through_at(router, "db").unwrap();
    assert_eq!(st, 404, "a private app through the router: {body}");

    let (st, body) = api
        .call(Method::DELETE, &format!("/v1/apps/{db}"), None)
        .await;
    assert!((200..300).contains(&st), "delete db: {st} {body}");
    ha.shutdown(&api, &web).await;
}
