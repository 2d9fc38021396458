//! Organizations, members, invitations and service accounts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shellwego_api::orgs::{
    Invitation, InvitationAccept, InvitationAccepted, InvitationCreate, InvitationList, Member,
    MemberList, MemberUpdate, OrgQuotas, OrgSettings, OrgUsage, Organization, OrganizationCreate,
    OrganizationList, OrganizationUpdate, ServiceAccount, ServiceAccountCreate, ServiceAccountList,
};
use shellwego_api::problem::Problem;
use shellwego_core::time::rfc3339;
use shellwego_core::units::format_size;

use crate::auth::{ClientIp, Principal};
use crate::extract::{list_params, JsonBody, OptionalJsonBody, PathParams, Query};
use crate::problem::ApiResult;
use crate::routes::tokens::created;
use crate::routes::{pagination, ListQueryDoc};
use crate::service::orgs as svc;
use crate::state::AppState;

fn org_view(o: crate::model::Organization, usage: Option<crate::model::OrgUsage>) -> Organization {
    let (nodes, memory, volumes) = o.plan.resource_limits();
    let u = usage.unwrap_or_default();
    let (u_nodes, u_members, u_mem, u_apps) = (u.nodes, u.members, u.memory, u.apps);
    Organization {
        id: o.id,
        name: o.name,
        slug: o.slug,
        plan: o.plan.as_str().into(),
        quotas: OrgQuotas {
            apps: o.plan.apps_limit(),
            nodes,
            memory_total: format_size(memory),
            volumes_total: format_size(volumes),
        },
        usage: OrgUsage {
            apps: u_apps,
            nodes: u_nodes,
            members: u_members,
            memory_used: format_size(u_mem.max(0) as u64),
        },
        billing: o.billing,
        settings: serde_json::from_value::<OrgSettings>(o.settings).unwrap_or_else(|_| {
            OrgSettings {
                audit_log_retention: "1y".into(),
                ..Default::default()
            }
        }),
        created_at: rfc3339(o.created_at),
    }
}

fn member_view(m: crate::model::Member) -> Member {
    Member {
        user_id: m.user_id,
        email: m.email,
        name: m.name,
        role: m.role,
        resources: m.resources,
        mfa_enabled: m.mfa_enabled,
        joined_at: rfc3339(m.joined_at),
    }
}

fn invitation_view(i: crate::model::Invitation, token: Option<String>) -> Invitation {
    Invitation {
        status: i.status().into(),
        id: i.id,
        organization_id: i.organization_id,
        email: i.email,
        role: i.role,
        resources: i.resources,
        expires_at: rfc3339(i.expires_at),
        created_at: rfc3339(i.created_at),
        token,
    }
}

fn sa_view(
    s: crate::model::ServiceAccount,
    token: Option<(String, Option<String>)>,
) -> ServiceAccount {
    let (token, token_expires_at) = match token {
        Some((t, e)) => (Some(t), e),
        None => (None, None),
    };
    ServiceAccount {
        id: s.id,
        name: s.name,
        role: s.role,
        scope: s.scope,
        created_at: rfc3339(s.created_at),
        token,
        token_expires_at,
    }
}

/// Create an organization (Free plan); you become its owner.
#[utoipa::path(post, path = "/v1/organizations", tag = "organizations", security(("bearer" = [])), request_body = OrganizationCreate, responses(
    (status = 201, body = Organization), (status = 409, body = Problem, content_type = "application/problem+json"),
    (status = 429, description = "quota-exceeded: the caller owns as many Free organizations as one user may", body = Problem, content_type = "application/problem+json")))]
pub async fn org_create(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<OrganizationCreate>,
) -> ApiResult<(StatusCode, Json<Organization>)> {
    let (org, usage) = svc::org_create(&st.ctx, &p, &req).await?;
    Ok((StatusCode::CREATED, Json(org_view(org, Some(usage)))))
}

