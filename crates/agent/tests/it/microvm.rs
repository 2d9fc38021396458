//! The microvm driver booting real QEMU guests (KVM where it works, TCG
//! otherwise) with busybox root filesystems. Skipped (with the reason
//! printed) where `MicrovmDriver::probe()` finds no QEMU, no kernel or no
//! static busybox, or no guest boots; set `SHELLWEGO_REQUIRE_MICROVM=1` to
//! make that a failure instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shellwego_agent::driver::{Command, Driver, ExecTarget, Launch, Running};
use shellwego_agent::exec;
use shellwego_agent::microvm::MicrovmDriver;
use shellwego_api::agent::AgentTask;

use crate::support::{self, free_port, skip, wait_exit, Guard, REQUIRE_MICROVM};

pub fn driver() -> Option<MicrovmDriver> {
    let t = Instant::now();
    match MicrovmDriver::probe() {
        Ok(d) => {
            eprintln!(
                "microvm driver: accel {}, kernel {}, probe took {:?}",
                d.host().accel.name(),
                d.host().kernel.display(),
                t.elapsed()
            );
            Some(d)
        }
        Err(why) => {
            skip(
                Some(REQUIRE_MICROVM),
                &format!("the microvm driver does not work here: {why}"),
            );
            None
        }
    }
}

fn busybox_rootfs(base: &Path) -> Option<PathBuf> {
    support::busybox_rootfs(base)
        .map_err(|why| skip(Some(REQUIRE_MICROVM), &why))
        .ok()
}

fn launch(base: &Path, name: &str, root: &Path, argv: &[&str], memory: i64) -> Launch {
    let instance_id = format!("t{}-{name}", std::process::id());
    let mut l = support::launch(base, &instance_id, root, argv);
    let port = free_port();
    l.workdir = "/www".into();
    l.env = BTreeMap::from([
        ("GREETING".to_string(), "hi 'there'".to_string()),
        ("PORT".to_string(), port.to_string()),
    ]);
    l.port = port;
    l.memory = memory;
    l
}

fn start(d: &MicrovmDriver, l: &Launch) -> Running {
    support::start(d, l)
}

/// A real HTTP/1.0 GET over the forwarded port, retried until the guest
/// answers (QEMU accepts and closes connections before the guest listens).
fn http_get(port: u16, path: &str, within: Duration) -> String {
    support::http_get(SocketAddr::from(([127, 0, 0, 1], port)), path, within)
}

const SERVE: &str =
    "echo \"$GREETING\" > greeting.txt; echo serving on $PORT; exec httpd -f -p $PORT -h /www";

#[test]
fn serves_http_over_the_forwarded_port_and_stops_on_terminate() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let l = launch(tmp.path(), "web", &root, &["sh", "-c", SERVE], 64 << 20);
    let t = Instant::now();
    let r = start(&d, &l);
    let mut g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    assert_eq!(r.driver, "microvm");
    assert!(!r.extra.contains_key("ip"), "reached at the node's address");
    println!("extra: {:?}", r.extra);
    // QEMU's cgroup (where the host has one): the guest's RAM plus QEMU's own.
    let guest_mib: i64 = r.extra["guest_memory_mib"].parse().unwrap();
    assert!(guest_mib >= 128, "{guest_mib}");
    if let Some(cgs) = r.extra.get("cgroups") {
        let want = (guest_mib + shellwego_agent::microvm::QEMU_OVERHEAD_MIB) << 20;
        let limit = cgs.lines().find_map(|d| {
            ["memory.limit_in_bytes", "memory.max"]
                .iter()
                .find_map(|f| std::fs::read_to_string(Path::new(d).join(f)).ok())
        });
        assert_eq!(limit.map(|l| l.trim().to_string()), Some(want.to_string()));
    }
    let body = http_get(l.port, "/index.html", Duration::from_secs(180));
    println!(
        "boot to first HTTP answer: {:?} (accel {})",
        t.elapsed(),
        r.extra["accel"]
    );
    assert!(body.contains("hello from the image"), "{body}");
    let body = http_get(l.port, "/greeting.txt", Duration::from_secs(10));
    assert!(body.contains("hi 'there'"), "{body}");
    assert!(d.poll(&r).is_none());
    // The image is untouched: the guest wrote into its own copy.
    assert!(!root.join("www/greeting.txt").exists());

    let t = Instant::now();
    d.run(Command::Terminate(&r)).unwrap();
    let exit = wait_exit(&d, &r, Duration::from_secs(60)).expect("still running after Terminate");
    println!("terminate to exit: {:?}: {}", t.elapsed(), exit.describe());
    // busybox httpd has no SIGTERM handler: killed by it, in the guest.
    assert_eq!(exit.signal, Some(15), "{exit:?}");
    assert!(!exit.oom_killed);
    let log = std::fs::read_to_string(&l.stdout).unwrap();
    println!("console log:\n{log}");
    assert!(log.contains(&format!("serving on {}", l.port)), "{log}");
    g.r = None;
    d.run(Command::Cleanup {
        instance_id: &l.instance_id,
        handle: Some(&r),
    })
    .unwrap();
    assert!(!l.dir.join("microvm").exists());
}

