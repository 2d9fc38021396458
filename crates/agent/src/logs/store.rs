//! One app's stored lines on this node: `<logs>/apps/<app_id>/`, a
//! directory of segments `<t>.ndjson` (`t`: the first line's time, in
//! microseconds, zero-padded so names sort by time), one JSON object per
//! line, appended by the tailer thread only, plus `policy.json` (the app's
//! retention and size cap as last heard from the control plane).
//!
//! Bounds: a segment is closed at a quarter of the cap (64 KiB to 8 MiB);
//! after every append the oldest segments go while the directory holds
//! more than the cap, and segments older than the retention go once a
//! minute ([`AppStore::expire`]). A reader (a query) never takes a lock:
//! appends are whole lines in one `write`, and a half-written last line
//! does not parse and is skipped.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use shellwego_api::logs::{LogLevel, LogLine, LogPolicy, LogQuery};

const POLICY: &str = "policy.json";
const SUFFIX: &str = ".ndjson";

/// A line as stored (short keys: they are repeated on every line).
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    t: i64,
    #[serde(borrow)]
    i: Cow<'a, str>,
    #[serde(borrow)]
    s: Cow<'a, str>,
    l: LogLevel,
    /// Borrowed unless it has escapes.
    #[serde(borrow)]
    m: Cow<'a, str>,
}

pub struct AppStore {
    pub dir: PathBuf,
    pub policy: LogPolicy,
    current: Option<(File, u64)>,
    /// Segments (name's time, bytes), oldest first; the last is `current`'s.
    segments: Vec<(i64, u64)>,
    last_t: i64,
}

fn segment_name(t: i64) -> String {
    format!("{t:020}{SUFFIX}")
}

/// The segments of an app's directory, oldest first (time, bytes).
fn segments_of(dir: &Path) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let t = name.strip_suffix(SUFFIX)?.parse().ok()?;
            Some((t, e.metadata().ok()?.len()))
        })
        .collect();
    out.sort();
    out
}

pub fn read_policy(dir: &Path) -> Option<LogPolicy> {
    serde_json::from_slice(&fs::read(dir.join(POLICY)).ok()?).ok()
}

impl AppStore {
    pub fn open(dir: PathBuf, policy: LogPolicy) -> io::Result<AppStore> {
        fs::create_dir_all(&dir)?;
        let segments = segments_of(&dir);
        let s = AppStore {
            dir,
            policy,
            current: None,
            last_t: segments.last().map_or(0, |s| s.0),
            segments,
        };
        s.write_policy()?;
        Ok(s)
    }

    pub fn set_policy(&mut self, p: LogPolicy) -> io::Result<()> {
        if p != self.policy {
            self.policy = p;
            self.write_policy()?;
        }
        Ok(())
    }

    fn write_policy(&self) -> io::Result<()> {
        let tmp = self.dir.join(".policy.tmp");
        fs::write(&tmp, serde_json::to_vec(&self.policy).unwrap_or_default())?;
        fs::rename(tmp, self.dir.join(POLICY))
    }

    fn segment_cap(&self) -> u64 {
        (self.policy.max_bytes / 4).clamp(64 << 10, 8 << 20)
    }

    /// A time for a line read now: the clock, but after the last one.
    pub fn next_t(&mut self, now: i64) -> i64 {
        self.last_t = now.max(self.last_t + 1);
        self.last_t
    }

    /// Append lines (each with its time from [`Self::next_t`]).
    pub fn append(&mut self, lines: &[LogLine]) -> io::Result<()> {
        let Some(first) = lines.first() else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(lines.len() * 96);
        for l in lines {
            serde_json::to_writer(
                &mut buf,
                &Stored {
                    t: l.t,
                    i: Cow::Borrowed(&l.instance_id),
                    s: Cow::Borrowed(&l.stream),
                    l: l.level,
                    m: Cow::Borrowed(&l.message),
                },
            )
            .map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let cap = self.segment_cap();
        if self.current.as_ref().is_none_or(|(_, n)| *n >= cap) {
            let path = self.dir.join(segment_name(first.t));
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            let len = f.metadata()?.len();
            if self.segments.last().is_none_or(|s| s.0 != first.t) {
                self.segments.push((first.t, len));
            }
            self.current = Some((f, len));
        }
        let Some((f, n)) = self.current.as_mut() else {
            return Ok(());
        };
        f.write_all(&buf)?;
        *n += buf.len() as u64;
        if let Some(last) = self.segments.last_mut() {
            last.1 = *n;
        }
        self.trim();
        Ok(())
    }

    /// Bytes of lines held.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.1).sum()
    }

    /// Delete the oldest segments while over the cap (never the current).
    fn trim(&mut self) {
        while self.bytes() > self.policy.max_bytes && self.segments.len() > 1 {
            let (t, _) = self.segments.remove(0);
            let _ = fs::remove_file(self.dir.join(segment_name(t)));
        }
    }

    /// Delete segments whose every line is older than the retention (a
    /// segment's lines are older than the next one's first). True when
    /// the directory holds nothing any more.
    pub fn expire(&mut self, now: SystemTime) -> bool {
        expire_dir(&self.dir, self.policy, now, &mut self.segments);
        if self.segments.is_empty() {
            self.current = None;
            return true;
        }
        false
    }
}