/// List your organizations. Filters: `name`, `slug`, `plan`, `role`, `created_at`, `q`.
#[utoipa::path(get, path = "/v1/organizations", tag = "organizations", security(("bearer" = [])), params(ListQueryDoc), responses((status = 200, body = OrganizationList)))]
pub async fn org_list(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query,
) -> ApiResult<Json<OrganizationList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::org_list(&st.ctx, &p, &params).await?;
    Ok(Json(OrganizationList {
        data: page.items.into_iter().map(|o| org_view(o, None)).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// Get an organization, with its quotas and usage.
#[utoipa::path(get, path = "/v1/organizations/{org_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id (org_…)")),
    responses((status = 200, body = Organization), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn org_get(
    State(st): State<AppState>,
    p: Principal,
    PathParams(org_id): PathParams<String>,
) -> ApiResult<Json<Organization>> {
    let (org, usage) = svc::org_get(&st.ctx, &p, &org_id).await?;
    Ok(Json(org_view(org, Some(usage))))
}

/// Update name, billing or settings (admin or owner).
#[utoipa::path(patch, path = "/v1/organizations/{org_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id")), request_body = OrganizationUpdate,
    responses((status = 200, body = Organization), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn org_update(
    State(st): State<AppState>,
    p: Principal,
    PathParams(org_id): PathParams<String>,
    JsonBody(req): JsonBody<OrganizationUpdate>,
) -> ApiResult<Json<Organization>> {
    svc::org_update(&st.ctx, &p, &org_id, &req).await?;
    let (org, usage) = svc::org_get(&st.ctx, &p, &org_id).await?;
    Ok(Json(org_view(org, Some(usage))))
}

/// List members. Filters: `role`, `email`, `name`, `joined_at`, `q`.
#[utoipa::path(get, path = "/v1/organizations/{org_id}/members", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id"), ListQueryDoc), responses((status = 200, body = MemberList)))]
pub async fn member_list(
    State(st): State<AppState>,
    p: Principal,
    PathParams(org_id): PathParams<String>,
    Query(q): Query,
) -> ApiResult<Json<MemberList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::member_list(&st.ctx, &p, &org_id, &params).await?;
    Ok(Json(MemberList {
        data: page.items.into_iter().map(member_view).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// Change a member's role or resource restrictions. The last owner cannot be demoted (409).
#[utoipa::path(patch, path = "/v1/organizations/{org_id}/members/{user_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id"), ("user_id" = String, Path, description = "User id")), request_body = MemberUpdate,
    responses((status = 204, description = "Updated"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn member_update(
    State(st): State<AppState>,
    p: Principal,
    PathParams((org_id, user_id)): PathParams<(String, String)>,
    JsonBody(req): JsonBody<MemberUpdate>,
) -> ApiResult<StatusCode> {
    svc::member_update(&st.ctx, &p, &org_id, &user_id, &req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a member (or leave). The last owner cannot be removed (409).
#[utoipa::path(delete, path = "/v1/organizations/{org_id}/members/{user_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id"), ("user_id" = String, Path, description = "User id")),
    responses((status = 204, description = "Removed"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn member_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParams((org_id, user_id)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    svc::member_remove(&st.ctx, &p, &org_id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invite someone by email; the response holds the one-time invitation token.
#[utoipa::path(post, path = "/v1/organizations/{org_id}/invitations", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id")), request_body = InvitationCreate,
    responses((status = 201, body = Invitation), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn invitation_create(
    State(st): State<AppState>,
    p: Principal,
    PathParams(org_id): PathParams<String>,
    JsonBody(req): JsonBody<InvitationCreate>,
) -> ApiResult<(StatusCode, Json<Invitation>)> {
    let (inv, secret) = svc::invitation_create(&st.ctx, &p, &org_id, &req).await?;
    Ok((
        StatusCode::CREATED,
        Json(invitation_view(inv, Some(secret))),
    ))
}

/// List invitations. Filters: `email`, `role`, `created_at`, `expires_at`, `q`.
#[utoipa::path(get, path = "/v1/organizations/{org_id}/invitations", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id"), ListQueryDoc), responses((status = 200, body = InvitationList)))]
pub async fn invitation_list(
    State(st): State<AppState>,
    p: Principal,
    PathParams(org_id): PathParams<String>,
    Query(q): Query,
) -> ApiResult<Json<InvitationList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::invitation_list(&st.ctx, &p, &org_id, &params).await?;
    Ok(Json(InvitationList {
        data: page
            .items
            .into_iter()
            .map(|i| invitation_view(i, None))
            .collect(),
        pagination: pagination(page.pagination),
    }))
}

/// Withdraw an invitation.
#[utoipa::path(delete, path = "/v1/organizations/{org_id}/invitations/{invitation_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id"), ("invitation_id" = String, Path, description = "Invitation id (inv_…)")),
    responses((status = 204, description = "Withdrawn"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn invitation_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParams((org_id, inv_id)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    svc::invitation_revoke(&st.ctx, &p, &org_id, &inv_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invitation: logged in (the invited email's user), or without a
/// token by sending `name` and `password` to create the account. A used or
/// expired invitation is 410.
#[utoipa::path(post, path = "/v1/invitations/{token}/accept", tag = "organizations",
    params(("token" = String, Path, description = "The invitation token (inv_…)")), request_body = InvitationAccept,
    responses((status = 200, body = InvitationAccepted), (status = 410, body = Problem, content_type = "application/problem+json")))]
pub async fn invitation_accept(
    State(st): State<AppState>,
    p: Option<Principal>,
    ClientIp(ip): ClientIp,
    PathParams(token): PathParams<String>,
    OptionalJsonBody(req): OptionalJsonBody<InvitationAccept>,
) -> ApiResult<Json<InvitationAccepted>> {
    let a = svc::invitation_accept(&st.ctx, p.as_ref(), &token, &req, ip.map(|i| i.to_string()))
        .await?;
    Ok(Json(InvitationAccepted {
        organization_id: a.invitation.organization_id,
        user_id: a.user_id,
        role: a.invitation.role,
        token: a.token.map(|(t, s)| created(t, s)),
    }))
}

/// Create a service account and its `sat_` token (shown once).
#[utoipa::path(post, path = "/v1/organizations/{org_id}/service-accounts", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id")), request_body = ServiceAccountCreate,
    responses((status = 201, body = ServiceAccount), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn service_account_create(
    State(st): State<AppState>,
    p: Principal,
    PathParams(org_id): PathParams<String>,
    JsonBody(req): JsonBody<ServiceAccountCreate>,
) -> ApiResult<(StatusCode, Json<ServiceAccount>)> {
    let (sa, tok, secret) = svc::service_account_create(&st.ctx, &p, &org_id, &req).await?;
    Ok((
        StatusCode::CREATED,
        Json(sa_view(sa, Some((secret, tok.expires_at.map(rfc3339))))),
    ))
}

/// List service accounts. Filters: `name`, `role`, `created_at`, `q`.
#[utoipa::path(get, path = "/v1/organizations/{org_id}/service-accounts", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id"), ListQueryDoc), responses((status = 200, body = ServiceAccountList)))]
pub async fn service_account_list(
    State(st): State<AppState>,
    p: Principal,
    PathParams(org_id): PathParams<String>,
    Query(q): Query,
) -> ApiResult<Json<ServiceAccountList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::service_account_list(&st.ctx, &p, &org_id, &params).await?;
    Ok(Json(ServiceAccountList {
        data: page.items.into_iter().map(|s| sa_view(s, None)).collect(),
        pagination: pagination(page.pagination),
    }))
}

/// Delete a service account; its tokens stop working.
#[utoipa::path(delete, path = "/v1/organizations/{org_id}/service-accounts/{service_account_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = String, Path, description = "Organization id"), ("service_account_id" = String, Path, description = "Service account id (sa_…)")),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn service_account_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParams((org_id, sa_id)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    svc::service_account_delete(&st.ctx, &p, &org_id, &sa_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
