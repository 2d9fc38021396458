//! An instance's own network (a container's, or a microVM's with an egress
//! policy): its own named network namespace and a veth pair to the host,
//! addressed as a /31; the node's NAT and published ports.
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
//! iptables between the host and the container. The /31 is chosen by
//! scanning the host's addresses (starting from a hash of the container id),
//! under an exclusive `flock` on `/run/shellwego/net.lock` held until the host
//! end has its address, so concurrent starts (threads or agents) never pick
//! the same pair and nothing has to be persisted: deleting the namespace (or
//! a reboot) frees the address.
//!
//! # Egress, and reaching a container from other nodes
//!
//! Beyond the host, a container's connections leave masqueraded as the
//! node (the node's table `ip shellwego_nat`, made once per agent process
//! with forwarding switched on, as Docker does; identical for every agent
//! of the host, so several agents never disagree). Its port is published
//! on the node's own addresses (the map `published`: port → container,
//! an element added when it starts and removed when it goes): a router or
//! an instance on another node reaches it at `<node address>:<port>`,
//! which is what the agent reports when it has a routable address. An app's
//! `allowed_egress` policy is a table `inet shellwego` in the container's
//! own namespace (an `output` hook: the app cannot leave it, the host's
//! rules are untouched): loopback, replies to connections made to the
//! container, and the listed CIDRs pass; every other destination is
//! refused at once (a TCP reset, else ICMP administratively prohibited: a
//! connect fails fast instead of hanging).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command as Proc;

use anyhow::{anyhow, bail, Context};
use nix::fcntl::{Flock, FlockArg};

use std::path::PathBuf;
use std::time::Duration;

use crate::host::{run, run_input};
use crate::owner::{fnv1a, Owner, RUN_DIR};

const TOOL_TIMEOUT: Duration = Duration::from_secs(15);

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Instances are addressed out of `10.89.0.0/16`, one /31 each.
pub const NET_PREFIX: [u8; 2] = [10, 89];
pub const NET_PAIRS: u32 = 1 << 15;

/// The host tools an instance's network is made with, and whose it is.
#[derive(Debug, Clone)]
pub struct HostNet {
    pub ip: PathBuf,
    /// nftables: egress policies, the node's NAT and published ports;
    /// optional (an instance without a policy does without it).
    pub nft: Option<PathBuf>,
    pub owner: Owner,
}

