//! Apps: the API's operations (list, get, create, update, delete, start,
//! stop, restart, scale). What they change is made real by the reconciler
//! (`crate::controller::reconcile`), which they run in their own
//! transaction, so an answer already shows the instances placed.

use std::collections::BTreeSet;

use serde_json::json;
use shellwego_api::apps::{
    resolve_resources, AppCreate, AppSpec, AppUpdate, RestartRequest, ScaleRequest, Source,
};
use shellwego_core::list::ListParams;
use shellwego_core::model::{
    AppAction, AppStatus, DesiredState, HealthCheckSpec, InstanceStatus, ScaleMode, Strategy,
};
use shellwego_core::Error;
use shellwego_core::FieldError;
use shellwego_net::ssrf::{Guard, SsrfError};
use shellwego_store::apps::{self, App, Instance, APPS};
use shellwego_store::events::NewEvent;
use shellwego_store::list::{Page, Scope};
use shellwego_store::orgs;
use shellwego_store::Tx;

use crate::auth::Principal;
use crate::controller::instances::{org_allowed_regions, stop_instance};
use crate::controller::reconcile::reconcile_in;
use crate::controller::rollout as deploy;
use crate::ctx::{ServerCtx, DESIRED};

/// Replacements in flight per app when nothing else is said.
const DEFAULT_BATCH: i64 = 1;

/// Apps the caller may see: its organization, narrowed by the token's app
/// restriction and the membership's app entries.
fn visible_scope(p: &Principal) -> Scope {
    let mut scope = Scope::new().is_in("t.organization_id", p.organization_ids());
    if !p.restrict_to_apps.is_empty() {
        scope = scope.is_in("t.id", p.restrict_to_apps.clone());
    }
    let broad = p.member_resources.is_empty()
        || shellwego_core::rbac::restrictions_allow(&p.member_resources, "apps", "read", None);
    if !broad {
        let ids: Vec<String> = p
            .member_resources
            .iter()
            .filter_map(|r| r.strip_prefix("app:").map(str::to_string))
            .collect();
        scope = scope.is_in("t.id", ids);
    }
    scope
}

pub async fn app_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<App>, Error> {
    let store = &ctx.store;
    p.authorize("apps", "list", None)
        .or_else(|_| p.authorize("apps", "read", None))?;
    let mut page =
        crate::service::list_page(store, &APPS, &visible_scope(p), params, apps::from_row).await?;
    let ids: Vec<String> = page.items.iter().map(|a| a.id.clone()).collect();
    let tags = apps::tags_of_apps(&mut *store.conn().await?, &ids).await?;
    for a in &mut page.items {
        a.tags = tags
            .iter()
            .filter(|t| t.app_id == a.id)
            .map(|t| t.tag.clone())
            .collect();
    }
    Ok(page)
}

pub async fn app_get(ctx: &ServerCtx, p: &Principal, app_id: &str) -> Result<App, Error> {
    p.authorize("apps", "read", Some(app_id))?;
    apps::get_visible(&mut *ctx.store.conn().await?, app_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("app", app_id))
}

/// Refuse an image registry or a tarball source URL that reaches an
/// address the SSRF guard refuses: a 400 naming the field. Agents judge
/// every fetch again (DNS answers change); this tells the user at once.
pub(crate) async fn check_fetch_targets(
    guard: &Guard,
    image: Option<&str>,
    source: Option<&Source>,
) -> Result<(), Error> {
    if let Some(registry) = image.and_then(shellwego_net::ssrf::image_registry) {
        guard
            .check_url(&format!("https://{registry}/"))
            .await
            .map_err(|e| target_error("image", image.unwrap_or_default(), &e))?;
    }
    if let Some(url) = source.and_then(|s| s.url.as_deref()) {
        guard
            .check_url(url)
            .await
            .map_err(|e| target_error("source.url", url, &e))?;
    }
    Ok(())
}

pub(crate) fn target_error(field: &str, value: &str, e: &SsrfError) -> Error {
    let (code, message) = match e {
        SsrfError::Refused { .. } => ("forbidden_target", e.to_string()),
        SsrfError::Unresolvable { .. } => (
            "unresolvable",
            format!("{e} (the control plane must be able to resolve the host)"),
        ),
        SsrfError::Scheme { .. }
        | SsrfError::InvalidUrl(_)
        | SsrfError::NoHost
        | SsrfError::TooManyRedirects
        | SsrfError::UnknownPeer => ("invalid_value", e.to_string()),
    };
    Error::invalid(vec![
        FieldError::new(field, code, message).with_value(value.to_string())
    ])
}

