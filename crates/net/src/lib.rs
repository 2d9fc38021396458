//! Network safety shared by the control plane, the ingress, the agent and
//! the image puller.
//!
//! * [`serve`]: HTTP serving with header/body/idle timeouts, connection
//!   caps (total and per client address) and RFC 7807 bodies for the
//!   errors hyper answers by itself.
//! * [`client_ip`]: the real client address behind trusted proxies.
//! * [`ssrf`]: the one guard every fetch of a user-given URL goes through.

pub mod client_ip;
pub mod serve;
pub mod ssrf;
