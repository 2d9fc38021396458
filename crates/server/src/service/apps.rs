//! Apps: the API's operations, and the controller that turns an app's
//! desired state into instances placed on nodes.
//!
//! One mechanism covers every change of what runs where:
//! - an instance that must go while the app keeps serving (an older app
//!   version after a change or a rolling restart, or an instance on a
//!   draining node) is *retiring*: a replacement of the current version is
//!   created next to it (`replaces`), and only once the replacement reports
//!   healthy is the retiring instance told to stop — at most `batch` such
//!   replacements are in flight per app;
//! - an instance that cannot be relied upon (its node went offline or was
//!   deleted) is *lost*: it is dropped at once and a new one is created;
//! - the replica count is kept by creating or stopping instances.
//!
//! New instances are placed by `shellwego_core::sched`; those that fit
//! nowhere stay unplaced and the app is `pending` with the scheduler's
//! reason until a later pass (a node joining, capacity freed) places them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::json;
use shellwego_api::apps::{
    resolve_resources, AppCreate, AppSpec, AppUpdate, RestartRequest, ScaleRequest, Source,
};
use shellwego_core::list::ListParams;
use shellwego_core::sched::{Cluster, NodeState, Request, MAX_INSTANCES_PER_NODE};
use shellwego_core::units::parse_duration;
use shellwego_core::Error;
use shellwego_core::FieldError;
use shellwego_net::ssrf::{Guard, SsrfError};
use shellwego_store::apps::{self, App, Instance, APPS};
use shellwego_store::events::{self, Actor, NewEvent, Severity};
use shellwego_store::list::{Page, Scope};
use shellwego_store::{commit, Store, Tx};

use crate::auth::Principal;
use crate::service::deploy;

/// Replacements in flight per app when nothing else is said.
const DEFAULT_BATCH: i64 = 1;
/// Restarts in a row after which a crashing instance makes the app `error`.
const CRASH_LOOP_RESTARTS: i64 = 3;

pub fn spec_of(a: &App) -> AppSpec {
    serde_json::from_str(&a.spec).unwrap_or_default()
}

fn spec_json(s: &AppSpec) -> Result<String, Error> {
    serde_json::to_string(s).map_err(Error::internal)
}

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
    store: &Store,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<App>, Error> {
    p.authorize("apps", "list", None)
        .or_else(|_| p.authorize("apps", "read", None))?;
    let mut page = store
        .list(&APPS, &visible_scope(p), params, apps::from_row)
        .await?;
    let ids: Vec<String> = page.items.iter().map(|a| a.id.clone()).collect();
    let tags = store.tags_of_apps(&ids).await?;
    for a in &mut page.items {
        a.tags = tags
            .iter()
            .filter(|(id, _)| *id == a.id)
            .map(|(_, t)| t.clone())
            .collect();
    }
    Ok(page)
}

pub async fn app_get(store: &Store, p: &Principal, app_id: &str) -> Result<App, Error> {
    p.authorize("apps", "read", Some(app_id))?;
    store
        .app(app_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("app", app_id))
}

