//! The hooks every request goes through today, one per concern, in the
//! order [`standard`] lists them (see `phases.rs` for the phases).
//!
//! Their log events keep the target they had when the proxy was one
//! function in `proxy.rs` ([`LOG_TARGET`]), so log lines and log filters
//! such as `SHELLWEGO_LOG=shellwego_ingress::proxy=debug` did not change
//! with the split.

use std::ops::ControlFlow;
use std::sync::Arc;

use http::header::{HOST, RETRY_AFTER};
use http::{request, response, HeaderValue, Method, StatusCode};

use crate::error::{Phase, ProxyError};
use crate::headers::{
    append_forwarded_for, id_str, strip_hop_by_hop, X_FORWARDED_HOST, X_FORWARDED_PREFIX,
    X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::phases::{Flow, Hook, Hooks, RequestCtx};
use crate::routes::{app_of_host, Routes};

/// The target of the proxy's log events (see the module doc).
pub(crate) const LOG_TARGET: &str = "shellwego_ingress::proxy";

/// Longest host shown on a 404 page.
const MAX_HOST_SHOWN: usize = 255;

/// The hooks of a server: `base_domain` normalised (lowercase, no leading
/// or trailing dot).
pub(crate) fn standard(
    routes: Routes,
    base_domain: Box<str>,
    https: bool,
    redirect: Option<(crate::Certs, u16)>,
) -> Hooks {
    Hooks::new(standard_list(routes, base_domain, https, redirect))
}

/// The list behind [`standard`]; a new concern is one more entry here.
fn standard_list(
    routes: Routes,
    base_domain: Box<str>,
    https: bool,
    redirect: Option<(crate::Certs, u16)>,
) -> Vec<Box<dyn Hook>> {
    let mut hooks: Vec<Box<dyn Hook>> = vec![Box::new(RejectConnect), Box::new(FindHost)];
    if let Some((certs, port)) = redirect {
        hooks.push(Box::new(RedirectToHttps { certs, port }));
    }
    hooks.extend::<Vec<Box<dyn Hook>>>(vec![
        Box::new(RouteByHost {
            routes: routes.clone(),
            base_domain,
        }),
        Box::new(ForwardHeaders {
            proto: if https { "https" } else { "http" },
        }),
        Box::new(CountAnswers { routes }),
        Box::new(LogOutcome),
    ]);
    hooks
}

/// On plain HTTP, a host with a certificate goes to HTTPS (308, method and
/// body kept), except ACME http-01 challenges, which must stay reachable
/// over HTTP.
struct RedirectToHttps {
    certs: crate::Certs,
    port: u16,
}

impl Hook for RedirectToHttps {
    fn request_filter(&self, req: &request::Parts, ctx: &mut RequestCtx) -> Flow {
        let Some(host) = ctx.host_str() else {
            return ControlFlow::Continue(());
        };
        if req.uri.path().starts_with("/.well-known/acme-challenge/") {
            return ControlFlow::Continue(());
        }
        let name = crate::routes::strip_port(host);
        if !self.certs.covers(name) {
            return ControlFlow::Continue(());
        }
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let location = if self.port == 443 {
            format!("https://{name}{target}")
        } else {
            format!("https://{name}:{}{target}", self.port)
        };
        let Ok(location) = HeaderValue::from_str(&location) else {
            return ControlFlow::Continue(());
        };
        let mut resp = ctx.page(
            StatusCode::PERMANENT_REDIRECT,
            "308 Permanent Redirect: this host is served over HTTPS.\n".into(),
        );
        resp.headers_mut().insert(http::header::LOCATION, location);
        ControlFlow::Break(resp)
    }
}

/// `CONNECT` gets a 405: the ingress is no forward proxy.
struct RejectConnect;

impl Hook for RejectConnect {
    fn request_filter(&self, req: &request::Parts, ctx: &mut RequestCtx) -> Flow {
        if req.method == Method::CONNECT {
            return ControlFlow::Break(ctx.page(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed: the ingress does not tunnel CONNECT requests.\n".into(),
            ));
        }
        ControlFlow::Continue(())
    }
}

/// The host the request names, into [`RequestCtx::host`]; 400 without
/// one, or with one that is not text.
struct FindHost;

impl Hook for FindHost {
    fn request_filter(&self, req: &request::Parts, ctx: &mut RequestCtx) -> Flow {
        // The authority of an absolute-form or HTTP/2 request wins over Host
        // (RFC 9112 §3.2.2).
        let host = match req.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => req.headers.get(HOST).cloned(),
        };
        let Some(host) = host else {
            return ControlFlow::Break(ctx.page(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: the request names no host.\n".into(),
            ));
        };
        if host.to_str().is_err() {
            return ControlFlow::Break(ctx.page(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: the Host header is not a valid host.\n".into(),
            ));
        }
        ctx.host = Some(host);
        ControlFlow::Continue(())
    }
}

