//! `unpack_archive` safety: every escape we know of, limits, modes, layers.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use shellwego_image::{unpack_archive, ImageError, UnpackOptions, UnpackStats};

use crate::support::{gzip, tar, E};

fn unpack(archive: &[u8], dest: &Path) -> Result<UnpackStats, ImageError> {
    unpack_archive(archive, dest, &UnpackOptions::default())
}

fn refused(result: Result<UnpackStats, ImageError>, name: &str) -> String {
    match result {
        Err(ImageError::UnsafeEntry { entry, reason }) => {
            assert_eq!(entry, name, "error names the bad entry");
            reason
        }
        other => panic!("expected {name:?} to be refused, got {other:?}"),
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[test]
fn plain_and_gzip_archives_keep_modes() {
    let archive = tar(&[
        E::Dir("app/", 0o750),
        E::File("app/run", b"#!/bin/sh\necho hi\n", 0o755),
        E::File("app/secret", b"s", 0o640),
        E::File("app/suid", b"x", 0o4755),
        E::Symlink("app/link", "run"),
        E::Hardlink("app/again", "app/run"),
        E::Fifo("app/pipe"),
    ]);
    for bytes in [archive.clone(), gzip(&archive)] {
        let dir = tempfile::tempdir().unwrap();
        let stats = unpack(&bytes, dir.path()).unwrap();
        assert_eq!(stats.entries, 7);
        assert_eq!(stats.files, 3);
        assert_eq!(stats.dirs, 1);
        assert_eq!(stats.symlinks, 1);
        assert_eq!(stats.hardlinks, 1);
        assert_eq!(stats.special, 1);
        assert_eq!(stats.bytes, 20);
        let app = dir.path().join("app");
        let mode = |p: &str| fs::symlink_metadata(app.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("run"), 0o755);
        assert_eq!(mode("secret"), 0o640);
        // No setuid for uploads (preserve_owner is off).
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(fs::metadata(&app).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(fs::read_link(app.join("link")).unwrap(), Path::new("run"));
        assert_eq!(
            fs::metadata(app.join("again")).unwrap().ino(),
            fs::metadata(app.join("run")).unwrap().ino()
        );
        assert!(fs::symlink_metadata(app.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(
            fs::metadata(app.join("run")).unwrap().mtime(),
            1_700_000_000
        );
    }
}

#[test]
fn absolute_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let reason = refused(
        unpack(&tar(&[E::File("/tmp/evil", b"x", 0o644)]), dir.path()),
        "/tmp/evil",
    );
    assert!(reason.contains("absolute"), "{reason}");
}

#[test]
fn dot_dot_escapes_are_refused() {
    for name in ["../evil", "a/../../evil", "./a/b/../../../evil"] {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("dest");
        let reason = refused(unpack(&tar(&[E::File(name, b"x", 0o644)]), &inner), name);
        assert!(reason.contains(".."), "{reason}");
        assert!(!dir.path().join("evil").exists());
    }
    // `..` that stays inside is fine.
    let dir = tempfile::tempdir().unwrap();
    unpack(&tar(&[E::File("a/../b", b"x", 0o644)]), dir.path()).unwrap();
    assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"x");
}

#[test]
fn symlinked_directory_to_etc_is_resolved_inside() {
    let before = fs::read("/etc/passwd").unwrap();
    let dir = tempfile::tempdir().unwrap();
    unpack(
        &tar(&[
            E::Symlink("a", "/etc"),
            E::File("a/passwd", b"owned\n", 0o644),
            E::Symlink("up", "../../../../.."),
            E::File("up/escaped", b"nope\n", 0o644),
        ]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(
        fs::read("/etc/passwd").unwrap(),
        before,
        "host file untouched"
    );
    // Written where a container would see it: /etc/passwd of the tree.
    assert_eq!(fs::read(dir.path().join("etc/passwd")).unwrap(), b"owned\n");
    assert_eq!(fs::read(dir.path().join("escaped")).unwrap(), b"nope\n");
    assert_eq!(
        fs::read_link(dir.path().join("a")).unwrap(),
        Path::new("/etc")
    );
}

#[test]
fn existing_symlinks_in_dest_are_never_followed_out() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"original").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Planted before unpacking (a previous upload, say).
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("file")).unwrap();
    unpack(
        &tar(&[
            E::File("out/victim", b"overwritten", 0o644),
            E::File("file", b"replaced the link", 0o644),
        ]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    let inside = dir.path().join(outside.path().strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("victim")).unwrap(), b"overwritten");
    // The last component was replaced, not followed.
    let meta = fs::symlink_metadata(dir.path().join("file")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        fs::read(dir.path().join("file")).unwrap(),
        b"replaced the link"
    );
}

#[test]
fn symlink_replacing_then_written_through_stays_inside() {
    // A symlink entry, then a file with the same name: the link is replaced.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("v");
    fs::write(&victim, b"original").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = victim.to_str().unwrap().to_owned();
    unpack(
        &tar(&[E::Symlink("x", &target), E::File("x", b"data", 0o644)]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"data");
}

#[test]
fn hardlinks_must_point_inside() {
    for (link, why) in [("../../../etc/passwd", ".."), ("/etc/passwd", "absolute")] {
        let dir = tempfile::tempdir().unwrap();
        let reason = refused(unpack(&tar(&[E::Hardlink("h", link)]), dir.path()), "h");
        assert!(reason.contains(why), "{link}: {reason}");
    }
    // Through a symlink to /etc: resolved inside, where there is no passwd.
    let dir = tempfile::tempdir().unwrap();
    let reason = refused(
        unpack(
            &tar(&[E::Symlink("s", "/etc"), E::Hardlink("h", "s/passwd")]),
            dir.path(),
        ),
        "h",
    );
    assert!(reason.contains("does not exist"), "{reason}");
    assert!(!dir.path().join("h").exists());
    // To a directory: refused.
    let dir = tempfile::tempdir().unwrap();
    let reason = refused(
        unpack(
            &tar(&[E::Dir("d/", 0o755), E::Hardlink("h", "d")]),
            dir.path(),
        ),
        "h",
    );
    assert!(reason.contains("directory"), "{reason}");
}

#[test]
fn device_nodes_are_skipped_unless_allowed() {
    let archive = tar(&[E::Char("null", 1, 3), E::File("ok", b"1", 0o644)]);
    let dir = tempfile::tempdir().unwrap();
    let stats = unpack(&archive, dir.path()).unwrap();
    assert_eq!(stats.skipped, 1);
    assert!(!dir.path().join("null").exists());
    assert!(dir.path().join("ok").exists());

    let dir = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        allow_devices: true,
        ..UnpackOptions::default()
    };
    let stats = unpack_archive(&archive[..], dir.path(), &opts).unwrap();
    if is_root() {
        assert_eq!(stats.special, 1);
        let meta = fs::symlink_metadata(dir.path().join("null")).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), nix_makedev(1, 3));
    } else {
        assert_eq!(
            stats.skipped, 1,
            "not root: mknod is refused, entry skipped"
        );
    }
}

fn nix_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

#[test]
fn limits_on_entries_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let many: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<E<'_>> = many.iter().map(|n| E::File(n, b"x", 0o644)).collect();
    let opts = UnpackOptions {
        max_entries: 10,
        ..UnpackOptions::default()
    };
    assert!(matches!(
        unpack_archive(&tar(&entries)[..], dir.path(), &opts),
        Err(ImageError::LimitExceeded {
            what: "entries",
            limit: 10
        })
    ));

    let dir = tempfile::tempdir().unwrap();
    let big = vec![7u8; 10_000];
    let opts = UnpackOptions {
        max_bytes: 15_000,
        ..UnpackOptions::default()
    };
    let archive = gzip(&tar(&[
        E::File("a", &big, 0o644),
        E::File("b", &big, 0o644),
    ]));
    assert!(matches!(
        unpack_archive(&archive[..], dir.path(), &opts),
        Err(ImageError::LimitExceeded { what: "bytes", .. })
    ));
}

