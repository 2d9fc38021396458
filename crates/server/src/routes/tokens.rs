//! The calling user's API tokens.

use crate::model::Token;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shellwego_api::problem::Problem;
use shellwego_api::tokens::{
    TokenCreateRequest, TokenCreated, TokenInfo, TokenList, TokenPermissions,
};
use shellwego_core::time::rfc3339;

use crate::auth::Principal;
use crate::extract::{list_params, JsonBody, PathParam, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service;
use crate::state::AppState;

fn info(t: Token) -> TokenInfo {
    TokenInfo {
        id: t.id,
        name: t.name,
        token_type: t.kind.as_str().into(),
        scope: t.scope,
        restrict_to_apps: t.restrict_to_apps,
        hint: t.hint,
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        last_used_at: t.last_used_at.map(rfc3339),
    }
}

/// Generate an API token. The token is in this response only.
#[utoipa::path(post, path = "/v1/user/tokens", tag = "users", security(("bearer" = [])), request_body = TokenCreateRequest, responses(
    (status = 201, body = TokenCreated),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
))]
pub async fn token_create(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<TokenCreateRequest>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let (t, secret) = service::tokens::token_create(&st.ctx, &p, &req).await?;
    Ok((StatusCode::CREATED, Json(created(t, secret))))
}

/// The one-time view of a new (or rotated) token.
pub(crate) fn created(t: Token, secret: String) -> TokenCreated {
    let resources = if t.restrict_to_apps.is_empty() {
        vec!["*".to_string()]
    } else {
        t.restrict_to_apps
            .iter()
            .map(|a| format!("app:{a}"))
            .collect()
    };
    let mut actions: Vec<String> = t
        .scope
        .iter()
        .filter_map(|s| s.split_once(':').map(|(_, a)| a.to_string()))
        .collect();
    actions.sort();
    actions.dedup();
    if t.scope.is_empty() {
        actions = vec!["*".into()];
    }
    TokenCreated {
        id: t.id,
        name: t.name,
        token: secret,
        token_type: t.kind.as_str().into(),
        expires_at: t.expires_at.map(rfc3339),
        scope: t.scope,
        restrict_to_apps: t.restrict_to_apps,
        permissions: TokenPermissions { resources, actions },
    }
}

/// Rotate a personal access token: a new secret, the old one stops working.
#[utoipa::path(post, path = "/v1/user/tokens/{token_id}/rotate", tag = "users", security(("bearer" = [])),
    params(("token_id" = String, Path, description = "Token id (tok_…)")),
    responses((status = 200, body = TokenCreated), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Rotated or revoked by a concurrent request", body = Problem, content_type = "application/problem+json")))]
pub async fn token_rotate(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<TokenCreated>> {
    let (t, secret) = crate::service::identity::token_rotate(&st.ctx, &p, &id).await?;
    Ok(Json(created(t, secret)))
}

/// List the calling user's API tokens.
///
/// Filters: `name`, `type`, `created_at`, `expires_at`, `last_used_at`, `q`.
/// Sorts: the same fields.
#[utoipa::path(get, path = "/v1/user/tokens", tag = "users", security(("bearer" = [])), params(ListQueryDoc), responses(
    (status = 200, body = TokenList),
    (status = 400, body = Problem, content_type = "application/problem+json"),
))]
pub async fn token_list(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query,
) -> ApiResult<Json<TokenList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = service::tokens::token_list(&st.ctx, &p, &params).await?;
    Ok(Json(TokenList {
        data: page.items.into_iter().map(info).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// Revoke an API token. It stops working at once.
#[utoipa::path(delete, path = "/v1/user/tokens/{token_id}", tag = "users", security(("bearer" = [])),
    params(("token_id" = String, Path, description = "Token id (tok_…)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn token_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    service::tokens::token_revoke(&st.ctx, &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
