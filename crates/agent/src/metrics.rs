//! Usage samples of the node and its instances, every 10 s (on the wall
//! clock's 10-second marks, so that samples of one app's instances on
//! several nodes fall into the same slot), sent with the next sync.
//!
//! An instance is measured through the cgroup its main process is in
//! (the process driver's, the container runtime's, or the one QEMU runs
//! in for a microVM; v1 `cpuacct`/`memory` or v2), when that cgroup is the
//! instance's own (its path names the instance); otherwise through its
//! main process alone (`/proc/<pid>/stat`, `VmRSS`):
//! - CPU: the time used since the last sample over the time passed,
//!   as a percentage of the instance's allocation (`cpu_millis`);
//! - memory: usage less inactive file pages (what `docker stats` shows),
//!   and that as a percentage of the instance's limit;
//! - disk: the bytes under the instance's directory (its files, its
//!   writable layer), every minute;
//! - network: bytes per second through the instance's veth (container, and
//!   microVMs with an egress policy; instances of the process driver share
//!   the node's network and have none).
//!
//! The node: CPU from `/proc/stat`, memory from `MemAvailable`, disk from
//! the file system of the agent's data directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use shellwego_api::metrics::Sample;

use crate::driver::Running;
use crate::reconcile::Shared;

/// Seconds between samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
const DISK_EVERY: Duration = Duration::from_secs(60);
/// Files walked at most when sizing an instance's directory.
const DISK_WALK_LIMIT: usize = 200_000;
const CGROUP: &str = "/sys/fs/cgroup";

/// What the sampler needs of a running instance.
pub struct Target {
    pub id: String,
    pub running: Running,
    pub memory: i64,
    pub cpu_millis: i64,
    pub dir: PathBuf,
}

#[derive(Default)]
struct Prev {
    at: Option<Instant>,
    cpu_ns: Option<u64>,
    rx: Option<u64>,
    tx: Option<u64>,
    disk: Option<(Instant, f64)>,
}

#[derive(Default)]
pub struct Sampler {
    prev: HashMap<String, Prev>,
    node_cpu: Option<(u64, u64)>,
    data_dir: PathBuf,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// `key value` lines (`memory.stat`, `cpu.stat`).
fn stat_value(p: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(p).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The instance's own cgroup directories for CPU and memory, from its
/// main process: (cpu dir, memory dir, v2).
fn cgroups_of(pid: u32, instance_id: &str) -> Option<(Option<PathBuf>, Option<PathBuf>, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (mut cpu, mut mem, mut v2) = (None, None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if !path.contains(instance_id) {
            continue;
        }
        let rel = path.trim_start_matches('/');
        let ctls: Vec<&str> = ctls.split(',').collect();
        if ctls.contains(&"cpuacct") {
            for mount in ["cpu,cpuacct", "cpuacct,cpu", "cpuacct"] {
                let d = Path::new(CGROUP).join(mount).join(rel);
                if d.join("cpuacct.usage").exists() {
                    cpu = Some(d);
                    break;
                }
            }
        } else if ctls.contains(&"memory") {
            let d = Path::new(CGROUP).join("memory").join(rel);
            if d.join("memory.usage_in_bytes").exists() {
                mem = Some(d);
            }
        } else if ctls == [""] {
            let d = Path::new(CGROUP).join(rel);
            if d.join("cpu.stat").exists() {
                v2 = Some(d);
            }
        }
    }
    if cpu.is_some() || mem.is_some() {
        return Some((cpu, mem, false));
    }
    v2.map(|d| (Some(d.clone()), Some(d), true))
}

/// CPU time (ns) and memory (bytes) of an instance: from its cgroups,
/// else from its main process.
fn usage(pid: u32, instance_id: &str) -> (Option<u64>, Option<f64>) {
    let (mut cpu_ns, mut memory) = (None, None);
    if let Some((cpu, mem, v2)) = cgroups_of(pid, instance_id) {
        cpu_ns = cpu.as_ref().and_then(|d| {
            if v2 {
                stat_value(&d.join("cpu.stat"), "usage_usec").map(|u| u * 1000)
            } else {
                read_u64(&d.join("cpuacct.usage"))
            }
        });
        memory = mem.as_ref().and_then(|d| {
            let (usage, inactive) = if v2 {
                (
                    read_u64(&d.join("memory.current"))?,
                    stat_value(&d.join("memory.stat"), "inactive_file").unwrap_or(0),
                )
            } else {
                (
                    read_u64(&d.join("memory.usage_in_bytes"))?,
                    stat_value(&d.join("memory.stat"), "total_inactive_file").unwrap_or(0),
                )
            };
            Some(usage.saturating_sub(inactive) as f64)
        });
    }
    if cpu_ns.is_none() {
        cpu_ns = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks: u64 =
                    f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks * 1_000_000_000 / clock_ticks())
            });
    }
    if memory.is_none() {
        memory = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map(|kb| kb * 1024.0);
    }
    (cpu_ns, memory)
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t.max(1) as u64)
}

/// Bytes of files under `dir` (at most [`DISK_WALK_LIMIT`] entries; not
/// through other file systems' mounts).
pub fn dir_bytes(dir: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0.0;
    };
    let dev = top.dev();
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            seen += 1;
            if seen > DISK_WALK_LIMIT {
                return total as f64;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.blocks() * 512;
            }
        }
    }
    total as f64
}

