//! The error shape of the proxy: which side failed, and whether a retry is
//! safe.
//!
//! Every failure on the request path is a [`ProxyError`]. It is deliberately
//! small: a [`Phase`] (the client, the ingress itself, or a backend), a flag
//! saying whether the request can be retried on another backend without
//! risk of doing it twice, a short static description and the underlying
//! cause. The phase decides the status the client sees and the level it is
//! logged at; bodies are never logged.

use std::error::Error as StdError;
use std::fmt;

use http::StatusCode;

/// A boxed error, as hyper and hyper-util hand them around.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Which side of the proxy a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The client: a request we cannot route or forward, an upload that
    /// broke off, a connection that went away.
    Downstream,
    /// The ingress itself: a bug or a resource problem on our side.
    Ingress,
    /// A backend instance: a refused or timed-out connection, a reset, a
    /// malformed or unexpected response.
    Upstream,
}

impl Phase {
    /// The lowercase name used in logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Downstream => "downstream",
            Phase::Ingress => "ingress",
            Phase::Upstream => "upstream",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure while proxying one request.
#[derive(Debug)]
pub struct ProxyError {
    phase: Phase,
    retry_safe: bool,
    what: &'static str,
    source: Option<BoxError>,
    /// The backend did not answer in time (a 504).
    timed_out: bool,
}

impl ProxyError {
    /// A failure of the given phase. `retry_safe` must only be true when
    /// nothing of the request reached the backend.
    #[must_use]
    pub fn new(phase: Phase, retry_safe: bool, what: &'static str) -> Self {
        Self {
            phase,
            retry_safe,
            what,
            source: None,
            timed_out: false,
        }
    }

    /// The backend did not send a response head within the ingress's
    /// upstream timeout: a 504.
    #[must_use]
    pub fn upstream_timeout() -> Self {
        Self {
            timed_out: true,
            ..Self::new(
                Phase::Upstream,
                false,
                "the instance did not answer in time",
            )
        }
    }

    /// Whether this is [`ProxyError::upstream_timeout`].
    #[must_use]
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Attach the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Connecting to a backend failed (refused, unreachable, timed out):
    /// nothing was sent, so another backend may be tried.
    pub(crate) fn upstream_connect(source: impl Into<BoxError>) -> Self {
        Self::new(Phase::Upstream, true, "could not connect to the instance").with_source(source)
    }

    /// Which side failed.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the request can be sent to another backend: true only when
    /// no byte of it was sent.
    #[must_use]
    pub fn retry_safe(&self) -> bool {
        self.retry_safe
    }

    /// The short description, without the cause.
    #[must_use]
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The status the client gets for this failure.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self.phase {
            Phase::Downstream => StatusCode::BAD_REQUEST,
            Phase::Ingress => StatusCode::INTERNAL_SERVER_ERROR,
            Phase::Upstream if self.timed_out => StatusCode::GATEWAY_TIMEOUT,
            Phase::Upstream => StatusCode::BAD_GATEWAY,
        }
    }

    /// The description followed by the whole chain of causes, for logs.
    #[must_use]
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.phase, self.what)
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Displays an error and its causes, `: `-separated (see
/// [`ProxyError::chain`]).
pub struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// The error a forwarded request body yields when the client's upload
/// breaks off. Recognised in the upstream client's error chain so the
/// failure is blamed on the client, not on the backend.
#[derive(Debug)]
pub(crate) struct DownstreamBodyError(pub(crate) BoxError);

impl fmt::Display for DownstreamBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reading the client's request body failed")
    }
}

impl StdError for DownstreamBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// Whether `err`'s chain contains a [`DownstreamBodyError`].
pub(crate) fn caused_by_downstream_body(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<DownstreamBodyError>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_phase() {
        assert_eq!(
            ProxyError::new(Phase::Upstream, false, "x").status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::new(Phase::Downstream, false, "x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ProxyError::new(Phase::Ingress, false, "x").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn chain_shows_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ProxyError::upstream_connect(io);
        assert!(e.retry_safe());
        assert_eq!(
            e.chain().to_string(),
            "upstream: could not connect to the instance: refused"
        );
    }
}
