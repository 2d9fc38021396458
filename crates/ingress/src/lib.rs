//! The ShellWeGo ingress router: a reverse proxy that sends
//! `Host: <app>.<base-domain>` to the app's healthy instances, round-robin.
//!
//! # Design
//!
//! * **Routing.** [`Routes`] holds an `Arc<RouteTable>` behind a lock that is
//!   only ever held for a pointer copy. Each request takes a snapshot, so
//!   [`Routes::replace`] swaps the whole table atomically and a request
//!   already in flight keeps the backends it started with (it is never
//!   dropped because its backend left the table). The app is the first
//!   label of the host: `<app>.<base_domain>`, optional `:port`, optional
//!   trailing dot, case-insensitive; `a.b.<base_domain>` is no app. Unknown
//!   host or app → 404; app in the table with no healthy backend → 503 with
//!   `Retry-After: 1`. Our own pages are short `text/plain` (with
//!   `nosniff`), since they repeat the client's Host.
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
//!   address appended, `X-Forwarded-Proto: http` and `X-Forwarded-Host`
//!   (the original host) are set, `Host` is passed through unchanged, and
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
//!   (h2c), detected per connection (hyper-util's auto builder). Backends
//!   get HTTP/1.1 over pooled keep-alive connections (hyper-util's legacy
//!   client with an `HttpConnector`, `TCP_NODELAY` both sides).
//! * **Errors.** Every failure is a [`ProxyError`]: its [`Phase`] says
//!   whether the client, the ingress or a backend failed, and whether a
//!   retry is safe. Client failures are logged at debug, the others at
//!   warn, with the request id, app and instance; bodies are never logged.
//!   A backend failure after connecting is a 502.
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
//! Out of scope here: TLS (the ingress speaks plain HTTP, hence
//! `X-Forwarded-Proto: http`), HTTP/2 to backends, and `CONNECT` (405).

mod body;
mod error;
mod headers;
mod proxy;
mod routes;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::{BoxError, Chain, Phase, ProxyError};
pub use routes::{Backend, RouteTable, Routes};

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
    /// How long a client may take to send a request's headers. Default 30 s.
    pub header_read_timeout: Duration,
    /// How long an idle pooled connection to a backend is kept. Default 30 s.
    pub upstream_idle_timeout: Duration,
    /// How many idle connections are kept per backend. Default 128.
    pub upstream_max_idle_per_backend: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            base_domain: "localhost".to_owned(),
            connect_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(30),
            upstream_max_idle_per_backend: 128,
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
    let (stage, stage_rx) = watch::channel(Stage::Serving);
    let proxy = Arc::new(Proxy::new(routes, &cfg, base_domain, stage_rx.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
        };
        // Latency matters more than packet count for a proxy; failing to
        // set it is harmless.
        let _ = stream.set_nodelay(true);
        let proxy = Arc::clone(&proxy);
        let builder = Arc::clone(&builder);
        let mut stage = stage_rx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| Arc::clone(&proxy).handle(peer, req));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = Stage::reached(&mut stage, |s| s != Stage::Serving) => {
                    // Finish what is in flight, then close; idle
                    // keep-alive connections close at once.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = conn.as_mut() => result,
                        () = Stage::reached(&mut stage, |s| s == Stage::Stopping) => Ok(()),
                    }
                }
            };
            if let Err(error) = result {
                // Clients that vanish, time out or speak garbage.
                tracing::debug!(
                    phase = %Phase::Downstream,
                    %peer,
                    error = %Chain(&*error),
                    "client connection ended with an error"
                );
            }
        });
    }

    drop(listener);
    drop(proxy);
    drop(stage_rx);
    stage.send_replace(Stage::Draining);
    tracing::info!(
        tasks = stage.receiver_count(),
        grace = ?cfg.shutdown_grace,
        "ingress shutting down; letting in-flight requests finish"
    );
    if tokio::time::timeout(cfg.shutdown_grace, stage.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = stage.receiver_count(),
            "shutdown grace period over; closing what is left"
        );
        stage.send_replace(Stage::Stopping);
        stage.closed().await;
    }
    Ok(())
}

/// Where [`serve`] is in its life, as connections and tunnels see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Accepting and serving.
    Serving,
    /// Shutdown signalled: finish in-flight requests, then close.
    Draining,
    /// The grace period is over: close now.
    Stopping,
}

impl Stage {
    /// Resolves once the stage satisfies `done`, or once `serve` is gone.
    async fn reached(stage: &mut watch::Receiver<Stage>, done: impl Fn(Stage) -> bool) {
        // The guard `wait_for` returns is not `Send`; drop it here.
        let _ = stage.wait_for(|s| done(*s)).await;
    }
}

/// Log a failed `accept`. Errors that concern one connection are skipped;
/// others (out of file descriptors, most likely) get a short pause so the
/// loop does not spin.
async fn accept_failed(error: &io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {
            tracing::debug!(phase = %Phase::Downstream, %error, "accept failed");
        }
        _ => {
            tracing::warn!(phase = %Phase::Ingress, %error, "accept failed; pausing 50 ms");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
