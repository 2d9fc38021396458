//! Organizations, members, invitations and service accounts.

use serde::{Deserialize, Serialize};
use shellwego_core::{Error, FieldError};
use utoipa::ToSchema;

use crate::tokens::valid_permission;
use crate::{Pagination, Validate};

/// Roles every organization has.
pub const ROLES: &[&str] = &["owner", "admin", "developer", "viewer", "billing"];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    #[schema(example = "org_2v8s9d2k1m")]
    pub id: String,
    pub name: String,
    pub slug: String,
    /// `free`, `starter`, `growth` or `enterprise`.
    pub plan: String,
    pub quotas: OrgQuotas,
    pub usage: OrgUsage,
    pub billing: serde_json::Value,
    pub settings: OrgSettings,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgQuotas {
    pub apps: u32,
    pub nodes: u32,
    pub memory_total: String,
    pub volumes_total: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgUsage {
    pub apps: i64,
    pub nodes: i64,
    pub members: i64,
    pub memory_used: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrgSettings {
    /// Members without MFA get 403 on everything but MFA enrollment.
    #[serde(default)]
    pub enforce_mfa: bool,
    /// Regions apps of this organization may run in (empty: any).
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// How long events are kept, e.g. `90d`, `1y`.
    #[serde(default = "default_retention")]
    pub audit_log_retention: String,
}

fn default_retention() -> String {
    "1y".into()
}

/// An `audit_log_retention` value as a duration: `90d`, `12h`, `1y` (365
/// days); none when it is not one.
pub fn retention(s: &str) -> Option<std::time::Duration> {
    shellwego_core::units::parse_duration(s).or_else(|| {
        s.strip_suffix('y')
            .and_then(|n| n.parse::<u64>().ok())
            .and_then(|y| y.checked_mul(365 * 86_400))
            .map(std::time::Duration::from_secs)
    })
}

/// How long an organization keeps its events (its settings document's
/// `audit_log_retention`, else the default year).
pub fn retention_of(settings: &serde_json::Value) -> std::time::Duration {
    settings["audit_log_retention"]
        .as_str()
        .and_then(retention)
        .unwrap_or(std::time::Duration::from_secs(365 * 86_400))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationCreate {
    pub name: String,
    /// URL-safe name; derived from `name` when absent.
    #[serde(default)]
    pub slug: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub billing: Option<serde_json::Value>,
    #[serde(default)]
    pub settings: Option<OrgSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrganizationList {
    pub data: Vec<Organization>,
    pub pagination: Pagination,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub resources: Vec<String>,
    pub mfa_enabled: bool,
    pub joined_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberList {
    pub data: Vec<Member>,
    pub pagination: Pagination,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "developer"}))]
pub struct MemberUpdate {
    #[serde(default)]
    pub role: Option<String>,
    /// Narrow the member's rights to these resources (`app:*`, `app:app_123`, `node:read`).
    #[serde(default)]
    pub resources: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "dev@example.com", "role": "developer", "expires_in": "7d"}))]
pub struct InvitationCreate {
    pub email: String,
    /// `admin`, `developer`, `viewer` or `billing` (owners are made by promotion).
    pub role: String,
    #[serde(default)]
    pub resources: Vec<String>,
    /// Default `7d`, at most `30d`.
    #[serde(default)]
    pub expires_in: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    #[schema(example = "inv_2v8s9d2k1m")]
    pub id: String,
    pub organization_id: String,
    pub email: String,
    pub role: String,
    pub resources: Vec<String>,
    /// `pending`, `accepted` or `expired`.
    pub status: String,
    pub expires_at: String,
    pub created_at: String,
    /// The one-time token, in the create response only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvitationList {
    pub data: Vec<Invitation>,
    pub pagination: Pagination,
}

/// Accept an invitation: as the logged-in user (empty body), or by creating
/// the invited user (`name`, `password`) without a token.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Dev", "password": "a-long-password"}))]
pub struct InvitationAccept {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "github-actions", "role": "developer"}))]
pub struct ServiceAccountCreate {
    pub name: String,
    /// `admin`, `developer`, `viewer` or `billing`.
    pub role: String,
    #[serde(default)]
    pub scope: Vec<String>,
    /// Lifetime of its token, default and at most `90d`.
    #[serde(default)]
    pub expires_in: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccount {
    #[schema(example = "sa_2v8s9d2k1m")]
    pub id: String,
    pub name: String,
    pub role: String,
    pub scope: Vec<String>,
    pub created_at: String,
    /// The `sat_` token, in the create response only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccountList {
    pub data: Vec<ServiceAccount>,
    pub pagination: Pagination,
}

fn check_role(errs: &mut Vec<FieldError>, field: &str, role: &str, allow_owner: bool) {
    let ok = ROLES.contains(&role) && (allow_owner || role != "owner");
    if !ok {
        let allowed = if allow_owner {
            ROLES.join(", ")
        } else {
            ROLES[1..].join(", ")
        };
        errs.push(
            FieldError::new(field, "invalid_value", format!("must be one of: {allowed}"))
                .with_value(role.to_string()),
        );
    }
}

/// `app:*`, `app:app_123`, `node:read`, `*`.
pub fn valid_resource(s: &str) -> bool {
    s == "*"
        || valid_permission(s)
        || s.split_once(':')
            .is_some_and(|(r, id)| !r.is_empty() && shellwego_core::id::is_valid(r, id))
}

fn check_resources(errs: &mut Vec<FieldError>, field: &str, resources: &[String]) {
    for (i, r) in resources.iter().enumerate() {
        if !valid_resource(r) {
            errs.push(
                FieldError::new(
                    format!("{field}[{i}]"),
                    "invalid_value",
                    "must look like app:*, app:app_123 or node:read",
                )
                .with_value(r.clone()),
            );
        }
    }
}

fn check_name(errs: &mut Vec<FieldError>, field: &str, name: &str) {
    if let Some((code, msg)) = shellwego_core::names::display_name_problem(name, 100) {
        errs.push(FieldError::new(field, code, msg));
    }
}

pub fn valid_email(e: &str) -> bool {
    let e = e.trim();
    e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
}

impl Validate for OrganizationCreate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        check_name(&mut errs, "name", &self.name);
        if let Some(s) = &self.slug {
            if !valid_slug(s) {
                errs.push(
                    FieldError::new(
                        "slug",
                        "invalid_value",
                        "must be 1-63 lower-case letters, digits and dashes",
                    )
                    .with_value(s.clone()),
                );
            }
        }
        crate::finish(errs)
    }
}

