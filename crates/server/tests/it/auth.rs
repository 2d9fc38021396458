//! Bearer tokens: the bootstrap token works; missing, garbage, malformed,
//! revoked and expired tokens are 401 problems.

use reqwest::Method;
use serde_json::json;
use shellwego_core::token::{self, TokenKind};

use shellwego_testkit::both_backends;
use shellwego_testkit::server::{problem, slug, TestServer};

async fn bootstrap_token_authenticates(s: TestServer) {
    let (status, user) = s.get("/v1/user").await;
    assert_eq!(status, 200);
    assert_eq!(user["email"], "admin@localhost");
    assert_eq!(user["organizations"][0]["role"], "owner");
    assert_eq!(
        user["api_quotas"]["requests_per_minute"], 50_000,
        "the bootstrap org is Enterprise"
    );
    assert!(token::looks_valid(&s.token) && s.token.starts_with("pat_"));
    // Only a hash is stored.
    let row = sqlx::query("SELECT token_hash FROM tokens")
        .fetch_all(s.store.pool())
        .await
        .unwrap();
    use sqlx::Row;
    let hashes: Vec<String> = row
        .iter()
        .map(|r| r.get::<String, _>("token_hash"))
        .collect();
    assert!(hashes.contains(&token::hash(&s.token)));
    assert!(!hashes.iter().any(|h| h.contains(&s.token[4..])));
    // The bootstrap is recorded as events.
    let (_, ev) = s
        .get("/v1/events?filter[type]=organization.created,user.created,token.created")
        .await;
    assert_eq!(ev["pagination"]["total"], 3);
}

async fn bad_tokens_get_401_problems(s: TestServer) {
    let garbage = "pat_thisisnotarealtokenbutithastherightshape0123";
    let unknown = token::generate(TokenKind::Pat).secret;
    for (name, header) in [
        ("none", None),
        ("garbage", Some(format!("Bearer {garbage}"))),
        ("unknown", Some(format!("Bearer {unknown}"))),
        ("not a token", Some("Bearer hello".to_string())),
        ("wrong scheme", Some(format!("Basic {}", s.token))),
        ("no value", Some("Bearer ".to_string())),
    ] {
        let mut r = s.http.get(s.url("/v1/user"));
        if let Some(h) = header {
            r = r.header("authorization", h);
        }
        let r = r.send().await.unwrap();
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{name}"
        );
        let p = problem(r, 401).await;
        assert_eq!(slug(&p), "authentication-required", "{name}");
    }
}

async fn revoked_and_expired_tokens_stop_working(s: TestServer) {
    // Make a token, use it, revoke it, and it is dead.
    let r = s
        .call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(json!({"name": "short-lived", "expires_in": "1h", "scope": ["apps:read"]})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let tok = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["type"], "personal_access_token");
    assert_eq!(created["scope"], json!(["apps:read"]));
    assert!(created["expires_at"].is_string());
    assert_eq!(s.get_as(&tok, "/v1/user").await.0, 200);
    // Listed without the secret.
    let (_, list) = s.get("/v1/user/tokens?filter[name]=short-lived").await;
    assert_eq!(list["pagination"]["total"], 1);
    let listed = &list["data"][0];
    assert!(listed.get("token").is_none());
    assert!(listed["hint"]
        .as_str()
        .unwrap()
        .ends_with(&tok[tok.len() - 4..]));
    let id = created["id"].as_str().unwrap();
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/user/tokens/{id}"),
            Some(&s.token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    let p = problem(s.call(Method::GET, "/v1/user", Some(&tok), None).await, 401).await;
    assert_eq!(slug(&p), "authentication-required");
    // Revoking again: not found.
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/user/tokens/{id}"),
            Some(&s.token),
            None,
        )
        .await;
    problem(r, 404).await;
    // The revocation is an event.
    let (_, ev) = s
        .get(&format!(
            "/v1/events?filter[type]=token.revoked&filter[resource_id]={id}"
        ))
        .await;
    assert_eq!(ev["pagination"]["total"], 1);
    assert_eq!(ev["data"][0]["actor"]["type"], "user");

    // An expired token.
    let r = s
        .call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(json!({"name": "expiring"})),
        )
        .await;
    let created: serde_json::Value = r.json().await.unwrap();
    let tok = created["token"].as_str().unwrap();
    sqlx::query("UPDATE tokens SET expires_at = 1 WHERE id = $1")
        .bind(created["id"].as_str().unwrap())
        .execute(s.store.pool())
        .await
        .unwrap();
    problem(s.call(Method::GET, "/v1/user", Some(tok), None).await, 401).await;
}

async fn token_use_is_recorded(s: TestServer) {
    assert_eq!(s.get("/v1/user").await.0, 200);
    // Recorded in the background, at most once a minute.
    let mut seen = false;
    for _ in 0..50 {
        let (_, list) = s
            .get("/v1/user/tokens?filter[name]=bootstrap admin token")
            .await;
        if list["data"][0]["last_used_at"].is_string() {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(seen, "last_used_at was never set");
}

async fn a_user_who_left_the_organization_loses_access(s: TestServer) {
    let (org, user, tok) = s
        .org_with_user(shellwego_core::plan::Plan::Free, "leaver@example.com")
        .await;
    assert_eq!(s.get_as(&tok, "/v1/user").await.0, 200);
    sqlx::query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
        .bind(&org)
        .bind(&user)
        .execute(s.store.pool())
        .await
        .unwrap();
    problem(s.call(Method::GET, "/v1/user", Some(&tok), None).await, 401).await;
}

both_backends!(
    a_user_who_left_the_organization_loses_access,
    bootstrap_token_authenticates,
    bad_tokens_get_401_problems,
    revoked_and_expired_tokens_stop_working,
    token_use_is_recorded
);
