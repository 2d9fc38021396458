//! The agent channel's routes (see `crate::service::agent_channel`): the
//! internal agent protocol, documented apart from `/v1`
//! (`openapi/agent-api.json`) and versioned by
//! [`shellwego_api::agent::PROTOCOL_VERSION`]. Every route first checks the
//! version the agent names in the `ShellWeGo-Agent-Protocol` header.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::Json;
use shellwego_api::agent::{
    AgentDesired, AgentJoin, AgentJoined, AgentSync, ResolveAnswer, ResolveRequest,
    PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use shellwego_api::problem::Problem;
use shellwego_core::{Error, FieldError};

use crate::auth::ClientIp;
use crate::extract::JsonBody;
use crate::problem::{ApiError, ApiResult};
use crate::service::agent_channel;
use crate::state::AppState;

/// The agent channel's routes that authenticate a node credential
/// themselves (not user tokens; no API rate limit).
pub(crate) fn node_authenticated(path: &str) -> bool {
    path == "/v1/agent/sync"
        || path == "/v1/agent/resolve"
        || path.starts_with("/v1/agent/uploads/")
        || (path.starts_with("/v1/agent/tasks/") && path.ends_with("/result"))
        || path == "/v1/agent/logs"
        || path.starts_with("/v1/agent/exec/")
}

/// The agent protocol version a call is made in: its
/// `ShellWeGo-Agent-Protocol` header, 1 when there is none (agents older
/// than the header). A version this control plane does not speak is a 400
/// naming the header, before anything else of the call is read.
pub struct AgentProtocol;

impl<S: Send + Sync> FromRequestParts<S> for AgentProtocol {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        check_protocol(&parts.headers).map_err(ApiError)
    }
}

fn check_protocol(headers: &HeaderMap) -> Result<AgentProtocol, Error> {
    let Some(value) = headers.get(PROTOCOL_HEADER) else {
        return Ok(AgentProtocol);
    };
    let text = String::from_utf8_lossy(value.as_bytes()).trim().to_string();
    let problem = |message: String| {
        Error::invalid(vec![FieldError::new(
            PROTOCOL_HEADER,
            "unsupported_version",
            message,
        )
        .with_value(text.clone())])
    };
    match text.parse::<u32>() {
        Ok(v) if v == PROTOCOL_VERSION => Ok(AgentProtocol),
        Ok(v) => Err(problem(format!(
            "this control plane speaks agent protocol {PROTOCOL_VERSION}, not {v}: run an agent of the control plane's version"
        ))),
        Err(_) => Err(problem(format!(
            "must be an agent protocol version number; this control plane speaks {PROTOCOL_VERSION}"
        ))),
    }
}

