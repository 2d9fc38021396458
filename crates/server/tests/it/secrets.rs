//! Secrets and the app env, encrypted at rest: values go in and never come
//! back out of the API, are not in the database in plaintext (the SQLite
//! file and every row are searched), and open again after the master key
//! is rotated.

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, TestServer};
use sqlx::Row;

/// Every text the store holds that could carry a value: the SQLite files'
/// bytes (also free pages), and the rows of the tables that hold specs,
/// values, keys and events.
async fn stored_text(s: &TestServer) -> String {
    let mut out = String::new();
    for f in ["shellwego.db", "shellwego.db-wal"] {
        if let Ok(b) = std::fs::read(s.cfg.data_dir.join(f)) {
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
    for q in [
        "SELECT spec AS t FROM apps",
        "SELECT spec AS t FROM releases",
        "SELECT value_enc AS t FROM secret_versions",
        "SELECT wrapped AS t FROM data_keys",
        "SELECT metadata AS t FROM events",
        "SELECT message AS t FROM deployment_logs",
        "SELECT secret AS t FROM webhooks",
        "SELECT headers AS t FROM webhooks",
        "SELECT payload AS t FROM webhook_deliveries",
    ] {
        for r in sqlx::query(q).fetch_all(s.store.pool()).await.unwrap() {
            out.push_str(&r.get::<String, _>("t"));
            out.push('\n');
        }
    }
    out
}

async fn create(s: &TestServer, body: Value) -> Value {
    let r = s.post("/v1/secrets", &s.token, body).await;
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, 201, "{v:#}");
    v
}

async fn secrets_are_write_only_and_encrypted_at_rest(s: TestServer) {
    let app = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "payments", "image": "nginx:alpine", "replicas": 0}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let org_secret = create(
        &s,
        json!({"name": "DATABASE_URL", "value": "postgres://very-secret-org-value"}),
    )
    .await;
    assert_eq!(org_secret["scope"], "organization");
    assert_eq!(org_secret["version"], 1);
    assert!(org_secret["id"].as_str().unwrap().starts_with("sec_"));
    assert!(org_secret.get("value").is_none(), "{org_secret:#}");
    let id = org_secret["id"].as_str().unwrap().to_string();
    let app_secret = create(
        &s,
        json!({"name": "STRIPE_API_KEY", "value": "sk_live_very-secret-app-value", "app_id": app, "expires_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(app_secret["scope"], "app");
    assert_eq!(app_secret["app_id"], app.as_str());
    assert_eq!(app_secret["expires_at"], "2099-01-01T00:00:00.000Z");

    // Rotation: a new version, listed newest first.
    let r = s
        .post(
            &format!("/v1/secrets/{id}/versions"),
            &s.token,
            json!({"value": "postgres://very-secret-rotated-value"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let rotated: Value = r.json().await.unwrap();
    assert_eq!(rotated["version"], 2, "{rotated:#}");
    let versions: Vec<i64> = rotated["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);

    // Metadata only, everywhere.
    let (st, got) = s.get(&format!("/v1/secrets/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(got["name"], "DATABASE_URL");
    let (_, list) = s.get("/v1/secrets").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list:#}");
    assert_eq!(list["data"][0]["name"], "DATABASE_URL", "sorted by name");
    let (_, only_app) = s.get(&format!("/v1/secrets?filter[app_id]={app}")).await;
    assert_eq!(only_app["data"].as_array().unwrap().len(), 1);
    let (_, events) = s.get("/v1/events?filter[type]=secret.*").await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["secret.rotated", "secret.created", "secret.created"]
    );
    let everything = format!("{got}{list}{events}{rotated}{app_secret}");
    for v in [
        "very-secret-org-value",
        "very-secret-rotated-value",
        "very-secret-app-value",
    ] {
        assert!(!everything.contains(v), "the API returned {v}");
    }
    // A webhook's signing secret and header values are sealed too.
    let r = s
        .post(
            "/v1/webhooks",
            &s.token,
            json!({"url": "http://127.0.0.1:9/hook", "events": ["secret.*"],
                   "secret": "whsec_never_stored_plain_0123456789",
                   "headers": {"Authorization": "Bearer header-credential-0xabc"}}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let stored = stored_text(&s).await;
    for v in [
        "very-secret-org-value",
        "very-secret-rotated-value",
        "very-secret-app-value",
        "whsec_never_stored_plain_0123456789",
        "header-credential-0xabc",
    ] {
        assert!(!stored.contains(v), "{v} is in the store in plaintext");
    }

    // Bad input: the field and what to change.
    for (body, field) in [
        (json!({"name": "1BAD", "value": "x"}), "name"),
        (
            json!({"name": "OK", "value": "x", "scope": "app"}),
            "app_id",
        ),
        (
            json!({"name": "OK", "value": "x", "scope": "organization", "app_id": app}),
            "app_id",
        ),
        (
            json!({"name": "OK", "value": "x", "app_id": "app_nope"}),
            "app_id",
        ),
        (
            json!({"name": "OK", "value": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"name": "OK", "value": "x", "expires_at": "soon"}),
            "expires_at",
        ),
        (
            json!({"name": "OK", "value": "x".repeat(65 * 1024)}),
            "value",
        ),
    ] {
        let p = problem(s.post("/v1/secrets", &s.token, body.clone()).await, 400).await;
        assert_eq!(fields(&p), [field], "{body}: {p:#}");
    }
    // One live secret per name and scope; the same name in another scope
    // is another secret.
    let p = problem(
        s.post(
            "/v1/secrets",
            &s.token,
            json!({"name": "DATABASE_URL", "value": "x"}),
        )
        .await,
        409,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("versions"), "{p:#}");
    create(
        &s,
        json!({"name": "DATABASE_URL", "value": "x", "app_id": app}),
    )
    .await;

    // Delete: gone, and the name is free again.
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/secrets/{id}"),
            Some(&s.token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(s.get(&format!("/v1/secrets/{id}")).await.0, 404);
    create(&s, json!({"name": "DATABASE_URL", "value": "again"})).await;
    // A token restricted to an app: that app's secrets only; organization
    // secrets and webhooks (which reach every app) are beyond it.
    let r = s
        .post(
            "/v1/user/tokens",
            &s.token,
            json!({"name": "ci-payments", "restrict_to_apps": [app]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let restricted = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, mine) = s.get_as(&restricted, "/v1/secrets").await;
    assert_eq!(st, 200, "{mine:#}");
    assert!(
        mine["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["app_id"] == app.as_str()),
        "{mine:#}"
    );
    let r = s
        .post(
            "/v1/secrets",
            &restricted,
            json!({"name": "NODE_OPTIONS", "value": "--require /tmp/x"}),
        )
        .await;
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    let r = s
        .post(
            "/v1/secrets",
            &restricted,
            json!({"name": "OWN", "value": "ok", "app_id": app}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let org_secret = list["data"][0]["id"].as_str().unwrap().to_string();
    let r = s
        .post(
            &format!("/v1/secrets/{org_secret}/versions"),
            &restricted,
            json!({"value": "x"}),
        )
        .await;
    assert!(r.status() == 403 || r.status() == 404, "{}", r.status());
    let r = s
        .post(
            "/v1/webhooks",
            &restricted,
            json!({"url": "http://127.0.0.1:9/", "events": ["*"]}),
        )
        .await;
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    // Deleting the app deletes its own secrets.
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/apps/{app}"),
            Some(&s.token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    let (_, left) = s.get(&format!("/v1/secrets?filter[app_id]={app}")).await;
    assert_eq!(left["data"].as_array().map(Vec::len), Some(0), "{left:#}");
    // A viewer sees no secrets at all.
    let org = s.admin_org().await;
    let (_, viewer) = s.member_with_role(&org, "viewer", "v@example.com").await;
    assert_eq!(s.get_as(&viewer, "/v1/secrets").await.0, 403);
}

async fn app_env_is_encrypted_at_rest_and_write_only_values_are_never_shown(s: TestServer) {
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "envy", "image": "nginx:alpine", "replicas": 0, "env": {
                "PLAIN": "plain-env-value-123",
                "HIDDEN": {"value": "hidden-env-value-456", "encrypted": true},
                "MARKED_OPEN": {"value": "open-env-value-789", "encrypted": false},
            }}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, app) = s.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(
        app["env"]["PLAIN"],
        json!({"value": "plain-env-value-123", "encrypted": false})
    );
    assert_eq!(
        app["env"]["HIDDEN"],
        json!({"value": null, "encrypted": true})
    );
    assert_eq!(app["env"]["MARKED_OPEN"]["value"], "open-env-value-789");
    let stored = stored_text(&s).await;
    for v in [
        "plain-env-value-123",
        "hidden-env-value-456",
        "open-env-value-789",
    ] {
        assert!(!stored.contains(v), "{v} is in the store in plaintext");
    }
    // PATCH: merged; an unchanged value is no new version, a changed one is.
    let version = |a: &Value| a["version"].as_i64().unwrap();
    let before = version(&s.get(&format!("/v1/apps/{id}")).await.1);
    let patch = |env: Value| {
        let s = &s;
        let id = id.clone();
        async move {
            let r = s
                .call(
                    Method::PATCH,
                    &format!("/v1/apps/{id}"),
                    Some(&s.token),
                    Some(json!({"env": env})),
                )
                .await;
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            s.get(&format!("/v1/apps/{id}")).await.1
        }
    };
    let a = patch(json!({"PLAIN": "plain-env-value-123"})).await;
    assert_eq!(version(&a), before, "the same value: no new release");
    let a = patch(json!({"PLAIN": "changed-env-value", "HIDDEN": null, "NEW": {"value": "new-hidden", "encrypted": true}})).await;
    assert_eq!(version(&a), before + 1);
    assert_eq!(a["env"]["PLAIN"]["value"], "changed-env-value");
    assert!(a["env"].get("HIDDEN").is_none(), "{a:#}");
    assert_eq!(a["env"]["NEW"], json!({"value": null, "encrypted": true}));
    // A deploy keeps the env and its write-only marks.
    let r = s
        .post(
            &format!("/v1/apps/{id}/deploy"),
            &s.token,
            json!({"image": "nginx:1.27"}),
        )
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let (_, a) = s.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(a["env"]["NEW"], json!({"value": null, "encrypted": true}));
    assert_eq!(a["env"]["PLAIN"]["value"], "changed-env-value");
    let stored = stored_text(&s).await;
    for v in ["changed-env-value", "new-hidden"] {
        assert!(!stored.contains(v), "{v} is in the store in plaintext");
    }
    // Malformed values are a 400 naming the variable.
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "envy2", "image": "nginx:alpine", "env": {"X": {"value": "v", "encrypted": true, "extra": 1}}}),
        )
        .await;
    assert_eq!(r.status(), 400, "{}", r.text().await.unwrap());
}

/// Env values stored in plaintext by an older version are sealed when a
/// control plane starts, and still read back.
async fn plaintext_env_of_an_older_version_is_sealed_at_start(s: TestServer) {
    let agent = s.fake_agent("legacy-node", 4, 8 << 30).await;
    create(
        &s,
        json!({"name": "FROM_SECRET", "value": "secret-for-legacy"}),
    )
    .await;
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "legacy", "image": "nginx:alpine", "replicas": 1, "env": {"A": "x"}}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // What an older version wrote: the env in plaintext.
    for table in ["apps", "releases"] {
        let col = if table == "apps" { "id" } else { "app_id" };
        let rows = sqlx::query(&format!("SELECT spec FROM {table} WHERE {col} = $1"))
            .bind(&id)
            .fetch_all(s.store.pool())
            .await
            .unwrap();
        let mut spec: Value = serde_json::from_str(&rows[0].get::<String, _>("spec")).unwrap();
        spec["env"] = json!({"A": "legacy-plain-value", "PORTISH": "v1.2.3"});
        sqlx::query(&format!("UPDATE {table} SET spec = $1 WHERE {col} = $2"))
            .bind(spec.to_string())
            .bind(&id)
            .execute(s.store.pool())
            .await
            .unwrap();
    }
    // A control plane starting on this database seals them.
    let r2 = s.replica().await;
    let stored = stored_text(&s).await;
    assert!(!stored.contains("legacy-plain-value"), "sealed at start");
    let (_, a) = r2.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(a["env"]["A"]["value"], "legacy-plain-value", "{a:#}");
    assert_eq!(a["env"]["PORTISH"]["value"], "v1.2.3", "{a:#}");
    // The instance still receives them (and the organization's secret).
    let desired = agent.desired_of(&id).await;
    assert_eq!(desired.len(), 1, "{desired:?}");
    let env = &desired[0].env;
    assert_eq!(env.get("A").map(String::as_str), Some("legacy-plain-value"));
    assert_eq!(env.get("PORTISH").map(String::as_str), Some("v1.2.3"));
    assert_eq!(
        env.get("FROM_SECRET").map(String::as_str),
        Some("secret-for-legacy")
    );
}

/// `rotate-master-key` while the server runs: the data keys are wrapped by
/// the new key, the server carries on (old and new organizations), and a
/// replica holding only the new key opens everything.
async fn the_master_key_rotates_without_a_restart(s: TestServer) {
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "keep", "image": "nginx:alpine", "replicas": 0, "env": {"K": "kept-value"}}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    create(&s, json!({"name": "OLD", "value": "x"})).await;
    let old_file = std::fs::read_to_string(s.cfg.data_dir.join("master.key")).unwrap();
    let rotation = shellwego_server::serve::rotate_master_key(&s.cfg, None)
        .await
        .unwrap();
    assert_ne!(rotation.rotated.old_key_id, rotation.rotated.new_key_id);
    assert!(rotation.rotated.data_keys >= 1, "{rotation:?}");
    assert!(rotation.new_key.is_none(), "written to the key file");
    let file = std::fs::read_to_string(s.cfg.data_dir.join("master.key")).unwrap();
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(lines.len(), 2, "new, then old");
    assert_eq!(lines[1], old_file.trim());
    // The running server: reads what it had, and makes data keys for a new
    // organization under the new key.
    let (_, a) = s.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(a["env"]["K"]["value"], "kept-value");
    let (_, _, other) = s
        .org_with_user(shellwego_core::plan::Plan::Starter, "o@example.com")
        .await;
    let r = s
        .post(
            "/v1/secrets",
            &other,
            json!({"name": "NEW_ORG", "value": "y"}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // A replica with only the new key.
    let r2 = s
        .replica_with(|c| c.master_key = Some(lines[0].to_string()))
        .await;
    let (_, a) = r2.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(a["env"]["K"]["value"], "kept-value", "{a:#}");
    let (_, ev) = s.get("/v1/events?filter[type]=master_key.rotated").await;
    assert_eq!(
        ev["data"].as_array().map(Vec::len),
        Some(0),
        "a system event, in no organization's log"
    );
}

async fn deployments(s: &TestServer, app: &str) -> i64 {
    s.get(&format!("/v1/apps/{app}/deployments")).await.1["pagination"]["total"]
        .as_i64()
        .unwrap()
}

/// Expiry: a warning 7 days before, and the app rolled without it after.
async fn expiring_secrets_warn_and_expired_ones_are_rolled_out(s: TestServer) {
    let app = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "exp", "image": "nginx:alpine", "replicas": 0}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let soon =
        shellwego_core::time::rfc3339(shellwego_core::time::now() + chrono::Duration::days(3));
    let warned = create(
        &s,
        json!({"name": "SOON", "value": "a", "expires_at": soon}),
    )
    .await;
    let in_a_moment =
        shellwego_core::time::rfc3339(shellwego_core::time::now() + chrono::Duration::seconds(2));
    let gone = create(
        &s,
        json!({"name": "BRIEF", "value": "b", "app_id": app, "expires_at": in_a_moment}),
    )
    .await;
    let before = deployments(&s, &app).await;
    let ctx = s.started.as_ref().unwrap().ctx.clone();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    shellwego_server::controller::secrets::sweep(&ctx)
        .await
        .unwrap();
    let (_, ev) = s
        .get("/v1/events?filter[type]=secret.expiring,secret.expired")
        .await;
    let got: Vec<(String, String)> = ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["resource"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        got.contains(&(
            "secret.expiring".into(),
            warned["id"].as_str().unwrap().into()
        )),
        "{ev:#}"
    );
    assert!(
        got.contains(&("secret.expired".into(), gone["id"].as_str().unwrap().into())),
        "{ev:#}"
    );
    assert_eq!(
        deployments(&s, &app).await,
        before + 1,
        "the app rolled without it"
    );
    // Once only.
    shellwego_server::controller::secrets::sweep(&ctx)
        .await
        .unwrap();
    let (_, again) = s
        .get("/v1/events?filter[type]=secret.expiring,secret.expired")
        .await;
    assert_eq!(again["data"].as_array().unwrap().len(), got.len());
    // A deleted secret that no instance's release pins is purged.
    let gone_id = gone["id"].as_str().unwrap();
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/secrets/{}", warned["id"].as_str().unwrap()),
            Some(&s.token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    shellwego_server::controller::secrets::sweep(&ctx)
        .await
        .unwrap();
    let left: Vec<String> = sqlx::query("SELECT id FROM secrets")
        .fetch_all(s.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("id"))
        .collect();
    assert_eq!(
        left,
        [gone_id.to_string()],
        "the expired one stays (not deleted)"
    );
}

both_backends!(
    secrets_are_write_only_and_encrypted_at_rest,
    app_env_is_encrypted_at_rest_and_write_only_values_are_never_shown,
    plaintext_env_of_an_older_version_is_sealed_at_start,
    the_master_key_rotates_without_a_restart,
    expiring_secrets_warn_and_expired_ones_are_rolled_out,
);
