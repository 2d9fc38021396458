//! The route table: app name → healthy backends, and custom domains (host
//! and path prefix → an app's backends), swapped atomically.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, PoisonError, RwLock};

use http::uri::Authority;

/// One healthy instance of an app, as the proxy reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The instance's id, for logs.
    pub instance_id: String,
    /// Where the instance listens for HTTP/1.1.
    pub addr: SocketAddr,
    /// Its share of the app's requests relative to the others' (0 counts
    /// as 1). Equal weights give plain round-robin.
    pub weight: u32,
}

/// The live route table, cheap to clone, shared between the proxy and
/// whoever feeds it.
///
/// Readers take a snapshot (an `Arc` clone under a briefly held read lock)
/// per request, so a [`replace`](Routes::replace) never blocks or disturbs a
/// request that is already being proxied: it keeps the table it started
/// with.
#[derive(Clone, Default)]
pub struct Routes {
    current: Arc<RwLock<Arc<RouteTable>>>,
    /// Per instance: (responses, of which 5xx or failed to answer), since
    /// the last [`Routes::take_stats`].
    stats: Arc<std::sync::Mutex<HashMap<String, (u64, u64)>>>,
    /// Per instance and 10-second slot: what it answered and how fast,
    /// since the last [`Routes::take_requests`].
    requests: Arc<std::sync::Mutex<HashMap<(String, i64), RequestCounts>>>,
}

/// A custom domain's route: requests for `host` whose path is `path` or
/// under it go to `backends` (see [`Routes::replace_with_domains`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRoute {
    /// Lowercase ASCII; `*.example.com` for a wildcard (one label).
    pub host: String,
    /// `/`, or a prefix without a trailing slash (`/api`): it matches
    /// `/api` and `/api/…`, not `/apix`.
    pub path: String,
    /// Whether the prefix is cut off the path the backend sees.
    pub strip_prefix: bool,
    /// `Strict-Transport-Security` on its HTTPS answers.
    pub hsts: bool,
    /// The app's name, for logs and pages.
    pub app: String,
    pub backends: Vec<Backend>,
}

/// Requests an instance answered in a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestCounts {
    pub requests: u64,
    /// 2xx, 3xx, 4xx, 5xx (a request the backend did not answer counts as
    /// 5xx: the client got our 502/504).
    pub status: [u64; 4],
    /// Milliseconds from the request to the response head, summed.
    pub latency_ms_sum: f64,
}

/// The length of a request-count slot, in microseconds.
pub const SLOT_MICROS: i64 = 10_000_000;

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Routes").field(&self.snapshot()).finish()
    }
}

impl Routes {
    /// An empty table: every host gets a 404.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the whole table atomically: app name → healthy backends.
    ///
    /// Apps present with an empty `Vec` get a 503; names absent from the map
    /// get a 404. App names are matched case-insensitively (they are stored
    /// lowercased). An app that stays in the table keeps its round-robin
    /// position, so a feeder that republishes the same set every few seconds
    /// does not reset the rotation to the first backend.
    pub fn replace(&self, table: HashMap<String, Vec<Backend>>) {
        self.replace_with_domains(table, vec![]);
    }

    /// [`replace`](Routes::replace), with the custom domains' routes too:
    /// a host's routes are matched longest path prefix first; a host with
    /// no route for the path gets a 404, a route without backends a 503.
    /// Each route keeps its round-robin position across replacements.
    pub fn replace_with_domains(
        &self,
        table: HashMap<String, Vec<Backend>>,
        domains: Vec<DomainRoute>,
    ) {
        let old = self.snapshot();
        let apps = table
            .into_iter()
            .map(|(name, backends)| {
                let name = name.to_ascii_lowercase();
                let next = old
                    .apps
                    .get(&name)
                    .map_or_else(Arc::default, |route| Arc::clone(&route.next));
                let route = Arc::new(AppRoute::new(&name, backends, next));
                (name, route)
            })
            .collect();
        let mut hosts: HashMap<Box<str>, Vec<PathRoute>> = HashMap::new();
        for d in domains {
            let host = d.host.to_ascii_lowercase();
            let next = old
                .hosts
                .get(host.as_str())
                .and_then(|rs| rs.iter().find(|r| *r.prefix == *d.path))
                .map_or_else(Arc::default, |r| Arc::clone(&r.route.next));
            let route = Arc::new(AppRoute::new(&d.app, d.backends, next));
            hosts
                .entry(host.into_boxed_str())
                .or_default()
                .push(PathRoute {
                    prefix: d.path.into_boxed_str(),
                    strip: d.strip_prefix,
                    hsts: d.hsts,
                    route,
                });
        }
        let hosts = hosts
            .into_iter()
            .map(|(h, mut rs)| {
                rs.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
                (h, rs.into_boxed_slice())
            })
            .collect();
        let new = Arc::new(RouteTable { apps, hosts });
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = new;
    }

