//! Who owns what on this host: every runtime object an agent makes for an
//! instance carries its **owner tag**, so that an agent can find what it
//! made without its data directory, and never touches another agent's.
//!
//! # The tag
//!
//! By default the tag is derived from the agent's data directory: the
//! FNV-1a hash of its canonical path (symlinks resolved), written as 6
//! base-36 characters (`[0-9a-z]`, about 31 bits). So:
//!
//! * an agent restarted on the same data directory has the same tag (and
//!   re-adopts its instances from its saved state);
//! * an agent started on an **emptied or recreated** data directory at the
//!   same path has the same tag, though its node id is new: what the old
//!   data directory described is recognised as its own, and removed;
//! * two agents on one machine (tests start many, each in its own temporary
//!   directory) have different tags.
//!
//! `--owner-tag TAG` (`SHELLWEGO_OWNER_TAG`; 1 to 6 characters of
//! `[0-9a-z]`) sets it instead, e.g. to keep it when the data directory
//! moves to another path. Two agents must never share a tag.
//!
//! # What carries it
//!
//! | object | name |
//! |---|---|
//! | OCI runtime state (containers) | `runc --root /run/shellwego/<tag>/<runtime>` |
//! | cgroups (every hierarchy) | `/shellwego/<tag>/<driver>/<instance or container id>` (`process`, `microvm`, `container`) |
//! | network namespaces | `sw-<tag>-<container id>` (`ip netns`; a file name, no length limit) |
//! | overlay mounts | mount source `shellwego-<tag>-<container id>` (the 3rd field after ` - ` in `/proc/self/mountinfo`) |
//!
//! The veth pair of a container (`swh<hash>`/`swc<hash>`, 13 characters of
//! the 15 an interface name may have) lives and dies with its network
//! namespace: deleting the namespace deletes both ends.
//!
//! # Orphans
//!
//! On start, after re-adopting the instances its saved state describes, an
//! agent removes every object carrying its tag that belongs to none of them
//! ([`sweep_cgroups`] here, and each driver's `Driver::sweep`): containers
//! (`runc delete --force`), processes in its cgroups (SIGKILL, QEMU
//! processes of the microvm driver included), the cgroups, network
//! namespaces and overlay mounts. Each removed instance is reported to the
//! control plane as an `orphan_removed` agent event (recorded as an
//! `instance.orphan_removed` event on the node).
//!
//! Not attributable, so never removed: processes of the process driver on a
//! host where no cgroup controller is usable (they are in no cgroup of
//! ours), and objects made by agents older than the tag (runc state in
//! `/run/shellwego/<runtime>`, cgroups `/shellwego/<id>`); those are still
//! re-adopted through their saved state.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where runtime state lives (one directory per owner).
pub const RUN_DIR: &str = "/run/shellwego";
/// The top cgroup of every agent (relative to each hierarchy's root).
pub const CGROUP_TOP: &str = "shellwego";
/// The longest tag: keeps derived names short.
pub const MAX_TAG: usize = 6;

/// An agent's owner tag; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    tag: String,
}

impl Default for Owner {
    /// The owner of drivers made without one (driver tests, tools). The
    /// agent always sets its own.
    fn default() -> Owner {
        Owner { tag: "anon".into() }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.tag)
    }
}

impl std::str::FromStr for Owner {
    type Err = String;

    fn from_str(s: &str) -> Result<Owner, String> {
        let ok = !s.is_empty()
            && s.len() <= MAX_TAG
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        if ok {
            Ok(Owner { tag: s.to_string() })
        } else {
            Err(format!(
                "'{s}' is not an owner tag: 1 to {MAX_TAG} characters of 0-9 and a-z"
            ))
        }
    }
}

impl Owner {
    /// The owner of the container driver's start-up probe.
    pub(crate) fn probe() -> Owner {
        Owner {
            tag: "probe".into(),
        }
    }

