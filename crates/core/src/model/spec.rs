//! The stored documents of an app and its deployments, owned by the domain
//! rather than borrowed from the API crate, so that the API can change
//! without rewriting `apps.spec`.
//!
//! Compatibility: each reads exactly the JSON today's code writes
//! (`shellwego_api::apps::AppSpec` into `apps.spec`/`releases.spec`, the
//! server's deploy `Options` into `deployments.options`, its `StageRow`s
//! into `deployments.stages`), and writes the same plus `"version": 1`,
//! which today's readers ignore. `version` is for migrations: a document
//! without one is version 1.
//!
//! Durations (`"10s"`, `"5m"`) and sizes (`"5gb"`) stay the text the user
//! gave: parsing them into numbers on the way in would write different
//! JSON back (`"1m"` would come back as `60000` or `"60s"`). Accessors
//! parse them (`HealthCheckSpec::interval`), with the defaults the
//! control plane applies today.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DriverKind, SourceKind, Stage, StageStatus, UploadId};
use crate::units::parse_duration;

/// The version of the documents this code writes.
pub const SPEC_VERSION: u32 = 1;

fn spec_version() -> u32 {
    SPEC_VERSION
}

/// What of an app decides how its instances run: the JSON in `apps.spec`,
/// and the frozen copy of it in `releases.spec`. Resources (memory, CPU,
/// disk) and replicas are columns beside it, not part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// The document's version ([`SPEC_VERSION`]; absent means 1).
    #[serde(default = "spec_version")]
    pub version: u32,
    /// An OCI image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Overrides the image's entrypoint/cmd (or the Procfile's `web:` line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Environment variables. In the store every value is sealed
    /// (`v1.<data key>.…`, see the server's vault); opened only to show it
    /// and to hand it to an instance.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Env names whose values the API never shows again (`encrypted: true`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub env_write_only: BTreeSet<String>,
    /// The secrets (id → version) this version's instances receive in
    /// their environment: the app's and its organization's live ones when
    /// the release was made.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, i64>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// Where the files come from when there is no image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// The driver asked for; none: the strongest the node offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<DriverKind>,
    #[serde(default)]
    pub placement: PlacementSpec,
    /// Between SIGTERM and SIGKILL (`"10s"`; default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<ScaleConstraints>,
    /// Replacements in flight at a time during the current rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_batch: Option<i64>,
    /// Ingress exposure and egress policy; absent: public, egress anywhere.
    #[serde(default, skip_serializing_if = "NetworkingSpec::is_default")]
    pub networking: NetworkingSpec,
    /// How long and how much of its output each node keeps; absent: the
    /// node's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingSpec>,
}

/// An app's log retention and size cap, as given (`"7d"`, `"64mb"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoggingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
}

impl LoggingSpec {
    /// Seconds of retention, when given and readable.
    pub fn retention_secs(&self) -> Option<u64> {
        self.retention
            .as_deref()
            .and_then(parse_duration)
            .map(|d| d.as_secs())
    }

    /// Bytes of the cap, when given and readable.
    pub fn max_bytes(&self) -> Option<u64> {
        self.max_size.as_deref().and_then(crate::units::parse_size)
    }
}

impl Default for AppSpec {
    fn default() -> Self {
        Self {
            version: SPEC_VERSION,
            image: None,
            command: None,
            env: BTreeMap::new(),
            env_write_only: BTreeSet::new(),
            secrets: BTreeMap::new(),
            domains: vec![],
            volumes: vec![],
            health_check: HealthCheckSpec::default(),
            source: None,
            runtime: None,
            placement: PlacementSpec::default(),
            stop_timeout: None,
            autoscale: None,
            rollout_batch: None,
            networking: NetworkingSpec::default(),
            logging: None,
        }
    }
}

impl AppSpec {
    /// Default grace between SIGTERM and SIGKILL.
    pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

    /// `stop_timeout`, or its default when absent or unreadable.
    pub fn stop_timeout(&self) -> Duration {
        parsed_or(&self.stop_timeout, Self::DEFAULT_STOP_TIMEOUT)
    }
}

