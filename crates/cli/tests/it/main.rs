//! Integration tests of the `shellwego` binary: one test binary (link once).
//! `binary`: the server process (start-up, bootstrap, logs, signals, --help);
//! `client`: the CLI client commands against a real server.

mod binary;
mod client;
mod cluster;
mod platform;
