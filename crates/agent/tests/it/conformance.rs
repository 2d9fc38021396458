//! What every runtime driver must do, written once over `&dyn Driver` and
//! run for each of them (`process`, `container`, `microvm`): start an app
//! that serves HTTP where the reconciler looks for it, stop it on SIGTERM
//! within its own time, kill it when it ignores SIGTERM past its stop
//! timeout, report an OOM kill where the host enforces memory limits, let a
//! new driver (a restarted agent) re-adopt a running instance, and leave
//! nothing behind after `Cleanup`. A new driver gets these checks by adding
//! one line at the bottom.
//!
//! A driver the host cannot run is skipped with the reason printed
//! (`container`: root and a working runc or crun; `microvm`:
//! `MicrovmDriver::probe()`), or fails when `SHELLWEGO_REQUIRE_CONTAINER` /
//! `SHELLWEGO_REQUIRE_MICROVM` is set. Microvm guests boot under TCG here:
//! slow, and expected to be.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shellwego_agent::cgroup::Cgroup;
use shellwego_agent::container::ContainerDriver;
use shellwego_agent::driver::{Command, Driver, Launch, Running, DEFAULT_GRACE};
use shellwego_agent::microvm::MicrovmDriver;
use shellwego_agent::process::ProcessDriver;

use crate::support::{self, alive, free_port, log_once_it_says, skip, start, wait_exit, Guard};

/// A driver under test, with what the checks need to know about it.
struct Subject {
    driver: Box<dyn Driver>,
    /// A new driver, as a restarted agent makes it.
    fresh: fn() -> Box<dyn Driver>,
    /// How long a start may take until the app serves (a TCG guest boots
    /// in seconds, a loaded host takes its time).
    patience: Duration,
    /// How long a memory hog may take to be killed.
    hog_patience: Duration,
    /// Whether the host holds this instance to its memory limit.
    enforces_memory: fn(&Running) -> bool,
    root: PathBuf,
    tmp: tempfile::TempDir,
}

fn with_rootfs(
    driver: Box<dyn Driver>,
    fresh: fn() -> Box<dyn Driver>,
    patience: Duration,
    hog_patience: Duration,
    enforces_memory: fn(&Running) -> bool,
    require: Option<&str>,
) -> Option<Subject> {
    let tmp = tempfile::tempdir().unwrap();
    let root = match support::busybox_rootfs(tmp.path()) {
        Ok(r) => r,
        Err(why) => {
            skip(require, &why);
            return None;
        }
    };
    Some(Subject {
        driver,
        fresh,
        patience,
        hog_patience,
        enforces_memory,
        root,
        tmp,
    })
}

fn process() -> Option<Subject> {
    with_rootfs(
        Box::new(ProcessDriver::new()),
        || Box::new(ProcessDriver::new()),
        Duration::from_secs(10),
        Duration::from_secs(60),
        |r| r.extra.contains_key("cgroups") && Cgroup::memory_available(),
        None,
    )
}

fn container() -> Option<Subject> {
    let d = crate::container::driver()?;
    with_rootfs(
        Box::new(d),
        || Box::new(ContainerDriver::probe().expect("the probe changed its mind")),
        Duration::from_secs(10),
        Duration::from_secs(60),
        |r| ContainerDriver::memory_limit(r).is_some(),
        Some(support::REQUIRE_CONTAINER),
    )
}

fn microvm() -> Option<Subject> {
    let d = crate::microvm::driver()?;
    with_rootfs(
        Box::new(d),
        || Box::new(MicrovmDriver::probe().expect("the probe changed its mind")),
        Duration::from_secs(180),
        Duration::from_secs(300),
        // The guest's own kernel: its RAM is the limit.
        |_| true,
        Some(support::REQUIRE_MICROVM),
    )
}

/// An instance of `argv` in the busybox root, on a port of its own, with
/// `PORT` set and a `PATH` that finds busybox's applets wherever the driver
/// runs it (chrooted, in a container, in a guest, or on the host).
fn launch(s: &Subject, name: &str, argv: &[&str]) -> Launch {
    let id = format!("c{}-{}-{name}", std::process::id(), s.driver.name());
    let mut l = support::launch(s.tmp.path(), &id, &s.root, argv);
    l.port = free_port();
    l.env.insert("PORT".into(), l.port.to_string());
    l.env.insert(
        "PATH".into(),
        format!(
            "{}:{}",
            shellwego_agent::host::DEFAULT_PATH,
            s.root.join("bin").display()
        ),
    );
    l
}

