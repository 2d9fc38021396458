//! What the microvm driver needs from the host, found once per process:
//! QEMU, a guest kernel and the modules its network card needs, a static
//! busybox, and an accelerator that really boots a guest.
//!
//! # Accelerator
//!
//! KVM when it works, TCG (software emulation) otherwise: [`super::MicrovmDriver::probe`]
//! boots a tiny guest (the same kernel, modules and `init`, running
//! `busybox echo`) with `-accel kvm -cpu host` and a 10 s timeout, and with
//! TCG (60 s) in parallel; KVM wins when its guest finished. Nested guests
//! often have a `/dev/kvm` on which a guest stalls (this development host:
//! no console output at all) or QEMU aborts (`-cpu host`: "failed to set
//! MSR"), hence a real boot rather than a look at `/dev/kvm`. Setting
//! `SHELLWEGO_MICROVM_ACCEL=kvm|tcg` forces one (only that one is probed).
//! The verdict is cached for the life of the process. `Running.extra`
//! records the accelerator used. The agent offers the driver by default
//! only with KVM; with TCG only when asked for (`--drivers …,microvm` or
//! `SHELLWEGO_MICROVM_ACCEL` set), since emulated guests are slow and the
//! scheduler prefers `microvm` over everything else.
//!
//! # Host requirements
//!
//! `qemu-system-x86_64` on `PATH` (Debian: `qemu-system-x86`), a kernel at
//! `/boot/vmlinuz-*-cloud-amd64` (Debian: `linux-image-cloud-amd64`; the
//! newest one; any `/boot/vmlinuz-*` when none is a cloud kernel; or
//! `SHELLWEGO_MICROVM_KERNEL=<path>`) with its `/lib/modules/<version>`
//! (uncompressed `.ko`), and a static busybox at `/usr/bin/busybox` or
//! `/bin/busybox` (Debian: `busybox-static`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::initramfs::write_initramfs;
use super::qemu::qemu_argv;
use super::{EXIT_MARK, MIN_GUEST_MIB};
use crate::driver::Launch;

pub(super) const MODULES: [&str; 2] = ["virtio_pci", "virtio_net"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
    pub(super) fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,tb-size=64", "-cpu", "max"],
        }
    }
}

/// What the host offers: found once per process.
#[derive(Debug, Clone)]
pub struct Host {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    /// Module files to load in the guest, in load order (name, path).
    pub modules: Vec<(String, PathBuf)>,
    pub busybox: PathBuf,
    pub accel: Accel,
}

pub(super) static PROBED: OnceLock<Result<Host, String>> = OnceLock::new();

/// True when `path` is an ELF executable without an interpreter (static).
pub(super) fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = fs::read(path) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let o = phoff as usize + i * phentsize as usize;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3)
    })
}

/// The newest `/boot/vmlinuz-*-cloud-amd64` (else any `vmlinuz-*`), and its version.
pub(super) fn find_kernel() -> Result<(PathBuf, String), String> {
    if let Some(k) = std::env::var_os("SHELLWEGO_MICROVM_KERNEL") {
        let k = PathBuf::from(k);
        let ver = k
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "SHELLWEGO_MICROVM_KERNEL={}: the name must be vmlinuz-<version>",
                    k.display()
                )
            })?;
        return Ok((k, ver));
    }
    let mut found: Vec<String> = fs::read_dir("/boot")
        .map_err(|e| format!("cannot read /boot: {e}"))?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .filter(|v| {
            Path::new("/lib/modules")
                .join(v)
                .join("modules.dep")
                .is_file()
        })
        .collect();
    found.sort_by_key(|a| version_key(a));
    let pick = found
        .iter()
        .rev()
        .find(|v| v.ends_with("-cloud-amd64"))
        .or(found.last())
        .cloned()
        .ok_or("no kernel: /boot/vmlinuz-* with /lib/modules/<version> (apt-get install linux-image-cloud-amd64)")?;
    Ok((Path::new("/boot").join(format!("vmlinuz-{pick}")), pick))
}

pub(super) fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The guest's modules (with dependencies, in load order) for `MODULES`,
/// from `modules.dep`; built-in ones are not needed.
pub(super) fn resolve_modules(version: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let base = Path::new("/lib/modules").join(version);
    let dep = fs::read_to_string(base.join("modules.dep"))
        .map_err(|e| format!("cannot read {}: {e}", base.join("modules.dep").display()))?;
    let builtin = fs::read_to_string(base.join("modules.builtin")).unwrap_or_default();
    let name_of = |p: &str| {
        Path::new(p)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split(".ko").next())
            .unwrap_or_default()
            .replace('-', "_")
    };
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        if let Some((m, d)) = line.split_once(':') {
            deps.insert(
                name_of(m),
                (m.to_string(), d.split_whitespace().map(name_of).collect()),
            );
        }
    }
    let is_builtin = |n: &str| builtin.lines().any(|l| name_of(l) == n);
    pub(super) fn visit(
        n: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), String> {
        if out.iter().any(|o| o == n) || depth > 32 {
            return Ok(());
        }
        let (_, ds) = deps
            .get(n)
            .ok_or_else(|| format!("module {n} is not in modules.dep"))?;
        for d in ds {
            visit(d, deps, out, depth + 1)?;
        }
        out.push(n.to_string());
        Ok(())
    }
    let mut order = vec![];
    for m in MODULES {
        if is_builtin(m) {
            continue;
        }
        visit(m, &deps, &mut order, 0)?;
    }
    order
        .into_iter()
        .map(|n| {
            let rel = &deps[&n].0;
            if !rel.ends_with(".ko") {
                return Err(format!(
                    "{rel}: compressed modules are not supported (busybox insmod)"
                ));
            }
            Ok((n, base.join(rel)))
        })
        .collect()
}

