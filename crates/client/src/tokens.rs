//! `client.tokens()`: the calling user's API tokens (`/v1/user/tokens`).

use reqwest::Method;
use shellwego_api::tokens::{TokenCreateRequest, TokenCreated, TokenList};

use crate::{Answer, ApiError, Client, ListQuery};

/// The calls about the caller's tokens; see [`Client::tokens`].
pub struct Tokens<'a> {
    pub(crate) client: &'a Client,
}

impl Tokens<'_> {
    /// `POST /v1/user/tokens`: the answer carries the secret, shown this once.
    pub async fn create(&self, req: &TokenCreateRequest) -> Result<Answer<TokenCreated>, ApiError> {
        self.client
            .send_json(
                "POST /v1/user/tokens",
                Method::POST,
                &["v1", "user", "tokens"],
                req,
            )
            .await
    }

    /// `GET /v1/user/tokens` (never their secrets).
    pub async fn list(&self, query: &ListQuery) -> Result<Answer<TokenList>, ApiError> {
        self.client
            .list("GET /v1/user/tokens", &["v1", "user", "tokens"], query)
            .await
    }

    /// `DELETE /v1/user/tokens/{token_id}`: it stops working at once.
    pub async fn revoke(&self, id: &str) -> Result<(), ApiError> {
        self.client.delete(&["v1", "user", "tokens", id], &[]).await
    }
}
