//! HTTPS: the certificates the ingress serves, chosen by SNI, swapped
//! without touching open connections.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Host name (lowercase; `*.example.com` for a wildcard) → certificate.
/// Cheap to clone; [`Certs::replace`] swaps the whole set at once, and a
/// handshake takes the certificate that was current when it started.
#[derive(Clone, Default)]
pub struct Certs {
    current: Arc<RwLock<Arc<CertMap>>>,
}

type CertMap = HashMap<String, Arc<CertifiedKey>>;

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts: Vec<String> = self.snapshot().keys().cloned().collect();
        hosts.sort();
        f.debug_tuple("Certs").field(&hosts).finish()
    }
}

impl Certs {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace every certificate.
    pub fn replace(&self, certs: HashMap<String, Arc<CertifiedKey>>) {
        let certs = certs
            .into_iter()
            .map(|(h, c)| (h.to_ascii_lowercase(), c))
            .collect();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certs);
    }

    fn snapshot(&self) -> Arc<CertMap> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The certificate for `host`: its own, else its parent's wildcard.
    #[must_use]
    pub fn lookup(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let map = self.snapshot();
        map.get(&host).cloned().or_else(|| {
            let (_, parent) = host.split_once('.')?;
            map.get(&format!("*.{parent}")).cloned()
        })
    }

    /// Whether a certificate answers for `host`.
    #[must_use]
    pub fn covers(&self, host: &str) -> bool {
        self.lookup(host).is_some()
    }
}

#[derive(Debug)]
struct Resolver(Certs);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI there is no host to choose by: the handshake fails.
        self.0.lookup(hello.server_name()?)
    }
}

/// The TLS configuration of an HTTPS listener serving `certs` (TLS 1.2
/// and 1.3, ALPN `h2` then `http/1.1`).
pub fn server_config(certs: Certs) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certs)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
