//! The tailer thread: reads the instances' raw output files as they grow
//! (see the module above), stores their lines, frees what it has read.
//!
//! Its position in each file is saved (`offsets.json` in the instance's
//! raw directory) after the lines it covers are stored: after a crash a
//! few lines may be stored twice, none lost.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use shellwego_api::logs::{LogLevel, LogLine};

use super::store::AppStore;
use super::{level, Logs, IDLE, MAX_LINE};

/// The file in an instance's raw directory naming its app.
pub const APP_FILE: &str = "app";
const OFFSETS: &str = "offsets.json";
/// Bytes read from one file per pass (fairness between instances).
pub const BUDGET: u64 = 1 << 20;
/// Unread bytes beyond this are skipped (with a note): the agent was away
/// or cannot keep up, and raw output must not fill the disk.
pub const RAW_BACKLOG: u64 = 16 << 20;
/// The start of every raw file is kept (a microVM's boot messages, which
/// its driver reads); holes are punched in steps of `PUNCH_STEP`.
const KEEP_HEAD: u64 = 64 << 10;
/// Nor are the last bytes read given back: a microVM's driver reads its
/// console's end for the guest's exit status and OOM kills.
const KEEP_TAIL: u64 = 256 << 10;
const PUNCH_STEP: u64 = 1 << 20;
/// A raw directory of an instance that is not this agent's any more and
/// has had nothing new for this long is removed (once read to its end).
const ABANDONED: Duration = Duration::from_secs(60);
/// How often the directories are listed anew, and stores expired.
const RESCAN: Duration = Duration::from_millis(500);
const EXPIRE: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Pos {
    /// Bytes consumed (stored as lines, or skipped).
    offset: u64,
    /// Bytes given back to the file system (a hole up to here).
    punched: u64,
}

struct Source {
    dir: PathBuf,
    instance_id: String,
    app_id: String,
    /// File name → its open handle.
    files: BTreeMap<String, File>,
    pos: BTreeMap<String, Pos>,
    dirty: bool,
    last_activity: Instant,
}

pub struct Tailer {
    logs: Arc<Logs>,
    is_live: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    sources: HashMap<String, Source>,
    stores: HashMap<String, AppStore>,
    punch_works: bool,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A file's start and stream from its name (`<start>.out|.err`).
fn parse_name(name: &str) -> Option<(i64, bool)> {
    let (start, ext) = name.split_once('.')?;
    let stderr = match ext {
        "out" => false,
        "err" => true,
        _ => return None,
    };
    Some((start.parse().ok()?, stderr))
}

/// The lines in `buf` (output read from a file): complete ones, and the
/// last partial one when `finished` (no more will come) or too long to
/// wait for. Returns the lines and the bytes they consumed.
pub fn split_lines(buf: &[u8], finished: bool) -> (Vec<String>, usize) {
    let mut lines = vec![];
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        let (line, used) = match rest.iter().position(|b| *b == b'\n') {
            Some(n) if n <= MAX_LINE => (&rest[..n], n + 1),
            // A line too long: its first MAX_LINE bytes now.
            _ if rest.len() >= MAX_LINE => (&rest[..MAX_LINE], MAX_LINE),
            Some(n) => (&rest[..n], n + 1),
            None if finished => (rest, rest.len()),
            None => break,
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        lines.push(String::from_utf8_lossy(line).into_owned());
        at += used;
    }
    (lines, at)
}

impl Tailer {
    pub fn new(logs: Arc<Logs>, is_live: Arc<dyn Fn(&str) -> bool + Send + Sync>) -> Tailer {
        Tailer {
            logs,
            is_live,
            sources: HashMap::new(),
            stores: HashMap::new(),
            punch_works: true,
        }
    }

    pub fn run(mut self) {
        let mut scanned = Instant::now() - RESCAN;
        let mut expired = Instant::now();
        loop {
            if scanned.elapsed() >= RESCAN {
                self.scan();
                scanned = Instant::now();
            }
            let read = self.pass();
            if expired.elapsed() >= EXPIRE {
                self.expire();
                expired = Instant::now();
            }
            if read == 0 {
                std::thread::sleep(IDLE);
            }
        }
    }

