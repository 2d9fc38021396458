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
//!    -append "console=ttyS0 quiet panic=-1 no_timer_check rdinit=/.shellwego/init"
//!    -nic user,model=virtio-net-pci,hostfwd=tcp::<port>-:<port>
//!    -chardev file,append=on,path=<launch.stdout> -serial (ttyS0)
//!    -chardev pipe,path=microvm/ctl -serial (ttyS1)
//!    -chardev pipe,path=microvm/exec -serial (ttyS2)`
//!
//! 3. In the guest, `init` mounts `/proc`, `/sys`, `/dev` (devtmpfs),
//!    `/dev/pts`, `/dev/shm`, loads the modules, sets up `lo` and `eth0`
//!    for QEMU's user-mode network (`10.0.2.15/24`, gateway `10.0.2.2`:
//!    egress is NATed by QEMU, nothing to set up on the host), sources the
//!    environment (`PORT` included), `cd`s to `launch.workdir`, starts the
//!    guest daemon `sw-guestd` on ttyS2 (commands for `exec`: [`guest`]) and runs
//!    `launch.argv` (argv\[0\] looked up in `PATH` inside the image, never
//!    a busybox applet) as its child, stdin from `/dev/null`, stdout and
//!    stderr on the serial console, which QEMU appends to `launch.stdout`
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
//! With an egress policy (`Launch::allowed_egress`), QEMU (whose own
//! sockets carry the guest's connections) runs under `nsenter` in a
//! network namespace of the VM's own, made like a container's
//! ([`crate::hostnet`]: a /31 on a veth pair, the policy as nftables
//! rules there, its port published on the node's addresses); the forward
//! then answers at that namespace's address (`Running.extra["ip"]`).
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
//! # Accelerator and host requirements
//!
//! See `host.rs`: KVM when a guest really boots with it, TCG otherwise;
//! QEMU, a kernel with its modules and a static busybox.
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
//! * Commands (`exec`, sessions) go through one serial line per VM: under
//!   TCG it carries a few MB/s, shared by the VM's commands; at most 32
//!   run at once in one VM. A VM started before this channel existed must
//!   be restarted before commands run in it.
//! * The probe costs up to 10 s at agent start where KVM stalls (the first
//!   call to [`MicrovmDriver::probe`]). Its guests run under util-linux's
//!   `setpriv --pdeathsig KILL`, so an agent killed mid-probe leaves none
//!   behind (a stalled KVM guest would otherwise spin on).

pub mod guest;
mod host;
mod initramfs;
mod qemu;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use crate::driver::{Command, Driver, Exit, Launch, Reply, Running};
use crate::owner::Owner;
use crate::process::ProcessDriver;
use host::{probe_host, PROBED};
pub use host::{Accel, Host};
use initramfs::write_initramfs;
use qemu::qemu_argv;

/// MiB added to the guest's RAM for the QEMU process's cgroup limit (its
/// own code, the TCG translation cache of 64 MiB, device buffers).
pub const QEMU_OVERHEAD_MIB: i64 = 192;
/// The least RAM the guest kernel boots with.
const MIN_GUEST_MIB: i64 = 128;
const EXIT_MARK: &str = "shellwego-microvm: app exited with code ";
const START_MARK: &str = "shellwego-microvm: app starting";

