//! Nodes: `GET /v1/nodes`, `GET /v1/nodes/{node_id}`, registering and
//! draining. What the node agent itself exchanges with the control plane
//! is the agent protocol, in [`crate::agent`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shellwego_core::model;
use utoipa::ToSchema;

use crate::Pagination;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    #[schema(example = "node_8s2d9k1m3x")]
    pub id: String,
    pub hostname: String,
    /// `joining`: registered, its agent has not joined yet.
    pub status: model::NodeStatus,
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
    pub status: Option<model::SettableNodeStatus>,
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
    pub status: model::NodeStatus,
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
        if let Some(l) = &self.labels {
            check_labels(&mut errs, l);
        }
        crate::finish(errs)
    }
}

/// Node labels: keys of letters, digits and `-_./`, short values.
pub(crate) fn check_labels(
    errs: &mut Vec<shellwego_core::FieldError>,
    labels: &BTreeMap<String, String>,
) {
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
