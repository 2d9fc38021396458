//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use shellwego_api::{Health, Readiness};

use crate::problem::ApiResult;
use crate::state::AppState;

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database is reachable (503 when it is not); which
/// controllers this replica leads.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, body = Readiness),
    (status = 503, body = shellwego_api::problem::Problem, content_type = "application/problem+json"),
))]
pub async fn readyz(State(st): State<AppState>) -> ApiResult<Json<Readiness>> {
    Ok(Json(crate::service::health::ready(&st.ctx).await?))
}

/// Prometheus metrics (OpenMetrics text): request count and latency by
/// route template and status, the controllers this replica leads, log
/// follows held; and per app (every organization's: protect this route
/// at the network) its latest CPU (`shellwego_app_cpu_percent`, of its
/// allocation) and memory (`shellwego_app_memory_bytes`).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let mut text = st
        .metrics
        .render(&crate::service::health::leadership(&st.ctx));
    let apps = crate::service::metrics::latest_by_app(&st.ctx).await;
    if let Ok(apps) = apps {
        let body = text.strip_suffix("# EOF\n").unwrap_or(&text).to_string();
        text = body + &crate::service::metrics::exposition(&apps) + "# EOF\n";
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
