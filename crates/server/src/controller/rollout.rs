//! Deployments: every change of what an app's instances run (create,
//! deploy, a resources/env/health-check change, restart, rollback) makes a
//! new *release* (or re-targets an older one) and a deployment that drives
//! the app to it.
//!
//! The deployment is a durable state machine whose state is rows: the
//! deployment (strategy, options, stages, `wait_until`), the app (`version`:
//! the target release; `traffic`: which versions the routers send requests
//! to) and the instances with their versions. The controller's one
//! mechanism does the moving (a replacement is healthy before what it
//! replaces stops, see `apps::reconcile_in`); a deployment only says how:
//! how many replacements at once ([`Plan::batch`]), whether the old set is
//! held (blue-green keeps it warm after the switch), and where traffic goes.
//! [`advance`] runs in every controller pass inside the app's transaction:
//! it reads what is true, marks stages completed (never un-completes one),
//! detects failure and rolls back. A control plane that restarts mid-way
//! simply continues from the rows.
//!
//! Failure (a new instance cannot start, crash-loops, or is not healthy
//! within `health_check_timeout`) with `rollback_on_failure`: the app is
//! re-targeted at the version that served before (`from_version`), new
//! instances that are not serving stop at once, traffic returns to the old
//! version, and the deployment is `failed` until the old version is whole
//! again, then `rolled_back`.
//!
//! # Shape
//!
//! The transitions are one pure function, [`step`]: `(deployment, what is
//! observed, now) -> (deployment, effects)`. It reads nothing and writes
//! nothing; the [`Effect`]s it returns (log lines, events, instances to
//! stop, the app's traffic split, a rollback's re-target) are carried out
//! by [`advance`] in the app's transaction. [`supersede_step`] and
//! [`cancel_step`] are the same for a deployment that another replaces or
//! that the app's stop ends. The table-driven tests at the end of this file
//! run every stage of every strategy through them without a database.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use shellwego_core::model::{
    DeployOptions, DeploymentStage, DeploymentStatus, DesiredState, EventKind, InstanceStatus,
    Stage, StageStatus, Strategy,
};
use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;
use shellwego_store::apps::{self, App, Instance};
use shellwego_store::deployments::{self, Deployment, Release};
use shellwego_store::events::{self, Actor, NewEvent, Severity};
use shellwego_store::Tx;

use super::instances::{stop_instance, CRASH_LOOP_RESTARTS};

/// A deployment's options (the stored `deployments.options` document).
pub type Options = DeployOptions;

/// Requests a canary must have served before its error rate counts.
pub const MIN_CANARY_REQUESTS: i64 = 20;

/// What the active deployment asks of the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Replacements started next to what they replace, in flight at a time
    /// (Kubernetes' `maxSurge`).
    pub surge: i64,
    /// Instances that may be down at a time (`maxUnavailable`): retiring
    /// instances stopped before their replacement is healthy.
    pub unavailable: i64,
    /// When a surge replacement fits on no node, stop what it replaces
    /// first (at least one may then be down at a time).
    pub in_place: bool,
    /// Healthy replacements do not yet stop what they replace.
    pub hold_old: bool,
    /// At most this many instances of the new version (a canary step).
    pub max_new: Option<i64>,
}

impl Plan {
    /// Instances that may be down at once when replacing in place.
    pub fn in_place_unavailable(&self) -> i64 {
        self.unavailable.max(1)
    }
}

/// A canary's traffic share at its current step.
pub fn canary_weight(d: &Deployment) -> u32 {
    let steps = &d.options.canary_steps;
    let k = usize::try_from(d.canary_step).unwrap_or(0);
    steps
        .get(k)
        .or(steps.last())
        .copied()
        .unwrap_or(100)
        .min(100)
}

/// Instances of the new version a canary step runs: its share of the
/// replicas, at least one.
pub fn canary_instances(replicas: i64, weight: u32) -> i64 {
    ((replicas * i64::from(weight) + 99) / 100).max(1)
}

