//! The `process` driver: the instance is a process of its own process
//! group (so it outlives an agent restart and is re-adopted), in its own
//! cgroup with memory and CPU limits where the host allows, with its own
//! working directory, and chrooted into its root filesystem when the agent
//! runs as root and the instance has one. Always available. Its cgroups are
//! `shellwego/<owner tag>/process/<instance id>` (see [`crate::owner`]): an
//! agent finds the processes an earlier run left there (and no saved state
//! describes) and kills them; on a host without a usable cgroup controller
//! such processes cannot be told apart from others and are left alone.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command as Cmd, Stdio};
use std::sync::Mutex;

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::cgroup::Cgroup;
use crate::driver::{proc_start_ticks, Command, Driver, Exit, Launch, Reply, Running};
use crate::owner::Owner;

#[derive(Default)]
pub struct ProcessDriver {
    /// Children this agent started, reaped here so their exit codes are known.
    children: Mutex<HashMap<u32, Child>>,
    /// Whose instances these are, and the driver they are made for
    /// (`process`, or `microvm` for QEMU): their cgroups are
    /// `shellwego/<owner tag>/<driver>/<instance id>` (see [`crate::owner`]).
    owner: Owner,
    kind: Option<&'static str>,
}

/// The cgroup `Running.extra` names.
fn cgroup_of(r: &Running) -> Option<Cgroup> {
    r.extra
        .get("cgroups")
        .filter(|s| !s.is_empty())
        .map(|s| Cgroup::open(s.split('\n').map(PathBuf::from).collect()))
}

impl ProcessDriver {
    pub fn new() -> ProcessDriver {
        ProcessDriver::default()
    }

    /// The driver, making the instances of `owner` for the driver `kind`
    /// (`process`, or `microvm` when QEMU runs through it).
    pub fn owned_by(mut self, owner: Owner, kind: &'static str) -> ProcessDriver {
        self.owner = owner;
        self.kind = Some(kind);
        self
    }

