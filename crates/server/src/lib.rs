//! The ShellWeGo control plane: the `/v1` HTTP API, its cross-cutting
//! behaviour (authentication, rate limits, problem documents, request ids,
//! metrics) and the server's life cycle (bootstrap, graceful shutdown).
//!
//! Layers: a handler parses its input, calls one service function and maps
//! the result to a view; services check authorization where they fetch data
//! (scoping every query to the caller's organizations); the store runs SQL.

pub mod auth;
pub mod bus;
pub mod certs;
pub mod controller;
pub mod ctx;
pub mod docs;
pub mod extract;
pub mod feed;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod mfa;
pub mod model;
pub mod objects;
pub mod openapi;
pub mod problem;
pub mod ratelimit;
pub mod routes;
mod secret_file;
pub mod serve;
pub mod service;
pub mod state;
pub mod steps;
pub mod vault;

pub use serve::{run, ServerConfig, Started};
pub use state::AppState;
