//! Deployments: the API's operations (deploy, list, get, rollback,
//! promote). The rollout itself, stage by stage, is
//! `crate::controller::rollout`.

use serde_json::json;
use shellwego_core::model::{DeploymentStatus, RollbackStrategy, Strategy};
use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;
use shellwego_store::apps::{self};
use shellwego_store::deployments::{self, Deployment, LogLine};
use shellwego_store::events::NewEvent;

use shellwego_api::deployments::{DeployRequest, RollbackRequest};
use shellwego_core::list::ListParams;
use shellwego_core::units::parse_duration;
use shellwego_store::list::{Page, Scope};

use crate::auth::Principal;
use crate::controller::rollout::{canary_weight, start, version_label, Options, Target};
use crate::ctx::{ServerCtx, DESIRED};

fn ms(v: &Option<String>, default: i64) -> i64 {
    v.as_deref()
        .and_then(parse_duration)
        .map_or(default, |d| d.as_millis() as i64)
}

/// `POST /v1/apps/{id}/deploy`: a new release of the app (with the given
/// image or source) and a deployment to it.
pub async fn app_deploy(
    ctx: &ServerCtx,
    p: &Principal,
    app_id: &str,
    req: &DeployRequest,
) -> Result<Deployment, Error> {
    let store = &ctx.store;
    p.authorize("apps", "write", Some(app_id))?;
    crate::service::apps::check_fetch_targets(
        &ctx.config.ssrf,
        req.image.as_deref(),
        req.source.as_ref(),
    )
    .await?;
    if let Some(upl) = req.source.as_ref().and_then(|s| s.upload_id.as_ref()) {
        if !apps::upload_exists(&mut *store.conn().await?, upl, &p.organization_id).await? {
            return Err(Error::field(
                "source.upload_id",
                "not_found",
                "no such upload in this organization; upload the archive with POST /v1/uploads first",
            ));
        }
    }
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let mut app = match apps::get_for_update(&mut tx, app_id).await? {
        Some(a) if a.organization_id == p.organization_id => a,
        _ => return Err(Error::not_found("app", app_id)),
    };
    // Edited in the API's words, stored in the model's.
    let mut spec = shellwego_api::apps::AppSpec::from(&app.spec);
    let image_changed = req
        .image
        .as_ref()
        .is_some_and(|i| spec.image.as_ref() != Some(i));
    if let Some(i) = &req.image {
        spec.image = Some(i.clone());
        spec.source = None;
    }
    if let Some(s) = &req.source {
        spec.source = Some(s.clone());
        spec.image = None;
    }
    let mut model = spec.to_model()?;
    // What the API's view of a spec does not carry.
    model.env_write_only = std::mem::take(&mut app.spec.env_write_only);
    app.spec = model;
    let strategy = match req.strategy {
        Some(s) => s.strategy(),
        None if image_changed => Strategy::BlueGreen,
        None => Strategy::Rolling,
    };
    let d = Options::default();
    let options = Options {
        max_surge: req.max_surge.or(req.batch_size).unwrap_or(d.max_surge),
        max_unavailable: req.max_unavailable.unwrap_or(d.max_unavailable),
        health_check_timeout_ms: ms(&req.health_check_timeout, d.health_check_timeout_ms),
        rollback_on_failure: req.rollback_on_failure.unwrap_or(true),
        warm_ms: ms(&req.warm_window, d.warm_ms),
        canary_steps: req.canary_steps.clone().unwrap_or(d.canary_steps),
        canary_pause_ms: ms(&req.canary_pause, d.canary_pause_ms),
        max_error_rate: d.max_error_rate,
        in_place: false,
        version: d.version,
    };
    let reason = match (&req.image, &req.source) {
        (Some(i), _) => format!("deploy {i}"),
        (_, Some(_)) => "deploy a new source".to_string(),
        _ => "redeploy".to_string(),
    };
    let dep = start(
        &mut tx,
        &p.actor(),
        &mut app,
        Target::New,
        strategy,
        options,
        &reason,
        None,
    )
    .await?;
    apps::update(&mut tx, &app).await?;
    tx.record(NewEvent::info("deployment.started", &p.actor(), "app", app_id)
            .in_org(&app.organization_id)
            .meta(json!({"deployment_id": dep.id, "version": version_label(dep.version), "strategy": strategy, "image": spec.image})));
    crate::controller::reconcile::reconcile_in(&mut tx, app_id).await?;
    let dep = deployments::get_in(&mut tx, &dep.id).await?.unwrap_or(dep);
    tx.commit().await?;
    Ok(dep)
}

pub async fn deployment_list(
    ctx: &ServerCtx,
    p: &Principal,
    app_id: &str,
    params: &ListParams,
) -> Result<Page<Deployment>, Error> {
    let store = &ctx.store;
    // 404 for an app the caller cannot see.
    crate::service::apps::app_get(ctx, p, app_id).await?;
    let scope = Scope::new()
        .is_in("t.organization_id", p.organization_ids())
        .is_in("t.app_id", vec![app_id.to_string()]);
    crate::service::list_page(
        store,
        &deployments::DEPLOYMENTS,
        &scope,
        params,
        deployments::from_row,
    )
    .await
}

