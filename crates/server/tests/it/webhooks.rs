//! Webhooks (issue 15, item 3): deliveries the spec's Python
//! `verify_signature` accepts, in the spec's payload shape, with the
//! timestamped second signature; retries with growing pauses on 5xx (and
//! 408/429) but not on other 4xx; a durable outbox that survives a restart
//! of the control plane and a dead replica's claim; two replicas on one
//! PostgreSQL that deliver each event once; the SSRF guard at creation and
//! at delivery; disabling after the failing window; test pings and
//! redeliveries; and the secret never shown after creation.
//!
//! The receivers are small axum servers on 127.0.0.1 (the kit's servers
//! allow private targets, as a self-hosted setup on its own network would).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use shellwego_net::ssrf::SsrfConfig;
use shellwego_server::ServerConfig;
use shellwego_testkit::server::{fields, problem, TestServer};
use shellwego_testkit::Backend;

/// The spec's `verify_signature`, verbatim (platform-api.md, "Signature
/// Verification").
const VERIFY_SIGNATURE: &str = r#"import hmac
import hashlib

def verify_signature(payload, signature, secret):
    expected = hmac.new(
        secret.encode(),
        payload.encode(),
        hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", signature)
"#;

const SECRET: &str = "whsec_test_signing_secret_0123456789";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: HeaderMap,
    body: String,
    at: Instant,
    /// What it was answered.
    status: u16,
}

impl Got {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    fn delivery(&self) -> String {
        self.header("x-shellwego-delivery")
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

type Answer = Arc<dyn Fn(usize) -> u16 + Send + Sync>;

#[derive(Clone)]
struct Inbox {
    got: Arc<Mutex<Vec<Got>>>,
    n: Arc<AtomicUsize>,
    answer: Answer,
}

/// A webhook receiver on 127.0.0.1: answers request `n` (from 0) with
/// `answer(n)`, and keeps every request.
struct Receiver {
    addr: SocketAddr,
    inbox: Inbox,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Receiver {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::on(l, answer)
    }

