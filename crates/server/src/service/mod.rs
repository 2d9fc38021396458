//! Domain operations behind the handlers. Each one scopes what it reads to
//! what the caller may see, so no handler can forget to.

pub mod agent_channel;
pub mod apps;
pub mod deployments;
pub mod events;
pub mod health;
pub mod identity;
pub mod nodes;
pub mod orgs;
pub mod tokens;
