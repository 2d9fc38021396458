//! Certificates: an uploaded chain and key checked before they are kept
//! (each failure a 400 naming the field and what is wrong), and the
//! [`rustls::sign::CertifiedKey`] the ingress serves from them.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use shellwego_core::time::{from_micros, Timestamp};
use shellwego_core::{Error, FieldError};

/// The associated data of a host's sealed private key.
pub fn key_aad(hostname: &str) -> String {
    format!("cert-key:{hostname}")
}

/// A chain and key that passed [`check`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// The leaf then its chain, as PEM.
    pub chain_pem: String,
    /// The private key as PEM (what was given, re-encoded).
    pub key_pem: String,
    /// The issuer's organization (else its common name, else the whole DN).
    pub issuer: String,
    pub not_after: Timestamp,
    /// The leaf's serial number, hex.
    pub serial: String,
}

fn bad(field: &str, message: impl Into<String>) -> Error {
    Error::invalid(vec![FieldError::new(field, "invalid_value", message)])
}

fn pem_certs(field: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    certs.map_err(|e| bad(field, format!("not PEM certificates: {e}")))
}

/// The name of an X.509 name's organization, else its CN, else all of it.
fn display_name(n: &x509_parser::x509::X509Name<'_>) -> String {
    n.iter_organization()
        .chain(n.iter_common_name())
        .find_map(|a| a.as_str().ok().map(str::to_string))
        .unwrap_or_else(|| n.to_string())
}

/// Check an upload for `hostname` (`*.x` for a wildcard) at `now`: the
/// certificate parses, is valid now and covers the host; the key parses
/// and matches it; the chain is in order (each certificate issued by the
/// next).
pub fn check(
    hostname: &str,
    certificate: &str,
    private_key: &str,
    chain: Option<&str>,
    now: Timestamp,
) -> Result<Checked, Error> {
    let mut certs = pem_certs("certificate", certificate)?;
    if certs.is_empty() {
        return Err(bad(
            "certificate",
            "no certificate found: paste the PEM (-----BEGIN CERTIFICATE-----)",
        ));
    }
    if let Some(c) = chain {
        certs.extend(pem_certs("chain", c)?);
    }
    let key = PrivateKeyDer::from_pem_slice(private_key.as_bytes()).map_err(|_| {
        bad(
            "private_key",
            "not a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC: -----BEGIN PRIVATE KEY-----)",
        )
    })?;
    let mut parsed = Vec::with_capacity(certs.len());
    for (i, c) in certs.iter().enumerate() {
        let field = if i == 0 { "certificate" } else { "chain" };
        let (_, x) = x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| bad(field, format!("certificate {} does not parse: {e}", i + 1)))?;
        parsed.push(x);
    }
    let leaf = &parsed[0];
    let secs = shellwego_core::time::to_micros(now) / 1_000_000;
    let not_after = leaf.validity().not_after.timestamp();
    let not_before = leaf.validity().not_before.timestamp();
    if not_after <= secs {
        return Err(bad(
            "certificate",
            format!(
                "expired at {}; upload a current one",
                leaf.validity().not_after
            ),
        ));
    }
    if not_before > secs {
        return Err(bad(
            "certificate",
            format!("not valid before {}", leaf.validity().not_before),
        ));
    }
    for i in 0..parsed.len().saturating_sub(1) {
        if parsed[i].issuer() != parsed[i + 1].subject() {
            return Err(bad(
                "chain",
                format!(
                    "out of order: certificate {} ({}) is not the issuer of certificate {} (issued by {}); list the leaf first, then each issuer",
                    i + 2,
                    display_name(parsed[i + 1].subject()),
                    i + 1,
                    display_name(parsed[i].issuer()),
                ),
            ));
        }
    }
    // The host: the certificate must name it (a wildcard domain: a name
    // one label under it).
    let probe = match hostname.strip_prefix("*.") {
        Some(parent) => format!("shellwego-wildcard-check.{parent}"),
        None => hostname.to_string(),
    };
    let name = ServerName::try_from(probe.as_str())
        .map_err(|_| bad("certificate", format!("{hostname} is not a name to check")))?;
    let ee = webpki::EndEntityCert::try_from(&certs[0]).map_err(|e| {
        bad(
            "certificate",
            format!("not a usable server certificate: {e}"),
        )
    })?;
    if ee.verify_is_valid_for_subject_name(&name).is_err() {
        return Err(bad(
            "certificate",
            format!("does not cover {hostname} (its subject alternative names must include it)"),
        ));
    }
    let provider = rustls::crypto::ring::default_provider();
    match CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(bad(
                "private_key",
                "does not match the certificate's public key",
            ))
        }
        Err(e) => {
            return Err(bad(
                "private_key",
                format!("cannot be used (RSA, ECDSA P-256/P-384 or Ed25519 keys are): {e}"),
            ))
        }
    }
    let mut chain_pem = String::new();
    for c in &certs {
        chain_pem.push_str(&pem("CERTIFICATE", c.as_ref()));
    }
    let label = match &key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    Ok(Checked {
        chain_pem,
        key_pem: pem(label, key.secret_der()),
        issuer: display_name(leaf.issuer()),
        not_after: from_micros(not_after.saturating_mul(1_000_000)),
        serial: leaf.raw_serial_as_string().replace(':', ""),
    })
}

/// PEM of `der` under `label`.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What the ingress serves from a kept chain and key.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| e.to_string())
}
