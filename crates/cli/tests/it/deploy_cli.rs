//! `shellwego deploy …` and `shellwego deployments …` of the real binary
//! against a real `shellwego up --runtime process` (the harness of
//! `apps_cli`), deploying the examples/hello tarball.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use shellwego_testkit::fixtures::hello_tarball;
use shellwego_testkit::platform::{run, Platform};

use crate::apps_cli::{start, start_with};
use crate::support::{field, row, Cli, BIN};

/// The ids of `deployments list hello`, newest first.
fn deployment_ids(p: &Platform) -> Vec<String> {
    p.json(&["deployments", "list", "hello"])["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn deploy_list_get_logs_rollback_through_the_cli() {
    let p = start();
    let archive = hello_tarball(p.dir());
    let archive = archive.to_str().unwrap();
    p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive,
        "--replicas",
        "2",
        "--health-path",
        "/health",
        "--wait",
    ]);
    let first = deployment_ids(&p);
    assert_eq!(first.len(), 1, "creating the app is a deployment");
    let first = first[0].clone();

    // Deploy the same tarball again, rolling, and follow it: not a
    // terminal, so one plain line per stage change, then success.
    let o = p.ok(&[
        "deploy",
        "hello",
        "--upload",
        archive,
        "--strategy",
        "rolling",
        "--wait",
    ]);
    println!("deploy --wait:\nstdout:\n{}stderr:\n{}", o.stdout, o.stderr);
    let second = field(&o.stdout, "DEPLOYMENT");
    assert!(second.starts_with("dep_"), "{}", o.stdout);
    assert!(field(&o.stdout, "APP").starts_with("hello (app_"));
    assert!(
        o.stdout
            .contains(&format!("Deployment {second} (v2) succeeded")),
        "{}",
        o.stdout
    );
    assert!(o.stderr.contains("Uploaded "), "{}", o.stderr);
    assert!(
        o.stderr.contains("stage completed: completed"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.lines().last() == Some(format!("deployment {second}: successful").as_str()),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains('\r'), "{}", o.stderr);
    // Each stage is reported once per status.
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("stage "))
        .collect();
    let mut unique = lines.clone();
    unique.dedup();
    assert_eq!(lines, unique, "{}", o.stderr);

    // list: two deployments, newest first.
    let t = p.ok(&["deployments", "list", "hello"]).stdout;
    assert_eq!(t.lines().count(), 3, "a header and 2 rows: {t}");
    assert!(t.starts_with("ID "), "{t}");
    for h in ["VERSION", "STATUS", "STRATEGY", "IMAGE", "CREATED"] {
        assert!(t.lines().next().unwrap().contains(h), "{t}");
    }
    let r = row(&t, &second);
    assert_eq!(r[1..4], ["v2", "successful", "rolling"], "{t}");
    assert_eq!(row(&t, &first)[1], "v1", "{t}");
    assert_eq!(deployment_ids(&p), vec![second.clone(), first.clone()]);
    let page = p.json(&["deployments", "list", "hello", "--limit", "1"]);
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page:#}");
    assert_eq!(page["pagination"]["has_more"], true, "{page:#}");

    // get: JSON is the API's body; the table has the fields and stages.
    let d = p.json(&["deployments", "get", &second]);
    assert_eq!(d["status"], "successful", "{d:#}");
    assert_eq!(d["version"], "v2", "{d:#}");
    assert_eq!(d["strategy"], "rolling", "{d:#}");
    let stages = d["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 7, "{d:#}");
    assert!(stages.iter().all(|s| s["status"] == "completed"), "{d:#}");
    assert_eq!(d["progress"]["completed_steps"], 7, "{d:#}");
    let t = p.ok(&["deployments", "get", &second]).stdout;
    assert_eq!(field(&t, "ID"), second);
    assert_eq!(field(&t, "STATUS"), "successful");
    assert_eq!(field(&t, "REASON"), "-", "a reason only when it failed");
    assert_eq!(field(&t, "VERSION"), "v2");
    assert_eq!(field(&t, "PREVIOUS VERSION"), "v1");
    assert!(t.contains("NAME") && t.contains("STARTED"), "{t}");
    assert_eq!(row(&t, "starting_health_checks")[1], "completed", "{t}");

    // logs, and --follow of a deployment that has ended: its lines, then
    // the end of the stream.
    let log = p.ok(&["deployments", "logs", &second]).stdout;
    assert!(log.contains("completed"), "{log}");
    assert!(log.contains("with the rolling strategy"), "{log}");
    let followed = p.ok(&["deployments", "logs", &second, "--follow"]).stdout;
    assert_eq!(followed, log);
    let j = p.ok(&["deployments", "logs", &second, "-o", "json"]).stdout;
    let first_line: Value = serde_json::from_str(j.lines().next().unwrap()).unwrap();
    assert!(first_line["message"]
        .as_str()
        .unwrap()
        .starts_with("deploying v2"));

    // Deploy without --wait: the id and how to follow it; then follow its
    // log live until it ends.
    let o = p.ok(&["deploy", "hello", "--batch-size", "2"]);
    let third = field(&o.stdout, "DEPLOYMENT");
    assert_eq!(field(&o.stdout, "STATUS"), "in_progress");
    assert!(
        o.stderr
            .contains(&format!("shellwego deployments logs {third} --follow")),
        "{}",
        o.stderr
    );
    let log = p.ok(&["deployments", "logs", &third, "--follow"]).stdout;
    assert!(log.contains("deploying v3"), "{log}");
    assert!(log.contains("completed in"), "{log}");
    assert_eq!(
        p.json(&["deployments", "get", &third])["status"],
        "successful"
    );

    // Roll back to the first deployment, gradually, and wait.
    let o = p.ok(&[
        "deployments",
        "rollback",
        &first,
        "--strategy",
        "gradual",
        "--reason",
        "back to the start",
        "--wait",
    ]);
    println!(
        "rollback --wait:\nstdout:\n{}stderr:\n{}",
        o.stdout, o.stderr
    );
    let back = field(&o.stdout, "DEPLOYMENT");
    assert_eq!(field(&o.stdout, "ROLLBACK TO"), first);
    assert!(o.stdout.contains("(v1) succeeded"), "{}", o.stdout);
    let d = p.json(&["deployments", "get", &back]);
    assert_eq!(d["status"], "successful", "{d:#}");
    assert_eq!(d["rollback_target"], first.as_str(), "{d:#}");
    assert_eq!(d["strategy"], "rolling", "gradual is rolling: {d:#}");
    assert_eq!(
        p.json(&["deployments", "get", &third])["status"],
        "rolled_back"
    );
    assert_eq!(p.json(&["apps", "get", "hello"])["version"], 1);
    // What runs already cannot be rolled back to.
    let o = p.fails(&["deployments", "rollback", &back]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("already runs v1"), "{}", o.stderr);

    // Mistakes: a bad flag value is a usage error naming the flag; the
    // API's refusals come through with their field errors.
    let o = p.fails(&["deploy", "hello", "--strategy", "yolo"]);
    assert_eq!(o.code, Some(2), "a usage error: {}", o.stderr);
    assert!(o.stderr.contains("--strategy"), "{}", o.stderr);
    let o = p.fails(&[
        "deploy",
        "hello",
        "--strategy",
        "canary",
        "--canary-steps",
        "50,10",
        "--wait",
    ]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("canary_steps:"), "{}", o.stderr);
    let o = p.fails(&["deploy", "nope"]);
    assert!(o.stderr.contains("no app named 'nope'"), "{}", o.stderr);
    let o = p.fails(&["deployments", "get", "dep_doesnotexist"]);
    assert!(o.stderr.contains("not found"), "{}", o.stderr);
    let o = p.fails(&["deployments", "logs", "dep_doesnotexist", "--follow"]);
    assert!(o.stderr.contains("not found"), "{}", o.stderr);
    assert_eq!(deployment_ids(&p).len(), 4, "refused deploys leave nothing");

    // A canary that behaves is promoted step by step; `promote` skips the rest.
    p.ok(&[
        "deploy",
        "hello",
        "--strategy",
        "canary",
        "--canary-steps",
        "50,100",
        "--canary-pause",
        "1s",
        "--wait",
    ]);
    let o = p.ok(&["deploy", "hello", "--strategy", "canary", "-o", "json"]);
    let id = serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap()["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = std::time::Instant::now();
    loop {
        let o = run(&mut p.cli(&["deployments", "promote", &id]));
        if o.code == Some(0) {
            break;
        }
        // 409 until the canary's first step has started.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "{}",
            o.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let t = std::time::Instant::now();
    loop {
        let o = p.ok(&["deployments", "get", &id, "-o", "json"]);
        let d: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        if d["status"] == "successful" {
            break;
        }
        assert_eq!(d["status"], "in_progress", "{d:#}");
        assert!(t.elapsed() < std::time::Duration::from_secs(90), "{d:#}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn deploy_wait_fails_with_the_reason_when_the_new_version_crash_loops() {
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
    // A release whose web process exits at once.
    let bad = p.dir().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("Procfile"),
        "web: python3 -c 'import sys; sys.exit(3)'\n",
    )
    .unwrap();
    let bad_tgz = p.dir().join("bad.tgz");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&bad)
        .arg("-czf")
        .arg(&bad_tgz)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let o = p.fails(&[
        "deploy",
        "hello",
        "--upload",
        bad_tgz.to_str().unwrap(),
        "--wait",
        "--timeout",
        "90s",
    ]);
    println!("failed deploy:\nstdout:\n{}stderr:\n{}", o.stdout, o.stderr);
    assert_eq!(o.code, Some(1));
    let dep = field(&o.stdout, "DEPLOYMENT");
    assert!(
        o.stderr.contains(&format!("deployment {dep} (v2) ")),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("crash-looping"), "{}", o.stderr);
    assert!(o.stderr.contains("latest log lines:"), "{}", o.stderr);
    // The previous version serves again.
    let d = p.json(&["deployments", "get", &dep]);
    assert!(
        d["status"] == "failed" || d["status"] == "rolled_back",
        "{d:#}"
    );
    assert_eq!(p.json(&["apps", "get", "hello"])["version"], 1);
}

/// GETs `hello.localhost` through the ingress in a loop until stopped:
/// (answers, failures with what they were).
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
                .header("Host", "hello.localhost")
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

/// A node reporting 2 cores, 4 replicas at the default 0.5 CPU: no room
/// for one more. `apps restart --wait` replaces in place without a failed
/// request through the ingress; a canary then completes; a blue-green
/// deploy fails at once, naming the room it needs.
#[test]
fn a_full_node_restarts_in_place_without_failed_requests() {
    let p = start_with(&["--cpus", "2"]);
    let archive = hello_tarball(p.dir());
    let archive = archive.to_str().unwrap();
    p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive,
        "--replicas",
        "4",
        "--health-path",
        "/health",
        "--wait",
    ]);
    let (stop, t) = traffic(p.ingress_port());
    let o = p.ok(&["apps", "restart", "hello", "--wait", "--timeout", "180s"]);
    stop.store(true, Ordering::Relaxed);
    let (n, failed) = t.join().unwrap();
    println!(
        "restart --wait:
{}{}",
        o.stdout, o.stderr
    );
    assert!(n > 20, "only {n} requests");
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {failed:?}",
        failed.len()
    );
    assert!(
        o.stderr.contains("replacing in place, 1 at a time"),
        "{}",
        o.stderr
    );
    let ids = deployment_ids(&p);
    let restart = p.json(&["deployments", "get", &ids[0]]);
    assert_eq!(restart["status"], "successful", "{restart:#}");
    let a = p.json(&["apps", "get", "hello"]);
    assert_eq!(a["replicas"]["healthy"], 4, "{a:#}");

    // A canary afterwards completes, in place too.
    let (stop, t) = traffic(p.ingress_port());
    let o = p.ok(&[
        "deploy",
        "hello",
        "--upload",
        archive,
        "--strategy",
        "canary",
        "--canary-steps",
        "25,100",
        "--canary-pause",
        "2s",
        "--wait",
    ]);
    stop.store(true, Ordering::Relaxed);
    let (n, failed) = t.join().unwrap();
    assert!(o.stdout.contains("succeeded"), "{}{}", o.stdout, o.stderr);
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {failed:?}",
        failed.len()
    );

    // Blue-green needs a second set of 4: it fails fast and says why.
    let t0 = Instant::now();
    let o = p.fails(&[
        "deploy",
        "hello",
        "--upload",
        archive,
        "--strategy",
        "blue-green",
        "--wait",
    ]);
    assert!(
        o.stderr
            .contains("blue-green needs room for a second set of 4 instance(s) of 0.5 CPU")
            && o.stderr.contains("--strategy rolling"),
        "{}",
        o.stderr
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let a = p.json(&["apps", "get", "hello"]);
    assert_eq!(a["replicas"]["healthy"], 4, "the app serves on: {a:#}");
}

