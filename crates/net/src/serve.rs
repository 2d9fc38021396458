//! HTTP serving that a slow or hostile client cannot exhaust.
//!
//! Every listener of ours (the API, the agent channel on it, the ingress)
//! serves connections through [`serve`], which adds to hyper:
//!
//! * **Connection caps.** At most [`Limits::max_connections`] connections
//!   at once, and [`Limits::max_connections_per_ip`] from one client
//!   address (trusted proxies are exempt: they carry many clients). A
//!   connection over a cap is closed as soon as it is accepted, so the
//!   listen queue keeps moving and file descriptors stay free for the
//!   clients within the caps.
//! * **Header timeout.** A connection must deliver a complete request head
//!   within [`Limits::header_read_timeout`] of being accepted, or of the
//!   first byte of a later request on it. This covers the protocol
//!   detection of HTTP/1 vs HTTP/2 too (hyper's own timer starts only after
//!   it).
//! * **Idle timeout.** A keep-alive connection with no request in flight is
//!   closed after [`Limits::idle_timeout`].
//! * **Body timeout with a minimum rate.** A request body must arrive within
//!   [`Limits::body_read_timeout`] plus one second for every
//!   [`Limits::body_min_rate`] bytes received (Apache's `mod_reqtimeout`
//!   rule): a large upload on a good link is never cut, a body dribbled at
//!   1 byte/s is. Reading past the deadline fails with [`BodyTimeout`],
//!   which the application answers with 408.
//! * **Send timeout.** A response whose bytes the client does not take for
//!   [`Limits::send_timeout`] (a client that stopped reading) ends the
//!   connection.
//! * **Problem bodies for protocol errors.** hyper answers a request it
//!   cannot parse (a NUL byte in a header, a URI over 64 KiB, headers over
//!   its buffer) by itself, with an empty body. With
//!   [`ServeOptions::protocol_error`] set, that answer is replaced on its
//!   way out by one the application formats (RFC 7807 for the API).
//!
//! The timers are one watchdog per connection that sleeps until the next
//! deadline of the state the connection is in, or at most the shortest
//! timeout; the state is kept by a thin wrapper around the socket (bytes
//! read while idle, writes blocked) and around the service (requests in
//! flight), with a few atomics and no wake-ups, so a busy connection costs
//! the watchdog nothing per request. A deadline that moves earlier (the
//! first byte of a new request on an idle keep-alive connection, a write
//! that blocks) is seen within the shortest timeout.
//!
//! Shutdown is staged ([`Stage`]): when the `shutdown` future resolves,
//! [`serve`] stops accepting, idle connections close, in-flight requests
//! finish; after [`ServeOptions::shutdown_grace`] what is left is cut.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::client_ip::TrustedProxies;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body handlers get: hyper's, with the body timeout.
pub type RequestBody = TimedBody<Incoming>;

/// How long clients may take and how many connections they may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A complete request head within this long of the connection's start
    /// (or of a later request's first byte). Default 10 s.
    pub header_read_timeout: Duration,
    /// A request body gets this long, plus a second per
    /// [`Limits::body_min_rate`] bytes received. Default 30 s.
    pub body_read_timeout: Duration,
    /// Bytes per second a body must keep up, on average, past its
    /// allowance. Default 1024. 0 means the allowance is all it gets.
    pub body_min_rate: u64,
    /// A keep-alive connection without a request in flight is closed after
    /// this long. Default 60 s.
    pub idle_timeout: Duration,
    /// A response the client does not read for this long ends the
    /// connection. Default 60 s.
    pub send_timeout: Duration,
    /// Connections at once. Default 8192 (less when the process may open
    /// fewer files: see [`Limits::fitted_to_open_files`]).
    pub max_connections: usize,
    /// Connections at once from one client address. Default 256.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 8192,
            max_connections_per_ip: 256,
        }
    }
}

impl Limits {
    /// How often a connection's watchdog looks at it at least: the
    /// shortest of the connection timeouts (so a deadline is kept to
    /// within that much).
    fn recheck(&self) -> Duration {
        self.header_read_timeout
            .min(self.idle_timeout)
            .min(self.send_timeout)
            .max(Duration::from_millis(10))
    }

