//! Apps: `/v1/apps` and their instances.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shellwego_core::model;
use shellwego_core::units::{parse_duration, parse_size};
use shellwego_core::{Error, FieldError};
use utoipa::ToSchema;

use crate::events::Event;
use crate::Pagination;

/// Memory an app gets when it does not say (bytes).
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// CPU an app gets when it does not say (millicores).
pub const DEFAULT_CPU_MILLIS: i64 = 500;
pub const DEFAULT_DISK: u64 = 1 << 30;
pub const MIN_MEMORY: u64 = 64 << 20;
pub const MAX_MEMORY: u64 = 32 << 30;
pub const MAX_REPLICAS: i64 = 100;
pub const RUNTIMES: &[&str] = &["process", "container", "microvm"];
pub const STATUSES: &[&str] = &[
    "running",
    "stopped",
    "error",
    "deploying",
    "pending",
    "paused",
];

/// CPU as a decimal string (`"0.5"`) or a number (`0.5`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Cpu {
    Text(String),
    Number(f64),
}

impl Cpu {
    /// Millicores, when the value is a number.
    pub fn millis(&self) -> Option<i64> {
        let v = match self {
            Cpu::Text(s) => s.trim().parse::<f64>().ok()?,
            Cpu::Number(n) => *n,
        };
        v.is_finite().then(|| (v * 1000.0).round() as i64)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// 64m … 32g.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "256m")]
    pub memory: Option<String>,
    /// 0.1 … 16 cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "0.5")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "5gb")]
    pub disk: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP path to GET (2xx/3xx is healthy); absent means a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "/health")]
    pub path: Option<String>,
    /// Defaults to the app's port (`$PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default `10s` (1s … 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Default `5s`; at most the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failures in a row before the instance is unhealthy (default 3, 1 … 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Time after start during which failures do not count (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
}

/// Where the app's files come from when there is no `image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `docker`, `tarball` (or `git`, in a later release).
    #[serde(rename = "type")]
    pub kind: model::SourceKind,
    /// tarball: an http(s) URL of a .tar or .tar.gz (at most 1 GiB). Its
    /// host must be a public address unless the operator's `[ssrf]` config
    /// section allows it (loopback, private, link-local and cloud metadata
    /// addresses are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// tarball: an id from `POST /v1/uploads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// git: repository, branch, commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub git: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Only nodes in this region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only nodes carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `POST /v1/apps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "my-new-app", "image": "nginx:alpine", "replicas": 1}))]
pub struct AppCreate {
    /// A DNS label, unique in the organization: `<name>.<base-domain>` routes to it.
    #[schema(example = "my-new-app", pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// An OCI image reference (`nginx:alpine`, `registry:5000/app@sha256:…`).
    /// A registry host must be a public address unless the operator's
    /// `[ssrf]` config section allows it.
    #[serde(default)]
    pub image: Option<String>,
    /// Overrides the image's entrypoint/cmd (or the Procfile's `web:` line).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub resources: Resources,
    /// A value is a string, or `{"value": "…", "encrypted": true}` for a
    /// write-only one. Every value is encrypted at rest.
    #[serde(default)]
    pub env: BTreeMap<String, EnvInput>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// 0 … 100 (default 1).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub source: Option<Source>,
    /// `process`, `container` or `microvm`; default: the strongest isolation the node offers.
    #[serde(default)]
    pub runtime: Option<model::DriverKind>,
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Seconds between SIGTERM and SIGKILL when an instance stops (default `10s`, at most `5m`).
    #[serde(default)]
    pub stop_timeout: Option<String>,
    /// Ingress exposure and egress policy (default: public, egress anywhere).
    #[serde(default)]
    pub networking: Option<NetworkingRequest>,
    /// Log retention and size cap (default: the nodes').
    #[serde(default)]
    pub logging: Option<Logging>,
}

/// How long and how much of the app's output each node keeps (absent:
/// the node's defaults, 7 days and 64 MiB unless its operator set others).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// `1h` to `365d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "7d")]
    pub retention: Option<String>,
    /// Per node, `1mb` to `10gb`; the oldest lines go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "64mb")]
    pub max_size: Option<String>,
}

impl Logging {
    fn check(&self, errs: &mut Vec<FieldError>) {
        check_duration(
            errs,
            "logging.retention",
            &self.retention,
            3_600_000,
            365 * 86_400_000,
            "1h and 365d",
        );
        if let Some(v) = &self.max_size {
            match parse_size(v) {
                Some(n) if ((1 << 20)..=(10u64 << 30)).contains(&n) => {}
                Some(_) => errs.push(
                    FieldError::new(
                        "logging.max_size",
                        "out_of_range",
                        "must be between 1mb and 10gb",
                    )
                    .with_value(v.clone()),
                ),
                None => errs.push(
                    FieldError::new(
                        "logging.max_size",
                        "invalid_value",
                        "must be a size such as 64mb or 1gb",
                    )
                    .with_value(v.clone()),
                ),
            }
        }
    }
}

