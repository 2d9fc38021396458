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
}

impl AppState {
    pub fn new(store: Store, key: crate::mfa::Key) -> AppState {
        AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            limits: Arc::new(RateLimits::new()),
            openapi_json: Arc::new(crate::openapi::document_json()),
            key: Arc::new(key),
        }
    }
}
