//! The whole platform on one machine (`shellwego up`): apps deployed from
//! an uploaded tarball and from an OCI image in a real registry, served
//! through the ingress, restarted when they crash, and re-adopted (same
//! instances, same processes) when everything is SIGKILLed and restarted.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_testkit::fixtures::{app_serving, hello_tar_gz, tar_gz, write_busybox_rootfs};
use shellwego_testkit::free_port;
use shellwego_testkit::platform::{instance_pid, processes_of, through, Platform, PlatformBuilder};

use crate::support::{bin, healthy, instance_ids, BIN};

/// `up` in `dir` with private targets allowed (the tests' registries and
/// file servers are on loopback), on `ports` when given.
pub(crate) fn up(dir: &Path, extra: &[&str]) -> PlatformBuilder {
    up_with_ssrf(dir, extra, "[ssrf]\nallow_private_targets = true\n")
}

/// `up` in `dir` with `ssrf` as its config file.
fn up_with_ssrf(dir: &Path, extra: &[&str], ssrf: &str) -> PlatformBuilder {
    let config = dir.join("shellwego.toml");
    std::fs::write(&config, ssrf).unwrap();
    Platform::up(bin())
        .dir(dir)
        .args(extra)
        .arg("--config")
        .arg(&config)
}

/// pid of an instance of `up`'s local agent, from its saved state.
pub(crate) fn pid_of(up: &Platform, inst: &str) -> Option<u32> {
    instance_pid(&up.agent_dir(), inst)
}

/// Stop `up` with SIGTERM (it stops its instances).
pub(crate) fn sigterm(up: &mut Platform) {
    up.terminate(Duration::from_secs(60));
}

