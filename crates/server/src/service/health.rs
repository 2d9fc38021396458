//! Health of the control plane itself.

use shellwego_core::Error;

use crate::ctx::ServerCtx;

/// Ready when the store answers.
pub async fn ready(ctx: &ServerCtx) -> Result<(), Error> {
    ctx.store.ping().await
}
