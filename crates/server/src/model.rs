//! The records services hand to handlers (today the store's rows; the
//! typed domain model of `shellwego_core` replaces them). Handlers name
//! them through here, never through the store crate: a handler has no
//! business with the store.

pub use shellwego_store::apps::{App, Instance};
pub use shellwego_store::deployments::{Deployment, LogLine};
pub use shellwego_store::events::Event;
pub use shellwego_store::invitations::Invitation;
pub use shellwego_store::list::PageInfo;
pub use shellwego_store::nodes::{Node, NodeLoad};
pub use shellwego_store::orgs::{Member, Membership, OrgUsage, Organization};
pub use shellwego_store::service_accounts::ServiceAccount;
pub use shellwego_store::tokens::Token;
pub use shellwego_store::webhooks::{Delivery, Webhook};
