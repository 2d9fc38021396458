//! Instance output, captured line by line and kept on the node.
//!
//! # Capture
//! A driver starts an instance with stdout and stderr appended to two files
//! of its own, `<data>/logs/raw/<instance id>/<start>.out|.err` (a new pair
//! per start; [`Logs::output_files`]). The instance writes them directly, so
//! its output survives an agent restart and never waits for the agent.
//! One tailer thread ([`tail`]) reads what was appended, splits it into
//! lines (at most [`MAX_LINE`] bytes each), gives each a time (when read;
//! unique and increasing per app), a stream and a level ([`level`]), appends
//! them to the app's store ([`store`]) and hands them to the follows of the
//! app. What it has read is given back to the file system
//! (`fallocate(PUNCH_HOLE)` of the consumed prefix, so the writer is never
//! raced), and a backlog beyond [`tail::RAW_BACKLOG`] (the agent was away)
//! is skipped with a note, so a noisy instance cannot fill the disk with
//! raw output either. The thread is not a tokio task: a flood costs it
//! CPU, never the agent's runtime; each file gets a bounded share of a
//! pass ([`tail::BUDGET`]), so a noisy instance does not starve the others.
//!
//! # Keeping
//! Per app: a retention and a size cap ([`LogPolicy`]; the app's, from its
//! desired instances, else the node's defaults), enforced by [`store`].
//! Lines of stopped instances stay until then.
//!
//! # Reading
//! [`Logs::query`] (a `logs` task from the control plane) and
//! [`Logs::subscribe`] (a follow: new lines as they are stored).

pub mod level;
pub mod store;
pub mod tail;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shellwego_api::logs::{LogFilter, LogLine, LogPolicy, LogQuery};
use tokio::sync::mpsc;

pub use shellwego_api::logs::MAX_LINE;

/// [`DEFAULT_POLICY`]'s retention.
pub const DEFAULT_POLICY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The node's defaults for an app that sets none.
pub const DEFAULT_POLICY: LogPolicy = LogPolicy {
    retention_secs: 7 * 24 * 3600,
    max_bytes: 64 << 20,
};

pub struct Logs {
    root: PathBuf,
    pub defaults: LogPolicy,
    /// The policy each app's latest start carried.
    policies: Mutex<HashMap<String, LogPolicy>>,
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: AtomicU64,
}

struct Subscriber {
    id: u64,
    app_id: String,
    filter: LogFilter,
    tx: mpsc::Sender<Vec<LogLine>>,
    dropped: Arc<AtomicU64>,
}

/// New lines of one app as they are stored; unsubscribed when dropped.
pub struct Subscription {
    pub rx: mpsc::Receiver<Vec<LogLine>>,
    /// Lines left out because the receiver was full (taken by the reader).
    pub dropped: Arc<AtomicU64>,
    id: u64,
    logs: Arc<Logs>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut s) = self.logs.subscribers.lock() {
            s.retain(|x| x.id != self.id);
        }
    }
}