impl From<&Logging> for model::LoggingSpec {
    fn from(l: &Logging) -> model::LoggingSpec {
        model::LoggingSpec {
            retention: l.retention.clone(),
            max_size: l.max_size.clone(),
        }
    }
}

impl From<&model::LoggingSpec> for Logging {
    fn from(l: &model::LoggingSpec) -> Logging {
        Logging {
            retention: l.retention.clone(),
            max_size: l.max_size.clone(),
        }
    }
}

/// `networking` of a create or an update; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkingRequest {
    /// `false`: the ingress does not route to the app (it answers 404 for
    /// its host name); instances of the organization's other apps still
    /// reach it by its `internal_dns` name.
    #[serde(default)]
    pub public: Option<bool>,
    /// CIDRs the app's instances may connect to (at most 64), e.g.
    /// `["10.99.0.0/24"]`; a bare address means `/32`. `["0.0.0.0/0"]`
    /// (the default) allows anywhere. A policy is enforced for the
    /// container and microvm drivers; the process driver refuses to start
    /// an instance whose egress it cannot restrict.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub allowed_egress: Option<Vec<String>>,
    /// Read-only (`<name>.internal`): accepted only with that value.
    #[serde(default)]
    pub internal_dns: Option<String>,
}

impl NetworkingRequest {
    /// The canonical egress list, or the field errors that say what to change.
    pub fn egress(&self) -> Result<Option<Vec<String>>, Vec<FieldError>> {
        let Some(list) = &self.allowed_egress else {
            return Ok(None);
        };
        let mut errs = vec![];
        if list.len() > 64 {
            errs.push(FieldError::new(
                "networking.allowed_egress",
                "too_many",
                "at most 64 CIDRs; merge neighbouring ranges",
            ));
        }
        let mut out: Vec<String> = vec![];
        for (i, c) in list.iter().enumerate() {
            match model::NetworkingSpec::canonical_cidr(c) {
                Ok(c) if !out.contains(&c) => out.push(c),
                Ok(_) => {}
                Err(m) => errs.push(
                    FieldError::new(
                        format!("networking.allowed_egress[{i}]"),
                        "invalid_value",
                        m,
                    )
                    .with_value(c.clone()),
                ),
            }
        }
        if errs.is_empty() {
            Ok(Some(out))
        } else {
            Err(errs)
        }
    }

    /// Errors in this block of the app named `name`.
    pub fn check(&self, errs: &mut Vec<FieldError>, name: &str) {
        if let Err(e) = self.egress() {
            errs.extend(e);
        }
        if let Some(d) = &self.internal_dns {
            let want = format!("{name}.internal");
            if *d != want {
                errs.push(
                    FieldError::new(
                        "networking.internal_dns",
                        "read_only",
                        format!("is the app's name under .internal ({want}); leave it out"),
                    )
                    .with_value(d.clone()),
                );
            }
        }
    }

    /// Apply to a stored spec's block.
    pub fn apply(&self, n: &mut model::NetworkingSpec) -> Result<(), Error> {
        if let Some(p) = self.public {
            n.public = p;
        }
        if let Some(e) = self.egress().map_err(Error::invalid)? {
            n.allowed_egress = e;
        }
        Ok(())
    }
}

/// What of an app decides how its instances run; kept as JSON in the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<model::DriverKind>,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<ScaleConstraints>,
    /// Replacements in flight at a time during the current rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_batch: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    #[serde(default, skip_serializing_if = "NetworkingPolicy::is_default")]
    pub networking: NetworkingPolicy,
}

/// The stored part of `networking` (`internal_dns` is derived from the name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetworkingPolicy {
    pub public: bool,
    pub allowed_egress: Vec<String>,
}

impl Default for NetworkingPolicy {
    fn default() -> Self {
        (&model::NetworkingSpec::default()).into()
    }
}

impl NetworkingPolicy {
    pub fn is_default(&self) -> bool {
        *self == NetworkingPolicy::default()
    }
}

