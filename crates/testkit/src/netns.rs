//! A test LAN: hosts that are Linux network namespaces, each with an
//! address of its own on a bridge in the root namespace, so that processes
//! started in them ([`crate::platform::Proc::shellwego_in`]) talk to each
//! other and to the root namespace over a real (virtual) network rather
//! than loopback.
//!
//! [`Lan::new`]`(n)` makes a bridge addressed `10.99.N.1/24` (the
//! [gateway](Lan::gateway): control planes and routers listen there) and
//! `n` namespaces, host `i` at `10.99.N.(i+2)/24` on a veth pair joined to
//! the bridge, with `lo` up and a default route via the gateway. `N` is the
//! lowest `10.99.N.0/24` no address or route of the host uses, chosen
//! under an exclusive lock ([`LOCK_FILE`]) held until the bridge has its
//! address, so parallel tests and test processes never share one. Dropped,
//! the LAN deletes what it made (best effort). What a killed test process
//! left is removed by the next [`Lan::new`]: every name carries the pid of
//! the process that made it.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` (iproute2) and
//! `nsenter` (util-linux). [`Lan::available`] says why not;
//! [`skip_unless_available`] prints `SKIPPED` with the reason, or fails the
//! test when `SHELLWEGO_REQUIRE_NETNS=1` (CI).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// `SHELLWEGO_REQUIRE_NETNS=1`: a host that cannot make a [`Lan`] fails
/// the tests that need one instead of skipping them (CI sets it).
pub const REQUIRE_VAR: &str = "SHELLWEGO_REQUIRE_NETNS";

/// Locked (exclusively, `flock`) while a [`Lan`] chooses its subnet and
/// makes its bridge.
pub const LOCK_FILE: &str = "/run/shellwego-testlan.lock";

/// Every LAN's addresses are in `10.99.0.0/16`.
const NET: [u8; 2] = [10, 99];
/// The namespaces' names: `swlan-<pid>-<lan>-<host>`.
const NETNS_PREFIX: &str = "swlan-";
/// Interface names: `swb<pid>-<lan>` (the bridge), `swv<pid>-<lan>-<host>`
/// (a veth's end in the root namespace), numbers in base 36 (15 bytes at
/// most: a pid has 5 digits at most, `lan` and `host` 2).
const BRIDGE_PREFIX: &str = "swb";
const VETH_PREFIX: &str = "swv";
/// The veth's end in a host's namespace.
const HOST_IF: &str = "eth0";
/// The alias of every interface a LAN makes in the root namespace: only
/// those are ever removed as left over.
const ALIAS: &str = "shellwego-testlan";

/// One host of a [`Lan`]: a network namespace.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its name (`ip netns`; `/run/netns/<netns>`).
    pub netns: String,
    /// Its address on the LAN (its `eth0`).
    pub ip: Ipv4Addr,
    /// The veth's end in the root namespace (a port of the bridge).
    pub veth: String,
}

impl Host {
    /// `program` to be run in this host's network namespace (see
    /// [`command_in`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.netns, program)
    }
}

/// `program` to be run in network namespace `netns` (`ip netns`'s name):
/// `nsenter --net=/run/netns/<netns> -- program`. `nsenter` enters the
/// namespace and execs the program, so the child's pid is the program's
/// (signals reach it). Unlike `ip netns exec`, it enters the network
/// namespace only: `ip netns exec` also gives the program a mount
/// namespace with a fresh `/sys`, where `/sys/fs/cgroup` is empty, and an
/// agent there would run its instances without cgroups.
pub fn command_in(netns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program);
    c
}

/// A bridge and its hosts; see the [module](self).
#[derive(Debug)]
pub struct Lan {
    n: u8,
    bridge: String,
    hosts: Vec<Host>,
}

/// LANs made by this process, numbering their names.
static LANS: AtomicU32 = AtomicU32::new(0);

