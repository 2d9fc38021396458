//! Test helpers: the real registry (Debian's `docker-registry`), a bearer-
//! token proxy in front of it, and tar builders (including malicious ones).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use shellwego_image::{ImageConfig, PullOptions};
use tar::{EntryType, Header};

pub const BUSYBOX: &str = "/bin/busybox";

/// The SSRF policy of the registry tests: their registries are on loopback.
pub fn private_targets() -> shellwego_net::ssrf::Guard {
    shellwego_net::ssrf::Guard::new(&shellwego_net::ssrf::SsrfConfig {
        allow: vec![],
        allow_private_targets: true,
    })
}

/// `docker-registry` on the PATH, or `None` after saying the test is skipped.
pub fn registry_binary(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("docker-registry"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: `docker-registry` is not installed \
             (apt-get install docker-registry); registry tests need the real registry"
        );
        return None;
    }
    if !Path::new(BUSYBOX).is_file() {
        eprintln!(
            "SKIPPED {test}: {BUSYBOX} is missing (apt-get install busybox-static); \
             test images are built from it"
        );
        return None;
    }
    found
}

/// Starts a registry or returns from the test (skipping) when there is none.
#[macro_export]
macro_rules! registry_or_skip {
    ($test:expr, $auth:expr) => {
        match $crate::support::Registry::start($test, $auth).await {
            Some(r) => r,
            None => return,
        }
    };
}