impl From<&model::NetworkingSpec> for NetworkingPolicy {
    fn from(n: &model::NetworkingSpec) -> NetworkingPolicy {
        NetworkingPolicy {
            public: n.public,
            allowed_egress: n.allowed_egress.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppCreated {
    pub id: String,
    pub name: String,
    pub status: model::AppStatus,
    pub deployment_id: String,
}

/// `PATCH /v1/apps/{app_id}`: resources, env and health-check changes roll,
/// an image change goes blue-green, replicas and tags change no instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppUpdate {
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub replicas: Option<i64>,
    /// Merged into the app's env; a `null` value removes the variable. A
    /// value is a string, or `{"value": "…", "encrypted": true}` for one
    /// the API never shows again.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub env: Option<BTreeMap<String, Option<EnvInput>>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// A new image: deployed blue-green (`POST …/deploy` chooses the strategy).
    #[serde(default)]
    pub image: Option<String>,
    /// `public` applies at once (the ingress's table); a new
    /// `allowed_egress` rolls the instances (a policy is set when an
    /// instance starts).
    #[serde(default)]
    pub networking: Option<NetworkingRequest>,
    /// Log retention and size cap; applies at once (no rollout). Fields
    /// given replace those stored; `{}` goes back to the nodes' defaults.
    #[serde(default)]
    pub logging: Option<Logging>,
}

/// `POST /v1/apps/{app_id}/actions/restart`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartRequest {
    /// `rolling` (default) or `immediate`.
    #[serde(default)]
    pub strategy: Option<model::RestartStrategy>,
    /// Instances restarted at a time when rolling (default 1); the older
    /// name of `max_surge`.
    #[serde(default)]
    pub batch_size: Option<i64>,
    /// Rolling: extra instances started next to the running ones at a time
    /// [default: 1]. When one fits on no node, the restart replaces in
    /// place instead (stop one, then start its replacement).
    #[serde(default)]
    pub max_surge: Option<i64>,
    /// Rolling: instances that may be down at a time [default: 0; 1 while
    /// replacing in place].
    #[serde(default)]
    pub max_unavailable: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleConstraints {
    pub min: i64,
    pub max: i64,
    /// Percent of the CPU limit above which to add a replica (1 … 100,
    /// default 70). Replicas are removed when the average is below half
    /// of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_threshold: Option<i64>,
    /// Time after a scaling before the next scale-out (default `1m`,
    /// `10s` … `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_out_cooldown: Option<String>,
    /// Time after a scaling before a scale-in (default `5m`, `10s` … `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in_cooldown: Option<String>,
}

/// `POST /v1/apps/{app_id}/scale`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// 0 … 100; required for `manual`.
    #[serde(default)]
    pub replicas: Option<i64>,
    /// `manual` (default) or `auto` (stored; acted on by metrics-driven autoscaling).
    #[serde(default)]
    pub strategy: Option<model::ScaleMode>,
    #[serde(default)]
    pub constraints: Option<ScaleConstraints>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Replicas {
    /// Instances running (starting, healthy or unhealthy).
    pub current: i64,
    pub desired: i64,
    pub healthy: i64,
}

/// An env variable as the API shows it. Every value is encrypted at rest;
/// `encrypted: true` marks one given as write-only, whose value is never
/// shown again (`null`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvValue {
    pub value: Option<String>,
    pub encrypted: bool,
}

/// An env value given to the API: a string, or `{"value": "…",
/// "encrypted": true}` for a write-only one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EnvInput {
    Plain(String),
    Marked(EnvMarked),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvMarked {
    pub value: String,
    /// Write-only: the API never shows the value again.
    #[serde(default)]
    pub encrypted: bool,
}

impl EnvInput {
    pub fn value(&self) -> &str {
        match self {
            EnvInput::Plain(v) => v,
            EnvInput::Marked(m) => &m.value,
        }
    }
    pub fn write_only(&self) -> bool {
        matches!(self, EnvInput::Marked(m) if m.encrypted)
    }
}

impl From<&str> for EnvInput {
    fn from(v: &str) -> EnvInput {
        EnvInput::Plain(v.to_string())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppDomain {
    pub hostname: String,
    pub tls_status: String,
    pub certificate_expires: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppNetworking {
    pub internal_dns: String,
    pub public: bool,
    pub allowed_egress: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppRuntime {
    /// The driver the instances run under (`process`, `container`, `microvm`).
    pub driver: Option<model::DriverKind>,
    /// The driver the app asked for, if any.
    pub requested: Option<model::DriverKind>,
    pub kernel_version: Option<String>,
    pub microvm_version: Option<String>,
    pub firecracker_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    #[schema(example = "inst_9x2k3m8s1d")]
    pub id: String,
    pub node_id: Option<String>,
    pub status: model::InstanceStatus,
    /// Why the instance is in this state (exit code, OOM kill, failing check, no room).
    pub status_reason: Option<String>,
    pub ip: Option<String>,
    pub port: Option<i64>,
    pub driver: Option<model::DriverKind>,
    pub started_at: Option<String>,
    pub health_checks_passed: i64,
    pub restarts: i64,
    /// The app version this instance runs.
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct App {
    #[schema(example = "app_2v8s9d2k1m")]
    pub id: String,
    pub name: String,
    pub slug: String,
    /// `pending`: waiting for room on a node.
    pub status: model::AppStatus,
    /// Why the app is in `error` or `pending`.
    pub status_reason: Option<String>,
    /// The image, by digest once a node has pulled it.
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub resources: Resources,
    pub env: BTreeMap<String, EnvValue>,
    pub domains: Vec<AppDomain>,
    pub volumes: Vec<VolumeSpec>,
    pub replicas: Replicas,
    pub networking: AppNetworking,
    pub health_check: HealthCheck,
    pub source: Option<Source>,
    pub placement: Placement,
    pub runtime: AppRuntime,
    /// Log retention and size cap; absent: the nodes' defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    pub instances: Vec<Instance>,
    pub deployment_id: Option<String>,
    pub version: i64,
    pub autoscale: Option<ScaleConstraints>,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<String>,
    pub organization_id: String,
    pub tags: Vec<String>,
    /// With `include=events`: the app's latest events (newest first, at most 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub data: Vec<App>,
    pub pagination: Pagination,
}

/// `POST /v1/uploads`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadCreated {
    #[schema(example = "upl_1x2c3v4b5n")]
    pub upload_id: String,
    pub size: i64,
    pub sha256: String,
}

/// A DNS label: 1–63 lowercase letters, digits and hyphens, starting with a
/// letter, not ending with a hyphen.
pub fn valid_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// An environment variable name: letters, digits, `_`, not starting with a digit.
pub fn valid_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn check_resources(errs: &mut Vec<FieldError>, r: &Resources) {
    if let Some(m) = &r.memory {
        match parse_size(m) {
            Some(b) if (MIN_MEMORY..=MAX_MEMORY).contains(&b) => {}
            Some(_) => errs.push(
                FieldError::new(
                    "resources.memory",
                    "out_of_range",
                    "must be between 64m and 32g",
                )
                .with_value(m.clone()),
            ),
            None => errs.push(
                FieldError::new(
                    "resources.memory",
                    "invalid_value",
                    "must be a size such as 256m or 1g",
                )
                .with_value(m.clone()),
            ),
        }
    }
    if let Some(c) = &r.cpu {
        match c.millis() {
            Some(m) if (100..=16_000).contains(&m) => {}
            Some(_) => errs.push(FieldError::new(
                "resources.cpu",
                "out_of_range",
                "must be between 0.1 and 16 cores",
            )),
            None => errs.push(FieldError::new(
                "resources.cpu",
                "invalid_value",
                "must be a number of cores such as \"0.5\"",
            )),
        }
    }
    if let Some(d) = &r.disk {
        match parse_size(d) {
            Some(b) if ((1 << 20)..=(16 << 40)).contains(&b) => {}
            _ => errs.push(
                FieldError::new(
                    "resources.disk",
                    "invalid_value",
                    "must be a size between 1m and 16t, such as 10gb",
                )
                .with_value(d.clone()),
            ),
        }
    }
}

fn check_duration(
    errs: &mut Vec<FieldError>,
    field: &str,
    v: &Option<String>,
    min_ms: u128,
    max_ms: u128,
    range: &str,
) {
    if let Some(s) = v {
        match parse_duration(s) {
            Some(d) if (min_ms..=max_ms).contains(&d.as_millis()) => {}
            Some(_) => errs.push(
                FieldError::new(field, "out_of_range", format!("must be between {range}"))
                    .with_value(s.clone()),
            ),
            None => errs.push(
                FieldError::new(
                    field,
                    "invalid_value",
                    "must be a duration such as 10s, 5m or 1h",
                )
                .with_value(s.clone()),
            ),
        }
    }
}

fn check_health(errs: &mut Vec<FieldError>, h: &HealthCheck) {
    if let Some(p) = &h.path {
        if !p.starts_with('/') || p.len() > 1024 || p.chars().any(|c| c.is_control() || c == ' ') {
            errs.push(
                FieldError::new(
                    "health_check.path",
                    "invalid_value",
                    "must be a URL path starting with /",
                )
                .with_value(p.clone()),
            );
        }
    }
    if h.port == Some(0) {
        errs.push(FieldError::new(
            "health_check.port",
            "out_of_range",
            "must be between 1 and 65535",
        ));
    }
    check_duration(
        errs,
        "health_check.interval",
        &h.interval,
        1000,
        3_600_000,
        "1s and 1h",
    );
    check_duration(
        errs,
        "health_check.timeout",
        &h.timeout,
        100,
        60_000,
        "100ms and 60s",
    );
    check_duration(
        errs,
        "health_check.grace_period",
        &h.grace_period,
        0,
        3_600_000,
        "0s and 1h",
    );
    if let (Some(i), Some(t)) = (
        h.interval.as_deref().and_then(parse_duration),
        h.timeout.as_deref().and_then(parse_duration),
    ) {
        if t > i {
            errs.push(FieldError::new(
                "health_check.timeout",
                "invalid_value",
                "must not be longer than health_check.interval",
            ));
        }
    }
    if let Some(r) = h.retries {
        if !(1..=10).contains(&r) {
            errs.push(FieldError::new(
                "health_check.retries",
                "out_of_range",
                "must be between 1 and 10",
            ));
        }
    }
}

fn check_replicas(errs: &mut Vec<FieldError>, r: Option<i64>) {
    if let Some(r) = r {
        if !(0..=MAX_REPLICAS).contains(&r) {
            errs.push(
                FieldError::new("replicas", "out_of_range", "must be between 0 and 100")
                    .with_value(r),
            );
        }
    }
}

fn check_tags(errs: &mut Vec<FieldError>, tags: &[String]) {
    if tags.len() > 20 {
        errs.push(FieldError::new("tags", "too_many", "at most 20 tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        if t.is_empty()
            || t.len() > 63
            || t.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == ',')
        {
            errs.push(
                FieldError::new(
                    format!("tags[{i}]"),
                    "invalid_value",
                    "1-63 characters, no spaces or commas",
                )
                .with_value(t.clone()),
            );
        }
    }
}

fn check_env_name(errs: &mut Vec<FieldError>, k: &str) {
    if !valid_env_name(k) {
        errs.push(FieldError::new(
            format!("env.{k}"),
            "invalid_value",
            "names are letters, digits and _, not starting with a digit",
        ));
    }
}

/// An image reference: non-empty, at most 512 characters, no whitespace or
/// control characters.
pub(crate) fn check_image(errs: &mut Vec<FieldError>, image: Option<&str>) {
    if let Some(i) = image {
        if i.trim().is_empty()
            || i.len() > 512
            || i.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            errs.push(
                FieldError::new(
                    "image",
                    "invalid_value",
                    "must be an image reference such as nginx:alpine",
                )
                .with_value(i.to_string()),
            );
        }
    }
}

impl crate::Validate for AppCreate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if !valid_dns_label(&self.name) {
            errs.push(
                FieldError::new(
                    "name",
                    "invalid_value",
                    "must be a DNS label: 1-63 lowercase letters, digits and hyphens, starting with a letter",
                )
                .with_value(self.name.clone()),
            );
        }
        check_image(&mut errs, self.image.as_deref());
        match (&self.image, &self.source) {
            (None, None) => errs.push(FieldError::new(
                "image",
                "required",
                "give an image, or a source ({\"type\": \"tarball\", \"upload_id\": …})",
            )),
            (Some(_), Some(s)) if s.kind != model::SourceKind::Docker => {
                errs.push(FieldError::new(
                    "source",
                    "invalid_value",
                    "give either an image or a tarball source, not both",
                ))
            }
            (None, Some(s)) => check_source(&mut errs, s),
            _ => {}
        }
        if let Some(c) = &self.command {
            if c.is_empty() || c.len() > 256 || c.iter().any(|a| a.contains('\0')) {
                errs.push(FieldError::new(
                    "command",
                    "invalid_value",
                    "must be a non-empty list of arguments",
                ));
            }
        }
        check_resources(&mut errs, &self.resources);
        if self.env.len() > 500 {
            errs.push(FieldError::new("env", "too_many", "at most 500 variables"));
        }
        for (k, v) in &self.env {
            check_env_name(&mut errs, k);
            let v = v.value();
            if v.contains('\0') || v.len() > 32 * 1024 {
                errs.push(FieldError::new(
                    format!("env.{k}"),
                    "invalid_value",
                    "at most 32 KiB, no NUL bytes",
                ));
            }
        }
        if let Some(h) = &self.health_check {
            check_health(&mut errs, h);
        }
        check_replicas(&mut errs, self.replicas);
        check_tags(&mut errs, &self.tags);
        for (i, d) in self.domains.iter().enumerate() {
            if let Err(m) = crate::domains::normalize_hostname(d) {
                errs.push(
                    FieldError::new(format!("domains[{i}]"), "invalid_value", m)
                        .with_value(d.chars().take(300).collect::<String>()),
                );
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            if !v.mount_path.starts_with('/') || v.mount_path.contains("..") {
                errs.push(FieldError::new(
                    format!("volumes[{i}].mount_path"),
                    "invalid_value",
                    "must be an absolute path",
                ));
            }
            if let Some(s) = &v.size {
                if parse_size(s).is_none() {
                    errs.push(FieldError::new(
                        format!("volumes[{i}].size"),
                        "invalid_value",
                        "must be a size such as 5gb",
                    ));
                }
            }
        }
        if let Some(p) = &self.placement {
            for (k, v) in &p.labels {
                if k.is_empty() || k.len() > 63 || v.len() > 255 {
                    errs.push(FieldError::new(
                        format!("placement.labels.{k}"),
                        "invalid_value",
                        "keys 1-63 characters, values up to 255",
                    ));
                }
            }
        }
        check_duration(
            &mut errs,
            "stop_timeout",
            &self.stop_timeout,
            0,
            300_000,
            "0s and 5m",
        );
        if let Some(n) = &self.networking {
            n.check(&mut errs, &self.name);
        }
        if let Some(l) = &self.logging {
            l.check(&mut errs);
        }
        crate::finish(errs)
    }
}

pub(crate) fn check_source(errs: &mut Vec<FieldError>, s: &Source) {
    match s.kind {
        model::SourceKind::Tarball => match (&s.url, &s.upload_id) {
            (Some(u), None) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 2048 {
                    errs.push(
                        FieldError::new(
                            "source.url",
                            "invalid_value",
                            "must be an http:// or https:// URL",
                        )
                        .with_value(u.clone()),
                    );
                }
            }
            (None, Some(id)) => {
                if !id.starts_with("upl_") {
                    errs.push(
                        FieldError::new(
                            "source.upload_id",
                            "invalid_value",
                            "must be an id from POST /v1/uploads (upl_…)",
                        )
                        .with_value(id.clone()),
                    );
                }
            }
            _ => errs.push(FieldError::new(
                "source",
                "invalid_value",
                "a tarball source has exactly one of url or upload_id",
            )),
        },
        model::SourceKind::Docker => errs.push(FieldError::new(
            "image",
            "required",
            "a docker source needs image",
        )),
        model::SourceKind::Git => errs.push(FieldError::new(
            "source.type",
            "unsupported",
            "git sources are not supported yet; build an image or upload a tarball",
        )),
    }
}

impl crate::Validate for AppUpdate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        check_image(&mut errs, self.image.as_deref());
        if let Some(Err(e)) = self.networking.as_ref().map(NetworkingRequest::egress) {
            errs.extend(e);
        }
        if let Some(r) = &self.resources {
            check_resources(&mut errs, r);
        }
        check_replicas(&mut errs, self.replicas);
        if let Some(env) = &self.env {
            for (k, v) in env {
                check_env_name(&mut errs, k);
                if v.as_ref()
                    .map(EnvInput::value)
                    .is_some_and(|v| v.contains('\0') || v.len() > 32 * 1024)
                {
                    errs.push(FieldError::new(
                        format!("env.{k}"),
                        "invalid_value",
                        "at most 32 KiB, no NUL bytes",
                    ));
                }
            }
        }
        if let Some(t) = &self.tags {
            check_tags(&mut errs, t);
        }
        if let Some(h) = &self.health_check {
            check_health(&mut errs, h);
        }
        if let Some(l) = &self.logging {
            l.check(&mut errs);
        }
        crate::finish(errs)
    }
}

impl crate::Validate for RestartRequest {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        crate::deployments::check_rollout_limits(
            &mut errs,
            self.batch_size,
            self.max_surge,
            self.max_unavailable,
        );
        crate::finish(errs)
    }
}

