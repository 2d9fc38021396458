//! `client.user()`: the calling user (`/v1/user`).

use reqwest::Method;
use shellwego_api::user::{CurrentUser, UserUpdate};

use crate::{Answer, ApiError, Client};

/// The calls about the calling user; see [`Client::user`].
pub struct User<'a> {
    pub(crate) client: &'a Client,
}

impl User<'_> {
    /// `GET /v1/user`: who the token belongs to, and their organizations.
    pub async fn get(&self) -> Result<Answer<CurrentUser>, ApiError> {
        self.client.get("GET /v1/user", &["v1", "user"], &[]).await
    }

    /// `PATCH /v1/user`: name, avatar, password.
    pub async fn update(&self, req: &UserUpdate) -> Result<Answer<CurrentUser>, ApiError> {
        self.client
            .send_json("PATCH /v1/user", Method::PATCH, &["v1", "user"], req)
            .await
    }
}
