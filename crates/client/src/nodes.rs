//! `client.nodes()`: the machines that run apps (`/v1/nodes`).

use reqwest::Method;
use shellwego_api::nodes::{
    Node, NodeDrain, NodeDrained, NodeList, NodeRegister, NodeRegistered, NodeUpdate,
};

use crate::{Answer, ApiError, Client, ListQuery};

/// The calls about nodes; see [`Client::nodes`].
pub struct Nodes<'a> {
    pub(crate) client: &'a Client,
}

impl Nodes<'_> {
    /// `GET /v1/nodes`. Filters: `status`, `region`, `hostname`, ….
    pub async fn list(&self, query: &ListQuery) -> Result<Answer<NodeList>, ApiError> {
        self.client
            .list("GET /v1/nodes", &["v1", "nodes"], query)
            .await
    }

    /// `GET /v1/nodes/{node_id}`.
    pub async fn get(&self, id: &str) -> Result<Answer<Node>, ApiError> {
        self.client
            .get("GET /v1/nodes/{node_id}", &["v1", "nodes", id], &[])
            .await
    }

    /// `POST /v1/nodes`: register a machine; the answer carries the
    /// one-time join token its agent joins with.
    pub async fn register(&self, req: &NodeRegister) -> Result<Answer<NodeRegistered>, ApiError> {
        self.client
            .send_json("POST /v1/nodes", Method::POST, &["v1", "nodes"], req)
            .await
    }

    /// `PATCH /v1/nodes/{node_id}`: labels and status.
    pub async fn update(&self, id: &str, req: &NodeUpdate) -> Result<Answer<Node>, ApiError> {
        self.client
            .send_json(
                "PATCH /v1/nodes/{node_id}",
                Method::PATCH,
                &["v1", "nodes", id],
                req,
            )
            .await
    }

    /// `POST /v1/nodes/{node_id}/actions/drain`.
    pub async fn drain(&self, id: &str, req: &NodeDrain) -> Result<Answer<NodeDrained>, ApiError> {
        self.client
            .send_json(
                "POST /v1/nodes/{node_id}/actions/drain",
                Method::POST,
                &["v1", "nodes", id, "actions", "drain"],
                req,
            )
            .await
    }

    /// `DELETE /v1/nodes/{node_id}`; with `migrate_apps` its instances are
    /// moved first and the node goes once it runs nothing (202).
    pub async fn delete(&self, id: &str, migrate_apps: bool) -> Result<(), ApiError> {
        let query = if migrate_apps {
            vec![("migrate_apps", "true".to_string())]
        } else {
            vec![]
        };
        self.client.delete(&["v1", "nodes", id], &query).await
    }
}
