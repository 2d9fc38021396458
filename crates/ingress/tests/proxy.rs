//! The ingress end to end: real backend servers on 127.0.0.1:0, the real
//! ingress on port 0, real HTTP clients (reqwest, hyper's h2 client, raw
//! TCP where exact bytes matter).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Version};
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shellwego_ingress::{serve, Backend, IngressConfig, Routes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;

type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(10);

fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

// ---------------------------------------------------------------- backends

struct TestBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl TestBackend {
    fn backend(&self, id: &str) -> Backend {
        Backend {
            weight: 1,
            instance_id: id.to_owned(),
            addr: self.addr,
        }
    }
}

/// An HTTP/1.1 backend (hyper) answering every request with `handler`.
async fn backend<F, Fut>(handler: F) -> TestBackend
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let (conns, reqs) = (Arc::clone(&connections), Arc::clone(&requests));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            conns.fetch_add(1, SeqCst);
            let handler = Arc::clone(&handler);
            let reqs = Arc::clone(&reqs);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    reqs.fetch_add(1, SeqCst);
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestBackend {
        addr,
        connections,
        requests,
    }
}

/// A backend answering its own id.
async fn id_backend(id: &'static str) -> TestBackend {
    backend(move |_| async move { Response::new(full(id)) }).await
}

/// A backend answering the headers it received, one `name: value` a line.
async fn echo_headers_backend() -> TestBackend {
    backend(|req| async move {
        let mut text = String::new();
        for (name, value) in req.headers() {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
        }
        let mut resp = Response::new(full(text));
        let h = resp.headers_mut();
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("connection", "x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-request-id", "from-the-backend".parse().unwrap());
        resp
    })
    .await
}

/// A backend that signals each request's arrival, then answers `body`
/// only once released.
async fn slow_backend(
    body: &'static str,
) -> (TestBackend, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
    let (arrived_tx, arrived_rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let released = Arc::clone(&release);
    let b = backend(move |_| {
        let arrived = arrived_tx.clone();
        let released = Arc::clone(&released);
        async move {
            arrived.send(()).unwrap();
            released.notified().await;
            Response::new(full(body))
        }
    })
    .await;
    (b, arrived_rx, release)
}

/// An address where nothing listens: connecting is refused.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ----------------------------------------------------------------- ingress

struct Ingress {
    addr: SocketAddr,
    routes: Routes,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

fn table(entries: &[(&str, Vec<Backend>)]) -> HashMap<String, Vec<Backend>> {
    entries
        .iter()
        .map(|(app, backends)| ((*app).to_owned(), backends.clone()))
        .collect()
}

async fn ingress_with(entries: &[(&str, Vec<Backend>)], cfg: IngressConfig) -> Ingress {
    let routes = Routes::new();
    routes.replace(table(entries));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, routes.clone(), cfg, async move {
        let _ = rx.await;
    }));
    Ingress {
        addr,
        routes,
        shutdown: Some(tx),
        task,
    }
}

async fn ingress(entries: &[(&str, Vec<Backend>)]) -> Ingress {
    ingress_with(entries, IngressConfig::default()).await
}

impl Ingress {
    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    /// A reqwest client that resolves each of `hosts` to the ingress.
    fn client(&self, hosts: &[&str]) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().no_proxy();
        for host in hosts {
            builder = builder.resolve(host, self.addr);
        }
        builder.build().unwrap()
    }

    async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        self.client(&[host])
            .get(self.url(host, path))
            .send()
            .await
            .unwrap()
    }

    fn shutdown(&mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
    }
}

