//! What outside testing broke (issue 11): slow clients, connection caps,
//! protocol errors as problems, filter depth, lockout behind proxies, free
//! organizations, the token rotation race, names, token scopes beyond the
//! role, and `restrict_to_apps`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_core::plan::Plan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, slug, TestServer, ADMIN_PASSWORD};
use shellwego_testkit::Backend;

fn addr(s: &TestServer) -> SocketAddr {
    s.started.as_ref().unwrap().addr
}

/// Connect to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    sock.connect(to).await.unwrap()
}

/// Whether the server has closed `c` (EOF or reset) within `within`.
async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (to a complete request): keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Send `bytes` on a fresh connection and read the whole answer (the
/// server closes after it).
async fn raw(to: SocketAddr, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(to).await.unwrap();
    c.write_all(bytes).await.unwrap();
    let mut out = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status, lower-cased headers and body of a raw HTTP/1.1 response.
fn parse(resp: &str) -> (u16, String, Value) {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn assert_raw_problem(resp: &str, status: u16) -> Value {
    let (code, head, body) = parse(resp);
    assert_eq!(code, status, "{resp}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert_eq!(body["status"], status, "{resp}");
    for k in ["type", "title", "detail", "trace_id"] {
        assert!(body[k].is_string(), "problem lacks {k}: {body}");
    }
    body
}

// --- 1. Slow clients ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_are_closed_while_healthz_answers() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.header_read_timeout = Duration::from_secs(1);
        c.http.max_connections_per_ip = 5000;
    })
    .await
    .unwrap();
    let to = addr(&s);
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut c = TcpStream::connect(to).await.unwrap();
        // Half send a partial head, half nothing at all.
        if i % 2 == 0 {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        conns.push(c);
    }
    // Meanwhile the server answers others.
    for _ in 0..5 {
        let r = s.call(Method::GET, "/healthz", None, None).await;
        assert_eq!(r.status(), 200);
    }
    // Every one is closed within the header timeout (plus slack for the
    // time it took to open them all).
    let budget = Duration::from_secs(1) + opened.elapsed() + Duration::from_secs(3);
    let waits = conns.iter_mut().map(|c| closed_within(c, budget));
    let closed = futures::future::join_all(waits).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} of 1000 half-open connections still open");
    let r = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dribbled_too_slowly_gets_408_and_the_connection_ends() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.body_read_timeout = Duration::from_secs(1);
        c.http.body_min_rate = 1000;
    })
    .await
    .unwrap();
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"POST /v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = vec![];
    let reader = async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the server ends a slow body");
    assert!(started.elapsed() < Duration::from_secs(5));
    let resp = String::from_utf8_lossy(&out);
    let p = assert_raw_problem(&resp, 408);
    assert!(p["detail"].as_str().unwrap().contains("too slowly"), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.idle_timeout = Duration::from_secs(1);
    })
    .await
    .unwrap();
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive for a moment, then closed.
    assert!(!closed_within(&mut c, Duration::from_millis(300)).await);
    assert!(closed_within(&mut c, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_refused_others_are_served() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.max_connections_per_ip = 3;
    })
    .await
    .unwrap();
    let to = addr(&s);
    let mut held = vec![];
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 3], to).await);
    }
    let mut fourth = connect_from([127, 0, 0, 3], to).await;
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await);
    // Another address is served.
    let mut other = connect_from([127, 0, 0, 4], to).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = vec![];
    other.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    // A place freed is a place taken.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from([127, 0, 0, 3], to).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = vec![];
    again.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_total_cap_are_refused() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.max_connections = 3;
    })
    .await
    .unwrap();
    let to = addr(&s);
    let mut held = vec![];
    for last in [5, 6, 7] {
        held.push(connect_from([127, 0, 0, last], to).await);
    }
    let mut fourth = connect_from([127, 0, 0, 8], to).await;
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status(), 200);
}

// --- 8. Errors from the HTTP layer are problems --------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_of_the_http_layer_are_problem_documents() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let to = addr(&s);
    // A NUL byte in a header: hyper refuses to parse it.
    let r = raw(
        to,
        b"GET /v1/user HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\n\r\n",
    )
    .await;
    let p = assert_raw_problem(&r, 400);
    assert!(p["detail"].as_str().unwrap().contains("NUL"), "{p}");
    // A URI longer than hyper takes (64 KiB).
    let long = format!(
        "GET /v1/events?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    assert_raw_problem(&raw(to, long.as_bytes()).await, 414);
    // A URI longer than we take.
    let r = s
        .call(
            Method::GET,
            &format!("/v1/events?filter[q]={}", "a".repeat(40_000)),
            Some(&s.token),
            None,
        )
        .await;
    problem(r, 414).await;
    // Headers larger than hyper's buffer.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-Big-{i}: {}\r\n", "b".repeat(8000)))
            .collect::<String>()
    );
    assert_raw_problem(&raw(to, big.as_bytes()).await, 431);
}

