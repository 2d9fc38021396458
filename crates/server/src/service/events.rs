//! The event (audit) log, as the caller may see it.

use shellwego_core::list::ListParams;
use shellwego_core::Error;
use shellwego_store::events::{self, Event, EVENTS};
use shellwego_store::list::{Page, Scope};

use crate::auth::Principal;
use crate::ctx::ServerCtx;

/// Events of the caller's organizations.
pub async fn event_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Event>, Error> {
    let store = &ctx.store;
    p.authorize("events", "read", None)?;
    let orgs = p.organization_ids();
    let scope = Scope::new().is_in("t.organization_id", orgs);
    crate::service::list_page(store, &EVENTS, &scope, params, events::from_row).await
}

/// One event of the caller's organizations; 404 otherwise.
pub async fn event_get(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<Event, Error> {
    p.authorize("events", "read", None)?;
    let e = events::get(&mut *ctx.store.conn().await?, id).await?;
    match e {
        Some(e)
            if e.organization_id
                .as_ref()
                .is_some_and(|o| p.organization_ids().contains(o)) =>
        {
            Ok(e)
        }
        _ => Err(Error::not_found("event", id)),
    }
}
