//! The node's end of its organization's WireGuard mesh.
//!
//! An agent with a routable address (one that other nodes reach) makes a
//! WireGuard interface `swg-<owner tag>`: kernel WireGuard when the kernel
//! has it (`ip link add … type wireguard`), else the userspace
//! implementation `wireguard-go` (a TUN device; Debian `wireguard-go`),
//! both configured the same way, through `wg` (wireguard-tools: netlink
//! for the kernel's, the UAPI socket for wireguard-go's). Its private key
//! is made once (`wg genkey`) and kept in the data directory (0600); it
//! never leaves the node. The agent reports the public key and port with
//! every sync; the control plane answers with the node's address on the
//! mesh (`10.90.x.y/16`) and the organization's other nodes as peers
//! (each allowed its own address only), which the agent applies whenever
//! they change.
//!
//! What is encrypted: traffic between instances on different nodes that
//! found each other by internal DNS (the answers name the target node's
//! mesh address). What is not: the routers' connections to instances and
//! the agents' calls to the control plane (they use the nodes' own
//! addresses; put them on a private network or behind TLS).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use shellwego_api::agent::{Overlay, WireguardReport};

use crate::host::{find_binary, run, run_input};

/// The default UDP port.
pub const DEFAULT_PORT: u16 = 51820;
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);

/// The mesh interface of this agent.
#[derive(Debug)]
pub struct Mesh {
    iface: String,
    port: u16,
    public_key: String,
    wg: PathBuf,
    ip: PathBuf,
    /// `kernel` or `wireguard-go`.
    kind: &'static str,
    applied: Mutex<Option<Overlay>>,
}

impl Mesh {
    /// Make (or find) the interface, with the key kept in `data_dir`.
    pub fn start(data_dir: &Path, owner: &crate::owner::Owner, port: u16) -> anyhow::Result<Mesh> {
        let wg = find_binary("wg").context("`wg` not found (install wireguard-tools)")?;
        let ip = find_binary("ip").context("`ip` not found (install iproute2)")?;
        let key_path = data_dir.join("wireguard.key");
        if !key_path.exists() {
            let key = tool(&wg, &["genkey"], None)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .with_context(|| format!("cannot write {}", key_path.display()))?;
            f.write_all(key.as_bytes())?;
            f.sync_all()?;
        }
        let private = fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let public_key = tool(&wg, &["pubkey"], Some(private.trim()))?
            .trim()
            .to_string();
        let iface = format!("swg-{}", owner.tag());
        let iface: String = iface.chars().take(15).collect();
        let exists = Path::new("/sys/class/net").join(&iface).exists();
        let kind = if exists {
            "existing"
        } else if tool(&ip, &["link", "add", &iface, "type", "wireguard"], None).is_ok() {
            "kernel"
        } else {
            let go = find_binary("wireguard-go").context(
                "the kernel has no WireGuard and `wireguard-go` is not installed (install wireguard-go)",
            )?;
            // It daemonizes once the interface exists (and ends with it):
            // its daemon must not hold our pipes open.
            let st = Command::new(&go)
                .arg(&iface)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .context("cannot run wireguard-go")?;
            if !st.success() {
                bail!("wireguard-go {iface} failed ({st})");
            }
            "wireguard-go"
        };
        let key_arg = key_path.display().to_string();
        tool(
            &wg,
            &[
                "set",
                &iface,
                "private-key",
                &key_arg,
                "listen-port",
                &port.to_string(),
            ],
            None,
        )?;
        tool(&ip, &["link", "set", &iface, "up"], None)?;
        tracing::info!(interface = %iface, kind, port, public_key = %public_key, "the node's WireGuard mesh interface is up");
        Ok(Mesh {
            iface,
            port,
            public_key,
            wg,
            ip,
            kind,
            applied: Mutex::new(None),
        })
    }

    /// What the control plane is told.
    pub fn report(&self) -> WireguardReport {
        WireguardReport {
            public_key: self.public_key.clone(),
            port: self.port,
        }
    }

    pub fn interface(&self) -> &str {
        &self.iface
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Take the node's address and peers from `o` (nothing when unchanged).
    pub fn apply(&self, o: &Overlay) -> anyhow::Result<()> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if applied.as_ref() == Some(o) {
            return Ok(());
        }
        let addr = format!("{}/{}", o.address, o.prefix);
        if applied.as_ref().map(|a| &a.address) != Some(&o.address) {
            tool(&self.ip, &["addr", "flush", "dev", &self.iface], None)?;
            tool(&self.ip, &["addr", "add", &addr, "dev", &self.iface], None)?;
        }
        let have = tool(&self.wg, &["show", &self.iface, "peers"], None)?;
        for old in have.lines().map(str::trim).filter(|k| !k.is_empty()) {
            if !o.peers.iter().any(|p| p.public_key == old) {
                tool(&self.wg, &["set", &self.iface, "peer", old, "remove"], None)?;
            }
        }
        for p in &o.peers {
            let allowed = format!("{}/32", p.address);
            tool(
                &self.wg,
                &[
                    "set",
                    &self.iface,
                    "peer",
                    &p.public_key,
                    "endpoint",
                    &p.endpoint,
                    "allowed-ips",
                    &allowed,
                    "persistent-keepalive",
                    "25",
                ],
                None,
            )?;
        }
        tracing::info!(interface = %self.iface, address = %addr, peers = o.peers.len(), "the mesh changed");
        *applied = Some(o.clone());
        Ok(())
    }
}

/// Run `bin args` (with `input` on stdin); its stdout, or an error with
/// its stderr.
fn tool(bin: &Path, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let out = match input {
        Some(i) => run_input(cmd, Some(format!("{i}\n").into_bytes()), TOOL_TIMEOUT)?,
        None => run(cmd, TOOL_TIMEOUT)?,
    };
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            bin.display(),
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
