//! Bad input is a 400 naming the field; unknown routes 404, wrong methods
//! 405, panics a generic 500 — all as problem documents.

use axum::routing::get;
use reqwest::Method;
use serde_json::{json, Value};

use shellwego_testkit::server::{fields, problem, slug, TestServer};
use shellwego_testkit::Backend;

#[tokio::test]
async fn bodies_with_typos_bad_json_and_out_of_range_values_name_the_field() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let post = |body: &'static str| {
        s.http
            .post(s.url("/v1/user/tokens"))
            .bearer_auth(&s.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A typo'd field.
    let p = problem(
        post(r#"{"name": "ci", "expire_in": "30d"}"#).await.unwrap(),
        400,
    )
    .await;
    assert_eq!(slug(&p), "validation-failed");
    assert_eq!(fields(&p), ["expire_in"]);
    assert_eq!(p["errors"][0]["code"], "unknown_field");
    assert!(p["detail"].as_str().unwrap().contains("expire_in"));
    // Malformed JSON.
    let p = problem(post(r#"{"name": "ci","#).await.unwrap(), 400).await;
    assert_eq!(fields(&p), ["body"]);
    assert_eq!(p["errors"][0]["code"], "malformed");
    // A wrong type.
    let p = problem(post(r#"{"name": 5}"#).await.unwrap(), 400).await;
    assert_eq!(fields(&p), ["name"]);
    assert_eq!(p["errors"][0]["code"], "invalid_type");
    // A missing field.
    let p = problem(post(r#"{}"#).await.unwrap(), 400).await;
    assert_eq!(fields(&p), ["name"]);
    assert_eq!(p["errors"][0]["code"], "required");
    // Out of range.
    let p = problem(
        post(r#"{"name": "ci", "expires_in": "500d"}"#)
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(fields(&p), ["expires_in"]);
    assert_eq!(p["errors"][0]["code"], "out_of_range");
    assert_eq!(p["errors"][0]["value"], "500d");
    // Several problems at once are all reported.
    let p = problem(
        post(r#"{"name": "", "scope": ["apps"], "restrict_to_apps": ["nope"]}"#)
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(fields(&p), ["name", "scope[0]", "restrict_to_apps[0]"]);
    // Nothing was written by any of these.
    let (_, list) = s.get("/v1/user/tokens").await;
    assert_eq!(list["pagination"]["total"], 1);
}

async fn nul_bytes_and_huge_bodies_are_4xx(s: TestServer) {
    let r = s
        .call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(json!({"name": "a\u{0}b"})),
        )
        .await;
    let p = problem(r, 400).await;
    assert_eq!(fields(&p), ["name"]);
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(3 << 20));
    let r = s
        .http
        .post(s.url("/v1/user/tokens"))
        .bearer_auth(&s.token)
        .body(big)
        .send()
        .await
        .unwrap();
    let p = problem(r, 413).await;
    assert_eq!(slug(&p), "payload-too-large");
}

shellwego_testkit::both_backends!(nul_bytes_and_huge_bodies_are_4xx);

#[tokio::test]
async fn query_parameter_typos_are_400() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let p = problem(
        s.call(Method::GET, "/v1/events?limt=5", Some(&s.token), None)
            .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["limt"]);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let p = problem(
        s.call(Method::GET, "/v1/nope", Some(&s.token), None).await,
        404,
    )
    .await;
    assert_eq!(slug(&p), "resource-not-found");
    let p = problem(
        s.call(Method::DELETE, "/v1/user", Some(&s.token), None)
            .await,
        405,
    )
    .await;
    assert_eq!(slug(&p), "method-not-allowed");
    let p = problem(
        s.call(
            Method::GET,
            "/v1/nodes/node_doesnotexist",
            Some(&s.token),
            None,
        )
        .await,
        404,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("node_doesnotexist"));
}

#[tokio::test]
async fn a_panicking_handler_is_a_generic_500_and_the_server_keeps_serving() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let state = s.started.as_ref().unwrap().state.clone();
    #[allow(unreachable_code)]
    let router = axum::Router::new()
        .route(
            "/v1/boom",
            get(|| async {
                panic!("secret internal detail");
                ""
            }),
        )
        .route("/v1/ok", get(|| async { "fine" }));
    let app = shellwego_server::http::wrap(router, state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = reqwest::Client::new();
    for _ in 0..3 {
        let r = c
            .get(format!("http://{addr}/v1/boom"))
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("x-ratelimit-remaining"));
        let p = problem(r, 500).await;
        assert_eq!(slug(&p), "internal-error");
        assert!(
            !p.to_string().contains("secret internal detail"),
            "internal details leaked: {p}"
        );
    }
    let r = c.get(format!("http://{addr}/v1/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fine");
}

#[tokio::test]
async fn every_error_response_has_a_request_id() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let r = s.call(Method::GET, "/healthz", None, None).await;
    assert!(r
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok"}));
}
