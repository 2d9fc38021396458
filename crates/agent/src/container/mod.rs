//! The `container` driver: each instance runs as an OCI container started by
//! the host's OCI runtime (`runc`, or `crun` where it works), in its own
//! pid, ipc, uts, mount and network namespaces and its own cgroup.
//!
//! The work is split by concern: `runtime.rs` (which OCI runtime, the
//! probe), `layout.rs` (the bundle: OCI config, root filesystem, mounts)
//! and `net.rs` (network namespace and veth); this file holds the driver's
//! life cycle.
//!
//! # Running, stopping, after exit
//!
//! `runc --root /run/shellwego/<owner tag>/<runtime> run --detach --pid-file bundle/pid
//! <container id>` (container id = the instance id when it is a valid runtime
//! id, else `sw-<hash>`), stdin from `/dev/null`, stdout/stderr appended to
//! `launch.log`: the container inherits them. The runtime is started through
//! `/bin/sh -c 'exec "$@" 3>bundle/exit-status'` with `--preserve-fds 1`, so
//! the init gets that file as fd 3. `Terminate`/`Kill` are
//! `runc kill <id> TERM|KILL` (a container already gone is not an error):
//! TERM goes to the init, which forwards it to the app (and every other
//! signal it receives), so an app without a SIGTERM handler stops at once
//! instead of waiting out the grace period for `Kill` (it would, as pid 1 of
//! its namespace: the kernel drops signals pid 1 has no handler for). KILL
//! ends the init, and the kernel then kills everything in the namespace.
//! The init reaps orphans, so no zombie piles up in a long-lived container.
//!
//! `poll` watches the init pid (with its start time, so a reused pid is not
//! mistaken for it); `Running.pid` is the init's. The runtime is not the
//! parent of a detached container; the exit code comes from
//! `bundle/exit-status`, where the init writes how the app ended
//! (`code` = the app's exit code, or `signal` when a signal killed it; both
//! unknown when the init itself was killed, e.g. by `Kill`). OOM kills are
//! read from the container's memory cgroup (`memory.oom_control` on v1,
//! `memory.events` on v2), which stays until `Cleanup`. `adopt` also asks the runtime (`state`)
//! that the container is running. `Cleanup` is `runc delete --force`, then the
//! network namespace and veth are deleted, the overlay unmounted and the
//! bundle removed (never while something is still mounted under it).
//!
//! `Running.extra` holds `container_id`, `ip`, `host_ip`, `netns`, `veth`,
//! `runtime`, `state_root`, `bundle`, `cgroup` and `rootfs` (`overlay` or
//! `copy`): a handle saved by an agent is re-adopted and cleaned up by those
//! names, whatever the owner tag of the agent reading it.
//!
//! # Orphans
//!
//! `Driver::sweep` (at agent start) removes the owner's containers that no
//! adopted instance has (`runc list` under its state root, then `runc delete
//! --force`, the network namespace and the bundle as for `Cleanup`), then
//! the owner's network namespaces and overlay mounts (found by name and
//! mount source in `/proc/self/mountinfo`, wherever their directory has
//! moved) that belong to no adopted container. The agent removes the
//! owner's cgroups left over (see [`crate::owner`]).

mod layout;
mod net;
mod runtime;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::driver::{self, Command, Driver, Exit, Launch, Reply, Running};
use crate::host::{
    self, cgroup_mounts, find_binary, oom_kills_at, run, wait_timeout, DEFAULT_PATH,
};
use crate::owner::{fnv1a, Orphan, Owner};
use layout::{bind_ro, oci_config, ConfigInput};
use net::NETNS_DIR;
use runtime::{probe_host, Runtime, Tools, PROBED, RUNTIMES};

/// Our directory for the network lock and the probe (runtime state is
/// per owner: [`Owner::run_dir`]).
const RUN_DIR: &str = crate::owner::RUN_DIR;
const CPU_PERIOD: i64 = 100_000;
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(30);
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
/// In the bundle: how the app ended, as our init wrote it.
const EXIT_FILE: &str = "exit-status";

