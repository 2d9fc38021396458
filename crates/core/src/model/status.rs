//! Every family of state words as an enum (see the table in the module
//! above). The names are the stored and sent ones, exactly as today.

use super::vocabulary;

vocabulary! {
    #[derive(Default)]
    /// What an app is doing, as a whole (`apps.status`).
    pub enum AppStatus ("app status") {
        /// Its desired instances are healthy.
        Running = "running",
        /// Stopped on purpose (its desired state is `stopped`).
        Stopped = "stopped",
        /// Its instances fail (crash-loop or cannot start).
        Error = "error",
        /// A deployment is under way, or instances are starting.
        Deploying = "deploying",
        /// Waiting for room on a node.
        #[default]
        Pending = "pending",
        /// Listed by the spec and accepted as a filter; nothing sets it yet.
        Paused = "paused",
    }
}

vocabulary! {
    #[derive(Default)]
    /// What the user wants of an app (`apps.desired_state`), and what the
    /// controller wants of one instance (`instances.desired`).
    pub enum DesiredState ("desired state") {
        #[default]
        Running = "running",
        Stopped = "stopped",
    }
}

vocabulary! {
    #[derive(Default)]
    /// Where an instance is in its life (`instances.status`).
    pub enum InstanceStatus ("instance status") {
        /// Placed on no node yet, or not yet started by its agent.
        #[default]
        Pending = "pending",
        /// Started (or being prepared: reason `preparing`); not yet healthy.
        Starting = "starting",
        Healthy = "healthy",
        /// Was healthy, or is past its grace period, and fails its check.
        Unhealthy = "unhealthy",
        /// Exited or was killed; the agent restarts it.
        Crashed = "crashed",
        Stopping = "stopping",
        Stopped = "stopped",
        /// Cannot be started at all (a bad image, a missing driver).
        Failed = "failed",
        /// Its node went away (offline or deleted).
        Lost = "lost",
    }
}

impl InstanceStatus {
    /// What an agent reports (`InstanceReport.status`): the control plane
    /// alone decides `pending` and `lost`.
    pub const REPORTED: &'static [InstanceStatus] = &[
        Self::Starting,
        Self::Healthy,
        Self::Unhealthy,
        Self::Crashed,
        Self::Stopping,
        Self::Stopped,
        Self::Failed,
    ];
}

vocabulary! {
    #[derive(Default)]
    /// A node's state (`nodes.status`).
    pub enum NodeStatus ("node status") {
        /// Registered; its agent has not joined yet.
        #[default]
        Joining = "joining",
        Ready = "ready",
        /// Takes no new instances; its instances are moved away.
        Draining = "draining",
        Maintenance = "maintenance",
        /// Its agent stopped syncing.
        Offline = "offline",
    }
}

impl NodeStatus {
    /// What `PATCH /v1/nodes/{id}` may set.
    pub const SETTABLE: &'static [NodeStatus] = &[Self::Ready, Self::Draining, Self::Maintenance];
}

vocabulary! {
    /// The statuses `PATCH /v1/nodes/{id}` may set ([`NodeStatus::SETTABLE`]).
    pub enum SettableNodeStatus ("node status") {
        Ready = "ready",
        Draining = "draining",
        Maintenance = "maintenance",
    }
}

impl SettableNodeStatus {
    /// The node status it is.
    pub const fn status(self) -> NodeStatus {
        match self {
            Self::Ready => NodeStatus::Ready,
            Self::Draining => NodeStatus::Draining,
            Self::Maintenance => NodeStatus::Maintenance,
        }
    }
}

impl From<SettableNodeStatus> for NodeStatus {
    fn from(s: SettableNodeStatus) -> NodeStatus {
        s.status()
    }
}

vocabulary! {
    #[derive(Default)]
    /// A deployment's outcome so far (`deployments.status`).
    pub enum DeploymentStatus ("deployment status") {
        #[default]
        InProgress = "in_progress",
        Successful = "successful",
        /// Nothing undone, or the undo is under way.
        Failed = "failed",
        /// The previous version serves again.
        RolledBack = "rolled_back",
        /// The app was stopped or deleted before it completed.
        Cancelled = "cancelled",
    }
}