    /// Find new instance directories and files; drop abandoned ones.
    fn scan(&mut self) {
        let raw = self.logs.raw_dir();
        for e in fs::read_dir(&raw).into_iter().flatten().flatten() {
            let instance_id = e.file_name().to_string_lossy().into_owned();
            if self.sources.contains_key(&instance_id) {
                continue;
            }
            let dir = e.path();
            let Ok(app_id) = fs::read_to_string(dir.join(APP_FILE)) else {
                continue;
            };
            let pos = fs::read(dir.join(OFFSETS))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            self.sources.insert(
                instance_id.clone(),
                Source {
                    dir,
                    instance_id,
                    app_id: app_id.trim().to_string(),
                    files: BTreeMap::new(),
                    pos,
                    dirty: false,
                    last_activity: Instant::now(),
                },
            );
        }
        let mut gone = vec![];
        for (id, s) in self.sources.iter_mut() {
            for e in fs::read_dir(&s.dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if parse_name(&name).is_none() || s.files.contains_key(&name) {
                    continue;
                }
                let opened = fs::OpenOptions::new().read(true).write(true).open(e.path());
                if let Ok(f) = opened {
                    s.files.insert(name, f);
                }
            }
            let drained = s.files.iter().all(|(n, f)| {
                f.metadata()
                    .is_ok_and(|m| m.len() <= s.pos.get(n).map_or(0, |p| p.offset))
            });
            if drained && s.last_activity.elapsed() >= ABANDONED && !(self.is_live)(id) {
                gone.push(id.clone());
            }
        }
        for id in gone {
            if let Some(s) = self.sources.remove(&id) {
                let _ = fs::remove_dir_all(&s.dir);
            }
        }
    }

    /// Read what every file has new; the bytes read.
    fn pass(&mut self) -> u64 {
        let mut total = 0;
        let mut by_app: HashMap<String, Vec<(String, bool, String)>> = HashMap::new();
        for s in self.sources.values_mut() {
            let newest = s
                .files
                .keys()
                .filter_map(|n| parse_name(n))
                .map(|(start, _)| start)
                .max();
            let mut finished_files = vec![];
            for (name, f) in &s.files {
                let Some((start, stderr)) = parse_name(name) else {
                    continue;
                };
                let len = match f.metadata() {
                    Ok(m) => m.len(),
                    Err(_) => continue,
                };
                let pos = s.pos.entry(name.clone()).or_default();
                if len < pos.offset {
                    // Truncated under us: start over.
                    *pos = Pos::default();
                }
                // An older start's file gets nothing more once a newer one
                // exists (its process is gone).
                let finished = newest.is_some_and(|n| start < n);
                let lines = by_app.entry(s.app_id.clone()).or_default();
                if len.saturating_sub(pos.offset) > RAW_BACKLOG {
                    let skip = len - pos.offset - BUDGET;
                    pos.offset += skip;
                    lines.push((
                        s.instance_id.clone(),
                        true,
                        format!("shellwego: {skip} bytes of this instance's output were skipped (written faster than they could be stored)"),
                    ));
                    s.dirty = true;
                }
                if len > pos.offset {
                    let want = (len - pos.offset).min(BUDGET) as usize;
                    let mut buf = vec![0u8; want];
                    let got = match f.read_at(&mut buf, pos.offset) {
                        Ok(n) => n,
                        Err(_) => continue,
                    };
                    buf.truncate(got);
                    let at_end = pos.offset + got as u64 >= len;
                    let (found, used) = split_lines(&buf, finished && at_end);
                    for m in found {
                        lines.push((s.instance_id.clone(), stderr, m));
                    }
                    if used > 0 {
                        pos.offset += used as u64;
                        s.dirty = true;
                        s.last_activity = Instant::now();
                        total += used as u64;
                    }
                }
                if finished && pos.offset >= len {
                    finished_files.push(name.clone());
                }
            }
            for name in finished_files {
                s.files.remove(&name);
                s.pos.remove(&name);
                let _ = fs::remove_file(s.dir.join(&name));
                s.dirty = true;
            }
        }
        let now = now_micros();
        for (app_id, raw) in by_app {
            if raw.is_empty() {
                continue;
            }
            let policy = self.logs.policy_of(&app_id);
            let store = match self.stores.entry(app_id.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match AppStore::open(self.logs.apps_dir().join(&app_id), policy) {
                        Ok(s) => v.insert(s),
                        Err(e) => {
                            tracing::warn!(app_id, error = %e, "cannot open the app's log store; its lines are dropped");
                            continue;
                        }
                    }
                }
            };
            let _ = store.set_policy(policy);
            let lines: Vec<LogLine> = raw
                .into_iter()
                .map(|(instance_id, stderr, message)| LogLine {
                    t: store.next_t(now),
                    level: if message.starts_with("shellwego: ") && stderr {
                        LogLevel::Warn
                    } else {
                        level::classify(&message, stderr)
                    },
                    instance_id,
                    stream: if stderr { "stderr" } else { "stdout" }.into(),
                    message,
                })
                .collect();
            if let Err(e) = store.append(&lines) {
                tracing::warn!(app_id, error = %e, "cannot store log lines");
            }
            self.logs.publish(&app_id, &lines);
        }
        for s in self.sources.values_mut() {
            if !s.dirty {
                continue;
            }
            s.dirty = false;
            for (name, f) in &s.files {
                if let Some(p) = s.pos.get_mut(name) {
                    punch(f, p, &mut self.punch_works);
                }
            }
            let tmp = s.dir.join(".offsets.tmp");
            let ok = serde_json::to_vec(&s.pos)
                .map_err(io::Error::other)
                .and_then(|b| fs::write(&tmp, b))
                .and_then(|_| fs::rename(&tmp, s.dir.join(OFFSETS)));
            if let Err(e) = ok {
                tracing::warn!(instance_id = %s.instance_id, error = %e, "cannot save the log tailer's position");
            }
        }
        total
    }