/// Boot a tiny guest with `accel`: Ok when its `init` ran `busybox echo`
/// and powered off within `timeout`.
pub(super) fn probe_boot(host: &Host, accel: Accel, timeout: Duration) -> Result<Duration, String> {
    let dir = std::env::temp_dir().join(format!(
        "shellwego-microvm-probe-{}-{}",
        std::process::id(),
        accel.name()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let res = (|| {
        let l = Launch {
            instance_id: "probe".into(),
            dir: dir.clone(),
            root: dir.clone(),
            is_rootfs: true,
            argv: vec![
                "/.shellwego/busybox".into(),
                "echo".into(),
                "shellwego-probe-ok".into(),
            ],
            workdir: "/".into(),
            env: BTreeMap::new(),
            port: 0,
            memory: 0,
            cpu_millis: 1000,
            stdout: dir.join("console.log"),
            stderr: dir.join("console.log"),
            allowed_egress: None,
        };
        let initrd = dir.join("initrd.cpio");
        write_initramfs(&initrd, host, None, &l).map_err(|e| format!("{e:#}"))?;
        let argv = qemu_argv(
            host,
            accel,
            &initrd,
            MIN_GUEST_MIB,
            1,
            &l.stdout,
            None,
            None,
        );
        let t = Instant::now();
        // The probe guest dies with the thread waiting for it, even when the
        // agent is killed mid-probe (a stalled KVM guest would spin on):
        // util-linux's setpriv sets the parent-death signal and execs QEMU.
        let mut cmd = match crate::host::find_binary("setpriv") {
            Some(setpriv) => {
                let mut c = Proc::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&argv[0]);
                c
            }
            None => Proc::new(&argv[0]),
        };
        let mut child = cmd
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("qemu.err")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if t.elapsed() < timeout => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let console = fs::read_to_string(&l.stdout).unwrap_or_default();
        let err = fs::read_to_string(dir.join("qemu.err")).unwrap_or_default();
        let tail = |s: &str| s.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        if console.contains("shellwego-probe-ok") && console.contains(&format!("{EXIT_MARK}0")) {
            return Ok(t.elapsed());
        }
        Err(match status {
            None => format!(
                "the guest did not finish booting within {timeout:?} (console: {:?})",
                tail(&console)
            ),
            Some(s) => format!(
                "qemu ended ({s}) without the guest's answer: {} {}",
                tail(&err),
                tail(&console)
            ),
        })
    })();
    let _ = fs::remove_dir_all(&dir);
    res
}

pub(super) fn probe_host() -> Result<Host, String> {
    let qemu = crate::host::find_binary("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")?;
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| is_static_elf(p))
        .ok_or("no static busybox at /usr/bin/busybox or /bin/busybox (apt-get install busybox-static)")?;
    let (kernel, version) = find_kernel()?;
    if File::open(&kernel).is_err() {
        return Err(format!("cannot read the kernel {}", kernel.display()));
    }
    let modules = resolve_modules(&version)?;
    let mut host = Host {
        qemu,
        kernel,
        modules,
        busybox,
        accel: Accel::Tcg,
    };
    let forced = match std::env::var("SHELLWEGO_MICROVM_ACCEL").ok().as_deref() {
        None | Some("") => None,
        Some("kvm") => Some(Accel::Kvm),
        Some("tcg") => Some(Accel::Tcg),
        Some(other) => return Err(format!("SHELLWEGO_MICROVM_ACCEL={other}: use kvm or tcg")),
    };
    let kvm_usable = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let want_kvm = forced.map_or(kvm_usable, |a| a == Accel::Kvm);
    let want_tcg = forced.is_none_or(|a| a == Accel::Tcg);
    let (kvm, tcg) = std::thread::scope(|s| {
        let kvm = want_kvm.then(|| {
            let h = &host;
            let t = if forced.is_some() { 30 } else { 10 };
            s.spawn(move || probe_boot(h, Accel::Kvm, Duration::from_secs(t)))
        });
        let tcg = want_tcg.then(|| {
            let h = &host;
            s.spawn(move || probe_boot(h, Accel::Tcg, Duration::from_secs(60)))
        });
        let join = |j: Option<std::thread::ScopedJoinHandle<'_, Result<Duration, String>>>| {
            j.map(|j| {
                j.join()
                    .unwrap_or_else(|_| Err("the probe panicked".into()))
            })
        };
        (join(kvm), join(tcg))
    });
    match (&kvm, &tcg) {
        (Some(Ok(t)), _) => {
            tracing::info!(boot = ?t, "microvm: KVM works");
            host.accel = Accel::Kvm;
            Ok(host)
        }
        (_, Some(Ok(t))) => {
            match &kvm {
                Some(Err(why)) => {
                    tracing::info!(boot = ?t, %why, "microvm: KVM does not work here; using TCG (software emulation)")
                }
                _ => {
                    tracing::info!(boot = ?t, kvm = kvm_usable, "microvm: using TCG (software emulation)")
                }
            }
            host.accel = Accel::Tcg;
            Ok(host)
        }
        _ => {
            let say = |r: &Option<Result<Duration, String>>| match r {
                Some(Err(e)) => e.clone(),
                Some(Ok(_)) => "ok".into(),
                None => "not tried".into(),
            };
            Err(format!(
                "no guest boots: kvm: {}; tcg: {}",
                say(&kvm),
                say(&tcg)
            ))
        }
    }
}
