//! The phases of one proxied request, and the hooks that fill them in.
//!
//! The shape is pingora's `ProxyHttp`: every request goes through
//! `request_filter → upstream_peer → upstream_request_filter →` (forward)
//! `→ response_filter → logging`, carrying one [`RequestCtx`]. The proxy
//! core (`proxy.rs`) runs the phases in that order and does what no hook
//! should: forwarding with connect-failure fallback, streaming, upgrades
//! and turning a failure into a page. Each concern of the proxy — CONNECT
//! rejection, finding the host, routing it to an app, rewriting headers,
//! counting answers, logging — is one [`Hook`] (see `hooks.rs`), so a new
//! concern (an ACME http-01 responder, custom domains, path routing, rate
//! limits, access logs) is one more hook in that list, not more lines in
//! the core.
//!
//! # Why a list of trait objects with sync methods
//!
//! The hooks are a `Box<[Box<dyn Hook>]>` built once per `serve` and held
//! by the one proxy all connections share (so `Box`, not `Arc`), and every
//! [`Hook`] method has a default that does nothing, so a hook implements
//! only the phases it cares about and adding one is a single line in the
//! list. A fixed pipeline of typed hooks would save a few indirect calls
//! per request but needs the pipeline type and every phase runner edited
//! for each new hook; the calls are cheap next to a network round trip,
//! so the simpler list wins.
//!
//! The methods are synchronous and return a decision
//! ([`Flow`]: go on, or answer now with this response) rather than
//! futures: every hook today (and the planned ones: a challenge lookup, a
//! domain lookup, a token bucket) works on memory it already has, so no
//! future is boxed per hook per request. A hook that really needs to wait
//! would get an async phase of its own in the core.
//!
//! Hooks see request and response heads (`http::request::Parts`,
//! `http::response::Parts`), never bodies: bodies stream through the core
//! untouched, and a head is easy to build in a unit test.
//!
//! Within a phase hooks run in list order, and a phase finishes for every
//! hook before the next phase starts. The first hook that answers in
//! `request_filter` or `upstream_peer` ends the request there: the later
//! hooks and phases do not run, except `logging`, which every request
//! reaches once its response head is decided.
//!
//! # What the context holds, and what it does not
//!
//! [`RequestCtx`] owns everything it holds (no lifetimes), so a hook reads
//! it freely and the core can hand it on. It allocates nothing by itself:
//! the app is a range of the host rather than a copy, and the route is the
//! table's own `Arc`. There is no start `Instant` yet: nothing reads one
//! today; the access-log hook will add it.

use std::net::SocketAddr;
use std::ops::{ControlFlow, Range};
use std::sync::Arc;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{request, response, HeaderValue, Response, StatusCode};
use hyper::body::Bytes;

use crate::body::ResponseBody;
use crate::error::ProxyError;
use crate::headers::X_REQUEST_ID;
use crate::routes::{AppRoute, Backend};

/// What a hook decides in a phase that may end the request: go on
/// (`Continue(())`), or answer the client now with this response
/// (`Break(response)`).
pub(crate) type Flow = ControlFlow<Response<ResponseBody>>;

/// One concern of the proxy, hooked into the phases it needs. Every method
/// does nothing by default.
pub(crate) trait Hook: Send + Sync {
    /// First phase, on the client's request head: reject what the ingress
    /// does not serve, or record what later phases need.
    fn request_filter(&self, _req: &request::Parts, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue(())
    }

    /// Choose where the request goes: set [`RequestCtx::route`] (and the
    /// app), or answer when there is nowhere to go. A hook that finds a
    /// route already chosen leaves it.
    fn upstream_peer(&self, _req: &request::Parts, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue(())
    }

    /// Rewrite the request head as the backend will get it.
    fn upstream_request_filter(&self, _req: &mut request::Parts, _ctx: &RequestCtx) {}

    /// Rewrite a backend's response head as the client will get it. Not
    /// called for the ingress's own pages.
    fn response_filter(&self, _resp: &mut response::Parts, _ctx: &RequestCtx) {}

    /// Last phase, once per request, after its response head is decided
    /// (the body may still be streaming): count and log the outcome. A
    /// request dropped before that (its client went away) does not get
    /// here.
    fn logging(&self, _ctx: &RequestCtx) {}
}

/// The hooks of a server, in order, and the phase runners over them.
pub(crate) struct Hooks(Box<[Box<dyn Hook>]>);

