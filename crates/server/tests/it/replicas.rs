//! Several control-plane replicas on one PostgreSQL behave as one server
//! (issue 14): changes reach agents waiting on any replica through
//! LISTEN/NOTIFY, even across a lost LISTEN connection; each singleton
//! controller has exactly one leader, and a deposed leader commits
//! nothing; objects uploaded through one replica are served by another;
//! a replica with another master key refuses to start; and a stop and an
//! agent's report of the same instance at once queue rather than deadlock
//! (PostgreSQL's row locks: SQLite has one writer).
//!
//! PostgreSQL only (SQLite is one process): skipped without
//! SHELLWEGO_TEST_DATABASE_URL, which CI sets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shellwego_server::ctx::ServerCtx;
use shellwego_server::leader::Fence;
use shellwego_store::leases;
use shellwego_testkit::agent::{AgentSync, FakeAgent};
use shellwego_testkit::server::TestServer;
use shellwego_testkit::Backend;

async fn pg() -> Option<TestServer> {
    TestServer::start(Backend::Postgres).await
}

/// Hold a sync of `agent` (on whichever replica it talks to) at its
/// current generation: the task ends with the next generation, and how
/// long after `since` it came.
async fn held_sync(agent: &FakeAgent) -> tokio::task::JoinHandle<(i64, Instant)> {
    let generation = agent.desired().await.generation;
    let agent = agent.clone();
    let task = tokio::spawn(async move {
        let d = agent
            .sync(&AgentSync {
                generation,
                wait_secs: Some(10),
                ..Default::default()
            })
            .await;
        (d.generation, Instant::now())
    });
    // Let the call reach the server and wait there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    task
}

async fn create_app(s: &TestServer, name: &str) -> String {
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": name, "image": "nginx", "replicas": 1, "resources": {"memory": "128m", "cpu": 0.1}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_wakes_an_agent_held_by_another() {
    let Some(a) = pg().await else { return };
    let b = a.replica().await;
    // The replica listens once its LISTEN connection is up (a moment after
    // it serves; what it misses meanwhile it re-reads when it connects).
    b.wait_for("/readyz", "b listening", |r| r["bus"] == "postgres")
        .await;
    let agent = a.fake_agent("n1", 16, 64 << 30).await.at(&b.base);
    let before = agent.desired().await.generation;
    let held = held_sync(&agent).await;
    create_app(&a, "across").await;
    let changed = Instant::now();
    let (generation, at) = held.await.unwrap();
    assert!(generation > before, "the held sync answered the change");
    // The held sync re-reads the store every 5 s on its own; well before
    // that, it was woken by replica a's NOTIFY.
    let took = at.saturating_duration_since(changed);
    assert!(
        took < Duration::from_secs(4),
        "took {took:?}: not woken by the notification"
    );
}

