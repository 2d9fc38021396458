//! Header rewriting: hop-by-hop stripping, `X-Forwarded-*`, request ids.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{
    HeaderName, HeaderValue, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;
use hyper::body::Bytes;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Not hop-by-hop, but never meant for a backend (httpoxy: CGI-style
/// stacks turn it into `HTTP_PROXY`).
static PROXY: HeaderName = HeaderName::from_static("proxy");

/// Whether `headers` asks for a protocol upgrade: a `Connection` header
/// with the `upgrade` token and an `Upgrade` header.
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Remove the hop-by-hop headers (RFC 9110 §7.6.1): those named by
/// `Connection`, `Connection` itself, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade` and every `Proxy-*` (plus `Proxy`).
///
/// With `keep_upgrade`, the `Upgrade` header survives and `Connection` is
/// reset to exactly `upgrade`, which is what forwarding an upgrade needs.
///
/// Allocates only when `Connection` names non-standard headers or a
/// `Proxy-*` header other than the well-known ones is present.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            if token.is_empty()
                || ["close", "keep-alive", "upgrade", "te", "trailer"]
                    .iter()
                    .any(|t| token.eq_ignore_ascii_case(t))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        // A client cannot use `Connection` to strip what we add ourselves
        // afterwards; everything else it names is hop-by-hop by definition.
        headers.remove(name);
    }
    for name in [
        &CONNECTION,
        &KEEP_ALIVE,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &PROXY_CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
        &PROXY,
    ] {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let rest: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in rest {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Set `X-Forwarded-For` to its current values, if any, followed by `client`.
pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    use std::io::Write as _;

    let client = client.to_canonical();
    let mut value: Vec<u8> = Vec::with_capacity(64);
    for existing in headers.get_all(&X_FORWARDED_FOR) {
        let existing = existing.as_bytes().trim_ascii();
        if existing.is_empty() {
            continue;
        }
        value.extend_from_slice(existing);
        value.extend_from_slice(b", ");
    }
    // Writing to a Vec cannot fail.
    let _ = write!(value, "{client}");
    match HeaderValue::from_maybe_shared(Bytes::from(value)) {
        Ok(value) => {
            headers.insert(&X_FORWARDED_FOR, value);
        }
        // Existing values were valid header values, and so is an IP
        // address; should that ever not hold, the client's own address is
        // still worth passing on.
        Err(_) => {
            if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
                headers.insert(&X_FORWARDED_FOR, value);
            }
        }
    }
}

/// Whether a client-supplied request id is safe to pass on and echo: 1 to
/// 128 characters from `[A-Za-z0-9._:+/=@-]` (UUIDs, ULIDs, base64, trace
/// ids all fit).
pub(crate) fn is_sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+/=@-".contains(b))
}

/// A request id for logs; ids are sane by construction, so this never
/// falls back in practice.
pub(crate) fn id_str(request_id: &HeaderValue) -> &str {
    request_id.to_str().unwrap_or("-")
}

/// Generates request ids: 32 lowercase hex digits, the first 16 random per
/// process, the last 16 a bijective scramble of a counter, so ids are unique
/// within a process and, with overwhelming probability, across processes.
/// No syscall or lock per id.
pub(crate) struct RequestIds {
    prefix: u64,
    key: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let random = |salt: u64| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(salt);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            h.finish()
        };
        Self {
            prefix: random(1),
            key: random(2),
            counter: AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex(self.prefix, &mut buf[..16]);
        hex(mix(n ^ self.key), &mut buf[16..]);
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// The splitmix64 finaliser: a bijection on `u64`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate().take(16) {
        let shift = 60 - 4 * i;
        *byte = DIGITS[((v >> shift) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn strips_hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-foo", "1"),
            ("proxy", "http://evil"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn keeps_upgrade_when_asked() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        append_forwarded_for(&mut h, "::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.1");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "::1");
    }

    #[test]
    fn request_ids() {
        assert!(is_sane_request_id(&HeaderValue::from_static(
            "0c7e0d6a-2f3b-4c7e-9a53-0d2b7c1e9f10"
        )));
        assert!(!is_sane_request_id(&HeaderValue::from_static("")));
        assert!(!is_sane_request_id(&HeaderValue::from_static("a b")));
        assert!(!is_sane_request_id(&HeaderValue::from_static("<script>")));
        let long = "a".repeat(129);
        assert!(!is_sane_request_id(&HeaderValue::from_str(&long).unwrap()));

        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(is_sane_request_id(&a));
        assert_eq!(a.as_bytes()[..16], b.as_bytes()[..16]);
    }
}