/// `<app>.<base_domain>` to the app's route in the current table, else a
/// custom domain's route by host and longest path prefix: 404 for a host
/// that names no app in the table (or a path no route of its host takes),
/// 503 (`Retry-After: 1`) for an app without a healthy backend.
struct RouteByHost {
    routes: Routes,
    /// Normalised: lowercase, no leading or trailing dot.
    base_domain: Box<str>,
}

impl Hook for RouteByHost {
    fn upstream_peer(&self, req: &request::Parts, ctx: &mut RequestCtx) -> Flow {
        if ctx.route.is_some() {
            return ControlFlow::Continue(());
        }
        // Without a host there is nothing to route by; the core answers a
        // request without a route.
        let Some(host) = ctx.host_str() else {
            return ControlFlow::Continue(());
        };
        let table = self.routes.snapshot();
        let shown = host.get(..MAX_HOST_SHOWN).unwrap_or(host);
        let by_app = app_of_host(host, &self.base_domain)
            .and_then(|app| table.lookup(app).map(|route| (app, route)));
        let (route, app, strip, hsts) = match by_app {
            // The app is the host's first label, so its first `len` bytes.
            Some((app, route)) => (Arc::clone(route), Some(0..app.len()), None, false),
            None => match table.by_domain(host, req.uri.path()) {
                Ok(Some(r)) => {
                    let strip = (r.strip && &*r.prefix != "/").then_some(r.prefix.len());
                    (Arc::clone(&r.route), None, strip, r.hsts)
                }
                Ok(None) => {
                    return ControlFlow::Break(ctx.page(
                        StatusCode::NOT_FOUND,
                        format!("404 Not Found: no app is served at host \"{shown}\".\n"),
                    ))
                }
                Err(()) => {
                    let path = req.uri.path();
                    let path = path.get(..MAX_HOST_SHOWN).unwrap_or(path);
                    return ControlFlow::Break(ctx.page(
                        StatusCode::NOT_FOUND,
                        format!(
                            "404 Not Found: no app is served at host \"{shown}\" under path \"{path}\".\n"
                        ),
                    ));
                }
            },
        };
        if route.backends.is_empty() {
            let name = match &app {
                Some(range) => host.get(range.clone()).unwrap_or(""),
                None => &route.name,
            };
            let mut resp = ctx.page(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "503 Service Unavailable: no healthy instance of app \"{name}\"; \
                     try again shortly.\n"
                ),
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return ControlFlow::Break(resp);
        }
        if let Some(app) = app {
            ctx.set_app(app);
        }
        ctx.strip = strip;
        ctx.hsts = hsts;
        ctx.route = Some(route);
        ControlFlow::Continue(())
    }
}

/// RFC 7239 `Forwarded`: this hop (`for`, `proto`, `host`) appended to
/// what the client sent.
fn append_forwarded(
    headers: &mut http::HeaderMap,
    client: std::net::IpAddr,
    proto: &str,
    host: Option<&str>,
) {
    let mut el = match client {
        std::net::IpAddr::V4(a) => format!("for={a}"),
        std::net::IpAddr::V6(a) => format!("for=\"[{a}]\""),
    };
    el.push_str(";proto=");
    el.push_str(proto);
    if let Some(h) = host.filter(|h| !h.contains(['"', '\\'])) {
        el.push_str(&format!(";host=\"{h}\""));
    }
    let value = match headers
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.is_empty() => format!("{prev}, {el}"),
        _ => el,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(http::header::FORWARDED, v);
    }
}

