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

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=init/init.c");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("sw-init");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let built = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg("init/init.c")
        .output();
    let why = match built {
        Ok(o) if o.status.success() => return,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run {cc}: {e}"),
    };
    println!(
        "cargo:warning=the container init was not built (the container driver will be unavailable): \
         {cc} -static failed (install a static C library: Debian libc6-dev, Fedora glibc-static): {}",
        why.lines().last().unwrap_or("")
    );
    if let Err(e) = std::fs::write(&out, b"") {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