    /// The tag of the agent whose data directory is `dir` (which must
    /// exist): derived from its canonical path.
    pub fn for_data_dir(dir: &Path) -> std::io::Result<Owner> {
        use std::os::unix::ffi::OsStrExt;
        let canonical = fs::canonicalize(dir)?;
        let mut h = fnv1a(canonical.as_os_str().as_bytes());
        let mut tag = String::with_capacity(MAX_TAG);
        for _ in 0..MAX_TAG {
            let d = u32::try_from(h % 36).unwrap_or(0);
            tag.push(char::from_digit(d, 36).unwrap_or('0'));
            h /= 36;
        }
        Ok(Owner { tag })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// This owner's directory for runtime state: `/run/shellwego/<tag>`.
    pub fn run_dir(&self) -> PathBuf {
        Path::new(RUN_DIR).join(&self.tag)
    }

    /// The cgroup parent of `driver`'s instances, relative to a hierarchy's
    /// root: `shellwego/<tag>/<driver>`.
    pub fn cgroup_parent(&self, driver: &str) -> PathBuf {
        Path::new(CGROUP_TOP).join(&self.tag).join(driver)
    }

    /// The network namespace of a container.
    pub fn netns(&self, cid: &str) -> String {
        format!("sw-{}-{cid}", self.tag)
    }

    /// The container id in one of this owner's network namespace names.
    pub fn netns_cid<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix("sw-")?
            .strip_prefix(self.tag.as_str())?
            .strip_prefix('-')
            .filter(|c| !c.is_empty())
    }

    /// The source of a container's overlay mounts (shown in mountinfo).
    pub fn mount_source(&self, cid: &str) -> String {
        format!("shellwego-{}-{cid}", self.tag)
    }

    /// The container id in one of this owner's mount sources.
    pub fn mount_cid<'a>(&self, source: &'a str) -> Option<&'a str> {
        source
            .strip_prefix("shellwego-")?
            .strip_prefix(self.tag.as_str())?
            .strip_prefix('-')
            .filter(|c| !c.is_empty())
    }
}

/// What was removed of one instance nobody's state describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The instance id (a container id for containers, which is the
    /// instance id when the runtime accepts it).
    pub instance_id: String,
    /// What was removed, for people: `runc container …`, `cgroup …`.
    pub removed: Vec<String>,
}

