//! Image references, parsed and normalised the way docker does.

use std::fmt;

use crate::digest::Digest;
use crate::ImageError;

/// The docker hub, as written in normalised references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where the docker hub's registry API actually lives.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed `[registry/]repository[:tag][@sha256:…]`.
///
/// `nginx` is `docker.io/library/nginx:latest`; `ghcr.io/a/b@sha256:…` has a
/// digest and no tag; `localhost:5000/app:v1` names the registry
/// `localhost:5000` (the first component is a registry when it contains a `.`
/// or a `:`, is `localhost`, or has capitals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, …
    pub registry: String,
    /// `library/nginx`, `org/app`, …
    pub repository: String,
    /// `None` only when a digest is given without a tag.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        let bad = |reason: &str| ImageError::InvalidReference {
            reference: reference.to_owned(),
            reason: reason.to_owned(),
        };
        if reference.is_empty() {
            return Err(bad("empty reference"));
        }
        if reference.trim() != reference || reference.contains(char::is_whitespace) {
            return Err(bad("contains whitespace"));
        }

        let (name_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => {
                let d = Digest::parse(d).map_err(|e| bad(&e.to_string()))?;
                (n, Some(d.to_string()))
            }
            None => (reference, None),
        };

        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i..].contains('/') => {
                (&name_tag[..i], Some(name_tag[i + 1..].to_owned()))
            }
            _ => (name_tag, None),
        };
        if let Some(t) = &tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }
        if name.is_empty() {
            return Err(bad("missing repository name"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("name longer than 255 characters"));
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                validate_registry(first).map_err(|r| bad(&r))?;
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        validate_repository(&repository).map_err(|r| bad(&r))?;

        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) the registry API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest if there is one, else the tag.
    pub(crate) fn manifest_ref(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d,
            (None, Some(t)) => t,
            (None, None) => "latest",
        }
    }
}

/// `registry/repository[:tag][@digest]`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-';
    match tag.chars().next() {
        None => Err("empty tag".to_owned()),
        Some(first) if !(first.is_ascii_alphanumeric() || first == '_') => Err(format!(
            "tag {tag:?} must start with a letter, digit or underscore"
        )),
        Some(_) if tag.len() > MAX_TAG_LEN => Err("tag longer than 128 characters".to_owned()),
        Some(_) if !tag.chars().all(ok_char) => Err(format!(
            "tag {tag:?} may only contain letters, digits, '_', '.' and '-'"
        )),
        Some(_) => Ok(()),
    }
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let err = || format!("invalid registry host {registry:?}");
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        // [ipv6]:port
        let (addr, after) = rest.split_once(']').ok_or_else(err)?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(err());
        }
        match after {
            "" => return Ok(()),
            p => (None, Some(p.strip_prefix(':').ok_or_else(err)?)),
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(format!("invalid port in registry {registry:?}"));
        }
    }
    if let Some(h) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if !h.split('.').all(label_ok) {
            return Err(err());
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` per path component.
fn validate_repository(repo: &str) -> Result<(), String> {
    for comp in repo.split('/') {
        if comp.is_empty() {
            return Err("empty path component in repository name".to_owned());
        }
        if comp.chars().any(|c| c.is_ascii_uppercase()) {
            return Err("repository name must be lowercase".to_owned());
        }
        let bytes = comp.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
            return Err("empty path component in repository name".to_owned());
        };
        if !alnum(first) || !alnum(last) {
            return Err(format!(
                "repository component {comp:?} must start and end with a lowercase letter or digit"
            ));
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if alnum(b) {
                i += 1;
                continue;
            }
            let sep_len = bytes[i..].iter().take_while(|b| !alnum(**b)).count();
            let sep = &comp[i..i + sep_len];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-');
            if !ok {
                return Err(format!(
                    "invalid character sequence {sep:?} in repository component {comp:?}"
                ));
            }
            i += sep_len;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        let r = p("nginx");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/nginx");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");

        assert_eq!(
            p("nginx:alpine").to_string(),
            "docker.io/library/nginx:alpine"
        );
        assert_eq!(
            p("bitnami/redis:7").to_string(),
            "docker.io/bitnami/redis:7"
        );
        assert_eq!(
            p("docker.io/nginx").to_string(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            p("index.docker.io/library/nginx:1").to_string(),
            "docker.io/library/nginx:1"
        );
    }

    #[test]
    fn registries_with_ports_and_hosts() {
        let r = p("localhost:5000/app:v1.2");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "app");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.api_host(), "localhost:5000");

        let r = p("127.0.0.1:5000/team/app");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("latest"));

        let r = p("ghcr.io/org/sub/app:main");
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "org/sub/app");

        assert_eq!(p("localhost/app").registry, "localhost");
        assert_eq!(p("[::1]:5000/app").registry, "[::1]:5000");
        // No dot, colon or "localhost": a docker hub user name.
        assert_eq!(p("myuser/app").registry, "docker.io");
    }

    #[test]
    fn digests() {
        let r = p(&format!("nginx@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/nginx@{D}"));

        let r = p(&format!("host:1/a/b:t@{D}"));
        assert_eq!(r.registry, "host:1");
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("host:1/a/b:t@{D}"));
    }

    #[test]
    fn repository_separators() {
        p("a.b/c_d__e---f.g:1");
        p("a1/b-2");
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            " nginx",
            "nginx:",
            ":tag",
            "Nginx",
            "docker.io/Library/nginx",
            "nginx:-bad",
            "nginx:a/b",
            "nginx@sha256:abc",
            "nginx@md5:2cf24dba5fb0a30e26e83b2ac5b9e29e",
            "a//b",
            "a/",
            "/a",
            "a..b",
            "a_-b",
            "-a",
            "host:99999/app",
            "host:/app",
            "ho_st.io/app",
            "a b",
            &format!("nginx:{}", "x".repeat(129)),
            &format!("{}/x", "a".repeat(256)),
        ] {
            match Reference::parse(bad) {
                Err(ImageError::InvalidReference { reference, reason }) => {
                    assert_eq!(reference, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }

    /// The control plane judges an image's registry with
    /// `shellwego_net::ssrf::image_registry` (it does not depend on this
    /// crate): both must name the same registry.
    #[test]
    fn the_ssrf_guard_sees_the_same_registry() {
        for r in [
            "nginx",
            "nginx:alpine",
            "bitnami/redis:7",
            "docker.io/nginx",
            "index.docker.io/library/nginx",
            "ghcr.io/org/app:v1",
            "127.0.0.1:5000/x",
            "localhost/x",
            "localhost:5000/team/app:v1",
            "Registry/x",
            "registry:5000/app",
            &format!("registry.example.com/app@{D}"),
            &format!("org/app@{D}"),
        ] {
            let registry = p(r).registry;
            let seen = shellwego_net::ssrf::image_registry(r).unwrap_or(DOCKER_HUB);
            assert_eq!(seen, registry, "{r}");
        }
    }
}
