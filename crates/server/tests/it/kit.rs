//! The test kit: a real server on an ephemeral port with its own store
//! (a temp SQLite file, or a scratch PostgreSQL database when
//! SHELLWEGO_TEST_DATABASE_URL is set), and a real HTTP client.

use std::collections::BTreeMap;

use reqwest::{Method, Response};
use serde_json::Value;
use shellwego_core::plan::Plan;
use shellwego_core::time::Timestamp;
use shellwego_core::token::TokenKind;
use shellwego_server::serve::{start as start_server, Started};
use shellwego_server::ServerConfig;
use shellwego_store::nodes::Node;
use shellwego_store::tokens::NewTokenSpec;
use shellwego_store::{commit, nodes, orgs, tokens, users, Store};

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const ADMIN_PASSWORD: &str = "test-admin-password";

struct PgDb {
    server_url: String,
    name: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (url, name) = (self.server_url.clone(), self.name.clone());
        // Drop runs outside any runtime we may block on: use a thread.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(shellwego_store::scratch::drop(&url, &name));
            }
        })
        .join();
    }
}

pub struct Srv {
    pub base: String,
    /// The bootstrap admin's token.
    pub token: String,
    pub http: reqwest::Client,
    pub store: Store,
    pub started: Option<Started>,
    pub cfg: ServerConfig,
    pub _dir: tempfile::TempDir,
    _pg: Option<PgDb>,
}

/// Start a server on `backend`; `None` (with a message) when PostgreSQL is
/// asked for but SHELLWEGO_TEST_DATABASE_URL is not set.
pub async fn start(backend: Backend) -> Option<Srv> {
    start_with(backend, |_| {}).await
}

/// [`start`], with `configure` changing the configuration first.
pub async fn start_with(
    backend: Backend,
    configure: impl FnOnce(&mut ServerConfig),
) -> Option<Srv> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    cfg.admin_password = Some(ADMIN_PASSWORD.into());
    cfg.shutdown_timeout = std::time::Duration::from_secs(5);
    // Short, so that the liveness tests need not wait 30 s.
    cfg.node_timeout = std::time::Duration::from_secs(2);
    // Tests serve registries and sources on loopback, as a self-hosted
    // setup would on its private network (the ssrf tests say otherwise).
    cfg.ssrf.allow_private_targets = true;
    configure(&mut cfg);
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let Ok(server_url) = std::env::var("SHELLWEGO_TEST_DATABASE_URL") else {
                eprintln!("SKIPPED on PostgreSQL: set SHELLWEGO_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run it");
                return None;
            };
            let (url, name) = shellwego_store::scratch::create(&server_url, "swtest")
                .await
                .unwrap();
            cfg.database_url = Some(url);
            Some(PgDb { server_url, name })
        }
    };
    let started = start_server(cfg.clone()).await.unwrap();
    let token = std::fs::read_to_string(cfg.admin_token_path()).unwrap();
    Some(Srv {
        base: format!("http://{}", started.addr),
        token,
        http: reqwest::Client::new(),
        store: started.ctx.store.clone(),
        started: Some(started),
        cfg,
        _dir: dir,
        _pg: pg,
    })
}

/// Run `$f(srv)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(s) = $crate::kit::start($crate::kit::Backend::Sqlite).await {
                        super::$name(s).await
                    }
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(s) = $crate::kit::start($crate::kit::Backend::Postgres).await {
                        super::$name(s).await
                    }
                }
            }
        )*
    };
}

impl Srv {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    /// GET with the admin token; returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.call(Method::GET, path, Some(&self.token), None).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_as(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self.call(Method::GET, path, Some(token), None).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The bootstrap organization.
    pub async fn admin_org(&self) -> String {
        let (_, u) = self.get("/v1/user").await;
        u["organizations"][0]["id"].as_str().unwrap().to_string()
    }

    /// A new organization on `plan` with one owner and a token for them.
    /// (The Identity issue adds the API for this; the store is used here.)
    pub async fn org_with_user(&self, plan: Plan, email: &str) -> (String, String, String) {
        let mut tx = self.store.begin().await.unwrap();
        let org = orgs::create(&mut tx, email, &shellwego_core::id::new_id("slug"), plan)
            .await
            .unwrap();
        commit(tx).await.unwrap();
        let (user, secret) = self.member_with_role(&org.id, "owner", email).await;
        (org.id, user, secret)
    }

    /// A new user with `role` in `org`, and a token of theirs there.
    pub async fn member_with_role(&self, org: &str, role: &str, email: &str) -> (String, String) {
        let mut tx = self.store.begin().await.unwrap();
        let user = users::create(&mut tx, email, "Test User", "x")
            .await
            .unwrap();
        orgs::add_member(&mut tx, org, &user.id, role)
            .await
            .unwrap();
        let (_, secret) = tokens::create(
            &mut tx,
            NewTokenSpec {
                kind: TokenKind::Pat,
                name: "test",
                user_id: Some(&user.id),
                service_account_id: None,
                organization_id: org,
                scope: &[],
                restrict_to_apps: &[],
                expires_at: None,
            },
        )
        .await
        .unwrap();
        commit(tx).await.unwrap();
        (user.id, secret)
    }

    pub async fn insert_node(&self, n: NodeSpec<'_>) -> String {
        let mut tx = self.store.begin().await.unwrap();
        let node = nodes::insert(
            &mut tx,
            Node {
                organization_id: n.org.into(),
                hostname: n.hostname.into(),
                status: n.status.parse().unwrap(),
                region: n.region.into(),
                zone: format!("{}-a", n.region),
                cpu_cores: n.cpu_cores,
                memory_total: n.memory_total,
                memory_available: n.memory_total / 2,
                cpu_available: n.cpu_cores * 500,
                created_at: n.created_at.unwrap_or_default(),
                labels: n
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        commit(tx).await.unwrap();
        node.id
    }
}

pub struct NodeSpec<'a> {
    pub org: &'a str,
    pub hostname: &'a str,
    pub status: &'a str,
    pub region: &'a str,
    pub cpu_cores: i64,
    pub memory_total: i64,
    pub labels: &'a [(&'a str, &'a str)],
    pub created_at: Option<Timestamp>,
}

impl<'a> NodeSpec<'a> {
    pub fn new(org: &'a str, hostname: &'a str) -> Self {
        NodeSpec {
            org,
            hostname,
            status: "ready",
            region: "fra1",
            cpu_cores: 4,
            memory_total: 8 << 30,
            labels: &[],
            created_at: None,
        }
    }
}

/// Assert `body` is a complete RFC 7807 problem whose trace id is the
/// response's X-Request-Id, and return it.
pub async fn problem(r: Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status, "unexpected status");
    let ct = r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(ct, "application/problem+json");
    let rid = r
        .headers()
        .get("x-request-id")
        .expect("X-Request-Id header")
        .to_str()
        .unwrap()
        .to_string();
    let path = r.url().path().to_string();
    let body: Value = r.json().await.unwrap();
    for k in ["type", "title", "status", "detail", "instance", "trace_id"] {
        assert!(body.get(k).is_some(), "problem lacks '{k}': {body}");
    }
    assert_eq!(body["status"], status);
    assert_eq!(body["trace_id"], rid.as_str());
    assert_eq!(body["instance"], path.as_str());
    assert!(body["type"].as_str().unwrap().starts_with("https://"));
    body
}

/// The slug at the end of a problem's type URI.
pub fn slug(problem: &Value) -> &str {
    problem["type"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
}

/// The field names of a validation problem.
pub fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}