impl HostNet {
    /// (network namespace, host veth, container veth) of a container.
    pub fn net_names(&self, cid: &str) -> (String, String, String) {
        let (host, peer) = veth_names(cid);
        (self.owner.netns(cid), host, peer)
    }

    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Proc::new(&self.ip);
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
    pub fn ip_batch(&self, netns: Option<&str>, cmds: &[String]) -> anyhow::Result<()> {
        let mut cmd = Proc::new(&self.ip);
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

    pub fn setup_net(&self, cid: &str) -> anyhow::Result<Net> {
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

    /// The `nft` binary, or why a policy cannot be enforced.
    pub fn nft(&self) -> anyhow::Result<&Path> {
        self.nft.as_deref().ok_or_else(|| {
            anyhow!("nftables (`nft`) is not installed on this node: cannot enforce the app's allowed_egress (install the nftables package)")
        })
    }

    /// Run `nft -f -` with `rules` (in `netns` when given).
    pub fn nft_apply(&self, netns: Option<&str>, rules: &str) -> anyhow::Result<()> {
        let nft = self.nft()?;
        let mut cmd = match netns {
            Some(n) => {
                let mut c = Proc::new(&self.ip);
                c.args(["netns", "exec", n]).arg(nft);
                c
            }
            None => Proc::new(nft),
        };
        cmd.args(["-f", "-"]);
        let out = run_input(cmd, Some(rules.as_bytes().to_vec()), TOOL_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "nft{}: {}",
                netns.map(|n| format!(" (in {n})")).unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The container may only connect to `allowed` (canonical CIDRs).
    pub fn restrict_egress(&self, net: &Net, allowed: &[String], dns: bool) -> anyhow::Result<()> {
        let resolver = dns.then_some(net.host_ip);
        self.nft_apply(Some(&net.netns), &egress_rules(allowed, resolver))
            .context("cannot set the app's allowed_egress policy")
    }

    /// Once per agent process: forwarding on and the node's masquerade for
    /// containers' connections beyond the host. Best effort (a host that
    /// refuses keeps its containers' traffic on the host), logged once.
    pub fn node_egress(&self) {
        static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        DONE.get_or_init(|| {
            let made = (|| {
                fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                    .context("cannot switch on IPv4 forwarding")?;
                self.nft_apply(None, &nat_rules())
            })();
            match made {
                Ok(()) => tracing::info!("containers reach beyond the node, masqueraded as it"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "containers cannot reach beyond the node"),
            }
        });
    }

    /// Publish the container's `port` on the node's own addresses (not
    /// loopback): another node, or a router, reaches it at the node's
    /// address. Best effort: without it the container is reachable from
    /// this node only.
    pub fn publish(&self, port: u16, ip: Ipv4Addr) -> bool {
        if self.nft.is_none() {
            return false;
        }
        let rule = format!("add element ip {NAT_TABLE} published {{ {port} : {ip} }}\n");
        match self.nft_apply(None, &rule) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(port, %ip, error = %format!("{e:#}"), "cannot publish a container's port on the node");
                false
            }
        }
    }

    /// Take the container's port off the node (best effort: it may not be
    /// published).
    pub fn unpublish(&self, port: u16) {
        if self.nft.is_none() {
            return;
        }
        let rule = format!("delete element ip {NAT_TABLE} published {{ {port} }}\n");
        let _ = self.nft_apply(None, &rule);
    }

    /// A /31 of 10.89.0.0/16 no host interface uses, searched from `seed`.
    pub fn free_pair(&self, seed: u64) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
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
    pub fn teardown_net(&self, netns: &str, host_veth: &str) {
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
}

/// The node's NAT for containers (idempotent: the chains are rewritten,
/// the map of published ports is kept, so containers an agent re-adopts
/// stay reachable): masquerade beyond the node, and each container's port
/// published on the node's addresses (`published`: port → container).
fn nat_rules() -> String {
    let net = format!("{}.{}.0.0/16", NET_PREFIX[0], NET_PREFIX[1]);
    format!(
        "add table ip {NAT_TABLE}\n\
         add chain ip {NAT_TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add chain ip {NAT_TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain ip {NAT_TABLE} output {{ type nat hook output priority -100; policy accept; }}\n\
         add map ip {NAT_TABLE} published {{ type inet_service : ipv4_addr; }}\n\
         flush chain ip {NAT_TABLE} postrouting\n\
         flush chain ip {NAT_TABLE} prerouting\n\
         flush chain ip {NAT_TABLE} output\n\
         add rule ip {NAT_TABLE} postrouting ip saddr {net} ip daddr != {net} masquerade\n\
         add rule ip {NAT_TABLE} prerouting fib daddr type local dnat to tcp dport map @published\n\
         add rule ip {NAT_TABLE} output ip daddr != 127.0.0.0/8 fib daddr type local dnat to tcp dport map @published\n"
    )
}

/// The WireGuard mesh between the organization's nodes (see `crate::mesh`).
const MESH: &str = "10.90.0.0/16";

/// The node's NAT table (shared by every agent of the host).
const NAT_TABLE: &str = "shellwego_nat";

/// A container's egress policy: only `allowed` (canonical CIDRs; the ones
/// that do not parse are left out, the API validated them).
pub fn egress_rules(allowed: &[String], resolver: Option<Ipv4Addr>) -> String {
    let (mut v4, mut v6) = (vec![], vec![]);
    for c in allowed {
        match c.split('/').next().map(str::parse::<std::net::IpAddr>) {
            Some(Ok(std::net::IpAddr::V4(_))) => v4.push(c.as_str()),
            Some(Ok(std::net::IpAddr::V6(_))) => v6.push(c.as_str()),
            _ => {}
        }
    }
    let mut rules = String::from(
        "table inet shellwego {\n\tchain egress {\n\t\ttype filter hook output priority filter; policy accept;\n\t\toifname \"lo\" accept\n\t\tct state established,related accept\n",
    );
    if let Some(r) = resolver {
        // Its own resolver (internal DNS) stays reachable.
        rules += &format!("\t\tip daddr {r} meta l4proto {{ udp, tcp }} th dport 53 accept\n");
    }
    // The organization's private network (the WireGuard mesh, where
    // internal names point) is not egress.
    rules += &format!("\t\tip daddr {MESH} accept\n");
    if !v4.is_empty() {
        rules += &format!("\t\tip daddr {{ {} }} accept\n", v4.join(", "));
    }
    if !v6.is_empty() {
        rules += &format!("\t\tip6 daddr {{ {} }} accept\n", v6.join(", "));
    }
    // TCP gets a reset (an ICMP error is a soft error to a connecting
    // socket: it would retransmit its SYN for a second first).
    rules += "\t\tmeta l4proto tcp reject with tcp reset\n\t\treject with icmpx admin-prohibited\n\t}\n}\n";
    rules
}

pub struct Net {
    pub netns: String,
    pub host_veth: String,
    pub host_ip: Ipv4Addr,
    pub ip: Ipv4Addr,
}

/// (host veth, container veth): interface names are at most 15 bytes. The
/// pair lives and dies with the container's network namespace.
pub fn veth_names(cid: &str) -> (String, String) {
    let h = format!("{:010x}", fnv1a(cid.as_bytes()) >> 24);
    (format!("swh{h}"), format!("swc{h}"))
}

pub fn net_lock() -> anyhow::Result<Flock<File>> {
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