pub async fn app_create(
    ctx: &ServerCtx,
    p: &Principal,
    req: &AppCreate,
) -> Result<(App, String), Error> {
    let store = &ctx.store;
    p.authorize("apps", "write", None)?;
    if !req.domains.is_empty() {
        p.authorize("domains", "write", None)?;
    }
    check_fetch_targets(&ctx.config.ssrf, req.image.as_deref(), req.source.as_ref()).await?;
    // Reads first, on a connection given back before the unit begins.
    let mut db = store.conn().await?;
    let org = orgs::get(&mut db, &p.organization_id)
        .await?
        .ok_or_else(|| Error::not_found("organization", &p.organization_id))?;
    if let Some(upl) = req.source.as_ref().and_then(|s| s.upload_id.as_ref()) {
        if !apps::upload_exists(&mut db, upl, &p.organization_id).await? {
            return Err(Error::field(
                "source.upload_id",
                "not_found",
                "no such upload in this organization; upload the archive with POST /v1/uploads first",
            ));
        }
    }
    let allowed = org_allowed_regions(&org.settings);
    if let Some(r) = req.placement.as_ref().and_then(|p| p.region.as_ref()) {
        if !allowed.is_empty() && !allowed.contains(r) {
            return Err(Error::field(
                "placement.region",
                "not_allowed",
                format!(
                    "the organization only allows regions {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    if apps::count_in(&mut db, &org.id).await? >= i64::from(org.plan.apps_limit()) {
        return Err(Error::QuotaExceeded(format!(
            "The {} plan allows {} apps; delete one or upgrade the plan.",
            org.plan.as_str(),
            org.plan.apps_limit()
        )));
    }
    let (memory, cpu_millis, disk) = resolve_resources(&req.resources);
    let mut networking = shellwego_core::model::NetworkingSpec::default();
    if let Some(n) = &req.networking {
        n.apply(&mut networking)?;
    }
    drop(db);
    // The id first: env values are sealed with it as associated data.
    let app_id = shellwego_core::id::new_id("app");
    let plain: std::collections::BTreeMap<String, String> = req
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.value().to_string()))
        .collect();
    let env = crate::service::secrets::seal_env_values(ctx, &org.id, &app_id, &plain).await?;
    let spec = AppSpec {
        image: req.image.clone(),
        command: req.command.clone(),
        env,
        domains: req.domains.clone(),
        volumes: req.volumes.clone(),
        health_check: req.health_check.clone().unwrap_or_default(),
        source: req.source.clone(),
        runtime: req.runtime,
        placement: req.placement.clone().unwrap_or_default(),
        stop_timeout: req.stop_timeout.clone(),
        autoscale: None,
        rollout_batch: None,
        networking: (&networking).into(),
        logging: req.logging.clone().filter(|l| *l != Default::default()),
    };
    let mut model = spec.to_model()?;
    model.env_write_only = req
        .env
        .iter()
        .filter(|(_, v)| v.write_only())
        .map(|(k, _)| k.clone())
        .collect();
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let mut app = apps::insert(
        &mut tx,
        App {
            id: app_id,
            organization_id: org.id.clone(),
            name: req.name.clone(),
            status: AppStatus::Deploying,
            desired_state: DesiredState::Running,
            replicas: req.replicas.unwrap_or(1),
            memory,
            cpu_millis,
            disk,
            spec: model,
            // Its first release (made next) is version 1.
            version: 0,
            created_by: p.user_id.clone(),
            tags: req.tags.clone(),
            ..Default::default()
        },
    )
    .await?;
    let dep = deploy::start(
        &mut tx,
        &p.actor(),
        &mut app,
        deploy::Target::New,
        Strategy::Rolling,
        deploy::Options::default(),
        "created",
        None,
    )
    .await?
    .id;
    apps::update(&mut tx, &app).await?;
    tx.record(
        NewEvent::info("app.created", &p.actor(), "app", &app.id)
            .in_org(&app.organization_id)
            .meta(json!({"name": app.name, "replicas": app.replicas, "deployment_id": dep})),
    );
    // Its custom domains, claimed with it (or neither).
    for (i, hostname) in req.domains.iter().enumerate() {
        crate::service::domains::create_in(
            ctx,
            &mut tx,
            &p.actor(),
            &app.organization_id,
            crate::service::domains::Wanted {
                hostname,
                app_id: &app.id,
                path: None,
                port: None,
                strip_prefix: false,
                tls_provider: shellwego_api::domains::TlsProvider::Letsencrypt,
                tls_auto_renew: true,
                hsts: false,
            },
            &format!("domains[{i}]"),
        )
        .await?;
    }
    reconcile_in(&mut tx, &app.id).await?;
    tx.commit().await?;
    Ok((app, dep))
}

/// Lock the app for a change; 404 when the caller cannot see it.
async fn locked(tx: &mut Tx, p: &Principal, app_id: &str) -> Result<App, Error> {
    match apps::get_for_update(tx, app_id).await? {
        Some(a) if a.organization_id == p.organization_id => Ok(a),
        _ => Err(Error::not_found("app", app_id)),
    }
}

pub async fn app_update(
    ctx: &ServerCtx,
    p: &Principal,
    app_id: &str,
    req: &AppUpdate,
) -> Result<(), Error> {
    p.authorize("apps", "write", Some(app_id))?;
    check_fetch_targets(&ctx.config.ssrf, req.image.as_deref(), None).await?;
    // New env values sealed before the unit begins (a data key may have to
    // be made, in a transaction of its own). Their organization is the
    // caller's: another's app is a 404 below, before they are used.
    let sealed = match &req.env {
        Some(env) => {
            let plain = env
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.value().to_string())))
                .collect();
            crate::service::secrets::seal_env_values(ctx, &p.organization_id, app_id, &plain)
                .await?
        }
        None => Default::default(),
    };
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let mut a = locked(&mut tx, p, app_id).await?;
    let spec = &mut a.spec;
    let mut new_version = false;
    let mut changed = vec![];
    if let Some(r) = &req.resources {
        let mut merged = shellwego_api::apps::Resources {
            memory: Some(shellwego_core::units::format_size(a.memory.max(0) as u64)),
            cpu: Some(shellwego_api::apps::Cpu::Text(format!(
                "{}",
                a.cpu_millis as f64 / 1000.0
            ))),
            disk: Some(shellwego_core::units::format_size(a.disk.max(0) as u64)),
        };
        if r.memory.is_some() {
            merged.memory = r.memory.clone();
        }
        if r.cpu.is_some() {
            merged.cpu = r.cpu.clone();
        }
        if r.disk.is_some() {
            merged.disk = r.disk.clone();
        }
        let (m, c, d) = resolve_resources(&merged);
        if (m, c, d) != (a.memory, a.cpu_millis, a.disk) {
            (a.memory, a.cpu_millis, a.disk) = (m, c, d);
            new_version = true;
            changed.push("resources");
        }
    }
    if let Some(env) = &req.env {
        let current = crate::service::secrets::open_env(&ctx.vault, &mut tx, app_id, spec).await?;
        let mut env_changed = false;
        for (k, v) in env {
            match v {
                Some(v) => {
                    let write_only = v.write_only();
                    if current.get(k).map(String::as_str) != Some(v.value())
                        || spec.env_write_only.contains(k) != write_only
                    {
                        env_changed = true;
                    }
                    if let Some(s) = sealed.get(k) {
                        spec.env.insert(k.clone(), s.clone());
                    }
                    if write_only {
                        spec.env_write_only.insert(k.clone());
                    } else {
                        spec.env_write_only.remove(k);
                    }
                }
                None => {
                    env_changed |= spec.env.remove(k).is_some();
                    spec.env_write_only.remove(k);
                }
            }
        }
        if env_changed {
            new_version = true;
            changed.push("env");
        }
    }
    if let Some(h) = &req.health_check {
        let h = HealthCheckSpec::from(h);
        if h != spec.health_check {
            spec.health_check = h;
            new_version = true;
            changed.push("health_check");
        }
    }
    if let Some(n) = &req.networking {
        let mut errs = vec![];
        n.check(&mut errs, &a.name);
        if !errs.is_empty() {
            return Err(Error::invalid(errs));
        }
        let before = spec.networking.clone();
        n.apply(&mut spec.networking)?;
        if spec.networking.public != before.public {
            // The ingress's table only (Routes is touched): no new instances.
            changed.push("networking.public");
        }
        if spec.networking.allowed_egress != before.allowed_egress {
            // Set when an instance starts: roll them.
            new_version = true;
            changed.push("networking.allowed_egress");
        }
    }
    if let Some(l) = &req.logging {
        // Read by the nodes with every sync: applies without a rollout.
        let new = (*l != Default::default()).then(|| l.into());
        if new != spec.logging {
            spec.logging = new;
            changed.push("logging");
        }
    }
    let mut strategy = Strategy::Rolling;
    if let Some(i) = &req.image {
        if spec.image.as_ref() != Some(i) {
            spec.image = Some(i.clone());
            spec.source = None;
            new_version = true;
            strategy = Strategy::BlueGreen;
            changed.push("image");
        }
    }
    if let Some(r) = req.replicas {
        if r != a.replicas {
            a.replicas = r;
            changed.push("replicas");
        }
    }
    if let Some(t) = &req.tags {
        apps::set_tags(&mut tx, app_id, t).await?;
        changed.push("tags");
    }
    if new_version {
        deploy::start(
            &mut tx,
            &p.actor(),
            &mut a,
            deploy::Target::New,
            strategy,
            deploy::Options::default(),
            &format!("changed {}", changed.join(", ")),
            None,
        )
        .await?;
    }
    apps::update(&mut tx, &a).await?;
    tx.record(
        NewEvent::info("app.updated", &p.actor(), "app", app_id)
            .in_org(&a.organization_id)
            .meta(json!({"changed": changed, "version": a.version})),
    );
    reconcile_in(&mut tx, app_id).await?;
    tx.commit().await
}

