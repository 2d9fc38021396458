//! The real client address of a request that may have come through
//! reverse proxies.
//!
//! Only proxies the operator names in `trusted_proxies` are believed: when
//! the connection comes from one of them, the forwarding headers are read
//! from the right (the hop nearest to us) and every address that is itself
//! a trusted proxy is skipped; the first address that is not is the
//! client. A connection from anywhere else is its own client, whatever it
//! claims in its headers (a client can write any `X-Forwarded-For` it
//! likes; only the part our own proxies appended is true).
//!
//! `Forwarded` (RFC 7239, `for=` parameters) is read when present,
//! otherwise `X-Forwarded-For`. An element that is not an address
//! (`unknown`, an obfuscated `_name`) ends the walk at the proxy that
//! wrote it.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that arrived from `peer` with
    /// `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        let hops = forwarded_hops(headers);
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) => {
                    client = *ip;
                    if !self.contains(client) {
                        return client;
                    }
                }
                // Not an address: the proxy that wrote it is as far as
                // we can see.
                None => return client,
            }
        }
        client
    }
}

/// The `for=` addresses of `Forwarded`, or else the `X-Forwarded-For`
/// elements, nearest client first (as sent); `None` for an element that is
/// not an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        let mut out = vec![];
        for value in forwarded {
            for element in value.split(',') {
                let for_ = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
                });
                // An element without for= says nothing about the client.
                if let Some(v) = for_ {
                    out.push(parse_node(v.trim_matches('"')));
                }
            }
        }
        return out;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_node)
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside.parse::<IpAddr>().ok().map(|i| i.to_canonical());
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_their_own_client() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let headers = h(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(t.client_ip(ip("192.0.2.1"), &headers), ip("192.0.2.1"));
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let t = TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ]);
        // The client wrote a lie at the left; our proxies appended the rest.
        let headers = h(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1")]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &headers), ip("203.0.113.7"));
        // Two header lines read as one list.
        let headers = h(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.8:5555"),
        ]);
        assert_eq!(t.client_ip(ip("10.9.9.9"), &headers), ip("203.0.113.8"));
        // Everything trusted: the leftmost is the client.
        let headers = h(&[("x-forwarded-for", "10.2.2.2")]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &headers), ip("10.2.2.2"));
        // No header: the proxy itself.
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h(&[])), ip("127.0.0.1"));
        // IPv4-mapped peers count as their IPv4 address.
        assert_eq!(
            t.client_ip(
                ip("::ffff:127.0.0.1"),
                &h(&[("x-forwarded-for", "2001:db8::1")])
            ),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for() {
        let t = TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let headers = h(&[
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\"",
            ),
        ]);
        assert_eq!(
            t.client_ip(ip("127.0.0.1"), &headers),
            ip("2001:db8:cafe::17")
        );
    }

    #[test]
    fn unknown_elements_stop_the_walk() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let headers = h(&[("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.5")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &headers), ip("10.0.0.5"));
        let headers = h(&[("forwarded", "for=_hidden")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }
}
