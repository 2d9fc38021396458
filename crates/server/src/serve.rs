//! The control plane's life: open the store, migrate, bootstrap, serve,
//! and shut down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shellwego_store::{orgs, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::sync::Arc;

use crate::ctx::ServerCtx;
use crate::state::AppState;

/// Settings of `shellwego server` (the CLI merges flags, environment and
/// the config file into this).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    /// Where objects (uploaded archives) are kept: `database`,
    /// `file:///DIR`, `s3://BUCKET/PREFIX`; `None`: the database with
    /// PostgreSQL, the data directory with SQLite (see [`crate::objects`]).
    pub storage_url: Option<String>,
    /// Password for the bootstrap admin; random when absent.
    pub admin_password: Option<String>,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Base64 master key (`SHELLWEGO_MASTER_KEY`); `None`: `<data-dir>/master.key`.
    pub master_key: Option<String>,
    /// A node not heard from for this long becomes `offline`.
    pub node_timeout: Duration,
    /// The `[ssrf]` section: which private targets user-given URLs may reach.
    pub ssrf: shellwego_net::ssrf::SsrfConfig,
    /// The `[http]` section: timeouts and connection caps of the listener.
    pub http: shellwego_net::serve::Limits,
    /// Proxies whose `X-Forwarded-For`/`Forwarded` are believed.
    pub trusted_proxies: shellwego_net::client_ip::TrustedProxies,
    /// How many organizations on the Free plan one user may own.
    pub max_free_orgs_per_user: u32,
    /// The `[webhooks]` section: delivery timeout, retry base, when a
    /// failing webhook is disabled.
    pub webhooks: crate::ctx::WebhookConfig,
    /// The `[metrics]` section: how long each resolution is kept.
    pub metrics: crate::ctx::MetricsRetention,
    /// Custom domains: the ingress's base domain and the DNS target.
    pub domains: crate::ctx::DomainSettings,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen,
            data_dir: data_dir.into(),
            database_url: None,
            storage_url: None,
            admin_password: None,
            shutdown_timeout: Duration::from_secs(30),
            master_key: None,
            node_timeout: Duration::from_secs(30),
            ssrf: Default::default(),
            http: Default::default(),
            trusted_proxies: Default::default(),
            max_free_orgs_per_user: 1,
            webhooks: Default::default(),
            metrics: Default::default(),
            domains: Default::default(),
        }
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("shellwego.db").display()
            )
        })
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }
}

/// A running server.
pub struct Started {
    pub addr: SocketAddr,
    pub state: AppState,
    pub ctx: Arc<ServerCtx>,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Started {
    /// Stop accepting, let in-flight requests finish (bounded), close the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("server task failed")?
    }

    /// Wait until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
        self.shutdown().await
    }
}

