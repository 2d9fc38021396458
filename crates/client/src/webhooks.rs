//! `client.webhooks()`: webhooks and their deliveries (`/v1/webhooks`).

use reqwest::Method;
use shellwego_api::webhooks::{
    Delivery, DeliveryDetail, DeliveryList, Webhook, WebhookCreate, WebhookCreated, WebhookList,
    WebhookUpdate,
};

use crate::{Answer, ApiError, Client, ListQuery};

/// The calls about webhooks; see [`Client::webhooks`].
pub struct Webhooks<'a> {
    pub(crate) client: &'a Client,
}

impl Webhooks<'_> {
    /// `POST /v1/webhooks`: the answer carries the signing secret, shown
    /// this once.
    pub async fn create(&self, req: &WebhookCreate) -> Result<Answer<WebhookCreated>, ApiError> {
        self.client
            .send_json("POST /v1/webhooks", Method::POST, &["v1", "webhooks"], req)
            .await
    }

    /// `GET /v1/webhooks`: the organization's webhooks (never their
    /// secrets). Filters: `url`, `status`, `created_at`, `q`.
    pub async fn list(&self, query: &ListQuery) -> Result<Answer<WebhookList>, ApiError> {
        self.client
            .list("GET /v1/webhooks", &["v1", "webhooks"], query)
            .await
    }

    /// `GET /v1/webhooks/{webhook_id}`.
    pub async fn get(&self, id: &str) -> Result<Answer<Webhook>, ApiError> {
        self.client
            .get(
                "GET /v1/webhooks/{webhook_id}",
                &["v1", "webhooks", id],
                &[],
            )
            .await
    }

    /// `PATCH /v1/webhooks/{webhook_id}`: the fields given replace the
    /// webhook's (`enabled: true` turns a disabled one back on).
    pub async fn update(&self, id: &str, req: &WebhookUpdate) -> Result<Answer<Webhook>, ApiError> {
        self.client
            .send_json(
                "PATCH /v1/webhooks/{webhook_id}",
                Method::PATCH,
                &["v1", "webhooks", id],
                req,
            )
            .await
    }

    /// `DELETE /v1/webhooks/{webhook_id}`, with its deliveries.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.client.delete(&["v1", "webhooks", id], &[]).await
    }

    /// `POST /v1/webhooks/{webhook_id}/test`: queue a `ping`; the delivery.
    pub async fn test(&self, id: &str) -> Result<Answer<Delivery>, ApiError> {
        self.client
            .post_empty(
                "POST /v1/webhooks/{webhook_id}/test",
                &["v1", "webhooks", id, "test"],
            )
            .await
    }

    /// `GET /v1/webhooks/{webhook_id}/deliveries`, newest first. Filters:
    /// `status`, `event_type`, `event_id`, `created_at`, ….
    pub async fn deliveries(
        &self,
        id: &str,
        query: &ListQuery,
    ) -> Result<Answer<DeliveryList>, ApiError> {
        self.client
            .list(
                "GET /v1/webhooks/{webhook_id}/deliveries",
                &["v1", "webhooks", id, "deliveries"],
                query,
            )
            .await
    }

    /// `GET /v1/webhooks/{webhook_id}/deliveries/{delivery_id}`, with its body.
    pub async fn delivery(
        &self,
        id: &str,
        delivery_id: &str,
    ) -> Result<Answer<DeliveryDetail>, ApiError> {
        self.client
            .get(
                "GET /v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
                &["v1", "webhooks", id, "deliveries", delivery_id],
                &[],
            )
            .await
    }

    /// `POST /v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver`:
    /// the same delivery, pending again and due now.
    pub async fn redeliver(
        &self,
        id: &str,
        delivery_id: &str,
    ) -> Result<Answer<Delivery>, ApiError> {
        self.client
            .post_empty(
                "POST /v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
                &["v1", "webhooks", id, "deliveries", delivery_id, "redeliver"],
            )
            .await
    }
}
