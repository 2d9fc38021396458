//! `shellwego exec` of the real binary against a real `shellwego up
//! --runtime process`: the command runs in the instance (its environment,
//! its directory), stdin reaches it, its exit code is `shellwego`'s, and a
//! command past its timeout is killed with what it started.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use shellwego_testkit::fixtures::hello_tarball;
use shellwego_testkit::platform::{run, run_with_stdin};

use crate::apps_cli::start;
use crate::support::Cli;

#[test]
fn exec_runs_in_the_instance_passes_stdin_and_exit_codes_and_kills_on_timeout() {
    let p = start();
    let archive = hello_tarball(p.dir());
    p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive.to_str().unwrap(),
        "--health-path",
        "/health",
        "--wait",
    ]);
    let a = p.json(&["apps", "get", "hello"]);
    let port = a["instances"][0]["port"].as_u64().unwrap();
    let inst = a["instances"][0]["id"].as_str().unwrap().to_string();

    // Its environment and its directory (the app's files).
    let o = p.ok(&[
        "exec",
        "--app",
        "hello",
        "--",
        "/bin/sh",
        "-c",
        "echo $PORT; ls",
    ]);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], port.to_string(), "{}", o.stdout);
    assert!(lines.contains(&"server.py"), "{}", o.stdout);

    // stdin, the exit code, stderr, a chosen instance.
    let o = run_with_stdin(
        &mut p.cli(&[
            "exec",
            "--app",
            "hello",
            "--instance",
            &inst,
            "--stdin",
            "-",
            "--",
            "/bin/sh",
            "-c",
            "read x; echo got $x; echo oops >&2; exit 7",
        ]),
        "hello\n",
    );
    assert_eq!(o.code, Some(7), "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "got hello\n");
    assert!(o.stderr.contains("oops"), "{}", o.stderr);

    // Past its timeout: killed, with what it started in the background.
    let t0 = Instant::now();
    let o = run(&mut p.cli(&[
        "exec",
        "--app",
        "hello",
        "--timeout",
        "1s",
        "--",
        "/bin/sh",
        "-c",
        "sleep 300 & echo $! > bg.pid; sleep 300",
    ]));
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("ran past --timeout"), "{}", o.stderr);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let bg = p
        .ok(&["exec", "--app", "hello", "--", "/bin/cat", "bg.pid"])
        .stdout;
    let bg = bg.trim();
    assert!(
        !std::path::Path::new(&format!("/proc/{bg}")).exists()
            || std::fs::read_to_string(format!("/proc/{bg}/stat")).is_ok_and(|s| s.contains(") Z")),
        "the background child {bg} outlived the timeout"
    );

    // JSON: the API's body.
    let out = p
        .ok(&[
            "exec",
            "-o",
            "json",
            "--app",
            "hello",
            "--",
            "/bin/echo",
            "hi",
        ])
        .stdout;
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["stdout"], "hi\n");
    assert_eq!(j["exit_code"], 0);
    // Recorded.
    let ev = p.json(&["events", "list", "--type", "app.exec"]);
    assert!(ev["data"].as_array().unwrap().len() >= 4, "{ev:#}");
}