/// [`AppStore::expire`] for a directory no store has open.
pub fn expire_dir(dir: &Path, policy: LogPolicy, now: SystemTime, segments: &mut Vec<(i64, u64)>) {
    *segments = segments_of(dir);
    let Some(cutoff) = now
        .checked_sub(Duration::from_secs(policy.retention_secs))
        .and_then(|c| c.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as i64)
    else {
        return;
    };
    while let Some(&(t, _)) = segments.first() {
        // The end of a segment is the next's start, or its file's mtime.
        let end = segments.get(1).map(|s| s.0).unwrap_or_else(|| {
            fs::metadata(dir.join(segment_name(t)))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(i64::MAX, |d| d.as_micros() as i64)
        });
        if end >= cutoff {
            break;
        }
        let _ = fs::remove_file(dir.join(segment_name(t)));
        segments.remove(0);
    }
}

/// The last `q.tail` lines of the app's directory that pass the query,
/// oldest first. Reads the newest segments first and stops once it has
/// enough (or reaches lines before `since`).
pub fn query(dir: &Path, q: &LogQuery) -> Vec<LogLine> {
    let segments = segments_of(dir);
    let tail = q.tail as usize;
    let mut found: Vec<LogLine> = vec![];
    if tail == 0 {
        return found;
    }
    for &(t, _) in segments.iter().rev() {
        // Every line of this segment is at or after its name's time.
        if q.until.is_some_and(|u| t > u) {
            continue;
        }
        let Ok(bytes) = fs::read(dir.join(segment_name(t))) else {
            continue;
        };
        let mut here: Vec<LogLine> = vec![];
        for raw in bytes.split(|b| *b == b'\n') {
            let Ok(s) = serde_json::from_slice::<Stored>(raw) else {
                continue;
            };
            if q.since.is_some_and(|x| s.t < x) || q.until.is_some_and(|x| s.t > x) {
                continue;
            }
            let line = LogLine {
                t: s.t,
                instance_id: s.i.into_owned(),
                stream: s.s.into_owned(),
                level: s.l,
                message: s.m.into_owned(),
            };
            if q.filter.matches(&line) {
                here.push(line);
            }
        }
        // Newest segments first: what is found here goes before.
        let keep = tail - found.len().min(tail);
        let start = here.len().saturating_sub(keep);
        here.drain(..start);
        here.append(&mut found);
        found = here;
        if found.len() >= tail || q.since.is_some_and(|x| t < x) {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use shellwego_api::logs::LogFilter;

    fn line(t: i64, i: &str, m: &str) -> LogLine {
        LogLine {
            t,
            instance_id: i.into(),
            stream: "stdout".into(),
            level: if m.contains("ERR") {
                LogLevel::Error
            } else {
                LogLevel::Info
            },
            message: m.into(),
        }
    }

    #[test]
    fn appends_rotate_trim_and_query_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LogPolicy {
            retention_secs: 3600,
            max_bytes: 512 << 10,
        };
        let mut s = AppStore::open(dir.path().join("app_x"), policy).unwrap();
        let mut t = 1_000_000;
        for batch in 0..200 {
            let lines: Vec<LogLine> = (0..100)
                .map(|k| {
                    t += 1;
                    line(
                        t,
                        if k % 2 == 0 { "inst_a" } else { "inst_b" },
                        &format!(
                            "batch {batch} line {k} {}",
                            if k == 7 { "ERR" } else { "\"quoted\" \\ tab\t" }
                        ),
                    )
                })
                .collect();
            s.append(&lines).unwrap();
        }
        assert!(s.bytes() <= policy.max_bytes, "{}", s.bytes());
        assert!(segments_of(&s.dir).len() > 2);
        let q = |tail, filter: LogFilter, since| LogQuery {
            app_id: "app_x".into(),
            since,
            until: None,
            tail,
            filter,
        };
        let last = query(&s.dir, &q(250, LogFilter::default(), None));
        assert_eq!(last.len(), 250);
        assert!(last.windows(2).all(|w| w[0].t < w[1].t));
        assert_eq!(last.last().unwrap().t, t);
        // Messages with escapes read back (they cannot be borrowed).
        assert!(
            last.iter()
                .filter(|l| l.message.contains("\"quoted\" \\ tab\t"))
                .count()
                > 200
        );
        let errs = query(
            &s.dir,
            &q(
                10_000,
                LogFilter {
                    level: Some(LogLevel::Error),
                    ..Default::default()
                },
                None,
            ),
        );
        assert!(!errs.is_empty() && errs.iter().all(|l| l.message.contains("ERR")));
        let since = query(&s.dir, &q(10_000, LogFilter::default(), Some(t - 9)));
        assert_eq!(since.len(), 10);
        let b = query(
            &s.dir,
            &q(
                5,
                LogFilter {
                    instance_id: Some("inst_b".into()),
                    search: Some("LINE 9 ".to_lowercase()),
                    ..Default::default()
                },
                None,
            ),
        );
        assert_eq!(b.len(), 5, "{b:?}");
        assert!(b
            .iter()
            .all(|l| l.instance_id == "inst_b" && l.message.contains("line 9 ")));
        assert!(b[4].message.starts_with("batch 199 "), "{b:?}");
        // Retention: everything is older than a minute ago… of 2100.
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        assert!(s.expire(later));
        assert!(query(&s.dir, &q(10, LogFilter::default(), None)).is_empty());
        assert_eq!(read_policy(&s.dir), Some(policy));
    }
}