pub async fn deployment_get(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<Deployment, Error> {
    let store = &ctx.store;
    let d = deployments::get_visible(&mut *store.conn().await?, id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("deployment", id))?;
    p.authorize("apps", "read", Some(&d.app_id))
        .map_err(|_| Error::not_found("deployment", id))?;
    Ok(d)
}

/// `POST /v1/deployments/{id}/actions/rollback`: a new deployment back to
/// that deployment's release (its exact spec and image digest).
pub async fn deployment_rollback(
    ctx: &ServerCtx,
    p: &Principal,
    id: &str,
    req: &RollbackRequest,
) -> Result<Deployment, Error> {
    let target = deployment_get(ctx, p, id).await?;
    p.authorize("apps", "write", Some(&target.app_id))?;
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let Some(mut app) = apps::get_for_update(&mut tx, &target.app_id).await? else {
        return Err(Error::not_found("deployment", id));
    };
    let active = deployments::active(&mut tx, &app.id).await?;
    if app.version == target.version && active.is_none() {
        return Err(Error::Conflict(format!(
            "The app already runs {} ({}); pick an older deployment.",
            version_label(target.version),
            target.id
        )));
    }
    let strategy = req
        .strategy
        .unwrap_or(RollbackStrategy::Immediate)
        .strategy();
    let options = Options {
        warm_ms: 0,
        ..Default::default()
    };
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| format!("rollback to {}", target.id));
    let previous = deployments::serving(&mut tx, &app.id, app.version)
        .await?
        .map(|d| d.id);
    let dep = start(
        &mut tx,
        &p.actor(),
        &mut app,
        Target::Existing(target.version),
        strategy,
        options,
        &reason,
        Some(target.id.clone()),
    )
    .await?;
    // What served until now is rolled back.
    if let Some(prev) = previous {
        if let Some(mut d) = deployments::get_in(&mut tx, &prev).await? {
            if d.status == DeploymentStatus::Successful && d.id != target.id {
                d.status = DeploymentStatus::RolledBack;
                d.reason = Some(format!("rolled back by {}: {reason}", dep.id));
                deployments::update(&mut tx, &d).await?;
            }
        }
    }
    apps::update(&mut tx, &app).await?;
    tx.record(NewEvent::info("deployment.rollback", &p.actor(), "app", &app.id)
            .in_org(&app.organization_id)
            .meta(json!({"deployment_id": dep.id, "rollback_target": target.id, "version": version_label(target.version), "reason": reason})));
    crate::controller::reconcile::reconcile_in(&mut tx, &app.id).await?;
    let dep = deployments::get_in(&mut tx, &dep.id).await?.unwrap_or(dep);
    tx.commit().await?;
    Ok(dep)
}

/// `POST /v1/deployments/{id}/actions/promote`: a canary goes to 100% at
/// once (no more steps or pauses); a blue-green deployment ends its warm
/// window now.
pub async fn deployment_promote(
    ctx: &ServerCtx,
    p: &Principal,
    id: &str,
) -> Result<Deployment, Error> {
    let d = deployment_get(ctx, p, id).await?;
    p.authorize("apps", "write", Some(&d.app_id))?;
    let mut tx = ctx.unit().await?;
    tx.touch(DESIRED);
    let Some(app) = apps::get_for_update(&mut tx, &d.app_id).await? else {
        return Err(Error::not_found("deployment", id));
    };
    let Some(mut d) = deployments::get_in(&mut tx, id).await? else {
        return Err(Error::not_found("deployment", id));
    };
    let now_us = to_micros(now());
    let what = match (d.status, d.strategy) {
        (DeploymentStatus::InProgress, Strategy::Canary) if canary_weight(&d) < 100 => {
            d.canary_step = d.options.canary_steps.len().saturating_sub(1) as i64;
            d.wait_until = None;
            d.step_started_at = Some(now_us);
            "promoted: the canary goes to 100%"
        }
        (DeploymentStatus::InProgress, Strategy::BlueGreen | Strategy::Canary)
            if d.wait_until.is_some() =>
        {
            d.wait_until = Some(now_us);
            "promoted: the old set stops now"
        }
        (
            DeploymentStatus::InProgress
            | DeploymentStatus::Successful
            | DeploymentStatus::Failed
            | DeploymentStatus::RolledBack
            | DeploymentStatus::Cancelled,
            Strategy::Rolling | Strategy::BlueGreen | Strategy::Canary | Strategy::Immediate,
        ) => {
            return Err(Error::Conflict(format!(
                "Deployment {id} has nothing to promote (it is {} {}); promote a canary, or a blue-green deployment after its switch.",
                d.status, d.strategy
            )))
        }
    };
    deployments::update(&mut tx, &d).await?;
    deployments::log(&mut tx, &d.id, what).await?;
    tx.record(
        NewEvent::info("deployment.promoted", &p.actor(), "app", &app.id)
            .in_org(&app.organization_id)
            .meta(json!({"deployment_id": d.id})),
    );
    crate::controller::reconcile::reconcile_in(&mut tx, &app.id).await?;
    let d = deployments::get_in(&mut tx, id).await?.unwrap_or(d);
    tx.commit().await?;
    Ok(d)
}

/// A deployment's log lines after `seq`, of a deployment the caller
/// fetched through this service.
pub async fn deployment_log(
    ctx: &ServerCtx,
    d: &Deployment,
    after: i64,
) -> Result<Vec<LogLine>, Error> {
    deployments::log_after(&mut *ctx.store.conn().await?, &d.id, after).await
}

/// Whether a deployment the caller may see has ended (or is gone).
pub async fn deployment_ended(ctx: &ServerCtx, p: &Principal, id: &str) -> bool {
    let found = match ctx.store.conn().await {
        Ok(mut db) => deployments::get_visible(&mut db, id, &p.organization_ids()).await,
        Err(e) => Err(e),
    };
    found.ok().flatten().is_none_or(|d| d.finished_at.is_some())
}