/// Runs instances in QEMU virtual machines; see the module documentation.
pub struct MicrovmDriver {
    host: Host,
    process: ProcessDriver,
    owner: Owner,
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
                owner: Owner::default(),
            })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The driver, making the VMs of `owner`: QEMU runs in the cgroup
    /// `shellwego/<owner tag>/microvm/<instance id>` (see [`crate::owner`]).
    pub fn owned_by(mut self, owner: Owner) -> MicrovmDriver {
        self.process = ProcessDriver::new().owned_by(owner.clone(), "microvm");
        self.owner = owner;
        self
    }

    /// The network helpers for a VM with an egress policy, or why there
    /// are none.
    fn hostnet(&self) -> anyhow::Result<(crate::hostnet::HostNet, std::path::PathBuf)> {
        use crate::host::find_binary;
        let ip = find_binary("ip").context("`ip` not found (install iproute2)")?;
        let nsenter = find_binary("nsenter").context("`nsenter` not found (install util-linux)")?;
        Ok((
            crate::hostnet::HostNet {
                ip,
                nft: find_binary("nft"),
                owner: self.owner.clone(),
            },
            nsenter,
        ))
    }

    fn start(&self, l: &Launch) -> anyhow::Result<Running> {
        if !l.is_rootfs {
            bail!("the microvm driver runs root filesystems (images) only, not app directories");
        }
        if !crate::host::is_root() {
            l.refuse_egress_policy("microvm", "its network namespace needs root")?;
        }
        let vm = l.dir.join("microvm");
        let _ = fs::remove_dir_all(&vm);
        fs::create_dir_all(&vm).with_context(|| format!("cannot create {}", vm.display()))?;
        let initrd = vm.join("initrd.cpio");
        let size = write_initramfs(&initrd, &self.host, Some(&l.root), l)
            .with_context(|| format!("cannot write {}", initrd.display()))?;
        for f in ["ctl.in", "ctl.out", "exec.in", "exec.out"] {
            nix::unistd::mkfifo(&vm.join(f), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .with_context(|| format!("cannot make the fifo {}", vm.join(f).display()))?;
        }
        let mib = l.memory.max(0) / (1024 * 1024);
        let guest_mib = mib.max(MIN_GUEST_MIB)
            + i64::try_from(size.div_ceil(1024 * 1024)).unwrap_or(i64::MAX / 4);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as i64);
        let smp = ((l.cpu_millis + 999) / 1000).clamp(1, cpus);
        let log_offset = fs::metadata(&l.stdout).map(|m| m.len()).unwrap_or(0);
        let mut argv = qemu_argv(
            &self.host,
            self.host.accel,
            &initrd,
            guest_mib,
            smp,
            &l.stdout,
            Some(&vm),
            Some(l.port),
        );
        // An egress policy: QEMU (whose own sockets carry the guest's
        // connections) runs in a network namespace of the VM's own, held to
        // the policy there, like a container; its port forward answers at
        // that namespace's address, published on the node's.
        let mut netinfo: Vec<(&str, String)> = vec![];
        let mut made: Option<(crate::hostnet::HostNet, crate::hostnet::Net)> = None;
        if let Some(allowed) = &l.allowed_egress {
            let (hn, nsenter) = self.hostnet()?;
            let net = hn.setup_net(&l.instance_id)?;
            let policy = hn.restrict_egress(&net, allowed, false);
            if let Err(e) = policy {
                hn.teardown_net(&net.netns, &net.host_veth);
                return Err(e);
            }
            hn.node_egress();
            let published = hn.publish(l.port, net.ip);
            argv.splice(
                0..0,
                [
                    nsenter.display().to_string(),
                    format!("--net={}/{}", crate::hostnet::NETNS_DIR, net.netns),
                    "--".to_string(),
                ],
            );
            netinfo = vec![
                ("ip", net.ip.to_string()),
                ("host_ip", net.host_ip.to_string()),
                ("netns", net.netns.clone()),
                ("veth", net.host_veth.clone()),
                ("port", l.port.to_string()),
                ("published", published.to_string()),
            ];
            made = Some((hn, net));
        }
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
            stdout: l.stdout.clone(),
            stderr: l.stdout.clone(),
            allowed_egress: None,
        };
        let started = self.process.run(Command::Start(&host_launch));
        let mut r = match started {
            Ok(Reply::Started(r)) => r,
            other => {
                if let Some((hn, net)) = &made {
                    hn.unpublish(l.port);
                    hn.teardown_net(&net.netns, &net.host_veth);
                }
                match other {
                    Err(e) => return Err(e),
                    _ => bail!("qemu was not started"),
                }
            }
        };
        for (k, v) in netinfo {
            r.extra.insert(k.into(), v);
        }
        r.driver = "microvm".into();
        r.extra
            .insert("accel".into(), self.host.accel.name().into());
        r.extra.insert("vm_dir".into(), vm.display().to_string());
        r.extra.insert("log".into(), l.stdout.display().to_string());
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
                // The VM's own network, when it had an egress policy.
                if let (Some(r), Ok((hn, _))) = (handle, self.hostnet()) {
                    if let Some(port) = r.extra.get("port").and_then(|p| p.parse().ok()) {
                        hn.unpublish(port);
                    }
                    if let (Some(ns), Some(veth)) = (r.extra.get("netns"), r.extra.get("veth")) {
                        hn.teardown_net(ns, veth);
                    }
                }
                Ok(Reply::Done)
            }
        }
    }

    /// Through the guest daemon (see [`guest`]): in the guest, with the
    /// instance's environment and working directory.
    fn exec(
        &self,
        r: &Running,
        _t: &crate::driver::ExecTarget<'_>,
        _argv: &[String],
    ) -> anyhow::Result<crate::driver::ExecVia> {
        if guest::GUESTD.is_empty() {
            bail!("this agent was built without the microVM guest daemon (a static C library was missing), so it cannot run a command in a microVM");
        }
        let Some(vm) = r.extra.get("vm_dir").map(std::path::PathBuf::from) else {
            bail!("this microVM has no directory on the node");
        };
        if !vm.join("exec.in").exists() {
            bail!("this microVM was started by an older agent without a command channel: restart the instance to run commands in it");
        }
        Ok(crate::driver::ExecVia::Guest(guest::Channel {
            key: format!("{}#{}", vm.display(), r.pid),
            vm_dir: vm,
            pid: r.pid,
        }))
    }

    fn poll(&self, r: &Running) -> Option<Exit> {
        let qemu = self.process.poll(r)?;
        Some(exit_from_console(&Self::console(r, 256 << 10, true), qemu))
    }
}

#[cfg(test)]
mod tests {
    use super::initramfs::{sh_quote, valid_env_name};
    use super::qemu::qemu_opt;
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
