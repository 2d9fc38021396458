//! App metrics.

use axum::extract::State;
use axum::Json;
use shellwego_api::metrics::{AppMetrics, MetricsParams};
use shellwego_api::problem::Problem;
use shellwego_core::Error;

use crate::auth::Principal;
use crate::extract::{PathParam, Query};
use crate::problem::ApiResult;
use crate::state::AppState;

fn params(q: Option<&str>) -> MetricsParams {
    let mut p = MetricsParams::default();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "metric" => p.metric = Some(v),
            "resolution" => p.resolution = Some(v),
            "from" => p.from = Some(v),
            "to" => p.to = Some(v),
            _ => {}
        }
    }
    p
}

/// An app's usage over time: `cpu` (percentage of its instances' CPU
/// allocation, their mean), `memory` (bytes, their sum) and
/// `memory_percent`, `disk` (bytes), `network_rx`/`network_tx` (bytes per
/// second through the instances' own network; none for the process
/// driver), `requests` and `status_2xx`…`status_5xx` (requests through the
/// ingress per point), `latency` (milliseconds to the response head, the
/// mean). Each with its `data_points` (the start of each point's time
/// slot) and `statistics` (min, max, avg, p99 of the points). Samples are
/// taken every 10 s; kept raw for 24 h, then per minute (7 days), hour (90
/// days) and day (a year). Needs `apps:read`.
#[utoipa::path(get, path = "/v1/apps/{app_id}/metrics", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)"), MetricsParams),
    responses(
        (status = 200, body = AppMetrics),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn app_metrics(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
) -> ApiResult<Json<AppMetrics>> {
    let q = params(q.as_deref());
    let r: Result<AppMetrics, Error> =
        crate::service::metrics::app_metrics(&st.ctx, &p, &id, &q, st.ctx.config.metrics).await;
    Ok(Json(r?))
}