    fn start(&self, l: &Launch) -> anyhow::Result<Running> {
        // The instance shares the node's network namespace: nothing can
        // hold its connections to a policy without holding the node's.
        l.refuse_egress_policy(
            self.kind.unwrap_or("process"),
            "its instances share the node's network",
        )?;
        let cg = Cgroup::create(
            &self.owner.cgroup_parent(self.kind.unwrap_or("process")),
            &l.instance_id,
            l.memory,
            crate::driver::boot_cpu_millis(l.cpu_millis),
        );
        if cg.is_none() {
            tracing::info!(instance_id = %l.instance_id, "no usable cgroup on this host: running without memory/cpu limits");
        }
        let (stdout, stderr) = crate::driver::output_files(l)?;
        let chroot = l.is_rootfs && crate::host::is_root();
        // The instance joins its cgroup before it execs the app, so every
        // byte it allocates is counted: a tiny host shell writes its own
        // pid into each cgroup.procs, then execs (keeping the pid).
        let procs: Vec<String> = cg
            .as_ref()
            .map(|c| {
                c.procs_files()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let mut argv: Vec<String> = vec![];
        if chroot {
            argv.extend(["chroot".to_string(), l.root.display().to_string()]);
            if l.workdir != "/" && !l.workdir.is_empty() && l.root.join("bin/sh").exists() {
                argv.extend(["/bin/sh", "-c", "cd \"$0\" && exec \"$@\""].map(String::from));
                argv.push(l.workdir.clone());
            }
        }
        argv.extend(l.argv.iter().cloned());
        let script = "n=$1; shift; while [ \"$n\" -gt 0 ]; do echo $$ > \"$1\" || exit 125; shift; n=$((n-1)); done; exec \"$@\"";
        let mut cmd = Cmd::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(procs.len().to_string());
        cmd.args(&procs).args(&argv);
        let cwd = if chroot {
            l.root.clone()
        } else {
            l.root.join(l.workdir.trim_start_matches('/'))
        };
        cmd.current_dir(&cwd)
            .env_clear()
            .envs(&l.env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        if !l.env.contains_key("PATH") {
            cmd.env("PATH", crate::host::DEFAULT_PATH);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", l.argv))?;
        let pid = child.id();
        let start_ticks = proc_start_ticks(pid).unwrap_or(0);
        let mut extra = BTreeMap::new();
        if let Some(c) = &cg {
            extra.insert(
                "cgroups".into(),
                c.dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            extra.insert("oom_base".into(), c.oom_kills().to_string());
        }
        if let Ok(mut m) = self.children.lock() {
            m.insert(pid, child);
        }
        Ok(Running {
            driver: "process".into(),
            pid,
            start_ticks,
            extra,
        })
    }

    fn signal(r: &Running, s: Signal) {
        crate::host::signal_group(r.pid, s);
    }

    fn oom(r: &Running) -> bool {
        let base: u64 = r
            .extra
            .get("oom_base")
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        cgroup_of(r).is_some_and(|c| c.oom_kills() > base)
    }
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    /// As the instance was launched: its root (chrooted into when it is a
    /// root filesystem and the agent is root), working directory and
    /// environment, in its cgroups (its memory limit holds the command too).
    fn exec(
        &self,
        r: &Running,
        t: &crate::driver::ExecTarget<'_>,
        argv: &[String],
    ) -> anyhow::Result<crate::driver::ExecVia> {
        let chroot = t.is_rootfs && crate::host::is_root();
        let procs: Vec<String> = r
            .extra
            .get("cgroups")
            .map(|c| {
                c.lines()
                    .filter(|l| !l.is_empty())
                    .map(|d| format!("{d}/cgroup.procs"))
                    .collect()
            })
            .unwrap_or_default();
        let mut full: Vec<String> = vec![];
        if chroot {
            full.extend(["chroot".to_string(), t.root.display().to_string()]);
            if t.workdir != "/" && !t.workdir.is_empty() && t.root.join("bin/sh").exists() {
                full.extend(["/bin/sh", "-c", "cd \"$0\" && exec \"$@\""].map(String::from));
                full.push(t.workdir.to_string());
            }
        }
        full.extend(argv.iter().cloned());
        let script = "n=$1; shift; while [ \"$n\" -gt 0 ]; do echo $$ > \"$1\" 2>/dev/null; shift; n=$((n-1)); done; exec \"$@\"";
        let mut cmd = Cmd::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(procs.len().to_string())
            .args(&procs)
            .args(&full);
        let cwd = if chroot {
            t.root.to_path_buf()
        } else {
            t.root.join(t.workdir.trim_start_matches('/'))
        };
        cmd.current_dir(cwd).env_clear().envs(t.env);
        if !t.env.contains_key("PATH") {
            cmd.env("PATH", crate::host::DEFAULT_PATH);
        }
        Ok(crate::driver::ExecVia::Host(cmd))
    }

    fn settle(&self, r: &Running, cpu_millis: i64) -> anyhow::Result<()> {
        if let Some(cg) = cgroup_of(r) {
            cg.set_cpu(cpu_millis)
                .context("cannot set the instance's CPU limit")?;
        }
        Ok(())
    }

    fn run(&self, cmd: Command<'_>) -> anyhow::Result<Reply> {
        match cmd {
            Command::Start(l) => Ok(Reply::Started(self.start(l)?)),
            Command::Terminate(r) => {
                Self::signal(r, Signal::SIGTERM);
                Ok(Reply::Done)
            }
            Command::Kill(r) => {
                Self::signal(r, Signal::SIGKILL);
                Ok(Reply::Done)
            }
            Command::Cleanup { handle, .. } => {
                if let Some(cg) = handle.and_then(cgroup_of) {
                    // Strays of the instance (children that did not die
                    // with it) go now, so the cgroup can be removed.
                    for f in cg.procs_files() {
                        for pid in std::fs::read_to_string(&f).unwrap_or_default().lines() {
                            if let Ok(p) = pid.trim().parse::<i32>() {
                                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
                            }
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    cg.remove();
                }
                if let (Some(r), Ok(mut m)) = (handle, self.children.lock()) {
                    if let Some(mut c) = m.remove(&r.pid) {
                        let _ = c.try_wait();
                    }
                }
                Ok(Reply::Done)
            }
        }
    }

    fn poll(&self, r: &Running) -> Option<Exit> {
        if let Ok(mut m) = self.children.lock() {
            if let Some(c) = m.get_mut(&r.pid) {
                return match c.try_wait() {
                    Ok(None) => None,
                    Ok(Some(st)) => {
                        m.remove(&r.pid);
                        Some(Exit {
                            code: st.code(),
                            signal: st.signal(),
                            oom_killed: Self::oom(r),
                        })
                    }
                    Err(_) => Some(Exit {
                        code: None,
                        signal: None,
                        oom_killed: Self::oom(r),
                    }),
                };
            }
        }
        // Adopted (started by an earlier agent): alive as long as the same
        // process is there.
        if self.adopt(r) {
            None
        } else {
            Some(Exit {
                code: None,
                signal: None,
                oom_killed: Self::oom(r),
            })
        }
    }
}
