//! The typed domain model: one enum for every family of state words, one
//! newtype for every kind of id, and the stored app spec.
//!
//! Why: today these words are string literals spread over the server, the
//! store, the agent and the API crate, so a typo compiles, a `match` with
//! `_ =>` silently swallows a new state, and lists of accepted values are
//! copied by hand (the app `STATUSES` in the API and in the store). Each
//! enum here has exactly one spelling per variant, shared by serde,
//! `FromStr`, `Display`, `as_str()` and (with the `sqlx` feature) the
//! database, and that spelling is the one stored and sent today: these
//! names are the database contents and the wire contract, never rename one.
//! Nothing uses this module yet; the crates move onto it one by one.
//!
//! # The vocabulary
//!
//! Status words ([`status`]); the text after each variant is its name.
//!
//! | enum | variants | where today |
//! |---|---|---|
//! | [`AppStatus`] | `running`, `stopped`, `error`, `deploying`, `pending`, `paused` | `apps.status`; `STATUSES` in api and store (`paused` is listed but never set) |
//! | [`DesiredState`] | `running`, `stopped` | `apps.desired_state` and `instances.desired` |
//! | [`InstanceStatus`] | `pending`, `starting`, `healthy`, `unhealthy`, `crashed`, `stopping`, `stopped`, `failed`, `lost` | `instances.status`; agents report all but `pending` and `lost` ([`InstanceStatus::REPORTED`]) |
//! | [`NodeStatus`] | `joining`, `ready`, `draining`, `maintenance`, `offline` | `nodes.status`; a PATCH may set `ready`, `draining`, `maintenance` ([`NodeStatus::SETTABLE`], the request's [`SettableNodeStatus`]) |
//! | [`DeploymentStatus`] | `in_progress`, `successful`, `failed`, `rolled_back`, `cancelled` | `deployments.status` |
//! | [`Stage`] | `resolving_image`, `pulling_image`, `creating_instances`, `starting_health_checks`, `shifting_traffic`, `draining_old`, `completed` | the stages of every deployment, in order (`api::deployments::STAGES`) |
//! | [`StageStatus`] | `pending`, `in_progress`, `completed`, `failed` | each stage in `deployments.stages` |
//! | [`Strategy`] | `rolling`, `blue-green`, `canary`, `immediate` | `deployments.strategy`; deploys accept the first three ([`Strategy::DEPLOY`], the request's [`DeployStrategy`]), restarts `rolling` and `immediate` ([`Strategy::RESTART`], [`RestartStrategy`]) |
//! | [`RollbackStrategy`] | `immediate`, `gradual` | the rollback request; stored as `blue-green` and `rolling` |
//! | [`DriverKind`] | `process`, `container`, `microvm` | `spec.runtime`, `instances.driver`, a node's `drivers` |
//! | [`SourceKind`] | `docker`, `tarball`, `git` | `spec.source.type` |
//! | [`ScaleMode`] | `manual`, `auto` | the scale request's `strategy` |
//! | [`LoginTokenType`] | `personal_access_token`, `session_token` | the login request's `type` |
//! | [`NewTokenType`] | `personal_access_token`, `temporary_token` | the token create request's `type` |
//! | [`AppAction`] | `start`, `stop`, `restart` | `POST /v1/apps/{id}/actions/{action}` |
//! | [`AgentEventKind`] | `crashed`, `oom_killed`, `unhealthy`, `failed`, `orphan_removed` | `AgentEvent.kind` from the agent |
//! | [`InvitationStatus`] | `pending`, `accepted`, `revoked`, `expired` | derived from an invitation row (the store's `Invitation::status`) |
//! | [`OperationStatus`] | `running`, `undoing`, `succeeded`, `undone`, `undo_failed` | `operations.status` (the server's step runner); the first, second and last are picked up again ([`OperationStatus::UNFINISHED`]) |
//! | [`ActorKind`] | `user`, `token`, `system` | `events.actor_type` |
//! | [`EventKind`] | `app.created`, `deployment.started`, … (64 names, see the enum) | `events.event_type` |
//! | [`WebhookStatus`] | `active`, `disabled` | `webhooks.status` ([`webhooks`]) |
//! | [`DeliveryStatus`] | `pending`, `succeeded`, `failed` | `webhook_deliveries.status` |
//! | [`Backoff`] | `exponential`, `linear` | `webhooks.backoff` (`retry_policy.backoff`) |
//!
//! Already enums elsewhere, so not repeated here: token kinds
//! (`token::TokenKind`), plans (`plan::Plan`), event severity (the store's
//! `events::Severity`). Left as strings on purpose: role names (the Shell
//! API defines roles beside the five built-in ones), an event's resource
//! type, a volume's `type` (free text today).
//!
//! Ids ([`ids`]): [`AppId`] `app_`, [`DeploymentId`] `dep_`, [`EventId`]
//! `evt_`, [`InstanceId`] `inst_`, [`InvitationId`] `inv_`, [`LoginId`]
//! `login_`, [`NodeId`] `node_`, [`OperationId`] `op_`, [`OrgId`] `org_`,
//! [`RequestId`] `req_`, [`ServiceAccountId`] `sa_`, [`TokenId`] `tok_`,
//! [`UploadId`] `upl_`, [`UserId`] `usr_`. Releases have no id of their own
//! (an app id and a version).
//!
//! The stored spec ([`spec`]): [`AppSpec`] (the `apps.spec` and
//! `releases.spec` JSON), [`DeployOptions`] (`deployments.options`),
//! [`DeploymentStage`] (`deployments.stages`), [`HealthCheckSpec`] and
//! [`ReleaseSpec`].