pub async fn app_delete(ctx: &ServerCtx, p: &Principal, app_id: &str) -> Result<(), Error> {
    p.authorize("apps", "delete", Some(app_id))
        .or_else(|_| p.authorize("apps", "write", Some(app_id)))?;
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let a = locked(&mut tx, p, app_id).await?;
    let insts = apps::instances_of_app(&mut tx, app_id).await?;
    // The nodes' rows before the instances' (the order an agent's report
    // locks them in; see `stop_instance`).
    let nodes: BTreeSet<&String> = insts.iter().filter_map(|i| i.node_id.as_ref()).collect();
    for n in nodes {
        shellwego_store::nodes::bump_node(&mut tx, n).await?;
    }
    for mut i in insts {
        if i.node_id.is_none() {
            apps::delete_instance(&mut tx, &i.id).await?;
        } else if i.desired != DesiredState::Stopped {
            i.desired = DesiredState::Stopped;
            i.status = InstanceStatus::Stopping;
            apps::update_instance(&mut tx, &i).await?;
        }
    }
    let mut a = a;
    deploy::cancel_active(&mut tx, &mut a, "the app was deleted").await?;
    shellwego_store::deployments::delete_releases(&mut tx, app_id).await?;
    apps::delete(&mut tx, app_id).await?;
    // Its own secrets go with it (their values once no instance uses them).
    for (id, name) in shellwego_store::secrets::delete_of_app(&mut tx, app_id).await? {
        tx.record(
            NewEvent::info("secret.deleted", &p.actor(), "secret", &id)
                .in_org(&a.organization_id)
                .meta(json!({"name": name, "scope": "app", "app_id": app_id, "with_app": true})),
        );
    }
    crate::service::domains::delete_of_app(&mut tx, &p.actor(), &a.organization_id, app_id).await?;
    tx.record(
        NewEvent::info("app.deleted", &p.actor(), "app", app_id)
            .in_org(&a.organization_id)
            .meta(json!({"name": a.name})),
    );
    tx.commit().await
}