impl Hooks {
    pub(crate) fn new(hooks: Vec<Box<dyn Hook>>) -> Self {
        Self(hooks.into_boxed_slice())
    }

    /// The phases before forwarding: every hook's `request_filter`, then
    /// every hook's `upstream_peer`, then every hook's
    /// `upstream_request_filter`. The first answer ends the run.
    pub(crate) fn request(&self, req: &mut request::Parts, ctx: &mut RequestCtx) -> Flow {
        for hook in &self.0 {
            hook.request_filter(req, ctx)?;
        }
        for hook in &self.0 {
            hook.upstream_peer(req, ctx)?;
        }
        for hook in &self.0 {
            hook.upstream_request_filter(req, ctx);
        }
        Flow::Continue(())
    }

    /// Every hook's `response_filter`.
    pub(crate) fn response(&self, resp: &mut response::Parts, ctx: &RequestCtx) {
        for hook in &self.0 {
            hook.response_filter(resp, ctx);
        }
    }

    /// Every hook's `logging`.
    pub(crate) fn logging(&self, ctx: &RequestCtx) {
        for hook in &self.0 {
            hook.logging(ctx);
        }
    }
}

/// What the phases of one request know about it, filled in as they run.
pub(crate) struct RequestCtx {
    /// The client's `X-Request-Id` when it is sane, else a generated one;
    /// on every response and in every log line.
    pub(crate) request_id: HeaderValue,
    /// The client's address (the TCP peer).
    pub(crate) client: SocketAddr,
    /// Whether the client asks for an HTTP/1.1 upgrade; set by the core
    /// before any hook runs.
    pub(crate) upgrade: bool,
    /// The host the request names, a valid `&str` (see
    /// [`RequestCtx::host_str`]); set in `request_filter`.
    pub(crate) host: Option<HeaderValue>,
    /// Where in `host` the app's name is, as the client wrote it.
    app: Option<Range<usize>>,
    /// A custom domain's prefix to cut off the path (its length).
    pub(crate) strip: Option<usize>,
    /// A custom domain route that wants HSTS on HTTPS answers.
    pub(crate) hsts: bool,
    /// The app's backends; set in `upstream_peer`.
    pub(crate) route: Option<Arc<AppRoute>>,
    /// Which of `route`'s backends answered, or failed after connecting.
    backend: Option<usize>,
    /// The status the backend answered with, before any rewriting.
    pub(crate) upstream_status: Option<StatusCode>,
    /// Why the request failed after a route was chosen, if it did.
    pub(crate) error: Option<ProxyError>,
    /// When the request head arrived.
    pub(crate) started: std::time::Instant,
}

impl RequestCtx {
    pub(crate) fn new(request_id: HeaderValue, client: SocketAddr) -> Self {
        Self {
            request_id,
            client,
            upgrade: false,
            host: None,
            app: None,
            strip: None,
            hsts: false,
            route: None,
            backend: None,
            upstream_status: None,
            error: None,
            started: std::time::Instant::now(),
        }
    }

    /// The host the request names, once `request_filter` found it.
    pub(crate) fn host_str(&self) -> Option<&str> {
        self.host.as_ref().and_then(|host| host.to_str().ok())
    }

    /// The app's name as the client wrote it (not lowercased), once
    /// `upstream_peer` found it.
    pub(crate) fn app(&self) -> Option<&str> {
        match self.app.clone() {
            Some(range) => self.host_str()?.get(range),
            // A custom domain's: the route's.
            None => self.route.as_deref().map(|r| &*r.name),
        }
    }

    /// Name the app: the bytes `range` of the host.
    pub(crate) fn set_app(&mut self, range: Range<usize>) {
        self.app = Some(range);
    }

    /// The backend that answered, or failed after connecting.
    pub(crate) fn backend(&self) -> Option<&Backend> {
        self.route.as_ref()?.backends.get(self.backend?)
    }

    /// Record which of the route's backends answered, or failed after
    /// connecting (`None`: none got that far).
    pub(crate) fn set_backend(&mut self, index: Option<usize>) {
        self.backend = index;
    }

    /// One of the ingress's own short plain-text pages, carrying the
    /// request id.
    pub(crate) fn page(&self, status: StatusCode, text: String) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::Page(Some(Bytes::from(text))));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(&X_REQUEST_ID, self.request_id.clone());
        resp
    }
}
