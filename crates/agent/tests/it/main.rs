//! The agent's integration tests, in one test binary (STYLE: one per
//! crate, so the crate is linked once): the drivers against the real host
//! (runc, QEMU, cgroups), the sweep of orphans, and the conformance suite
//! every driver runs. `support` is their one shared harness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod container;
mod logs;
mod microvm;
mod orphans;
mod support;