/// `start`, `stop` or `restart`.
pub async fn app_action(
    ctx: &ServerCtx,
    p: &Principal,
    app_id: &str,
    action: AppAction,
    restart: Option<&RestartRequest>,
) -> Result<App, Error> {
    p.authorize("apps", "write", Some(app_id))?;
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let mut a = locked(&mut tx, p, app_id).await?;
    let mut meta = json!({});
    let event = match action {
        AppAction::Start => {
            a.desired_state = DesiredState::Running;
            "app.started"
        }
        AppAction::Stop => {
            a.desired_state = DesiredState::Stopped;
            deploy::cancel_active(
                &mut tx,
                &mut a,
                "the app was stopped before the deployment completed",
            )
            .await?;
            "app.stopped"
        }
        AppAction::Restart => {
            let r = restart.cloned().unwrap_or_default();
            let strategy = r.strategy.unwrap_or_default().strategy();
            let surge = r.max_surge.or(r.batch_size).unwrap_or(DEFAULT_BATCH);
            let unavailable = r.max_unavailable.unwrap_or(0);
            meta =
                json!({"strategy": strategy, "max_surge": surge, "max_unavailable": unavailable});
            let d = deploy::start(
                &mut tx,
                &p.actor(),
                &mut a,
                deploy::Target::New,
                strategy,
                deploy::Options {
                    max_surge: surge,
                    max_unavailable: unavailable,
                    ..Default::default()
                },
                "restart",
                None,
            )
            .await?;
            if strategy == Strategy::Immediate {
                for mut i in apps::instances_of_app(&mut tx, app_id).await? {
                    if i.desired == DesiredState::Running && i.version != d.version {
                        stop_instance(&mut tx, &mut i, "restarted").await?;
                    }
                }
            }
            "app.restarted"
        }
    };
    apps::update(&mut tx, &a).await?;
    tx.record(
        NewEvent::info(event, &p.actor(), "app", app_id)
            .in_org(&a.organization_id)
            .meta(meta),
    );
    reconcile_in(&mut tx, app_id).await?;
    tx.commit().await?;
    app_get(ctx, p, app_id).await
}