fn org_allowed_regions(settings: &serde_json::Value) -> Vec<String> {
    settings["allowed_regions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
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

fn target_error(field: &str, value: &str, e: &SsrfError) -> Error {
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
    store: &Store,
    guard: &Guard,
    p: &Principal,
    req: &AppCreate,
) -> Result<(App, String), Error> {
    p.authorize("apps", "write", None)?;
    check_fetch_targets(guard, req.image.as_deref(), req.source.as_ref()).await?;
    let org = store
        .organization(&p.organization_id)
        .await?
        .ok_or_else(|| Error::not_found("organization", &p.organization_id))?;
    if let Some(upl) = req.source.as_ref().and_then(|s| s.upload_id.as_ref()) {
        if !store.upload_exists(upl, &p.organization_id).await? {
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
    if store.app_count(&org.id).await? >= i64::from(org.plan.apps_limit()) {
        return Err(Error::QuotaExceeded(format!(
            "The {} plan allows {} apps; delete one or upgrade the plan.",
            org.plan.as_str(),
            org.plan.apps_limit()
        )));
    }
    let (memory, cpu_millis, disk) = resolve_resources(&req.resources);
    let spec = AppSpec {
        image: req.image.clone(),
        command: req.command.clone(),
        env: req.env.clone(),
        domains: req.domains.clone(),
        volumes: req.volumes.clone(),
        health_check: req.health_check.clone().unwrap_or_default(),
        source: req.source.clone(),
        runtime: req.runtime.clone(),
        placement: req.placement.clone().unwrap_or_default(),
        stop_timeout: req.stop_timeout.clone(),
        autoscale: None,
        rollout_batch: None,
    };
    let mut tx = store.begin().await?;
    let mut app = apps::insert(
        &mut tx,
        App {
            organization_id: org.id.clone(),
            name: req.name.clone(),
            status: "deploying".into(),
            desired_state: "running".into(),
            replicas: req.replicas.unwrap_or(1),
            memory,
            cpu_millis,
            disk,
            spec: spec_json(&spec)?,
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
        "rolling",
        deploy::Options::default(),
        "created",
        None,
    )
    .await?
    .id;
    apps::update(&mut tx, &app).await?;
    events::record(
        &mut tx,
        NewEvent::info("app.created", &p.actor(), "app", &app.id)
            .in_org(&app.organization_id)
            .meta(json!({"name": app.name, "replicas": app.replicas, "deployment_id": dep})),
    )
    .await?;
    reconcile_in(&mut tx, &app.id).await?;
    commit(tx).await?;
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
    store: &Store,
    guard: &Guard,
    p: &Principal,
    app_id: &str,
    req: &AppUpdate,
) -> Result<(), Error> {
    p.authorize("apps", "write", Some(app_id))?;
    check_fetch_targets(guard, req.image.as_deref(), None).await?;
    let mut tx = store.begin().await?;
    let mut a = locked(&mut tx, p, app_id).await?;
    let mut spec = spec_of(&a);
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
        let before = spec.env.clone();
        for (k, v) in env {
            match v {
                Some(v) => spec.env.insert(k.clone(), v.clone()),
                None => spec.env.remove(k),
            };
        }
        if spec.env != before {
            new_version = true;
            changed.push("env");
        }
    }
    if let Some(h) = &req.health_check {
        if *h != spec.health_check {
            spec.health_check = h.clone();
            new_version = true;
            changed.push("health_check");
        }
    }
    let mut strategy = "rolling";
    if let Some(i) = &req.image {
        if spec.image.as_ref() != Some(i) {
            spec.image = Some(i.clone());
            spec.source = None;
            new_version = true;
            strategy = "blue-green";
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
    a.spec = spec_json(&spec)?;
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
    events::record(
        &mut tx,
        NewEvent::info("app.updated", &p.actor(), "app", app_id)
            .in_org(&a.organization_id)
            .meta(json!({"changed": changed, "version": a.version})),
    )
    .await?;
    reconcile_in(&mut tx, app_id).await?;
    commit(tx).await
}

pub async fn app_delete(store: &Store, p: &Principal, app_id: &str) -> Result<(), Error> {
    p.authorize("apps", "delete", Some(app_id))
        .or_else(|_| p.authorize("apps", "write", Some(app_id)))?;
    let mut tx = store.begin().await?;
    let a = locked(&mut tx, p, app_id).await?;
    let mut nodes = BTreeSet::new();
    for mut i in apps::instances_of_app(&mut tx, app_id).await? {
        if let Some(n) = &i.node_id {
            nodes.insert(n.clone());
        }
        if i.node_id.is_none() {
            apps::delete_instance(&mut tx, &i.id).await?;
        } else if i.desired != "stopped" {
            i.desired = "stopped".into();
            i.status = "stopping".into();
            apps::update_instance(&mut tx, &i).await?;
        }
    }
    for n in &nodes {
        apps::bump_node(&mut tx, n).await?;
    }
    let mut a = a;
    deploy::cancel_active(&mut tx, &mut a, "the app was deleted").await?;
    shellwego_store::deployments::delete_releases(&mut tx, app_id).await?;
    apps::delete(&mut tx, app_id).await?;
    events::record(
        &mut tx,
        NewEvent::info("app.deleted", &p.actor(), "app", app_id)
            .in_org(&a.organization_id)
            .meta(json!({"name": a.name})),
    )
    .await?;
    commit(tx).await
}

/// `start`, `stop` or `restart`.
pub async fn app_action(
    store: &Store,
    p: &Principal,
    app_id: &str,
    action: &str,
    restart: Option<&RestartRequest>,
) -> Result<App, Error> {
    p.authorize("apps", "write", Some(app_id))?;
    let mut tx = store.begin().await?;
    let mut a = locked(&mut tx, p, app_id).await?;
    let mut meta = json!({});
    let event = match action {
        "start" => {
            a.desired_state = "running".into();
            "app.started"
        }
        "stop" => {
            a.desired_state = "stopped".into();
            deploy::cancel_active(
                &mut tx,
                &mut a,
                "the app was stopped before the deployment completed",
            )
            .await?;
            "app.stopped"
        }
        _ => {
            let r = restart.cloned().unwrap_or_default();
            let strategy = r.strategy.unwrap_or_else(|| "rolling".into());
            let surge = r.max_surge.or(r.batch_size).unwrap_or(DEFAULT_BATCH);
            let unavailable = r.max_unavailable.unwrap_or(0);
            meta =
                json!({"strategy": strategy, "max_surge": surge, "max_unavailable": unavailable});
            let d = deploy::start(
                &mut tx,
                &p.actor(),
                &mut a,
                deploy::Target::New,
                &strategy,
                deploy::Options {
                    max_surge: surge,
                    max_unavailable: unavailable,
                    ..Default::default()
                },
                "restart",
                None,
            )
            .await?;
            if strategy == "immediate" {
                for mut i in apps::instances_of_app(&mut tx, app_id).await? {
                    if i.desired == "running" && i.version != d.version {
                        stop_instance(&mut tx, &mut i, "restarted").await?;
                    }
                }
            }
            "app.restarted"
        }
    };
    apps::update(&mut tx, &a).await?;
    events::record(
        &mut tx,
        NewEvent::info(event, &p.actor(), "app", app_id)
            .in_org(&a.organization_id)
            .meta(meta),
    )
    .await?;
    reconcile_in(&mut tx, app_id).await?;
    commit(tx).await?;
    app_get(store, p, app_id).await
}

pub async fn app_scale(
    store: &Store,
    p: &Principal,
    app_id: &str,
    req: &ScaleRequest,
) -> Result<App, Error> {
    p.authorize("apps", "write", Some(app_id))?;
    let mut tx = store.begin().await?;
    let mut a = locked(&mut tx, p, app_id).await?;
    let mut spec = spec_of(&a);
    let before = a.replicas;
    match req.strategy.as_deref().unwrap_or("manual") {
        "auto" => {
            spec.autoscale = req.constraints.clone();
            if let Some(c) = &req.constraints {
                a.replicas = req.replicas.unwrap_or(a.replicas).clamp(c.min, c.max);
            }
        }
        _ => {
            spec.autoscale = None;
            a.replicas = req.replicas.unwrap_or(a.replicas);
        }
    }
    a.spec = spec_json(&spec)?;
    apps::update(&mut tx, &a).await?;
    events::record(
        &mut tx,
        NewEvent::info("app.scaled", &p.actor(), "app", app_id)
            .in_org(&a.organization_id)
            .meta(json!({"from": before, "to": a.replicas, "strategy": req.strategy.as_deref().unwrap_or("manual"), "constraints": req.constraints})),
    )
    .await?;
    reconcile_in(&mut tx, app_id).await?;
    commit(tx).await?;
    app_get(store, p, app_id).await
}

pub(crate) async fn stop_instance(tx: &mut Tx, i: &mut Instance, why: &str) -> Result<(), Error> {
    match &i.node_id {
        None => apps::delete_instance(tx, &i.id).await?,
        Some(n) => {
            i.desired = "stopped".into();
            i.status = "stopping".into();
            i.status_reason = Some(why.into());
            apps::update_instance(tx, i).await?;
            apps::bump_node(tx, n).await?;
        }
    }
    Ok(())
}

/// Reconcile one app in its own transaction.
pub async fn reconcile(store: &Store, app_id: &str) -> Result<(), Error> {
    let mut tx = store.begin().await?;
    reconcile_in(&mut tx, app_id).await?;
    commit(tx).await
}

/// Make the app's instances match its desired state, place what is
/// unplaced, and derive its status. Idempotent: a second call changes
/// nothing.
pub async fn reconcile_in(tx: &mut Tx, app_id: &str) -> Result<(), Error> {
    // A deployment that re-targets the app (a switch, a rollback) is acted
    // upon in the same transaction.
    for _ in 0..3 {
        if !reconcile_pass(tx, app_id).await? {
            break;
        }
    }
    Ok(())
}

/// One pass; true when the app's deployment changed the app row.
async fn reconcile_pass(tx: &mut Tx, app_id: &str) -> Result<bool, Error> {
    let Some(mut a) = apps::get_for_update(tx, app_id).await? else {
        return Ok(false);
    };
    let mut dep = shellwego_store::deployments::active(tx, app_id).await?;
    let rooms = apps::node_rooms(tx, &a.organization_id).await?;
    let node_status: HashMap<String, String> = rooms
        .iter()
        .map(|(n, ..)| (n.id.clone(), n.status.clone()))
        .collect();
    let now_us = shellwego_core::time::to_micros(shellwego_core::time::now());
    let plan = deploy::plan(dep.as_ref(), a.replicas, now_us);
    let mut insts: Vec<Instance> = apps::instances_of_app(tx, app_id).await?;
    let wanted = if a.desired_state == "running" {
        a.replicas
    } else {
        0
    };

    // 1. Lost: on a node that is offline or gone.
    for i in insts.iter_mut().filter(|i| i.desired == "running") {
        let Some(n) = &i.node_id else { continue };
        let status = node_status.get(n).map(String::as_str);
        if status.is_none() || status == Some("offline") {
            i.desired = "stopped".into();
            i.status = "lost".into();
            i.status_reason = Some(match status {
                None => "its node was removed".into(),
                Some(_) => format!("its node {n} went offline"),
            });
            // Nothing will confirm the stop; the row goes now (the agent
            // stops anything it is no longer told to run when it returns).
            apps::delete_instance(tx, &i.id).await?;
            events::record(
                tx,
                NewEvent::info("instance.lost", &Actor::system(), "app", app_id)
                    .in_org(&a.organization_id)
                    .severity(Severity::Warning)
                    .meta(json!({"instance_id": i.id, "node_id": n, "reason": i.status_reason})),
            )
            .await?;
        }
    }
    // A drain past its deadline stops what it has not moved yet.
    for i in insts.iter_mut().filter(|i| i.desired == "running") {
        let Some(n) = i.node_id.clone() else { continue };
        let overdue = rooms.iter().any(|(r, ..)| {
            r.id == n && r.status == "draining" && r.drain_deadline.is_some_and(|d| d < now_us)
        });
        if overdue {
            stop_instance(tx, i, "the node's drain timed out").await?;
        }
    }
    // A replacement whose retiring instance is gone is a plain instance now.
    let running_ids: BTreeSet<String> = insts
        .iter()
        .filter(|i| i.desired == "running")
        .map(|i| i.id.clone())
        .collect();
    for i in insts.iter_mut().filter(|i| i.desired == "running") {
        if i.replaces
            .as_ref()
            .is_some_and(|r| !running_ids.contains(r))
        {
            i.replaces = None;
            apps::update_instance(tx, i).await?;
        }
    }
    let target_version = a.version;
    let retiring = |i: &Instance| {
        i.desired == "running"
            && (i.version != target_version
                || i.node_id.as_ref().is_some_and(|n| {
                    matches!(
                        node_status.get(n).map(String::as_str),
                        Some("draining") | Some("maintenance")
                    )
                }))
    };

    // 2. Replacements that are healthy retire what they replace (unless
    // the deployment holds the old set: blue-green until its switch and
    // warm window are over).
    let healthy_repl: Vec<(String, String)> = insts
        .iter()
        .filter(|i| i.desired == "running" && i.status == "healthy" && !plan.hold_old)
        .filter_map(|i| i.replaces.clone().map(|r| (i.id.clone(), r)))
        .collect();
    for (new_id, old_id) in healthy_repl {
        if let Some(old) = insts.iter_mut().find(|i| i.id == old_id) {
            stop_instance(tx, old, "replaced by a healthy instance").await?;
        }
        if let Some(new) = insts.iter_mut().find(|i| i.id == new_id) {
            new.replaces = None;
            apps::update_instance(tx, new).await?;
        }
    }
    insts.retain(|i| i.desired == "running" || i.node_id.is_some());

    // 3. The replica count: slots are current instances plus retiring ones
    // (a retiring instance holds its slot until its replacement is healthy).
    let active: Vec<&Instance> = insts
        .iter()
        .filter(|i| i.desired == "running" && i.replaces.is_none())
        .collect();
    let slots = active.len() as i64;
    let mut to_create = 0;
    if slots < wanted {
        to_create = wanted - slots;
    } else if slots > wanted {
        // Stop the least useful first: retiring, unplaced, not healthy, newest.
        let mut order: Vec<(i32, i64, String)> = active
            .iter()
            .map(|i| {
                let rank = if retiring(i) {
                    0
                } else if i.node_id.is_none() {
                    1
                } else if i.status != "healthy" {
                    2
                } else {
                    3
                };
                (rank, -i.created_at, i.id.clone())
            })
            .collect();
        order.sort();
        let extra: BTreeSet<String> = order
            .into_iter()
            .take((slots - wanted) as usize)
            .map(|(_, _, id)| id)
            .collect();
        for i in insts.iter_mut().filter(|i| i.desired == "running") {
            let victim =
                extra.contains(&i.id) || i.replaces.as_ref().is_some_and(|r| extra.contains(r));
            if victim {
                stop_instance(tx, i, "scaled down").await?;
            }
        }
        insts.retain(|i| i.desired == "running" || i.node_id.is_some());
    }

    // 4. Retiring instances get replacements. A replacement starts next
    // to what it replaces (a surge instance: `plan.surge` of the app's in
    // flight at a time, or, for instances on a draining node, the drain's
    // batch across every app on that node) or, once the surge is spent and
    // the plan allows it, in place: what it replaces stops first, while at
    // most `plan.unavailable` instances are down (one not healthy is down
    // already and may go at any time).
    let in_flight = insts
        .iter()
        .filter(|i| i.desired == "running" && i.replaces.is_some() && i.status != "healthy")
        .count() as i64;
    let mut surge_budget = plan.surge.saturating_sub(in_flight).max(0);
    let available = |insts: &[Instance]| {
        insts
            .iter()
            .filter(|i| i.desired == "running" && i.status == "healthy")
            .count() as i64
    };
    let mut down_budget = plan.unavailable - (wanted - available(&insts)).max(0);
    let mut node_budget: HashMap<String, i64> = HashMap::new();
    let replaced: BTreeSet<String> = insts.iter().filter_map(|i| i.replaces.clone()).collect();
    let needing: Vec<(String, Option<(String, i64)>)> = insts
        .iter()
        .filter(|i| retiring(i) && !replaced.contains(&i.id))
        .map(|i| {
            let drain = i.node_id.as_ref().and_then(|n| {
                rooms
                    .iter()
                    .find(|(r, ..)| &r.id == n && r.status == "draining")
                    .map(|(r, ..)| (r.id.clone(), r.drain_batch.unwrap_or(1).max(1)))
            });
            (i.id.clone(), drain)
        })
        .collect();
    // A canary step caps the new version's instances.
    let mut new_room = plan.max_new.map(|m| {
        m - insts
            .iter()
            .filter(|i| i.desired == "running" && i.version == target_version)
            .count() as i64
    });
    let mut new_instances: Vec<Instance> = vec![];
    for (old, drain) in needing {
        if new_room.is_some_and(|r| r <= 0) {
            break;
        }
        match &drain {
            Some((node, node_batch)) => {
                if !node_budget.contains_key(node) {
                    let moving = apps::drain_in_flight(tx, node).await?;
                    node_budget.insert(node.clone(), node_batch - moving);
                }
                let Some(budget) = node_budget.get_mut(node).filter(|b| **b > 0) else {
                    continue;
                };
                *budget -= 1;
                new_instances.push(Instance {
                    replaces: Some(old),
                    ..blank_instance(&a)
                });
            }
            None if surge_budget > 0 => {
                surge_budget -= 1;
                new_instances.push(Instance {
                    replaces: Some(old),
                    ..blank_instance(&a)
                });
            }
            None if plan.in_place => {
                let Some(o) = insts.iter_mut().find(|i| i.id == old) else {
                    continue;
                };
                let down = o.status != "healthy";
                if !down && down_budget <= 0 {
                    continue;
                }
                if !down {
                    down_budget -= 1;
                }
                stop_instance(tx, o, "replaced in place").await?;
                new_instances.push(blank_instance(&a));
            }
            None => continue,
        }
        if let Some(r) = new_room.as_mut() {
            *r -= 1;
        }
    }
    for _ in 0..to_create {
        new_instances.push(blank_instance(&a));
    }
    for i in new_instances {
        insts.push(apps::insert_instance(tx, i).await?);
    }

    // 5. Place what is unplaced. A stopping instance holds its room until
    // its agent reports it gone.
    let org = apps::org_settings(tx, &a.organization_id).await?;
    let spec = spec_of(&a);
    let mut nodes_idx: Vec<String> = vec![];
    let mut cluster = Cluster::new(
        rooms
            .iter()
            .map(|(n, used_mem, used_cpu, used_slots)| {
                nodes_idx.push(n.id.clone());
                NodeState {
                    id: n.id.clone(),
                    ready: n.status == "ready",
                    region: n.region.clone(),
                    zone: n.zone.clone(),
                    drivers: n.drivers.clone(),
                    labels: n.labels.clone(),
                    free_cpu_millis: n.cpu_millis - used_cpu,
                    free_memory: n.memory - used_mem,
                    free_slots: MAX_INSTANCES_PER_NODE - used_slots,
                }
            })
            .collect(),
    );
    for i in insts.iter().filter(|i| i.desired == "running") {
        if let Some(idx) = i
            .node_id
            .as_ref()
            .and_then(|n| nodes_idx.iter().position(|x| x == n))
        {
            cluster.count_existing(&a.id, idx);
        }
    }
    // The room there will be once the app's stopping instances are gone.
    let mut after_stops = cluster.clone();
    for i in insts.iter().filter(|i| i.desired != "running") {
        if let Some(idx) = i
            .node_id
            .as_ref()
            .and_then(|n| nodes_idx.iter().position(|x| x == n))
        {
            after_stops.free(idx, i.memory, i.cpu_millis);
        }
    }
    let req = Request {
        app_id: a.id.clone(),
        memory: a.memory,
        cpu_millis: a.cpu_millis,
        driver: spec.runtime.clone(),
        region: spec.placement.region.clone(),
        labels: spec.placement.labels.clone(),
        allowed_regions: org_allowed_regions(&org),
        image: spec.image.is_some(),
    };
    let mut unplaced_reason: Option<String> = None;
    // An instance that has no room yet but will have once stopping
    // instances are gone (replacing in place, or waiting for a stop).
    let mut room_coming: Option<String> = None;
    let mut fell_back = false;
    let mut in_place_down = plan.in_place_unavailable() - (wanted - available(&insts)).max(0);
    let mut touched = BTreeSet::new();
    // Where the instance a replacement replaces lives, if it is draining
    // to chosen destinations.
    let destinations_of = |old: &Option<String>, insts: &[Instance]| -> Vec<String> {
        old.as_ref()
            .and_then(|o| insts.iter().find(|i| &i.id == o))
            .and_then(|o| o.node_id.as_ref())
            .and_then(|n| {
                rooms
                    .iter()
                    .find(|(r, ..)| &r.id == n && r.status == "draining")
            })
            .map(|(r, ..)| r.drain_destinations.clone())
            .unwrap_or_default()
    };
    for k in 0..insts.len() {
        if !(insts[k].desired == "running" && insts[k].node_id.is_none()) {
            continue;
        }
        let dest = destinations_of(&insts[k].replaces, &insts);
        let placed = if dest.is_empty() {
            cluster.place(&req)
        } else {
            cluster.place_within(&req, &dest)
        };
        let mut coming = false;
        if placed.is_err() {
            // No room for a surge replacement: replace in place if what it
            // replaces is retiring for a new version on a ready node, its
            // room would take the replacement, and no more than allowed
            // are down. The replacement is placed once it has stopped.
            let old = insts[k]
                .replaces
                .as_ref()
                .filter(|_| plan.in_place && dest.is_empty())
                .and_then(|r| {
                    insts
                        .iter()
                        .position(|i| &i.id == r && i.desired == "running")
                })
                .filter(|&o| insts[o].version != target_version)
                .and_then(|o| {
                    let n = insts[o].node_id.as_ref()?;
                    let idx = nodes_idx.iter().position(|x| x == n)?;
                    (node_status.get(n).map(String::as_str) == Some("ready")).then_some((o, idx))
                });
            if let Some((o, idx)) = old {
                let mut trial = after_stops.clone();
                trial.release(&a.id, idx, insts[o].memory, insts[o].cpu_millis);
                if trial.place(&req).is_ok() {
                    coming = true;
                    let down = insts[o].status != "healthy";
                    if down || in_place_down > 0 {
                        if !down {
                            in_place_down -= 1;
                        }
                        stop_instance(
                            tx,
                            &mut insts[o],
                            "replaced in place: no room for a surge instance",
                        )
                        .await?;
                        after_stops = trial;
                        insts[k].replaces = None;
                        apps::update_instance(tx, &insts[k]).await?;
                        fell_back = true;
                    }
                }
            } else if after_stops.clone().place(&req).is_ok() {
                coming = true;
            }
        } else {
            let _ = after_stops.place(&req);
        }
        let i = &mut insts[k];
        match placed {
            Ok(pl) => {
                let node = nodes_idx[pl.node].clone();
                i.node_id = Some(node.clone());
                i.driver = Some(pl.driver);
                i.status = "pending".into();
                i.status_reason = None;
                apps::update_instance(tx, i).await?;
                touched.insert(node);
            }
            Err(why) => {
                if i.status_reason.as_deref() != Some(why.as_str()) {
                    i.status_reason = Some(why.clone());
                    apps::update_instance(tx, i).await?;
                }
                if coming {
                    room_coming = Some(why);
                } else {
                    unplaced_reason = Some(why);
                }
            }
        }
    }
    for n in &touched {
        apps::bump_node(tx, n).await?;
    }
    // No node at all, but some registered: they are about to join (the
    // local agent of `shellwego up` joins its own within seconds).
    if unplaced_reason.is_some() && rooms.is_empty() {
        let joining = apps::joining_nodes(tx, &a.organization_id).await?;
        if joining > 0 {
            unplaced_reason = Some(format!(
                "no node has joined this organization yet; {joining} registered node(s) wait for their agent to join"
            ));
        }
    }
    if let Some(d) = dep.as_mut().filter(|_| fell_back) {
        let mut o = deploy::options_of(d);
        if !o.in_place {
            o.in_place = true;
            d.options = serde_json::to_string(&o).map_err(Error::internal)?;
            shellwego_store::deployments::update(tx, d).await?;
            let n = plan.in_place_unavailable();
            shellwego_store::deployments::log(tx, &d.id, &deploy::in_place_reason(n, None)).await?;
            events::record(
                tx,
                NewEvent::info("deployment.in_place", &Actor::system(), "app", &a.id)
                    .in_org(&a.organization_id)
                    .severity(Severity::Warning)
                    .meta(json!({"deployment_id": d.id, "max_unavailable": n, "reason": "no node has room for a surge instance"})),
            )
            .await?;
        }
    }

    // 6. The deployment moves on from what is true now.
    if let Some(d) = dep.as_mut() {
        if deploy::advance(tx, &mut a, &insts, d).await? {
            apps::update(tx, &a).await?;
            return Ok(true);
        }
    }

    // 7. Status, from what agents report.
    let current: Vec<&Instance> = insts.iter().filter(|i| i.desired == "running").collect();
    let healthy = current
        .iter()
        .filter(|i| i.status == "healthy" && !retiring(i))
        .count() as i64;
    let crashing = current.iter().find(|i| {
        matches!(i.status.as_str(), "crashed" | "failed")
            && (i.restarts >= CRASH_LOOP_RESTARTS || i.status == "failed")
    });
    let stopping = insts.iter().filter(|i| i.desired == "stopped").count();
    let any_retiring = current.iter().any(|i| retiring(i));
    let (status, reason): (&str, Option<String>) = if let Some(why) = unplaced_reason {
        ("pending", Some(why))
    } else if let Some(why) = room_coming {
        let in_place = fell_back || dep.as_ref().is_some_and(|d| deploy::options_of(d).in_place);
        (
            "deploying",
            Some(if in_place {
                deploy::in_place_reason(plan.in_place_unavailable(), Some(&why))
            } else {
                format!("waiting for stopping instances to free their room ({why})")
            }),
        )
    } else if wanted == 0 {
        if stopping > 0 || !current.is_empty() {
            (
                "deploying",
                Some(format!("stopping {} instance(s)", stopping + current.len())),
            )
        } else {
            ("stopped", None)
        }
    } else if let Some(c) = crashing.filter(|_| healthy < wanted) {
        (
            "error",
            Some(format!(
                "instance {} is crash-looping ({} restarts): {}",
                c.id,
                c.restarts,
                c.status_reason
                    .clone()
                    .unwrap_or_else(|| "it keeps exiting".into())
            )),
        )
    } else if healthy >= wanted && !any_retiring {
        ("running", None)
    } else {
        ("deploying", None)
    };
    if status != a.status || reason != a.status_reason {
        apps::set_status(tx, &a.id, status, reason.as_deref()).await?;
        let mut e = None;
        if status == "pending" && a.status != "pending" {
            e = Some(
                NewEvent::info("app.unschedulable", &Actor::system(), "app", &a.id)
                    .severity(Severity::Warning),
            );
        } else if status == "running" && a.status != "running" {
            e = Some(NewEvent::info(
                "app.running",
                &Actor::system(),
                "app",
                &a.id,
            ));
        } else if status == "error" && a.status != "error" {
            e = Some(
                NewEvent::info("app.error", &Actor::system(), "app", &a.id)
                    .severity(Severity::Error),
            );
        }
        if let Some(e) = e {
            events::record(
                tx,
                e.in_org(&a.organization_id)
                    .meta(json!({"reason": reason, "healthy": healthy, "desired": wanted})),
            )
            .await?;
        }
    }
    Ok(false)
}

fn blank_instance(a: &App) -> Instance {
    Instance {
        app_id: a.id.clone(),
        organization_id: a.organization_id.clone(),
        version: a.version,
        desired: "running".into(),
        status: "pending".into(),
        memory: a.memory,
        cpu_millis: a.cpu_millis,
        ..Default::default()
    }
}

/// What the agent reported, applied to the node's instance rows. Returns
/// the apps whose instances changed (to be reconciled). A report with a
/// `seq` no newer than the last applied one is stale (its call was
/// overtaken by a newer one): its instance statuses are ignored, its events
/// are still recorded (they are sent once).
pub async fn apply_reports(
    store: &Store,
    node_id: &str,
    org: &str,
    mut reports: Option<&[shellwego_api::nodes::InstanceReport]>,
    seq: Option<i64>,
    agent_events: &[shellwego_api::nodes::AgentEvent],
    node_ip: Option<&str>,
) -> Result<BTreeSet<String>, Error> {
    let mut changed = BTreeSet::new();
    if reports.is_none() && agent_events.is_empty() {
        return Ok(changed);
    }
    let mut tx = store.begin().await?;
    if let (Some(_), Some(seq)) = (reports, seq) {
        if !shellwego_store::nodes::claim_report_seq(&mut tx, node_id, seq).await? {
            tracing::debug!(node_id, seq, "stale instance report ignored");
            reports = None;
        }
    }
    let rows = apps::instances_on_node(&mut tx, node_id).await?;
    let by_id: BTreeMap<&str, &shellwego_api::nodes::InstanceReport> = reports
        .unwrap_or_default()
        .iter()
        .map(|r| (r.id.as_str(), r))
        .collect();
    for row in &rows {
        match by_id.get(row.id.as_str()) {
            Some(r) => {
                let mut i = row.clone();
                i.status = match (row.desired.as_str(), r.status.as_str()) {
                    ("stopped", "stopped") => "stopped".into(),
                    ("stopped", _) => "stopping".into(),
                    (_, s) => s.to_string(),
                };
                i.status_reason = r.reason.clone();
                i.driver = r.driver.clone().or(i.driver);
                i.ip =
                    r.ip.clone()
                        .or_else(|| node_ip.map(str::to_string))
                        .or(i.ip);
                i.port = r.port.map(i64::from).or(i.port);
                i.pid = r.pid.map(i64::from);
                i.started_at = r.started_at;
                i.health_checks_passed = r.health_checks_passed;
                i.restarts = r.restarts;
                if i != *row {
                    apps::update_instance(&mut tx, &i).await?;
                    if i.status != row.status || i.restarts != row.restarts {
                        changed.insert(row.app_id.clone());
                    }
                }
                if let Some(pinned) = &r.image_pinned {
                    shellwego_store::deployments::pin_release_image(
                        &mut tx,
                        &row.app_id,
                        row.version,
                        pinned,
                    )
                    .await?;
                    apps::set_image_pinned(&mut tx, &row.app_id, row.version, pinned).await?;
                }
            }
            None if reports.is_some() && row.desired == "stopped" => {
                apps::delete_instance(&mut tx, &row.id).await?;
                changed.insert(row.app_id.clone());
            }
            None => {}
        }
    }
    for e in agent_events {
        let row = rows.iter().find(|r| r.id == e.instance_id);
        if e.kind == "orphan_removed" {
            // Left on the host by an earlier run of the agent (often with
            // a data directory since removed, so unknown here): the node's.
            let actor = Actor {
                kind: "system".into(),
                id: Some(node_id.to_string()),
                ip: None,
            };
            events::record(
                &mut tx,
                NewEvent::info("instance.orphan_removed", &actor, "node", node_id)
                    .in_org(org)
                    .severity(Severity::Warning)
                    .meta(json!({"instance_id": e.instance_id, "node_id": node_id, "app_id": row.map(|r| &r.app_id), "reason": e.reason})),
            )
            .await?;
            continue;
        }
        let Some(row) = row else {
            continue;
        };
        let kind = match e.kind.as_str() {
            "crashed" | "oom_killed" => "app.crashed",
            "unhealthy" => "app.unhealthy",
            _ => "app.instance_failed",
        };
        events::record(
            &mut tx,
            NewEvent::info(kind, &Actor { kind: "system".into(), id: Some(node_id.to_string()), ip: None }, "app", &row.app_id)
                .in_org(org)
                .severity(Severity::Warning)
                .meta(json!({"instance_id": e.instance_id, "node_id": node_id, "kind": e.kind, "reason": e.reason, "exit_code": e.exit_code})),
        )
        .await?;
        changed.insert(row.app_id.clone());
    }
    commit(tx).await?;
    Ok(changed)
}

/// The node's desired state: every instance it should run, with its spec.
pub async fn desired_for_node(
    store: &Store,
    node_id: &str,
    region: &str,
) -> Result<Vec<shellwego_api::nodes::DesiredInstance>, Error> {
    let mut tx = store.begin().await?;
    let rows = apps::desired_on_node(&mut tx, node_id).await?;
    let releases: HashMap<(String, i64), shellwego_store::deployments::Release> =
        shellwego_store::deployments::releases_for_node(&mut tx, node_id)
            .await?
            .into_iter()
            .map(|r| ((r.app_id.clone(), r.version), r))
            .collect();
    commit(tx).await?;
    let mut out = vec![];
    for (i, a) in rows {
        // What the instance's own version runs (an older one during a
        // deployment), the image by digest once known.
        let release = releases.get(&(a.id.clone(), i.version));
        let spec: AppSpec = release
            .and_then(|r| serde_json::from_str(&r.spec).ok())
            .unwrap_or_else(|| spec_of(&a));
        let image = release
            .and_then(|r| r.image_pinned.clone())
            .or_else(|| spec.image.clone());
        let hc = &spec.health_check;
        let ms = |s: &Option<String>, d: u64| {
            s.as_deref()
                .and_then(parse_duration)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(d)
        };
        let archive_url = spec.source.as_ref().and_then(|s| {
            s.url.clone().or_else(|| {
                s.upload_id
                    .as_ref()
                    .map(|u| format!("/v1/agent/uploads/{u}"))
            })
        });
        out.push(shellwego_api::nodes::DesiredInstance {
            id: i.id,
            app_id: a.id.clone(),
            app_name: a.name.clone(),
            organization_id: a.organization_id.clone(),
            version: i.version,
            driver: i.driver.unwrap_or_else(|| "process".into()),
            image,
            archive_url,
            command: spec.command.clone(),
            env: spec.env.clone(),
            memory: i.memory,
            cpu_millis: i.cpu_millis,
            health_check: shellwego_api::nodes::DesiredHealthCheck {
                path: hc.path.clone(),
                port: hc.port,
                interval_ms: ms(&hc.interval, 10_000),
                timeout_ms: ms(&hc.timeout, 5_000),
                retries: hc.retries.unwrap_or(3),
                grace_ms: ms(&hc.grace_period, 30_000),
            },
            stop_timeout_ms: ms(&spec.stop_timeout, 10_000),
            region: region.to_string(),
        });
    }
    Ok(out)
}
