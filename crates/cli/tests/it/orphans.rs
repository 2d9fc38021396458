//! What `up` leaves on the host: killed, it is re-adopted by the next `up`
//! on the same data directory; started on an emptied data directory, it
//! removes what the old one left (processes, containers, cgroups, network
//! namespaces, mounts), never another agent's; stopped with Ctrl-C, it
//! stops its instances unless started with `--keep-instances`.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use nix::sys::signal::Signal;
use shellwego_testkit::fixtures::app_serving;
use shellwego_testkit::free_port;
use shellwego_testkit::platform::{alive, processes_of, processes_with_env, Platform};

use crate::platform::{pid_of, up};
use crate::support::{healthy, instance_ids, BIN};

/// A healthy app of the hello example with `replicas` replicas: (id, its
/// instance ids).
fn hello_app(up: &Platform, name: &str, replicas: usize) -> (String, Vec<String>) {
    let created = app_serving(name, replicas as i64)
        .with(json!({"resources": {"cpu": "0.1", "memory": "128m"}}))
        .create_on(up);
    let id = created["id"].as_str().unwrap().to_string();
    let a = up.wait_app(&id, "healthy replicas", 90, |a| healthy(a, replicas));
    (id, instance_ids(&a))
}

fn pids_of(up: &Platform, ids: &[String]) -> Vec<u32> {
    ids.iter()
        .map(|i| pid_of(up, i).expect("a running instance has a pid"))
        .collect()
}

/// Processes whose environment names one of `instances`.
/// The processes of `pids` whose parent is not among them (a container's
/// init, not the app it runs).
fn top_processes(pids: Vec<u32>) -> Vec<u32> {
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid …: comm may hold spaces, so after the last ')'.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    pids.iter()
        .copied()
        .filter(|p| parent(*p).is_none_or(|pp| !pids.contains(&pp)))
        .collect()
}

fn processes_of_instances(instances: &[String]) -> Vec<u32> {
    let needles: Vec<String> = instances
        .iter()
        .map(|i| format!("SHELLWEGO_INSTANCE_ID={i}"))
        .collect();
    processes_with_env(&needles)
}

/// Directories at most `depth` levels under `dir`.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
            walk(&e.path(), depth - 1, out);
        }
    }
}

/// Everything on this host that belongs to one of `instances`, whatever
/// its owner or name scheme: processes (by environment), OCI runtime state
/// (`runc list` under every root in /run/shellwego), cgroups (in every
/// hierarchy, under `shellwego/`), network namespaces and mounts (by the
/// instance id in their names, or mounts under `data`).
fn leftovers(instances: &[String], data: &Path) -> Vec<String> {
    let mut out = vec![];
    for p in processes_of_instances(instances) {
        out.push(format!("process {p}"));
    }
    let mut roots = vec![];
    walk(Path::new("/run/shellwego"), 2, &mut roots);
    for root in roots {
        let Ok(o) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        else {
            continue;
        };
        for id in String::from_utf8_lossy(&o.stdout).lines() {
            if instances.iter().any(|i| i == id.trim()) {
                out.push(format!("runc container {id} in {}", root.display()));
            }
        }
    }
    let mut cgroups = vec![];
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        walk(&h.path().join("shellwego"), 4, &mut cgroups);
    }
    walk(Path::new("/sys/fs/cgroup/shellwego"), 4, &mut cgroups);
    for c in cgroups {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        if instances.contains(&name) {
            out.push(format!("cgroup {}", c.display()));
        }
    }
    let netns = Command::new("ip").args(["netns", "list"]).output();
    for line in netns
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
    {
        if instances.iter().any(|i| line.contains(i.as_str())) {
            out.push(format!("netns {line}"));
        }
    }
    let data = data.to_string_lossy().into_owned();
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        if instances.iter().any(|i| line.contains(i.as_str())) || line.contains(&data) {
            out.push(format!("mount {line}"));
        }
    }
    out
}

