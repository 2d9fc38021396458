//! A real control plane in-process on an ephemeral port, with a store of
//! its own (a temp SQLite file, or a PostgreSQL database on
//! SHELLWEGO_TEST_DATABASE_URL), both copied from a migrated template
//! ([`crate::db`]), and a real HTTP client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Method, Response};
use serde_json::Value;
use shellwego_core::plan::Plan;
use shellwego_core::time::Timestamp;
use shellwego_server::serve::{start as start_server, Started};
use shellwego_server::ServerConfig;
use shellwego_store::nodes::Node;
use shellwego_store::{commit, nodes, Backend, Store};

use crate::agent::FakeAgent;
use crate::db::PgDb;

pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// The environment variable naming the PostgreSQL server the PostgreSQL
/// half of the suite runs on.
pub const DATABASE_URL_VAR: &str = "SHELLWEGO_TEST_DATABASE_URL";

/// Where a test's database starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// A copy of the migrated template (the default).
    Migrated,
    /// Empty: the server runs every migration itself at start.
    Empty,
}

/// A started server and what a test needs to talk to it.
pub struct TestServer {
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

/// Run `$f(server)` once on SQLite and once on PostgreSQL (a test per
/// backend, in a module named after `$f`).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(s) = $crate::server::TestServer::start($crate::Backend::Sqlite).await {
                        super::$name(s).await
                    }
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(s) = $crate::server::TestServer::start($crate::Backend::Postgres).await {
                        super::$name(s).await
                    }
                }
            }
        )*
    };
}

impl TestServer {
    /// Start a server on `backend`; `None` (with a message) when PostgreSQL
    /// is asked for but SHELLWEGO_TEST_DATABASE_URL is not set.
    pub async fn start(backend: Backend) -> Option<TestServer> {
        TestServer::start_with(backend, |_| {}).await
    }

    /// [`TestServer::start`], with `configure` changing the configuration first.
    pub async fn start_with(
        backend: Backend,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Option<TestServer> {
        TestServer::start_on(backend, Schema::Migrated, configure).await
    }

    /// [`TestServer::start_with`] on a database that starts as `schema` says.
    pub async fn start_on(
        backend: Backend,
        schema: Schema,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Option<TestServer> {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        cfg.admin_password = Some(ADMIN_PASSWORD.into());
        cfg.shutdown_timeout = Duration::from_secs(5);
        // Short, so that the liveness tests need not wait 30 s.
        cfg.node_timeout = Duration::from_secs(2);
        // Tests serve registries and sources on loopback, as a self-hosted
        // setup would on its private network (the ssrf tests say otherwise).
        cfg.ssrf.allow_private_targets = true;
        configure(&mut cfg);
        let pg = match backend {
            Backend::Sqlite => {
                if schema == Schema::Migrated && cfg.database_url.is_none() {
                    crate::db::write_sqlite_template(&cfg.data_dir.join("shellwego.db"))
                        .await
                        .unwrap();
                }
                None
            }
            Backend::Postgres => {
                let Ok(server_url) = std::env::var(DATABASE_URL_VAR) else {
                    eprintln!("SKIPPED on PostgreSQL: set {DATABASE_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/test) to run it");
                    return None;
                };
                let db = match schema {
                    Schema::Migrated => PgDb::from_template(&server_url, "swtest").await,
                    Schema::Empty => PgDb::empty(&server_url, "swtest").await,
                }
                .unwrap();
                cfg.database_url = Some(db.url().to_string());
                Some(db)
            }
        };
        let started = start_server(cfg.clone()).await.unwrap();
        let token = std::fs::read_to_string(cfg.admin_token_path()).unwrap();
        Some(TestServer {
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Another replica of this control plane: a server of its own (its own
    /// port and data directory) on the same database, with the same master
    /// key, as an operator runs several behind a load balancer. Its
    /// `token` is this one's admin token. Keep `self` alive while it runs
    /// (`self` owns the test database).
    pub async fn replica(&self) -> TestServer {
        self.replica_with(|_| {}).await
    }

    /// [`TestServer::replica`], with `configure` changing its configuration.
    pub async fn replica_with(&self, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = self.cfg.clone();
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.data_dir = dir.path().to_path_buf();
        cfg.database_url = Some(self.cfg.database_url());
        cfg.master_key = Some(match &self.cfg.master_key {
            Some(k) => k.clone(),
            None => std::fs::read_to_string(self.cfg.data_dir.join("master.key")).unwrap(),
        });
        configure(&mut cfg);
        let started = start_server(cfg.clone()).await.unwrap();
        TestServer {
            base: format!("http://{}", started.addr),
            token: self.token.clone(),
            http: reqwest::Client::new(),
            store: started.ctx.store.clone(),
            started: Some(started),
            cfg,
            _dir: dir,
            _pg: None,
        }
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

    /// POST `body` as the holder of `token`.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(token), Some(body)).await
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

    /// GET `path` (as the admin) every 100 ms until `ok` says yes (up to
    /// 15 s); the body.
    pub async fn wait_for(&self, path: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let (_, v) = self.get(path).await;
            if ok(&v) {
                return v;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "{what}: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The bootstrap organization.
    pub async fn admin_org(&self) -> String {
        let (_, u) = self.get("/v1/user").await;
        u["organizations"][0]["id"].as_str().unwrap().to_string()
    }

    /// A new organization on `plan` with one owner and a token for them:
    /// (organization, user, token). See [`crate::fixtures::org_with_owner`].
    pub async fn org_with_user(&self, plan: Plan, email: &str) -> (String, String, String) {
        let o = crate::fixtures::org_with_owner(&self.store, plan, email).await;
        (o.org, o.user, o.token)
    }

    /// A new user with `role` in `org`, and a token of theirs there.
    pub async fn member_with_role(&self, org: &str, role: &str, email: &str) -> (String, String) {
        crate::fixtures::member_with_role(&self.store, org, role, email).await
    }

    /// Register a node named `name` and join it as a fake agent.
    pub async fn fake_agent(&self, name: &str, cores: i64, memory: i64) -> FakeAgent {
        FakeAgent::register(&self.base, &self.token, name, cores, memory).await
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

/// A node to insert into the store directly ([`TestServer::insert_node`]).
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

/// Assert `r` is a complete RFC 7807 problem with `status` whose trace id
/// is the response's X-Request-Id, and return its body.
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