impl Sampler {
    pub fn new(data_dir: &Path) -> Sampler {
        Sampler {
            data_dir: data_dir.to_path_buf(),
            ..Default::default()
        }
    }

    /// One sample of each target and of the node.
    pub fn sample(&mut self, targets: &[Target]) -> Vec<Sample> {
        let at = now_micros();
        let now = Instant::now();
        let mut out = Vec::with_capacity(targets.len() + 1);
        let live: std::collections::HashSet<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        self.prev.retain(|id, _| live.contains(id.as_str()));
        for t in targets {
            let prev = self.prev.entry(t.id.clone()).or_default();
            let (cpu_ns, memory) = usage(t.running.pid, &t.id);
            let elapsed = prev.at.map(|a| now.duration_since(a));
            let cpu_percent = match (cpu_ns, prev.cpu_ns, elapsed) {
                (Some(c), Some(p), Some(e)) if c >= p && !e.is_zero() && t.cpu_millis > 0 => {
                    let share = (c - p) as f64 / e.as_nanos() as f64;
                    Some(share / (t.cpu_millis as f64 / 1000.0) * 100.0)
                }
                _ => None,
            };
            let (mut rx_bps, mut tx_bps) = (None, None);
            if let Some(veth) = t.running.extra.get("veth") {
                let base = Path::new("/sys/class/net").join(veth).join("statistics");
                // The host's end: what it receives, the instance sent.
                let tx = read_u64(&base.join("rx_bytes"));
                let rx = read_u64(&base.join("tx_bytes"));
                if let (Some(e), Some(r), Some(pr)) = (elapsed, rx, prev.rx) {
                    rx_bps = Some(r.saturating_sub(pr) as f64 / e.as_secs_f64().max(0.001));
                }
                if let (Some(e), Some(x), Some(px)) = (elapsed, tx, prev.tx) {
                    tx_bps = Some(x.saturating_sub(px) as f64 / e.as_secs_f64().max(0.001));
                }
                prev.rx = rx;
                prev.tx = tx;
            }
            let disk = match prev.disk {
                Some((when, bytes)) if now.duration_since(when) < DISK_EVERY => bytes,
                _ => {
                    let bytes = dir_bytes(&t.dir);
                    prev.disk = Some((now, bytes));
                    bytes
                }
            };
            prev.at = Some(now);
            prev.cpu_ns = cpu_ns;
            out.push(Sample {
                instance_id: Some(t.id.clone()),
                at,
                cpu_percent,
                memory_bytes: memory,
                memory_percent: memory
                    .filter(|_| t.memory > 0)
                    .map(|m| m / t.memory as f64 * 100.0),
                disk_bytes: Some(disk),
                disk_percent: None,
                network_rx: rx_bps,
                network_tx: tx_bps,
            });
        }
        out.push(self.node(at));
        out
    }

    fn node(&mut self, at: i64) -> Sample {
        let mut s = Sample {
            at,
            ..Default::default()
        };
        // cpu  user nice system idle iowait irq softirq steal
        if let Some(line) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = f.iter().take(8).sum();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            if let Some((pt, pi)) = self.node_cpu {
                let (dt, di) = (total.saturating_sub(pt), idle.saturating_sub(pi));
                if dt > 0 {
                    s.cpu_percent = Some((dt - di.min(dt)) as f64 / dt as f64 * 100.0);
                }
            }
            self.node_cpu = Some((total, idle));
        }
        if let Ok(m) = std::fs::read_to_string("/proc/meminfo") {
            let kb = |k: &str| {
                m.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            };
            if let (Some(total), Some(avail)) = (kb("MemTotal:"), kb("MemAvailable:")) {
                s.memory_bytes = Some((total - avail) * 1024.0);
                if total > 0.0 {
                    s.memory_percent = Some((total - avail) / total * 100.0);
                }
            }
        }
        if let Ok(v) = nix::sys::statvfs::statvfs(&self.data_dir) {
            let total = v.blocks() as f64 * v.fragment_size() as f64;
            let free = v.blocks_available() as f64 * v.fragment_size() as f64;
            if total > 0.0 {
                s.disk_bytes = Some(total - free);
                s.disk_percent = Some((total - free) / total * 100.0);
            }
        }
        s
    }
}

/// Sample every [`INTERVAL`] on the wall clock's marks; the samples wait
/// in `shared` for the next sync, which is woken to carry them.
pub async fn run(shared: Arc<Shared>, data_dir: PathBuf) {
    let mut sampler = Sampler::new(&data_dir);
    loop {
        let step = INTERVAL.as_micros() as i64;
        let wait = step - now_micros().rem_euclid(step);
        tokio::time::sleep(Duration::from_micros(wait as u64 + 500_000)).await;
        let targets = shared.sample_targets();
        let Ok((back, samples)) = tokio::task::spawn_blocking(move || {
            let s = sampler.sample(&targets);
            (sampler, s)
        })
        .await
        else {
            return;
        };
        sampler = back;
        shared.add_samples(samples);
        shared.dirty.notify_one();
    }
}
