//! The calling user.

use axum::extract::State;
use axum::Json;
use shellwego_api::user::{ApiQuotas, CurrentUser, UserOrganization};

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
    let (user, orgs) = service::user_current(&st.store, &p).await?;
    let plan = service::plan_of(&p);
    Ok(Json(CurrentUser {
        id: user.id,
        email: user.email,
        name: user.name,
        avatar_url: user.avatar_url,
        mfa_enabled: user.mfa_enabled,
        organizations: orgs
            .into_iter()
            .map(|(o, role)| UserOrganization {
                id: o.id,
                name: o.name,
                role,
            })
            .collect(),
        api_quotas: ApiQuotas {
            requests_per_minute: plan.rate_quota().per_minute,
            apps_limit: plan.apps_limit(),
        },
    }))
}