/// Send raw bytes (a request with `Connection: close`), read to EOF.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Read up to and including the blank line ending a message head, one byte
/// at a time so that nothing after it is consumed.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(timeout(WAIT, stream.read_u8()).await.unwrap().unwrap());
    }
    String::from_utf8(head).unwrap()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_ascii_lowercase).collect()
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn routes_by_host_with_404_for_unknown_and_503_for_empty_apps() {
    let web = id_backend("web-1").await;
    let ing = ingress(&[("web", vec![web.backend("web-1")]), ("empty", vec![])]).await;

    let resp = ing.get("web.localhost", "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "web-1");

    for host in ["nope.localhost", "web.example.com", "a.web.localhost"] {
        let resp = ing.get(host, "/").await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{host}");
        assert!(resp.headers().contains_key("x-request-id"));
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = resp.text().await.unwrap();
        assert!(
            text.contains(&format!("\"{host}:{}\"", ing.addr.port())),
            "404 page names the host: {text}"
        );
    }

    let resp = ing.get("empty.localhost", "/").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("no healthy instance of app \"empty\""),
        "{text}"
    );

    // Case-insensitive, any port, trailing dot.
    for host in ["WEB.LocalHost:8080", "Web.LOCALHOST", "web.localhost."] {
        let resp = raw(
            ing.addr,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{host}: {resp}");
        assert!(resp.ends_with("web-1"), "{resp}");
    }

    // `OPTIONS *` goes through as is; `CONNECT` is not ours to tunnel.
    let resp = raw(
        ing.addr,
        "OPTIONS * HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let resp = raw(
        ing.addr,
        "CONNECT web.localhost:443 HTTP/1.1\r\nHost: web.localhost:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");

    // No Host at all (HTTP/1.0 allows that).
    let resp = raw(ing.addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 400"), "{resp}");
}

#[tokio::test]
async fn round_robin_alternates_and_survives_replace() {
    let a = id_backend("a").await;
    let b = id_backend("b").await;
    let backends = vec![a.backend("a"), b.backend("b")];
    let ing = ingress(&[("web", backends.clone())]).await;
    let client = ing.client(&["web.localhost"]);

    let mut seen = Vec::new();
    for round in 0..10 {
        if round == 5 {
            // Republishing the same set keeps the rotation going.
            ing.routes.replace(table(&[("web", backends.clone())]));
        }
        let resp = client
            .get(ing.url("web.localhost", "/"))
            .send()
            .await
            .unwrap();
        seen.push(resp.text().await.unwrap());
    }
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "{seen:?}");
    }
    assert_eq!(a.requests.load(SeqCst), 5);
    assert_eq!(b.requests.load(SeqCst), 5);
}

