//! Copying an unpacked archive into an instance's own root.
//!
//! An archive (an upload or a user's URL) is unpacked once per node, next to
//! its download, and each instance gets a private, writable copy of that
//! tree: what one instance writes in its directory is never seen by
//! another, and starting one costs a copy in the kernel
//! (`copy_file_range`), not a gunzip and untar.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Copy the tree at `from` to `to` (which must not exist): directories,
/// regular files with their permission bits, and symbolic links as links.
/// Anything else (the unpacker creates no devices for archives) is skipped.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    fs::create_dir(to)?;
    // Children first, then the directory's own mode: a read-only directory
    // must still receive them.
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst)?;
        }
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.permissions().mode()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_links_and_modes_privately() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::create_dir_all(a.join("bin")).unwrap();
        fs::write(a.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(a.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("tool", a.join("bin/sh")).unwrap();
        fs::create_dir(a.join("ro")).unwrap();
        fs::write(a.join("ro/f"), b"x").unwrap();
        fs::set_permissions(a.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();

        let b = t.path().join("b");
        copy_tree(&a, &b).unwrap();
        assert_eq!(fs::read(b.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&b.join("bin/tool")), 0o755);
        assert_eq!(mode(&b.join("ro")), 0o555);
        assert_eq!(fs::read_link(b.join("bin/sh")).unwrap(), Path::new("tool"));
        // The copy is private: writing it leaves the original alone.
        fs::write(b.join("bin/tool"), b"changed").unwrap();
        assert_eq!(fs::read(a.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
        assert!(copy_tree(&a, &b).is_err(), "the target must not exist");
    }
}