/// Where the app is reached from the host: its own address, else the
/// node's (as the reconciler's health checks do).
fn addr(r: &Running, l: &Launch) -> SocketAddr {
    let ip = r
        .extra
        .get("ip")
        .map(|ip| ip.parse::<IpAddr>().unwrap())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, l.port)
}

const WEB: &str = "echo serving on $PORT; exec httpd -f -p $PORT -h www";
const POLITE: &str = "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 1; done";
const STUBBORN: &str = "trap '' TERM; echo ready; while true; do sleep 1; done";
const HOG: &str = "echo hogging; x=$(yes 0123456789abcdef | head -c 400000000); echo survived";

/// Started, it serves HTTP where the reconciler's health check looks.
fn starts_and_serves_http(s: &Subject) {
    let d = s.driver.as_ref();
    let l = launch(s, "web", &["sh", "-c", WEB]);
    let r = start(d, &l);
    let _g = Guard::new(d, &l, &r);
    assert_eq!(r.driver, d.name());
    assert!(r.pid > 0);
    let page = support::http_get(addr(&r, &l), "/index.html", s.patience);
    assert!(page.starts_with("HTTP/1."), "{page}");
    assert!(page.contains("hello from the image"), "{page}");
    assert!(d.poll(&r).is_none(), "it stopped serving");
    assert!(d.adopt(&r), "a running instance is adoptable");
}

/// An app that handles SIGTERM stops on `Terminate`, well within the
/// default stop timeout, and says how it ended.
fn sigterm_stops_it_within_its_time(s: &Subject) {
    let d = s.driver.as_ref();
    let l = launch(s, "polite", &["sh", "-c", POLITE]);
    let r = start(d, &l);
    let _g = Guard::new(d, &l, &r);
    let log = log_once_it_says(&l, "ready", s.patience);
    assert!(log.contains("ready"), "log: {log}");
    d.run(Command::Terminate(&r)).unwrap();
    let exit = wait_exit(d, &r, DEFAULT_GRACE).expect("Terminate did not stop it in time");
    let log = std::fs::read_to_string(&l.stdout).unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}; log: {log}");
    assert!(!exit.oom_killed, "{exit:?}");
    assert!(log.contains("bye"), "log: {log}");
}

/// An app that ignores SIGTERM is still running after its stop timeout,
/// and `Kill` ends it.
fn sigkill_after_the_stop_timeout(s: &Subject) {
    let d = s.driver.as_ref();
    let l = launch(s, "stubborn", &["sh", "-c", STUBBORN]);
    let r = start(d, &l);
    let _g = Guard::new(d, &l, &r);
    let log = log_once_it_says(&l, "ready", s.patience);
    assert!(log.contains("ready"), "log: {log}");
    d.run(Command::Terminate(&r)).unwrap();
    let stop_timeout = Duration::from_secs(2);
    assert_eq!(
        wait_exit(d, &r, stop_timeout),
        None,
        "it did not ignore SIGTERM"
    );
    d.run(Command::Kill(&r)).unwrap();
    let exit = wait_exit(d, &r, Duration::from_secs(10)).expect("Kill did not stop it");
    assert!(!exit.oom_killed, "{exit:?}");
    assert_ne!(exit.code, Some(0), "{exit:?}");
    assert!(!d.adopt(&r));
}

/// Over its memory limit, it is killed and the exit says so, where the
/// host enforces memory limits.
fn an_oom_kill_is_reported(s: &Subject) {
    let d = s.driver.as_ref();
    let l = launch(s, "hog", &["sh", "-c", HOG]);
    let r = start(d, &l);
    let _g = Guard::new(d, &l, &r);
    if !(s.enforces_memory)(&r) {
        skip(
            None,
            &format!(
                "{}: this host does not enforce its memory limit: OOM kills are not checked",
                d.name()
            ),
        );
        return;
    }
    let exit = wait_exit(d, &r, s.hog_patience).expect("the hog is still running");
    let log = std::fs::read_to_string(&l.stdout).unwrap();
    assert!(exit.oom_killed, "{exit:?}; log: {log}");
    assert!(exit.describe().contains("out of memory"), "{exit:?}");
    assert!(!log.contains("survived"), "log: {log}");
}

