//! Personal access tokens: `POST/GET /v1/user/tokens`,
//! `DELETE /v1/user/tokens/{token_id}`.

use serde::{Deserialize, Serialize};
use shellwego_core::units::parse_duration;
use shellwego_core::{id, Error, FieldError};
use utoipa::ToSchema;

use crate::{Pagination, Validate};

/// Shortest and longest lifetime a token may be given.
pub const MIN_EXPIRES_IN_SECS: u64 = 3600;
pub const MAX_EXPIRES_IN_SECS: u64 = 365 * 86_400;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    /// A name to recognise the token by (1–100 characters).
    #[schema(example = "CI/CD Pipeline")]
    pub name: String,
    /// Permissions (`resource:action`, e.g. `apps:read`); empty means every
    /// permission the owner has.
    #[serde(default)]
    #[schema(example = json!(["apps:read", "apps:write", "deployments:write"]))]
    pub scope: Vec<String>,
    /// Lifetime, `1h` to `365d` (default 365d).
    #[serde(default)]
    #[schema(example = "90d")]
    pub expires_in: Option<String>,
    /// Limit the token to these apps.
    #[serde(default)]
    pub restrict_to_apps: Vec<String>,
    /// `personal_access_token` (default) or `temporary_token` (15 minutes,
    /// works for one request).
    #[serde(default, rename = "type")]
    pub token_type: Option<shellwego_core::model::NewTokenType>,
    /// The organization the token acts in (one you belong to); default: the
    /// organization of the token making this request.
    #[serde(default)]
    pub organization_id: Option<String>,
}

impl TokenCreateRequest {
    /// The lifetime in seconds (validated).
    pub fn expires_in_secs(&self) -> Option<u64> {
        self.expires_in
            .as_deref()
            .and_then(parse_duration)
            .map(|d| d.as_secs())
    }
}

/// `resource:action`, lower-case words; action may be `*`.
pub fn valid_permission(s: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty()
            && w.len() <= 40
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-')
    };
    match s.split_once(':') {
        Some((r, a)) => word(r) && (a == "*" || word(a)),
        None => false,
    }
}

impl Validate for TokenCreateRequest {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if let Some((code, msg)) = shellwego_core::names::display_name_problem(&self.name, 100) {
            errs.push(FieldError::new("name", code, msg));
        }
        if self.restrict_to_apps.len() > 100 {
            errs.push(FieldError::new(
                "restrict_to_apps",
                "too_long",
                "at most 100 apps; leave it empty for all apps",
            ));
        }
        crate::check_scope(&mut errs, &self.scope);
        if let Some(e) = &self.expires_in {
            match parse_duration(e).map(|d| d.as_secs()) {
                None => errs.push(
                    FieldError::new(
                        "expires_in",
                        "invalid_value",
                        "must be a duration such as 30d, 12h or 1w",
                    )
                    .with_value(e.clone()),
                ),
                Some(s) if !(MIN_EXPIRES_IN_SECS..=MAX_EXPIRES_IN_SECS).contains(&s) => errs.push(
                    FieldError::new("expires_in", "out_of_range", "must be between 1h and 365d")
                        .with_value(e.clone()),
                ),
                Some(_) => {}
            }
        }
        for (i, a) in self.restrict_to_apps.iter().enumerate() {
            if !id::is_valid("app", a) {
                errs.push(
                    FieldError::new(
                        format!("restrict_to_apps[{i}]"),
                        "invalid_value",
                        "must be an app id (app_…)",
                    )
                    .with_value(a.clone()),
                );
            }
        }
        crate::finish(errs)
    }
}

/// The spec's Token Response, plus the token's id and name. `token` is
/// shown here once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[schema(example = "tok_2v8s9d2k1m")]
    pub id: String,
    pub name: String,
    pub token: String,
    /// `personal_access_token`, `service_account_token`, `session_token` or `temporary_token`.
    #[serde(rename = "type")]
    pub token_type: String,
    pub expires_at: Option<String>,
    pub scope: Vec<String>,
    pub restrict_to_apps: Vec<String>,
    pub permissions: TokenPermissions,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenPermissions {
    #[schema(example = json!(["app:app_123", "node:*"]))]
    pub resources: Vec<String>,
    #[schema(example = json!(["create", "read", "update", "delete"]))]
    pub actions: Vec<String>,
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub token_type: String,
    pub scope: Vec<String>,
    pub restrict_to_apps: Vec<String>,
    /// `pat_…abcd`
    pub hint: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub data: Vec<TokenInfo>,
    pub pagination: Pagination,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> Result<TokenCreateRequest, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn validation() {
        assert!(req(serde_json::json!({"name": "ci"}))
            .unwrap()
            .validate()
            .is_ok());
        assert!(req(serde_json::json!({"name": "ci", "expire_in": "9d"})).is_err());
        let e = req(serde_json::json!({"name": "ci", "expires_in": "400d"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            matches!(e, Error::Validation { ref errors, .. } if errors[0].field == "expires_in" && errors[0].code == "out_of_range")
        );
        assert!(req(serde_json::json!({"name": " "}))
            .unwrap()
            .validate()
            .is_err());
        assert!(req(serde_json::json!({"name": "x", "scope": ["apps"]}))
            .unwrap()
            .validate()
            .is_err());
        assert!(
            valid_permission("apps:read")
                && valid_permission("nodes:*")
                && !valid_permission("Apps:read")
        );
    }
}
