//! `client.auth()`: logging in and out (`/v1/auth/token`).

use reqwest::Method;
use shellwego_api::auth::LoginRequest;
use shellwego_api::tokens::TokenCreated;

use crate::{Answer, ApiError, Client};

/// The calls about sessions; see [`Client::auth`].
pub struct Auth<'a> {
    pub(crate) client: &'a Client,
}

impl Auth<'_> {
    /// `POST /v1/auth/token`: a token for email and password. An account
    /// with MFA needs `mfa_code` too: without it, or with a wrong one, the
    /// error says so ([`ApiError::wants_mfa_code`]), and the same request
    /// with the code set can be sent again. (Send it from
    /// [`Client::anonymous`]: a stale token must not get in the way.)
    pub async fn login(&self, req: &LoginRequest) -> Result<Answer<TokenCreated>, ApiError> {
        self.client
            .send_json(
                "POST /v1/auth/token",
                Method::POST,
                &["v1", "auth", "token"],
                req,
            )
            .await
    }

    /// `DELETE /v1/auth/token/{token_id}`: revoke a token of the caller
    /// (log out).
    pub async fn revoke(&self, token_id: &str) -> Result<(), ApiError> {
        self.client
            .delete(&["v1", "auth", "token", token_id], &[])
            .await
    }
}