use crate::FieldError;

pub mod ids;
pub mod spec;
pub mod status;
pub mod webhooks;

#[cfg(test)]
#[cfg(feature = "sqlx")]
mod sqlx_tests;

pub use ids::*;
pub use spec::*;
pub use status::*;
pub use webhooks::{Backoff, DeliveryStatus, WebhookStatus};

/// A word that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {}", .accepted.join(", "))]
pub struct UnknownValue {
    /// What was being parsed (`app status`).
    pub what: &'static str,
    /// The value given (cut to 64 characters: it may come from anyone).
    pub value: String,
    /// Every accepted name.
    pub accepted: &'static [&'static str],
}

impl UnknownValue {
    pub fn new(what: &'static str, value: &str, accepted: &'static [&'static str]) -> Self {
        Self {
            what,
            value: clip(value),
            accepted,
        }
    }

    /// The 400 detail for `field` (`invalid_value`, naming the accepted values).
    pub fn field_error(&self, field: impl Into<String>) -> FieldError {
        FieldError::new(
            field,
            "invalid_value",
            format!("must be one of: {}", self.accepted.join(", ")),
        )
        .with_value(self.value.clone())
    }
}

/// A string that is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {what}: expected {prefix}_ followed by 1 to 64 lower-case letters or digits")]
pub struct InvalidId {
    /// What was being parsed (`app id`).
    pub what: &'static str,
    pub prefix: &'static str,
    /// The value given (cut to 64 characters).
    pub value: String,
}

impl InvalidId {
    /// The 400 detail for `field`.
    pub fn field_error(&self, field: impl Into<String>) -> FieldError {
        FieldError::new(
            field,
            "invalid_value",
            format!("must be {} ({}_…)", self.what, self.prefix),
        )
        .with_value(self.value.clone())
    }
}

/// At most 64 characters of `s`, marked when cut.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// Writes `s` as a plain string (used by the generated `Serialize` impls).
fn serialize_str<S: serde::Serializer>(s: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(s)
}

/// Generates an enum over a family of state words with everything each one
/// needs, from a single list of `Variant = "name"` pairs, so the spellings
/// cannot drift apart:
///
/// - the enum (`Copy`, ordered as listed), with `ALL` (every variant, in
///   order), `NAMES` (their names, same order) and `as_str()`;
/// - `Display` (the name), `FromStr` (an [`UnknownValue`] naming the
///   accepted values), `Serialize`/`Deserialize` as the name;
/// - with the `sqlx` feature, `Type`/`Encode`/`Decode` as TEXT for any sqlx
///   database whose `str`/`String` are TEXT (the store's `Any`, SQLite and
///   PostgreSQL alike): written as the name, read back through `FromStr`.
///
/// `$what` names the family in errors (`"app status"`).
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in the order listed.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The name of every variant, in the same order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name: as stored, sent and parsed.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::model::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::model::UnknownValue::new($what, s, $name::NAMES)),
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::model::serialize_str(self.as_str(), s)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(::serde::de::Error::custom)
            }
        }

        #[cfg(feature = "utoipa")]
        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                ::utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(::utoipa::openapi::schema::Type::String)
                    .enum_values(Some($name::NAMES.iter().copied()))
                    .into()
            }
        }

        #[cfg(feature = "utoipa")]
        impl ::utoipa::ToSchema for $name {}

        #[cfg(feature = "sqlx")]
        impl<DB: ::sqlx::Database> ::sqlx::Type<DB> for $name
        where
            str: ::sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as ::sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as ::sqlx::Type<DB>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'q, DB: ::sqlx::Database> ::sqlx::Encode<'q, DB> for $name
        where
            &'q str: ::sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as ::sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&'q str as ::sqlx::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r, DB: ::sqlx::Database> ::sqlx::Decode<'r, DB> for $name
        where
            String: ::sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as ::sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, ::sqlx::error::BoxDynError> {
                let s = <String as ::sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(s.parse::<$name>()?)
            }
        }
    };
}
pub(crate) use vocabulary;
