//! Sweeping orphans against the real host: what drivers of one owner made
//! (processes in cgroups, runc containers with their network namespaces,
//! cgroups and overlay mounts) is removed by that owner's sweep when no
//! adopted instance has it, kept when one does, and never touched by
//! another owner's sweep. Containers are skipped (with the reason printed)
//! where the container driver cannot run; `SHELLWEGO_REQUIRE_CONTAINER=1`
//! makes that a failure.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shellwego_agent::container::ContainerDriver;
use shellwego_agent::driver::{Command, Driver, Launch};
use shellwego_agent::owner::{sweep_cgroups, Owner};
use shellwego_agent::process::ProcessDriver;

use crate::support::{self, alive, eventually, skip, start, wait_dead, REQUIRE_CONTAINER};

/// A tag no other test (or test run) uses.
fn owner(n: u32) -> Owner {
    let pid = std::process::id() % 10_000;
    format!("t{pid}{n}").parse().unwrap()
}

fn launch(base: &Path, id: &str, root: &Path, is_rootfs: bool, argv: &[&str]) -> Launch {
    let mut l = support::launch(base, id, root, argv);
    l.is_rootfs = is_rootfs;
    l.cpu_millis = 100;
    l
}

/// Cgroup directories named `name` under `shellwego/<tag>/` in any hierarchy.
fn cgroups_named(o: &Owner, name: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    hierarchies.push(PathBuf::from("/sys/fs/cgroup"));
    for h in hierarchies {
        let top = h.join("shellwego").join(o.tag());
        for d in std::fs::read_dir(&top).into_iter().flatten().flatten() {
            let leaf = d.path().join(name);
            if leaf.is_dir() {
                out.push(leaf);
            }
        }
    }
    out
}

fn has_cgroups() -> bool {
    shellwego_agent::cgroup::Cgroup::memory_available() && nix::unistd::Uid::effective().is_root()
}

