//! Proxying one request: route, rewrite, forward with connect-failure
//! fallback, stream the answer back, or hand an upgraded connection to a
//! tunnel.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, RETRY_AFTER, X_CONTENT_TYPE_OPTIONS};
use http::uri::{self, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Bytes, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shellwego_net::serve::RequestBody;
use tokio::sync::watch;

use crate::body::{self, ResponseBody, UpstreamBody};
use crate::error::{caused_by_downstream_body, BoxError, Phase, ProxyError};
use crate::headers::{
    append_forwarded_for, is_sane_request_id, is_upgrade_request, strip_hop_by_hop, RequestIds,
    X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::routes::{app_of_host, AppRoute, Backend, Routes};
use crate::IngressConfig;
use shellwego_net::serve::Stage;

/// Longest host shown on a 404 page.
const MAX_HOST_SHOWN: usize = 255;

/// Everything a request needs, shared by all connections.
pub(crate) struct Proxy {
    routes: Routes,
    client: Client<HttpConnector, UpstreamBody>,
    /// Normalised: lowercase, no leading or trailing dot.
    base_domain: Box<str>,
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
            routes,
            client,
            base_domain,
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

    async fn proxy(
        &self,
        peer: SocketAddr,
        mut req: Request<RequestBody>,
    ) -> Response<ResponseBody> {
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) if is_sane_request_id(id) => id.clone(),
            _ => self.ids.next(),
        };

        if req.method() == Method::CONNECT {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                &request_id,
                "405 Method Not Allowed: the ingress does not tunnel CONNECT requests.\n".into(),
            );
        }

        // The authority of an absolute-form or HTTP/2 request wins over Host
        // (RFC 9112 §3.2.2).
        let host = match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => req.headers().get(HOST).cloned(),
        };
        let Some(host) = host else {
            return page(
                StatusCode::BAD_REQUEST,
                &request_id,
                "400 Bad Request: the request names no host.\n".into(),
            );
        };
        let Ok(host_str) = host.to_str() else {
            return page(
                StatusCode::BAD_REQUEST,
                &request_id,
                "400 Bad Request: the Host header is not a valid host.\n".into(),
            );
        };
        let table = self.routes.snapshot();
        let Some((app, route)) = app_of_host(host_str, &self.base_domain)
            .and_then(|app| table.lookup(app).map(|route| (app, route)))
        else {
            let shown = host_str.get(..MAX_HOST_SHOWN).unwrap_or(host_str);
            return page(
                StatusCode::NOT_FOUND,
                &request_id,
                format!("404 Not Found: no app is served at host \"{shown}\".\n"),
            );
        };
        if route.backends.is_empty() {
            let mut resp = page(
                StatusCode::SERVICE_UNAVAILABLE,
                &request_id,
                format!(
                    "503 Service Unavailable: no healthy instance of app \"{app}\"; \
                     try again shortly.\n"
                ),
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }

        let upgrade = req.version() == Version::HTTP_11 && is_upgrade_request(req.headers());
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers, upgrade);
        append_forwarded_for(headers, peer.ip());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        headers.insert(&X_FORWARDED_HOST, host.clone());
        headers.insert(HOST, host.clone());
        headers.insert(&X_REQUEST_ID, request_id.clone());

        let forward = Forward {
            method: parts.method,
            path: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers: parts.headers,
            body,
        };
        match self.forward(forward, route, app, &request_id).await {
            Ok((resp, backend)) => {
                self.routes
                    .record(&backend.instance_id, resp.status().is_server_error());
                tracing::debug!(
                    request_id = id_str(&request_id),
                    app,
                    instance_id = %backend.instance_id,
                    status = resp.status().as_u16(),
                    "proxied"
                );
                self.respond(resp, downstream_upgrade, request_id, app, backend)
            }
            Err((error, backend)) => {
                let text = match error.phase() {
                    Phase::Upstream if error.retry_safe() => format!(
                        "502 Bad Gateway: no instance of app \"{app}\" accepted a connection.\n"
                    ),
                    Phase::Upstream => format!(
                        "502 Bad Gateway: the instance of app \"{app}\" failed to answer.\n"
                    ),
                    Phase::Downstream => format!("400 Bad Request: {}.\n", error.what()),
                    Phase::Ingress => {
                        "500 Internal Server Error: the ingress could not forward the request.\n"
                            .into()
                    }
                };
                if let (Some(b), Phase::Upstream) = (backend, error.phase()) {
                    self.routes.record(&b.instance_id, true);
                }
                log_failure(&error, &request_id, app, backend);
                page(error.status(), &request_id, text)
            }
        }
    }

    /// Send the request to the app's backends in round-robin order: the
    /// next one in turn first, then, only while connecting fails (so
    /// nothing was sent), each of the others once.
    async fn forward<'r>(
        &self,
        forward: Forward,
        route: &'r AppRoute,
        app: &str,
        request_id: &HeaderValue,
    ) -> Result<(Response<Incoming>, &'r Backend), (ProxyError, Option<&'r Backend>)> {
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

            match self.client.request(out).await {
                Ok(resp) => return Ok((resp, backend)),
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
                    return Err((error, Some(backend)));
                }
            }
        }
        Err((
            last_error.unwrap_or_else(|| {
                ProxyError::new(Phase::Ingress, false, "app has no usable backend")
            }),
            None,
        ))
    }

    /// Turn the backend's response into the client's: hop-by-hop headers
    /// out, request id in, body streamed. A 101 to an upgrade request
    /// starts a tunnel.
    fn respond(
        &self,
        mut resp: Response<Incoming>,
        downstream_upgrade: Option<OnUpgrade>,
        request_id: HeaderValue,
        app: &str,
        backend: &Backend,
    ) -> Response<ResponseBody> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(downstream) = downstream_upgrade else {
                let error = ProxyError::new(
                    Phase::Upstream,
                    false,
                    "instance switched protocols without being asked to",
                );
                log_failure(&error, &request_id, app, Some(backend));
                return page(
                    error.status(),
                    &request_id,
                    format!("502 Bad Gateway: the instance of app \"{app}\" answered wrongly.\n"),
                );
            };
            let upstream = hyper::upgrade::on(&mut resp);
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            parts.headers.insert(&X_REQUEST_ID, request_id.clone());
            self.spawn_tunnel(downstream, upstream, request_id, app, backend);
            return Response::from_parts(parts, ResponseBody::empty());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        parts.headers.insert(&X_REQUEST_ID, request_id.clone());
        Response::from_parts(
            parts,
            ResponseBody::Upstream {
                inner: body,
                request_id,
            },
        )
    }

    /// Once both sides have switched protocols, copy bytes both ways until
    /// either side closes or the shutdown grace period is over.
    fn spawn_tunnel(
        &self,
        downstream: OnUpgrade,
        upstream: OnUpgrade,
        request_id: HeaderValue,
        app: &str,
        backend: &Backend,
    ) {
        let mut stage = self.stage.clone();
        let app = app.to_owned();
        let instance_id = backend.instance_id.clone();
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

/// Log a failed request: clients' failures are routine (debug), ours and
/// the backends' are not (warn). Never logs bodies.
fn log_failure(error: &ProxyError, request_id: &HeaderValue, app: &str, backend: Option<&Backend>) {
    let instance_id = backend.map_or("", |b| b.instance_id.as_str());
    match error.phase() {
        Phase::Downstream => tracing::debug!(
            phase = %error.phase(),
            retry_safe = error.retry_safe(),
            request_id = id_str(request_id),
            app,
            instance_id,
            error = %error.chain(),
            "request failed"
        ),
        Phase::Upstream | Phase::Ingress => tracing::warn!(
            phase = %error.phase(),
            retry_safe = error.retry_safe(),
            request_id = id_str(request_id),
            app,
            instance_id,
            error = %error.chain(),
            "request failed"
        ),
    }
}

/// A request id for logs; ids are sane by construction, so this never
/// falls back in practice.
pub(crate) fn id_str(request_id: &HeaderValue) -> &str {
    request_id.to_str().unwrap_or("-")
}

/// One of the ingress's own short plain-text pages.
fn page(status: StatusCode, request_id: &HeaderValue, text: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::Page(Some(Bytes::from(text))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(&X_REQUEST_ID, request_id.clone());
    resp
}
