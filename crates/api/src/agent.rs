//! The agent channel: what a node agent and the control plane exchange
//! (`POST /v1/agent/join`, `POST /v1/agent/sync`, `GET
//! /v1/agent/uploads/{upload_id}`).
//!
//! This is the **internal agent protocol**, not part of the public `/v1`
//! platform API: it has its own OpenAPI document
//! (`openapi/agent-api.json`) and its own version, [`PROTOCOL_VERSION`],
//! which moves apart from `/v1`. An agent sends the version it speaks in
//! the [`PROTOCOL_HEADER`] header on every call; the control plane answers
//! a version it does not speak with a 400 naming the header, and takes a
//! call without the header for version 1 (agents older than the header).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The agent protocol this crate describes. Bump it when a change to these
/// types or to the agent routes would break an agent or a control plane of
/// the other version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The request header an agent names its protocol version in
/// (`ShellWeGo-Agent-Protocol: 1`). Absent: version 1.
pub const PROTOCOL_HEADER: &str = "ShellWeGo-Agent-Protocol";

/// `POST /v1/agent/join`: what an agent reports when it joins.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentJoin {
    pub join_token: String,
    #[serde(default)]
    pub hostname: String,
    pub cpu_cores: i64,
    /// Bytes.
    pub memory_total: i64,
    pub memory_available: i64,
    pub disk_total: i64,
    #[serde(default)]
    pub kernel_version: Option<String>,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub firecracker_version: Option<String>,
    #[serde(default)]
    pub qemu_version: Option<String>,
    #[serde(default)]
    pub drivers: Vec<String>,
    #[serde(default)]
    pub kvm: bool,
    /// Override the region set at registration.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    /// Added to (and overriding) the labels set at registration.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentJoined {
    pub node_id: String,
    /// `nsec_…`: the node's long-lived credential; keep it secret.
    pub credential: String,
    /// Seconds an agent may wait in one `sync` call.
    pub sync_wait_secs: u64,
}

/// `POST /v1/agent/sync`: the agent's status going up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSync {
    /// The desired-state generation the agent has applied.
    #[serde(default)]
    pub generation: i64,
    /// Hold the request up to this many seconds (1–30) while nothing changes.
    #[serde(default)]
    pub wait_secs: Option<u64>,
    #[serde(default)]
    pub memory_available: Option<i64>,
    /// Every instance the agent has (absent: the agent has not looked yet,
    /// so nothing is concluded from it).
    #[serde(default)]
    pub instances: Option<Vec<InstanceReport>>,
    /// What happened since the last sync (crashes, OOM kills).
    #[serde(default)]
    pub events: Vec<AgentEvent>,
    /// The tasks the agent has (running, or answering): a task handed out
    /// in an answer the agent never read (it dropped the call for fresher
    /// news) is handed out again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// The address instances on this node are reached at.
    #[serde(default)]
    pub internal_ip: Option<String>,
    /// Grows with every report the agent sends (it survives agent restarts:
    /// the agent starts it at the time in microseconds). A report whose
    /// `seq` is not above the last one applied for the node is older news
    /// and its `instances` are ignored; absent: always applied.
    #[serde(default)]
    pub seq: Option<i64>,
    /// The node's WireGuard public key and port: the control plane gives
    /// it an address on the organization's mesh and its peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardReport>,
    /// Samples of the node and its instances taken since the last sync
    /// (every 10 s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<crate::metrics::Sample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WireguardReport {
    /// Base64 of the 32-byte Curve25519 public key.
    pub public_key: String,
    /// The UDP port its WireGuard listens on.
    pub port: u16,
}

/// The node's place on its organization's WireGuard mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Overlay {
    /// The node's own address on the mesh (`10.90.x.y`).
    pub address: String,
    /// The mesh's prefix length (16).
    pub prefix: u8,
    /// The organization's other nodes on the mesh.
    pub peers: Vec<OverlayPeer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OverlayPeer {
    pub node_id: String,
    pub public_key: String,
    /// `ip:port` where its WireGuard answers.
    pub endpoint: String,
    /// Its address on the mesh.
    pub address: String,
}

/// The node's desired state coming down.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentDesired {
    pub generation: i64,
    /// Every instance the node should run; the agent stops any other.
    pub instances: Vec<DesiredInstance>,
    /// The control plane's SSRF policy (its `[ssrf]` config section): which
    /// private addresses the agent may fetch user-given URLs (sources,
    /// registries) from. Absent: none.
    #[serde(default)]
    pub ssrf: SsrfPolicy,
    /// The mesh, once the node reported its WireGuard key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Overlay>,
    /// Work the control plane asks of the node now (each task is handed
    /// out once); the agent answers each with `POST
    /// /v1/agent/tasks/{task_id}/result`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<AgentTask>,
    /// Follows of app logs held open on the control plane: push each new
    /// line of those apps that passes the filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_follows: Vec<crate::logs::LogFollow>,
}

