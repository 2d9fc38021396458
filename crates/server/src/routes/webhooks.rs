//! Webhooks and their deliveries.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shellwego_api::problem::Problem;
use shellwego_api::webhooks::{
    Delivery, DeliveryDetail, DeliveryList, RetryPolicy, Webhook, WebhookCreate, WebhookCreated,
    WebhookList, WebhookUpdate,
};
use shellwego_core::model::{DeliveryStatus, WebhookStatus};
use shellwego_core::time::rfc3339;
use shellwego_core::Error;

use crate::auth::Principal;
use crate::extract::{list_params, JsonBody, PathParam, PathParams, Query};
use crate::model;
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service::webhooks::{self as svc, WebhookInfo};
use crate::state::AppState;

/// What a custom header's value is shown as.
const REDACTED: &str = "[redacted]";

fn view(i: WebhookInfo) -> Webhook {
    let w = i.webhook;
    Webhook {
        id: w.id,
        url: w.url,
        events: w.events,
        headers: i
            .header_names
            .into_iter()
            .map(|n| (n, REDACTED.to_string()))
            .collect(),
        retry_policy: RetryPolicy {
            max_retries: u32::try_from(w.max_retries).unwrap_or(0),
            backoff: w.backoff,
        },
        enabled: w.status == WebhookStatus::Active,
        status: w.status,
        disabled_reason: w.disabled_reason,
        failing_since: w.failing_since.map(rfc3339),
        secret_hint: w.secret_hint,
        created_at: rfc3339(w.created_at),
        updated_at: rfc3339(w.updated_at),
    }
}

fn delivery_view(d: model::Delivery) -> Delivery {
    Delivery {
        id: d.id,
        webhook_id: d.webhook_id,
        event_id: d.event_id,
        event_type: d.event_type,
        status: d.status,
        attempts: d.attempts,
        response_code: d.response_code,
        latency_ms: d.latency_ms,
        last_error: d.last_error,
        next_attempt_at: (d.status == DeliveryStatus::Pending).then(|| rfc3339(d.next_attempt_at)),
        created_at: rfc3339(d.created_at),
        delivered_at: d.delivered_at.map(rfc3339),
    }
}

fn detail_view(d: model::Delivery) -> Result<DeliveryDetail, Error> {
    let payload = serde_json::from_str(&d.payload).map_err(|e| {
        Error::internal_source(format!("delivery {}: the payload does not parse", d.id), e)
    })?;
    Ok(DeliveryDetail {
        delivery: delivery_view(d),
        payload,
    })
}

/// Create a webhook. Its deliveries are POSTed to `url` signed with its
/// secret (`X-ShellWeGo-Signature`, `X-ShellWeGo-Signature-256-T`); the
/// secret (generated when not given) is in this response only. A URL the
/// SSRF policy refuses (loopback, private, link-local, metadata addresses,
/// unless the operator allows them) is a 400 naming `url`.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])), request_body = WebhookCreate, responses(
    (status = 201, body = WebhookCreated),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
))]
pub async fn webhook_create(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<WebhookCreate>,
) -> ApiResult<(StatusCode, Json<WebhookCreated>)> {
    let (w, secret) = svc::webhook_create(&st.ctx, &p, &req).await?;
    Ok((
        StatusCode::CREATED,
        Json(WebhookCreated {
            webhook: view(w),
            secret,
        }),
    ))
}

