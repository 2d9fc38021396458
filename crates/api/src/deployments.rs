//! Deployments (`POST /v1/apps/{id}/deploy`, `/v1/deployments/…`): request
//! and response types.

use serde::{Deserialize, Serialize};
use shellwego_core::model;
use shellwego_core::units::parse_duration;
use shellwego_core::{Error, FieldError};
use utoipa::ToSchema;

use crate::apps::Source;

/// The stages of every deployment, in order.
pub const STAGES: &[&str] = &[
    "resolving_image",
    "pulling_image",
    "creating_instances",
    "starting_health_checks",
    "shifting_traffic",
    "draining_old",
    "completed",
];

pub const STRATEGIES: &[&str] = &["rolling", "blue-green", "canary"];

/// `POST /v1/apps/{app_id}/deploy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The image to run (`myapp:v2`); absent: the app's current image or source.
    #[serde(default)]
    pub image: Option<String>,
    /// A new tarball source (`{type: "tarball", upload_id | url}`).
    #[serde(default)]
    pub source: Option<Source>,
    /// `rolling`, `blue-green` or `canary` [default: blue-green when the
    /// image changes, else rolling].
    #[serde(default)]
    pub strategy: Option<model::DeployStrategy>,
    /// How long new instances have to become healthy [default: 5m].
    #[serde(default)]
    pub health_check_timeout: Option<String>,
    /// Undo a deployment that fails [default: true].
    #[serde(default)]
    pub rollback_on_failure: Option<bool>,
    /// Rolling: instances replaced at a time [default: 1]; the older name
    /// of `max_surge`.
    #[serde(default)]
    pub batch_size: Option<i64>,
    /// Rolling and canary: extra instances started next to the running ones
    /// at a time (Kubernetes' `maxSurge`) [default: 1]. When one of them
    /// fits on no node, the rollout replaces in place instead (stop one,
    /// then start its replacement).
    #[serde(default)]
    pub max_surge: Option<i64>,
    /// Rolling and canary: instances that may be down at a time (Kubernetes'
    /// `maxUnavailable`) [default: 0; 1 while replacing in place].
    #[serde(default)]
    pub max_unavailable: Option<i64>,
    /// Blue-green: how long the old set stays warm after the switch [default: 5m].
    #[serde(default)]
    pub warm_window: Option<String>,
    /// Canary: traffic percentages, ending at 100 [default: [10, 50, 100]].
    #[serde(default)]
    pub canary_steps: Option<Vec<u32>>,
    /// Canary: how long each step is watched before the next [default: 1m].
    #[serde(default)]
    pub canary_pause: Option<String>,
}

impl crate::Validate for DeployRequest {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        crate::apps::check_image(&mut errs, self.image.as_deref());
        if self.image.is_some() && self.source.is_some() {
            errs.push(FieldError::new(
                "source",
                "invalid_value",
                "give either an image or a source, not both",
            ));
        }
        if let Some(s) = &self.source {
            if s.kind == model::SourceKind::Tarball {
                crate::apps::check_source(&mut errs, s);
            } else {
                errs.push(FieldError::new(
                    "source.type",
                    "invalid_value",
                    "only tarball sources can be deployed here (git comes later)",
                ));
            }
        }
        for (field, v) in [
            ("health_check_timeout", &self.health_check_timeout),
            ("warm_window", &self.warm_window),
            ("canary_pause", &self.canary_pause),
        ] {
            if let Some(v) = v {
                match parse_duration(v) {
                    Some(d) if d.as_secs() <= 24 * 3600 => {}
                    _ => errs.push(
                        FieldError::new(
                            field,
                            "invalid_value",
                            "must be a duration such as 30s, 5m or 1h (at most 24h)",
                        )
                        .with_value(v.clone()),
                    ),
                }
            }
        }
        check_rollout_limits(
            &mut errs,
            self.batch_size,
            self.max_surge,
            self.max_unavailable,
        );
        if let Some(steps) = &self.canary_steps {
            let increasing = steps.windows(2).all(|w| w[0] < w[1]);
            if steps.is_empty()
                || steps.len() > 10
                || !increasing
                || steps.first().is_some_and(|s| *s == 0)
                || steps.last() != Some(&100)
            {
                errs.push(FieldError::new(
                    "canary_steps",
                    "invalid_value",
                    "must be 1 to 10 increasing percentages ending at 100, such as [10, 50, 100]",
                ));
            }
        }
        crate::finish(errs)
    }
}