pub fn plan(dep: Option<&Deployment>, replicas: i64, now_us: i64) -> Plan {
    let Some(d) = dep.filter(|d| d.status == DeploymentStatus::InProgress) else {
        // No rollout (a drain, an old version left over, a rollback under
        // way): one replacement at a time, each healthy before what it
        // replaces stops, in place when there is no room.
        return Plan {
            surge: 1,
            unavailable: 0,
            in_place: true,
            hold_old: false,
            max_new: None,
        };
    };
    let o = &d.options;
    // Until the switch (and the warm window after it) the old set stays.
    let held = d.wait_until.is_none_or(|w| now_us < w);
    match d.strategy {
        // A whole second set, or nothing: never in place.
        Strategy::BlueGreen => Plan {
            surge: i64::MAX,
            unavailable: 0,
            in_place: false,
            hold_old: held,
            max_new: None,
        },
        Strategy::Canary => {
            let w = canary_weight(d);
            Plan {
                surge: i64::MAX,
                unavailable: o.max_unavailable,
                in_place: true,
                hold_old: w < 100 || held,
                max_new: (w < 100).then(|| canary_instances(replicas, w)),
            }
        }
        Strategy::Immediate => Plan {
            surge: i64::MAX,
            unavailable: 0,
            in_place: false,
            hold_old: false,
            max_new: None,
        },
        Strategy::Rolling => Plan {
            surge: o.max_surge.max(0),
            unavailable: o.max_unavailable.max(0),
            in_place: true,
            hold_old: false,
            max_new: None,
        },
    }
}

/// The version label shown for an app version.
pub fn version_label(v: i64) -> String {
    format!("v{v}")
}

/// Something [`step`] decided that touches more than the deployment row;
/// [`advance`] carries them out in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A line of the deployment's log.
    Log(String),
    /// An event about the app (the deployment's id is added to `meta`).
    Event {
        kind: EventKind,
        severity: Severity,
        meta: Value,
    },
    /// Stop this instance of the app.
    Stop { instance: String, reason: String },
    /// The app's traffic split (JSON `{"<version>": weight}`, none: every
    /// healthy instance alike).
    SetTraffic(Option<String>),
    /// Re-target the app at the release of this version (a rollback).
    RollBackTo(i64),
}

/// What a pass of the controller sees when the deployment moves on.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The app row after the controller's pass.
    pub app: &'a App,
    /// The app's instances after the controller's pass.
    pub insts: &'a [Instance],
    /// What the routers counted for the new version's instances,
    /// `(requests, errors)`: read for a canary before its last step.
    pub canary_traffic: (i64, i64),
}

impl Observed<'_> {
    /// Whether [`step`] reads `canary_traffic` for this deployment.
    pub fn needs_canary_traffic(d: &Deployment) -> bool {
        d.status == DeploymentStatus::InProgress
            && d.strategy == Strategy::Canary
            && canary_weight(d) < 100
    }
}