/// List your organization's webhooks.
///
/// Filters: `url`, `status`, `created_at`, `updated_at`, `q` (in the URL).
/// Sorts: the same fields; default `created_at:desc`.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])), params(ListQueryDoc), responses(
    (status = 200, body = WebhookList),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
))]
pub async fn webhook_list(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query,
) -> ApiResult<Json<WebhookList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::webhook_list(&st.ctx, &p, &params).await?;
    Ok(Json(WebhookList {
        data: page.items.into_iter().map(view).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// One webhook (never its secret, nor its headers' values).
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = String, Path, description = "Webhook id (whk_…)")),
    responses(
    (status = 200, body = Webhook),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn webhook_get(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<Webhook>> {
    Ok(Json(view(svc::webhook_get(&st.ctx, &p, &id).await?)))
}

/// Change a webhook: the fields given replace its own. `enabled: true`
/// turns a disabled webhook back on (and forgets its failures);
/// `enabled: false` turns it off and fails its pending deliveries.
#[utoipa::path(patch, path = "/v1/webhooks/{webhook_id}", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = String, Path, description = "Webhook id (whk_…)")), request_body = WebhookUpdate,
    responses(
    (status = 200, body = Webhook),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn webhook_update(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<WebhookUpdate>,
) -> ApiResult<Json<Webhook>> {
    Ok(Json(view(
        svc::webhook_update(&st.ctx, &p, &id, &req).await?,
    )))
}

/// Delete a webhook and its deliveries; nothing more is sent to it.
#[utoipa::path(delete, path = "/v1/webhooks/{webhook_id}", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = String, Path, description = "Webhook id (whk_…)")),
    responses(
    (status = 204, description = "Deleted"),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn webhook_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    svc::webhook_delete(&st.ctx, &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a `ping` to the webhook now (`type: ping`, `data.webhook_id`),
/// signed like every delivery; the answer is the new delivery, to follow
/// with `GET …/deliveries/{delivery_id}`. A disabled webhook is a 409.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/test", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = String, Path, description = "Webhook id (whk_…)")),
    responses(
    (status = 202, description = "The ping is queued", body = Delivery),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "The webhook is disabled", body = Problem, content_type = "application/problem+json"),
))]
pub async fn webhook_test(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<(StatusCode, Json<Delivery>)> {
    let d = svc::webhook_test(&st.ctx, &p, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_view(d))))
}

/// List a webhook's deliveries, newest first: status (`pending`,
/// `succeeded`, `failed`), attempts, the last answer's code and latency,
/// the last error, and when the next attempt is due.
///
/// Filters: `status`, `event_type` (`app.*` prefixes), `event_id`,
/// `attempts`, `response_code`, `created_at`, `next_attempt_at`,
/// `delivered_at`. Sorts: the same fields but `event_id`.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = String, Path, description = "Webhook id (whk_…)"), ListQueryDoc),
    responses(
    (status = 200, body = DeliveryList),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn delivery_list(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
) -> ApiResult<Json<DeliveryList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::delivery_list(&st.ctx, &p, &id, &params).await?;
    Ok(Json(DeliveryList {
        data: page.items.into_iter().map(delivery_view).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// One delivery, with the body it sends.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = String, Path, description = "Webhook id (whk_…)"), ("delivery_id" = String, Path, description = "Delivery id (whd_…)")),
    responses(
    (status = 200, body = DeliveryDetail),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn delivery_get(
    State(st): State<AppState>,
    p: Principal,
    PathParams((webhook_id, delivery_id)): PathParams<(String, String)>,
) -> ApiResult<Json<DeliveryDetail>> {
    let d = svc::delivery_get(&st.ctx, &p, &webhook_id, &delivery_id).await?;
    Ok(Json(detail_view(d)?))
}

/// Send a delivery again: the same delivery id and body, pending and due
/// now, its attempts counted from zero under the webhook's retry policy. A
/// delivery being sent at this moment, or a disabled webhook, is a 409.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = String, Path, description = "Webhook id (whk_…)"), ("delivery_id" = String, Path, description = "Delivery id (whd_…)")),
    responses(
    (status = 202, description = "Queued again", body = Delivery),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "Being sent right now, or the webhook is disabled", body = Problem, content_type = "application/problem+json"),
))]
pub async fn delivery_redeliver(
    State(st): State<AppState>,
    p: Principal,
    PathParams((webhook_id, delivery_id)): PathParams<(String, String)>,
) -> ApiResult<(StatusCode, Json<Delivery>)> {
    let d = svc::delivery_redeliver(&st.ctx, &p, &webhook_id, &delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_view(d))))
}
