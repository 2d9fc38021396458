//! The OpenAPI 3.1 documents, generated from the handlers' annotations:
//! the public `/v1` platform API (`openapi/platform-api.json`, served at
//! `/v1/openapi.json`) and, apart, the internal agent protocol
//! (`openapi/agent-api.json`, versioned by
//! [`shellwego_api::agent::PROTOCOL_VERSION`]). Every route is registered
//! through `routes!`, so the router and the documents are built from the
//! same lists and cannot disagree.

use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::routes::{
    agent, apps, auth, deployments, domains, events, exec_ws, health, logs, metrics, nodes, orgs,
    secrets, tokens, user, webhooks,
};
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
        (name = "domains", description = "Custom domains: host names (and path prefixes under them) routed to apps"),
        (name = "secrets", description = "Secrets: encrypted at rest, given to apps as environment variables, never returned"),
        (name = "webhooks", description = "Webhooks: signed deliveries of events to your endpoints, with retries"),
        (name = "apps", description = "Apps, their instances, and uploaded archives"),
        (name = "deployments", description = "Rolling, blue-green and canary deployments, rollbacks and their logs"),
        (name = "nodes", description = "Machines that run apps"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

/// The agent protocol's document. Its `info.version` is the protocol
/// version (set in [`agent_document`]), not the platform API's.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ShellWeGo Agent Protocol",
        description = "The internal channel between a node agent and the control plane: joining with a \
one-time join token, then `sync` long-polls that carry the node's status up and its desired state \
down, and downloads of uploaded archives. Not part of the public /v1 platform API and versioned \
apart from it: an agent names the protocol version it speaks in the `ShellWeGo-Agent-Protocol` \
header (absent: 1); a version the control plane does not speak is answered 400. `sync` and the \
downloads authenticate with the node credential (`Authorization: Bearer nsec_…`). Errors are RFC \
7807 problem documents, as on /v1.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(shellwego_api::problem::Problem)),
    tags(
        (name = "agent", description = "The node agent's channel (node credentials, not user tokens)"),
    )
)]
struct AgentApiDoc;

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

/// Every route of the server, public and agent channel, for the HTTP
/// stack (the documentation that comes with it is not used).
pub fn router() -> OpenApiRouter<AppState> {
    api_router().merge(agent_router())
}

/// The public `/v1` routes (and the operational ones), with their documentation.
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
        .routes(routes!(events::event_stream))
        .routes(routes!(events::event_get))
        .routes(routes!(domains::domain_create, domains::domain_list))
        .routes(routes!(
            domains::domain_get,
            domains::domain_update,
            domains::domain_delete
        ))
        .routes(routes!(domains::domain_certificate))
        .routes(routes!(secrets::secret_create, secrets::secret_list))
        .routes(routes!(secrets::secret_get, secrets::secret_delete))
        .routes(routes!(secrets::secret_rotate))
        .routes(routes!(webhooks::webhook_create, webhooks::webhook_list))
        .routes(routes!(
            webhooks::webhook_get,
            webhooks::webhook_update,
            webhooks::webhook_delete
        ))
        .routes(routes!(webhooks::webhook_test))
        .routes(routes!(webhooks::delivery_list))
        .routes(routes!(webhooks::delivery_get))
        .routes(routes!(webhooks::delivery_redeliver))
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
        .routes(routes!(apps::app_exec))
        .routes(routes!(exec_ws::app_exec_ws))
        .routes(routes!(logs::app_logs))
        .routes(routes!(logs::app_logs_stream))
        .routes(routes!(metrics::app_metrics))
        .routes(routes!(apps::upload_create))
        .routes(routes!(deployments::app_deploy))
        .routes(routes!(deployments::deployment_list))
        .routes(routes!(deployments::deployment_get))
        .routes(routes!(deployments::deployment_rollback))
        .routes(routes!(deployments::deployment_promote))
        .routes(routes!(deployments::deployment_logs))
}

/// The agent channel's routes, with their documentation.
pub fn agent_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(AgentApiDoc::openapi())
        .routes(routes!(agent::agent_join))
        .routes(routes!(agent::agent_sync))
        .routes(routes!(agent::agent_upload_get))
        .routes(routes!(agent::agent_resolve))
        .routes(routes!(agent::agent_task_result))
        .routes(routes!(agent::agent_log_push))
        .routes(routes!(agent::agent_exec_input))
        .routes(routes!(agent::agent_exec_output))
        // A log query's answer carries up to 10 000 lines.
        .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
}