vocabulary! {
    #[derive(Default)]
    /// The stages of every deployment, in order (`ALL` is that order).
    pub enum Stage ("deployment stage") {
        #[default]
        ResolvingImage = "resolving_image",
        PullingImage = "pulling_image",
        CreatingInstances = "creating_instances",
        StartingHealthChecks = "starting_health_checks",
        ShiftingTraffic = "shifting_traffic",
        DrainingOld = "draining_old",
        Completed = "completed",
    }
}

vocabulary! {
    #[derive(Default)]
    /// Where one stage of a deployment is.
    pub enum StageStatus ("stage status") {
        #[default]
        Pending = "pending",
        InProgress = "in_progress",
        Completed = "completed",
        Failed = "failed",
    }
}

vocabulary! {
    #[derive(Default)]
    /// How a deployment replaces instances (`deployments.strategy`).
    pub enum Strategy ("deployment strategy") {
        /// A few replacements at a time, each healthy before what it
        /// replaces stops.
        #[default]
        Rolling = "rolling",
        /// A whole second set; traffic switches when it is healthy, and the
        /// old set stays warm for a while.
        BlueGreen = "blue-green",
        /// The new version gets a growing share of traffic, step by step.
        Canary = "canary",
        /// Everything at once (a restart that does not roll).
        Immediate = "immediate",
    }
}

impl Strategy {
    /// What `POST /v1/apps/{id}/deploy` accepts.
    pub const DEPLOY: &'static [Strategy] = &[Self::Rolling, Self::BlueGreen, Self::Canary];
    /// What `POST /v1/apps/{id}/actions/restart` accepts.
    pub const RESTART: &'static [Strategy] = &[Self::Rolling, Self::Immediate];
}

vocabulary! {
    /// The strategies `POST /v1/apps/{id}/deploy` accepts ([`Strategy::DEPLOY`]).
    pub enum DeployStrategy ("deployment strategy") {
        Rolling = "rolling",
        BlueGreen = "blue-green",
        Canary = "canary",
    }
}

impl DeployStrategy {
    /// The deployment strategy it is.
    pub const fn strategy(self) -> Strategy {
        match self {
            Self::Rolling => Strategy::Rolling,
            Self::BlueGreen => Strategy::BlueGreen,
            Self::Canary => Strategy::Canary,
        }
    }
}

impl From<DeployStrategy> for Strategy {
    fn from(s: DeployStrategy) -> Strategy {
        s.strategy()
    }
}

vocabulary! {
    #[derive(Default)]
    /// The strategies `POST /v1/apps/{id}/actions/restart` accepts
    /// ([`Strategy::RESTART`]).
    pub enum RestartStrategy ("restart strategy") {
        #[default]
        Rolling = "rolling",
        Immediate = "immediate",
    }
}

impl RestartStrategy {
    /// The deployment strategy a restart runs with.
    pub const fn strategy(self) -> Strategy {
        match self {
            Self::Rolling => Strategy::Rolling,
            Self::Immediate => Strategy::Immediate,
        }
    }
}

impl From<RestartStrategy> for Strategy {
    fn from(s: RestartStrategy) -> Strategy {
        s.strategy()
    }
}

vocabulary! {
    /// How `POST /v1/deployments/{id}/actions/rollback` returns.
    pub enum RollbackStrategy ("rollback strategy") {
        /// All instances of the target start at once; traffic switches when
        /// they are healthy.
        Immediate = "immediate",
        /// Rolling.
        Gradual = "gradual",
    }
}

impl RollbackStrategy {
    /// The deployment strategy a rollback runs with (stored on its deployment).
    pub const fn strategy(self) -> Strategy {
        match self {
            Self::Immediate => Strategy::BlueGreen,
            Self::Gradual => Strategy::Rolling,
        }
    }
}