pub async fn app_scale(
    ctx: &ServerCtx,
    p: &Principal,
    app_id: &str,
    req: &ScaleRequest,
) -> Result<App, Error> {
    p.authorize("apps", "write", Some(app_id))?;
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let mut a = locked(&mut tx, p, app_id).await?;
    let before = a.replicas;
    let mode = req.strategy.unwrap_or(ScaleMode::Manual);
    match mode {
        ScaleMode::Auto => {
            a.spec.autoscale = req.constraints.as_ref().map(Into::into);
            if let Some(c) = &req.constraints {
                a.replicas = req.replicas.unwrap_or(a.replicas).clamp(c.min, c.max);
            }
        }
        ScaleMode::Manual => {
            a.spec.autoscale = None;
            a.replicas = req.replicas.unwrap_or(a.replicas);
        }
    }
    apps::update(&mut tx, &a).await?;
    if mode == ScaleMode::Auto {
        // The autoscaler's cooldowns count from here.
        shellwego_store::metrics::set_autoscaled_at(
            &mut tx,
            app_id,
            shellwego_core::time::to_micros(shellwego_core::time::now()),
        )
        .await?;
    }
    tx.record(NewEvent::info("app.scaled", &p.actor(), "app", app_id)
            .in_org(&a.organization_id)
            .meta(json!({"from": before, "to": a.replicas, "strategy": mode, "constraints": req.constraints})));
    reconcile_in(&mut tx, app_id).await?;
    tx.commit().await?;
    app_get(ctx, p, app_id).await
}

/// The instances of apps the caller fetched through this service (so
/// already scoped to what it may see).
pub async fn instances_of(ctx: &ServerCtx, apps: &[&App]) -> Result<Vec<Instance>, Error> {
    let ids: Vec<String> = apps.iter().map(|a| a.id.clone()).collect();
    apps::instances_of_apps(&mut *ctx.store.conn().await?, &ids).await
}

/// Where upload `id`'s archive is kept in the object storage.
pub fn upload_key(id: &str) -> String {
    format!("uploads/{id}")
}

/// The largest archive `POST /v1/uploads` takes.
pub const MAX_UPLOAD: u64 = 1 << 30;

/// Keep an uploaded archive (streamed to the object storage every replica
/// reaches, then recorded): its id, size and SHA-256 (lower-case hex).
pub async fn upload_create<B: AsRef<[u8]>>(
    ctx: &ServerCtx,
    p: &Principal,
    stream: impl futures::Stream<Item = Result<B, Error>> + Unpin,
) -> Result<(String, i64, String), Error> {
    p.authorize("apps", "write", None)?;
    let id = shellwego_core::id::new_id("upl");
    let key = upload_key(&id);
    let objects = &ctx.config.objects;
    let stored = objects
        .put(&key, stream, MAX_UPLOAD, || {
            Error::PayloadTooLarge("An upload is at most 1 GiB.".into())
        })
        .await?;
    if stored.size == 0 {
        objects.delete(&key).await?;
        return Err(Error::field(
            "body",
            "required",
            "send the archive (.tar or .tar.gz) as the request body",
        ));
    }
    let (size, sha) = (stored.size, stored.sha256);
    let mut tx = ctx.unit().await?;
    apps::insert_upload(
        &mut tx,
        &id,
        &p.organization_id,
        size as i64,
        &sha,
        p.user_id.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok((id, size as i64, sha))
}
