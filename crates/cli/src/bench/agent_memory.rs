//! `shellwego bench agent-memory`: the resident memory of a `shellwego
//! agent` process (its own process, joined to a `shellwego server`), idle
//! and with N instances running and healthy. The instances' own memory is
//! reported apart: it is not the agent's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use shellwego_api::apps::MAX_REPLICAS;

use super::kit::{self, Api, Mem, Platform, Proc};

/// CPU each instance reserves: the smallest the API allows.
const CPU_MILLIS: i64 = 100;
/// How long the agent is left alone before a reading.
const SETTLE: Duration = Duration::from_secs(5);
/// The window over which its CPU use is measured.
const CPU_WINDOW: Duration = Duration::from_secs(10);

pub async fn run(instances: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let agent_dir = dir.path().join("agent");
    let mut server = kit::server(dir.path(), &[])?
        .data_dir(dir.path().join("server"))
        .start_async()
        .await?;
    let api = server.api();
    let host_cores = std::thread::available_parallelism().map_or(1, |n| n.get() as i64);
    // Enough cores for every instance's CPU reservation (and one spare).
    let needed = (instances as i64 * CPU_MILLIS + 999) / 1000 + 1;
    let cpus = needed.max(host_cores).to_string();
    let (node, mut agent) = server.join_agent(
        "bench-agent",
        &agent_dir,
        &[
            "--advertise-ip",
            "127.0.0.1",
            "--drivers",
            "process",
            "--cpus",
            &cpus,
        ],
        &dir.path().join("agent.log"),
    )?;
    let res = measure(
        &api,
        &mut agent,
        &server,
        &node,
        &agent_dir,
        dir.path(),
        instances,
        (host_cores, needed.max(host_cores)),
    )
    .await;
    agent.terminate_async(Duration::from_secs(10)).await;
    let left = kit::reap_leftovers(&agent_dir).await;
    if left > 0 {
        eprintln!("note: {left} instance(s) were left running; stopped them");
    }
    server.terminate_async(Duration::from_secs(10)).await;
    if res.is_err() {
        eprintln!("the end of the agent's log:\n{}", agent.log_tail(40));
    }
    res
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    api: &Api,
    agent: &mut Proc,
    server: &Platform,
    node: &str,
    agent_dir: &Path,
    tmp: &Path,
    n: usize,
    (host_cores, cpus): (i64, i64),
) -> anyhow::Result<()> {
    api.wait_node(Some(node), "process").await?;
    let pid = agent.id();
    tokio::time::sleep(SETTLE).await;
    let idle = kit::mem_of(pid)?;
    let idle_cpu = kit::cpu_share(pid, CPU_WINDOW).await;

    let root = tmp.join("rootfs");
    kit::write_busybox_rootfs(&root)?;
    let upload = api.upload(kit::tar_gz(&root)?).await?;
    let mut apps = vec![];
    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let replicas = left.min(MAX_REPLICAS as usize);
        left -= replicas;
        let a = api
            .post(
                "/v1/apps",
                &json!({
                    "name": format!("mem-{}", apps.len()),
                    "replicas": replicas,
                    "runtime": "process",
                    "command": kit::busybox_command(),
                    "resources": {"memory": "64m", "cpu": format!("{:.1}", CPU_MILLIS as f64 / 1000.0)},
                    "source": {"type": "tarball", "upload_id": upload},
                    "health_check": {"path": "/"},
                    "stop_timeout": "2s",
                }),
            )
            .await?;
        apps.push(a["id"].as_str().context("no app id")?.to_string());
    }
    loop {
        agent.check_alive()?;
        let mut healthy = 0;
        for id in &apps {
            let (_, a) = api.get(&format!("/v1/apps/{id}")).await?;
            healthy += a["replicas"]["healthy"].as_u64().unwrap_or(0) as usize;
        }
        if healthy >= n {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("only {healthy} of {n} instances were healthy after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_healthy = t.elapsed();
    tokio::time::sleep(SETTLE).await;
    let loaded = kit::mem_of(pid)?;
    let loaded_cpu = kit::cpu_share(pid, CPU_WINDOW).await;
    let (procs, inst_rss, inst_pss) = instance_memory(agent_dir);
    let server_mem = kit::mem_of(server.pid().context("the server was stopped")?)?;

    for id in &apps {
        api.delete(&format!("/v1/apps/{id}")).await?;
    }
    let t = Instant::now();
    while !kit::recorded_instances(agent_dir).is_empty() {
        if t.elapsed() > Duration::from_secs(120) {
            bail!("instances of the deleted apps were still there after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let after = kit::mem_of(pid)?;

    let cpu = |c: Option<f64>| c.map_or("?".into(), |c| format!("{:.1}%", c * 100.0));
    let row = |what: &str, m: &Mem, c: Option<f64>| {
        println!(
            "  {what:<28} VmRSS {:>9}  VmHWM {:>9}  threads {:>2}  CPU {}",
            kit::mib(m.rss),
            kit::mib(m.hwm),
            m.threads,
            c.map_or(String::new(), |c| format!(
                "{} of a core over {} s",
                cpu(Some(c)),
                CPU_WINDOW.as_secs()
            ))
        )
    };
    println!(
        "agent memory: `shellwego agent` as its own process (process driver), joined to a `shellwego server`; \
         instances: a static busybox httpd each (tarball root filesystem, chrooted), 64m, 0.1 CPU, \
         HTTP health check every 10 s."
    );
    if cpus > host_cores {
        println!(
            "  The agent reports --cpus {cpus} (this host has {host_cores}): {n} instances reserve {:.1} cores at 0.1 each.",
            n as f64 * CPU_MILLIS as f64 / 1000.0
        );
    }
    row("idle, 0 instances:", &idle, idle_cpu);
    row(&format!("{n} instances healthy:"), &loaded, loaded_cpu);
    row("after deleting them:", &after, None);
    println!(
        "  all {n} healthy {:.1} s after the apps were created",
        all_healthy.as_secs_f64()
    );
    println!(
        "  the instances (not the agent's): {procs} processes, RSS {} in all ({} each), PSS {} in all",
        kit::mib(inst_rss),
        kit::mib(inst_rss / procs.max(1) as u64),
        kit::mib(inst_pss)
    );
    println!(
        "  the control plane (`shellwego server`, SQLite) meanwhile: VmRSS {}  VmHWM {}",
        kit::mib(server_mem.rss),
        kit::mib(server_mem.hwm)
    );
    Ok(())
}

/// Processes of the recorded instances (each instance is a process group
/// led by its pid): how many, their RSS and PSS sums (KiB).
fn instance_memory(agent_dir: &Path) -> (usize, u64, u64) {
    let leaders: std::collections::HashSet<u32> = kit::recorded_instances(agent_dir)
        .iter()
        .map(|(_, r)| r.pid)
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0, 0);
    };
    let (mut n, mut rss, mut pss) = (0, 0, 0);
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some(pgrp) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.get(s.rfind(')')? + 2..)?.to_string();
                rest.split_whitespace().nth(2)?.parse::<u32>().ok()
            })
        else {
            continue;
        };
        if leaders.contains(&pgrp) {
            n += 1;
            rss += kit::mem_of(pid).map(|m| m.rss).unwrap_or(0);
            pss += kit::pss_of(pid).unwrap_or(0);
        }
    }
    (n, rss, pss)
}