/// Start a deployment that drives `app` to `target` (a new release, written
/// here, or an existing one for a rollback). Supersedes the app's active
/// deployment, if any. The caller writes `app` afterwards.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    tx: &mut Tx,
    actor: &Actor,
    app: &mut App,
    target: Target,
    strategy: Strategy,
    options: Options,
    reason: &str,
    rollback_target: Option<String>,
) -> Result<Deployment, Error> {
    let active = deployments::active(tx, &app.id).await?;
    // The version known to serve: the active deployment's own once its
    // traffic has shifted (a blue-green in its warm window serves the new
    // set), else its starting point; with none active, what the app runs
    // now (none for a new app).
    let from_version = match &active {
        Some(d) if stage_done(&d.stages, Stage::ShiftingTraffic) => Some(d.version),
        Some(d) => d.from_version,
        None if app.deployment_id.is_some() => Some(app.version),
        None => None,
    };
    let version = match target {
        Target::New => {
            // A new release gets the secrets live now, latest versions.
            app.spec.secrets =
                shellwego_store::secrets::current_pins(tx, &app.organization_id, &app.id).await?;
            let v = deployments::releases_of(tx, &app.id)
                .await?
                .iter()
                .map(|r| r.version)
                .max()
                .unwrap_or(0)
                .max(app.version)
                + 1;
            deployments::insert_release(
                tx,
                &Release {
                    app_id: app.id.clone(),
                    version: v,
                    spec: app.spec.clone(),
                    replicas: app.replicas,
                    memory: app.memory,
                    cpu_millis: app.cpu_millis,
                    disk: app.disk,
                    image_pinned: None,
                    created_at: 0,
                },
            )
            .await?;
            app.image_pinned = None;
            v
        }
        Target::Existing(v) => {
            let r = deployments::release(tx, &app.id, v)
                .await?
                .ok_or_else(|| Error::Internal(format!("release v{v} is missing")))?;
            retarget(app, &r);
            v
        }
    };
    let from_version = from_version.filter(|f| *f != version);
    // A canary needs something to compare with.
    let strategy = if strategy == Strategy::Canary && from_version.is_none() {
        Strategy::Rolling
    } else {
        strategy
    };
    let d = deployments::insert(
        tx,
        Deployment {
            app_id: app.id.clone(),
            organization_id: app.organization_id.clone(),
            status: DeploymentStatus::InProgress,
            version,
            image: app.image_pinned.clone().or(app.spec.image.clone()),
            strategy,
            initiated_by: actor.id.clone(),
            reason: Some(reason.into()),
            stages: DeploymentStage::initial(),
            options,
            from_version,
            rollback_target,
            ..Default::default()
        },
    )
    .await?;
    if let Some(old) = active {
        let insts = apps::instances_of_app(tx, &app.id).await?;
        let (old, effects) = supersede_step(&old, &d, &insts, now_us());
        deployments::update(tx, &old).await?;
        apply(tx, app, &old, &insts, effects).await?;
    }
    deployments::log(
        tx,
        &d.id,
        &format!(
            "deploying {} ({reason}) with the {strategy} strategy{}",
            version_label(version),
            d.from_version
                .map(|f| format!(", replacing {}", version_label(f)))
                .unwrap_or_default()
        ),
    )
    .await?;
    app.version = version;
    app.deployment_id = Some(d.id.clone());
    // Blue-green and canary: traffic stays on the old version until the
    // switch (or the canary's first step).
    app.traffic = match (strategy, d.from_version) {
        (Strategy::BlueGreen | Strategy::Canary, Some(f)) => Some(traffic_json(&[(f, 100)])),
        (Strategy::BlueGreen | Strategy::Canary | Strategy::Rolling | Strategy::Immediate, _) => {
            None
        }
    };
    Ok(d)
}

fn now_us() -> i64 {
    to_micros(now())
}

/// End the active deployment `old` because `by` replaces it. One that has
/// shifted all its traffic and is only draining what it replaced did its
/// job: `successful`. One still in progress is `failed` ("superseded by
/// …"), and its instances that are not yet serving (unplaced, pending,
/// starting) are cancelled: none of them starts later.
pub fn supersede_step(
    old: &Deployment,
    by: &Deployment,
    insts: &[Instance],
    now_us: i64,
) -> (Deployment, Vec<Effect>) {
    let mut old = old.clone();
    let mut fx = vec![];
    let drained_only = old.status == DeploymentStatus::InProgress
        && stage_done(&old.stages, Stage::ShiftingTraffic);
    if drained_only {
        mark(
            &mut old.stages,
            Stage::Completed,
            StageStatus::Completed,
            now_us,
        );
        old.status = DeploymentStatus::Successful;
        fx.push(Effect::Log(format!(
            "all traffic on {}; superseded by {} while draining the old instances",
            version_label(old.version),
            by.id
        )));
        fx.push(deployed_event(&old));
    } else {
        if old.status == DeploymentStatus::InProgress {
            old.status = DeploymentStatus::Failed;
            old.reason = Some(format!("superseded by {}", by.id));
        }
        fx.push(Effect::Log(format!("superseded by {}", by.id)));
    }
    old.finished_at = Some(now_us);
    if !drained_only && old.version != by.version {
        let mut cancelled = 0;
        for i in insts.iter().filter(|i| {
            i.desired == DesiredState::Running
                && i.version == old.version
                && i.status != InstanceStatus::Healthy
        }) {
            fx.push(Effect::Stop {
                instance: i.id.clone(),
                reason: format!("cancelled: its deployment was superseded by {}", by.id),
            });
            cancelled += 1;
        }
        if cancelled > 0 {
            fx.push(Effect::Log(format!(
                "cancelled {cancelled} instance(s) of {} that were not serving yet",
                version_label(old.version)
            )));
        }
    }
    (old, fx)
}

