//! The ShellWeGo node agent (`shellwego agent`): joins a control plane with a join token (once; the
//! node credential is kept in the data dir, mode 0600, and reused on
//! restart), reports the host's capacity, and keeps the agent channel open:
//! `POST /v1/agent/sync` long-polls carry status up (they are the node's
//! heartbeat) and bring the desired state down.

pub mod cgroup;
pub mod container;
pub mod dns;
pub mod driver;
pub mod exec;
pub mod exec_session;
pub mod host;
pub mod hostnet;
pub mod init;
pub mod logs;
pub mod mesh;
pub mod metrics;
pub mod microvm;
pub mod owner;
pub mod process;
pub mod reconcile;
pub mod tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use shellwego_api::agent::{AgentJoin, AgentSync, SsrfPolicy};
use shellwego_client::agent::{AgentClient, AgentError};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The control plane's URL, e.g. http://10.0.0.1:3000; with several
    /// replicas, their URLs separated by commas (the agent fails over
    /// between them) or one load balancer's.
    #[arg(long, env = "SHELLWEGO_CONTROL_PLANE", value_name = "URL[,URL…]")]
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
    /// The UDP port of the node's WireGuard mesh interface.
    #[arg(long, default_value_t = mesh::DEFAULT_PORT, value_name = "PORT")]
    pub wireguard_port: u16,
    /// No WireGuard mesh (it is made when the agent runs as root and has a
    /// routable --advertise-ip; internal traffic between nodes then goes
    /// over the nodes' network unencrypted).
    #[arg(long)]
    pub no_wireguard: bool,
    /// A label `key=value` to add to the node; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Seconds each sync may be held by the control plane (the heartbeat
    /// interval); the control plane may ask for less.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=30))]
    pub sync_wait: u64,
    /// The address instances on this node are reached at [default: the
    /// local address used to reach the control plane].
    #[arg(long, value_name = "IP")]
    pub advertise_ip: Option<String>,
    /// Runtime drivers to offer, comma-separated (microvm, process, container)
    /// [default: every one that works on this host; microvm only with KVM
    /// or SHELLWEGO_MICROVM_ACCEL set].
    #[arg(long, value_delimiter = ',', value_name = "DRIVERS")]
    pub drivers: Vec<String>,
    /// A registry (`host:port`) that may be spoken to over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// CPU cores to report when joining [default: the host's]. The scheduler
    /// places instances by the CPU they reserve (0.1 core at least) against
    /// this figure, so a larger one overcommits the CPU (e.g. many small
    /// instances on a small host). Read at the first start only, like the
    /// rest of the host report.
    #[arg(long, value_name = "CORES", value_parser = clap::value_parser!(i64).range(1..=4096))]
    pub cpus: Option<i64>,
    /// The tag in the name of everything this agent makes on the host
    /// (runtime state, cgroups, network namespaces, mounts), by which it
    /// finds and removes what an earlier run left that its state does not
    /// describe (1 to 6 of 0-9, a-z) [default: derived from the data
    /// directory's canonical path]. Two agents on one host must not share
    /// one.
    #[arg(long, env = "SHELLWEGO_OWNER_TAG", value_name = "TAG")]
    pub owner_tag: Option<owner::Owner>,
    /// Leave the host's cgroup v2 mount options alone. By default an agent
    /// running as root remounts the cgroup v2 hierarchy with
    /// `favordynmods` (Linux 6.0 or later; every other option kept): moving
    /// an instance into its cgroup then takes well under a millisecond
    /// instead of an RCU grace period (5–8 ms), for a little more cost on
    /// every fork and exit on the host. See docs/operations.md.
    #[arg(long)]
    pub no_cgroup_favordynmods: bool,
    /// Stop every instance (SIGTERM, SIGKILL after its stop timeout) when
    /// the agent stops. `shellwego agent` never does: it is a daemon whose
    /// restart must not stop apps (a restarted agent re-adopts them); `up`
    /// does unless started with `--keep-instances`.
    #[arg(skip)]
    pub stop_instances_on_exit: bool,
    /// How long instance output is kept on this node, for apps that set no
    /// `logging.retention` (e.g. 7d, 24h).
    #[arg(long, default_value = "7d", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub log_retention: Duration,
    /// The most bytes of one app's output kept on this node, for apps that
    /// set no `logging.max_size` (e.g. 64mb, 1gb; at least 1mb).
    #[arg(long, default_value = "64mb", value_parser = parse_size_arg, value_name = "SIZE")]
    pub log_max_app_bytes: u64,
}

