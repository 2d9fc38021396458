//! What a container is made of on the host: its bundle (the OCI runtime
//! config and the root filesystem, by overlay or copy, with the host's
//! userland bind-mounted for an app directory) and removing it again.
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

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use super::{container_id, ContainerDriver, CPU_PERIOD, TOOL_TIMEOUT};
use crate::driver::Launch;
use crate::host::{cgroup_mounts, find_binary, mounts_under, run};

/// Docker's default capability set.
pub(super) const CAPS: [&str; 14] = [
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

pub(super) const MASKED_PATHS: [&str; 11] = [
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

pub(super) const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Host top-level directories shared read-only with app-directory instances.
pub(super) const HOST_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host `/etc` entries shared read-only with app-directory instances.
pub(super) const HOST_ETC: [&str; 18] = [
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

impl ContainerDriver {
    /// The container's root (and, for an app directory, `/app`).
    pub(super) fn prepare_fs(
        &self,
        launch: &Launch,
        root: &Path,
        bundle: &Path,
    ) -> anyhow::Result<Layout> {
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
    pub(super) fn layer(
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

    /// Unmount whatever is mounted at or under `path`, then delete it; never
    /// deletes through a mount (that would reach into the image).
    pub(super) fn remove_tree(&self, path: &Path) -> anyhow::Result<()> {
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
}

pub(super) struct Layout {
    /// `"overlay"` or `"copy"`.
    pub(super) how: &'static str,
    /// Extra OCI mounts (app directories).
    pub(super) mounts: Vec<Value>,
    pub(super) cwd: String,
}

pub(super) struct ConfigInput<'a> {
    pub(super) argv: &'a [String],
    pub(super) env: Vec<String>,
    pub(super) cwd: String,
    pub(super) hostname: String,
    /// Mounted read-only at /etc/hosts.
    pub(super) hosts: PathBuf,
    pub(super) netns: Option<String>,
    pub(super) cgroup: String,
    pub(super) memory: i64,
    pub(super) cpu_millis: i64,
    pub(super) mounts: Vec<Value>,
}

pub(super) fn bind_ro(source: &Path, destination: &str) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    })
}

/// The OCI runtime config (runtime-spec 1.0).
pub(super) fn oci_config(c: &ConfigInput<'_>) -> Value {
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
pub(super) fn inside(base: &str, workdir: &str) -> String {
    let rel = workdir.trim().trim_matches('/');
    match (base, rel.is_empty()) {
        (_, true) => base.to_string(),
        ("/", false) => format!("/{rel}"),
        (_, false) => format!("{base}/{rel}"),
    }
}

/// Overlay options are comma-separated and lowerdir colon-separated.
pub(super) fn overlay_safe(p: &Path) -> bool {
    p.to_str()
        .is_some_and(|s| !s.contains([',', ':', '\\', '\n']))
}

/// Swap is on and the memory cgroup accounts it (else a swap limit is moot,
/// or refused).
pub(super) fn swap_accounted() -> bool {
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
