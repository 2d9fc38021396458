//! `POST /v1/auth/token` (exchange credentials for a token) and
//! `DELETE /v1/auth/token/{token_id}`.

use serde::{Deserialize, Serialize};
use shellwego_core::{Error, FieldError};
use utoipa::ToSchema;

use crate::Validate;

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "admin@company.com")]
    pub email: String,
    pub password: String,
    /// A current TOTP code, or one of the recovery codes, when MFA is enabled.
    #[serde(default)]
    pub mfa_code: Option<String>,
    /// Permissions for the token; empty means all the user's role allows.
    #[serde(default)]
    pub scope: Vec<String>,
    /// `personal_access_token` (default, 1 year) or `session_token` (24 hours).
    #[serde(default, rename = "type")]
    pub token_type: Option<shellwego_core::model::LoginTokenType>,
    /// The organization the token acts in; default: the user's first.
    #[serde(default)]
    pub organization_id: Option<String>,
}

impl Validate for LoginRequest {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if self.email.trim().is_empty() {
            errs.push(FieldError::new("email", "required", "must not be empty"));
        }
        if self.password.is_empty() {
            errs.push(FieldError::new("password", "required", "must not be empty"));
        }
        crate::check_scope(&mut errs, &self.scope);
        crate::finish(errs)
    }
}

/// Never prints the password or the MFA code.
impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .field("mfa_code", &self.mfa_code.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .field("token_type", &self.token_type)
            .field("organization_id", &self.organization_id)
            .finish()
    }
}