/// A new driver (a restarted agent) re-adopts a running instance from its
/// saved handle, and can stop it; a handle whose pid was reused is not
/// adopted.
fn a_new_driver_re_adopts_it(s: &Subject) {
    let l = launch(s, "adopted", &["sh", "-c", STUBBORN]);
    let r = start(s.driver.as_ref(), &l);
    let saved: Running = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    let d2 = (s.fresh)();
    let d = d2.as_ref();
    let mut g = Guard::new(d, &l, &saved);
    assert!(d.adopt(&saved), "not re-adopted");
    assert!(d.poll(&saved).is_none());
    let mut stale = saved.clone();
    stale.start_ticks += 1;
    assert!(!d.adopt(&stale), "a reused pid was adopted");

    d.run(Command::Kill(&saved)).unwrap();
    wait_exit(d, &saved, Duration::from_secs(10)).expect("Kill did not stop it");
    assert!(!d.adopt(&saved));
    d.run(Command::Cleanup {
        instance_id: &l.instance_id,
        handle: Some(&saved),
    })
    .unwrap();
    g.r = None;
    // The first driver's child, reaped.
    let _ = s.driver.poll(&r);
}

/// After `Cleanup` nothing the driver made for the instance is left:
/// no process, cgroup, bundle, VM directory, network namespace or veth;
/// its own directory stays. A second `Cleanup` is fine.
fn cleanup_leaves_nothing(s: &Subject) {
    let d = s.driver.as_ref();
    let l = launch(s, "cleaned", &["sh", "-c", STUBBORN]);
    let r = start(d, &l);
    let mut g = Guard::new(d, &l, &r);
    log_once_it_says(&l, "ready", s.patience);
    d.run(Command::Kill(&r)).unwrap();
    wait_exit(d, &r, Duration::from_secs(10)).expect("Kill did not stop it");
    let cleanup = Command::Cleanup {
        instance_id: &l.instance_id,
        handle: Some(&r),
    };
    d.run(cleanup).unwrap();
    g.r = None;
    assert!(!alive(r.pid), "its process is left");
    let left = traces(&r);
    assert!(left.is_empty(), "{} left {left:?}", d.name());
    assert!(l.dir.is_dir(), "the instance directory itself stays");
    d.run(Command::Cleanup {
        instance_id: &l.instance_id,
        handle: Some(&r),
    })
    .unwrap();
}

/// What exists on the host of the objects `r`'s handle names.
/// An `allowed_egress` policy is enforced (container and microvm: their
/// rules are tested in `container::an_egress_policy_refuses_what_it_does_not_list`
/// and `microvm::an_egress_policy_holds_for_the_guest`) or the instance is
/// not started at all (process): never run unrestricted.
fn an_egress_policy_is_enforced_or_refused(s: &Subject) {
    let mut l = launch(s, "egress", &["sh", "-c", "exec sleep 60"]);
    l.allowed_egress = Some(vec!["10.99.0.0/24".into()]);
    match s.driver.run(Command::Start(&l)) {
        Ok(shellwego_agent::driver::Reply::Started(r)) => {
            let _g = Guard::new(s.driver.as_ref(), &l, &r);
            assert_ne!(
                s.driver.name(),
                "process",
                "started under a policy it cannot enforce"
            );
            assert!(
                r.extra.contains_key("netns"),
                "no namespace of its own: {:?}",
                r.extra
            );
        }
        Ok(_) => panic!("no handle"),
        Err(e) => {
            assert_eq!(s.driver.name(), "process", "{e:#}");
            let e = format!("{e:#}");
            assert!(
                e.contains("allowed_egress cannot be enforced") && e.contains(s.driver.name()),
                "{e}"
            );
        }
    }
}