pub fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Validate for OrganizationUpdate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if let Some(n) = &self.name {
            check_name(&mut errs, "name", n);
        }
        if let Some(b) = &self.billing {
            if !b.is_object() {
                errs.push(FieldError::new(
                    "billing",
                    "invalid_type",
                    "must be an object",
                ));
            }
        }
        if let Some(s) = &self.settings {
            let ok = retention(&s.audit_log_retention)
                .is_some_and(|d| d.as_secs() >= 86_400 && d.as_secs() <= 10 * 365 * 86_400);
            if !ok {
                errs.push(
                    FieldError::new(
                        "settings.audit_log_retention",
                        "out_of_range",
                        "must be a duration between 1d and 10y, e.g. 90d or 1y",
                    )
                    .with_value(s.audit_log_retention.clone()),
                );
            }
            for (i, r) in s.allowed_regions.iter().enumerate() {
                if !valid_slug(r) {
                    errs.push(
                        FieldError::new(
                            format!("settings.allowed_regions[{i}]"),
                            "invalid_value",
                            "must be a region name such as fra1",
                        )
                        .with_value(r.clone()),
                    );
                }
            }
        }
        crate::finish(errs)
    }
}

impl Validate for MemberUpdate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if let Some(r) = &self.role {
            check_role(&mut errs, "role", r, true);
        }
        if let Some(r) = &self.resources {
            check_resources(&mut errs, "resources", r);
        }
        crate::finish(errs)
    }
}

impl Validate for InvitationCreate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if !valid_email(&self.email) {
            errs.push(
                FieldError::new("email", "invalid_value", "must be an email address")
                    .with_value(self.email.clone()),
            );
        }
        check_role(&mut errs, "role", &self.role, false);
        check_resources(&mut errs, "resources", &self.resources);
        if let Some(e) = &self.expires_in {
            match shellwego_core::units::parse_duration(e).map(|d| d.as_secs()) {
                Some(s) if (3600..=30 * 86_400).contains(&s) => {}
                Some(_) => errs.push(
                    FieldError::new("expires_in", "out_of_range", "must be between 1h and 30d")
                        .with_value(e.clone()),
                ),
                None => errs.push(
                    FieldError::new(
                        "expires_in",
                        "invalid_value",
                        "must be a duration such as 7d",
                    )
                    .with_value(e.clone()),
                ),
            }
        }
        crate::finish(errs)
    }
}

impl Validate for InvitationAccept {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if let Some(n) = &self.name {
            check_name(&mut errs, "name", n);
        }
        if let Some(p) = &self.password {
            crate::user::check_password(&mut errs, "password", p);
        }
        crate::finish(errs)
    }
}

impl Validate for ServiceAccountCreate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        check_name(&mut errs, "name", &self.name);
        check_role(&mut errs, "role", &self.role, false);
        crate::check_scope(&mut errs, &self.scope);
        if let Some(e) = &self.expires_in {
            match shellwego_core::units::parse_duration(e).map(|d| d.as_secs()) {
                Some(s) if (3600..=90 * 86_400).contains(&s) => {}
                Some(_) => errs.push(
                    FieldError::new("expires_in", "out_of_range", "must be between 1h and 90d")
                        .with_value(e.clone()),
                ),
                None => errs.push(
                    FieldError::new(
                        "expires_in",
                        "invalid_value",
                        "must be a duration such as 30d",
                    )
                    .with_value(e.clone()),
                ),
            }
        }
        crate::finish(errs)
    }
}

/// The outcome of accepting an invitation. When the invitation created the
/// user, `token` is a personal access token for them in the organization.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvitationAccepted {
    pub organization_id: String,
    pub user_id: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::tokens::TokenCreated>,
}

impl std::fmt::Debug for InvitationAccept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvitationAccept")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
