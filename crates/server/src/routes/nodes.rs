//! Nodes (read side; registration and agents come with the nodes issue).

use axum::extract::State;
use axum::Json;
use shellwego_api::nodes::{
    MicrovmCapacity, Node, NodeCapacity, NodeList, NodeNetworking, NodeUsage,
};
use shellwego_api::problem::Problem;
use shellwego_core::time::rfc3339;
use shellwego_core::units::format_size;

use crate::auth::Principal;
use crate::extract::{list_params, PathParam, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service;
use crate::state::AppState;

fn pct(used: i64, total: i64) -> f64 {
    if total <= 0 {
        0.0
    } else {
        ((used as f64 / total as f64) * 1000.0).round() / 10.0
    }
}

fn view(n: shellwego_store::nodes::Node) -> Node {
    let size = |b: i64| format_size(b.max(0) as u64);
    Node {
        id: n.id,
        hostname: n.hostname,
        status: n.status,
        region: n.region,
        zone: n.zone,
        capacity: NodeCapacity {
            cpu_cores: n.cpu_cores,
            memory_total: size(n.memory_total),
            disk_total: size(n.disk_total),
            memory_available: size(n.memory_available),
            cpu_available: format!("{:.1}", n.cpu_available as f64 / 1000.0),
        },
        usage: NodeUsage {
            cpu_percent: pct(n.cpu_cores * 1000 - n.cpu_available, n.cpu_cores * 1000),
            memory_percent: pct(n.memory_total - n.memory_available, n.memory_total),
            disk_percent: 0.0,
        },
        running_apps: 0,
        microvm_capacity: MicrovmCapacity {
            total: n.microvm_total,
            used: n.microvm_used,
        },
        networking: NodeNetworking {
            internal_ip: n.internal_ip,
            public_ip: n.public_ip,
            wireguard_pubkey: None,
        },
        labels: n.labels,
        kernel_version: n.kernel_version,
        firecracker_version: n.firecracker_version,
        agent_version: n.agent_version,
        last_seen: n.last_seen.map(rfc3339),
        created_at: rfc3339(n.created_at),
    }
}

/// List nodes of your organizations.
///
/// Filters: `status`, `region`, `zone`, `hostname`, `organization_id`,
/// `capacity.cpu_cores`, `capacity.memory_total`, `capacity.disk_total`,
/// `capacity.memory_available` (ranges on numbers and sizes), `created_at`,
/// `updated_at`, `last_seen` (ranges), `label[key]`, `q`.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])), params(ListQueryDoc), responses(
    (status = 200, body = NodeList),
    (status = 400, body = Problem, content_type = "application/problem+json"),
))]
pub async fn node_list(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query,
) -> ApiResult<Json<NodeList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = service::node_list(&st.store, &p, &params).await?;
    Ok(Json(NodeList {
        data: page.items.into_iter().map(view).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// Get a node.
#[utoipa::path(get, path = "/v1/nodes/{node_id}", tag = "nodes", security(("bearer" = [])),
    params(("node_id" = String, Path, description = "Node id (node_…)")),
    responses(
        (status = 200, body = Node),
        (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn node_get(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<Node>> {
    Ok(Json(view(service::node_get(&st.store, &p, &id).await?)))
}
