//! `sw-init`: our pid 1 for container instances, with tini's default
//! behaviour. The source is `crates/agent/init/init.c`; `build.rs` compiles
//! it with the system C compiler as a **static** binary (`cc -static -Os
//! -s`, about 700 KB with glibc) and it is embedded here, so the agent stays
//! one file and the init runs in any root filesystem, libc or not.
//!
//! # What it does
//!
//! `sw-init -- app argv…` runs the app as its only direct child (argv\[0\]
//! looked up in `PATH`), forwards every catchable signal it receives (TERM,
//! INT, HUP, QUIT, USR1, USR2, WINCH…) to that child, reaps every process
//! re-parented to it (pid 1 of the container's pid namespace; a child
//! subreaper otherwise), and exits with the app's exit code, or 128 + the
//! signal that killed it. So `runc kill <id> TERM` stops an app that has no
//! SIGTERM handler (as pid 1 the app itself would ignore it), and no zombie
//! is left behind. When fd 3 is open at its start, it writes how the app
//! ended there (`exited <code>` or `killed <signal>`) before exiting, and
//! the app never inherits that fd: the container driver passes a file of
//! the bundle with `runc run --preserve-fds 1`, which is how it knows the
//! exit code of a detached container. An app that cannot be started is
//! reported on stderr (the instance's log) and ends with 127 (not found) or
//! 126 (not executable), as with a shell.
//!
//! # Why C, and why not in the microvm guest
//!
//! A static Rust binary would need a separate cargo build with
//! `+crt-static` from `build.rs` (a nested cargo, its own target dir) for a
//! program of ~120 lines of syscalls; the C compiler is already required
//! (SQLite is built from source). `musl` is not available here.
//!
//! The microvm guest keeps its own pid 1, a generated busybox script
//! (`microvm.rs`): it has to mount `/proc` and `/dev`, load modules, set up
//! the network and listen on the control serial port, and it already gives
//! what `sw-init` gives a container: the app is its child, not pid 1 (so
//! SIGTERM has its default effect), and busybox `wait` reaps every child
//! re-parented to it while waiting for the app, whose code it reports.
//!
//! # On the host
//!
//! [`install`] writes the binary once per content to
//! `<dir>/sw-init-<sha256 prefix>` (mode 0755, written to a temporary name
//! and renamed, so a running container never sees a half-written file and
//! two agent versions never overwrite each other's); the container driver
//! bind-mounts it read-only at [`IN_CONTAINER`].

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::Digest;

/// The static init, as built by `build.rs` (empty when it could not be).
pub const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sw-init"));

/// Where the init is mounted inside a container (the microvm guest's own
/// `/.shellwego/init` is a different file in a different place).
pub const IN_CONTAINER: &str = "/.shellwego/sw-init";

/// The file descriptor on which the init reports how the app ended.
pub const STATUS_FD: u32 = 3;

/// How the app ended, as the init reported it on [`STATUS_FD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Killed(i32),
}

/// Parse what the init wrote (`exited <code>` / `killed <signal>`).
pub fn parse_status(text: &str) -> Option<Ended> {
    let (how, n) = text.trim().split_once(' ')?;
    let n: i32 = n.trim().parse().ok()?;
    match how {
        "exited" => Some(Ended::Exited(n)),
        "killed" => Some(Ended::Killed(n)),
        _ => None,
    }
}

/// The init on the host, under `dir`: written when missing.
pub fn install(dir: &Path) -> anyhow::Result<PathBuf> {
    if BINARY.is_empty() {
        bail!(
            "this agent was built without its container init (building it needs a static C \
             library: Debian libc6-dev, Fedora glibc-static)"
        );
    }
    let digest = sha2::Sha256::digest(BINARY);
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("sw-init-{name}"));
    let ready = fs::metadata(&path).is_ok_and(|m| {
        m.is_file() && m.len() == BINARY.len() as u64 && m.permissions().mode() & 0o111 != 0
    });
    if ready {
        return Ok(path);
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".sw-init-{name}.{}", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(BINARY)?;
        f.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("cannot write the container init {}", path.display()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_init_writes() {
        assert_eq!(parse_status("exited 3\n"), Some(Ended::Exited(3)));
        assert_eq!(parse_status("killed 9\n"), Some(Ended::Killed(9)));
        assert_eq!(parse_status(""), None);
        assert_eq!(parse_status("exited x"), None);
        assert_eq!(parse_status("other 1"), None);
    }

    #[test]
    fn installs_once_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = install(dir.path()).unwrap();
        assert_eq!(fs::read(&p).unwrap(), BINARY);
        assert_eq!(install(dir.path()).unwrap(), p);
        let out = std::process::Command::new(&p)
            .args(["--", "sh", "-c", "exit 7"])
            .status()
            .unwrap();
        assert_eq!(out.code(), Some(7));
    }
}
