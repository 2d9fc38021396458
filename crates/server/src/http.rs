//! The HTTP stack around the routes:
//!
//! ```text
//! request_context    request id, client address, URI length, tracing span,
//!                    metrics, problem bodies
//!  └ v1_gate         /v1 only: bearer token → Principal, rate limit + headers
//!     └ catch_panic  a panic becomes a generic 500 (the server keeps serving)
//!        └ router    routes (each records its template), 404/405 fallbacks
//! ```

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use shellwego_core::plan::Plan;
use shellwego_core::{id, Error};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::auth::{authenticate, presented, Presented, RealIp};
use crate::metrics::RequestLabels;
use crate::problem::{internal, ApiError, ProblemSpec};
use crate::state::AppState;

/// The request id, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The matched route template, passed outwards in response extensions.
#[derive(Debug, Clone)]
struct RouteTemplate(String);

/// Longest request target (path and query) accepted; longer ones get 414.
pub const MAX_URI_LEN: usize = 32 * 1024;

/// The service of one connection from `peer`: the application, with the
/// peer's address as `ConnectInfo`.
pub fn connection_service(app: Router, peer: SocketAddr) -> ConnService {
    ConnService { app, peer }
}

/// See [`connection_service`].
pub struct ConnService {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<shellwego_net::serve::RequestBody>> for ConnService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = tower::util::Oneshot<Router, Request>;

    fn call(&self, req: Request<shellwego_net::serve::RequestBody>) -> Self::Future {
        use tower::ServiceExt;
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.clone().oneshot(req)
    }
}

/// The problem document for a request hyper could not parse (it answers
/// those itself; see `shellwego_net::serve`).
pub fn protocol_error(status: StatusCode) -> shellwego_net::serve::ProtocolError {
    let (slug, title, detail) = match status {
        StatusCode::URI_TOO_LONG => (
            "uri-too-long",
            "URI Too Long",
            "The request URI is longer than the server accepts; send long inputs in a request body.",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers-too-large",
            "Request Header Fields Too Large",
            "The request headers are larger than the server accepts; send fewer or shorter headers.",
        ),
        _ => (
            "malformed-request",
            "Bad Request",
            "The request is not valid HTTP/1.1 (a header may contain a NUL byte or another forbidden character, or the request line is malformed); fix the request.",
        ),
    };
    let problem = ProblemSpec::new(status, slug, title, detail).into_body("", &id::new_id("req"));
    shellwego_net::serve::ProtocolError {
        content_type: "application/problem+json",
        body: serde_json::to_vec(&problem).unwrap_or_default(),
    }
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (router, _) = crate::openapi::router().split_for_parts();
    wrap(router, state)
}

