//! The HTTP side of the running control plane: what handlers and
//! middleware need beyond the [`ServerCtx`] every service shares.

use std::sync::Arc;

use crate::ctx::ServerCtx;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;

#[derive(Clone)]
pub struct AppState {
    pub ctx: Arc<ServerCtx>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<RateLimits>,
    /// The OpenAPI document, rendered once (by the caller: the document
    /// names every handler, and the handlers name this state).
    pub openapi_json: Arc<String>,
    /// Proxies whose forwarding headers tell the client's address.
    pub trusted_proxies: Arc<shellwego_net::client_ip::TrustedProxies>,
    /// The event log as it grows, for event streams.
    pub events: Arc<crate::feed::EventFeed>,
}

impl AppState {
    pub fn new(ctx: Arc<ServerCtx>, openapi_json: String) -> AppState {
        // Several replicas may share a PostgreSQL: so do their buckets.
        let limits = match ctx.store.backend() {
            shellwego_store::Backend::Sqlite => RateLimits::new(),
            shellwego_store::Backend::Postgres => RateLimits::shared(ctx.store.clone()),
        };
        AppState {
            ctx,
            metrics: Arc::new(Metrics::new()),
            limits: Arc::new(limits),
            openapi_json: Arc::new(openapi_json),
            trusted_proxies: Arc::default(),
            events: Arc::default(),
        }
    }
}
