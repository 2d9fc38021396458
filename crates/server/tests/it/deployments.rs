//! Deployments over HTTP with a simulated agent (its reports are what the
//! test says): blue-green holds the old set and switches traffic at once,
//! a crash-looping release fails and rolls back by itself, a manual
//! rollback restores an older release, and the step log tells the story.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use shellwego_server::controller::routes::record_traffic;
use shellwego_store::apps;
use shellwego_testkit::agent::{report, DesiredInstance, FakeAgent, InstanceReport};
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{problem, TestServer};

/// A node of `cores` cores and 64 GiB joined by a fake agent, which
/// reports its instances at 10.0.0.7.
async fn node(s: &TestServer, name: &str, cores: i64) -> FakeAgent {
    let mut agent = s.fake_agent(name, cores, 64 << 30).await;
    agent.internal_ip = Some("10.0.0.7".into());
    agent
}

fn healthy(_: &DesiredInstance) -> InstanceReport {
    report("healthy")
}

/// The instance runs `image`.
fn runs(i: &DesiredInstance, image: &str) -> bool {
    i.image.as_deref() == Some(image)
}

async fn wait_dep(s: &TestServer, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let (_, d) = s.get(&format!("/v1/deployments/{id}")).await;
        if ok(&d) {
            return d;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{what}: {d:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The routers' table, as the store has it.
async fn routes_of(s: &TestServer) -> Vec<apps::Route> {
    let mut db = s.store.conn().await.unwrap();
    apps::routable_instances(&mut db).await.unwrap()
}

/// Images of the instances the routers send requests to.
async fn routed(s: &TestServer, agent: &FakeAgent, app: &str) -> Vec<String> {
    let ids: Vec<String> = routes_of(s)
        .await
        .into_iter()
        .map(|r| r.instance_id)
        .collect();
    let mut images: Vec<String> = agent
        .desired_of(app)
        .await
        .iter()
        .filter(|i| ids.contains(&i.id))
        .map(|i| i.image.clone().unwrap())
        .collect();
    images.sort();
    images
}

async fn deploy(s: &TestServer, app: &str, body: Value) -> String {
    let r = s
        .post(&format!("/v1/apps/{app}/deploy"), &s.token, body)
        .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "in_progress", "{v}");
    assert_eq!(v["progress"]["total_steps"], 7, "{v}");
    v["deployment_id"].as_str().unwrap().to_string()
}

async fn deployments_switch_fail_roll_back_and_restore(s: TestServer) {
    let agent = node(&s, "n", 16).await;
    let beat = agent.heartbeat();
    let r = s.post("/v1/apps",
        &s.token,
        json!({"name": "web", "image": "web:v1", "replicas": 2, "resources": {"memory": "64m", "cpu": 0.1}}),
    )
    .await;
    let created: Value = r.json().await.unwrap();
    let app = created["id"].as_str().unwrap().to_string();
    let first = created["deployment_id"].as_str().unwrap().to_string();
    // The agent pulled v1 and pins it by digest.
    agent
        .report(|_| InstanceReport {
            image_pinned: Some("web:v1@sha256:1111".into()),
            ..report("healthy")
        })
        .await;
    let d = wait_dep(&s, &first, "the first deployment completes", |d| {
        d["status"] == "successful"
    })
    .await;
    assert_eq!(d["version"], "v1");
    assert_eq!(d["progress"]["completed_steps"], 7, "{d:#}");
    assert!(d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|st| st["status"] == "completed" && st["completed_at"].is_string()));

    // Blue-green (the default for a new image): the whole new set starts
    // beside the old one, traffic stays on the old set until every new
    // instance is healthy, then switches at once.
    let bg = deploy(&s, &app, json!({"image": "web:v2", "warm_window": "1s"})).await;
    let now = agent.desired_of(&app).await;
    assert_eq!(now.len(), 4, "2 old + 2 new: {now:#?}");
    agent
        .report(|i| {
            if runs(i, "web:v2") {
                InstanceReport {
                    reason: Some("waiting for the health check".into()),
                    ..report("starting")
                }
            } else {
                report("healthy")
            }
        })
        .await;
    assert_eq!(
        routed(&s, &agent, &app).await,
        ["web:v1@sha256:1111", "web:v1@sha256:1111"]
    );
    let d = wait_dep(&s, &bg, "health checks under way", |d| {
        d["progress"]["current_step"] == "starting_health_checks"
    })
    .await;
    assert_eq!(d["strategy"], "blue-green");
    agent.report(healthy).await;
    wait_dep(&s, &bg, "traffic switched", |d| {
        d["progress"]["current_step"] == "draining_old"
    })
    .await;
    assert_eq!(routed(&s, &agent, &app).await, ["web:v2", "web:v2"]);
    assert_eq!(
        agent.desired_of(&app).await.len(),
        4,
        "the old set stays warm for the window"
    );
    // After the window the old set stops, and the deployment completes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = Instant::now();
    while agent.desired_of(&app).await.len() != 2 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the old set never stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.report(healthy).await;
    let d = wait_dep(&s, &bg, "blue-green completes", |d| {
        d["status"] == "successful"
    })
    .await;
    assert_eq!(d["previous_version"], "v1");
    assert!(d["metrics"]["deploy_time_ms"].as_i64().unwrap() > 0);

    // A release that crash-loops fails and rolls back by itself: its
    // instance goes, v2 keeps serving, and the events say why.
    let bad = deploy(
        &s,
        &app,
        json!({"image": "web:v3", "strategy": "rolling", "health_check_timeout": "30s"}),
    )
    .await;
    let now = agent.desired_of(&app).await;
    assert_eq!(now.len(), 3, "one replacement at a time: {now:#?}");
    agent
        .report(|i| {
            if runs(i, "web:v3") {
                InstanceReport {
                    reason: Some("exited with code 1".into()),
                    restarts: 3,
                    ..report("crashed")
                }
            } else {
                report("healthy")
            }
        })
        .await;
    let d = wait_dep(&s, &bad, "failed", |d| d["status"] != "in_progress").await;
    assert!(
        d["status_reason"]
            .as_str()
            .unwrap()
            .contains("crash-looping"),
        "{d:#}"
    );
    let now = agent.desired_of(&app).await;
    assert!(now.iter().all(|i| runs(i, "web:v2")), "{now:#?}");
    assert_eq!(now.len(), 2);
    agent.report(healthy).await;
    let d = wait_dep(&s, &bad, "rolled back", |d| d["status"] == "rolled_back").await;
    assert!(d["status_reason"]
        .as_str()
        .unwrap()
        .contains("exited with code 1"));
    for kind in ["deployment.failed", "deployment.rolled_back"] {
        let (_, ev) = s
            .get(&format!(
                "/v1/events?filter[type]={kind}&filter[resource_id]={app}"
            ))
            .await;
        assert_eq!(ev["data"].as_array().unwrap().len(), 1, "{kind}: {ev}");
        assert_eq!(ev["data"][0]["metadata"]["deployment_id"], bad.as_str());
    }
    let (_, a) = s.get(&format!("/v1/apps/{app}")).await;
    assert_eq!(a["image"], "web:v2", "{a:#}");
    assert_eq!(a["status"], "running");

    // Manual rollback to the first deployment: its release again.
    let r = s
        .post(
            &format!("/v1/deployments/{first}/actions/rollback"),
            &s.token,
            json!({"strategy": "gradual", "reason": "v2 is slow"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let rb = r.json::<Value>().await.unwrap()["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..4 {
        agent.report(healthy).await;
    }
    let d = wait_dep(&s, &rb, "the rollback completes", |d| {
        d["status"] == "successful"
    })
    .await;
    assert_eq!(d["rollback_target"], first.as_str());
    assert_eq!(d["version"], "v1", "the first release, not a copy");
    let now = agent.desired_of(&app).await;
    assert!(
        now.iter().all(|i| runs(i, "web:v1@sha256:1111")),
        "the first release's exact digest: {now:#?}"
    );
    assert_eq!(d["image"], "web:v1@sha256:1111", "{d:#}");
    let (_, a) = s.get(&format!("/v1/apps/{app}")).await;
    assert_eq!(a["image"], "web:v1@sha256:1111", "{a:#}");
    let (_, old) = s.get(&format!("/v1/deployments/{bg}")).await;
    assert_eq!(old["status"], "rolled_back");
    // Rolling back to what already runs is a conflict.
    let r = s
        .post(
            &format!("/v1/deployments/{first}/actions/rollback"),
            &s.token,
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 409);

    // PATCH with a new image deploys it blue-green.
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/apps/{app}"),
            Some(&s.token),
            Some(json!({"image": "web:v9"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (_, l) = s.get(&format!("/v1/apps/{app}/deployments")).await;
    assert_eq!(l["data"][0]["strategy"], "blue-green", "{l}");
    assert_eq!(l["data"][0]["image"], "web:v9", "{l}");
    let patched = l["data"][0]["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        agent.report(healthy).await;
    }

    // The list, newest first; the step log.
    let (_, l) = s.get(&format!("/v1/apps/{app}/deployments")).await;
    let ids: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            patched.as_str(),
            rb.as_str(),
            bad.as_str(),
            bg.as_str(),
            first.as_str()
        ]
    );
    let log = s
        .call(
            Method::GET,
            &format!("/v1/deployments/{bg}/logs"),
            Some(&s.token),
            None,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(log.contains("deploying v2"), "{log}");
    assert!(log.contains("traffic switched to v2"), "{log}");
    assert!(log.contains("completed in"), "{log}");
    beat.abort();
}

async fn deploy_requests_are_validated(s: TestServer) {
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "v", "image": "web:v1", "replicas": 0}),
        )
        .await;
    let app = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (body, field) in [
        (json!({"strategy": "yolo"}), "strategy"),
        // A restart's strategy, not a deploy's.
        (json!({"strategy": "immediate"}), "strategy"),
        (json!({"source": {"type": "svn"}}), "source.type"),
        (
            json!({"health_check_timeout": "soon"}),
            "health_check_timeout",
        ),
        (json!({"canary_steps": [50, 10]}), "canary_steps"),
        (json!({"batch_size": 0}), "batch_size"),
        (json!({"max_surge": 0}), "max_surge"),
        (json!({"max_surge": 0, "max_unavailable": 0}), "max_surge"),
        (json!({"max_unavailable": 101}), "max_unavailable"),
        (json!({"batch_size": 2, "max_surge": 2}), "batch_size"),
        (json!({"image": "a b"}), "image"),
        (
            json!({"image": "x", "source": {"type": "tarball", "url": "http://x/a.tgz"}}),
            "source",
        ),
    ] {
        let r = s
            .post(&format!("/v1/apps/{app}/deploy"), &s.token, body.clone())
            .await;
        let p = problem(r, 400).await;
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
    }
    let r = s
        .post("/v1/apps/app_nope/deploy", &s.token, json!({}))
        .await;
    assert_eq!(r.status(), 404);
    // An unknown word names the field and every word it takes.
    for (path, accepted) in [
        (
            format!("/v1/apps/{app}/deploy"),
            "rolling, blue-green, canary",
        ),
        (
            "/v1/deployments/dep_nope/actions/rollback".to_string(),
            "immediate, gradual",
        ),
    ] {
        let p = problem(
            s.post(&path, &s.token, json!({"strategy": "yolo"})).await,
            400,
        )
        .await;
        assert_eq!(p["errors"][0]["field"], "strategy", "{p}");
        assert_eq!(p["errors"][0]["code"], "invalid_value", "{p}");
        assert_eq!(p["errors"][0]["value"], "yolo", "{p}");
        assert_eq!(
            p["errors"][0]["message"],
            format!("must be one of: {accepted}"),
            "{p}"
        );
        assert_eq!(
            p["detail"],
            format!("'strategy': must be one of: {accepted}"),
            "{p}"
        );
    }
    let (st, _) = s.get("/v1/deployments/dep_nope").await;
    assert_eq!(st, 404);
    let (st, _) = s.get("/v1/deployments/dep_nope/logs?follow=maybe").await;
    assert_eq!(st, 400);
}

/// A release whose image cannot be pulled, one that crash-loops and one
/// whose health check never passes each end rolled back with the reason,
/// while the old version keeps serving.
async fn every_failure_mode_rolls_back_and_keeps_the_old_version_serving(s: TestServer) {
    let agent = node(&s, "n", 16).await;
    let beat = agent.heartbeat();
    let r = s.post("/v1/apps",
        &s.token,
        json!({"name": "keep", "image": "keep:v1", "replicas": 2, "resources": {"memory": "64m", "cpu": 0.1}}),
    )
    .await;
    let app = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    agent.report(healthy).await;
    let cases: [(&str, InstanceReport, &str); 3] = [
        (
            "keep:missing",
            InstanceReport {
                reason: Some("cannot pull keep:missing: manifest unknown".into()),
                ..report("failed")
            },
            "manifest unknown",
        ),
        (
            "keep:crashy",
            InstanceReport {
                reason: Some("exited with code 2".into()),
                restarts: 5,
                ..report("crashed")
            },
            "crash-looping",
        ),
        (
            "keep:sick",
            InstanceReport {
                reason: Some("health check failing: GET /health answered 500".into()),
                ..report("unhealthy")
            },
            "healthy after 1s",
        ),
    ];
    for (image, state, why) in cases {
        let dep = deploy(
            &s,
            &app,
            json!({"image": image, "strategy": "blue-green", "health_check_timeout": "1s"}),
        )
        .await;
        let t = Instant::now();
        loop {
            agent
                .report(|i| {
                    if runs(i, image) {
                        state.clone()
                    } else {
                        report("healthy")
                    }
                })
                .await;
            // Throughout, every request goes to the old version.
            assert_eq!(
                routed(&s, &agent, &app).await,
                ["keep:v1", "keep:v1"],
                "{image}"
            );
            let (_, d) = s.get(&format!("/v1/deployments/{dep}")).await;
            if d["status"] == "rolled_back" {
                assert!(
                    d["status_reason"].as_str().unwrap().contains(why),
                    "{image}: {d:#}"
                );
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "{image}: {d:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (_, a) = s.get(&format!("/v1/apps/{app}")).await;
        assert_eq!(a["image"], "keep:v1", "{a:#}");
    }
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=deployment.rolled_back&filter[resource_id]={app}"
        ))
        .await;
    assert_eq!(ev["data"].as_array().unwrap().len(), 3, "{ev}");
    beat.abort();
}

/// The share of the app's requests the routers give instances of `image`.
async fn share_of(s: &TestServer, agent: &FakeAgent, app: &str, image: &str) -> f64 {
    let routes = routes_of(s).await;
    let d = agent.desired_of(app).await;
    let (mut mine, mut all) = (0u64, 0u64);
    for r in routes {
        if let Some(i) = d.iter().find(|i| i.id == r.instance_id) {
            all += u64::from(r.weight);
            if runs(i, image) {
                mine += u64::from(r.weight);
            }
        }
    }
    mine as f64 / all.max(1) as f64
}

/// Canary: a share of the new version, its traffic share in the routers,
/// promotion step by step while its error rate (counted by the routers)
/// stays low, automatic rollback when it does not, and `promote`.
async fn canaries_step_up_roll_back_on_errors_and_promote(s: TestServer) {
    let agent = node(&s, "n", 16).await;
    let beat = agent.heartbeat();
    let r = s.post("/v1/apps",
        &s.token,
        json!({"name": "can", "image": "can:v1", "replicas": 4, "resources": {"memory": "64m", "cpu": 0.1}}),
    )
    .await;
    let app = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    agent.report(healthy).await;
    let counts = |id: &str, req: u64, err: u64| {
        std::collections::HashMap::from([(id.to_string(), (req, err))])
    };

    // A bad canary: 25% (one of four instances), rolled back on its errors.
    let bad = deploy(
        &s,
        &app,
        json!({"image": "can:v2", "strategy": "canary", "canary_steps": [25, 100], "canary_pause": "30s"}),
    )
    .await;
    let d = agent.desired_of(&app).await;
    assert_eq!(d.len(), 5, "4 old + 1 canary: {d:#?}");
    assert_eq!(
        share_of(&s, &agent, &app, "can:v2").await,
        0.0,
        "not before it is healthy"
    );
    agent.report(healthy).await;
    let t = Instant::now();
    while share_of(&s, &agent, &app, "can:v2").await == 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the canary never got traffic"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((share_of(&s, &agent, &app, "can:v2").await - 0.25).abs() < 1e-9);
    let canary = agent
        .desired_of(&app)
        .await
        .into_iter()
        .find(|i| runs(i, "can:v2"))
        .unwrap()
        .id;
    // Few requests decide nothing; many with errors do.
    record_traffic(&s.store, &counts(&canary, 5, 5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.report(healthy).await;
    let (_, d) = s.get(&format!("/v1/deployments/{bad}")).await;
    assert_eq!(d["status"], "in_progress", "{d:#}");
    record_traffic(&s.store, &counts(&canary, 95, 35))
        .await
        .unwrap();
    agent.report(healthy).await;
    let d = wait_dep(&s, &bad, "the bad canary rolled back", |d| {
        d["status"] == "failed" || d["status"] == "rolled_back"
    })
    .await;
    assert!(
        d["status_reason"]
            .as_str()
            .unwrap()
            .contains("40 of 100 requests"),
        "{d:#}"
    );
    agent.report(healthy).await;
    wait_dep(&s, &bad, "rolled back", |d| d["status"] == "rolled_back").await;
    assert_eq!(share_of(&s, &agent, &app, "can:v1").await, 1.0);
    assert_eq!(agent.desired_of(&app).await.len(), 4);

    // A good canary steps up after its pause, then replaces the rest.
    let good = deploy(
        &s,
        &app,
        json!({"image": "can:v3", "strategy": "canary", "canary_steps": [25, 100], "canary_pause": "1s"}),
    )
    .await;
    agent.report(healthy).await;
    let t = Instant::now();
    loop {
        agent.report(healthy).await;
        let (_, d) = s.get(&format!("/v1/deployments/{good}")).await;
        if d["status"] == "successful" {
            break;
        }
        assert_eq!(d["status"], "in_progress", "{d:#}");
        assert!(t.elapsed() < Duration::from_secs(20), "{d:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let d = agent.desired_of(&app).await;
    assert!(
        d.iter().all(|i| runs(i, "can:v3")) && d.len() == 4,
        "{d:#?}"
    );
    let log = s
        .call(
            Method::GET,
            &format!("/v1/deployments/{good}/logs"),
            Some(&s.token),
            None,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(log.contains("canary: 25% of requests to v"), "{log}");
    assert!(log.contains("next step: 100%"), "{log}");

    // Promote skips the remaining steps and pauses.
    let promoted = deploy(&s, &app, json!({"image": "can:v4", "strategy": "canary"})).await;
    agent.report(healthy).await;
    let r = s
        .post(
            &format!("/v1/deployments/{promoted}/actions/promote"),
            &s.token,
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    for _ in 0..4 {
        agent.report(healthy).await;
    }
    wait_dep(&s, &promoted, "promoted to the end", |d| {
        d["status"] == "successful"
    })
    .await;
    let r = s
        .post(
            &format!("/v1/deployments/{promoted}/actions/promote"),
            &s.token,
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 409, "nothing left to promote");
    beat.abort();
}

/// A node, and an app `name` (image `name:v1`, 2 replicas) serving on it:
/// (the node's agent, the app id).
async fn serving_app(s: &TestServer, name: &str) -> (FakeAgent, String) {
    let agent = node(s, "n", 16).await;
    let r = s.post("/v1/apps",
        &s.token,
        json!({"name": name, "image": format!("{name}:v1"), "replicas": 2, "resources": {"memory": "64m", "cpu": 0.1}}),
    )
    .await;
    let app = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    agent.report(healthy).await;
    (agent, app)
}

/// One deployment at a time: a new one supersedes the one in progress,
/// which ends `failed` with the reason; the app goes to the newest release.
async fn a_new_deployment_supersedes_the_one_in_progress(s: TestServer) {
    let (agent, app) = serving_app(&s, "sup").await;
    let beat = agent.heartbeat();
    let slow = deploy(&s, &app, json!({"image": "sup:v2"})).await;
    // v2 never gets healthy; v3 is deployed over it.
    agent
        .report(|i| {
            if runs(i, "sup:v2") {
                InstanceReport {
                    reason: Some("waiting for the health check".into()),
                    ..report("starting")
                }
            } else {
                report("healthy")
            }
        })
        .await;
    let fast = deploy(&s, &app, json!({"image": "sup:v3", "warm_window": "0s"})).await;
    let (_, d) = s.get(&format!("/v1/deployments/{slow}")).await;
    assert_eq!(d["status"], "failed", "{d:#}");
    assert_eq!(
        d["status_reason"],
        format!("superseded by {fast}").as_str(),
        "{d:#}"
    );
    assert!(d["completed_at"].is_string(), "{d:#}");
    let t = Instant::now();
    let d = loop {
        agent.report(healthy).await;
        let (_, d) = s.get(&format!("/v1/deployments/{fast}")).await;
        if d["status"] == "successful" {
            break d;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{d:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        d["previous_version"], "v1",
        "the last version known to serve: {d:#}"
    );
    let now = agent.desired_of(&app).await;
    assert!(
        now.iter().all(|i| runs(i, "sup:v3")) && now.len() == 2,
        "{now:#?}"
    );
    beat.abort();
}

/// A blue-green deployment superseded while its old set is held warm: the
/// warm set does not outlive it, and the new deployment starts from the
/// version that was serving (the switched-to one).
async fn superseding_a_blue_green_in_its_warm_window_retires_the_warm_set(s: TestServer) {
    let (agent, app) = serving_app(&s, "warm").await;
    let beat = agent.heartbeat();
    let bg = deploy(&s, &app, json!({"image": "warm:v2", "warm_window": "1h"})).await;
    agent.report(healthy).await;
    wait_dep(&s, &bg, "traffic switched", |d| {
        d["progress"]["current_step"] == "draining_old"
    })
    .await;
    assert_eq!(routed(&s, &agent, &app).await, ["warm:v2", "warm:v2"]);
    assert_eq!(agent.desired_of(&app).await.len(), 4, "v1 held warm");

    let next = deploy(
        &s,
        &app,
        json!({"image": "warm:v3", "strategy": "rolling", "batch_size": 2}),
    )
    .await;
    // It had shifted all its traffic: superseded while draining, it did
    // its job.
    let (_, d) = s.get(&format!("/v1/deployments/{bg}")).await;
    assert_eq!(d["status"], "successful", "{d:#}");
    assert!(d["completed_at"].is_string(), "{d:#}");
    assert_stages_in_order(&d);
    // Traffic never leaves v2 for v1 while v3 comes up.
    let t = Instant::now();
    let d = loop {
        let routes = routed(&s, &agent, &app).await;
        assert!(
            !routes.iter().any(|i| i == "warm:v1"),
            "traffic went back to the warm set: {routes:?}"
        );
        agent.report(healthy).await;
        let (_, d) = s.get(&format!("/v1/deployments/{next}")).await;
        if d["status"] == "successful" {
            break d;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{d:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(d["previous_version"], "v2", "{d:#}");
    let now = agent.desired_of(&app).await;
    assert!(
        now.iter().all(|i| runs(i, "warm:v3")) && now.len() == 2,
        "only v3 is left: {now:#?}"
    );
    beat.abort();
}

/// Stages follow their order, and so do their timestamps.
fn assert_stages_in_order(d: &Value) {
    let stages = d["stages"].as_array().unwrap();
    let mut last = String::new();
    let mut open = false;
    for st in stages {
        if open {
            assert_eq!(
                st["status"], "pending",
                "a stage after one not over has not begun: {d:#}"
            );
        }
        if st["status"] != "completed" {
            open = true;
        }
        for t in [&st["started_at"], &st["completed_at"]] {
            if let Some(t) = t.as_str() {
                assert!(*t >= *last.as_str(), "{} before {last}: {d:#}", t);
                last = t.to_string();
            }
        }
    }
}

/// `POST …/actions/restart` with `body`: the restart's deployment id.
async fn restart(s: &TestServer, app: &str, body: Value) -> String {
    let r = s
        .post(&format!("/v1/apps/{app}/actions/restart"), &s.token, body)
        .await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["deployment_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A node with 2 cores and an app of 4 replicas at 0.5 CPU: no room for
/// one more. Returns (the node's agent, the app id).
async fn full_node(s: &TestServer, name: &str) -> (FakeAgent, String) {
    let agent = node(s, "small", 2).await;
    let r = s.post("/v1/apps",
        &s.token,
        json!({"name": name, "image": format!("{name}:v1"), "replicas": 4, "resources": {"memory": "64m", "cpu": 0.5}}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let app = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    agent.report(healthy).await;
    (agent, app)
}

/// Report every instance healthy until `dep` ends, checking on the way
/// that the node never runs more than `most` instances of the app and
/// that at least `least` of them serve. The deployment's body at the end.
async fn roll_to_the_end(
    s: &TestServer,
    agent: &FakeAgent,
    app: &str,
    dep: &str,
    most: usize,
    least: usize,
) -> Value {
    let t = Instant::now();
    loop {
        let now = agent.desired_of(app).await;
        assert!(now.len() <= most, "{} instances: {now:#?}", now.len());
        let serving = routes_of(s).await.len();
        if serving < least {
            let (_, d) = s.get(&format!("/v1/deployments/{dep}")).await;
            let (_, a) = s.get(&format!("/v1/apps/{app}")).await;
            panic!("only {serving} serving: {now:#?} {d:#} {a:#}");
        }
        agent.report(healthy).await;
        let (_, d) = s.get(&format!("/v1/deployments/{dep}")).await;
        if d["status"] != "in_progress" {
            return d;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{d:#}");
    }
}

/// No room for a surge instance: a rolling restart replaces in place, one
/// at a time, saying so; a canary does the same; a blue-green deployment
/// fails at once, naming the room it needs.
async fn rollouts_without_room_replace_in_place(s: TestServer) {
    let (agent, app) = full_node(&s, "tight").await;
    let beat = agent.heartbeat();
    let restart = restart(&s, &app, json!({})).await;
    // The first pass already fell back: the stage in progress says how.
    let (_, d) = s.get(&format!("/v1/deployments/{restart}")).await;
    let current = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["status"] == "in_progress")
        .cloned()
        .unwrap_or_default();
    assert!(
        current["reason"]
            .as_str()
            .is_some_and(|r| r.contains("replacing in place, 1 at a time")),
        "{d:#}"
    );
    let d = roll_to_the_end(&s, &agent, &app, &restart, 4, 3).await;
    assert_eq!(d["status"], "successful", "{d:#}");
    assert_stages_in_order(&d);
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=deployment.in_place&filter[resource_id]={app}"
        ))
        .await;
    assert_eq!(ev["data"].as_array().unwrap().len(), 1, "{ev:#}");
    let (_, log) = s.get(&format!("/v1/deployments/{restart}/logs")).await;
    let _ = log;

    // A canary: its share of the new version replaces in place too.
    let canary = deploy(
        &s,
        &app,
        json!({"image": "tight:v2", "strategy": "canary", "canary_steps": [25, 100], "canary_pause": "1s"}),
    )
    .await;
    let d = roll_to_the_end(&s, &agent, &app, &canary, 4, 3).await;
    assert_eq!(d["status"], "successful", "{d:#}");
    assert_stages_in_order(&d);
    let now = agent.desired_of(&app).await;
    assert!(
        now.len() == 4 && now.iter().all(|i| runs(i, "tight:v2")),
        "{now:#?}"
    );

    // Blue-green needs a second set: it fails at once and says so.
    let r = s
        .post(
            &format!("/v1/apps/{app}/deploy"),
            &s.token,
            json!({"image": "tight:v3", "strategy": "blue-green"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let bg = r.json::<Value>().await.unwrap()["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let d = wait_dep(&s, &bg, "blue-green fails fast", |d| {
        d["status"] != "in_progress"
    })
    .await;
    assert!(
        d["status"] == "failed" || d["status"] == "rolled_back",
        "{d:#}"
    );
    let why = d["status_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("blue-green needs room for a second set of 4 instance(s) of 0.5 CPU")
            && why.contains("--strategy rolling"),
        "{why}"
    );
    agent.report(healthy).await;
    let now = agent.desired_of(&app).await;
    assert!(
        now.len() == 4 && now.iter().all(|i| runs(i, "tight:v2")),
        "v2 serves on: {now:#?}"
    );
    beat.abort();
}

/// A rollout superseded while one of its instances is pending: that
/// instance never starts, and the app converges to the desired count of
/// the newest version.
async fn a_superseded_rollout_cancels_its_pending_instances(s: TestServer) {
    let (agent, app) = full_node(&s, "cancel").await;
    let beat = agent.heartbeat();
    let restart = restart(&s, &app, json!({})).await;
    // The first old instance stops in place; once it is gone its
    // replacement is placed, and not started yet.
    assert_eq!(agent.desired_of(&app).await.len(), 3);
    let (_, a) = s.get(&format!("/v1/apps/{app}")).await;
    assert_eq!(a["status"], "deploying", "{a:#}");
    assert!(
        a["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("replacing in place, 1 at a time")),
        "{a:#}"
    );
    agent.report(healthy).await;
    let pending: Vec<String> = agent
        .desired_of(&app)
        .await
        .iter()
        .filter(|i| i.version == 2)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(pending.len(), 1, "one replaced in place");
    let next = deploy(
        &s,
        &app,
        json!({"image": "cancel:v3", "strategy": "rolling"}),
    )
    .await;
    let (_, d) = s.get(&format!("/v1/deployments/{restart}")).await;
    assert_eq!(d["status"], "failed", "{d:#}");
    assert_eq!(
        d["status_reason"],
        format!("superseded by {next}").as_str(),
        "{d:#}"
    );
    let t = Instant::now();
    loop {
        let now = agent.desired_of(&app).await;
        assert!(
            !now.iter().any(|i| pending.contains(&i.id)),
            "the cancelled instance is to run again: {now:#?}"
        );
        assert!(now.len() <= 4, "{now:#?}");
        agent.report(healthy).await;
        let (_, d) = s.get(&format!("/v1/deployments/{next}")).await;
        if d["status"] == "successful" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{d:#}");
    }
    let now = agent.desired_of(&app).await;
    assert!(
        now.len() == 4 && now.iter().all(|i| runs(i, "cancel:v3")),
        "{now:#?}"
    );
    beat.abort();
}

/// Stopping an app mid-canary cancels the deployment (never
/// `successful`); deleting one mid-rollout cancels its deployment too.
async fn stopping_an_app_mid_rollout_cancels_its_deployment(s: TestServer) {
    let (agent, app) = serving_app(&s, "halt").await;
    let beat = agent.heartbeat();
    let canary = deploy(
        &s,
        &app,
        json!({"image": "halt:v2", "strategy": "canary", "canary_steps": [50, 100], "canary_pause": "1h"}),
    )
    .await;
    agent.report(healthy).await;
    wait_dep(&s, &canary, "the canary's first step", |d| {
        d["progress"]["current_step"] == "shifting_traffic"
    })
    .await;
    let r = s
        .post(&format!("/v1/apps/{app}/actions/stop"), &s.token, json!({}))
        .await;
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        agent.report(healthy).await;
    }
    let (_, d) = s.get(&format!("/v1/deployments/{canary}")).await;
    assert_eq!(d["status"], "cancelled", "{d:#}");
    assert!(
        d["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("stopped")),
        "{d:#}"
    );
    assert!(d["completed_at"].is_string(), "{d:#}");
    assert_stages_in_order(&d);
    let (_, list) = s
        .get(&format!(
            "/v1/apps/{app}/deployments?filter[status]=cancelled"
        ))
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list:#}");
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=deployment.cancelled&filter[resource_id]={app}"
        ))
        .await;
    assert_eq!(ev["data"].as_array().unwrap().len(), 1, "{ev:#}");

    // Started again and deployed, then deleted mid-rollout.
    s.post(
        &format!("/v1/apps/{app}/actions/start"),
        &s.token,
        json!({}),
    )
    .await;
    agent.report(healthy).await;
    let rolling = deploy(&s, &app, json!({"image": "halt:v3", "strategy": "rolling"})).await;
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/apps/{app}"),
            Some(&s.token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=deployment.cancelled&filter[resource_id]={app}"
        ))
        .await;
    let metas: Vec<&Value> = ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["metadata"])
        .collect();
    assert!(
        metas
            .iter()
            .any(|m| m["deployment_id"] == rolling.as_str() && m["reason"] == "the app was deleted"),
        "{ev:#}"
    );
    beat.abort();
}

/// A restart that has shifted all its traffic and is only draining, then
/// a deploy at once: the restart stays `successful`.
async fn a_deploy_right_after_a_restart_leaves_it_successful(s: TestServer) {
    let (agent, app) = serving_app(&s, "next").await;
    let beat = agent.heartbeat();
    let restart = restart(&s, &app, json!({})).await;
    let t = Instant::now();
    loop {
        agent.report(healthy).await;
        let (_, d) = s.get(&format!("/v1/deployments/{restart}")).await;
        if d["progress"]["current_step"] == "draining_old" || d["status"] == "successful" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{d:#}");
    }
    let next = deploy(&s, &app, json!({"image": "next:v2", "strategy": "rolling"})).await;
    let (_, d) = s.get(&format!("/v1/deployments/{restart}")).await;
    assert_eq!(d["status"], "successful", "{d:#}");
    assert_stages_in_order(&d);
    let d = roll_to_the_end(&s, &agent, &app, &next, 3, 0).await;
    assert_eq!(d["status"], "successful", "{d:#}");
    beat.abort();
}

/// `max_surge: 0, max_unavailable: 1`: a restart in place by choice,
/// never more instances than the replicas.
async fn a_restart_without_surge_replaces_in_place(s: TestServer) {
    let (agent, app) = serving_app(&s, "nosurge").await;
    let beat = agent.heartbeat();
    let dep = restart(&s, &app, json!({"max_surge": 0, "max_unavailable": 1})).await;
    let d = roll_to_the_end(&s, &agent, &app, &dep, 2, 1).await;
    assert_eq!(d["status"], "successful", "{d:#}");
    let r = s
        .post(
            &format!("/v1/apps/{app}/actions/restart"),
            &s.token,
            json!({"max_surge": 0}),
        )
        .await;
    let p = problem(r, 400).await;
    assert_eq!(p["errors"][0]["field"], "max_surge", "{p}");
    beat.abort();
}

both_backends!(
    a_restart_without_surge_replaces_in_place,
    rollouts_without_room_replace_in_place,
    a_superseded_rollout_cancels_its_pending_instances,
    stopping_an_app_mid_rollout_cancels_its_deployment,
    a_deploy_right_after_a_restart_leaves_it_successful,
    superseding_a_blue_green_in_its_warm_window_retires_the_warm_set,
    a_new_deployment_supersedes_the_one_in_progress,
    canaries_step_up_roll_back_on_errors_and_promote,
    every_failure_mode_rolls_back_and_keeps_the_old_version_serving,
    deployments_switch_fail_roll_back_and_restore,
    deploy_requests_are_validated
);