impl AgentArgs {
    /// This agent's owner tag: `--owner-tag`, else derived from the data
    /// directory (which must exist).
    pub fn owner(&self) -> anyhow::Result<owner::Owner> {
        match &self.owner_tag {
            Some(o) => Ok(o.clone()),
            None => owner::Owner::for_data_dir(&self.data_dir)
                .with_context(|| format!("cannot resolve {}", self.data_dir.display())),
        }
    }
}

/// The drivers that work here (and that `--drivers` allows), making the
/// instances of `owner`; containers get resolvers of `dns`.
pub fn available_drivers(
    args: &AgentArgs,
    owner: &owner::Owner,
    dns: Option<Arc<dns::InternalDns>>,
) -> Vec<Arc<dyn driver::Driver>> {
    let allowed = |n: &str| args.drivers.is_empty() || args.drivers.iter().any(|d| d == n);
    let mut out: Vec<Arc<dyn driver::Driver>> = vec![];
    if allowed("microvm") {
        match microvm::MicrovmDriver::probe() {
            // Software emulation boots in seconds and runs code several
            // times slower: offered only when asked for.
            Ok(d)
                if d.host().accel == microvm::Accel::Tcg
                    && args.drivers.is_empty()
                    && std::env::var_os("SHELLWEGO_MICROVM_ACCEL").is_none() =>
            {
                tracing::info!("the microvm driver has no KVM here, only TCG (software emulation): not offered unless asked for (--drivers ...,microvm or SHELLWEGO_MICROVM_ACCEL=tcg)")
            }
            Ok(d) => out.push(Arc::new(d.owned_by(owner.clone()))),
            Err(why) if args.drivers.is_empty() => {
                tracing::info!(%why, "the microvm driver is not available here")
            }
            Err(why) => tracing::warn!(%why, "the microvm driver is not available here"),
        }
    }
    if allowed("container") {
        match container::ContainerDriver::probe() {
            Ok(d) => {
                let d = d.owned_by(owner.clone());
                out.push(Arc::new(match dns {
                    Some(dns) => d.with_dns(dns),
                    None => d,
                }))
            }
            Err(why) if args.drivers.is_empty() => {
                tracing::info!(%why, "the container driver is not available here")
            }
            Err(why) => tracing::warn!(%why, "the container driver is not available here"),
        }
    }
    if allowed("process") {
        out.push(Arc::new(
            process::ProcessDriver::new().owned_by(owner.clone(), "process"),
        ));
    }
    out
}

/// The local address this host uses to reach `control_plane` (no packet is sent).
fn detect_ip(control_plane: &str) -> String {
    let host = control_plane
        .split("://")
        .nth(1)
        .unwrap_or(control_plane)
        .split('/')
        .next()
        .unwrap_or("127.0.0.1");
    let target = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            use std::net::ToSocketAddrs;
            let addr = target
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            s.connect(addr)?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    shellwego_core::units::parse_duration(s)
        .ok_or_else(|| format!("{s}: a duration like 30m, 24h or 7d"))
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    shellwego_core::units::parse_size(s).ok_or_else(|| format!("{s}: a size like 64mb or 1gb"))
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
    let drivers: Vec<String> = available_drivers(args, &owner::Owner::default(), None)
        .iter()
        .map(|d| d.name().to_string())
        .collect();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |k: &str| read_first_number(&meminfo, k).unwrap_or(0) * 1024;
    let on_path = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
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
        cpu_cores: args.cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1)
        }),
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

