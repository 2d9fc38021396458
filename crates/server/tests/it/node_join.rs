//! Nodes: registering, joining with a one-time token, the agent channel
//! (sync = heartbeat), liveness (offline with an event), update, delete.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::kit::{fields, problem, Srv};

fn report(token: &str) -> Value {
    json!({"join_token": token, "hostname": "worker-1", "cpu_cores": 8, "memory_total": 16u64 << 30,
           "memory_available": 12u64 << 30, "disk_total": 100u64 << 30, "kernel_version": "6.1.0",
           "agent_version": "0.1.0", "drivers": ["process", "container"], "kvm": false,
           "zone": "fra1-b", "labels": {"rack": "r1"}})
}

async fn sync(s: &Srv, credential: &str, body: Value) -> reqwest::Response {
    s.http
        .post(s.url("/v1/agent/sync"))
        .bearer_auth(credential)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn nodes_register_join_heartbeat_and_go_offline(s: Srv) {
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
    let r = s
        .call(Method::POST, "/v1/agent/join", None, Some(report(&token)))
        .await;
    assert_eq!(r.status(), 200);
    let joined: Value = r.json().await.unwrap();
    assert_eq!(joined["node_id"], id.as_str());
    let cred = joined["credential"].as_str().unwrap().to_string();
    assert!(cred.starts_with("nsec_"));
    problem(
        s.call(Method::POST, "/v1/agent/join", None, Some(report(&token)))
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
    let r = sync(&s, &cred, json!({"generation": 0, "wait_secs": 1})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["generation"], 0);
    problem(
        sync(&s, &s.token, json!({"generation": 0, "wait_secs": 1})).await,
        401,
    )
    .await;
    let p = problem(sync(&s, &cred, json!({"wait_secs": 99})).await, 400).await;
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
    assert_eq!(
        sync(&s, &cred, json!({"generation": 0, "wait_secs": 1}))
            .await
            .status(),
        200
    );
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
    problem(
        sync(&s, &cred, json!({"generation": 0, "wait_secs": 1})).await,
        401,
    )
    .await;
}

async fn expired_join_tokens_and_viewers(s: Srv) {
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
            Some(report(reg["join_token"].as_str().unwrap())),
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
            Some(report("sw_join_made_up")),
        )
        .await,
        401,
    )
    .await;
    // Absurd reports are 400s, not overflows.
    let mut bad = report("sw_join_made_up");
    bad["cpu_cores"] = json!(i64::MAX);
    bad["hostname"] = json!("a\u{0}b");
    let p = problem(
        s.call(Method::POST, "/v1/agent/join", None, Some(bad))
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
