//! The ShellWeGo domain: identifiers, tokens, the one domain error type,
//! units (sizes, durations) and the list-query language shared by every
//! list endpoint. Pure logic: no database, no HTTP.

pub mod error;
pub mod id;
pub mod list;
pub mod names;
pub mod password;
pub mod plan;
pub mod rbac;
pub mod sched;
pub mod time;
pub mod token;
pub mod units;

pub use error::{Error, FieldError, RateLimitInfo, Result};
