//! What the reconciler, the rollout and the API operations share: a new
//! blank instance, telling one to stop, and when
//! a crashing instance counts as a crash loop.

use shellwego_core::model::{DesiredState, InstanceStatus};
use shellwego_core::Error;
use shellwego_store::apps::{self, App, Instance};
use shellwego_store::Tx;

/// Tell an instance to stop (an unplaced one is simply deleted).
///
/// The node's row is locked (its generation moved) before the instance's:
/// an agent's report locks its node's row first too (the report's `seq`,
/// `apply_reports`), then the instances it reports, so the opposite order
/// here deadlocked with a report of the same instance on PostgreSQL (one
/// of the two aborted after a second: a scale-down answered 500).
pub async fn stop_instance(tx: &mut Tx, i: &mut Instance, why: &str) -> Result<(), Error> {
    match &i.node_id {
        None => apps::delete_instance(tx, &i.id).await?,
        Some(n) => {
            shellwego_store::nodes::bump_node(tx, n).await?;
            i.desired = DesiredState::Stopped;
            i.status = InstanceStatus::Stopping;
            i.status_reason = Some(why.into());
            apps::update_instance(tx, i).await?;
        }
    }
    Ok(())
}

pub fn blank_instance(a: &App) -> Instance {
    Instance {
        app_id: a.id.clone(),
        organization_id: a.organization_id.clone(),
        version: a.version,
        desired: DesiredState::Running,
        status: InstanceStatus::Pending,
        memory: a.memory,
        cpu_millis: a.cpu_millis,
        ..Default::default()
    }
}

/// Restarts in a row after which a crashing instance makes the app `error`
/// (and fails a rollout).
pub const CRASH_LOOP_RESTARTS: i64 = 3;

/// The regions an organization's settings allow (empty: any).
pub fn org_allowed_regions(settings: &serde_json::Value) -> Vec<String> {
    settings["allowed_regions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
