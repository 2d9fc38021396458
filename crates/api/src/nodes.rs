//! Nodes: `GET /v1/nodes`, `GET /v1/nodes/{node_id}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Pagination;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    #[schema(example = "node_8s2d9k1m3x")]
    pub id: String,
    pub hostname: String,
    /// `joining` (registered; its agent has not joined yet), `ready`,
    /// `draining`, `maintenance` or `offline`.
    pub status: String,
    pub region: String,
    pub zone: String,
    pub capacity: NodeCapacity,
    pub usage: NodeUsage,
    pub running_apps: i64,
    pub microvm_capacity: MicrovmCapacity,
    pub networking: NodeNetworking,
    pub labels: BTreeMap<String, String>,
    pub kernel_version: Option<String>,
    pub firecracker_version: Option<String>,
    pub agent_version: Option<String>,
    pub qemu_version: Option<String>,
    /// Runtime drivers that work on this node (`process`, `container`, `microvm`).
    pub drivers: Vec<String>,
    pub last_seen: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeCapacity {
    pub cpu_cores: i64,
    #[schema(example = "64g")]
    pub memory_total: String,
    pub disk_total: String,
    pub memory_available: String,
    #[schema(example = "8.0")]
    pub cpu_available: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeUsage {
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub disk_percent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MicrovmCapacity {
    pub total: i64,
    pub used: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeNetworking {
    pub internal_ip: Option<String>,
    pub public_ip: Option<String>,
    pub wireguard_pubkey: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub data: Vec<Node>,
    pub pagination: Pagination,
}

/// `POST /v1/nodes`: register a machine; an agent joins it with the token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRegister {
    #[schema(example = "my-server-01")]
    pub hostname: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capabilities: NodeCapabilities,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCapabilities {
    #[serde(default)]
    pub kvm: bool,
    #[serde(default)]
    pub nested_virtualization: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeRegistered {
    pub id: String,
    /// `sw_join_…`: single use, valid for one hour.
    pub join_token: String,
    pub install_script: String,
}

/// `PATCH /v1/nodes/{node_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    /// Replaces the node's labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// `ready`, `draining` (no new instances) or `maintenance`.
    #[serde(default)]
    pub status: Option<String>,
}

/// `POST /v1/nodes/{node_id}/actions/drain`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDrain {
    /// Instances moved at a time (default 1, 1 … 100): each is replaced on
    /// another node and healthy there before it stops here.
    #[serde(default)]
    pub batch_size: Option<i64>,
    /// Give up waiting after this long (default `10m`); instances not moved
    /// by then are stopped and placed elsewhere from scratch.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Only move instances to these nodes.
    #[serde(default)]
    pub destination_nodes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeDrained {
    pub node_id: String,
    pub status: String,
    /// Instances that will be moved.
    pub instances: i64,
}

impl crate::Validate for NodeDrain {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        use shellwego_core::FieldError;
        let mut errs = vec![];
        if self.batch_size.is_some_and(|b| !(1..=100).contains(&b)) {
            errs.push(FieldError::new(
                "batch_size",
                "out_of_range",
                "must be between 1 and 100",
            ));
        }
        if let Some(t) = &self.timeout {
            match shellwego_core::units::parse_duration(t) {
                Some(d) if d.as_secs() >= 1 && d.as_secs() <= 86_400 => {}
                _ => errs.push(
                    FieldError::new(
                        "timeout",
                        "invalid_value",
                        "must be a duration between 1s and 24h, such as 10m",
                    )
                    .with_value(t.clone()),
                ),
            }
        }
        for (i, n) in self.destination_nodes.iter().enumerate() {
            if !n.starts_with("node_") {
                errs.push(
                    FieldError::new(
                        format!("destination_nodes[{i}]"),
                        "invalid_value",
                        "must be a node id (node_…)",
                    )
                    .with_value(n.clone()),
                );
            }
        }
        crate::finish(errs)
    }
}

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
    /// The address instances on this node are reached at.
    #[serde(default)]
    pub internal_ip: Option<String>,
    /// Grows with every report the agent sends (it survives agent restarts:
    /// the agent starts it at the time in microseconds). A report whose
    /// `seq` is not above the last one applied for the node is older news
    /// and its `instances` are ignored; absent: always applied.
    #[serde(default)]
    pub seq: Option<i64>,
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

impl crate::Validate for NodeRegister {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        let mut errs = vec![];
        if let Some(why) = shellwego_core::names::hostname_problem(&self.hostname) {
            errs.push(
                shellwego_core::FieldError::new(
                    "hostname",
                    "invalid_value",
                    format!("must be a host name such as web-1 or node1.example.com: {why}"),
                )
                .with_value(self.hostname.clone()),
            );
        }
        check_labels(&mut errs, &self.labels);
        crate::finish(errs)
    }
}

impl crate::Validate for NodeUpdate {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        let mut errs = vec![];
        if let Some(s) = &self.status {
            if !["ready", "draining", "maintenance"].contains(&s.as_str()) {
                errs.push(
                    shellwego_core::FieldError::new(
                        "status",
                        "invalid_value",
                        "must be ready, draining or maintenance",
                    )
                    .with_value(s.clone()),
                );
            }
        }
        if let Some(l) = &self.labels {
            check_labels(&mut errs, l);
        }
        crate::finish(errs)
    }
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
        check_labels(&mut errs, &self.labels);
        crate::finish(errs)
    }
}

impl crate::Validate for AgentSync {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
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

fn check_labels(errs: &mut Vec<shellwego_core::FieldError>, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !key_ok || v.len() > 255 || v.chars().any(char::is_control) {
            errs.push(shellwego_core::FieldError::new(
                format!("labels.{k}"),
                "invalid_value",
                "keys: 1-63 letters, digits, - _ . /; values: up to 255 characters",
            ));
        }
    }
}