impl crate::Validate for ScaleRequest {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        check_replicas(&mut errs, self.replicas);
        match self.strategy.unwrap_or(model::ScaleMode::Manual) {
            model::ScaleMode::Manual => {
                if self.replicas.is_none() {
                    errs.push(FieldError::new(
                        "replicas",
                        "required",
                        "manual scaling needs replicas",
                    ));
                }
            }
            model::ScaleMode::Auto => match &self.constraints {
                None => errs.push(FieldError::new(
                    "constraints",
                    "required",
                    "auto scaling needs constraints {min, max}",
                )),
                Some(c) => {
                    if !(0..=MAX_REPLICAS).contains(&c.min) {
                        errs.push(FieldError::new(
                            "constraints.min",
                            "out_of_range",
                            "must be between 0 and 100",
                        ));
                    }
                    if !(1..=MAX_REPLICAS).contains(&c.max) || c.max < c.min {
                        errs.push(FieldError::new(
                            "constraints.max",
                            "out_of_range",
                            "must be between 1 and 100 and at least min",
                        ));
                    }
                    if c.cpu_threshold.is_some_and(|t| !(1..=100).contains(&t)) {
                        errs.push(FieldError::new(
                            "constraints.cpu_threshold",
                            "out_of_range",
                            "must be between 1 and 100 (percent)",
                        ));
                    }
                    check_duration(
                        &mut errs,
                        "constraints.scale_out_cooldown",
                        &c.scale_out_cooldown,
                        10_000,
                        3_600_000,
                        "10s and 1h",
                    );
                    check_duration(
                        &mut errs,
                        "constraints.scale_in_cooldown",
                        &c.scale_in_cooldown,
                        10_000,
                        3_600_000,
                        "10s and 1h",
                    );
                    if let Some(r) = self.replicas {
                        if r < c.min || r > c.max {
                            errs.push(FieldError::new(
                                "replicas",
                                "out_of_range",
                                "must be within constraints.min and constraints.max",
                            ));
                        }
                    }
                }
            },
        }
        crate::finish(errs)
    }
}