/// End the app's active deployment because the app was stopped or is
/// being deleted (`why`): one in progress is `cancelled`, one rolling back
/// stays `failed`. Its traffic split ends with it.
pub async fn cancel_active(tx: &mut Tx, app: &mut App, why: &str) -> Result<(), Error> {
    let Some(d) = deployments::active(tx, &app.id).await? else {
        return Ok(());
    };
    let (d, effects) = cancel_step(&d, why, now_us());
    deployments::update(tx, &d).await?;
    apply(tx, app, &d, &[], effects).await?;
    Ok(())
}

/// [`cancel_active`]'s transition.
pub fn cancel_step(d: &Deployment, why: &str, now_us: i64) -> (Deployment, Vec<Effect>) {
    let mut d = d.clone();
    let mut fx = vec![];
    if d.status == DeploymentStatus::InProgress {
        fail_current_stage(&mut d.stages, now_us, Some(why));
        d.status = DeploymentStatus::Cancelled;
        d.reason = Some(why.to_string());
        fx.push(Effect::Event {
            kind: EventKind::DeploymentCancelled,
            severity: Severity::Warning,
            meta: json!({"reason": why, "version": version_label(d.version)}),
        });
    }
    d.finished_at = Some(now_us);
    fx.push(Effect::Log(format!("cancelled: {why}")));
    fx.push(Effect::SetTraffic(None));
    (d, fx)
}

/// Point the app's spec and resources at a release; the app's scaling
/// (replicas, autoscale) is not part of a release and stays.
fn retarget(app: &mut App, r: &Release) {
    let autoscale = app.spec.autoscale.clone();
    app.spec = r.spec.clone();
    app.spec.autoscale = autoscale;
    (app.memory, app.cpu_millis, app.disk) = (r.memory, r.cpu_millis, r.disk);
    app.image_pinned = r.image_pinned.clone();
}

/// What a deployment deploys.
pub enum Target {
    /// A new release of the app's current spec.
    New,
    /// An existing release (a rollback).
    Existing(i64),
}

pub fn traffic_json(weights: &[(i64, u32)]) -> String {
    let m: BTreeMap<String, u32> = weights.iter().map(|(v, w)| (v.to_string(), *w)).collect();
    serde_json::to_string(&m).unwrap_or_else(|_| "{}".into())
}

fn is_over(s: StageStatus) -> bool {
    match s {
        StageStatus::Completed | StageStatus::Failed => true,
        StageStatus::Pending | StageStatus::InProgress => false,
    }
}

/// Mark a stage; the stages before it that are not over are completed
/// with it (stages follow their order, and so do their timestamps).
/// Whether anything changed.
fn mark(stages: &mut [DeploymentStage], name: Stage, status: StageStatus, now_us: i64) -> bool {
    let Some(k) = stages.iter().position(|s| s.name == name) else {
        return false;
    };
    if stages[k].status == status || stages[k].status == StageStatus::Completed {
        return false;
    }
    for e in &mut stages[..k] {
        if !is_over(e.status) {
            e.started_at.get_or_insert(now_us);
            e.completed_at = Some(now_us);
            e.status = StageStatus::Completed;
            e.reason = None;
        }
    }
    let s = &mut stages[k];
    if s.started_at.is_none() {
        s.started_at = Some(now_us);
    }
    if is_over(status) {
        s.completed_at = Some(now_us);
        s.reason = None;
    }
    s.status = status;
    true
}

/// The first stage not yet over fails (a failed or cancelled deployment).
fn fail_current_stage(stages: &mut [DeploymentStage], now_us: i64, why: Option<&str>) {
    if let Some(s) = stages.iter_mut().find(|s| !is_over(s.status)) {
        s.status = StageStatus::Failed;
        s.started_at.get_or_insert(now_us);
        s.completed_at = Some(now_us);
        if let Some(why) = why {
            s.reason = Some(why.to_string());
        }
    }
}

