//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//! Every route is registered through `routes!`, so the router and the
//! document are built from the same list and cannot disagree.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::routes::{agent, apps, auth, deployments, events, health, nodes, orgs, tokens, user};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ShellWeGo Platform API",
        version = "1.0.0",
        description = "The /v1 platform API of ShellWeGo. Authenticate with `Authorization: Bearer <token>`. \
Errors are RFC 7807 problem documents (`application/problem+json`) with a `trace_id`. \
Lists take `limit`, `cursor`, `sort` and `filter[...]` and answer `{data, pagination}`. \
Every /v1 response carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(shellwego_api::problem::Problem, shellwego_api::Pagination)),
    tags(
        (name = "auth", description = "Logging in and revoking tokens"),
        (name = "users", description = "The calling user, their tokens and MFA"),
        (name = "organizations", description = "Organizations, members, invitations, service accounts"),
        (name = "events", description = "The audit trail"),
        (name = "apps", description = "Apps, their instances, and uploaded archives"),
        (name = "deployments", description = "Rolling, blue-green and canary deployments, rollbacks and their logs"),
        (name = "nodes", description = "Machines that run apps"),
        (name = "agent", description = "The node agent's channel (node credentials, not user tokens)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// Every route of the server, with its documentation.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(crate::docs::openapi_get))
        .routes(routes!(crate::docs::docs_get))
        .routes(routes!(auth::auth_token_create))
        .routes(routes!(auth::auth_token_delete))
        .routes(routes!(user::user_get, user::user_update))
        .routes(routes!(user::mfa_enroll))
        .routes(routes!(user::mfa_confirm))
        .routes(routes!(user::mfa_disable))
        .routes(routes!(tokens::token_create, tokens::token_list))
        .routes(routes!(tokens::token_delete))
        .routes(routes!(tokens::token_rotate))
        .routes(routes!(orgs::org_create, orgs::org_list))
        .routes(routes!(orgs::org_get, orgs::org_update))
        .routes(routes!(orgs::member_list))
        .routes(routes!(orgs::member_update, orgs::member_delete))
        .routes(routes!(orgs::invitation_create, orgs::invitation_list))
        .routes(routes!(orgs::invitation_delete))
        .routes(routes!(orgs::invitation_accept))
        .routes(routes!(
            orgs::service_account_create,
            orgs::service_account_list
        ))
        .routes(routes!(orgs::service_account_delete))
        .routes(routes!(events::event_list))
        .routes(routes!(nodes::node_list, nodes::node_create))
        .routes(routes!(
            nodes::node_get,
            nodes::node_update,
            nodes::node_delete
        ))
        .routes(routes!(nodes::node_drain))
        .routes(routes!(apps::app_list, apps::app_create))
        .routes(routes!(apps::app_get, apps::app_update, apps::app_delete))
        .routes(routes!(apps::app_start))
        .routes(routes!(apps::app_stop))
        .routes(routes!(apps::app_restart))
        .routes(routes!(apps::app_scale))
        .routes(routes!(apps::upload_create))
        .routes(routes!(deployments::app_deploy))
        .routes(routes!(deployments::deployment_list))
        .routes(routes!(deployments::deployment_get))
        .routes(routes!(deployments::deployment_rollback))
        .routes(routes!(deployments::deployment_promote))
        .routes(routes!(deployments::deployment_logs))
        .routes(routes!(agent::agent_join))
        .routes(routes!(agent::agent_sync))
        .routes(routes!(agent::agent_upload_get))
}

pub fn document() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// The document as checked in under `openapi/` and served at `/v1/openapi.json`.
pub fn document_json() -> String {
    let mut s = document().to_pretty_json().unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}