/// Resolved resources in store units: memory bytes, millicores, disk bytes.
pub fn resolve_resources(r: &Resources) -> (i64, i64, i64) {
    let size = |s: &Option<String>, d: u64| {
        s.as_deref()
            .and_then(parse_size)
            .unwrap_or(d)
            .min(i64::MAX as u64) as i64
    };
    (
        size(&r.memory, DEFAULT_MEMORY),
        r.cpu
            .as_ref()
            .and_then(Cpu::millis)
            .unwrap_or(DEFAULT_CPU_MILLIS),
        size(&r.disk, DEFAULT_DISK),
    )
}

/// The stored spec (`shellwego_core::model::AppSpec`) as the API shows it.
impl From<&model::AppSpec> for AppSpec {
    fn from(s: &model::AppSpec) -> AppSpec {
        AppSpec {
            image: s.image.clone(),
            command: s.command.clone(),
            env: s.env.clone(),
            domains: s.domains.clone(),
            volumes: s
                .volumes
                .iter()
                .map(|v| VolumeSpec {
                    mount_path: v.mount_path.clone(),
                    size: v.size.clone(),
                    kind: v.kind.clone(),
                })
                .collect(),
            health_check: HealthCheck {
                path: s.health_check.path.clone(),
                port: s.health_check.port,
                interval: s.health_check.interval.clone(),
                timeout: s.health_check.timeout.clone(),
                retries: s.health_check.retries,
                grace_period: s.health_check.grace_period.clone(),
            },
            source: s.source.as_ref().map(|src| Source {
                kind: src.kind,
                url: src.url.clone(),
                upload_id: src.upload_id.as_ref().map(|u| u.to_string()),
                git: src.git.clone(),
            }),
            runtime: s.runtime,
            placement: Placement {
                region: s.placement.region.clone(),
                labels: s.placement.labels.clone(),
            },
            stop_timeout: s.stop_timeout.clone(),
            autoscale: s.autoscale.as_ref().map(|a| ScaleConstraints {
                min: a.min,
                max: a.max,
                cpu_threshold: a.cpu_threshold,
                scale_out_cooldown: a.scale_out_cooldown.clone(),
                scale_in_cooldown: a.scale_in_cooldown.clone(),
            }),
            rollout_batch: s.rollout_batch,
            logging: s.logging.as_ref().map(Into::into),
            networking: (&s.networking).into(),
        }
    }
}