impl Lan {
    /// A bridge at `10.99.N.1/24` and `hosts` namespaces on it (host `i`
    /// at `10.99.N.(i+2)`). At most 250 hosts.
    pub fn new(hosts: usize) -> anyhow::Result<Lan> {
        if hosts > 250 {
            bail!("a LAN of {hosts} hosts: 250 at most");
        }
        let pid = std::process::id();
        let k = LANS.fetch_add(1, Ordering::Relaxed) % (36 * 36);
        let tag = format!("{}-{}", base36(pid), base36(k));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .with_context(|| format!("cannot open {LOCK_FILE}"))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {LOCK_FILE}"))?;
        remove_stale();
        let n = free_subnet()?;
        let lan = Lan {
            n,
            bridge: format!("{BRIDGE_PREFIX}{tag}"),
            hosts: (0..hosts)
                .map(|i| Host {
                    netns: format!("{NETNS_PREFIX}{pid}-{k}-{i}"),
                    ip: Ipv4Addr::new(NET[0], NET[1], n, (i + 2) as u8),
                    veth: format!("{VETH_PREFIX}{tag}-{}", base36(i as u32)),
                })
                .collect(),
        };
        // From here on, dropping `lan` removes whatever was made.
        let gw = lan.gateway();
        let mut root = vec![
            format!(
                "link add {} type bridge forward_delay 0 stp_state 0",
                lan.bridge
            ),
            format!("link set {} alias {ALIAS}", lan.bridge),
            format!("addr add {gw}/24 dev {}", lan.bridge),
            format!("link set {} up", lan.bridge),
        ];
        for h in &lan.hosts {
            root.push(format!("netns add {}", h.netns));
            root.push(format!(
                "link add {} type veth peer name {HOST_IF} netns {}",
                h.veth, h.netns
            ));
            root.push(format!("link set {} alias {ALIAS}", h.veth));
            root.push(format!("link set {} master {} up", h.veth, lan.bridge));
        }
        ip_batch(&[], &root).context("making the LAN's bridge and namespaces")?;
        // The subnet is taken (the bridge has its address): others may look.
        drop(lock);
        for h in &lan.hosts {
            ip_batch(
                &["-n", &h.netns],
                &[
                    "link set lo up".to_string(),
                    format!("addr add {}/24 dev {HOST_IF}", h.ip),
                    format!("link set {HOST_IF} up"),
                    format!("route add default via {gw}"),
                ],
            )
            .with_context(|| format!("setting up namespace {}", h.netns))?;
        }
        Ok(lan)
    }

    /// Whether this host can make a [`Lan`]: an error saying why not (not
    /// root, no `ip` or `nsenter`, a namespace or bridge cannot be made).
    /// Tried once per process (a LAN of one host made and removed).
    pub fn available() -> Result<(), String> {
        static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
        AVAILABLE
            .get_or_init(|| {
                let uid = nix::unistd::geteuid();
                if !uid.is_root() {
                    return Err(format!(
                        "not root (euid {uid}): network namespaces, veths and bridges need root"
                    ));
                }
                for (bin, package) in [("ip", "iproute2"), ("nsenter", "util-linux")] {
                    let ran = Command::new(bin)
                        .arg("-V")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    if !ran.is_ok_and(|s| s.success()) {
                        return Err(format!("`{bin} -V` does not run: install {package}"));
                    }
                }
                Lan::new(1)
                    .map(drop)
                    .map_err(|e| format!("cannot make a test LAN: {e:#}"))
            })
            .clone()
    }

    /// The bridge's address, `10.99.N.1`: the root namespace's on the LAN.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.n, 1)
    }

    /// `10.99.N.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}.{}.{}.0/24", NET[0], NET[1], self.n)
    }

    /// Host `i` (from 0); panics when there is none.
    pub fn host(&self, i: usize) -> &Host {
        self.hosts
            .get(i)
            .unwrap_or_else(|| panic!("the LAN has {} hosts, no host {i}", self.hosts.len()))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The bridge's name (in the root namespace).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

impl Drop for Lan {
    /// Delete the veths (both ends: a namespace a process still holds
    /// would keep its end), the namespaces and the bridge; errors are
    /// ignored.
    fn drop(&mut self) {
        let mut cmds: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("link del {}", h.veth))
            .collect();
        cmds.extend(self.hosts.iter().map(|h| format!("netns del {}", h.netns)));
        cmds.push(format!("link del {}", self.bridge));
        let _ = ip_batch(&["-force"], &cmds);
    }
}

/// Whether a test needing a [`Lan`] can run here: `true` when
/// [`Lan::available`]; otherwise prints `SKIPPED (<test>): <why>` and is
/// `false`, or panics when [`REQUIRE_VAR`] is `1`.
pub fn skip_unless_available(test: &str) -> bool {
    match Lan::available() {
        Ok(()) => true,
        Err(why) if required() => {
            panic!("{test}: {REQUIRE_VAR}=1 and no test LAN can be made here: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED ({test}): {why} (set {REQUIRE_VAR}=1 to make this a failure)");
            false
        }
    }
}

