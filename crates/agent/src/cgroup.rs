//! Per-instance cgroups for the process driver, on cgroup v1 (memory and
//! cpu hierarchies) and v2 (a unified hierarchy with the controllers
//! enabled). Hosts without a usable controller get no limits; the driver
//! says so in its log, and instances still run. An instance's cgroup is
//! `<parent>/<instance id>` in each hierarchy, the parent naming the
//! agent's owner tag and the driver (`shellwego/<tag>/process`, see
//! [`crate::owner`]).

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, PartialEq)]
pub struct Cgroup {
    /// Directories whose `cgroup.procs` the instance joins.
    pub dirs: Vec<PathBuf>,
    /// Where the OOM-kill counter lives.
    oom_file: Option<PathBuf>,
    v2: bool,
}

fn write(p: &Path, v: &str) -> bool {
    std::fs::write(p, v).is_ok()
}

/// The CPU limit (thousandths of a core) of the cgroup process `pid` is in,
/// read through `/proc/<pid>/cgroup` (v1 `cpu` controller, else v2); None
/// when it has none or the host offers no CPU controller.
pub fn cpu_limit_of(pid: u32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut files = vec![];
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if ctls.split(',').any(|c| c == "cpu") {
            for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
                files.push(
                    Path::new(ROOT)
                        .join(mount)
                        .join(rel)
                        .join("cpu.cfs_quota_us"),
                );
            }
        } else if ctls.is_empty() {
            files.push(Path::new(ROOT).join(rel).join("cpu.max"));
        }
    }
    files.iter().find_map(|f| {
        let q = std::fs::read_to_string(f).ok()?;
        q.split_whitespace()
            .next()?
            .parse::<i64>()
            .ok()
            .filter(|q| *q > 0)
            .map(|q| q / 100)
    })
}

impl Cgroup {
    /// Whether this host has a memory controller we can use.
    pub fn memory_available() -> bool {
        Path::new(ROOT)
            .join("memory/memory.limit_in_bytes")
            .exists()
            || std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    }

    /// Make the instance's cgroup(s) `parent/id` (`parent` relative to the
    /// hierarchies' roots) with its limits. None when the host offers no
    /// controller we may use.
    pub fn create(parent: &Path, id: &str, memory: i64, cpu_millis: i64) -> Option<Cgroup> {
        let v1_mem = Path::new(ROOT).join("memory");
        if v1_mem.join("memory.limit_in_bytes").exists() {
            let mut dirs = vec![];
            let mem = v1_mem.join(parent).join(id);
            let mut oom_file = None;
            if std::fs::create_dir_all(&mem).is_ok() {
                write(&mem.join("memory.limit_in_bytes"), &memory.to_string());
                // No swap beyond the limit, so the limit is the limit.
                write(
                    &mem.join("memory.memsw.limit_in_bytes"),
                    &memory.to_string(),
                );
                oom_file = Some(mem.join("memory.oom_control"));
                dirs.push(mem);
            }
            for ctl in ["cpu,cpuacct", "cpu"] {
                let base = Path::new(ROOT).join(ctl);
                if base.join("cpu.cfs_quota_us").exists() {
                    let cpu = base.join(parent).join(id);
                    if std::fs::create_dir_all(&cpu).is_ok() {
                        write(&cpu.join("cpu.cfs_period_us"), "100000");
                        write(
                            &cpu.join("cpu.cfs_quota_us"),
                            &(cpu_millis * 100).to_string(),
                        );
                        dirs.push(cpu);
                    }
                    break;
                }
            }
            // CPU accounting (the sampler's CPU use) where `cpuacct` is a
            // hierarchy of its own.
            let acct = Path::new(ROOT).join("cpuacct");
            if acct.join("cpuacct.usage").exists()
                && !dirs.iter().any(|d| d.join("cpuacct.usage").exists())
            {
                let d = acct.join(parent).join(id);
                if std::fs::create_dir_all(&d).is_ok() {
                    dirs.push(d);
                }
            }
            return (!dirs.is_empty()).then_some(Cgroup {
                dirs,
                oom_file,
                v2: false,
            });
        }
        let controllers =
            std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        // The controllers are enabled down every level of the parent.
        let mut level = PathBuf::from(ROOT);
        write(&level.join("cgroup.subtree_control"), "+memory +cpu");
        for c in parent.components() {
            level.push(c);
            std::fs::create_dir_all(&level).ok()?;
            write(&level.join("cgroup.subtree_control"), "+memory +cpu");
        }
        let dir = level.join(id);
        std::fs::create_dir_all(&dir).ok()?;
        write(&dir.join("memory.max"), &memory.to_string());
        write(&dir.join("memory.swap.max"), "0");
        write(
            &dir.join("cpu.max"),
            &format!("{} 100000", cpu_millis * 100),
        );
        Some(Cgroup {
            oom_file: Some(dir.join("memory.events")),
            dirs: vec![dir],
            v2: true,
        })
    }

    /// Re-open the cgroup of an instance made earlier (after a restart).
    pub fn open(dirs: Vec<PathBuf>) -> Cgroup {
        let v2 = dirs.first().is_some_and(|d| {
            d.join("memory.events").exists() && !d.join("memory.oom_control").exists()
        });
        let oom_file = dirs.iter().find_map(|d| {
            [d.join("memory.oom_control"), d.join("memory.events")]
                .into_iter()
                .find(|f| f.exists())
        });
        Cgroup { dirs, oom_file, v2 }
    }

