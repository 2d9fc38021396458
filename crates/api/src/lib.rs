//! The ShellWeGo API contract: request and response bodies of the `/v1`
//! platform API with their OpenAPI schemas, and the validation of requests.
//! No database or HTTP-server code lives here; the server, the CLI and SDKs
//! share these types.

pub mod auth;
pub mod events;
pub mod mfa;
pub mod nodes;
pub mod orgs;
pub mod problem;
pub mod tokens;
pub mod user;

use serde::Serialize;
use shellwego_core::Error;
use utoipa::ToSchema;

/// A request body that can check itself beyond what its types say
/// (ranges, formats). Run by the server's JSON extractor.
pub trait Validate {
    fn validate(&self) -> Result<(), Error>;
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