    /// Count one answer of `instance_id` (`error`: 5xx, or no answer).
    pub(crate) fn record(&self, instance_id: &str, error: bool) {
        let mut m = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let e = m.entry(instance_id.to_string()).or_default();
        e.0 += 1;
        e.1 += u64::from(error);
    }

    /// Count one request answered by `instance_id` (`status`: none when
    /// it did not answer).
    pub(crate) fn record_request(
        &self,
        instance_id: &str,
        status: Option<http::StatusCode>,
        latency: std::time::Duration,
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let slot = now - now.rem_euclid(SLOT_MICROS);
        let class = status.map_or(3, |s| match s.as_u16() {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        });
        let mut m = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let e = m.entry((instance_id.to_string(), slot)).or_default();
        e.requests += 1;
        e.status[class] += 1;
        e.latency_ms_sum += latency.as_secs_f64() * 1000.0;
    }

    /// Per instance and slot (microseconds), the requests counted since
    /// the last call.
    pub fn take_requests(&self) -> HashMap<(String, i64), RequestCounts> {
        let mut m = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *m)
    }

    /// Per instance, (requests, errors) counted since the last call.
    pub fn take_stats(&self) -> HashMap<String, (u64, u64)> {
        let mut m = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *m)
    }

    /// The table as it is now; later [`replace`](Routes::replace) calls do
    /// not change it.
    #[must_use]
    pub fn snapshot(&self) -> Arc<RouteTable> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&current)
    }
}

/// One version of the route table (see [`Routes::snapshot`]).
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Each route behind its own `Arc`, so a request holds on to its app's
    /// route without holding (or copying) the whole table.
    apps: HashMap<String, Arc<AppRoute>>,
    /// Custom domains: host (lowercase, `*.x` for a wildcard) → its routes,
    /// longest prefix first.
    hosts: HashMap<Box<str>, Box<[PathRoute]>>,
}

/// One path prefix of a custom domain.
#[derive(Debug)]
pub(crate) struct PathRoute {
    pub(crate) prefix: Box<str>,
    pub(crate) strip: bool,
    pub(crate) hsts: bool,
    pub(crate) route: Arc<AppRoute>,
}

impl PathRoute {
    /// Whether `path` is this prefix or under it (at a `/`).
    fn matches(&self, path: &str) -> bool {
        let p = &*self.prefix;
        p == "/"
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl RouteTable {
    /// The healthy backends of `app` (case-insensitive), or `None` when the
    /// app is not in the table.
    #[must_use]
    pub fn backends(&self, app: &str) -> Option<&[Backend]> {
        self.lookup(app).map(|route| &*route.backends)
    }

    /// The app names in the table (lowercase), in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &str> + '_ {
        self.apps.keys().map(String::as_str)
    }

    /// How many apps the table knows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether the table knows no app at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The custom domain route for `host` (a Host header: optional port and
    /// trailing dot, any case) and `path`: the host's own routes, else its
    /// parent's wildcard's. `Err(())` when the host is a custom domain but
    /// no prefix matches; `Ok(None)` when it is none.
    pub(crate) fn by_domain(&self, host: &str, path: &str) -> Result<Option<&PathRoute>, ()> {
        if self.hosts.is_empty() {
            return Ok(None);
        }
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let routes = self.hosts.get(&*host).or_else(|| {
            let (_, parent) = host.split_once('.')?;
            self.hosts.get(format!("*.{parent}").as_str())
        });
        match routes {
            None => Ok(None),
            Some(rs) => rs.iter().find(|r| r.matches(path)).map(Some).ok_or(()),
        }
    }

    /// The route of `app`; allocates only when `app` has uppercase letters.
    pub(crate) fn lookup(&self, app: &str) -> Option<&Arc<AppRoute>> {
        let key: Cow<'_, str> = if app.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(app.to_ascii_lowercase())
        } else {
            Cow::Borrowed(app)
        };
        self.apps.get(&*key)
    }
}