/// Advance the app's active deployment from what is true now: [`step`],
/// then its effects. `insts` are the app's instances after the
/// controller's pass. Returns whether the app row changed (the caller
/// writes it and passes again).
pub async fn advance(
    tx: &mut Tx,
    app: &mut App,
    insts: &[Instance],
    dep: &mut Deployment,
) -> Result<bool, Error> {
    let canary_traffic = if Observed::needs_canary_traffic(dep) {
        let ids: Vec<String> = insts
            .iter()
            .filter(|i| i.desired == DesiredState::Running && i.version == dep.version)
            .map(|i| i.id.clone())
            .collect();
        let t = apps::instance_traffic(tx, &ids).await?;
        (t.requests, t.errors)
    } else {
        (0, 0)
    };
    let observed = Observed {
        app,
        insts,
        canary_traffic,
    };
    let (next, effects) = step(dep, &observed, now_us());
    // A canary's next step is a new plan: the caller passes again.
    let next_step = next.canary_step != dep.canary_step;
    if next != *dep {
        deployments::update(tx, &next).await?;
    }
    *dep = next;
    Ok(apply(tx, app, dep, insts, effects).await? || next_step)
}

/// Carry out `effects` of deployment `dep` in order (`insts`: the app's
/// instances, which `Stop` effects name); whether the app row changed.
async fn apply(
    tx: &mut Tx,
    app: &mut App,
    dep: &Deployment,
    insts: &[Instance],
    effects: Vec<Effect>,
) -> Result<bool, Error> {
    let mut app_changed = false;
    for e in effects {
        match e {
            Effect::Log(line) => deployments::log(tx, &dep.id, &line).await?,
            Effect::Event {
                kind,
                severity,
                mut meta,
            } => {
                meta["deployment_id"] = json!(dep.id);
                events::record(
                    tx,
                    NewEvent::info(kind.as_str(), &Actor::system(), "app", &app.id)
                        .in_org(&app.organization_id)
                        .severity(severity)
                        .meta(meta),
                )
                .await?;
            }
            Effect::Stop { instance, reason } => {
                if let Some(i) = insts.iter().find(|i| i.id == instance) {
                    stop_instance(tx, &mut i.clone(), &reason).await?;
                }
            }
            Effect::SetTraffic(t) => {
                app.traffic = t;
                app_changed = true;
            }
            Effect::RollBackTo(v) => {
                let r = deployments::release(tx, &app.id, v)
                    .await?
                    .ok_or_else(|| Error::Internal(format!("release v{v} is missing")))?;
                app.version = v;
                retarget(app, &r);
                app_changed = true;
            }
        }
    }
    Ok(app_changed)
}

fn deployed_event(d: &Deployment) -> Effect {
    Effect::Event {
        kind: EventKind::AppDeployed,
        severity: Severity::Info,
        meta: json!({"version": version_label(d.version), "strategy": d.strategy, "image": d.image}),
    }
}

