//! Builds `init/init.c`, the container instances' pid 1 (see
//! `src/init.rs`), as a static binary with the system C compiler
//! (`$CC`, else `cc`): `cc -static -Os -s`. Static, because it runs inside
//! root filesystems that may have no C library at all (a busybox image). The
//! result is embedded in the agent with `include_bytes!`.
//!
//! Without a working static C toolchain (Debian: `gcc` and `libc6-dev`;
//! Fedora: `glibc-static`) the agent still builds, with an empty init: the
//! container driver then reports itself unavailable, saying why, and the
//! other drivers work as before.
//!
//! `init/guestd.c`, the daemon that runs commands inside a microVM guest
//! (see `src/microvm/guest.rs`), is built the same way; without it the
//! microvm driver runs instances but not commands in them.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CC");
    build(
        "init/init.c",
        "sw-init",
        "the container init was not built (the container driver will be unavailable)",
    );
    build(
        "init/guestd.c",
        "sw-guestd",
        "the microVM guest daemon was not built (commands cannot be run in microVMs)",
    );
}

/// `cc -static` of `src` into `$OUT_DIR/<name>`; an empty file (and a
/// warning) when that fails.
fn build(src: &str, name: &str, consequence: &str) {
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let built = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg(src)
        .output();
    let why = match built {
        Ok(o) if o.status.success() => return,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run {cc}: {e}"),
    };
    println!(
        "cargo:warning={consequence}: \
         {cc} -static failed (install a static C library: Debian libc6-dev, Fedora glibc-static): {}",
        why.lines().last().unwrap_or("")
    );
    if let Err(e) = std::fs::write(&out, b"") {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
