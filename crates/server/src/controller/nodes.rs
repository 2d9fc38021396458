//! Node controllers: liveness (a node silent for longer than the timeout
//! becomes offline) and the deletion of drained nodes.

use std::time::Duration;

use serde_json::json;
use shellwego_core::time::{now, rfc3339, to_micros};
use shellwego_core::Error;
use shellwego_store::events::{self, Actor, NewEvent, Severity};
use shellwego_store::nodes;

use super::Controller;
use crate::bus::Topic;
use crate::ctx::{ServerCtx, DESIRED};

/// Silent nodes become offline.
pub struct Liveness;

impl Controller for Liveness {
    const NAME: &'static str = "liveness";

    fn wakes_on(&self) -> &'static [Topic] {
        &[]
    }

    fn every(&self, ctx: &ServerCtx) -> Duration {
        (ctx.config.node_timeout / 3).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// After a (re)start, every agent gets a full timeout to be heard from
    /// before it is judged: a control-plane restart changes nothing.
    fn first_pass_after(&self, ctx: &ServerCtx) -> Duration {
        ctx.config.node_timeout
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        let n = mark_silent_nodes_offline(ctx, ctx.config.node_timeout).await?;
        Ok(if n > 0 { DESIRED } else { &[] })
    }
}

/// Nodes silent for longer than `timeout` become offline, each with a
/// `node.offline` event in the same transaction. Safe with several control
/// planes (the update is conditional, so only one of them records the
/// event).
pub async fn mark_silent_nodes_offline(ctx: &ServerCtx, timeout: Duration) -> Result<usize, Error> {
    let store = &ctx.store;
    let cutoff = to_micros(now()) - i64::try_from(timeout.as_micros()).unwrap_or(0);
    let mut n = 0;
    let stale = nodes::stale(&mut *store.conn().await?, cutoff).await?;
    for nodes::StaleNode {
        id,
        organization_id: org,
        last_seen,
    } in stale
    {
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
        shellwego_store::commit(tx).await?;
    }
    Ok(n)
}

/// Nodes that were waiting to run nothing (`migrate_apps=true`) are
/// deleted.
pub struct DrainedNodes;

impl Controller for DrainedNodes {
    const NAME: &'static str = "drained-nodes";

    fn wakes_on(&self) -> &'static [Topic] {
        &[Topic::Apps]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        Duration::from_secs(2)
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        let store = &ctx.store;
        let mut n = 0;
        let drained = nodes::drained_to_delete(&mut *store.conn().await?).await?;
        for nodes::DrainedNode {
            id,
            organization_id: org,
        } in drained
        {
            let mut tx = store.begin().await?;
            nodes::delete(&mut tx, &id).await?;
            events::record(
                &mut tx,
                NewEvent::info("node.deleted", &Actor::system(), "node", &id)
                    .in_org(&org)
                    .meta(json!({"reason": "drained"})),
            )
            .await?;
            shellwego_store::commit(tx).await?;
            n += 1;
        }
        Ok(if n > 0 {
            &[Topic::Nodes, Topic::Routes]
        } else {
            &[]
        })
    }
}
