//! Custom domains: host names routed to apps.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shellwego_api::domains::{
    CertificateUpload, DnsValidation, Domain, DomainCreate, DomainList, DomainRouting,
    DomainUpdate, TlsCertificate, TlsProvider,
};
use shellwego_api::problem::Problem;
use shellwego_core::time::rfc3339;

use crate::auth::Principal;
use crate::extract::{list_params, JsonBody, PathParam, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service::domains as svc;
use crate::state::AppState;

pub(crate) fn view(st: &AppState, d: shellwego_store::domains::Domain) -> Domain {
    let s = &st.ctx.config.domains;
    let target = s
        .cname_target
        .clone()
        .unwrap_or_else(|| s.base_domain.clone());
    Domain {
        dns_validation: DnsValidation {
            kind: "CNAME".into(),
            name: d.hostname.clone(),
            value: target,
        },
        id: d.id,
        hostname: d.hostname,
        status: d.status,
        tls_status: d.tls_status,
        tls_provider: if d.tls_provider == "custom" {
            TlsProvider::Custom
        } else {
            TlsProvider::Letsencrypt
        },
        tls_error: d.tls_error,
        tls_certificate: TlsCertificate {
            issuer: d.tls_issuer,
            expires_at: d.tls_expires_at.map(rfc3339),
            auto_renew: d.tls_auto_renew,
        },
        routing: DomainRouting {
            app_id: d.app_id,
            port: d.port,
            path: d.path,
            strip_prefix: d.strip_prefix,
        },
        cdn_enabled: d.cdn_enabled,
        waf_enabled: d.waf_enabled,
        hsts: d.hsts,
        created_at: rfc3339(d.created_at),
        updated_at: rfc3339(d.updated_at),
    }
}

/// Route a host name (or a path under it) to an app. The host then belongs
/// to this organization until its last route is deleted; the ingress serves
/// it at once over HTTP.
#[utoipa::path(post, path = "/v1/domains", tag = "domains", security(("bearer" = [])), request_body = DomainCreate, responses(
    (status = 201, body = Domain),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "The host (or a wildcard over it) belongs to another organization, or this host and path are routed already", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "cdn or waf asked for: not offered yet", body = Problem, content_type = "application/problem+json"),
))]
pub async fn domain_create(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<DomainCreate>,
) -> ApiResult<(StatusCode, Json<Domain>)> {
    let d = svc::domain_create(&st.ctx, &p, &req).await?;
    Ok((StatusCode::CREATED, Json(view(&st, d))))
}

/// List the organization's domains.
///
/// Filters: `hostname`, `app_id`, `status`, `tls_status`, `path`,
/// `created_at`, `q`. Sorted by `hostname` unless `sort` says otherwise.
#[utoipa::path(get, path = "/v1/domains", tag = "domains", security(("bearer" = [])), params(ListQueryDoc), responses(
    (status = 200, body = DomainList),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
))]
pub async fn domain_list(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query,
) -> ApiResult<Json<DomainList>> {
    let params = list_params(q.as_deref(), &[])?;
    let page = svc::domain_list(&st.ctx, &p, &params).await?;
    Ok(Json(DomainList {
        data: page.items.into_iter().map(|d| view(&st, d)).collect(),
        pagination: pagination(page.pagination),
    }))
}

#[utoipa::path(get, path = "/v1/domains/{domain_id}", tag = "domains", security(("bearer" = [])),
    params(("domain_id" = String, Path, description = "Domain id (dom_…)")),
    responses(
    (status = 200, body = Domain),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn domain_get(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<Domain>> {
    Ok(Json(view(&st, svc::domain_get(&st.ctx, &p, &id).await?)))
}

/// Change a domain's routing: the app, path prefix, port, `strip_prefix`.
#[utoipa::path(patch, path = "/v1/domains/{domain_id}", tag = "domains", security(("bearer" = [])),
    params(("domain_id" = String, Path, description = "Domain id (dom_…)")),
    request_body = DomainUpdate,
    responses(
    (status = 200, body = Domain),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "The host routes that path already", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "cdn or waf asked for: not offered yet", body = Problem, content_type = "application/problem+json"),
))]
pub async fn domain_update(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<DomainUpdate>,
) -> ApiResult<Json<Domain>> {
    Ok(Json(view(
        &st,
        svc::domain_update(&st.ctx, &p, &id, &req).await?,
    )))
}

/// Delete a domain route; its host is given up with its last route.
#[utoipa::path(delete, path = "/v1/domains/{domain_id}", tag = "domains", security(("bearer" = [])),
    params(("domain_id" = String, Path, description = "Domain id (dom_…)")),
    responses(
    (status = 204, description = "Deleted"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn domain_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    svc::domain_delete(&st.ctx, &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Upload your own certificate for the domain's host (every route of the
/// host uses it). Checked: the certificate parses, is valid now and covers
/// the host; the key matches it; the chain is in order. A failed check is
/// a 400 naming the field (`certificate`, `private_key`, `chain`). The key
/// is kept encrypted and never returned.
#[utoipa::path(post, path = "/v1/domains/{domain_id}/certificate", tag = "domains", security(("bearer" = [])),
    params(("domain_id" = String, Path, description = "Domain id (dom_…)")),
    request_body = CertificateUpload,
    responses(
    (status = 200, body = Domain),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
pub async fn domain_certificate(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<CertificateUpload>,
) -> ApiResult<Json<Domain>> {
    Ok(Json(view(
        &st,
        svc::domain_certificate(&st.ctx, &p, &id, &req).await?,
    )))
}
