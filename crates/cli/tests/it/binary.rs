//! The real `shellwego` binary: start-up, bootstrap, logs, SIGTERM, --help.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shellwego_testkit::http::exchange;
use shellwego_testkit::platform::{shellwego_command, Proc};
use shellwego_testkit::{free_port, wait_for_file};

use crate::support::{bin, BIN};

const ADMIN_PASSWORD: &str = "binary-test-admin-password";

/// A raw HTTP/1.1 exchange (no client library between us and the server).
fn http(port: u16, req: &str) -> String {
    exchange(port, req)
}

fn get(port: u16, path: &str, token: &str) -> String {
    http(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"))
}

/// SIGTERM through kill(1), as an operator would send it.
fn sigterm(p: &Proc) {
    let _ = Command::new("kill")
        .args(["-TERM", &p.id().to_string()])
        .status();
}

struct Server {
    proc: Proc,
    port: u16,
    log: std::path::PathBuf,
}

/// Start `shellwego server`: data dir from a config file, listen address
/// from the environment (flags > env > file > defaults).
fn start(dir: &Path) -> Server {
    let port = free_port();
    let config = dir.join("shellwego.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlog_format = \"json\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    // A fresh log for each start (a restart's log says what it did).
    let log = dir.join("server.log");
    std::fs::File::create(&log).unwrap();
    let mut cmd = shellwego_command(bin(), &["server", "--config"]);
    cmd.arg(&config)
        .env("SHELLWEGO_LISTEN", format!("127.0.0.1:{port}"))
        .env("SHELLWEGO_ADMIN_PASSWORD", ADMIN_PASSWORD);
    let proc = Proc::spawn("shellwego server", &mut cmd, &log).unwrap();
    Server { proc, port, log }
}

/// A SIGTERM sent the moment the server has written its admin token (it
/// has not finished starting) still stops it cleanly: its handlers are
/// installed before anything starts. (They used to be installed once it
/// served, and such a signal killed it with the default action.)
#[test]
fn a_sigterm_during_start_up_stops_the_server_cleanly() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut srv = start(dir.path());
        wait_for_file(&dir.path().join("data/admin-token"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(srv.proc.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = srv.proc.wait();
        assert!(
            status.success(),
            "exit status {status}; log:\n{}",
            std::fs::read_to_string(&srv.log).unwrap_or_default()
        );
    }
}

#[test]
fn server_starts_on_an_empty_dir_bootstraps_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start(dir.path());
    let token = wait_for_file(&dir.path().join("data/admin-token"));
    assert!(token.starts_with("pat_") && !token.contains('\n'));
    let res = get(srv.port, "/v1/user", &token);
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.contains("admin@localhost"));
    let res = get(srv.port, "/v1/user", "pat_wrong");
    assert!(res.starts_with("HTTP/1.1 401"), "{res}");

    sigterm(&srv.proc);
    let status = srv.proc.wait();
    assert!(status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(!log.contains(&token), "the token was logged");
    assert!(
        log.contains("admin-token"),
        "the log should say where the token is: {log}"
    );
    // JSON lines; every request line carries its request id.
    let request_lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}"))
        })
        .filter(|v| v["fields"]["message"] == "request completed")
        .collect();
    assert_eq!(request_lines.len(), 2);
    for l in &request_lines {
        assert!(
            l["span"]["request_id"]
                .as_str()
                .unwrap()
                .starts_with("req_"),
            "{l}"
        );
    }

    // A restart reuses the store and does not bootstrap again.
    let srv2 = start(dir.path());
    let t = Instant::now();
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", srv2.port)) {
            let _ = c.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "restart never became ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/admin-token")).unwrap(),
        token
    );
    assert!(get(srv2.port, "/v1/user", &token).starts_with("HTTP/1.1 200"));
    let log2 = std::fs::read_to_string(&srv2.log).unwrap();
    assert!(!log2.contains("bootstrapped"), "bootstrapped twice: {log2}");
}