    /// `cgroup.procs` files to write the instance's pid into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many times the kernel's OOM killer struck in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.oom_file
            .as_deref()
            .and_then(crate::host::oom_kill_count)
            .unwrap_or(0)
    }

    /// Set the CPU limit (`cpu_millis` thousandths of a core per 100 ms).
    pub fn set_cpu(&self, cpu_millis: i64) -> std::io::Result<()> {
        if cpu_millis <= 0 {
            return Ok(());
        }
        for d in &self.dirs {
            if d.join("cpu.cfs_quota_us").exists() {
                std::fs::write(d.join("cpu.cfs_quota_us"), (cpu_millis * 100).to_string())?;
            } else if d.join("cpu.max").exists() {
                std::fs::write(d.join("cpu.max"), format!("{} 100000", cpu_millis * 100))?;
            }
        }
        Ok(())
    }

    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// Remove the cgroup directories (they must be empty of processes; a
    /// process just killed may take a moment to leave, so this waits up to
    /// a tenth of a second for it).
    pub fn remove(&self) {
        for d in &self.dirs {
            for _ in 0..10 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound && d.exists() => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// What [`favor_dynmods`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum DynMods {
    /// The host has no cgroup v2 mount (the option exists only there).
    NoCgroup2,
    /// Every cgroup v2 mount has it already.
    Already,
    /// Remounted these with it.
    Set(Vec<PathBuf>),
}

/// Remount the host's cgroup v2 hierarchy with `favordynmods` (Linux ≥
/// 6.0), keeping every option it has.
///
/// Moving a process into a cgroup takes the kernel's threadgroup lock for
/// writing, which, unless this option is set, waits for an RCU grace period
/// whenever no migration happened in the last few milliseconds: 5–8 ms here
/// for the first write to `cgroup.procs`, paid by every instance start
/// (ours, and runc's). With it, the first write takes well under a
/// millisecond, and forks and exits on the host pay a little more (their
/// side of the lock stops being free). The option is global to the kernel,
/// so setting it on the (even controller-less) v2 mount of a hybrid host
/// helps the v1 hierarchies too. `shellwego agent --no-cgroup-favordynmods`
/// leaves the host alone.
pub fn favor_dynmods() -> anyhow::Result<DynMods> {
    use nix::mount::MsFlags;
    let v2: Vec<crate::host::Mount> = crate::host::mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup2")
        .collect();
    if v2.is_empty() {
        return Ok(DynMods::NoCgroup2);
    }
    let mut set = vec![];
    for m in v2 {
        if m.options.split(',').any(|o| o == "favordynmods") {
            continue;
        }
        // A remount replaces the mount's flags and the hierarchy's options
        // with what it is given: give back every one, plus ours.
        let mut flags = MsFlags::MS_REMOUNT;
        for o in m.mount_options.split(',') {
            flags |= match o {
                "ro" => MsFlags::MS_RDONLY,
                "nosuid" => MsFlags::MS_NOSUID,
                "nodev" => MsFlags::MS_NODEV,
                "noexec" => MsFlags::MS_NOEXEC,
                "noatime" => MsFlags::MS_NOATIME,
                "nodiratime" => MsFlags::MS_NODIRATIME,
                "relatime" => MsFlags::MS_RELATIME,
                "strictatime" => MsFlags::MS_STRICTATIME,
                _ => MsFlags::empty(),
            };
        }
        let mut data: Vec<&str> = m
            .options
            .split(',')
            .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
            .collect();
        data.push("favordynmods");
        let data = data.join(",");
        nix::mount::mount(
            None::<&str>,
            &m.point,
            None::<&str>,
            flags,
            Some(data.as_str()),
        )
        .map_err(|e| anyhow::anyhow!("cannot remount {} with {data}: {e}", m.point.display()))?;
        set.push(m.point);
    }
    Ok(if set.is_empty() {
        DynMods::Already
    } else {
        DynMods::Set(set)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes the host as the agent would (the option is what an agent sets
    /// at start anyway); needs root and a cgroup v2 mount.
    #[test]
    fn favordynmods_is_added_and_every_other_option_kept() {
        if !crate::host::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let before: Vec<crate::host::Mount> = crate::host::mounts()
            .into_iter()
            .filter(|m| m.fstype == "cgroup2")
            .collect();
        let outcome = favor_dynmods().unwrap();
        if before.is_empty() {
            assert_eq!(outcome, DynMods::NoCgroup2);
            return;
        }
        let after: Vec<crate::host::Mount> = crate::host::mounts()
            .into_iter()
            .filter(|m| m.fstype == "cgroup2")
            .collect();
        assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b.point, a.point);
            assert_eq!(
                b.mount_options, a.mount_options,
                "the mount's flags are kept"
            );
            let mut want: Vec<&str> = b.options.split(',').collect();
            if !want.contains(&"favordynmods") {
                want.push("favordynmods");
            }
            let mut got: Vec<&str> = a.options.split(',').collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "the hierarchy's options are kept");
        }
        assert_eq!(favor_dynmods().unwrap(), DynMods::Already);
    }
}
