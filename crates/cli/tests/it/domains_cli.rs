//! `shellwego domains` against a real `shellwego up --runtime process`:
//! two apps under one host name by path, with and without `strip_prefix`,
//! through the real ingress; a removed route falls back to the shorter
//! prefix; an unknown host is a 404.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_testkit::fixtures::hello_tar_gz;
use shellwego_testkit::http::{send, Request};

use crate::apps_cli::start;
use crate::support::Cli;

/// What the hello app answered (`app`, `path`) for `host` and `path`, or
/// the status and body of anything else.
fn get(ingress: SocketAddr, host: &str, path: &str) -> Result<(String, String), (u16, String)> {
    let r = send(ingress, &Request::new("GET", path).host(host)).map_err(|e| (0, e.to_string()))?;
    if r.status != 200 {
        return Err((r.status, r.text()));
    }
    let v: Value = serde_json::from_str(&r.text()).map_err(|e| (r.status, e.to_string()))?;
    Ok((
        v["app"].as_str().unwrap().to_string(),
        v["path"].as_str().unwrap().to_string(),
    ))
}

/// Wait (up to 20 s) until `host` and `path` reach `app` seeing `seen`.
fn until_routed(ingress: SocketAddr, host: &str, path: &str, app: &str, seen: &str) {
    let t = Instant::now();
    loop {
        let got = get(ingress, host, path);
        if got == Ok((app.to_string(), seen.to_string())) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{host}{path}: {got:?}, not {app} seeing {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_apps_share_a_host_by_path_through_the_ingress() {
    let p = start();
    let archive = p.dir().join("hello.tgz");
    std::fs::write(&archive, hello_tar_gz().unwrap()).unwrap();
    for name in ["web", "api"] {
        p.ok(&[
            "apps",
            "create",
            name,
            "--upload",
            archive.to_str().unwrap(),
            "--health-path",
            "/health",
            "--wait",
        ]);
    }
    let ingress = SocketAddr::from(([127, 0, 0, 1], p.ingress_port()));
    let host = "shop.example.com";

    let added = p.json(&["domains", "add", host, "--app", "web"]);
    assert_eq!(added["hostname"], host, "{added:#}");
    assert_eq!(added["routing"]["path"], "/");
    p.ok(&[
        "domains",
        "add",
        host,
        "--app",
        "api",
        "--path",
        "/api",
        "--strip-prefix",
    ]);
    p.ok(&["domains", "add", host, "--app", "api", "--path", "/raw"]);
    let table = p.ok(&["domains", "list"]).stdout;
    assert_eq!(table.matches(host).count(), 3, "{table}");

    // Longest prefix wins; stripped or not; a query string kept; `/apix`
    // is not under `/api`.
    until_routed(ingress, host, "/api/items?x=1", "api", "/items?x=1");
    until_routed(ingress, host, "/api", "api", "/");
    until_routed(ingress, host, "/raw/x", "api", "/raw/x");
    until_routed(ingress, host, "/", "web", "/");
    until_routed(ingress, host, "/apix", "web", "/apix");
    // Any case, a port, a trailing dot: the same host.
    until_routed(ingress, "SHOP.example.com.:80", "/api/a", "api", "/a");
    // The apps are still reached by their own names.
    until_routed(ingress, "api.localhost", "/q", "api", "/q");

    // One of several routes of a host needs its path; then it goes, and
    // its paths fall back to `/`.
    let o = p.fails(&["domains", "remove", host]);
    assert!(o.stderr.contains("--path"), "{}", o.stderr);
    let got = p.json(&["domains", "get", host, "--path", "/raw"]);
    assert_eq!(got["routing"]["strip_prefix"], false, "{got:#}");
    p.ok(&["domains", "remove", host, "--path", "/raw"]);
    until_routed(ingress, host, "/raw/x", "web", "/raw/x");

    // A changed route: stripping off.
    p.ok(&[
        "domains",
        "update",
        host,
        "--path",
        "/api",
        "--strip-prefix",
        "false",
    ]);
    until_routed(ingress, host, "/api/items", "api", "/api/items");

    // A host nobody routes: our 404.
    match get(ingress, "nobody.example.com", "/") {
        Err((404, body)) => assert!(body.contains("nobody.example.com"), "{body}"),
        other => panic!("{other:?}"),
    }
    // Deleting an app deletes its routes: that path falls back too.
    p.ok(&["apps", "delete", "api", "--yes"]);
    until_routed(ingress, host, "/api/items", "web", "/api/items");
    let left = p.json(&["domains", "list"]);
    assert_eq!(left["data"].as_array().unwrap().len(), 1, "{left:#}");
}
