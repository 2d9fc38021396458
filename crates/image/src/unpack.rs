//! Safe tar (and tar+gzip) extraction, for image layers and user uploads.
//!
//! Everything written ends up inside the destination:
//!
//! * entry paths must be relative and may not climb out with `..`;
//! * directories already in the destination are walked one component at a
//!   time with `lstat`; a symlink met on the way is resolved *inside* the
//!   destination (an absolute target means the destination's root, `..`
//!   stops at it), the way a container will see it, so `a -> /etc` followed
//!   by `a/passwd` writes `<dest>/etc/passwd`;
//! * the last component is never followed: an existing entry is removed
//!   first and files are created with `O_EXCL`;
//! * hard links must name an existing non-directory inside the destination;
//! * device nodes are skipped unless [`UnpackOptions::allow_devices`] (and
//!   then only created if the kernel lets us, i.e. as root);
//! * the number of entries and of bytes written are limited, and so is the
//!   metadata (long names, pax headers) read before each entry.
//!
//! Symlink *targets* are stored as they are: they are data for whoever uses
//! the tree as a root filesystem, and are never followed here.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use tar::EntryType;

use crate::ImageError;

/// How much an archive may read between two entries (headers, long names,
/// pax extensions, padding). Real archives need a few KiB.
const METADATA_WINDOW: u64 = 1 << 20;
/// Symlinks followed while resolving one path inside the destination.
const MAX_SYMLINK_HOPS: u32 = 40;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Limits and behaviour of [`unpack_archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Total bytes of file content written.
    pub max_bytes: u64,
    /// Total archive entries (of every kind).
    pub max_entries: u64,
    /// Create character and block devices (only works as root); otherwise
    /// they are skipped and counted in [`UnpackStats::skipped`].
    pub allow_devices: bool,
    /// Interpret `.wh.<name>` and `.wh..wh..opq` as OCI layer whiteouts
    /// (off: they are ordinary file names).
    pub whiteouts: bool,
    /// Give files the archive's uid/gid (when we are allowed to, i.e. as
    /// root) and keep setuid/setgid bits. Off: files belong to us and
    /// setuid/setgid bits are dropped.
    pub preserve_owner: bool,
}

impl Default for UnpackOptions {
    /// 1 GiB, 100 000 entries, no devices, no whiteouts, no owners: a
    /// cautious default for user uploads.
    fn default() -> Self {
        UnpackOptions {
            max_bytes: 1 << 30,
            max_entries: 100_000,
            allow_devices: false,
            whiteouts: false,
            preserve_owner: false,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// FIFOs and device nodes created.
    pub special: u64,
    /// Entries not created (device nodes not allowed or not permitted).
    pub skipped: u64,
    /// Whiteout entries applied (layers only).
    pub whiteouts: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Unpacks a tar stream, gzip-compressed or not (detected from the first
/// bytes), into `dest` (created if missing), safely: see the module docs.
/// On error, what was already written stays; unpack into a fresh directory
/// and discard it on error when that matters.
pub fn unpack_archive(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    fs::create_dir_all(dest).map_err(ImageError::io(format!("creating {}", dest.display())))?;
    let mut u = Unpacker::new(dest, opts.clone())?;
    u.apply(reader)?;
    u.finish()
}

struct DirMeta {
    mode: u32,
    mtime: u64,
}

/// Applies one or more archives (layers) to a directory.
pub(crate) struct Unpacker {
    root: PathBuf,
    opts: UnpackOptions,
    stats: UnpackStats,
    /// Directory modes and times, applied at the end (a read-only directory
    /// must still receive its children).
    dirs: HashMap<PathBuf, DirMeta>,
    /// Paths created by the archive being applied: whiteouts only hide what
    /// lower layers made.
    this_layer: HashSet<PathBuf>,
}

impl Unpacker {
    pub(crate) fn new(dest: &Path, opts: UnpackOptions) -> Result<Self, ImageError> {
        let root = dest
            .canonicalize()
            .map_err(ImageError::io(format!("resolving {}", dest.display())))?;
        if !root.is_dir() {
            return Err(ImageError::Io {
                context: format!("unpacking into {}", dest.display()),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(Unpacker {
            root,
            opts,
            stats: UnpackStats::default(),
            dirs: HashMap::new(),
            this_layer: HashSet::new(),
        })
    }

    /// Applies one archive. Bytes after the end-of-archive marker are left
    /// unread.
    pub(crate) fn apply(&mut self, reader: impl Read) -> Result<(), ImageError> {
        self.this_layer.clear();
        let mut buf = BufReader::with_capacity(64 * 1024, reader);
        let head = buf.fill_buf().map_err(ImageError::io("reading archive"))?;
        if head.starts_with(&ZSTD_MAGIC) {
            return Err(ImageError::InvalidArchive {
                detail: "zstd-compressed archives are not supported".to_owned(),
            });
        }
        let inner: Box<dyn Read + '_> = if head.starts_with(&GZIP_MAGIC) {
            Box::new(flate2::bufread::MultiGzDecoder::new(buf))
        } else {
            Box::new(buf)
        };
        let window = Rc::new(Cell::new(u64::MAX));
        let mut archive = tar::Archive::new(WindowedReader {
            inner,
            window: Rc::clone(&window),
        });
        let mut entries = archive.entries().map_err(archive_error)?;
        loop {
            window.set(METADATA_WINDOW);
            let next = entries.next();
            window.set(u64::MAX);
            let mut entry = match next {
                None => break,
                Some(Err(e)) => return Err(archive_error(e)),
                Some(Ok(e)) => e,
            };
            self.entry(&mut entry)?;
            // Whatever the entry kind left unread (it is small: it was
            // charged to the byte budget).
            io::copy(&mut entry, &mut io::sink()).map_err(archive_error)?;
        }
        Ok(())
    }

    /// Applies directory modes and times; returns the totals.
    pub(crate) fn finish(self) -> Result<UnpackStats, ImageError> {
        let mut dirs: Vec<(PathBuf, DirMeta)> = self.dirs.into_iter().collect();
        // Deepest first, so setting a parent's time is not undone by a child.
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, meta) in dirs {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            if let Ok(f) = File::open(&path) {
                // Best effort, like tar: times are not worth failing for.
                let _ = f.set_modified(mtime(meta.mtime));
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode)).map_err(
                ImageError::io(format!("setting mode of {}", path.display())),
            )?;
        }
        Ok(self.stats)
    }

    /// Records a path made by the archive being applied (only whiteouts
    /// need to know).
    fn created(&mut self, path: PathBuf) {
        if self.opts.whiteouts {
            self.this_layer.insert(path);
        }
    }

    fn mode_mask(&self) -> u32 {
        if self.opts.preserve_owner {
            0o7777
        } else {
            0o1777
        }
    }

    fn charge_entry(&mut self) -> Result<(), ImageError> {
        self.stats.entries += 1;
        if self.stats.entries > self.opts.max_entries {
            return Err(ImageError::LimitExceeded {
                what: "entries",
                limit: self.opts.max_entries,
            });
        }
        Ok(())
    }

    fn remaining_bytes(&self) -> u64 {
        self.opts.max_bytes.saturating_sub(self.stats.bytes)
    }

    fn charge_bytes(&mut self, n: u64) -> Result<(), ImageError> {
        if n > self.remaining_bytes() {
            return Err(ImageError::LimitExceeded {
                what: "bytes",
                limit: self.opts.max_bytes,
            });
        }
        self.stats.bytes += n;
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Nothing we use; its body is still read, so it is charged.
            return self.charge_bytes(entry.size());
        }
        self.charge_entry()?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |reason: &str| ImageError::UnsafeEntry {
            entry: name.clone(),
            reason: reason.to_owned(),
        };
        let io_err = |what: &str| {
            let context = format!("entry {name:?}: {what}");
            move |source: io::Error| ImageError::Io { context, source }
        };

        if !matches!(
            kind,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        ) {
            // Only files carry content; anything else with a body is charged.
            self.charge_bytes(entry.size())?;
        }
        let comps = normalize(&raw).map_err(|r| refuse(&r))?;
        let Some((last, parents)) = comps.split_last() else {
            // "." or "./": the destination itself; leave it alone.
            return Ok(());
        };

        if self.opts.whiteouts {
            if let Some(rest) = last.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
                return self.whiteout(parents, last.as_bytes(), rest, &name);
            }
        }

        let header = entry.header();
        let mode = header.mode().map_err(archive_error)? & self.mode_mask();
        let owner = match (header.uid(), header.gid()) {
            (Ok(u), Ok(g)) => u32::try_from(u).ok().zip(u32::try_from(g).ok()),
            _ => None,
        };
        let mtime_secs = header.mtime().unwrap_or(0);

        let parent = self
            .resolve(parents, true, &name)?
            .ok_or_else(|| refuse("parent directory could not be created"))?;
        let target = parent.join(last);

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&target, false).map_err(io_err("replacing"))?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err("creating file"))?;
                self.created(target.clone());
                let budget = self.remaining_bytes();
                let written =
                    io::copy(&mut (&mut *entry).take(budget.saturating_add(1)), &mut file)
                        .map_err(io_err("writing file"))?;
                self.charge_bytes(written)?;
                if kind != EntryType::GNUSparse && written != entry.size() {
                    return Err(ImageError::InvalidArchive {
                        detail: format!("entry {name:?} is truncated"),
                    });
                }
                if self.opts.preserve_owner {
                    if let Some((uid, gid)) = owner {
                        ignore_eperm(std::os::unix::fs::fchown(&file, Some(uid), Some(gid)))
                            .map_err(io_err("changing owner"))?;
                    }
                }
                // After chown, which clears setuid bits.
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err("setting mode"))?;
                let _ = file.set_modified(mtime(mtime_secs));
                self.stats.files += 1;
            }
            EntryType::Directory => {
                if !self.clear(&target, true).map_err(io_err("replacing"))? {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&target)
                        .map_err(io_err("creating directory"))?;
                }
                self.created(target.clone());
                self.chown(&target, owner)
                    .map_err(io_err("changing owner"))?;
                self.dirs.insert(
                    target,
                    DirMeta {
                        mode,
                        mtime: mtime_secs,
                    },
                );
                self.stats.dirs += 1;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| refuse("symlink without a target"))?
                    .into_owned();
                self.clear(&target, false).map_err(io_err("replacing"))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(io_err("creating symlink"))?;
                self.created(target.clone());
                self.chown(&target, owner)
                    .map_err(io_err("changing owner"))?;
                self.stats.symlinks += 1;
            }
            EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| refuse("hard link without a target"))?
                    .into_owned();
                let link_comps =
                    normalize(&link).map_err(|r| refuse(&format!("hard link target: {r}")))?;
                let Some((link_last, link_parents)) = link_comps.split_last() else {
                    return Err(refuse("hard link to the destination directory"));
                };
                let source = self
                    .resolve(link_parents, false, &name)?
                    .map(|p| p.join(link_last))
                    .ok_or_else(|| refuse("hard link target does not exist"))?;
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_dir() => return Err(refuse("hard link to a directory")),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(refuse("hard link target does not exist"))
                    }
                    Err(e) => return Err(io_err("reading hard link target")(e)),
                }
                if source != target {
                    self.clear(&target, false).map_err(io_err("replacing"))?;
                    // linkat(2) without AT_SYMLINK_FOLLOW: a symlink source
                    // is linked itself, not followed.
                    fs::hard_link(&source, &target).map_err(io_err("creating hard link"))?;
                    self.created(target);
                }
                self.stats.hardlinks += 1;
            }
            EntryType::Char | EntryType::Block => {
                if !self.opts.allow_devices {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let kind = if kind == EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                self.clear(&target, false).map_err(io_err("replacing"))?;
                match mknod(
                    &target,
                    kind,
                    Mode::from_bits_truncate(mode),
                    makedev(u64::from(major), u64::from(minor)),
                ) {
                    Ok(()) => {
                        self.created(target.clone());
                        self.chown(&target, owner)
                            .map_err(io_err("changing owner"))?;
                        self.stats.special += 1;
                    }
                    Err(Errno::EPERM) => self.stats.skipped += 1,
                    Err(e) => return Err(io_err("creating device node")(io::Error::from(e))),
                }
            }
            EntryType::Fifo => {
                self.clear(&target, false).map_err(io_err("replacing"))?;
                nix::unistd::mkfifo(&target, Mode::from_bits_truncate(mode))
                    .map_err(|e| io_err("creating fifo")(io::Error::from(e)))?;
                self.created(target.clone());
                self.chown(&target, owner)
                    .map_err(io_err("changing owner"))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err("setting mode"))?;
                self.stats.special += 1;
            }
            other => {
                return Err(refuse(&format!(
                    "unsupported entry type {:?}",
                    char::from(other.as_byte())
                )))
            }
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        parents: &[OsString],
        last: &[u8],
        hidden: &[u8],
        name: &str,
    ) -> Result<(), ImageError> {
        self.stats.whiteouts += 1;
        let Some(dir) = self.resolve(parents, false, name)? else {
            return Ok(()); // nothing below to hide
        };
        let io_err = |source: io::Error| ImageError::Io {
            context: format!("applying whiteout {name:?}"),
            source,
        };
        if last == OPAQUE_MARKER {
            if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                self.prune(&dir).map_err(io_err)?;
            }
            return Ok(());
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.*` names are aufs bookkeeping: ignore.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ImageError::UnsafeEntry {
                entry: name.to_owned(),
                reason: "whiteout without a name".to_owned(),
            });
        }
        let victim = dir.join(OsStr::from_bytes(hidden));
        if !self.this_layer.contains(&victim) {
            remove_tree(&victim, &mut HashSet::new()).map_err(io_err)?;
        }
        Ok(())
    }

    /// Opaque directory: removes what lower layers put in `dir`, keeping what
    /// this layer wrote.
    fn prune(&self, dir: &Path) -> io::Result<()> {
        for child in fs::read_dir(dir)? {
            let path = child?.path();
            if !self.this_layer.contains(&path) {
                remove_tree(&path, &mut HashSet::new())?;
            } else if fs::symlink_metadata(&path)?.is_dir() {
                self.prune(&path)?;
            }
        }
        Ok(())
    }

    /// Makes room for a new entry at `target` without following it. Returns
    /// true when it is a directory that can stay (`keep_dir`).
    fn clear(&self, target: &Path, keep_dir: bool) -> io::Result<bool> {
        match fs::symlink_metadata(target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
            Ok(m) if keep_dir && m.is_dir() => Ok(true),
            Ok(_) => {
                remove_tree(target, &mut HashSet::new())?;
                Ok(false)
            }
        }
    }

    fn chown(&self, path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
        match owner {
            Some((uid, gid)) if self.opts.preserve_owner => {
                ignore_eperm(std::os::unix::fs::lchown(path, Some(uid), Some(gid)))
            }
            _ => Ok(()),
        }
    }

    /// Resolves directory components inside the root, following symlinks
    /// found there as if the root were `/`. Missing directories are created
    /// when `create`, else `None` is returned.
    fn resolve(
        &mut self,
        comps: &[OsString],
        create: bool,
        name: &str,
    ) -> Result<Option<PathBuf>, ImageError> {
        let mut stack: Vec<OsString> = Vec::new();
        let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
        let mut hops = 0;
        let root = self.root.clone();
        let here = |stack: &[OsString]| {
            let mut p = root.clone();
            p.extend(stack);
            p
        };
        let io_err = |source: io::Error| ImageError::Io {
            context: format!("entry {name:?}: resolving its directory"),
            source,
        };
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                stack.pop();
                continue;
            }
            let path = here(&stack).join(&c);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(c),
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ImageError::UnsafeEntry {
                            entry: name.to_owned(),
                            reason: "too many levels of symbolic links".to_owned(),
                        });
                    }
                    let target = fs::read_link(&path).map_err(io_err)?;
                    let bytes = target.as_os_str().as_bytes();
                    if bytes.starts_with(b"/") {
                        stack.clear();
                    }
                    for part in bytes.split(|b| *b == b'/').rev() {
                        queue.push_front(OsStr::from_bytes(part).to_owned());
                    }
                }
                Ok(_) => {
                    let rel = path.strip_prefix(&root).unwrap_or(&path);
                    return Err(ImageError::UnsafeEntry {
                        entry: name.to_owned(),
                        reason: format!("{} is not a directory", rel.display()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(io_err)?;
                    self.created(path);
                    stack.push(c);
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(Some(here(&stack)))
    }
}

/// Splits an archive path into normal components, refusing absolute paths
/// and `..` that would climb above the root.
fn normalize(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path".to_owned());
    }
    let mut out: Vec<OsString> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("path escapes the destination with '..'".to_owned());
                }
            }
            p => out.push(OsStr::from_bytes(p).to_owned()),
        }
    }
    Ok(out)
}