#[tokio::test]
async fn refused_connections_fall_through_to_the_next_instance() {
    let dead = Backend {
        weight: 1,
        instance_id: "dead".into(),
        addr: dead_addr().await,
    };
    let live = id_backend("live").await;
    let ing = ingress(&[
        ("web", vec![dead.clone(), live.backend("live")]),
        ("gone", vec![dead.clone(), dead.clone()]),
    ])
    .await;
    let client = ing.client(&["web.localhost", "gone.localhost"]);

    for _ in 0..4 {
        let resp = client
            .get(ing.url("web.localhost", "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.text().await.unwrap(), "live");
        // A body is not lost when the first attempt's connect fails.
        let resp = client
            .post(ing.url("web.localhost", "/"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(live.requests.load(SeqCst), 8);

    let resp = client
        .get(ing.url("gone.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("no instance of app \"gone\" accepted a connection"),
        "{text}"
    );
}

#[tokio::test]
async fn connect_timeouts_fall_through_to_the_next_instance() {
    // A listener that never accepts, with its accept queue filled: further
    // SYNs are dropped, so connecting hangs until the timeout.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let blackhole = socket.listen(0).unwrap();
    let blackhole_addr = blackhole.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match timeout(
            Duration::from_millis(300),
            TcpStream::connect(blackhole_addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "accept queue never filled");
    }

    let live = id_backend("live").await;
    let cfg = IngressConfig {
        connect_timeout: Duration::from_millis(200),
        ..IngressConfig::default()
    };
    let hole = Backend {
        weight: 1,
        instance_id: "hole".into(),
        addr: blackhole_addr,
    };
    let ing = ingress_with(&[("web", vec![hole, live.backend("live")])], cfg).await;
    let client = ing.client(&["web.localhost"]);
    let mut slowest = Duration::ZERO;
    for _ in 0..2 {
        let started = Instant::now();
        let resp = timeout(WAIT, client.get(ing.url("web.localhost", "/")).send())
            .await
            .unwrap()
            .unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.text().await.unwrap(), "live");
    }
    assert!(slowest >= Duration::from_millis(180), "{slowest:?}");
    drop(blackhole);
}

#[tokio::test]
async fn no_retry_once_the_request_was_sent() {
    // Reads the request head, then hangs up without answering.
    let closer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    let closer_hits = Arc::new(AtomicUsize::new(0));
    let hits = Arc::clone(&closer_hits);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = closer.accept().await {
            hits.fetch_add(1, SeqCst);
            read_head(&mut stream).await;
        }
    });
    let live = id_backend("live").await;
    let closer = Backend {
        weight: 1,
        instance_id: "closer".into(),
        addr: closer_addr,
    };
    let ing = ingress(&[("web", vec![closer, live.backend("live")])]).await;
    let client = ing.client(&["web.localhost"]);

    // Round-robin alternates, so of each pair one goes to the closer first.
    // A request without a body and one with a body: neither is retried.
    let mut statuses = Vec::new();
    for with_body in [false, false, true, true] {
        let req = if with_body {
            client.post(ing.url("web.localhost", "/")).body("once only")
        } else {
            client.get(ing.url("web.localhost", "/"))
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        if status == StatusCode::BAD_GATEWAY {
            assert!(
                text.contains("the instance of app \"web\" failed to answer"),
                "{text}"
            );
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::BAD_GATEWAY,
            StatusCode::BAD_GATEWAY
        ]
    );
    assert_eq!(closer_hits.load(SeqCst), 2);
    assert_eq!(
        live.requests.load(SeqCst),
        2,
        "the failed requests were not retried"
    );
}

#[tokio::test]
async fn forwarding_headers_and_request_ids() {
    let echo = echo_headers_backend().await;
    let ing = ingress(&[("web", vec![echo.backend("echo")])]).await;
    let client = ing.client(&["web.localhost"]);
    let host = format!("web.localhost:{}", ing.addr.port());

    // The client's sane id is kept and echoed; XFF is appended to.
    let resp = client
        .get(ing.url("web.localhost", "/path?q=1"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7")
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let seen = lines(&resp.text().await.unwrap());
    for expected in [
        "x-forwarded-for: 203.0.113.7, 127.0.0.1".to_owned(),
        "x-forwarded-proto: http".to_owned(),
        format!("forwarded: for=203.0.113.7, for=127.0.0.1;proto=http;host=\"{host}\""),
        format!("x-forwarded-host: {host}"),
        format!("host: {host}"),
        "x-request-id: abc-123".to_owned(),
    ] {
        assert!(seen.contains(&expected), "missing {expected:?} in {seen:?}");
    }

    // No id, or an insane one: a fresh one, the same both ways.
    for sent in [None, Some("bad id <script>")] {
        let mut req = client.get(ing.url("web.localhost", "/"));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let resp = req.send().await.unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        let seen = lines(&resp.text().await.unwrap());
        assert!(seen.contains(&format!("x-request-id: {id}")), "{seen:?}");
        assert!(seen.contains(&"x-forwarded-for: 127.0.0.1".to_owned()));
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let echo = echo_headers_backend().await;
    let ing = ingress(&[("web", vec![echo.backend("echo")])]).await;
    let resp = raw(
        ing.addr,
        "GET / HTTP/1.1\r\n\
         Host: web.localhost\r\n\
         Connection: close, X-Hop\r\n\
         X-Hop: secret\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic eDp5\r\n\
         Proxy-Anything: 1\r\n\
         TE: trailers\r\n\
         Upgrade: h2c\r\n\
         X-Kept: yes\r\n\r\n",
    )
    .await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{resp}");

    let seen = lines(body);
    assert!(seen.contains(&"x-kept: yes".to_owned()), "{seen:?}");
    for gone in [
        "x-hop",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-anything",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.iter().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} reached the backend: {seen:?}"
        );
    }

    let head = lines(head);
    for gone in ["x-secret", "keep-alive", "proxy-authenticate"] {
        assert!(
            !head.iter().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} reached the client: {head:?}"
        );
    }
    // Our request id wins over whatever the backend says.
    assert!(!head.contains(&"x-request-id: from-the-backend".to_owned()));
    assert!(head.iter().any(|l| l.starts_with("x-request-id: ")));
}

#[tokio::test]
async fn response_bodies_are_streamed() {
    let release: Arc<Mutex<Option<oneshot::Receiver<()>>>> = Arc::default();
    let (release_tx, release_rx) = oneshot::channel();
    *release.lock().unwrap() = Some(release_rx);
    let streamer = backend(move |_| {
        let release = release.lock().unwrap().take();
        async move {
            let (mut tx, body) = Channel::<Bytes>::new(1);
            tokio::spawn(async move {
                tx.send_data(Bytes::from("first")).await.unwrap();
                match release {
                    Some(release) => release.await.unwrap(),
                    None => tokio::time::sleep(Duration::from_millis(500)).await,
                }
                tx.send_data(Bytes::from("second")).await.unwrap();
            });
            Response::new(body.map_err(|never| match never {}).boxed())
        }
    })
    .await;
    let ing = ingress(&[("web", vec![streamer.backend("s")])]).await;

    let mut resp = ing.get("web.localhost", "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The backend sends "second" only after we have seen "first".
    let first = timeout(WAIT, resp.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(first, "first");
    release_tx.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = timeout(WAIT, resp.chunk()).await.unwrap().unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second");

    // The timed variant: a 500 ms pause between the chunks.
    let started = Instant::now();
    let mut resp = ing.get("web.localhost", "/").await;
    let first = timeout(WAIT, resp.chunk()).await.unwrap().unwrap().unwrap();
    let first_after = started.elapsed();
    assert_eq!(first, "first");
    while timeout(WAIT, resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .is_some()
    {}
    let all_after = started.elapsed();
    assert!(
        all_after - first_after >= Duration::from_millis(400),
        "first chunk at {first_after:?}, last at {all_after:?}"
    );
}

/// A backend that reports each request body chunk as it arrives and
/// answers `<length> <wrapping byte sum>`.
async fn counting_backend() -> (TestBackend, mpsc::UnboundedReceiver<Bytes>) {
    let (chunks_tx, chunks_rx) = mpsc::unbounded_channel();
    let b = backend(move |req| {
        let chunks = chunks_tx.clone();
        async move {
            let mut body = req.into_body();
            let (mut len, mut sum) = (0usize, 0u64);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    len += data.len();
                    sum = data.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
                    let _ = chunks.send(data);
                }
            }
            Response::new(full(format!("{len} {sum}")))
        }
    })
    .await;
    (b, chunks_rx)
}

#[tokio::test]
async fn request_bodies_are_streamed() {
    let (counter, mut chunks) = counting_backend().await;
    let ing = ingress(&[("up", vec![counter.backend("c")])]).await;

    let mut stream = TcpStream::connect(ing.addr).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: up.localhost\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    // The backend has the first chunk before the client sends the rest.
    let first = timeout(WAIT, chunks.recv()).await.unwrap().unwrap();
    assert_eq!(first, "hello");
    stream.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let sum: u64 = b"hello world".iter().map(|&b| u64::from(b)).sum();
    assert!(out.ends_with(&format!("11 {sum}")), "{out}");
}

#[tokio::test]
async fn large_uploads_stream_through() {
    let (counter, mut chunks) = counting_backend().await;
    tokio::spawn(async move { while chunks.recv().await.is_some() {} });
    let ing = ingress(&[("up", vec![counter.backend("c")])]).await;

    let payload: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sum = payload
        .iter()
        .fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
    let resp = ing
        .client(&["up.localhost"])
        .post(ing.url("up.localhost", "/"))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.text().await.unwrap(),
        format!("{} {sum}", payload.len())
    );
}

/// A raw backend: answers 101 to the first request, then echoes; reports
/// the request head it got.
async fn upgrade_echo_backend() -> (Backend, oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (head_tx, head_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        head_tx.send(read_head(&mut stream).await).unwrap();
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                  Upgrade: echo\r\nX-Backend: yes\r\n\r\n",
            )
            .await
            .unwrap();
        let (mut read, mut write) = stream.split();
        let _ = tokio::io::copy(&mut read, &mut write).await;
    });
    let backend = Backend {
        weight: 1,
        instance_id: "echo".into(),
        addr,
    };
    (backend, head_rx)
}

/// Send an upgrade request to `ws.localhost`; returns the connection and
/// the response head.
async fn open_tunnel(ingress: SocketAddr) -> (TcpStream, String) {
    let mut client = TcpStream::connect(ingress).await.unwrap();
    client
        .write_all(
            b"GET /socket HTTP/1.1\r\nHost: ws.localhost\r\nConnection: keep-alive, Upgrade\r\n\
              Upgrade: echo\r\nSec-WebSocket-Key: abc\r\nX-Request-Id: ws-1\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    (client, head)
}

#[tokio::test]
async fn upgrades_tunnel_bytes_both_ways() {
    let (echo, head_rx) = upgrade_echo_backend().await;
    let ing = ingress(&[("ws", vec![echo])]).await;

    let (mut client, head) = open_tunnel(ing.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let head = lines(&head);
    assert!(head.contains(&"upgrade: echo".to_owned()), "{head:?}");
    assert!(head.contains(&"connection: upgrade".to_owned()), "{head:?}");
    assert!(head.contains(&"x-backend: yes".to_owned()), "{head:?}");
    assert!(head.contains(&"x-request-id: ws-1".to_owned()), "{head:?}");

    let backend_saw = lines(&timeout(WAIT, head_rx).await.unwrap().unwrap());
    for expected in [
        "connection: upgrade",
        "upgrade: echo",
        "sec-websocket-key: abc",
    ] {
        assert!(
            backend_saw.contains(&expected.to_owned()),
            "{expected:?} not in {backend_saw:?}"
        );
    }

    for message in [
        &b"ping"[..],
        b"a longer second message",
        &[0u8, 255, 1, 254],
    ] {
        client.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        timeout(WAIT, client.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
    // Closing our write side closes the tunnel: the backend's echo ends,
    // and so does our read side.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn replacing_routes_does_not_drop_in_flight_requests() {
    let (slow, mut arrived, release) = slow_backend("slow").await;
    let fast = id_backend("fast").await;
    let ing = ingress(&[("web", vec![slow.backend("slow")])]).await;
    let client = ing.client(&["web.localhost"]);

    let in_flight = tokio::spawn({
        let req = client.get(ing.url("web.localhost", "/"));
        async move { req.send().await.unwrap().text().await.unwrap() }
    });
    timeout(WAIT, arrived.recv()).await.unwrap().unwrap();

    // The slow instance leaves the table while its request is in flight.
    ing.routes
        .replace(table(&[("web", vec![fast.backend("fast")])]));
    let resp = client
        .get(ing.url("web.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "fast");

    release.notify_one();
    assert_eq!(timeout(WAIT, in_flight).await.unwrap().unwrap(), "slow");
    assert_eq!(slow.requests.load(SeqCst), 1);

    // And an app removed altogether is a 404 for the next request.
    ing.routes.replace(HashMap::new());
    let resp = client
        .get(ing.url("web.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let b = id_backend("b").await;
    let ing = ingress(&[("web", vec![b.backend("b")])]).await;
    for _ in 0..5 {
        // A new client each time: new downstream connections, same upstream one.
        let resp = ing.get("web.localhost", "/").await;
        assert_eq!(resp.text().await.unwrap(), "b");
    }
    assert_eq!(b.requests.load(SeqCst), 5);
    assert_eq!(b.connections.load(SeqCst), 1);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let b = id_backend("web-1").await;
    let ing = ingress(&[("web", vec![b.backend("web-1")])]).await;
    let stream = TcpStream::connect(ing.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://web.localhost/h2")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "web-1");
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let (slow, mut arrived, release) = slow_backend("slow").await;
    let mut ing = ingress(&[("web", vec![slow.backend("slow")])]).await;

    // An idle keep-alive connection must not hold shutdown up.
    let idle = ing.client(&["web.localhost"]);
    let warm_up = tokio::spawn({
        let req = idle.get(ing.url("web.localhost", "/"));
        async move { req.send().await.unwrap().text().await.unwrap() }
    });
    timeout(WAIT, arrived.recv()).await.unwrap().unwrap();
    release.notify_one();
    assert_eq!(warm_up.await.unwrap(), "slow");

    let client = ing.client(&["web.localhost"]);
    let in_flight = tokio::spawn({
        let req = client.get(ing.url("web.localhost", "/"));
        async move { req.send().await.unwrap().text().await.unwrap() }
    });
    timeout(WAIT, arrived.recv()).await.unwrap().unwrap();
    ing.shutdown();

    // New connections are refused once the listener is gone.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(ing.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the ingress still accepts after shutdown");
    assert!(!ing.task.is_finished());

    release.notify_one();
    assert_eq!(timeout(WAIT, in_flight).await.unwrap().unwrap(), "slow");
    timeout(WAIT, ing.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_waits_no_longer_than_the_grace_period() {
    let (slow, mut arrived, _never_released) = slow_backend("never").await;
    let cfg = IngressConfig {
        shutdown_grace: Duration::from_millis(300),
        ..IngressConfig::default()
    };
    let mut ing = ingress_with(&[("web", vec![slow.backend("slow")])], cfg).await;
    let client = ing.client(&["web.localhost"]);
    let in_flight = tokio::spawn({
        let req = client.get(ing.url("web.localhost", "/"));
        async move { req.send().await }
    });
    timeout(WAIT, arrived.recv()).await.unwrap().unwrap();

    let started = Instant::now();
    ing.shutdown();
    timeout(WAIT, ing.task).await.unwrap().unwrap().unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(
        timeout(WAIT, in_flight).await.unwrap().unwrap().is_err(),
        "the cut request fails"
    );
}

#[tokio::test]
async fn shutdown_cuts_open_tunnels_after_the_grace_period() {
    let (echo, _head) = upgrade_echo_backend().await;
    let cfg = IngressConfig {
        shutdown_grace: Duration::from_millis(300),
        ..IngressConfig::default()
    };
    let mut ing = ingress_with(&[("ws", vec![echo])], cfg).await;
    let (mut client, head) = open_tunnel(ing.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let started = Instant::now();
    ing.shutdown();
    // The tunnel keeps working during the grace period...
    client.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    timeout(WAIT, client.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"still here");
    // ...and `serve` waits for it, then cuts it.
    timeout(WAIT, ing.task).await.unwrap().unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut rest = Vec::new();
    let read = timeout(WAIT, client.read_to_end(&mut rest)).await.unwrap();
    assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");
}

#[tokio::test]
async fn slow_clients_are_cut_and_caps_hold() {
    let live = id_backend("live").await;
    let cfg = IngressConfig {
        limits: shellwego_ingress::Limits {
            header_read_timeout: Duration::from_millis(500),
            body_read_timeout: Duration::from_millis(500),
            body_min_rate: 1000,
            max_connections_per_ip: 20,
            ..Default::default()
        },
        ..IngressConfig::default()
    };
    let ing = ingress_with(&[("web", vec![live.backend("live")])], cfg).await;
    // Half-open connections (a partial head, or nothing) are closed.
    let mut slow = vec![];
    for i in 0..10 {
        let mut s = TcpStream::connect(ing.addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: web.local")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    // Over the per-address cap: refused at once, while others are served.
    let mut extra = vec![];
    for _ in 0..15 {
        extra.push(TcpStream::connect(ing.addr).await.unwrap());
    }
    let mut refused = 0;
    for s in &mut extra {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(200), s.read(&mut b)).await {
            refused += 1;
        }
    }
    assert!(
        refused >= 5,
        "{refused} of the connections over the cap refused"
    );
    drop(extra);
    for s in &mut slow {
        let mut b = [0u8; 64];
        let r = timeout(Duration::from_secs(3), s.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(0) | Err(_))),
            "a half-open connection stayed: {r:?}"
        );
    }
    assert_eq!(ing.get("web.localhost", "/").await.status(), 200);
}

#[tokio::test]
async fn a_backend_that_does_not_answer_in_time_is_a_504() {
    let (slow, mut arrived, release) = slow_backend("late").await;
    let ing = ingress_with(
        &[("web", vec![slow.backend("slow")])],
        IngressConfig {
            upstream_timeout: Duration::from_millis(300),
            ..IngressConfig::default()
        },
    )
    .await;
    let t = std::time::Instant::now();
    let resp = ing.get("web.localhost", "/").await;
    arrived.recv().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("504 Gateway Timeout") && text.contains("\"web\""),
        "{text}"
    );
    release.notify_waiters();
}