    /// Apply retention to every app's lines; drop empty apps' stores.
    fn expire(&mut self) {
        let now = SystemTime::now();
        let apps = self.logs.apps_dir();
        let live_apps: std::collections::HashSet<&str> =
            self.sources.values().map(|s| s.app_id.as_str()).collect();
        for e in fs::read_dir(&apps).into_iter().flatten().flatten() {
            let app_id = e.file_name().to_string_lossy().into_owned();
            let empty = match self.stores.get_mut(&app_id) {
                Some(s) => s.expire(now),
                None => {
                    let policy = self.logs.policy_of(&app_id);
                    let mut segs = vec![];
                    super::store::expire_dir(&e.path(), policy, now, &mut segs);
                    segs.is_empty()
                }
            };
            if empty && !live_apps.contains(app_id.as_str()) {
                self.stores.remove(&app_id);
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Give the consumed part of a raw file back to the file system (keeping
/// its head). Where punching holes is not supported, a file read to its
/// end is truncated instead (a line written in between may be lost).
fn punch(f: &File, p: &mut Pos, works: &mut bool) {
    if !*works {
        let len = f.metadata().map_or(0, |m| m.len());
        if p.offset >= len && len >= KEEP_HEAD + 16 * PUNCH_STEP && f.set_len(0).is_ok() {
            *p = Pos::default();
        }
        return;
    }
    let end = p.offset.saturating_sub(KEEP_TAIL) & !4095;
    let from = p.punched.max(KEEP_HEAD);
    if end < from + PUNCH_STEP {
        return;
    }
    {
        use nix::fcntl::{fallocate, FallocateFlags};
        use std::os::fd::AsRawFd;
        let r = fallocate(
            f.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            from as i64,
            (end - from) as i64,
        );
        match r {
            Ok(()) => p.punched = end,
            Err(e) => {
                tracing::warn!(error = %e, "cannot punch holes in raw output files on this file system; they are truncated when read to their end");
                *works = false;
            }
        }
    }
}

/// Bytes a file really occupies on disk (for tests and benchmarks).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_complete_long_or_finished() {
        let (l, n) = split_lines(b"a\r\nb\nparti", false);
        assert_eq!((l, n), (vec!["a".to_string(), "b".to_string()], 5));
        let (l, n) = split_lines(b"a\nparti", true);
        assert_eq!((l, n), (vec!["a".to_string(), "parti".to_string()], 7));
        let long = vec![b'x'; MAX_LINE + 10];
        let (l, n) = split_lines(&long, false);
        assert_eq!((l.len(), n), (1, MAX_LINE));
        assert_eq!(split_lines(b"", true).0.len(), 0);
    }
}
