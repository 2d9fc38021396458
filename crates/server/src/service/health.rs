//! Health of the control plane itself.

use shellwego_api::Readiness;
use shellwego_core::Error;

use crate::ctx::ServerCtx;

/// Ready when the store answers; says which controllers this replica
/// leads and what carries its notifications.
pub async fn ready(ctx: &ServerCtx) -> Result<Readiness, Error> {
    ctx.store.ping().await?;
    Ok(Readiness {
        status: "ok".into(),
        replica: ctx.replica.id().to_string(),
        leads: ctx
            .replica
            .leading()
            .keys()
            .map(|k| k.to_string())
            .collect(),
        bus: ctx.bus.describe().to_string(),
    })
}

/// Each singleton controller and whether this replica leads it (`/metrics`).
pub fn leadership(ctx: &ServerCtx) -> Vec<(&'static str, bool)> {
    let leading = ctx.replica.leading();
    crate::controller::SINGLETONS
        .iter()
        .map(|name| (*name, leading.contains_key(name)))
        .collect()
}
