//! The `microvm` driver: each instance runs in its own QEMU virtual machine
//! with its own Linux kernel. Its root filesystem is the guest's initramfs:
//! no disk image, no virtio-blk, no 9p.
//!
//! # What a start does
//!
//! 1. Writes `<launch.dir>/microvm/initrd.cpio`, an **uncompressed** newc
//!    cpio archive (the kernel unpacks it into its root tmpfs) holding the
//!    instance's root filesystem (`launch.root`, copied as is: files,
//!    directories, symlinks, device nodes; hard links become copies) plus
//!    `/.shellwego/`: the host's static busybox, the few kernel modules the
//!    guest needs for its network card (`virtio_pci`, `virtio_net` and
//!    their dependencies, resolved from the kernel's `modules.dep`; none
//!    when built in), `env` (the instance's environment as `export`s) and
//!    `init`, a generated busybox shell script run as pid 1
//!    (`rdinit=/.shellwego/init`, so an `/init` in the image is left
//!    alone). `/etc/resolv.conf` is replaced by QEMU's DNS (`10.0.2.3`).
//! 2. Starts `qemu-system-x86_64` through the [`ProcessDriver`]: its own
//!    process group (the VM outlives an agent restart), its own cgroup
//!    (`shellwego/<owner tag>/microvm/<instance id>`, so an agent finds the
//!    QEMU processes an earlier run left: [`crate::owner`]) with
//!    a memory limit of the guest's RAM plus QEMU's own overhead
//!    ([`QEMU_OVERHEAD_MIB`]); `Running.pid` is QEMU's pid, re-adopted by
//!    pid and start time like any process.
//!
//!    `qemu-system-x86_64 -nodefaults -no-reboot -display none -monitor none
//!    -accel kvm -cpu host | -accel tcg,tb-size=64 -cpu max
//!    -m <MiB> -smp <n> -kernel <vmlinuz> -initrd initrd.cpio
//!    -append "console=ttyS0 quiet panic=-1 rdinit=/.shellwego/init"
//!    -nic user,model=virtio-net-pci,hostfwd=tcp::<port>-:<port>
//!    -chardev file,append=on,path=<launch.log> -serial (ttyS0)
//!    -chardev pipe,path=microvm/ctl -serial (ttyS1)`
//!
//! 3. In the guest, `init` mounts `/proc`, `/sys`, `/dev` (devtmpfs),
//!    `/dev/pts`, `/dev/shm`, loads the modules, sets up `lo` and `eth0`
//!    for QEMU's user-mode network (`10.0.2.15/24`, gateway `10.0.2.2`:
//!    egress is NATed by QEMU, nothing to set up on the host), sources the
//!    environment (`PORT` included), `cd`s to `launch.workdir` and runs
//!    `launch.argv` (argv\[0\] looked up in `PATH` inside the image, never
//!    a busybox applet) as its child, stdin from `/dev/null`, stdout and
//!    stderr on the serial console, which QEMU appends to `launch.log`
//!    (with the guest kernel's errors, e.g. its OOM killer).
//!
//! # Networking
//!
//! QEMU forwards host TCP port `launch.port` (all host addresses) to the
//! same port in the guest, where the app listens on `$PORT` (= that port).
//! So the instance is reached exactly like a `process` instance: at the
//! node's address and `launch.port`; `Running.extra` has no `ip` and the
//! reconciler's health checks go to `127.0.0.1:port`. **Caveat**: QEMU
//! accepts connections on the forwarded port as soon as it starts, before
//! the guest listens (it then closes them), so a plain TCP health check
//! passes too early; an HTTP check (`path`) is accurate. A health check on
//! another port than `$PORT` is not forwarded.
//!
//! # Stopping, exit status, OOM
//!
//! `Terminate` writes `term` to the VM's second serial port (a FIFO pair
//! `microvm/ctl.in|out`); `init` sends SIGTERM to the app (which is not pid
//! 1, so the default action applies). Before the app has started, or when
//! the FIFO cannot be written, QEMU itself gets SIGTERM. `Kill` is SIGKILL
//! to QEMU's process group. When the app exits, `init` prints
//! `shellwego-microvm: app exited with code <n>` and powers the guest off,
//! so QEMU exits; `poll` reads that line from the log (written after the
//! offset saved at start) for the exit code (codes above 128 are reported
//! as the signal `n - 128`, as shells do). An OOM kill is the guest
//! kernel's (`Out of memory: Killed process` in the console log) or the
//! host cgroup's (QEMU itself killed). `Cleanup` is the process driver's
//! (cgroup) plus removing `microvm/`.
//!
//! # Accelerator
//!
//! KVM when it works, TCG (software emulation) otherwise: [`MicrovmDriver::probe`]
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
//!
//! # Measured (this development host: 2 cores, nested, TCG)
//!
//! Start to the first HTTP answer (busybox `httpd`, a 4.4 MB initramfs,
//! 133 MiB guest): 5.3 s under TCG (`serves_http_over_the_forwarded_port_and_stops_on_terminate`
//! prints it; 4.7–7 s by hand depending on the host's load). The probe
//! guest boots and powers off in 2–3 s under TCG. `Terminate` to QEMU's
//! exit: 50 ms. KVM could not be measured here (`-cpu host` makes QEMU
//! abort; the default CPU model stalls with no console output). QEMU's RSS
//! for a 128 MiB TCG guest: about 230 MB.
//!
//! # Limits
//!
//! * Root filesystems only (`launch.is_rootfs`); an app directory (which
//!   relies on the host's userland) is refused.
//! * The whole root filesystem is in the guest's RAM: the guest gets
//!   `max(memory, 128 MiB)` **plus the size of the initramfs**, so the app
//!   still has about what it asked for; the kernel needs about 128 MiB to
//!   boot (64 MiB fails silently). Big images cost RAM and start time (the
//!   archive is rewritten on each start; it is not cached).
//! * The guest's root is a fresh tmpfs on every start: nothing written
//!   survives a restart (like a container's upper layer).
//! * File owners and modes are kept; the image's hard links become copies;
//!   files larger than 4 GiB cannot be put in the archive.
//! * x86-64 guests only; one forwarded TCP port; no UDP in.
//! * The probe costs up to 10 s at agent start where KVM stalls (the first
//!   call to [`MicrovmDriver::probe`]). Its guests run under util-linux's
//!   `setpriv --pdeathsig KILL`, so an agent killed mid-probe leaves none
//!   behind (a stalled KVM guest would otherwise spin on).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use crate::driver::{Command, Driver, Exit, Launch, Reply, Running};
use crate::owner::Owner;
use crate::process::ProcessDriver;