/// The public `/v1` document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().into_openapi();
    document_problems(&mut doc);
    doc
}

/// The public document as checked in under `openapi/platform-api.json`
/// and served at `/v1/openapi.json`.
pub fn document_json() -> String {
    to_json(&document())
}

/// The agent protocol's document.
pub fn agent_document() -> utoipa::openapi::OpenApi {
    let mut doc = agent_router().into_openapi();
    doc.info.version = shellwego_api::agent::PROTOCOL_VERSION.to_string();
    document_problems(&mut doc);
    doc
}

/// The agent protocol's document as checked in under
/// `openapi/agent-api.json` (`shellwego openapi --agent`).
pub fn agent_document_json() -> String {
    to_json(&agent_document())
}

fn to_json(doc: &utoipa::openapi::OpenApi) -> String {
    let mut s = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// A problem response defined once under `components.responses`.
struct Shared {
    status: u16,
    name: &'static str,
    description: &'static str,
    /// (header, description, integer?) the response carries.
    headers: &'static [(&'static str, &'static str, bool)],
}

/// The problem responses operations share, by status.
const SHARED: &[Shared] = &[
    Shared {
        status: 400,
        name: "BadRequest",
        description:
            "The request is invalid: a malformed or invalid body, query parameter or path \
parameter. `errors` names each field that was wrong.",
        headers: &[],
    },
    Shared {
        status: 401,
        name: "Unauthorized",
        description: "No token, or the token sent is malformed, unknown, expired or revoked \
(on a route that needs none: a token was sent and is not valid).",
        headers: &[("WWW-Authenticate", "`Bearer`", false)],
    },
    Shared {
        status: 403,
        name: "Forbidden",
        description: "The token may not do this (its scope, role or resource restrictions), or \
its organization requires MFA and the user has not enrolled.",
        headers: &[],
    },
    Shared {
        status: 404,
        name: "NotFound",
        description: "A resource named in the path (or, for a few operations, in the body) does \
not exist or is not visible to the caller.",
        headers: &[],
    },
    Shared {
        status: 408,
        name: "RequestTimeout",
        description: "The request body did not arrive in time.",
        headers: &[],
    },
    Shared {
        status: 409,
        name: "Conflict",
        description: "The request conflicts with the resource's current state (a name or slug \
taken, the last owner, nothing to promote, …); `detail` says what to change.",
        headers: &[],
    },
    Shared {
        status: 410,
        name: "Gone",
        description: "The resource existed but is no longer usable (used, withdrawn or expired).",
        headers: &[],
    },
    Shared {
        status: 413,
        name: "PayloadTooLarge",
        description: "The request body is larger than this operation takes.",
        headers: &[],
    },
    Shared {
        status: 414,
        name: "UriTooLong",
        description: "The request target is longer than the server reads (32 KiB). Answered by \
the HTTP layer, before routing, so every operation can answer it.",
        headers: &[],
    },
    Shared {
        status: 429,
        name: "TooManyRequests",
        description: "The token's (or, without one, the client address's) rate limit is spent, \
logins for the account are locked for a while, or a plan quota is reached \
(`type` ends in `quota-exceeded`; no `Retry-After` then).",
        headers: &[
            (
                "Retry-After",
                "Seconds until a retry can succeed (rate limits and login lockouts).",
                true,
            ),
            (
                "X-RateLimit-Retry-After",
                "The same as `Retry-After`.",
                true,
            ),
        ],
    },
    Shared {
        status: 431,
        name: "RequestHeaderFieldsTooLarge",
        description: "The request headers are larger than the server reads. Answered by the HTTP \
layer, before routing, so every operation can answer it.",
        headers: &[],
    },
    Shared {
        status: 500,
        name: "InternalError",
        description: "A bug on our side. The body says nothing more than the `trace_id`: quote it \
when reporting the problem.",
        headers: &[],
    },
    Shared {
        status: 503,
        name: "ServiceUnavailable",
        description: "The store is not reachable; retry shortly.",
        headers: &[],
    },
];

/// Operations that can answer 409 (the service reports a conflict, or a
/// unique constraint can refuse the write).
const CONFLICTS: &[&str] = &[
    "app_create",
    "webhook_test",
    "delivery_redeliver",
    "token_rotate",
    "mfa_enroll",
    "mfa_confirm",
    "mfa_disable",
    "node_update",
    "deployment_rollback",
    "deployment_promote",
    "org_create",
    "member_update",
    "member_delete",
    "invitation_accept",
];

/// Operations without a path id that can answer 404 all the same: their
/// body names an organization (or apps) the caller must be able to see.
const NOT_FOUND_BY_BODY: &[&str] = &["auth_token_create", "token_create", "app_create"];

/// Operations that can answer 410.
const GONE: &[&str] = &["invitation_accept"];

/// Whether the `/v1` gate (bearer token, MFA enforcement, rate limit) is
/// in front of `path`, as in `http::v1_gate`: every `/v1` route but the
/// agent channel's node-authenticated ones.
fn gated(path: &str) -> bool {
    path.starts_with("/v1/") && !crate::routes::agent::node_authenticated(path)
}

/// The shared problem statuses `op` (at `path`) can answer.
fn problem_statuses(path: &str, op: &Operation) -> Vec<u16> {
    let id = op.operation_id.as_deref().unwrap_or("");
    let params = op.parameters.as_deref().unwrap_or(&[]);
    let in_path = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    let in_query = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    // A header the operation reads (the agent protocol's version) can be wrong.
    let in_header = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Header));
    let body = op.request_body.is_some();
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let v1 = path.starts_with("/v1/");
    let gated = gated(path);
    let mut s = vec![];
    if in_path || in_query || in_header || body {
        s.push(400);
    }
    if secured || gated {
        s.push(401);
    }
    if gated {
        s.push(403);
    }
    if in_path || NOT_FOUND_BY_BODY.contains(&id) {
        s.push(404);
    }
    if body {
        s.push(408);
    }
    if CONFLICTS.contains(&id) {
        s.push(409);
    }
    if GONE.contains(&id) {
        s.push(410);
    }
    if body {
        s.push(413);
    }
    // The HTTP layer answers these before routing, for any path.
    s.push(414);
    if gated {
        s.push(429);
    }
    s.push(431);
    s.push(500);
    // Every /v1 route reads the store (authentication does, when a token
    // is sent), and so does readiness.
    if v1 || path == "/readyz" {
        s.push(503);
    }
    s
}