#[test]
fn every_deploy_and_deployments_command_has_help() {
    for args in [
        vec!["deploy"],
        vec!["deployments"],
        vec!["deployments", "list"],
        vec!["deployments", "get"],
        vec!["deployments", "logs"],
        vec!["deployments", "rollback"],
    ] {
        let mut a = args.clone();
        a.push("--help");
        let o = run(Command::new(BIN).args(&a));
        assert!(o.ok, "{args:?}: {}", o.stderr);
        assert!(o.stdout.contains("Usage:"), "{args:?}: {}", o.stdout);
        for flag in ["--output", "--api-url", "--token"] {
            assert!(o.stdout.contains(flag), "{args:?} --help lacks {flag}");
        }
    }
    let o = run(Command::new(BIN).args(["deploy", "--help"]));
    for flag in [
        "--image",
        "--upload",
        "--source-url",
        "--strategy",
        "--batch-size",
        "--health-check-timeout",
        "--warm-window",
        "--no-rollback",
        "--wait",
        "--timeout",
    ] {
        assert!(o.stdout.contains(flag), "deploy --help lacks {flag}");
    }
    let o = run(Command::new(BIN).args(["deployments", "rollback", "--help"]));
    for flag in ["--strategy", "--reason", "--wait", "--timeout"] {
        assert!(o.stdout.contains(flag), "rollback --help lacks {flag}");
    }
    let o = run(Command::new(BIN).args(["deployments", "logs", "--help"]));
    assert!(o.stdout.contains("--follow"), "{}", o.stdout);
}
