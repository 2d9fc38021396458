//! The calling user.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shellwego_api::mfa::{MfaCode, MfaConfirmed, MfaEnrollment};
use shellwego_api::problem::Problem;
use shellwego_api::user::{ApiQuotas, CurrentUser, UserOrganization, UserUpdate};

use crate::extract::JsonBody;
use crate::service::identity;

use crate::auth::Principal;
use crate::problem::ApiResult;
use crate::service;
use crate::state::AppState;

/// Get the current user.
#[utoipa::path(get, path = "/v1/user", tag = "users", security(("bearer" = [])), responses(
    (status = 200, body = CurrentUser),
    (status = 401, body = shellwego_api::problem::Problem, content_type = "application/problem+json"),
))]
pub async fn user_get(State(st): State<AppState>, p: Principal) -> ApiResult<Json<CurrentUser>> {
    let (user, orgs) = service::identity::user_current(&st.ctx, &p).await?;
    let plan = service::identity::plan_of(&p);
    Ok(Json(CurrentUser {
        id: user.id,
        email: user.email,
        name: user.name,
        avatar_url: user.avatar_url,
        mfa_enabled: user.mfa_enabled,
        organizations: orgs
            .into_iter()
            .map(|m| UserOrganization {
                id: m.organization.id,
                name: m.organization.name,
                role: m.role,
            })
            .collect(),
        api_quotas: ApiQuotas {
            requests_per_minute: plan.rate_quota().per_minute,
            apps_limit: plan.apps_limit(),
        },
    }))
}

/// Update the current user: name, avatar_url, password (needs the current
/// one; ends your other sessions).
#[utoipa::path(patch, path = "/v1/user", tag = "users", security(("bearer" = [])), request_body = UserUpdate, responses(
    (status = 200, body = CurrentUser),
    (status = 400, body = Problem, content_type = "application/problem+json"),
))]
pub async fn user_update(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<UserUpdate>,
) -> ApiResult<Json<CurrentUser>> {
    identity::user_update(&st.ctx, &p, &req).await?;
    user_get(State(st), p).await
}

/// Start MFA enrollment: a TOTP secret for an authenticator app.
#[utoipa::path(post, path = "/v1/user/mfa", tag = "users", security(("bearer" = [])), responses(
    (status = 200, body = MfaEnrollment),
    (status = 409, body = Problem, content_type = "application/problem+json"),
))]
pub async fn mfa_enroll(
    State(st): State<AppState>,
    p: Principal,
) -> ApiResult<Json<MfaEnrollment>> {
    let (secret, otpauth_uri) = identity::mfa_enroll(&st.ctx, &p).await?;
    Ok(Json(MfaEnrollment {
        secret,
        otpauth_uri,
    }))
}

/// Confirm MFA enrollment with a code; returns 10 one-time recovery codes.
#[utoipa::path(post, path = "/v1/user/mfa/confirm", tag = "users", security(("bearer" = [])), request_body = MfaCode, responses(
    (status = 200, body = MfaConfirmed),
    (status = 400, body = Problem, content_type = "application/problem+json"),
))]
pub async fn mfa_confirm(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<MfaCode>,
) -> ApiResult<Json<MfaConfirmed>> {
    let recovery_codes = identity::mfa_confirm(&st.ctx, &p, &req.code).await?;
    Ok(Json(MfaConfirmed {
        mfa_enabled: true,
        recovery_codes,
    }))
}

/// Turn MFA off, with a current code or a recovery code.
#[utoipa::path(post, path = "/v1/user/mfa/disable", tag = "users", security(("bearer" = [])), request_body = MfaCode, responses(
    (status = 204, description = "MFA is off"),
    (status = 400, body = Problem, content_type = "application/problem+json"),
))]
pub async fn mfa_disable(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<MfaCode>,
) -> ApiResult<StatusCode> {
    identity::mfa_disable(&st.ctx, &p, &req.code).await?;
    Ok(StatusCode::NO_CONTENT)
}