#[test]
fn processes_in_an_owners_cgroups_are_swept_by_that_owner_only() {
    if !has_cgroups() {
        eprintln!(
            "SKIPPED: no usable cgroup here (or not root): process orphans cannot be attributed"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (owner(1), owner(2));
    let da = ProcessDriver::new().owned_by(a.clone(), "process");
    let db = ProcessDriver::new().owned_by(b.clone(), "process");
    let root = tmp.path().join("app");
    std::fs::create_dir_all(&root).unwrap();
    let id = |n: &str| format!("inst_orph{}{n}", std::process::id());
    let (kept, orphan, theirs) = (id("kept"), id("orphan"), id("theirs"));
    let rk = start(
        &da,
        &launch(tmp.path(), &kept, &root, false, &["sleep", "300"]),
    );
    let ro = start(
        &da,
        &launch(tmp.path(), &orphan, &root, false, &["sleep", "300"]),
    );
    let rt = start(
        &db,
        &launch(tmp.path(), &theirs, &root, false, &["sleep", "300"]),
    );
    assert!(!cgroups_named(&a, &orphan).is_empty());
    // `Start` returns before the instance's shell has joined its cgroups:
    // the sweep is to find it there.
    assert!(eventually(Duration::from_secs(5), || {
        cgroups_named(&a, &orphan).iter().all(|c| {
            !std::fs::read_to_string(c.join("cgroup.procs"))
                .unwrap_or_default()
                .trim()
                .is_empty()
        })
    }));

    let found = sweep_cgroups(&a, &HashSet::from([kept.clone()]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].instance_id, orphan);
    assert!(found[0].removed[0].contains("1 process"), "{found:?}");
    assert!(wait_dead(ro.pid), "the orphan still runs");
    assert!(cgroups_named(&a, &orphan).is_empty());
    assert!(alive(rk.pid), "a kept instance was killed");
    assert!(alive(rt.pid), "another owner's instance was killed");
    // A second sweep finds nothing.
    assert!(sweep_cgroups(&a, &HashSet::from([kept.clone()])).is_empty());

    for (d, r, i) in [(&da, &rk, &kept), (&db, &rt, &theirs)] {
        d.run(Command::Kill(r)).unwrap();
        assert!(wait_dead(r.pid));
        d.run(Command::Cleanup {
            instance_id: i,
            handle: Some(r),
        })
        .unwrap();
    }
    assert!(cgroups_named(&b, &theirs).is_empty());
    shellwego_agent::owner::prune(&a);
    shellwego_agent::owner::prune(&b);
}

fn busybox_rootfs(base: &Path) -> Option<PathBuf> {
    support::busybox_rootfs(base)
        .map_err(|why| skip(None, &why))
        .ok()
}

/// What the host has of container `cid`: runc state under the owner's
/// root, its network namespace, its overlay mounts, its cgroups.
fn traces(o: &Owner, d: &ContainerDriver, cid: &str) -> Vec<String> {
    let mut out = vec![];
    if d.state_root().join(cid).exists() {
        out.push("runc state".to_string());
    }
    if Path::new("/var/run/netns").join(o.netns(cid)).exists() {
        out.push("netns".into());
    }
    let source = o.mount_source(cid);
    for l in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        if l.split(" - ").nth(1).and_then(|r| r.split(' ').nth(1)) == Some(source.as_str()) {
            out.push(format!("mount {l}"));
        }
    }
    for c in cgroups_named(o, cid) {
        out.push(format!("cgroup {}", c.display()));
    }
    out
}

#[test]
fn containers_of_an_owner_are_swept_by_that_owner_only() {
    let (Ok(d1), Ok(d2)) = (ContainerDriver::probe(), ContainerDriver::probe()) else {
        let why = ContainerDriver::probe().err().unwrap_or_default();
        skip(
            Some(REQUIRE_CONTAINER),
            &format!("no container driver here: {why}"),
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let (a, b) = (owner(3), owner(4));
    let da = d1.owned_by(a.clone());
    let db = d2.owned_by(b.clone());
    let id = |n: &str| format!("inst_corph{}{n}", std::process::id());
    let (kept, orphan, theirs) = (id("kept"), id("orphan"), id("theirs"));
    let rk = start(
        &da,
        &launch(tmp.path(), &kept, &root, true, &["sleep", "300"]),
    );
    let ro = start(
        &da,
        &launch(tmp.path(), &orphan, &root, true, &["sleep", "300"]),
    );
    let rt = start(
        &db,
        &launch(tmp.path(), &theirs, &root, true, &["sleep", "300"]),
    );
    assert_eq!(
        rk.extra["state_root"],
        da.state_root().display().to_string()
    );
    assert_ne!(da.state_root(), db.state_root());
    assert_eq!(rk.extra["netns"], a.netns(&kept));
    let before = traces(&a, &da, &orphan);
    for what in ["runc state", "netns", "mount", "cgroup"] {
        assert!(
            before.iter().any(|t| t.starts_with(what)),
            "no {what} to find: {before:?}"
        );
    }

    // The agent of owner `a` restarts with only `kept` in its state, and
    // the orphan's directory was removed with the old data dir (by rename:
    // its overlay is still mounted, at the new path).
    let moved = tmp.path().join("moved-away");
    std::fs::rename(tmp.path().join(&orphan), &moved).unwrap();
    let keep = HashSet::from([kept.clone()]);
    let mut found = da.sweep(&keep);
    found.extend(sweep_cgroups(&a, &keep));
    let found = shellwego_agent::owner::merge(found);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].instance_id, orphan);
    let said = found[0].removed.join("; ");
    assert!(said.contains("container"), "{said}");
    assert!(wait_dead(ro.pid), "the orphan still runs");
    assert_eq!(traces(&a, &da, &orphan), Vec::<String>::new());
    assert!(!moved.join("bundle/rootfs/bin").exists(), "still mounted");

    // The kept one and the other owner's are untouched.
    for (o, d, cid, r) in [(&a, &da, &kept, &rk), (&b, &db, &theirs, &rt)] {
        assert!(alive(r.pid), "{cid} was killed");
        assert!(d.adopt(r), "{cid} is no longer adoptable");
        assert_eq!(traces(o, d, cid).len(), before.len(), "{cid}");
    }
    assert!(da.sweep(&keep).is_empty());

    for (o, d, cid, r) in [(&a, &da, &kept, &rk), (&b, &db, &theirs, &rt)] {
        d.run(Command::Kill(r)).unwrap();
        assert!(wait_dead(r.pid));
        d.run(Command::Cleanup {
            instance_id: cid,
            handle: Some(r),
        })
        .unwrap();
        assert_eq!(traces(o, d, cid), Vec::<String>::new());
    }
    shellwego_agent::owner::prune(&a);
    shellwego_agent::owner::prune(&b);
}