/// How an instance's health is checked. Every field may be absent (the
/// default applies); the text is kept as given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    /// HTTP path to GET (2xx/3xx is healthy); absent: a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Absent: the app's own port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `"10s"` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// `"5s"` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failures in a row before the instance is unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Time after start during which failures do not count (`"30s"` default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
}

impl HealthCheckSpec {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_RETRIES: u32 = 3;
    pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

    /// `interval`, or its default when absent or unreadable.
    pub fn interval(&self) -> Duration {
        parsed_or(&self.interval, Self::DEFAULT_INTERVAL)
    }

    /// `timeout`, or its default when absent or unreadable.
    pub fn timeout(&self) -> Duration {
        parsed_or(&self.timeout, Self::DEFAULT_TIMEOUT)
    }

    /// `retries`, or its default when absent.
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(Self::DEFAULT_RETRIES)
    }

    /// `grace_period`, or its default when absent or unreadable.
    pub fn grace_period(&self) -> Duration {
        parsed_or(&self.grace_period, Self::DEFAULT_GRACE_PERIOD)
    }
}

/// A stored duration text, parsed, or `default` (as the control plane
/// does today when it builds an agent's desired state).
fn parsed_or(text: &Option<String>, default: Duration) -> Duration {
    text.as_deref().and_then(parse_duration).unwrap_or(default)
}

/// Where an app's files come from when it has no image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// tarball: an http(s) URL of a .tar or .tar.gz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// tarball: an upload of the app's organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<UploadId>,
    /// git: repository, branch, commit (not supported yet; kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<serde_json::Value>,
}

/// An app's place on the network: whether the ingress routes to it, and
/// where its instances may open connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkingSpec {
    /// Routed by the ingress (default). `false`: reachable only from other
    /// instances of the organization, by its internal name.
    #[serde(default = "yes")]
    pub public: bool,
    /// CIDRs (canonical, `10.99.0.0/24`) instances may connect to;
    /// default `["0.0.0.0/0"]`: anywhere. Without `0.0.0.0/0` the list is
    /// a policy, enforced where the instance has a network namespace of its
    /// own (container, microVM): every other destination is refused, IPv6
    /// ones unless listed too.
    #[serde(default = "NetworkingSpec::open_egress")]
    pub allowed_egress: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for NetworkingSpec {
    fn default() -> Self {
        NetworkingSpec {
            public: true,
            allowed_egress: NetworkingSpec::open_egress(),
        }
    }
}

impl NetworkingSpec {
    /// Anywhere.
    pub const OPEN: &'static str = "0.0.0.0/0";

    pub fn open_egress() -> Vec<String> {
        vec![Self::OPEN.to_string()]
    }

    pub fn is_default(&self) -> bool {
        *self == NetworkingSpec::default()
    }

    /// `10.99.0.0/24`, `::/0`, or a bare address (`10.0.0.7`, meaning
    /// `/32`, or `/128`) in canonical form; an error that says what to
    /// change otherwise (host bits set, a prefix too long, not an address).
    pub fn canonical_cidr(s: &str) -> Result<String, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u32 = match len {
            None => max,
            Some(l) => l
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let bits = |v: u128, width: u32| -> u128 {
            if len == 0 {
                0
            } else {
                v & (u128::MAX << (width - len)) & (u128::MAX >> (128 - width))
            }
        };
        let (net, host_bits) = match ip {
            std::net::IpAddr::V4(v) => {
                let n = bits(u128::from(u32::from(v)), 32);
                let net = std::net::Ipv4Addr::from(n as u32);
                (std::net::IpAddr::V4(net), net != v)
            }
            std::net::IpAddr::V6(v) => {
                let n = bits(u128::from(v), 128);
                let net = std::net::Ipv6Addr::from(n);
                (std::net::IpAddr::V6(net), net != v)
            }
        };
        if host_bits {
            return Err(format!(
                "{s:?} has host bits set: did you mean {net}/{len}?"
            ));
        }
        Ok(format!("{net}/{len}"))
    }

    /// True when the list is a policy (it lacks `0.0.0.0/0`).
    pub fn restricts_egress(&self) -> bool {
        !self.allowed_egress.iter().any(|c| c == Self::OPEN)
    }
}