/// Runs instances as OCI containers; see the module documentation.
#[derive(Debug)]
pub struct ContainerDriver {
    runtime: Runtime,
    tools: Tools,
    /// Whose containers these are: names their runtime state, cgroups,
    /// network namespaces and mounts (see [`crate::owner`]).
    owner: Owner,
    /// Bundles of containers started by this driver, for a `Cleanup` that
    /// comes without a handle.
    bundles: Mutex<HashMap<String, PathBuf>>,
    /// The node's internal DNS (a resolver per container), when the agent
    /// runs one.
    dns: Option<std::sync::Arc<crate::dns::InternalDns>>,
}

impl ContainerDriver {
    /// The driver, when an OCI runtime really works on this host (probed
    /// once per process by starting a trivial container; see [`Self::probe`]).
    pub fn detect() -> Option<ContainerDriver> {
        Self::probe().ok()
    }

    /// Like [`Self::detect`], saying why the driver is unavailable.
    pub fn probe() -> Result<ContainerDriver, String> {
        PROBED
            .get_or_init(probe_host)
            .clone()
            .map(|(runtime, tools)| ContainerDriver::with(runtime, tools))
    }

    fn with(runtime: Runtime, tools: Tools) -> ContainerDriver {
        ContainerDriver {
            runtime,
            tools,
            owner: Owner::default(),
            bundles: Mutex::new(HashMap::new()),
            dns: None,
        }
    }

    /// Give each container a resolver of `dns` (its `/etc/resolv.conf`
    /// names it): `<app>.internal` resolves (see [`crate::dns`]).
    pub fn with_dns(mut self, dns: std::sync::Arc<crate::dns::InternalDns>) -> ContainerDriver {
        self.dns = Some(dns);
        self
    }

    /// The driver, making (and sweeping) the containers of `owner`.
    pub fn owned_by(mut self, owner: Owner) -> ContainerDriver {
        self.owner = owner;
        self
    }

    /// The runtime's state root: `/run/shellwego/<owner tag>/<runtime>`.
    pub fn state_root(&self) -> PathBuf {
        self.owner.run_dir().join(self.runtime.name)
    }

