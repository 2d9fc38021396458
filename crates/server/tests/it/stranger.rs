//! Table-driven isolation: every /v1 route, called by a user of another
//! organization, neither shows nor changes the owner's data.

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_core::plan::Plan;

use shellwego_testkit::both_backends;
use shellwego_testkit::server::{NodeSpec, TestServer};

async fn strangers_see_nothing_of_another_organization(s: TestServer) {
    let org = s.admin_org().await;
    let node = s.insert_node(NodeSpec::new(&org, "owners-node")).await;
    let (_, list) = s.get("/v1/user/tokens").await;
    let tok = list["data"][0]["id"].as_str().unwrap().to_string();
    let admin = s.get("/v1/user").await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let inv = s
        .call(
            Method::POST,
            &format!("/v1/organizations/{org}/invitations"),
            Some(&s.token),
            Some(json!({"email": "i@example.com", "role": "viewer"})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sa = s
        .call(
            Method::POST,
            &format!("/v1/organizations/{org}/service-accounts"),
            Some(&s.token),
            Some(json!({"name": "ci", "role": "viewer"})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let app = s
        .call(
            Method::POST,
            "/v1/apps",
            Some(&s.token),
            Some(json!({"name": "owners-app", "image": "nginx:alpine", "replicas": 0})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dep = s.get(&format!("/v1/apps/{app}/deployments")).await.1["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let upl = s
        .call(
            Method::POST,
            "/v1/uploads",
            Some(&s.token),
            Some(json!("tarball bytes")),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["upload_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sec = s
        .call(
            Method::POST,
            "/v1/secrets",
            Some(&s.token),
            Some(json!({"name": "OWNERS_KEY", "value": "owners-secret-value"})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let hook = s
        .call(
            Method::POST,
            "/v1/webhooks",
            Some(&s.token),
            Some(json!({"url": "http://127.0.0.1:9/owners", "events": ["*"], "secret": "whsec_owners_secret_0123456789"})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ping = s
        .call(
            Method::POST,
            &format!("/v1/webhooks/{hook}/test"),
            Some(&s.token),
            None,
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dom = s
        .call(
            Method::POST,
            "/v1/domains",
            Some(&s.token),
            Some(json!({"hostname": "owners.example.com", "app_id": app})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Enterprise: its burst (500) covers the whole table with room to grow;
    // the table outgrew Starter's 50 once deployments landed.
    let (_, _, stranger) = s
        .org_with_user(Plan::Enterprise, "stranger@example.com")
        .await;
    let secrets = [
        org.as_str(),
        node.as_str(),
        tok.as_str(),
        admin.as_str(),
        inv.as_str(),
        sa.as_str(),
        app.as_str(),
        upl.as_str(),
        sec.as_str(),
        dom.as_str(),
        "owners.example.com",
        "OWNERS_KEY",
        "owners-secret-value",
        hook.as_str(),
        ping.as_str(),
        "whsec_owners_secret_0123456789",
        "admin@localhost",
    ];

    // (method, route template, concrete path, body, expected status)
    let o = &org;
    // One of the owner's events (the bootstrap and the calls above made some).
    let evt = s.get("/v1/events?limit=1").await.1["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cases: Vec<(Method, &str, String, Option<Value>, u16)> = vec![
        (Method::GET, "/v1/domains", "/v1/domains".into(), None, 200),
        // Attaching the owner's app: no such app in the stranger's org.
        (
            Method::POST,
            "/v1/domains",
            "/v1/domains".into(),
            Some(json!({"hostname": "strangers.example.com", "app_id": app})),
            400,
        ),
        (
            Method::GET,
            "/v1/domains/{domain_id}",
            format!("/v1/domains/{dom}"),
            None,
            404,
        ),
        (
            Method::PATCH,
            "/v1/domains/{domain_id}",
            format!("/v1/domains/{dom}"),
            Some(json!({"path": "/x"})),
            404,
        ),
        (
            Method::POST,
            "/v1/domains/{domain_id}/certificate",
            format!("/v1/domains/{dom}/certificate"),
            Some(json!({"certificate": "x", "private_key": "y"})),
            404,
        ),
        (
            Method::DELETE,
            "/v1/domains/{domain_id}",
            format!("/v1/domains/{dom}"),
            None,
            404,
        ),
        (Method::GET, "/v1/secrets", "/v1/secrets".into(), None, 200),
        (
            Method::POST,
            "/v1/secrets",
            "/v1/secrets".into(),
            Some(json!({"name": "OWNERS_KEY", "value": "x", "app_id": app})),
            400,
        ),
        (
            Method::GET,
            "/v1/secrets/{secret_id}",
            format!("/v1/secrets/{sec}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/secrets/{secret_id}/versions",
            format!("/v1/secrets/{sec}/versions"),
            Some(json!({"value": "strangers value"})),
            404,
        ),
        (
            Method::DELETE,
            "/v1/secrets/{secret_id}",
            format!("/v1/secrets/{sec}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/auth/token",
            "/v1/auth/token".into(),
            Some(json!({"email": "admin@localhost", "password": "guess-guess"})),
            401,
        ),
        (
            Method::DELETE,
            "/v1/auth/token/{token_id}",
            format!("/v1/auth/token/{tok}"),
            None,
            404,
        ),
        (Method::GET, "/v1/user", "/v1/user".into(), None, 200),
        (
            Method::PATCH,
            "/v1/user",
            "/v1/user".into(),
            Some(json!({"name": "Mallory"})),
            200,
        ),
        (
            Method::POST,
            "/v1/user/mfa",
            "/v1/user/mfa".into(),
            None,
            200,
        ),
        (
            Method::POST,
            "/v1/user/mfa/confirm",
            "/v1/user/mfa/confirm".into(),
            Some(json!({"code": "000000"})),
            400,
        ),
        (
            Method::POST,
            "/v1/user/mfa/disable",
            "/v1/user/mfa/disable".into(),
            Some(json!({"code": "000000"})),
            409,
        ),
        (
            Method::GET,
            "/v1/user/tokens",
            "/v1/user/tokens".into(),
            None,
            200,
        ),
        (
            Method::POST,
            "/v1/user/tokens",
            "/v1/user/tokens".into(),
            Some(json!({"name": "mine"})),
            201,
        ),
        (
            Method::POST,
            "/v1/user/tokens",
            "/v1/user/tokens".into(),
            Some(json!({"name": "theirs", "organization_id": o})),
            404,
        ),
        (
            Method::DELETE,
            "/v1/user/tokens/{token_id}",
            format!("/v1/user/tokens/{tok}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/user/tokens/{token_id}/rotate",
            format!("/v1/user/tokens/{tok}/rotate"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/events",
            format!("/v1/events?filter[organization_id]={o}"),
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/events/stream",
            format!("/v1/events/stream?last_event_id={evt}"),
            None,
            400,
        ),
        (
            Method::GET,
            "/v1/events/{event_id}",
            format!("/v1/events/{evt}"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/webhooks",
            "/v1/webhooks".into(),
            None,
            200,
        ),
        (
            Method::POST,
            "/v1/webhooks",
            "/v1/webhooks".into(),
            Some(json!({"url": "http://127.0.0.1:9/strangers", "events": ["*"]})),
            201,
        ),
        (
            Method::GET,
            "/v1/webhooks/{webhook_id}",
            format!("/v1/webhooks/{hook}"),
            None,
            404,
        ),
        (
            Method::PATCH,
            "/v1/webhooks/{webhook_id}",
            format!("/v1/webhooks/{hook}"),
            Some(json!({"url": "http://127.0.0.1:9/stolen", "enabled": false})),
            404,
        ),
        (
            Method::DELETE,
            "/v1/webhooks/{webhook_id}",
            format!("/v1/webhooks/{hook}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/webhooks/{webhook_id}/test",
            format!("/v1/webhooks/{hook}/test"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/webhooks/{webhook_id}/deliveries",
            format!("/v1/webhooks/{hook}/deliveries"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
            format!("/v1/webhooks/{hook}/deliveries/{ping}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            format!("/v1/webhooks/{hook}/deliveries/{ping}/redeliver"),
            None,
            404,
        ),
        (Method::GET, "/v1/nodes", "/v1/nodes".into(), None, 200),
        (
            Method::GET,
            "/v1/nodes/{node_id}",
            format!("/v1/nodes/{node}"),
            None,
            404,
        ),
        (
            Method::PATCH,
            "/v1/nodes/{node_id}",
            format!("/v1/nodes/{node}"),
            Some(json!({"status": "draining"})),
            404,
        ),
        (
            Method::DELETE,
            "/v1/nodes/{node_id}",
            format!("/v1/nodes/{node}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/nodes",
            "/v1/nodes".into(),
            Some(json!({"hostname": "strangers-box"})),
            201,
        ),
        (
            Method::POST,
            "/v1/nodes/{node_id}/actions/drain",
            format!("/v1/nodes/{node}/actions/drain"),
            Some(json!({})),
            404,
        ),
        (Method::GET, "/v1/apps", "/v1/apps".into(), None, 200),
        (
            Method::POST,
            "/v1/apps",
            "/v1/apps".into(),
            Some(json!({"name": "owners-app", "image": "busybox", "replicas": 0})),
            201,
        ),
        (
            Method::GET,
            "/v1/apps/{app_id}",
            format!("/v1/apps/{app}"),
            None,
            404,
        ),
        (
            Method::PATCH,
            "/v1/apps/{app_id}",
            format!("/v1/apps/{app}"),
            Some(json!({"replicas": 3})),
            404,
        ),
        (
            Method::DELETE,
            "/v1/apps/{app_id}",
            format!("/v1/apps/{app}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/apps/{app_id}/actions/start",
            format!("/v1/apps/{app}/actions/start"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/apps/{app_id}/actions/stop",
            format!("/v1/apps/{app}/actions/stop"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/apps/{app_id}/actions/restart",
            format!("/v1/apps/{app}/actions/restart"),
            Some(json!({"strategy": "immediate"})),
            404,
        ),
        (
            Method::POST,
            "/v1/apps/{app_id}/scale",
            format!("/v1/apps/{app}/scale"),
            Some(json!({"replicas": 5})),
            404,
        ),
        (
            Method::POST,
            "/v1/apps/{app_id}/deploy",
            format!("/v1/apps/{app}/deploy"),
            Some(json!({"image": "strangers:latest"})),
            404,
        ),
        (
            Method::GET,
            "/v1/apps/{app_id}/deployments",
            format!("/v1/apps/{app}/deployments"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/deployments/{deployment_id}",
            format!("/v1/deployments/{dep}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/deployments/{deployment_id}/actions/rollback",
            format!("/v1/deployments/{dep}/actions/rollback"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/deployments/{deployment_id}/actions/promote",
            format!("/v1/deployments/{dep}/actions/promote"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/deployments/{deployment_id}/logs",
            format!("/v1/deployments/{dep}/logs"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/uploads",
            "/v1/uploads".into(),
            Some(json!("strangers archive")),
            201,
        ),
        (
            Method::GET,
            "/v1/agent/uploads/{upload_id}",
            format!("/v1/agent/uploads/{upl}"),
            None,
            401,
        ),
        (
            Method::POST,
            "/v1/agent/join",
            "/v1/agent/join".into(),
            Some(
                json!({"join_token": "sw_join_guess", "cpu_cores": 1, "memory_total": 1, "memory_available": 1, "disk_total": 1}),
            ),
            401,
        ),
        (
            Method::POST,
            "/v1/agent/sync",
            "/v1/agent/sync".into(),
            Some(json!({"generation": 0, "wait_secs": 1})),
            401,
        ),
        (
            Method::POST,
            "/v1/agent/tasks/{task_id}/result",
            "/v1/agent/tasks/tsk_guess/result".into(),
            Some(json!({"exit_code": 0, "execution_time_ms": 1})),
            401,
        ),
        (
            Method::POST,
            "/v1/agent/logs",
            "/v1/agent/logs".into(),
            Some(json!({"follow_id": "lgf_guess", "lines": []})),
            401,
        ),
        (
            Method::GET,
            "/v1/apps/{app_id}/logs",
            format!("/v1/apps/{app}/logs"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/apps/{app_id}/exec/ws",
            format!("/v1/apps/{app}/exec/ws"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/agent/exec/{session_id}/input",
            "/v1/agent/exec/exs_guess/input".into(),
            None,
            401,
        ),
        (
            Method::POST,
            "/v1/agent/exec/{session_id}/output",
            "/v1/agent/exec/exs_guess/output".into(),
            Some(json!({"frames": []})),
            401,
        ),
        (
            Method::GET,
            "/v1/apps/{app_id}/metrics",
            format!("/v1/apps/{app}/metrics"),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/apps/{app_id}/logs/stream",
            format!("/v1/apps/{app}/logs/stream"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/apps/{app_id}/exec",
            format!("/v1/apps/{app}/exec"),
            Some(json!({"command": ["/bin/true"]})),
            404,
        ),
        (
            Method::POST,
            "/v1/agent/resolve",
            "/v1/agent/resolve".into(),
            Some(json!({"instance_id": "inst_x", "name": "web.internal"})),
            401,
        ),
        (
            Method::GET,
            "/v1/openapi.json",
            "/v1/openapi.json".into(),
            None,
            200,
        ),
        (
            Method::POST,
            "/v1/organizations",
            "/v1/organizations".into(),
            Some(json!({"name": "Strangers Inc"})),
            201,
        ),
        (
            Method::GET,
            "/v1/organizations",
            "/v1/organizations".into(),
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/organizations/{org_id}",
            format!("/v1/organizations/{o}"),
            None,
            404,
        ),
        (
            Method::PATCH,
            "/v1/organizations/{org_id}",
            format!("/v1/organizations/{o}"),
            Some(json!({"name": "pwned"})),
            404,
        ),
        (
            Method::GET,
            "/v1/organizations/{org_id}/members",
            format!("/v1/organizations/{o}/members"),
            None,
            404,
        ),
        (
            Method::PATCH,
            "/v1/organizations/{org_id}/members/{user_id}",
            format!("/v1/organizations/{o}/members/{admin}"),
            Some(json!({"role": "viewer"})),
            404,
        ),
        (
            Method::DELETE,
            "/v1/organizations/{org_id}/members/{user_id}",
            format!("/v1/organizations/{o}/members/{admin}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/organizations/{org_id}/invitations",
            format!("/v1/organizations/{o}/invitations"),
            Some(json!({"email": "m@example.com", "role": "admin"})),
            404,
        ),
        (
            Method::GET,
            "/v1/organizations/{org_id}/invitations",
            format!("/v1/organizations/{o}/invitations"),
            None,
            404,
        ),
        (
            Method::DELETE,
            "/v1/organizations/{org_id}/invitations/{invitation_id}",
            format!("/v1/organizations/{o}/invitations/{inv}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/invitations/{token}/accept",
            "/v1/invitations/inv_guessed/accept".into(),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/organizations/{org_id}/service-accounts",
            format!("/v1/organizations/{o}/service-accounts"),
            Some(json!({"name": "x", "role": "admin"})),
            404,
        ),
        (
            Method::GET,
            "/v1/organizations/{org_id}/service-accounts",
            format!("/v1/organizations/{o}/service-accounts"),
            None,
            404,
        ),
        (
            Method::DELETE,
            "/v1/organizations/{org_id}/service-accounts/{service_account_id}",
            format!("/v1/organizations/{o}/service-accounts/{sa}"),
            None,
            404,
        ),
    ];
    let mut covered = vec![];
    for (method, template, path, body, want) in cases {
        covered.push((method.clone(), template.to_string()));
        let asked = format!(
            "{path} {}",
            body.as_ref().map(Value::to_string).unwrap_or_default()
        );
        let r = s.call(method.clone(), &path, Some(&stranger), body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        if template != "/v1/openapi.json" {
            for secret in secrets {
                // A 404 names the id that was asked for; nothing else leaks.
                if !asked.contains(secret) {
                    assert!(
                        !text.contains(secret),
                        "{method} {path} leaked {secret}: {text}"
                    );
                }
            }
        }
    }
    // Nothing of the owner's changed.
    let (_, me) = s.get("/v1/user").await;
    assert_eq!(me["name"], "Administrator");
    assert_eq!(me["organizations"][0]["role"], "owner");
    let (_, o2) = s.get(&format!("/v1/organizations/{org}")).await;
    assert_eq!(o2["name"], "Default");
    let (_, list) = s.get("/v1/user/tokens").await;
    assert!(list.to_string().contains(&tok));
    assert!(!list.to_string().contains("\"mine\""));
    let (_, invs) = s
        .get(&format!(
            "/v1/organizations/{org}/invitations?filter[email]=i@example.com"
        ))
        .await;
    assert_eq!(invs["data"][0]["status"], "pending");
    assert_eq!(
        s.get(&format!("/v1/nodes/{node}")).await.1["status"],
        "ready"
    );
    let (_, a) = s.get(&format!("/v1/apps/{app}")).await;
    assert_eq!(a["name"], "owners-app");
    assert_eq!(a["replicas"]["desired"], 0);
    let (_, owned) = s.get(&format!("/v1/secrets/{sec}")).await;
    assert_eq!(owned["version"], 1, "{owned}");
    let (_, mine) = s.get("/v1/apps").await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1, "{mine}");
    let (_, h) = s.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(
        (&h["url"], &h["status"]),
        (&json!("http://127.0.0.1:9/owners"), &json!("active"))
    );
    let (_, hooks) = s.get("/v1/webhooks").await;
    assert_eq!(hooks["data"].as_array().unwrap().len(), 1, "{hooks}");

    for (method, template, _) in crate::openapi::operations() {
        if template.starts_with("/v1/") {
            assert!(
                covered.contains(&(method.clone(), template.clone())),
                "no stranger case for {method} {template}"
            );
        }
    }
}

both_backends!(strangers_see_nothing_of_another_organization);
