//! Apps and uploads.

use std::collections::BTreeMap;

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
use shellwego_core::time::{from_micros, rfc3339};
use shellwego_core::units::format_size;
use shellwego_core::Error;
use shellwego_store::apps as store_apps;

use crate::auth::Principal;
use crate::extract::{list_params, JsonBody, OptionalJsonBody, PathParam, Query};
use crate::problem::ApiResult;
use crate::routes::{pagination, ListQueryDoc};
use crate::service::apps as svc;
use crate::state::AppState;

/// The largest archive `POST /v1/uploads` takes.
pub const MAX_UPLOAD: u64 = 1 << 30;

fn instance_view(i: store_apps::Instance) -> Instance {
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

pub(crate) fn view(a: store_apps::App, insts: Vec<store_apps::Instance>) -> App {
    let spec = svc::spec_of(&a);
    let current: Vec<&store_apps::Instance> =
        insts.iter().filter(|i| i.desired == "running").collect();
    let running = |i: &&&store_apps::Instance| {
        matches!(i.status.as_str(), "starting" | "healthy" | "unhealthy")
    };
    let replicas = Replicas {
        current: current.iter().filter(running).count() as i64,
        desired: if a.desired_state == "running" {
            a.replicas
        } else {
            0
        },
        healthy: current.iter().filter(|i| i.status == "healthy").count() as i64,
    };
    let driver = current.iter().find_map(|i| i.driver.clone());
    App {
        slug: a.name.clone(),
        networking: AppNetworking {
            internal_dns: format!("{}.internal", a.name),
            public: true,
            allowed_egress: vec!["0.0.0.0/0".into()],
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
                (
                    k,
                    EnvValue {
                        value: v,
                        encrypted: false,
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
        runtime: AppRuntime {
            driver,
            requested: spec.runtime,
            kernel_version: None,
            microvm_version: None,
            firecracker_version: None,
        },
        instances: insts
            .into_iter()
            .filter(|i| i.desired == "running" || i.status == "stopping")
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
    a: store_apps::App,
    include_events: bool,
) -> Result<App, Error> {
    let insts = st
        .store
        .instances_of_apps(std::slice::from_ref(&a.id))
        .await?;
    let id = a.id.clone();
    let mut v = view(a, insts);
    if include_events {
        v.events = Some(crate::routes::events::app_events(st, p, &id).await?);
    }
    Ok(v)
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
    let page = svc::app_list(&st.store, &p, &params).await?;
    let ids: Vec<String> = page.items.iter().map(|a| a.id.clone()).collect();
    let mut insts = st.store.instances_of_apps(&ids).await?;
    let mut data = Vec::with_capacity(page.items.len());
    for a in page.items {
        let (mine, rest): (Vec<_>, Vec<_>) = insts.into_iter().partition(|i| i.app_id == a.id);
        insts = rest;
        let id = a.id.clone();
        let mut v = view(a, mine);
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
    let (app, deployment_id) = svc::app_create(&st.store, &st.ssrf, &p, &req).await?;
    st.changed();
    Ok((
        StatusCode::CREATED,
        Json(AppCreated {
            id: app.id,
            name: app.name,
            status: "deploying".into(),
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
    let a = svc::app_get(&st.store, &p, &id).await?;
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
    svc::app_update(&st.store, &st.ssrf, &p, &id, &req).await?;
    st.changed();
    let a = svc::app_get(&st.store, &p, &id).await?;
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
    svc::app_delete(&st.store, &p, &id).await?;
    st.changed();
    Ok(StatusCode::NO_CONTENT)
}

async fn action(
    st: &AppState,
    p: &Principal,
    id: &str,
    what: &str,
    r: Option<&RestartRequest>,
) -> ApiResult<Json<App>> {
    let a = svc::app_action(&st.store, p, id, what, r).await?;
    st.changed();
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
    action(&st, &p, &id, "start", None).await
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
    action(&st, &p, &id, "stop", None).await
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
    action(&st, &p, &id, "restart", Some(&r)).await
}

/// Scale: `manual` sets replicas; `auto` stores min/max/cpu_threshold.
#[utoipa::path(post, path = "/v1/apps/{app_id}/scale", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)")), request_body = ScaleRequest,
    responses((status = 200, body = App), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn app_scale(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> ApiResult<Json<App>> {
    let a = svc::app_scale(&st.store, &p, &id, &req).await?;
    st.changed();
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
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    p.authorize("apps", "write", None)?;
    let id = shellwego_core::id::new_id("upl");
    let path = st.uploads_dir.join(&id);
    let tmp = st.uploads_dir.join(format!("{id}.part"));
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(Error::internal)?;
    let mut hasher = sha2::Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    let res: Result<(), Error> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                crate::extract::body_timeout(&e).unwrap_or_else(|| {
                    Error::field("body", "malformed", format!("the upload was cut off: {e}"))
                })
            })?;
            size += chunk.len() as u64;
            if size > MAX_UPLOAD {
                return Err(Error::PayloadTooLarge("An upload is at most 1 GiB.".into()));
            }
            hasher.update(&chunk);
            f.write_all(&chunk).await.map_err(Error::internal)?;
        }
        if size == 0 {
            return Err(Error::field(
                "body",
                "required",
                "send the archive (.tar or .tar.gz) as the request body",
            ));
        }
        f.sync_all().await.map_err(Error::internal)?;
        Ok(())
    }
    .await;
    if let Err(e) = res {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e.into());
    }
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(Error::internal)?;
    let sha = hex_lower(&hasher.finalize());
    let mut tx = st.store.begin().await?;
    store_apps::insert_upload(
        &mut tx,
        &id,
        &p.organization_id,
        size as i64,
        &sha,
        p.user_id.as_deref(),
    )
    .await?;
    shellwego_store::commit(tx).await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadCreated {
            upload_id: id,
            size: size as i64,
            sha256: sha,
        }),
    ))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