    /// `max_connections` lowered, if need be, to leave room under the
    /// process's open-file limit (`ulimit -n`) for everything else it
    /// opens: half the limit goes to a listener's connections at most.
    pub fn fitted_to_open_files(mut self) -> Self {
        if let Some(n) = open_file_limit() {
            let room = usize::try_from(n / 2).unwrap_or(usize::MAX).max(64);
            if self.max_connections > room {
                tracing::info!(
                    max_connections = room,
                    configured = self.max_connections,
                    open_file_limit = n,
                    "connection cap lowered to half the open-file limit"
                );
                self.max_connections = room;
            }
        }
        self
    }
}

/// The soft `RLIMIT_NOFILE`, read from /proc (no unsafe code needed).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Formats the body of an error hyper answers by itself.
pub type ProtocolErrorFn = Arc<dyn Fn(StatusCode) -> ProtocolError + Send + Sync>;

/// The replacement for one of hyper's own error answers.
pub struct ProtocolError {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Everything [`serve`] needs besides the listener and the service.
#[derive(Clone)]
pub struct ServeOptions {
    pub limits: Limits,
    /// Connections from these are exempt from the per-address cap.
    pub trusted_proxies: TrustedProxies,
    /// How long in-flight requests may take to finish after shutdown.
    pub shutdown_grace: Duration,
    /// Replaces hyper's empty-bodied answers to requests it cannot parse.
    pub protocol_error: Option<ProtocolErrorFn>,
    /// Names the listener in logs ("api", "ingress").
    pub name: &'static str,
    /// Serve HTTPS with this configuration (its certificate resolver, ALPN
    /// `h2`/`http/1.1`): the handshake must finish within the header
    /// timeout. [`ServeOptions::protocol_error`] is not applied to TLS
    /// connections (hyper's answers are encrypted by then).
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            limits: Limits::default(),
            trusted_proxies: TrustedProxies::default(),
            shutdown_grace: Duration::from_secs(30),
            protocol_error: None,
            name: "http",
            tls: None,
        }
    }
}

/// Where [`serve`] is in its life, as connections (and whatever else holds
/// a receiver, such as tunnels) see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Accepting and serving.
    Serving,
    /// Shutdown signalled: finish in-flight requests, then close.
    Draining,
    /// The grace period is over: close now.
    Stopping,
}

impl Stage {
    /// A channel for [`serve`]; give receivers to whatever must end with
    /// the connections (the sender's `closed()` waits for them).
    pub fn channel() -> (watch::Sender<Stage>, watch::Receiver<Stage>) {
        watch::channel(Stage::Serving)
    }

    /// Resolves once the stage satisfies `done`, or once `serve` is gone.
    pub async fn reached(stage: &mut watch::Receiver<Stage>, done: impl Fn(Stage) -> bool) {
        // The guard `wait_for` returns is not `Send`; drop it here.
        let _ = stage.wait_for(|s| done(*s)).await;
    }
}