/// Put the HTTP stack around `router` (tests wrap routes of their own).
pub fn wrap(router: Router<AppState>, state: AppState) -> Router {
    router
        .route_layer(from_fn(record_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(run_to_completion))
        .layer(CatchPanicLayer::custom(on_panic))
        .layer(from_fn_with_state(state.clone(), v1_gate))
        .layer(from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

/// Handlers run to completion even when the client goes away: a request
/// cancelled in the middle of a transaction would leave its rollback to
/// whenever the pool reuses the connection, holding SQLite's write lock
/// until then. (A panic inside is passed on to the panic layer.)
async fn run_to_completion(req: Request, next: Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(res) => res,
        Err(e) => match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(_) => ApiError(Error::Unavailable(
                "the request's task was cancelled (the server is shutting down)".into(),
            ))
            .into_response(),
        },
    }
}

async fn record_route(req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut res = next.run(req).await;
    if let Some(t) = template {
        res.extensions_mut().insert(RouteTemplate(t));
    }
    res
}

async fn not_found(uri: Uri) -> ProblemSpec {
    ProblemSpec::new(
        StatusCode::NOT_FOUND,
        "resource-not-found",
        "Not Found",
        format!(
            "There is no route {}; see /v1/openapi.json for the API.",
            uri.path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ProblemSpec {
    ProblemSpec::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method Not Allowed",
        format!(
            "{} is not allowed on {}; see /v1/openapi.json for the methods it takes.",
            req.method(),
            req.uri().path()
        ),
    )
}

fn on_panic(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = %msg, "handler panicked");
    internal().into_response()
}

/// Outermost layer: request id, span, access log, metrics, and the RFC 7807
/// body of any problem produced inside.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let rid = id::new_id("req");
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %rid, method = %method, path = %redact_path(&path));
    req.extensions_mut().insert(RequestId(rid.clone()));
    // The client's address: the peer's, or, behind a trusted proxy, the
    // one it forwarded.
    if let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    {
        let ip = state.trusted_proxies.client_ip(peer, req.headers());
        req.extensions_mut().insert(RealIp(ip));
    }

    let too_long = req
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().len() > MAX_URI_LEN);
    let res = if too_long {
        ProblemSpec::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI Too Long",
            format!("The request URI is longer than {MAX_URI_LEN} bytes; use fewer query parameters, or send long inputs in a request body."),
        )
        .into_response()
    } else {
        next.run(req).instrument(span.clone()).await
    };
    let (mut parts, body) = res.into_parts();
    let body = match parts.extensions.remove::<ProblemSpec>() {
        Some(spec) => {
            let problem = spec.into_body(&path, &rid);
            let bytes = serde_json::to_vec(&problem).unwrap_or_default();
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(bytes)
        }
        None => body,
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        parts.headers.insert("x-request-id", v);
    }
    let route = parts
        .extensions
        .get::<RouteTemplate>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".into());
    let status = parts.status.as_u16();
    let elapsed = started.elapsed();
    state.metrics.observe(
        RequestLabels {
            method: method.to_string(),
            route: route.clone(),
            status,
        },
        elapsed,
    );
    span.in_scope(|| tracing::info!(status, route = %route, latency_ms = elapsed.as_secs_f64() * 1000.0, "request completed"));
    Response::from_parts(parts, body)
}

/// The path as it may be logged: path segments that are secrets
/// (invitation tokens, bearer tokens pasted into URLs) become `{secret}`.
fn redact_path(path: &str) -> String {
    const SECRET_PREFIXES: [&str; 6] = ["inv_", "pat_", "sat_", "sess_", "temp_", "sw_join_"];
    path.split('/')
        .map(|seg| {
            if SECRET_PREFIXES.iter().any(|p| seg.starts_with(p)) {
                "{secret}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `/v1` requests: resolve the bearer token, then count the request against
/// the token's (or, without one, the client IP's) rate limit.
async fn v1_gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // The agent channel authenticates nodes itself (node credentials are
    // not user tokens) and is not subject to API rate limits. (Joining
    // carries no token, so it is limited per IP like any anonymous call.)
    if !(path == "/v1" || path.starts_with("/v1/"))
        || crate::routes::agent::node_authenticated(path)
    {
        return next.run(req).await;
    }
    let ip = req.extensions().get::<RealIp>().map(|c| c.0);
    let auth = match presented(req.headers()) {
        Presented::None => Ok(None),
        Presented::Malformed => Err(Error::Unauthenticated(
            "The Authorization header must be 'Bearer <token>'.".into(),
        )),
        Presented::Bearer(tok) => authenticate(&state.ctx.store, tok, ip).await.map(Some),
    };
    let (plan, key) = match &auth {
        Ok(Some(p)) => (p.plan, format!("token:{}", p.token_id)),
        _ => (
            Plan::Free,
            format!("ip:{}", ip.map(|i| i.to_string()).unwrap_or_default()),
        ),
    };
    let decision = state.limits.admit(plan, &key).await;
    let mut res = match (decision.refused.clone(), auth) {
        (Some(info), _) => ApiError(Error::RateLimited(info)).into_response(),
        (None, Err(e)) => ApiError(e).into_response(),
        // An organization that enforces MFA lets members without it do
        // one thing: enroll.
        (None, Ok(Some(p))) if p.mfa_required && !req.uri().path().starts_with("/v1/user/mfa") => {
            ApiError(Error::Forbidden(
                "Your organization requires multi-factor authentication: enroll at POST /v1/user/mfa, then confirm it.".into(),
            ))
            .into_response()
        }
        (None, Ok(principal)) => {
            if let Some(p) = principal {
                req.extensions_mut().insert(p);
            }
            next.run(req).await
        }
    };
    let h = res.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", decision.limit.to_string()),
        ("x-ratelimit-burst", decision.burst.to_string()),
        ("x-ratelimit-remaining", decision.remaining.to_string()),
        ("x-ratelimit-reset", decision.reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    res
}
