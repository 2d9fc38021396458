//! A small cluster of real processes: `shellwego up` (control plane, its
//! local agent — node A — and the ingress) and a second `shellwego agent`
//! (node B), running the hello example app with the process driver. What
//! moves where is observed through the API, the ingress and the instances'
//! own processes (pids from each agent's `instances/<id>/state.json`).
//! Logs (`SHELLWEGO_LOG=info`) go to the temp dir, which is kept and whose
//! logs are printed when a test fails.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_testkit::api::Api;
use shellwego_testkit::fixtures::{app_serving, tar_gz, HELLO_PROCFILE, HELLO_SERVER_PY};
use shellwego_testkit::platform::{Platform, Proc as Process, Ready};

use crate::support::{all_instance_procs, bin, instance_proc, Deadline, Proc};

const POLL: Duration = Duration::from_millis(200);
const APP: &str = "hello";

/// `up` (node A) and `agent` (node B), each with its log in the temp dir.
struct Cluster {
    up: Platform,
    agent_b: Option<Process>,
    api: Api,
    ingress: u16,
    node_a: String,
    node_b: String,
    /// Instance processes the test must kill itself (their agent is gone).
    orphans: Vec<Proc>,
    // Last: removed after `drop` has stopped everything (kept on failure).
    dir: tempfile::TempDir,
}

impl Cluster {
    fn agent_a_dir(&self) -> PathBuf {
        self.up.agent_dir()
    }

    fn agent_b_dir(&self) -> PathBuf {
        self.dir.path().join("b")
    }

    async fn start(node_timeout: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let up = Platform::up(bin())
            .dir(dir.path())
            .data_dir(dir.path().join("up"))
            .args(&["--node-timeout", node_timeout])
            .env("SHELLWEGO_LOG", "info")
            .ready(Ready::Token)
            .start_async()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let api = up.api();
        let ingress = up.ingress_port();
        let (node_b, agent_b) = up
            .join_agent(
                "b",
                &dir.path().join("b"),
                &["--sync-wait", "1"],
                &dir.path().join("b.log"),
            )
            .unwrap();
        let mut cl = Cluster {
            up,
            agent_b: Some(agent_b),
            api,
            ingress,
            node_a: String::new(),
            node_b,
            orphans: vec![],
            dir,
        };

        let d = Deadline::new("both nodes ready", Duration::from_secs(60));
        loop {
            let (_, nodes) = cl.api.call(Method::GET, "/v1/nodes", None).await;
            let list = nodes["data"].as_array().cloned().unwrap_or_default();
            let ready: Vec<&str> = list
                .iter()
                .filter(|n| n["status"] == "ready")
                .filter_map(|n| n["id"].as_str())
                .collect();
            if ready.len() == 2 && ready.contains(&cl.node_b.as_str()) {
                cl.node_a = ready.iter().find(|n| **n != cl.node_b).unwrap().to_string();
                break;
            }
            d.tick(&nodes).await;
        }
        cl
    }

    /// Upload examples/hello and create the app with `replicas`, health
    /// checked every second. Returns its id.
    async fn create_hello(&self, replicas: i64) -> String {
        self.create_hello_env(replicas, json!({})).await
    }

    async fn create_hello_env(&self, replicas: i64, env: Value) -> String {
        let app = app_serving(APP, replicas)
            .with(json!({"env": env}))
            .create(&self.api)
            .await
            .unwrap_or_else(|e| panic!("create app: {e:#}"));
        app["id"].as_str().unwrap().to_string()
    }

    /// SIGKILL `up` (control plane, agent A and ingress at once) and
    /// start it again on the same data and ports.
    fn kill_and_restart_up(&mut self) {
        self.up.kill();
        self.up.restart();
    }

    /// `POST /v1/apps/{id}/deploy`; the deployment's id.
    async fn deploy(&self, app_id: &str, body: Value) -> String {
        let (status, d) = self
            .api
            .call(
                Method::POST,
                &format!("/v1/apps/{app_id}/deploy"),
                Some(body),
            )
            .await;
        assert_eq!(status, 202, "deploy: {d}");
        d["deployment_id"].as_str().unwrap().to_string()
    }

