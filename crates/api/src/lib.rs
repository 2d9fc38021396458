//! The ShellWeGo API contract: request and response bodies of the `/v1`
//! platform API with their OpenAPI schemas, and the validation of requests;
//! and, apart in [`agent`], the internal agent protocol (versioned on its own).
//! No database or HTTP-server code lives here; the server, the CLI and SDKs
//! share these types.

pub mod agent;
pub mod apps;
pub mod auth;
pub mod deployments;
pub mod domains;
pub mod events;
pub mod exec;
pub mod logs;
pub mod metrics;
pub mod mfa;
pub mod nodes;
pub mod orgs;
pub mod problem;
pub mod secrets;
pub mod tokens;
pub mod webhooks;

/// The words the DTOs carry (statuses, stages, strategies, drivers): the
/// domain model's enums, re-exported so a client needs only this crate.
pub use shellwego_core::model;
pub mod user;

use serde::Serialize;
use shellwego_core::Error;
use utoipa::ToSchema;

/// A request body that can check itself beyond what its types say
/// (ranges, formats). Run by the server's JSON extractor.
pub trait Validate {
    fn validate(&self) -> Result<(), Error>;
}

/// Every entry of `scope` must look like `resource:action`.
pub(crate) fn check_scope(errs: &mut Vec<shellwego_core::FieldError>, scope: &[String]) {
    for (i, s) in scope.iter().enumerate() {
        if !tokens::valid_permission(s) {
            errs.push(
                shellwego_core::FieldError::new(
                    format!("scope[{i}]"),
                    "invalid_value",
                    "must look like resource:action, e.g. apps:read",
                )
                .with_value(s.clone()),
            );
        }
    }
}

/// No field problems: Ok; else one validation error listing them all.
pub(crate) fn finish(errs: Vec<shellwego_core::FieldError>) -> Result<(), Error> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(errs))
    }
}

/// The pagination block of every list response.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct Pagination {
    /// Number of items matching the filters (all pages).
    pub total: i64,
    /// Items per page.
    pub limit: u32,
    /// Whether a next page exists.
    pub has_more: bool,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
    /// Pass as `cursor` for the previous page.
    pub prev_cursor: Option<String>,
    /// Pass as `cursor` for the first page.
    pub first_cursor: Option<String>,
    /// Pass as `cursor` for the last page.
    pub last_cursor: Option<String>,
}

/// `{"status": "ok"}`
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// `GET /readyz`: the store answers, and what this replica is.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ok")]
    pub status: String,
    /// This control-plane replica's id (new at every start).
    #[schema(example = "rep_2xK9mP4qR7sT1vW3")]
    pub replica: String,
    /// The singleton controllers this replica leads now (one replica leads
    /// each: `reconcile`, `liveness`, `drained-nodes`).
    #[schema(example = json!(["reconcile", "liveness"]))]
    pub leads: Vec<String>,
    /// What carries change notifications between replicas: `in-process`
    /// (SQLite, one replica), `postgres` (LISTEN/NOTIFY) or
    /// `postgres (reconnecting)`.
    #[schema(example = "postgres")]
    pub bus: String,
}
