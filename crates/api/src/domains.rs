//! Custom domains: `/v1/domains`. A host name (or a wildcard `*.example.com`)
//! belongs to one organization; its routes send requests, by longest path
//! prefix, to an app.

use serde::{Deserialize, Serialize};
use shellwego_core::{Error, FieldError};
use utoipa::ToSchema;

use crate::{Pagination, Validate};

/// Where a domain's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsProvider {
    /// Ordered over ACME (Let's Encrypt, or the configured directory).
    #[default]
    Letsencrypt,
    /// Uploaded with `POST /v1/domains/{id}/certificate`.
    Custom,
}

impl TlsProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsProvider::Letsencrypt => "letsencrypt",
            TlsProvider::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsRequest {
    #[serde(default)]
    pub provider: TlsProvider,
    /// Default true.
    #[serde(default)]
    pub auto_renew: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CdnRequest {
    pub enabled: bool,
    /// How long a cached response is kept at most (`1h`).
    #[serde(default)]
    #[schema(example = "1h")]
    pub cache_ttl: Option<String>,
}

/// `POST /v1/domains`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainCreate {
    /// A host name (`api.example.com`, Unicode names are stored as
    /// punycode) or a wildcard one label deep (`*.example.com`).
    #[schema(example = "api.example.com")]
    pub hostname: String,
    #[schema(example = "app_2v8s9d2k1m")]
    pub app_id: String,
    /// The port in the instance requests go to; default: the app's
    /// `$PORT`.
    #[serde(default)]
    pub port: Option<u16>,
    /// The path prefix routed to the app (default `/`): the longest prefix
    /// of a host wins.
    #[serde(default)]
    #[schema(example = "/")]
    pub path: Option<String>,
    /// Cut the prefix off the path the app sees (default false).
    #[serde(default)]
    pub strip_prefix: Option<bool>,
    #[serde(default)]
    pub tls: Option<TlsRequest>,
    /// The response cache (not offered yet: `enabled: true` is a 422).
    #[serde(default)]
    pub cdn: Option<CdnRequest>,
    /// The web application firewall (not offered yet: true is a 422).
    #[serde(default)]
    pub waf_enabled: Option<bool>,
    /// Send `Strict-Transport-Security: max-age=31536000` on HTTPS
    /// answers (default false; browsers then refuse plain HTTP to the host
    /// for a year).
    #[serde(default)]
    pub hsts: Option<bool>,
}

/// `PATCH /v1/domains/{id}`: its routing (absent fields stay).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainUpdate {
    #[serde(default)]
    pub app_id: Option<String>,
    /// A port in the instance, or 0 for the app's `$PORT` again.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub strip_prefix: Option<bool>,
    #[serde(default)]
    pub tls: Option<TlsRequest>,
    #[serde(default)]
    pub cdn: Option<CdnRequest>,
    #[serde(default)]
    pub waf_enabled: Option<bool>,
    /// `Strict-Transport-Security` on HTTPS answers.
    #[serde(default)]
    pub hsts: Option<bool>,
}

/// `POST /v1/domains/{id}/certificate`: your own certificate for the
/// domain's host (all its routes). Checked, then kept with the key
/// encrypted; the key is never returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateUpload {
    /// PEM: the host's certificate (the chain may follow it here).
    #[schema(example = "-----BEGIN CERTIFICATE-----\n...")]
    pub certificate: String,
    /// PEM: its private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[schema(example = "-----BEGIN PRIVATE KEY-----\n...")]
    pub private_key: String,
    /// PEM: the intermediate certificates, each followed by its issuer.
    #[serde(default)]
    pub chain: Option<String>,
}

/// The most PEM text taken per field.
pub const MAX_PEM: usize = 64 * 1024;

