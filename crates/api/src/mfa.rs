//! TOTP multi-factor authentication (RFC 6238).

use serde::{Deserialize, Serialize};
use shellwego_core::Error;
use utoipa::ToSchema;

use crate::Validate;

/// The secret to put in an authenticator app; MFA is on once confirmed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaEnrollment {
    /// Base32 secret (for manual entry).
    pub secret: String,
    /// `otpauth://totp/…` URI (render as a QR code).
    pub otpauth_uri: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaCode {
    /// A 6-digit code from the authenticator (or, to disable, a recovery code).
    pub code: String,
}

impl Validate for MfaCode {
    fn validate(&self) -> Result<(), Error> {
        if self.code.trim().is_empty() || self.code.len() > 64 {
            return Err(Error::field(
                "code",
                "invalid_value",
                "must be a 6-digit code or a recovery code",
            ));
        }
        Ok(())
    }
}

/// MFA is on. The recovery codes are shown once; each works once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaConfirmed {
    pub mfa_enabled: bool,
    pub recovery_codes: Vec<String>,
}