/// An id that names a directory: letters, digits, `_` and `-`.
fn safe(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Logs {
    pub fn new(data_dir: &Path, defaults: LogPolicy) -> Arc<Logs> {
        Arc::new(Logs {
            root: data_dir.join("logs"),
            defaults,
            policies: Mutex::default(),
            subscribers: Mutex::default(),
            next_id: AtomicU64::new(1),
        })
    }

    fn raw_dir(&self) -> PathBuf {
        self.root.join("raw")
    }

    fn apps_dir(&self) -> PathBuf {
        self.root.join("apps")
    }

    /// The files a new start of the instance writes its stdout and stderr
    /// to (made, empty).
    pub fn output_files(
        &self,
        app_id: &str,
        instance_id: &str,
        settings: shellwego_api::logs::LogSettings,
    ) -> io::Result<(PathBuf, PathBuf)> {
        if !safe(app_id) || !safe(instance_id) {
            return Err(io::Error::other(format!(
                "unusable ids for log files: {app_id}, {instance_id}"
            )));
        }
        if let Ok(mut p) = self.policies.lock() {
            p.insert(app_id.to_string(), settings.over(self.defaults));
        }
        let dir = self.raw_dir().join(instance_id);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(tail::APP_FILE), app_id)?;
        let start = shellwego_core::time::to_micros(shellwego_core::time::now());
        let out = dir.join(format!("{start:020}.out"));
        let err = dir.join(format!("{start:020}.err"));
        for f in [&out, &err] {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)?;
        }
        Ok((out, err))
    }

    /// The apps' settings as the desired state has them now.
    pub fn apply_desired(&self, desired: &[shellwego_api::agent::DesiredInstance]) {
        if let Ok(mut p) = self.policies.lock() {
            for d in desired {
                p.insert(d.app_id.clone(), d.log_policy.over(self.defaults));
            }
        }
    }

    fn policy_of(&self, app_id: &str) -> LogPolicy {
        self.policies
            .lock()
            .ok()
            .and_then(|p| p.get(app_id).copied())
            .or_else(|| store::read_policy(&self.apps_dir().join(app_id)))
            .unwrap_or(self.defaults)
    }

    /// The app's stored lines that answer the query, oldest first.
    /// Blocking (reads files).
    pub fn query(&self, q: &LogQuery) -> Vec<LogLine> {
        if !safe(&q.app_id) {
            return vec![];
        }
        store::query(&self.apps_dir().join(&q.app_id), q)
    }

    /// Every line of the app stored from now on that passes the filter,
    /// in batches; `capacity` batches are buffered before lines are
    /// dropped (and counted).
    pub fn subscribe(
        self: &Arc<Self>,
        app_id: &str,
        filter: LogFilter,
        capacity: usize,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        if let Ok(mut s) = self.subscribers.lock() {
            s.push(Subscriber {
                id,
                app_id: app_id.to_string(),
                filter,
                tx,
                dropped: dropped.clone(),
            });
        }
        Subscription {
            rx,
            dropped,
            id,
            logs: self.clone(),
        }
    }

    /// Follows held open now (for tests and the agent's status).
    pub fn subscribers(&self) -> usize {
        self.subscribers.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Hand freshly stored lines of an app to its subscribers.
    fn publish(&self, app_id: &str, lines: &[LogLine]) {
        let Ok(subs) = self.subscribers.lock() else {
            return;
        };
        for s in subs.iter().filter(|s| s.app_id == app_id) {
            let mine: Vec<LogLine> = lines
                .iter()
                .filter(|l| s.filter.matches(l))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let n = mine.len() as u64;
            if s.tx.try_send(mine).is_err() {
                s.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Start the tailer thread. `is_live(instance_id)`: the instance is
    /// (still) this agent's, so its quiet files are kept.
    pub fn start(
        self: &Arc<Self>,
        is_live: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        std::fs::create_dir_all(self.raw_dir())?;
        std::fs::create_dir_all(self.apps_dir())?;
        let logs = self.clone();
        std::thread::Builder::new()
            .name("log-tailer".into())
            .spawn(move || tail::Tailer::new(logs, is_live).run())
    }
}

/// How long the tailer sleeps when a pass found nothing new.
pub const IDLE: Duration = Duration::from_millis(50);

/// Lines sent in one push at most.
const PUSH_LINES: usize = 2000;
/// How long a push waits for more lines after the first.
const PUSH_GATHER: Duration = Duration::from_millis(50);

/// Push the lines of a follow to the control plane as they come, until
/// it answers that the follow is over (or the task is aborted: the follow
/// left the desired state). `sub` is made before this task is spawned, so
/// a query the same answer asked for sees no gap.
pub async fn follow(
    mut sub: Subscription,
    channel: shellwego_client::agent::AgentClient,
    follow_id: String,
) {
    let mut lost = 0u64;
    loop {
        let Some(mut lines) = sub.rx.recv().await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + PUSH_GATHER;
        while lines.len() < PUSH_LINES {
            match tokio::time::timeout_at(deadline, sub.rx.recv()).await {
                Ok(Some(more)) => lines.extend(more),
                _ => break,
            }
        }
        let n = lines.len() as u64;
        let push = shellwego_api::logs::LogPush {
            follow_id: follow_id.clone(),
            lines,
            dropped: lost + sub.dropped.swap(0, Ordering::Relaxed),
        };
        match channel.push_logs(&push).await {
            Ok(()) => lost = 0,
            Err(shellwego_client::agent::AgentError::Refused { status, .. })
                if status == shellwego_client::StatusCode::NOT_FOUND =>
            {
                return
            }
            Err(e) => {
                tracing::warn!(follow_id, error = %e, "cannot push log lines to the control plane");
                lost = push.dropped + n;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
