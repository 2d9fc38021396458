//! The SSRF guard: every fetch of a URL a user gave us (app sources,
//! registries, and later webhooks, remote manifests, git) goes through it.
//! (Being written: see the SSRF section of docs/operations.md.)

use ipnet::IpNet;
use serde::Deserialize;

/// The operator's `[ssrf]` config section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsrfConfig {
    /// Networks that may be fetched from although they are private
    /// (a private registry, an internal artifact server).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Allow every private, loopback and link-local target (self-hosted
    /// setups where everything is internal, and tests). Metadata
    /// addresses stay refused unless listed in `allow`.
    #[serde(default)]
    pub allow_private_targets: bool,
}