/// One app's backends, with what the proxy needs precomputed.
#[derive(Debug)]
pub(crate) struct AppRoute {
    /// The app's name (lowercase for the base domain's apps).
    pub(crate) name: Box<str>,
    pub(crate) backends: Box<[Backend]>,
    /// `authorities[i]` is `backends[i].addr` as a URI authority, built once
    /// here rather than per request.
    pub(crate) authorities: Box<[Authority]>,
    /// The round-robin counter, shared with the previous table's entry for
    /// the same app.
    pub(crate) next: Arc<AtomicUsize>,
    /// Backend indices in turn: a smooth weighted round-robin cycle (every
    /// backend once when the weights are equal).
    pub(crate) schedule: Box<[usize]>,
}

impl AppRoute {
    fn new(app: &str, backends: Vec<Backend>, next: Arc<AtomicUsize>) -> Self {
        let mut kept = Vec::with_capacity(backends.len());
        let mut authorities = Vec::with_capacity(backends.len());
        for backend in backends {
            match Authority::try_from(backend.addr.to_string()) {
                Ok(authority) => {
                    authorities.push(authority);
                    kept.push(backend);
                }
                // A SocketAddr always formats as a valid authority; this arm
                // only exists so that a surprise cannot panic.
                Err(error) => tracing::warn!(
                    app,
                    instance_id = %backend.instance_id,
                    addr = %backend.addr,
                    %error,
                    "backend address is not a valid URI authority; left out"
                ),
            }
        }
        let schedule = schedule(&kept);
        Self {
            name: app.into(),
            backends: kept.into_boxed_slice(),
            authorities: authorities.into_boxed_slice(),
            next,
            schedule,
        }
    }
}

/// One cycle of smooth weighted round-robin (nginx's): each backend
/// appears `weight / gcd` times, spread out rather than in runs.
fn schedule(backends: &[Backend]) -> Box<[usize]> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let weights: Vec<u64> = backends
        .iter()
        .map(|b| u64::from(b.weight.max(1)))
        .collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| (w / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    // Bounded: weights are percentages split over instances in practice.
    let len = total.clamp(0, 100_000) as usize;
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= total;
        out.push(best);
    }
    out.into_boxed_slice()
}

/// The app named by `host` under `base_domain`, or `None`.
///
/// `host` is a Host header or URI authority: `<app>.<base_domain>`, with an
/// optional `:port` and an optional trailing dot, compared
/// case-insensitively. The app is exactly the first label: `a.b.<base>` is
/// no app. `base_domain` must already be normalised (lowercase, no leading
/// or trailing dot).
pub(crate) fn app_of_host<'h>(host: &'h str, base_domain: &str) -> Option<&'h str> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    let split = host.len().checked_sub(base_domain.len() + 1)?;
    let (app, rest) = (host.get(..split)?, host.get(split..)?);
    let suffix = rest.strip_prefix('.')?;
    if !suffix.eq_ignore_ascii_case(base_domain) || app.is_empty() || app.contains('.') {
        return None;
    }
    Some(app)
}

