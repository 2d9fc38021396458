//! The ShellWeGo ingress router: a reverse proxy that sends
//! `Host: <app>.<base-domain>` to the app's healthy instances, round-robin.
//!
//! # Design
//!
//! * **Phases.** A request goes through pingora's phases, `request_filter
//!   → upstream_peer → upstream_request_filter →` forward `→
//!   response_filter → logging`, with one context per request. Each concern
//!   below that is not forwarding itself (CONNECT rejection, the host,
//!   routing, header rewriting, counting, logging) is one hook in a fixed
//!   list, so a new one (ACME http-01, custom domains, path routing) is one
//!   more hook; see `phases.rs` and `hooks.rs`.
//! * **Routing.** [`Routes`] holds an `Arc<RouteTable>` behind a lock that is
//!   only ever held for a pointer copy. Each request takes a snapshot, so
//!   [`Routes::replace`] swaps the whole table atomically and a request
//!   already in flight keeps the backends it started with (it is never
//!   dropped because its backend left the table). The app is the first
//!   label of the host: `<app>.<base_domain>`, optional `:port`, optional
//!   trailing dot, case-insensitive; `a.b.<base_domain>` is no app. Unknown
//!   host or app → 404; app in the table with no healthy backend → 503 with
//!   `Retry-After: 1`. Our own pages are short `text/plain` (with
//!   `nosniff`), since they repeat the client's Host. A host that is not
//!   under the base domain may be a custom domain
//!   ([`Routes::replace_with_domains`]): its routes are matched by longest
//!   path prefix at a `/` boundary (its own, else its parent's wildcard
//!   `*.<parent>`); `strip_prefix` cuts the prefix off the forwarded path
//!   and sets `X-Forwarded-Prefix`.
//! * **Balancing.** Each app has an atomic counter, kept across `replace`
//!   for apps that stay in the table; a request starts at the next backend
//!   in turn.
//! * **Connect-failure fallback.** If connecting to a backend fails (refused,
//!   unreachable, `connect_timeout`), nothing was sent, so the next backend
//!   is tried, each at most once, before a 502. This is what lets an
//!   instance that is draining close its listener without failing requests
//!   routed to it from a slightly stale table. Once a byte may have been
//!   sent, there is no retry: the request body sits in a shared slot that
//!   the first poll empties, and a retry happens only if the error is a
//!   connect error *and* the slot is still full. (The price is one copy of
//!   the request headers per attempt that may need a retry, i.e. only for
//!   apps with more than one backend.)
//! * **Forwarding.** Hop-by-hop headers (`Connection` and what it names,
//!   `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`,
//!   `Upgrade`) are stripped both ways; `X-Forwarded-For` gets the client
//!   address appended, `X-Forwarded-Proto` (`http`, or `https` on the TLS
//!   listener) and `X-Forwarded-Host` (the original host) are set, RFC
//!   7239 `Forwarded` gets this hop (`for`, `proto`, `host`) appended, `Host` is passed through unchanged, and
//!   `X-Request-Id` is the client's when it is sane (1–128 characters of
//!   `[A-Za-z0-9._:+/=@-]`) or a generated one; the response carries the
//!   same id.
//! * **Streaming.** Bodies are streamed frame by frame in both directions,
//!   never buffered: the request body goes to the backend as the client
//!   sends it, the response body to the client as the backend sends it.
//! * **Upgrades.** An HTTP/1.1 request with `Connection: upgrade` is
//!   forwarded with its `Upgrade` header; when the backend answers 101,
//!   both connections are upgraded and bytes are copied both ways
//!   (`copy_bidirectional`) until either side closes. HTTP/2 extended
//!   CONNECT (RFC 8441 WebSockets over h2) is not supported.
//! * **Connections.** Clients speak HTTP/1.1 or HTTP/2 with prior knowledge
//!   (h2c), detected per connection (hyper-util's auto builder), served by
//!   `shellwego_net::serve`: header, body, idle and send timeouts and
//!   connection caps ([`IngressConfig::limits`]). Backends
//!   get HTTP/1.1 over pooled keep-alive connections (hyper-util's legacy
//!   client with an `HttpConnector`, `TCP_NODELAY` both sides).
//! * **Errors.** Every failure is a [`ProxyError`]: its [`Phase`] says
//!   whether the client, the ingress or a backend failed, and whether a
//!   retry is safe. Client failures are logged at debug, the others at
//!   warn, with the request id, app and instance; bodies are never logged.
//!   A backend failure after connecting is a 502; a backend that sends no
//!   response head within [`IngressConfig::upstream_timeout`] is a 504.
//! * **Shutdown.** When the `shutdown` future resolves, [`serve`] stops
//!   accepting, closes idle keep-alive connections, lets in-flight requests
//!   (and open tunnels) finish, and returns when they have — or when
//!   [`IngressConfig::shutdown_grace`] (default 30 s) is over, at which
//!   point what is left is closed. Open tunnels (WebSockets) count as in
//!   flight, so with one open, shutdown takes the whole grace period.
//!   Dropping the `serve` future instead closes everything at once.
//!
//! Per request the hot path allocates little: the forwarded-for value, a
//! generated request id when the client sent none, the shared body slot
//! when there is a body, and the header copy mentioned above. The route
//! lookup lowercases (allocating) only a host that has uppercase letters.
//!
//! * **HTTPS.** [`serve_tls`] serves the same routes over TLS (rustls, the
//!   certificate chosen by SNI from [`Certs`], ALPN `h2`/`http/1.1`,
//!   `X-Forwarded-Proto: https`); the plain listener redirects (308) hosts
//!   that have a certificate to it ([`IngressConfig::https_redirect`]),
//!   except ACME http-01 challenges.
//!
//! Out of scope here: HTTP/2 to backends, and `CONNECT` (405).

