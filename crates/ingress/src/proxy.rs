//! The proxy core: runs the phases of one request (see `phases.rs`) in
//! order, forwards it with connect-failure fallback, streams the answer
//! back or hands an upgraded connection to a tunnel, and turns a failure
//! into a page. What a request is checked for, where it goes and how its
//! headers change is up to the hooks (`hooks.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use http::uri::{self, PathAndQuery, Scheme};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shellwego_net::serve::RequestBody;
use tokio::sync::watch;

use crate::body::{self, ResponseBody, UpstreamBody};
use crate::error::{caused_by_downstream_body, BoxError, Phase, ProxyError};
use crate::headers::{id_str, is_sane_request_id, is_upgrade_request, RequestIds, X_REQUEST_ID};
use crate::hooks;
use crate::phases::{Hooks, RequestCtx};
use crate::routes::Routes;
use crate::IngressConfig;
use shellwego_net::serve::Stage;

/// Everything a request needs, shared by all connections.
pub(crate) struct Proxy {
    client: Client<HttpConnector, UpstreamBody>,
    /// How long a backend may take to send its response head.
    upstream_timeout: std::time::Duration,
    /// The phase hooks, in order.
    hooks: Hooks,
    ids: RequestIds,
    /// Where `serve` is in its life; tunnels hold a clone, which is also
    /// how shutdown knows when they are gone.
    stage: watch::Receiver<Stage>,
}