/// Bind, open the store, migrate, bootstrap if empty, and serve.
pub async fn start(config: ServerConfig) -> anyhow::Result<Started> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    // Bind first: a port in use fails fast, and once the admin token exists
    // connections are already accepted (queued until serving starts).
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let url = config.database_url();
    let store = Store::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
    store.migrate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(backend = store.backend().as_str(), "store ready");

    let token_path = config.admin_token_path();
    let boot = shellwego_store::bootstrap::run(&store, config.admin_password.as_deref(), |tok| {
        crate::secret_file::write_secret_file(&token_path, tok)
    })
    .await
    .map_err(|e| anyhow::anyhow!("bootstrap failed: {e}"))?;
    if let Some(b) = boot {
        tracing::info!(
            organization_id = %b.organization_id,
            user = shellwego_store::bootstrap::ADMIN_EMAIL,
            token_file = %token_path.display(),
            password = if b.random_password { "random (set SHELLWEGO_ADMIN_PASSWORD on first start to choose it)" } else { "from SHELLWEGO_ADMIN_PASSWORD" },
            "bootstrapped a new installation; the admin token is in the token file"
        );
    }

    let ring =
        crate::vault::Keyring::load_or_create(&config.data_dir, config.master_key.as_deref())
            .map_err(|e| anyhow::anyhow!("master key: {e}"))?;
    crate::vault::check_master_key(&store, &ring)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let vault = crate::vault::Vault::new(ring);
    let (stop, stop_rx) = watch::channel(false);
    let settings = crate::ctx::Settings {
        node_timeout: config.node_timeout,
        objects: crate::objects::Objects::open(
            config.storage_url.as_deref(),
            &store,
            &config.data_dir,
        )
        .map_err(|e| anyhow::anyhow!("object storage: {e}"))?,
        max_free_orgs_per_user: config.max_free_orgs_per_user,
        ssrf: shellwego_net::ssrf::Guard::new(&config.ssrf),
        webhooks: config.webhooks,
        metrics: config.metrics,
        domains: config.domains.clone(),
    };
    tracing::info!(storage = %settings.objects.describe(), "object storage ready");
    let replica = crate::leader::Replica::new();
    // One process on SQLite; replicas that may be several on PostgreSQL
    // tell each other through it.
    let bus: Arc<dyn crate::bus::EventBus> = match store.backend() {
        shellwego_store::Backend::Sqlite => crate::bus::InProcessBus::new(),
        shellwego_store::Backend::Postgres => {
            crate::bus::PgBus::start(&url, store.clone(), replica.holder(), stop_rx.clone())
        }
    };
    tracing::info!(
        replica = replica.id(),
        bus = bus.describe(),
        "replica ready"
    );
    let ctx = Arc::new(ServerCtx {
        store: store.clone(),
        bus,
        vault,
        config: settings,
        stopping: stop_rx.clone(),
        replica,
        fence: None,
    });
    // Env values stored before env was encrypted at rest: sealed now,
    // before anything reads them.
    let sealed = crate::service::secrets::seal_stored_env(&ctx)
        .await
        .map_err(|e| anyhow::anyhow!("sealing stored env values: {e}"))?;
    if sealed > 0 {
        tracing::info!(
            specs = sealed,
            "env values stored in plaintext are sealed now"
        );
    }
    let mut state = AppState::new(ctx.clone(), crate::openapi::document_json());
    state.trusted_proxies = Arc::new(config.trusted_proxies.clone());
    let app = crate::http::app(state.clone());
    tracing::info!(%addr, "listening");

    let limits = state.limits.clone();
    let janitor = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits.retain_recent();
        }
    });

    let controllers = crate::controller::start_all(&ctx);

    let opts = shellwego_net::serve::ServeOptions {
        limits: config.http.clone().fitted_to_open_files(),
        trusted_proxies: config.trusted_proxies.clone(),
        shutdown_grace: config.shutdown_timeout,
        protocol_error: Some(std::sync::Arc::new(crate::http::protocol_error)),
        name: "api",
        tls: None,
    };
    let task = tokio::spawn(async move {
        let (stage, _) = shellwego_net::serve::Stage::channel();
        let mut rx = stop_rx;
        let res = shellwego_net::serve::serve(
            listener,
            opts,
            stage,
            |peer| crate::http::connection_service(app.clone(), peer),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )
        .await
        .context("server failed");
        janitor.abort();
        for c in controllers {
            c.abort();
        }
        store.close().await;
        tracing::info!("stopped");
        res
    });
    Ok(Started {
        addr,
        state,
        ctx,
        stop,
        task,
    })
}

/// Run until `signal` resolves, then shut down gracefully.
pub async fn run(
    config: ServerConfig,
    signal: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    start(config).await?.wait(signal).await
}

/// Keep the ingress's route table equal to the healthy instances in the
/// store: at once on every change, and every second (changes made by other
/// control planes or routers sharing the store), until the server stops.
pub async fn feed_routes(ctx: Arc<ServerCtx>, routes: shellwego_ingress::Routes) {
    crate::controller::run(crate::controller::routes::RouteFeed::new(routes), ctx).await
}