#[test]
fn sigterm_during_a_slow_request_lets_it_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start(dir.path());
    let token = wait_for_file(&dir.path().join("data/admin-token"));
    let body = br#"{"name": "slow upload"}"#;
    let mut c = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    write!(
        c,
        "POST /v1/user/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(&body[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    sigterm(&srv.proc);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        srv.proc.try_wait().is_none(),
        "exited with a request in flight"
    );
    c.write_all(&body[5..]).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    let status = srv.proc.wait();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn every_command_has_help() {
    let mut commands = vec![
        vec!["--help"],
        vec!["server", "--help"],
        vec!["up", "--help"],
        vec!["openapi", "--help"],
        vec!["agent", "--help"],
    ];
    // `bench` is built with the `bench` feature only (`--all-features`).
    if cfg!(feature = "bench") {
        commands.extend([
            vec!["bench", "--help"],
            vec!["bench", "list", "--help"],
            vec!["bench", "http", "--help"],
            vec!["bench", "startup", "--help"],
            vec!["bench", "scheduler", "--help"],
            vec!["bench", "cluster", "--help"],
            vec!["bench", "replicas", "--help"],
            vec!["bench", "events", "--help"],
        ]);
    } else {
        let out = Command::new(BIN)
            .args(["bench", "--help"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "bench is not in the default build");
    }
    for args in commands {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
    let out = Command::new(BIN)
        .args(["server", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "--database-url",
        "--config",
        "--log-format",
        "SHELLWEGO_LISTEN",
    ] {
        assert!(text.contains(flag), "server --help lacks {flag}");
    }
}

#[test]
fn a_bad_database_url_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["server", "--database-url", "mysql://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database-url"));
}

#[test]
fn passwords_and_tokens_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path());
    let admin = wait_for_file(&dir.path().join("data/admin-token"));
    let post = |path: &str, token: Option<&str>, body: &str| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        http(
            srv.port,
            &format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
        )
    };
    // A password set through the API, a login with it, a wrong one, new tokens.
    let password = "correct-horse-battery-staple";
    let res = http(srv.port, &{
        let body =
            format!(r#"{{"password": {{"current_password": "x", "new_password": "{password}"}}}}"#);
        format!("PATCH /v1/user HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    });
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    let res = post(
        "/v1/auth/token",
        None,
        r#"{"email": "admin@localhost", "password": "wrong-secret-password"}"#,
    );
    assert!(res.starts_with("HTTP/1.1 401"), "{res}");
    let res = post(
        "/v1/auth/token",
        None,
        &format!(r#"{{"email": "admin@localhost", "password": "{ADMIN_PASSWORD}"}}"#),
    );
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let body = res.split("\r\n\r\n").nth(1).unwrap();
    let login: serde_json::Value = serde_json::from_str(body).unwrap();
    let login_token = login["token"].as_str().unwrap().to_string();
    let res = post("/v1/user/tokens", Some(&admin), r#"{"name": "ci"}"#);
    assert!(res.starts_with("HTTP/1.1 201"), "{res}");
    let body = res.split("\r\n\r\n").nth(1).unwrap();
    let created: serde_json::Value = serde_json::from_str(body).unwrap();
    let new_token = created["token"].as_str().unwrap().to_string();
    let res = post(
        "/v1/organizations/x/invitations",
        Some(&admin),
        r#"{"email": "a@b.c", "role": "viewer"}"#,
    );
    assert!(res.starts_with("HTTP/1.1 404"), "{res}");
    // An invitation token travels in a URL path: it must not be logged either.
    let me = get(srv.port, "/v1/user", &admin);
    let me: serde_json::Value = serde_json::from_str(me.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let org_id = me["organizations"][0]["id"].as_str().unwrap().to_string();
    let res = post(
        &format!("/v1/organizations/{org_id}/invitations"),
        Some(&admin),
        r#"{"email": "new@example.com", "role": "viewer"}"#,
    );
    assert!(res.starts_with("HTTP/1.1 201"), "{res}");
    let inv: serde_json::Value =
        serde_json::from_str(res.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let inv_token = inv["token"].as_str().unwrap().to_string();
    let res = post(
        &format!("/v1/invitations/{inv_token}/accept"),
        None,
        r#"{"name": "New", "password": "new-user-password"}"#,
    );
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    drop(srv);
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    for secret in [
        admin.as_str(),
        new_token.as_str(),
        login_token.as_str(),
        "wrong-secret-password",
        password,
        ADMIN_PASSWORD,
        inv_token.as_str(),
        "new-user-password",
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    assert!(log.contains("request completed"));
}

#[test]
fn an_agent_joins_once_and_a_restart_reuses_its_credential() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path());
    let admin = wait_for_file(&dir.path().join("data/admin-token"));
    let body = r#"{"hostname": "worker", "region": "local"}"#;
    let res = http(
        srv.port,
        &format!(
            "POST /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(res.starts_with("HTTP/1.1 201"), "{res}");
    let reg: serde_json::Value =
        serde_json::from_str(res.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let (node_id, join_token) = (
        reg["id"].as_str().unwrap().to_string(),
        reg["join_token"].as_str().unwrap().to_string(),
    );
    let agent_dir = dir.path().join("agent");
    // Two control-plane URLs, the first with nobody listening: the agent
    // joins (and syncs) through the second.
    let cp = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{}",
        shellwego_testkit::platform::free_port(),
        srv.port
    );
    let agent_log = dir.path().join("agent.log");
    let run_agent = |token: Option<&str>| {
        let mut args = vec![
            "agent",
            "--control-plane",
            &cp,
            "--name",
            "agent-under-test",
            "--sync-wait",
            "1",
        ];
        if let Some(t) = token {
            args.extend(["--join-token", t]);
        }
        let mut c = shellwego_command(bin(), &args);
        c.arg("--data-dir").arg(&agent_dir);
        Proc::spawn("shellwego agent", &mut c, &agent_log).unwrap()
    };
    let node = |want: &str| {
        let t = Instant::now();
        loop {
            let res = get(srv.port, &format!("/v1/nodes/{node_id}"), &admin);
            let n: serde_json::Value =
                serde_json::from_str(res.split("\r\n\r\n").nth(1).unwrap_or("null"))
                    .unwrap_or_default();
            if n["status"] == want {
                return n;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "node never became {want}: {n}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut agent = run_agent(Some(&join_token));
    let n = node("ready");
    assert_eq!(n["hostname"], "agent-under-test");
    assert!(n["capacity"]["cpu_cores"].as_i64().unwrap() >= 1);
    assert!(n["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d == "process"));
    let cred = agent_dir.join("node-credential.toml");
    let t = Instant::now();
    while !cred.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // SIGKILL, then restart without the (used) join token: same node.
    agent.kill();
    let mut again = run_agent(None);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(again.try_wait().is_none(), "the restarted agent exited");
    let n = node("ready");
    assert_eq!(n["id"], node_id.as_str());
    let list = get(srv.port, "/v1/nodes", &admin);
    assert_eq!(
        list.matches("\"id\":\"node_").count(),
        1,
        "no duplicate node: {list}"
    );
    again.kill();
}

/// `bench events` with a few subscribers runs to its end and prints every
/// figure, every subscriber getting every event (a smoke test).
#[cfg(feature = "bench")]
#[test]
fn bench_events_runs_with_tiny_sizes() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "events",
            "--subscribers",
            "3",
            "--seconds",
            "1",
            "--rate",
            "50",
        ])
        .env_remove("SHELLWEGO_TEST_DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for figure in ["committed:", "delivered:", "commit -> SSE read: p50"] {
        assert!(text.contains(figure), "no {figure} in:\n{text}");
    }
    assert!(text.contains("overflow ends: 0"), "{text}");
    let line = text.lines().find(|l| l.contains("committed:")).unwrap();
    let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        text.contains(&format!("every subscriber {n} of {n}")),
        "{text}"
    );
}

/// `bench cluster` with a handful of simulated agents runs to its end and
/// prints every figure (a smoke test: the figures are not checked). On
/// SQLite, and on PostgreSQL too when SHELLWEGO_TEST_DATABASE_URL is set.
#[cfg(feature = "bench")]
#[test]
fn bench_cluster_runs_with_tiny_sizes() {
    let small = [
        "bench",
        "cluster",
        "--nodes",
        "4",
        "--apps",
        "3",
        "--replicas",
        "2",
        "--changes",
        "4",
        "--idle-secs",
        "1",
    ];
    let mut runs = vec![Command::new(BIN)];
    runs[0]
        .args(small)
        .env_remove("SHELLWEGO_TEST_DATABASE_URL");
    if std::env::var("SHELLWEGO_TEST_DATABASE_URL").is_ok() {
        let mut pg = Command::new(BIN);
        pg.args(small);
        runs.push(pg);
    }
    for mut c in runs {
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for figure in [
            "placements/s end to end",
            "agent sync latency",
            "cpu, the whole run",
            "VmHWM",
        ] {
            assert!(text.contains(figure), "no {figure:?} in:\n{text}");
        }
    }
}

/// `bench replicas` with 2 changes and 1 failover runs to its end
/// (PostgreSQL only: skipped without SHELLWEGO_TEST_DATABASE_URL).
#[cfg(feature = "bench")]
#[test]
fn bench_replicas_runs_with_tiny_sizes() {
    if std::env::var("SHELLWEGO_TEST_DATABASE_URL").is_err() {
        eprintln!("SKIPPED (PostgreSQL only): set SHELLWEGO_TEST_DATABASE_URL to run it");
        return;
    }
    let out = Command::new(BIN)
        .args(["bench", "replicas", "--changes", "2", "--failovers", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("change to agent"), "{text}");
    assert!(text.contains("failover time"), "{text}");
}
