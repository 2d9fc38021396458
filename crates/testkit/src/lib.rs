//! ShellWeGo's test kit: one way to start the system in a test.
//!
//! - [`server::TestServer`] (feature `server`, on by default): the control
//!   plane in-process on `127.0.0.1:0` with a store of its own, on SQLite or
//!   PostgreSQL ([`both_backends!`] runs a test on each), and a real HTTP
//!   client. Each test's database is a copy of a migrated template
//!   ([`db`]), so it costs a copy, not the migrations.
//! - [`agent::FakeAgent`]: a node agent whose reports are what the test
//!   says, typed over the agent-channel types of `shellwego_api`.
//! - [`platform::Platform`]: the real `shellwego` binary as child
//!   processes (`up`, `server`, `agent`, `router`) on free ports, with
//!   their data dir and log file, waited for until ready, stopped with
//!   SIGTERM or SIGKILL, killed when dropped, their log tail printed when a
//!   test fails. [`api::Api`] talks JSON to one (async); the platform's
//!   own methods do so blocking.
//! - [`netns::Lan`]: a test LAN of network namespaces on a bridge, so that
//!   agents run on hosts of their own ([`platform::Proc::shellwego_in`])
//!   and are reached across a (virtual) network rather than loopback.
//! - [`fixtures`]: the sample app, busybox root filesystems, archives, and
//!   ready-made organizations and apps.
//!
//! Used as a dev-dependency by the crates' integration tests, and by the
//! CLI's `bench` feature (`shellwego bench …`), which starts the platform
//! the same way.

// A test kit: a panic is how a test fails, and the kit's panics name what
// was expected. What the benchmarks call returns errors instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod agent;
pub mod api;
#[cfg(feature = "server")]
pub mod db;
pub mod fixtures;
pub mod http;
pub mod netns;
pub mod platform;
#[cfg(feature = "server")]
pub mod server;

pub use platform::{free_port, wait_for_file};
#[cfg(feature = "server")]
pub use shellwego_store::Backend;
