//! Small facts about the host and ways to run things on it, shared by the
//! drivers: whether the agent is root, where a tool lives, running a tool
//! with a timeout, what `/proc/self/mountinfo` says (cgroup hierarchies,
//! mounts under a directory) and how many OOM kills a cgroup counted.
//! Each was written once per driver before; one copy each now, so a fix
//! (a mount point with a space in it, a tool in `/usr/sbin`) reaches every
//! driver.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The `PATH` an instance (or a guest) gets when it is given none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The agent's effective uid is 0.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// `name` on `PATH`, else in the usual system directories (a root agent
/// started with a short `PATH` still finds `ip` in `/usr/sbin`).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(DEFAULT_PATH))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Run a tool to completion (stdin from /dev/null), killing it after
/// `timeout`; its output is collected.
pub fn run(cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    run_input(cmd, None, timeout)
}

/// Like [`run`], with `input` on its stdin.
pub fn run_input(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    use std::io::Write;
    let what = format!("{:?}", cmd.get_program());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        // Small (a few commands): fits the pipe; a tool that exits early
        // makes this fail, and its status says why.
        let _ = stdin.write_all(&bytes);
    }
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    })
    .collect();
    let status = wait_timeout(child, timeout).with_context(|| what.clone())?;
    let mut bufs = readers.into_iter().map(|t| t.join().unwrap_or_default());
    Ok(Output {
        status,
        stdout: bufs.next().unwrap_or_default(),
        stderr: bufs.next().unwrap_or_default(),
    })
}

/// Wait for `child`, killing (and reaping) it after `timeout`.
pub fn wait_timeout(mut child: Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Send `signal` to the process group led by `pid` (best effort: a group
/// already gone is not an error).
pub fn signal_group(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Where it is mounted (unescaped).
    pub point: PathBuf,
    pub fstype: String,
    /// The mount source (`overlay`, a device, or our overlays' owner name).
    pub source: String,
    /// The superblock options (`rw,memory` for a v1 memory hierarchy).
    pub options: String,
    /// The mount point's own options (`rw,nosuid,nodev,relatime`).
    pub mount_options: String,
}

/// Our mount table, from `/proc/self/mountinfo` (empty when unreadable).
pub fn mounts() -> Vec<Mount> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ').skip(4);
            let point = unescape_mount(l.next()?);
            let mount_options = l.next().unwrap_or("").to_string();
            let mut r = right.split(' ');
            Some(Mount {
                point,
                mount_options,
                fstype: r.next()?.to_string(),
                source: r.next().unwrap_or("").to_string(),
                options: r.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Mount points at or under `path` (deepest first), from our mountinfo.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(path))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape_mount(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Where the cgroup hierarchies that matter to memory limits are mounted.
#[derive(Debug, Default)]
pub struct CgroupMounts {
    /// The v1 hierarchy with the `memory` controller.
    pub memory_v1: Option<PathBuf>,
    /// The v2 (unified) hierarchy.
    pub unified: Option<PathBuf>,
}

/// The memory (v1) and unified (v2) cgroup hierarchies, as mounted.
pub fn cgroup_mounts() -> CgroupMounts {
    let mut m = CgroupMounts::default();
    for mount in mounts() {
        match mount.fstype.as_str() {
            "cgroup" if mount.options.split(',').any(|o| o == "memory") => {
                m.memory_v1.get_or_insert(mount.point);
            }
            "cgroup2" => {
                m.unified.get_or_insert(mount.point);
            }
            _ => {}
        }
    }
    m
}

/// Every mounted cgroup hierarchy (v1 controllers, v2 unified), sorted.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|m| matches!(m.fstype.as_str(), "cgroup" | "cgroup2"))
        .map(|m| m.point)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The `oom_kill` counter of a cgroup's `memory.oom_control` (v1) or
/// `memory.events` (v2); None when the file or the line is missing.
pub fn oom_kill_count(file: &Path) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// OOM kills recorded in the memory cgroup at `cgroup` (a path relative to
/// the hierarchies' roots, as in an OCI `cgroupsPath`): v1 first, then v2.
pub fn oom_kills_at(cgroup: &str) -> Option<u64> {
    let rel = cgroup.trim_start_matches('/');
    let mounts = cgroup_mounts();
    if let Some(v1) = &mounts.memory_v1 {
        if let Some(n) = oom_kill_count(&v1.join(rel).join("memory.oom_control")) {
            return Some(n);
        }
    }
    mounts
        .unified
        .and_then(|v2| oom_kill_count(&v2.join(rel).join("memory.events")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mount("/a\\134b"), PathBuf::from("/a\\b"));
        assert_eq!(unescape_mount("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn oom_kill_lines_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(oom_kill_count(&f), Some(2));
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\n").unwrap();
        assert_eq!(oom_kill_count(&f), None);
        assert_eq!(oom_kill_count(&dir.path().join("missing")), None);
    }

    #[test]
    fn a_tool_that_hangs_is_killed() {
        let mut c = Command::new("sleep");
        c.arg("10");
        let t = Instant::now();
        assert!(run(c, Duration::from_millis(100)).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        let mut c = Command::new("cat");
        c.arg("-");
        let out = run_input(c, Some(b"hi".to_vec()), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, b"hi");
    }
}
