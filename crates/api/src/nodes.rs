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
    /// `ready`, `draining`, `maintenance` or `offline`.
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
