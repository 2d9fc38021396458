//! The SSRF guard: every fetch of a URL a user gave us (app sources,
//! registries, and later webhooks, remote manifests, git) goes through it,
//! so that a user cannot make the platform reach the machines behind it
//! (the cloud metadata service, the control plane's own loopback ports,
//! the private network).
//!
//! # What is refused
//!
//! An address is judged by [`classify`]: loopback, unspecified ("this
//! network"), private (RFC 1918), shared/CGNAT (100.64/10), link-local,
//! unique-local IPv6, multicast, broadcast, reserved (240/4, IETF protocol
//! assignments, non-global IPv6), documentation, benchmarking, and cloud
//! metadata addresses ([`METADATA`]). IPv6 addresses that carry an IPv4
//! address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64
//! `64:ff9b::/96`, 6to4 `2002::/16`) are judged as that IPv4 address.
//!
//! The operator's [`SsrfConfig`] opens exceptions:
//! `allow_private_targets` opens the private kinds (loopback, private,
//! shared, link-local, unique-local, benchmarking: see
//! [`Reason::is_private`]) but never metadata, multicast, broadcast,
//! unspecified, reserved or documentation addresses; a network in `allow`
//! opens exactly the addresses it covers, whatever their kind (the only way
//! to reach a metadata address).
//!
//! # When it is checked
//!
//! * When a URL is accepted ([`Guard::check_url`]): scheme http or https, a
//!   host, and every address the host resolves to must pass. This gives the
//!   user a clear 400; it is not what keeps us safe, because DNS answers
//!   change (rebinding) and the policy may differ where the fetch happens.
//! * When it is fetched: clients made by [`Guard::client`] resolve names
//!   through the guard (refused addresses are dropped; a name left with no
//!   address fails), follow at most [`MAX_REDIRECTS`] redirects and judge
//!   every hop ([`Guard::check_target`]: scheme, and IP-literal hosts,
//!   which reqwest does not pass to the resolver), ignore proxy settings
//!   from the environment, and check the address each new connection
//!   actually reached before a byte is sent on it. Fetchers also call
//!   [`Guard::check_target`] on the first URL so that an IP-literal host is
//!   refused before any connection is opened.
//!
//! A [`Guard`] is a handle: its clones (and the clients made from it)
//! share one policy, which [`Guard::set`] replaces (the agent does so when
//! the control plane sends its policy).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use ipnet::IpNet;
use reqwest::Url;
use serde::Deserialize;

/// The operator's `[ssrf]` config section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsrfConfig {
    /// Networks that may be fetched from although they are private
    /// (a private registry, an internal artifact server).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Allow every private, loopback and link-local target (self-hosted
    /// setups where everything is internal, and tests). Metadata
    /// addresses stay refused unless listed in `allow`.
    #[serde(default)]
    pub allow_private_targets: bool,
}

/// Redirects a guarded client follows (each one judged).
pub const MAX_REDIRECTS: usize = 10;

