//! What the CLI's tests share on top of `shellwego_testkit`: the binary
//! under test, the CLI as an assertion on a platform, and readers of its
//! tables.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use serde_json::Value;
use shellwego_testkit::platform::{run, Out, Platform};

/// The `shellwego` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_shellwego");

/// The binary under test, as a path.
pub(crate) fn bin() -> &'static Path {
    Path::new(BIN)
}

/// The CLI as a platform's admin ([`Platform::cli`]), asserting how it ends.
pub(crate) trait Cli {
    /// Run; it must succeed (else the failure, with the platform's log).
    fn ok(&self, args: &[&str]) -> Out;
    /// Run; it must fail.
    fn fails(&self, args: &[&str]) -> Out;
    /// Run with `-o json`; it must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value;
}

impl Cli for Platform {
    fn ok(&self, args: &[&str]) -> Out {
        let o = run(&mut self.cli(args));
        assert!(
            o.ok,
            "{args:?} failed ({:?}):\nstdout: {}\nstderr: {}\n{}",
            o.code,
            o.stdout,
            o.stderr,
            self.log()
        );
        o
    }

    fn fails(&self, args: &[&str]) -> Out {
        let o = run(&mut self.cli(args));
        assert!(!o.ok, "{args:?} should have failed:\n{}", o.stdout);
        o
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.ok(&a).stdout;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }
}

/// The value of `KEY  value` in a fields table.
pub(crate) fn field(table: &str, key: &str) -> String {
    table
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .filter(|rest| rest.starts_with("  "))
                .map(|rest| rest.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in:\n{table}"))
}

/// The row of a table whose first column is `first`, split on runs of
/// two or more spaces.
pub(crate) fn row(table: &str, first: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().is_some_and(|c| c == first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{table}"))
}

/// `up`'s app `a` is running with `n` healthy replicas.
pub(crate) fn healthy(a: &Value, n: usize) -> bool {
    a["status"] == "running" && a["replicas"]["healthy"] == n as i64
}

/// The ids of an app's instances, sorted.
pub(crate) fn instance_ids(a: &Value) -> Vec<String> {
    let mut v: Vec<String> = a["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}
