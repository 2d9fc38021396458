//! The container driver against the host's real OCI runtime: busybox root
//! filesystems, real network namespaces, real cgroups. Skipped (with the
//! reason printed) where `ContainerDriver::detect()` finds no working runtime
//! or no static busybox; set `SHELLWEGO_REQUIRE_CONTAINER=1` to make that a
//! failure instead (CI does).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shellwego_agent::container::ContainerDriver;
use shellwego_agent::driver::{Command, Driver, Exit, Launch, Running};

use crate::support::{self, skip, wait_exit, Guard, REQUIRE_CONTAINER};

/// The driver, or None (and why, printed) when this host cannot run it.
pub fn driver() -> Option<ContainerDriver> {
    let t = Instant::now();
    let probed = ContainerDriver::probe();
    match probed {
        Ok(d) => {
            // Only the first call probes; the others read the cached verdict.
            eprintln!(
                "container driver: {} ({}), probe/detect took {:?}",
                d.runtime(),
                d.runtime_path().display(),
                t.elapsed()
            );
            Some(d)
        }
        Err(why) => {
            skip(
                Some(REQUIRE_CONTAINER),
                &format!("no usable container runtime on this host: {why}"),
            );
            None
        }
    }
}

/// A root filesystem with a static busybox, its applets and a web page.
fn busybox_rootfs(base: &Path) -> Option<PathBuf> {
    support::busybox_rootfs(base)
        .map_err(|why| skip(Some(REQUIRE_CONTAINER), &why))
        .ok()
}

fn launch(base: &Path, name: &str, root: &Path, argv: &[&str], memory: i64) -> Launch {
    let instance_id = format!("t{}-{name}", std::process::id());
    let mut l = support::launch(base, &instance_id, root, argv);
    l.env = BTreeMap::from([("GREETING".to_string(), "hi".to_string())]);
    l.memory = memory;
    l
}

fn start(d: &ContainerDriver, l: &Launch) -> Running {
    let r = support::start(d, l);
    println!(
        "started {} (ip {}, rootfs by {})",
        l.instance_id, r.extra["ip"], r.extra["rootfs"]
    );
    r
}