/// One transition of a deployment from what is observed: the deployment
/// as it is after this pass, and what else must happen. Pure: the same
/// inputs give the same outputs.
pub fn step(dep: &Deployment, obs: &Observed, now_us: i64) -> (Deployment, Vec<Effect>) {
    let mut dep = dep.clone();
    let mut fx = vec![];
    let app = obs.app;
    let insts = obs.insts;
    let o = dep.options.clone();
    let running: Vec<&Instance> = insts
        .iter()
        .filter(|i| i.desired == DesiredState::Running)
        .collect();
    let new: Vec<&Instance> = running
        .iter()
        .copied()
        .filter(|i| i.version == dep.version)
        .collect();
    let old: Vec<&Instance> = running
        .iter()
        .copied()
        .filter(|i| i.version != dep.version)
        .collect();
    let wanted = if app.desired_state == DesiredState::Running {
        app.replicas
    } else {
        0
    };
    let healthy = |i: &&&Instance| i.status == InstanceStatus::Healthy;
    let healthy_new = new.iter().filter(healthy).count() as i64;

    match dep.status {
        DeploymentStatus::InProgress => {}
        DeploymentStatus::Failed => {
            // Rolling back: done when only the old version runs, whole.
            let whole = old.iter().filter(healthy).count() as i64 >= wanted;
            if running.iter().all(|i| i.version == app.version) && whole {
                dep.status = DeploymentStatus::RolledBack;
                dep.finished_at = Some(now_us);
                fx.push(Effect::Log(format!(
                    "rolled back: {} serves again",
                    version_label(app.version)
                )));
                fx.push(Effect::Event {
                    kind: EventKind::DeploymentRolledBack,
                    severity: Severity::Warning,
                    meta: json!({"reason": dep.reason, "version": version_label(app.version)}),
                });
            }
            return (dep, fx);
        }
        // Over: nothing moves any more.
        DeploymentStatus::Successful
        | DeploymentStatus::RolledBack
        | DeploymentStatus::Cancelled => return (dep, fx),
    }

    // A canary before its last step runs a share of the new instances.
    let weight = canary_weight(&dep);
    let canary_step = dep.strategy == Strategy::Canary && weight < 100;
    let needed = if canary_step {
        canary_instances(wanted, weight)
    } else {
        wanted
    };

    // A new instance the scheduler could not place, and why.
    let unplaced = new
        .iter()
        .find(|i| i.node_id.is_none())
        .and_then(|i| i.status_reason.clone());

    // New instances are still to be created or placed.
    let creating = unplaced.is_some() || (new.len() as i64) < needed;

    if let Some(reason) = failure(
        &dep,
        obs,
        &new,
        wanted,
        needed,
        healthy_new,
        canary_step,
        unplaced.as_deref(),
        now_us,
    ) {
        fail(&mut dep, &mut fx, insts, &reason, now_us);
        return (dep, fx);
    }

    // Stages, from what is true.
    let prepared = |i: &&Instance| {
        i.node_id.is_some()
            && !(i.status == InstanceStatus::Pending
                || (i.status == InstanceStatus::Starting
                    && i.status_reason.as_deref() == Some("preparing")))
    };
    let stages = &mut dep.stages;
    if wanted == 0 || new.iter().any(prepared) {
        mark(
            stages,
            Stage::ResolvingImage,
            StageStatus::Completed,
            now_us,
        );
        if let Some(p) = &app.image_pinned {
            dep.image = Some(p.clone());
        }
    } else {
        mark(
            stages,
            Stage::ResolvingImage,
            StageStatus::InProgress,
            now_us,
        );
    }
    let stages = &mut dep.stages;
    if wanted == 0 || new.iter().any(prepared) {
        if stage_done(stages, Stage::ResolvingImage) {
            mark(stages, Stage::PullingImage, StageStatus::Completed, now_us);
        }
    } else if stage_done(stages, Stage::ResolvingImage) {
        mark(stages, Stage::PullingImage, StageStatus::InProgress, now_us);
    }
    if canary_step {
        let from = dep.from_version.unwrap_or(dep.version);
        let split = traffic_json(&[(from, 100 - weight), (dep.version, weight)]);
        if healthy_new >= needed {
            if app.traffic.as_deref() != Some(split.as_str()) {
                fx.push(Effect::SetTraffic(Some(split)));
                dep.wait_until = Some(now_us + o.canary_pause_ms * 1000);
                mark(
                    &mut dep.stages,
                    Stage::ShiftingTraffic,
                    StageStatus::InProgress,
                    now_us,
                );
                fx.push(Effect::Log(format!(
                    "canary: {weight}% of requests to {} ({healthy_new} instance(s)); watching for {}s",
                    version_label(dep.version),
                    o.canary_pause_ms / 1000
                )));
            } else if dep.wait_until.is_some_and(|w| now_us >= w) {
                let (requests, errors) = obs.canary_traffic;
                dep.canary_step += 1;
                dep.wait_until = None;
                dep.step_started_at = Some(now_us);
                fx.push(Effect::Log(format!(
                    "canary healthy at {weight}% ({errors} errors in {requests} requests); next step: {}%",
                    canary_weight(&dep)
                )));
            }
        }
        set_reason(
            &mut dep.stages,
            stage_reason(&o, creating, unplaced.as_deref()),
        );
        return (dep, fx);
    }
    let stages = &mut dep.stages;
    let all_created = new.len() as i64 >= wanted && new.iter().all(|i| i.node_id.is_some());
    if stage_done(stages, Stage::PullingImage) {
        let s = if all_created {
            StageStatus::Completed
        } else {
            StageStatus::InProgress
        };
        mark(stages, Stage::CreatingInstances, s, now_us);
    }
    let all_healthy = healthy_new >= wanted;
    if stage_done(stages, Stage::CreatingInstances) {
        let s = if all_healthy {
            StageStatus::Completed
        } else {
            StageStatus::InProgress
        };
        mark(stages, Stage::StartingHealthChecks, s, now_us);
    }
    // What is true, not only the stages: a canary completed the stages
    // before `shifting_traffic` for its first step, with a share of the
    // new instances.
    if stage_done(stages, Stage::StartingHealthChecks) && all_created && all_healthy {
        if mark(
            stages,
            Stage::ShiftingTraffic,
            StageStatus::Completed,
            now_us,
        ) {
            match dep.strategy {
                Strategy::BlueGreen | Strategy::Canary => {
                    // The switch: all traffic to the new set at once; the
                    // old set stays warm for the window.
                    fx.push(Effect::SetTraffic(Some(traffic_json(&[(
                        dep.version,
                        100,
                    )]))));
                    let warm = if dep.strategy == Strategy::Canary {
                        0
                    } else {
                        o.warm_ms
                    };
                    dep.wait_until = Some(now_us + warm * 1000);
                    fx.push(Effect::Log(if warm > 0 {
                        format!(
                            "traffic switched to {}; the old set stays warm for {}s",
                            version_label(dep.version),
                            warm / 1000
                        )
                    } else {
                        format!("traffic switched to {}", version_label(dep.version))
                    }));
                }
                Strategy::Rolling | Strategy::Immediate => {
                    fx.push(Effect::Log(format!(
                        "all {wanted} instances of {} healthy and serving",
                        version_label(dep.version)
                    )));
                }
            }
        }
        let s = if insts.iter().all(|i| i.version == dep.version) {
            StageStatus::Completed
        } else {
            StageStatus::InProgress
        };
        mark(&mut dep.stages, Stage::DrainingOld, s, now_us);
    }
    if stage_done(&dep.stages, Stage::DrainingOld)
        && mark(
            &mut dep.stages,
            Stage::Completed,
            StageStatus::Completed,
            now_us,
        )
    {
        dep.status = DeploymentStatus::Successful;
        dep.finished_at = Some(now_us);
        // The traffic split ends with the rollout (the switch of this pass
        // included).
        let split =
            app.traffic.is_some() || fx.iter().any(|e| matches!(e, Effect::SetTraffic(Some(_))));
        if split {
            fx.push(Effect::SetTraffic(None));
        }
        let started = dep.started_at.unwrap_or(dep.created_at);
        fx.push(Effect::Log(format!(
            "completed in {:.1}s",
            (now_us - started) as f64 / 1_000_000.0
        )));
        fx.push(deployed_event(&dep));
    }
    if dep.status == DeploymentStatus::InProgress {
        set_reason(
            &mut dep.stages,
            stage_reason(&o, creating, unplaced.as_deref()),
        );
    }
    (dep, fx)
}

