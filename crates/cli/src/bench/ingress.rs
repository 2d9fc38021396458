//! `shellwego bench ingress`: requests per second and latency of one small
//! upstream called directly, through ShellWeGo's ingress, and through
//! nginx as a reverse proxy — all with the same load generator.
//!
//! The upstream (a hyper HTTP/1.1 server answering a fixed body) and the
//! ingress each run on a runtime of their own (as many threads as cores),
//! nginx with `worker_processes auto`; the load generator is this
//! process's runtime: one task per connection, each a hyper HTTP/1.1
//! client connection (keep-alive, `TCP_NODELAY`) sending one request after
//! the other. Everything shares the host's cores, so a proxy's figures
//! include the CPU it takes from the others, as on a real node.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::kit;

const BODY: &[u8] = b"hello from the upstream\n";
const HOST: &str = "bench.localhost";
const WARMUP: Duration = Duration::from_secs(1);

pub async fn run(seconds: u64, connections: usize) -> anyhow::Result<()> {
    if connections == 0 || seconds == 0 {
        bail!("--connections and --seconds must be at least 1");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir()?;

    let upstream_rt = runtime("upstream", threads)?;
    let upstream = std::net::TcpListener::bind("127.0.0.1:0")?;
    upstream.set_nonblocking(true)?;
    let upstream_addr = upstream.local_addr()?;
    upstream_rt.spawn(serve_upstream(upstream));

    let ingress_rt = runtime("ingress", threads)?;
    let routes = shellwego_ingress::Routes::new();
    routes.replace(HashMap::from([(
        "bench".to_string(),
        vec![shellwego_ingress::Backend {
            weight: 1,
            instance_id: "inst_bench".into(),
            addr: upstream_addr,
        }],
    )]));
    let ingress = std::net::TcpListener::bind("127.0.0.1:0")?;
    ingress.set_nonblocking(true)?;
    let ingress_addr = ingress.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    ingress_rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(ingress)?;
        shellwego_ingress::serve(
            listener,
            routes,
            shellwego_ingress::IngressConfig::default(),
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
    });

    let mut targets: Vec<Target> = vec![
        Target {
            name: "direct",
            addr: upstream_addr,
            proxy: Probe::None,
        },
        Target {
            name: "ingress",
            addr: ingress_addr,
            proxy: Probe::Threads("bench-ingress"),
        },
    ];
    let mut nginx = match nginx_binary() {
        Some(bin) => {
            let n = Nginx::start(&bin, dir.path(), upstream_addr).await?;
            targets.push(Target {
                name: "nginx",
                addr: n.addr,
                proxy: Probe::Tree(n.child.id()),
            });
            Some(n)
        }
        None => None,
    };

    let res = measure(&targets, Duration::from_secs(seconds), connections).await;
    if let Some(n) = &mut nginx {
        n.child.terminate_async(Duration::from_secs(5)).await;
    }
    let _ = stop_tx.send(());
    drop((upstream_rt, ingress_rt));
    let rows = res?;
    println!(
        "ingress: GET of a {}-byte body from an in-process hyper upstream, HTTP/1.1 keep-alive; \
         {seconds} s per run after {} s of warm-up; upstream, ingress and load generator each on \
         a {threads}-thread runtime of this process{}.",
        BODY.len(),
        WARMUP.as_secs(),
        match &nginx {
            Some(n) => format!(
                "; {} as a reverse proxy (worker_processes auto, upstream keepalive 64, access_log off)",
                n.version
            ),
            None => String::new(),
        }
    );
    println!(
        "  {:<8} {:>5}  {:>9}  {:>9}  {:>9}  {:>10}  {:>13}  {:>6}",
        "target", "conns", "req/s", "p50", "p99", "added p99", "proxy CPU/req", "errors"
    );
    for r in rows {
        println!("{r}");
    }
    println!(
        "  proxy CPU/req: CPU time the ingress's runtime threads (nginx: its master and workers) \
         used during the run, per request."
    );
    if nginx.is_none() {
        println!("  nginx: skipped: nginx not found: install nginx-light");
    }
    Ok(())
}

/// What is measured, and how the CPU its proxy uses is read.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    proxy: Probe,
}

#[derive(Clone, Copy)]
enum Probe {
    /// Nothing in between.
    None,
    /// This process's threads of that name (a runtime's workers).
    Threads(&'static str),
    /// A process and its children (nginx's master and workers).
    Tree(u32),
}

impl Probe {
    fn cpu(self) -> Option<Duration> {
        match self {
            Probe::None => None,
            Probe::Threads(name) => {
                let tasks = std::fs::read_dir("/proc/self/task").ok()?;
                Some(
                    tasks
                        .flatten()
                        .filter(|t| {
                            std::fs::read_to_string(t.path().join("comm"))
                                .is_ok_and(|c| c.trim() == name)
                        })
                        .filter_map(|t| kit::cpu_time_at(&t.path().join("stat")))
                        .sum(),
                )
            }
            Probe::Tree(root) => {
                let procs = std::fs::read_dir("/proc").ok()?;
                let children = procs
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/stat"))
                            .ok()
                            .and_then(|s| {
                                let rest = s.get(s.rfind(')')? + 2..)?.to_string();
                                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                            })
                            == Some(root)
                    });
                Some(
                    std::iter::once(root)
                        .chain(children)
                        .filter_map(kit::cpu_time)
                        .sum(),
                )
            }
        }
    }
}