/// A real HTTP/1.0 GET to the container's address, retried while the
/// server is not listening yet.
fn http_get(ip: &str, port: u16, path: &str) -> String {
    let addr = SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port);
    support::http_get(addr, path, Duration::from_secs(10))
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[test]
fn serves_http_from_its_own_namespaces_without_touching_the_image() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let l = launch(
        tmp.path(),
        "web",
        &root,
        &[
            "sh",
            "-c",
            "echo \"started with $GREETING on $PORT\"; echo written > /www/written.txt; \
             cp /etc/hosts /www/hosts.txt; hostname > /www/hostname.txt; \
             exec httpd -f -p $PORT -h /www",
        ],
        128 << 20,
    );
    let r = start(&d, &l);
    let _g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    assert_eq!(r.driver, "container");
    assert_eq!(r.extra["container_id"], l.instance_id);
    assert_eq!(r.extra["runtime"], d.runtime());
    assert!(d.poll(&r).is_none());

    // Reachable from the host at its own address.
    let ip = &r.extra["ip"];
    let page = http_get(ip, l.port, "/index.html");
    assert!(page.starts_with("HTTP/1."), "{page}");
    assert!(page.contains("hello from the image"), "{page}");

    // The container's writes land in its own layer, not in the image.
    let written = http_get(ip, l.port, "/written.txt");
    assert!(written.contains("written"), "{written}");
    assert!(!root.join("www/written.txt").exists());
    // Its own /etc/hosts names it at its address (no DNS wait to find
    // itself), and the host's is untouched.
    let hosts = http_get(ip, l.port, "/hosts.txt");
    let hostname = http_get(ip, l.port, "/hostname.txt");
    let hostname = hostname.lines().last().unwrap().trim();
    assert_eq!(hostname, l.instance_id);
    assert!(hosts.contains(&format!("{ip}\t{hostname}")), "{hosts}");
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        3,
        "the image root gained entries"
    );

    // Its own network and pid namespaces; our init is pid 1 inside, the
    // app its child.
    let pid = r.pid.to_string();
    assert_ne!(ns(&pid, "net"), ns("self", "net"));
    assert_ne!(ns(&pid, "pid"), ns("self", "pid"));
    assert_ne!(ns(&pid, "mnt"), ns("self", "mnt"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        std::fs::read_link(format!("/proc/{pid}/task/{pid}/ns/net")).unwrap()
    );

    let init = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        init.starts_with("/.shellwego/sw-init\0--\0sh\0"),
        "{init:?}"
    );
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let app = children
        .split_whitespace()
        .next()
        .expect("the init has no child");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{app}/comm"))
            .unwrap()
            .trim(),
        "httpd"
    );

    // stdout goes to the log, with the environment given.
    let log = std::fs::read_to_string(&l.stdout).unwrap();
    assert!(log.contains("started with hi on 8080"), "log: {log}");

    // The limits reached the cgroup: memory, and the CPU boot allowance
    // (a core) until the driver is told the instance is up.
    if let Some(limit) = ContainerDriver::memory_limit(&r) {
        assert_eq!(limit, 128 << 20);
    }
    if let Some(cpu) = shellwego_agent::cgroup::cpu_limit_of(r.pid) {
        assert_eq!(cpu, 1000);
        d.settle(&r, 250).unwrap();
        assert_eq!(shellwego_agent::cgroup::cpu_limit_of(r.pid), Some(250));
    } else {
        eprintln!("no CPU cgroup for the container: its CPU limit is not checked");
    }

    d.run(Command::Kill(&r)).unwrap();
    let exit = wait_exit(&d, &r, Duration::from_secs(10)).expect("still running after Kill");
    assert!(!exit.oom_killed);
    // Killing what is gone is fine.
    d.run(Command::Kill(&r)).unwrap();
    d.run(Command::Terminate(&r)).unwrap();
}

#[test]
fn the_memory_limit_ooms_a_hog() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let l = launch(
        tmp.path(),
        "hog",
        &root,
        &[
            "sh",
            "-c",
            "echo hogging; x=$(yes 0123456789abcdef | head -c 400000000); echo survived",
        ],
        64 << 20,
    );
    let r = start(&d, &l);
    let _g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    let Some(limit) = ContainerDriver::memory_limit(&r) else {
        skip(
            Some(REQUIRE_CONTAINER),
            "this host has no usable memory cgroup: cannot check OOM kills",
        );
        return;
    };
    assert_eq!(limit, 64 << 20);
    let exit = wait_exit(&d, &r, Duration::from_secs(60)).expect("the hog is still running");
    let log = std::fs::read_to_string(&l.stdout).unwrap();
    assert!(exit.oom_killed, "{exit:?}; log: {log}");
    assert!(exit.describe().contains("out of memory"));
    assert!(!log.contains("survived"), "log: {log}");
}