/// A custom domain's path prefix cut off (`strip_prefix`): `/api/x?q` to
/// `/x?q`, `/api` to `/`, with `X-Forwarded-Prefix: /api`.
fn strip_prefix(req: &mut request::Parts, n: usize) {
    let Some(pq) = req.uri.path_and_query() else {
        return;
    };
    let path = pq.path();
    let (Some(prefix), Some(rest)) = (path.get(..n), path.get(n..)) else {
        return;
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    let new = match pq.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let Ok(prefix) = HeaderValue::from_str(prefix) else {
        return;
    };
    let Ok(pq) = http::uri::PathAndQuery::try_from(new) else {
        return;
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = http::Uri::from_parts(parts) {
        req.uri = uri;
        req.headers.insert(&X_FORWARDED_PREFIX, prefix);
    }
}

/// Hop-by-hop headers out both ways; `X-Forwarded-*`, `Host` and
/// `X-Request-Id` to the backend; `X-Request-Id` to the client.
struct ForwardHeaders {
    /// `http` or `https`: how the client reached us.
    proto: &'static str,
}

impl Hook for ForwardHeaders {
    fn upstream_request_filter(&self, req: &mut request::Parts, ctx: &RequestCtx) {
        if let Some(n) = ctx.strip {
            strip_prefix(req, n);
        }
        let headers = &mut req.headers;
        strip_hop_by_hop(headers, ctx.upgrade);
        append_forwarded_for(headers, ctx.client.ip());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
        append_forwarded(headers, ctx.client.ip(), self.proto, ctx.host_str());
        if let Some(host) = &ctx.host {
            headers.insert(&X_FORWARDED_HOST, host.clone());
            headers.insert(HOST, host.clone());
        }
        headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    }

    fn response_filter(&self, resp: &mut response::Parts, ctx: &RequestCtx) {
        // A 101 only reaches here for an upgrade request; it keeps its
        // `Upgrade` header.
        let switching = resp.status == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(&mut resp.headers, switching);
        resp.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
        if ctx.hsts && self.proto == "https" {
            resp.headers.insert(
                http::header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
        }
    }
}

/// Per backend, answers and errors for [`Routes::take_stats`]: an answer
/// counts by its status (5xx is an error), a request the backend failed to
/// answer counts as an error.
struct CountAnswers {
    routes: Routes,
}

impl Hook for CountAnswers {
    fn logging(&self, ctx: &RequestCtx) {
        let Some(backend) = ctx.backend() else { return };
        self.routes.record_request(
            &backend.instance_id,
            ctx.upstream_status,
            ctx.started.elapsed(),
        );
        match (ctx.upstream_status, &ctx.error) {
            (Some(status), _) => self
                .routes
                .record(&backend.instance_id, status.is_server_error()),
            (None, Some(error)) if error.phase() == Phase::Upstream => {
                self.routes.record(&backend.instance_id, true);
            }
            (None, _) => {}
        }
    }
}

/// A debug line for each answer a backend gave, and one for each failure:
/// clients' failures are routine (debug), ours and the backends' are not
/// (warn). Never logs bodies.
struct LogOutcome;

impl Hook for LogOutcome {
    fn logging(&self, ctx: &RequestCtx) {
        let app = ctx.app().unwrap_or("");
        if let (Some(status), Some(backend)) = (ctx.upstream_status, ctx.backend()) {
            tracing::debug!(
                target: LOG_TARGET,
                request_id = id_str(&ctx.request_id),
                app,
                instance_id = %backend.instance_id,
                status = status.as_u16(),
                "proxied"
            );
        }
        if let Some(error) = &ctx.error {
            log_failure(error, ctx, app);
        }
    }
}

fn log_failure(error: &ProxyError, ctx: &RequestCtx, app: &str) {
    let instance_id = ctx.backend().map_or("", |b| b.instance_id.as_str());
    match error.phase() {
        Phase::Downstream => tracing::debug!(
            target: LOG_TARGET,
            phase = %error.phase(),
            retry_safe = error.retry_safe(),
            request_id = id_str(&ctx.request_id),
            app,
            instance_id,
            error = %error.chain(),
            "request failed"
        ),
        Phase::Upstream | Phase::Ingress => tracing::warn!(
            target: LOG_TARGET,
            phase = %error.phase(),
            retry_safe = error.retry_safe(),
            request_id = id_str(&ctx.request_id),
            app,
            instance_id,
            error = %error.chain(),
            "request failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use http::{Request, Response};

    use super::*;
    use crate::body::ResponseBody;
    use crate::routes::Backend;

    fn head(method: &str, uri: &str, headers: &[(&str, &[u8])]) -> request::Parts {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        req.body(()).unwrap().into_parts().0
    }

    fn new_ctx() -> RequestCtx {
        RequestCtx::new(
            HeaderValue::from_static("rid-1"),
            "10.0.0.1:5000".parse().unwrap(),
        )
    }

    fn routes() -> Routes {
        let b = |id: &str, port| Backend {
            instance_id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
        };
        let routes = Routes::new();
        routes.replace(HashMap::from([
            ("web".to_owned(), vec![b("inst_a", 1), b("inst_b", 2)]),
            ("empty".to_owned(), vec![]),
        ]));
        routes
    }

    fn hooks(routes: &Routes) -> Hooks {
        standard(routes.clone(), "localhost".into(), false, None)
    }

    /// The page a phase answered with.
    fn answer(flow: Flow) -> Response<ResponseBody> {
        match flow {
            ControlFlow::Break(resp) => resp,
            ControlFlow::Continue(()) => panic!("the hooks let the request through"),
        }
    }

    fn text(resp: &Response<ResponseBody>) -> &str {
        match resp.body() {
            ResponseBody::Page(Some(bytes)) => std::str::from_utf8(bytes).unwrap(),
            other => panic!("not a page: {other:?}"),
        }
    }

    #[test]
    fn requests_nowhere_to_go_get_a_page() {
        let routes = routes();
        let hooks = hooks(&routes);
        let ask = |mut req: request::Parts| {
            let mut ctx = new_ctx();
            let resp = answer(hooks.request(&mut req, &mut ctx));
            assert!(ctx.route.is_none());
            assert_eq!(resp.headers()["x-request-id"], "rid-1");
            assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
            assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
            assert_eq!(resp.headers()["cache-control"], "no-store");
            resp
        };

        let resp = ask(head(
            "CONNECT",
            "web.localhost:443",
            &[("host", b"web.localhost:443")],
        ));
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            text(&resp),
            "405 Method Not Allowed: the ingress does not tunnel CONNECT requests.\n"
        );

        let resp = ask(head("GET", "/", &[]));
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(text(&resp), "400 Bad Request: the request names no host.\n");

        let resp = ask(head("GET", "/", &[("host", b"caf\xe9.localhost")]));
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            text(&resp),
            "400 Bad Request: the Host header is not a valid host.\n"
        );

        let resp = ask(head("GET", "/", &[("host", b"shop.localhost")]));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            text(&resp),
            "404 Not Found: no app is served at host \"shop.localhost\".\n"
        );
        let long = format!("{}.localhost", "x".repeat(300));
        let resp = ask(head("GET", "/", &[("host", long.as_bytes())]));
        assert_eq!(
            text(&resp),
            format!(
                "404 Not Found: no app is served at host \"{}\".\n",
                &long[..MAX_HOST_SHOWN]
            )
        );

        let resp = ask(head("GET", "/", &[("host", b"Empty.localhost")]));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(
            text(&resp),
            "503 Service Unavailable: no healthy instance of app \"Empty\"; try again shortly.\n"
        );
        assert!(routes.take_stats().is_empty());
    }

    #[test]
    fn a_routed_request_is_rewritten_for_the_backend() {
        let routes = routes();
        let hooks = hooks(&routes);
        let mut req = head(
            "GET",
            "/a?b",
            &[
                ("host", b"WEB.localhost:8080"),
                ("x-forwarded-for", b"1.2.3.4"),
                ("x-request-id", b"theirs"),
                ("connection", b"keep-alive, x-secret"),
                ("x-secret", b"1"),
                ("proxy-authorization", b"Basic x"),
            ],
        );
        let mut ctx = new_ctx();
        assert!(hooks.request(&mut req, &mut ctx).is_continue());
        assert_eq!(ctx.app(), Some("WEB"), "as the client wrote it");
        assert_eq!(ctx.route.as_ref().unwrap().backends.len(), 2);
        let h = &req.headers;
        assert_eq!(h["host"], "WEB.localhost:8080");
        assert_eq!(h["x-forwarded-host"], "WEB.localhost:8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-request-id"], "rid-1");
        for gone in ["connection", "x-secret", "proxy-authorization"] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }

        // The authority of an absolute-form request wins over Host.
        let mut req = head(
            "GET",
            "http://web.localhost/x",
            &[("host", b"shop.localhost")],
        );
        let mut ctx = new_ctx();
        assert!(hooks.request(&mut req, &mut ctx).is_continue());
        assert_eq!(ctx.app(), Some("web"));
        assert_eq!(req.headers["host"], "web.localhost");

        // Back to the client: hop-by-hop out, the request id in.
        let (mut resp, ()) = Response::builder()
            .header("connection", "close")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "1")
            .body(())
            .unwrap()
            .into_parts();
        hooks.response(&mut resp, &ctx);
        assert_eq!(resp.headers.len(), 2, "{:?}", resp.headers);
        assert_eq!(resp.headers["x-request-id"], "rid-1");
        assert_eq!(resp.headers["x-kept"], "1");
    }

    #[test]
    fn answers_are_counted_per_backend() {
        let routes = routes();
        let hooks = hooks(&routes);
        let routed = || {
            let mut ctx = new_ctx();
            let mut req = head("GET", "/", &[("host", b"web.localhost")]);
            assert!(hooks.request(&mut req, &mut ctx).is_continue());
            ctx
        };
        let mut ctx = routed();
        ctx.set_backend(Some(0));
        ctx.upstream_status = Some(StatusCode::OK);
        hooks.logging(&ctx);
        let mut ctx = routed();
        ctx.set_backend(Some(1));
        ctx.upstream_status = Some(StatusCode::BAD_GATEWAY);
        hooks.logging(&ctx);
        // A 101 the client did not ask for counts by its status, though
        // the client gets a 502.
        let mut ctx = routed();
        ctx.set_backend(Some(1));
        ctx.upstream_status = Some(StatusCode::SWITCHING_PROTOCOLS);
        ctx.error = Some(ProxyError::new(Phase::Upstream, false, "x"));
        hooks.logging(&ctx);
        // No answer: the backend's fault counts, the client's does not.
        let mut ctx = routed();
        ctx.set_backend(Some(0));
        ctx.error = Some(ProxyError::new(Phase::Upstream, false, "x"));
        hooks.logging(&ctx);
        let mut ctx = routed();
        ctx.set_backend(Some(0));
        ctx.error = Some(ProxyError::new(Phase::Downstream, false, "x"));
        hooks.logging(&ctx);
        // No backend got as far as a connection.
        let mut ctx = routed();
        ctx.error = Some(ProxyError::upstream_connect(std::io::Error::other(
            "refused",
        )));
        hooks.logging(&ctx);
        assert_eq!(
            routes.take_stats(),
            HashMap::from([("inst_a".into(), (2, 1)), ("inst_b".into(), (2, 1))])
        );
    }

    /// Records which phase of which hook ran; answers in `request_filter`
    /// for paths under `/answer`.
    struct Trace {
        name: &'static str,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Trace {
        fn note(&self, phase: &str) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("{}.{phase}", self.name));
        }
    }

    impl Hook for Trace {
        fn request_filter(&self, req: &request::Parts, ctx: &mut RequestCtx) -> Flow {
            self.note("request_filter");
            if req.uri.path().starts_with("/answer") {
                return ControlFlow::Break(ctx.page(StatusCode::OK, "here\n".into()));
            }
            ControlFlow::Continue(())
        }
        fn upstream_peer(&self, _req: &request::Parts, _ctx: &mut RequestCtx) -> Flow {
            self.note("upstream_peer");
            ControlFlow::Continue(())
        }
        fn upstream_request_filter(&self, _req: &mut request::Parts, _ctx: &RequestCtx) {
            self.note("upstream_request_filter");
        }
        fn response_filter(&self, _resp: &mut response::Parts, _ctx: &RequestCtx) {
            self.note("response_filter");
        }
        fn logging(&self, _ctx: &RequestCtx) {
            self.note("logging");
        }
    }

    #[test]
    fn phases_run_hook_by_hook_and_an_answer_ends_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let trace = |name| -> Box<dyn Hook> {
            Box::new(Trace {
                name,
                seen: Arc::clone(&seen),
            })
        };
        let mut list = vec![trace("first")];
        list.extend(standard_list(routes(), "localhost".into(), false, None));
        list.push(trace("last"));
        let hooks = Hooks::new(list);
        let take = || std::mem::take(&mut *seen.lock().unwrap()).join(" ");

        let mut ctx = new_ctx();
        let mut req = head("GET", "/", &[("host", b"web.localhost")]);
        assert!(hooks.request(&mut req, &mut ctx).is_continue());
        hooks.logging(&ctx);
        assert_eq!(
            take(),
            "first.request_filter last.request_filter \
             first.upstream_peer last.upstream_peer \
             first.upstream_request_filter last.upstream_request_filter \
             first.logging last.logging"
        );

        // An answer from the first hook: no routing (this host has no
        // app), nothing after it.
        let mut ctx = new_ctx();
        let mut req = head("GET", "/answer", &[("host", b"shop.localhost")]);
        let resp = answer(hooks.request(&mut req, &mut ctx));
        assert_eq!((resp.status(), text(&resp)), (StatusCode::OK, "here\n"));
        assert_eq!(take(), "first.request_filter");

        // A standard hook answering stops the ones after it.
        let mut ctx = new_ctx();
        let mut req = head("GET", "/", &[("host", b"shop.localhost")]);
        let resp = answer(hooks.request(&mut req, &mut ctx));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            take(),
            "first.request_filter last.request_filter first.upstream_peer"
        );
    }
}