/// The LISTEN connections' backends in this test's database.
async fn listen_backends(s: &TestServer) -> Vec<i32> {
    sqlx::query_as::<_, (i32,)>(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(s.store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|(p,)| p)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listen_connection_loses_no_change() {
    let Some(a) = pg().await else { return };
    let b = a.replica().await;
    let agent = a.fake_agent("n1", 16, 64 << 30).await.at(&b.base);
    let before = agent.desired().await.generation;
    let held = held_sync(&agent).await;
    // Both replicas' LISTEN connections are cut, and a change is made
    // while they are down.
    let t = Instant::now();
    let pids = loop {
        let pids = listen_backends(&a).await;
        if pids.len() >= 2 {
            break pids;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "LISTEN backends: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for pid in &pids {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(a.store.pool())
            .await
            .unwrap();
    }
    create_app(&a, "during").await;
    let changed = Instant::now();
    let (generation, at) = held.await.unwrap();
    assert!(generation > before);
    // b reconnected and, not knowing what it missed, woke everyone to
    // re-read the store: well before the 5 s recheck.
    let took = at.saturating_duration_since(changed);
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // The buses listen again, on new connections.
    let t = Instant::now();
    loop {
        let now = listen_backends(&a).await;
        let (_, ra) = a.get("/readyz").await;
        let (_, rb) = b.get("/readyz").await;
        if now.len() >= 2
            && now.iter().all(|p| !pids.contains(p))
            && ra["bus"] == "postgres"
            && rb["bus"] == "postgres"
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{now:?} {ra} {rb}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And later changes still arrive at once.
    let before = agent.desired().await.generation;
    let held = held_sync(&agent).await;
    create_app(&a, "after").await;
    let changed = Instant::now();
    let (generation, at) = held.await.unwrap();
    assert!(generation > before);
    assert!(at.saturating_duration_since(changed) < Duration::from_secs(4));
}

/// Who leads what, by each replica's `/readyz`.
async fn leaders(replicas: &[&TestServer]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in replicas {
        let (status, ready) = r.get("/readyz").await;
        assert_eq!(status, 200, "{ready}");
        for c in ready["leads"].as_array().unwrap() {
            out.entry(c.as_str().unwrap().to_string())
                .or_default()
                .push(ready["replica"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Wait until each singleton controller has exactly one leader among
/// `replicas`.
async fn one_leader_each(replicas: &[&TestServer]) -> BTreeMap<String, String> {
    let t = Instant::now();
    loop {
        let l = leaders(replicas).await;
        if shellwego_server::controller::SINGLETONS
            .iter()
            .all(|c| l.get(*c).is_some_and(|r| r.len() == 1))
        {
            assert_eq!(
                l.len(),
                shellwego_server::controller::SINGLETONS.len(),
                "{l:?}"
            );
            return l.into_iter().map(|(c, mut r)| (c, r.remove(0))).collect();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "leaders: {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_singleton_has_one_leader_and_another_replica_takes_over() {
    let Some(a) = pg().await else { return };
    let b = a.replica().await;
    let c = a.replica().await;
    let led = one_leader_each(&[&a, &b, &c]).await;
    // /metrics says the same, per replica.
    let mut led_here = 0;
    for r in [&a, &b, &c] {
        let text = r
            .http
            .get(r.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        led_here += text
            .lines()
            .filter(|l| l.starts_with("shellwego_controller_leader{") && l.ends_with(" 1"))
            .count();
        assert!(
            text.contains("shellwego_controller_leader{controller=\"reconcile\"}"),
            "{text}"
        );
    }
    assert_eq!(led_here, led.len());
    // The replica leading the reconciler stops: another one leads it.
    let all = vec![a, b, c];
    let mut ids = vec![];
    for s in &all {
        ids.push(
            s.get("/readyz").await.1["replica"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let gone = ids.iter().position(|id| *id == led["reconcile"]).unwrap();
    let mut all = all;
    let mut stopped = all.remove(gone);
    let t = Instant::now();
    stopped.started.take().unwrap().shutdown().await.unwrap();
    let now = one_leader_each(&[&all[0], &all[1]]).await;
    assert_ne!(now["reconcile"], led["reconcile"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Apps are still reconciled: one created now gets its instance.
    let agent = all[0].fake_agent("n1", 16, 64 << 30).await;
    let id = create_app(&all[1], "after-takeover").await;
    let t = Instant::now();
    while agent.desired_of(&id).await.len() != 1 {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_commits_nothing() {
    let Some(a) = pg().await else { return };
    let store = a.store.clone();
    let backend = store.backend();
    let ttl = Duration::from_millis(500);
    let mut c = store.conn().await.unwrap();
    let term = leases::acquire(&mut c, backend, "test", "old", ttl)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(
        leases::acquire(&mut c, backend, "test", "new", ttl)
            .await
            .unwrap(),
        None,
        "a held lease is not"
    );
    // The old leader is in the middle of a decision when its lease runs
    // out: the new leader's takeover waits for that transaction…
    let mut decision = store.begin().await.unwrap();
    assert!(leases::fence(&mut decision, backend, "test", "old", term)
        .await
        .unwrap());
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let taking = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut c = store.conn().await.unwrap();
            leases::acquire(&mut c, backend, "test", "new", ttl)
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!taking.is_finished(), "the takeover waits for the decision");
    shellwego_store::commit(decision).await.unwrap();
    let new_term = taking
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_eq!(new_term, term + 1);
    // …and every later transaction of the old leader is refused.
    let mut late = store.begin().await.unwrap();
    assert!(!leases::fence(&mut late, backend, "test", "old", term)
        .await
        .unwrap());
    drop(late);
    // The same through the server's context: a unit of work begun under
    // the old term fails before it can write.
    let ctx: &ServerCtx = &a.started.as_ref().unwrap().ctx;
    let deposed = ctx.fenced(Fence {
        name: "test",
        holder: "old".into(),
        term,
    });
    let err = deposed.unit().await.err().expect("refused");
    assert!(err.to_string().contains("no longer leads test"), "{err}");
    let current = ctx.fenced(Fence {
        name: "test",
        holder: "new".into(),
        term: new_term,
    });
    assert!(current.unit().await.is_ok());
    // The old leader cannot renew either; the new one can.
    assert!(!leases::renew(&mut c, backend, "test", "old", term, ttl)
        .await
        .unwrap());
    assert!(leases::renew(&mut c, backend, "test", "new", new_term, ttl)
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_uploaded_through_one_replica_is_served_by_another() {
    let Some(a) = pg().await else { return };
    let b = a.replica().await;
    let (_, ready) = b.get("/readyz").await;
    assert_eq!(ready["status"], "ok");
    // Larger than a stored chunk (1 MiB), and not a multiple of it.
    let archive: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = b
        .http
        .post(b.url("/v1/uploads"))
        .bearer_auth(&b.token)
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let up: Value = r.json().await.unwrap();
    let id = up["upload_id"].as_str().unwrap();
    assert_eq!(up["size"], archive.len());
    let agent = a.fake_agent("n1", 16, 64 << 30).await;
    let got = a
        .http
        .get(a.url(&format!("/v1/agent/uploads/{id}")))
        .bearer_auth(&agent.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.headers()["content-length"].to_str().unwrap(),
        archive.len().to_string()
    );
    let bytes = got.bytes().await.unwrap();
    assert!(bytes[..] == archive[..], "the same bytes");
    // Nothing of it is on either replica's disk.
    for s in [&a, &b] {
        assert!(!s.cfg.data_dir.join("uploads").join(id).exists());
    }
    // An id that is not an upload is still a 404.
    let none = a
        .http
        .get(a.url("/v1/agent/uploads/upl_nothing"))
        .bearer_auth(&agent.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_master_key_refuses_to_start() {
    let Some(a) = pg().await else { return };
    let mut cfg = a.cfg.clone();
    let dir = tempfile::tempdir().unwrap();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = dir.path().to_path_buf();
    cfg.database_url = Some(a.cfg.database_url());
    cfg.master_key = None; // a fresh one in its own data dir
    let err = shellwego_server::serve::start(cfg)
        .await
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("master key") && msg.contains("SHELLWEGO_MASTER_KEY"),
        "{msg}"
    );
}

/// A scale-down racing the agent's report of the instance it stops (the
/// newest, which its agent has just reported healthy): the report holds
/// its node's row (the report's `seq`) and then updates the instance; the
/// stop must take the node's row before the instance's, or each waits for
/// the other and PostgreSQL aborts one after a second (the scale answered
/// 500; `bench cluster` hit it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_racing_a_report_of_the_same_instance_does_not_deadlock() {
    let Some(s) = pg().await else { return };
    let agent = s.fake_agent("n1", 4, 8 << 30).await;
    let app = create_app(&s, "race").await;
    assert_eq!(agent.report_healthy().await, 1);
    // The agent's next report, as the control plane applies it: the node's
    // row claimed first, held until the report is applied.
    let mut report = s.store.begin().await.unwrap();
    let seq = shellwego_core::time::to_micros(shellwego_core::time::now());
    assert!(
        shellwego_store::nodes::claim_report_seq(&mut report, &agent.node_id, seq)
            .await
            .unwrap()
    );
    // Meanwhile the app is scaled to 0, which stops that instance.
    let scale = {
        let (http, url, token) = (
            s.http.clone(),
            s.url(&format!("/v1/apps/{app}/scale")),
            s.token.clone(),
        );
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"replicas": 0}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!scale.is_finished(), "the stop waits for the node's row");
    // The report goes on to the instance: the stop holds nothing it needs.
    let mut inst = shellwego_store::apps::instances_on_node(&mut report, &agent.node_id)
        .await
        .unwrap()
        .pop()
        .expect("the app's instance is on the node");
    inst.health_checks_passed += 1;
    shellwego_store::apps::update_instance(&mut report, &inst)
        .await
        .expect("the report is not blocked by the stop (no deadlock)");
    shellwego_store::commit(report).await.unwrap();
    let (status, body) = scale.await.unwrap();
    assert_eq!(status, 200, "the scale: {body}");
    assert_eq!(
        agent.desired_of(&app).await.len(),
        0,
        "the instance is stopping"
    );
}