/// How long [`Guard::check_url`] waits for DNS.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Cloud metadata and platform services: refused even with
/// `allow_private_targets` (only an `allow` entry opens them).
pub const METADATA: &[IpAddr] = &[
    // AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle, Hetzner, …
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS ECS task metadata and credentials.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    // AWS EKS Pod Identity credentials.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    // Tencent Cloud.
    IpAddr::V4(Ipv4Addr::new(169, 254, 0, 23)),
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Oracle Cloud (legacy).
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    // Azure WireServer (a public address that is the host's).
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // AWS IMDS and EKS Pod Identity over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
    // GCP over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
];

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Loopback,
    /// `0.0.0.0/8`, `::` (connecting to it reaches this host).
    Unspecified,
    /// RFC 1918.
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT (also Tailscale and the like).
    Shared,
    LinkLocal,
    /// `fc00::/7` and the deprecated site-local `fec0::/10`; NAT64
    /// local-use `64:ff9b:1::/48`.
    UniqueLocal,
    /// `198.18.0.0/15`, `2001:2::/48` (also used inside private networks).
    Benchmarking,
    Multicast,
    Broadcast,
    /// `240.0.0.0/4`, IETF protocol assignments, 6to4 relays, Teredo, the
    /// IPv6 discard prefix, and everything outside global unicast `2000::/3`.
    Reserved,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`,
    /// `2001:db8::/32`, `3fff::/20`: never a real host.
    Documentation,
    /// A cloud metadata service ([`METADATA`]).
    Metadata,
}

impl Reason {
    /// The kinds `allow_private_targets` opens.
    pub fn is_private(self) -> bool {
        match self {
            Reason::Loopback
            | Reason::Private
            | Reason::Shared
            | Reason::LinkLocal
            | Reason::UniqueLocal
            | Reason::Benchmarking => true,
            Reason::Unspecified
            | Reason::Multicast
            | Reason::Broadcast
            | Reason::Reserved
            | Reason::Documentation
            | Reason::Metadata => false,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Reason::Loopback => "a loopback address",
            Reason::Unspecified => "an unspecified (this-host) address",
            Reason::Private => "a private address",
            Reason::Shared => "a shared (carrier-grade NAT) address",
            Reason::LinkLocal => "a link-local address",
            Reason::UniqueLocal => "a unique-local (private IPv6) address",
            Reason::Benchmarking => "a benchmarking address",
            Reason::Multicast => "a multicast address",
            Reason::Broadcast => "the broadcast address",
            Reason::Reserved => "a reserved address",
            Reason::Documentation => "a documentation address",
            Reason::Metadata => "a cloud metadata address",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why a URL may not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// The host is, or resolves to, a refused address.
    #[error("{}", refused_message(host, addr, reason))]
    Refused {
        /// The host name as written; empty when the host is the address.
        host: String,
        addr: IpAddr,
        reason: Reason,
    },
    #[error("only http and https URLs may be fetched, not {scheme}")]
    Scheme { scheme: String },
    #[error("not a URL: {0}")]
    InvalidUrl(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("cannot resolve {host}: {detail}")]
    Unresolvable { host: String, detail: String },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("cannot tell which address the connection reached")]
    UnknownPeer,
}

fn refused_message(host: &str, addr: &IpAddr, reason: &Reason) -> String {
    let what = if host.is_empty() {
        format!("{addr} is {reason}")
    } else {
        format!("{host} resolves to {addr}, {reason}")
    };
    let net = IpNet::from(*addr);
    let or_private = if reason.is_private() {
        ", or allow_private_targets = true"
    } else {
        ""
    };
    format!("{what}, which user-given URLs may not reach; an operator can allow it in the [ssrf] section of the control plane's config (allow = [\"{net}\"]{or_private})")
}

impl SsrfError {
    fn refused(host: &str, addr: IpAddr, reason: Reason) -> SsrfError {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        SsrfError::Refused {
            host: if literal.parse::<IpAddr>().is_ok() {
                String::new()
            } else {
                host.to_owned()
            },
            addr,
            reason,
        }
    }
}

/// The guard's refusal somewhere in `err`'s source chain (a reqwest error
/// wraps it), to tell the user why a fetch failed.
pub fn refusal<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a SsrfError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<SsrfError>() {
            return Some(s);
        }
        cur = e.source();
    }
    None
}

/// The registry host (`host[:port]`) of an image reference, or `None` for
/// Docker Hub references (`nginx`, `org/app:v1`). Docker's rule, as in
/// `shellwego_image::Reference`: the first path component is a registry when
/// it contains a `.` or a `:`, is `localhost`, or has capitals.
pub fn image_registry(reference: &str) -> Option<&str> {
    let name = reference.split('@').next().unwrap_or(reference);
    let (first, _) = name.split_once('/')?;
    let is_registry = first.contains(['.', ':'])
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase());
    (is_registry && first != "docker.io" && first != "index.docker.io").then_some(first)
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped, IPv4-compatible
/// (not `::` or `::1`), NAT64 well-known prefix, 6to4.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// IPv4 networks that are not ordinary public hosts; the first match wins.
const V4: &[(Ipv4Addr, u8, Reason)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, Reason::Unspecified),
    (Ipv4Addr::new(10, 0, 0, 0), 8, Reason::Private),
    (Ipv4Addr::new(100, 64, 0, 0), 10, Reason::Shared),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Reason::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, Reason::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, Reason::Private),
    (Ipv4Addr::new(192, 0, 0, 0), 24, Reason::Reserved),
    (Ipv4Addr::new(192, 0, 2, 0), 24, Reason::Documentation),
    (Ipv4Addr::new(192, 88, 99, 0), 24, Reason::Reserved),
    (Ipv4Addr::new(192, 168, 0, 0), 16, Reason::Private),
    (Ipv4Addr::new(198, 18, 0, 0), 15, Reason::Benchmarking),
    (Ipv4Addr::new(198, 51, 100, 0), 24, Reason::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, Reason::Documentation),
    (Ipv4Addr::new(224, 0, 0, 0), 4, Reason::Multicast),
    (Ipv4Addr::new(255, 255, 255, 255), 32, Reason::Broadcast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, Reason::Reserved),
];

fn v4_in(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let shift = 32 - u32::from(prefix);
    u32::from(ip).checked_shr(shift).unwrap_or(0) == u32::from(net).checked_shr(shift).unwrap_or(0)
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let shift = 128 - u32::from(prefix);
    u128::from(ip).checked_shr(shift).unwrap_or(0)
        == u128::from(net).checked_shr(shift).unwrap_or(0)
}

fn classify_v4(ip: Ipv4Addr) -> Option<Reason> {
    if METADATA.contains(&IpAddr::V4(ip)) {
        return Some(Reason::Metadata);
    }
    V4.iter()
        .find(|(net, prefix, _)| v4_in(ip, *net, *prefix))
        .map(|(_, _, r)| *r)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Reason> {
    if METADATA.contains(&IpAddr::V6(ip)) {
        return Some(Reason::Metadata);
    }
    if ip.is_unspecified() {
        return Some(Reason::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Reason::Loopback);
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let n = |a: u16, b: u16, c: u16| Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0);
    let table: [(Ipv6Addr, u8, Reason); 10] = [
        (n(0x64, 0xff9b, 1), 48, Reason::UniqueLocal),
        (n(0x100, 0, 0), 64, Reason::Reserved),
        (n(0x2001, 0, 0), 32, Reason::Reserved),
        (n(0x2001, 2, 0), 48, Reason::Benchmarking),
        (n(0x2001, 0xdb8, 0), 32, Reason::Documentation),
        (n(0x3fff, 0, 0), 20, Reason::Documentation),
        (n(0xfe80, 0, 0), 10, Reason::LinkLocal),
        (n(0xfec0, 0, 0), 10, Reason::UniqueLocal),
        (n(0xfc00, 0, 0), 7, Reason::UniqueLocal),
        (n(0xff00, 0, 0), 8, Reason::Multicast),
    ];
    if let Some((_, _, r)) = table.iter().find(|(net, p, _)| v6_in(ip, *net, *p)) {
        return Some(*r);
    }
    // Only 2000::/3 is global unicast.
    (!v6_in(ip, n(0x2000, 0, 0), 3)).then_some(Reason::Reserved)
}

/// What kind of non-public address `ip` is; `None` for an ordinary public
/// address. The table the guard applies before the operator's exceptions.
pub fn classify(ip: IpAddr) -> Option<Reason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The policy every fetch of a user-given URL goes through. Clones share
/// it; [`Guard::set`] changes it for all of them (and their clients).
#[derive(Clone, Default)]
pub struct Guard {
    config: Arc<RwLock<SsrfConfig>>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Guard").field(&self.config()).finish()
    }
}

impl Guard {
    /// A guard applying `config`.
    pub fn new(config: &SsrfConfig) -> Guard {
        Guard {
            config: Arc::new(RwLock::new(config.clone())),
        }
    }

    /// No exceptions: every non-public address is refused.
    pub fn strict() -> Guard {
        Guard::default()
    }

    /// Replace the policy (for every clone and every client made from them).
    pub fn set(&self, config: &SsrfConfig) {
        let mut c = self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *c != *config {
            *c = config.clone();
        }
    }

    /// The policy in force.
    pub fn config(&self) -> SsrfConfig {
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// May a user-given URL reach `ip`?
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Reason> {
        let Some(reason) = classify(ip) else {
            return Ok(());
        };
        let c = self
            .config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let inner = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let listed = c
            .allow
            .iter()
            .any(|net| net.contains(&ip) || inner.is_some_and(|v4| net.contains(&v4)));
        if listed || (c.allow_private_targets && reason.is_private()) {
            Ok(())
        } else {
            Err(reason)
        }
    }

    /// What can be judged without DNS: the scheme is http or https, there
    /// is a host, and an IP-literal host is allowed. Called on the first URL
    /// of a fetch and on every redirect (reqwest does not resolve literals,
    /// so the resolver never sees them).
    pub fn check_target(&self, url: &Url) -> Result<(), SsrfError> {
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(SsrfError::Scheme {
                    scheme: other.to_owned(),
                })
            }
        }
        let ip = match url.host() {
            None => return Err(SsrfError::NoHost),
            Some(url::Host::Domain(_)) => return Ok(()),
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        };
        self.check_ip(ip)
            .map_err(|reason| SsrfError::refused("", ip, reason))
    }

    /// When a URL is accepted (an app's `source.url`): parse it, check
    /// [`Guard::check_target`], and resolve a host name: every address it
    /// resolves to must be allowed. Returns the parsed URL.
    pub async fn check_url(&self, url: &str) -> Result<Url, SsrfError> {
        let parsed = Url::parse(url).map_err(|e| SsrfError::InvalidUrl(e.to_string()))?;
        self.check_target(&parsed)?;
        let Some(url::Host::Domain(host)) = parsed.host() else {
            return Ok(parsed);
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, lookup(host, port))
            .await
            .map_err(|_| SsrfError::Unresolvable {
                host: host.to_owned(),
                detail: format!("no answer within {} seconds", RESOLVE_TIMEOUT.as_secs()),
            })??;
        for a in &addrs {
            self.check_ip(a.ip())
                .map_err(|reason| SsrfError::refused(host, a.ip(), reason))?;
        }
        Ok(parsed)
    }

    /// The allowed addresses of `host` (refused ones dropped); an error
    /// naming the first refused address when none is left.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SsrfError> {
        let all = lookup(host, port).await?;
        let mut first_refused = None;
        let mut allowed = Vec::with_capacity(all.len());
        for a in all {
            match self.check_ip(a.ip()) {
                Ok(()) => allowed.push(a),
                Err(reason) => {
                    first_refused.get_or_insert((a.ip(), reason));
                }
            }
        }
        match (allowed.is_empty(), first_refused) {
            (true, Some((addr, reason))) => Err(SsrfError::refused(host, addr, reason)),
            _ => Ok(allowed),
        }
    }

    /// A client for user-given URLs: `builder` (timeouts, user agent, …)
    /// with the guard's resolver, redirect policy and connection check, and
    /// without proxies. Applied last, so they replace whatever `builder`
    /// said about these. (Do not give `builder` `resolve()` overrides: they
    /// bypass the resolver; the connection check still catches them.)
    pub fn client(&self, builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
        self.client_with(builder, true)
    }

    /// [`Guard::client`] that never follows a redirect (a 3xx is the
    /// answer): for requests whose body and headers must reach the URL
    /// given and no other (webhook deliveries).
    pub fn client_without_redirects(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> reqwest::Result<reqwest::Client> {
        self.client_with(builder, false)
    }

    fn client_with(
        &self,
        builder: reqwest::ClientBuilder,
        follow: bool,
    ) -> reqwest::Result<reqwest::Client> {
        let redirects = self.clone();
        builder
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver(self.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if !follow {
                    return attempt.stop();
                }
                if attempt.previous().len() > MAX_REDIRECTS {
                    return attempt.error(SsrfError::TooManyRedirects);
                }
                match redirects.check_target(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            }))
            .connector_layer(PeerCheckLayer(self.clone()))
            .build()
    }
}

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, SsrfError> {
    let unresolvable = |detail: String| SsrfError::Unresolvable {
        host: host.to_owned(),
        detail,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| unresolvable(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no address".to_owned()));
    }
    Ok(addrs)
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Name resolution for guarded clients: refused addresses never reach the
/// connector.
struct GuardedResolver(Guard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs = guard.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks the address every new connection reached before it is used: the
/// one check nothing bypasses (IP-literal URLs, resolver overrides).
#[derive(Clone)]
struct PeerCheckLayer(Guard);

impl<S> tower::Layer<S> for PeerCheckLayer {
    type Service = PeerCheck<S>;

    fn layer(&self, inner: S) -> PeerCheck<S> {
        PeerCheck {
            inner,
            guard: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct PeerCheck<S> {
    inner: S,
    guard: Guard,
}

impl<S, R> tower::Service<R> for PeerCheck<S>
where
    S: tower::Service<R>,
    S::Response: Connection + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let connecting = self.inner.call(req);
        let guard = self.guard.clone();
        Box::pin(async move {
            let conn = connecting.await.map_err(Into::into)?;
            let mut extras = http::Extensions::new();
            conn.connected().get_extras(&mut extras);
            let Some(peer) = extras.get::<HttpInfo>().map(|i| i.remote_addr().ip()) else {
                return Err(Box::new(SsrfError::UnknownPeer) as BoxError);
            };
            guard
                .check_ip(peer)
                .map_err(|reason| Box::new(SsrfError::refused("", peer, reason)) as BoxError)?;
            Ok(conn)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_address_table() {
        use Reason::*;
        for (addr, want) in [
            // Public.
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.0.1.1", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("223.255.255.255", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
            // IPv4.
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.255", Some(Shared)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("169.254.1.1", Some(LinkLocal)),
            ("169.254.169.254", Some(Metadata)),
            ("169.254.170.2", Some(Metadata)),
            ("100.100.100.200", Some(Metadata)),
            ("192.0.0.192", Some(Metadata)),
            ("168.63.129.16", Some(Metadata)),
            ("192.0.0.8", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("192.88.99.1", Some(Reserved)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            // IPv6.
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(UniqueLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fd20:ce::254", Some(Metadata)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001:2::1", Some(Benchmarking)),
            ("2001::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("64:ff9b:1::1", Some(UniqueLocal)),
            ("4000::1", Some(Reserved)),
            ("1::1", Some(Reserved)),
            // IPv6 carrying IPv4: judged as the IPv4 address.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::8.8.8.8", None),
            ("64:ff9b::a9fe:a9fe", Some(Metadata)),
            ("64:ff9b::808:808", None),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:0808:0808::1", None),
        ] {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn strict_refuses_every_kind_and_passes_public_addresses() {
        let g = Guard::strict();
        assert_eq!(g.check_ip(ip("93.184.215.14")), Ok(()));
        assert_eq!(g.check_ip(ip("127.0.0.1")), Err(Reason::Loopback));
        assert_eq!(g.check_ip(ip("169.254.169.254")), Err(Reason::Metadata));
    }

    #[test]
    fn private_targets_open_private_kinds_but_not_metadata() {
        let g = Guard::new(&SsrfConfig {
            allow: vec![],
            allow_private_targets: true,
        });
        for ok in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(g.check_ip(ip(ok)), Ok(()), "{ok}");
        }
        for (no, why) in [
            ("169.254.169.254", Reason::Metadata),
            ("::ffff:169.254.169.254", Reason::Metadata),
            ("fd00:ec2::254", Reason::Metadata),
            ("100.100.100.200", Reason::Metadata),
            ("0.0.0.0", Reason::Unspecified),
            ("::", Reason::Unspecified),
            ("224.0.0.1", Reason::Multicast),
            ("255.255.255.255", Reason::Broadcast),
            ("240.0.0.1", Reason::Reserved),
            ("192.0.2.1", Reason::Documentation),
        ] {
            assert_eq!(g.check_ip(ip(no)), Err(why), "{no}");
        }
    }

    #[test]
    fn allow_opens_exactly_its_networks() {
        let g = Guard::new(&SsrfConfig {
            allow: vec![
                "10.1.0.0/16".parse().unwrap(),
                "169.254.169.254/32".parse().unwrap(),
                "fd00:1::/32".parse().unwrap(),
            ],
            allow_private_targets: false,
        });
        assert_eq!(g.check_ip(ip("10.1.2.3")), Ok(()));
        assert_eq!(g.check_ip(ip("::ffff:10.1.2.3")), Ok(()));
        assert_eq!(g.check_ip(ip("10.2.0.1")), Err(Reason::Private));
        assert_eq!(g.check_ip(ip("169.254.169.254")), Ok(()));
        assert_eq!(g.check_ip(ip("169.254.170.2")), Err(Reason::Metadata));
        assert_eq!(g.check_ip(ip("fd00:1::5")), Ok(()));
        assert_eq!(g.check_ip(ip("fd00:2::5")), Err(Reason::UniqueLocal));
        assert_eq!(g.check_ip(ip("127.0.0.1")), Err(Reason::Loopback));
    }

    #[test]
    fn set_changes_every_clone() {
        let g = Guard::strict();
        let other = g.clone();
        g.set(&SsrfConfig {
            allow: vec![],
            allow_private_targets: true,
        });
        assert_eq!(other.check_ip(ip("10.0.0.1")), Ok(()));
        assert!(other.config().allow_private_targets);
    }

    #[test]
    fn targets_need_http_a_host_and_an_allowed_literal() {
        let g = Guard::strict();
        let t = |u: &str| g.check_target(&Url::parse(u).unwrap());
        assert_eq!(t("https://example.com/x"), Ok(()));
        assert_eq!(t("http://93.184.215.14/"), Ok(()));
        assert!(matches!(
            t("file:///etc/passwd"),
            Err(SsrfError::Scheme { .. })
        ));
        assert!(matches!(
            t("ftp://example.com/"),
            Err(SsrfError::Scheme { .. })
        ));
        for literal in [
            "http://127.0.0.1:9/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://0x7f.1/",
            "http://2130706433/",
            "http://0/",
            "http://017700000001/",
        ] {
            assert!(
                matches!(t(literal), Err(SsrfError::Refused { .. })),
                "{literal}: {:?}",
                t(literal)
            );
        }
    }

    #[test]
    fn refusals_say_which_address_and_why() {
        let e = SsrfError::refused("localhost", ip("127.0.0.1"), Reason::Loopback);
        assert!(
            e.to_string()
                .starts_with("localhost resolves to 127.0.0.1, a loopback address, which"),
            "{e}"
        );
        let e = SsrfError::refused("[::1]", ip("::1"), Reason::Loopback);
        assert!(
            e.to_string().starts_with("::1 is a loopback address"),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("(allow = [\"::1/128\"], or allow_private_targets = true)"),
            "{e}"
        );
        let e = SsrfError::refused("", ip("169.254.169.254"), Reason::Metadata);
        assert!(
            e.to_string()
                .ends_with("(allow = [\"169.254.169.254/32\"])"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn check_url_resolves_and_judges_every_address() {
        let g = Guard::strict();
        let e = g.check_url("http://localhost:9/x").await.unwrap_err();
        assert!(
            matches!(&e, SsrfError::Refused { host, reason: Reason::Loopback, .. } if host == "localhost"),
            "{e:?}"
        );
        assert!(matches!(
            g.check_url("http://169.254.169.254/latest/meta-data").await,
            Err(SsrfError::Refused {
                reason: Reason::Metadata,
                ..
            })
        ));
        assert!(matches!(
            g.check_url("not a url").await,
            Err(SsrfError::InvalidUrl(_))
        ));
        let open = Guard::new(&SsrfConfig {
            allow: vec![],
            allow_private_targets: true,
        });
        assert!(open.check_url("http://localhost:9/x").await.is_ok());
        assert!(open.check_url("http://127.0.0.1:9/x").await.is_ok());
    }

    #[test]
    fn image_registries() {
        for (r, want) in [
            ("nginx", None),
            ("nginx:alpine", None),
            ("library/nginx:1", None),
            ("org/app@sha256:abc", None),
            ("docker.io/library/nginx", None),
            ("index.docker.io/library/nginx", None),
            ("ghcr.io/org/app:v1", Some("ghcr.io")),
            ("127.0.0.1:5000/x", Some("127.0.0.1:5000")),
            ("localhost/x", Some("localhost")),
            ("[::1]:5000/x:v1", Some("[::1]:5000")),
            ("Registry/x", Some("Registry")),
            ("registry:5000/app@sha256:abc", Some("registry:5000")),
        ] {
            assert_eq!(image_registry(r), want, "{r}");
        }
    }
}
