//! Images and archives for the node agent: pull an OCI image from a registry,
//! verify it by digest, and unpack it into a root filesystem shared read-only
//! by every instance of that digest; and unpack untrusted tarballs safely.
//!
//! # Design
//!
//! * **References** ([`Reference`]) are parsed like docker does:
//!   `[registry/]repo[:tag][@sha256:…]`, `docker.io` and `library/` implied
//!   for short names, `latest` implied when neither tag nor digest is given.
//! * **Only allowed addresses are contacted**: the store's HTTP client is
//!   made by the SSRF guard it is given ([`shellwego_net::ssrf::Guard`]), so
//!   registries, their token services and the blob storage they redirect to
//!   are reached only on addresses the operator's policy allows (checked
//!   after DNS, on every redirect and on every new connection).
//! * **Registry protocol** ([`ImageStore::pull`]): OCI distribution v2 over
//!   HTTPS (plain HTTP only for hosts listed in
//!   [`PullOptions::insecure_registries`]). Anonymous, basic and bearer-token
//!   auth (the `WWW-Authenticate: Bearer realm=…` challenge is answered by
//!   fetching a token, with the basic credentials if any). Manifests may be
//!   OCI or Docker schema 2, single-platform or an index / manifest list, in
//!   which case the host's `linux/<arch>` entry is chosen.
//! * **Trust comes from digests only.** The manifest bytes are hashed by us:
//!   they must match the digest of the reference (when pulling by digest), the
//!   index entry that named them, or the registry's `Docker-Content-Digest`
//!   header. The computed digest is the one reported and pinned. Every blob
//!   (config, layers) is streamed into a temporary file while hashed, with a
//!   size limit, and only renamed into the cache when the digest matches; a
//!   mismatch leaves nothing behind. Cached blobs are hashed again while they
//!   are unpacked, so a corrupted cache is noticed (and the blob dropped).
//! * **Cache layout** under the store root:
//!   `blobs/sha256/<hex>` (manifests, indexes, configs, layers, by digest),
//!   `rootfs/<manifest-hex>/` (unpacked image), `tmp/` (work in progress).
//!   A root filesystem is unpacked into `tmp/` and renamed into place in one
//!   step, so it is either complete or absent. Pulls of the same manifest
//!   digest in one process are serialised by a per-digest lock (the second
//!   one finds the rootfs and downloads nothing); separate processes sharing a
//!   root stay correct through the atomic renames (the loser discards its
//!   copy). A pull by digest whose manifest is cached needs no network.
//! * **Layers** are applied in order by [`unpack`]'s unpacker with whiteouts:
//!   `.wh.<name>` deletes `<name>` from lower layers and `.wh..wh..opq` makes
//!   its directory opaque. Ownership and modes (setuid included) are kept.
//! * **Unpacking is confined to the destination**: no absolute paths, no
//!   `..` escaping it, hard links only to files already inside, and symlinks
//!   already in the destination are resolved *within* it (as if it were the
//!   root), never followed out of it: an archive with `a -> /etc` then
//!   `a/passwd` writes `<dest>/etc/passwd`. Symlinks themselves are stored
//!   verbatim (a rootfs may well contain `/etc/localtime -> /usr/share/…`);
//!   whoever reads the tree later must not follow them on the host.
//! * [`ImageStore::gc`] removes root filesystems and blobs not reachable from
//!   the manifest digests the caller still needs (and never one a pull in this
//!   process is using).
//! * [`push`] is a small real OCI push client (`POST` upload, `PUT` with
//!   digest, `PUT` manifest), used by tests to build images.
//!
//! Not supported: zstd layers, non-sha256 digests, Docker schema 1
//! manifests, extended attributes (file capabilities) in layers, registries
//! with a TLS certificate not issued by a public CA.

mod digest;
mod manifest;
mod reference;
mod registry;
mod store;

pub mod push;
pub mod unpack;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use reference::Reference;
pub use store::{ImageStore, PullOptions, PulledImage};
pub use unpack::{unpack_archive, UnpackOptions, UnpackStats};

/// Basic-auth credentials for a registry (also sent to its token service).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What an image says about how to run it (the `config` of the OCI image
/// configuration). Empty vectors and `None` mean "not set by the image".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings, in image order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Port numbers from `ExposedPorts` (`"80/tcp"`, `"53/udp"`), sorted and
    /// deduplicated; the protocol is not kept.
    pub exposed_ports: Vec<u16>,
}

/// An OS/architecture pair as used in image indexes (`linux`, `amd64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<this machine's architecture in OCI spelling>`.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong pulling, pushing or unpacking.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },

    /// The registry could not be reached (DNS, TCP, TLS). When `https` is true
    /// this is also what a plain-HTTP registry looks like: those must be
    /// listed in `insecure_registries`.
    #[error("cannot connect to registry {registry} over {}: {detail}{}", scheme_name(*.https), plain_http_hint(*.https))]
    Connect {
        registry: String,
        https: bool,
        detail: String,
    },

    /// The SSRF guard refused the address of the registry, or of a URL it
    /// sent us to (a token service, blob storage).
    #[error("refusing to contact {url} for registry {registry}: {reason}")]
    Refused {
        registry: String,
        url: String,
        reason: shellwego_net::ssrf::SsrfError,
    },

    /// A transfer failed after the connection was made.
    #[error("HTTP error talking to {url}: {detail}")]
    Http { url: String, detail: String },

    #[error("registry {registry} refused our credentials: {detail}")]
    Unauthorized { registry: String, detail: String },

    #[error("not found in registry: {what}")]
    NotFound { what: String },

    #[error("registry answered {status} for {url}: {detail}")]
    Registry {
        url: String,
        status: u16,
        detail: String,
    },

    /// Content did not hash to the digest that named it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },

    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType { what: String, media_type: String },

    #[error("no image for platform {wanted} in the index (available: {})", available.join(", "))]
    NoMatchingPlatform {
        wanted: String,
        available: Vec<String>,
    },

    #[error("invalid manifest or image configuration: {detail}")]
    InvalidManifest { detail: String },

    /// An archive entry that would escape the destination or is otherwise
    /// refused. `entry` is the path as written in the archive.
    #[error("refusing archive entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },

    #[error("archive exceeds the limit of {limit} {what}")]
    LimitExceeded { what: &'static str, limit: u64 },

    #[error("invalid archive: {detail}")]
    InvalidArchive { detail: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn scheme_name(https: bool) -> &'static str {
    if https {
        "HTTPS"
    } else {
        "plain HTTP"
    }
}

fn plain_http_hint(https: bool) -> &'static str {
    if https {
        " (a registry that only speaks plain HTTP must be listed in insecure_registries)"
    } else {
        ""
    }
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let context = context.into();
        move |source| ImageError::Io { context, source }
    }
}