mod body;
mod error;
mod headers;
mod hooks;
mod phases;
mod proxy;
mod routes;
mod tls;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
pub use shellwego_net::client_ip::TrustedProxies;
pub use shellwego_net::serve::Limits;
use shellwego_net::serve::{ServeOptions, Stage};
use std::net::SocketAddr;
use tokio::net::TcpListener;

pub use error::{BoxError, Chain, Phase, ProxyError};
pub use routes::{Backend, DomainRoute, RequestCounts, RouteTable, Routes, SLOT_MICROS};
pub use tls::{server_config, Certs};

use proxy::Proxy;

/// How the ingress behaves; [`Default`] gives sensible values, so set only
/// what you need: `IngressConfig { base_domain: "apps.example.com".into(),
/// ..IngressConfig::default() }`.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Apps are served at `<app>.<base_domain>`. Default `localhost`.
    /// Compared case-insensitively; leading and trailing dots are ignored.
    pub base_domain: String,
    /// How long connecting to a backend may take before the next one is
    /// tried. Default 2 s.
    pub connect_timeout: Duration,
    /// After shutdown is signalled, how long in-flight requests and open
    /// tunnels get to finish before they are cut. Default 30 s.
    pub shutdown_grace: Duration,
    /// Timeouts and connection caps for clients (`shellwego_net::serve`).
    pub limits: Limits,
    /// Proxies in front of the ingress: exempt from the per-address
    /// connection cap.
    pub trusted_proxies: TrustedProxies,
    /// How long a backend may take to send its response head once the
    /// request is sent; past it the client gets our 504. Default 60 s.
    pub upstream_timeout: Duration,
    /// How long an idle pooled connection to a backend is kept. Default 30 s.
    pub upstream_idle_timeout: Duration,
    /// How many idle connections are kept per backend. Default 128.
    pub upstream_max_idle_per_backend: usize,
    /// On the plain-HTTP listener: requests for a host with a certificate
    /// here are redirected (308) to HTTPS on this port, except ACME
    /// challenges (`/.well-known/acme-challenge/`). `None`: no redirects.
    pub https_redirect: Option<(Certs, u16)>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            base_domain: "localhost".to_owned(),
            connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            limits: Limits::default(),
            trusted_proxies: TrustedProxies::default(),
            upstream_idle_timeout: Duration::from_secs(30),
            upstream_max_idle_per_backend: 128,
            https_redirect: None,
        }
    }
}