#[test]
fn terminate_cleanup_restart_and_distinct_addresses() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let la = launch(
        tmp.path(),
        "polite",
        &root,
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 1; done",
        ],
        64 << 20,
    );
    let lb = launch(tmp.path(), "sleeper", &root, &["sleep", "1000"], 64 << 20);
    let ra = start(&d, &la);
    let mut ga = Guard {
        d: &d,
        id: la.instance_id.clone(),
        r: Some(ra.clone()),
    };
    let rb = start(&d, &lb);
    let mut gb = Guard {
        d: &d,
        id: lb.instance_id.clone(),
        r: Some(rb.clone()),
    };
    assert_ne!(ra.extra["ip"], rb.extra["ip"]);
    assert_ne!(ra.extra["netns"], rb.extra["netns"]);
    for r in [&ra, &rb] {
        assert!(Path::new("/var/run/netns").join(&r.extra["netns"]).exists());
        assert!(Path::new(&r.extra["bundle"]).join("config.json").is_file());
    }

    // A process that handles SIGTERM stops on Terminate.
    std::thread::sleep(Duration::from_millis(200));
    d.run(Command::Terminate(&ra)).unwrap();
    let exit = wait_exit(&d, &ra, Duration::from_secs(15)).expect("Terminate did not stop it");
    assert!(!exit.oom_killed);
    assert!(std::fs::read_to_string(&la.stdout).unwrap().contains("bye"));

    // `sleep` has no SIGTERM handler; our init (pid 1) forwards the signal
    // and `sleep` dies of it.
    d.run(Command::Terminate(&rb)).unwrap();
    let exit = wait_exit(&d, &rb, Duration::from_secs(5)).expect("Terminate did not stop it");
    assert_eq!(exit.signal, Some(15), "{exit:?}");

    for (l, r) in [(&la, &ra), (&lb, &rb)] {
        d.run(Command::Cleanup {
            instance_id: &l.instance_id,
            handle: Some(r),
        })
        .unwrap();
        assert!(!Path::new("/var/run/netns").join(&r.extra["netns"]).exists());
        assert!(!Path::new("/sys/class/net").join(&r.extra["veth"]).exists());
        assert!(!Path::new(&r.extra["bundle"]).exists());
        assert!(l.dir.exists(), "the instance directory itself stays");
        // Idempotent.
        d.run(Command::Cleanup {
            instance_id: &l.instance_id,
            handle: Some(r),
        })
        .unwrap();
    }
    ga.r = None;
    gb.r = None;

    // The same instance starts again after its cleanup.
    let again = start(&d, &la);
    ga.r = Some(again.clone());
    assert!(d.adopt(&again));
    assert!(
        std::fs::read_to_string(&la.stdout)
            .unwrap()
            .matches("ready")
            .count()
            >= 2
    );
    d.run(Command::Kill(&again)).unwrap();
    wait_exit(&d, &again, Duration::from_secs(10)).expect("Kill did not stop it");
}

#[test]
fn a_restarted_agent_adopts_a_running_container() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let l = launch(tmp.path(), "adopted", &root, &["sleep", "1000"], 64 << 20);
    let r = start(&d, &l);
    let saved = serde_json::to_string(&r).unwrap();
    drop(d);

    // The "new agent": a fresh driver and the handle read back from disk.
    let d = ContainerDriver::detect().expect("detect changed its mind");
    let r: Running = serde_json::from_str(&saved).unwrap();
    let mut g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    assert!(d.adopt(&r));
    assert!(d.poll(&r).is_none());

    // A handle whose pid was reused is not adopted.
    let mut stale = r.clone();
    stale.start_ticks += 1;
    assert!(!d.adopt(&stale));

    d.run(Command::Kill(&r)).unwrap();
    wait_exit(&d, &r, Duration::from_secs(10)).expect("Kill did not stop it");
    assert!(!d.adopt(&r));

    // Cleanup knowing only the instance id (the handle was lost).
    d.run(Command::Cleanup {
        instance_id: &l.instance_id,
        handle: None,
    })
    .unwrap();
    assert!(!Path::new(&r.extra["bundle"]).exists());
    assert!(!Path::new("/var/run/netns").join(&r.extra["netns"]).exists());
    g.r = None;
}

#[test]
fn an_app_directory_runs_on_the_hosts_userland() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app-release");
    std::fs::create_dir_all(app.join("public")).unwrap();
    std::fs::write(app.join("public/index.html"), "hello from the app\n").unwrap();
    std::fs::write(
        app.join("run.sh"),
        "echo \"in $(pwd)\"; echo scratch > scratch.txt; exec sleep 1000\n",
    )
    .unwrap();
    let mut l = launch(tmp.path(), "appdir", &app, &["sh", "run.sh"], 64 << 20);
    l.is_rootfs = false;
    let r = start(&d, &l);
    let _g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&l.stdout)
        .unwrap_or_default()
        .contains("in /app")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(&l.stdout).unwrap();
    assert!(log.contains("in /app"), "log: {log}");
    assert!(d.poll(&r).is_none(), "log: {log}");
    assert!(
        !app.join("scratch.txt").exists(),
        "the app directory was modified"
    );
}

