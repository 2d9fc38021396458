//! `client.secrets()`: the organization's secrets (`/v1/secrets`). Values
//! go in; only metadata comes back.

use reqwest::Method;
use shellwego_api::secrets::{Secret, SecretCreate, SecretList, SecretVersionCreate};

use crate::{Answer, ApiError, Client, ListQuery};

/// The calls about secrets; see [`Client::secrets`].
pub struct Secrets<'a> {
    pub(crate) client: &'a Client,
}

impl Secrets<'_> {
    /// `POST /v1/secrets`: the apps it reaches roll to a release with it.
    pub async fn create(&self, req: &SecretCreate) -> Result<Answer<Secret>, ApiError> {
        self.client
            .send_json("POST /v1/secrets", Method::POST, &["v1", "secrets"], req)
            .await
    }

    /// `GET /v1/secrets` (metadata only).
    pub async fn list(&self, query: &ListQuery) -> Result<Answer<SecretList>, ApiError> {
        self.client
            .list("GET /v1/secrets", &["v1", "secrets"], query)
            .await
    }

    /// `GET /v1/secrets/{secret_id}` (metadata only).
    pub async fn get(&self, id: &str) -> Result<Answer<Secret>, ApiError> {
        self.client
            .get("GET /v1/secrets/{secret_id}", &["v1", "secrets", id], &[])
            .await
    }

    /// `POST /v1/secrets/{secret_id}/versions`: rotate to a new value.
    pub async fn rotate(
        &self,
        id: &str,
        req: &SecretVersionCreate,
    ) -> Result<Answer<Secret>, ApiError> {
        self.client
            .send_json(
                "POST /v1/secrets/{secret_id}/versions",
                Method::POST,
                &["v1", "secrets", id, "versions"],
                req,
            )
            .await
    }

    /// `DELETE /v1/secrets/{secret_id}`.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.client.delete(&["v1", "secrets", id], &[]).await
    }
}