/// Serve `listener` until `shutdown` resolves, then drain (see the module
/// docs). `make_service` is called once per connection with the peer's
/// address. `stage` is the sender of [`Stage::channel`]; [`serve`] returns
/// once every receiver is gone or the grace period is over.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    opts: ServeOptions,
    stage: watch::Sender<Stage>,
    make_service: M,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    M: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limits = Arc::new(opts.limits.clone());
    let caps = Arc::new(Caps::new(&opts));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Our watchdog owns the header timeout (it also covers protocol
    // detection); hyper's timer is the backstop for HTTP/1 heads.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.limits.header_read_timeout + Duration::from_secs(1));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let stage_rx = stage.subscribe();
    let name = opts.name;

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(name, &error).await;
                    continue;
                }
            },
        };
        let Some(permit) = caps.admit(peer.ip()) else {
            // Over a cap: closed at once (dropping the stream).
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = make_service(peer);
        let conn = Arc::new(ConnState::new());
        let io = GuardedIo {
            inner: stream,
            conn: Arc::clone(&conn),
            rewrite: opts.protocol_error.clone(),
            pending: None,
        };
        let service = Tracked {
            inner: Arc::new(service),
            conn: Arc::clone(&conn),
            limits: Arc::clone(&limits),
        };
        let builder = Arc::clone(&builder);
        let limits = Arc::clone(&limits);
        let stage = stage_rx.clone();
        let tls = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => drive(io, &builder, service, &conn, &limits, stage, name, peer).await,
                Some(acceptor) => {
                    let shake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io));
                    match shake.await {
                        Ok(Ok(tls)) => {
                            drive(tls, &builder, service, &conn, &limits, stage, name, peer).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(listener = name, %peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }

    drop(listener);
    // What the service factory holds (a receiver, say) must not keep the
    // drain waiting.
    drop(make_service);
    drop(stage_rx);
    stage.send_replace(Stage::Draining);
    tracing::info!(
        listener = name,
        open = stage.receiver_count(),
        grace = ?opts.shutdown_grace,
        "stopped accepting; letting in-flight requests finish"
    );
    if tokio::time::timeout(opts.shutdown_grace, stage.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            open = stage.receiver_count(),
            "shutdown grace period over; closing what is left"
        );
        stage.send_replace(Stage::Stopping);
        stage.closed().await;
    }
    Ok(())
}