/// Why the rollout fails now, if it does: a new instance cannot start or
/// crash-loops, the new instances are not healthy in time, a blue-green
/// finds no room for its second set, or a canary answers too many errors.
#[allow(clippy::too_many_arguments)]
fn failure(
    dep: &Deployment,
    obs: &Observed,
    new: &[&Instance],
    wanted: i64,
    needed: i64,
    healthy_new: i64,
    canary_step: bool,
    unplaced: Option<&str>,
    now_us: i64,
) -> Option<String> {
    let o = &dep.options;
    let started = dep.started_at.unwrap_or(dep.created_at);
    if let Some(f) = new.iter().find(|i| i.status == InstanceStatus::Failed) {
        Some(format!(
            "instance {} cannot start: {}",
            f.id,
            f.status_reason.as_deref().unwrap_or("failed")
        ))
    } else if let Some(c) = new
        .iter()
        .find(|i| i.status == InstanceStatus::Crashed && i.restarts >= CRASH_LOOP_RESTARTS)
    {
        Some(format!(
            "instance {} is crash-looping: {}",
            c.id,
            c.status_reason.as_deref().unwrap_or("it keeps exiting")
        ))
    } else if wanted > 0
        && healthy_new < needed
        && now_us - dep.step_started_at.unwrap_or(started) > o.health_check_timeout_ms * 1000
    {
        let why = new
            .iter()
            .find(|i| i.status != InstanceStatus::Healthy)
            .and_then(|i| i.status_reason.clone())
            .unwrap_or_else(|| "no instance could be placed".into());
        Some(format!(
            "{healthy_new} of {needed} new instances healthy after {}s: {why}",
            o.health_check_timeout_ms / 1000
        ))
    } else if let Some(why) = unplaced.filter(|_| dep.strategy == Strategy::BlueGreen) {
        Some(format!(
            "blue-green needs room for a second set of {wanted} instance(s) of {:.1} CPU and {} memory next to the running ones, and there is none: {why}; {} to replace instances in place",
            obs.app.cpu_millis as f64 / 1000.0,
            shellwego_core::units::format_size(obs.app.memory.max(0) as u64),
            if dep.rollback_target.is_some() {
                "roll back with --strategy gradual"
            } else {
                "deploy with --strategy rolling"
            },
        ))
    } else if canary_step {
        let (requests, errors) = obs.canary_traffic;
        let rate = errors as f64 / requests.max(1) as f64;
        (requests >= MIN_CANARY_REQUESTS && rate > o.max_error_rate).then(|| {
            format!(
                "the canary answered {errors} of {requests} requests with an error ({:.1}% > {:.1}%)",
                rate * 100.0,
                o.max_error_rate * 100.0
            )
        })
    } else {
        None
    }
}