/// Serve until `shutdown` resolves; then stop accepting and let in-flight
/// requests finish, for at most [`IngressConfig::shutdown_grace`].
///
/// Returns `Ok(())` once every connection has finished or been cut. Fails
/// only when `cfg.base_domain` is unusable (empty, or not plain ASCII
/// without whitespace, `:` or `/`); errors accepting a connection are logged
/// and do not stop the server.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    cfg: IngressConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let base_domain = normalise_base_domain(&cfg.base_domain)?;
    // Every connection task and tunnel holds a receiver (connections through
    // the shared `Proxy`), so `stage.closed()` doubles as "all finished".
    // Dropping `serve` drops the sender, which cuts everything.
    let (stage, stage_rx) = Stage::channel();
    let proxy = Arc::new(Proxy::new(routes, &cfg, base_domain, stage_rx, false));
    let opts = ServeOptions {
        limits: cfg.limits.clone().fitted_to_open_files(),
        trusted_proxies: cfg.trusted_proxies.clone(),
        shutdown_grace: cfg.shutdown_grace,
        protocol_error: None,
        name: "ingress",
        tls: None,
    };
    let make = move |peer: SocketAddr| {
        let proxy = Arc::clone(&proxy);
        service_fn(move |req| Arc::clone(&proxy).handle(peer, req))
    };
    shellwego_net::serve::serve(listener, opts, stage, make, shutdown).await
}

/// [`serve`] over HTTPS: the certificate chosen by SNI from `certs` (a
/// client without SNI, or for a host without a certificate, fails the
/// handshake), HTTP/2 or HTTP/1.1 by ALPN, `X-Forwarded-Proto: https`.
/// Certificates replaced in `certs` apply to new handshakes; open
/// connections keep theirs.
pub async fn serve_tls(
    listener: TcpListener,
    routes: Routes,
    cfg: IngressConfig,
    certs: Certs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let base_domain = normalise_base_domain(&cfg.base_domain)?;
    let tls = server_config(certs).map_err(io::Error::other)?;
    let (stage, stage_rx) = Stage::channel();
    let proxy = Arc::new(Proxy::new(routes, &cfg, base_domain, stage_rx, true));
    let opts = ServeOptions {
        limits: cfg.limits.clone().fitted_to_open_files(),
        trusted_proxies: cfg.trusted_proxies.clone(),
        shutdown_grace: cfg.shutdown_grace,
        protocol_error: None,
        name: "ingress-https",
        tls: Some(tls),
    };
    let make = move |peer: SocketAddr| {
        let proxy = Arc::clone(&proxy);
        service_fn(move |req| Arc::clone(&proxy).handle(peer, req))
    };
    shellwego_net::serve::serve(listener, opts, stage, make, shutdown).await
}

fn normalise_base_domain(base: &str) -> io::Result<Box<str>> {
    let base = base.trim().trim_matches('.').to_ascii_lowercase();
    if base.is_empty()
        || !base
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'/')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ingress base domain {base:?} is not a domain name"),
        ));
    }
    Ok(base.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_domain_is_normalised() {
        assert_eq!(
            &*normalise_base_domain(" .Apps.Example.COM. ").unwrap(),
            "apps.example.com"
        );
        assert!(normalise_base_domain("").is_err());
        assert!(normalise_base_domain("..").is_err());
        assert!(normalise_base_domain("a b").is_err());
        assert!(normalise_base_domain("host:80").is_err());
    }
}