fn delete_and_wait_gone(up: &Platform, id: &str) {
    let (st, _) = up.call(Method::DELETE, &format!("/v1/apps/{id}"), None);
    assert_eq!(st, 204);
    // Its processes are gone (a microVM's app runs inside QEMU, invisible
    // here), and so are the agent's instances of it (QEMU included).
    let instances = up.agent_dir().join("instances");
    let held_by_agent = || {
        std::fs::read_dir(&instances)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("state.json")).is_ok_and(|s| s.contains(id))
            })
    };
    let t = Instant::now();
    while !processes_of(id).is_empty() || held_by_agent() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "instances of a deleted app still run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_tarball_app_serves_through_the_ingress_survives_crashes_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut up = up(tmp.path(), &["--runtime", "process"]).start();
    let upload = up.upload(&hello_tar_gz().unwrap());
    let t0 = Instant::now();
    let (st, created) = up.call(
        Method::POST,
        "/v1/apps",
        Some(app_serving("hello", 2).body(&upload)),
    );
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let a = up.wait_app(&id, "2 healthy replicas", 60, |a| healthy(a, 2));
    println!("create to healthy: {:?}", t0.elapsed());
    // Started with a core to boot on; held to its 0.5 CPU once healthy.
    let first = pid_of(&up, &instance_ids(&a)[0]).unwrap();
    if shellwego_agent::cgroup::cpu_limit_of(first).is_some() {
        let t = Instant::now();
        while shellwego_agent::cgroup::cpu_limit_of(first) != Some(500) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "CPU limit after healthy: {:?}",
                shellwego_agent::cgroup::cpu_limit_of(first)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        eprintln!("no CPU cgroup on this host: the instance's CPU limit is not checked");
    }
    // Through the ingress, alternating over the replicas.
    let seen: Vec<String> = (0..4)
        .map(|_| {
            let (st, body) = up.through_ingress("hello");
            assert_eq!(st, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()["instance"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(seen[0], seen[1], "round-robin: {seen:?}");
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[1], seen[3]);
    let mut both = seen[..2].to_vec();
    both.sort();
    assert_eq!(both, instance_ids(&a));
    // An unknown app is a 404, a known app with nothing healthy a 503.
    assert_eq!(up.through_ingress("nope").0, 404);

    // Kill an instance's process: the agent restarts it, the app is
    // healthy again, and an app.crashed event says so.
    let victim = instance_ids(&a)[0].clone();
    let pid = pid_of(&up, &victim).unwrap();
    assert!(Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
    let a = up.wait_app(&id, "restarted after a crash", 60, |a| {
        healthy(a, 2)
            && a["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["id"] == victim.as_str() && i["restarts"] == 1)
    });
    assert_ne!(pid_of(&up, &victim), Some(pid));
    let ev = up.get(&format!(
        "/v1/events?filter[type]=app.crashed&filter[resource_id]={id}"
    ));
    assert_eq!(ev["data"].as_array().unwrap().len(), 1, "{ev}");
    assert_eq!(ev["data"][0]["metadata"]["instance_id"], victim.as_str());
    assert!(
        ev["data"][0]["metadata"]["reason"]
            .as_str()
            .unwrap()
            .contains("signal 9"),
        "{ev}"
    );

    // SIGKILL everything (control plane, agent, ingress) and start again:
    // same instances, same processes still serving, no duplicates.
    let before = instance_ids(&a);
    let pids: Vec<u32> = before.iter().map(|i| pid_of(&up, i).unwrap()).collect();
    up.kill();
    up.restart();
    let a = up.wait_app(&id, "healthy after a restart", 60, |a| healthy(a, 2));
    assert_eq!(instance_ids(&a), before);
    let after: Vec<u32> = before.iter().map(|i| pid_of(&up, i).unwrap()).collect();
    assert_eq!(after, pids, "the same processes were re-adopted");
    let mut running = processes_of(&id);
    running.sort();
    let mut expected = pids.clone();
    expected.sort();
    assert_eq!(running, expected, "no duplicates, no orphans");
    // The app read healthy may be the store's state from before the kill
    // (the restarted agent re-checks its instances before it reports them
    // healthy again): the restarted ingress routes once it has.
    let t = Instant::now();
    while up.through_ingress("hello").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the restarted ingress never routed hello: {}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Stop: nothing healthy, the ingress answers 503.
    let (st, _) = up.call(Method::POST, &format!("/v1/apps/{id}/actions/stop"), None);
    assert_eq!(st, 200);
    up.wait_app(&id, "stopped", 30, |a| a["status"] == "stopped");
    let t = Instant::now();
    loop {
        let (st, body) = up.through_ingress("hello");
        if st == 503 {
            assert!(body.contains("hello"), "{body}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still routed after stop: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(processes_of(&id).is_empty());
    delete_and_wait_gone(&up, &id);
    sigterm(&mut up);
}

/// Debian's docker-registry on a free loopback port, storing in `dir`.
struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> Option<(Registry, u16)> {
    let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.join("store").display()),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((Registry(child), port))
}

/// An image built by the test, pushed to a real registry, run by `up`
/// with `runtime` (none: the node's default), 2 replicas through the ingress.
fn image_from_a_real_registry(test: &str, runtime: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_registry, port)) = start_registry(tmp.path()) else {
        println!(
            "SKIPPED {test}: docker-registry is not installed (apt-get install docker-registry)"
        );
        return;
    };
    if !Path::new("/bin/busybox").exists() {
        println!("SKIPPED {test}: /bin/busybox is missing (apt-get install busybox-static)");
        return;
    }
    // The image: busybox, serving a page naming the instance that served it.
    let root = tmp.path().join("rootfs");
    write_busybox_rootfs(&root).unwrap();
    let layer = tar_gz(&root).unwrap();
    let config = shellwego_image::ImageConfig {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["mkdir -p /tmp/www/$SHELLWEGO_INSTANCE_ID && echo \"$SHELLWEGO_INSTANCE_ID\" > /tmp/www/$SHELLWEGO_INSTANCE_ID/index.html && exec /bin/busybox httpd -f -p $PORT -h /tmp/www/$SHELLWEGO_INSTANCE_ID".into()],
        env: vec!["GREETING=hi".into()],
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let digest = rt
        .block_on(shellwego_image::push::push_image(
            &format!("http://127.0.0.1:{port}"),
            "demo/web",
            "v1",
            &[layer],
            &config,
            None,
        ))
        .unwrap();
    let registry = format!("127.0.0.1:{port}");
    let mut args = vec!["--insecure-registry", &registry];
    if let Some(r) = runtime {
        args.extend(["--runtime", r]);
    }
    let mut up = up(tmp.path(), &args).start();
    let image = format!("{registry}/demo/web:v1");
    let (st, created) = up.call(
        Method::POST,
        "/v1/apps",
        Some(json!({"name": "web", "image": image, "replicas": 2, "health_check": {"path": "/", "interval": "1s"}})),
    );
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let a = up.wait_app(&id, "2 healthy replicas of the image", 120, |a| {
        healthy(a, 2)
    });
    if let Some(r) = runtime {
        assert_eq!(a["runtime"]["driver"], r, "{a:#}");
    }
    assert_eq!(
        a["image"],
        format!("{image}@{digest}"),
        "recorded by digest"
    );
    let seen: Vec<String> = (0..4)
        .map(|_| up.through_ingress("web").1.trim().to_string())
        .collect();
    assert_ne!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    let mut both = seen[..2].to_vec();
    both.sort();
    assert_eq!(both, instance_ids(&a));
    // A command in each instance, through the API and the agent channel (in
    // a microVM: the guest daemon), with the image's environment and files.
    for inst in &both {
        let (st, out) = up.call(
            Method::POST,
            &format!("/v1/apps/{id}/exec"),
            Some(json!({
                "command": ["/bin/sh", "-c", "echo $GREETING; cat /tmp/www/$SHELLWEGO_INSTANCE_ID/index.html; cat"],
                "instance_id": inst,
                "stdin": "in\n",
            })),
        );
        assert_eq!(st, 200, "{out}");
        assert_eq!(out["exit_code"], 0, "{out}");
        assert_eq!(out["stdout"], format!("hi\n{inst}\nin\n"), "{out}");
    }
    // An interactive session (WebSocket) into one, from `shellwego ssh`
    // with its input from a pipe.
    let o = shellwego_testkit::platform::run_with_stdin(
        &mut up.cli(&["ssh", "--app", "web", "--instance", &both[0]]),
        "echo from-ssh $GREETING $SHELLWEGO_INSTANCE_ID\nexit 5\n",
    );
    assert_eq!(o.code, Some(5), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains(&format!("from-ssh hi {}", both[0])),
        "{}",
        o.stdout
    );
    delete_and_wait_gone(&up, &id);
    sigterm(&mut up);
}

#[test]
fn an_image_from_a_real_registry_runs_pinned_by_digest() {
    image_from_a_real_registry("an_image_from_a_real_registry_runs_pinned_by_digest", None);
}

/// The same image in QEMU microVMs (TCG here, KVM where it works).
#[test]
fn an_image_runs_in_microvms() {
    if let Err(why) = shellwego_agent::microvm::MicrovmDriver::probe() {
        if std::env::var_os("SHELLWEGO_REQUIRE_MICROVM").is_some() {
            panic!("the microvm driver must run here but cannot: {why}");
        }
        println!("SKIPPED an_image_runs_in_microvms: {why}");
        return;
    }
    image_from_a_real_registry("an_image_runs_in_microvms", Some("microvm"));
}

/// A plain HTTP file server on loopback for `source.url`: `/<name>` answers
/// the file's bytes; `/huge.tgz` claims 2 GiB (to hit the size limit).
fn serve_files(files: Vec<(String, Vec<u8>)>) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            if path == "/huge.tgz" {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            match files.iter().find(|(n, _)| path == format!("/{n}")) {
                Some((_, body)) => {
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        }
    });
    port
}

/// Can this host limit memory (a memory cgroup we may create)?
fn memory_cgroup_usable() -> Result<(), String> {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let base = if v1.join("memory.limit_in_bytes").exists() {
        v1.to_path_buf()
    } else if std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        return Err("no memory cgroup controller on this host".into());
    };
    let probe = base.join(format!("shellwego-test-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| {
        format!(
            "cannot create a memory cgroup under {}: {e}",
            base.display()
        )
    })?;
    let _ = std::fs::remove_dir(&probe);
    Ok(())
}

#[test]
fn tarballs_from_a_url_run_and_an_app_over_its_memory_limit_is_reported_oom_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = hello_tar_gz().unwrap();
    let hog_dir = tmp.path().join("hog");
    std::fs::create_dir(&hog_dir).unwrap();
    std::fs::write(hog_dir.join("Procfile"), "web: exec python3 hog.py\n").unwrap();
    // Touches every page of 256 MiB, far over its 64 MiB limit.
    std::fs::write(
        hog_dir.join("hog.py"),
        "import time\nx = b'x' * (256 << 20)\ntime.sleep(3600)\n",
    )
    .unwrap();
    let hog = tar_gz(&hog_dir).unwrap();
    let files = serve_files(vec![("hello.tgz".into(), hello), ("hog.tgz".into(), hog)]);
    let mut up = up(tmp.path(), &["--runtime", "process"]).start();

    // `{type: "tarball", url}`: fetched by the agent, served through the ingress.
    let (st, created) = up.call(
        Method::POST,
        "/v1/apps",
        Some(json!({"name": "fromurl", "source": {"type": "tarball", "url": format!("http://127.0.0.1:{files}/hello.tgz")},
            "health_check": {"path": "/health", "interval": "1s"}})),
    );
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let a = up.wait_app(&id, "healthy from a url", 60, |a| healthy(a, 1));
    let (st, body) = up.through_ingress("fromurl");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&instance_ids(&a)[0]), "{body}");

    // `shellwego router` on its own, fed from the same store, routes it too.
    let rport = free_port();
    let mut router = up.router(rport);
    let via_router = |host: &str| through(rport, host);
    let t = Instant::now();
    loop {
        if let Ok((200, body)) = via_router("fromurl") {
            assert!(body.contains(&instance_ids(&a)[0]), "{body}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the router never routed fromurl"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(via_router("nope").unwrap().0, 404);

    // An archive over the size limit is refused with the reason.
    let (st, created) = up.call(
        Method::POST,
        "/v1/apps",
        Some(json!({"name": "huge", "source": {"type": "tarball", "url": format!("http://127.0.0.1:{files}/huge.tgz")}})),
    );
    assert_eq!(st, 201, "{created}");
    let huge = created["id"].as_str().unwrap().to_string();
    up.wait_app(&huge, "the size limit reported", 30, |a| {
        a["instances"].as_array().is_some_and(|is| {
            is.iter().any(|i| {
                i["status_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("larger than 1 GiB"))
            })
        })
    });

    // Over its memory limit: OOM-killed, and said so.
    if let Err(why) = memory_cgroup_usable() {
        eprintln!("SKIPPED the OOM part: {why}; the process driver cannot limit memory here");
        router.kill();
        sigterm(&mut up);
        return;
    }
    let (st, created) = up.call(
        Method::POST,
        "/v1/apps",
        Some(json!({"name": "hog", "resources": {"memory": "64m"},
            "source": {"type": "tarball", "url": format!("http://127.0.0.1:{files}/hog.tgz")}})),
    );
    assert_eq!(st, 201, "{created}");
    let hog = created["id"].as_str().unwrap().to_string();
    let a = up.wait_app(&hog, "an OOM kill reported on the instance", 60, |a| {
        a["instances"].as_array().is_some_and(|is| {
            is.iter().any(|i| {
                i["status_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("out of memory"))
            })
        })
    });
    assert_ne!(a["status"], "running", "{a:#}");
    let ev = up.get(&format!(
        "/v1/events?filter[type]=app.crashed&filter[resource_id]={hog}"
    ));
    let first = &ev["data"][0];
    assert_eq!(first["metadata"]["kind"], "oom_killed", "{ev:#}");
    assert!(
        first["metadata"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("out of memory")),
        "{ev:#}"
    );
    for id in [&id, &huge, &hog] {
        delete_and_wait_gone(&up, id);
    }
    // The router follows: a deleted app is unknown within a second or two.
    let t = Instant::now();
    while via_router("fromurl").unwrap().0 != 404 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the router still routes a deleted app"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    router.kill();
    sigterm(&mut up);
}

#[test]
fn an_agent_asked_for_a_driver_it_does_not_know_says_so_and_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "agent",
            "--control-plane",
            "http://127.0.0.1:9",
            "--join-token",
            "sw_join_x",
            "--drivers",
            "process,firecracker",
            "--data-dir",
        ])
        .arg(tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--drivers firecracker: unknown driver"),
        "{err}"
    );
}

/// Pids of the microvm probe guests an agent process started: QEMU itself,
/// not the `setpriv` that execs it (until setpriv has set the parent-death
/// signal, which it does before the exec, killing the agent could not
/// take the guest along).
fn probe_guests_of(agent: u32) -> Vec<u32> {
    let mark = format!("shellwego-microvm-probe-{agent}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&mark))
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                    exe.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"))
                })
        })
        .collect()
}