/// A task for the agent: run a command in an instance (`exec`), or read
/// an app's stored lines (`logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentTask {
    #[schema(example = "tsk_2v8s9d2k1m")]
    pub id: String,
    /// `exec`, `exec_session` or `logs`.
    pub kind: String,
    /// exec: the instance (logs: empty).
    #[serde(default)]
    pub instance_id: String,
    /// exec: the command and its arguments (no shell unless it names one).
    #[serde(default)]
    pub command: Vec<String>,
    /// exec: given to the command's standard input, then closed.
    #[serde(default)]
    pub stdin: String,
    /// exec: the command's process tree is killed when it runs longer.
    #[serde(default)]
    pub timeout_ms: u64,
    /// exec: bytes kept of each of stdout and stderr (the rest is dropped
    /// and `truncated` is set).
    #[serde(default)]
    pub output_limit: u64,
    /// logs: which lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<crate::logs::LogQuery>,
    /// exec_session: an interactive session to start (its input and
    /// output go through `/v1/agent/exec/{session_id}/…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<crate::exec::ExecSession>,
}

/// What a task came to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentTaskResult {
    /// None when the command did not run to an exit (see `error`), or was
    /// killed by a signal.
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// A stream was longer than the limit.
    #[serde(default)]
    pub truncated: bool,
    /// It ran past its timeout and was killed.
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub execution_time_ms: u64,
    /// logs: the lines found, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<crate::logs::LogLine>,
    /// Why the command could not run (no such instance here, a driver that
    /// cannot exec, the program not found, …).
    #[serde(default)]
    pub error: Option<String>,
}

/// Private targets user-given URLs may reach besides public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SsrfPolicy {
    /// Networks (CIDR, `10.1.0.0/16`) allowed whatever their kind.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Loopback, private, shared, link-local and unique-local addresses are
    /// allowed (cloud metadata addresses stay refused).
    #[serde(default)]
    pub allow_private_targets: bool,
}

/// One instance a node should run, with all it needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DesiredInstance {
    pub id: String,
    pub app_id: String,
    pub app_name: String,
    pub organization_id: String,
    /// The app version; a new version is a new instance.
    pub version: i64,
    /// `process`, `container` or `microvm`.
    pub driver: String,
    /// An OCI image reference to pull.
    pub image: Option<String>,
    /// A tarball to fetch: an http(s) URL, or a path on the control plane
    /// (`/v1/agent/uploads/upl_…`) fetched with the node credential.
    pub archive_url: Option<String>,
    /// Overrides the image's entrypoint and cmd, or the Procfile's `web:` line.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Bytes.
    pub memory: i64,
    pub cpu_millis: i64,
    pub health_check: DesiredHealthCheck,
    pub stop_timeout_ms: u64,
    pub region: String,
    /// The CIDRs the instance may connect to (the app's
    /// `networking.allowed_egress` when it is a policy); none: anywhere.
    /// A driver that cannot enforce a policy refuses to start the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_egress: Option<Vec<String>>,
    /// How long and how much of the app's output the node keeps (each
    /// absent: the node's default).
    #[serde(default, skip_serializing_if = "crate::logs::LogSettings::is_empty")]
    pub log_policy: crate::logs::LogSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DesiredHealthCheck {
    /// HTTP GET path; none means a TCP connect check.
    pub path: Option<String>,
    /// None: the instance's own port.
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub grace_ms: u64,
}

/// An instance as the agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceReport {
    pub id: String,
    /// `starting`, `healthy`, `unhealthy`, `crashed`, `stopping`, `stopped`, `failed`.
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Microseconds since the epoch.
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub health_checks_passed: i64,
    #[serde(default)]
    pub restarts: i64,
    /// The image by digest (`nginx:alpine@sha256:…`), once pulled.
    #[serde(default)]
    pub image_pinned: Option<String>,
}

/// Something that happened to an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentEvent {
    pub instance_id: String,
    /// `crashed`, `oom_killed`, `unhealthy`, `failed`, or `orphan_removed`
    /// (the agent removed an instance an earlier run of it left on the host
    /// and its saved state does not describe; the id may be unknown to the
    /// control plane).
    pub kind: String,
    pub reason: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Microseconds since the epoch.
    pub at: i64,
}

