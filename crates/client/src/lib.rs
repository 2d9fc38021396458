//! A typed client of ShellWeGo: the `/v1` platform API ([`Client`]) and,
//! for node agents, the agent channel ([`agent::AgentClient`]), both over
//! the request and response types of `shellwego-api`.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use shellwego_client::{Client, ListQuery};
//! let client = Client::new("http://127.0.0.1:3000", Some("pat_…".into()))?;
//! let running = client
//!     .apps()
//!     .list(&ListQuery::new().filter("status", "running"))
//!     .await?;
//! for app in &running.data {
//!     println!("{} {}/{}", app.name, app.replicas.healthy, app.replicas.desired);
//! }
//! # Ok(()) }
//! ```
//!
//! Each resource's calls sit behind an accessor ([`Client::apps`],
//! [`Client::deployments`], [`Client::nodes`], [`Client::orgs`],
//! [`Client::tokens`], [`Client::auth`], [`Client::user`],
//! [`Client::events`], [`Client::secrets`], [`Client::webhooks`]), which builds its paths in one place. A successful
//! call answers an [`Answer`]: the typed body, which it dereferences to,
//! and the JSON the API sent. A failed one is an [`ApiError`], which keeps
//! an RFC 7807 problem whole.

pub mod agent;
mod apps;
mod auth;
mod client;
mod deployments;
mod domains;
mod error;
mod events;
mod nodes;
mod orgs;
mod secrets;
mod tokens;
mod user;
mod webhooks;

pub use apps::{AppAction, Apps, UPLOAD_TIMEOUT};
pub use auth::Auth;
pub use client::{Answer, Client, ClientError, ListQuery};
pub use deployments::{Deployments, LogEvent, LogStream, FOLLOW_TIMEOUT};
pub use domains::Domains;
pub use error::ApiError;
pub use events::next_event;
pub use events::Events;
pub use nodes::Nodes;
pub use orgs::Orgs;
/// The HTTP status of an [`ApiError`] ([`ApiError::status`]).
pub use reqwest::StatusCode;
pub use secrets::Secrets;
pub use tokens::Tokens;
pub use user::User;
pub use webhooks::Webhooks;

impl Client {
    /// Apps, their actions and deployments, and archive uploads.
    pub fn apps(&self) -> Apps<'_> {
        Apps { client: self }
    }

    /// Deployments: one, an app's list, logs, rollback, promote.
    pub fn deployments(&self) -> Deployments<'_> {
        Deployments { client: self }
    }

    /// Nodes: list, register, drain, delete.
    pub fn nodes(&self) -> Nodes<'_> {
        Nodes { client: self }
    }

    /// Organizations, their members and invitations.
    pub fn orgs(&self) -> Orgs<'_> {
        Orgs { client: self }
    }

    /// The calling user's API tokens.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens { client: self }
    }

    /// Logging in (MFA included) and out.
    pub fn auth(&self) -> Auth<'_> {
        Auth { client: self }
    }

    /// The calling user.
    pub fn user(&self) -> User<'_> {
        User { client: self }
    }

    /// The audit trail.
    pub fn events(&self) -> Events<'_> {
        Events { client: self }
    }

    /// Custom domains: host names (and paths under them) routed to apps.
    pub fn domains(&self) -> Domains<'_> {
        Domains { client: self }
    }

    /// Secrets (values go in, metadata comes out).
    pub fn secrets(&self) -> Secrets<'_> {
        Secrets { client: self }
    }

    /// Webhooks, their deliveries, test pings and redeliveries.
    pub fn webhooks(&self) -> Webhooks<'_> {
        Webhooks { client: self }
    }
}
