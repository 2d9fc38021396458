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
use crate::extract::{list_params, OptionalJsonBody, PathParam, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service;
use crate::state::AppState;

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn pct(used: i64, total: i64) -> f64 {
    if total <= 0 {
        0.0
    } else {
        ((used as f64 / total as f64) * 1000.0).round() / 10.0
    }
}

/// `load`: (apps, reserved memory, reserved millicores) of the node's instances.
fn view(n: crate::model::Node, load: (i64, i64, i64)) -> Node {
    let size = |b: i64| format_size(b.max(0) as u64);
    let (running_apps, reserved_memory, reserved_cpu) = load;
    let cpu_total = n.cpu_cores.saturating_mul(1000);
    Node {
        id: n.id,
        hostname: n.hostname,
        status: n.status,
        region: n.region,
        zone: n.zone,
        // What the scheduler can still place here.
        capacity: NodeCapacity {
            cpu_cores: n.cpu_cores,
            memory_total: size(n.memory_total),
            disk_total: size(n.disk_total),
            memory_available: size(n.memory_total.saturating_sub(reserved_memory)),
            cpu_available: format!(
                "{:.1}",
                cpu_total.saturating_sub(reserved_cpu).max(0) as f64 / 1000.0
            ),
        },
        // Measured on the host by its agent's sampler (every 10 s); until
        // its first samples: CPU reserved by instances, memory from the
        // heartbeat.
        usage: NodeUsage {
            cpu_percent: n
                .usage_cpu
                .map(round1)
                .unwrap_or_else(|| pct(reserved_cpu, cpu_total)),
            memory_percent: n.usage_memory.map(round1).unwrap_or_else(|| {
                pct(
                    n.memory_total.saturating_sub(n.memory_available.max(0)),
                    n.memory_total,
                )
            }),
            disk_percent: n.usage_disk.map(round1).unwrap_or(0.0),
        },
        running_apps,
        microvm_capacity: MicrovmCapacity {
            total: n.microvm_total,
            used: n.microvm_used,
        },
        networking: NodeNetworking {
            internal_ip: n.internal_ip,
            public_ip: n.public_ip,
            wireguard_pubkey: n.wireguard_pubkey,
        },
        labels: n.labels,
        kernel_version: n.kernel_version,
        firecracker_version: n.firecracker_version,
        agent_version: n.agent_version,
        qemu_version: n.qemu_version,
        drivers: n.drivers,
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
    let page = service::nodes::node_list(&st.ctx, &p, &params).await?;
    let loads = service::nodes::node_loads(&st.ctx, &page.items.iter().collect::<Vec<_>>()).await?;
    Ok(Json(NodeList {
        data: page
            .items
            .into_iter()
            .map(|n| {
                let l = loads
                    .iter()
                    .find(|l| l.node_id == n.id)
                    .map_or((0, 0, 0), |l| (l.apps, l.memory, l.cpu_millis));
                view(n, l)
            })
            .collect(),
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
    node_view(&st, &p, &id).await
}

async fn node_view(st: &AppState, p: &Principal, id: &str) -> ApiResult<Json<Node>> {
    let n = service::nodes::node_get(&st.ctx, p, id).await?;
    let l = service::nodes::node_loads(&st.ctx, &[&n])
        .await?
        .first()
        .map_or((0, 0, 0), |l| (l.apps, l.memory, l.cpu_millis));
    Ok(Json(view(n, l)))
}

/// Register a node; run `shellwego agent --join-token …` on it within an hour.
#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])), request_body = shellwego_api::nodes::NodeRegister, responses(
    (status = 201, body = shellwego_api::nodes::NodeRegistered),
    (status = 403, body = Problem, content_type = "application/problem+json"),
))]
pub async fn node_create(
    State(st): State<AppState>,
    p: Principal,
    headers: axum::http::HeaderMap,
    crate::extract::JsonBody(req): crate::extract::JsonBody<shellwego_api::nodes::NodeRegister>,
) -> ApiResult<(
    axum::http::StatusCode,
    Json<shellwego_api::nodes::NodeRegistered>,
)> {
    let (node, join_token) = crate::service::nodes::node_register(&st.ctx, &p, &req).await?;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        // Only a plain host[:port] goes into a shell command.
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("127.0.0.1:3000");
    let install_script = format!("shellwego agent --control-plane http://{host} --join-token {join_token} --data-dir /var/lib/shellwego-agent");
    Ok((
        axum::http::StatusCode::CREATED,
        Json(shellwego_api::nodes::NodeRegistered {
            id: node.id,
            join_token,
            install_script,
        }),
    ))
}

/// Change a node's labels or status (`draining` stops new placements).
#[utoipa::path(patch, path = "/v1/nodes/{node_id}", tag = "nodes", security(("bearer" = [])),
    params(("node_id" = String, Path, description = "Node id (node_…)")), request_body = shellwego_api::nodes::NodeUpdate,
    responses((status = 200, body = Node), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn node_update(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    crate::extract::JsonBody(req): crate::extract::JsonBody<shellwego_api::nodes::NodeUpdate>,
) -> ApiResult<Json<Node>> {
    crate::service::nodes::node_update(&st.ctx, &p, &id, &req).await?;
    node_view(&st, &p, &id).await
}

/// Remove a node. Its instances are placed elsewhere at once; with
/// `migrate_apps=true` they are first moved (replacements healthy before
/// they stop, as in a drain), the node is deleted when it runs nothing, and
/// the answer is 202.
#[utoipa::path(delete, path = "/v1/nodes/{node_id}", tag = "nodes", security(("bearer" = [])),
    params(("node_id" = String, Path, description = "Node id (node_…)"), ("migrate_apps" = Option<bool>, Query, description = "Move instances first")),
    responses((status = 204, description = "Removed"), (status = 202, description = "Draining; removed once its instances have moved"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn node_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
) -> ApiResult<axum::http::StatusCode> {
    let params = list_params(q.as_deref(), &["migrate_apps"])?;
    if let Some(v) = params.extra("migrate_apps") {
        if v != "true" && v != "false" {
            return Err(shellwego_core::Error::field(
                "migrate_apps",
                "invalid_value",
                "must be true or false",
            )
            .into());
        }
    }
    if params.extra("migrate_apps") == Some("true") {
        let req = shellwego_api::nodes::NodeDrain::default();
        let n = crate::service::nodes::node_drain(&st.ctx, &p, &id, &req, true).await?;
        return Ok(if n > 0 {
            axum::http::StatusCode::ACCEPTED
        } else {
            axum::http::StatusCode::NO_CONTENT
        });
    }
    crate::service::nodes::node_delete(&st.ctx, &p, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Drain a node: no new instances go there, and each of its instances is
/// replaced on another node and healthy there before it stops here
/// (`batch_size` at a time, to `destination_nodes` if given). After
/// `timeout`, what has not moved is stopped and placed elsewhere.
#[utoipa::path(post, path = "/v1/nodes/{node_id}/actions/drain", tag = "nodes", security(("bearer" = [])),
    params(("node_id" = String, Path, description = "Node id (node_…)")), request_body(content = Option<shellwego_api::nodes::NodeDrain>),
    responses((status = 202, body = shellwego_api::nodes::NodeDrained), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn node_drain(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    OptionalJsonBody(req): OptionalJsonBody<shellwego_api::nodes::NodeDrain>,
) -> ApiResult<(
    axum::http::StatusCode,
    Json<shellwego_api::nodes::NodeDrained>,
)> {
    let n = crate::service::nodes::node_drain(&st.ctx, &p, &id, &req, false).await?;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(shellwego_api::nodes::NodeDrained {
            node_id: id,
            status: shellwego_core::model::NodeStatus::Draining,
            instances: n,
        }),
    ))
}