/// An agent killed while it probes QEMU (up to 10 s where KVM stalls)
/// leaves no guest behind.
#[test]
fn an_agent_killed_mid_probe_leaves_no_guest_running() {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        if std::env::var_os("SHELLWEGO_REQUIRE_MICROVM").is_some() {
            panic!("qemu-system-x86_64 must be installed here");
        }
        println!(
            "SKIPPED an_agent_killed_mid_probe_leaves_no_guest_running: no qemu-system-x86_64"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = Command::new(BIN)
        .args([
            "agent",
            "--control-plane",
            "http://127.0.0.1:9",
            "--join-token",
            "sw_join_x",
            "--drivers",
            "microvm",
            "--data-dir",
        ])
        .arg(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while probe_guests_of(agent.id()).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the agent never started a probe guest"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
    let t = Instant::now();
    loop {
        let left = probe_guests_of(agent.id());
        if left.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "probe guests outlived the agent: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SSRF guard through the whole platform (issue 11, item 6): the config
/// file's `[ssrf]` section governs the control plane, which refuses a source
/// URL on loopback when it is given, and the node agent, which refuses to
/// follow an allowed server's redirect to loopback when it fetches.
#[test]
fn source_urls_reaching_refused_addresses_are_refused_when_given_and_when_fetched() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    // What must not be reached: it counts the connections it gets.
    let secret = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let secret_port = secret.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reached.clone();
    std::thread::spawn(move || {
        for s in secret.incoming() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    // The server the operator allowed, redirecting to it.
    let allowed = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in allowed.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                format!("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{secret_port}/hello.tgz\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    let mut up = up_with_ssrf(
        tmp.path(),
        &["--runtime", "process"],
        "[ssrf]\nallow = [\"127.0.0.2/32\"]\n",
    )
    .start();

    // Given: loopback is refused, naming the field and the way to allow it.
    for url in [
        format!("http://127.0.0.1:{secret_port}/hello.tgz"),
        "http://169.254.169.254/latest/meta-data".to_string(),
    ] {
        let (st, p) = up.call(
            reqwest::Method::POST,
            "/v1/apps",
            Some(json!({"name": "direct", "source": {"type": "tarball", "url": url}})),
        );
        assert_eq!(st, 400, "{p:#}");
        assert_eq!(p["errors"][0]["field"], "source.url", "{p:#}");
        assert!(
            p["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("[ssrf]"),
            "{p:#}"
        );
    }

    // Fetched: the allowed server is asked, its redirect is not followed.
    let (st, created) = up.call(
        Method::POST,
        "/v1/apps",
        Some(json!({"name": "redirected", "source": {"type": "tarball", "url": format!("http://127.0.0.2:{allowed_port}/hello.tgz")}})),
    );
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let a = up.wait_app(&id, "the agent's refusal reported", 60, |a| {
        a["instances"].as_array().is_some_and(|is| {
            is.iter().any(|i| {
                i["status_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("refusing to fetch"))
            })
        })
    });
    let reason = a["instances"][0]["status_reason"].as_str().unwrap();
    assert!(
        reason.contains("127.0.0.1 is a loopback address"),
        "{reason}"
    );
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    delete_and_wait_gone(&up, &id);
    sigterm(&mut up);
}
