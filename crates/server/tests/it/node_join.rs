//! Nodes: registering, joining with a one-time token, the agent channel
//! (sync = heartbeat), liveness (offline with an event), update, delete.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use shellwego_testkit::agent::{AgentJoin, AgentSync, FakeAgent};
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, TestServer};

/// What the worker's agent reports when it joins with `token`.
fn machine(token: &str) -> AgentJoin {
    AgentJoin {
        join_token: token.into(),
        hostname: "worker-1".into(),
        cpu_cores: 8,
        memory_total: 16 << 30,
        memory_available: 12 << 30,
        disk_total: 100 << 30,
        kernel_version: Some("6.1.0".into()),
        agent_version: Some("0.1.0".into()),
        drivers: vec!["process".into(), "container".into()],
        kvm: false,
        zone: Some("fra1-b".into()),
        labels: [("rack".to_string(), "r1".to_string())].into(),
        ..Default::default()
    }
}

/// A sync of generation 0, held at most a second.
fn at_zero() -> AgentSync {
    AgentSync {
        generation: 0,
        wait_secs: Some(1),
        ..Default::default()
    }
}

async fn nodes_register_join_heartbeat_and_go_offline(s: TestServer) {
    let r = s
        .call(
            Method::POST,
            "/v1/nodes",
            Some(&s.token),
            Some(json!({"hostname": "my-server-01", "region": "fra1", "labels": {"gpu": "true"}})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    let (id, token) = (
        reg["id"].as_str().unwrap().to_string(),
        reg["join_token"].as_str().unwrap().to_string(),
    );
    assert!(token.starts_with("sw_join_"));
    assert!(reg["install_script"].as_str().unwrap().contains(&token));
    let (_, n) = s.get(&format!("/v1/nodes/{id}")).await;
    assert_eq!(n["status"], "joining");
    // Not offline: nothing was ever heard from it, so nothing was lost.
    let p = problem(
        s.call(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(&s.token),
            Some(json!({"status": "maintenance"})),
        )
        .await,
        409,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("not joined"), "{p}");
    assert_eq!(n["last_seen"], Value::Null);

    // Join: the token is exchanged once for a credential.
    let agent = FakeAgent::join(&s.base, &machine(&token)).await;
    assert_eq!(agent.node_id, id);
    assert!(agent.credential.starts_with("nsec_"));
    problem(
        s.call(
            Method::POST,
            "/v1/agent/join",
            None,
            Some(json!(machine(&token))),
        )
        .await,
        401,
    )
    .await;
    let (_, n) = s.get(&format!("/v1/nodes/{id}")).await;
    assert_eq!(n["status"], "ready");
    assert_eq!(n["hostname"], "worker-1");
    assert_eq!(n["capacity"]["cpu_cores"], 8);
    assert_eq!(n["capacity"]["memory_total"], "16g");
    assert_eq!(n["drivers"], json!(["process", "container"]));
    assert_eq!(
        n["labels"],
        json!({"gpu": "true", "rack": "r1"}),
        "the agent's labels are added to registration's"
    );
    assert_eq!(n["zone"], "fra1-b");
    assert_eq!(n["region"], "fra1");
    assert!(n["last_seen"].is_string());

    // Sync: the credential authenticates; a user token does not.
    assert_eq!(agent.sync(&at_zero()).await.generation, 0);
    problem(
        agent.with_credential(&s.token).sync_raw(&at_zero()).await,
        401,
    )
    .await;
    let p = problem(agent.sync_raw(&json!({"wait_secs": 99})).await, 400).await;
    assert_eq!(fields(&p), ["wait_secs"]);

    // An operator drains it; then it falls silent: offline, with an event.
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(&s.token),
            Some(json!({"status": "draining"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    // A sync brings it back as it was: still draining.
    let mut offline = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.get(&format!("/v1/nodes/{id}")).await.1["status"] == "offline" {
            offline = true;
            break;
        }
    }
    assert!(offline, "the node never went offline");
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=node.offline&filter[resource_id]={id}"
        ))
        .await;
    assert_eq!(ev["pagination"]["total"], 1);
    assert_eq!(ev["data"][0]["severity"], "warning");
    assert_eq!(agent.sync_raw(&at_zero()).await.status(), 200);
    assert_eq!(
        s.get(&format!("/v1/nodes/{id}")).await.1["status"],
        "draining"
    );
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=node.online&filter[resource_id]={id}"
        ))
        .await;
    assert_eq!(ev["pagination"]["total"], 1);

    // Update and delete.
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(&s.token),
            Some(json!({"status": "draining", "labels": {"maintenance": "true"}})),
        )
        .await;
    let n: Value = r.json().await.unwrap();
    assert_eq!(n["status"], "draining");
    assert_eq!(n["labels"], json!({"maintenance": "true"}));
    let p = problem(
        s.call(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(&s.token),
            Some(json!({"status": "offline"})),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["status"]);
    assert_eq!(
        p["errors"][0]["message"], "must be one of: ready, draining, maintenance",
        "{p}"
    );
    problem(
        s.call(
            Method::DELETE,
            &format!("/v1/nodes/{id}?migrate_apps=maybe"),
            Some(&s.token),
            None,
        )
        .await,
        400,
    )
    .await;
    assert_eq!(
        s.call(
            Method::DELETE,
            &format!("/v1/nodes/{id}?migrate_apps=true"),
            Some(&s.token),
            None
        )
        .await
        .status(),
        204
    );
    assert_eq!(s.get(&format!("/v1/nodes/{id}")).await.0, 404);
    problem(agent.sync_raw(&at_zero()).await, 401).await;
}

async fn expired_join_tokens_and_viewers(s: TestServer) {
    let reg: Value = s
        .call(
            Method::POST,
            "/v1/nodes",
            Some(&s.token),
            Some(json!({"hostname": "late"})),
        )
        .await
        .json()
        .await
        .unwrap();
    sqlx::query("UPDATE nodes SET join_expires_at = 1 WHERE id = $1")
        .bind(reg["id"].as_str().unwrap())
        .execute(s.store.pool())
        .await
        .unwrap();
    problem(
        s.call(
            Method::POST,
            "/v1/agent/join",
            None,
            Some(json!(machine(reg["join_token"].as_str().unwrap()))),
        )
        .await,
        401,
    )
    .await;
    problem(
        s.call(
            Method::POST,
            "/v1/agent/join",
            None,
            Some(json!(machine("sw_join_made_up"))),
        )
        .await,
        401,
    )
    .await;
    // Absurd reports are 400s, not overflows.
    let bad = AgentJoin {
        cpu_cores: i64::MAX,
        hostname: "a\u{0}b".into(),
        ..machine("sw_join_made_up")
    };
    let p = problem(
        s.call(Method::POST, "/v1/agent/join", None, Some(json!(bad)))
            .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["cpu_cores", "hostname"]);
    let p = problem(
        s.call(
            Method::POST,
            "/v1/nodes",
            Some(&s.token),
            Some(json!({"hostname": "bad name"})),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["hostname"]);
}

both_backends!(
    nodes_register_join_heartbeat_and_go_offline,
    expired_join_tokens_and_viewers
);