#[test]
fn copies_the_root_where_an_overlay_cannot_be_mounted() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    // A ':' cannot be given to overlayfs in upperdir/workdir.
    let base = tmp.path().join("odd:dir");
    let l = launch(
        &base,
        "copied",
        &root,
        &[
            "sh",
            "-c",
            "echo mine > /www/mine.txt; echo done; exec sleep 1000",
        ],
        64 << 20,
    );
    let r = start(&d, &l);
    let mut g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    assert_eq!(r.extra["rootfs"], "copy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&l.stdout)
        .unwrap_or_default()
        .contains("done")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Path::new(&r.extra["bundle"])
        .join("rootfs/www/mine.txt")
        .is_file());
    assert!(!root.join("www/mine.txt").exists());
    d.run(Command::Kill(&r)).unwrap();
    wait_exit(&d, &r, Duration::from_secs(10)).expect("Kill did not stop it");
    d.run(Command::Cleanup {
        instance_id: &l.instance_id,
        handle: Some(&r),
    })
    .unwrap();
    assert!(!Path::new(&r.extra["bundle"]).exists());
    assert!(root.join("bin/busybox").is_file());
    g.r = None;
}

/// How long Terminate takes to stop `r` (from the signal to the exit, as
/// `poll` sees it).
fn time_terminate(d: &ContainerDriver, r: &Running) -> (Duration, Exit) {
    let t = Instant::now();
    d.run(Command::Terminate(r)).unwrap();
    let exit = wait_exit(d, r, Duration::from_secs(15)).expect("Terminate did not stop it");
    (t.elapsed(), exit)
}

#[test]
fn apps_without_a_sigterm_handler_stop_at_once_on_terminate() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    // busybox `sleep` in an image; the README's sample app (python3, no
    // SIGTERM handler) as an app directory on the host's userland.
    let ls = launch(tmp.path(), "sleeps", &root, &["sleep", "1000"], 64 << 20);
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let mut lh = launch(
        tmp.path(),
        "hello",
        &hello,
        &["python3", "server.py"],
        128 << 20,
    );
    lh.is_rootfs = false;
    lh.port = 8123;
    let rs = start(&d, &ls);
    let _gs = Guard {
        d: &d,
        id: ls.instance_id.clone(),
        r: Some(rs.clone()),
    };
    let rh = start(&d, &lh);
    let _gh = Guard {
        d: &d,
        id: lh.instance_id.clone(),
        r: Some(rh.clone()),
    };
    let page = http_get(&rh.extra["ip"], lh.port, "/health");
    assert!(page.contains("ok"), "{page}");

    for (name, r) in [("busybox sleep", &rs), ("examples/hello", &rh)] {
        let (took, exit) = time_terminate(&d, r);
        println!("{name}: Terminate to exit in {took:?} ({exit:?})");
        assert_eq!(exit.signal, Some(15), "{name}: {exit:?}");
        assert_eq!(exit.code, None, "{name}: {exit:?}");
        assert!(
            took < Duration::from_secs(1),
            "{name} took {took:?} to stop on SIGTERM"
        );
    }
}

#[test]
fn the_apps_exit_code_is_reported() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    // (name, argv, code, signal)
    type Case<'a> = (&'a str, &'a [&'a str], Option<i32>, Option<i32>);
    let cases: [Case; 4] = [
        ("three", &["sh", "-c", "exit 3"], Some(3), None),
        ("zero", &["true"], Some(0), None),
        ("selfkill", &["sh", "-c", "kill -USR1 $$"], None, Some(10)),
        ("missing", &["no-such-program"], Some(127), None),
    ];
    for (name, argv, code, signal) in cases {
        let l = launch(tmp.path(), name, &root, argv, 64 << 20);
        let r = start(&d, &l);
        let _g = Guard {
            d: &d,
            id: l.instance_id.clone(),
            r: Some(r.clone()),
        };
        let exit = wait_exit(&d, &r, Duration::from_secs(10)).expect("still running");
        assert_eq!((exit.code, exit.signal), (code, signal), "{name}: {exit:?}");
        assert!(!exit.oom_killed);
        if name == "missing" {
            let log = std::fs::read_to_string(&l.stdout).unwrap();
            assert!(
                log.contains("cannot run no-such-program"),
                "{name}: log: {log}"
            );
        }
    }
}