/// A running `docker-registry serve`, killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// `auth`: htpasswd user and password.
    pub async fn start(test: &str, auth: Option<(&str, &str)>) -> Option<Registry> {
        let binary = registry_binary(test)?;
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let storage = dir.path().join("storage");
            let port = free_port();
            let mut config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            );
            if let Some((user, pass)) = auth {
                let hash = bcrypt::hash_with_result(pass, 4)
                    .unwrap()
                    .format_for_version(bcrypt::Version::TwoA);
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let host = format!("127.0.0.1:{port}");
            let base = format!("http://{host}");
            let deadline = Instant::now() + Duration::from_secs(15);
            let http = reqwest::Client::new();
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // died (port taken?): try another port
                }
                if let Ok(resp) = http.get(format!("{base}/v2/")).send().await {
                    if resp.status().is_success() || resp.status() == 401 {
                        return Some(Registry {
                            child,
                            host,
                            base,
                            storage,
                            _dir: dir,
                        });
                    }
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
            eprintln!("docker-registry did not start, retrying; log:\n{log}");
        }
        panic!("docker-registry would not start");
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pull options trusting this registry over plain HTTP.
    pub fn opts(&self) -> PullOptions {
        PullOptions {
            insecure_registries: vec![self.host.clone()],
            ..PullOptions::default()
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nothing listens on now (the kit's).
pub use shellwego_testkit::free_port;

// ---------------------------------------------------------------------------
// Bearer-token proxy: the token flow without a JWT-signing token server. It
// answers 401 + `WWW-Authenticate: Bearer realm=…` unless the request carries
// the token it hands out at /token (for the right basic credentials), and
// forwards everything else to the real registry.

pub struct BearerProxy {
    pub host: String,
    pub token_requests: Arc<AtomicUsize>,
    pub blob_requests: Arc<AtomicUsize>,
    pub last_scope: Arc<std::sync::Mutex<String>>,
    /// When set, manifest bodies get a trailing space (still valid JSON,
    /// different digest).
    pub tamper_manifests: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BearerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ProxyState {
    upstream: String,
    realm: String,
    expected_basic: String,
    token_requests: Arc<AtomicUsize>,
    blob_requests: Arc<AtomicUsize>,
    last_scope: Arc<std::sync::Mutex<String>>,
    tamper_manifests: Arc<AtomicBool>,
    http: reqwest::Client,
}

const TOKEN: &str = "test-token-123";

pub async fn bearer_proxy(upstream: &str, user: &str, pass: &str) -> BearerProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let token_requests = Arc::new(AtomicUsize::new(0));
    let blob_requests = Arc::new(AtomicUsize::new(0));
    let last_scope = Arc::new(std::sync::Mutex::new(String::new()));
    let tamper_manifests = Arc::new(AtomicBool::new(false));
    let state = Arc::new(ProxyState {
        upstream: upstream.to_owned(),
        realm: format!("http://{addr}/token"),
        expected_basic: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ),
        token_requests: Arc::clone(&token_requests),
        blob_requests: Arc::clone(&blob_requests),
        last_scope: Arc::clone(&last_scope),
        tamper_manifests: Arc::clone(&tamper_manifests),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    });
    let app = axum::Router::new().fallback(proxy).with_state(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    BearerProxy {
        host: addr.to_string(),
        token_requests,
        blob_requests,
        last_scope,
        tamper_manifests,
        task,
    }
}

async fn proxy(
    axum::extract::State(s): axum::extract::State<Arc<ProxyState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    if path == "/token" {
        s.token_requests.fetch_add(1, Ordering::SeqCst);
        let params: Vec<(String, String)> = form_urlencoded_pairs(&query);
        let scope = params
            .iter()
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let service_ok = params
            .iter()
            .any(|(k, v)| k == "service" && v == "test-registry");
        *s.last_scope.lock().unwrap() = scope;
        if auth != s.expected_basic || !service_ok {
            return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
        }
        return axum::Json(serde_json::json!({ "token": TOKEN })).into_response();
    }
    if auth != format!("Bearer {TOKEN}") {
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|p| p.split("/manifests/").next())
            .and_then(|p| p.split("/blobs/").next())
            .unwrap_or_default();
        let challenge = format!(
            "Bearer realm=\"{}\",service=\"test-registry\",scope=\"repository:{repo}:pull\"",
            s.realm
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            "token required",
        )
            .into_response();
    }
    if path.contains("/blobs/") {
        s.blob_requests.fetch_add(1, Ordering::SeqCst);
    }
    let mut url = format!("{}{path}", s.upstream);
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    let mut upstream = s.http.request(req.method().clone(), url);
    if let Some(accept) = req.headers().get(header::ACCEPT) {
        upstream = upstream.header(header::ACCEPT, accept.clone());
    }
    let resp = upstream.send().await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let mut builder = axum::response::Response::builder().status(status);
    for name in ["content-type", "docker-content-digest", "location"] {
        if let Some(v) = resp.headers().get(name) {
            builder = builder.header(name, v.as_bytes());
        }
    }
    let mut body = resp.bytes().await.unwrap().to_vec();
    if path.contains("/manifests/") && s.tamper_manifests.load(Ordering::SeqCst) {
        body.push(b' ');
    }
    builder.body(axum::body::Body::from(body)).unwrap()
}

fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

// ---------------------------------------------------------------------------
// Archives.

/// One tar entry, written with raw header fields so that tests can build
/// archives the `tar` crate would refuse to (absolute paths, `..`).
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
}

pub fn tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (path, kind, data, link, mode): (&str, EntryType, &[u8], &str, u32) = match e {
            E::Dir(p, m) => (p, EntryType::Directory, b"", "", *m),
            E::File(p, d, m) => (p, EntryType::Regular, d, "", *m),
            E::Symlink(p, t) => (p, EntryType::Symlink, b"", t, 0o777),
            E::Hardlink(p, t) => (p, EntryType::Link, b"", t, 0o644),
            E::Char(p, _, _) => (p, EntryType::Char, b"", "", 0o666),
            E::Fifo(p) => (p, EntryType::Fifo, b"", "", 0o644),
        };
        let mut h = Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if let E::Char(_, major, minor) = e {
            h.set_device_major(*major).unwrap();
            h.set_device_minor(*minor).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Lower layer: busybox, a shell link, and things the upper layer removes.
pub fn base_layer() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).unwrap();
    tar(&[
        E::Dir("./", 0o755),
        E::Dir("bin/", 0o755),
        E::File("bin/busybox", &busybox, 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Dir("etc/", 0o755),
        E::File("etc/motd", b"base\n", 0o644),
        E::File("etc/removed", b"gone soon\n", 0o644),
        E::Dir("srv/", 0o755),
        E::Dir("var/", 0o755),
        E::Dir("var/cache/", 0o755),
        E::File("var/cache/old", b"old\n", 0o644),
        E::Dir("var/cache/sub/", 0o755),
        E::File("var/cache/sub/deep", b"deep\n", 0o644),
    ])
}

/// Upper layer: whiteouts, an opaque directory, an overwrite, a hard link
/// to a lower-layer file.
pub fn top_layer() -> Vec<u8> {
    tar(&[
        E::File("etc/.wh.removed", b"", 0o644),
        E::File("etc/motd", b"top\n", 0o600),
        E::Dir("var/cache/", 0o755),
        E::File("var/cache/.wh..wh..opq", b"", 0o644),
        E::File("var/cache/new", b"new\n", 0o644),
        E::Hardlink("bin/bb", "bin/busybox"),
    ])
}

pub fn test_config() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/bin/busybox".into()],
        cmd: vec!["sh".into(), "-c".into(), "echo hello".into()],
        env: vec!["PATH=/bin".into(), "GREETING=hello world".into()],
        working_dir: Some("/srv".into()),
        user: Some("1000:1000".into()),
        exposed_ports: vec![8080, 9090],
    }
}

/// Pushes the two-layer busybox image (gzip lower layer, plain upper).
pub async fn push_busybox(base: &str, repo: &str, tag: &str) -> String {
    shellwego_image::push::push_image(
        base,
        repo,
        tag,
        &[gzip(&base_layer()), top_layer()],
        &test_config(),
        None,
    )
    .await
    .unwrap()
}

/// Names in a directory (sorted), empty when it does not exist.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