/// Which nodes may run the app.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementSpec {
    /// Only nodes in this region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only nodes carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub mount_path: String,
    /// A size as given (`"5gb"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Free text today (`persistent`, …): nothing checks or reads it yet.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Autoscaling bounds (stored; acted on by metrics-driven autoscaling).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleConstraints {
    pub min: i64,
    pub max: i64,
    /// Percent of the CPU limit above which to add a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_out_cooldown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in_cooldown: Option<String>,
}

impl ScaleConstraints {
    pub const DEFAULT_CPU_THRESHOLD: i64 = 70;
    pub const DEFAULT_SCALE_OUT_COOLDOWN: Duration = Duration::from_secs(60);
    pub const DEFAULT_SCALE_IN_COOLDOWN: Duration = Duration::from_secs(300);

    pub fn cpu_threshold(&self) -> i64 {
        self.cpu_threshold.unwrap_or(Self::DEFAULT_CPU_THRESHOLD)
    }

    pub fn scale_out_cooldown(&self) -> Duration {
        parsed_or(&self.scale_out_cooldown, Self::DEFAULT_SCALE_OUT_COOLDOWN)
    }

    pub fn scale_in_cooldown(&self) -> Duration {
        parsed_or(&self.scale_in_cooldown, Self::DEFAULT_SCALE_IN_COOLDOWN)
    }
}

/// What one release of an app runs: its spec frozen at release time, with
/// the resources and replica count fixed beside it. In the store this is a
/// `releases` row (keyed by app id and version), whose `spec` column holds
/// the [`AppSpec`] JSON; it is not itself written as one document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleaseSpec {
    /// The app version this release is (`v3` is 3).
    pub app_version: i64,
    pub spec: AppSpec,
    pub replicas: i64,
    /// Bytes.
    pub memory: i64,
    /// Millicores.
    pub cpu_millis: i64,
    /// Bytes.
    pub disk: i64,
    /// The image by digest, once a node has resolved it.
    pub image_pinned: Option<String>,
}

