//! Apps over HTTP: validation, scheduling with a clear reason when nothing
//! fits, placement resuming by itself when a node joins, the agent channel
//! carrying instances down and their status up, scopes and app restrictions.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use shellwego_testkit::agent::{report, AgentEvent, AgentSync, FakeAgent, InstanceReport};
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, TestServer};

async fn wait_app(s: &TestServer, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    s.wait_for(&format!("/v1/apps/{id}"), what, ok).await
}

async fn apps_validate_their_input(s: TestServer) {
    let bad = json!({"name": "Bad_Name", "image": "x", "resources": {"memory": "32m", "cpu": 0.05},
        "replicas": 101, "env": {"1X": "v"}, "health_check": {"path": "health", "interval": "5x", "retries": 0},
        "stop_timeout": "10m"});
    let p = problem(s.post("/v1/apps", &s.token, bad).await, 400).await;
    let f = fields(&p);
    for want in [
        "name",
        "resources.memory",
        "resources.cpu",
        "replicas",
        "env.1X",
        "health_check.path",
        "health_check.interval",
        "health_check.retries",
        "stop_timeout",
    ] {
        assert!(f.iter().any(|x| x == want), "{want} not in {f:?}");
    }
    // A word that is none of the model's is refused as the body is read,
    // naming the field and the words it takes.
    for (body, field, accepted) in [
        (
            json!({"name": "x", "image": "x", "runtime": "vm"}),
            "runtime",
            "process, container, microvm",
        ),
        (
            json!({"name": "x", "source": {"type": "svn", "url": "http://x/a.tgz"}}),
            "source.type",
            "docker, tarball, git",
        ),
    ] {
        let p = problem(s.post("/v1/apps", &s.token, body.clone()).await, 400).await;
        assert_eq!(fields(&p), [field], "{body}: {p}");
        assert_eq!(p["errors"][0]["code"], "invalid_value", "{p}");
        assert_eq!(
            p["errors"][0]["message"],
            format!("must be one of: {accepted}"),
            "{p}"
        );
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("'{field}'")) && detail.contains(accepted),
            "{detail}"
        );
    }
    let p = problem(
        s.post("/v1/apps", &s.token, json!({"name": "noimage"}))
            .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["image"]);
    let p = problem(
        s.post(
            "/v1/apps",
            &s.token,
            json!({"name": "x", "source": {"type": "tarball", "upload_id": "upl_nope"}}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["source.upload_id"]);
    // Bounds are inclusive.
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "edge", "image": "x", "replicas": 0,
        "resources": {"memory": "64m", "cpu": "16"}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "edge", "image": "y", "replicas": 0}),
        )
        .await;
    let p = problem(r, 409).await;
    assert!(p["detail"].as_str().unwrap().contains("edge"), "{p}");
    // A typo is named.
    let p = problem(
        s.post(
            "/v1/apps",
            &s.token,
            json!({"name": "t", "image": "x", "replica": 2}),
        )
        .await,
        400,
    )
    .await;
    assert!(p.to_string().contains("replica"), "{p}");
    let r = s
        .call(
            Method::POST,
            "/v1/apps/app_nope/scale",
            Some(&s.token),
            Some(json!({"strategy": "auto"})),
        )
        .await;
    let p = problem(r, 400).await;
    assert!(fields(&p).contains(&"constraints".to_string()), "{p}");
    for (path, body, accepted) in [
        (
            "/v1/apps/app_nope/scale",
            json!({"strategy": "sideways", "replicas": 1}),
            "manual, auto",
        ),
        (
            "/v1/apps/app_nope/actions/restart",
            json!({"strategy": "blue-green"}),
            "rolling, immediate",
        ),
    ] {
        let r = s.call(Method::POST, path, Some(&s.token), Some(body)).await;
        let p = problem(r, 400).await;
        assert_eq!(fields(&p), ["strategy"], "{p}");
        assert_eq!(
            p["errors"][0]["message"],
            format!("must be one of: {accepted}"),
            "{p}"
        );
    }
}