impl Validate for CertificateUpload {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        for (f, v) in [
            ("certificate", Some(&self.certificate)),
            ("private_key", Some(&self.private_key)),
            ("chain", self.chain.as_ref()),
        ] {
            if v.is_some_and(|v| v.len() > MAX_PEM) {
                errs.push(FieldError::new(f, "too_long", "at most 64 KiB of PEM"));
            }
        }
        if self.certificate.trim().is_empty() {
            errs.push(FieldError::new(
                "certificate",
                "required",
                "the PEM certificate",
            ));
        }
        if self.private_key.trim().is_empty() {
            errs.push(FieldError::new(
                "private_key",
                "required",
                "the PEM private key",
            ));
        }
        crate::finish(errs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TlsCertificate {
    #[schema(example = "Let's Encrypt")]
    pub issuer: Option<String>,
    #[schema(example = "2025-06-01T00:00:00Z")]
    pub expires_at: Option<String>,
    pub auto_renew: bool,
}

/// The DNS record the domain needs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DnsValidation {
    #[serde(rename = "type")]
    #[schema(example = "CNAME")]
    pub kind: String,
    #[schema(example = "api.example.com")]
    pub name: String,
    #[schema(example = "ingress.shellwego.example")]
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DomainRouting {
    pub app_id: String,
    /// `null`: the app's `$PORT`.
    pub port: Option<u16>,
    #[schema(example = "/")]
    pub path: String,
    pub strip_prefix: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Domain {
    #[schema(example = "dom_2v8s9d2k1m")]
    pub id: String,
    #[schema(example = "api.example.com")]
    pub hostname: String,
    /// `pending` until the domain is verified, `active`, `error`,
    /// `expired`.
    #[schema(example = "pending")]
    pub status: String,
    /// `provisioning` (no certificate yet), `active`, `failed`.
    #[schema(example = "provisioning")]
    pub tls_status: String,
    pub tls_provider: TlsProvider,
    /// Why `tls_status` is `failed`.
    pub tls_error: Option<String>,
    pub tls_certificate: TlsCertificate,
    pub dns_validation: DnsValidation,
    pub routing: DomainRouting,
    pub cdn_enabled: bool,
    pub waf_enabled: bool,
    /// `Strict-Transport-Security` on its HTTPS answers.
    pub hsts: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DomainList {
    pub data: Vec<Domain>,
    pub pagination: Pagination,
}

/// A host name as stored: lowercase ASCII (IDNA punycode), no trailing
/// dot; a wildcard keeps its `*.`. Or what is wrong with it.
pub fn normalize_hostname(raw: &str) -> Result<String, String> {
    let s = raw.trim().trim_end_matches('.');
    if s.is_empty() {
        return Err("must be a host name such as api.example.com".into());
    }
    let (wild, rest) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if rest.contains('*') {
        return Err("a wildcard is only `*.` at the start, one label deep (*.example.com)".into());
    }
    if rest.parse::<std::net::IpAddr>().is_ok() || rest.starts_with('[') {
        return Err("must be a host name, not an IP address".into());
    }
    let ascii = idna::domain_to_ascii(rest)
        .map_err(|_| "is not a valid international domain name (IDNA)".to_string())?;
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err("must have at least two labels (example.com)".into());
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err("each label must be 1 to 63 characters".into());
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("labels may hold letters, digits and hyphens only".into());
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err("a label may not start or end with a hyphen".into());
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label cannot be all digits".into());
    }
    let out = if wild { format!("*.{ascii}") } else { ascii };
    if out.len() > 253 {
        return Err("at most 253 characters".into());
    }
    Ok(out)
}

/// A route's path prefix as stored: `/`, or `/a/b` without a trailing
/// slash. Or what is wrong with it.
pub fn normalize_path(raw: &str) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err("must start with / (such as /api)".into());
    }
    if raw.len() > 1024 {
        return Err("at most 1024 characters".into());
    }
    if raw.contains(['?', '#', '%', '\\']) || raw.bytes().any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err("a plain path: no query, fragment, escapes, spaces or backslashes".into());
    }
    let trimmed = raw.trim_end_matches('/');
    if trimmed
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("no empty, `.` or `..` segments".into());
    }
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

fn check_common(
    errs: &mut Vec<FieldError>,
    path: Option<&str>,
    port: Option<u16>,
    cdn: Option<&CdnRequest>,
) {
    if let Some(p) = path {
        if let Err(m) = normalize_path(p) {
            errs.push(FieldError::new("path", "invalid_value", m).with_value(p.to_string()));
        }
    }
    if port == Some(0) {
        errs.push(FieldError::new("port", "out_of_range", "1 to 65535"));
    }
    if let Some(c) = cdn {
        if let Some(ttl) = &c.cache_ttl {
            if shellwego_core::units::parse_duration(ttl).is_none() {
                errs.push(
                    FieldError::new("cdn.cache_ttl", "invalid_value", "a duration such as 1h")
                        .with_value(ttl.clone()),
                );
            }
        }
    }
}

impl Validate for DomainCreate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if let Err(m) = normalize_hostname(&self.hostname) {
            errs.push(
                FieldError::new("hostname", "invalid_value", m)
                    .with_value(self.hostname.chars().take(300).collect::<String>()),
            );
        }
        if self.app_id.is_empty() {
            errs.push(FieldError::new("app_id", "required", "the app to route to"));
        }
        check_common(
            &mut errs,
            self.path.as_deref(),
            self.port,
            self.cdn.as_ref(),
        );
        crate::finish(errs)
    }
}

impl Validate for DomainUpdate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        check_common(&mut errs, self.path.as_deref(), None, self.cdn.as_ref());
        crate::finish(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(
            normalize_hostname("API.Example.COM.").unwrap(),
            "api.example.com"
        );
        assert_eq!(
            normalize_hostname("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_hostname("*.Example.com").unwrap(),
            "*.example.com"
        );
        for bad in [
            "",
            "localhost",
            "a..b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "1.2.3.4",
            "a.*.com",
            "*.com",
            "x.123",
            "[::1]",
        ] {
            assert!(normalize_hostname(bad).is_err(), "{bad}");
        }
        assert!(normalize_hostname(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("/api/").unwrap(), "/api");
        assert_eq!(normalize_path("/a/b").unwrap(), "/a/b");
        for bad in ["", "api", "/a//b", "/a/../b", "/a?x", "/a b", "/%2e"] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }
}
