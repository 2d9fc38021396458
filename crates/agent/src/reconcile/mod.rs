//! The reconciler: makes the node's assigned instances true and keeps them
//! true. For each desired instance it prepares the files (pulls the image,
//! or fetches and unpacks the archive), starts it through its driver,
//! health-checks it, restarts it with exponential backoff when it exits,
//! and stops (SIGTERM, then SIGKILL after the stop timeout) and cleans up
//! instances that are no longer wanted. Each instance's state is saved in
//! its directory, so a restarted agent re-adopts the processes that still
//! run instead of starting duplicates; then it removes what earlier runs
//! left that no saved state describes (orphans: see [`crate::owner`]),
//! with an `orphan_removed` event for each instance. [`Ctx::stop_all`]
//! stops every instance (`up` on Ctrl-C).
//!
//! Where each instance is in its life cycle is a `InstancePhase`,
//! changed only by one transition function (see `phase.rs`); a pass over
//! the instances (`Ctx::pass`) is a few named steps (new instances, an
//! unwanted one stopped, a running one tended, a due start) that do the
//! I/O and report what came of it to that function.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shellwego_api::agent::{AgentEvent, DesiredInstance, InstanceReport};
use shellwego_core::model::InstanceStatus;
use tokio::sync::Notify;

use crate::driver::{Command, Driver, Launch, Reply, Running};

mod phase;

use phase::{Happened, InstancePhase, Waiting};

/// Largest archive fetched for a tarball source.
const MAX_ARCHIVE: u64 = 1 << 30;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The reconciler looks at every instance (exits, due health checks) this often.
const TICK: Duration = Duration::from_millis(100);
/// How long a removed, healthy instance keeps serving after it is reported
/// `stopping`: routers refresh their tables within a second of a change.
const DEREGISTER_GRACE: Duration = Duration::from_secs(2);
/// A TCP health check's connection to a microVM must stay open this long
/// (QEMU's port forward accepts before the guest listens).
const TCP_SETTLE: Duration = Duration::from_millis(150);
/// How often a started instance is checked until it first passes, for this
/// long after its start (then at its interval, at most every second).
const STARTING_CHECK: Duration = Duration::from_millis(100);
const STARTING_WINDOW: Duration = Duration::from_secs(5);
/// A freshly started instance is watched by a task of its own (see
/// `watch_start`): it tries to connect to the health-check port after this
/// long, then at intervals growing by an eighth each time up to
/// `STARTING_CHECK` (at 1, 2.1, 3.4, 4.8, 6.4… ms: 22 tries in the first
/// 100 ms, 41 in the first second, then 10 a second), and runs the health
/// check on the first connection accepted (a refused connect costs a few
/// microseconds). An instance that listens within a millisecond is seen
/// healthy within a few; one that takes T to start, within about T/8 of it.
/// With many instances starting at once the first interval grows, so that
/// all watchers together try at most about `STARTING_POLL_BATCH` connects
/// per `STARTING_POLL_FIRST` (4000 a second), until each is at
/// `STARTING_CHECK` (the rate of the regular starting checks).
const STARTING_POLL_FIRST: Duration = Duration::from_millis(1);
const STARTING_POLL_BATCH: u32 = 4;
/// An instance may use `driver::BOOT_CPU_MILLIS` until it first passes its
/// health check, or this long after its start, whichever comes first.
const BOOT_WINDOW: Duration = Duration::from_secs(30);
/// Unused images and archives are removed this often,
const GC_EVERY: Duration = Duration::from_secs(600);
/// and this long after an instance is removed.
const GC_AFTER_REMOVAL: Duration = Duration::from_secs(30);

/// What is saved per instance in `<dir>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    desired: DesiredInstance,
    port: u16,
    running: Option<Running>,
    started_at: Option<i64>,
    restarts: i64,
    image_pinned: Option<String>,
    launch: Option<SavedLaunch>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedLaunch {
    root: PathBuf,
    is_rootfs: bool,
    argv: Vec<String>,
    workdir: String,
    env: BTreeMap<String, String>,
}

/// One instance on this node: what is saved, and where it is in its life
/// cycle (see `phase.rs`).
#[derive(Debug)]
struct Local {
    saved: Saved,
    dir: PathBuf,
    /// Changed only by [`Local::transition`].
    phase: InstancePhase,
    /// Reported with the status: why it is in its phase.
    reason: Option<String>,
    consecutive_crashes: u32,
    health_passed: i64,
    health_failures: u32,
    /// When the next regular health check is due.
    next_check: Instant,
    /// A regular health check task is in flight (not part of the life
    /// cycle: the task's result may arrive in any phase).
    checking: bool,
    /// A `watch_start` task is checking it (the regular checks wait).
    watching: bool,
}

impl Local {
    /// A new instance, in `phase`.
    fn new(saved: Saved, dir: PathBuf, phase: InstancePhase, reason: Option<String>) -> Local {
        Local {
            saved,
            dir,
            phase,
            reason,
            consecutive_crashes: 0,
            health_passed: 0,
            health_failures: 0,
            next_check: Instant::now(),
            checking: false,
            watching: false,
        }
    }
}

/// Shared between the reconciler loop and the sync loop.
pub struct Shared {
    pub desired: Mutex<Option<Vec<DesiredInstance>>>,
    locals: Mutex<BTreeMap<String, Local>>,
    events: Mutex<Vec<AgentEvent>>,
    /// Something the control plane should hear about changed.
    pub dirty: Notify,
    /// The desired state changed.
    pub wake: Notify,
    /// Adoption of existing instances is done; reports are complete.
    pub ready: std::sync::atomic::AtomicBool,
    /// `watch_start` tasks running.
    watchers: std::sync::atomic::AtomicU32,
    /// Usage samples waiting for the next sync.
    samples: Mutex<Vec<shellwego_api::metrics::Sample>>,
}

/// An instance's environment: the image's (or archive's), the app's, and
/// what the platform sets (`PORT`, `SHELLWEGO_*`).
fn launch_env(saved: &Saved, sl: &SavedLaunch) -> BTreeMap<String, String> {
    let d = &saved.desired;
    let mut env = sl.env.clone();
    env.extend(d.env.clone());
    env.insert("PORT".into(), saved.port.to_string());
    env.insert("SHELLWEGO_APP".into(), d.app_name.clone());
    env.insert("SHELLWEGO_APP_ID".into(), d.app_id.clone());
    env.insert("SHELLWEGO_INSTANCE_ID".into(), d.id.clone());
    env.insert("SHELLWEGO_REGION".into(), d.region.clone());
    env
}

/// What an `exec` in an instance needs of it: its driver's name, its
/// running handle, and how it was launched.
pub struct ExecInfo {
    pub driver: String,
    pub running: Running,
    pub root: PathBuf,
    pub is_rootfs: bool,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
}

impl Shared {
    /// Whether the instance is this agent's (wanted, running or stopping).
    pub fn has_instance(&self, id: &str) -> bool {
        self.locals
            .lock()
            .map(|l| l.contains_key(id))
            .unwrap_or(true)
    }

