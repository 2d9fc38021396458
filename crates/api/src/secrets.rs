//! Secrets: `/v1/secrets`. Values go in and are never shown again.

use serde::{Deserialize, Serialize};
use shellwego_core::time::parse_rfc3339;
use shellwego_core::{Error, FieldError};
use utoipa::ToSchema;

use crate::{Pagination, Validate};

/// Where a secret applies: every app of the organization, or one app
/// (which wins over an organization secret of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretScope {
    Organization,
    App,
}

impl SecretScope {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretScope::Organization => "organization",
            SecretScope::App => "app",
        }
    }
}

/// The largest secret value (64 KiB).
pub const MAX_VALUE: usize = 64 * 1024;

/// `POST /v1/secrets`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretCreate {
    /// An environment variable name (letters, digits, `_`; not starting
    /// with a digit): apps receive the secret under it.
    #[schema(example = "STRIPE_API_KEY")]
    pub name: String,
    /// The value (at most 64 KiB, no NUL bytes). Never returned.
    #[schema(example = "sk_live_xxxxxxxx")]
    pub value: String,
    /// Default: `app` when `app_id` is given, else `organization`.
    #[serde(default)]
    pub scope: Option<SecretScope>,
    /// The app of an `app` secret.
    #[serde(default)]
    #[schema(example = "app_2v8s9d2k1m")]
    pub app_id: Option<String>,
    /// RFC 3339; after it the secret is no longer given to apps (they are
    /// rolled without it), with a `secret.expiring` event 7 days before.
    #[serde(default)]
    #[schema(example = "2027-01-01T00:00:00Z")]
    pub expires_at: Option<String>,
}

fn check_value(errs: &mut Vec<FieldError>, v: &str) {
    if v.len() > MAX_VALUE || v.contains('\0') {
        errs.push(FieldError::new(
            "value",
            "invalid_value",
            "at most 64 KiB, no NUL bytes",
        ));
    }
}

fn check_expiry(errs: &mut Vec<FieldError>, e: Option<&str>) {
    if let Some(e) = e {
        match parse_rfc3339(e) {
            None => errs.push(
                FieldError::new(
                    "expires_at",
                    "invalid_value",
                    "must be an RFC 3339 time such as 2027-01-01T00:00:00Z",
                )
                .with_value(e.to_string()),
            ),
            Some(t) if t <= shellwego_core::time::now() => errs.push(
                FieldError::new("expires_at", "out_of_range", "must be in the future")
                    .with_value(e.to_string()),
            ),
            Some(_) => {}
        }
    }
}

impl SecretCreate {
    /// The scope asked for, or the default.
    pub fn scope(&self) -> SecretScope {
        self.scope.unwrap_or(if self.app_id.is_some() {
            SecretScope::App
        } else {
            SecretScope::Organization
        })
    }
}

impl Validate for SecretCreate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if !crate::apps::valid_env_name(&self.name) || self.name.len() > 255 {
            errs.push(
                FieldError::new(
                    "name",
                    "invalid_value",
                    "must be an environment variable name: letters, digits and _, not starting with a digit (at most 255)",
                )
                .with_value(self.name.chars().take(300).collect::<String>()),
            );
        }
        check_value(&mut errs, &self.value);
        match (self.scope(), &self.app_id) {
            (SecretScope::App, None) => errs.push(FieldError::new(
                "app_id",
                "required",
                "an app secret needs the app's id",
            )),
            (SecretScope::Organization, Some(_)) => errs.push(FieldError::new(
                "app_id",
                "not_allowed",
                "an organization secret applies to every app; leave app_id out or use scope app",
            )),
            _ => {}
        }
        check_expiry(&mut errs, self.expires_at.as_deref());
        crate::finish(errs)
    }
}

/// `POST /v1/secrets/{id}/versions`: a new value (rotation).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretVersionCreate {
    /// The new value (at most 64 KiB, no NUL bytes). Never returned.
    #[schema(example = "sk_live_newkey")]
    pub value: String,
    /// A new expiry (RFC 3339); absent: the secret's expiry stays.
    #[serde(default)]
    pub expires_at: Option<String>,
}

impl Validate for SecretVersionCreate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        check_value(&mut errs, &self.value);
        check_expiry(&mut errs, self.expires_at.as_deref());
        crate::finish(errs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretVersion {
    pub version: i64,
    pub created_at: String,
    pub created_by: Option<String>,
}

/// A secret's metadata; its value is never returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    #[schema(example = "sec_2v8s9d2k1m")]
    pub id: String,
    #[schema(example = "DATABASE_URL")]
    pub name: String,
    pub scope: SecretScope,
    pub app_id: Option<String>,
    /// The latest version: what apps receive.
    pub version: i64,
    /// Newest first.
    pub versions: Vec<SecretVersion>,
    /// When an instance was last given it (to the minute).
    pub last_used: Option<String>,
    pub expires_at: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub data: Vec<Secret>,
    pub pagination: Pagination,
}
