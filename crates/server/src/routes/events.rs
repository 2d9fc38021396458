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

/// Follow events as they happen (Server-Sent Events): each is sent as
/// `event: <type>`, `id: <event id>`, `data: <the event as JSON>`, in the
/// order of the log, with a keep-alive comment every 15 s. Filters as the
/// list: `filter[type]` (`app.*` prefixes), `filter[severity]`,
/// `filter[resource_type]`, `filter[resource_id]`. Reconnect with the
/// `Last-Event-ID` header (or `last_event_id=`) set to the last id
/// received: every event since is sent first, in order, without
/// duplicates. A client that falls more than 1 024 events behind gets a
/// last event `stream.overflow` whose data names the id to resume from,
/// and the stream ends. `max_seconds` ends it after that long (scripts,
/// tests).
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", security(("bearer" = [])),
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (evt_…)"),
        ("last_event_id" = Option<String>, Query, description = "The same, for clients that cannot set the header"),
        ("filter[type]" = Option<String>, Query, description = "Types, comma-separated; `app.*` for a prefix"),
        ("filter[severity]" = Option<String>, Query, description = "info, warning, error, critical"),
        ("filter[resource_type]" = Option<String>, Query, description = "app, node, user, …"),
        ("filter[resource_id]" = Option<String>, Query, description = "One resource's id"),
        ("max_seconds" = Option<u64>, Query, description = "End the stream after this many seconds (1 to 86400); default: never"),
    ),
    responses(
    (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
    (status = 400, body = Problem, content_type = "application/problem+json"),
))]
pub async fn event_stream(
    State(st): State<AppState>,
    p: Principal,
    headers: axum::http::HeaderMap,
    Query(q): Query,
) -> ApiResult<axum::response::Response> {
    use axum::response::sse::{Event as Frame, KeepAlive, Sse};
    use axum::response::IntoResponse;
    use tokio::sync::broadcast::error::RecvError;

    p.authorize("events", "read", None)?;
    let (filter, param_id) = service::events::StreamFilter::parse(&p, q.as_deref())?;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .or(param_id);
    let resume = match &last_id {
        Some(id) => Some(service::events::resume_point(&st.ctx, &p, id).await?),
        None => None,
    };
    let (mut live, now) = st.events.subscribe(&st.ctx).await?;
    let (tx, out) = tokio::sync::mpsc::channel::<Frame>(64);
    let ctx = st.ctx.clone();
    tokio::spawn(async move {
        let frame = |e: &crate::model::Event| {
            let v = view(e.clone());
            Frame::default()
                .event(v.event_type.clone())
                .id(v.id.clone())
                .data(serde_json::to_string(&v).unwrap_or_default())
        };
        // The last number passed on, and the last id delivered.
        let mut sent = resume.unwrap_or(now);
        let mut delivered = last_id;
        if resume.is_some() {
            loop {
                let rows = async {
                    let mut db = ctx.store.conn().await?;
                    shellwego_store::events::after(&mut db, sent, filter.single_org(), 500).await
                };
                let Ok(rows) = rows.await else { return };
                let n = rows.len();
                for r in rows {
                    sent = r.seq;
                    if filter.matches(&r.event) {
                        delivered = Some(r.event.id.clone());
                        if tx.send(frame(&r.event)).await.is_err() {
                            return;
                        }
                    }
                }
                if n < 500 {
                    break;
                }
            }
        }
        let mut stopping = ctx.stopping.clone();
        let end = filter.max_duration.map(|d| tokio::time::Instant::now() + d);
        loop {
            let got = tokio::select! {
                got = live.recv() => got,
                _ = stopping.wait_for(|s| *s) => return,
                _ = tx.closed() => return,
                _ = async {
                    match end {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => return,
            };
            match got {
                Ok(r) if r.seq <= sent => {}
                Ok(r) => {
                    sent = r.seq;
                    if filter.matches(&r.event) {
                        delivered = Some(r.event.id.clone());
                        if tx.send(frame(&r.event)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let data = serde_json::json!({
                        "resume_from": delivered,
                        "reason": "this stream fell behind; reconnect with Last-Event-ID set to resume_from",
                    });
                    let _ = tx
                        .send(
                            Frame::default()
                                .event("stream.overflow")
                                .data(data.to_string()),
                        )
                        .await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    let stream = futures::stream::unfold(out, |mut rx| async move {
        rx.recv()
            .await
            .map(|f| (Ok::<_, std::convert::Infallible>(f), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
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
