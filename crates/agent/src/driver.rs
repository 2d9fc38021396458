//! Runtime drivers: one trait, one implementation per isolation technique
//! (`process`, `container`, `microvm`). The reconciler talks to a
//! driver only through `Command`s, each documenting when it is valid, and
//! reads back a `Running` handle it can save and re-adopt after a restart.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a driver needs to run one instance.
#[derive(Debug, Clone)]
pub struct Launch {
    pub instance_id: String,
    /// The instance's own directory (state, logs, scratch); exists.
    pub dir: PathBuf,
    /// The root filesystem (an image's, or a root-filesystem tarball's) or
    /// the app directory (a tarball with a Procfile) to run in.
    pub root: PathBuf,
    /// True when `root` is a whole root filesystem (chroot/pivot into it);
    /// false when it is an app directory run with the host's userland.
    pub is_rootfs: bool,
    /// argv; never empty.
    pub argv: Vec<String>,
    /// The working directory inside `root` (`/` by default).
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    /// The port the app must listen on (also in env as PORT).
    pub port: u16,
    /// Bytes; the instance is OOM-killed above it (where cgroups allow).
    pub memory: i64,
    pub cpu_millis: i64,
    /// Where stdout goes (appended).
    pub stdout: PathBuf,
    /// Where stderr goes (appended); may be the same file as `stdout`.
    pub stderr: PathBuf,
    /// Only these destinations (canonical CIDRs) may be connected to; none:
    /// anywhere. A driver that cannot enforce it refuses to start.
    pub allowed_egress: Option<Vec<String>>,
}

/// The launch's stdout and stderr, opened for appending (one file twice
/// when they are the same).
pub fn output_files(l: &Launch) -> anyhow::Result<(std::fs::File, std::fs::File)> {
    use anyhow::Context;
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("cannot open {}", p.display()))
    };
    let out = open(&l.stdout)?;
    let err = if l.stderr == l.stdout {
        out.try_clone()?
    } else {
        open(&l.stderr)?
    };
    Ok((out, err))
}

impl Launch {
    /// Refuse an egress policy a driver cannot enforce (it would run the
    /// instance unrestricted otherwise).
    pub fn refuse_egress_policy(&self, driver: &str, why: &str) -> anyhow::Result<()> {
        match &self.allowed_egress {
            Some(_) => anyhow::bail!(
                "the app's networking.allowed_egress cannot be enforced by the {driver} driver ({why}); run it on a node with the container driver, or allow 0.0.0.0/0"
            ),
            None => Ok(()),
        }
    }
}

/// A started instance: what is saved to disk and re-adopted after an agent
/// restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub driver: String,
    /// The app's main process as seen from the host.
    pub pid: u32,
    /// `/proc/<pid>/stat` start time (clock ticks since boot), so a reused
    /// pid is never mistaken for the instance.
    pub start_ticks: u64,
    /// Driver-specific (container id, cgroup paths).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// None when unknown (an adopted process, or killed by a signal).
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
}

impl Exit {
    pub fn describe(&self) -> String {
        if self.oom_killed {
            return "out of memory: killed by the kernel's OOM killer (raise resources.memory)"
                .into();
        }
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "exited (status unknown)".into(),
        }
    }
}

/// What the reconciler asks of a driver.
#[derive(Debug)]
pub enum Command<'a> {
    /// Start the instance. Valid when it is not running (first start, or
    /// after it exited). Returns the handle to save.
    Start(&'a Launch),
    /// Ask it to stop (SIGTERM to the app). Valid while running.
    Terminate(&'a Running),
    /// Stop it now (SIGKILL). Valid while running; after `Terminate` when
    /// the grace period is over.
    Kill(&'a Running),
    /// Release what the driver made for the instance (cgroups, container
    /// state). Valid once it has exited.
    Cleanup {
        instance_id: &'a str,
        handle: Option<&'a Running>,
    },
}

impl Command<'_> {
    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start(_) => "start",
            Command::Terminate(_) => "terminate",
            Command::Kill(_) => "kill",
            Command::Cleanup { .. } => "cleanup",
        }
    }
}

pub enum Reply {
    Started(Running),
    Done,
}

/// Until an instance is up (its first health check passed, or
/// `reconcile::BOOT_WINDOW` after its start) it may use up to this much CPU,
/// so its start (an interpreter loading, a guest kernel booting) is not held
/// to a small steady limit; `Driver::settle` then applies `cpu_millis`.
pub const BOOT_CPU_MILLIS: i64 = 1000;

/// The CPU limit an instance starts with (0: none).
pub fn boot_cpu_millis(cpu_millis: i64) -> i64 {
    if cpu_millis > 0 {
        cpu_millis.max(BOOT_CPU_MILLIS)
    } else {
        0
    }
}

pub trait Driver: Send + Sync {
    fn name(&self) -> &'static str;
    fn run(&self, cmd: Command<'_>) -> anyhow::Result<Reply>;
    /// The instance is up: hold it to its steady CPU limit from now on (it
    /// started with `boot_cpu_millis`). Idempotent.
    fn settle(&self, _r: &Running, _cpu_millis: i64) -> anyhow::Result<()> {
        Ok(())
    }
    /// None while the instance runs; how it ended once it has.
    fn poll(&self, r: &Running) -> Option<Exit>;
    /// After an agent restart: is this saved instance still alive?
    fn adopt(&self, r: &Running) -> bool {
        proc_start_ticks(r.pid).is_some_and(|t| t == r.start_ticks) && !is_zombie(r.pid)
    }
    /// At agent start, after adoption: remove what this driver made for its
    /// owner (see [`crate::owner`]) beyond its cgroups (which the agent
    /// sweeps for every driver) and that belongs to no instance in `keep`
    /// (the instance and container ids of the adopted instances); says
    /// what it removed. Never touches another owner's objects.
    fn sweep(&self, _keep: &HashSet<String>) -> Vec<crate::owner::Orphan> {
        vec![]
    }
    /// How `argv` runs inside the running instance `r` (its environment,
    /// root filesystem and namespaces), for `exec` and exec sessions: a host
    /// command (the caller sets its stdio, puts it in a process group of
    /// its own and kills the group on timeout), or a microVM's guest
    /// daemon. [`crate::exec::start`] starts either.
    fn exec(&self, _r: &Running, _t: &ExecTarget<'_>, _argv: &[String]) -> anyhow::Result<ExecVia> {
        anyhow::bail!(
            "the {} driver cannot run a command in an instance yet",
            self.name()
        )
    }
}

/// How a command reaches an instance ([`Driver::exec`]).
pub enum ExecVia {
    /// A host process that enters the instance (chroot, `runc exec`, …).
    Host(std::process::Command),
    /// A microVM's guest daemon, which starts it inside the guest.
    Guest(crate::microvm::guest::Channel),
}

/// What `exec` knows of the instance it runs a command in (as launched).
pub struct ExecTarget<'a> {
    pub instance_id: &'a str,
    pub root: &'a std::path::Path,
    pub is_rootfs: bool,
    pub workdir: &'a str,
    pub env: &'a BTreeMap<String, String>,
}

/// Field 22 of `/proc/<pid>/stat`: when the process started.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// Grace between SIGTERM and SIGKILL when nothing else is said.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