#[test]
fn huge_long_name_is_refused_without_reading_it_all() {
    // A GNU long-name entry claiming 64 MiB: refused after the 1 MiB window.
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(64 << 20);
    h.set_cksum();
    let mut archive = h.as_bytes().to_vec();
    archive.resize(archive.len() + (64 << 20), b'a');
    let dir = tempfile::tempdir().unwrap();
    match unpack(&archive, dir.path()) {
        Err(ImageError::InvalidArchive { detail }) => {
            assert!(detail.contains("too large"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn symlink_loops_and_files_in_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let reason = refused(
        unpack(
            &tar(&[E::Symlink("loop", "loop"), E::File("loop/x", b"", 0o644)]),
            dir.path(),
        ),
        "loop/x",
    );
    assert!(reason.contains("symbolic links"), "{reason}");

    let dir = tempfile::tempdir().unwrap();
    let reason = refused(
        unpack(
            &tar(&[E::File("f", b"", 0o644), E::File("f/x", b"", 0o644)]),
            dir.path(),
        ),
        "f/x",
    );
    assert!(reason.contains("not a directory"), "{reason}");
}

#[test]
fn garbage_and_zstd_are_invalid_archives() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        unpack(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0], dir.path()),
        Err(ImageError::InvalidArchive { .. })
    ));
    assert!(matches!(
        unpack(&[1u8; 1024], dir.path()),
        Err(ImageError::InvalidArchive { .. })
    ));
    // An empty stream is an empty archive.
    assert_eq!(unpack(&[], dir.path()).unwrap().entries, 0);
}

