//! The client against a scripted fake API on a local port (nothing
//! external): the requests its typed calls send (method, path, query,
//! headers, body), how answers are typed and kept, list paging, and how
//! errors come back.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shellwego_api::agent::{AgentJoin, AgentSync, PROTOCOL_HEADER};
use shellwego_api::apps::ScaleRequest;
use shellwego_client::agent::{AgentClient, AgentError};
use shellwego_client::{ApiError, AppAction, Client, ListQuery, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request the fake API received.
#[derive(Debug, Clone)]
struct Seen {
    /// `GET /v1/apps?x=y`
    line: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A fake API answering each connection's one request with the next of
/// `answers` (status, content type, body); what it received is kept.
struct Fake {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start(answers: Vec<(u16, &'static str, String)>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, content_type, body) in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                let req = read_request(&mut s).await;
                log.lock().unwrap().push(req);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).await.unwrap();
                let _ = s.shutdown().await;
            }
        });
        Fake { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Seen {
    let mut buf = vec![];
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed before a whole request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap();
    let line = request_line
        .rsplit_once(' ')
        .map(|(l, _)| l.to_string())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.unwrap();
        body.extend_from_slice(&chunk[..n]);
    }
    Seen {
        line,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

fn ok(body: Value) -> (u16, &'static str, String) {
    (200, "application/json", body.to_string())
}

fn app(id: &str, status: &str) -> Value {
    json!({
        "id": id, "name": "web", "slug": "web", "status": status,
        "status_reason": null, "image": "nginx:alpine", "command": null,
        "resources": {}, "env": {}, "domains": [], "volumes": [],
        "replicas": {"current": 1, "desired": 1, "healthy": 1},
        "networking": {"internal_dns": "web.internal", "public": true, "allowed_egress": []},
        "health_check": {}, "source": null, "placement": {},
        "runtime": {"driver": null, "requested": null, "kernel_version": null,
            "microvm_version": null, "firecracker_version": null},
        "instances": [], "deployment_id": null, "version": 1, "autoscale": null,
        "created_at": "t", "updated_at": "t", "created_by": null,
        "organization_id": "org_1", "tags": []
    })
}

fn member(id: &str) -> Value {
    json!({"user_id": id, "email": format!("{id}@example.com"), "name": id, "role": "viewer",
        "resources": [], "mfa_enabled": false, "joined_at": "t"})
}

fn pagination(next: Option<&str>) -> Value {
    json!({"total": 3, "limit": 2, "has_more": next.is_some(), "next_cursor": next,
        "prev_cursor": null, "first_cursor": null, "last_cursor": null})
}

#[tokio::test]
async fn typed_calls_send_their_route_and_token_and_keep_the_body() {
    let fake = Fake::start(vec![
        ok(app("app_1", "running")),
        ok(app("app_1", "running")),
        (204, "text/plain", String::new()),
    ])
    .await;
    let c = Client::new(&format!("{}/", fake.url), Some("pat_x".into())).unwrap();

    let a = c.apps().get("app_1").await.unwrap();
    assert_eq!(a.name, "web");
    assert_eq!(a.body(), &app("app_1", "running"));
    let a = c
        .apps()
        .scale(
            "app_1",
            &ScaleRequest {
                replicas: Some(3),
                strategy: None,
                constraints: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(a.into_inner().id, "app_1");
    c.apps().delete("app 1/x", true).await.unwrap();

    let seen = fake.seen();
    assert_eq!(seen[0].line, "GET /v1/apps/app_1");
    assert_eq!(seen[0].header("authorization"), Some("Bearer pat_x"));
    assert_eq!(
        seen[0].header("accept"),
        Some("application/json, application/problem+json")
    );
    assert!(seen[0]
        .header("user-agent")
        .is_some_and(|u| u.starts_with("shellwego-client/")));
    assert_eq!(seen[1].line, "POST /v1/apps/app_1/scale");
    let sent: Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(sent["replicas"], 3);
    // Path segments are encoded; a 204 is no error.
    assert_eq!(seen[2].line, "DELETE /v1/apps/app%201%2Fx?force=true");
}

#[tokio::test]
async fn actions_without_a_body_send_none_and_login_sends_no_token() {
    let fake = Fake::start(vec![
        ok(app("app_1", "stopped")),
        ok(
            json!({"id": "tok_1", "name": "cli", "token": "pat_new", "type": "session_token",
            "scope": [], "restrict_to_apps": [], "expires_at": null,
            "permissions": {"resources": [], "actions": []}}),
        ),
    ])
    .await;
    let c = Client::new(&fake.url, Some("pat_stale".into())).unwrap();
    let a = c.apps().action("app_1", &AppAction::Stop).await.unwrap();
    assert_eq!(a.status, shellwego_api::model::AppStatus::Stopped);
    let login = shellwego_api::auth::LoginRequest {
        email: "a@example.com".into(),
        password: "pw".into(),
        mfa_code: Some("123456".into()),
        scope: vec![],
        token_type: None,
        organization_id: None,
    };
    let anonymous = c.anonymous();
    assert!(!anonymous.has_token());
    let t = anonymous.auth().login(&login).await.unwrap();
    assert_eq!(t.token, "pat_new");

    let seen = fake.seen();
    assert_eq!(seen[0].line, "POST /v1/apps/app_1/actions/stop");
    assert_eq!(seen[0].body, "");
    assert_eq!(seen[1].line, "POST /v1/auth/token");
    assert_eq!(seen[1].header("authorization"), None);
    let sent: Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(sent["mfa_code"], "123456");
}

#[tokio::test]
async fn all_pages_are_joined_into_one_list() {
    let fake = Fake::start(vec![
        ok(json!({"data": [member("u1"), member("u2")], "pagination": pagination(Some("c2"))})),
        ok(json!({"data": [member("u3")], "pagination": pagination(None)})),
    ])
    .await;
    let c = Client::new(&fake.url, Some("pat_x".into())).unwrap();
    let q = ListQuery::new()
        .filter("role", "viewer")
        .limit(Some(2))
        .all(true);
    let l = c.orgs().members("org_1", &q).await.unwrap();
    let ids: Vec<&str> = l.data.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(ids, ["u1", "u2", "u3"]);
    assert!(!l.pagination.has_more);
    assert_eq!(l.body()["data"].as_array().unwrap().len(), 3);

    let seen = fake.seen();
    assert_eq!(
        seen[0].line,
        "GET /v1/organizations/org_1/members?filter%5Brole%5D=viewer&limit=2"
    );
    assert_eq!(
        seen[1].line,
        "GET /v1/organizations/org_1/members?filter%5Brole%5D=viewer&limit=2&cursor=c2"
    );
}

#[tokio::test]
async fn a_cursor_seen_twice_ends_the_paging() {
    let page = json!({"data": [member("u1")], "pagination": pagination(Some("c2"))});
    let fake = Fake::start(vec![ok(page.clone()), ok(page.clone()), ok(page)]).await;
    let c = Client::new(&fake.url, Some("pat_x".into())).unwrap();
    let e = c
        .tokens()
        .list(&ListQuery::new().all(true))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unexpected response from v1/user/tokens: the API returned the same cursor twice"
    );
}

#[tokio::test]
async fn errors_keep_the_problem_or_the_status() {
    let problem = json!({"type": "t", "title": "Not Found", "status": 404,
        "detail": "app 'app_x' was not found", "instance": "/v1/apps/app_x", "trace_id": "req_1"});
    let fake = Fake::start(vec![
        (404, "application/problem+json", problem.to_string()),
        (502, "text/html", "<html>bad gateway</html>".into()),
        ok(json!({"not": "a deployment"})),
    ])
    .await;
    let c = Client::new(&fake.url, Some("pat_x".into())).unwrap();
    let e = c.apps().get("app_x").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(
        e.report(),
        "error: app 'app_x' was not found\n  trace_id: req_1\n"
    );
    let e = c.deployments().get("dep_1").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}/v1/deployments/dep_1 answered 502 Bad Gateway: <html>bad gateway</html>",
            fake.url
        )
    );
    let e = c.deployments().get("dep_1").await.unwrap_err();
    assert!(
        matches!(&e, ApiError::Decode { url, .. } if url == "GET /v1/deployments/{deployment_id}"),
        "{e:?}"
    );
}

#[tokio::test]
async fn no_answer_is_a_transport_error_and_no_token_fails_before_sending() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
    assert!(matches!(c.require_token(), Err(ApiError::NoToken)));
    let e = c.user().get().await.unwrap_err();
    assert!(matches!(e, ApiError::Transport { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!(
            "cannot reach the API at http://127.0.0.1:{port}/v1/user: "
        )),
        "{e}"
    );
}

#[tokio::test]
async fn a_followed_log_is_a_stream_of_events() {
    use futures::StreamExt;
    let fake = Fake::start(vec![(
        200,
        "text/event-stream",
        "id: 1\ndata: t1 pulling\n\nevent: end\ndata: the deployment has ended\n\n".into(),
    )])
    .await;
    let c = Client::new(&fake.url, Some("pat_x".into())).unwrap();
    let events: Vec<_> = c
        .deployments()
        .follow_logs("dep_1")
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(
        events,
        [
            shellwego_client::LogEvent::Data("t1 pulling".into()),
            shellwego_client::LogEvent::End
        ]
    );
    let seen = fake.seen();
    assert_eq!(seen[0].line, "GET /v1/deployments/dep_1/logs?follow=true");
    assert_eq!(
        seen[0].header("accept"),
        Some("text/event-stream, application/problem+json")
    );
}

#[tokio::test]
async fn the_agent_client_names_its_protocol_and_its_credential() {
    let refused = json!({"type": "t", "title": "Unauthorized", "status": 401,
        "detail": "The join token is invalid, used or expired.", "instance": "/v1/agent/join", "trace_id": "r"});
    let fake = Fake::start(vec![
        (401, "application/problem+json", refused.to_string()),
        ok(json!({"node_id": "node_1", "credential": "nsec_1", "sync_wait_secs": 5})),
        ok(json!({"generation": 3, "instances": []})),
        (401, "application/problem+json", refused.to_string()),
        (200, "application/octet-stream", "archive".into()),
    ])
    .await;
    let c = AgentClient::new(&format!("{}/", fake.url), Duration::from_secs(30)).unwrap();
    let report = AgentJoin {
        join_token: "sw_join_x".into(),
        cpu_cores: 2,
        ..Default::default()
    };
    match c.join(&report).await {
        Err(AgentError::Refused { status, detail }) => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(
                detail.as_deref(),
                Some("The join token is invalid, used or expired.")
            );
        }
        other => panic!("{other:?}"),
    }
    let joined = c.join(&report).await.unwrap();
    let c = c.with_credential(&joined.credential);
    let desired = c
        .sync(&AgentSync::default())
        .await
        .unwrap()
        .desired()
        .await
        .unwrap();
    assert_eq!(desired.generation, 3);
    assert!(matches!(
        c.sync(&AgentSync::default()).await,
        Err(AgentError::Refused { status, .. }) if status == StatusCode::UNAUTHORIZED
    ));
    let archive = c
        .upload("/v1/agent/uploads/upl_1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(archive, "archive");

    let seen = fake.seen();
    let lines: Vec<&str> = seen.iter().map(|s| s.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "POST /v1/agent/join",
            "POST /v1/agent/join",
            "POST /v1/agent/sync",
            "POST /v1/agent/sync",
            "GET /v1/agent/uploads/upl_1"
        ]
    );
    let header = PROTOCOL_HEADER.to_lowercase();
    for s in &seen {
        assert_eq!(s.header(&header), Some("1"), "{}", s.line);
    }
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[2].header("authorization"), Some("Bearer nsec_1"));
    assert_eq!(seen[4].header("authorization"), Some("Bearer nsec_1"));
}