vocabulary! {
    /// How an instance is isolated on its node.
    pub enum DriverKind ("runtime driver") {
        /// A supervised process: always available.
        Process = "process",
        /// An OCI runtime over the unpacked image.
        Container = "container",
        /// A KVM microVM per instance.
        Microvm = "microvm",
    }
}

vocabulary! {
    /// Where an app's files come from when it has no image (`source.type`).
    pub enum SourceKind ("source type") {
        Docker = "docker",
        Tarball = "tarball",
        /// Accepted by the parser, refused by validation (not supported yet).
        Git = "git",
    }
}

vocabulary! {
    /// How an app's replica count is decided (the scale request's `strategy`).
    pub enum ScaleMode ("scale strategy") {
        Manual = "manual",
        /// Stored; acted on by metrics-driven autoscaling.
        Auto = "auto",
    }
}

vocabulary! {
    /// The token types `POST /v1/auth/token` issues (its `type`). (All
    /// token kinds are `token::TokenKind`.)
    pub enum LoginTokenType ("token type") {
        /// One year.
        PersonalAccessToken = "personal_access_token",
        /// 24 hours (the web dashboard).
        SessionToken = "session_token",
    }
}

vocabulary! {
    /// The token types `POST /v1/user/tokens` creates (its `type`).
    pub enum NewTokenType ("token type") {
        PersonalAccessToken = "personal_access_token",
        /// 15 minutes, for one request.
        TemporaryToken = "temporary_token",
    }
}

vocabulary! {
    /// `POST /v1/apps/{id}/actions/{action}`.
    pub enum AppAction ("app action") {
        Start = "start",
        Stop = "stop",
        Restart = "restart",
    }
}

vocabulary! {
    /// Something that happened to an instance, reported by its agent
    /// (`AgentEvent.kind`).
    pub enum AgentEventKind ("agent event kind") {
        Crashed = "crashed",
        OomKilled = "oom_killed",
        Unhealthy = "unhealthy",
        Failed = "failed",
        /// The agent removed an instance an earlier run of it left on the
        /// host and its saved state does not describe.
        OrphanRemoved = "orphan_removed",
    }
}

vocabulary! {
    /// Where a multi-step operation stands (`operations.status`; the
    /// server's `steps` runner). `step` is read with it.
    pub enum OperationStatus ("operation status") {
        /// Steps run forward; `step` is the next one to run.
        Running = "running",
        /// A step failed (`error` says which and why); the steps up to and
        /// including it are undone in reverse order; `step` is the next
        /// one to undo.
        Undoing = "undoing",
        /// Every step ran. Final.
        Succeeded = "succeeded",
        /// A step failed and every step up to it was undone; `error` keeps
        /// why. Final.
        Undone = "undone",
        /// An undo failed (`undo_error`); the undo of `step` is tried
        /// again after a pause, so this is not final: it becomes `undone`
        /// once every undo has gone through.
        UndoFailed = "undo_failed",
    }
}

impl OperationStatus {
    /// The statuses a runner picks up (the rest are final).
    pub const UNFINISHED: &'static [OperationStatus] =
        &[Self::Running, Self::Undoing, Self::UndoFailed];

    /// Succeeded or undone: nothing more will run.
    pub const fn is_final(self) -> bool {
        match self {
            Self::Succeeded | Self::Undone => true,
            Self::Running | Self::Undoing | Self::UndoFailed => false,
        }
    }
}

vocabulary! {
    /// Where an invitation stands: derived from its row (`accepted_at`,
    /// `revoked_at`, `expires_at`), not stored, but sent and matched on.
    pub enum InvitationStatus ("invitation status") {
        Pending = "pending",
        Accepted = "accepted",
        Revoked = "revoked",
        Expired = "expired",
    }
}

vocabulary! {
    /// Who caused a change (`events.actor_type`).
    pub enum ActorKind ("actor type") {
        User = "user",
        Token = "token",
        System = "system",
    }
}