/// `SHELLWEGO_REQUIRE_NETNS=1`?
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// `ip <global…> -batch -` fed `cmds`; an error with its output when one
/// fails (with `-force`, it runs them all).
fn ip_batch(global: &[&str], cmds: &[String]) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(global)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `ip`")?;
    let mut input = cmds.join("\n");
    input.push('\n');
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())
        .context("writing to `ip -batch -`")?;
    let out = child.wait_with_output().context("waiting for `ip`")?;
    if !out.status.success() {
        bail!(
            "`ip {} -batch -` failed ({}): {}\ncommands:\n{input}",
            global.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip args…`'s stdout (empty when it fails).
fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The lowest `N` such that no address or route of the host is in
/// `10.99.N.0/24`.
fn free_subnet() -> anyhow::Result<u8> {
    let mut used = BTreeSet::new();
    let text =
        ip_out(&["-4", "-o", "addr", "show"]) + &ip_out(&["-4", "route", "show", "table", "all"]);
    let prefix = format!("{}.{}.", NET[0], NET[1]);
    for word in text.split_whitespace() {
        if let Some(rest) = word.strip_prefix(&prefix) {
            if let Some(n) = rest
                .split(['.', '/'])
                .next()
                .and_then(|n| n.parse::<u8>().ok())
            {
                used.insert(n);
            }
        }
    }
    (0..=255u8)
        .find(|n| !used.contains(n))
        .context("every 10.99.N.0/24 is in use")
}

/// Remove the namespaces and interfaces of LANs whose process is gone (a
/// test process killed before its LANs were dropped).
fn remove_stale() {
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let mut cmds = vec![];
    for line in ip_out(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let pid = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !alive(p)) {
            cmds.push(format!("netns del {name}"));
        }
    }
    for line in ip_out(&["-o", "link", "show"]).lines() {
        // `7: swb1a2b-0: <BROADCAST,…\    alias shellwego-testlan` (a
        // veth: `swv…-0@if6:`).
        if !line.trim_end().ends_with(&format!("alias {ALIAS}")) {
            continue;
        }
        let Some(name) = line
            .split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next().unwrap_or_default())
        else {
            continue;
        };
        let pid = [BRIDGE_PREFIX, VETH_PREFIX]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .filter(|rest| rest.contains('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| u32::from_str_radix(p, 36).ok());
        if pid.is_some_and(|p| !alive(p)) {
            cmds.push(format!("link del {name}"));
        }
    }
    if !cmds.is_empty() {
        let _ = ip_batch(&["-force"], &cmds);
    }
}

/// `n` in base 36, lower case.
fn base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![];
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::platform::Proc;

    #[test]
    fn base36_round_trips() {
        for n in [0, 1, 35, 36, 1295, 4_194_304, u32::MAX] {
            assert_eq!(u32::from_str_radix(&base36(n), 36).unwrap(), n);
        }
        // The longest names fit in an interface name (15 bytes).
        let tag = format!("{}-{}", base36(4_194_304), base36(36 * 36 - 1));
        assert!(format!("{VETH_PREFIX}{tag}-{}", base36(249)).len() <= 15);
    }

    fn python() -> &'static str {
        if Path::new("/usr/bin/python3").is_file() {
            "/usr/bin/python3"
        } else {
            "python3"
        }
    }

    /// A TCP server in `host`'s namespace on `ip:port`: answers `from
    /// <ip>` to `n` connections, then exits. Returns once it listens.
    fn serve_in(host: &Host, n: usize) -> std::process::Child {
        let script = format!(
            "import socket,sys\n\
             s=socket.socket(); s.bind(('{ip}', 7000)); s.listen(8)\n\
             print('listening', flush=True)\n\
             for _ in range({n}):\n    c,_=s.accept(); c.sendall(b'from {ip}'); c.close()\n",
            ip = host.ip
        );
        let mut child = host
            .command(python())
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "the server in {}", host.netns);
        child
    }

    /// Connect from `host`'s namespace to `to`: what it was sent.
    fn fetch_from(host: &Host, to: SocketAddr) -> String {
        let script = format!(
            "import socket\n\
             c=socket.create_connection(('{}', {}), timeout=5)\n\
             print(c.recv(100).decode(), end='')\n",
            to.ip(),
            to.port()
        );
        let out = host
            .command(python())
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "connecting from {} to {to}: {}",
            host.netns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn inode_of_netns(netns: &str) -> String {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/run/netns/{netns}"))
            .unwrap()
            .ino();
        format!("net:[{ino}]")
    }

    #[test]
    fn netns_hosts_reach_each_other_and_the_gateway_and_are_gone_after_drop() {
        if !skip_unless_available(
            "netns_hosts_reach_each_other_and_the_gateway_and_are_gone_after_drop",
        ) {
            return;
        }
        let lan = Lan::new(2).unwrap();
        let (a, b) = (lan.host(0).clone(), lan.host(1).clone());
        let n = lan.gateway().octets()[2];
        assert_eq!(lan.gateway(), Ipv4Addr::new(10, 99, n, 1));
        assert_eq!(lan.cidr(), format!("10.99.{n}.0/24"));
        assert_eq!(a.ip, Ipv4Addr::new(10, 99, n, 2));
        assert_eq!(b.ip, Ipv4Addr::new(10, 99, n, 3));

        // A and the root namespace reach a server in B.
        let mut server = serve_in(&b, 2);
        let at_b = SocketAddr::from((b.ip, 7000));
        assert_eq!(fetch_from(&a, at_b), format!("from {}", b.ip));
        let mut got = String::new();
        TcpStream::connect_timeout(&at_b, Duration::from_secs(5))
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, format!("from {}", b.ip));
        assert!(server.wait().unwrap().success());

        // Both hosts reach the gateway (the root namespace).
        let gw = TcpListener::bind((lan.gateway(), 0)).unwrap();
        let at_gw = gw.local_addr().unwrap();
        let accept = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut c, peer) = gw.accept().unwrap();
                std::io::Write::write_all(&mut c, format!("to {}", peer.ip()).as_bytes()).unwrap();
            }
        });
        assert_eq!(fetch_from(&a, at_gw), format!("to {}", a.ip));
        assert_eq!(fetch_from(&b, at_gw), format!("to {}", b.ip));
        accept.join().unwrap();

        // A process started in a host is in its namespace, under its own
        // pid: a signal reaches it.
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::shellwego_in(
            &a.netns,
            Path::new("/bin/sleep"),
            &["60"],
            &dir.path().join("sleep.log"),
        )
        .unwrap();
        let pid = p.id();
        let t = std::time::Instant::now();
        while std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|e| !e.to_string_lossy().contains("sleep"))
        {
            assert!(t.elapsed() < Duration::from_secs(5), "nsenter never exec'd");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .unwrap()
                .to_string_lossy(),
            inode_of_netns(&a.netns)
        );
        let st = p.terminate(Duration::from_secs(5));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(nix::sys::signal::Signal::SIGTERM as i32),
            "{st}"
        );

        // Gone after the drop: namespaces, veths, the bridge and its address.
        let bridge = lan.bridge().to_string();
        let gateway = lan.gateway();
        drop(lan);
        let netns = ip_out(&["netns", "list"]);
        let links = ip_out(&["-o", "link", "show"]);
        let addrs = ip_out(&["-4", "-o", "addr", "show"]);
        let words = |text: &str| -> BTreeSet<String> {
            text.split(|c: char| c == ':' || c == '@' || c.is_whitespace())
                .map(str::to_string)
                .collect()
        };
        let (netns_names, link_names) = (words(&netns), words(&links));
        for h in [&a, &b] {
            assert!(
                !netns_names.contains(&h.netns),
                "{} is left: {netns}",
                h.netns
            );
            assert!(!link_names.contains(&h.veth), "{} is left: {links}", h.veth);
        }
        assert!(!link_names.contains(&bridge), "{bridge} is left: {links}");
        assert!(
            !addrs.contains(&format!("{gateway}/")),
            "{gateway} is left: {addrs}"
        );
    }

    #[test]
    fn netns_lans_made_at_once_get_subnets_of_their_own() {
        if !skip_unless_available("netns_lans_made_at_once_get_subnets_of_their_own") {
            return;
        }
        let lans: Vec<Lan> = std::thread::scope(|s| {
            let made: Vec<_> = (0..4).map(|_| s.spawn(|| Lan::new(1))).collect();
            made.into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        let cidrs: BTreeSet<String> = lans.iter().map(Lan::cidr).collect();
        assert_eq!(cidrs.len(), 4, "{cidrs:?}");
        let bridges: BTreeSet<&str> = lans.iter().map(Lan::bridge).collect();
        assert_eq!(bridges.len(), 4, "{bridges:?}");
    }
}
