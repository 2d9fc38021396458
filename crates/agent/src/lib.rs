//! The ShellWeGo node agent (`shellwego agent`): joins a control plane with a join token (once; the
//! node credential is kept in the data dir, mode 0600, and reused on
//! restart), reports the host's capacity, and keeps the agent channel open:
//! `POST /v1/agent/sync` long-polls carry status up (they are the node's
//! heartbeat) and bring the desired state down.

pub mod container;
pub mod driver;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use shellwego_api::nodes::{AgentDesired, AgentJoin, AgentJoined, AgentSync};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The control plane's URL, e.g. http://10.0.0.1:3000.
    #[arg(long, env = "SHELLWEGO_CONTROL_PLANE", value_name = "URL")]
    pub control_plane: String,
    /// One-time token from `POST /v1/nodes` (needed only on the first start).
    #[arg(long, env = "SHELLWEGO_JOIN_TOKEN", value_name = "TOKEN")]
    pub join_token: Option<String>,
    /// Directory for the node credential and (later) instances.
    #[arg(
        long,
        env = "SHELLWEGO_AGENT_DATA_DIR",
        value_name = "DIR",
        default_value = "./.shellwego-agent"
    )]
    pub data_dir: PathBuf,
    /// Host name to report [default: the machine's].
    #[arg(long)]
    pub name: Option<String>,
    /// Region to report (overrides the one given at registration).
    #[arg(long)]
    pub region: Option<String>,
    /// Zone to report.
    #[arg(long)]
    pub zone: Option<String>,
    /// A label `key=value` to add to the node; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Seconds each sync may be held by the control plane (the heartbeat
    /// interval); the control plane may ask for less.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=30))]
    pub sync_wait: u64,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not key=value")),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Credential {
    control_plane: String,
    node_id: String,
    credential: String,
    /// The longest sync wait the control plane wants (its liveness timeout / 3).
    #[serde(default)]
    sync_wait_secs: Option<u64>,
}

fn credential_path(dir: &Path) -> PathBuf {
    dir.join("node-credential.toml")
}

fn read_first_number(text: &str, key: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<i64>().ok())
}

/// What this host has: cores, memory, disk, kernel, drivers that work here.
fn host_report(args: &AgentArgs, join_token: String) -> AgentJoin {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |k: &str| read_first_number(&meminfo, k).unwrap_or(0) * 1024;
    let on_path = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    let mut drivers = vec!["process".to_string()];
    if on_path("runc") || on_path("crun") {
        drivers.push("container".into());
    }
    let kvm = Path::new("/dev/kvm").exists();
    let qemu_version = on_path("qemu-system-x86_64")
        .then(|| {
            std::process::Command::new("qemu-system-x86_64")
                .arg("--version")
                .output()
                .ok()
        })
        .flatten()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(3).map(str::to_string));
    if qemu_version.is_some() {
        drivers.push("microvm".into());
    }
    let disk_total = nix::sys::statvfs::statvfs(&args.data_dir)
        .map(|s| i64::try_from(s.blocks().saturating_mul(s.fragment_size())).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let hostname = args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string()
    });
    AgentJoin {
        join_token,
        hostname,
        cpu_cores: std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1),
        memory_total: kib("MemTotal:"),
        memory_available: kib("MemAvailable:"),
        disk_total,
        kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string()),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        firecracker_version: None,
        qemu_version,
        drivers,
        kvm,
        region: args.region.clone(),
        zone: args.zone.clone(),
        labels: args.labels.iter().cloned().collect(),
    }
}

fn memory_available() -> Option<i64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    read_first_number(&meminfo, "MemAvailable:").map(|k| k * 1024)
}

async fn load_or_join(args: &AgentArgs, http: &reqwest::Client) -> anyhow::Result<Credential> {
    let path = credential_path(&args.data_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let c: Credential =
            toml::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
        tracing::info!(node_id = %c.node_id, "reusing the node credential");
        return Ok(c);
    }
    let Some(token) = args.join_token.clone() else {
        bail!("this node has not joined yet: pass --join-token (from POST /v1/nodes)");
    };
    let url = format!("{}/v1/agent/join", args.control_plane.trim_end_matches('/'));
    let res = http
        .post(&url)
        .json(&host_report(args, token))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !res.status().is_success() {
        let status = res.status();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        bail!(
            "joining failed ({status}): {}",
            body["detail"].as_str().unwrap_or("no detail")
        );
    }
    let joined: AgentJoined = res.json().await?;
    let c = Credential {
        control_plane: args.control_plane.clone(),
        node_id: joined.node_id,
        credential: joined.credential,
        sync_wait_secs: Some(joined.sync_wait_secs),
    };
    write_private(&path, &toml::to_string(&c)?)?;
    tracing::info!(node_id = %c.node_id, "joined the control plane");
    Ok(c)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Run the agent until `stop` resolves.
pub async fn run(
    args: AgentArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.sync_wait + 15))
        .build()?;
    let cred = load_or_join(&args, &http).await?;
    let url = format!("{}/v1/agent/sync", cred.control_plane.trim_end_matches('/'));
    let sync_loop = async {
        let mut generation = 0;
        let mut backoff = Duration::from_millis(500);
        loop {
            let wait = cred
                .sync_wait_secs
                .map_or(args.sync_wait, |w| w.clamp(1, 30).min(args.sync_wait));
            let body = AgentSync {
                generation,
                wait_secs: Some(wait),
                memory_available: memory_available(),
                ..Default::default()
            };
            match http
                .post(&url)
                .bearer_auth(&cred.credential)
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    backoff = Duration::from_millis(500);
                    match r.json::<AgentDesired>().await {
                        Ok(d) => {
                            if d.generation != generation {
                                tracing::info!(
                                    generation = d.generation,
                                    instances = d.instances.len(),
                                    "desired state changed"
                                );
                            }
                            generation = d.generation;
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable sync answer"),
                    }
                    continue;
                }
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    return Err(anyhow::anyhow!(
                        "the control plane no longer accepts this node's credential (was the node deleted?); remove {} and join again",
                        credential_path(&args.data_dir).display()
                    ));
                }
                Ok(r) => tracing::warn!(status = %r.status(), "sync refused; retrying"),
                Err(e) => tracing::warn!(error = %e, "control plane unreachable; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    };
    tokio::select! {
        r = sync_loop => r,
        _ = stop => {
            tracing::info!("agent stopping");
            Ok(())
        }
    }
}