vocabulary! {
    /// What an event records (`events.event_type`): every type recorded today.
    pub enum EventKind ("event type") {
        AppCreated = "app.created",
        AppUpdated = "app.updated",
        AppDeleted = "app.deleted",
        AppStarted = "app.started",
        AppStopped = "app.stopped",
        AppRestarted = "app.restarted",
        AppScaled = "app.scaled",
        AppDeployed = "app.deployed",
        AppRunning = "app.running",
        AppError = "app.error",
        AppUnschedulable = "app.unschedulable",
        AppCrashed = "app.crashed",
        AppUnhealthy = "app.unhealthy",
        AppInstanceFailed = "app.instance_failed",
        AppExec = "app.exec",
        DeploymentStarted = "deployment.started",
        DeploymentInPlace = "deployment.in_place",
        DeploymentPromoted = "deployment.promoted",
        DeploymentFailed = "deployment.failed",
        DeploymentCancelled = "deployment.cancelled",
        DeploymentRollback = "deployment.rollback",
        DeploymentRolledBack = "deployment.rolled_back",
        InstanceLost = "instance.lost",
        InstanceOrphanRemoved = "instance.orphan_removed",
        NodeRegistered = "node.registered",
        NodeJoined = "node.joined",
        NodeUpdated = "node.updated",
        NodeDraining = "node.draining",
        NodeOnline = "node.online",
        NodeOffline = "node.offline",
        NodeDeleted = "node.deleted",
        NodeMeshUpdated = "node.mesh_updated",
        OrganizationCreated = "organization.created",
        OrganizationUpdated = "organization.updated",
        MemberInvited = "member.invited",
        MemberJoined = "member.joined",
        MemberAdded = "member.added",
        MemberRoleChanged = "member.role_changed",
        MemberRemoved = "member.removed",
        InvitationRevoked = "invitation.revoked",
        ServiceAccountCreated = "service_account.created",
        ServiceAccountDeleted = "service_account.deleted",
        TokenCreated = "token.created",
        TokenRotated = "token.rotated",
        TokenRevoked = "token.revoked",
        UserCreated = "user.created",
        UserUpdated = "user.updated",
        UserLogin = "user.login",
        UserLoginFailed = "user.login_failed",
        UserLocked = "user.locked",
        UserPasswordChanged = "user.password_changed",
        UserMfaEnabled = "user.mfa_enabled",
        UserMfaDisabled = "user.mfa_disabled",
        LoginThrottled = "login.throttled",
        SecretCreated = "secret.created",
        SecretRotated = "secret.rotated",
        SecretDeleted = "secret.deleted",
        SecretExpiring = "secret.expiring",
        SecretExpired = "secret.expired",
        MasterKeyRotated = "master_key.rotated",
        WebhookCreated = "webhook.created",
        WebhookUpdated = "webhook.updated",
        WebhookDeleted = "webhook.deleted",
        WebhookDisabled = "webhook.disabled",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Debug;
    use std::str::FromStr;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::*;
    use crate::model::UnknownValue;

    /// Every variant: the same name through `as_str`, `Display`, serde and
    /// `FromStr`; names unique; `NAMES` in the order of `ALL`; an unknown
    /// word is an error naming the word and every accepted name.
    fn check<T>(all: &[T], names: &[&str], as_str: fn(T) -> &'static str, expected: &[&str])
    where
        T: Copy + Eq + Debug + std::fmt::Display + FromStr<Err = UnknownValue>,
        T: Serialize + DeserializeOwned,
    {
        assert_eq!(names, expected, "names changed: they are stored and sent");
        assert_eq!(all.len(), names.len());
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), names.len());
        for (v, name) in all.iter().zip(names) {
            assert_eq!(as_str(*v), *name);
            assert_eq!(v.to_string(), *name);
            assert_eq!(name.parse::<T>().unwrap(), *v);
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *v);
        }
        for bad in ["no-such-word", "", "RUNNING", " running"] {
            let e = bad.parse::<T>().unwrap_err();
            assert_eq!(e.value, bad);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            for name in names {
                assert!(msg.contains(name), "{msg} should name {name}");
            }
            let je = serde_json::from_str::<T>(&format!("\"{bad}\"")).unwrap_err();
            assert!(je.to_string().contains("expected one of"), "{je}");
        }
        assert!(serde_json::from_str::<T>("3").is_err());
    }

    #[test]
    fn every_family_round_trips_with_todays_names() {
        check(
            AppStatus::ALL,
            AppStatus::NAMES,
            AppStatus::as_str,
            &[
                "running",
                "stopped",
                "error",
                "deploying",
                "pending",
                "paused",
            ],
        );
        check(
            DesiredState::ALL,
            DesiredState::NAMES,
            DesiredState::as_str,
            &["running", "stopped"],
        );
        check(
            InstanceStatus::ALL,
            InstanceStatus::NAMES,
            InstanceStatus::as_str,
            &[
                "pending",
                "starting",
                "healthy",
                "unhealthy",
                "crashed",
                "stopping",
                "stopped",
                "failed",
                "lost",
            ],
        );
        check(
            NodeStatus::ALL,
            NodeStatus::NAMES,
            NodeStatus::as_str,
            &["joining", "ready", "draining", "maintenance", "offline"],
        );
        check(
            DeploymentStatus::ALL,
            DeploymentStatus::NAMES,
            DeploymentStatus::as_str,
            &[
                "in_progress",
                "successful",
                "failed",
                "rolled_back",
                "cancelled",
            ],
        );
        check(
            OperationStatus::ALL,
            OperationStatus::NAMES,
            OperationStatus::as_str,
            &["running", "undoing", "succeeded", "undone", "undo_failed"],
        );
        for s in OperationStatus::ALL {
            assert_eq!(OperationStatus::UNFINISHED.contains(s), !s.is_final());
        }
        check(
            Stage::ALL,
            Stage::NAMES,
            Stage::as_str,
            &[
                "resolving_image",
                "pulling_image",
                "creating_instances",
                "starting_health_checks",
                "shifting_traffic",
                "draining_old",
                "completed",
            ],
        );
        check(
            StageStatus::ALL,
            StageStatus::NAMES,
            StageStatus::as_str,
            &["pending", "in_progress", "completed", "failed"],
        );
        check(
            Strategy::ALL,
            Strategy::NAMES,
            Strategy::as_str,
            &["rolling", "blue-green", "canary", "immediate"],
        );
        check(
            RollbackStrategy::ALL,
            RollbackStrategy::NAMES,
            RollbackStrategy::as_str,
            &["immediate", "gradual"],
        );
        check(
            DriverKind::ALL,
            DriverKind::NAMES,
            DriverKind::as_str,
            &["process", "container", "microvm"],
        );
        check(
            SourceKind::ALL,
            SourceKind::NAMES,
            SourceKind::as_str,
            &["docker", "tarball", "git"],
        );
        check(
            DeployStrategy::ALL,
            DeployStrategy::NAMES,
            DeployStrategy::as_str,
            &["rolling", "blue-green", "canary"],
        );
        check(
            RestartStrategy::ALL,
            RestartStrategy::NAMES,
            RestartStrategy::as_str,
            &["rolling", "immediate"],
        );
        check(
            SettableNodeStatus::ALL,
            SettableNodeStatus::NAMES,
            SettableNodeStatus::as_str,
            &["ready", "draining", "maintenance"],
        );
        check(
            LoginTokenType::ALL,
            LoginTokenType::NAMES,
            LoginTokenType::as_str,
            &["personal_access_token", "session_token"],
        );
        check(
            NewTokenType::ALL,
            NewTokenType::NAMES,
            NewTokenType::as_str,
            &["personal_access_token", "temporary_token"],
        );
        check(
            ScaleMode::ALL,
            ScaleMode::NAMES,
            ScaleMode::as_str,
            &["manual", "auto"],
        );
        check(
            AppAction::ALL,
            AppAction::NAMES,
            AppAction::as_str,
            &["start", "stop", "restart"],
        );
        check(
            AgentEventKind::ALL,
            AgentEventKind::NAMES,
            AgentEventKind::as_str,
            &[
                "crashed",
                "oom_killed",
                "unhealthy",
                "failed",
                "orphan_removed",
            ],
        );
        check(
            InvitationStatus::ALL,
            InvitationStatus::NAMES,
            InvitationStatus::as_str,
            &["pending", "accepted", "revoked", "expired"],
        );
        check(
            ActorKind::ALL,
            ActorKind::NAMES,
            ActorKind::as_str,
            &["user", "token", "system"],
        );
        check(
            EventKind::ALL,
            EventKind::NAMES,
            EventKind::as_str,
            EventKind::NAMES,
        );
    }

    #[test]
    fn event_kinds_are_resource_dot_verb() {
        assert_eq!(EventKind::ALL.len(), 64);
        for n in EventKind::NAMES {
            let (resource, verb) = n.split_once('.').unwrap();
            assert!(
                !resource.is_empty() && !verb.is_empty() && !verb.contains('.'),
                "{n}"
            );
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'),
                "{n}"
            );
        }
    }

    #[test]
    fn subsets_match_what_the_api_accepts_today() {
        let names = |s: &[Strategy]| s.iter().map(|s| s.as_str()).collect::<Vec<_>>();
        // api::deployments::STRATEGIES
        assert_eq!(names(Strategy::DEPLOY), ["rolling", "blue-green", "canary"]);
        // RestartRequest::validate
        assert_eq!(names(Strategy::RESTART), ["rolling", "immediate"]);
        // NodeUpdate::validate
        let settable: Vec<_> = NodeStatus::SETTABLE.iter().map(|s| s.as_str()).collect();
        assert_eq!(settable, ["ready", "draining", "maintenance"]);
        // The requests' narrower enums are exactly these subsets.
        let deploy: Vec<Strategy> = DeployStrategy::ALL.iter().map(|s| s.strategy()).collect();
        assert_eq!(deploy, Strategy::DEPLOY);
        let restart: Vec<Strategy> = RestartStrategy::ALL.iter().map(|s| s.strategy()).collect();
        assert_eq!(restart, Strategy::RESTART);
        let settable: Vec<NodeStatus> =
            SettableNodeStatus::ALL.iter().map(|s| s.status()).collect();
        assert_eq!(settable, NodeStatus::SETTABLE);
        for s in DeployStrategy::ALL {
            assert_eq!(s.as_str(), Strategy::from(*s).as_str());
        }
        for s in RestartStrategy::ALL {
            assert_eq!(s.as_str(), Strategy::from(*s).as_str());
        }
        for s in SettableNodeStatus::ALL {
            assert_eq!(s.as_str(), NodeStatus::from(*s).as_str());
        }
        // InstanceReport.status
        let reported: Vec<_> = InstanceStatus::REPORTED
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            reported,
            [
                "starting",
                "healthy",
                "unhealthy",
                "crashed",
                "stopping",
                "stopped",
                "failed"
            ]
        );
        // deployment_rollback: "gradual" => "rolling", anything else => "blue-green".
        assert_eq!(RollbackStrategy::Gradual.strategy(), Strategy::Rolling);
        assert_eq!(RollbackStrategy::Immediate.strategy(), Strategy::BlueGreen);
    }

    #[test]
    fn errors_cut_long_values_and_become_field_errors() {
        let long = "x".repeat(1000);
        let e = long.parse::<AppStatus>().unwrap_err();
        assert_eq!(e.value.chars().count(), 65);
        assert!(e.value.ends_with('…'));
        let fe = "nope"
            .parse::<Strategy>()
            .unwrap_err()
            .field_error("strategy");
        assert_eq!(fe.field, "strategy");
        assert_eq!(fe.code, "invalid_value");
        assert_eq!(
            fe.message,
            "must be one of: rolling, blue-green, canary, immediate"
        );
        assert_eq!(fe.value, Some(serde_json::json!("nope")));
    }
}