/// `batch_size` (1 … 100), `max_surge` and `max_unavailable` (0 … 100, not
/// both 0), shared by deploys and restarts.
pub fn check_rollout_limits(
    errs: &mut Vec<FieldError>,
    batch_size: Option<i64>,
    max_surge: Option<i64>,
    max_unavailable: Option<i64>,
) {
    if let Some(b) = batch_size {
        if !(1..=100).contains(&b) {
            errs.push(FieldError::new(
                "batch_size",
                "out_of_range",
                "must be between 1 and 100",
            ));
        }
        if max_surge.is_some() {
            errs.push(FieldError::new(
                "batch_size",
                "invalid_value",
                "batch_size is the older name of max_surge: give one of them",
            ));
        }
    }
    for (field, v) in [
        ("max_surge", max_surge),
        ("max_unavailable", max_unavailable),
    ] {
        if v.is_some_and(|v| !(0..=100).contains(&v)) {
            errs.push(FieldError::new(
                field,
                "out_of_range",
                "must be between 0 and 100",
            ));
        }
    }
    if max_surge.or(batch_size) == Some(0) && max_unavailable.unwrap_or(0) == 0 {
        errs.push(FieldError::new(
            "max_surge",
            "invalid_value",
            "max_surge and max_unavailable cannot both be 0 (nothing could move); set max_unavailable to 1 to replace in place",
        ));
    }
}

/// A stage of a deployment. (Its schema is `DeploymentStage`: `Stage` is
/// the stage names' enum.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = DeploymentStage)]
pub struct Stage {
    pub name: model::Stage,
    pub status: model::StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// What the stage in progress waits for (`waiting for room: no node
    /// has room …`), or how it proceeds (`no room for a surge instance:
    /// replacing in place, 1 at a time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The deployment's step log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub total_steps: i64,
    pub completed_steps: i64,
    pub current_step: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentMetrics {
    /// Time to prepare the release (pulling images counts here).
    pub build_time_ms: Option<i64>,
    /// From start to completion (or failure).
    pub deploy_time_ms: Option<i64>,
}

/// A deployment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    pub app_id: String,
    /// `failed`: nothing undone, or the undo is under way; `rolled_back`:
    /// the previous version serves again; `cancelled`: the app was stopped
    /// or deleted before it completed.
    pub status: model::DeploymentStatus,
    /// Why it failed or was rolled back.
    pub status_reason: Option<String>,
    /// The app version it deploys (`v3`).
    pub version: String,
    /// The image, by digest once resolved (`myapp:v2@sha256:…`).
    pub image: Option<String>,
    pub strategy: model::Strategy,
    pub initiated_by: Option<String>,
    pub stages: Vec<Stage>,
    pub progress: Progress,
    pub metrics: DeploymentMetrics,
    /// The deployment a rollback returns to.
    pub rollback_target: Option<String>,
    /// The version that served before this deployment.
    pub previous_version: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
}

/// `POST /v1/apps/{app_id}/deploy` answer (202).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeployAccepted {
    pub deployment_id: String,
    pub status: model::DeploymentStatus,
    pub progress: Progress,
}

/// One server-sent event of `GET /v1/deployments/{id}/logs?follow=true`:
/// a log line (`<time> <message>`) with its sequence number as `id`, until
/// a last event `end` when the deployment has ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentLogEvent {
    /// The line's sequence number (absent on `end`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `message` for a line, `end` for the last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[schema(example = "2026-01-01T12:00:00.000Z pulling image nginx:alpine")]
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    pub data: Vec<Deployment>,
    pub pagination: crate::Pagination,
}

/// `POST /v1/deployments/{id}/actions/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// `immediate` (all instances of the target start at once; traffic
    /// switches when they are healthy) or `gradual` (rolling) [default: immediate].
    #[serde(default)]
    pub strategy: Option<model::RollbackStrategy>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl crate::Validate for RollbackRequest {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if self.reason.as_ref().is_some_and(|r| r.len() > 1000) {
            errs.push(FieldError::new(
                "reason",
                "too_long",
                "at most 1000 characters",
            ));
        }
        crate::finish(errs)
    }
}