fn wait_no_leftovers(instances: &[String], data: &Path, log: &str) {
    let t = Instant::now();
    loop {
        let left = leftovers(instances, data);
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "still on the host: {left:#?}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn orphan_events(up: &Platform) -> Vec<Value> {
    up.get("/v1/events?filter[type]=instance.orphan_removed&limit=100")["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The container driver works here, or why not (printed; a failure when
/// SHELLWEGO_REQUIRE_CONTAINER is set, as in CI).
pub(crate) fn containers_work() -> bool {
    match shellwego_agent::container::ContainerDriver::probe() {
        Ok(_) => true,
        Err(why) => {
            if std::env::var_os("SHELLWEGO_REQUIRE_CONTAINER").is_some() {
                panic!("the container driver must run here but cannot: {why}");
            }
            eprintln!("SKIPPED: no container driver here: {why}");
            false
        }
    }
}

/// Wait until the agent of an `up` started after `before` lines of
/// `up.log` has synced with its control plane (so it has adopted what it
/// could and swept the rest: `wait_app` alone could be answered from
/// before the restart).
fn wait_agent_synced(up: &Platform, before: usize) {
    let t = Instant::now();
    loop {
        let log = up.log();
        let fresh: Vec<&str> = log.lines().skip(before).collect();
        if fresh.iter().any(|l| l.contains("desired state changed")) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the agent did not sync: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_lines(up: &Platform) -> usize {
    up.log().lines().count()
}

/// Send `up` `sig` and wait until it exits, successfully; how long it took.
fn signal(up: &mut Platform, sig: Signal) -> Duration {
    let t = Instant::now();
    let st = up.signal(sig);
    assert!(st.success(), "up exited with {st}: {}", up.log());
    t.elapsed()
}

#[test]
fn a_killed_up_re_adopts_its_containers_and_an_emptied_data_dir_removes_them_not_others() {
    if !containers_work() {
        return;
    }
    // Another agent on this machine, with a container of its own.
    let other = tempfile::tempdir().unwrap();
    let b = up(other.path(), &["--runtime", "container"]).start();
    let (b_app, b_ids) = hello_app(&b, "bystander", 1);
    let b_pids = pids_of(&b, &b_ids);

    let tmp = tempfile::tempdir().unwrap();
    let mut a = up(tmp.path(), &["--runtime", "container"]).start();
    let (app, ids) = hello_app(&a, "hello", 2);
    let pids = pids_of(&a, &ids);

    // SIGKILL, then `up` on the same data dir: the same containers (same
    // init pids), not restarted, nothing taken for an orphan.
    a.kill();
    let lines = log_lines(&a);
    a.restart();
    wait_agent_synced(&a, lines);
    let after = a.wait_app(&app, "healthy after a restart", 60, |v| healthy(v, 2));
    assert_eq!(instance_ids(&after), ids);
    assert_eq!(pids_of(&a, &ids), pids, "re-adopted, not restarted");
    assert!(after["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["restarts"] == 0));
    assert!(orphan_events(&a).is_empty(), "{:?}", orphan_events(&a));
    // Each container's init and the app under it: the inits count.
    let mut running = top_processes(processes_of(&app));
    running.sort();
    let mut expected = pids.clone();
    expected.sort();
    assert_eq!(running, expected, "no duplicates");

    // SIGKILL, remove the data dir (`rm -rf`: what is mounted stays), and
    // `up` on the emptied path: nothing of the old instances is left.
    let data = tmp.path().join("data");
    assert!(!leftovers(&ids, &data).is_empty(), "the test sees nothing");
    a.kill();
    // (`rm -rf` goes on past what it cannot remove; std's remove_dir_all
    // stops at the first mount point.)
    let _ = Command::new("rm").arg("-rf").arg(&data).status();
    assert!(!data.join("agent/node-credential.toml").exists());
    assert!(!data
        .join("agent/instances")
        .join(&ids[0])
        .join("state.json")
        .exists());
    a.restart();
    // (The new `up` mounts nothing under the data dir: it has no apps.)
    wait_no_leftovers(&ids, &data, &a.log());
    assert!(pids.iter().all(|p| !alive(*p)));
    // Each is reported, on the node.
    let t = Instant::now();
    let mut events = orphan_events(&a);
    while events.len() < ids.len() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        events = orphan_events(&a);
    }
    let mut reported: Vec<String> = events
        .iter()
        .map(|e| e["metadata"]["instance_id"].as_str().unwrap().to_string())
        .collect();
    reported.sort();
    assert_eq!(reported, ids, "{events:#?}");
    for e in &events {
        assert_eq!(e["resource"]["type"], "node", "{e}");
        let reason = e["metadata"]["reason"].as_str().unwrap();
        assert!(reason.contains("container"), "{reason}");
    }

    // The other agent's container was not touched.
    assert_eq!(pids_of(&b, &b_ids), b_pids);
    assert!(b_pids.iter().all(|p| alive(*p)));
    b.wait_app(&b_app, "the bystander still healthy", 10, |v| healthy(v, 1));
    let log_b = b.log();
    drop(a);
    drop(b);
    let data_b = other.path().join("data");
    wait_no_leftovers(&b_ids, &data_b, &log_b);
}

#[test]
fn ctrl_c_stops_the_instances_of_up_unless_it_keeps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, ingress) = (free_port(), free_port());
    let data = tmp.path().join("data");
    let start = |extra: &[&str]| {
        let mut args = vec!["--runtime", "process"];
        args.extend(extra);
        up(tmp.path(), &args).ports(api, ingress).start()
    };
    let mut up = start(&[]);
    let (app, ids) = hello_app(&up, "hello", 1);
    let pids = pids_of(&up, &ids);

    // SIGKILL: the process is re-adopted by the next `up`.
    up.kill();
    let lines = log_lines(&up);
    let mut up = start(&[]);
    wait_agent_synced(&up, lines);
    up.wait_app(&app, "healthy after a restart", 60, |v| healthy(v, 1));
    assert_eq!(pids_of(&up, &ids), pids, "re-adopted, not restarted");
    assert!(orphan_events(&up).is_empty());

    // Ctrl-C: the instance stops (quickly: the app handles SIGTERM), and
    // its cgroups go.
    let took = signal(&mut up, Signal::SIGINT);
    println!("up stopped with its instance in {took:?}");
    assert!(!alive(pids[0]));
    assert!(processes_of(&app).is_empty());
    assert_eq!(leftovers(&ids, &data), Vec::<String>::new());
    assert!(up.log().contains("stopping the instances"), "{}", up.log());

    // `up --keep-instances` restarts it (still wanted); Ctrl-C leaves it.
    let lines = log_lines(&up);
    let mut up = start(&["--keep-instances"]);
    wait_agent_synced(&up, lines);
    let t = Instant::now();
    while pid_of(&up, &ids[0]).is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "not restarted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = up.wait_app(&app, "restarted", 60, |v| healthy(v, 1));
    assert_eq!(instance_ids(&v), ids);
    let kept = pids_of(&up, &ids);
    assert_ne!(kept, pids);
    signal(&mut up, Signal::SIGINT);
    assert!(alive(kept[0]), "--keep-instances stopped it");
    assert_eq!(processes_of(&app), kept);

    // And the next `up` re-adopts it; SIGTERM stops it like Ctrl-C.
    let lines = log_lines(&up);
    let mut up = start(&[]);
    wait_agent_synced(&up, lines);
    up.wait_app(&app, "healthy after a restart", 60, |v| healthy(v, 1));
    assert_eq!(pids_of(&up, &ids), kept);
    signal(&mut up, Signal::SIGTERM);
    assert!(!alive(kept[0]));
    assert_eq!(leftovers(&ids, &data), Vec::<String>::new());
}

#[test]
fn agent_help_says_it_keeps_its_instances_and_up_help_says_it_stops_them() {
    let help = |cmd: &str| {
        let o = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let agent = help("agent");
    assert!(agent.contains("keep running when it stops"), "{agent}");
    assert!(agent.contains("--owner-tag"), "{agent}");
    let up = help("up");
    assert!(up.contains("--keep-instances"), "{up}");
    assert!(up.contains("--owner-tag"), "{up}");
}