/// How a deployment proceeds: the JSON in `deployments.options`. Every
/// field may be absent (today's defaults apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeployOptions {
    /// The document's version ([`SPEC_VERSION`]; absent means 1).
    pub version: u32,
    /// Extra instances in flight at a time (`batch_size` before).
    #[serde(alias = "batch_size")]
    pub max_surge: i64,
    /// Instances that may be down at a time.
    pub max_unavailable: i64,
    /// Set when a surge instance found no room and the rollout went on
    /// replacing in place.
    pub in_place: bool,
    /// How long new instances have to become healthy.
    pub health_check_timeout_ms: i64,
    pub rollback_on_failure: bool,
    /// Blue-green: how long the old set stays warm after the switch.
    pub warm_ms: i64,
    /// Canary: traffic percentages, ending at 100.
    pub canary_steps: Vec<u32>,
    /// Canary: how long each step is watched before the next.
    pub canary_pause_ms: i64,
    /// A canary whose share of 5xx (or unanswered) requests exceeds this is
    /// rolled back.
    pub max_error_rate: f64,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self {
            version: SPEC_VERSION,
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

/// One stage of a deployment: an element of the JSON list in
/// `deployments.stages` (times in microseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentStage {
    pub name: Stage,
    pub status: StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// What the stage in progress waits for, or how it proceeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl DeploymentStage {
    /// A new deployment's stages: every [`Stage`], in order, pending.
    pub fn initial() -> Vec<DeploymentStage> {
        Stage::ALL
            .iter()
            .map(|&name| DeploymentStage {
                name,
                status: StageStatus::Pending,
                started_at: None,
                completed_at: None,
                reason: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod cidr_tests {
    use super::NetworkingSpec;

    #[test]
    fn cidrs_are_canonical_or_refused_with_a_reason() {
        let c = NetworkingSpec::canonical_cidr;
        assert_eq!(c("10.99.0.0/24").unwrap(), "10.99.0.0/24");
        assert_eq!(c("10.0.0.7").unwrap(), "10.0.0.7/32");
        assert_eq!(c("0.0.0.0/0").unwrap(), "0.0.0.0/0");
        assert_eq!(c("::/0").unwrap(), "::/0");
        assert_eq!(c("FD00::/8").unwrap(), "fd00::/8");
        assert_eq!(c("fd00::1").unwrap(), "fd00::1/128");
        assert!(c("10.99.0.5/24").unwrap_err().contains("10.99.0.0/24"));
        assert!(c("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(c("example.com/8").unwrap_err().contains("not a CIDR"));
        assert!(c("10.0.0.0/x").is_err());
        assert!(c("fd00::1/64").unwrap_err().contains("fd00::/64"));
    }

    #[test]
    fn egress_is_restricted_unless_anywhere_is_allowed() {
        let mut n = NetworkingSpec::default();
        assert!(!n.restricts_egress());
        n.allowed_egress = vec!["10.0.0.0/8".into(), "0.0.0.0/0".into()];
        assert!(!n.restricts_egress());
        n.allowed_egress = vec!["10.99.0.0/24".into()];
        assert!(n.restricts_egress());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// A JSON document with `"version": 1` added, as this code writes it.
    fn with_version(mut v: Value) -> Value {
        v.as_object_mut()
            .unwrap()
            .insert("version".into(), json!(1));
        v
    }

    /// Parses as today's JSON; writes the same back plus the version; and
    /// what it writes parses to the same value.
    fn round_trip<T>(today: Value) -> T
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let parsed: T = serde_json::from_str(&today.to_string()).unwrap();
        let written = serde_json::to_value(&parsed).unwrap();
        assert_eq!(written, with_version(today));
        let again: T = serde_json::from_value(written).unwrap();
        assert_eq!(again, parsed);
        parsed
    }

    #[test]
    fn a_minimal_app_spec_as_written_today() {
        // `app_create` with {"name": …, "image": "nginx:alpine"}.
        let today = json!({
            "image": "nginx:alpine",
            "env": {},
            "domains": [],
            "volumes": [],
            "health_check": {},
            "placement": {}
        });
        let s: AppSpec = round_trip(today);
        assert_eq!(s.version, 1);
        assert_eq!(s.image.as_deref(), Some("nginx:alpine"));
        assert_eq!(
            s,
            AppSpec {
                image: Some("nginx:alpine".into()),
                ..AppSpec::default()
            }
        );
        assert_eq!(s.health_check.interval(), Duration::from_secs(10));
        assert_eq!(s.health_check.timeout(), Duration::from_secs(5));
        assert_eq!(s.health_check.retries(), 3);
        assert_eq!(s.health_check.grace_period(), Duration::from_secs(30));
        assert_eq!(s.stop_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn a_full_app_spec_as_written_today() {
        let today = json!({
            "command": ["./server", "--port", "8080"],
            "env": {"A": "1", "DATABASE_URL": "postgres://db/x"},
            "domains": ["api.example.com"],
            "volumes": [
                {"mount_path": "/data", "size": "5gb", "type": "persistent"},
                {"mount_path": "/cache"}
            ],
            "health_check": {
                "path": "/health",
                "port": 8080,
                "interval": "1m",
                "timeout": "2s",
                "retries": 5,
                "grace_period": "0s"
            },
            "source": {"type": "tarball", "upload_id": "upl_0123456789abcdefghij"},
            "runtime": "microvm",
            "placement": {"region": "eu-west", "labels": {"gpu": "true"}},
            "stop_timeout": "30s",
            "autoscale": {"min": 1, "max": 10, "cpu_threshold": 70},
            "rollout_batch": 2
        });
        let s: AppSpec = round_trip(today);
        assert_eq!(s.runtime, Some(DriverKind::Microvm));
        let src = s.source.as_ref().unwrap();
        assert_eq!(src.kind, SourceKind::Tarball);
        assert_eq!(src.upload_id.as_ref().unwrap(), "upl_0123456789abcdefghij");
        assert_eq!(s.health_check.interval(), Duration::from_secs(60));
        assert_eq!(s.health_check.timeout(), Duration::from_secs(2));
        assert_eq!(s.health_check.grace_period(), Duration::ZERO);
        assert_eq!(s.health_check.retries(), 5);
        assert_eq!(s.stop_timeout(), Duration::from_secs(30));
        assert_eq!(s.volumes[0].kind.as_deref(), Some("persistent"));

        // Sources of the other kinds, and an image with a docker source.
        for source in [
            json!({"type": "tarball", "url": "https://example.com/app.tar.gz"}),
            json!({"type": "docker"}),
            json!({"type": "git", "git": {"repository": "https://example.com/r.git"}}),
        ] {
            round_trip::<AppSpec>(json!({
                "image": "nginx:alpine", "env": {}, "domains": [], "volumes": [],
                "health_check": {}, "source": source, "placement": {}
            }));
        }
    }

    #[test]
    fn a_written_version_is_read_back() {
        let s: AppSpec = serde_json::from_value(json!({"version": 2})).unwrap();
        assert_eq!(s.version, 2);
        // A spec of `{}` (an empty app row) is a default spec.
        let s: AppSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(s, AppSpec::default());
    }

    #[test]
    fn a_bad_stored_spec_is_an_error_not_a_default() {
        for bad in [
            json!({"runtime": "vm"}),
            json!({"source": {"type": "svn"}}),
            json!({"source": {"type": "tarball", "upload_id": "upl_NOT-AN-ID"}}),
            json!({"health_check": {"retries": -1}}),
            json!({"env": []}),
        ] {
            assert!(
                serde_json::from_value::<AppSpec>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let e = serde_json::from_value::<AppSpec>(json!({"runtime": "vm"})).unwrap_err();
        assert!(e.to_string().contains("process, container, microvm"), "{e}");
    }

    #[test]
    fn deploy_options_as_written_today() {
        // The server's `Options::default()`, serialized.
        let today = json!({
            "max_surge": 1,
            "max_unavailable": 0,
            "in_place": false,
            "health_check_timeout_ms": 300000,
            "rollback_on_failure": true,
            "warm_ms": 300000,
            "canary_steps": [10, 50, 100],
            "canary_pause_ms": 60000,
            "max_error_rate": 0.05
        });
        let o: DeployOptions = round_trip(today);
        assert_eq!(o, DeployOptions::default());

        let today = json!({
            "max_surge": 3,
            "max_unavailable": 1,
            "in_place": true,
            "health_check_timeout_ms": 60000,
            "rollback_on_failure": false,
            "warm_ms": 0,
            "canary_steps": [5, 100],
            "canary_pause_ms": 1000,
            "max_error_rate": 0.5
        });
        let o: DeployOptions = round_trip(today);
        assert_eq!((o.max_surge, o.max_unavailable, o.in_place), (3, 1, true));

        // Older rows: `batch_size`, and fields missing altogether.
        let o: DeployOptions =
            serde_json::from_value(json!({"batch_size": 2, "warm_ms": 0})).unwrap();
        assert_eq!(o.max_surge, 2);
        assert_eq!(o.warm_ms, 0);
        assert_eq!(o.canary_steps, vec![10, 50, 100]);
        assert_eq!(o.version, 1);
    }

    #[test]
    fn deployment_stages_as_written_today() {
        // `stages_of(&Deployment::default())`, serialized.
        let initial = serde_json::to_value(DeploymentStage::initial()).unwrap();
        assert_eq!(
            initial,
            json!([
                {"name": "resolving_image", "status": "pending"},
                {"name": "pulling_image", "status": "pending"},
                {"name": "creating_instances", "status": "pending"},
                {"name": "starting_health_checks", "status": "pending"},
                {"name": "shifting_traffic", "status": "pending"},
                {"name": "draining_old", "status": "pending"},
                {"name": "completed", "status": "pending"}
            ])
        );
        // A stage under way and a finished one; no version (a list).
        let today = json!([
            {"name": "resolving_image", "status": "completed", "started_at": 1, "completed_at": 2},
            {"name": "pulling_image", "status": "in_progress", "started_at": 3,
             "reason": "waiting for room: no node has room"},
            {"name": "creating_instances", "status": "failed", "started_at": 4, "completed_at": 5}
        ]);
        let stages: Vec<DeploymentStage> = serde_json::from_value(today.clone()).unwrap();
        assert_eq!(stages[1].status, StageStatus::InProgress);
        assert_eq!(serde_json::to_value(&stages).unwrap(), today);
        assert!(serde_json::from_value::<Vec<DeploymentStage>>(
            json!([{"name": "building", "status": "pending"}])
        )
        .is_err());
    }
}