/// MiB added to the guest's RAM for the QEMU process's cgroup limit (its
/// own code, the TCG translation cache of 64 MiB, device buffers).
pub const QEMU_OVERHEAD_MIB: i64 = 192;
/// The least RAM the guest kernel boots with.
const MIN_GUEST_MIB: i64 = 128;
const EXIT_MARK: &str = "shellwego-microvm: app exited with code ";
const START_MARK: &str = "shellwego-microvm: app starting";
const MODULES: [&str; 2] = ["virtio_pci", "virtio_net"];

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
    fn qemu_args(self) -> [&'static str; 4] {
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

static PROBED: OnceLock<Result<Host, String>> = OnceLock::new();

/// Runs instances in QEMU virtual machines; see the module documentation.
pub struct MicrovmDriver {
    host: Host,
    process: ProcessDriver,
}

impl MicrovmDriver {
    /// The driver when QEMU really boots a guest here (probed once per
    /// process), or why not.
    pub fn probe() -> Result<MicrovmDriver, String> {
        PROBED
            .get_or_init(probe_host)
            .clone()
            .map(|host| MicrovmDriver {
                host,
                process: ProcessDriver::new(),
            })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The driver, making the VMs of `owner`: QEMU runs in the cgroup
    /// `shellwego/<owner tag>/microvm/<instance id>` (see [`crate::owner`]).
    pub fn owned_by(mut self, owner: Owner) -> MicrovmDriver {
        self.process = ProcessDriver::new().owned_by(owner, "microvm");
        self
    }

    fn start(&self, l: &Launch) -> anyhow::Result<Running> {
        if !l.is_rootfs {
            bail!("the microvm driver runs root filesystems (images) only, not app directories");
        }
        let vm = l.dir.join("microvm");
        let _ = fs::remove_dir_all(&vm);
        fs::create_dir_all(&vm).with_context(|| format!("cannot create {}", vm.display()))?;
        let initrd = vm.join("initrd.cpio");
        let size = write_initramfs(&initrd, &self.host, Some(&l.root), l)
            .with_context(|| format!("cannot write {}", initrd.display()))?;
        for f in ["ctl.in", "ctl.out"] {
            nix::unistd::mkfifo(&vm.join(f), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .with_context(|| format!("cannot make the fifo {}", vm.join(f).display()))?;
        }
        let mib = l.memory.max(0) / (1024 * 1024);
        let guest_mib = mib.max(MIN_GUEST_MIB)
            + i64::try_from(size.div_ceil(1024 * 1024)).unwrap_or(i64::MAX / 4);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as i64);
        let smp = ((l.cpu_millis + 999) / 1000).clamp(1, cpus);
        let log_offset = fs::metadata(&l.log).map(|m| m.len()).unwrap_or(0);
        let argv = qemu_argv(
            &self.host,
            self.host.accel,
            &initrd,
            guest_mib,
            smp,
            &l.log,
            Some(&vm.join("ctl")),
            Some(l.port),
        );
        let env = BTreeMap::from([(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )]);
        let host_launch = Launch {
            instance_id: l.instance_id.clone(),
            dir: l.dir.clone(),
            root: vm.clone(),
            is_rootfs: false,
            argv,
            workdir: "/".into(),
            env,
            port: l.port,
            memory: (guest_mib + QEMU_OVERHEAD_MIB) * 1024 * 1024,
            cpu_millis: l.cpu_millis,
            log: l.log.clone(),
        };
        let mut r = match self.process.run(Command::Start(&host_launch))? {
            Reply::Started(r) => r,
            Reply::Done => bail!("qemu was not started"),
        };
        r.driver = "microvm".into();
        r.extra
            .insert("accel".into(), self.host.accel.name().into());
        r.extra.insert("vm_dir".into(), vm.display().to_string());
        r.extra.insert("log".into(), l.log.display().to_string());
        r.extra.insert("log_offset".into(), log_offset.to_string());
        r.extra
            .insert("guest_memory_mib".into(), guest_mib.to_string());
        tracing::info!(instance_id = %l.instance_id, pid = r.pid, accel = self.host.accel.name(), guest_mib, initramfs_bytes = size, "microvm started");
        Ok(r)
    }

    /// Up to `max` bytes of the console output written since the instance
    /// started: its beginning (`from_end` false) or its end.
    fn console(r: &Running, max: u64, from_end: bool) -> String {
        use std::io::Seek;
        let Some(log) = r.extra.get("log") else {
            return String::new();
        };
        let offset: u64 = r
            .extra
            .get("log_offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let mut buf = vec![];
        if let Ok(mut f) = File::open(log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let at = if from_end {
                len.saturating_sub(max).max(offset)
            } else {
                offset
            };
            if f.seek(io::SeekFrom::Start(at)).is_ok() {
                let _ = f.take(max).read_to_end(&mut buf);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn terminate(&self, r: &Running) {
        let sent = r
            .extra
            .get("vm_dir")
            .filter(|_| Self::console(r, 256 << 10, false).contains(START_MARK))
            .and_then(|d| {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_NONBLOCK)
                    .open(Path::new(d).join("ctl.in"))
                    .ok()
            })
            .is_some_and(|mut f| f.write_all(b"term\n").is_ok());
        if !sent {
            signal(r, Signal::SIGTERM);
        }
    }
}

fn signal(r: &Running, s: Signal) {
    crate::host::signal_group(r.pid, s);
}

/// How the guest's app ended, from the console output.
fn exit_from_console(console: &str, qemu: Exit) -> Exit {
    let guest_oom = console.contains("Out of memory: Killed process")
        || console.contains("Memory cgroup out of memory: Killed process");
    let code = console.rfind(EXIT_MARK).and_then(|i| {
        console[i + EXIT_MARK.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<i32>().ok())
    });
    match code {
        Some(c) if c > 128 => Exit {
            code: None,
            signal: Some(c - 128),
            oom_killed: qemu.oom_killed || guest_oom,
        },
        Some(c) => Exit {
            code: Some(c),
            signal: None,
            oom_killed: qemu.oom_killed || guest_oom,
        },
        // QEMU ended without the app's status: killed, crashed, or the
        // guest panicked (a reboot, which -no-reboot turns into exit 0).
        None => Exit {
            code: qemu.code.filter(|c| *c != 0),
            signal: qemu.signal,
            oom_killed: qemu.oom_killed || guest_oom,
        },
    }
}

impl Driver for MicrovmDriver {
    fn name(&self) -> &'static str {
        "microvm"
    }

    /// QEMU runs in the process driver's cgroup: the guest boots with the
    /// boot allowance and runs at its limit once up.
    fn settle(&self, r: &Running, cpu_millis: i64) -> anyhow::Result<()> {
        self.process.settle(r, cpu_millis)
    }

    fn run(&self, cmd: Command<'_>) -> anyhow::Result<Reply> {
        match cmd {
            Command::Start(l) => Ok(Reply::Started(self.start(l)?)),
            Command::Terminate(r) => {
                self.terminate(r);
                Ok(Reply::Done)
            }
            Command::Kill(r) => {
                signal(r, Signal::SIGKILL);
                Ok(Reply::Done)
            }
            Command::Cleanup {
                instance_id,
                handle,
            } => {
                self.process.run(Command::Cleanup {
                    instance_id,
                    handle,
                })?;
                if let Some(d) = handle.and_then(|r| r.extra.get("vm_dir")) {
                    let _ = fs::remove_dir_all(d);
                }
                Ok(Reply::Done)
            }
        }
    }

    fn poll(&self, r: &Running) -> Option<Exit> {
        let qemu = self.process.poll(r)?;
        Some(exit_from_console(&Self::console(r, 256 << 10, true), qemu))
    }
}

/// The QEMU command line (see the module documentation).
#[allow(clippy::too_many_arguments)]
fn qemu_argv(
    host: &Host,
    accel: Accel,
    initrd: &Path,
    guest_mib: i64,
    smp: i64,
    console: &Path,
    ctl: Option<&Path>,
    port: Option<u16>,
) -> Vec<String> {
    let mut a: Vec<String> = vec![host.qemu.display().to_string()];
    let push = |a: &mut Vec<String>, xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(
        &mut a,
        &[
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ],
    );
    push(&mut a, &accel.qemu_args());
    a.extend([
        "-m".into(),
        guest_mib.to_string(),
        "-smp".into(),
        smp.to_string(),
        "-kernel".into(),
        host.kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        "console=ttyS0 quiet panic=-1 rdinit=/.shellwego/init".into(),
        "-nic".into(),
        match port {
            Some(p) => format!("user,model=virtio-net-pci,hostfwd=tcp::{p}-:{p}"),
            None => "user,model=virtio-net-pci".into(),
        },
        "-chardev".into(),
        format!(
            "file,id=con,append=on,path={}",
            qemu_opt(&console.display().to_string())
        ),
        "-serial".into(),
        "chardev:con".into(),
    ]);
    if let Some(ctl) = ctl {
        a.extend([
            "-chardev".into(),
            format!("pipe,id=ctl,path={}", qemu_opt(&ctl.display().to_string())),
            "-serial".into(),
            "chardev:ctl".into(),
        ]);
    }
    a
}

/// A value in a QEMU option list: commas are doubled.
fn qemu_opt(s: &str) -> String {
    s.replace(',', ",,")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn valid_env_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// pid 1 of the guest (see the module documentation).
fn init_script(host: &Host, l: &Launch) -> String {
    let mods: Vec<&str> = host.modules.iter().map(|(n, _)| n.as_str()).collect();
    let argv: Vec<String> = l.argv.iter().map(|a| sh_quote(a)).collect();
    let workdir = if l.workdir.is_empty() {
        "/"
    } else {
        l.workdir.as_str()
    };
    let hostname: String = l
        .instance_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(63)
        .collect();
    format!(
        r#"#!/.shellwego/busybox sh
# pid 1 of a ShellWeGo microvm guest (generated by the agent).
B=/.shellwego/busybox
export PATH={default_path}
$B mkdir -p /proc /sys /dev /tmp /run
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts devpts /dev/pts
$B mount -t tmpfs tmpfs /dev/shm
$B stty -F /dev/console -onlcr 2>/dev/null
for m in {mods}; do $B insmod /.shellwego/modules/$m.ko || echo "shellwego-microvm: cannot load $m"; done
$B hostname {hostname}
$B ip link set lo up
$B ip link set eth0 up
$B ip addr add 10.0.2.15/24 dev eth0
$B ip route add default via 10.0.2.2
. /.shellwego/env
done_with() {{ echo "{EXIT_MARK}$1"; $B sync; $B poweroff -f; }}
set -- {argv}
case "$1" in
*/*) ;;
*) IFS=: ; for d in $PATH; do if [ -f "$d/$1" ] && [ -x "$d/$1" ]; then p="$d/$1"; break; fi; done; unset IFS
   [ -n "$p" ] || {{ echo "shellwego-microvm: $1: not found in PATH ($PATH)"; done_with 127; }}
   shift; set -- "$p" "$@" ;;
esac
cd {workdir} || done_with 126
echo "{START_MARK}"
"$@" </dev/null &
app=$!
( $B stty -F /dev/ttyS1 -echo 2>/dev/null
  while read -r c </dev/ttyS1; do case "$c" in term) kill -TERM $app ;; kill) kill -KILL $app ;; esac; done ) &
wait $app
done_with $?
"#,
        mods = mods.join(" "),
        argv = argv.join(" "),
        workdir = sh_quote(workdir),
        default_path = crate::host::DEFAULT_PATH,
    )
}

fn env_file(l: &Launch) -> String {
    let mut s = String::new();
    for (k, v) in &l.env {
        if valid_env_name(k) {
            s.push_str(&format!("export {k}={}\n", sh_quote(v)));
        } else {
            tracing::warn!(instance_id = %l.instance_id, name = %k, "not a shell variable name: left out of the microvm's environment");
        }
    }
    s
}

/// A newc ("070701") cpio archive, written as it goes.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: u32,
        size: u64,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::other(format!("{name}: larger than 4 GiB")))?;
        self.ino += 1;
        let h = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            uid,
            gid,
            1,
            mtime,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn bytes(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.header(name, S_IFREG | mode, 0, 0, 0, data.len() as u64, (0, 0))?;
        self.put(data)?;
        self.pad()
    }

    fn dir(&mut self, name: &str) -> io::Result<()> {
        self.header(name, S_IFDIR | 0o755, 0, 0, 0, 0, (0, 0))
    }

    fn file(&mut self, name: &str, path: &Path, mode: u32) -> io::Result<()> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        self.header(name, S_IFREG | mode, 0, 0, 0, len, (0, 0))?;
        let n = io::copy(&mut (&mut f).take(len), &mut self.out)?;
        self.written += n;
        if n != len {
            return Err(io::Error::other(format!(
                "{}: changed while read",
                path.display()
            )));
        }
        self.pad()
    }

    /// `dir`'s contents (recursively) under the archive name `prefix`.
    fn tree(&mut self, dir: &Path, prefix: &str, skip: &[&str]) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let fname = e.file_name();
            let Some(fname) = fname.to_str() else {
                tracing::warn!(path = %e.path().display(), "a file name that is not UTF-8: left out of the microvm");
                continue;
            };
            let name = if prefix.is_empty() {
                fname.to_string()
            } else {
                format!("{prefix}/{fname}")
            };
            if skip.contains(&name.as_str()) {
                continue;
            }
            let m = e.path().symlink_metadata()?;
            let ft = m.file_type();
            let mtime = u32::try_from(m.mtime().max(0)).unwrap_or(0);
            if ft.is_dir() {
                self.header(&name, m.mode(), m.uid(), m.gid(), mtime, 0, (0, 0))?;
                self.tree(&e.path(), &name, skip)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(e.path())?;
                let t = target.as_os_str().as_encoded_bytes();
                self.header(
                    &name,
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    mtime,
                    t.len() as u64,
                    (0, 0),
                )?;
                self.put(t)?;
                self.pad()?;
            } else if ft.is_file() {
                let mut f = File::open(e.path())?;
                let len = m.len();
                self.header(&name, m.mode(), m.uid(), m.gid(), mtime, len, (0, 0))?;
                let n = io::copy(&mut (&mut f).take(len), &mut self.out)?;
                self.written += n;
                if n != len {
                    return Err(io::Error::other(format!(
                        "{}: changed while read",
                        e.path().display()
                    )));
                }
                self.pad()?;
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                let rdev = m.rdev();
                let dev = (
                    nix::sys::stat::major(rdev) as u32,
                    nix::sys::stat::minor(rdev) as u32,
                );
                self.header(&name, m.mode(), m.uid(), m.gid(), mtime, 0, dev)?;
            }
            // Sockets are left out.
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<u64> {
        self.header("TRAILER!!!", 0, 0, 0, 0, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.written)
    }
}

/// The guest's initramfs: `root` (if any) plus `/.shellwego`. Returns its size.
fn write_initramfs(
    out: &Path,
    host: &Host,
    root: Option<&Path>,
    l: &Launch,
) -> anyhow::Result<u64> {
    let f = File::create(out)?;
    let mut c = Cpio::new(BufWriter::with_capacity(1 << 20, f));
    let skip = [".shellwego", "etc/resolv.conf"];
    if let Some(root) = root {
        c.tree(root, "", &skip)
            .with_context(|| format!("cannot read the root filesystem {}", root.display()))?;
    }
    for d in ["dev", "proc", "sys", "tmp", "run", "etc"] {
        if root.is_none_or(|r| r.join(d).symlink_metadata().is_err()) {
            c.dir(d)?;
        }
    }
    c.bytes("etc/resolv.conf", 0o644, b"nameserver 10.0.2.3\n")?;
    c.dir(".shellwego")?;
    c.dir(".shellwego/modules")?;
    c.file(".shellwego/busybox", &host.busybox, 0o755)?;
    for (name, path) in &host.modules {
        c.file(&format!(".shellwego/modules/{name}.ko"), path, 0o644)?;
    }
    c.bytes(".shellwego/env", 0o644, env_file(l).as_bytes())?;
    c.bytes(".shellwego/init", 0o755, init_script(host, l).as_bytes())?;
    Ok(c.finish()?)
}

/// True when `path` is an ELF executable without an interpreter (static).
fn is_static_elf(path: &Path) -> bool {
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
fn find_kernel() -> Result<(PathBuf, String), String> {
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

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The guest's modules (with dependencies, in load order) for `MODULES`,
/// from `modules.dep`; built-in ones are not needed.
fn resolve_modules(version: &str) -> Result<Vec<(String, PathBuf)>, String> {
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
    fn visit(
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
fn probe_boot(host: &Host, accel: Accel, timeout: Duration) -> Result<Duration, String> {
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
            log: dir.join("console.log"),
        };
        let initrd = dir.join("initrd.cpio");
        write_initramfs(&initrd, host, None, &l).map_err(|e| format!("{e:#}"))?;
        let argv = qemu_argv(host, accel, &initrd, MIN_GUEST_MIB, 1, &l.log, None, None);
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
        let console = fs::read_to_string(&l.log).unwrap_or_default();
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

fn probe_host() -> Result<Host, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_from_the_console() {
        let q = Exit {
            code: Some(0),
            signal: None,
            oom_killed: false,
        };
        let e = exit_from_console(
            "x\r\nshellwego-microvm: app exited with code 3\r\n",
            q.clone(),
        );
        assert_eq!(e.code, Some(3));
        let e = exit_from_console("shellwego-microvm: app exited with code 143\n", q.clone());
        assert_eq!((e.code, e.signal), (None, Some(15)));
        let e = exit_from_console(
            "[ 1.2] Out of memory: Killed process 55 (x)\nshellwego-microvm: app exited with code 137\n",
            q.clone(),
        );
        assert!(e.oom_killed);
        let e = exit_from_console("", q);
        assert_eq!((e.code, e.signal), (None, None));
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
        assert!(valid_env_name("PORT") && !valid_env_name("1X") && !valid_env_name("A-B"));
        assert_eq!(qemu_opt("/a,b"), "/a,,b");
    }
}
