//! Apps and uploads.

use std::collections::BTreeMap;

use crate::model;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures::StreamExt;
use shellwego_api::apps::{
    App, AppCreate, AppCreated, AppDomain, AppList, AppNetworking, AppRuntime, AppUpdate, Cpu,
    EnvValue, Instance, Replicas, Resources, RestartRequest, ScaleRequest, UploadCreated,
};
use shellwego_api::problem::Problem;
use shellwego_core::model::{AppAction, DesiredState, InstanceStatus};
use shellwego_core::time::{from_micros, rfc3339};
use shellwego_core::units::format_size;
use shellwego_core::Error;

use crate::auth::Principal;
use crate::extract::{list_params, JsonBody, OptionalJsonBody, PathParam, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service::apps as svc;
use crate::state::AppState;

fn instance_view(i: model::Instance) -> Instance {
    Instance {
        id: i.id,
        node_id: i.node_id,
        status: i.status,
        status_reason: i.status_reason,
        ip: i.ip,
        port: i.port,
        driver: i.driver,
        started_at: i.started_at.map(|t| rfc3339(from_micros(t))),
        health_checks_passed: i.health_checks_passed,
        restarts: i.restarts,
        version: i.version,
    }
}

/// The API's view of an app whose env has been opened
/// ([`crate::service::secrets::reveal_env`]).
pub(crate) fn view(a: model::App, insts: Vec<model::Instance>) -> App {
    let spec = shellwego_api::apps::AppSpec::from(&a.spec);
    let write_only = a.spec.env_write_only.clone();
    let current: Vec<&model::Instance> = insts
        .iter()
        .filter(|i| i.desired == DesiredState::Running)
        .collect();
    let running = |i: &&&model::Instance| match i.status {
        InstanceStatus::Starting | InstanceStatus::Healthy | InstanceStatus::Unhealthy => true,
        InstanceStatus::Pending
        | InstanceStatus::Crashed
        | InstanceStatus::Stopping
        | InstanceStatus::Stopped
        | InstanceStatus::Failed
        | InstanceStatus::Lost => false,
    };
    let replicas = Replicas {
        current: current.iter().filter(running).count() as i64,
        desired: if a.desired_state == DesiredState::Running {
            a.replicas
        } else {
            0
        },
        healthy: current
            .iter()
            .filter(|i| i.status == InstanceStatus::Healthy)
            .count() as i64,
    };
    let driver = current.iter().find_map(|i| i.driver);
    App {
        slug: a.name.clone(),
        networking: AppNetworking {
            internal_dns: format!("{}.internal", a.name),
            public: spec.networking.public,
            allowed_egress: spec.networking.allowed_egress.clone(),
        },
        name: a.name,
        status: a.status,
        status_reason: a.status_reason,
        image: a.image_pinned.or(spec.image),
        command: spec.command,
        resources: Resources {
            memory: Some(format_size(a.memory.max(0) as u64)),
            cpu: Some(Cpu::Text(format!("{:.1}", a.cpu_millis as f64 / 1000.0))),
            disk: Some(format_size(a.disk.max(0) as u64)),
        },
        env: spec
            .env
            .into_iter()
            .map(|(k, v)| {
                let hidden = write_only.contains(&k);
                (
                    k,
                    EnvValue {
                        value: (!hidden).then_some(v),
                        encrypted: hidden,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        domains: spec
            .domains
            .into_iter()
            .map(|d| AppDomain {
                hostname: d,
                tls_status: "pending".into(),
                certificate_expires: None,
            })
            .collect(),
        volumes: spec.volumes,
        replicas,
        health_check: spec.health_check,
        source: spec.source,
        placement: spec.placement,
        logging: spec.logging,
        runtime: AppRuntime {
            driver,
            requested: a.spec.runtime,
            kernel_version: None,
            microvm_version: None,
            firecracker_version: None,
        },
        instances: insts
            .into_iter()
            .filter(|i| i.desired == DesiredState::Running || i.status == InstanceStatus::Stopping)
            .map(instance_view)
            .collect(),
        deployment_id: a.deployment_id,
        version: a.version,
        autoscale: spec.autoscale,
        created_at: rfc3339(from_micros(a.created_at)),
        updated_at: rfc3339(from_micros(a.updated_at)),
        created_by: a.created_by,
        organization_id: a.organization_id,
        tags: a.tags,
        id: a.id,
        events: None,
    }
}

async fn full_view(
    st: &AppState,
    p: &Principal,
    mut a: model::App,
    include_events: bool,
) -> Result<App, Error> {
    crate::service::secrets::reveal_env(&st.ctx, &mut a).await?;
    let insts = svc::instances_of(&st.ctx, &[&a]).await?;
    let id = a.id.clone();
    let mut v = view(a, insts);
    v.domains = domains_of(st, std::slice::from_ref(&id))
        .await?
        .remove(&id)
        .unwrap_or_default();
    if include_events {
        v.events = Some(crate::routes::events::app_events(st, p, &id).await?);
    }
    Ok(v)
}

/// The custom domains of these apps (their routes' hosts, once each).
async fn domains_of(
    st: &AppState,
    app_ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<AppDomain>>, Error> {
    let mut db = st.ctx.store.conn().await?;
    let mut out: std::collections::HashMap<String, Vec<AppDomain>> = Default::default();
    for d in shellwego_store::domains::of_apps(&mut db, app_ids).await? {
        let list = out.entry(d.app_id.clone()).or_default();
        if !list.iter().any(|x| x.hostname == d.hostname) {
            list.push(AppDomain {
                hostname: d.hostname,
                tls_status: d.tls_status,
                certificate_expires: d.tls_expires_at.map(shellwego_core::time::rfc3339),
            });
        }
    }
    Ok(out)
}

fn includes(q: Option<&str>) -> Result<(bool, shellwego_core::list::ListParams), Error> {
    let params = shellwego_core::list::ListParams::parse(q.unwrap_or(""), &["include"])?;
    let mut events = false;
    if let Some(inc) = params.extra("include") {
        for part in inc.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part {
                "events" => events = true,
                "volumes" | "domains" => {}
                other => {
                    return Err(Error::field(
                        "include",
                        "invalid_value",
                        format!("'{other}' cannot be included; use volumes, domains or events"),
                    ))
                }
            }
        }
    }
    Ok((events, params))
}

/// List apps.
///
/// Filters: `status`, `name`, `organization_id`, `node_id` (apps with an
/// instance there), `tags`, `resources.memory`, `replicas.desired`,
/// `created_at`, `updated_at`, `q`. `include=volumes,domains,events`.
#[utoipa::path(get, path = "/v1/apps", tag = "apps", security(("bearer" = [])),
    params(ListQueryDoc, ("include" = Option<String>, Query, description = "volumes,domains,events")),
    responses((status = 200, body = AppList), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn app_list(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query,
) -> ApiResult<Json<AppList>> {
    let (events, params) = includes(q.as_deref())?;
    let page = svc::app_list(&st.ctx, &p, &params).await?;
    let mut insts = svc::instances_of(&st.ctx, &page.items.iter().collect::<Vec<_>>()).await?;
    let ids: Vec<String> = page.items.iter().map(|a| a.id.clone()).collect();
    let mut domains = domains_of(&st, &ids).await?;
    let mut data = Vec::with_capacity(page.items.len());
    for mut a in page.items {
        crate::service::secrets::reveal_env(&st.ctx, &mut a).await?;
        let (mine, rest): (Vec<_>, Vec<_>) = insts.into_iter().partition(|i| i.app_id == a.id);
        insts = rest;
        let id = a.id.clone();
        let mut v = view(a, mine);
        v.domains = domains.remove(&id).unwrap_or_default();
        if events {
            v.events = Some(crate::routes::events::app_events(&st, &p, &id).await?);
        }
        data.push(v);
    }
    Ok(Json(AppList {
        data,
        pagination: pagination(page.pagination),
    }))
}

/// Create an app; its replicas are placed on nodes at once.
#[utoipa::path(post, path = "/v1/apps", tag = "apps", security(("bearer" = [])), request_body = AppCreate,
    responses((status = 201, body = AppCreated), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn app_create(
    State(st): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<AppCreate>,
) -> ApiResult<(StatusCode, Json<AppCreated>)> {
    let (app, deployment_id) = svc::app_create(&st.ctx, &p, &req).await?;
    Ok((
        StatusCode::CREATED,
        Json(AppCreated {
            id: app.id,
            name: app.name,
            status: shellwego_core::model::AppStatus::Deploying,
            deployment_id,
        }),
    ))
}

/// Get an app with its instances.
#[utoipa::path(get, path = "/v1/apps/{app_id}", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)"), ("include" = Option<String>, Query, description = "volumes,domains,events")),
    responses((status = 200, body = App), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_get(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
) -> ApiResult<Json<App>> {
    let (events, _) = includes(q.as_deref())?;
    let a = svc::app_get(&st.ctx, &p, &id).await?;
    Ok(Json(full_view(&st, &p, a, events).await?))
}

/// Change resources, replicas, env, health check or tags. Resource, env
/// and health-check changes roll out a new version with zero downtime.
#[utoipa::path(patch, path = "/v1/apps/{app_id}", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)")), request_body = AppUpdate,
    responses((status = 200, body = App), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_update(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<AppUpdate>,
) -> ApiResult<Json<App>> {
    svc::app_update(&st.ctx, &p, &id, &req).await?;
    let a = svc::app_get(&st.ctx, &p, &id).await?;
    Ok(Json(full_view(&st, &p, a, false).await?))
}

/// Delete an app: its instances get SIGTERM, then SIGKILL after the stop
/// timeout. `force` and `preserve_volumes` are accepted (volumes arrive
/// in a later release).
#[utoipa::path(delete, path = "/v1/apps/{app_id}", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)"),
        ("force" = Option<bool>, Query, description = "Delete even if running"),
        ("preserve_volumes" = Option<bool>, Query, description = "Keep volumes for reuse")),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_delete(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
) -> ApiResult<StatusCode> {
    let params = list_params(q.as_deref(), &["force", "preserve_volumes"])?;
    for f in ["force", "preserve_volumes"] {
        if let Some(v) = params.extra(f) {
            if v != "true" && v != "false" {
                return Err(Error::field(f, "invalid_value", "must be true or false").into());
            }
        }
    }
    svc::app_delete(&st.ctx, &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn action(
    st: &AppState,
    p: &Principal,
    id: &str,
    what: AppAction,
    r: Option<&RestartRequest>,
) -> ApiResult<Json<App>> {
    let a = svc::app_action(&st.ctx, p, id, what, r).await?;
    Ok(Json(full_view(st, p, a, false).await?))
}

/// Start a stopped app.
#[utoipa::path(post, path = "/v1/apps/{app_id}/actions/start", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)")),
    responses((status = 200, body = App), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_start(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<App>> {
    action(&st, &p, &id, AppAction::Start, None).await
}

/// Stop an app (its replica count is kept for the next start).
#[utoipa::path(post, path = "/v1/apps/{app_id}/actions/stop", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)")),
    responses((status = 200, body = App), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_stop(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
) -> ApiResult<Json<App>> {
    action(&st, &p, &id, AppAction::Stop, None).await
}

/// Restart every instance: `rolling` (a new instance is healthy before an
/// old one stops, `batch_size` at a time) or `immediate`.
#[utoipa::path(post, path = "/v1/apps/{app_id}/actions/restart", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)")), request_body(content = Option<RestartRequest>),
    responses((status = 200, body = App), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_restart(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    OptionalJsonBody(r): OptionalJsonBody<RestartRequest>,
) -> ApiResult<Json<App>> {
    action(&st, &p, &id, AppAction::Restart, Some(&r)).await
}

/// Scale: `manual` sets replicas; `auto` keeps min/max/cpu_threshold.
#[utoipa::path(post, path = "/v1/apps/{app_id}/scale", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)")), request_body = ScaleRequest,
    responses((status = 200, body = App), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_scale(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> ApiResult<Json<App>> {
    let a = svc::app_scale(&st.ctx, &p, &id, &req).await?;
    Ok(Json(full_view(&st, &p, a, false).await?))
}

/// Upload an archive (raw body: .tar or .tar.gz, at most 1 GiB) for a
/// `{"type": "tarball", "upload_id": …}` source. Accepts a `temp_` token.
#[utoipa::path(post, path = "/v1/uploads", tag = "apps", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = UploadCreated), (status = 413, body = Problem, content_type = "application/problem+json")))]
pub async fn upload_create(
    State(st): State<AppState>,
    p: Principal,
    body: Body,
) -> ApiResult<(StatusCode, Json<UploadCreated>)> {
    let stream = body.into_data_stream().map(|chunk| {
        chunk.map_err(|e| {
            crate::extract::body_timeout(&e).unwrap_or_else(|| {
                Error::field("body", "malformed", format!("the upload was cut off: {e}"))
            })
        })
    });
    let (id, size, sha) = svc::upload_create(&st.ctx, &p, stream).await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadCreated {
            upload_id: id,
            size,
            sha256: sha,
        }),
    ))
}

/// Run a command in a running instance of the app (`instance_id`, else a
/// healthy one), on whichever node it runs, with the instance's
/// environment, root filesystem and namespaces; `stdin` is given to it,
/// `timeout` (default 30 s) kills its process tree, each output stream is
/// capped at 512 KiB (`truncated`). Needs `apps:exec` (not a viewer's).
/// Recorded as an `app.exec` event with the command line.
#[utoipa::path(post, path = "/v1/apps/{app_id}/exec", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)")), request_body = shellwego_api::apps::ExecRequest,
    responses(
        (status = 200, body = shellwego_api::apps::ExecResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No running instance, or the instance's driver cannot run the command", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The instance's node did not answer in time", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn app_exec(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<shellwego_api::apps::ExecRequest>,
) -> ApiResult<Json<shellwego_api::apps::ExecResponse>> {
    Ok(Json(
        crate::service::exec::app_exec(&st.ctx, &p, &id, &req).await?,
    ))
}