    /// The instance `id`, if it runs here.
    pub fn exec_info(&self, id: &str) -> Option<ExecInfo> {
        let locals = self.locals.lock().ok()?;
        let l = locals.get(id)?;
        let running = l.saved.running.clone()?;
        let launch = l.saved.launch.clone()?;
        Some(ExecInfo {
            driver: running.driver.clone(),
            env: launch_env(&l.saved, &launch),
            running,
            root: launch.root,
            is_rootfs: launch.is_rootfs,
            workdir: launch.workdir,
        })
    }
}

pub struct Ctx {
    pub data_dir: PathBuf,
    /// Names what the drivers make on the host; see [`crate::owner`].
    pub owner: crate::owner::Owner,
    /// The control plane's agent channel, with the node credential.
    pub channel: shellwego_client::agent::AgentClient,
    pub advertise_ip: String,
    pub drivers: Vec<Arc<dyn Driver>>,
    pub images: Option<shellwego_image::ImageStore>,
    pub pull: shellwego_image::PullOptions,
    /// The SSRF policy user-given URLs are fetched under: the control
    /// plane's `[ssrf]` section once a sync has brought it, strict before.
    /// `images` and `fetch` are made by it.
    pub ssrf: shellwego_net::ssrf::Guard,
    /// Fetches user-given URLs (tarball sources).
    pub fetch: reqwest::Client,
    /// One lock per archive being downloaded: replicas starting together
    /// share one download.
    pub fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Instance output: where each start writes it, how it is kept.
    pub logs: Arc<crate::logs::Logs>,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            desired: Mutex::new(None),
            locals: Mutex::new(BTreeMap::new()),
            events: Mutex::new(vec![]),
            dirty: Notify::new(),
            wake: Notify::new(),
            ready: std::sync::atomic::AtomicBool::new(false),
            watchers: std::sync::atomic::AtomicU32::new(0),
            samples: Mutex::new(vec![]),
        }
    }

    /// Every instance this agent has, as the control plane wants to hear.
    pub fn reports(&self, advertise_ip: &str) -> Vec<InstanceReport> {
        let Ok(locals) = self.locals.lock() else {
            return vec![];
        };
        locals
            .iter()
            .map(|(id, l)| InstanceReport {
                id: id.clone(),
                status: l.phase.status().to_string(),
                reason: l.reason.clone(),
                driver: Some(l.saved.desired.driver.clone()),
                ip: Some(report_ip(l.saved.running.as_ref(), advertise_ip)),
                port: Some(l.saved.port),
                pid: l.saved.running.as_ref().map(|r| r.pid),
                started_at: l.saved.started_at,
                health_checks_passed: l.health_passed,
                restarts: l.saved.restarts,
                image_pinned: l.saved.image_pinned.clone(),
            })
            .collect()
    }

    /// What the sampler measures: the instances running now.
    pub fn sample_targets(&self) -> Vec<crate::metrics::Target> {
        let Ok(locals) = self.locals.lock() else {
            return vec![];
        };
        locals
            .iter()
            .filter_map(|(id, l)| {
                Some(crate::metrics::Target {
                    id: id.clone(),
                    running: l.saved.running.clone()?,
                    memory: l.saved.desired.memory,
                    cpu_millis: l.saved.desired.cpu_millis,
                    dir: l.dir.clone(),
                })
            })
            .collect()
    }

    /// Keep samples for the next sync (the newest 10 000 at most: a
    /// control plane away for long loses the oldest).
    pub fn add_samples(&self, mut new: Vec<shellwego_api::metrics::Sample>) {
        if let Ok(mut s) = self.samples.lock() {
            s.append(&mut new);
            let over = s.len().saturating_sub(10_000);
            s.drain(..over);
        }
    }

    pub fn take_samples(&self) -> Vec<shellwego_api::metrics::Sample> {
        self.samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }

    pub fn take_events(&self) -> Vec<AgentEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    pub fn restore_events(&self, events: Vec<AgentEvent>) {
        if let Ok(mut e) = self.events.lock() {
            *e = events;
        }
    }

    fn event(&self, instance_id: &str, kind: &str, reason: String, exit_code: Option<i32>) {
        if let Ok(mut e) = self.events.lock() {
            e.push(AgentEvent {
                instance_id: instance_id.to_string(),
                kind: kind.into(),
                reason,
                exit_code,
                at: now_micros(),
            });
        }
        self.dirty.notify_one();
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

fn instances_dir(data: &Path) -> PathBuf {
    data.join("instances")
}

fn save(l: &Local) {
    if let Ok(text) = serde_json::to_string_pretty(&l.saved) {
        let tmp = l.dir.join("state.json.tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, l.dir.join("state.json"));
        }
    }
}

/// Where routers and other nodes reach an instance: the node's address
/// when it has a routable one and the port answers there (the process's
/// own socket, QEMU's forward, a container's published port), else (a
/// loopback node, `shellwego up`; a container not published) the
/// instance's own address when it has one.
fn report_ip(r: Option<&Running>, advertise_ip: &str) -> String {
    let routable = advertise_ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified());
    match r {
        Some(r) => match r.extra.get("ip") {
            Some(own)
                if !routable || r.extra.get("published").map(String::as_str) != Some("true") =>
            {
                own.clone()
            }
            _ => advertise_ip.to_string(),
        },
        None => advertise_ip.to_string(),
    }
}