#[test]
fn whiteouts_only_in_layer_mode() {
    let lower = crate::support::base_layer();
    let upper = crate::support::top_layer();

    // As an upload, `.wh.` names are plain files.
    let dir = tempfile::tempdir().unwrap();
    unpack(&lower, dir.path()).unwrap();
    unpack(&upper, dir.path()).unwrap();
    assert!(dir.path().join("etc/.wh.removed").exists());
    assert!(dir.path().join("etc/removed").exists());

    // As layers, they delete.
    let dir = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        whiteouts: true,
        ..UnpackOptions::default()
    };
    unpack_archive(&lower[..], dir.path(), &opts).unwrap();
    let stats = unpack_archive(&upper[..], dir.path(), &opts).unwrap();
    assert_eq!(stats.whiteouts, 2);
    assert!(!dir.path().join("etc/removed").exists());
    assert!(!dir.path().join("etc/.wh.removed").exists());
    assert_eq!(crate::support::list(&dir.path().join("var/cache")), ["new"]);
    assert_eq!(fs::read(dir.path().join("etc/motd")).unwrap(), b"top\n");

    // Opaque marker after the new content of the same layer keeps it.
    let dir = tempfile::tempdir().unwrap();
    unpack_archive(&lower[..], dir.path(), &opts).unwrap();
    let upper = tar(&[
        E::File("var/cache/new", b"new\n", 0o644),
        E::Dir("var/cache/sub/", 0o755),
        E::File("var/cache/sub/fresh", b"f", 0o644),
        E::File("var/cache/.wh..wh..opq", b"", 0o644),
        E::File("etc/.wh.motd", b"", 0o644),
        E::File("etc/.wh.not-there", b"", 0o644),
    ]);
    unpack_archive(&upper[..], dir.path(), &opts).unwrap();
    assert_eq!(
        crate::support::list(&dir.path().join("var/cache")),
        ["new", "sub"]
    );
    assert_eq!(
        crate::support::list(&dir.path().join("var/cache/sub")),
        ["fresh"]
    );
    assert!(!dir.path().join("etc/motd").exists());

    // A whiteout cannot reach outside either.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("keep"), b"k").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    unpack_archive(
        &tar(&[
            E::Symlink("o", &target),
            E::File("o/.wh.keep", b"", 0o644),
            E::File("o/.wh..wh..opq", b"", 0o644),
        ])[..],
        dir.path(),
        &opts,
    )
    .unwrap();
    assert!(outside.path().join("keep").exists());
    let reason = refused(
        unpack_archive(
            &tar(&[E::File("../.wh.x", b"", 0o644)])[..],
            dir.path(),
            &opts,
        ),
        "../.wh.x",
    );
    assert!(reason.contains(".."), "{reason}");
}

#[test]
fn owners_are_kept_for_layers_when_root() {
    let mut h = tar::Header::new_gnu();
    h.set_path("owned").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o4755);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_cksum();
    let mut archive = h.as_bytes().to_vec();
    archive.push(b'x');
    archive.resize(1024, 0);
    archive.extend_from_slice(&[0u8; 1024]);
    let dir = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        preserve_owner: true,
        ..UnpackOptions::default()
    };
    unpack_archive(&archive[..], dir.path(), &opts).unwrap();
    let meta = fs::metadata(dir.path().join("owned")).unwrap();
    if is_root() {
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        assert_eq!(meta.mode() & 0o7777, 0o4755, "setuid kept after chown");
    } else {
        eprintln!("not root: ownership not checked");
    }
}
