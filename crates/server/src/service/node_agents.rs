//! Nodes joining, their heartbeats, and the liveness controller that marks
//! silent nodes offline.

use std::time::Duration;

use serde_json::json;
use shellwego_api::nodes::{AgentJoin, NodeRegister, NodeUpdate};
use shellwego_core::time::{now, rfc3339, to_micros};
use shellwego_core::Error;
use shellwego_store::events::{self, Actor, NewEvent, Severity};
use shellwego_store::nodes::{self, HostReport, Node};
use shellwego_store::{commit, Store};

use crate::auth::Principal;

/// How long a join token is good for.
pub const JOIN_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

pub async fn node_register(
    store: &Store,
    p: &Principal,
    req: &NodeRegister,
) -> Result<(Node, String), Error> {
    p.authorize("nodes", "write", None)?;
    let caps = serde_json::to_value(&req.capabilities).map_err(Error::internal)?;
    let mut tx = store.begin().await?;
    let template = Node {
        organization_id: p.organization_id.clone(),
        hostname: req.hostname.trim().to_string(),
        region: req.region.clone().unwrap_or_default(),
        zone: req.zone.clone().unwrap_or_default(),
        labels: req.labels.clone(),
        ..Default::default()
    };
    let (node, secret) = nodes::register(&mut tx, template, &caps, JOIN_TOKEN_LIFETIME).await?;
    events::record(
        &mut tx,
        NewEvent::info("node.registered", &p.actor(), "node", &node.id)
            .in_org(&p.organization_id)
            .meta(json!({"hostname": node.hostname})),
    )
    .await?;
    commit(tx).await?;
    Ok((node, secret))
}

pub async fn node_update(
    store: &Store,
    p: &Principal,
    node_id: &str,
    req: &NodeUpdate,
) -> Result<(), Error> {
    p.authorize("nodes", "write", Some(node_id))?;
    let node = store
        .node(node_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("node", node_id))?;
    if req.status.is_some() && node.status == "offline" {
        return Err(Error::Conflict(
            "The node is offline; its status changes when its agent is back.".into(),
        ));
    }
    if req.status.is_some() && node.status == "joining" {
        return Err(Error::Conflict(
            "The node has not joined yet; its status can change once its agent has joined.".into(),
        ));
    }
    let mut tx = store.begin().await?;
    nodes::update(&mut tx, node_id, req.status.as_deref(), req.labels.as_ref()).await?;
    events::record(
        &mut tx,
        NewEvent::info("node.updated", &p.actor(), "node", node_id)
            .in_org(&node.organization_id)
            .meta(
                json!({"previous_status": node.status, "status": req.status, "labels": req.labels}),
            ),
    )
    .await?;
    commit(tx).await
}

pub async fn node_delete(store: &Store, p: &Principal, node_id: &str) -> Result<(), Error> {
    p.authorize("nodes", "write", Some(node_id))?;
    let node = store
        .node(node_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("node", node_id))?;
    let mut tx = store.begin().await?;
    nodes::delete(&mut tx, node_id).await?;
    events::record(
        &mut tx,
        NewEvent::info("node.deleted", &p.actor(), "node", node_id)
            .in_org(&node.organization_id)
            .meta(json!({"hostname": node.hostname})),
    )
    .await?;
    commit(tx).await
}