async fn placement_waits_for_room_and_resumes_by_itself(s: TestServer) {
    // No node: pending, with the reason, and an event.
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "big", "image": "nginx:alpine", "replicas": 2,
        "resources": {"memory": "1g", "cpu": "4"}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["status"], "deploying");
    assert!(created["deployment_id"]
        .as_str()
        .unwrap()
        .starts_with("dep_"));
    let id = created["id"].as_str().unwrap().to_string();
    let a = wait_app(&s, &id, "pending", |a| a["status"] == "pending").await;
    assert!(
        a["status_reason"]
            .as_str()
            .unwrap()
            .contains("no node has joined"),
        "{a}"
    );
    // A node registered, its agent not joined yet: the reason says so.
    let r = s
        .post(
            "/v1/nodes",
            &s.token,
            json!({"hostname": "soon", "region": "eu"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let a = wait_app(&s, &id, "pending on a joining node", |a| {
        a["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("1 registered node(s) wait for their agent to join"))
    })
    .await;
    assert_eq!(a["status"], "pending", "{a}");
    // A node too small: the reason says what is missing.
    let small = s.fake_agent("small", 2, 8 << 30).await.node_id;
    let a = wait_app(&s, &id, "pending on cpu", |a| {
        a["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("4.0 CPU free"))
    })
    .await;
    assert!(
        a["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["node_id"].is_null()),
        "{a}"
    );
    // Room appears: placement resumes without anyone asking.
    let big1 = s.fake_agent("big-1", 16, 64 << 30).await;
    let n1 = big1.node_id.clone();
    let a = wait_app(&s, &id, "placed", |a| {
        a["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["node_id"] == n1.as_str())
            && a["status"] != "pending"
    })
    .await;
    assert!(a["status_reason"].is_null(), "{a}");
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=app.unschedulable&filter[resource_id]={id}"
        ))
        .await;
    assert_eq!(ev["data"].as_array().unwrap().len(), 1, "{ev}");
    // With two nodes, replicas of one app spread over them.
    let big2 = s.fake_agent("big-2", 16, 64 << 30).await;
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "spread", "image": "nginx", "replicas": 2}),
        )
        .await;
    let sp: Value = r.json().await.unwrap();
    let sp = wait_app(&s, sp["id"].as_str().unwrap(), "spread placed", |a| {
        a["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| !i["node_id"].is_null())
    })
    .await;
    let nodes: Vec<&str> = sp["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2);
    assert_ne!(nodes[0], nodes[1], "replicas spread over nodes: {sp}");
    assert!(!nodes.contains(&small.as_str()));

    // The agent channel: instances come down with their spec, status goes up.
    for agent in [&big1, &big2] {
        let d = agent
            .sync(&AgentSync {
                generation: 0,
                wait_secs: Some(1),
                ..Default::default()
            })
            .await;
        let reports: Vec<InstanceReport> = d
            .instances
            .iter()
            .map(|i| InstanceReport {
                id: i.id.clone(),
                port: Some(4567),
                pid: Some(42),
                health_checks_passed: 3,
                ..report("healthy")
            })
            .collect();
        if let Some(big) = d.instances.iter().find(|i| i.app_name == "big") {
            assert_eq!(big.memory, 1i64 << 30);
            assert_eq!(big.cpu_millis, 4000);
            assert_eq!(big.driver, "process");
            assert_eq!(big.image.as_deref(), Some("nginx:alpine"));
        }
        agent
            .sync(&AgentSync {
                generation: d.generation,
                wait_secs: Some(1),
                internal_ip: Some("10.1.2.3".into()),
                instances: Some(reports),
                ..Default::default()
            })
            .await;
    }
    let a = wait_app(&s, &id, "running", |a| a["status"] == "running").await;
    assert_eq!(
        a["replicas"],
        json!({"current": 2, "desired": 2, "healthy": 2})
    );
    assert_eq!(a["instances"][0]["ip"], "10.1.2.3");
    assert_eq!(a["instances"][0]["port"], 4567);
    assert_eq!(a["runtime"]["driver"], "process");
    let (_, n) = s.get(&format!("/v1/nodes/{n1}")).await;
    assert_eq!(n["running_apps"], 2);
    // Capacity left is what the scheduler sees: 16 cores less big's 2 × 4
    // and a spread replica's default 0.5; 64g less 2 × 1g and 256m.
    assert_eq!(n["capacity"]["cpu_available"], "7.5", "{n}");
    assert_eq!(n["capacity"]["memory_available"], "63232m", "{n}");
    assert_eq!(n["usage"]["cpu_percent"], 53.1, "{n}");
    // List filters: by node, status, tags.
    let (_, l) = s.get(&format!("/v1/apps?filter[node_id]={n1}")).await;
    assert_eq!(l["data"].as_array().unwrap().len(), 2, "{l}");
    let (_, l) = s.get(&format!("/v1/apps?filter[node_id]={small}")).await;
    assert_eq!(l["data"].as_array().unwrap().len(), 0, "{l}");
    let (_, l) = s
        .get("/v1/apps?filter[status]=running&filter[name]=big&include=events")
        .await;
    assert_eq!(l["data"][0]["id"], id.as_str());
    assert!(!l["data"][0]["events"].as_array().unwrap().is_empty());

    // A crash reported by an agent is an app.crashed event.
    let inst = a["instances"][0]["id"].as_str().unwrap().to_string();
    let other = a["instances"][1]["id"].as_str().unwrap().to_string();
    let agent = &big1;
    let g = agent.desired().await.generation;
    agent
        .sync(&AgentSync {
            generation: g,
            wait_secs: Some(1),
            seq: Some(200),
            instances: Some(vec![
                InstanceReport {
                    id: inst.clone(),
                    reason: Some("exited with code 3".into()),
                    restarts: 1,
                    ..report("crashed")
                },
                InstanceReport {
                    id: other.clone(),
                    port: Some(4567),
                    ..report("healthy")
                },
            ]),
            events: vec![AgentEvent {
                instance_id: inst.clone(),
                kind: "crashed".into(),
                reason: "exited with code 3".into(),
                exit_code: Some(3),
                at: 1,
            }],
            ..Default::default()
        })
        .await;
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=app.crashed&filter[resource_id]={id}"
        ))
        .await;
    assert_eq!(ev["data"][0]["metadata"]["exit_code"], 3, "{ev}");
    let a = wait_app(&s, &id, "deploying after a crash", |a| {
        a["status"] == "deploying"
    })
    .await;
    assert_eq!(a["replicas"]["healthy"], 1);
    // A report that was overtaken (an older seq, processed late) changes
    // nothing: the crash stays reported.
    agent
        .sync(&AgentSync {
            generation: g,
            wait_secs: Some(1),
            seq: Some(150),
            instances: Some(
                [&inst, &other]
                    .map(|id| InstanceReport {
                        id: (*id).clone(),
                        port: Some(4567),
                        ..report("healthy")
                    })
                    .to_vec(),
            ),
            ..Default::default()
        })
        .await;
    let (_, a) = s.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(
        a["replicas"]["healthy"], 1,
        "a stale report was applied: {a}"
    );
    assert_eq!(a["instances"][0]["status"], "crashed", "{a}");
    // (Not what an agent sends: a sync the channel refuses.)
    let r = agent.sync_raw(&json!({"generation": g, "seq": 0})).await;
    assert_eq!(fields(&problem(r, 400).await), ["seq"]);

    // Scale down stops one (the agent is told), delete stops all.
    let r = s
        .post(
            &format!("/v1/apps/{id}/scale"),
            &s.token,
            json!({"replicas": 1}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["replicas"]["desired"], 1);
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/apps/{id}"),
            Some(&s.token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    for agent in [&big1, &big2] {
        let d = agent.desired().await;
        assert!(
            d.instances.iter().all(|i| i.app_name != "big"),
            "deleted apps leave nothing to run: {d:?}"
        );
    }
    let (st, _) = s.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(st, 404);
}

async fn scopes_and_app_restrictions_hold_on_app_routes(s: TestServer) {
    let mk = |name: &str| json!({"name": name, "image": "nginx", "replicas": 0});
    let a1: Value = s
        .post("/v1/apps", &s.token, mk("one"))
        .await
        .json()
        .await
        .unwrap();
    let a2: Value = s
        .post("/v1/apps", &s.token, mk("two"))
        .await
        .json()
        .await
        .unwrap();
    let (a1, a2) = (a1["id"].as_str().unwrap(), a2["id"].as_str().unwrap());
    let org = s.admin_org().await;
    assert_eq!(
        s.get(&format!("/v1/organizations/{org}")).await.1["usage"]["apps"],
        2
    );
    let tok = |body: Value| {
        let s = &s;
        async move {
            let r: Value = s
                .post("/v1/user/tokens", &s.token, body)
                .await
                .json()
                .await
                .unwrap();
            r["token"].as_str().unwrap().to_string()
        }
    };
    let reader = tok(json!({"name": "ro", "scope": ["apps:read"]})).await;
    assert_eq!(s.get_as(&reader, "/v1/apps").await.0, 200);
    assert_eq!(s.get_as(&reader, &format!("/v1/apps/{a1}")).await.0, 200);
    for (m, path, body) in [
        (Method::POST, "/v1/apps".to_string(), Some(mk("three"))),
        (
            Method::PATCH,
            format!("/v1/apps/{a1}"),
            Some(json!({"replicas": 1})),
        ),
        (Method::DELETE, format!("/v1/apps/{a1}"), None),
        (
            Method::POST,
            format!("/v1/apps/{a1}/scale"),
            Some(json!({"replicas": 1})),
        ),
        (Method::POST, format!("/v1/apps/{a1}/actions/stop"), None),
        (Method::POST, format!("/v1/apps/{a1}/actions/restart"), None),
    ] {
        let r = s.call(m.clone(), &path, Some(&reader), body).await;
        assert_eq!(r.status(), 403, "{m} {path} with apps:read");
    }
    let only_one = tok(json!({"name": "one-app", "restrict_to_apps": [a1]})).await;
    let (_, l) = s.get_as(&only_one, "/v1/apps").await;
    let ids: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a1]);
    assert_eq!(s.get_as(&only_one, &format!("/v1/apps/{a2}")).await.0, 404);
    let r = s
        .call(
            Method::POST,
            &format!("/v1/apps/{a2}/scale"),
            Some(&only_one),
            Some(json!({"replicas": 1})),
        )
        .await;
    assert_eq!(r.status(), 404);
    let r = s
        .call(
            Method::POST,
            &format!("/v1/apps/{a1}/scale"),
            Some(&only_one),
            Some(json!({"replicas": 0})),
        )
        .await;
    assert_eq!(r.status(), 200);
}

/// Instances on `node` across the given apps: (healthy or not) per instance.
async fn on_node(s: &TestServer, apps: &[&str], node: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for id in apps {
        let (_, a) = s.get(&format!("/v1/apps/{id}")).await;
        for i in a["instances"].as_array().unwrap() {
            if i["node_id"] == node {
                out.push((
                    i["id"].as_str().unwrap().to_string(),
                    i["status"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out
}

async fn a_drain_moves_batch_size_instances_at_a_time_across_apps(s: TestServer) {
    let old = s.fake_agent("old", 16, 64 << 30).await;
    let a_node = old.node_id.clone();
    let mut ids = vec![];
    for name in ["one", "two"] {
        let r = s.post("/v1/apps",
            &s.token,
            json!({"name": name, "image": "nginx", "replicas": 2, "resources": {"memory": "64m", "cpu": 0.1}}),
        )
        .await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(old.report_healthy().await, 4);
    for id in &ids {
        wait_app(&s, id, "running on the old node", |a| {
            a["status"] == "running"
        })
        .await;
    }
    let new = s.fake_agent("new", 16, 64 << 30).await;
    let b_node = new.node_id.clone();
    let r = s
        .post(
            &format!("/v1/nodes/{a_node}/actions/drain"),
            &s.token,
            json!({"batch_size": 1}),
        )
        .await;
    assert_eq!(r.status(), 202);
    // One replacement at a time, across both apps: each must be healthy
    // before the next starts, and the old instance stops only then.
    for moved in 1..=4usize {
        let t = Instant::now();
        loop {
            let b = on_node(&s, &ids, &b_node).await;
            let starting = b.iter().filter(|(_, st)| st != "healthy").count();
            assert!(starting <= 1, "batch_size 1 exceeded: {b:?}");
            if b.len() == moved && starting == 1 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "replacement {moved} never came: {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Still exactly one in flight a moment later.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = on_node(&s, &ids, &b_node).await;
        assert_eq!(b.len(), moved, "{b:?}");
        let left = on_node(&s, &ids, &a_node).await;
        assert_eq!(
            left.len(),
            4 - (moved - 1),
            "the old ones stay until replaced: {left:?}"
        );
        new.report_healthy().await;
        old.report_healthy().await;
    }
    for id in &ids {
        wait_app(&s, id, "all on the new node", |a| {
            a["status"] == "running"
                && a["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i["node_id"] == b_node.as_str())
        })
        .await;
    }
}

/// The instances the node should run for `app`: (id, memory).
async fn desired_of(agent: &FakeAgent, app: &str) -> Vec<(String, i64)> {
    agent
        .desired_of(app)
        .await
        .into_iter()
        .map(|i| (i.id, i.memory))
        .collect()
}

async fn restarts_and_resource_changes_roll_or_replace_at_once(s: TestServer) {
    let agent = s.fake_agent("n", 16, 64 << 30).await;
    let beat = agent.heartbeat();
    let r = s.post("/v1/apps",
        &s.token,
        json!({"name": "roll", "image": "nginx", "replicas": 3, "resources": {"memory": "128m", "cpu": 0.1}}),
    )
    .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(agent.report_healthy().await, 3);
    wait_app(&s, &id, "running", |a| a["status"] == "running").await;
    let first: Vec<String> = desired_of(&agent, &id)
        .await
        .into_iter()
        .map(|x| x.0)
        .collect();

    // Rolling, batch 2: two replacements start; the three old ones keep
    // running until replacements are healthy.
    let r = s
        .post(
            &format!("/v1/apps/{id}/actions/restart"),
            &s.token,
            json!({"strategy": "rolling", "batch_size": 2}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let now = desired_of(&agent, &id).await;
    assert_eq!(now.len(), 5, "3 old + 2 replacements: {now:?}");
    assert!(first.iter().all(|o| now.iter().any(|(n, _)| n == o)));
    agent.report_healthy().await; // 2 replaced; the third gets its replacement
    let now = desired_of(&agent, &id).await;
    assert_eq!(now.len(), 4, "1 old + 3 new: {now:?}");
    agent.report_healthy().await;
    agent.report_healthy().await; // the agent no longer reports the stopped one
    let a = wait_app(&s, &id, "rolled", |a| {
        a["status"] == "running" && a["instances"].as_array().unwrap().len() == 3
    })
    .await;
    let second: Vec<String> = desired_of(&agent, &id)
        .await
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(second.len(), 3);
    assert!(
        second.iter().all(|n| !first.contains(n)),
        "every instance was replaced"
    );
    assert_eq!(a["replicas"]["healthy"], 3);

    // Immediate: the old ones stop at once, all three new start together.
    let r = s
        .post(
            &format!("/v1/apps/{id}/actions/restart"),
            &s.token,
            json!({"strategy": "immediate"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let now: Vec<String> = desired_of(&agent, &id)
        .await
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|n| !second.contains(n)), "{now:?}");
    agent.report_healthy().await;
    wait_app(&s, &id, "running after an immediate restart", |a| {
        a["status"] == "running"
    })
    .await;

    // A resource change rolls (one at a time by default) to the new memory.
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/apps/{id}"),
            Some(&s.token),
            Some(json!({"resources": {"memory": "256m"}})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let d = desired_of(&agent, &id).await;
    assert_eq!(d.len(), 4, "3 old + 1 replacement: {d:?}");
    assert_eq!(d.iter().filter(|x| x.1 == 256 << 20).count(), 1, "{d:?}");
    for _ in 0..4 {
        agent.report_healthy().await;
    }
    let a = wait_app(&s, &id, "rolled to 256m", |a| {
        a["status"] == "running" && a["instances"].as_array().unwrap().len() == 3
    })
    .await;
    let d = desired_of(&agent, &id).await;
    assert!(d.iter().all(|x| x.1 == 256 << 20), "{d:?}");
    assert_eq!(a["resources"]["memory"], "256m", "{a}");

    // Tags only: nothing is replaced.
    let before: Vec<String> = d.into_iter().map(|x| x.0).collect();
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/apps/{id}"),
            Some(&s.token),
            Some(json!({"tags": ["blue"]})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let after: Vec<String> = desired_of(&agent, &id)
        .await
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(after, before);
    beat.abort();
}

both_backends!(
    restarts_and_resource_changes_roll_or_replace_at_once,
    a_drain_moves_batch_size_instances_at_a_time_across_apps,
    apps_validate_their_input,
    placement_waits_for_room_and_resumes_by_itself,
    scopes_and_app_restrictions_hold_on_app_routes
);
