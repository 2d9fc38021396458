//! An app's network, end to end through a real `shellwego up` running
//! containers (issue 14): an instance finds another app of its
//! organization by its internal name (`<app>.internal`: the `A` records of
//! its instances, their ports in `SRV` records) from the resolver its
//! `/etc/resolv.conf` names, and talks to it, while that app, private
//! (`public: false`), answers 404 through the ingress. The names are asked
//! with busybox's `nslookup` (its own DNS client) inside the container,
//! and db is asked over HTTP with busybox's `nc` (Debian's static busybox
//! `wget` crashes in glibc's static resolver code).
//! Skipped without a working container driver unless
//! SHELLWEGO_REQUIRE_CONTAINER is set (CI).

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_testkit::fixtures::{tar_gz, write_busybox_rootfs};
use shellwego_testkit::platform::{through, Platform};

use crate::orphans::containers_work;
use crate::platform::up;
use crate::support::healthy;

/// Create an app running `script` (sh) in the busybox root filesystem
/// uploaded as `upload`, as a container.
fn create(up: &Platform, name: &str, upload: &str, script: &str, extra: Value) -> String {
    let body = crate::support::busybox_app(name, upload, script, extra);
    let (st, created) = up.call(Method::POST, "/v1/apps", Some(body));
    assert_eq!(st, 201, "{created}");
    created["id"].as_str().unwrap().to_string()
}

#[test]
fn an_instance_reaches_a_private_app_by_its_internal_name() {
    if !containers_work() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = up(tmp.path(), &["--runtime", "container"]).start();
    let root = tmp.path().join("rootfs");
    write_busybox_rootfs(&root).unwrap();
    let upload = up.upload(&tar_gz(&root).unwrap());

    // `db`: private, serving a page that names its instance.
    let db = create(
        &up,
        "db",
        &upload,
        "echo \"db says hi from $SHELLWEGO_INSTANCE_ID\" > /www/index.html; \
         exec /bin/busybox httpd -f -p $PORT -h /www",
        json!({"networking": {"public": false}}),
    );
    // `web`: public; asks for db.internal (A for the address, SRV for the
    // port) every half second and serves what db answered.
    let web = create(
        &up,
        "web",
        &upload,
        "B=/bin/busybox; echo waiting > /www/index.html; \
         ( while true; do \
             A=$($B nslookup -type=a db.internal 2>&1 | $B awk '/^Address: / {print $2}' | $B tail -n 1); \
             P=$($B nslookup -type=srv db.internal 2>&1 | $B awk '/service =/ {print $(NF-1)}' | $B head -n 1); \
             if [ -n \"$A\" ] && [ -n \"$P\" ] && printf 'GET / HTTP/1.0\\r\\n\\r\\n' | $B nc -w 2 \"$A\" \"$P\" > /tmp/db.html && $B grep -q 'db says' /tmp/db.html; then \
               (echo \"db.internal is $A:$P\"; $B cat /tmp/db.html) > /www/index.new && $B mv /www/index.new /www/index.html; \
             else \
               ($B nslookup -type=srv db.internal 2>&1; echo \"A=$A P=$P\") > /www/index.new && $B mv /www/index.new /www/index.html; \
             fi; \
             $B sleep 0.5; \
           done ) & \
         exec $B httpd -f -p $PORT -h /www",
        json!({}),
    );
    let d = up.wait_app(&db, "db healthy", 120, |a| healthy(a, 1));
    up.wait_app(&web, "web healthy", 120, |a| healthy(a, 1));
    assert_eq!(d["networking"]["public"], false, "{d:#}");
    let db_inst = d["instances"][0]["id"].as_str().unwrap().to_string();

    // web reaches db by its name.
    let t = Instant::now();
    let page = loop {
        let (st, page) = through(up.ingress_port(), "web").unwrap();
        if st == 200 && page.contains("db says hi") {
            break page;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let log = up.log();
            let dns: Vec<&str> = log.lines().filter(|l| l.contains("DNS")).collect();
            panic!("web never reached db.internal; its page: {st} {page}\nDNS log lines: {dns:#?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(page.contains(&db_inst), "{page}");
    println!(
        "web reached db by name within {:?}: {}",
        t.elapsed(),
        page.lines().next().unwrap_or("")
    );

    // db is off the ingress: 404 as for no app at all.
    let (st, body) = through(up.ingress_port(), "db").unwrap();
    assert_eq!(st, 404, "{body}");
    let (st, _) = through(up.ingress_port(), "nosuchapp").unwrap();
    assert_eq!(st, 404);
    // Made public, it is routed (no new instance).
    let (st, v) = up.call(
        Method::PATCH,
        &format!("/v1/apps/{db}"),
        Some(json!({"networking": {"public": true}})),
    );
    assert_eq!(st, 200, "{v}");
    let t = Instant::now();
    loop {
        let (st, body) = through(up.ingress_port(), "db").unwrap();
        if st == 200 {
            assert!(body.contains(&db_inst), "{body}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{st} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