/// A port for a new instance: free now, not another instance's here, and
/// outside the kernel's ephemeral range, which outgoing connections (health
/// checks, the agent's own calls, the apps') draw from: a port handed out
/// from that range can be taken by a connection before the app binds it.
fn free_port(taken: &std::collections::HashSet<u16>) -> u16 {
    let (lo, hi) = instance_ports();
    let span = u32::from(hi - lo) + 1;
    let start = (now_micros().unsigned_abs() % u64::from(span)) as u32;
    for k in 0..span {
        let p = lo + ((start + k) % span) as u16;
        if !taken.contains(&p) && std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
    // Everything taken: let the kernel choose.
    (0..8)
        .filter_map(|_| {
            std::net::TcpListener::bind("0.0.0.0:0")
                .and_then(|l| l.local_addr())
                .ok()
        })
        .map(|a| a.port())
        .find(|p| !taken.contains(p))
        .unwrap_or(0)
}

/// Instance ports: below the ephemeral range when there is room (10000 up
/// to it), else above it.
fn instance_ports() -> (u16, u16) {
    let eph = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if eph.0 > 12_000 {
        (10_000, eph.0 - 1)
    } else if eph.1 < 63_000 {
        (eph.1 + 1, 65_535)
    } else {
        (10_000, 65_535)
    }
}

fn backoff(n: u32) -> Duration {
    (Duration::from_millis(500) * 2u32.saturating_pow(n.min(8))).min(MAX_BACKOFF)
}

/// What a pass decided to do once the instances are unlocked.
#[derive(Default)]
struct Work {
    /// New instances to prepare.
    prepare: Vec<DesiredInstance>,
    /// Regular health checks: (instance, where, a starting instance's).
    check: Vec<(String, Probe, bool)>,
    /// Fresh starts to watch: (instance, its start, where).
    watch: Vec<(String, i64, Probe)>,
    /// Instances to forget (stopped and cleaned up, or never runnable).
    gone: Vec<String>,
    /// The control plane should hear about a change.
    dirty: bool,
}

/// Run a driver command whose answer is not needed (`Terminate`, `Kill`,
/// `Cleanup`); a failure is logged, never dropped: a failed cleanup can
/// leave cgroups, network namespaces or overlays behind.
fn command(driver: &dyn Driver, instance_id: &str, cmd: Command<'_>) {
    let name = cmd.name();
    if let Err(e) = driver.run(cmd) {
        tracing::warn!(
            instance_id = %instance_id,
            command = name,
            driver = driver.name(),
            error = %format!("{e:#}"),
            "driver command failed"
        );
    }
}

/// Step: an instance that is no longer wanted. A running one is reported
/// `stopping` at once, gets SIGTERM when the routers have dropped it (see
/// `DEREGISTER_GRACE`) and SIGKILL after its stop timeout, then is cleaned
/// up and forgotten; one that is not running is cleaned up and forgotten
/// (once its preparation, if any, is over).
fn stop_unwanted(id: &str, l: &mut Local, driver: &dyn Driver, work: &mut Work) {
    let Some(r) = l.saved.running.clone() else {
        if !l.phase.is_preparing() {
            command(
                driver,
                id,
                Command::Cleanup {
                    instance_id: id,
                    handle: None,
                },
            );
            work.gone.push(id.to_string());
        }
        return;
    };
    if !l.phase.is_leaving() {
        // Report `stopping` at once (the routers drop it), and signal only
        // when they have had time to: requests already in flight to it
        // then finish.
        let grace = if matches!(l.phase, InstancePhase::Healthy { .. }) {
            DEREGISTER_GRACE
        } else {
            Duration::ZERO
        };
        l.transition(Happened::Removed {
            term_at: Instant::now() + grace,
        });
        work.dirty = true;
    }
    if matches!(l.phase, InstancePhase::Deregistering { term_at } if Instant::now() >= term_at) {
        command(driver, id, Command::Terminate(&r));
        l.transition(Happened::Terminated {
            deadline: Instant::now() + Duration::from_millis(l.saved.desired.stop_timeout_ms),
        });
        work.dirty = true;
    }
    if driver.poll(&r).is_some() {
        command(
            driver,
            id,
            Command::Cleanup {
                instance_id: id,
                handle: Some(&r),
            },
        );
        work.gone.push(id.to_string());
    } else if matches!(l.phase, InstancePhase::Stopping { deadline } if Instant::now() > deadline) {
        command(driver, id, Command::Kill(&r));
    }
}

impl Ctx {
    fn driver(&self, name: &str) -> Option<Arc<dyn Driver>> {
        self.drivers.iter().find(|d| d.name() == name).cloned()
    }

    /// Re-adopt what earlier runs of the agent left: live instances keep
    /// running; dead ones are restarted if still wanted.
    pub fn adopt(&self, shared: &Shared) {
        let Ok(entries) = std::fs::read_dir(instances_dir(&self.data_dir)) else {
            shared
                .ready
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return;
        };
        let mut locals = match shared.locals.lock() {
            Ok(l) => l,
            Err(_) => return,
        };
        for e in entries.flatten() {
            let dir = e.path();
            let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else {
                continue;
            };
            let Ok(mut saved) = serde_json::from_str::<Saved>(&text) else {
                continue;
            };
            let id = saved.desired.id.clone();
            let alive = saved
                .running
                .as_ref()
                .is_some_and(|r| self.driver(&r.driver).is_some_and(|d| d.adopt(r)));
            if alive {
                tracing::info!(instance_id = %id, pid = saved.running.as_ref().map(|r| r.pid), "re-adopted a running instance");
            } else {
                saved.running = None;
            }
            // A live one is checked until it passes, like a fresh start; a
            // dead one is restarted at once.
            let (phase, reason) = if alive {
                (InstancePhase::Starting { settled: false }, None)
            } else {
                (
                    InstancePhase::Backoff {
                        until: Instant::now(),
                        after: Waiting::Crashed,
                    },
                    Some("was not running when the agent started".into()),
                )
            };
            locals.insert(id, Local::new(saved, dir, phase, reason));
        }
        shared
            .ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// After [`Ctx::adopt`], before anything new starts: remove what this
    /// agent's owner made on the host for instances its saved state does
    /// not describe (or describes as not running), and instance
    /// directories without a state; one `orphan_removed` event per
    /// instance. Blocking.
    pub fn sweep(&self, shared: &Shared) {
        let keep: HashSet<String> = match shared.locals.lock() {
            Ok(locals) => locals
                .iter()
                .filter_map(|(id, l)| l.saved.running.as_ref().map(|r| (id, r)))
                .flat_map(|(id, r)| {
                    let mut names = vec![id.clone()];
                    names.extend(r.extra.get("container_id").cloned());
                    for paths in [r.extra.get("cgroups"), r.extra.get("cgroup")]
                        .into_iter()
                        .flatten()
                    {
                        names.extend(paths.split('\n').filter_map(|p| {
                            Path::new(p)
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                        }));
                    }
                    names
                })
                .collect(),
            Err(_) => return,
        };
        let mut found = vec![];
        for d in &self.drivers {
            found.extend(d.sweep(&keep));
        }
        found.extend(crate::owner::sweep_cgroups(&self.owner, &keep));
        let orphans = crate::owner::merge(found);
        for o in &orphans {
            let what = o.removed.join("; ");
            tracing::warn!(instance_id = %o.instance_id, removed = %what, "removed an orphaned instance (left by an earlier run of this agent, not in its saved state)");
            shared.event(
                &o.instance_id,
                "orphan_removed",
                format!("left by an earlier run of this agent and not in its saved state; removed: {what}"),
                None,
            );
        }
        // Directories of instances whose state was never saved.
        let described: HashSet<String> = shared
            .locals
            .lock()
            .map(|l| {
                l.values()
                    .map(|l| l.dir.clone())
                    .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        for e in std::fs::read_dir(instances_dir(&self.data_dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            if described.contains(&name) || dir.join("state.json").exists() || !dir.is_dir() {
                continue;
            }
            // Never through a mount (it could reach into an image).
            let mounted = std::fs::canonicalize(&dir)
                .map(|d| !crate::host::mounts_under(&d).is_empty())
                .unwrap_or(true);
            if mounted {
                tracing::warn!(dir = %dir.display(), "an instance directory without a state still has mounts: left alone");
            } else if std::fs::remove_dir_all(&dir).is_ok() {
                tracing::info!(dir = %dir.display(), "removed an instance directory without a state");
            }
        }
    }

    /// Stop every running instance (SIGTERM, SIGKILL after its stop
    /// timeout) and release what its driver made; their saved state stays
    /// (without a process), so a later start restarts those still wanted.
    /// The reconciler loop must not run. Blocking.
    pub fn stop_all(&self, shared: &Shared) {
        struct Stopping {
            id: String,
            driver: Arc<dyn Driver>,
            r: Running,
            deadline: Instant,
            killed: bool,
            done: bool,
        }
        let mut all: Vec<Stopping> = match shared.locals.lock() {
            Ok(locals) => locals
                .iter()
                .filter_map(|(id, l)| {
                    let r = l.saved.running.clone()?;
                    Some(Stopping {
                        id: id.clone(),
                        driver: self.driver(&r.driver)?,
                        deadline: Instant::now()
                            + Duration::from_millis(l.saved.desired.stop_timeout_ms),
                        r,
                        killed: false,
                        done: false,
                    })
                })
                .collect(),
            Err(_) => return,
        };
        if !all.is_empty() {
            tracing::info!(instances = all.len(), "stopping the instances");
        }
        for s in &all {
            if let Err(e) = s.driver.run(Command::Terminate(&s.r)) {
                tracing::warn!(instance_id = %s.id, error = %format!("{e:#}"), "cannot signal an instance");
            }
        }
        let mut pause = Duration::from_millis(2);
        while all.iter().any(|s| !s.done) {
            for s in all.iter_mut().filter(|s| !s.done) {
                if s.driver.poll(&s.r).is_some() {
                    command(
                        s.driver.as_ref(),
                        &s.id,
                        Command::Cleanup {
                            instance_id: &s.id,
                            handle: Some(&s.r),
                        },
                    );
                    s.done = true;
                    if let Ok(mut locals) = shared.locals.lock() {
                        if let Some(l) = locals.get_mut(&s.id) {
                            l.transition(Happened::StoppedWithAgent);
                            save(l);
                        }
                    }
                } else if !s.killed && Instant::now() > s.deadline {
                    tracing::warn!(instance_id = %s.id, "did not stop in time: killing it");
                    command(s.driver.as_ref(), &s.id, Command::Kill(&s.r));
                    s.killed = true;
                    // A process that survives SIGKILL (uninterruptible):
                    // given up on after a while.
                    s.deadline = Instant::now() + Duration::from_secs(10);
                } else if s.killed && Instant::now() > s.deadline {
                    tracing::warn!(instance_id = %s.id, pid = s.r.pid, "still running after SIGKILL: left as it is");
                    s.done = true;
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        crate::owner::prune(&self.owner);
    }

    /// The reconciler loop; runs forever.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let mut next_gc = Instant::now() + GC_AFTER_REMOVAL;
        loop {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            if self.pass(&shared) {
                next_gc = next_gc.min(Instant::now() + GC_AFTER_REMOVAL);
            }
            if Instant::now() >= next_gc {
                next_gc = Instant::now()
                    + if self.gc(&shared).await {
                        GC_EVERY
                    } else {
                        GC_AFTER_REMOVAL
                    };
            }
        }
    }

    /// Remove images and downloaded archives no instance here uses. Returns
    /// false when it had to wait (an instance is being prepared: its image
    /// may not be recorded yet).
    async fn gc(&self, shared: &Shared) -> bool {
        let (keep_images, keep_archives) = {
            let Ok(locals) = shared.locals.lock() else {
                return true;
            };
            if locals.values().any(|l| l.phase.is_preparing()) {
                return false;
            }
            let images: Vec<String> = locals
                .values()
                .filter_map(|l| l.saved.image_pinned.as_deref())
                .filter_map(|p| p.rsplit_once('@').map(|(_, d)| d.to_string()))
                .collect();
            let archives: std::collections::HashSet<String> = locals
                .values()
                .filter_map(|l| l.saved.desired.archive_url.as_deref())
                .map(archive_key)
                .collect();
            (images, archives)
        };
        let images = self.images.clone();
        let archives_dir = self.data_dir.join("archives");
        let res = tokio::task::spawn_blocking(move || {
            let mut freed = 0u64;
            if let Some(images) = images {
                match images.gc(&keep_images) {
                    Ok(n) => freed += n,
                    Err(e) => tracing::warn!(error = %e, "image gc failed"),
                }
            }
            for e in std::fs::read_dir(&archives_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.split('.').next().unwrap_or_default();
                let meta = e.metadata().ok();
                // A `.part` is a download in progress, unless it is stale.
                let stale = meta
                    .as_ref()
                    .and_then(|m| m.modified().ok())
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(3600));
                if keep_archives.contains(key) || (name.ends_with(".part") && !stale) {
                    continue;
                }
                // An archive is a file; its unpacked tree a directory.
                if meta.as_ref().is_some_and(|m| m.is_dir()) {
                    let _ = std::fs::remove_dir_all(e.path());
                } else if std::fs::remove_file(e.path()).is_ok() {
                    freed += meta.map_or(0, |m| m.len());
                }
            }
            freed
        })
        .await;
        if let Ok(freed) = res {
            if freed > 0 {
                tracing::info!(freed_bytes = freed, "removed unused images and archives");
            }
        }
        true
    }

    /// One pass over every instance; true when some were removed. The
    /// steps run under the lock of the instances and only decide (and
    /// call the drivers, which answer at once); preparation and health
    /// checks run as tasks of their own, started at the end.
    fn pass(self: &Arc<Self>, shared: &Arc<Shared>) -> bool {
        let desired = match shared.desired.lock() {
            Ok(d) => d.clone(),
            Err(_) => return false,
        };
        // Until the control plane has answered once, change nothing.
        let Some(desired) = desired else {
            return false;
        };
        let want: HashMap<&str, &DesiredInstance> =
            desired.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut work = Work::default();
        {
            let Ok(mut locals) = shared.locals.lock() else {
                return false;
            };
            self.add_new(&desired, &mut locals, &mut work);
            for (id, l) in locals.iter_mut() {
                let Some(driver) = self.driver(&l.saved.desired.driver) else {
                    if l.phase.status() != InstanceStatus::Failed {
                        l.transition(Happened::NoDriver);
                        work.dirty = true;
                    }
                    if !want.contains_key(id.as_str()) {
                        work.gone.push(id.clone());
                    }
                    continue;
                };
                if !want.contains_key(id.as_str()) {
                    stop_unwanted(id, l, driver.as_ref(), &mut work);
                } else if let Some(r) = l.saved.running.clone() {
                    self.tend_running(shared, id, l, driver.as_ref(), &r, &mut work);
                } else if l.phase.start_due(Instant::now()) {
                    self.start_due(shared, id, l, &driver, &mut work);
                }
            }
            for id in &work.gone {
                if let Some(l) = locals.remove(id) {
                    let _ = std::fs::remove_dir_all(&l.dir);
                }
                work.dirty = true;
            }
        }
        let removed = !work.gone.is_empty();
        self.spawn_work(shared, work);
        removed
    }

    /// Step: a `Local` for each desired instance this node does not have
    /// yet, with a free port; its preparation starts after the pass.
    fn add_new(
        &self,
        desired: &[DesiredInstance],
        locals: &mut BTreeMap<String, Local>,
        work: &mut Work,
    ) {
        let mut ports: HashSet<u16> = locals.values().map(|l| l.saved.port).collect();
        for d in desired {
            if locals.contains_key(&d.id) {
                continue;
            }
            let dir = instances_dir(&self.data_dir).join(&d.id);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!(error = %e, "cannot create an instance directory");
                continue;
            }
            let port = free_port(&ports);
            ports.insert(port);
            let saved = Saved {
                desired: d.clone(),
                port,
                running: None,
                started_at: None,
                restarts: 0,
                image_pinned: None,
                launch: None,
            };
            let l = Local::new(
                saved,
                dir,
                InstancePhase::Preparing { retrying: false },
                Some("preparing".into()),
            );
            save(&l);
            work.prepare.push(d.clone());
            locals.insert(d.id.clone(), l);
            work.dirty = true;
        }
    }

    /// Step: a running, wanted instance. Has it exited (then it restarts
    /// after a backoff)? Is a health check due? Is its boot CPU allowance
    /// over?
    fn tend_running(
        &self,
        shared: &Shared,
        id: &str,
        l: &mut Local,
        driver: &dyn Driver,
        r: &Running,
        work: &mut Work,
    ) {
        if let Some(exit) = driver.poll(r) {
            command(
                driver,
                id,
                Command::Cleanup {
                    instance_id: id,
                    handle: Some(r),
                },
            );
            let reason = exit.describe();
            tracing::warn!(instance_id = %id, %reason, "instance exited");
            let kind = if exit.oom_killed {
                "oom_killed"
            } else {
                "crashed"
            };
            let code = exit.code;
            l.transition(Happened::Exited(exit));
            save(l);
            shared.event(id, kind, reason, code);
            work.dirty = true;
            return;
        }
        let healthy = matches!(l.phase, InstancePhase::Healthy { .. });
        if !l.checking && !l.watching && Instant::now() >= l.next_check {
            l.checking = true;
            let hc = &l.saved.desired.health_check;
            // A fresh instance is checked often until it first passes, so
            // it serves as soon as it listens.
            let starting = !healthy
                && l.saved
                    .started_at
                    .is_some_and(|t| now_micros() - t < STARTING_WINDOW.as_micros() as i64);
            let every = if healthy {
                hc.interval_ms.clamp(500, 3_600_000)
            } else if starting {
                STARTING_CHECK.as_millis() as u64
            } else {
                hc.interval_ms.clamp(500, 1000)
            };
            l.next_check = Instant::now() + Duration::from_millis(every);
            work.check.push((id.to_string(), Probe::of(l, r), starting));
        }
        // Up (healthy, or long enough after its start): its boot CPU
        // allowance ends.
        let boot_over = l
            .saved
            .started_at
            .is_some_and(|t| now_micros() - t > BOOT_WINDOW.as_micros() as i64);
        if l.phase.is_up() && !l.phase.is_settled() && (healthy || boot_over) {
            l.transition(Happened::Settled);
            if let Err(e) = driver.settle(r, l.saved.desired.cpu_millis) {
                tracing::warn!(instance_id = %id, error = %format!("{e:#}"), "cannot apply the steady CPU limit");
            }
        }
    }

    /// Step: a prepared instance that is not running and whose backoff is
    /// over: start it, and watch it closely until it first passes.
    fn start_due(
        &self,
        shared: &Shared,
        id: &str,
        l: &mut Local,
        driver: &Arc<dyn Driver>,
        work: &mut Work,
    ) {
        match self.start(l, driver) {
            Ok(r) => {
                l.transition(Happened::Started(r));
                if let (Some(r), Some(at)) = (&l.saved.running, l.saved.started_at) {
                    l.watching = true;
                    work.watch.push((id.to_string(), at, Probe::of(l, r)));
                }
            }
            Err(e) => {
                let reason = format!("cannot start: {e:#}");
                shared.event(id, "failed", reason.clone(), None);
                l.transition(Happened::StartFailed(reason));
            }
        }
        save(l);
        work.dirty = true;
    }

    /// Start the tasks a pass decided on: preparations, health checks and
    /// watchers of fresh starts.
    fn spawn_work(self: &Arc<Self>, shared: &Arc<Shared>, work: Work) {
        for d in work.prepare {
            tokio::spawn(first_prepare(self.clone(), shared.clone(), d));
        }
        for (id, probe, starting) in work.check {
            let shared = shared.clone();
            tokio::spawn(async move {
                let res = probe.check().await;
                let Ok(mut locals) = shared.locals.lock() else {
                    return;
                };
                let Some(l) = locals.get_mut(&id) else { return };
                l.checking = false;
                drop(locals);
                record_check(&shared, &id, res, starting, None);
            });
        }
        for (id, started_at, probe) in work.watch {
            tokio::spawn(watch_start(shared.clone(), id, started_at, probe));
        }
        if work.dirty {
            shared.dirty.notify_one();
        }
    }

    /// Ask the driver to start the instance; the handle to save.
    fn start(&self, l: &Local, driver: &Arc<dyn Driver>) -> anyhow::Result<Running> {
        let Some(sl) = l.saved.launch.clone() else {
            bail!("not prepared")
        };
        let d = &l.saved.desired;
        let env = launch_env(&l.saved, &sl);
        let (stdout, stderr) = self
            .logs
            .output_files(&d.app_id, &d.id, d.log_policy)
            .context("cannot make the instance's output files")?;
        let launch = Launch {
            instance_id: d.id.clone(),
            dir: l.dir.clone(),
            root: sl.root.clone(),
            is_rootfs: sl.is_rootfs,
            argv: sl.argv.clone(),
            workdir: sl.workdir.clone(),
            env,
            port: l.saved.port,
            memory: d.memory,
            cpu_millis: d.cpu_millis,
            stdout,
            stderr,
            allowed_egress: d.allowed_egress.clone(),
        };
        match driver.run(Command::Start(&launch))? {
            Reply::Started(r) => {
                tracing::info!(instance_id = %d.id, pid = r.pid, driver = driver.name(), port = l.saved.port, "instance started");
                Ok(r)
            }
            Reply::Done => bail!("the driver did not start the instance"),
        }
    }

    /// Get the instance's files ready: returns how to launch it and the
    /// image by digest.
    async fn prepare(&self, d: &DesiredInstance) -> anyhow::Result<(SavedLaunch, Option<String>)> {
        if let Some(image) = &d.image {
            let Some(store) = &self.images else {
                bail!("this agent has no image store")
            };
            let pulled = store
                .pull(image, &self.pull)
                .await
                .with_context(|| format!("cannot pull {image}"))?;
            let c = &pulled.config;
            let argv = match &d.command {
                Some(cmd) => cmd.clone(),
                None => c.entrypoint.iter().chain(c.cmd.iter()).cloned().collect(),
            };
            if argv.is_empty() {
                bail!("the image {image} has no entrypoint or cmd; give the app a command");
            }
            let env = c
                .env
                .iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            return Ok((
                SavedLaunch {
                    root: pulled.rootfs.clone(),
                    is_rootfs: true,
                    argv,
                    workdir: c.working_dir.clone().unwrap_or_else(|| "/".into()),
                    env,
                },
                Some(pulled.pinned.clone()),
            ));
        }
        let Some(url) = &d.archive_url else {
            bail!("the instance has neither an image nor an archive")
        };
        let archive = self.fetch(url).await?;
        let root = instances_dir(&self.data_dir).join(&d.id).join("root");
        let _ = std::fs::remove_dir_all(&root);
        let root2 = root.clone();
        tokio::task::spawn_blocking(move || {
            let tree = unpacked(&archive)?;
            crate::tree::copy_tree(&tree, &root2)
                .with_context(|| format!("cannot copy {} to {}", tree.display(), root2.display()))
        })
        .await
        .context("unpacking was interrupted")??;
        let procfile = std::fs::read_to_string(root.join("Procfile")).ok();
        let is_rootfs =
            procfile.is_none() && (root.join("bin").is_dir() || root.join("usr/bin").is_dir());
        let argv = match (&d.command, &procfile) {
            (Some(c), _) => c.clone(),
            (None, Some(p)) => {
                let line = p
                    .lines()
                    .find_map(|l| l.strip_prefix("web:"))
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .context("the Procfile has no 'web:' line")?;
                vec!["/bin/sh".into(), "-c".into(), line.to_string()]
            }
            (None, None) => bail!("the archive has no Procfile and the app no command"),
        };
        Ok((
            SavedLaunch {
                root,
                is_rootfs,
                argv,
                workdir: "/".into(),
                env: BTreeMap::new(),
            },
            None,
        ))
    }

    /// Download an archive (cached by URL) and return its path.
    async fn fetch(&self, url: &str) -> anyhow::Result<PathBuf> {
        let key = archive_key(url);
        let dir = self.data_dir.join("archives");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(&key);
        if path.exists() {
            return Ok(path);
        }
        let lock = {
            let mut m = self
                .fetching
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            m.entry(key.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        let res = self.download(url, &dir, &key, &path).await;
        if let Ok(mut m) = self.fetching.lock() {
            // The last one out forgets the lock.
            if Arc::strong_count(&lock) <= 2 {
                m.remove(&key);
            }
        }
        res
    }

    async fn download(
        &self,
        url: &str,
        dir: &Path,
        key: &str,
        path: &Path,
    ) -> anyhow::Result<PathBuf> {
        use tokio::io::AsyncWriteExt;
        // Fetched meanwhile by a replica that held the lock first.
        if path.exists() {
            return Ok(path.to_path_buf());
        }
        // A path is the control plane's own upload, fetched with the node
        // credential; anything else is a user's URL, fetched through the
        // SSRF guard.
        let req = if url.starts_with('/') {
            self.channel.upload(url)
        } else {
            let parsed = reqwest::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
            self.ssrf
                .check_target(&parsed)
                .map_err(|e| anyhow::anyhow!("refusing to fetch {url}: {e}"))?;
            self.fetch.get(parsed)
        };
        let mut res = req
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .map_err(|e| match shellwego_net::ssrf::refusal(&e) {
                Some(why) => anyhow::anyhow!("refusing to fetch {url}: {why}"),
                None => anyhow::Error::new(e).context(format!("cannot fetch {url}")),
            })?;
        if !res.status().is_success() {
            bail!("fetching {url} answered {}", res.status());
        }
        if res.content_length().is_some_and(|n| n > MAX_ARCHIVE) {
            bail!("the archive at {url} is larger than 1 GiB");
        }
        // Two instances of one app may fetch at once: each its own file.
        let tmp = dir.join(format!("{key}.{}.part", unique_suffix()));
        let mut f = tokio::fs::File::create(&tmp).await?;
        let mut size = 0u64;
        while let Some(chunk) = res.chunk().await? {
            size += chunk.len() as u64;
            if size > MAX_ARCHIVE {
                let _ = tokio::fs::remove_file(&tmp).await;
                bail!("the archive at {url} is larger than 1 GiB");
            }
            f.write_all(&chunk).await?;
        }
        f.sync_all().await?;
        tokio::fs::rename(&tmp, path).await?;
        Ok(path.to_path_buf())
    }
}

/// A name part no other temporary file of this host uses: the process id
/// and a counter. (It was the pid and the clock's microseconds, and two
/// instances of one app unpacking the same archive in the same
/// microsecond shared one temporary tree: the first renamed it away while
/// the second still wrote into it, "creating file: No such file".)
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The tree of a downloaded archive, unpacked once beside it
/// (`<archive>.tree`, removed with it by [`Ctx::gc`]); instances copy it.
fn unpacked(archive: &Path) -> anyhow::Result<PathBuf> {
    let mut name = archive.file_name().unwrap_or_default().to_os_string();
    name.push(".tree");
    let tree = archive.with_file_name(name);
    if tree.is_dir() {
        return Ok(tree);
    }
    // Unpacked under a name of its own, then renamed: a crash leaves a
    // `.part` (swept by gc), never a half tree under the final name.
    let tmp = archive.with_file_name(format!(
        "{}.tree-{}.part",
        archive.file_name().unwrap_or_default().to_string_lossy(),
        unique_suffix()
    ));
    let f = std::fs::File::open(archive)?;
    let res = shellwego_image::unpack_archive(
        std::io::BufReader::new(f),
        &tmp,
        &shellwego_image::UnpackOptions::default(),
    )
    .context("cannot unpack the archive")
    .and_then(|_| {
        // Another instance of the same archive may have won the race.
        match std::fs::rename(&tmp, &tree) {
            Ok(()) => Ok(()),
            Err(_) if tree.is_dir() => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context("cannot keep the unpacked archive")),
        }
    });
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res.map(|()| tree)
}

/// The name of an archive downloaded from `url` in `<data>/archives`.
fn archive_key(url: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(url.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Prepare a new instance; on failure, try again with growing waits
/// ([`retry_prepare`]).
async fn first_prepare(ctx: Arc<Ctx>, shared: Arc<Shared>, d: DesiredInstance) {
    let res = ctx.prepare(&d).await;
    let Ok(mut locals) = shared.locals.lock() else {
        return;
    };
    let Some(l) = locals.get_mut(&d.id) else {
        return;
    };
    match res {
        Ok((launch, pinned)) => {
            tracing::debug!(instance_id = %d.id, "prepared");
            l.saved.launch = Some(launch);
            l.saved.image_pinned = pinned;
            l.transition(Happened::Prepared);
        }
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(instance_id = %d.id, error = %reason, "cannot prepare the instance");
            l.transition(Happened::PrepareFailed(reason.clone()));
            // Try again later (a registry may come back).
            let wait = backoff(l.consecutive_crashes);
            tokio::spawn(retry_prepare(ctx.clone(), shared.clone(), d.clone(), wait));
            drop(locals);
            shared.event(&d.id, "failed", reason, None);
            return;
        }
    }
    save(l);
    drop(locals);
    shared.wake.notify_one();
    shared.dirty.notify_one();
}

/// Prepare again after a failure, with growing waits, while still wanted.
async fn retry_prepare(ctx: Arc<Ctx>, shared: Arc<Shared>, d: DesiredInstance, mut wait: Duration) {
    loop {
        tokio::time::sleep(wait).await;
        let still_wanted = shared
            .desired
            .lock()
            .ok()
            .and_then(|w| w.as_ref().map(|w| w.iter().any(|x| x.id == d.id)))
            .unwrap_or(false);
        if !still_wanted {
            if let Ok(mut l) = shared.locals.lock() {
                if let Some(x) = l.get_mut(&d.id) {
                    x.transition(Happened::PrepareAbandoned);
                }
            }
            return;
        }
        let res = ctx.prepare(&d).await;
        let done = {
            let Ok(mut locals) = shared.locals.lock() else {
                return;
            };
            let Some(l) = locals.get_mut(&d.id) else {
                return;
            };
            match res {
                Ok((launch, pinned)) => {
                    l.saved.launch = Some(launch);
                    l.saved.image_pinned = pinned;
                    l.transition(Happened::Prepared);
                    save(l);
                    true
                }
                Err(e) => {
                    l.transition(Happened::PrepareFailed(format!("{e:#}")));
                    wait = backoff(l.consecutive_crashes);
                    false
                }
            }
        };
        shared.dirty.notify_one();
        shared.wake.notify_one();
        if done {
            return;
        }
    }
}

/// Where and how an instance is health-checked.
#[derive(Debug, Clone)]
struct Probe {
    ip: String,
    port: u16,
    path: Option<String>,
    timeout: Duration,
    /// How long a TCP check's connection must stay open (see `TCP_SETTLE`).
    settle: Duration,
}

impl Probe {
    fn of(l: &Local, r: &Running) -> Probe {
        let hc = &l.saved.desired.health_check;
        Probe {
            ip: r
                .extra
                .get("ip")
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: hc.port.unwrap_or(l.saved.port),
            path: hc.path.clone(),
            timeout: Duration::from_millis(hc.timeout_ms.max(300)),
            // Only QEMU's port forward accepts before the app listens; for
            // the other drivers an accepted connection is a listening app.
            settle: if r.driver == "microvm" {
                TCP_SETTLE
            } else {
                Duration::ZERO
            },
        }
    }

    async fn check(&self) -> Result<(), String> {
        check(
            &self.ip,
            self.port,
            self.path.as_deref(),
            self.timeout,
            self.settle,
        )
        .await
    }
}

/// Apply the result of a health check of `id` (of its run started at
/// `run`, when given: a check of an earlier run is ignored). `starting`:
/// a quick check of a starting instance, whose failures do not count.
fn record_check(
    shared: &Shared,
    id: &str,
    res: Result<(), String>,
    starting: bool,
    run: Option<i64>,
) {
    let Ok(mut locals) = shared.locals.lock() else {
        return;
    };
    let Some(l) = locals.get_mut(id) else { return };
    // A check of an earlier run, or of an instance that is no longer up,
    // changes nothing.
    if !l.phase.is_up() || run.is_some_and(|at| l.saved.started_at != Some(at)) {
        return;
    }
    let was_healthy = matches!(l.phase, InstancePhase::Healthy { .. });
    let happened = match res {
        Ok(()) => Happened::CheckPassed,
        Err(error) => Happened::CheckFailed { error, starting },
    };
    let changed = l.transition(happened);
    if was_healthy && matches!(l.phase, InstancePhase::Unhealthy { .. }) {
        let reason = l.reason.clone().unwrap_or_default();
        drop(locals);
        shared.event(id, "unhealthy", reason, None);
    } else if changed {
        drop(locals);
        shared.dirty.notify_one();
    }
}

/// Watch the run of `id` started at `started_at` until its health check
/// first passes, `STARTING_WINDOW` is over or the run ends: try at once
/// and often (see `STARTING_POLL_FIRST`), so the instance is reported
/// healthy as soon as it listens and answers. Its failures do not count.
async fn watch_start(shared: Arc<Shared>, id: String, started_at: i64, probe: Probe) {
    use std::sync::atomic::Ordering;
    let t0 = Instant::now();
    let mut pause = STARTING_POLL_FIRST;
    let mut tries = 0u32;
    shared.watchers.fetch_add(1, Ordering::Relaxed);
    loop {
        // Many watchers at once: each tries less often (bounded in all).
        let n = shared.watchers.load(Ordering::Relaxed);
        let floor = STARTING_POLL_FIRST * (n / STARTING_POLL_BATCH).max(1);
        tokio::time::sleep(pause.max(floor).min(STARTING_CHECK)).await;
        let current = shared.locals.lock().ok().is_some_and(|locals| {
            locals.get(&id).is_some_and(|l| {
                l.saved.started_at == Some(started_at)
                    && l.saved.running.is_some()
                    && !l.phase.is_leaving()
            })
        });
        if !current {
            break;
        }
        let res = probe.check().await;
        tries += 1;
        let passed = res.is_ok();
        if passed {
            tracing::debug!(instance_id = %id, tries, after_ms = t0.elapsed().as_secs_f64() * 1e3, "first health check passed");
        }
        record_check(&shared, &id, res, true, Some(started_at));
        if passed || t0.elapsed() >= STARTING_WINDOW {
            if let Ok(mut locals) = shared.locals.lock() {
                if let Some(l) = locals
                    .get_mut(&id)
                    .filter(|l| l.saved.started_at == Some(started_at))
                {
                    // The regular checks take over.
                    l.watching = false;
                    if passed {
                        let every = l.saved.desired.health_check.interval_ms;
                        l.next_check =
                            Instant::now() + Duration::from_millis(every.clamp(500, 3_600_000));
                    }
                }
            }
            break;
        }
        pause += pause / 8;
    }
    shared.watchers.fetch_sub(1, Ordering::Relaxed);
}

/// One health check: TCP connect, or an HTTP GET that must answer 2xx/3xx.
/// A TCP check's connection must stay open for `settle` (when not zero).
async fn check(
    ip: &str,
    port: u16,
    path: Option<&str>,
    timeout: Duration,
    settle: Duration,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| format!("cannot connect to port {port}: {e}"))?;
        let Some(path) = path else {
            if settle.is_zero() {
                return Ok(());
            }
            // A connect alone can succeed before anything listens: a
            // microVM's port forward accepts at once, then closes when the
            // guest refuses. Listening means not closed at once.
            let mut b = [0u8; 1];
            return match tokio::time::timeout(settle, s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => Err(format!("port {port} accepted, then closed at once")),
                Ok(Ok(_)) | Err(_) => Ok(()),
            };
        };
        let req = format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: shellwego-health\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {code}"))
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP server on 127.0.0.1 answering every request with `body`;
    /// counts the requests.
    async fn archive_server(body: &'static [u8]) -> (u16, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.write_all(body).await;
            }
        });
        (port, requests)
    }

    fn ctx(data_dir: &Path, control_plane: String) -> Ctx {
        let ssrf = shellwego_net::ssrf::Guard::strict();
        Ctx {
            data_dir: data_dir.to_path_buf(),
            owner: Default::default(),
            channel: shellwego_client::agent::AgentClient::new(
                &control_plane,
                Duration::from_secs(60),
            )
            .unwrap()
            .with_credential("nsec_test"),
            advertise_ip: "127.0.0.1".into(),
            drivers: vec![],
            images: None,
            pull: Default::default(),
            fetch: ssrf.client(reqwest::Client::builder()).unwrap(),
            ssrf,
            fetching: Default::default(),
            logs: crate::logs::Logs::new(data_dir, crate::logs::DEFAULT_POLICY),
        }
    }

    /// Sources are fetched through the SSRF guard (a name resolving to a
    /// refused address included); the control plane's own uploads are not
    /// user URLs.
    #[tokio::test]
    async fn source_urls_are_fetched_through_the_ssrf_guard() {
        let (port, requests) = archive_server(b"archive").await;
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path(), format!("http://127.0.0.1:{port}"));
        for url in [
            format!("http://localhost:{port}/a.tgz"),
            format!("http://127.0.0.1:{port}/a.tgz"),
            "http://169.254.169.254/latest/meta-data".to_string(),
        ] {
            let msg = format!("{:#}", ctx.fetch(&url).await.unwrap_err());
            assert!(
                msg.starts_with(&format!("refusing to fetch {url}: ")),
                "{msg}"
            );
            assert!(msg.contains("[ssrf]"), "{msg}");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 0);

        let p = ctx.fetch("/v1/agent/uploads/upl_x").await.unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"archive");
        assert_eq!(requests.load(Ordering::SeqCst), 1);

        // Once the control plane's policy opens private targets.
        ctx.ssrf.set(&shellwego_net::ssrf::SsrfConfig {
            allow: vec![],
            allow_private_targets: true,
        });
        let p = ctx
            .fetch(&format!("http://localhost:{port}/a.tgz"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"archive");
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    /// Instance ports come from outside the ephemeral range, are free, and
    /// are never another instance's.
    #[test]
    fn instance_ports_avoid_the_ephemeral_range_and_each_other() {
        let (lo, hi) = instance_ports();
        let eph = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let eph: Vec<u16> = eph.split_whitespace().map(|n| n.parse().unwrap()).collect();
        assert!(hi < eph[0] || lo > eph[1], "{lo}-{hi} overlaps {eph:?}");
        let mut taken = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = free_port(&taken);
            assert!((lo..=hi).contains(&p), "{p}");
            assert!(taken.insert(p), "{p} handed out twice");
        }
        // A port held by someone else is skipped.
        let held = std::net::TcpListener::bind(("0.0.0.0", lo)).ok();
        let all_but_lo: std::collections::HashSet<u16> = (lo + 1..=hi).collect();
        let p = free_port(&all_but_lo);
        if held.is_some() {
            assert!(
                !(lo..=hi).contains(&p) || p == 0,
                "a bound port was handed out: {p}"
            );
        }
    }

    /// A TCP check passes for a listener that keeps the connection, and
    /// fails for one that accepts and closes at once (a microVM's port
    /// forward before the guest listens) and for a closed port.
    #[tokio::test]
    async fn a_tcp_check_needs_a_connection_that_stays_open() {
        let keeps = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let keeps_port = keeps.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = keeps.accept().await {
                held.push(s);
            }
        });
        let closes = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closes_port = closes.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = closes.accept().await {
                drop(s);
            }
        });
        let t = Duration::from_secs(2);
        let settle = TCP_SETTLE;
        assert_eq!(
            check("127.0.0.1", keeps_port, None, t, settle).await,
            Ok(())
        );
        let e = check("127.0.0.1", closes_port, None, t, settle)
            .await
            .unwrap_err();
        assert!(e.contains("closed at once"), "{e}");
        let unused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(check("127.0.0.1", unused, None, t, settle).await.is_err());
        assert!(check("127.0.0.1", unused, None, t, Duration::ZERO)
            .await
            .is_err());
        // Without a settle (not a microVM), an accepted connection is enough.
        assert_eq!(
            check("127.0.0.1", closes_port, None, t, Duration::ZERO).await,
            Ok(())
        );
    }

    pub(super) fn local_listening_on(port: u16, path: Option<&str>, started_at: i64) -> Local {
        Local {
            saved: Saved {
                desired: DesiredInstance {
                    id: "inst_w".into(),
                    app_id: "app_w".into(),
                    app_name: "w".into(),
                    organization_id: "org_w".into(),
                    version: 1,
                    driver: "process".into(),
                    image: None,
                    archive_url: None,
                    command: None,
                    env: BTreeMap::new(),
                    memory: 64 << 20,
                    cpu_millis: 100,
                    health_check: shellwego_api::agent::DesiredHealthCheck {
                        path: path.map(String::from),
                        port: None,
                        interval_ms: 1000,
                        timeout_ms: 1000,
                        retries: 3,
                        grace_ms: 30_000,
                    },
                    stop_timeout_ms: 2000,
                    region: "local".into(),
                    allowed_egress: None,
                    log_policy: Default::default(),
                },
                port,
                running: Some(Running {
                    driver: "process".into(),
                    pid: std::process::id(),
                    start_ticks: 0,
                    extra: BTreeMap::new(),
                }),
                started_at: Some(started_at),
                restarts: 0,
                image_pinned: None,
                launch: None,
            },
            dir: PathBuf::from("/nonexistent"),
            phase: InstancePhase::Starting { settled: false },
            reason: None,
            consecutive_crashes: 0,
            health_passed: 0,
            health_failures: 0,
            next_check: Instant::now(),
            checking: false,
            watching: true,
        }
    }

    /// A started instance is reported healthy once its port listens and
    /// answers its HTTP check, without waiting for the regular checks; a
    /// watcher of an earlier run gives up.
    #[tokio::test]
    async fn a_starting_instance_is_healthy_once_it_listens() {
        use std::sync::atomic::Ordering as O;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let shared = Arc::new(Shared::new());
        let l = local_listening_on(port, Some("/health"), 7);
        let probe = Probe::of(&l, l.saved.running.as_ref().unwrap());
        shared.locals.lock().unwrap().insert("inst_w".into(), l);
        let watcher = tokio::spawn(watch_start(
            shared.clone(),
            "inst_w".into(),
            7,
            probe.clone(),
        ));
        // Nothing listens yet: refused connects, not failures.
        tokio::time::sleep(Duration::from_millis(50)).await;
        {
            let locals = shared.locals.lock().unwrap();
            let l = &locals["inst_w"];
            assert_eq!(l.phase.status(), InstanceStatus::Starting);
            assert_eq!(l.health_failures, 0);
            assert!(
                l.reason.as_deref().unwrap_or("").contains("cannot connect"),
                "{:?}",
                l.reason
            );
        }
        assert_eq!(shared.watchers.load(O::Relaxed), 1);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok\n").await;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the watcher did not end")
            .unwrap();
        {
            let locals = shared.locals.lock().unwrap();
            let l = &locals["inst_w"];
            assert_eq!(l.phase.status(), InstanceStatus::Healthy);
            assert_eq!(l.health_passed, 1);
            assert!(!l.watching, "the regular checks take over");
        }
        assert_eq!(shared.watchers.load(O::Relaxed), 0);

        // A watcher of an earlier run (the instance restarted) stops at
        // once and changes nothing.
        let before = shared.locals.lock().unwrap()["inst_w"].health_passed;
        tokio::time::timeout(
            Duration::from_secs(5),
            watch_start(shared.clone(), "inst_w".into(), 6, probe),
        )
        .await
        .expect("a stale watcher did not stop");
        assert_eq!(
            shared.locals.lock().unwrap()["inst_w"].health_passed,
            before
        );
    }
}
