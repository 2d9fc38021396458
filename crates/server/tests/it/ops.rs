//! Health, readiness, metrics, restarts and graceful shutdown.

use std::time::Duration;

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use shellwego_store::orgs;
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{problem, slug, Schema, TestServer};
use shellwego_testkit::Backend;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    assert_eq!(
        s.call(Method::GET, "/healthz", None, None).await.status(),
        200
    );
    assert_eq!(
        s.call(Method::GET, "/readyz", None, None).await.status(),
        200
    );
    assert_eq!(s.get("/v1/user").await.0, 200);
    assert_eq!(s.get("/v1/user").await.0, 200);
    assert_eq!(s.get("/v1/nodes/node_nope").await.0, 404);
    let r = s.call(Method::GET, "/metrics", None, None).await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("text"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains(
            r#"shellwego_http_requests_total{method="GET",route="/v1/user",status="200"} 2"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"shellwego_http_requests_total{method="GET",route="/v1/nodes/{node_id}",status="404"} 1"#), "{text}");
    assert!(
        text.contains(r#"shellwego_http_request_duration_seconds_bucket{le="#)
            || text.contains("shellwego_http_request_duration_seconds_bucket{")
    );
    assert!(text.contains(r#"shellwego_http_request_duration_seconds_count{method="GET",route="/v1/user",status="200"} 2"#), "{text}");

    // The store goes away: not ready, but alive.
    s.store.close().await;
    let p = problem(s.call(Method::GET, "/readyz", None, None).await, 503).await;
    assert_eq!(slug(&p), "service-unavailable");
    assert_eq!(
        s.call(Method::GET, "/healthz", None, None).await.status(),
        200
    );
}

async fn a_restart_does_not_bootstrap_again(mut s: TestServer) {
    let token_before = s.token.clone();
    let mut db = s.store.conn().await.unwrap();
    let orgs_before = orgs::count(&mut db).await.unwrap();
    drop(db);
    assert_eq!(orgs_before, 1);
    s.started.take().unwrap().shutdown().await.unwrap();
    let again = shellwego_server::serve::start(s.cfg.clone()).await.unwrap();
    let token_after = std::fs::read_to_string(s.cfg.admin_token_path()).unwrap();
    assert_eq!(
        token_after, token_before,
        "the admin token file was rewritten"
    );
    let r = s
        .http
        .get(format!("http://{}/v1/user", again.addr))
        .bearer_auth(&token_before)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut db = again.ctx.store.conn().await.unwrap();
    assert_eq!(orgs::count(&mut db).await.unwrap(), 1);
    drop(db);
    again.shutdown().await.unwrap();
}

both_backends!(a_restart_does_not_bootstrap_again);

#[tokio::test]
async fn admin_token_file_is_private_and_holds_only_the_token() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let path = s.cfg.admin_token_path();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let content = std::fs::read_to_string(&path).unwrap();
    assert_eq!(content, content.trim());
    assert!(shellwego_core::token::looks_valid(&content));
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let mut s = TestServer::start(Backend::Sqlite).await.unwrap();
    let started = s.started.take().unwrap();
    let addr = started.addr;
    let body = br#"{"name": "made during shutdown"}"#;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/user/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        s.token,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Shut down while the request is still arriving.
    let shutdown = tokio::spawn(started.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused meanwhile.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown began"
    );
    conn.write_all(&body[10..]).await.unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    shutdown.await.unwrap().unwrap();
}

async fn migrations_apply_to_an_empty_database_and_rerun_cleanly(backend: Backend) {
    // Not the kit's migrated template: the server migrates an empty
    // database at start; running again is a no-op.
    let Some(s) = TestServer::start_on(backend, Schema::Empty, |_| {}).await else {
        return;
    };
    s.store.migrate().await.unwrap();
    for table in [
        "organizations",
        "users",
        "memberships",
        "tokens",
        "events",
        "nodes",
        "labels",
        "system_state",
    ] {
        let q = format!("SELECT COUNT(*) AS n FROM {table}");
        sqlx::query(&q)
            .fetch_one(s.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
}

mod migrations_apply_to_an_empty_database_and_rerun_cleanly {
    use shellwego_testkit::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::migrations_apply_to_an_empty_database_and_rerun_cleanly(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::migrations_apply_to_an_empty_database_and_rerun_cleanly(Backend::Postgres).await
    }
}