/// The deployment fails for `reason`: with `rollback_on_failure` and a
/// version to return to, the app is re-targeted at it, its new instances
/// that do not serve stop at once (all of them for a blue-green, whose
/// old set still serves) and the deployment stays active until the old
/// version is whole; without, it ends here.
fn fail(dep: &mut Deployment, fx: &mut Vec<Effect>, insts: &[Instance], reason: &str, now_us: i64) {
    fail_current_stage(&mut dep.stages, now_us, None);
    dep.status = DeploymentStatus::Failed;
    dep.reason = Some(reason.to_string());
    fx.push(Effect::Log(format!("failed: {reason}")));
    fx.push(Effect::Event {
        kind: EventKind::DeploymentFailed,
        severity: Severity::Error,
        meta: json!({"reason": reason, "version": version_label(dep.version)}),
    });
    let back_to = dep.from_version.filter(|_| dep.options.rollback_on_failure);
    match back_to {
        Some(f) => {
            fx.push(Effect::RollBackTo(f));
            fx.push(Effect::SetTraffic(None));
            // New instances that do not serve go now; healthy ones are
            // replaced by the old version (the controller's mechanism).
            let holding = dep.strategy == Strategy::BlueGreen;
            for i in insts
                .iter()
                .filter(|i| i.desired == DesiredState::Running && i.version == dep.version)
            {
                if holding || i.status != InstanceStatus::Healthy {
                    fx.push(Effect::Stop {
                        instance: i.id.clone(),
                        reason: "its deployment failed".into(),
                    });
                }
            }
            fx.push(Effect::Log(format!("rolling back to {}", version_label(f))));
        }
        None => {
            dep.finished_at = Some(now_us);
            fx.push(Effect::SetTraffic(None));
        }
    }
}

/// How a rollout without room proceeds: the one wording for stages, the
/// app's status and the log.
pub fn in_place_reason(n: i64, why: Option<&str>) -> String {
    match why {
        Some(why) => {
            format!("no room for a surge instance ({why}): replacing in place, {n} at a time")
        }
        None => format!("no room for a surge instance: replacing in place, {n} at a time"),
    }
}

/// Why the stage in progress is where it is while new instances are
/// still being created: replacing in place (no room for a surge
/// instance), or waiting for room for a new instance.
fn stage_reason(o: &Options, creating: bool, unplaced: Option<&str>) -> Option<String> {
    if !creating {
        None
    } else if o.in_place {
        Some(in_place_reason(o.max_unavailable.max(1), unplaced))
    } else {
        unplaced.map(|why| format!("waiting for room: {why}"))
    }
}

/// The reason of the stage in progress (the first one not over); other
/// stages keep none.
fn set_reason(stages: &mut [DeploymentStage], reason: Option<String>) {
    let current = stages.iter().position(|s| !is_over(s.status));
    for (k, s) in stages.iter_mut().enumerate() {
        if Some(k) == current {
            s.reason.clone_from(&reason);
        } else if s.status != StageStatus::Failed {
            s.reason = None;
        }
    }
}

pub fn stage_done(stages: &[DeploymentStage], name: Stage) -> bool {
    stages
        .iter()
        .any(|s| s.name == name && s.status == StageStatus::Completed)
}

#[cfg(test)]
mod tests;
