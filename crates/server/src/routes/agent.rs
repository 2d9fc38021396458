//! The agent channel's routes (see `crate::service::agent_channel`).

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use shellwego_api::agent::{AgentDesired, AgentJoin, AgentJoined, AgentSync};
use shellwego_api::problem::Problem;

use crate::auth::ClientIp;
use crate::extract::JsonBody;
use crate::problem::ApiResult;
use crate::service::agent_channel;
use crate::state::AppState;

/// Exchange a join token for the node's credential (`nsec_…`).
#[utoipa::path(post, path = "/v1/agent/join", tag = "agent", request_body = AgentJoin, responses(
    (status = 200, body = AgentJoined),
    (status = 401, body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_join(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<AgentJoin>,
) -> ApiResult<Json<AgentJoined>> {
    let (node_id, credential) =
        agent_channel::agent_join(&st.ctx, &req, ip.map(|i| i.to_string())).await?;
    Ok(Json(AgentJoined {
        node_id,
        credential,
        sync_wait_secs: st.ctx.sync_wait().as_secs(),
    }))
}

/// Report status and receive the desired state (long-poll). Authenticated
/// with the node credential.
#[utoipa::path(post, path = "/v1/agent/sync", tag = "agent", security(("bearer" = [])), request_body = AgentSync, responses(
    (status = 200, body = AgentDesired),
    (status = 401, body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_sync(
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<AgentSync>,
) -> ApiResult<Json<AgentDesired>> {
    Ok(Json(
        agent_channel::agent_sync(&st.ctx, bearer(&headers), &req).await?,
    ))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Download an uploaded archive for an instance of the node's organization.
#[utoipa::path(get, path = "/v1/agent/uploads/{upload_id}", tag = "agent", security(("bearer" = [])),
    params(("upload_id" = String, Path, description = "Upload id (upl_…)")),
    responses((status = 200, description = "The archive", content_type = "application/octet-stream"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn agent_upload_get(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::extract::PathParam(id): crate::extract::PathParam,
) -> ApiResult<axum::response::Response> {
    let (f, len) = agent_channel::agent_upload(&st.ctx, bearer(&headers), &id).await?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok(axum::response::Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(shellwego_core::Error::internal)?)
}
