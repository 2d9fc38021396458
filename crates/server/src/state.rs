//! Shared state of the running control plane.

use std::sync::Arc;

use shellwego_store::Store;

use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<RateLimits>,
    /// The OpenAPI document, rendered once.
    pub openapi_json: Arc<String>,
    /// The master key (encrypts TOTP secrets at rest).
    pub key: Arc<crate::mfa::Key>,
    /// A node silent this long is offline; agents sync at least 3× as often.
    pub node_timeout: std::time::Duration,
    /// Becomes true when the server starts shutting down (ends long-polls).
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Bumped whenever desired or observed state changes in this process
    /// (wakes waiting agent syncs and the router's table refresh).
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Wakes the app controller for a pass now.
    pub kick: Arc<tokio::sync::Notify>,
    /// Where uploaded archives are kept.
    pub uploads_dir: std::path::PathBuf,
    /// Proxies whose forwarding headers tell the client's address.
    pub trusted_proxies: Arc<shellwego_net::client_ip::TrustedProxies>,
    /// How many Free-plan organizations one user may own.
    pub max_free_orgs_per_user: u32,
    /// The `[ssrf]` policy: which targets user-given URLs may reach (checked
    /// here when they are given, and sent to agents, which check it again
    /// when they fetch).
    pub ssrf: shellwego_net::ssrf::Guard,
}

impl AppState {
    pub fn new(
        store: Store,
        key: crate::mfa::Key,
        node_timeout: std::time::Duration,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> AppState {
        AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            limits: Arc::new(RateLimits::new()),
            openapi_json: Arc::new(crate::openapi::document_json()),
            key: Arc::new(key),
            node_timeout,
            stopping,
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            kick: Arc::new(tokio::sync::Notify::new()),
            uploads_dir: std::env::temp_dir().join("shellwego-uploads"),
            trusted_proxies: Arc::default(),
            max_free_orgs_per_user: 1,
            ssrf: shellwego_net::ssrf::Guard::strict(),
        }
    }

    /// Something changed: wake waiting syncs and the router, and have the
    /// controller take a pass.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        self.kick.notify_one();
    }

    /// The longest an agent sync is held: a third of the liveness timeout,
    /// so that a node heard from on every sync is never taken for dead.
    pub fn sync_wait(&self) -> std::time::Duration {
        (self.node_timeout / 3).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(30),
        )
    }
}