/// Serve one connection (plain or TLS) under the watchdog until it ends,
/// times out or is cut by the shutdown stage.
#[allow(clippy::too_many_arguments)]
async fn drive<I, S, B>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    service: Tracked<S>,
    conn: &ConnState,
    limits: &Limits,
    mut stage: watch::Receiver<Stage>,
    name: &'static str,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let c = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(c);
    let mut draining = false;
    let result = loop {
        // Until the next deadline of the state the connection is in,
        // but no longer than the shortest timeout: the state changes
        // without waking us (a request per wake-up would cost more
        // than the whole check), so a deadline that moved earlier is
        // seen at most that late.
        let (deadline, _) = conn.deadline(limits);
        let wake = deadline.min(Instant::now() + limits.recheck());
        tokio::select! {
            result = c.as_mut() => break result,
            () = tokio::time::sleep_until(wake) => {
                let (deadline, why) = conn.deadline(limits);
                if deadline <= Instant::now() {
                    tracing::debug!(listener = name, %peer, reason = why, "connection closed: timeout");
                    break Ok(());
                }
            }
            () = Stage::reached(&mut stage, |s| if draining { s == Stage::Stopping } else { s != Stage::Serving }) => {
                if draining {
                    break Ok(());
                }
                // Finish what is in flight, then close; idle
                // keep-alive connections close at once.
                draining = true;
                c.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(listener = name, %peer, %error, "client connection ended with an error");
    }
}

/// Log a failed `accept`. Errors that concern one connection are skipped;
/// others (out of file descriptors, most likely) get a short pause so the
/// loop does not spin.
async fn accept_failed(name: &str, error: &io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {
            tracing::debug!(listener = name, %error, "accept failed");
        }
        _ => {
            tracing::warn!(listener = name, %error, "accept failed; pausing 50 ms");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Connection caps

/// Open connections per client address.
type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

struct Caps {
    total: Arc<Semaphore>,
    per_ip: PerIp,
    max_per_ip: usize,
    max_total: usize,
    trusted: TrustedProxies,
    name: &'static str,
    /// When a refusal was last logged (seconds since `epoch`), to log at
    /// most one warning per 10 s.
    last_warned: AtomicU64,
    epoch: Instant,
}

/// A connection's place under the caps, given back when it closes.
struct Admitted {
    _total: OwnedSemaphorePermit,
    ip: Option<(IpAddr, PerIp)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((ip, map)) = self.ip.take() {
            let mut m = map.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

impl Caps {
    fn new(opts: &ServeOptions) -> Self {
        Caps {
            total: Arc::new(Semaphore::new(opts.limits.max_connections)),
            per_ip: Arc::default(),
            max_per_ip: opts.limits.max_connections_per_ip,
            max_total: opts.limits.max_connections,
            trusted: opts.trusted_proxies.clone(),
            name: opts.name,
            last_warned: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let ip = ip.to_canonical();
        let Ok(total) = Arc::clone(&self.total).try_acquire_owned() else {
            self.refused(ip, "max_connections", self.max_total);
            return None;
        };
        if self.trusted.contains(ip) {
            return Some(Admitted {
                _total: total,
                ip: None,
            });
        }
        {
            let mut m = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let n = m.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(m);
                self.refused(ip, "max_connections_per_ip", self.max_per_ip);
                return None;
            }
            *n += 1;
        }
        Some(Admitted {
            _total: total,
            ip: Some((ip, Arc::clone(&self.per_ip))),
        })
    }

    fn refused(&self, ip: IpAddr, cap: &'static str, limit: usize) {
        let now = self.epoch.elapsed().as_secs() + 10;
        let last = self.last_warned.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(listener = self.name, client = %ip, cap, limit, "connection refused: over the cap (logged at most every 10 s)");
        } else {
            tracing::debug!(listener = self.name, client = %ip, cap, "connection refused: over the cap");
        }
    }
}

// ---------------------------------------------------------------------------
// Per-connection state and its watchdog

/// What the watchdog needs to know of one connection. Times are
/// nanoseconds since `start`, plus one (0 means "not set").
struct ConnState {
    start: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    idle_since: AtomicU64,
    head_since: AtomicU64,
    write_blocked_since: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(1),
            head_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn at(&self, t: u64) -> Instant {
        self.start + Duration::from_nanos(t.saturating_sub(1))
    }

    /// The next deadline, and what it is for.
    fn deadline(&self, limits: &Limits) -> (Instant, &'static str) {
        let far = (Instant::now() + Duration::from_secs(86_400), "none");
        let mut best = far;
        let mut consider = |at: Instant, why: &'static str| {
            if at < best.0 {
                best = (at, why);
            }
        };
        let blocked = self.write_blocked_since.load(Ordering::Acquire);
        if blocked != 0 {
            consider(self.at(blocked) + limits.send_timeout, "send");
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let head = self.head_since.load(Ordering::Acquire);
            if head != 0 {
                consider(self.at(head) + limits.header_read_timeout, "header");
            } else if self.requests.load(Ordering::Acquire) == 0 {
                consider(self.start + limits.header_read_timeout, "header");
            } else {
                let idle = self.idle_since.load(Ordering::Acquire);
                consider(self.at(idle) + limits.idle_timeout, "idle");
            }
        }
        best
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        InFlight(Arc::clone(self))
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
        {
            self.head_since.store(self.now(), Ordering::Release);
        }
    }

    fn write_blocked(&self, blocked: bool) {
        let was = self.write_blocked_since.load(Ordering::Acquire);
        match (blocked, was != 0) {
            (true, false) => {
                self.write_blocked_since
                    .store(self.now(), Ordering::Release);
            }
            (false, true) => self.write_blocked_since.store(0, Ordering::Release),
            _ => {}
        }
    }
}

/// One request in flight; dropped when its response has been sent (or
/// abandoned).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.0;
        if c.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            c.idle_since.store(c.now(), Ordering::Release);
            c.head_since.store(0, Ordering::Release);
        }
    }
}

// ---------------------------------------------------------------------------
// The socket wrapper

struct GuardedIo {
    inner: TcpStream,
    conn: Arc<ConnState>,
    rewrite: Option<ProtocolErrorFn>,
    /// A replacement being written for the buffer hyper handed us; the
    /// buffer counts as written once all of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read_some();
        }
        res
    }
}

impl GuardedIo {
    /// Write what is left of a replacement; Ready once all of it is out.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done >= bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }

