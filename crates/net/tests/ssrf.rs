//! The SSRF guard at fetch time, against real HTTP servers on loopback
//! addresses: an operator allows 127.0.0.2 (the "private registry"), and
//! everything else on loopback stands for what must not be reached.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use shellwego_net::ssrf::{refusal, Guard, Reason, SsrfConfig, SsrfError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A plain HTTP/1.1 server: `/redirect?<url>` answers 302 to `<url>`,
/// anything else 200 "hello". Counts connections and requests.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn serve(ip: &str) -> Server {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = match path.strip_prefix("/redirect?") {
                    Some(to) => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    None => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                        .to_string(),
                };
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    Server {
        addr,
        connections,
        requests,
    }
}

fn allow_127_0_0_2() -> Guard {
    Guard::new(&SsrfConfig {
        allow: vec!["127.0.0.2/32".parse().unwrap()],
        allow_private_targets: false,
    })
}

fn refused(e: &reqwest::Error) -> SsrfError {
    refusal(e)
        .cloned()
        .unwrap_or_else(|| panic!("not refused by the guard: {e:?}"))
}

#[tokio::test]
async fn an_allowed_server_that_redirects_to_a_refused_address_is_not_followed() {
    let allowed = serve("127.0.0.2").await;
    let secret = serve("127.0.0.1").await;
    let guard = allow_127_0_0_2();
    let client = guard.client(reqwest::Client::builder()).unwrap();

    // The allowed server itself is reachable.
    let ok = client
        .get(format!("http://{}/ok", allowed.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "hello");

    // A redirect to a refused literal address, and to a name that resolves
    // to one: neither is followed, and nothing connects to the target.
    for to in [
        format!("http://{}/secret", secret.addr),
        format!("http://localhost:{}/secret", secret.addr.port()),
    ] {
        let e = client
            .get(format!("http://{}/redirect?{to}", allowed.addr))
            .send()
            .await
            .unwrap_err();
        match refused(&e) {
            SsrfError::Refused { addr, reason, .. } => {
                assert!(addr.is_loopback(), "{addr}");
                assert_eq!(reason, Reason::Loopback);
            }
            other => panic!("{other:?}"),
        }
    }
    // Nor is one to another scheme (reqwest hands back the 302).
    let r = client
        .get(format!(
            "http://{}/redirect?file:///etc/passwd",
            allowed.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(secret.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_host_name_that_resolves_to_a_refused_address_is_refused_at_fetch_time() {
    let secret = serve("127.0.0.1").await;
    let guard = allow_127_0_0_2();
    let client = guard.client(reqwest::Client::builder()).unwrap();
    let e = client
        .get(format!("http://localhost:{}/", secret.addr.port()))
        .send()
        .await
        .unwrap_err();
    match refused(&e) {
        SsrfError::Refused { host, addr, reason } => {
            assert_eq!(host, "localhost");
            assert!(addr.is_loopback());
            assert_eq!(reason, Reason::Loopback);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(secret.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_ip_literal_is_refused_before_any_request_is_sent() {
    let secret = serve("127.0.0.1").await;
    let guard = allow_127_0_0_2();
    let url: reqwest::Url = format!("http://{}/", secret.addr).parse().unwrap();
    // The check fetchers make first: no connection at all.
    assert!(matches!(
        guard.check_target(&url),
        Err(SsrfError::Refused {
            reason: Reason::Loopback,
            ..
        })
    ));
    // A fetcher that forgot it: the connection check stops the request.
    let client = guard.client(reqwest::Client::builder()).unwrap();
    let e = client.get(url).send().await.unwrap_err();
    assert!(
        matches!(
            refused(&e),
            SsrfError::Refused {
                reason: Reason::Loopback,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(secret.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_changed_policy_applies_to_existing_clients() {
    let server = serve("127.0.0.1").await;
    let guard = Guard::strict();
    let client = guard.client(reqwest::Client::builder()).unwrap();
    let url = format!("http://localhost:{}/", server.addr.port());
    assert!(client.get(&url).send().await.is_err());
    guard.set(&SsrfConfig {
        allow: vec![],
        allow_private_targets: true,
    });
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn redirects_are_limited() {
    let server = serve("127.0.0.2").await;
    let client = allow_127_0_0_2()
        .client(reqwest::Client::builder())
        .unwrap();
    // Each hop redirects to a URL that redirects again, 12 deep.
    let mut url = format!("http://{}/end", server.addr);
    for _ in 0..12 {
        url = format!("http://{}/redirect?{url}", server.addr);
    }
    let e = client.get(&url).send().await.unwrap_err();
    assert!(matches!(refused(&e), SsrfError::TooManyRedirects), "{e:?}");
}