/// `exec` runs a command inside the running instance (its environment and
/// root filesystem), with every driver.
fn exec_runs_in_the_instance(s: &Subject) {
    let mut l = launch(
        s,
        "exec",
        &["sh", "-c", "echo inside > /marker; exec sleep 60"],
    );
    l.env.insert("GREETING".into(), "hello-from-env".into());
    let r = start(s.driver.as_ref(), &l);
    let _g = Guard::new(s.driver.as_ref(), &l, &r);
    let target = shellwego_agent::driver::ExecTarget {
        instance_id: &l.instance_id,
        root: &l.root,
        is_rootfs: l.is_rootfs,
        workdir: &l.workdir,
        env: &l.env,
    };
    // The app may not have written its marker yet (a microVM has just
    // booted): waited for, a few seconds at most.
    let script = "echo $GREETING; i=0; while [ ! -f /marker ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; cat /marker || echo no-marker";
    let argv: Vec<String> = ["sh", "-c", script].map(String::from).to_vec();
    let task = shellwego_api::agent::AgentTask {
        id: "tsk_conformance".into(),
        kind: "exec".into(),
        instance_id: l.instance_id.clone(),
        command: argv.clone(),
        stdin: String::new(),
        timeout_ms: 20_000,
        output_limit: 4096,
        logs: None,
        session: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(async {
        let started = shellwego_agent::exec::start(s.driver.as_ref(), &r, &target, &argv, None)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", s.driver.name()));
        shellwego_agent::exec::collect(started, &task).await
    });
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"hello-from-env"), "{out:?}");
    // In its root filesystem when it has one of its own (the process
    // driver runs as the agent's user here, without chroot, unless root).
    if s.driver.name() != "process" || shellwego_agent::host::is_root() {
        assert_eq!(lines.get(1), Some(&"inside"), "{out:?}");
    }
}

fn traces(r: &Running) -> Vec<String> {
    let mut paths: Vec<PathBuf> = vec![];
    if let Some(cgs) = r.extra.get("cgroups") {
        paths.extend(cgs.lines().map(PathBuf::from));
    }
    if let Some(rel) = r.extra.get("cgroup") {
        let rel = rel.trim_start_matches('/');
        paths.extend(
            shellwego_agent::host::cgroup_hierarchies()
                .iter()
                .map(|h| h.join(rel)),
        );
    }
    for key in ["bundle", "vm_dir"] {
        paths.extend(r.extra.get(key).map(PathBuf::from));
    }
    if let Some(n) = r.extra.get("netns") {
        paths.push(Path::new("/var/run/netns").join(n));
    }
    if let Some(v) = r.extra.get("veth") {
        paths.push(Path::new("/sys/class/net").join(v));
    }
    paths
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect()
}

/// The checks as tests of one driver: `conformance::<driver>::<check>`.
macro_rules! conformance {
    ($driver:ident) => {
        mod $driver {
            #[test]
            fn starts_and_serves_http() {
                if let Some(s) = super::$driver() {
                    super::starts_and_serves_http(&s);
                }
            }

            #[test]
            fn sigterm_stops_it_within_its_time() {
                if let Some(s) = super::$driver() {
                    super::sigterm_stops_it_within_its_time(&s);
                }
            }

            #[test]
            fn sigkill_after_the_stop_timeout() {
                if let Some(s) = super::$driver() {
                    super::sigkill_after_the_stop_timeout(&s);
                }
            }

            #[test]
            fn an_oom_kill_is_reported() {
                if let Some(s) = super::$driver() {
                    super::an_oom_kill_is_reported(&s);
                }
            }

            #[test]
            fn a_new_driver_re_adopts_it() {
                if let Some(s) = super::$driver() {
                    super::a_new_driver_re_adopts_it(&s);
                }
            }

            #[test]
            fn an_egress_policy_is_enforced_or_refused() {
                if let Some(s) = super::$driver() {
                    super::an_egress_policy_is_enforced_or_refused(&s);
                }
            }

            #[test]
            fn exec_runs_in_the_instance() {
                if let Some(s) = super::$driver() {
                    super::exec_runs_in_the_instance(&s);
                }
            }

            #[test]
            fn cleanup_leaves_nothing() {
                if let Some(s) = super::$driver() {
                    super::cleanup_leaves_nothing(&s);
                }
            }
        }
    };
}

conformance!(process);
conformance!(container);
conformance!(microvm);