fn archive_error(e: io::Error) -> ImageError {
    ImageError::InvalidArchive {
        detail: e.to_string(),
    }
}

fn ignore_eperm(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(Errno::EPERM as i32) => Ok(()),
        other => other,
    }
}

fn mtime(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Removes a file, symlink or directory tree without following symlinks,
/// making directories writable first when needed. Returns the bytes of
/// regular files freed (hard links counted once via `seen`).
pub(crate) fn remove_tree(path: &Path, seen: &mut HashSet<(u64, u64)>) -> io::Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        let freed = if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
            meta.len()
        } else {
            0
        };
        fs::remove_file(path)?;
        return Ok(freed);
    }
    if meta.mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() | 0o700))?;
    }
    let mut freed = 0;
    for child in fs::read_dir(path)? {
        freed += remove_tree(&child?.path(), seen)?;
    }
    fs::remove_dir(path)?;
    Ok(freed)
}

/// Refuses to read more than the window allows (set around each header
/// read, so a huge "long name" cannot exhaust memory).
struct WindowedReader<R> {
    inner: R,
    window: Rc<Cell<u64>>,
}

impl<R: Read> Read for WindowedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.window.get();
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "archive metadata before an entry is too large",
            ));
        }
        let max = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if left != u64::MAX {
            self.window.set(left - n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        let n = |s: &str| normalize(s.as_bytes());
        assert_eq!(n("./a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(n("a/../b").unwrap(), vec!["b"]);
        assert!(n("./").unwrap().is_empty());
        assert!(n("/etc/passwd").is_err());
        assert!(n("../x").is_err());
        assert!(n("a/../../x").is_err());
    }
}