async fn load_or_join(args: &AgentArgs, channel: &AgentClient) -> anyhow::Result<Credential> {
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
    // With several control-plane URLs, one that cannot be reached (or is
    // going away: 502/503/504) is skipped for the next; the client moves on
    // by itself, so trying once per URL tries each.
    let report = host_report(args, token);
    let urls = channel.control_planes().len();
    let mut attempt = 0;
    let joined = loop {
        attempt += 1;
        match channel.join(&report).await {
            Ok(j) => break j,
            Err(e @ AgentError::Transport { .. }) if attempt < urls => {
                tracing::warn!(error = %e, "cannot join through this control-plane replica; trying the next");
            }
            Err(AgentError::Refused { status, .. })
                if attempt < urls && matches!(status.as_u16(), 502..=504) =>
            {
                tracing::warn!(%status, "this control-plane replica is unavailable; trying the next");
            }
            Err(AgentError::Refused { status, detail }) => bail!(
                "joining failed ({status}): {}",
                detail.as_deref().unwrap_or("no detail")
            ),
            // "cannot reach <url>", and why.
            Err(e @ AgentError::Transport { .. }) => return Err(e.into()),
            Err(AgentError::Decode { source, .. }) => return Err(source.into()),
        }
    };
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
    // A sync is held up to its wait; the timeout leaves room beyond it.
    let channel = AgentClient::new(
        &args.control_plane,
        Duration::from_secs(args.sync_wait + 15),
    )?;
    let owner = args.owner()?;
    tracing::info!(owner_tag = %owner, "this agent's objects on the host carry its owner tag");
    if !args.no_cgroup_favordynmods && host::is_root() {
        match cgroup::favor_dynmods() {
            Ok(cgroup::DynMods::Set(points)) => tracing::info!(
                mounts = ?points,
                "remounted the cgroup v2 hierarchy with favordynmods: instances join their cgroups faster (--no-cgroup-favordynmods leaves it alone)"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::info!(error = %e, "cannot set favordynmods on the cgroup v2 hierarchy (Linux 6.0 or later has it); instance starts wait for the kernel on cgroup moves")
            }
        }
    }
    // Binding port 53 needs root, as containers do.
    let dns = if host::is_root() {
        dns::InternalDns::new().ok().map(Arc::new)
    } else {
        None
    };
    let drivers = available_drivers(&args, &owner, dns.clone());
    for want in &args.drivers {
        match want.as_str() {
            "process" | "container" | "microvm" => {}
            other => anyhow::bail!(
                "--drivers {other}: unknown driver; use process, container or microvm"
            ),
        }
        if !drivers.iter().any(|d| d.name() == want) {
            anyhow::bail!("--drivers {want}: the {want} driver does not work on this host (the log above says why)");
        }
    }
    let cred = load_or_join(&args, &channel).await?;
    if cred.control_plane != args.control_plane {
        tracing::info!(joined = %cred.control_plane, now = %args.control_plane, "using the control-plane URLs given now, not those the node joined with");
    }
    let channel = channel.with_credential(&cred.credential);
    if let Some(dns) = &dns {
        let c = channel.clone();
        dns.set_lookup(Arc::new(move |req| {
            let c = c.clone();
            Box::pin(async move { c.resolve(&req).await.map_err(anyhow::Error::from) })
        }));
    }
    let advertise_ip = args
        .advertise_ip
        .clone()
        .unwrap_or_else(|| detect_ip(channel.control_plane()));
    let routable = advertise_ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified());
    let mesh = if routable && !args.no_wireguard && host::is_root() {
        match mesh::Mesh::start(&args.data_dir, &owner, args.wireguard_port) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no WireGuard mesh on this node: traffic to other nodes goes unencrypted");
                None
            }
        }
    } else {
        None
    };
    // User-given URLs (sources, registries) are fetched through the SSRF
    // guard: strict until the first sync brings the control plane's policy.
    let ssrf = shellwego_net::ssrf::Guard::strict();
    let fetch = ssrf.client(reqwest::Client::builder().connect_timeout(Duration::from_secs(30)))?;
    let logs = logs::Logs::new(
        &args.data_dir,
        shellwego_api::logs::LogPolicy {
            retention_secs: args.log_retention.as_secs().max(1),
            max_bytes: args.log_max_app_bytes.max(1 << 20),
        },
    );
    let ctx = Arc::new(reconcile::Ctx {
        data_dir: args.data_dir.clone(),
        owner: owner.clone(),
        channel: channel.clone(),
        advertise_ip: advertise_ip.clone(),
        drivers,
        images: shellwego_image::ImageStore::new(args.data_dir.join("images"), &ssrf).ok(),
        pull: shellwego_image::PullOptions {
            insecure_registries: args.insecure_registries.clone(),
            ..Default::default()
        },
        ssrf: ssrf.clone(),
        fetch,
        fetching: Default::default(),
        logs: logs.clone(),
    });
    let shared = Arc::new(reconcile::Shared::new());
    ctx.adopt(&shared);
    {
        let shared = shared.clone();
        logs.start(Arc::new(move |id: &str| shared.has_instance(id)))
            .context("cannot start the log tailer")?;
    }
    // What earlier runs left that the saved state does not describe goes
    // before anything new is made (which the sweep would take for orphans).
    let sweep = {
        let (ctx, shared) = (ctx.clone(), shared.clone());
        tokio::task::spawn_blocking(move || ctx.sweep(&shared))
    };
    if let Err(e) = sweep.await {
        tracing::warn!(error = %e, "the sweep for orphaned instances failed");
    }
    let reconciler = tokio::spawn(ctx.clone().run(shared.clone()));
    let sampler = tokio::spawn(metrics::run(shared.clone(), args.data_dir.clone()));
    // The tasks this agent has (running, or sending their result): told to
    // the control plane with every sync, so a task in an answer that was
    // dropped comes again and one already here does not run twice.
    let known_tasks: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    // The log follows pushing now, by follow id.
    let mut follows: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        Default::default();
    let sync_loop = async {
        let mut generation = -1;
        let mut backoff = Duration::from_millis(500);
        // Reports are numbered so the control plane can tell a late one
        // (a dropped call it still processed) from the newest; starting at
        // the clock keeps the numbers growing across agent restarts.
        let mut seq = 0i64;
        loop {
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            seq = (seq + 1).max(clock);
            let wait = cred
                .sync_wait_secs
                .map_or(args.sync_wait, |w| w.clamp(1, 30).min(args.sync_wait));
            let events = shared.take_events();
            let samples = shared.take_samples();
            let body = AgentSync {
                samples: samples.clone(),
                generation,
                // A call carrying events is not held long (it is not
                // dropped for newer news, see below).
                wait_secs: Some(if events.is_empty() { wait } else { 1 }),
                memory_available: memory_available(),
                instances: Some(shared.reports(&advertise_ip)),
                events: events.clone(),
                internal_ip: Some(advertise_ip.clone()),
                seq: Some(seq),
                wireguard: mesh.as_ref().map(mesh::Mesh::report),
                tasks: known_tasks
                    .lock()
                    .map(|k| k.iter().cloned().collect())
                    .unwrap_or_default(),
            };
            let send = channel.sync(&body);
            // A status change goes up at once: the waiting call is dropped
            // and a new one carries the news.
            // (A call carrying events is never dropped: they would be
            // recorded twice.)
            let res = if events.is_empty() {
                tokio::select! {
                    r = send => Some(r),
                    _ = shared.dirty.notified() => None,
                }
            } else {
                Some(send.await)
            };
            let Some(res) = res else {
                put_back(&shared, events);
                shared.add_samples(samples.clone());
                continue;
            };
            match res {
                Ok(answer) => {
                    backoff = Duration::from_millis(500);
                    match answer.desired().await {
                        Ok(d) => {
                            if d.generation != generation {
                                tracing::info!(
                                    generation = d.generation,
                                    instances = d.instances.len(),
                                    "desired state changed"
                                );
                            }
                            generation = d.generation;
                            // Before the instances: they may need fetching.
                            apply_ssrf_policy(&ssrf, &d.ssrf);
                            if let (Some(m), Some(o)) = (&mesh, &d.overlay) {
                                if let Err(e) = m.apply(o) {
                                    tracing::warn!(error = %format!("{e:#}"), "cannot apply the mesh's peers");
                                }
                            }
                            logs.apply_desired(&d.instances);
                            if let Ok(mut w) = shared.desired.lock() {
                                *w = Some(d.instances);
                            }
                            shared.wake.notify_one();
                            // Follows before tasks: a query handed out with
                            // a follow sees no gap between the two.
                            follows.retain(|id, h| {
                                let keep = d.log_follows.iter().any(|f| &f.id == id);
                                if !keep {
                                    h.abort();
                                }
                                keep
                            });
                            for f in &d.log_follows {
                                if !follows.contains_key(&f.id) {
                                    let sub = logs.subscribe(&f.app_id, f.filter.clone(), 256);
                                    follows.insert(
                                        f.id.clone(),
                                        tokio::spawn(logs::follow(
                                            sub,
                                            channel.clone(),
                                            f.id.clone(),
                                        )),
                                    );
                                }
                            }
                            for task in d.tasks {
                                let new = known_tasks
                                    .lock()
                                    .map(|mut k| k.insert(task.id.clone()))
                                    .unwrap_or(false);
                                if new && task.kind == "exec_session" {
                                    tokio::spawn(exec_session::start(
                                        ctx.clone(),
                                        shared.clone(),
                                        known_tasks.clone(),
                                        task,
                                    ));
                                } else if new {
                                    tokio::spawn(exec::run(
                                        ctx.clone(),
                                        shared.clone(),
                                        known_tasks.clone(),
                                        task,
                                    ));
                                }
                            }
                        }
                        Err(
                            AgentError::Decode { source: e, .. }
                            | AgentError::Transport { source: e, .. },
                        ) => tracing::warn!(error = %e, "unreadable sync answer"),
                        Err(e @ AgentError::Refused { .. }) => {
                            tracing::warn!(error = %e, "unreadable sync answer")
                        }
                    }
                    continue;
                }
                Err(AgentError::Refused { status, .. })
                    if status == shellwego_client::StatusCode::UNAUTHORIZED =>
                {
                    return Err(anyhow::anyhow!(
                        "the control plane no longer accepts this node's credential (was the node deleted?); remove {} and join again",
                        credential_path(&args.data_dir).display()
                    ));
                }
                Err(AgentError::Refused { status, detail, .. }) => {
                    put_back(&shared, events);
                    // Samples are not sent again after a refusal (were they
                    // the reason, every later sync would be refused too).
                    tracing::warn!(status = %status, detail = detail.as_deref().unwrap_or(""), "sync refused; retrying")
                }
                Err(
                    AgentError::Transport { source: e, .. } | AgentError::Decode { source: e, .. },
                ) => {
                    put_back(&shared, events);
                    shared.add_samples(samples.clone());
                    tracing::warn!(error = %e, "control plane unreachable; retrying")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    };
    let res = tokio::select! {
        r = sync_loop => r,
        _ = stop => {
            if args.stop_instances_on_exit {
                tracing::info!("agent stopping, and its instances with it");
            } else {
                tracing::info!("agent stopping (instances keep running; a restarted agent re-adopts them)");
            }
            Ok(())
        }
    };
    reconciler.abort();
    sampler.abort();
    if args.stop_instances_on_exit {
        // Nothing may start one while they stop.
        let _ = reconciler.await;
        let (ctx, shared) = (ctx.clone(), shared.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || ctx.stop_all(&shared)).await {
            tracing::warn!(error = %e, "stopping the instances failed");
        }
    }
    res
}

/// The control plane's SSRF policy, applied to every fetch of a user-given
/// URL from now on. An `allow` entry that is not a network is left out
/// (stricter), with a warning.
fn apply_ssrf_policy(guard: &shellwego_net::ssrf::Guard, policy: &SsrfPolicy) {
    let mut allow = Vec::with_capacity(policy.allow.len());
    for a in &policy.allow {
        match a.parse() {
            Ok(net) => allow.push(net),
            Err(e) => {
                tracing::warn!(network = %a, error = %e, "ignoring an [ssrf] allow entry that is not a network")
            }
        }
    }
    let config = shellwego_net::ssrf::SsrfConfig {
        allow,
        allow_private_targets: policy.allow_private_targets,
    };
    if guard.config() != config {
        tracing::info!(allow = ?policy.allow, allow_private_targets = policy.allow_private_targets, "SSRF policy from the control plane");
        guard.set(&config);
    }
}

/// Events not delivered go out with the next sync.
fn put_back(shared: &reconcile::Shared, events: Vec<shellwego_api::agent::AgentEvent>) {
    if events.is_empty() {
        return;
    }
    let again = shared.take_events();
    shared.restore_events(events.into_iter().chain(again).collect());
}

#[cfg(test)]
mod tests {
    // Test code may panic: a panic is how a test fails.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn args(extra: &[&str]) -> AgentArgs {
        let dir = std::env::temp_dir();
        let mut argv = vec![
            "agent",
            "--control-plane",
            "http://127.0.0.1:1",
            "--drivers",
            "process",
            "--data-dir",
            dir.to_str().unwrap(),
        ];
        argv.extend(extra);
        Cli::try_parse_from(argv).unwrap().agent
    }

    #[test]
    fn the_control_planes_ssrf_policy_is_applied_without_bad_entries() {
        let g = shellwego_net::ssrf::Guard::strict();
        apply_ssrf_policy(
            &g,
            &SsrfPolicy {
                allow: vec!["10.1.0.0/16".into(), "not a network".into()],
                allow_private_targets: false,
            },
        );
        assert_eq!(g.config().allow, vec!["10.1.0.0/16".parse().unwrap()]);
        assert!(g.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(g.check_ip("10.2.0.1".parse().unwrap()).is_err());
        assert!(g.check_ip("127.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn cpus_replaces_the_reported_cores() {
        let host = host_report(&args(&[]), "t".into()).cpu_cores;
        assert!(host >= 1);
        assert_eq!(
            host_report(&args(&["--cpus", "11"]), "t".into()).cpu_cores,
            11
        );
        assert!(Cli::try_parse_from(["agent", "--control-plane", "x", "--cpus", "0"]).is_err());
    }
}