/// Orphans found by several sweeps, merged per instance.
pub fn merge(found: impl IntoIterator<Item = Orphan>) -> Vec<Orphan> {
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in found {
        by_id.entry(o.instance_id).or_default().extend(o.removed);
    }
    by_id
        .into_iter()
        .map(|(instance_id, removed)| Orphan {
            instance_id,
            removed,
        })
        .collect()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn pids_in(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Remove this owner's cgroups whose last component is not in `keep`, in
/// every hierarchy, killing the processes in them (SIGKILL) first.
pub fn sweep_cgroups(owner: &Owner, keep: &HashSet<String>) -> Vec<Orphan> {
    // (driver, name) -> directories in each hierarchy.
    let mut found: BTreeMap<(String, String), Vec<PathBuf>> = BTreeMap::new();
    for h in crate::host::cgroup_hierarchies() {
        for driver_dir in subdirs(&h.join(CGROUP_TOP).join(owner.tag())) {
            let driver = driver_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for leaf in subdirs(&driver_dir) {
                let name = leaf
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !keep.contains(&name) {
                    found.entry((driver.clone(), name)).or_default().push(leaf);
                }
            }
        }
    }
    let mut out = vec![];
    for ((driver, name), dirs) in found {
        let mut killed: HashSet<i32> = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids: Vec<i32> = dirs.iter().flat_map(|d| pids_in(d)).collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                if p > 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed.insert(p);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut left = 0;
        for d in &dirs {
            let mut removed = false;
            for _ in 0..50 {
                match fs::remove_dir(d) {
                    Ok(()) => {
                        removed = true;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        removed = true;
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            if !removed {
                left += 1;
                tracing::warn!(cgroup = %d.display(), "cannot remove an orphaned cgroup");
            }
        }
        let mut what = format!(
            "{driver} cgroup {}/{name}",
            owner.cgroup_parent(&driver).display()
        );
        if !killed.is_empty() {
            what.push_str(&format!(" and its {} process(es)", killed.len()));
        }
        if left > 0 {
            what.push_str(&format!(" ({left} hierarchy(ies) could not be removed)"));
        }
        out.push(Orphan {
            instance_id: name,
            removed: vec![what],
        });
    }
    out
}

/// Remove everything `owner` has on this host (containers, the processes
/// in its cgroups, cgroups, network namespaces, overlay mounts), as an
/// agent's sweep with no instance to keep would. For tests and tools that
/// clean up after an agent that is gone; never while it runs.
pub fn remove_all(owner: &Owner) -> Vec<Orphan> {
    use crate::driver::Driver;
    let keep = HashSet::new();
    let mut found = vec![];
    if let Ok(d) = crate::container::ContainerDriver::probe() {
        found.extend(d.owned_by(owner.clone()).sweep(&keep));
    }
    found.extend(sweep_cgroups(owner, &keep));
    prune(owner);
    merge(found)
}

/// Remove this owner's empty cgroup parents and runtime directory (best
/// effort: anything still in use stays).
pub fn prune(owner: &Owner) {
    for h in crate::host::cgroup_hierarchies() {
        let top = h.join(CGROUP_TOP).join(owner.tag());
        for d in subdirs(&top) {
            let _ = fs::remove_dir(d);
        }
        let _ = fs::remove_dir(top);
    }
    let run = owner.run_dir();
    for d in subdirs(&run) {
        let _ = fs::remove_dir(d);
    }
    let _ = fs::remove_dir(run);
}

/// FNV-1a: stable across builds (names derived from it outlive the agent).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_tag_follows_the_canonical_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let ta = Owner::for_data_dir(&a).unwrap();
        assert_eq!(ta.tag().len(), MAX_TAG);
        assert!(ta.tag().parse::<Owner>().is_ok());
        assert_ne!(ta, Owner::for_data_dir(&b).unwrap());
        // Through a symlink, or emptied and made again: the same.
        std::os::unix::fs::symlink(&a, tmp.path().join("link")).unwrap();
        assert_eq!(ta, Owner::for_data_dir(&tmp.path().join("link")).unwrap());
        fs::remove_dir_all(&a).unwrap();
        fs::create_dir_all(&a).unwrap();
        assert_eq!(ta, Owner::for_data_dir(&a).unwrap());
        assert!(Owner::for_data_dir(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn tags_are_short_and_plain() {
        for bad in ["", "toolong", "ABC", "a-b", "a/b", "é"] {
            assert!(bad.parse::<Owner>().is_err(), "{bad}");
        }
        for good in ["a", "prod1", "zz9zz9"] {
            assert_eq!(good.parse::<Owner>().unwrap().tag(), good);
        }
    }

    #[test]
    fn names_carry_the_tag_and_no_other_owner_matches_them() {
        let o: Owner = "ab".parse().unwrap();
        let other: Owner = "abc".parse().unwrap();
        assert_eq!(o.netns("inst_1"), "sw-ab-inst_1");
        assert_eq!(o.netns_cid("sw-ab-inst_1"), Some("inst_1"));
        assert_eq!(other.netns_cid("sw-ab-inst_1"), None);
        assert_eq!(o.netns_cid(&other.netns("inst_1")), None);
        assert_eq!(o.netns_cid("sw-ab-"), None);
        assert_eq!(o.mount_cid(&o.mount_source("x.y")), Some("x.y"));
        assert_eq!(o.mount_cid(&other.mount_source("x")), None);
        assert_eq!(o.mount_cid("overlay"), None);
        assert_eq!(o.run_dir(), Path::new("/run/shellwego/ab"));
        assert_eq!(
            o.cgroup_parent("process"),
            Path::new("shellwego/ab/process")
        );
    }

    #[test]
    fn orphans_are_merged_per_instance() {
        let m = merge([
            Orphan {
                instance_id: "b".into(),
                removed: vec!["x".into()],
            },
            Orphan {
                instance_id: "a".into(),
                removed: vec!["y".into()],
            },
            Orphan {
                instance_id: "b".into(),
                removed: vec!["z".into()],
            },
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].removed, vec!["x".to_string(), "z".to_string()]);
    }
}