    fn on(
        l: tokio::net::TcpListener,
        answer: impl Fn(usize) -> u16 + Send + Sync + 'static,
    ) -> Receiver {
        let inbox = Inbox {
            got: Arc::default(),
            n: Arc::default(),
            answer: Arc::new(answer),
        };
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(inbox.clone());
        let task = tokio::spawn(async move {
            axum::serve(l, app).await.unwrap();
        });
        Receiver { addr, inbox, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.inbox.got.lock().unwrap().clone()
    }

    /// Wait (up to 20 s) until `ok` holds of what was received.
    async fn wait(&self, what: &str, ok: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let t = Instant::now();
        loop {
            let got = self.got();
            if ok(&got) {
                return got;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{what}: got {} requests: {:#?}",
                got.len(),
                got.iter()
                    .map(|g| (g.delivery(), g.status, g.body.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: String) -> StatusCode {
    let n = inbox.n.fetch_add(1, Ordering::SeqCst);
    let status = (inbox.answer)(n);
    inbox.got.lock().unwrap().push(Got {
        headers,
        body,
        at: Instant::now(),
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

/// Webhook settings short enough for tests.
fn quick(c: &mut ServerConfig) {
    c.webhooks.retry_base = Duration::from_millis(200);
    c.webhooks.timeout = Duration::from_secs(2);
}

async fn server(backend: Backend) -> Option<TestServer> {
    TestServer::start_with(backend, quick).await
}

/// Run `$f(server)` once on each backend, with [`quick`] webhooks.
macro_rules! each_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(s) = super::server(shellwego_testkit::Backend::Sqlite).await {
                        super::$name(s).await
                    }
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(s) = super::server(shellwego_testkit::Backend::Postgres).await {
                        super::$name(s).await
                    }
                }
            }
        )*
    };
}

/// Create a webhook; the creation's body.
async fn create(s: &TestServer, body: Value) -> Value {
    let r = s.post("/v1/webhooks", &s.token, body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v:#}");
    v
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Make one `token.created` event; the token's id.
async fn token_event(s: &TestServer, name: &str) -> String {
    let r = s
        .post("/v1/user/tokens", &s.token, json!({"name": name}))
        .await;
    assert_eq!(r.status(), 201);
    id(&r.json::<Value>().await.unwrap())
}

/// The deliveries of webhook `w`, newest first.
async fn deliveries(s: &TestServer, w: &str) -> Vec<Value> {
    let (st, l) = s
        .get(&format!("/v1/webhooks/{w}/deliveries?limit=100"))
        .await;
    assert_eq!(st, 200, "{l:#}");
    l["data"].as_array().unwrap().clone()
}

/// Wait until delivery `d` of `w` is `status`; its view.
async fn delivery_is(s: &TestServer, w: &str, d: &str, status: &str) -> Value {
    s.wait_for(
        &format!("/v1/webhooks/{w}/deliveries/{d}"),
        &format!("delivery {d} {status}"),
        |v| v["status"] == status,
    )
    .await
}

fn hmac_hex(secret: &str, msg: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(msg);
    hex::encode(m.finalize().into_bytes())
}

/// The spec's Python function, run with python3 on the raw body.
fn python_verifies(body: &str, signature: &str, secret: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let script = format!(
        "{VERIFY_SIGNATURE}\nimport sys\npayload = open(sys.argv[1], encoding='utf-8', newline='').read()\nprint(verify_signature(payload, sys.argv[2], sys.argv[3]))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&file)
        .arg(signature)
        .arg(secret)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match String::from_utf8_lossy(&out.stdout).trim() {
        "True" => true,
        "False" => false,
        other => panic!("verify_signature printed {other:?}"),
    }
}

async fn a_delivery_is_signed_as_the_spec_verifies(s: TestServer) {
    let rx = Receiver::start(|_| 200).await;
    let created = create(
        &s,
        json!({"url": rx.url(), "events": ["token.*"], "secret": SECRET,
               "headers": {"X-Custom-Header": "custom value"}}),
    )
    .await;
    let w = id(&created);
    assert!(w.starts_with("whk_"), "{created:#}");
    assert_eq!(created["secret"], SECRET);
    assert_eq!(created["status"], "active");
    assert_eq!(created["enabled"], true);
    assert_eq!(
        created["retry_policy"],
        json!({"max_retries": 5, "backoff": "exponential"})
    );
    assert_eq!(created["headers"], json!({"X-Custom-Header": "[redacted]"}));

    let tok = token_event(&s, "hooked").await;
    let got = rx.wait("the delivery", |g| !g.is_empty()).await;
    let g = &got[0];
    // The spec's verify_signature accepts it, and refuses a tampered body
    // or another secret.
    let sig = g.header("x-shellwego-signature");
    assert!(sig.starts_with("sha256="), "{sig}");
    assert!(python_verifies(&g.body, &sig, SECRET));
    assert!(!python_verifies(
        &g.body.replace("hooked", "hacked"),
        &sig,
        SECRET
    ));
    assert!(!python_verifies(
        &g.body,
        &sig,
        "whsec_some_other_secret_value"
    ));
    // The timestamped signature: HMAC of "<t>.<body>", t the timestamp header.
    let ts = g.header("x-shellwego-timestamp");
    let t: i64 = ts.parse().unwrap();
    assert!(
        (shellwego_core::time::now().timestamp() - t).abs() < 60,
        "{ts}"
    );
    let expected = format!(
        "t={ts},v1={}",
        hmac_hex(SECRET, format!("{ts}.{}", g.body).as_bytes())
    );
    assert_eq!(g.header("x-shellwego-signature-256-t"), expected);
    assert_eq!(g.header("content-type"), "application/json");
    assert_eq!(g.header("user-agent"), "ShellWeGo-Webhooks/1");
    assert_eq!(g.header("x-shellwego-event"), "token.created");
    assert_eq!(g.header("x-custom-header"), "custom value");
    let delivery = g.delivery();
    assert!(delivery.starts_with("whd_"), "{delivery}");

    // The spec's payload: exactly id, type, timestamp and data.
    let p = g.json();
    let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["id", "type", "timestamp", "data"]));
    assert_eq!(p["type"], "token.created");
    assert_eq!(p["data"]["resource_type"], "token");
    assert_eq!(p["data"]["resource_id"], tok.as_str());
    assert_eq!(p["data"]["name"], "hooked");
    let (_, e) = s
        .get(&format!("/v1/events/{}", p["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        e["type"], "token.created",
        "the payload's id is the event's"
    );
    assert_eq!(e["timestamp"], p["timestamp"]);

    // The delivery as the API shows it.
    let d = delivery_is(&s, &w, &delivery, "succeeded").await;
    assert_eq!(d["attempts"], 1, "{d:#}");
    assert_eq!(d["response_code"], 200);
    assert!(d["latency_ms"].is_i64());
    assert_eq!(d["event_id"], p["id"]);
    assert_eq!(d["event_type"], "token.created");
    assert_eq!(d["next_attempt_at"], Value::Null);
    assert!(d["delivered_at"].is_string());
    assert_eq!(d["payload"], p, "the body as sent");
    let listed = deliveries(&s, &w).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], delivery.as_str());
    assert!(listed[0].get("payload").is_none(), "lists are lean");
    // Only what the patterns take: an app event is not delivered.
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "quiet", "image": "nginx", "replicas": 0}),
        )
        .await;
    assert_eq!(r.status(), 201);

    // A test ping: its own delivery, type ping.
    let r = s
        .post(&format!("/v1/webhooks/{w}/test"), &s.token, json!(null))
        .await;
    assert_eq!(r.status(), 202);
    let ping: Value = r.json().await.unwrap();
    assert_eq!(ping["event_type"], "ping");
    assert_eq!(ping["event_id"], Value::Null);
    assert_eq!(ping["status"], "pending");
    let got = rx
        .wait("the ping", |g| g.iter().any(|g| g.delivery() == id(&ping)))
        .await;
    let pg = got.iter().find(|g| g.delivery() == id(&ping)).unwrap();
    assert_eq!(pg.header("x-shellwego-event"), "ping");
    let body = pg.json();
    assert_eq!(body["type"], "ping");
    assert_eq!(body["data"], json!({"webhook_id": w}));
    assert!(python_verifies(
        &pg.body,
        &pg.header("x-shellwego-signature"),
        SECRET
    ));
    delivery_is(&s, &w, &id(&ping), "succeeded").await;

    // Redeliver: the same delivery id and body, once more.
    let r = s
        .post(
            &format!("/v1/webhooks/{w}/deliveries/{delivery}/redeliver"),
            &s.token,
            json!(null),
        )
        .await;
    assert_eq!(r.status(), 202);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["id"], delivery.as_str());
    assert_eq!(again["attempts"], 0);
    let got = rx
        .wait("the redelivery", |g| {
            g.iter().filter(|g| g.delivery() == delivery).count() == 2
        })
        .await;
    let both: Vec<&Got> = got.iter().filter(|g| g.delivery() == delivery).collect();
    assert_eq!(both[0].body, both[1].body);
    let d = delivery_is(&s, &w, &delivery, "succeeded").await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(rx.got().len(), 3, "nothing else was sent");

    // The secret never comes back.
    for path in [
        format!("/v1/webhooks/{w}"),
        "/v1/webhooks".to_string(),
        format!("/v1/webhooks/{w}/deliveries"),
        format!("/v1/webhooks/{w}/deliveries/{delivery}"),
        "/v1/events?limit=100".to_string(),
    ] {
        let (st, v) = s.get(&path).await;
        assert_eq!(st, 200, "{path}: {v}");
        let text = v.to_string();
        assert!(!text.contains(SECRET), "{path} shows the secret");
        assert!(
            !text.contains("custom value"),
            "{path} shows a header value"
        );
    }
    let (_, v) = s.get(&format!("/v1/webhooks/{w}")).await;
    assert_eq!(v["secret_hint"], "whsec_…6789");
    assert!(v.get("secret").is_none());
    // Nor is it in the database in the clear.
    let sealed: String = sqlx::query_scalar("SELECT secret FROM webhooks WHERE id = $1")
        .bind(&w)
        .fetch_one(s.store.pool())
        .await
        .unwrap();
    assert!(!sealed.contains(SECRET) && !sealed.is_empty());

    // Without a secret, one is made: whsec_…, in the creation only.
    let made = create(
        &s,
        json!({"url": rx.url(), "events": ["*"], "enabled": false}),
    )
    .await;
    let secret = made["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 32,
        "{made:#}"
    );
    assert_eq!(made["status"], "disabled");
    let (_, v) = s.get(&format!("/v1/webhooks/{}", id(&made))).await;
    assert!(!v.to_string().contains(secret));

    // Deleted: gone with its deliveries.
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/webhooks/{w}"),
            Some(&s.token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    let (st, _) = s.get(&format!("/v1/webhooks/{w}")).await;
    assert_eq!(st, 404);
    let (st, _) = s
        .get(&format!("/v1/webhooks/{w}/deliveries/{delivery}"))
        .await;
    assert_eq!(st, 404);
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(&w)
            .fetch_one(s.store.pool())
            .await
            .unwrap();
    assert_eq!(left, 0);
    let (_, ev) = s.get("/v1/events?filter[type]=webhook.*&limit=100").await;
    let kinds: BTreeSet<&str> = ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["webhook.created", "webhook.deleted"]),
        "{ev:#}"
    );
}

async fn five_hundreds_are_retried_with_growing_pauses(s: TestServer) {
    let rx = Receiver::start(|n| if n < 2 { 500 } else { 200 }).await;
    let w = id(&create(
        &s,
        json!({"url": rx.url(), "events": ["token.created"], "secret": SECRET}),
    )
    .await);
    token_event(&s, "retried").await;
    let got = rx.wait("three attempts", |g| g.len() >= 3).await;
    // Settle: nothing more comes.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got2 = rx.got();
    assert_eq!(got2.len(), 3, "{got:#?}");
    let ids: BTreeSet<String> = got.iter().map(Got::delivery).collect();
    assert_eq!(ids.len(), 1, "one delivery id across retries: {ids:?}");
    assert!(got.iter().all(|g| g.body == got[0].body), "the same body");
    let first = got[1].at - got[0].at;
    let second = got[2].at - got[1].at;
    // Base 200 ms, ±20%: about 200 ms, then about 400 ms.
    assert!(first >= Duration::from_millis(150), "{first:?}");
    assert!(second > first, "{first:?} then {second:?}");
    assert!(second >= Duration::from_millis(300), "{second:?}");
    let d = delivery_is(&s, &w, &got[0].delivery(), "succeeded").await;
    assert_eq!(d["attempts"], 3, "{d:#}");
    assert_eq!(d["response_code"], 200);
    let (_, hook) = s.get(&format!("/v1/webhooks/{w}")).await;
    assert_eq!(hook["failing_since"], Value::Null, "cleared by the success");
}

async fn other_client_errors_are_not_retried_but_408_and_429_are(s: TestServer) {
    // 404: failed at once.
    let rx = Receiver::start(|_| 404).await;
    let w = id(&create(&s, json!({"url": rx.url(), "events": ["token.created"]})).await);
    token_event(&s, "refused").await;
    let got = rx.wait("one attempt", |g| !g.is_empty()).await;
    let d = delivery_is(&s, &w, &got[0].delivery(), "failed").await;
    assert_eq!(d["attempts"], 1, "{d:#}");
    assert_eq!(d["response_code"], 404);
    assert!(d["last_error"].as_str().unwrap().contains("404"), "{d:#}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx.got().len(), 1, "a 404 is not retried");
    let (_, hook) = s.get(&format!("/v1/webhooks/{w}")).await;
    assert!(hook["failing_since"].is_string(), "{hook:#}");
    assert_eq!(hook["status"], "active");
    s.call(
        Method::DELETE,
        &format!("/v1/webhooks/{w}"),
        Some(&s.token),
        None,
    )
    .await;

    // 429, then 408, then 200: retried both times.
    let rx = Receiver::start(|n| [429, 408, 200][n.min(2)]).await;
    let w = id(&create(
        &s,
        json!({"url": rx.url(), "events": ["token.created"],
        "retry_policy": {"max_retries": 2, "backoff": "linear"}}),
    )
    .await);
    token_event(&s, "throttled").await;
    let got = rx.wait("three attempts", |g| g.len() >= 3).await;
    let d = delivery_is(&s, &w, &got[0].delivery(), "succeeded").await;
    assert_eq!(d["attempts"], 3, "{d:#}");

    // Out of retries: failed after 1 + max_retries attempts.
    let rx = Receiver::start(|_| 503).await;
    let w = id(&create(
        &s,
        json!({"url": rx.url(), "events": ["token.created"],
        "retry_policy": {"max_retries": 1}}),
    )
    .await);
    token_event(&s, "unavailable").await;
    let got = rx.wait("two attempts", |g| g.len() >= 2).await;
    let d = delivery_is(&s, &w, &got[0].delivery(), "failed").await;
    assert_eq!(d["attempts"], 2, "{d:#}");
    assert!(
        d["last_error"].as_str().unwrap().contains("out of retries"),
        "{d:#}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx.got().len(), 2);

    // A redirect is not followed: the signed body and the headers go to the
    // URL given and nowhere else; a 3xx fails the attempt.
    let elsewhere = Receiver::start(|_| 200).await;
    let to = format!("{}/stolen", elsewhere.url());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector = format!("http://{}/hook", l.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move || {
            let to = to.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(l, app).await.unwrap();
    });
    let w = id(&create(
        &s,
        json!({"url": redirector, "events": ["token.created"], "headers": {"X-Api-Key": "k"}}),
    )
    .await);
    token_event(&s, "redirected").await;
    let t = Instant::now();
    let d = loop {
        let ds = deliveries(&s, &w).await;
        if let Some(d) = ds.iter().find(|d| d["status"] == "failed") {
            break d.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{ds:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["response_code"], 307, "{d:#}");
    assert_eq!(d["attempts"], 1, "{d:#}");
    assert!(elsewhere.got().is_empty(), "the redirect was followed");
    task.abort();
}

async fn a_failing_webhook_is_disabled_after_the_window(backend: Backend) {
    let Some(s) = TestServer::start_with(backend, |c| {
        quick(c);
        c.webhooks.disable_after = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let down = Receiver::start(|_| 500).await;
    let watcher = Receiver::start(|_| 200).await;
    let w = id(&create(
        &s,
        json!({"url": down.url(), "events": ["token.created"],
        "retry_policy": {"max_retries": 20}}),
    )
    .await);
    let watch = id(&create(
        &s,
        json!({"url": watcher.url(), "events": ["webhook.disabled"]}),
    )
    .await);
    token_event(&s, "doomed").await;
    let hook = s
        .wait_for(&format!("/v1/webhooks/{w}"), "disabled", |h| {
            h["status"] == "disabled"
        })
        .await;
    assert_eq!(hook["enabled"], false);
    let reason = hook["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("failed for 1s"), "{reason}");
    assert!(reason.contains("500"), "{reason}");
    assert!(hook["failing_since"].is_string());
    // Its pending delivery was failed with it, and nothing more is sent.
    let d = deliveries(&s, &w).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["status"], "failed", "{d:#?}");
    assert!(d[0]["attempts"].as_i64().unwrap() >= 3, "{d:#?}");
    let sent = down.got().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(down.got().len(), sent);
    // The event, a warning, reached the other webhook.
    let (_, ev) = s.get("/v1/events?filter[type]=webhook.disabled").await;
    let e = &ev["data"][0];
    assert_eq!(e["severity"], "warning", "{ev:#}");
    assert_eq!(e["resource"]["id"], w.as_str());
    assert_eq!(e["actor"]["type"], "system");
    let got = watcher.wait("webhook.disabled", |g| !g.is_empty()).await;
    assert_eq!(got[0].json()["type"], "webhook.disabled");
    assert_eq!(got[0].json()["data"]["resource_id"], w.as_str());
    // A ping to a disabled webhook is a conflict; enabling it clears its
    // failure record, and it is sent to again.
    let r = s
        .post(&format!("/v1/webhooks/{w}/test"), &s.token, json!(null))
        .await;
    let p = problem(r, 409).await;
    assert!(p["detail"].as_str().unwrap().contains("enabled"), "{p:#}");
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{w}"),
            Some(&s.token),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let h: Value = r.json().await.unwrap();
    assert_eq!(
        (&h["status"], &h["disabled_reason"], &h["failing_since"]),
        (&json!("active"), &Value::Null, &Value::Null)
    );
    let r = s
        .post(&format!("/v1/webhooks/{w}/test"), &s.token, json!(null))
        .await;
    assert_eq!(r.status(), 202);
    down.wait("the ping", |g| g.len() > sent).await;
    // Disabled by hand: pending deliveries fail, no webhook.disabled.
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{w}"),
            Some(&s.token),
            Some(json!({"enabled": false})),
        )
        .await;
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "disabled");
    assert!(h["disabled_reason"].as_str().unwrap().contains("by a user"));
    let (_, ev) = s.get("/v1/events?filter[type]=webhook.disabled").await;
    assert_eq!(ev["data"].as_array().unwrap().len(), 1);
    assert_eq!(deliveries(&s, &watch).await.len(), 1);
}

mod disabled_after_the_window {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        a_failing_webhook_is_disabled_after_the_window(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        a_failing_webhook_is_disabled_after_the_window(Backend::Postgres).await
    }
}

/// A port nothing listens on (yet).
async fn free_port() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn a_delivery_survives_a_restart_of_the_control_plane(backend: Backend) {
    let Some(mut s) = server(backend).await else {
        return;
    };
    // The receiver is down: its port is reserved, not listening.
    let reserved = free_port().await;
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = format!("http://{addr}/hook");
    let w = id(&create(
        &s,
        json!({"url": url, "events": ["token.created"], "secret": SECRET,
        "retry_policy": {"max_retries": 20, "backoff": "linear"}}),
    )
    .await);
    token_event(&s, "outlives").await;
    // Attempted, refused, waiting for a retry.
    let d = s
        .wait_for(
            &format!("/v1/webhooks/{w}/deliveries"),
            "a failed attempt",
            |l| l["data"][0]["attempts"].as_i64().unwrap_or(0) >= 1,
        )
        .await;
    let delivery = d["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(d["data"][0]["status"], "pending", "{d:#}");
    assert!(
        d["data"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("onnect"),
        "{d:#}"
    );
    // The control plane goes away.
    s.started.take().unwrap().shutdown().await.unwrap();
    // As if a replica had died holding the delivery: claimed until 2 s from
    // now, and due.
    let t = shellwego_core::time::to_micros(shellwego_core::time::now());
    let claimed = Instant::now();
    let claim_until = t + 2_000_000;
    let store = shellwego_store::Store::connect(&s.cfg.database_url())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE webhook_deliveries SET claimed_by = 'rep_dead', claim_expires_at = $1, next_attempt_at = $2 WHERE id = $3",
    )
    .bind(claim_until)
    .bind(t)
    .bind(&delivery)
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    // The receiver comes up, then the control plane again.
    let rx = Receiver::on(tokio::net::TcpListener::bind(addr).await.unwrap(), |_| 200);
    let again = shellwego_server::serve::start(s.cfg.clone()).await.unwrap();
    s.base = format!("http://{}", again.addr);
    s.store = again.ctx.store.clone();
    s.started = Some(again);
    let got = rx
        .wait("the delivery after the restart", |g| !g.is_empty())
        .await;
    let after = got[0].at.duration_since(claimed);
    assert!(
        after >= Duration::from_millis(1900),
        "taken over only once the dead replica's claim expired, not after {after:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got2 = rx.got();
    assert_eq!(got2.len(), 1, "exactly once: {got:#?}");
    assert_eq!(got2[0].delivery(), delivery, "the same delivery id");
    assert!(python_verifies(
        &got2[0].body,
        &got2[0].header("x-shellwego-signature"),
        SECRET
    ));
    let d = delivery_is(&s, &w, &delivery, "succeeded").await;
    assert!(d["attempts"].as_i64().unwrap() >= 2, "{d:#}");
    assert_eq!(deliveries(&s, &w).await.len(), 1);
}

mod survives_a_restart {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        a_delivery_survives_a_restart_of_the_control_plane(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        a_delivery_survives_a_restart_of_the_control_plane(Backend::Postgres).await
    }
}

/// Two replicas on one PostgreSQL, both dispatching: 100 events, a
/// receiver that answers 500 every other time; every event is delivered,
/// and each delivery id gets exactly one 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once() {
    let Some(a) = TestServer::start_with(Backend::Postgres, |c| {
        quick(c);
        c.webhooks.retry_base = Duration::from_millis(100);
    })
    .await
    else {
        return;
    };
    let b = a.replica().await;
    b.wait_for("/readyz", "b listening", |r| r["bus"] == "postgres")
        .await;
    let rx = Receiver::start(|n| if n % 2 == 0 { 500 } else { 200 }).await;
    create(
        &a,
        json!({"url": rx.url(), "events": ["token.created"], "secret": SECRET,
        "retry_policy": {"max_retries": 20}}),
    )
    .await;
    let mut tokens = BTreeSet::new();
    for i in 0..100 {
        let s = if i % 2 == 0 { &a } else { &b };
        tokens.insert(token_event(s, &format!("t{i}")).await);
    }
    let ok = |g: &[Got]| {
        g.iter()
            .filter(|g| g.status == 200)
            .map(Got::delivery)
            .collect::<BTreeSet<_>>()
            .len()
            >= 100
    };
    rx.wait("100 deliveries answered 200", ok).await;
    // Settle: a duplicate would come now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rx.got();
    let mut ok_per_delivery: BTreeMap<String, usize> = BTreeMap::new();
    let mut event_of: BTreeMap<String, String> = BTreeMap::new();
    for g in &got {
        let body = g.json();
        let ev = body["id"].as_str().unwrap().to_string();
        if let Some(before) = event_of.insert(g.delivery(), ev.clone()) {
            assert_eq!(before, ev, "one delivery id carries one event");
        }
        if g.status == 200 {
            *ok_per_delivery.entry(g.delivery()).or_default() += 1;
        }
        assert!(python_verifies_fast(
            &g.body,
            &g.header("x-shellwego-signature")
        ));
    }
    assert_eq!(ok_per_delivery.len(), 100, "every event delivered");
    let twice: Vec<_> = ok_per_delivery.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    let events: BTreeSet<&String> = event_of.values().collect();
    assert_eq!(events.len(), 100, "100 distinct events");
    let resources: BTreeSet<String> = got
        .iter()
        .map(|g| {
            g.json()["data"]["resource_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(resources, tokens, "one delivery per token created");
    assert!(
        got.len() >= 150,
        "about half of the first attempts were answered 500: {}",
        got.len()
    );
}

/// The Rust equivalent of the spec's check (python3 once per request is
/// slow for 200 requests; the spec's own function is run in the other
/// tests).
fn python_verifies_fast(body: &str, signature: &str) -> bool {
    signature == format!("sha256={}", hmac_hex(SECRET, body.as_bytes()))
}

/// The SSRF guard: loopback and metadata URLs are refused at creation
/// with a 400 naming `url` by default, and a target that becomes
/// forbidden is refused at delivery time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_judges_urls_at_creation_and_at_delivery() {
    let strict = TestServer::start_with(Backend::Sqlite, |c| {
        quick(c);
        c.ssrf = SsrfConfig::default();
    })
    .await
    .unwrap();
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:9/x",
        "http://10.0.0.1/hook",
    ] {
        let r = strict
            .post(
                "/v1/webhooks",
                &strict.token,
                json!({"url": url, "events": ["*"]}),
            )
            .await;
        let p = problem(r, 400).await;
        assert_eq!(fields(&p), ["url"], "{url}: {p:#}");
        assert_eq!(p["errors"][0]["code"], "forbidden_target", "{p:#}");
        assert!(
            p["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("[ssrf]"),
            "{p:#}"
        );
    }
    let (_, l) = strict.get("/v1/webhooks").await;
    assert_eq!(l["data"], json!([]));

    // Allowed when created (the kit's servers allow private targets); then
    // the operator's policy turns strict: refused when delivered.
    let s = server(Backend::Sqlite).await.unwrap();
    let rx = Receiver::start(|_| 200).await;
    let literal = id(&create(&s, json!({"url": rx.url(), "events": ["token.created"]})).await);
    let named = id(&create(
        &s,
        json!({
        "url": format!("http://localhost:{}/named", rx.addr.port()),
        "events": ["token.created"]}),
    )
    .await);
    token_event(&s, "allowed").await;
    rx.wait("two deliveries", |g| g.len() == 2).await;
    let guard = &s.started.as_ref().unwrap().ctx.config.ssrf;
    guard.set(&SsrfConfig::default());
    // The policy applies to updates too.
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{literal}"),
            Some(&s.token),
            Some(json!({"url": "http://127.0.0.2:1/x"})),
        )
        .await;
    let p = problem(r, 400).await;
    assert_eq!(fields(&p), ["url"], "{p:#}");
    token_event(&s, "refused").await;
    for w in [&literal, &named] {
        let l = s
            .wait_for(
                &format!("/v1/webhooks/{w}/deliveries?filter[status]=failed"),
                "refused",
                |l| l["data"].as_array().is_some_and(|d| !d.is_empty()),
            )
            .await;
        let d = &l["data"][0];
        let err = d["last_error"].as_str().unwrap();
        assert!(err.contains("SSRF guard"), "{err}");
        assert!(err.contains("loopback"), "{err}");
        assert_eq!(d["attempts"], 1, "a refused target is not retried: {d:#}");
        assert_eq!(d["response_code"], Value::Null);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.got().len(), 2, "nothing reached the receiver");
}

async fn requests_are_validated_and_scoped(s: TestServer) {
    let bad = |body: Value, field: &'static str| {
        let s = &s;
        async move {
            let r = s.post("/v1/webhooks", &s.token, body.clone()).await;
            let p = problem(r, 400).await;
            assert_eq!(fields(&p), [field], "{body}: {p:#}");
        }
    };
    let url = "http://127.0.0.1:9/x";
    bad(json!({"url": "ftp://example.com/", "events": ["*"]}), "url").await;
    bad(json!({"url": "example.com/hook", "events": ["*"]}), "url").await;
    bad(json!({"url": url, "events": []}), "events").await;
    bad(
        json!({"url": url, "events": ["app.*", "app.nope"]}),
        "events[1]",
    )
    .await;
    bad(json!({"url": url, "events": ["nothing.*"]}), "events[0]").await;
    bad(
        json!({"url": url, "events": ["*"], "secret": "short"}),
        "secret",
    )
    .await;
    for h in [
        "Host",
        "Content-Length",
        "Content-Type",
        "Transfer-Encoding",
        "X-ShellWeGo-Signature",
    ] {
        let r = s
            .post(
                "/v1/webhooks",
                &s.token,
                json!({"url": url, "events": ["*"], "headers": {h: "x"}}),
            )
            .await;
        let p = problem(r, 400).await;
        assert_eq!(fields(&p), [format!("headers.{h}")], "{p:#}");
    }
    bad(
        json!({"url": url, "events": ["*"], "retry_policy": {"max_retries": 21}}),
        "retry_policy.max_retries",
    )
    .await;
    bad(
        json!({"url": url, "events": ["*"], "retry_policy": {"backoff": "random"}}),
        "retry_policy.backoff",
    )
    .await;
    bad(
        json!({"url": url, "events": ["*"], "colour": "red"}),
        "colour",
    )
    .await;

    let w = id(&create(&s, json!({"url": url, "events": ["app.*"]})).await);
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{w}"),
            Some(&s.token),
            Some(json!({"events": ["*", "bogus"], "headers": {"Connection": "close"}})),
        )
        .await;
    let p = problem(r, 400).await;
    assert_eq!(fields(&p), ["events[1]", "headers.Connection"], "{p:#}");
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{w}"),
            Some(&s.token),
            Some(json!({"events": ["deployment.*", "app.deployed"],
                "retry_policy": {"backoff": "linear"}, "headers": {"Authorization": "Bearer x"}})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["events"], json!(["deployment.*", "app.deployed"]));
    assert_eq!(
        h["retry_policy"],
        json!({"max_retries": 5, "backoff": "linear"})
    );
    assert_eq!(h["headers"], json!({"Authorization": "[redacted]"}));
    let (_, e) = s.get("/v1/events?filter[type]=webhook.updated").await;
    assert_eq!(
        e["data"][0]["metadata"]["changed"],
        json!(["events", "headers", "retry_policy"])
    );
    // Lists: filters and sorts of their own.
    let (st, l) = s
        .get("/v1/webhooks?filter[status]=active&sort=url:asc")
        .await;
    assert_eq!(st, 200, "{l:#}");
    assert_eq!(l["data"].as_array().unwrap().len(), 1);
    let (st, l) = s
        .get(&format!(
            "/v1/webhooks/{w}/deliveries?filter[status]=pending,failed&filter[event_type]=app.*"
        ))
        .await;
    assert_eq!(st, 200, "{l:#}");
    let r = s
        .call(
            Method::GET,
            "/v1/webhooks?filter[colour]=red",
            Some(&s.token),
            None,
        )
        .await;
    problem(r, 400).await;
    // Unknown ids are 404s.
    for path in [
        "/v1/webhooks/whk_nope".to_string(),
        "/v1/webhooks/not-an-id".to_string(),
        format!("/v1/webhooks/{w}/deliveries/whd_nope"),
        "/v1/webhooks/whk_nope/deliveries".to_string(),
    ] {
        let (st, _) = s.get(&path).await;
        assert_eq!(st, 404, "{path}");
    }
    let r = s
        .post(
            &format!("/v1/webhooks/{w}/deliveries/whd_nope/redeliver"),
            &s.token,
            json!(null),
        )
        .await;
    problem(r, 404).await;

    // A viewer sees webhooks but cannot change them.
    let org = s.admin_org().await;
    let (_, viewer) = s.member_with_role(&org, "viewer", "v@example.com").await;
    let (st, _) = s.get_as(&viewer, &format!("/v1/webhooks/{w}")).await;
    assert_eq!(st, 200);
    let r = s
        .post(
            "/v1/webhooks",
            &viewer,
            json!({"url": url, "events": ["*"]}),
        )
        .await;
    problem(r, 403).await;
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/webhooks/{w}"),
            Some(&viewer),
            None,
        )
        .await;
    problem(r, 403).await;
}

async fn old_deliveries_go_with_the_retention_sweep(s: TestServer) {
    use shellwego_server::controller::retention::EventRetention;
    use shellwego_server::controller::Controller;
    use shellwego_store::events::{self, Actor, NewEvent};
    let org = s.admin_org().await;
    // Nowhere to deliver: the deliveries stay (pending or failed).
    let w = id(&create(
        &s,
        json!({"url": "http://127.0.0.1:9/x", "events": ["app.*"]}),
    )
    .await);
    let day = 86_400_000_000;
    let now = shellwego_core::time::to_micros(shellwego_core::time::now());
    let mut tx = s.store.begin().await.unwrap();
    for age in [400, 0] {
        events::record_at(
            &mut tx,
            NewEvent::info("app.created", &Actor::system(), "app", "app_x").in_org(&org),
            now - age * day,
        )
        .await
        .unwrap();
    }
    // Events of no organization, or of a type not taken: no delivery.
    events::record_at(
        &mut tx,
        NewEvent::info("app.created", &Actor::system(), "app", "app_y"),
        now,
    )
    .await
    .unwrap();
    events::record_at(
        &mut tx,
        NewEvent::info("node.offline", &Actor::system(), "node", "node_x").in_org(&org),
        now,
    )
    .await
    .unwrap();
    shellwego_store::commit(tx).await.unwrap();
    assert_eq!(deliveries(&s, &w).await.len(), 2);
    let ctx = s.started.as_ref().unwrap().ctx.clone();
    EventRetention.pass(&ctx).await.unwrap();
    let left = deliveries(&s, &w).await;
    assert_eq!(left.len(), 1, "the 400-day-old one went: {left:#?}");
}

each_backend!(
    a_delivery_is_signed_as_the_spec_verifies,
    five_hundreds_are_retried_with_growing_pauses,
    other_client_errors_are_not_retried_but_408_and_429_are,
    requests_are_validated_and_scoped,
    old_deliveries_go_with_the_retention_sweep,
);
