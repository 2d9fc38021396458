//! The ShellWeGo domain: identifiers, tokens, the one domain error type,
//! units (sizes, durations) and the list-query language shared by every
//! list endpoint, and the typed model (`model`: every state word as an enum,
//! typed ids, the stored app spec). Pure logic: no database, no HTTP.
//!
//! Features: `crypto` (default) brings password hashing, token minting,
//! signed list cursors and random ids; the API contract crate turns it off
//! so that it compiles none of argon2, hmac, rand, subtle or sha2. `sqlx`
//! (off by default) maps the model's enums and ids to TEXT columns.

pub mod error;
pub mod id;
pub mod list;
pub mod model;
pub mod names;
#[cfg(feature = "crypto")]
pub mod password;
pub mod plan;
pub mod rbac;
pub mod sched;
pub mod time;
#[cfg(feature = "crypto")]
pub mod token;
pub mod units;

pub use error::{Error, FieldError, RateLimitInfo, Result};
