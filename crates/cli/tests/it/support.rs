//! What the CLI's tests share on top of `shellwego_testkit`: the binary
//! under test, the CLI as an assertion on a platform, and readers of its
//! tables.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_testkit::platform::{run, Out, Platform};

/// The `shellwego` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_shellwego");

/// The binary under test, as a path.
pub(crate) fn bin() -> &'static Path {
    Path::new(BIN)
}

/// The CLI as a platform's admin ([`Platform::cli`]), asserting how it ends.
pub(crate) trait Cli {
    /// Run; it must succeed (else the failure, with the platform's log).
    fn ok(&self, args: &[&str]) -> Out;
    /// Run; it must fail.
    fn fails(&self, args: &[&str]) -> Out;
    /// Run with `-o json`; it must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value;
}

impl Cli for Platform {
    fn ok(&self, args: &[&str]) -> Out {
        let o = run(&mut self.cli(args));
        assert!(
            o.ok,
            "{args:?} failed ({:?}):\nstdout: {}\nstderr: {}\n{}",
            o.code,
            o.stdout,
            o.stderr,
            self.log()
        );
        o
    }

    fn fails(&self, args: &[&str]) -> Out {
        let o = run(&mut self.cli(args));
        assert!(!o.ok, "{args:?} should have failed:\n{}", o.stdout);
        o
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.ok(&a).stdout;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }
}

/// The value of `KEY  value` in a fields table.
pub(crate) fn field(table: &str, key: &str) -> String {
    table
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .filter(|rest| rest.starts_with("  "))
                .map(|rest| rest.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in:\n{table}"))
}

/// The row of a table whose first column is `first`, split on runs of
/// two or more spaces.
pub(crate) fn row(table: &str, first: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().is_some_and(|c| c == first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{table}"))
}

/// The `POST /v1/apps` body of a one-replica container app running
/// `script` (busybox sh) in the busybox root filesystem uploaded as
/// `upload`, health-checked on `/`; `extra`'s members merged in.
pub(crate) fn busybox_app(name: &str, upload: &str, script: &str, extra: Value) -> Value {
    let mut body = serde_json::json!({
        "name": name,
        "replicas": 1,
        "runtime": "container",
        "resources": {"memory": "64m", "cpu": "0.1"},
        "source": {"type": "tarball", "upload_id": upload},
        "command": ["/bin/busybox", "sh", "-c", script],
        "health_check": {"path": "/", "interval": "1s"},
        "stop_timeout": "1s",
    });
    if let (Some(into), Some(from)) = (body.as_object_mut(), extra.as_object()) {
        into.extend(from.clone());
    }
    body
}

/// `up`'s app `a` is running with `n` healthy replicas.
pub(crate) fn healthy(a: &Value, n: usize) -> bool {
    a["status"] == "running" && a["replicas"]["healthy"] == n as i64
}

/// The ids of an app's instances, sorted.
pub(crate) fn instance_ids(a: &Value) -> Vec<String> {
    let mut v: Vec<String> = a["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// An instance's process as its agent records it: a pid and its start
/// time, so that a reused pid is never taken for the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) start_ticks: u64,
}

impl Proc {
    /// `kill -0`, but a zombie counts as gone.
    pub(crate) fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(i) = stat.rfind(')') else {
            return false;
        };
        let s = &stat[i + 2..];
        !s.starts_with('Z')
            && s.split_whitespace().nth(19).and_then(|t| t.parse().ok()) == Some(self.start_ticks)
    }

    /// SIGKILL its process group (the process driver makes the instance a
    /// group leader) and itself.
    pub(crate) fn kill(&self) {
        if !self.alive() {
            return;
        }
        for target in [format!("-{}", self.pid), self.pid.to_string()] {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &target])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The running process of instance `id` on the agent with data dir `agent_dir`.
pub(crate) fn instance_proc(agent_dir: &Path, id: &str) -> Option<Proc> {
    let text =
        std::fs::read_to_string(agent_dir.join("instances").join(id).join("state.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some(Proc {
        pid: u32::try_from(v["running"]["pid"].as_u64()?).ok()?,
        start_ticks: v["running"]["start_ticks"].as_u64()?,
    })
}

/// Every instance process an agent has recorded.
pub(crate) fn all_instance_procs(agent_dir: &Path) -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir(agent_dir.join("instances")) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| instance_proc(agent_dir, &e.file_name().to_string_lossy()))
        .collect()
}

/// A bounded wait: `tick` sleeps `every`, or fails the test with what
/// was last seen.
pub(crate) struct Deadline {
    what: String,
    start: Instant,
    limit: Duration,
    every: Duration,
}

impl Deadline {
    pub(crate) fn new(what: impl Into<String>, limit: Duration) -> Deadline {
        Deadline {
            what: what.into(),
            start: Instant::now(),
            limit,
            every: Duration::from_millis(200),
        }
    }

    pub(crate) fn every(mut self, every: Duration) -> Deadline {
        self.every = every;
        self
    }

    pub(crate) async fn tick(&self, seen: &dyn std::fmt::Display) {
        assert!(
            self.start.elapsed() < self.limit,
            "{} did not happen within {:?}; last seen: {seen}",
            self.what,
            self.limit
        );
        tokio::time::sleep(self.every).await;
    }
}