fn shared_response(sh: &Shared) -> Response {
    let mut r = Response::new(sh.description);
    r.content.insert(
        "application/problem+json".into(),
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    for (name, description, integer) in sh.headers {
        let ty = if *integer {
            Type::Integer
        } else {
            Type::String
        };
        let mut h = Header::new(ObjectBuilder::new().schema_type(ty));
        h.description = Some((*description).into());
        r.headers.insert((*name).into(), h);
    }
    r
}

/// A response an annotation wrote as a bare problem (no description, just
/// the Problem body): the shared one says more, so it takes its place.
fn is_bare_problem(r: &RefOr<Response>) -> bool {
    let RefOr::T(r) = r else {
        return false;
    };
    r.description.is_empty()
        && r.headers.is_empty()
        && r.content.len() == 1
        && r.content.get("application/problem+json").is_some_and(|c| {
            matches!(&c.schema, Some(RefOr::Ref(x)) if x.ref_location == "#/components/schemas/Problem")
        })
}

/// Define the shared problem responses once and reference them from every
/// operation according to what it can answer. A response an operation
/// documents itself (with a description of its own) is kept.
fn document_problems(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    for sh in SHARED {
        components
            .responses
            .insert(sh.name.into(), RefOr::T(shared_response(sh)));
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.options,
            &mut item.head,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            let needed = problem_statuses(path, op);
            for sh in SHARED {
                let key = sh.status.to_string();
                let replace = match op.responses.responses.get(&key) {
                    Some(r) => is_bare_problem(r),
                    None => needed.contains(&sh.status),
                };
                if replace {
                    op.responses
                        .responses
                        .insert(key, RefOr::Ref(Ref::from_response_name(sh.name)));
                }
            }
        }
    }
}