impl AppSpec {
    /// The spec to store, once validated: its words become the model's
    /// (an upload id that is not one is a 400 naming it).
    pub fn to_model(&self) -> Result<model::AppSpec, Error> {
        let source = match &self.source {
            None => None,
            Some(src) => {
                let upload_id = src
                    .upload_id
                    .as_deref()
                    .map(str::parse::<model::UploadId>)
                    .transpose()
                    .map_err(|e| {
                        Error::field("source.upload_id", "invalid_value", e.to_string())
                    })?;
                Some(model::SourceSpec {
                    kind: src.kind,
                    url: src.url.clone(),
                    upload_id,
                    git: src.git.clone(),
                })
            }
        };
        Ok(model::AppSpec {
            version: model::SPEC_VERSION,
            image: self.image.clone(),
            command: self.command.clone(),
            env: self.env.clone(),
            // Kept by the caller across an edit (see the deploy service).
            env_write_only: Default::default(),
            // Pinned when a release is made.
            secrets: Default::default(),
            domains: self.domains.clone(),
            volumes: self
                .volumes
                .iter()
                .map(|v| model::VolumeSpec {
                    mount_path: v.mount_path.clone(),
                    size: v.size.clone(),
                    kind: v.kind.clone(),
                })
                .collect(),
            health_check: (&self.health_check).into(),
            source,
            runtime: self.runtime,
            placement: model::PlacementSpec {
                region: self.placement.region.clone(),
                labels: self.placement.labels.clone(),
            },
            stop_timeout: self.stop_timeout.clone(),
            autoscale: self.autoscale.as_ref().map(Into::into),
            rollout_batch: self.rollout_batch,
            logging: self.logging.as_ref().map(Into::into),
            networking: model::NetworkingSpec {
                public: self.networking.public,
                allowed_egress: self.networking.allowed_egress.clone(),
            },
        })
    }
}

