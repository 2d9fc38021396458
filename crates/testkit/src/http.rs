//! A small blocking HTTP/1.1 client over `std::net` (one connection per
//! request, `Connection: close`), for tests that talk to a spawned
//! platform: it works in any context, including a `Drop` inside an async
//! test, where `reqwest::blocking` may not be used. For typed calls use the
//! API client; for async callers, [`crate::api::Api`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// How long one request may take (connect, send, answer).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; the text as a JSON string when it is not JSON
    /// (plain-text endpoints), `Null` when empty.
    pub fn json(&self) -> Value {
        body_value(&self.body)
    }
}

/// JSON, or the text as a JSON string, or `Null` when empty.
pub fn body_value(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// A request to send with [`send`].
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `Host`; `x` when none.
    pub host: Option<&'a str>,
    pub bearer: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

impl<'a> Request<'a> {
    pub fn new(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            host: None,
            bearer: None,
            content_type: None,
            body: None,
            timeout: TIMEOUT,
        }
    }

    pub fn host(mut self, host: &'a str) -> Self {
        self.host = Some(host);
        self
    }

    pub fn bearer(mut self, token: &'a str) -> Self {
        self.bearer = Some(token);
        self
    }

    pub fn body(mut self, content_type: &'a str, body: &'a [u8]) -> Self {
        self.content_type = Some(content_type);
        self.body = Some(body);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Send `req` to `addr` and read the whole answer.
pub fn send(addr: SocketAddr, req: &Request<'_>) -> std::io::Result<Response> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: */*\r\n",
        req.method,
        req.path,
        req.host.unwrap_or("x")
    );
    if let Some(t) = req.bearer {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(ct) = req.content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    let body = req.body.unwrap_or_default();
    if req.body.is_some() || !matches!(req.method, "GET" | "HEAD" | "DELETE") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    let answer = exchange_bytes(addr, &raw, req.timeout)?;
    parse(&answer)
}

/// Write `request` as it is and read until the server closes: a raw
/// HTTP/1.1 exchange, with nothing between the test and the server.
pub fn exchange(port: u16, request: &str) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let out = exchange_bytes(addr, request.as_bytes(), TIMEOUT)
        .unwrap_or_else(|e| panic!("HTTP exchange with {addr}: {e}"));
    String::from_utf8_lossy(&out).into_owned()
}

fn exchange_bytes(addr: SocketAddr, request: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect_timeout(&addr, timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    c.write_all(request)?;
    let mut out = vec![];
    c.read_to_end(&mut out)?;
    Ok(out)
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Parse a whole HTTP/1.1 answer: a `Content-Length` body, a chunked one,
/// or one delimited by the end of the connection.
fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of headers in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("no status line: {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest.get(..n)
            .ok_or_else(|| bad(format!("body shorter than its Content-Length {n}")))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut body = vec![];
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("a chunk without its size line"))?;
        let size = String::from_utf8_lossy(&rest[..eol]);
        let size = size.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| bad(format!("chunk size {size:?}")))?;
        rest = &rest[eol + 2..];
        if n == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..n).ok_or_else(|| bad("a chunk cut short"))?);
        rest = rest.get(n + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_answers() {
        let r = parse(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        assert_eq!(r.header("x-a"), Some("b"));
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.json(), serde_json::json!({"a": 1}));
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\nno route").unwrap();
        assert_eq!(r.json(), Value::String("no route".into()));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
