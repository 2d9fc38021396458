//! The `container` driver: each instance runs as an OCI container started by
//! the host's OCI runtime (`runc`, or `crun` where it works), in its own
//! pid, ipc, uts, mount and network namespaces and its own cgroup.
//!
//! # Choosing a runtime
//!
//! [`ContainerDriver::detect`] looks for `runc`, then `crun` (on `PATH`, then
//! in the usual `sbin`/`bin` directories) and *really starts* a trivial
//! container with each, through the same code path as every instance
//! (overlay, network namespace, cgroup limits, detached run): the first one
//! that works is used. A runtime is never chosen by name alone: on hosts with
//! hybrid cgroups (v1 controllers plus a v2 mount without controllers)
//! Debian's crun 1.8 refuses to run while runc 1.1 works. The verdict (and
//! why, when nothing works: [`ContainerDriver::probe`]) is cached for the
//! life of the process. The driver needs root; rootless runtimes are not
//! supported.
//!
//! # Layout of one instance
//!
//! Everything lives in `<launch.dir>/bundle/`:
//!
//! * `config.json` — the OCI runtime config, written here as JSON (no spec
//!   crate: the handful of fields we set is documented below);
//! * `rootfs/` — the container's root;
//! * `upper/`, `work/` — the overlay's writable layer (see below);
//! * `pid` — the container's init pid (written by the runtime);
//! * `exit-status` — how the app ended, written by our init (see below);
//! * `runtime.log` — the runtime's own log (its errors end up in the error
//!   returned by `Start`).
//!
//! Root filesystem (`launch.is_rootfs`): an **overlay** (mount source
//! `shellwego-<owner tag>-<container id>`, see [`crate::owner`]) is mounted
//! on the host at `bundle/rootfs` with `launch.root` as the read-only lower
//! layer and `bundle/upper` as the writable one, so the shared, unpacked image is never
//! modified and each start gets a fresh writable layer. Where the overlay
//! cannot be mounted (the upper directory is itself on overlayfs, a path holds
//! `,` or `:`, the kernel lacks overlayfs) the root is **copied** instead
//! (`cp -a`), slower but equally isolated.
//!
//! App directory (`!launch.is_rootfs`): the root is a skeleton directory in
//! which the host's `/usr`, `/bin`, `/sbin`, `/lib*` (mirrored as symlinks
//! where the host has merged `/usr`) and a few `/etc` entries needed by
//! ordinary programs (`ssl`, `ca-certificates`, `alternatives`,
//! `ld.so.cache`, `passwd`, `group`, `nsswitch.conf`, `localtime`…) are
//! bind-mounted **read-only**; the app directory is overlaid like a root
//! filesystem (lower `launch.root`, upper in the bundle) and mounted at
//! `/app`; `launch.workdir` is taken relative to `/app`.
//!
//! Both get `/proc`, a tmpfs `/dev` (the runtime adds the standard device
//! nodes), `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys` read-only, the
//! cgroup tree read-only, a tmpfs `/tmp`, the host's `/etc/resolv.conf`
//! read-only, and an `/etc/hosts` of its own naming the container (its
//! hostname at its address), read-only.
//!
//! # Process and limits
//!
//! pid 1 of the container is **our init** (`sw-init`, see [`crate::init`]),
//! a static binary the agent writes once to `/run/shellwego/` and
//! bind-mounts read-only at `/.shellwego/sw-init`; the process is
//! `/.shellwego/sw-init -- <argv>…`, and the init runs the app as its child.
//! env (plus `PATH` and `PORT` when missing) and cwd as given; uid 0
//! inside the container (no user namespace), Docker's default capability set,
//! `noNewPrivileges`, Docker's masked and read-only `/proc` paths, all device
//! access denied but the runtime's defaults. The cgroup is
//! `/shellwego/<owner tag>/container/<container id>` (`cgroupsPath`, cgroupfs layout, so
//! the driver knows where to look for OOM kills); memory limit =
//! `launch.memory` (and memory+swap = the same where swap is on and
//! accounted), CPU = `cpu_millis × 100` µs per 100 ms period (at least one
//! core until the instance is up, then `runc update` sets it: `Driver::settle`). No seccomp
//! profile is applied.
//!
//! # Networking
//!
//! Each container gets a named network namespace `sw-<owner tag>-<container
//! id>` (created with `ip netns add`, so it exists at `/var/run/netns/…`
//! before the container and the OCI config's network namespace `path`
//! points at it) and a veth pair `swh<hash>` (host) / `swc<hash>` (inside),
//! which goes with the namespace. The pair is
//! addressed as a /31 out of `10.89.0.0/16`: the host end gets the even
//! address, the container the odd one (`Running.extra["ip"]`), `lo` is
//! brought up and the default route points at the host end (all of it in
//! two `ip -batch` calls, one on the host and one in the namespace: each
//! `ip` process costs about 4 ms). The host reaches
//! `ip:port` directly through the connected /31 route: no bridge, no NAT, no
//! iptables. Egress beyond the host is not set up. The /31 is chosen by
//! scanning the host's addresses (starting from a hash of the container id),
//! under an exclusive `flock` on `/run/shellwego/net.lock` held until the host
//! end has its address, so concurrent starts (threads or agents) never pick
//! the same pair and nothing has to be persisted: deleting the namespace (or
//! a reboot) frees the address.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};

