//! Integration tests of the control plane: one test binary (link once),
//! a real server per test, a real HTTP client (`shellwego_testkit::server`),
//! fake agents (`shellwego_testkit::agent`).

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod apps;
mod auth;
mod deployments;
mod domains;
mod errors;
mod events;
mod exec;
mod hardening;
mod identity;
mod lists;
mod metrics;
mod networking;
mod node_join;
mod objects;
mod openapi;
mod ops;
mod ratelimit;
mod replicas;
mod secrets;
mod ssrf;
mod stranger;
mod webhooks;
