//! What the driver tests share: skipping (or failing, when a CI variable
//! demands the driver) where the host cannot run a driver, a busybox root
//! filesystem, a launch, starting and waiting for an instance, a guard that
//! kills and cleans up whatever a test leaves, and a real HTTP GET. One
//! copy for every driver (review rows D3/D12/D19).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shellwego_agent::driver::{Command, Driver, Exit, Launch, Reply, Running};

/// The host's static busybox (Debian: busybox-static).
pub const BUSYBOX: &str = "/usr/bin/busybox";
const APPLETS: [&str; 10] = [
    "sh", "httpd", "sleep", "cat", "echo", "head", "yes", "tr", "ls", "true",
];

/// Setting this variable makes a missing container driver a failure.
pub const REQUIRE_CONTAINER: &str = "SHELLWEGO_REQUIRE_CONTAINER";
/// Setting this variable makes a missing microvm driver a failure.
pub const REQUIRE_MICROVM: &str = "SHELLWEGO_REQUIRE_MICROVM";

/// Say why a test does not run; a failure instead when `require` (an
/// environment variable) is set.
pub fn skip(require: Option<&str>, why: &str) {
    if let Some(var) = require.filter(|v| std::env::var_os(v).is_some()) {
        panic!("{var} is set, but the driver cannot run here: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A root filesystem with a static busybox, its applets and a web page
/// (`/www/index.html`); its top level is `bin`, `etc` and `www`.
pub fn busybox_rootfs(base: &Path) -> Result<PathBuf, String> {
    if !Path::new(BUSYBOX).is_file() {
        return Err(format!(
            "{BUSYBOX} is missing (apt-get install busybox-static)"
        ));
    }
    let root = base.join("image-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), "hello from the image\n").unwrap();
    Ok(root)
}

/// A TCP port nothing listens on now (the kit's).
pub use shellwego_testkit::free_port;

/// A launch of `argv` in the root filesystem `root`, in its own directory
/// `<base>/<instance_id>` (made here), logging to `out.log` there: port
/// 8080, 64 MiB, one core, no environment. Tests change what they need.
pub fn launch(base: &Path, instance_id: &str, root: &Path, argv: &[&str]) -> Launch {
    let dir = base.join(instance_id);
    std::fs::create_dir_all(&dir).unwrap();
    Launch {
        instance_id: instance_id.to_string(),
        stdout: dir.join("out.log"),
        stderr: dir.join("out.log"),
        allowed_egress: None,
        dir,
        root: root.to_path_buf(),
        is_rootfs: true,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        workdir: "/".into(),
        env: BTreeMap::new(),
        port: 8080,
        memory: 64 << 20,
        cpu_millis: 1000,
    }
}

/// Start `l`; a failure fails the test.
pub fn start(d: &dyn Driver, l: &Launch) -> Running {
    let t = Instant::now();
    let r = match d.run(Command::Start(l)) {
        Ok(Reply::Started(r)) => r,
        Ok(Reply::Done) => panic!("Start answered Done"),
        Err(e) => panic!("Start failed: {e:#}"),
    };
    println!(
        "{}: started {} in {:?} ({:?})",
        d.name(),
        l.instance_id,
        t.elapsed(),
        r.extra
    );
    r
}

/// How `r` ended, once it has (None when still running after `within`).
pub fn wait_exit(d: &dyn Driver, r: &Running, within: Duration) -> Option<Exit> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(e) = d.poll(r) {
            return Some(e);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills and cleans up whatever a test leaves running, even on failure.
pub struct Guard<'a> {
    pub d: &'a dyn Driver,
    pub id: String,
    pub r: Option<Running>,
}

impl<'a> Guard<'a> {
    pub fn new(d: &'a dyn Driver, l: &Launch, r: &Running) -> Guard<'a> {
        Guard {
            d,
            id: l.instance_id.clone(),
            r: Some(r.clone()),
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(r) = &self.r {
            let _ = self.d.run(Command::Kill(r));
            let _ = wait_exit(self.d, r, Duration::from_secs(5));
        }
        if let Err(e) = self.d.run(Command::Cleanup {
            instance_id: &self.id,
            handle: self.r.as_ref(),
        }) {
            eprintln!("cleanup of {} failed: {e:#}", self.id);
        }
    }
}

/// A real HTTP/1.0 GET, retried until something answers within `within`
/// (a server not listening yet refuses; QEMU's port forward accepts and
/// closes before the guest listens).
pub fn http_get(addr: SocketAddr, path: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", addr.ip())?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match got {
            Ok(b) if !b.is_empty() => return b,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("no answer from {addr} within {within:?}: {other:?}"),
        }
    }
}

/// The process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i + 2..].starts_with('Z')))
}

/// Wait up to 5 s for `pid` to end; false when it still runs.
pub fn wait_dead(pid: u32) -> bool {
    let t = Instant::now();
    while alive(pid) {
        if t.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Wait until `cond` holds (up to `within`); whether it did.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The log of `l` once it holds `what` (or as it is after `within`).
pub fn log_once_it_says(l: &Launch, what: &str, within: Duration) -> String {
    eventually(within, || {
        std::fs::read_to_string(&l.stdout)
            .unwrap_or_default()
            .contains(what)
    });
    std::fs::read_to_string(&l.stdout).unwrap_or_default()
}
