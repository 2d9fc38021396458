//! Which OCI runtime the container driver uses, and calls to it that are
//! not one instance's life cycle (`state`, `list`, the probe).
//!
//! # Choosing a runtime
//!
//! [`super::ContainerDriver::detect`] looks for `runc`, then `crun` (on `PATH`, then
//! in the usual `sbin`/`bin` directories) and *really starts* a trivial
//! container with each, through the same code path as every instance
//! (overlay, network namespace, cgroup limits, detached run): the first one
//! that works is used. A runtime is never chosen by name alone: on hosts with
//! hybrid cgroups (v1 controllers plus a v2 mount without controllers)
//! Debian's crun 1.8 refuses to run while runc 1.1 works. The verdict (and
//! why, when nothing works: [`super::ContainerDriver::probe`]) is cached for the
//! life of the process. The driver needs root; rootless runtimes are not
//! supported.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::net::NETNS_DIR;
use super::{alive, ContainerDriver, RUNTIME_TIMEOUT, RUN_DIR};
use crate::driver::{Launch, Running};
use crate::host::{find_binary, is_root, run};
use crate::owner::Owner;

/// Tried in this order.
pub(super) const RUNTIMES: [&str; 2] = ["runc", "crun"];

/// An OCI runtime binary.
#[derive(Debug, Clone)]
pub(super) struct Runtime {
    pub(super) name: &'static str,
    pub(super) path: PathBuf,
}

impl Runtime {
    pub(super) fn cmd(&self, state_root: &Path) -> Proc {
        let mut c = Proc::new(&self.path);
        c.arg("--root").arg(state_root);
        c
    }
}

/// Host tools the driver calls.
#[derive(Debug, Clone)]
pub(super) struct Tools {
    pub(super) ip: PathBuf,
    pub(super) umount: PathBuf,
    /// nftables: egress policies and the node's NAT; optional (a
    /// container without a policy does without it).
    pub(super) nft: Option<PathBuf>,
}

impl Tools {
    pub(super) fn find() -> Result<Tools, String> {
        let get = |name: &str, pkg: &str| {
            find_binary(name).ok_or_else(|| format!("`{name}` not found (install {pkg})"))
        };
        Ok(Tools {
            ip: get("ip", "iproute2")?,
            umount: get("umount", "mount/util-linux")?,
            nft: find_binary("nft"),
        })
    }
}

/// What the host probe found (cached for the process).
pub(super) static PROBED: OnceLock<Result<(Runtime, Tools), String>> = OnceLock::new();

impl ContainerDriver {
    /// The runtime (and its state root) a handle was started with.
    pub(super) fn runtime_for(&self, r: &Running) -> (Runtime, PathBuf) {
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

    /// `runtime state <id>`: None when it does not know the container.
    pub(super) fn state(rt: &Runtime, state_root: &Path, cid: &str) -> Option<Value> {
        let mut cmd = rt.cmd(state_root);
        cmd.args(["state", cid]);
        let out = run(cmd, RUNTIME_TIMEOUT).ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Remove what probes of processes that died mid-probe (an agent killed
    /// as it started) left: their ids and directories hold their pid.
    pub(super) fn sweep_dead_probes(&self) {
        const PREFIX: &str = "shellwego-probe-";
        let dead = |pid: &str| {
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !Path::new("/proc").join(pid).exists()
        };
        let root = self.state_root();
        for (cid, bundle, _) in Self::listed(&self.runtime, &root).unwrap_or_default() {
            if cid.strip_prefix(PREFIX).is_some_and(dead) {
                let (netns, veth, _) = self.hostnet().net_names(&cid);
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
                let _ = self.hostnet().ip(&["netns", "del", &name]);
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
    pub(super) fn probe_run(&self) -> anyhow::Result<()> {
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
            &self.hostnet().net_names(&id).0,
            &self.hostnet().net_names(&id).1,
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
            stdout: dir.join("probe.log"),
            stderr: dir.join("probe.log"),
            allowed_egress: None,
        };
        let ran = (|| {
            let r = self.start(&launch)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(&r) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let said = fs::read_to_string(&launch.stdout).unwrap_or_default();
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

    /// The containers in `rt`'s state under `root`: (id, bundle, status).
    pub(super) fn listed(
        rt: &Runtime,
        root: &Path,
    ) -> anyhow::Result<Vec<(String, Option<PathBuf>, String)>> {
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
}

pub(super) fn probe_host() -> Result<(Runtime, Tools), String> {
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
