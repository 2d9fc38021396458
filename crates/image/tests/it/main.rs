//! Integration tests. The registry tests run the real CNCF distribution
//! registry (Debian's `docker-registry`) and skip, saying so, when it is not
//! installed; the archive tests need nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod archive;
mod pull;
mod ssrf;
mod support;
