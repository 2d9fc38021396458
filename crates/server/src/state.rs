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
        }
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