impl From<&HealthCheck> for model::HealthCheckSpec {
    fn from(h: &HealthCheck) -> model::HealthCheckSpec {
        model::HealthCheckSpec {
            path: h.path.clone(),
            port: h.port,
            interval: h.interval.clone(),
            timeout: h.timeout.clone(),
            retries: h.retries,
            grace_period: h.grace_period.clone(),
        }
    }
}

impl From<&ScaleConstraints> for model::ScaleConstraints {
    fn from(a: &ScaleConstraints) -> model::ScaleConstraints {
        model::ScaleConstraints {
            min: a.min,
            max: a.max,
            cpu_threshold: a.cpu_threshold,
            scale_out_cooldown: a.scale_out_cooldown.clone(),
            scale_in_cooldown: a.scale_in_cooldown.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Validate;

    fn base() -> AppCreate {
        AppCreate {
            name: "web".into(),
            image: Some("nginx:alpine".into()),
            ..Default::default()
        }
    }

    #[test]
    fn bounds() {
        assert!(base().validate().is_ok());
        let mut a = base();
        a.resources.memory = Some("32m".into());
        assert!(a.validate().is_err());
        a.resources.memory = Some("32g".into());
        assert!(a.validate().is_ok());
        a.resources.cpu = Some(Cpu::Number(0.05));
        assert!(a.validate().is_err());
        a.resources.cpu = Some(Cpu::Text("16".into()));
        assert!(a.validate().is_ok());
        a.replicas = Some(101);
        assert!(a.validate().is_err());
        let mut b = base();
        b.name = "Web".into();
        assert!(b.validate().is_err());
        b.name = "a-".into();
        assert!(b.validate().is_err());
        let mut c = base();
        c.env.insert("1X".into(), "v".into());
        assert!(c.validate().is_err());
        let mut d = base();
        d.image = None;
        assert!(d.validate().is_err());
    }
}

/// `POST /v1/apps/{app_id}/exec`: run a command in a running instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments (no shell unless you name one:
    /// `["/bin/sh", "-c", "echo $PORT"]`).
    #[schema(example = json!(["/bin/sh", "-c", "ps aux"]))]
    pub command: Vec<String>,
    /// The instance (inst_…); default: a healthy one.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Given to the command's standard input (at most 1 MiB), then closed.
    #[serde(default)]
    pub stdin: String,
    /// A terminal needs an interactive session: `GET …/exec/ws?tty=true`
    /// (here, must be false).
    #[serde(default)]
    pub tty: bool,
    /// `30s` (default), 1 s to 1 h: the command's process tree is killed
    /// when it runs longer.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// The most of each output stream an exec returns.
pub const EXEC_OUTPUT_LIMIT: u64 = 512 * 1024;

impl ExecRequest {
    /// The timeout asked for, or the default (30 s).
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .as_deref()
            .and_then(shellwego_core::units::parse_duration)
            .unwrap_or(std::time::Duration::from_secs(30))
    }
}

impl crate::Validate for ExecRequest {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if self.command.is_empty() || self.command[0].is_empty() {
            errs.push(FieldError::new(
                "command",
                "required",
                "name the program to run, e.g. [\"/bin/sh\", \"-c\", \"ls\"]",
            ));
        }
        if self.command.len() > 256 {
            errs.push(FieldError::new(
                "command",
                "too_long",
                "at most 256 arguments",
            ));
        }
        for (i, a) in self.command.iter().enumerate() {
            if a.contains('\0') || a.len() > 8192 {
                errs.push(FieldError::new(
                    format!("command[{i}]"),
                    "invalid_value",
                    "at most 8 KiB, no NUL bytes",
                ));
            }
        }
        if self.stdin.len() > 1 << 20 {
            errs.push(FieldError::new("stdin", "too_long", "at most 1 MiB"));
        }
        if self.tty {
            errs.push(FieldError::new(
                "tty",
                "not_supported",
                "a terminal needs an interactive session: GET /v1/apps/{app_id}/exec/ws?tty=true (shellwego ssh)",
            ));
        }
        if let Some(t) = &self.timeout {
            match shellwego_core::units::parse_duration(t) {
                Some(d) if (1..=3600).contains(&d.as_secs()) => {}
                _ => errs.push(
                    FieldError::new(
                        "timeout",
                        "invalid_value",
                        "a duration from 1s to 1h, e.g. 30s",
                    )
                    .with_value(t.clone()),
                ),
            }
        }
        crate::finish(errs)
    }
}

/// What an exec came to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    /// None when the command was killed (a signal, or `timed_out`).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub execution_time_ms: u64,
    /// A stream was longer than 512 KiB; the rest was dropped.
    pub truncated: bool,
    /// It ran past its timeout and its process tree was killed.
    pub timed_out: bool,
    /// The instance it ran in.
    pub instance_id: String,
}