    fn track<T>(&self, res: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.conn.write_blocked(res.is_pending());
        res
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if let Some(f) = &this.rewrite {
                if let Some(status) = hyper_error_status(buf) {
                    this.pending = Some((problem_response(status, f(status)), 0));
                }
            }
        }
        if this.pending.is_some() {
            let res = this.poll_pending(cx).map_ok(|()| buf.len());
            return this.track(res);
        }
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if self.rewrite.is_some() || self.pending.is_some() {
                return self.poll_write(cx, only);
            }
        }
        let this = &mut *self;
        if this.pending.is_some() {
            ready!(this.poll_pending(cx))?;
        }
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        let res = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The status of `buf` if it is one of hyper's own answers to a request it
/// could not parse: a bare head (`HTTP/1.x 400|414|431 …`, `content-length:
/// 0`, no content type) and nothing else. Our own error responses always
/// have a body and a content type, so they never match.
fn hyper_error_status(buf: &[u8]) -> Option<StatusCode> {
    if buf.len() > 512 || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?;
    let status = StatusCode::from_bytes(code.as_bytes()).ok()?;
    if !matches!(status.as_u16(), 400 | 414 | 431) {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    (head.contains("\r\ncontent-length: 0\r\n") && !head.contains("\r\ncontent-type:"))
        .then_some(status)
}

fn problem_response(status: StatusCode, p: ProtocolError) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        p.content_type,
        p.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&p.body);
    out
}

// ---------------------------------------------------------------------------
// The service wrapper and the two bodies

struct Tracked<S> {
    inner: Arc<S>,
    conn: Arc<ConnState>,
    limits: Arc<Limits>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.conn.request_started();
        let req = req.map(|b| TimedBody::new(b, &self.limits));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await.map_err(Into::into)?;
            Ok(res.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until
    /// it has been sent.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: InFlight,
    }
}

impl<B> HttpBody for TrackedBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body read too slowly (see [`Limits::body_read_timeout`]).
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly: {received} bytes in {}s; send it faster", elapsed.as_secs())]
pub struct BodyTimeout {
    pub received: u64,
    pub elapsed: Duration,
}

impl BodyTimeout {
    /// Whether `err` (or what caused it) is a [`BodyTimeout`].
    pub fn is_in(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(x) = e {
            if x.is::<BodyTimeout>() {
                return true;
            }
            e = x.source();
        }
        false
    }
}

pin_project_lite::pin_project! {
    /// A request body with the body timeout and minimum rate.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        start: Instant,
        received: u64,
        allowance: Duration,
        min_rate: u64,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, limits: &Limits) -> Self {
        TimedBody {
            inner,
            start: Instant::now(),
            received: 0,
            allowance: limits.body_read_timeout,
            min_rate: limits.body_min_rate,
            sleep: None,
        }
    }

    fn deadline(start: Instant, allowance: Duration, received: u64, min_rate: u64) -> Instant {
        let earned = match min_rate {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(received as f64 / r as f64),
        };
        start + allowance + earned
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.received += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline =
                    Self::deadline(*this.start, *this.allowance, *this.received, *this.min_rate);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout {
                        received: *this.received,
                        elapsed: this.start.elapsed(),
                    })))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_are_recognised() {
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 23:35:02 GMT\r\n\r\n";
        assert_eq!(hyper_error_status(head), Some(StatusCode::BAD_REQUEST));
        let head = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 23:35:02 GMT\r\n\r\n";
        assert_eq!(hyper_error_status(head), Some(StatusCode::URI_TOO_LONG));
        // Ours: a content type and a body.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_error_status(ours), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_error_status(ok), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}";
        assert_eq!(hyper_error_status(with_body), None);
    }

    #[test]
    fn the_body_deadline_grows_with_what_arrived() {
        let start = Instant::now();
        let d0 = TimedBody::<()>::deadline(start, Duration::from_secs(30), 0, 1024);
        assert_eq!(d0, start + Duration::from_secs(30));
        let d1 = TimedBody::<()>::deadline(start, Duration::from_secs(30), 10 * 1024, 1024);
        assert_eq!(d1, start + Duration::from_secs(40));
        let d2 = TimedBody::<()>::deadline(start, Duration::from_secs(30), 1 << 30, 0);
        assert_eq!(d2, start + Duration::from_secs(30));
    }
}
