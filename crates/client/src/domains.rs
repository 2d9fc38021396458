//! `client.domains()`: custom domains (`/v1/domains`).

use reqwest::Method;
use shellwego_api::domains::{CertificateUpload, Domain, DomainCreate, DomainList, DomainUpdate};

use crate::{Answer, ApiError, Client, ListQuery};

/// The calls about custom domains; see [`Client::domains`].
pub struct Domains<'a> {
    pub(crate) client: &'a Client,
}

impl Domains<'_> {
    /// `POST /v1/domains`.
    pub async fn create(&self, req: &DomainCreate) -> Result<Answer<Domain>, ApiError> {
        self.client
            .send_json("POST /v1/domains", Method::POST, &["v1", "domains"], req)
            .await
    }

    /// `GET /v1/domains`.
    pub async fn list(&self, query: &ListQuery) -> Result<Answer<DomainList>, ApiError> {
        self.client
            .list("GET /v1/domains", &["v1", "domains"], query)
            .await
    }

    /// `GET /v1/domains/{domain_id}`.
    pub async fn get(&self, id: &str) -> Result<Answer<Domain>, ApiError> {
        self.client
            .get("GET /v1/domains/{domain_id}", &["v1", "domains", id], &[])
            .await
    }

    /// `PATCH /v1/domains/{domain_id}`: its routing.
    pub async fn update(&self, id: &str, req: &DomainUpdate) -> Result<Answer<Domain>, ApiError> {
        self.client
            .send_json(
                "PATCH /v1/domains/{domain_id}",
                Method::PATCH,
                &["v1", "domains", id],
                req,
            )
            .await
    }

    /// `POST /v1/domains/{domain_id}/certificate`: your own certificate.
    pub async fn upload_certificate(
        &self,
        id: &str,
        req: &CertificateUpload,
    ) -> Result<Answer<Domain>, ApiError> {
        self.client
            .send_json(
                "POST /v1/domains/{domain_id}/certificate",
                Method::POST,
                &["v1", "domains", id, "certificate"],
                req,
            )
            .await
    }

    /// `DELETE /v1/domains/{domain_id}`.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.client.delete(&["v1", "domains", id], &[]).await
    }
}
