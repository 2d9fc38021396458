//! Instance output with the real tailer and real processes (the process
//! driver): a 50 MB flood from one app stays within its cap on disk (its
//! stored lines and its raw files), and a quiet app's lines beside it are
//! all kept, in order, with their levels.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shellwego_agent::driver::{Command, Driver, Launch, Reply};
use shellwego_agent::logs::{tail::allocated, Logs};
use shellwego_agent::process::ProcessDriver;
use shellwego_api::logs::{LogFilter, LogLevel, LogPolicy, LogQuery, LogSettings};

fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                du(&e.path())
            } else {
                allocated(&e.path())
            }
        })
        .sum()
}

fn launch(logs: &Logs, base: &Path, app: &str, inst: &str, script: &str, cap: u64) -> Launch {
    let dir = base.join(inst);
    std::fs::create_dir_all(&dir).unwrap();
    let (stdout, stderr) = logs
        .output_files(
            app,
            inst,
            LogSettings {
                retention_secs: None,
                max_bytes: Some(cap),
            },
        )
        .unwrap();
    Launch {
        instance_id: inst.into(),
        dir: dir.clone(),
        root: dir,
        is_rootfs: false,
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        workdir: "/".into(),
        env: Default::default(),
        port: 0,
        memory: 256 << 20,
        cpu_millis: 1000,
        stdout,
        stderr,
        allowed_egress: None,
    }
}

fn query(logs: &Logs, app: &str, filter: LogFilter) -> Vec<shellwego_api::logs::LogLine> {
    logs.query(&LogQuery {
        app_id: app.into(),
        since: None,
        until: None,
        tail: 10_000,
        filter,
    })
}

#[test]
fn a_flood_stays_within_its_cap_and_a_quiet_app_keeps_every_line() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("agent");
    let logs = Logs::new(
        &data,
        LogPolicy {
            retention_secs: 3600,
            max_bytes: 64 << 20,
        },
    );
    logs.start(Arc::new(|_: &str| true)).unwrap();
    let driver = ProcessDriver::new();
    let cap: u64 = 4 << 20;
    // 50 MB of 100-byte lines, as fast as the shell's `yes` writes them.
    let noisy = launch(
        &logs,
        base.path(),
        "app_noisy",
        "inst_noisy",
        "yes 'flood flood flood flood flood flood flood flood flood flood flood flood flood flood flood flood.' | head -c 50000000",
        cap,
    );
    let quiet = launch(
        &logs,
        base.path(),
        "app_quiet",
        "inst_quiet",
        "i=0; while [ $i -lt 300 ]; do echo \"line $i\"; echo \"ERROR oops $i\" >&2; i=$((i+1)); sleep 0.01; done",
        64 << 20,
    );
    let mut running = vec![];
    for l in [&noisy, &quiet] {
        match driver.run(Command::Start(l)).unwrap() {
            Reply::Started(r) => running.push(r),
            Reply::Done => panic!("not started"),
        }
    }
    let t = Instant::now();
    let noisy_dir = data.join("logs/apps/app_noisy");
    let raw = data.join("logs/raw/inst_noisy");
    let mut peak_raw = 0;
    let mut peak_stored = 0;
    loop {
        peak_raw = peak_raw.max(du(&raw));
        peak_stored = peak_stored.max(du(&noisy_dir));
        let quiet_lines = query(&logs, "app_quiet", LogFilter::default()).len();
        let out = std::fs::metadata(&noisy.stdout).map_or(0, |m| m.len());
        let tail = query(
            &logs,
            "app_noisy",
            LogFilter {
                search: Some("flood.".into()),
                ..Default::default()
            },
        );
        // Done: the flood written and read to its end (but its last,
        // unfinished line), the quiet app too.
        let done = out >= 50_000_000
            && tail.last().is_some()
            && std::fs::read(raw.join("offsets.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|o| {
                    o.as_object()
                        .unwrap()
                        .values()
                        .any(|p| p["offset"].as_u64() >= Some(50_000_000 - 200))
                });
        if done && quiet_lines == 600 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "not read after 4 minutes: {out} bytes written, quiet {quiet_lines}, flood lines {}, offsets {:?}",
            tail.len(),
            std::fs::read_to_string(raw.join("offsets.json"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "50 MB read in {:?}; peak raw {peak_raw}, peak stored {peak_stored}",
        t.elapsed()
    );
    // The app's stored lines stay within its cap (a segment of slack while
    // one is being filled); the raw output is given back as it is read
    // (while a writer outruns the tailer it holds up to the backlog limit,
    // and what is written between two passes).
    let stored = du(&noisy_dir);
    assert!(stored <= cap + (64 << 10), "stored {stored} > cap {cap}");
    assert!(peak_stored <= cap + (2 << 20), "peak stored {peak_stored}");
    assert!(du(&raw) <= 2 << 20, "raw output left: {}", du(&raw));
    // The quiet app: every line, each stream in order, levels by stream
    // and by the `ERROR` word.
    let q = query(&logs, "app_quiet", LogFilter::default());
    let out: Vec<&str> = q
        .iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| l.message.as_str())
        .collect();
    let want: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    assert_eq!(out, want);
    let errs = query(
        &logs,
        "app_quiet",
        LogFilter {
            level: Some(LogLevel::Error),
            ..Default::default()
        },
    );
    assert_eq!(errs.len(), 300);
    assert!(errs
        .iter()
        .all(|l| l.stream == "stderr" && l.message.starts_with("ERROR oops")));
    assert!(q.windows(2).all(|w| w[0].t < w[1].t));
    for (r, l) in running.iter().zip([&noisy, &quiet]) {
        let _ = driver.run(Command::Kill(r));
        let _ = driver.run(Command::Cleanup {
            instance_id: &l.instance_id,
            handle: Some(r),
        });
    }
}
