//! Events (the audit trail); `GET /v1/events`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Pagination;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    #[schema(example = "evt_2v8s9d2k1m")]
    pub id: String,
    /// `app.deployed`, `node.offline`, `user.login`, `token.created`, …
    #[serde(rename = "type")]
    pub event_type: String,
    /// `info`, `warning`, `error` or `critical`.
    pub severity: String,
    pub actor: EventActor,
    pub resource: EventResource,
    pub metadata: serde_json::Value,
    pub timestamp: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventActor {
    /// `user`, `token` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventResource {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub data: Vec<Event>,
    pub pagination: Pagination,
}
