//! The agent channel: a node joins once with its join token, then keeps
//! calling `sync` (HTTP long-poll): each call carries the node's status up
//! (and is its heartbeat) and returns the node's desired state as soon as
//! it differs from the generation the agent has, or after `wait_secs`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use shellwego_api::nodes::{AgentDesired, AgentJoin, AgentJoined, AgentSync, SsrfPolicy};
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
    st.changed();
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
    // Subscribed before the generation is read: a change landing between
    // the read and the wait below still wakes the wait at once.
    let mut changes = st.changes.subscribe();
    let bearer = bearer(&headers);
    let (node_id, org, mut generation) =
        node_agents::node_for_credential(&st.store, bearer).await?;
    let back = node_agents::agent_heartbeat(
        &st.store,
        &node_id,
        &org,
        req.memory_available,
        req.internal_ip.as_deref(),
    )
    .await?;
    let changed = crate::service::apps::apply_reports(
        &st.store,
        &node_id,
        &org,
        req.instances.as_deref(),
        req.seq,
        &req.events,
        req.internal_ip.as_deref(),
    )
    .await?;
    for app_id in &changed {
        crate::service::apps::reconcile(&st.store, app_id).await?;
    }
    if back || !changed.is_empty() {
        st.changed();
    }
    if req.generation == generation {
        // Nothing new: hold the call (it is the agent's heartbeat interval)
        // until the node's desired state changes, but never past a third
        // of the liveness timeout, nor a shutdown. Changes made by this
        // process wake it at once; those of other control planes sharing
        // the database are seen within a second.
        let wait = Duration::from_secs(req.wait_secs.unwrap_or(10)).min(st.sync_wait());
        let deadline = tokio::time::Instant::now() + wait;
        let mut stopping = st.stopping.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stopping.wait_for(|s| *s) => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            generation = st.store.node_generation(&node_id).await?;
            if generation != req.generation {
                break;
            }
        }
    }
    let region = st
        .store
        .node(&node_id, std::slice::from_ref(&org))
        .await?
        .map(|n| n.region)
        .unwrap_or_default();
    let instances = crate::service::apps::desired_for_node(&st.store, &node_id, &region).await?;
    let ssrf = st.ssrf.config();
    Ok(Json(AgentDesired {
        generation,
        instances,
        ssrf: SsrfPolicy {
            allow: ssrf.allow.iter().map(ToString::to_string).collect(),
            allow_private_targets: ssrf.allow_private_targets,
        },
    }))
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
    let (_, org, _) = node_agents::node_for_credential(&st.store, bearer(&headers)).await?;
    let not_found = || shellwego_core::Error::not_found("upload", &id);
    if !id.starts_with("upl_") || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(not_found().into());
    }
    if st.store.upload_org(&id).await?.as_deref() != Some(org.as_str()) {
        return Err(not_found().into());
    }
    let f = tokio::fs::File::open(st.uploads_dir.join(&id))
        .await
        .map_err(|_| not_found())?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok(axum::response::Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(shellwego_core::Error::internal)?)
}
