//! Deployments: deploy an app, list and read deployments, roll back, and
//! read (or follow) a deployment's step log.

use std::convert::Infallible;
use std::time::Duration;

use crate::model;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use shellwego_api::deployments::{
    DeployAccepted, DeployRequest, Deployment, DeploymentList, DeploymentMetrics, Progress,
    RollbackRequest, Stage,
};
use shellwego_api::problem::Problem;
use shellwego_core::model::{DeploymentStatus, Stage as CoreStage, StageStatus};
use shellwego_core::time::{from_micros, now, rfc3339, to_micros};
use shellwego_core::Error;

use crate::auth::Principal;
use crate::extract::{list_params, JsonBody, OptionalJsonBody, PathParam, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service::deployments as svc;
use crate::state::AppState;

fn time(t: i64) -> String {
    rfc3339(from_micros(t))
}

pub fn view(d: model::Deployment) -> Deployment {
    let stages = d.stages;
    let logs_url = format!("/v1/deployments/{}/logs", d.id);
    let completed = stages
        .iter()
        .filter(|s| s.status == StageStatus::Completed)
        .count() as i64;
    let current = stages
        .iter()
        .find(|s| s.status != StageStatus::Completed)
        .map_or(CoreStage::Completed, |s| s.name)
        .to_string();
    let started = d.started_at.unwrap_or(d.created_at);
    let pulled = stages
        .iter()
        .find(|s| s.name == CoreStage::PullingImage)
        .and_then(|s| s.completed_at);
    let end = d.finished_at.unwrap_or_else(|| to_micros(now()));
    Deployment {
        id: d.id,
        app_id: d.app_id,
        status_reason: d.reason.filter(|_| match d.status {
            DeploymentStatus::Failed
            | DeploymentStatus::RolledBack
            | DeploymentStatus::Cancelled => true,
            DeploymentStatus::InProgress | DeploymentStatus::Successful => false,
        }),
        status: d.status,
        version: crate::controller::rollout::version_label(d.version),
        image: d.image,
        strategy: d.strategy,
        initiated_by: d.initiated_by,
        progress: Progress {
            total_steps: stages.len() as i64,
            completed_steps: completed,
            current_step: current,
        },
        stages: stages
            .into_iter()
            .map(|s| Stage {
                name: s.name,
                status: s.status,
                started_at: s.started_at.map(time),
                completed_at: s.completed_at.map(time),
                reason: s.reason,
                logs_url: Some(logs_url.clone()),
            })
            .collect(),
        metrics: DeploymentMetrics {
            build_time_ms: pulled.map(|p| (p - started) / 1000),
            deploy_time_ms: Some((end - started) / 1000),
        },
        rollback_target: d.rollback_target,
        previous_version: d
            .from_version
            .map(crate::controller::rollout::version_label),
        created_at: time(d.created_at),
        completed_at: d.finished_at.map(time),
    }
}

/// Deploy: a new release of the app (a new `image`, a new tarball
/// `source`, or the same one again) rolled out with `strategy`
/// (`blue-green` by default when the image changes, else `rolling`). A
/// deployment in progress is superseded. Answers 202 at once; follow it at
/// `GET /v1/deployments/{id}`.
#[utoipa::path(post, path = "/v1/apps/{app_id}/deploy", tag = "deployments", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)")), request_body = DeployRequest,
    responses((status = 202, body = DeployAccepted), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_deploy(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<DeployRequest>,
) -> ApiResult<(StatusCode, Json<DeployAccepted>)> {
    let d = svc::app_deploy(&st.ctx, &p, &id, &req).await?;
    let v = view(d);
    Ok((
        StatusCode::ACCEPTED,
        Json(DeployAccepted {
            deployment_id: v.id,
            status: v.status,
            progress: v.progress,
        }),
    ))
}

/// An app's deployments, newest first.
#[utoipa::path(get, path = "/v1/apps/{app_id}/deployments", tag = "deployments", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)"), ListQueryDoc),
    responses((status = 200, body = DeploymentList), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn deployment_list(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
) -> ApiResult<Json<DeploymentList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::deployment_list(&st.ctx, &p, &id, &params).await?;
    Ok(Json(DeploymentList {
        data: page.items.into_iter().map(view).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// A deployment with its stages and progress.
#[utoipa::path(get, path = "/v1/deployments/{deployment_id}", tag = "deployments", security(("bearer" = [])),
    params(("deployment_id" = String, Path, description = "Deployment id (dep_…)")),
    responses((status = 200, body = Deployment), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn deployment_get(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<Deployment>> {
    Ok(Json(view(svc::deployment_get(&st.ctx, &p, &id).await?)))
}

/// Roll back to this deployment: a new deployment of its release (the same
/// spec and image digest); `immediate` starts the whole set and switches
/// when it is healthy, `gradual` rolls one instance at a time.
#[utoipa::path(post, path = "/v1/deployments/{deployment_id}/actions/rollback", tag = "deployments", security(("bearer" = [])),
    params(("deployment_id" = String, Path, description = "Deployment id (dep_…)")), request_body(content = Option<RollbackRequest>),
    responses((status = 202, body = DeployAccepted), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn deployment_rollback(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    OptionalJsonBody(req): OptionalJsonBody<RollbackRequest>,
) -> ApiResult<(StatusCode, Json<DeployAccepted>)> {
    let d = svc::deployment_rollback(&st.ctx, &p, &id, &req).await?;
    let v = view(d);
    Ok((
        StatusCode::ACCEPTED,
        Json(DeployAccepted {
            deployment_id: v.id,
            status: v.status,
            progress: v.progress,
        }),
    ))
}

/// Promote: a canary goes to 100% now (skipping its remaining steps and
/// pauses); a blue-green deployment past its switch stops the old set now.
#[utoipa::path(post, path = "/v1/deployments/{deployment_id}/actions/promote", tag = "deployments", security(("bearer" = [])),
    params(("deployment_id" = String, Path, description = "Deployment id (dep_…)")),
    responses((status = 200, body = Deployment), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn deployment_promote(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<Deployment>> {
    let d = svc::deployment_promote(&st.ctx, &p, &id).await?;
    Ok(Json(view(d)))
}

/// The deployment's step log as text lines (`<time> <message>`); with
/// `follow=true`, a server-sent event stream that ends with the deployment.
#[utoipa::path(get, path = "/v1/deployments/{deployment_id}/logs", tag = "deployments", security(("bearer" = [])),
    params(("deployment_id" = String, Path, description = "Deployment id (dep_…)"),
        ("follow" = Option<bool>, Query, description = "Stream new lines (SSE) until the deployment ends")),
    responses((status = 200, description = "text/plain lines, or text/event-stream with follow=true",
            content((String = "text/plain"), (shellwego_api::deployments::DeploymentLogEvent = "text/event-stream"))),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn deployment_logs(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
) -> ApiResult<Response> {
    let params = list_params(q.as_deref(), &["follow"])?;
    let follow = match params.extra("follow") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(Error::field("follow", "invalid_value", "must be true or false").into())
        }
    };
    let d = svc::deployment_get(&st.ctx, &p, &id).await?;
    let line = |l: &model::LogLine| format!("{} {}", time(l.at), l.message);
    if !follow {
        let lines = svc::deployment_log(&st.ctx, &d, 0).await?;
        let mut body: String = lines.iter().map(|l| line(l) + "\n").collect();
        if body.is_empty() {
            body.push('\n');
        }
        return Ok(([("content-type", "text/plain; charset=utf-8")], body).into_response());
    }
    let ctx = st.ctx.clone();
    let stream = futures::stream::unfold((0i64, false), move |(seq, done)| {
        let (ctx, d, p) = (ctx.clone(), d.clone(), p.clone());
        async move {
            if done {
                return None;
            }
            loop {
                let lines = svc::deployment_log(&ctx, &d, seq).await.unwrap_or_default();
                if let Some(l) = lines.first() {
                    let ev = Event::default().id(l.seq.to_string()).data(line(l));
                    return Some((Ok::<_, Infallible>(ev), (l.seq, false)));
                }
                let finished = svc::deployment_ended(&ctx, &p, &d.id).await;
                if finished {
                    let ev = Event::default()
                        .event("end")
                        .data("the deployment has ended");
                    return Some((Ok(ev), (seq, true)));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    Ok(Sse::new(stream).into_response())
}
