//! Secrets and env values reaching real instances: `shellwego secrets …`
//! of the real binary against a real `shellwego up --runtime process`, an
//! app that answers with the variables it was started with. A rotation
//! rolls the instances with no failed request; no value is in the
//! database file or in the platform's log.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shellwego_testkit::fixtures::tar_gz;
use shellwego_testkit::platform::{run_with_stdin, Platform};

use crate::apps_cli::start;
use crate::support::{field, Cli};

const SERVER_PY: &str = r#"import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n" if self.path == "/health" else ("|".join(os.environ.get(k, "-") for k in ("API_KEY", "PLAIN", "ONLY_HERE")) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

/// The app: answers `API_KEY|PLAIN|ONLY_HERE` as its environment has them.
fn env_app(dir: &Path) -> PathBuf {
    let src = dir.join("envapp-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Procfile"), "web: python3 server.py\n").unwrap();
    std::fs::write(src.join("server.py"), SERVER_PY).unwrap();
    let archive = dir.join("envapp.tgz");
    std::fs::write(&archive, tar_gz(&src).unwrap()).unwrap();
    archive
}

/// GET `envapp.localhost` through the ingress until stopped: (answers,
/// failures).
fn traffic(
    port: u16,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<(usize, Vec<String>)>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let t = std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (mut n, mut failed) = (0, vec![]);
        while !done.load(Ordering::Relaxed) {
            n += 1;
            match http
                .get(format!("http://127.0.0.1:{port}/"))
                .header("Host", "envapp.localhost")
                .send()
            {
                Ok(r) if r.status() == 200 => {}
                Ok(r) => failed.push(format!("{}: {}", r.status(), r.text().unwrap_or_default())),
                Err(e) => failed.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (n, failed)
    });
    (stop, t)
}

/// Every answer of the ingress (several in a row, so both instances) is
/// `want`, within `secs`.
fn serves(p: &Platform, want: &str, secs: u64) {
    let t = Instant::now();
    loop {
        let answers: Vec<String> = (0..6)
            .map(|_| p.through_ingress("envapp").1.trim().to_string())
            .collect();
        if answers.iter().all(|a| a == want) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "instances answer {answers:?}, not {want}\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn secrets_reach_instances_rotate_without_failed_requests_and_stay_out_of_the_database_and_log() {
    let p = start();
    let archive = env_app(p.dir());
    // An organization secret, its value from stdin.
    let o = run_with_stdin(
        &mut p.cli(&["secrets", "set", "API_KEY"]),
        "key-v1-0xdeadbeef\n",
    );
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    assert_eq!(field(&o.stdout, "VERSION"), "1", "{}", o.stdout);
    assert_eq!(field(&o.stdout, "SCOPE"), "organization", "{}", o.stdout);
    p.ok(&[
        "apps",
        "create",
        "envapp",
        "--upload",
        archive.to_str().unwrap(),
        "--replicas",
        "2",
        "--env",
        "PLAIN=plain-visible-0xcafe",
        "--health-path",
        "/health",
        "--wait",
    ]);
    serves(&p, "key-v1-0xdeadbeef|plain-visible-0xcafe|-", 30);

    // Rotate (value from a file) under traffic: a rolling deployment, not
    // one failed request.
    let v2 = p.dir().join("v2");
    std::fs::write(&v2, "key-v2-0xfeedface\n").unwrap();
    let (stop, t) = traffic(p.ingress_port());
    let o = p.ok(&[
        "secrets",
        "rotate",
        "API_KEY",
        "--value-file",
        v2.to_str().unwrap(),
    ]);
    assert_eq!(field(&o.stdout, "VERSION"), "2", "{}", o.stdout);
    serves(&p, "key-v2-0xfeedface|plain-visible-0xcafe|-", 90);
    stop.store(true, Ordering::Relaxed);
    let (n, failed) = t.join().unwrap();
    assert!(n > 10, "only {n} requests");
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {failed:?}",
        failed.len()
    );
    let t0 = Instant::now();
    let d = loop {
        let d = p.json(&["deployments", "list", "envapp"]);
        if d["data"][0]["status"] != "in_progress" || t0.elapsed() > Duration::from_secs(60) {
            break d;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(d["data"][0]["strategy"], "rolling", "{d:#}");
    assert_eq!(d["data"][0]["status"], "successful", "{d:#}");

    // An app secret wins over the organization's; `set` on an existing
    // one rotates it; deleting it brings the organization's back.
    let o = run_with_stdin(
        &mut p.cli(&["secrets", "set", "API_KEY", "--app", "envapp"]),
        "app-wins-0xbeef",
    );
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    let o = run_with_stdin(
        &mut p.cli(&["secrets", "set", "ONLY_HERE", "--app", "envapp"]),
        "only-here-0x1234",
    );
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    serves(
        &p,
        "app-wins-0xbeef|plain-visible-0xcafe|only-here-0x1234",
        90,
    );
    let list = p.ok(&["secrets", "list"]).stdout;
    assert_eq!(list.lines().count(), 4, "a header and 3 secrets:\n{list}");
    let got = p.json(&["secrets", "get", "API_KEY"]);
    assert_eq!(got["version"], 2, "{got:#}");
    assert!(got["last_used"].is_string(), "handed to instances: {got:#}");
    p.ok(&["secrets", "delete", "API_KEY", "--app", "envapp"]);
    serves(
        &p,
        "key-v2-0xfeedface|plain-visible-0xcafe|only-here-0x1234",
        90,
    );
    let o = p.fails(&["secrets", "get", "NOPE"]);
    assert!(o.stderr.contains("no secret named NOPE"), "{}", o.stderr);

    // Nowhere in plaintext: the database files, the platform's log, the
    // API's answers.
    let mut stored = String::new();
    for f in ["shellwego.db", "shellwego.db-wal"] {
        if let Ok(b) = std::fs::read(p.data_dir().join(f)) {
            stored.push_str(&String::from_utf8_lossy(&b));
        }
    }
    let log = p.log();
    let api = format!(
        "{}{}",
        p.json(&["apps", "get", "envapp"]),
        p.json(&["secrets", "list"])
    );
    for v in [
        "key-v1-0xdeadbeef",
        "key-v2-0xfeedface",
        "app-wins-0xbeef",
        "only-here-0x1234",
    ] {
        assert!(!stored.contains(v), "{v} is in the database in plaintext");
        assert!(!log.contains(v), "{v} is in the log");
        assert!(!api.contains(v), "{v} came out of the API");
    }
    assert!(
        !stored.contains("plain-visible-0xcafe"),
        "env values are sealed at rest too"
    );
    assert!(
        api.contains("plain-visible-0xcafe"),
        "a plain env value is shown to its readers"
    );
}

#[test]
fn every_secrets_command_has_help() {
    for sub in ["set", "list", "get", "rotate", "delete"] {
        let o = shellwego_testkit::platform::run(
            std::process::Command::new(crate::support::bin()).args(["secrets", sub, "--help"]),
        );
        assert!(o.ok, "{sub}: {}", o.stderr);
        assert!(
            o.stdout.contains("Usage: shellwego secrets"),
            "{sub}: {}",
            o.stdout
        );
    }
    let o =
        shellwego_testkit::platform::run(std::process::Command::new(crate::support::bin()).args([
            "server",
            "rotate-master-key",
            "--help",
        ]));
    assert!(o.stdout.contains("re-wraps every data key"), "{}", o.stdout);
}
