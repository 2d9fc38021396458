//! `GET /v1/user`.

use serde::{Deserialize, Serialize};
use shellwego_core::{Error, FieldError};
use utoipa::ToSchema;

use crate::Validate;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CurrentUser {
    #[schema(example = "usr_2v8s9d2k1m")]
    pub id: String,
    pub email: String,
    pub name: String,
    pub avatar_url: Option<String>,
    pub mfa_enabled: bool,
    pub organizations: Vec<UserOrganization>,
    pub api_quotas: ApiQuotas,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserOrganization {
    pub id: String,
    pub name: String,
    /// `owner`, `admin`, `developer`, `viewer` or `billing`.
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiQuotas {
    /// Sustained API requests per minute for the calling token.
    pub requests_per_minute: u32,
    pub apps_limit: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Changing the password needs the current one, and ends the user's
    /// other sessions.
    #[serde(default)]
    pub password: Option<PasswordChange>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

pub const MIN_PASSWORD: usize = 10;

pub fn check_password(errs: &mut Vec<FieldError>, field: &str, p: &str) {
    let n = p.chars().count();
    if n < MIN_PASSWORD {
        errs.push(FieldError::new(
            field,
            "too_short",
            format!("must be at least {MIN_PASSWORD} characters"),
        ));
    } else if n > 256 {
        errs.push(FieldError::new(
            field,
            "too_long",
            "must be at most 256 characters",
        ));
    }
}

impl Validate for UserUpdate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if let Some(n) = &self.name {
            if let Some((code, msg)) = shellwego_core::names::display_name_problem(n, 100) {
                errs.push(FieldError::new("name", code, msg));
            }
        }
        if let Some(u) = &self.avatar_url {
            if !(u.starts_with("https://") || u.starts_with("http://"))
                || u.len() > 2048
                || u.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                errs.push(
                    FieldError::new("avatar_url", "invalid_value", "must be an http(s) URL")
                        .with_value(u.clone()),
                );
            }
        }
        if let Some(p) = &self.password {
            check_password(&mut errs, "password.new_password", &p.new_password);
        }
        crate::finish(errs)
    }
}

impl std::fmt::Debug for PasswordChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordChange { <redacted> }")
    }
}