/// Processes of the pid namespace of `pid` that are zombies.
fn zombies_in_namespace_of(pid: u32) -> Vec<String> {
    let target = ns(&pid.to_string(), "pid");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/pid"))
                .ok()
                .as_ref()
                == Some(&target)
        })
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn orphans_of_the_app_are_reaped() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    // The inner shell leaves a background `sleep` behind and exits; that
    // orphan goes to pid 1 and ends 0.2 s later. The app (`sleep 1000`)
    // never waits for anything.
    let l = launch(
        tmp.path(),
        "orphans",
        &root,
        &[
            "sh",
            "-c",
            "for i in 1 2 3; do sh -c 'sleep 0.2 &'; done; echo forked; exec sleep 1000",
        ],
        64 << 20,
    );
    let r = start(&d, &l);
    let _g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&l.stdout)
        .unwrap_or_default()
        .contains("forked")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(800));
    assert!(d.poll(&r).is_none(), "the app ended early");
    let zombies = zombies_in_namespace_of(r.pid);
    assert!(
        zombies.is_empty(),
        "zombies left in the container: {zombies:?}"
    );
}

/// Whether the container's app could connect to `port` on its gateway
/// (the host end of its veth), as its log tells.
fn egress_outcome(
    d: &ContainerDriver,
    root: &Path,
    base: &Path,
    name: &str,
    allowed: Option<Vec<String>>,
    port: u16,
) -> (&'static str, Duration) {
    let script = format!(
        "GW=$(ip route | awk '/default/ {{print $3}}'); \
         if nc -w 3 \"$GW\" {port} </dev/null; then echo EGRESS_OK; else echo EGRESS_REFUSED; fi; \
         exec sleep 60"
    );
    let mut l = launch(base, name, root, &["sh", "-c", &script], 64 << 20);
    l.allowed_egress = allowed;
    let r = start(d, &l);
    let _g = Guard {
        d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(&l.stdout).unwrap_or_default();
        for word in ["EGRESS_OK", "EGRESS_REFUSED"] {
            if log.contains(word) {
                return (word, t.elapsed());
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no outcome; log: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An app's `allowed_egress` holds in the container's own namespace: a
/// destination in the list is reached, one outside it is refused at once
/// (not after a timeout); without a policy both are reached. The traffic
/// goes only to a listener of the test's on the container's gateway.
#[test]
fn an_egress_policy_refuses_what_it_does_not_list() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let open = egress_outcome(&d, &root, tmp.path(), "eg-open", None, port);
    assert!(open.0 == "EGRESS_OK", "no policy: {open:?}");
    // The whole container range: the gateway is in it.
    let listed = egress_outcome(
        &d,
        &root,
        tmp.path(),
        "eg-listed",
        Some(vec!["10.89.0.0/16".into()]),
        port,
    );
    assert!(listed.0 == "EGRESS_OK", "listed: {listed:?}");
    let refused = egress_outcome(
        &d,
        &root,
        tmp.path(),
        "eg-refused",
        Some(vec!["192.0.2.0/24".into()]),
        port,
    );
    assert!(refused.0 == "EGRESS_REFUSED", "not listed: {refused:?}");
    // A refusal, not a timeout (nc gives up after 3 s) nor a retransmitted
    // SYN (1 s).
    assert!(
        refused.1 < Duration::from_millis(900),
        "refused at once, not by nc's timeout: {refused:?}"
    );
    println!(
        "egress (outcome, time after start): open {open:?}; listed {listed:?}; refused {refused:?}"
    );
}
