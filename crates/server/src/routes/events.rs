//! The audit trail.

use axum::extract::State;
use axum::Json;
use shellwego_api::events::{Event, EventActor, EventList, EventResource};
use shellwego_api::problem::Problem;
use shellwego_core::time::rfc3339;

use crate::auth::Principal;
use crate::extract::{list_params, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service;
use crate::state::AppState;

fn view(e: crate::model::Event) -> Event {
    Event {
        id: e.id,
        event_type: e.event_type,
        severity: e.severity.as_str().into(),
        actor: EventActor {
            kind: e.actor.kind,
            id: e.actor.id,
            ip: e.actor.ip,
        },
        resource: EventResource {
            kind: e.resource_type,
            id: e.resource_id,
        },
        metadata: e.metadata,
        timestamp: rfc3339(e.timestamp),
    }
}

/// List events of your organizations, newest first.
///
/// Filters: `type` (`app.*`: every type starting with `app.`), `severity`, `resource_type`, `resource_id`,
/// `resource.type`, `resource.id`, `actor.type`, `actor.id`,
/// `organization_id`, `timestamp` (ranges), `q`. Default sort `timestamp:desc`.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])), params(ListQueryDoc), responses(
    (status = 200, body = EventList),
    (status = 400, body = Problem, content_type = "application/problem+json"),
))]
pub async fn event_list(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query,
) -> ApiResult<Json<EventList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = service::events::event_list(&st.ctx, &p, &params).await?;
    Ok(Json(EventList {
        data: page.items.into_iter().map(view).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// One event of your organizations.
#[utoipa::path(get, path = "/v1/events/{event_id}", tag = "events", security(("bearer" = [])),
    params(("event_id" = String, Path, description = "Event id (evt_…)")),
    responses(
    (status = 200, body = Event),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn event_get(
    State(st): State<AppState>,
    p: Principal,
    crate::extract::PathParam(id): crate::extract::PathParam,
) -> ApiResult<Json<Event>> {
    Ok(Json(view(
        service::events::event_get(&st.ctx, &p, &id).await?,
    )))
}

/// The latest events about one app (newest first, at most 20), for
/// `include=events`; empty when the caller may not read events.
pub(crate) async fn app_events(
    st: &AppState,
    p: &Principal,
    app_id: &str,
) -> Result<Vec<Event>, shellwego_core::Error> {
    if p.authorize("events", "read", None).is_err() {
        return Ok(vec![]);
    }
    let q = format!("filter[resource_id]={app_id}&limit=20&sort=timestamp:desc");
    let params = shellwego_core::list::ListParams::parse(&q, &[])?;
    let page = service::events::event_list(&st.ctx, p, &params).await?;
    Ok(page.items.into_iter().map(view).collect())
}
