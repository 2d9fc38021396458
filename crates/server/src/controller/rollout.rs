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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use shellwego_api::deployments::STAGES;
use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;
use shellwego_store::apps::{self, App, Instance};
use shellwego_store::deployments::{self, Deployment, Release};
use shellwego_store::events::{self, Actor, NewEvent, Severity};
use shellwego_store::Tx;

use super::instances::{spec_of, stop_instance, CRASH_LOOP_RESTARTS};

/// A deployment's options, stored as JSON with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    /// Extra instances in flight at a time (`batch_size` before).
    #[serde(alias = "batch_size")]
    pub max_surge: i64,
    /// Instances that may be down at a time.
    pub max_unavailable: i64,
    /// Set when a surge instance found no room and the rollout went on
    /// replacing in place.
    pub in_place: bool,
    pub health_check_timeout_ms: i64,
    pub rollback_on_failure: bool,
    pub warm_ms: i64,
    pub canary_steps: Vec<u32>,
    pub canary_pause_ms: i64,
    /// A canary whose share of 5xx (or unanswered) requests exceeds this,
    /// over at least `MIN_CANARY_REQUESTS`, is rolled back.
    pub max_error_rate: f64,
}

/// Requests a canary must have served before its error rate counts.
pub const MIN_CANARY_REQUESTS: i64 = 20;

