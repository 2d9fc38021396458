//! Nodes: the API's operations on them (list, get, register, update,
//! drain, delete). Agents joining and syncing are in `agent_channel`; the
//! liveness and drained-node controllers in `crate::controller::nodes`.

use std::time::Duration;

use serde_json::json;
use shellwego_api::nodes::{NodeRegister, NodeUpdate};
use shellwego_core::list::ListParams;
use shellwego_core::model::NodeStatus;
use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;
use shellwego_store::events::NewEvent;
use shellwego_store::list::{Page, Scope};
use shellwego_store::nodes::{self, Node, NodeLoad, NODES};

use crate::auth::Principal;
use crate::ctx::{ServerCtx, DESIRED};

/// How long a join token is good for.
pub const JOIN_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

pub async fn node_register(
    ctx: &ServerCtx,
    p: &Principal,
    req: &NodeRegister,
) -> Result<(Node, String), Error> {
    let _store = &ctx.store;
    p.authorize("nodes", "write", None)?;
    let caps = serde_json::to_value(&req.capabilities).map_err(Error::internal)?;
    let mut tx = ctx.unit().await?;
    let template = Node {
        organization_id: p.organization_id.clone(),
        hostname: req.hostname.trim().to_string(),
        region: req.region.clone().unwrap_or_default(),
        zone: req.zone.clone().unwrap_or_default(),
        labels: req.labels.clone(),
        ..Default::default()
    };
    let (node, secret) = nodes::register(&mut tx, template, &caps, JOIN_TOKEN_LIFETIME).await?;
    tx.record(
        NewEvent::info("node.registered", &p.actor(), "node", &node.id)
            .in_org(&p.organization_id)
            .meta(json!({"hostname": node.hostname})),
    );
    tx.commit().await?;
    Ok((node, secret))
}

pub async fn node_update(
    ctx: &ServerCtx,
    p: &Principal,
    node_id: &str,
    req: &NodeUpdate,
) -> Result<(), Error> {
    let store = &ctx.store;
    p.authorize("nodes", "write", Some(node_id))?;
    let node = nodes::get_visible(&mut *store.conn().await?, node_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("node", node_id))?;
    if req.status.is_some() && node.status == NodeStatus::Offline {
        return Err(Error::Conflict(
            "The node is offline; its status changes when its agent is back.".into(),
        ));
    }
    if req.status.is_some() && node.status == NodeStatus::Joining {
        return Err(Error::Conflict(
            "The node has not joined yet; its status can change once its agent has joined.".into(),
        ));
    }
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let status = req.status.map(NodeStatus::from);
    nodes::update(&mut tx, node_id, status, req.labels.as_ref()).await?;
    tx.record(
        NewEvent::info("node.updated", &p.actor(), "node", node_id)
            .in_org(&node.organization_id)
            .meta(
                json!({"previous_status": node.status, "status": req.status, "labels": req.labels}),
            ),
    );
    tx.commit().await
}

pub async fn node_delete(ctx: &ServerCtx, p: &Principal, node_id: &str) -> Result<(), Error> {
    let store = &ctx.store;
    p.authorize("nodes", "write", Some(node_id))?;
    let node = nodes::get_visible(&mut *store.conn().await?, node_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("node", node_id))?;
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    nodes::delete(&mut tx, node_id).await?;
    tx.record(
        NewEvent::info("node.deleted", &p.actor(), "node", node_id)
            .in_org(&node.organization_id)
            .meta(json!({"hostname": node.hostname})),
    );
    tx.commit().await
}

/// Start draining a node (see the route). Returns the number of instances
/// it runs. With `delete_when_drained`, a node that runs none is deleted
/// at once (and 0 returned).
pub async fn node_drain(
    ctx: &ServerCtx,
    p: &Principal,
    node_id: &str,
    req: &shellwego_api::nodes::NodeDrain,
    delete_when_drained: bool,
) -> Result<i64, Error> {
    let store = &ctx.store;
    p.authorize("nodes", "write", Some(node_id))?;
    let node = nodes::get_visible(&mut *store.conn().await?, node_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("node", node_id))?;
    for (i, d) in req.destination_nodes.iter().enumerate() {
        if d == node_id
            || nodes::get_visible(&mut *store.conn().await?, d, &p.organization_ids())
                .await?
                .is_none()
        {
            return Err(Error::field(
                format!("destination_nodes[{i}]"),
                "not_found",
                "must be another node of this organization",
            ));
        }
    }
    let timeout = req
        .timeout
        .as_deref()
        .and_then(shellwego_core::units::parse_duration)
        .unwrap_or(Duration::from_secs(600));
    let deadline = to_micros(now()) + i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX / 2);
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    // Deleting a node that runs nothing: delete it now, in this
    // transaction (leaving it to the drained-nodes controller would race
    // with the caller's next step).
    if delete_when_drained && shellwego_store::nodes::count_on_node(&mut tx, node_id).await? == 0 {
        nodes::delete(&mut tx, node_id).await?;
        tx.record(
            NewEvent::info("node.deleted", &p.actor(), "node", node_id)
                .in_org(&node.organization_id)
                .meta(json!({"hostname": node.hostname})),
        );
        tx.commit().await?;
        return Ok(0);
    }
    shellwego_store::nodes::start_drain(
        &mut tx,
        node_id,
        req.batch_size.unwrap_or(1),
        &req.destination_nodes,
        deadline,
        delete_when_drained,
    )
    .await?;
    let n = shellwego_store::nodes::count_on_node(&mut tx, node_id).await?;
    tx.record(NewEvent::info("node.draining", &p.actor(), "node", node_id)
            .in_org(&node.organization_id)
            .meta(json!({"instances": n, "batch_size": req.batch_size.unwrap_or(1), "timeout_secs": timeout.as_secs(), "destination_nodes": req.destination_nodes, "delete_when_drained": delete_when_drained})));
    tx.commit().await?;
    Ok(n)
}

/// Nodes of the caller's organizations.
pub async fn node_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Node>, Error> {
    let store = &ctx.store;
    p.authorize("nodes", "read", None)?;
    let orgs = p.organization_ids();
    let scope = Scope::new().is_in("t.organization_id", orgs);
    let mut page =
        crate::service::list_page(store, &NODES, &scope, params, nodes::from_row).await?;
    nodes::load_labels(&mut *store.conn().await?, &mut page.items).await?;
    Ok(page)
}

/// One node, if the caller's organizations have it (404 otherwise, never 403).
pub async fn node_get(ctx: &ServerCtx, p: &Principal, node_id: &str) -> Result<Node, Error> {
    let store = &ctx.store;
    p.authorize("nodes", "read", Some(node_id))?;
    let orgs = p.organization_ids();
    nodes::get_visible(&mut *store.conn().await?, node_id, &orgs)
        .await?
        .ok_or_else(|| Error::not_found("node", node_id))
}

/// What runs on nodes the caller fetched through this service: per node,
/// its apps, reserved memory and CPU (nodes running nothing are left out).
pub async fn node_loads(ctx: &ServerCtx, nodes: &[&Node]) -> Result<Vec<NodeLoad>, Error> {
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    nodes::loads(&mut *ctx.store.conn().await?, &ids).await
}