/// Exchange a join token for the node's credential (`nsec_…`).
#[utoipa::path(post, path = "/v1/agent/join", tag = "agent", request_body = AgentJoin,
    params(("ShellWeGo-Agent-Protocol" = Option<u32>, Header, description = "The agent protocol version the agent speaks (absent: 1).")),
    responses(
    (status = 200, body = AgentJoined),
    (status = 401, body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_join(
    _: AgentProtocol,
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
#[utoipa::path(post, path = "/v1/agent/sync", tag = "agent", security(("bearer" = [])), request_body = AgentSync,
    params(("ShellWeGo-Agent-Protocol" = Option<u32>, Header, description = "The agent protocol version the agent speaks (absent: 1).")),
    responses(
    (status = 200, body = AgentDesired),
    (status = 401, body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_sync(
    _: AgentProtocol,
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<AgentSync>,
) -> ApiResult<Json<AgentDesired>> {
    Ok(Json(
        agent_channel::agent_sync(&st.ctx, bearer(&headers), &req).await?,
    ))
}

/// The agent's answer to a task it was handed (`AgentDesired.tasks`).
#[utoipa::path(post, path = "/v1/agent/tasks/{task_id}/result", tag = "agent", security(("bearer" = [])), request_body = shellwego_api::agent::AgentTaskResult,
    params(
        ("task_id" = String, Path, description = "Task id (tsk_…)"),
        ("ShellWeGo-Agent-Protocol" = Option<u32>, Header, description = "The agent protocol version the agent speaks (absent: 1)."),
    ),
    responses(
    (status = 204, description = "Recorded"),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "No such task of this node waits for an answer", body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_task_result(
    _: AgentProtocol,
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::extract::PathParam(id): crate::extract::PathParam,
    JsonBody(req): JsonBody<shellwego_api::agent::AgentTaskResult>,
) -> ApiResult<axum::http::StatusCode> {
    agent_channel::agent_task_result(&st.ctx, bearer(&headers), &id, &req).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// New output lines of an app for a follow the control plane holds
/// (`AgentDesired.log_follows`).
#[utoipa::path(post, path = "/v1/agent/logs", tag = "agent", security(("bearer" = [])), request_body = shellwego_api::logs::LogPush,
    params(
        ("ShellWeGo-Agent-Protocol" = Option<u32>, Header, description = "The agent protocol version the agent speaks (absent: 1)."),
    ),
    responses(
    (status = 204, description = "Passed on to the follow's holder"),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "The follow is over: stop pushing for it", body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_log_push(
    _: AgentProtocol,
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<shellwego_api::logs::LogPush>,
) -> ApiResult<axum::http::StatusCode> {
    agent_channel::agent_log_push(&st.ctx, bearer(&headers), &req).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// An interactive exec session's input (`AgentDesired.tasks` of kind
/// `exec_session`): the frames after `after`, held up to 10 s until there
/// are some; `closed` once the client has gone (end the command).
#[utoipa::path(get, path = "/v1/agent/exec/{session_id}/input", tag = "agent", security(("bearer" = [])),
    params(
        ("session_id" = String, Path, description = "Session id (exs_…)"),
        ("after" = Option<i64>, Query, description = "The last input frame the agent has (default 0)"),
        ("ShellWeGo-Agent-Protocol" = Option<u32>, Header, description = "The agent protocol version the agent speaks (absent: 1)."),
    ),
    responses(
    (status = 200, body = shellwego_api::exec::ExecInput),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_exec_input(
    _: AgentProtocol,
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::extract::PathParam(id): crate::extract::PathParam,
    crate::extract::Query(q): crate::extract::Query,
) -> ApiResult<Json<shellwego_api::exec::ExecInput>> {
    let after = form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "after")
        .map(|(_, v)| {
            v.parse::<i64>().map_err(|_| {
                shellwego_core::Error::field("after", "invalid_value", "a frame number")
            })
        })
        .transpose()?
        .unwrap_or(0);
    Ok(Json(
        crate::service::exec_session::agent_input(&st.ctx, bearer(&headers), &id, after).await?,
    ))
}

/// An interactive exec session's output frames, in order (the last with
/// `end`).
#[utoipa::path(post, path = "/v1/agent/exec/{session_id}/output", tag = "agent", security(("bearer" = [])), request_body = shellwego_api::exec::ExecOutput,
    params(
        ("session_id" = String, Path, description = "Session id (exs_…)"),
        ("ShellWeGo-Agent-Protocol" = Option<u32>, Header, description = "The agent protocol version the agent speaks (absent: 1)."),
    ),
    responses(
    (status = 204, description = "Passed on to the client"),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "The session is over: end the command", body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_exec_output(
    _: AgentProtocol,
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::extract::PathParam(id): crate::extract::PathParam,
    JsonBody(req): JsonBody<shellwego_api::exec::ExecOutput>,
) -> ApiResult<axum::http::StatusCode> {
    crate::service::exec_session::agent_output(&st.ctx, bearer(&headers), &id, &req).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
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

/// What an internal DNS name (`<app>.internal`) stands for, asked on behalf
/// of one of the node's instances: the healthy instances of that app in the
/// node's organization.
#[utoipa::path(post, path = "/v1/agent/resolve", tag = "agent", security(("bearer" = [])), request_body = ResolveRequest,
    params(("ShellWeGo-Agent-Protocol" = Option<u32>, Header, description = "The agent protocol version the agent speaks (absent: 1).")),
    responses(
    (status = 200, body = ResolveAnswer),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn agent_resolve(
    _: AgentProtocol,
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ResolveRequest>,
) -> ApiResult<Json<ResolveAnswer>> {
    Ok(Json(
        agent_channel::agent_resolve(&st.ctx, bearer(&headers), &req).await?,
    ))
}

/// Download an uploaded archive for an instance of the node's organization.
#[utoipa::path(get, path = "/v1/agent/uploads/{upload_id}", tag = "agent", security(("bearer" = [])),
    params(("upload_id" = String, Path, description = "Upload id (upl_…)"),
        ("ShellWeGo-Agent-Protocol" = Option<u32>, Header, description = "The agent protocol version the agent speaks (absent: 1).")),
    responses((status = 200, description = "The archive", content_type = "application/octet-stream"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn agent_upload_get(
    _: AgentProtocol,
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::extract::PathParam(id): crate::extract::PathParam,
) -> ApiResult<axum::response::Response> {
    let (bytes, len) = agent_channel::agent_upload(&st.ctx, bearer(&headers), &id).await?;
    let body = axum::body::Body::from_stream(bytes);
    Ok(axum::response::Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(shellwego_core::Error::internal)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: Option<&str>) -> Result<AgentProtocol, Error> {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(PROTOCOL_HEADER, v.parse().unwrap());
        }
        check_protocol(&h)
    }

    #[test]
    fn the_protocol_header_is_1_or_absent() {
        assert!(with(None).is_ok());
        assert!(with(Some("1")).is_ok());
        assert!(with(Some(" 1 ")).is_ok());
        for bad in ["2", "0", "one", ""] {
            let Err(Error::Validation { detail, errors }) = with(Some(bad)) else {
                panic!("{bad} is accepted");
            };
            assert!(detail.contains(PROTOCOL_HEADER), "{detail}");
            assert_eq!(errors[0].field, PROTOCOL_HEADER);
        }
    }
}