#[test]
fn the_exit_code_and_output_come_back() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let l = launch(
        tmp.path(),
        "exit3",
        &root,
        &["sh", "-c", "echo \"in $(pwd) as $GREETING\"; exit 3"],
        64 << 20,
    );
    let r = start(&d, &l);
    let _g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    let exit = wait_exit(&d, &r, Duration::from_secs(180)).expect("did not exit");
    let log = std::fs::read_to_string(&l.stdout).unwrap();
    assert_eq!(exit.code, Some(3), "{exit:?}; log: {log}");
    assert!(log.contains("in /www as hi 'there'"), "{log}");
}

#[test]
fn adopted_by_a_new_driver_after_an_agent_restart() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let l = launch(tmp.path(), "adopt", &root, &["sh", "-c", SERVE], 64 << 20);
    let r = start(&d, &l);
    // What the reconciler saves and reads back.
    let saved: Running = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    drop(d);
    let d2 = MicrovmDriver::probe().unwrap();
    let _g = Guard {
        d: &d2,
        id: l.instance_id.clone(),
        r: Some(saved.clone()),
    };
    assert!(d2.adopt(&saved));
    assert!(d2.poll(&saved).is_none());
    let body = http_get(l.port, "/index.html", Duration::from_secs(180));
    assert!(body.contains("hello from the image"), "{body}");
    d2.run(Command::Terminate(&saved)).unwrap();
    let exit = wait_exit(&d2, &saved, Duration::from_secs(60)).expect("still running");
    // Not our child: QEMU's status is unknown, the guest's is in the log.
    assert_eq!(exit.signal, Some(15), "{exit:?}");
    assert!(!d2.adopt(&saved));
}

#[test]
fn the_guest_kernel_ooms_a_hog() {
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
    let exit = wait_exit(&d, &r, Duration::from_secs(300)).expect("the hog is still running");
    let log = std::fs::read_to_string(&l.stdout).unwrap();
    println!("hog: {}; its log:\n{log}", exit.describe());
    assert!(exit.oom_killed, "{exit:?}; log: {log}");
    // The guest kernel's OOM killer, not the host's (QEMU's cgroup).
    assert!(log.contains("Out of memory: Killed process"), "log: {log}");
    assert!(!log.contains("survived"), "log: {log}");
}

/// A non-loopback IPv4 address of the host outside the instance networks,
/// to connect to from a guest (the traffic stays on this machine).
fn host_address() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "inet");
            w.nth(1)?.split('/').next().map(str::to_string)
        })
        .find(|a| !a.starts_with("10.89.") && !a.starts_with("10.99.") && !a.starts_with("10.90."))
}

