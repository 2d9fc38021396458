//! The agent channel: a node joins once with its join token, then keeps
//! calling `sync` (HTTP long-poll): each call carries the node's status up
//! (and is its heartbeat) and returns the node's desired state as soon as
//! it differs from the generation the agent has, or after `wait_secs`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use shellwego_api::nodes::{AgentDesired, AgentJoin, AgentJoined, AgentSync};
use shellwego_api::problem::Problem;

use crate::auth::ClientIp;
use crate::extract::JsonBody;
use crate::problem::ApiResult;
use crate::service::node_agents;
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
        node_agents::agent_join(&st.store, &req, ip.map(|i| i.to_string())).await?;
    Ok(Json(AgentJoined {
        node_id,
        credential,
        sync_wait_secs: st.sync_wait().as_secs(),
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
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let (node_id, org, generation) = node_agents::node_for_credential(&st.store, bearer).await?;
    node_agents::agent_heartbeat(&st.store, &node_id, &org, req.memory_available).await?;
    if req.generation == generation {
        // Nothing new: hold the call (it is the agent's heartbeat interval),
        // but never past a third of the liveness timeout, nor a shutdown.
        let wait = Duration::from_secs(req.wait_secs.unwrap_or(10)).min(st.sync_wait());
        let mut stopping = st.stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }
    Ok(Json(AgentDesired {
        generation,
        instances: vec![],
    }))
}