    /// The runtime in use: `"runc"` or `"crun"`.
    pub fn runtime(&self) -> &'static str {
        self.runtime.name
    }

    /// The runtime binary in use.
    pub fn runtime_path(&self) -> &Path {
        &self.runtime.path
    }

    /// The memory limit the kernel enforces on a started container (bytes),
    /// read back from its cgroup; None when the host has no usable memory
    /// cgroup (or no limit is set).
    pub fn memory_limit(r: &Running) -> Option<i64> {
        let cgroup = r.extra.get("cgroup")?;
        let rel = cgroup.trim_start_matches('/');
        let mounts = cgroup_mounts();
        if let Some(v1) = &mounts.memory_v1 {
            if let Ok(t) = fs::read_to_string(v1.join(rel).join("memory.limit_in_bytes")) {
                return t.trim().parse().ok();
            }
        }
        if let Some(v2) = &mounts.unified {
            if let Ok(t) = fs::read_to_string(v2.join(rel).join("memory.max")) {
                return t.trim().parse().ok();
            }
        }
        None
    }

    // ------------------------------------------------------------ start

    fn start(&self, launch: &Launch) -> anyhow::Result<Running> {
        if launch.argv.is_empty() {
            bail!("nothing to run: argv is empty");
        }
        let cid = container_id(&launch.instance_id);
        let dir = fs::canonicalize(&launch.dir)
            .with_context(|| format!("instance directory {}", launch.dir.display()))?;
        let root = fs::canonicalize(&launch.root)
            .with_context(|| format!("root {}", launch.root.display()))?;
        if !root.is_dir() {
            bail!("{} is not a directory", root.display());
        }
        let bundle = dir.join("bundle");
        let (netns, veth, _) = self.hostnet().net_names(&cid);
        // Leftovers of an earlier run of this instance (not cleaned up).
        self.teardown(
            &self.runtime,
            &self.state_root(),
            &cid,
            Some(&bundle),
            &netns,
            &veth,
        )
        .context("cannot clear what an earlier run left")?;
        fs::create_dir_all(&bundle)
            .with_context(|| format!("cannot create {}", bundle.display()))?;
        self.remember(&cid, Some(bundle.clone()));
        let started = self.start_in(launch, &cid, &root, &bundle);
        if started.is_err() {
            if let Err(e) = self.teardown(
                &self.runtime,
                &self.state_root(),
                &cid,
                Some(&bundle),
                &netns,
                &veth,
            ) {
                tracing::warn!(container = %cid, error = %format!("{e:#}"), "cleaning up a failed start");
            }
            self.remember(&cid, None);
            if let Some(dns) = &self.dns {
                dns.stop(&cid);
            }
            self.hostnet().unpublish(launch.port);
        }
        started
    }

    fn start_in(
        &self,
        launch: &Launch,
        cid: &str,
        root: &Path,
        bundle: &Path,
    ) -> anyhow::Result<Running> {
        let layout = self.prepare_fs(launch, root, bundle)?;
        let net = self.hostnet().setup_net(cid)?;
        self.hostnet().node_egress();
        let published = self.hostnet().publish(launch.port, net.ip);
        if let Some(allowed) = &launch.allowed_egress {
            self.hostnet()
                .restrict_egress(&net, allowed, self.dns.is_some())?;
        }
        let resolv = bundle.join("resolv.conf");
        if let Some(dns) = &self.dns {
            fs::write(
                &resolv,
                format!("nameserver {}\noptions timeout:2 attempts:2\n", net.host_ip),
            )
            .context("cannot write the container's /etc/resolv.conf")?;
            dns.serve(cid, net.host_ip.into())?;
        }
        let cgroup = format!("/{}/{cid}", self.owner.cgroup_parent("container").display());

        let mut env: Vec<String> = launch
            .env
            .iter()
            .filter(|(k, v)| {
                !k.is_empty() && !k.contains('=') && !k.contains('\0') && !v.contains('\0')
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !launch.env.contains_key("PATH") {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if !launch.env.contains_key("PORT") {
            env.push(format!("PORT={}", launch.port));
        }
        // The container's own /etc/hosts names it, as Docker's does: a
        // program that looks up its host name (Python's http.server does, at
        // bind) finds it here instead of waiting on DNS it cannot reach.
        let hostname: String = cid.chars().take(63).collect();
        let hosts = bundle.join("hosts");
        fs::write(
            &hosts,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{hostname}\n",
                net.ip
            ),
        )
        .context("cannot write the container's /etc/hosts")?;
        // Our init is pid 1 and runs the app (see `crate::init`).
        let init = crate::init::install(Path::new(RUN_DIR))?;
        let mut mounts = layout.mounts;
        mounts.push(bind_ro(&init, crate::init::IN_CONTAINER));
        if self.dns.is_some() {
            mounts.push(bind_ro(&resolv, "/etc/resolv.conf"));
        }
        let argv: Vec<String> = [crate::init::IN_CONTAINER.to_string(), "--".to_string()]
            .into_iter()
            .chain(launch.argv.iter().cloned())
            .collect();
        let config = oci_config(&ConfigInput {
            argv: &argv,
            env,
            cwd: layout.cwd.clone(),
            hostname,
            hosts,
            netns: Some(format!("{NETNS_DIR}/{}", net.netns)),
            cgroup: cgroup.clone(),
            memory: launch.memory,
            cpu_millis: crate::driver::boot_cpu_millis(launch.cpu_millis),
            mounts,
        });
        let text = serde_json::to_vec_pretty(&config)?;
        fs::write(bundle.join("config.json"), text).context("cannot write config.json")?;

        let state_root = self.state_root();
        fs::create_dir_all(&state_root)
            .with_context(|| format!("cannot create {}", state_root.display()))?;
        let (stdout, stderr) = crate::driver::output_files(launch)?;
        let pid_file = bundle.join("pid");
        let runtime_log = bundle.join("runtime.log");
        // The init reports how the app ended on fd 3, a file of the bundle
        // (std cannot hand a child more than stdio without `unsafe`: a shell
        // opens it and execs the runtime, which passes it on).
        let mut cmd = Proc::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("exec \"$@\" {}>\"$0\"", crate::init::STATUS_FD))
            .arg(bundle.join(EXIT_FILE))
            .arg(&self.runtime.path)
            .arg("--root")
            .arg(&state_root)
            .arg(format!("--log={}", runtime_log.display()))
            .args(["run", "--detach", "--preserve-fds", "1", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(cid)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.runtime.path.display()))?;
        let status = wait_timeout(child, RUNTIME_TIMEOUT)
            .with_context(|| format!("{} run", self.runtime.name))?;
        if !status.success() {
            bail!(
                "{} run failed ({status}): {}",
                self.runtime.name,
                log_tail(&runtime_log)
            );
        }
        let pid: u32 = fs::read_to_string(&pid_file)
            .with_context(|| format!("{} wrote no pid file", self.runtime.name))?
            .trim()
            .parse()
            .with_context(|| format!("{} wrote a bad pid file", self.runtime.name))?;
        // 0 when the app has already exited: never matches, so poll reports it.
        let start_ticks = driver::proc_start_ticks(pid).unwrap_or(0);
        let extra: BTreeMap<String, String> = [
            ("container_id", cid.to_string()),
            ("ip", net.ip.to_string()),
            ("host_ip", net.host_ip.to_string()),
            ("port", launch.port.to_string()),
            ("published", published.to_string()),
            ("netns", net.netns),
            ("veth", net.host_veth),
            ("runtime", self.runtime.name.to_string()),
            ("state_root", state_root.display().to_string()),
            ("bundle", bundle.display().to_string()),
            ("cgroup", cgroup),
            ("rootfs", layout.how.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Running {
            driver: "container".into(),
            pid,
            start_ticks,
            extra,
        })
    }

    fn cid_of(instance_id: &str, r: Option<&Running>) -> String {
        r.and_then(|r| r.extra.get("container_id").cloned())
            .unwrap_or_else(|| container_id(instance_id))
    }

    fn signal(&self, r: &Running, sig: &str) -> anyhow::Result<()> {
        let (rt, root) = self.runtime_for(r);
        let cid = Self::cid_of("", Some(r));
        let mut cmd = rt.cmd(&root);
        cmd.args(["kill", &cid, sig]);
        let out = run(cmd, RUNTIME_TIMEOUT)?;
        if out.status.success() || !alive(r) {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        if msg.contains("not running") || msg.contains("does not exist") {
            return Ok(());
        }
        bail!("{} kill {cid} {sig}: {}", rt.name, msg.trim())
    }

    fn remember(&self, cid: &str, bundle: Option<PathBuf>) {
        let mut map = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        match bundle {
            Some(b) => map.insert(cid.to_string(), b),
            None => map.remove(cid),
        };
    }

    fn cleanup(&self, instance_id: &str, handle: Option<&Running>) -> anyhow::Result<()> {
        let cid = Self::cid_of(instance_id, handle);
        if let Some(dns) = &self.dns {
            dns.stop(&cid);
        }
        if let Some(port) = handle.and_then(|r| r.extra.get("port")?.parse().ok()) {
            self.hostnet().unpublish(port);
        }
        let (rt, root) = match handle {
            Some(r) => self.runtime_for(r),
            None => (self.runtime.clone(), self.state_root()),
        };
        let bundle = handle
            .and_then(|r| r.extra.get("bundle").map(PathBuf::from))
            .or_else(|| {
                self.bundles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&cid)
                    .cloned()
            })
            .or_else(|| {
                Self::state(&rt, &root, &cid)
                    .and_then(|s| s.get("bundle")?.as_str().map(PathBuf::from))
            });
        let (mut netns, mut veth, _) = self.hostnet().net_names(&cid);
        if let Some(r) = handle {
            if let Some(n) = r.extra.get("netns") {
                netns.clone_from(n);
            }
            if let Some(v) = r.extra.get("veth") {
                veth.clone_from(v);
            }
        }
        self.teardown(&rt, &root, &cid, bundle.as_deref(), &netns, &veth)?;
        self.remember(&cid, None);
        Ok(())
    }

    /// Everything made for one container, in reverse: runtime state and
    /// cgroup, network, mounts, bundle.
    fn teardown(
        &self,
        rt: &Runtime,
        state_root: &Path,
        cid: &str,
        bundle: Option<&Path>,
        netns: &str,
        veth: &str,
    ) -> anyhow::Result<()> {
        if state_root.join(cid).exists() {
            let mut cmd = rt.cmd(state_root);
            cmd.args(["delete", "--force", cid]);
            let out = run(cmd, RUNTIME_TIMEOUT)?;
            if !out.status.success() && Self::state(rt, state_root, cid).is_some() {
                bail!(
                    "{} delete --force {cid}: {}",
                    rt.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        self.hostnet().teardown_net(netns, veth);
        if let Some(b) = bundle {
            self.remove_tree(b)?;
        }
        Ok(())
    }
}

impl ContainerDriver {
    /// Remove this owner's containers, network namespaces and overlay mounts
    /// that belong to no container in `keep` (see [`Driver::sweep`]).
    fn sweep_orphans(&self, keep: &HashSet<String>) -> Vec<Orphan> {
        let mut out: Vec<Orphan> = vec![];
        let mut note = |cid: &str, what: String| {
            tracing::info!(container = %cid, removed = %what, "removed an orphan");
            out.push(Orphan {
                instance_id: cid.to_string(),
                removed: vec![what],
            });
        };
        // Containers the runtime knows (or another runtime, when an earlier
        // run used it), with what was made for them.
        let runtimes = std::iter::once(self.runtime.clone()).chain(
            RUNTIMES
                .iter()
                .filter(|n| **n != self.runtime.name)
                .filter_map(|name| find_binary(name).map(|path| Runtime { name, path })),
        );
        for rt in runtimes {
            let root = self.owner.run_dir().join(rt.name);
            let listed = match Self::listed(&rt, &root) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot list the runtime's containers");
                    continue;
                }
            };
            for (cid, bundle, status) in listed {
                if keep.contains(&cid) {
                    continue;
                }
                let (netns, veth, _) = self.hostnet().net_names(&cid);
                match self.teardown(&rt, &root, &cid, bundle.as_deref(), &netns, &veth) {
                    Ok(()) => note(
                        &cid,
                        format!(
                            "{} container {cid} ({status}) in {}, its network namespace {netns}{}",
                            rt.name,
                            root.display(),
                            bundle
                                .map(|b| format!(
                                    " and its bundle {} (mounts included)",
                                    b.display()
                                ))
                                .unwrap_or_default()
                        ),
                    ),
                    Err(e) => {
                        tracing::warn!(container = %cid, error = %format!("{e:#}"), "cannot remove an orphaned container")
                    }
                }
            }
        }
        // Network namespaces whose container is gone.
        for e in fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(cid) = self.owner.netns_cid(&name) else {
                continue;
            };
            if keep.contains(cid) {
                continue;
            }
            let cid = cid.to_string();
            match self.hostnet().ip(&["netns", "del", &name]) {
                Ok(_) => note(&cid, format!("network namespace {name}")),
                Err(e) => {
                    tracing::warn!(netns = %name, error = %format!("{e:#}"), "cannot delete an orphaned network namespace")
                }
            }
        }
        // Overlays (wherever their directory is now).
        let mut mounts: Vec<(String, PathBuf)> = host::mounts()
            .into_iter()
            .filter_map(|m| {
                let cid = self.owner.mount_cid(&m.source)?;
                (!keep.contains(cid)).then(|| (cid.to_string(), m.point))
            })
            .collect();
        mounts.sort_by_key(|(_, p)| std::cmp::Reverse(p.components().count()));
        for (cid, point) in mounts {
            let mut cmd = Proc::new(&self.tools.umount);
            cmd.arg(&point);
            let mut ok = run(cmd, TOOL_TIMEOUT).is_ok_and(|o| o.status.success());
            if !ok {
                let mut cmd = Proc::new(&self.tools.umount);
                cmd.arg("-l").arg(&point);
                ok = run(cmd, TOOL_TIMEOUT).is_ok_and(|o| o.status.success());
            }
            if ok {
                note(&cid, format!("overlay mount {}", point.display()));
            } else {
                tracing::warn!(mount = %point.display(), "cannot unmount an orphaned overlay");
            }
        }
        out
    }
}

impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        "container"
    }

    /// `runc exec`: in the container's namespaces and root filesystem, as
    /// its process (its environment and working directory).
    fn exec(
        &self,
        r: &Running,
        t: &crate::driver::ExecTarget<'_>,
        argv: &[String],
    ) -> anyhow::Result<crate::driver::ExecVia> {
        let (rt, root) = self.runtime_for(r);
        let cid = Self::cid_of(t.instance_id, Some(r));
        let mut cmd = rt.cmd(&root);
        cmd.arg("exec");
        for (k, v) in t.env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg(&cid).args(argv);
        Ok(crate::driver::ExecVia::Host(cmd))
    }

    fn settle(&self, r: &Running, cpu_millis: i64) -> anyhow::Result<()> {
        if cpu_millis <= 0 {
            return Ok(());
        }
        let (rt, root) = self.runtime_for(r);
        let cid = Self::cid_of("", Some(r));
        let mut cmd = rt.cmd(&root);
        cmd.args([
            "update",
            "--cpu-period",
            &CPU_PERIOD.to_string(),
            "--cpu-quota",
            &cpu_millis
                .saturating_mul(CPU_PERIOD / 1000)
                .max(1000)
                .to_string(),
            &cid,
        ]);
        let out = run(cmd, RUNTIME_TIMEOUT)?;
        if out.status.success() || !alive(r) {
            return Ok(());
        }
        bail!(
            "{} update {cid}: {}",
            rt.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }

    fn run(&self, cmd: Command<'_>) -> anyhow::Result<Reply> {
        match cmd {
            Command::Start(launch) => self.start(launch).map(Reply::Started),
            Command::Terminate(r) => self.signal(r, "TERM").map(|()| Reply::Done),
            Command::Kill(r) => self.signal(r, "KILL").map(|()| Reply::Done),
            Command::Cleanup {
                instance_id,
                handle,
            } => self.cleanup(instance_id, handle).map(|()| Reply::Done),
        }
    }

    fn poll(&self, r: &Running) -> Option<Exit> {
        if alive(r) {
            return None;
        }
        let oom = r
            .extra
            .get("cgroup")
            .and_then(|c| oom_kills_at(c))
            .is_some_and(|n| n > 0);
        let ended = r
            .extra
            .get("bundle")
            .and_then(|b| fs::read_to_string(Path::new(b).join(EXIT_FILE)).ok())
            .and_then(|t| crate::init::parse_status(&t));
        let (code, signal) = match ended {
            Some(crate::init::Ended::Exited(c)) => (Some(c), None),
            Some(crate::init::Ended::Killed(s)) => (None, Some(s)),
            // The init itself was killed (`Kill`, or an OOM kill of it).
            None => (None, oom.then_some(9)),
        };
        Some(Exit {
            code,
            signal,
            oom_killed: oom,
        })
    }

    fn sweep(&self, keep: &HashSet<String>) -> Vec<Orphan> {
        self.sweep_orphans(keep)
    }

    fn adopt(&self, r: &Running) -> bool {
        if !alive(r) {
            return false;
        }
        let (rt, root) = self.runtime_for(r);
        let cid = Self::cid_of("", Some(r));
        let running = Self::state(&rt, &root, &cid)
            .and_then(|s| serde_json::from_value::<OciStatus>(s.get("status")?.clone()).ok())
            == Some(OciStatus::Running);
        if running {
            self.remember(&cid, r.extra.get("bundle").map(PathBuf::from));
            let gateway = r.extra.get("host_ip").and_then(|h| h.parse().ok());
            if let (Some(dns), Some(ip)) = (&self.dns, gateway) {
                if let Err(e) = dns.serve(&cid, ip) {
                    tracing::warn!(container = %cid, error = %format!("{e:#}"), "an adopted container gets no internal DNS");
                }
            }
        }
        running
    }
}

/// The runtime's container id: the instance id when the runtime accepts it.
fn container_id(instance_id: &str) -> String {
    let valid = !instance_id.is_empty()
        && instance_id.len() <= 128
        && instance_id != "."
        && instance_id != ".."
        && instance_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if valid {
        instance_id.to_string()
    } else {
        format!("sw-{:016x}", fnv1a(instance_id.as_bytes()))
    }
}

/// The init pid is still the container's and not a zombie.
fn alive(r: &Running) -> bool {
    driver::proc_start_ticks(r.pid).is_some_and(|t| t == r.start_ticks) && !driver::is_zombie(r.pid)
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "(no message)".into()
    } else {
        tail
    }
}

/// A container's state as the OCI runtime specification names it (what
/// `runc state` prints): the runtime's words, not ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum OciStatus {
    Creating,
    Created,
    Running,
    Stopped,
    Paused,
}