/// `host` without a `:port` suffix.
pub(crate) fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(colon)
            if colon + 1 < host.len() && host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..colon]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_the_cycle_smoothly() {
        let b = |id: &str, weight| Backend {
            instance_id: id.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            weight,
        };
        let s = schedule(&[b("a", 45), b("b", 45), b("c", 10)]);
        assert_eq!(s.len(), 20, "divided by the gcd, 5");
        let count = |i| s.iter().filter(|x| **x == i).count();
        assert_eq!((count(0), count(1), count(2)), (9, 9, 2));
        // Spread out, not in a run.
        assert!(s.windows(2).all(|w| !(w[0] == 2 && w[1] == 2)), "{s:?}");
        assert_eq!(&*schedule(&[b("a", 1), b("b", 1)]), &[0, 1]);
    }

    #[test]
    fn host_matching() {
        let base = "apps.example.com";
        assert_eq!(app_of_host("web.apps.example.com", base), Some("web"));
        assert_eq!(app_of_host("web.apps.example.com:8080", base), Some("web"));
        assert_eq!(app_of_host("WEB.Apps.Example.COM", base), Some("WEB"));
        assert_eq!(app_of_host("web.apps.example.com.", base), Some("web"));
        assert_eq!(app_of_host("web.apps.example.com.:80", base), Some("web"));
        assert_eq!(app_of_host("a.web.apps.example.com", base), None);
        assert_eq!(app_of_host("apps.example.com", base), None);
        assert_eq!(app_of_host(".apps.example.com", base), None);
        assert_eq!(app_of_host("webapps.example.com", base), None);
        assert_eq!(app_of_host("web.other.com", base), None);
        assert_eq!(app_of_host("web.apps.example.com:", base), None);
        assert_eq!(app_of_host("", base), None);
        assert_eq!(app_of_host("[::1]:80", base), None);
        assert_eq!(app_of_host("x.localhost:1", "localhost"), Some("x"));
    }

    #[test]
    fn domains_route_by_longest_prefix_and_wildcards() {
        let routes = Routes::new();
        let d = |host: &str, path: &str, app: &str| DomainRoute {
            host: host.into(),
            path: path.into(),
            strip_prefix: false,
            hsts: false,
            app: app.into(),
            backends: vec![],
        };
        routes.replace_with_domains(
            HashMap::new(),
            vec![
                d("shop.example.com", "/", "web"),
                d("shop.example.com", "/api", "api"),
                d("shop.example.com", "/api/v2", "api2"),
                d("docs.example.com", "/docs", "docs"),
                d("*.example.org", "/", "wild"),
            ],
        );
        let t = routes.snapshot();
        let app = |host: &str, path: &str| {
            t.by_domain(host, path)
                .map(|r| r.map(|r| r.route.name.to_string()))
        };
        assert_eq!(app("shop.example.com", "/"), Ok(Some("web".into())));
        assert_eq!(app("SHOP.example.com.:443", "/x"), Ok(Some("web".into())));
        assert_eq!(app("shop.example.com", "/api"), Ok(Some("api".into())));
        assert_eq!(app("shop.example.com", "/api/x"), Ok(Some("api".into())));
        assert_eq!(app("shop.example.com", "/apix"), Ok(Some("web".into())));
        assert_eq!(
            app("shop.example.com", "/api/v2/y"),
            Ok(Some("api2".into()))
        );
        assert_eq!(app("docs.example.com", "/"), Err(()));
        assert_eq!(app("docs.example.com", "/docs/a"), Ok(Some("docs".into())));
        assert_eq!(app("a.example.org", "/"), Ok(Some("wild".into())));
        assert_eq!(app("a.b.example.org", "/"), Ok(None));
        assert_eq!(app("example.org", "/"), Ok(None));
        assert_eq!(app("other.com", "/"), Ok(None));
    }

    #[test]
    fn replace_keeps_the_counter_of_surviving_apps() {
        let routes = Routes::new();
        let b = |id: &str| Backend {
            weight: 1,
            instance_id: id.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        routes.replace(HashMap::from([
            ("Web".to_string(), vec![b("a"), b("b")]),
            ("gone".to_string(), vec![]),
        ]));
        let first = routes.snapshot();
        let counter = Arc::clone(&first.lookup("web").unwrap().next);
        routes.replace(HashMap::from([("web".to_string(), vec![b("b")])]));
        let second = routes.snapshot();
        assert!(Arc::ptr_eq(&counter, &second.lookup("WEB").unwrap().next));
        assert_eq!(second.backends("web").unwrap(), &[b("b")]);
        assert!(second.backends("gone").is_none());
        // The old snapshot is untouched.
        assert_eq!(first.backends("web").unwrap().len(), 2);
        assert_eq!(first.backends("gone").unwrap().len(), 0);
    }
}