    /// Wait until the deployment has ended `successful`.
    async fn wait_deployed(&self, dep: &str, limit: Duration) -> Value {
        let d = Deadline::new(format!("deployment {dep} successful"), limit);
        loop {
            let (_, v) = self
                .api
                .call(Method::GET, &format!("/v1/deployments/{dep}"), None)
                .await;
            if v["status"] == "successful" {
                return v;
            }
            assert!(
                v["status"] == "in_progress" || v.get("status").is_none(),
                "the deployment ended {}: {v:#}",
                v["status"]
            );
            d.tick(&v).await;
        }
    }

    async fn app(&self, id: &str) -> Value {
        self.api
            .call(Method::GET, &format!("/v1/apps/{id}"), None)
            .await
            .1
    }

    /// Wait until the app is running with `n` healthy instances, one per
    /// node of `nodes` when `spread`, else all on `nodes`.
    async fn wait_running(
        &self,
        id: &str,
        n: usize,
        nodes: &[&str],
        spread: bool,
        limit: Duration,
    ) -> Value {
        let what = format!("app running with {n} healthy instance(s) on {nodes:?}");
        let d = Deadline::new(what, limit);
        loop {
            let app = self.app(id).await;
            if running_on(&app, n, nodes, spread) {
                return app;
            }
            d.tick(&app).await;
        }
    }

    /// The process of each of the app's instances on `node`.
    fn procs_on(&self, app: &Value, node: &str) -> Vec<(String, Proc)> {
        let dir = if node == self.node_b {
            self.agent_b_dir()
        } else {
            self.agent_a_dir()
        };
        instances(app)
            .iter()
            .filter(|i| i["node_id"] == node)
            .map(|i| {
                let id = i["id"].as_str().unwrap().to_string();
                let p = instance_proc(&dir, &id).unwrap_or_else(|| {
                    panic!(
                        "no running process in {}/instances/{id}/state.json; app: {app}",
                        dir.display()
                    )
                });
                assert!(
                    p.alive(),
                    "instance {id} (pid {}) is not alive; app: {app}",
                    p.pid
                );
                (id, p)
            })
            .collect()
    }

    /// Delete the app, wait until its processes are gone (orphans are
    /// killed by the test), then stop `up` and agent B.
    async fn shutdown(mut self, app_id: &str) {
        let mut procs: BTreeSet<Proc> = all_instance_procs(&self.agent_a_dir())
            .into_iter()
            .collect();
        procs.extend(all_instance_procs(&self.agent_b_dir()));
        let (status, body) = self
            .api
            .call(Method::DELETE, &format!("/v1/apps/{app_id}"), None)
            .await;
        assert!((200..300).contains(&status), "delete app: {status} {body}");
        for p in &self.orphans {
            p.kill();
        }
        let d = Deadline::new(
            "the deleted app's processes to exit",
            Duration::from_secs(60),
        );
        loop {
            let left: Vec<&Proc> = procs.iter().filter(|p| p.alive()).collect();
            if left.is_empty() {
                break;
            }
            d.tick(&format!("{left:?}")).await;
        }
        if let Some(mut b) = self.agent_b.take() {
            b.terminate(Duration::from_secs(15));
        }
        self.up.terminate(Duration::from_secs(40));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // (Each process prints the end of its log when the test fails.)
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "----- the test's files (logs: up.log, b.log) are kept in {} -----",
                self.dir.path().display()
            );
        }
        if let Some(mut b) = self.agent_b.take() {
            b.kill();
        }
        self.up.terminate(Duration::from_secs(10));
        // `up` and agents leave instances running when they stop.
        let mut left = self.orphans.clone();
        left.extend(all_instance_procs(&self.agent_a_dir()));
        left.extend(all_instance_procs(&self.agent_b_dir()));
        for p in left {
            p.kill();
        }
        // And what the runtime keeps of them (container state, network
        // namespaces, mounts, cgroups), by the agents' owner tags.
        for dir in [self.agent_a_dir(), self.agent_b_dir()] {
            if let Ok(owner) = shellwego_agent::owner::Owner::for_data_dir(&dir) {
                shellwego_agent::owner::remove_all(&owner);
            }
        }
    }
}

fn instances(app: &Value) -> Vec<Value> {
    app["instances"].as_array().cloned().unwrap_or_default()
}