// --- 2. Filter depth -------------------------------------------------------------

async fn repeated_filters_are_a_400_naming_the_parameter(s: TestServer) {
    let q: String = (0..997)
        .map(|i| format!("filter[type]=t{i}"))
        .collect::<Vec<_>>()
        .join("&");
    let r = s
        .call(
            Method::GET,
            &format!("/v1/events?{q}"),
            Some(&s.token),
            None,
        )
        .await;
    let p = problem(r, 400).await;
    assert_eq!(fields(&p), ["filter[type]"]);
    // Many values in one parameter are capped too.
    let vals: String = (0..150)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let r = s
        .call(
            Method::GET,
            &format!("/v1/events?filter[type]={vals}"),
            Some(&s.token),
            None,
        )
        .await;
    let p = problem(r, 400).await;
    assert_eq!(fields(&p), ["filter[type]"]);
    // Within the caps, a list answers.
    let (status, _) = s
        .get("/v1/events?filter[type]=a,b,c&filter[severity]=info")
        .await;
    assert_eq!(status, 200);
}

// --- 3. Lockout behind a proxy ------------------------------------------------------

async fn login_via(s: &TestServer, forwarded_for: &str, body: Value) -> reqwest::Response {
    s.http
        .post(s.url("/v1/auth/token"))
        .header("x-forwarded-for", forwarded_for)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_one_address_slow_it_down_without_locking_out_a_right_password() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.trusted_proxies =
            shellwego_net::client_ip::TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap()]);
    })
    .await
    .unwrap();
    let attacker = "203.0.113.66";
    // 21 failures from one client address, spread over accounts so that
    // none of them is locked. (The anonymous rate limit allows a burst of
    // 20, then one request every 0.6 s.)
    for i in 0..21 {
        if i >= 19 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let r = login_via(
            &s,
            attacker,
            json!({"email": format!("nobody{i}@example.com"), "password": "guess"}),
        )
        .await;
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    // A right password from that address (a colleague behind the same
    // NAT) still works, at once.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = Instant::now();
    let r = login_via(
        &s,
        attacker,
        json!({"email": "admin@localhost", "password": ADMIN_PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(t.elapsed() < Duration::from_secs(1));
    // A wrong one from it waits for its answer.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = Instant::now();
    let r = login_via(
        &s,
        attacker,
        json!({"email": "nobody@example.com", "password": "guess"}),
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    // Another client behind the same proxy is not slowed.
    let t = Instant::now();
    let r = login_via(
        &s,
        "198.51.100.7",
        json!({"email": "nobody@example.com", "password": "guess"}),
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(t.elapsed() < Duration::from_secs(1));
    // The events carry the real client address.
    let (_, ev) = s.get("/v1/events?filter[type]=user.login").await;
    assert_eq!(ev["data"][0]["actor"]["ip"], attacker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_of_untrusted_peers_are_ignored() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let r = login_via(
        &s,
        "203.0.113.9",
        json!({"email": "admin@localhost", "password": ADMIN_PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let (_, ev) = s.get("/v1/events?filter[type]=user.login").await;
    assert_eq!(ev["data"][0]["actor"]["ip"], "127.0.0.1");
}

// --- 4. Free organizations ------------------------------------------------------

async fn one_user_owns_one_free_organization(s: TestServer) {
    let (_, _, owner) = s.org_with_user(Plan::Free, "free@example.com").await;
    let p = problem(
        s.call(
            Method::POST,
            "/v1/organizations",
            Some(&owner),
            Some(json!({"name": "Second Free"})),
        )
        .await,
        429,
    )
    .await;
    assert_eq!(slug(&p), "quota-exceeded");
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("max_free_orgs_per_user"));
    // An owner of a paid organization may still start one free one.
    let r = s
        .call(
            Method::POST,
            "/v1/organizations",
            Some(&s.token),
            Some(json!({"name": "Side Project"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = s
        .call(
            Method::POST,
            "/v1/organizations",
            Some(&s.token),
            Some(json!({"name": "Side Project 2"})),
        )
        .await;
    problem(r, 429).await;
    // Nothing half-made: the refused one does not exist.
    let (_, l) = s.get("/v1/organizations?filter[name]=Side Project 2").await;
    assert_eq!(l["data"].as_array().unwrap().len(), 0, "{l}");
}

// --- 5. Token rotation race --------------------------------------------------------

async fn concurrent_rotations_of_one_token_have_one_winner(s: TestServer) {
    let created = s
        .call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/v1/user/tokens/{id}/rotate");
    let calls = (0..10).map(|_| s.call(Method::POST, &path, Some(&s.token), None));
    let answers = futures::future::join_all(calls).await;
    let mut secrets = vec![];
    let mut conflicts = 0;
    for r in answers {
        match r.status().as_u16() {
            200 => {
                let b: Value = r.json().await.unwrap();
                secrets.push(b["token"].as_str().unwrap().to_string());
            }
            409 => {
                problem(r, 409).await;
                conflicts += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(secrets.len(), 1, "exactly one rotation succeeds");
    assert_eq!(conflicts, 9);
    let (status, _) = s.get_as(&secrets[0], "/v1/user").await;
    assert_eq!(status, 200, "the winner's secret works");
}

// --- 7. Names -----------------------------------------------------------------

async fn names_with_invisible_or_reordering_characters_are_refused(s: TestServer) {
    for (path, body, field) in [
        (
            "/v1/user/tokens",
            json!({"name": "deploy\u{202E}gpj.exe"}),
            "name",
        ),
        ("/v1/user/tokens", json!({"name": "ci\u{200B}"}), "name"),
        (
            "/v1/organizations",
            json!({"name": "Acme\u{2066}Corp"}),
            "name",
        ),
        ("/v1/nodes", json!({"hostname": "héllo"}), "hostname"),
        ("/v1/nodes", json!({"hostname": "node🚀"}), "hostname"),
        ("/v1/nodes", json!({"hostname": "Web-1"}), "hostname"),
        ("/v1/nodes", json!({"hostname": "-web"}), "hostname"),
        ("/v1/nodes", json!({"hostname": "a..b"}), "hostname"),
    ] {
        let p = problem(
            s.call(Method::POST, path, Some(&s.token), Some(body.clone()))
                .await,
            400,
        )
        .await;
        assert_eq!(fields(&p), [field], "{body}");
    }
    let r = s
        .call(
            Method::POST,
            "/v1/nodes",
            Some(&s.token),
            Some(json!({"hostname": "web-1.example.com"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = s
        .call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(json!({"name": "Déploiement 🚀 日本"})),
        )
        .await;
    assert_eq!(r.status(), 201);
}

// --- 10. and 11. What a token may be given ----------------------------------------

async fn a_token_cannot_claim_more_than_its_role_or_apps_that_do_not_exist(s: TestServer) {
    let org = s.admin_org().await;
    let (_, viewer) = s
        .member_with_role(&org, "viewer", "viewer@example.com")
        .await;
    let p = problem(
        s.call(
            Method::POST,
            "/v1/user/tokens",
            Some(&viewer),
            Some(json!({"name": "too much", "scope": ["apps:read", "apps:write", "nodes:write"]})),
        )
        .await,
        403,
    )
    .await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("apps:write")
            && detail.contains("nodes:write")
            && !detail.contains("apps:read"),
        "{detail}"
    );
    let r = s
        .call(
            Method::POST,
            "/v1/user/tokens",
            Some(&viewer),
            Some(json!({"name": "reader", "scope": ["apps:read"]})),
        )
        .await;
    assert_eq!(r.status(), 201);

    // restrict_to_apps: an app that does not exist, and one of another
    // organization, are named.
    let mine: Value = s
        .call(
            Method::POST,
            "/v1/apps",
            Some(&s.token),
            Some(json!({"name": "mine", "image": "x", "replicas": 0})),
        )
        .await
        .json()
        .await
        .unwrap();
    let mine = mine["id"].as_str().unwrap().to_string();
    let (_, _, other_token) = s.org_with_user(Plan::Starter, "other@example.com").await;
    let theirs: Value = s
        .call(
            Method::POST,
            "/v1/apps",
            Some(&other_token),
            Some(json!({"name": "theirs", "image": "x", "replicas": 0})),
        )
        .await
        .json()
        .await
        .unwrap();
    let theirs = theirs["id"].as_str().unwrap().to_string();
    let p = problem(
        s.call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(
                json!({"name": "narrow", "restrict_to_apps": [mine, "app_doesnotexist1", theirs]}),
            ),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["restrict_to_apps[1]", "restrict_to_apps[2]"]);
    let r = s
        .call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(json!({"name": "narrow", "restrict_to_apps": [mine]})),
        )
        .await;
    assert_eq!(r.status(), 201);
}

both_backends!(
    repeated_filters_are_a_400_naming_the_parameter,
    one_user_owns_one_free_organization,
    concurrent_rotations_of_one_token_have_one_winner,
    names_with_invisible_or_reordering_characters_are_refused,
    a_token_cannot_claim_more_than_its_role_or_apps_that_do_not_exist,
);