impl Proxy {
    pub(crate) fn new(
        routes: Routes,
        cfg: &IngressConfig,
        base_domain: Box<str>,
        stage: watch::Receiver<Stage>,
        https: bool,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.upstream_idle_timeout)
            .pool_max_idle_per_host(cfg.upstream_max_idle_per_backend)
            // We always set Host ourselves (the client's, not the backend's
            // address).
            .set_host(false)
            .build(connector);
        Self {
            client,
            upstream_timeout: cfg.upstream_timeout,
            hooks: hooks::standard(
                routes,
                base_domain,
                https,
                if https {
                    None
                } else {
                    cfg.https_redirect.clone()
                },
            ),
            ids: RequestIds::new(),
            stage,
        }
    }

    /// The service function: never fails, every problem is a page.
    pub(crate) async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        Ok(self.proxy(peer, req).await)
    }

    /// One request through every phase: the hooks up to forwarding, the
    /// forward, the response hooks, then logging; a tunnel starts last.
    async fn proxy(
        &self,
        peer: SocketAddr,
        mut req: Request<RequestBody>,
    ) -> Response<ResponseBody> {
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) if is_sane_request_id(id) => id.clone(),
            _ => self.ids.next(),
        };
        let mut ctx = RequestCtx::new(request_id, peer);
        // Taken out before any hook runs: the handle to the client's side of
        // an upgrade is in the request's extensions, and the tunnel is the
        // core's business, not a hook's.
        ctx.upgrade = req.version() == Version::HTTP_11 && is_upgrade_request(req.headers());
        let downstream_upgrade = ctx.upgrade.then(|| hyper::upgrade::on(&mut req));
        let (head, body) = req.into_parts();
        let (resp, tunnel) = self.run(&mut ctx, head, body, downstream_upgrade).await;
        self.hooks.logging(&ctx);
        if let Some(tunnel) = tunnel {
            self.spawn_tunnel(tunnel, ctx);
        }
        resp
    }

    /// The phases up to a response head: request hooks, forward, response
    /// hooks. Returns the tunnel to start when both sides switch protocols.
    async fn run(
        &self,
        ctx: &mut RequestCtx,
        mut head: request::Parts,
        body: RequestBody,
        downstream_upgrade: Option<OnUpgrade>,
    ) -> (Response<ResponseBody>, Option<Tunnel>) {
        if let ControlFlow::Break(resp) = self.hooks.request(&mut head, ctx) {
            return (resp, None);
        }
        let forward = Forward {
            method: head.method,
            path: head
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers: head.headers,
            body,
        };
        match self.forward(forward, ctx).await {
            Ok((resp, backend)) => {
                ctx.set_backend(Some(backend));
                ctx.upstream_status = Some(resp.status());
                self.respond(resp, downstream_upgrade, ctx)
            }
            Err((error, backend)) => {
                ctx.set_backend(backend);
                let page = error_page(&error, ctx);
                ctx.error = Some(error);
                (page, None)
            }
        }
    }

    /// Send the request to the app's backends in round-robin order: the
    /// next one in turn first, then, only while connecting fails (so
    /// nothing was sent), each of the others once. The backends are
    /// [`RequestCtx::route`]'s, and are returned by index: the one that
    /// answered, or the one that failed after connecting.
    async fn forward(
        &self,
        forward: Forward,
        ctx: &RequestCtx,
    ) -> Result<(Response<Incoming>, usize), (ProxyError, Option<usize>)> {
        let no_backend = || ProxyError::new(Phase::Ingress, false, "app has no usable backend");
        // The hooks answer a request without a route or backends before it
        // gets here; this only keeps a mistake in a hook from panicking.
        let Some(route) = ctx.route.as_deref() else {
            return Err((no_backend(), None));
        };
        if route.backends.is_empty() {
            return Err((no_backend(), None));
        }
        let (app, request_id) = (ctx.app().unwrap_or(""), &ctx.request_id);
        let Forward {
            method,
            path,
            headers,
            body,
        } = forward;
        // A body is parked in a slot that only a polling attempt empties;
        // see `body`.
        let slot = if body.is_end_stream() {
            None
        } else {
            let hint = body.size_hint();
            Some((Arc::new(Mutex::new(Some(body))), hint))
        };
        let count = route.backends.len();
        let turn = route.next.fetch_add(1, Ordering::Relaxed);
        let start = match route.schedule.len() {
            0 => turn % count,
            n => route.schedule[turn % n],
        };
        let mut headers = Some(headers);
        let mut last_error = None;
        for attempt in 0..count {
            let index = (start + attempt) % count;
            let backend = &route.backends[index];
            let mut uri = uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = route.authorities.get(index).cloned();
            uri.path_and_query = Some(path.clone());
            let uri = Uri::from_parts(uri).map_err(|e| {
                (
                    ProxyError::new(
                        Phase::Downstream,
                        false,
                        "request target cannot be forwarded",
                    )
                    .with_source(e),
                    None,
                )
            })?;
            // Only the last attempt may move the headers; earlier ones need
            // a copy in case connecting fails.
            let headers = if attempt + 1 == count {
                headers.take().unwrap_or_default()
            } else {
                headers.clone().unwrap_or_default()
            };
            let body = match &slot {
                Some((slot, hint)) => UpstreamBody::waiting(Arc::clone(slot), *hint),
                None => UpstreamBody::empty(),
            };
            let mut out = Request::new(body);
            *out.method_mut() = method.clone();
            *out.uri_mut() = uri;
            *out.version_mut() = Version::HTTP_11;
            *out.headers_mut() = headers;

            let answered = tokio::time::timeout(self.upstream_timeout, self.client.request(out));
            let Ok(answered) = answered.await else {
                return Err((ProxyError::upstream_timeout(), Some(index)));
            };
            match answered {
                Ok(resp) => return Ok((resp, index)),
                Err(error) => {
                    let untouched = slot.as_ref().is_none_or(|(slot, _)| body::untouched(slot));
                    if error.is_connect() && untouched {
                        let error = ProxyError::upstream_connect(error);
                        tracing::warn!(
                            phase = %error.phase(),
                            retry_safe = true,
                            request_id = id_str(request_id),
                            app,
                            instance_id = %backend.instance_id,
                            addr = %backend.addr,
                            error = %error.chain(),
                            tries_left = count - attempt - 1,
                            "connecting to instance failed"
                        );
                        last_error = Some(error);
                        continue;
                    }
                    let (phase, what) = if caused_by_downstream_body(&error) {
                        (
                            Phase::Downstream,
                            "reading the client's request body failed",
                        )
                    } else {
                        (Phase::Upstream, "request to the instance failed")
                    };
                    let error = ProxyError::new(phase, false, what).with_source(error);
                    return Err((error, Some(index)));
                }
            }
        }
        Err((last_error.unwrap_or_else(no_backend), None))
    }

    /// Turn the backend's response into the client's through the
    /// `response_filter` hooks, body streamed. A 101 to an upgrade request
    /// comes with the tunnel to start.
    fn respond(
        &self,
        mut resp: Response<Incoming>,
        downstream_upgrade: Option<OnUpgrade>,
        ctx: &mut RequestCtx,
    ) -> (Response<ResponseBody>, Option<Tunnel>) {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(downstream) = downstream_upgrade else {
                let error = ProxyError::new(
                    Phase::Upstream,
                    false,
                    "instance switched protocols without being asked to",
                );
                let app = ctx.app().unwrap_or("");
                let page = ctx.page(
                    error.status(),
                    format!("502 Bad Gateway: the instance of app \"{app}\" answered wrongly.\n"),
                );
                ctx.error = Some(error);
                return (page, None);
            };
            let upstream = hyper::upgrade::on(&mut resp);
            let (mut parts, _) = resp.into_parts();
            self.hooks.response(&mut parts, ctx);
            let tunnel = Tunnel {
                downstream,
                upstream,
            };
            return (
                Response::from_parts(parts, ResponseBody::empty()),
                Some(tunnel),
            );
        }
        let (mut parts, body) = resp.into_parts();
        self.hooks.response(&mut parts, ctx);
        let body = ResponseBody::Upstream {
            inner: body,
            request_id: ctx.request_id.clone(),
        };
        (Response::from_parts(parts, body), None)
    }

    /// Once both sides have switched protocols, copy bytes both ways until
    /// either side closes or the shutdown grace period is over.
    fn spawn_tunnel(&self, tunnel: Tunnel, ctx: RequestCtx) {
        let Tunnel {
            downstream,
            upstream,
        } = tunnel;
        let mut stage = self.stage.clone();
        let app = ctx.app().unwrap_or("").to_owned();
        let instance_id = ctx
            .backend()
            .map_or_else(String::new, |b| b.instance_id.clone());
        let request_id = ctx.request_id;
        tokio::spawn(async move {
            let tunnel = async {
                let (client, instance) = tokio::try_join!(downstream, upstream)?;
                let (mut client, mut instance) = (TokioIo::new(client), TokioIo::new(instance));
                let copied = tokio::io::copy_bidirectional(&mut client, &mut instance).await?;
                Ok::<_, BoxError>(copied)
            };
            let outcome = tokio::select! {
                copied = tunnel => Some(copied),
                () = Stage::reached(&mut stage, |s| s == Stage::Stopping) => None,
            };
            let request_id = id_str(&request_id);
            match outcome {
                Some(Ok((from_client, from_instance))) => tracing::debug!(
                    request_id,
                    app,
                    instance_id,
                    from_client,
                    from_instance,
                    "tunnel closed"
                ),
                // Either side going away abruptly is routine for long-lived
                // connections.
                Some(Err(error)) => tracing::debug!(
                    request_id,
                    app,
                    instance_id,
                    %error,
                    "tunnel ended with an error"
                ),
                None => tracing::debug!(
                    request_id,
                    app,
                    instance_id,
                    "tunnel cut: shutdown grace period over"
                ),
            }
        });
    }
}

/// The parts of a client request that are forwarded.
struct Forward {
    method: Method,
    path: PathAndQuery,
    headers: http::HeaderMap,
    body: RequestBody,
}

/// Both sides of an upgraded connection, once the backend answered 101.
struct Tunnel {
    downstream: OnUpgrade,
    upstream: OnUpgrade,
}

/// The page for a request that failed after a route was chosen.
fn error_page(error: &ProxyError, ctx: &RequestCtx) -> Response<ResponseBody> {
    let app = ctx.app().unwrap_or("");
    let text = match error.phase() {
        Phase::Upstream if error.timed_out() => {
            format!("504 Gateway Timeout: the instance of app \"{app}\" did not answer in time.\n")
        }
        Phase::Upstream if error.retry_safe() => {
            format!("502 Bad Gateway: no instance of app \"{app}\" accepted a connection.\n")
        }
        Phase::Upstream => {
            format!("502 Bad Gateway: the instance of app \"{app}\" failed to answer.\n")
        }
        Phase::Downstream => format!("400 Bad Request: {}.\n", error.what()),
        Phase::Ingress => {
            "500 Internal Server Error: the ingress could not forward the request.\n".into()
        }
    };
    ctx.page(error.status(), text)
}