/// An app's `allowed_egress` holds for a microVM: QEMU (whose sockets
/// carry the guest's connections) runs in a network namespace of the VM's
/// own with the policy there. A guest allowed the host's address reaches a
/// listener on it; one allowed only another address is refused. Both serve
/// at their namespace's address.
#[test]
fn an_egress_policy_holds_for_the_guest() {
    let Some(d) = driver() else { return };
    if !shellwego_agent::host::is_root() {
        skip(Some(REQUIRE_MICROVM), "an egress policy needs root");
        return;
    }
    let Some(target) = host_address() else {
        println!("SKIPPED: this host has no global IPv4 address to connect to");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let listener = std::net::TcpListener::bind((target.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let script = format!(
        "R=EGRESS_REFUSED; for i in 1 2 3; do if nc -w 3 {target} {port} </dev/null; then R=EGRESS_OK; break; fi; sleep 1; done; \
         echo \"egress outcome: $R\"; exec httpd -f -p $PORT -h /www"
    );
    // Some documentation address that is not the target (this sandbox's
    // own address is one).
    let other = ["203.0.113.7", "198.51.100.7"]
        .into_iter()
        .find(|a| *a != target)
        .unwrap();
    let mut vms = vec![];
    for (name, allowed) in [
        ("eg-allowed", format!("{target}/32")),
        ("eg-refused", format!("{other}/32")),
    ] {
        let mut l = launch(tmp.path(), name, &root, &["sh", "-c", &script], 64 << 20);
        l.allowed_egress = Some(vec![allowed]);
        let r = start(&d, &l);
        assert!(r.extra.contains_key("netns"), "{:?}", r.extra);
        vms.push((l, r));
    }
    let _guards: Vec<Guard> = vms
        .iter()
        .map(|(l, r)| Guard {
            d: &d,
            id: l.instance_id.clone(),
            r: Some(r.clone()),
        })
        .collect();
    let outcome = |l: &Launch| {
        let t = Instant::now();
        loop {
            let log = std::fs::read_to_string(&l.stdout).unwrap_or_default();
            if let Some(line) = log.lines().find(|x| x.contains("egress outcome: ")) {
                return line.trim().to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "no outcome; console: {log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let allowed = outcome(&vms[0].0);
    let refused = outcome(&vms[1].0);
    println!("allowed: {allowed}; refused: {refused}");
    assert!(allowed.ends_with("EGRESS_OK"), "{allowed}");
    assert!(refused.ends_with("EGRESS_REFUSED"), "{refused}");
    // Each serves at its namespace's address.
    for (l, r) in &vms {
        let addr = SocketAddr::new(r.extra["ip"].parse().unwrap(), l.port);
        let body = support::http_get(addr, "/index.html", Duration::from_secs(60));
        assert!(body.contains("hello from the image"), "{body}");
    }
}

fn exec_task(command: &[&str], stdin: &str, timeout_ms: u64, limit: u64) -> AgentTask {
    AgentTask {
        id: "tsk_microvm".into(),
        kind: "exec".into(),
        instance_id: String::new(),
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.into(),
        timeout_ms,
        output_limit: limit,
        logs: None,
        session: None,
    }
}

/// Commands run inside the guest through its guest daemon: environment,
/// working directory, stdin, exit code, stderr, a timeout that kills what
/// the command started (and the guest keeps answering afterwards), the
/// output cap, several at once, and a terminal (size, resize, Ctrl-C as
/// SIGINT).
#[test]
fn exec_runs_in_the_guest() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let l = launch(tmp.path(), "exec", &root, &["sh", "-c", SERVE], 64 << 20);
    let r = start(&d, &l);
    let _g = Guard {
        d: &d,
        id: l.instance_id.clone(),
        r: Some(r.clone()),
    };
    let body = http_get(l.port, "/index.html", Duration::from_secs(180));
    assert!(body.contains("hello from the image"), "{body}");
    let target = ExecTarget {
        instance_id: &l.instance_id,
        root: &l.root,
        is_rootfs: true,
        workdir: &l.workdir,
        env: &l.env,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |task: AgentTask| {
        rt.block_on(async {
            let s = exec::start(&d, &r, &target, &task.command, None)
                .await
                .expect("started");
            exec::collect(s, &task).await
        })
    };

    let t = Instant::now();
    let out = run(exec_task(
        &[
            "sh",
            "-c",
            "echo \"$GREETING in $(pwd)\"; cat greeting.txt; cat; echo oops >&2; exit 3",
        ],
        "from stdin\n",
        30_000,
        4096,
    ));
    println!("first exec (connects): {:?}: {out:?}", t.elapsed());
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    assert_eq!(
        out.stdout, "hi 'there' in /www\nhi 'there'\nfrom stdin\n",
        "{out:?}"
    );
    assert_eq!(out.stderr, "oops\n");
    assert!(!out.timed_out && !out.truncated && out.error.is_none());

    // A program that is not there: 127 and why, as a shell says.
    let out = run(exec_task(&["no-such-program"], "", 10_000, 4096));
    assert_eq!(out.exit_code, Some(127), "{out:?}");
    assert!(out.stderr.contains("no-such-program"), "{out:?}");

    // The timeout kills the command and what it started in the background.
    let t = Instant::now();
    let out = run(exec_task(
        &["sh", "-c", "sleep 300 & echo started; sleep 301"],
        "",
        1_500,
        4096,
    ));
    println!("timed out after {:?}: {out:?}", t.elapsed());
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, None);
    assert_eq!(out.stdout, "started\n");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The guest still answers, and nothing of that command is left.
    let out = run(exec_task(&["busybox", "ps"], "", 10_000, 64 * 1024));
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(!out.stdout.contains("sleep 30"), "{}", out.stdout);
    assert!(out.stdout.contains("httpd"), "{}", out.stdout);

    // The cap on output: the first bytes and the flag.
    let out = run(exec_task(
        &[
            "sh",
            "-c",
            "head -c 300000 /dev/zero | tr '\\0' a; echo done >&2",
        ],
        "",
        60_000,
        100_000,
    ));
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(out.stdout.len(), 100_000);
    assert!(out.truncated && out.stdout.bytes().all(|b| b == b'a'));
    assert_eq!(out.stderr, "done\n");

    // Several at once, each its own output.
    let outs = rt.block_on(async {
        let mut hs = vec![];
        for i in 0..4 {
            let task = exec_task(
                &["sh", "-c", &format!("sleep 1; echo n{i}")],
                "",
                30_000,
                4096,
            );
            let s = exec::start(&d, &r, &target, &task.command, None)
                .await
                .unwrap();
            hs.push(tokio::spawn(async move { exec::collect(s, &task).await }));
        }
        let mut outs = vec![];
        for h in hs {
            outs.push(h.await.unwrap());
        }
        outs
    });
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.stdout, format!("n{i}\n"), "{o:?}");
    }

    // A terminal: its size, a resize, and Ctrl-C interrupting the
    // foreground program (the terminal controls the command).
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let argv = ["sh".to_string()];
        let mut s = exec::start(&d, &r, &target, &argv, Some((100, 30)))
            .await
            .unwrap();
        assert!(s.stderr.is_none());
        let mut input = s.stdin.take().unwrap();
        let mut output = s.stdout.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = output.read(&mut buf).await {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = String::new();
        input
            .write_all(b"busybox stty size; busybox tty\n")
            .await
            .unwrap();
        until(&mut rx, &mut seen, "30 100").await;
        until(&mut rx, &mut seen, "/dev/pts/").await;
        s.control.resize(120, 40).await;
        input.write_all(b"busybox stty size\n").await.unwrap();
        until(&mut rx, &mut seen, "40 120").await;
        let t = Instant::now();
        input.write_all(b"sleep 100\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        input.write_all(&[3]).await.unwrap();
        input.write_all(b"echo after-$?\n").await.unwrap();
        until(&mut rx, &mut seen, "after-130").await;
        assert!(t.elapsed() < Duration::from_secs(20));
        input.write_all(b"exit 7\n").await.unwrap();
        let code = tokio::time::timeout(Duration::from_secs(20), s.waiter.wait())
            .await
            .expect("the shell did not exit");
        assert_eq!(code, Ok(Some(7)));
    });
}

/// Read `rx` into `seen` until it holds `want` (20 s at most).
async fn until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    seen: &mut String,
    want: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(want) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            _ => panic!("no {want:?} in {seen:?}"),
        }
    }
}