/// [`feed_routes`], keeping `certs` (an HTTPS listener's) equal to the
/// hosts' certificates too.
pub async fn feed_routes_and_certs(
    ctx: Arc<ServerCtx>,
    routes: shellwego_ingress::Routes,
    certs: shellwego_ingress::Certs,
) {
    let feed = crate::controller::routes::RouteFeed::new(routes).with_certs(certs);
    crate::controller::run(feed, ctx).await
}

/// A one-time join token for a node of the installation's first
/// organization (`shellwego up`'s local agent).
pub async fn local_join_token(ctx: &ServerCtx, hostname: &str) -> anyhow::Result<String> {
    let org = async { orgs::first(&mut *ctx.store.conn().await?).await }
        .await
        .map_err(|e: shellwego_core::Error| anyhow::anyhow!("{e}"))?
        .ok_or_else(|| anyhow::anyhow!("the installation has no organization"))?;
    let mut tx = ctx
        .store
        .begin()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, secret) = shellwego_store::nodes::register(
        &mut tx,
        shellwego_store::nodes::Node {
            organization_id: org,
            hostname: hostname.to_string(),
            ..Default::default()
        },
        &serde_json::json!({}),
        crate::service::nodes::JOIN_TOKEN_LIFETIME,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    shellwego_store::commit(tx)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(secret)
}

/// What `shellwego server rotate-master-key` did.
#[derive(Debug)]
pub struct MasterKeyRotation {
    pub rotated: crate::vault::Rotated,
    /// The new key's base64, when the keys come from `SHELLWEGO_MASTER_KEY`
    /// (the operator must give it to every replica); `None` when it was
    /// written to `<data-dir>/master.key`.
    pub new_key: Option<String>,
    pub key_file: Option<PathBuf>,
}

/// Make a new master key the installation's (`new_key`: its base64, else
/// one is generated): the data keys are re-wrapped by it in one
/// transaction. With the key file (`<data-dir>/master.key`) the new key is
/// written there first, before the old one, so the replica on this host
/// finds it; with `SHELLWEGO_MASTER_KEY` it is returned to be given to
/// every replica (see docs/operations.md, "Rotating the master key").
pub async fn rotate_master_key(
    config: &ServerConfig,
    new_key: Option<&str>,
) -> anyhow::Result<MasterKeyRotation> {
    let key_file = config.data_dir.join("master.key");
    if config.master_key.is_none() && !key_file.exists() {
        anyhow::bail!(
            "no master key: neither SHELLWEGO_MASTER_KEY nor {} (run this with the server's data dir and environment)",
            key_file.display()
        );
    }
    let ring =
        crate::vault::Keyring::load_or_create(&config.data_dir, config.master_key.as_deref())
            .map_err(|e| anyhow::anyhow!("master key: {e}"))?;
    let (text, key) = match new_key {
        Some(t) => (
            t.trim().to_string(),
            crate::vault::MasterKey::from_base64(t)
                .map_err(|e| anyhow::anyhow!("the new key: {e}"))?,
        ),
        None => crate::vault::MasterKey::generate(),
    };
    let store = Store::connect(&config.database_url())
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
    store.migrate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let file = config.master_key.is_none();
    if file {
        // The new key first (the one this host's replica re-reads when it
        // meets it), the old ones after (what is not re-wrapped yet).
        let old = std::fs::read_to_string(&key_file)
            .with_context(|| format!("cannot read {}", key_file.display()))?;
        let mut lines = vec![text.clone()];
        lines.extend(
            old.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != text)
                .map(str::to_string),
        );
        crate::secret_file::write_secret_file(&key_file, &(lines.join("\n") + "\n"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let rotated = crate::vault::rotate_master_key(&store, &ring, &key)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.close().await;
    Ok(MasterKeyRotation {
        rotated,
        new_key: (!file).then_some(text),
        key_file: file.then_some(key_file),
    })
}
