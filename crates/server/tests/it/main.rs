//! Integration tests of the control plane: one test binary (link once),
//! a real server per test, a real HTTP client.

mod kit;

mod auth;
mod errors;
mod lists;
mod openapi;
mod ops;
mod ratelimit;
mod stranger;