impl Default for Options {
    fn default() -> Options {
        Options {
            max_surge: 1,
            max_unavailable: 0,
            in_place: false,
            health_check_timeout_ms: 5 * 60 * 1000,
            rollback_on_failure: true,
            warm_ms: 5 * 60 * 1000,
            canary_steps: vec![10, 50, 100],
            canary_pause_ms: 60 * 1000,
            max_error_rate: 0.05,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRow {
    pub name: String,
    /// pending | in_progress | completed | failed
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// What the stage in progress waits for, or how it proceeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub fn options_of(d: &Deployment) -> Options {
    serde_json::from_str(&d.options).unwrap_or_default()
}

pub fn stages_of(d: &Deployment) -> Vec<StageRow> {
    let mut s: Vec<StageRow> = serde_json::from_str(&d.stages).unwrap_or_default();
    if s.is_empty() {
        s = STAGES
            .iter()
            .map(|n| StageRow {
                name: (*n).into(),
                status: "pending".into(),
                ..Default::default()
            })
            .collect();
    }
    s
}

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
    let steps = options_of(d).canary_steps;
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
    let Some(d) = dep.filter(|d| d.status == "in_progress") else {
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
    let o = options_of(d);
    // Until the switch (and the warm window after it) the old set stays.
    let held = d.wait_until.is_none_or(|w| now_us < w);
    match d.strategy.as_str() {
        // A whole second set, or nothing: never in place.
        "blue-green" => Plan {
            surge: i64::MAX,
            unavailable: 0,
            in_place: false,
            hold_old: held,
            max_new: None,
        },
        "canary" => {
            let w = canary_weight(d);
            Plan {
                surge: i64::MAX,
                unavailable: o.max_unavailable,
                in_place: true,
                hold_old: w < 100 || held,
                max_new: (w < 100).then(|| canary_instances(replicas, w)),
            }
        }
        "immediate" => Plan {
            surge: i64::MAX,
            unavailable: 0,
            in_place: false,
            hold_old: false,
            max_new: None,
        },
        _ => Plan {
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

/// Start a deployment that drives `app` to `target` (a new release, written
/// here, or an existing one for a rollback). Supersedes the app's active
/// deployment, if any. The caller writes `app` afterwards.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    tx: &mut Tx,
    actor: &Actor,
    app: &mut App,
    target: Target,
    strategy: &str,
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
        Some(d) if stage_done(&stages_of(d), "shifting_traffic") => Some(d.version),
        Some(d) => d.from_version,
        None if app.deployment_id.is_some() => Some(app.version),
        None => None,
    };
    let version = match target {
        Target::New => {
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
    let spec = spec_of(app);
    let from_version = from_version.filter(|f| *f != version);
    // A canary needs something to compare with.
    let strategy = if strategy == "canary" && from_version.is_none() {
        "rolling"
    } else {
        strategy
    };
    let d = deployments::insert(
        tx,
        Deployment {
            app_id: app.id.clone(),
            organization_id: app.organization_id.clone(),
            status: "in_progress".into(),
            version,
            image: app.image_pinned.clone().or(spec.image.clone()),
            strategy: strategy.into(),
            initiated_by: actor.id.clone(),
            reason: Some(reason.into()),
            stages: serde_json::to_string(&stages_of(&Deployment::default()))
                .map_err(Error::internal)?,
            options: serde_json::to_string(&options).map_err(Error::internal)?,
            from_version,
            rollback_target,
            ..Default::default()
        },
    )
    .await?;
    if let Some(old) = active {
        supersede(tx, app, old, &d).await?;
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
        ("blue-green" | "canary", Some(f)) => Some(traffic_json(&[(f, 100)])),
        _ => None,
    };
    Ok(d)
}

/// End the active deployment `old` because `by` replaces it. One that has
/// shifted all its traffic and is only draining what it replaced did its
/// job: `successful`. One still in progress is `failed` ("superseded by
/// …"), and its instances that are not yet serving (unplaced, pending,
/// starting) are cancelled: none of them starts later.
async fn supersede(
    tx: &mut Tx,
    app: &App,
    mut old: Deployment,
    by: &Deployment,
) -> Result<(), Error> {
    let now_us = to_micros(now());
    let mut stages = stages_of(&old);
    let drained_only = old.status == "in_progress" && stage_done(&stages, "shifting_traffic");
    if drained_only {
        mark(&mut stages, "completed", "completed", now_us);
        old.stages = serde_json::to_string(&stages).map_err(Error::internal)?;
        old.status = "successful".into();
        deployments::log(
            tx,
            &old.id,
            &format!(
                "all traffic on {}; superseded by {} while draining the old instances",
                version_label(old.version),
                by.id
            ),
        )
        .await?;
        record(
            tx,
            app,
            &old,
            "app.deployed",
            Severity::Info,
            json!({"version": version_label(old.version), "strategy": old.strategy, "image": old.image}),
        )
        .await?;
    } else {
        if old.status == "in_progress" {
            old.status = "failed".into();
            old.reason = Some(format!("superseded by {}", by.id));
        }
        deployments::log(tx, &old.id, &format!("superseded by {}", by.id)).await?;
    }
    old.finished_at = Some(now_us);
    deployments::update(tx, &old).await?;
    if !drained_only && old.version != by.version {
        let mut cancelled = 0;
        for mut i in apps::instances_of_app(tx, &app.id).await? {
            if i.desired == "running" && i.version == old.version && i.status != "healthy" {
                stop_instance(
                    tx,
                    &mut i,
                    &format!("cancelled: its deployment was superseded by {}", by.id),
                )
                .await?;
                cancelled += 1;
            }
        }
        if cancelled > 0 {
            deployments::log(
                tx,
                &old.id,
                &format!(
                    "cancelled {cancelled} instance(s) of {} that were not serving yet",
                    version_label(old.version)
                ),
            )
            .await?;
        }
    }
    Ok(())
}

/// End the app's active deployment because the app was stopped or is
/// being deleted (`why`): one in progress is `cancelled`, one rolling back
/// stays `failed`. Its traffic split ends with it.
pub async fn cancel_active(tx: &mut Tx, app: &mut App, why: &str) -> Result<(), Error> {
    let Some(mut d) = deployments::active(tx, &app.id).await? else {
        return Ok(());
    };
    let now_us = to_micros(now());
    let mut stages = stages_of(&d);
    if d.status == "in_progress" {
        if let Some(s) = stages
            .iter_mut()
            .find(|s| s.status == "in_progress" || s.status == "pending")
        {
            s.status = "failed".into();
            s.started_at.get_or_insert(now_us);
            s.completed_at = Some(now_us);
            s.reason = Some(why.to_string());
        }
        d.stages = serde_json::to_string(&stages).map_err(Error::internal)?;
        d.status = "cancelled".into();
        d.reason = Some(why.to_string());
        record(
            tx,
            app,
            &d,
            "deployment.cancelled",
            Severity::Warning,
            json!({"reason": why, "version": version_label(d.version)}),
        )
        .await?;
    }
    d.finished_at = Some(now_us);
    deployments::update(tx, &d).await?;
    deployments::log(tx, &d.id, &format!("cancelled: {why}")).await?;
    app.traffic = None;
    Ok(())
}

/// Point the app's spec and resources at a release; the app's scaling
/// (replicas, autoscale) is not part of a release and stays.
fn retarget(app: &mut App, r: &Release) {
    let autoscale = spec_of(app).autoscale;
    let mut spec: shellwego_api::apps::AppSpec = serde_json::from_str(&r.spec).unwrap_or_default();
    spec.autoscale = autoscale;
    app.spec = serde_json::to_string(&spec).unwrap_or_else(|_| r.spec.clone());
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

/// Versions and weights of an app's `traffic` (none: every healthy instance).
pub fn traffic_of(a: &App) -> Option<BTreeMap<i64, u32>> {
    let t = a.traffic.as_deref()?;
    let m: BTreeMap<String, u32> = serde_json::from_str(t).ok()?;
    Some(
        m.into_iter()
            .filter_map(|(k, v)| k.parse().ok().map(|k| (k, v)))
            .collect(),
    )
}

/// Mark a stage; the stages before it that are not over are completed
/// with it (stages follow their order, and so do their timestamps).
/// Whether anything changed.
fn mark(stages: &mut [StageRow], name: &str, status: &str, now_us: i64) -> bool {
    let Some(k) = stages.iter().position(|s| s.name == name) else {
        return false;
    };
    if stages[k].status == status || stages[k].status == "completed" {
        return false;
    }
    for e in &mut stages[..k] {
        if e.status != "completed" && e.status != "failed" {
            e.started_at.get_or_insert(now_us);
            e.completed_at = Some(now_us);
            e.status = "completed".into();
            e.reason = None;
        }
    }
    let s = &mut stages[k];
    if s.started_at.is_none() {
        s.started_at = Some(now_us);
    }
    if status == "completed" || status == "failed" {
        s.completed_at = Some(now_us);
        s.reason = None;
    }
    s.status = status.into();
    true
}

/// Advance the app's active deployment from what is true now. `insts` are
/// the app's instances after the controller's pass. Returns whether the
/// app row changed (the caller writes it and passes again).
pub async fn advance(
    tx: &mut Tx,
    app: &mut App,
    insts: &[Instance],
    dep: &mut Deployment,
) -> Result<bool, Error> {
    let now_us = to_micros(now());
    let o = options_of(dep);
    let mut stages = stages_of(dep);
    let before = (stages.clone(), dep.status.clone(), dep.wait_until);
    let step_before = dep.canary_step;
    let mut app_changed = false;
    let running: Vec<&Instance> = insts.iter().filter(|i| i.desired == "running").collect();
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
    let wanted = if app.desired_state == "running" {
        app.replicas
    } else {
        0
    };
    let healthy_new = new.iter().filter(|i| i.status == "healthy").count() as i64;

    if dep.status == "failed" {
        // Rolling back: done when only the old version runs, whole.
        let whole = old.iter().filter(|i| i.status == "healthy").count() as i64 >= wanted;
        if running.iter().all(|i| i.version == app.version) && whole {
            dep.status = "rolled_back".into();
            dep.finished_at = Some(now_us);
            deployments::log(
                tx,
                &dep.id,
                &format!("rolled back: {} serves again", version_label(app.version)),
            )
            .await?;
            record(
                tx,
                app,
                dep,
                "deployment.rolled_back",
                Severity::Warning,
                json!({"reason": dep.reason, "version": version_label(app.version)}),
            )
            .await?;
        }
        deployments::update(tx, dep).await?;
        return Ok(false);
    }

    // A canary before its last step runs a share of the new instances.
    let weight = canary_weight(dep);
    let canary_step = dep.strategy == "canary" && weight < 100;
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

    // Failure?
    let started = dep.started_at.unwrap_or(dep.created_at);
    let failure = if let Some(f) = new.iter().find(|i| i.status == "failed") {
        Some(format!(
            "instance {} cannot start: {}",
            f.id,
            f.status_reason.as_deref().unwrap_or("failed")
        ))
    } else if let Some(c) = new
        .iter()
        .find(|i| i.status == "crashed" && i.restarts >= CRASH_LOOP_RESTARTS)
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
            .find(|i| i.status != "healthy")
            .and_then(|i| i.status_reason.clone())
            .unwrap_or_else(|| "no instance could be placed".into());
        Some(format!(
            "{healthy_new} of {needed} new instances healthy after {}s: {why}",
            o.health_check_timeout_ms / 1000
        ))
    } else if let Some(why) = unplaced.as_ref().filter(|_| dep.strategy == "blue-green") {
        Some(format!(
            "blue-green needs room for a second set of {wanted} instance(s) of {:.1} CPU and {} memory next to the running ones, and there is none: {why}; {} to replace instances in place",
            app.cpu_millis as f64 / 1000.0,
            shellwego_core::units::format_size(app.memory.max(0) as u64),
            if dep.rollback_target.is_some() {
                "roll back with --strategy gradual"
            } else {
                "deploy with --strategy rolling"
            },
        ))
    } else if canary_step {
        // The routers' counts for the canary's instances.
        let ids: Vec<String> = new.iter().map(|i| i.id.clone()).collect();
        let (requests, errors) = apps::instance_traffic(tx, &ids).await?;
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
    };
    if let Some(reason) = failure {
        return fail(
            tx,
            app,
            insts,
            dep,
            &mut stages,
            &reason,
            o.rollback_on_failure,
        )
        .await;
    }

    // Stages, from what is true.
    let prepared = |i: &&Instance| {
        i.node_id.is_some()
            && !(i.status == "pending"
                || (i.status == "starting" && i.status_reason.as_deref() == Some("preparing")))
    };
    if wanted == 0 || new.iter().any(prepared) {
        mark(&mut stages, "resolving_image", "completed", now_us);
        if let Some(p) = &app.image_pinned {
            dep.image = Some(p.clone());
        }
    } else {
        mark(&mut stages, "resolving_image", "in_progress", now_us);
    }
    if wanted == 0 || new.iter().any(prepared) {
        if stage_done(&stages, "resolving_image") {
            mark(&mut stages, "pulling_image", "completed", now_us);
        }
    } else if stage_done(&stages, "resolving_image") {
        mark(&mut stages, "pulling_image", "in_progress", now_us);
    }
    if canary_step {
        let from = dep.from_version.unwrap_or(dep.version);
        let split = traffic_json(&[(from, 100 - weight), (dep.version, weight)]);
        if healthy_new >= needed {
            if app.traffic.as_deref() != Some(split.as_str()) {
                app.traffic = Some(split);
                app_changed = true;
                dep.wait_until = Some(now_us + o.canary_pause_ms * 1000);
                mark(&mut stages, "shifting_traffic", "in_progress", now_us);
                deployments::log(
                    tx,
                    &dep.id,
                    &format!(
                        "canary: {weight}% of requests to {} ({healthy_new} instance(s)); watching for {}s",
                        version_label(dep.version),
                        o.canary_pause_ms / 1000
                    ),
                )
                .await?;
            } else if dep.wait_until.is_some_and(|w| now_us >= w) {
                let ids: Vec<String> = new.iter().map(|i| i.id.clone()).collect();
                let (requests, errors) = apps::instance_traffic(tx, &ids).await?;
                dep.canary_step += 1;
                dep.wait_until = None;
                dep.step_started_at = Some(now_us);
                deployments::log(
                    tx,
                    &dep.id,
                    &format!(
                        "canary healthy at {weight}% ({errors} errors in {requests} requests); next step: {}%",
                        canary_weight(dep)
                    ),
                )
                .await?;
            }
        }
        set_reason(&mut stages, stage_reason(&o, creating, unplaced.as_deref()));
        if (stages.clone(), dep.status.clone(), dep.wait_until) != before
            || app_changed
            || dep.canary_step != step_before
        {
            dep.stages = serde_json::to_string(&stages).map_err(Error::internal)?;
            deployments::update(tx, dep).await?;
        }
        return Ok(app_changed || dep.canary_step != step_before);
    }
    let all_created = new.len() as i64 >= wanted && new.iter().all(|i| i.node_id.is_some());
    if stage_done(&stages, "pulling_image") {
        if all_created {
            mark(&mut stages, "creating_instances", "completed", now_us);
        } else {
            mark(&mut stages, "creating_instances", "in_progress", now_us);
        }
    }
    let all_healthy = healthy_new >= wanted;
    if stage_done(&stages, "creating_instances") {
        if all_healthy {
            mark(&mut stages, "starting_health_checks", "completed", now_us);
        } else {
            mark(&mut stages, "starting_health_checks", "in_progress", now_us);
        }
    }
    // What is true, not only the stages: a canary completed the stages
    // before `shifting_traffic` for its first step, with a share of the
    // new instances.
    if stage_done(&stages, "starting_health_checks") && all_created && all_healthy {
        if mark(&mut stages, "shifting_traffic", "completed", now_us) {
            if dep.strategy == "blue-green" || dep.strategy == "canary" {
                // The switch: all traffic to the new set at once; the old
                // set stays warm for the window.
                app.traffic = Some(traffic_json(&[(dep.version, 100)]));
                app_changed = true;
                let warm = if dep.strategy == "canary" {
                    0
                } else {
                    o.warm_ms
                };
                dep.wait_until = Some(now_us + warm * 1000);
                let msg = if warm > 0 {
                    format!(
                        "traffic switched to {}; the old set stays warm for {}s",
                        version_label(dep.version),
                        warm / 1000
                    )
                } else {
                    format!("traffic switched to {}", version_label(dep.version))
                };
                deployments::log(tx, &dep.id, &msg).await?;
            } else {
                deployments::log(
                    tx,
                    &dep.id,
                    &format!(
                        "all {wanted} instances of {} healthy and serving",
                        version_label(dep.version)
                    ),
                )
                .await?;
            }
        }
        if insts.iter().all(|i| i.version == dep.version) {
            mark(&mut stages, "draining_old", "completed", now_us);
        } else {
            mark(&mut stages, "draining_old", "in_progress", now_us);
        }
    }
    if stage_done(&stages, "draining_old") && mark(&mut stages, "completed", "completed", now_us) {
        dep.status = "successful".into();
        dep.finished_at = Some(now_us);
        if app.traffic.is_some() {
            app.traffic = None;
            app_changed = true;
        }
        deployments::log(
            tx,
            &dep.id,
            &format!(
                "completed in {:.1}s",
                (now_us - started) as f64 / 1_000_000.0
            ),
        )
        .await?;
        record(
            tx,
            app,
            dep,
            "app.deployed",
            Severity::Info,
            json!({"version": version_label(dep.version), "strategy": dep.strategy, "image": dep.image}),
        )
        .await?;
    }
    if dep.status == "in_progress" {
        set_reason(&mut stages, stage_reason(&o, creating, unplaced.as_deref()));
    }
    if (stages.clone(), dep.status.clone(), dep.wait_until) != before {
        dep.stages = serde_json::to_string(&stages).map_err(Error::internal)?;
        deployments::update(tx, dep).await?;
    }
    Ok(app_changed)
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
fn set_reason(stages: &mut [StageRow], reason: Option<String>) {
    let current = stages
        .iter()
        .position(|s| s.status != "completed" && s.status != "failed");
    for (k, s) in stages.iter_mut().enumerate() {
        if Some(k) == current {
            s.reason.clone_from(&reason);
        } else if s.status != "failed" {
            s.reason = None;
        }
    }
}

fn stage_done(stages: &[StageRow], name: &str) -> bool {
    stages
        .iter()
        .any(|s| s.name == name && s.status == "completed")
}

async fn record(
    tx: &mut Tx,
    app: &App,
    dep: &Deployment,
    kind: &'static str,
    severity: Severity,
    meta: serde_json::Value,
) -> Result<(), Error> {
    let mut meta = meta;
    meta["deployment_id"] = json!(dep.id);
    events::record(
        tx,
        NewEvent::info(kind, &Actor::system(), "app", &app.id)
            .in_org(&app.organization_id)
            .severity(severity)
            .meta(meta),
    )
    .await?;
    Ok(())
}

async fn fail(
    tx: &mut Tx,
    app: &mut App,
    insts: &[Instance],
    dep: &mut Deployment,
    stages: &mut [StageRow],
    reason: &str,
    rollback: bool,
) -> Result<bool, Error> {
    let now_us = to_micros(now());
    if let Some(s) = stages
        .iter_mut()
        .find(|s| s.status == "in_progress" || s.status == "pending")
    {
        s.status = "failed".into();
        s.started_at.get_or_insert(now_us);
        s.completed_at = Some(now_us);
    }
    dep.stages = serde_json::to_string(&stages).map_err(Error::internal)?;
    dep.status = "failed".into();
    dep.reason = Some(reason.to_string());
    deployments::log(tx, &dep.id, &format!("failed: {reason}")).await?;
    record(
        tx,
        app,
        dep,
        "deployment.failed",
        Severity::Error,
        json!({"reason": reason, "version": version_label(dep.version)}),
    )
    .await?;
    let back_to = dep.from_version.filter(|_| rollback);
    match back_to {
        Some(f) => {
            let r = deployments::release(tx, &app.id, f)
                .await?
                .ok_or_else(|| Error::Internal(format!("release v{f} is missing")))?;
            app.version = f;
            retarget(app, &r);
            app.traffic = None;
            // New instances that do not serve go now; healthy ones are
            // replaced by the old version (the controller's mechanism).
            let holding = dep.strategy == "blue-green";
            for i in insts
                .iter()
                .filter(|i| i.desired == "running" && i.version == dep.version)
            {
                if holding || i.status != "healthy" {
                    let mut i = i.clone();
                    stop_instance(tx, &mut i, "its deployment failed").await?;
                }
            }
            deployments::log(
                tx,
                &dep.id,
                &format!("rolling back to {}", version_label(f)),
            )
            .await?;
        }
        None => {
            dep.finished_at = Some(now_us);
            app.traffic = None;
        }
    }
    deployments::update(tx, dep).await?;
    apps::update(tx, app).await?;
    Ok(true)
}