use crate::driver::{self, Command, Driver, Exit, Launch, Reply, Running};
use crate::host::{
    self, cgroup_mounts, find_binary, is_root, mounts_under, oom_kills_at, run, run_input,
    wait_timeout, DEFAULT_PATH,
};
use crate::owner::{fnv1a, Orphan, Owner};

/// Our directory for the network lock and the probe (runtime state is
/// per owner: [`Owner::run_dir`]).
const RUN_DIR: &str = crate::owner::RUN_DIR;
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// Containers are addressed out of `10.89.0.0/16`, one /31 each.
const NET_PREFIX: [u8; 2] = [10, 89];
const NET_PAIRS: u32 = 1 << 15;
const CPU_PERIOD: i64 = 100_000;
/// Tried in this order.
const RUNTIMES: [&str; 2] = ["runc", "crun"];
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(30);
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
/// In the bundle: how the app ended, as our init wrote it.
const EXIT_FILE: &str = "exit-status";

/// Docker's default capability set.
const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Host top-level directories shared read-only with app-directory instances.
const HOST_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host `/etc` entries shared read-only with app-directory instances.
const HOST_ETC: [&str; 18] = [
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "passwd",
    "group",
    "nsswitch.conf",
    "localtime",
    "timezone",
    "mime.types",
    "protocols",
    "services",
    "host.conf",
    "gai.conf",
];

/// An OCI runtime binary.
#[derive(Debug, Clone)]
struct Runtime {
    name: &'static str,
    path: PathBuf,
}

impl Runtime {
    fn cmd(&self, state_root: &Path) -> Proc {
        let mut c = Proc::new(&self.path);
        c.arg("--root").arg(state_root);
        c
    }
}

/// Host tools the driver calls.
#[derive(Debug, Clone)]
struct Tools {
    ip: PathBuf,
    umount: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools, String> {
        let get = |name: &str, pkg: &str| {
            find_binary(name).ok_or_else(|| format!("`{name}` not found (install {pkg})"))
        };
        Ok(Tools {
            ip: get("ip", "iproute2")?,
            umount: get("umount", "mount/util-linux")?,
        })
    }
}

