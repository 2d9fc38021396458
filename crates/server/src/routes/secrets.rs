//! Secrets: values go in, metadata comes out.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shellwego_api::problem::Problem;
use shellwego_api::secrets::{
    Secret, SecretCreate, SecretList, SecretScope, SecretVersion, SecretVersionCreate,
};
use shellwego_core::time::rfc3339;

use crate::auth::Principal;
use crate::extract::{list_params, JsonBody, PathParam, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service::secrets::{self as svc, Detailed};
use crate::state::AppState;

fn view(d: Detailed) -> Secret {
    let s = d.secret;
    Secret {
        id: s.id,
        name: s.name,
        scope: if s.scope == "app" {
            SecretScope::App
        } else {
            SecretScope::Organization
        },
        app_id: s.app_id,
        version: s.version,
        versions: d
            .versions
            .into_iter()
            .map(|v| SecretVersion {
                version: v.version,
                created_at: rfc3339(v.created_at),
                created_by: v.created_by,
            })
            .collect(),
        last_used: s.last_used.map(rfc3339),
        expires_at: s.expires_at.map(rfc3339),
        created_at: rfc3339(s.created_at),
    }
}

/// Create a secret. Its value is encrypted at rest and never returned; the
/// apps it reaches (every app of the organization, or its one app) roll to
/// a release that has it in their environment.
#[utoipa::path(post, path = "/v1/secrets", tag = "secrets", security(("bearer" = [])), request_body = SecretCreate, responses(
    (status = 201, body = Secret),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "A secret of that name exists in that scope", body = Problem, content_type = "application/problem+json"),
))]
pub async fn secret_create(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<SecretCreate>,
) -> ApiResult<(StatusCode, Json<Secret>)> {
    let d = svc::secret_create(&st.ctx, &p, &req).await?;
    Ok((StatusCode::CREATED, Json(view(d))))
}

/// List the organization's secrets (metadata only).
///
/// Filters: `name`, `scope`, `app_id`, `created_at`, `expires_at`,
/// `last_used`, `q`. Sorted by `name` unless `sort` says otherwise.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", security(("bearer" = [])), params(ListQueryDoc), responses(
    (status = 200, body = SecretList),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
))]
pub async fn secret_list(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query,
) -> ApiResult<Json<SecretList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::secret_list(&st.ctx, &p, &params).await?;
    Ok(Json(SecretList {
        data: page.items.into_iter().map(view).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// A secret's metadata: versions, last use, expiry. Never its value.
#[utoipa::path(get, path = "/v1/secrets/{secret_id}", tag = "secrets", security(("bearer" = [])),
    params(("secret_id" = String, Path, description = "Secret id (sec_…)")),
    responses(
    (status = 200, body = Secret),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn secret_get(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<Secret>> {
    Ok(Json(view(svc::secret_get(&st.ctx, &p, &id).await?)))
}

/// Rotate: a new version of the value. The apps it reaches roll to it
/// (a rolling deployment, no downtime).
#[utoipa::path(post, path = "/v1/secrets/{secret_id}/versions", tag = "secrets", security(("bearer" = [])),
    params(("secret_id" = String, Path, description = "Secret id (sec_…)")),
    request_body = SecretVersionCreate,
    responses(
    (status = 201, body = Secret),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn secret_rotate(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<SecretVersionCreate>,
) -> ApiResult<(StatusCode, Json<Secret>)> {
    let d = svc::secret_rotate(&st.ctx, &p, &id, &req).await?;
    Ok((StatusCode::CREATED, Json(view(d))))
}

/// Delete a secret. The apps it reached roll without it.
#[utoipa::path(delete, path = "/v1/secrets/{secret_id}", tag = "secrets", security(("bearer" = [])),
    params(("secret_id" = String, Path, description = "Secret id (sec_…)")),
    responses(
    (status = 204, description = "Deleted"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn secret_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    svc::secret_delete(&st.ctx, &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
