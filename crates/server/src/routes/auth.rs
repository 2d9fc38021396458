//! Exchanging credentials for tokens, and revoking tokens.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shellwego_api::auth::LoginRequest;
use shellwego_api::problem::Problem;
use shellwego_api::tokens::TokenCreated;

use crate::auth::{ClientIp, Principal};
use crate::extract::{JsonBody, PathParam};
use crate::problem::ApiResult;
use crate::routes::tokens::created;
use crate::service::identity;
use crate::state::AppState;

/// Log in: exchange email and password (and an MFA code) for a token.
///
/// Wrong email and wrong password give the same 401. After 5 failures for
/// an account (or 20 from an IP) within 15 minutes, attempts get 429 with
/// Retry-After until the window passes. With MFA on and no (valid)
/// `mfa_code`, the 401 problem names the field `mfa_code`.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, body = TokenCreated),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 429, body = Problem, content_type = "application/problem+json"),
))]
pub async fn auth_token_create(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Json<TokenCreated>> {
    let (tok, secret) = identity::login(&st.ctx, ip, &req).await?;
    Ok(Json(created(tok, secret)))
}

/// Revoke a token (yours, or any of your organization's as an admin).
#[utoipa::path(delete, path = "/v1/auth/token/{token_id}", tag = "auth", security(("bearer" = [])),
    params(("token_id" = String, Path, description = "Token id (tok_…)")),
    responses((status = 204, description = "Revoked"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn auth_token_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    identity::token_revoke_any(&st.ctx, &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
