//! What the platform benchmarks share beyond the test kit (which starts
//! real `shellwego` processes on free loopback ports in a temp dir, talks
//! to their API, and writes the sample apps): `/proc` readings,
//! percentiles, and the instances an agent left behind.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
pub use shellwego_testkit::api::Api;
pub use shellwego_testkit::fixtures::{busybox_command, tar_gz, write_busybox_rootfs, write_hello};
pub use shellwego_testkit::platform::{
    try_free_port as free_port, Platform, PlatformBuilder, Proc,
};

/// The log filter of the processes a benchmark starts: SHELLWEGO_BENCH_LOG
/// to trace a run (e.g. `info,sqlx=warn,shellwego_agent=debug`), else the
/// binary's default.
pub fn log_filter() -> String {
    std::env::var("SHELLWEGO_BENCH_LOG").unwrap_or_else(|_| "info,sqlx=warn".into())
}

/// `shellwego up` (this very binary) in `dir` with `args`, logging to
/// `dir/up.log`: ready once it answers `/readyz` (up to 30 s). The
/// benchmark stops it and reaps what it left ([`reap_leftovers`]).
pub fn up(dir: &Path, args: &[&str]) -> anyhow::Result<PlatformBuilder> {
    Ok(platform(Platform::up(std::env::current_exe()?), dir, args))
}

/// `shellwego server` (this very binary), as [`up`].
pub fn server(dir: &Path, args: &[&str]) -> anyhow::Result<PlatformBuilder> {
    Ok(platform(
        Platform::server(std::env::current_exe()?),
        dir,
        args,
    ))
}

fn platform(b: PlatformBuilder, dir: &Path, args: &[&str]) -> PlatformBuilder {
    b.dir(dir)
        .args(args)
        .env("SHELLWEGO_LOG", log_filter())
        .timeout(Duration::from_secs(30))
        .poll(Duration::from_millis(20))
        .clean_up_apps(false)
}

/// Memory of a process, from `/proc/<pid>/status` (KiB).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
    pub threads: u64,
}

pub fn mem_of(pid: u32) -> anyhow::Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        threads: field("Threads:"),
    })
}

/// Proportional set size (KiB): shared pages divided among their users.
pub fn pss_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CPU time a process has used (user + system).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    cpu_time_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU time (user + system) from a `/proc/…/stat` file, a process's or a
/// thread's (`/proc/<pid>/task/<tid>/stat`).
pub fn cpu_time_at(stat: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI we build for.
    Some(Duration::from_millis(ticks * 10))
}

/// The PostgreSQL backends on this host serving database `db`: their
/// pids (a backend's process title names its user and database:
/// `postgres: [CLUSTER: ]USER DB HOST(PORT) STATE`).
pub fn pg_backends(db: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let title = String::from_utf8_lossy(&c).replace('\0', " ");
                let mut words = title.split_whitespace();
                words.next() == Some("postgres:") && words.take(3).any(|w| w == db)
            })
        })
        .collect()
}

/// The share of one core `pid` uses over `window`.
pub async fn cpu_share(pid: u32, window: Duration) -> Option<f64> {
    let a = cpu_time(pid)?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let b = cpu_time(pid)?;
    Some((b - a).as_secs_f64() / t.elapsed().as_secs_f64())
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=1).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    debug_assert!(
        (0.0..=1.0).contains(&p),
        "pct takes a fraction, not a percent: {p}"
    );
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The instances an agent has recorded in `<agent_dir>/instances/*/state.json`:
/// `(instance id, the driver's handle)`.
pub fn recorded_instances(agent_dir: &Path) -> Vec<(String, shellwego_agent::driver::Running)> {
    let Ok(entries) = std::fs::read_dir(agent_dir.join("instances")) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("state.json")).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            let running = serde_json::from_value(v.get("running")?.clone()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), running))
        })
        .collect()
}

/// Stop and clean up, through the agent's own drivers, any instance still
/// recorded under `agent_dir` (instances outlive their agent by design).
/// Returns how many there were; none after a clean run.
pub async fn reap_leftovers(agent_dir: &Path) -> usize {
    use shellwego_agent::driver::{Command, Driver};
    let left = recorded_instances(agent_dir);
    for (id, r) in &left {
        let driver: Option<Box<dyn Driver>> = match r.driver.as_str() {
            "process" => Some(Box::new(shellwego_agent::process::ProcessDriver::new())),
            "container" => shellwego_agent::container::ContainerDriver::probe()
                .ok()
                .map(|d| Box::new(d) as Box<dyn Driver>),
            _ => None,
        };
        let Some(d) = driver else { continue };
        let _ = d.run(Command::Kill(r));
        let t = Instant::now();
        while d.poll(r).is_none() && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = d.run(Command::Cleanup {
            instance_id: id,
            handle: Some(r),
        });
    }
    left.len()
}
