//! RFC 7807 problem documents (`application/problem+json`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every `/v1` error. On 429 the spec's rate-limit members (`error`,
/// `message`, `retry_after`, `limit`, `window`) are present too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// URI identifying the problem type; it ends in the slug from the spec's
    /// error-type table (`validation-failed`, `authentication-required`, …).
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to change.
    pub detail: String,
    /// The request path.
    pub instance: String,
    /// Also sent as the `X-Request-Id` header; quote it when asking for help.
    pub trace_id: String,
    /// Field-level problems (validation errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldProblem {
    /// Dotted path of the field, e.g. `resources.memory` or `limit`.
    pub field: String,
    /// `required`, `unknown_field`, `invalid_type`, `invalid_value`, `out_of_range`, `malformed`, …
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}
