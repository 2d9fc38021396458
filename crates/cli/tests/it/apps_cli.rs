//! `shellwego apps …` and `shellwego nodes …` of the real binary against a
//! real `shellwego up` (control plane, local agent with the process driver,
//! ingress) on free ports with its own data dir ([`start`]); the CLI gets
//! the API URL and the admin token through SHELLWEGO_API_URL and
//! SHELLWEGO_TOKEN, and HOME/XDG_CONFIG_HOME in a temp dir
//! ([`Platform::cli`]). `deploy_cli` starts its platform here too.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_testkit::fixtures::hello_tarball;
use shellwego_testkit::platform::{processes_of, run, Platform, Ready};

use crate::support::{bin, field, row, Cli, BIN};

/// `shellwego up --runtime process` in a temp dir, its local node ready.
pub(crate) fn start() -> Platform {
    start_with(&[])
}

/// With more arguments for `up`.
pub(crate) fn start_with(extra: &[&str]) -> Platform {
    Platform::up(bin())
        .args(&["--runtime", "process"])
        .args(extra)
        .ready(Ready::Node)
        .start()
}

/// Wait (up to `secs`) until `ok`, failing with `up`'s log.
fn until(p: &Platform, secs: u64, what: &str, mut ok: impl FnMut(&Platform) -> bool) {
    let t = Instant::now();
    while !ok(p) {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ingress answers `status` for `app` (its routes follow the store
/// within a second); the body.
fn ingress_answers(p: &Platform, app: &str, status: u16) -> String {
    let mut last = (0, String::new());
    until(p, 10, &format!("{app} to answer {status}"), |p| {
        last = p.through_ingress(app);
        last.0 == status
    });
    last.1
}

#[test]
fn apps_create_list_get_scale_stop_start_restart_delete_through_the_cli() {
    let p = start();
    let archive = hello_tarball(p.dir());
    let archive = archive.to_str().unwrap();

    // Create from an uploaded tarball and wait: healthy on return.
    let o = p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive,
        "--replicas",
        "2",
        "--health-path",
        "/health",
        "--env",
        "GREETING=hi",
        "--tag",
        "demo",
        "--wait",
    ]);
    let id = field(&o.stdout, "ID");
    assert!(id.starts_with("app_"), "{}", o.stdout);
    assert_eq!(field(&o.stdout, "NAME"), "hello");
    assert!(o.stderr.contains("Uploaded "), "{}", o.stderr);
    // Not a terminal: plain progress lines, the last one the settled state.
    assert!(
        o.stderr.lines().last() == Some("hello: 2/2 healthy (running)"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains('\r'), "{}", o.stderr);
    let body = ingress_answers(&p, "hello", 200);
    let served: Value = serde_json::from_str(&body).unwrap();
    assert!(served["instance"].as_str().unwrap().starts_with("inst_"));

    // list: table and JSON, and its filters.
    let list = p.ok(&["apps", "list"]).stdout;
    let r = row(&list, "hello");
    assert_eq!(r[1], "running", "{list}");
    assert_eq!(r[2], "2/2", "{list}");
    assert!(r[3].starts_with("tarball upl_"), "{list}");
    assert_eq!(r[4], id, "{list}");
    assert_eq!(
        p.json(&["apps", "list"])["data"][0]["id"],
        id.as_str(),
        "JSON is the API's body"
    );
    assert!(p
        .ok(&["apps", "list", "--tag", "demo", "--status", "running"])
        .stdout
        .contains(&id));
    assert!(p
        .ok(&["apps", "list", "-q", "hel", "--all"])
        .stdout
        .contains(&id));
    assert!(!p
        .ok(&["apps", "list", "--status", "stopped"])
        .stdout
        .contains(&id));

    // get, by name and by id.
    let a = p.json(&["apps", "get", "hello"]);
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["replicas"]["healthy"], 2, "{a:#}");
    let insts = a["instances"].as_array().unwrap();
    assert_eq!(insts.len(), 2, "{a:#}");
    assert!(insts.iter().all(|i| i["status"] == "healthy"), "{a:#}");
    assert_eq!(a["env"]["GREETING"]["value"], "hi");
    assert_eq!(a["health_check"]["path"], "/health");
    let t = p.ok(&["apps", "get", &id]).stdout;
    assert_eq!(field(&t, "NAME"), "hello");
    assert_eq!(field(&t, "STATUS"), "running");
    assert!(
        t.contains("ID  ") && t.contains("NODE") && t.contains("STARTED"),
        "{t}"
    );
    for i in insts {
        let r = row(&t, i["id"].as_str().unwrap());
        assert!(r[1].starts_with("node_"), "{t}");
        assert_eq!(r[2], "healthy", "{t}");
    }

    // scale down, waiting.
    let o = p.ok(&["apps", "scale", "hello", "1", "--wait"]);
    assert!(
        o.stdout.contains("Scaled hello to 1 replica."),
        "{}",
        o.stdout
    );
    let a = p.json(&["apps", "get", "hello"]);
    assert_eq!(a["replicas"]["desired"], 1, "{a:#}");
    assert_eq!(a["replicas"]["healthy"], 1, "{a:#}");
    assert_eq!(a["status"], "running");

    // stop: stopped on return, and the ingress has nothing to send to.
    let o = p.ok(&["apps", "stop", "hello", "--wait"]);
    assert!(
        o.stderr.lines().last() == Some("hello: 0/0 healthy (stopped)"),
        "{}",
        o.stderr
    );
    assert_eq!(p.json(&["apps", "get", "hello"])["status"], "stopped");
    ingress_answers(&p, "hello", 503);

    // start and restart with -o json --wait: the app once settled.
    let a = p.json(&["apps", "start", &id, "--wait"]);
    assert_eq!(a["status"], "running", "{a:#}");
    assert_eq!(a["replicas"]["healthy"], 1, "{a:#}");
    let before = a["instances"][0]["id"].as_str().unwrap().to_string();
    let a = p.json(&[
        "apps",
        "restart",
        "hello",
        "--strategy",
        "rolling",
        "--batch-size",
        "1",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(a["status"], "running", "{a:#}");
    let running: Vec<&Value> = a["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "healthy")
        .collect();
    assert_eq!(running.len(), 1, "{a:#}");
    assert_ne!(running[0]["id"], before.as_str(), "a new instance: {a:#}");
    ingress_answers(&p, "hello", 200);

    // Names that do not exist, and mistakes in flags.
    let o = p.fails(&["apps", "get", "nope"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("no app named 'nope'"), "{}", o.stderr);
    let o = p.fails(&["apps", "scale", "nope", "2"]);
    assert!(o.stderr.contains("no app named 'nope'"), "{}", o.stderr);
    let o = p.fails(&["apps", "get", "app_doesnotexist"]);
    assert!(o.stderr.contains("not found"), "{}", o.stderr);
    let o = p.fails(&["apps", "create", "x", "--image", "nginx", "--env", "FOO"]);
    assert_eq!(o.code, Some(2), "a usage error");
    assert!(o.stderr.contains("--env"), "{}", o.stderr);
    let o = p.fails(&["apps", "create", "x"]);
    assert!(o.stderr.contains("--image"), "{}", o.stderr);
    // The API's field errors come through.
    let o = p.fails(&["apps", "create", "Bad_Name", "--image", "nginx"]);
    assert!(
        o.stderr.contains("name: must be a DNS label"),
        "{}",
        o.stderr
    );

    // delete: refused without --yes when nothing can be asked, then done.
    let o = p.fails(&["apps", "delete", "hello"]);
    assert!(o.stderr.contains("--yes"), "{}", o.stderr);
    assert_eq!(p.json(&["apps", "get", "hello"])["id"], id.as_str());
    let o = p.ok(&["apps", "delete", "hello", "--yes"]);
    assert!(
        o.stdout.contains(&format!("Deleted app hello ({id})")),
        "{}",
        o.stdout
    );
    assert_eq!(p.json(&["apps", "list"])["data"], serde_json::json!([]));
    p.fails(&["apps", "get", "hello"]);
    ingress_answers(&p, "hello", 404);
    until(&p, 30, "the deleted app's processes to exit", |_| {
        processes_of(&id).is_empty()
    });
}

#[test]
fn apps_create_wait_fails_with_the_reason_when_the_app_crash_loops() {
    let p = start();
    let archive = hello_tarball(p.dir());
    let o = p.fails(&[
        "apps",
        "create",
        "crashy",
        "--upload",
        archive.to_str().unwrap(),
        "--command",
        "python3 -c 'import sys; sys.exit(3)'",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(o.code, Some(1));
    // The app was created; the wait says why it is not running.
    assert!(field(&o.stdout, "ID").starts_with("app_"), "{}", o.stdout);
    assert!(o.stderr.contains("crash-looping"), "{}", o.stderr);
    assert!(o.stderr.contains("exited with code 3"), "{}", o.stderr);
    assert!(o.stderr.contains("latest events:"), "{}", o.stderr);
    assert!(o.stderr.contains("app.crashed"), "{}", o.stderr);

    // A timeout is a failure too, saying where the app got to.
    let o = p.fails(&[
        "apps",
        "create",
        "sleepy",
        "--upload",
        archive.to_str().unwrap(),
        "--command",
        "sleep 600",
        "--wait",
        "--timeout",
        "2s",
    ]);
    assert!(
        o.stderr.contains("gave up waiting for sleepy after 2s"),
        "{}",
        o.stderr
    );
}

#[test]
fn nodes_list_get_register_drain_delete_through_the_cli() {
    let p = start();
    let api = p.url();

    // The local node of `up`.
    let l = p.json(&["nodes", "list"]);
    let nodes = l["data"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{l:#}");
    let local = nodes[0]["id"].as_str().unwrap().to_string();
    let host = nodes[0]["hostname"].as_str().unwrap().to_string();
    let t = p.ok(&["nodes", "list"]).stdout;
    let r = row(&t, &local);
    assert_eq!(r[2], "ready", "{t}");
    assert!(t.contains("process"), "driver column: {t}");
    let g = p.ok(&["nodes", "get", &local]).stdout;
    assert_eq!(field(&g, "ID"), local);
    assert_eq!(field(&g, "STATUS"), "ready");
    assert_eq!(field(&g, "DRIVERS"), "process");
    if !host.is_empty() {
        assert_eq!(p.json(&["nodes", "get", &host])["id"], local.as_str());
    }

    // Register a machine: a join token and the command to run there.
    let o = p.ok(&[
        "nodes", "register", "--name", "n2", "--region", "fra1", "--zone", "fra1-a", "--label",
        "gpu=true",
    ]);
    let n2 = field(&o.stdout, "ID");
    let token = field(&o.stdout, "JOIN TOKEN");
    assert!(n2.starts_with("node_"), "{}", o.stdout);
    assert!(token.starts_with("sw_join_"), "{}", o.stdout);
    assert!(
        o.stdout.contains(&format!(
            "shellwego agent --control-plane {api} --join-token {token} --data-dir /var/lib/shellwego-agent"
        )),
        "{}",
        o.stdout
    );
    let j = p.json(&["nodes", "register", "--name", "n3"]);
    assert!(j["join_token"].as_str().unwrap().starts_with("sw_join_"));
    let n3 = j["id"].as_str().unwrap().to_string();
    let g = p.json(&["nodes", "get", "n2"]);
    assert_eq!(g["id"], n2.as_str());
    assert_eq!(g["region"], "fra1");
    assert_eq!(g["zone"], "fra1-a");
    assert_eq!(g["labels"]["gpu"], "true");
    assert_eq!(
        p.json(&["nodes", "list", "--region", "fra1"])["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let o = p.fails(&["nodes", "get", "nope"]);
    assert!(o.stderr.contains("no node named 'nope'"), "{}", o.stderr);

    // Delete: refused without --yes, then gone.
    let o = p.fails(&["nodes", "delete", "n2"]);
    assert!(o.stderr.contains("--yes"), "{}", o.stderr);
    let o = p.ok(&["nodes", "delete", "n2", "--yes"]);
    assert!(
        o.stdout.contains(&format!("Deleted node n2 ({n2})")),
        "{}",
        o.stdout
    );
    p.ok(&["nodes", "delete", &n3, "--yes", "--migrate-apps"]);
    assert_eq!(
        p.json(&["nodes", "list"])["data"].as_array().unwrap().len(),
        1
    );

    // Drain the only node with an app on it: nowhere to move to, so after
    // the drain's timeout its instance is stopped and the app is pending.
    let archive = hello_tarball(p.dir());
    let o = p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive.to_str().unwrap(),
        "--wait",
    ]);
    let app = field(&o.stdout, "ID");
    assert_eq!(processes_of(&app).len(), 1);
    let o = p.ok(&["nodes", "drain", &local, "--timeout", "2s", "--wait"]);
    assert!(o.stdout.contains("1 instance to move"), "{}", o.stdout);
    assert!(
        o.stderr
            .lines()
            .last()
            .is_some_and(|l| l.ends_with(": drained")),
        "{}",
        o.stderr
    );
    println!("drain progress:\n{}", o.stderr);
    // Drained means nothing runs there any more.
    assert_eq!(processes_of(&app), Vec::<u32>::new(), "{}", o.stderr);
    assert_eq!(p.json(&["nodes", "get", &local])["status"], "draining");
    until(&p, 10, "hello to be pending", |p| {
        p.get_ok("/v1/apps?filter[name]=hello")
            .is_some_and(|l| l["data"][0]["status"] == "pending")
    });
}

#[test]
fn every_apps_and_nodes_command_has_help() {
    for args in [
        vec!["apps"],
        vec!["apps", "create"],
        vec!["apps", "list"],
        vec!["apps", "get"],
        vec!["apps", "delete"],
        vec!["apps", "scale"],
        vec!["apps", "start"],
        vec!["apps", "stop"],
        vec!["apps", "restart"],
        vec!["nodes"],
        vec!["nodes", "list"],
        vec!["nodes", "get"],
        vec!["nodes", "register"],
        vec!["nodes", "drain"],
        vec!["nodes", "delete"],
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
    let o = run(Command::new(BIN).args(["apps", "create", "--help"]));
    for flag in [
        "--image",
        "--upload",
        "--source-url",
        "--memory",
        "--cpu",
        "--replicas",
        "--port",
        "--env",
        "--health-path",
        "--runtime",
        "--region",
        "--label",
        "--tag",
        "--command",
        "--wait",
        "--timeout",
    ] {
        assert!(o.stdout.contains(flag), "apps create --help lacks {flag}");
    }
}

#[test]
fn events_list_and_get_through_the_cli() {
    let p = start();
    let archive = hello_tarball(p.dir());
    let id = field(
        &p.ok(&[
            "apps",
            "create",
            "hello",
            "--upload",
            archive.to_str().unwrap(),
        ])
        .stdout,
        "ID",
    );
    // Table: newest first; the type filter takes a prefix.
    let t = p.ok(&["events", "list", "--type", "app.*"]).stdout;
    let first: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(first[1], "app.created", "{t}");
    assert_eq!(first[3..5], ["app", id.as_str()], "{t}");
    assert!(!t.contains("node."), "{t}");
    let all = p
        .ok(&["events", "list", "--type", "app.*,node.*", "--all"])
        .stdout;
    assert!(
        all.contains("node.joined") && all.contains("app.created"),
        "{all}"
    );
    // JSON is the API's body; get shows one with its metadata.
    let l = p.json(&[
        "events",
        "list",
        "--type",
        "app.created",
        "--resource-id",
        &id,
        "--since",
        "2020-01-01",
    ]);
    let evt = l["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(l["data"][0]["type"], "app.created", "{l:#}");
    let g = p.ok(&["events", "get", &evt]).stdout;
    assert_eq!(field(&g, "TYPE"), "app.created", "{g}");
    assert!(field(&g, "METADATA").contains("\"name\":\"hello\""), "{g}");
    // Stream: from an earlier event on, the later ones come (then it ends).
    let joined = p.json(&["events", "list", "--type", "node.joined"]);
    let from = joined["data"][0]["id"].as_str().unwrap().to_string();
    let s = p
        .ok(&[
            "events",
            "stream",
            "--last-event-id",
            &from,
            "--type",
            "app.*",
            "--max-seconds",
            "1",
        ])
        .stdout;
    assert!(s.contains("app.created") && s.contains(&evt), "{s}");
    assert!(!s.contains("node.joined"), "{s}");
    let j = p
        .ok(&[
            "events",
            "stream",
            "--last-event-id",
            &from,
            "--max-seconds",
            "1",
            "-o",
            "json",
        ])
        .stdout;
    let first: Value = serde_json::from_str(j.lines().next().unwrap()).unwrap();
    assert!(first["id"].as_str().unwrap().starts_with("evt_"), "{j}");
    // A pattern where none may be: the API's 400, said plainly.
    let bad = p.fails(&["events", "list", "--severity", "inf*"]);
    assert!(bad.stderr.contains("severity"), "{}", bad.stderr);
    let none = p.fails(&["events", "get", "evt_nosuchevent"]);
    assert!(
        none.stderr.contains("404") || none.stderr.to_lowercase().contains("not found"),
        "{}",
        none.stderr
    );
}