impl crate::Validate for AgentJoin {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        use shellwego_core::FieldError;
        const MAX_BYTES: i64 = 1 << 60;
        let mut errs = vec![];
        if !(0..=100_000).contains(&self.cpu_cores) {
            errs.push(FieldError::new(
                "cpu_cores",
                "out_of_range",
                "must be between 0 and 100000",
            ));
        }
        for (f, v) in [
            ("memory_total", self.memory_total),
            ("memory_available", self.memory_available),
            ("disk_total", self.disk_total),
        ] {
            if !(0..=MAX_BYTES).contains(&v) {
                errs.push(FieldError::new(
                    f,
                    "out_of_range",
                    "must be between 0 and 2^60 bytes",
                ));
            }
        }
        let text = |errs: &mut Vec<FieldError>, f: &str, v: &str, max: usize| {
            if v.len() > max || v.chars().any(char::is_control) {
                errs.push(FieldError::new(
                    f,
                    "invalid_value",
                    format!("must be at most {max} characters without control characters"),
                ));
            }
        };
        text(&mut errs, "hostname", &self.hostname, 253);
        for (f, v) in [
            ("kernel_version", &self.kernel_version),
            ("agent_version", &self.agent_version),
            ("firecracker_version", &self.firecracker_version),
            ("qemu_version", &self.qemu_version),
            ("region", &self.region),
            ("zone", &self.zone),
        ] {
            if let Some(v) = v {
                text(&mut errs, f, v, 200);
            }
        }
        for (i, d) in self.drivers.iter().enumerate() {
            if !["process", "container", "microvm"].contains(&d.as_str()) {
                errs.push(
                    FieldError::new(
                        format!("drivers[{i}]"),
                        "invalid_value",
                        "must be process, container or microvm",
                    )
                    .with_value(d.clone()),
                );
            }
        }
        crate::nodes::check_labels(&mut errs, &self.labels);
        crate::finish(errs)
    }
}

impl crate::Validate for AgentSync {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        if let Some(w) = &self.wireguard {
            // Base64 of 32 bytes: 43 characters and one '='.
            let k = &w.public_key;
            if k.len() != 44
                || !k.ends_with('=')
                || !k[..43]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
                || w.port == 0
            {
                return Err(shellwego_core::Error::field(
                    "wireguard.public_key",
                    "invalid_value",
                    "must be a WireGuard public key (base64 of 32 bytes) with a non-zero port",
                ));
            }
        }
        if self.samples.len() > 20_000 {
            return Err(shellwego_core::Error::field(
                "samples",
                "too_many",
                "at most 20 000 samples per sync; send the rest with the next",
            ));
        }
        if self.seq.is_some_and(|s| s < 1) {
            return Err(shellwego_core::Error::field(
                "seq",
                "out_of_range",
                "must be a positive number that grows with every report",
            ));
        }
        if let Some(w) = self.wait_secs {
            if !(1..=30).contains(&w) {
                return Err(shellwego_core::Error::field(
                    "wait_secs",
                    "out_of_range",
                    "must be between 1 and 30",
                ));
            }
        }
        if self
            .memory_available
            .is_some_and(|m| !(0..=1 << 60).contains(&m))
        {
            return Err(shellwego_core::Error::field(
                "memory_available",
                "out_of_range",
                "must be between 0 and 2^60 bytes",
            ));
        }
        let reports = self.instances.as_deref().unwrap_or_default();
        if reports.len() > 10_000 || self.events.len() > 10_000 {
            return Err(shellwego_core::Error::field(
                "instances",
                "too_many",
                "at most 10000 instances and 10000 events per sync",
            ));
        }
        let short = |s: &str| s.len() <= 4096;
        if !reports
            .iter()
            .all(|r| short(&r.id) && short(&r.status) && r.reason.as_deref().is_none_or(short))
            || !self
                .events
                .iter()
                .all(|e| short(&e.instance_id) && short(&e.kind) && short(&e.reason))
        {
            return Err(shellwego_core::Error::field(
                "instances",
                "invalid_value",
                "texts in reports are at most 4096 bytes",
            ));
        }
        Ok(())
    }
}

/// `POST /v1/agent/resolve`: a name an instance of the node looked up in
/// its internal DNS (`<app>.internal`, `<instance_id>.<app>.internal`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The instance that asked (one of the node's).
    pub instance_id: String,
    pub name: String,
}

/// The healthy instances a name stands for, in the asker's organization;
/// none when the name is no app of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResolveAnswer {
    pub records: Vec<InternalEndpoint>,
    /// How long the agent may keep the answer.
    pub ttl_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InternalEndpoint {
    pub instance_id: String,
    pub ip: String,
    pub port: u16,
}

impl crate::Validate for ResolveRequest {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        use shellwego_core::FieldError;
        let mut errs = vec![];
        if self.instance_id.is_empty() || self.instance_id.len() > 64 {
            errs.push(FieldError::new(
                "instance_id",
                "invalid_value",
                "must be one of the node's instance ids",
            ));
        }
        if self.name.is_empty() || self.name.len() > 253 {
            errs.push(FieldError::new(
                "name",
                "invalid_value",
                "must be a DNS name of at most 253 characters",
            ));
        }
        crate::finish(errs)
    }
}

/// The most output an agent may send back for one stream (1 MiB, the limit
/// it is given, with room for escaping).
pub const MAX_TASK_OUTPUT: usize = 4 << 20;

impl crate::Validate for AgentTaskResult {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        let mut errs = vec![];
        for (field, v) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if v.len() > MAX_TASK_OUTPUT {
                errs.push(shellwego_core::FieldError::new(
                    field,
                    "too_long",
                    "at most 4 MiB",
                ));
            }
        }
        crate::finish(errs)
    }
}