/// What the host probe found (cached for the process).
static PROBED: OnceLock<Result<(Runtime, Tools), String>> = OnceLock::new();

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
        }
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

    /// (network namespace, host veth, container veth) of a container.
    fn net_names(&self, cid: &str) -> (String, String, String) {
        let (host, peer) = veth_names(cid);
        (self.owner.netns(cid), host, peer)
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
        let (netns, veth, _) = self.net_names(&cid);
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
        let net = self.setup_net(cid)?;
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
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .with_context(|| format!("cannot open the log {}", launch.log.display()))?;
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
            .stdout(log.try_clone()?)
            .stderr(log);
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

    /// The container's root (and, for an app directory, `/app`).
    fn prepare_fs(&self, launch: &Launch, root: &Path, bundle: &Path) -> anyhow::Result<Layout> {
        let rootfs = bundle.join("rootfs");
        // Our overlays say whose they are (see `crate::owner`).
        let source = self.owner.mount_source(&container_id(&launch.instance_id));
        if launch.is_rootfs {
            let how = self.layer(
                root,
                &rootfs,
                &bundle.join("upper"),
                &bundle.join("work"),
                &source,
            )?;
            return Ok(Layout {
                how,
                mounts: Vec::new(),
                cwd: inside("/", &launch.workdir),
            });
        }
        fs::create_dir_all(&rootfs)?;
        let mut mounts = Vec::new();
        for d in HOST_DIRS {
            let host = Path::new("/").join(d);
            let Ok(meta) = fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&host)?;
                std::os::unix::fs::symlink(&target, rootfs.join(d))
                    .with_context(|| format!("cannot mirror the symlink /{d}"))?;
            } else if meta.is_dir() {
                mounts.push(bind_ro(&host, &format!("/{d}")));
            }
        }
        for e in HOST_ETC {
            let host = Path::new("/etc").join(e);
            if host.exists() {
                mounts.push(bind_ro(&host, &format!("/etc/{e}")));
            }
        }
        let app = bundle.join("app");
        let how = self.layer(
            root,
            &app,
            &bundle.join("app-upper"),
            &bundle.join("app-work"),
            &source,
        )?;
        mounts.push(json!({
            "destination": "/app",
            "type": "bind",
            "source": app,
            "options": ["rbind", "rw"],
        }));
        Ok(Layout {
            how,
            mounts,
            cwd: inside("/app", &launch.workdir),
        })
    }

    /// `target` = `lower` with a private writable layer: an overlay (its
    /// mount source `source`) when possible, else a copy.
    fn layer(
        &self,
        lower: &Path,
        target: &Path,
        upper: &Path,
        work: &Path,
        source: &str,
    ) -> anyhow::Result<&'static str> {
        for d in [target, upper, work] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let paths = [lower, upper, work];
        if paths.iter().all(|p| overlay_safe(p)) {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            let mounted = nix::mount::mount(
                Some(source),
                target,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            );
            match mounted {
                Ok(()) => return Ok("overlay"),
                Err(e) => tracing::warn!(
                    lower = %lower.display(),
                    error = %e,
                    "overlay mount failed; copying the root instead"
                ),
            }
        } else {
            tracing::warn!(lower = %lower.display(), "path unusable in overlay options; copying the root instead");
        }
        let cp = find_binary("cp").ok_or_else(|| anyhow!("`cp` not found"))?;
        let mut src = lower.as_os_str().to_owned();
        src.push("/.");
        let mut cmd = Proc::new(cp);
        cmd.arg("-a").arg(src).arg(target);
        let out = run(cmd, Duration::from_secs(600))?;
        if !out.status.success() {
            bail!(
                "cannot copy {} into the container: {}",
                lower.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let _ = fs::remove_dir_all(upper);
        let _ = fs::remove_dir_all(work);
        Ok("copy")
    }

    // ------------------------------------------------------------ network

    fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Proc::new(&self.tools.ip);
        cmd.args(args);
        let out = run(cmd, TOOL_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip [-n netns] -batch -`: the commands in order, stopping at the
    /// first that fails.
    fn ip_batch(&self, netns: Option<&str>, cmds: &[String]) -> anyhow::Result<()> {
        let mut cmd = Proc::new(&self.tools.ip);
        if let Some(n) = netns {
            cmd.args(["-n", n]);
        }
        cmd.args(["-batch", "-"]);
        let mut input = cmds.join("\n");
        input.push('\n');
        let out = run_input(cmd, Some(input.into_bytes()), TOOL_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "ip{} -batch [{}]: {}",
                netns.map(|n| format!(" -n {n}")).unwrap_or_default(),
                cmds.join("; "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn setup_net(&self, cid: &str) -> anyhow::Result<Net> {
        let (netns, host_veth, peer_veth) = self.net_names(cid);
        self.teardown_net(&netns, &host_veth);
        // Two `ip -batch` calls (each `ip` costs ~4 ms to spawn; one per
        // command made this a third of a container's start).
        let made = (|| {
            let lock = net_lock()?;
            let (host_ip, ip) = self.free_pair(fnv1a(cid.as_bytes()))?;
            self.ip_batch(
                None,
                &[
                    format!("netns add {netns}"),
                    format!("link add {host_veth} type veth peer name {peer_veth} netns {netns}"),
                    format!("addr add {host_ip}/31 dev {host_veth}"),
                    format!("link set {host_veth} up"),
                ],
            )?;
            // The pair is claimed (visible to other scans): let others go.
            drop(lock);
            self.ip_batch(
                Some(&netns),
                &[
                    format!("addr add {ip}/31 dev {peer_veth}"),
                    format!("link set {peer_veth} up"),
                    "link set lo up".to_string(),
                    format!("route add default via {host_ip}"),
                ],
            )?;
            Ok(Net {
                netns: netns.clone(),
                host_veth: host_veth.clone(),
                host_ip,
                ip,
            })
        })();
        if made.is_err() {
            self.teardown_net(&netns, &host_veth);
        }
        made
    }

    /// A /31 of 10.89.0.0/16 no host interface uses, searched from `seed`.
    fn free_pair(&self, seed: u64) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
        let used: HashSet<u32> = nix::ifaddrs::getifaddrs()
            .context("cannot list the host's addresses")?
            .filter_map(|a| {
                let addr = a.address?.as_sockaddr_in()?.ip();
                let o = addr.octets();
                (o[..2] == NET_PREFIX).then_some((u32::from(o[2]) << 8 | u32::from(o[3])) >> 1)
            })
            .collect();
        let start = u32::try_from(seed % u64::from(NET_PAIRS)).unwrap_or(0);
        let base = u32::from(Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], 0, 0));
        (0..NET_PAIRS)
            .map(|i| (start + i) % NET_PAIRS)
            .find(|k| !used.contains(k))
            .map(|k| {
                let host = base + 2 * k;
                (Ipv4Addr::from(host), Ipv4Addr::from(host + 1))
            })
            .ok_or_else(|| anyhow!("10.89.0.0/16 is exhausted: no free /31 for a container"))
    }

    /// Best effort: the names may not exist.
    fn teardown_net(&self, netns: &str, host_veth: &str) {
        if Path::new("/sys/class/net").join(host_veth).exists() {
            if let Err(e) = self.ip(&["link", "del", host_veth]) {
                tracing::warn!(error = %format!("{e:#}"), "cannot delete a container's veth");
            }
        }
        if Path::new(NETNS_DIR).join(netns).exists() {
            if let Err(e) = self.ip(&["netns", "del", netns]) {
                tracing::warn!(error = %format!("{e:#}"), "cannot delete a container's network namespace");
            }
        }
    }

    // ------------------------------------------------------------ runtime calls

    /// The runtime (and its state root) a handle was started with.
    fn runtime_for(&self, r: &Running) -> (Runtime, PathBuf) {
        let rt = match r.extra.get("runtime") {
            Some(n) if n != self.runtime.name => RUNTIMES
                .iter()
                .find(|x| *x == n)
                .and_then(|name| find_binary(name).map(|path| Runtime { name, path }))
                .unwrap_or_else(|| self.runtime.clone()),
            _ => self.runtime.clone(),
        };
        let root = r
            .extra
            .get("state_root")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.owner.run_dir().join(rt.name));
        (rt, root)
    }

    fn cid_of(instance_id: &str, r: Option<&Running>) -> String {
        r.and_then(|r| r.extra.get("container_id").cloned())
            .unwrap_or_else(|| container_id(instance_id))
    }

    /// `runtime state <id>`: None when it does not know the container.
    fn state(rt: &Runtime, state_root: &Path, cid: &str) -> Option<Value> {
        let mut cmd = rt.cmd(state_root);
        cmd.args(["state", cid]);
        let out = run(cmd, RUNTIME_TIMEOUT).ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
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
        let (mut netns, mut veth, _) = self.net_names(&cid);
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
        self.teardown_net(netns, veth);
        if let Some(b) = bundle {
            self.remove_tree(b)?;
        }
        Ok(())
    }

    /// Unmount whatever is mounted at or under `path`, then delete it; never
    /// deletes through a mount (that would reach into the image).
    fn remove_tree(&self, path: &Path) -> anyhow::Result<()> {
        if fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        let path = fs::canonicalize(path)?;
        for mp in mounts_under(&path) {
            let mut cmd = Proc::new(&self.tools.umount);
            cmd.arg(&mp);
            let ok = run(cmd, TOOL_TIMEOUT).is_ok_and(|o| o.status.success());
            if !ok {
                let mut cmd = Proc::new(&self.tools.umount);
                cmd.arg("-l").arg(&mp);
                let _ = run(cmd, TOOL_TIMEOUT);
            }
        }
        let left = mounts_under(&path);
        if !left.is_empty() {
            bail!(
                "{} is still mounted; not removing {}",
                left[0].display(),
                path.display()
            );
        }
        fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))
    }

    /// Remove what probes of processes that died mid-probe (an agent killed
    /// as it started) left: their ids and directories hold their pid.
    fn sweep_dead_probes(&self) {
        const PREFIX: &str = "shellwego-probe-";
        let dead = |pid: &str| {
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !Path::new("/proc").join(pid).exists()
        };
        let root = self.state_root();
        for (cid, bundle, _) in Self::listed(&self.runtime, &root).unwrap_or_default() {
            if cid.strip_prefix(PREFIX).is_some_and(dead) {
                let (netns, veth, _) = self.net_names(&cid);
                let _ = self.teardown(&self.runtime, &root, &cid, bundle.as_deref(), &netns, &veth);
            }
        }
        for e in fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = self
                .owner
                .netns_cid(&name)
                .and_then(|c| c.strip_prefix(PREFIX))
                .is_some_and(dead);
            if stale {
                let _ = self.ip(&["netns", "del", &name]);
            }
        }
        for e in fs::read_dir(RUN_DIR).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name
                .strip_prefix("probe-")
                .and_then(|r| r.split('-').next())
                .is_some_and(dead);
            if stale {
                let _ = self.remove_tree(&e.path());
            }
        }
    }

    /// Start a trivial container through the normal path; Ok when it ran.
    fn probe_run(&self) -> anyhow::Result<()> {
        self.sweep_dead_probes();
        let dir = Path::new(RUN_DIR).join(format!(
            "probe-{}-{}",
            std::process::id(),
            self.runtime.name
        ));
        let id = format!("shellwego-probe-{}", std::process::id());
        // A crashed earlier probe with our pid (pids are reused).
        self.teardown(
            &self.runtime,
            &self.state_root(),
            &id,
            Some(&dir),
            &self.net_names(&id).0,
            &self.net_names(&id).1,
        )?;
        fs::create_dir_all(dir.join("app"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let launch = Launch {
            instance_id: id.clone(),
            dir: dir.clone(),
            root: dir.join("app"),
            is_rootfs: false,
            argv: vec!["echo".into(), "shellwego-probe-ok".into()],
            workdir: "/".into(),
            env: BTreeMap::new(),
            port: 8080,
            memory: 64 << 20,
            cpu_millis: 500,
            log: dir.join("probe.log"),
        };
        let ran = (|| {
            let r = self.start(&launch)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(&r) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let said = fs::read_to_string(&launch.log).unwrap_or_default();
            if !said.contains("shellwego-probe-ok") {
                bail!("the probe container printed nothing: {}", said.trim());
            }
            Ok(r)
        })();
        let cleaned = self.cleanup(&id, ran.as_ref().ok());
        let removed = self.remove_tree(&dir);
        ran?;
        cleaned?;
        removed
    }
}

impl ContainerDriver {
    /// The containers in `rt`'s state under `root`: (id, bundle, status).
    fn listed(rt: &Runtime, root: &Path) -> anyhow::Result<Vec<(String, Option<PathBuf>, String)>> {
        if !root.exists() {
            return Ok(vec![]);
        }
        let mut cmd = rt.cmd(root);
        cmd.args(["list", "--format", "json"]);
        let out = run(cmd, RUNTIME_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "{} list: {}",
                rt.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{} list printed no JSON", rt.name))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let id = c.get("id")?.as_str()?.to_string();
                let bundle = c.get("bundle").and_then(Value::as_str).map(PathBuf::from);
                let status = c
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string();
                Some((id, bundle, status))
            })
            .collect())
    }

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
                let (netns, veth, _) = self.net_names(&cid);
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
            match self.ip(&["netns", "del", &name]) {
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
            .is_some_and(|s| s.get("status").and_then(Value::as_str) == Some("running"));
        if running {
            self.remember(&cid, r.extra.get("bundle").map(PathBuf::from));
        }
        running
    }
}

// ---------------------------------------------------------------- helpers

struct Layout {
    /// `"overlay"` or `"copy"`.
    how: &'static str,
    /// Extra OCI mounts (app directories).
    mounts: Vec<Value>,
    cwd: String,
}

struct Net {
    netns: String,
    host_veth: String,
    host_ip: Ipv4Addr,
    ip: Ipv4Addr,
}

struct ConfigInput<'a> {
    argv: &'a [String],
    env: Vec<String>,
    cwd: String,
    hostname: String,
    /// Mounted read-only at /etc/hosts.
    hosts: PathBuf,
    netns: Option<String>,
    cgroup: String,
    memory: i64,
    cpu_millis: i64,
    mounts: Vec<Value>,
}

fn bind_ro(source: &Path, destination: &str) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    })
}

/// The OCI runtime config (runtime-spec 1.0).
fn oci_config(c: &ConfigInput<'_>) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    if Path::new("/etc/resolv.conf").is_file() {
        mounts.push(bind_ro(Path::new("/etc/resolv.conf"), "/etc/resolv.conf"));
    }
    mounts.push(bind_ro(&c.hosts, "/etc/hosts"));
    mounts.extend(c.mounts.iter().cloned());

    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if c.memory > 0 {
        resources["memory"] = json!({"limit": c.memory});
        if swap_accounted() {
            resources["memory"]["swap"] = json!(c.memory);
        }
    }
    if c.cpu_millis > 0 {
        resources["cpu"] = json!({
            "quota": c.cpu_millis.saturating_mul(CPU_PERIOD / 1000).max(1000),
            "period": CPU_PERIOD,
        });
    }
    let mut network = json!({"type": "network"});
    if let Some(p) = &c.netns {
        network["path"] = json!(p);
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": c.argv,
            "env": c.env,
            "cwd": c.cwd,
            "capabilities": {
                "bounding": CAPS,
                "effective": CAPS,
                "permitted": CAPS,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": c.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": c.cgroup,
            "resources": resources,
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                network,
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    })
}

/// `workdir` inside `base` (`/` or `/app`).
fn inside(base: &str, workdir: &str) -> String {
    let rel = workdir.trim().trim_matches('/');
    match (base, rel.is_empty()) {
        (_, true) => base.to_string(),
        ("/", false) => format!("/{rel}"),
        (_, false) => format!("{base}/{rel}"),
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

/// (host veth, container veth): interface names are at most 15 bytes. The
/// pair lives and dies with the container's network namespace.
fn veth_names(cid: &str) -> (String, String) {
    let h = format!("{:010x}", fnv1a(cid.as_bytes()) >> 24);
    (format!("swh{h}"), format!("swc{h}"))
}

fn net_lock() -> anyhow::Result<Flock<File>> {
    fs::create_dir_all(RUN_DIR).with_context(|| format!("cannot create {RUN_DIR}"))?;
    let path = Path::new(RUN_DIR).join("net.lock");
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("cannot lock {}: {e}", path.display()))
}

/// The init pid is still the container's and not a zombie.
fn alive(r: &Running) -> bool {
    driver::proc_start_ticks(r.pid).is_some_and(|t| t == r.start_ticks) && !driver::is_zombie(r.pid)
}

/// Overlay options are comma-separated and lowerdir colon-separated.
fn overlay_safe(p: &Path) -> bool {
    p.to_str()
        .is_some_and(|s| !s.contains([',', ':', '\\', '\n']))
}

/// Swap is on and the memory cgroup accounts it (else a swap limit is moot,
/// or refused).
fn swap_accounted() -> bool {
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    if swaps.lines().count() < 2 {
        return false;
    }
    let mounts = cgroup_mounts();
    match (&mounts.memory_v1, &mounts.unified) {
        (Some(v1), _) => v1.join("memory.memsw.limit_in_bytes").exists(),
        (None, Some(_)) => true,
        (None, None) => false,
    }
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

fn probe_host() -> Result<(Runtime, Tools), String> {
    if !is_root() {
        return Err("the container driver needs root (the agent's effective uid is not 0)".into());
    }
    let tools = Tools::find()?;
    let mut reasons = Vec::new();
    for name in RUNTIMES {
        let Some(path) = find_binary(name) else {
            reasons.push(format!("{name}: not installed"));
            continue;
        };
        let rt = Runtime { name, path };
        // The probe's objects are its own owner's (its ids hold our pid).
        let d = ContainerDriver::with(rt.clone(), tools.clone()).owned_by(Owner::probe());
        match d.probe_run() {
            Ok(()) => {
                tracing::info!(runtime = name, path = %rt.path.display(), "container driver available");
                return Ok((rt, tools));
            }
            Err(e) => {
                tracing::info!(runtime = name, error = %format!("{e:#}"), "OCI runtime does not work here");
                reasons.push(format!("{name} ({}): {e:#}", rt.path.display()));
            }
        }
    }
    Err(format!("no working OCI runtime: {}", reasons.join("; ")))
}