/// Running, `n` healthy, exactly `n` instances listed (none stopping), all
/// healthy, all on `nodes` (and each on a different one when `spread`).
fn running_on(app: &Value, n: usize, nodes: &[&str], spread: bool) -> bool {
    let insts = instances(app);
    let on: BTreeSet<&str> = insts.iter().filter_map(|i| i["node_id"].as_str()).collect();
    app["status"] == "running"
        && app["replicas"]["healthy"] == n
        && insts.len() == n
        && insts.iter().all(|i| i["status"] == "healthy")
        && insts
            .iter()
            .all(|i| i["node_id"].as_str().is_some_and(|x| nodes.contains(&x)))
        && (!spread || on.len() == n)
}

#[derive(Debug, Default)]
struct LoadResult {
    requests: u64,
    failures: u64,
    /// The first few failures, with when they happened.
    failed: Vec<String>,
    served_by: BTreeMap<String, u64>,
}

/// Sequential GETs through the ingress until `stop`.
fn start_load(ingress: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<LoadResult> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{ingress}/");
        let start = Instant::now();
        let mut r = LoadResult::default();
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
                        .push(format!("at {:.2}s: {f}", start.elapsed().as_secs_f64()));
                }
            }
        }
        r
    })
}

/// Wait until the ingress has served each of `ids` (its table has caught up).
async fn wait_served_by(ingress: u16, ids: &[String]) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(ingress, stop.clone());
    let t = Instant::now();
    // Round-robin over two: a few requests see both, once routed.
    while t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(POLL).await;
    }
    stop.store(true, Ordering::SeqCst);
    let r = load.await.unwrap();
    for id in ids {
        assert!(
            r.served_by.contains_key(id),
            "the ingress does not route to {id} yet: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_moves_instances_with_zero_failed_requests() {
    let t0 = Instant::now();
    let cl = Cluster::start("3s").await;
    let (a, b) = (cl.node_a.clone(), cl.node_b.clone());
    let app_id = cl.create_hello(2).await;
    let app = cl
        .wait_running(&app_id, 2, &[&a, &b], true, Duration::from_secs(90))
        .await;
    let old_b = cl.procs_on(&app, &b);
    assert_eq!(old_b.len(), 1, "{app}");
    let ids: Vec<String> = instances(&app)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    wait_served_by(cl.ingress, &ids).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(cl.ingress, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drain_start = Instant::now();
    let (status, body) = cl
        .api
        .call(
            Method::POST,
            &format!("/v1/nodes/{b}/actions/drain"),
            Some(json!({"batch_size": 1})),
        )
        .await;
    assert_eq!(status, 202, "drain: {body}");

    let d = Deadline::new(
        "the drain (app running with 2 healthy on A, nothing on B, B's old process gone)",
        Duration::from_secs(90),
    );
    let app = loop {
        let app = cl.app(&app_id).await;
        let nothing_on_b = instances(&app).iter().all(|i| i["node_id"] != b.as_str());
        let old_gone = old_b.iter().all(|(_, p)| !p.alive());
        if nothing_on_b && old_gone && running_on(&app, 2, &[&a], false) {
            break app;
        }
        d.tick(&format!("{app} (B's old process alive: {})", !old_gone))
            .await;
    };
    let drained_in = drain_start.elapsed();
    // A little more load on the new instances, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let r = load.await.unwrap();
    println!(
        "drain: {} requests (from 0.5s before the drain to 0.5s after it), {} failed; moved in {:.1}s; served by {:?}; test took {:.1}s",
        r.requests,
        r.failures,
        drained_in.as_secs_f64(),
        r.served_by,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        r.failures, 0,
        "requests failed during the drain: {:#?}\napp: {app}",
        r.failed
    );
    assert!(r.requests >= 50, "too few requests: {r:?}");
    let (_, node) = cl
        .api
        .call(Method::GET, &format!("/v1/nodes/{b}"), None)
        .await;
    assert_eq!(node["status"], "draining", "{node}");
    cl.shutdown(&app_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_node_goes_offline_and_its_instances_move() {
    let t0 = Instant::now();
    let mut cl = Cluster::start("3s").await;
    let (a, b) = (cl.node_a.clone(), cl.node_b.clone());
    let app_id = cl.create_hello(2).await;
    let app = cl
        .wait_running(&app_id, 2, &[&a, &b], true, Duration::from_secs(90))
        .await;
    let on_b = cl.procs_on(&app, &b);
    assert_eq!(on_b.len(), 1, "{app}");
    cl.orphans = on_b.iter().map(|(_, p)| *p).collect();

    // The machine is cut off: the agent dies, its instances keep running.
    let mut agent = cl.agent_b.take().unwrap();
    agent.kill();
    let cut = Instant::now();

    let (mut offline_at, mut event_at, mut moved_at) = (None, None, None);
    let d = Deadline::new(
        "node B offline, a node.offline event for it, and the app running with 2 healthy on A",
        Duration::from_secs(45),
    );
    loop {
        let (_, node) = cl
            .api
            .call(Method::GET, &format!("/v1/nodes/{b}"), None)
            .await;
        let (_, events) = cl
            .api
            .call(Method::GET, "/v1/events?filter[type]=node.offline", None)
            .await;
        let app = cl.app(&app_id).await;
        if offline_at.is_none() && node["status"] == "offline" {
            offline_at = Some(cut.elapsed());
        }
        let offline_events = events["data"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|e| e["type"] == "node.offline" && e["resource"]["id"] == b.as_str())
                    .count()
            })
            .unwrap_or(0);
        if event_at.is_none() && offline_events > 0 {
            event_at = Some(cut.elapsed());
        }
        if running_on(&app, 2, &[&a], false) {
            moved_at.get_or_insert_with(|| cut.elapsed());
        } else {
            moved_at = None;
        }
        if offline_at.is_some()
            && event_at.is_some()
            && moved_at.is_some()
            && node["status"] == "offline"
        {
            assert_eq!(offline_events, 1, "one node.offline event for B: {events}");
            break;
        }
        d.tick(&format!("node: {node}\nevents: {events}\napp: {app}"))
            .await;
    }
    println!(
        "offline: node B offline after {:.1}s, node.offline event after {:.1}s, app running with 2 healthy on A after {:.1}s; test took {:.1}s",
        offline_at.unwrap().as_secs_f64(),
        event_at.unwrap().as_secs_f64(),
        moved_at.unwrap().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    cl.shutdown(&app_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_and_blue_green_deploys_fail_no_request() {
    let t0 = Instant::now();
    let cl = Cluster::start("30s").await;
    let (a, b) = (cl.node_a.clone(), cl.node_b.clone());
    let app_id = cl.create_hello(2).await;
    let app = cl
        .wait_running(&app_id, 2, &[&a, &b], true, Duration::from_secs(90))
        .await;
    let first: Vec<String> = instances(&app)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    wait_served_by(cl.ingress, &first).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(cl.ingress, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rolling = cl.deploy(&app_id, json!({"strategy": "rolling"})).await;
    let d = cl.wait_deployed(&rolling, Duration::from_secs(120)).await;
    let rolled_in = d["metrics"]["deploy_time_ms"].as_i64().unwrap();
    let bg = cl
        .deploy(
            &app_id,
            json!({"strategy": "blue-green", "warm_window": "2s"}),
        )
        .await;
    let d = cl.wait_deployed(&bg, Duration::from_secs(120)).await;
    let switched_in = d["metrics"]["deploy_time_ms"].as_i64().unwrap();
    let app = cl
        .wait_running(&app_id, 2, &[&a, &b], false, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let r = load.await.unwrap();
    println!(
        "deploys: {} requests, {} failed; rolling took {rolled_in} ms, blue-green (2 s warm window) {switched_in} ms; served by {} instances; test took {:.1}s",
        r.requests,
        r.failures,
        r.served_by.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        r.failures, 0,
        "requests failed during the deploys: {:#?}",
        r.failed
    );
    // 2 first + 2 rolled + 2 switched to, each seen serving.
    assert!(r.served_by.len() >= 6, "{r:?}");
    for i in instances(&app) {
        assert!(r.served_by.contains_key(i["id"].as_str().unwrap()), "{r:?}");
    }
    cl.shutdown(&app_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_killed_mid_deployment_finishes_it_after_a_restart() {
    let mut cl = Cluster::start("30s").await;
    let (a, b) = (cl.node_a.clone(), cl.node_b.clone());
    // The app takes 3 s to listen, so the kill lands before the switch
    // (a quick app is switched to within ~150 ms).
    let app_id = cl.create_hello_env(2, json!({"START_DELAY": "3"})).await;
    cl.wait_running(&app_id, 2, &[&a, &b], true, Duration::from_secs(90))
        .await;
    let dep = cl
        .deploy(
            &app_id,
            json!({"strategy": "blue-green", "warm_window": "1s"}),
        )
        .await;
    // Killed once the new set exists, before the switch.
    let d = Deadline::new("the new set created", Duration::from_secs(60));
    loop {
        let (_, v) = cl
            .api
            .call(Method::GET, &format!("/v1/deployments/{dep}"), None)
            .await;
        let at = v["progress"]["completed_steps"].as_i64().unwrap_or(0);
        if (2..5).contains(&at) {
            break;
        }
        assert!(
            at < 5,
            "the deployment went past the switch before the kill: {v:#}"
        );
        d.tick(&v).await;
    }
    cl.kill_and_restart_up();
    let d = cl.wait_deployed(&dep, Duration::from_secs(120)).await;
    assert_eq!(d["progress"]["completed_steps"], 7, "{d:#}");
    // One version runs in the end: two instances, both of the new release.
    let app = cl
        .wait_running(&app_id, 2, &[&a, &b], false, Duration::from_secs(60))
        .await;
    let (_, list) = cl
        .api
        .call(Method::GET, &format!("/v1/apps/{app_id}/deployments"), None)
        .await;
    assert_eq!(list["data"][0]["id"], dep.as_str(), "{list}");
    println!("resumed: {}", app["instances"]);
    cl.shutdown(&app_id).await;
}

/// examples/hello as a tarball, its answers to `/` (not `/health`) with
/// status `code`.
fn hello_answering(dir: &Path, code: u16) -> Vec<u8> {
    let src = dir.join(format!("hello-{code}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Procfile"), HELLO_PROCFILE).unwrap();
    let changed = HELLO_SERVER_PY.replace(
        "self.send_response(200)",
        &format!("self.send_response(200 if self.path == \"/health\" else {code})"),
    );
    assert_ne!(
        changed, HELLO_SERVER_PY,
        "examples/hello/server.py changed; update this test"
    );
    std::fs::write(src.join("server.py"), changed).unwrap();
    tar_gz(&src).unwrap()
}

/// `n` requests through the ingress, 4 at a time: (status → count,
/// instance → count of 200s, transport errors).
async fn requests(ingress: u16, n: usize) -> (BTreeMap<u16, u64>, BTreeMap<String, u64>, u64) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{ingress}/");
    let mut tasks = vec![];
    for _ in 0..4 {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = (
                BTreeMap::<u16, u64>::new(),
                BTreeMap::<String, u64>::new(),
                0u64,
            );
            for _ in 0..n / 4 {
                match http
                    .get(&url)
                    .header(reqwest::header::HOST, format!("{APP}.localhost"))
                    .send()
                    .await
                {
                    Ok(r) => {
                        let st = r.status().as_u16();
                        *out.0.entry(st).or_default() += 1;
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if st == 200 {
                            let i = v["instance"].as_str().unwrap_or("?").to_string();
                            *out.1.entry(i).or_default() += 1;
                        }
                    }
                    Err(_) => out.2 += 1,
                }
            }
            out
        }));
    }
    let mut all = (BTreeMap::new(), BTreeMap::new(), 0);
    for t in tasks {
        let (a, b, c) = t.await.unwrap();
        for (k, v) in a {
            *all.0.entry(k).or_default() += v;
        }
        for (k, v) in b {
            *all.1.entry(k).or_default() += v;
        }
        all.2 += c;
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canaries_get_their_share_through_the_ingress_and_a_failing_one_rolls_back() {
    let cl = Cluster::start("30s").await;
    let (a, b) = (cl.node_a.clone(), cl.node_b.clone());
    let app_id = cl.create_hello(4).await;
    cl.wait_running(&app_id, 4, &[&a, &b], false, Duration::from_secs(90))
        .await;

    // A good canary at 20%: about a fifth of the requests, then promoted,
    // with no request failing throughout.
    let good = cl
        .api
        .upload(hello_answering(cl.dir.path(), 200))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(cl.ingress, stop.clone());
    let dep = cl
        .deploy(
            &app_id,
            json!({"source": {"type": "tarball", "upload_id": good}, "strategy": "canary",
                   "canary_steps": [20, 100], "canary_pause": "10m"}),
        )
        .await;
    let d = Deadline::new("the canary serving its share", Duration::from_secs(90));
    loop {
        let (_, log) = cl
            .api
            .call(Method::GET, &format!("/v1/deployments/{dep}/logs"), None)
            .await;
        if log.as_str().is_some_and(|l| l.contains("canary: 20%")) {
            break;
        }
        d.tick(&log).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // the routers' refresh
    let app = cl.app(&app_id).await;
    let canary: Vec<String> = instances(&app)
        .iter()
        .filter(|i| i["version"] == 2)
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(canary.len(), 1, "{app}");
    let (statuses, served, errors) = requests(cl.ingress, 1200).await;
    let total: u64 = served.values().sum();
    let share = served.get(&canary[0]).copied().unwrap_or(0) as f64 / total as f64;
    println!("canary: {share:.3} of {total} requests ({statuses:?}, {errors} transport errors)");
    assert!(total >= 1000, "{statuses:?}");
    assert!(
        (share - 0.20).abs() <= 0.05,
        "the canary's share: {share:.3} of {total}: {served:?}"
    );
    let (status, body) = cl
        .api
        .call(
            Method::POST,
            &format!("/v1/deployments/{dep}/actions/promote"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "promote: {body}");
    cl.wait_deployed(&dep, Duration::from_secs(120)).await;
    cl.wait_running(&app_id, 4, &[&a, &b], false, Duration::from_secs(60))
        .await;
    stop.store(true, Ordering::SeqCst);
    let r = load.await.unwrap();
    assert_eq!(
        r.failures, 0,
        "requests failed during the canary: {:#?}",
        r.failed
    );

    // A canary that answers 500: rolled back by itself on its error rate.
    let bad = cl
        .api
        .upload(hello_answering(cl.dir.path(), 500))
        .await
        .unwrap();
    let dep = cl
        .deploy(
            &app_id,
            json!({"source": {"type": "tarball", "upload_id": bad}, "strategy": "canary",
                   "canary_steps": [20, 100], "canary_pause": "10m"}),
        )
        .await;
    let d = Deadline::new("the failing canary rolled back", Duration::from_secs(120));
    let mut sent = 0;
    let v = loop {
        let (_, v) = cl
            .api
            .call(Method::GET, &format!("/v1/deployments/{dep}"), None)
            .await;
        if v["status"] == "rolled_back" {
            break v;
        }
        sent += requests(cl.ingress, 40).await.0.values().sum::<u64>();
        d.tick(&v).await;
    };
    println!(
        "failing canary rolled back after {sent} requests: {}",
        v["status_reason"]
    );
    assert!(
        v["status_reason"]
            .as_str()
            .unwrap()
            .contains("with an error"),
        "{v:#}"
    );
    // Everything answers 200 again.
    cl.wait_running(&app_id, 4, &[&a, &b], false, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (statuses, _, _) = requests(cl.ingress, 200).await;
    assert_eq!(statuses.keys().collect::<Vec<_>>(), [&200], "{statuses:?}");
    cl.shutdown(&app_id).await;
}

/// Exec reaches an instance on the second node (node B, a `shellwego
/// agent` of its own) through its agent channel, and runs in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_runs_in_an_instance_on_another_node() {
    let cl = Cluster::start("30s").await;
    let (a, b) = (cl.node_a.clone(), cl.node_b.clone());
    let app_id = cl.create_hello(2).await;
    let app = cl
        .wait_running(&app_id, 2, &[&a, &b], true, Duration::from_secs(90))
        .await;
    let on_b = instances(&app)
        .into_iter()
        .find(|i| i["node_id"] == b.as_str())
        .unwrap();
    let inst = on_b["id"].as_str().unwrap().to_string();
    let (status, r) = cl
        .api
        .call(
            Method::POST,
            &format!("/v1/apps/{app_id}/exec"),
            Some(
                json!({"command": ["/bin/sh", "-c", "echo $SHELLWEGO_INSTANCE_ID $PORT"],
                        "instance_id": inst}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(r["exit_code"], 0, "{r:#}");
    assert_eq!(
        r["stdout"].as_str().unwrap().trim(),
        format!("{inst} {}", on_b["port"]),
        "{r:#}"
    );
    cl.shutdown(&app_id).await;
}