/// Start draining a node (see the route). Returns the number of instances
/// it runs.
pub async fn node_drain(
    store: &Store,
    p: &Principal,
    node_id: &str,
    req: &shellwego_api::nodes::NodeDrain,
    delete_when_drained: bool,
) -> Result<i64, Error> {
    p.authorize("nodes", "write", Some(node_id))?;
    let node = store
        .node(node_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("node", node_id))?;
    for (i, d) in req.destination_nodes.iter().enumerate() {
        if d == node_id || store.node(d, &p.organization_ids()).await?.is_none() {
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
    let mut tx = store.begin().await?;
    shellwego_store::apps::start_drain(
        &mut tx,
        node_id,
        req.batch_size.unwrap_or(1),
        &req.destination_nodes,
        deadline,
        delete_when_drained,
    )
    .await?;
    let n = shellwego_store::apps::count_on_node(&mut tx, node_id).await?;
    events::record(
        &mut tx,
        NewEvent::info("node.draining", &p.actor(), "node", node_id)
            .in_org(&node.organization_id)
            .meta(json!({"instances": n, "batch_size": req.batch_size.unwrap_or(1), "timeout_secs": timeout.as_secs(), "destination_nodes": req.destination_nodes, "delete_when_drained": delete_when_drained})),
    )
    .await?;
    commit(tx).await?;
    Ok(n)
}

/// Delete nodes that were waiting to run nothing (`migrate_apps=true`).
pub async fn delete_drained_nodes(store: &Store) -> Result<usize, Error> {
    let mut n = 0;
    for (id, org) in store.drained_nodes_to_delete().await? {
        let mut tx = store.begin().await?;
        nodes::delete(&mut tx, &id).await?;
        events::record(
            &mut tx,
            NewEvent::info("node.deleted", &Actor::system(), "node", &id)
                .in_org(&org)
                .meta(json!({"reason": "drained"})),
        )
        .await?;
        commit(tx).await?;
        n += 1;
    }
    Ok(n)
}

/// An agent joins with its one-time token; a used, expired or unknown token
/// is a 401.
pub async fn agent_join(
    store: &Store,
    req: &AgentJoin,
    ip: Option<String>,
) -> Result<(String, String), Error> {
    let report = HostReport {
        hostname: req.hostname.trim().to_string(),
        cpu_cores: req.cpu_cores,
        memory_total: req.memory_total,
        memory_available: req.memory_available,
        disk_total: req.disk_total,
        kernel_version: req.kernel_version.clone(),
        agent_version: req.agent_version.clone(),
        firecracker_version: req.firecracker_version.clone(),
        qemu_version: req.qemu_version.clone(),
        drivers: req.drivers.clone(),
        kvm: req.kvm,
        region: req.region.clone().unwrap_or_default(),
        zone: req.zone.clone().unwrap_or_default(),
        labels: req.labels.clone(),
    };
    let mut tx = store.begin().await?;
    let Some((node_id, org, credential)) = nodes::join(&mut tx, &req.join_token, &report).await?
    else {
        return Err(Error::Unauthenticated(
            "The join token is invalid, used or expired; register the node again for a new one."
                .into(),
        ));
    };
    let actor = Actor {
        kind: "system".into(),
        id: Some(node_id.clone()),
        ip,
    };
    events::record(
        &mut tx,
        NewEvent::info("node.joined", &actor, "node", &node_id)
            .in_org(&org)
            .meta(json!({"hostname": report.hostname, "drivers": report.drivers})),
    )
    .await?;
    commit(tx).await?;
    Ok((node_id, credential))
}

/// The node a request's `Authorization: Bearer nsec_…` belongs to.
pub async fn node_for_credential(
    store: &Store,
    credential: Option<&str>,
) -> Result<(String, String, i64), Error> {
    let denied = || {
        Error::Unauthenticated(
            "This endpoint needs a node credential: 'Authorization: Bearer nsec_…'.".into(),
        )
    };
    let c = credential
        .filter(|c| c.starts_with("nsec_"))
        .ok_or_else(denied)?;
    store.node_by_credential(c).await?.ok_or_else(denied)
}

/// A sync is a heartbeat; a node that was offline is back (an event says so).
pub async fn agent_heartbeat(
    store: &Store,
    node_id: &str,
    org: &str,
    memory_available: Option<i64>,
    internal_ip: Option<&str>,
) -> Result<bool, Error> {
    let mut tx = store.begin().await?;
    let back = nodes::heartbeat(&mut tx, node_id, memory_available, internal_ip).await?;
    if back {
        events::record(
            &mut tx,
            NewEvent::info("node.online", &Actor::system(), "node", node_id).in_org(org),
        )
        .await?;
    }
    commit(tx).await?;
    Ok(back)
}

/// One pass of the liveness controller: nodes silent for longer than
/// `timeout` become offline, each with a `node.offline` event in the same
/// transaction. Safe with several control planes (the update is
/// conditional, so only one of them records the event).
pub async fn mark_silent_nodes_offline(store: &Store, timeout: Duration) -> Result<usize, Error> {
    let cutoff = to_micros(now()) - i64::try_from(timeout.as_micros()).unwrap_or(0);
    let mut n = 0;
    for (id, org, last_seen) in store.stale_nodes(cutoff).await? {
        let mut tx = store.begin().await?;
        if nodes::mark_offline(&mut tx, &id, cutoff).await? {
            let last = last_seen.map(|t| rfc3339(shellwego_core::time::from_micros(t)));
            events::record(
                &mut tx,
                NewEvent::info("node.offline", &Actor::system(), "node", &id)
                    .in_org(&org)
                    .severity(Severity::Warning)
                    .meta(json!({"node_id": id, "last_seen": last, "timeout_secs": timeout.as_secs()})),
            )
            .await?;
            n += 1;
        }
        commit(tx).await?;
    }
    Ok(n)
}