/// Every target at `connections` and at 1 connection: the table's rows.
async fn measure(
    targets: &[Target],
    duration: Duration,
    connections: usize,
) -> anyhow::Result<Vec<String>> {
    let mut rows = vec![];
    for conns in [connections, 1] {
        let mut direct_p99: Option<Duration> = None;
        for t in targets {
            // Each run starts from idle pools.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = load(t.addr, conns, duration, t.proxy).await?;
            let p99 = kit::pct(&r.latencies, 0.99);
            let added = match direct_p99 {
                None => {
                    direct_p99 = Some(p99);
                    "—".to_string()
                }
                Some(d) => format!("{:+.2} ms", (p99.as_secs_f64() - d.as_secs_f64()) * 1e3),
            };
            let cpu = r.proxy_cpu.map_or("—".to_string(), |c| {
                format!(
                    "{:.1} µs",
                    c.as_secs_f64() * 1e6 / r.latencies.len().max(1) as f64
                )
            });
            rows.push(format!(
                "  {:<8} {conns:>5}  {:>9.0}  {:>9}  {:>9}  {:>10}  {:>13}  {:>6}",
                t.name,
                r.latencies.len() as f64 / r.elapsed.as_secs_f64(),
                kit::ms(kit::pct(&r.latencies, 0.5)),
                kit::ms(p99),
                added,
                cpu,
                r.errors
            ));
        }
    }
    Ok(rows)
}

/// A runtime of its own, shut down without blocking when dropped (it is
/// dropped from within the bench's own runtime).
struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if let Some(rt) = &self.0 {
            rt.spawn(f);
        }
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn runtime(name: &str, threads: usize) -> anyhow::Result<Rt> {
    Ok(Rt(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(format!("bench-{name}"))
            .enable_all()
            .build()?,
    )))
}

/// The upstream: every request gets `BODY`.
async fn serve_upstream(listener: std::net::TcpListener) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                let mut res = hyper::Response::new(Full::new(Bytes::from_static(BODY)));
                res.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain"),
                );
                Ok::<_, Infallible>(res)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Load {
    /// Of the requests sent after the warm-up, sorted.
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: u64,
    /// CPU the proxy used over the same time.
    proxy_cpu: Option<Duration>,
}

/// `conns` connections to `addr`, each sending GETs one after the other
/// for the warm-up and then `duration`.
async fn load(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    proxy: Probe,
) -> anyhow::Result<Load> {
    let start = Instant::now() + WARMUP;
    let end = start + duration;
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let a = proxy.cpu();
        tokio::time::sleep_until(end.into()).await;
        Some(proxy.cpu()?.saturating_sub(a?))
    });
    let mut tasks = vec![];
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            'connect: while Instant::now() < end {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut tx, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    errors += 1;
                    continue;
                };
                tokio::spawn(conn);
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break 'connect;
                    }
                    let Ok(req) = hyper::Request::get("/")
                        .header(hyper::header::HOST, HOST)
                        .body(Empty::<Bytes>::new())
                    else {
                        errors += 1;
                        break 'connect;
                    };
                    let ok = match tx.send_request(req).await {
                        Ok(res) => {
                            let status = res.status();
                            res.into_body().collect().await.is_ok() && status.is_success()
                        }
                        Err(_) => false,
                    };
                    if !ok {
                        errors += 1;
                        continue 'connect;
                    }
                    if t >= start {
                        lat.push(t.elapsed());
                    }
                    if tx.ready().await.is_err() {
                        continue 'connect;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies = vec![];
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    Ok(Load {
        latencies,
        elapsed: end.saturating_duration_since(start),
        errors,
        proxy_cpu: cpu.await?,
    })
}

fn nginx_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

struct Nginx {
    child: kit::Proc,
    addr: SocketAddr,
    version: String,
}

impl Nginx {
    /// nginx in the foreground with its config, pid, logs and temp files
    /// in `dir`, proxying everything to `upstream` the way the ingress does
    /// (keep-alive upstream connections, the same forwarded headers).
    async fn start(bin: &Path, dir: &Path, upstream: SocketAddr) -> anyhow::Result<Nginx> {
        let port = kit::free_port()?;
        let d = dir.display();
        let user = if nix::unistd::Uid::effective().is_root() {
            // Workers would otherwise run as nobody, who cannot enter the
            // temp dir.
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            r#"{user}daemon off;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream instance {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://instance;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id;
        }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let version = std::process::Command::new(bin)
            .arg("-v")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .and_then(|v| v.strip_prefix("nginx version: ").map(str::to_string))
            .unwrap_or_else(|| "nginx".into());
        let args = [
            "-p".to_string(),
            d.to_string(),
            "-c".into(),
            conf_path.display().to_string(),
            "-e".into(),
            format!("{d}/nginx-error.log"),
        ];
        let mut child = kit::Proc::spawn(
            bin.display().to_string(),
            std::process::Command::new(bin)
                .args(&args)
                .env("SHELLWEGO_LOG", kit::log_filter())
                .stdin(std::process::Stdio::null()),
            &dir.join("nginx.log"),
        )?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let t = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            child.check_alive().with_context(|| {
                format!(
                    "nginx did not start: {}",
                    std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
                )
            })?;
            if t.elapsed() > Duration::from_secs(10) {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Nginx {
            child,
            addr,
            version,
        })
    }
}
