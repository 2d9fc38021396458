//! `GET /v1/apps/{id}/logs`: an app's output lines, read where they are
//! kept — on the nodes (see the agent's `logs` module).
//!
//! A query becomes one `logs` task per reachable node of the app's
//! organization (the nodes that ran its instances may have lines of
//! stopped ones too); their answers are merged in time order and the last
//! `tail` kept. A node that does not answer in time is named in the
//! result (`missing_nodes`), never waited for past [`ANSWER`].
//!
//! A follow is a `log_follows` row every node of the organization hears of
//! with its sync; each pushes the app's new lines into `log_chunks`
//! through whichever replica it reaches, and the replica holding the
//! client's stream takes them (woken by the bus topic `logs`). The follow
//! is made before the query of the last lines, and a node applies its
//! follows before running the tasks of the same answer, so lines printed
//! meanwhile are seen once: live lines at or before a node's last queried
//! line are skipped.

use std::collections::HashMap;
use std::time::Duration;

use shellwego_api::agent::{AgentTask, AgentTaskResult};
use shellwego_api::logs::{
    LogEntry, LogFilter, LogFollow, LogLevel, LogLine, LogPush, LogQuery, LogsParams, DEFAULT_TAIL,
    MAX_TAIL,
};
use shellwego_core::time::{from_micros, now, parse_rfc3339, to_micros};
use shellwego_core::{id, Error};
use shellwego_store::{apps, log_follows, nodes, tasks};

use crate::auth::Principal;
use crate::bus::Topic;
use crate::ctx::ServerCtx;

/// How long a query waits for the nodes' answers.
const ANSWER: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(25);
/// A follow's row lives this long unless renewed (its holder renews it
/// every [`RENEW`]).
const FOLLOW_TTL: Duration = Duration::from_secs(60);
const RENEW: Duration = Duration::from_secs(20);

/// A query, read from the query string.
#[derive(Debug, Clone)]
pub struct Request {
    pub follow: bool,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub tail: u32,
    pub filter: LogFilter,
}

/// `since`/`until`: RFC 3339, or a time ago (`90s`, `15m`, `1h`, `7d`).
fn parse_time(field: &str, v: &str) -> Result<i64, Error> {
    if let Some(t) = parse_rfc3339(v.trim()) {
        return Ok(to_micros(t));
    }
    if let Some(ago) = shellwego_core::units::parse_duration(v) {
        let ago = i64::try_from(ago.as_micros()).unwrap_or(i64::MAX);
        return Ok(to_micros(now()).saturating_sub(ago));
    }
    Err(Error::field(
        field,
        "invalid_value",
        format!("{v:?} is not a time: give an RFC 3339 timestamp (2024-01-20T10:00:00Z) or a time ago (30s, 15m, 1h, 7d)"),
    ))
}

impl Request {
    pub fn parse(p: &LogsParams) -> Result<Request, Error> {
        let since = p
            .since
            .as_deref()
            .map(|v| parse_time("since", v))
            .transpose()?;
        let until = p
            .until
            .as_deref()
            .map(|v| parse_time("until", v))
            .transpose()?;
        if let (Some(s), Some(u)) = (since, until) {
            if s > u {
                return Err(Error::field(
                    "until",
                    "invalid_value",
                    "until is before since; give a later until",
                ));
            }
        }
        let tail = p.tail.unwrap_or(DEFAULT_TAIL);
        if tail > MAX_TAIL {
            return Err(Error::field(
                "tail",
                "out_of_range",
                format!("at most {MAX_TAIL} lines; narrow the query with since/until"),
            ));
        }
        let level = p
            .level
            .as_deref()
            .map(|l| {
                l.parse::<LogLevel>()
                    .map_err(|e| Error::field("level", "invalid_value", e))
            })
            .transpose()?;
        let search = p.search.as_deref().filter(|s| !s.is_empty());
        if search.is_some_and(|s| s.len() > 256) {
            return Err(Error::field("search", "too_long", "at most 256 characters"));
        }
        Ok(Request {
            follow: p.follow.unwrap_or(false),
            since,
            until,
            tail,
            filter: LogFilter {
                instance_id: p.instance_id.clone().filter(|s| !s.is_empty()),
                level,
                search: search.map(str::to_lowercase),
            },
        })
    }
}

/// The answer to a query.
pub struct Found {
    pub entries: Vec<LogEntry>,
    /// Nodes that did not answer in time (their lines are missing).
    pub missing_nodes: Vec<String>,
    /// Per node, the time of its last line queried (a follow's start).
    pub last_t: HashMap<String, i64>,
}

pub fn entry(node_id: &str, l: LogLine) -> LogEntry {
    LogEntry {
        timestamp: from_micros(l.t).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        level: l.level,
        instance_id: l.instance_id,
        stream: l.stream,
        node_id: node_id.to_string(),
        message: l.message,
    }
}

/// The app (visible to the caller, who may read apps) and its org.
async fn app_of(ctx: &ServerCtx, p: &Principal, app_id: &str) -> Result<(String, String), Error> {
    p.authorize("apps", "read", Some(app_id))?;
    let mut db = ctx.store.conn().await?;
    let app = apps::get_visible(&mut db, app_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("app", app_id))?;
    Ok((app.id, app.organization_id))
}

/// Check the caller may read the app's logs; its organization.
pub async fn authorize(ctx: &ServerCtx, p: &Principal, app_id: &str) -> Result<String, Error> {
    Ok(app_of(ctx, p, app_id).await?.1)
}

/// The last lines of the app that answer the request, from every node.
pub async fn query(ctx: &ServerCtx, org: &str, app_id: &str, r: &Request) -> Result<Found, Error> {
    let node_ids = nodes::reachable_in_org(&mut *ctx.store.conn().await?, org).await?;
    let q = LogQuery {
        app_id: app_id.to_string(),
        since: r.since,
        until: r.until,
        tail: r.tail,
        filter: r.filter.clone(),
    };
    let expires = now() + chrono::Duration::from_std(ANSWER).map_err(Error::internal)?;
    let mut asked: Vec<(String, String)> = vec![];
    if !node_ids.is_empty() && r.tail > 0 {
        let mut unit = ctx.unit().await?;
        for node_id in &node_ids {
            let task = AgentTask {
                id: id::new_id("tsk"),
                kind: "logs".into(),
                instance_id: String::new(),
                command: vec![],
                stdin: String::new(),
                timeout_ms: 0,
                output_limit: 0,
                logs: Some(q.clone()),
                session: None,
            };
            let request = serde_json::to_string(&task).map_err(Error::internal)?;
            tasks::insert(
                &mut unit,
                tasks::NewTask {
                    id: &task.id,
                    node_id,
                    organization_id: org,
                    instance_id: app_id,
                    kind: "logs",
                    request: &request,
                    expires_at: expires,
                },
            )
            .await?;
            nodes::bump_node(&mut unit, node_id).await?;
            asked.push((node_id.clone(), task.id));
        }
        unit.touch(&[Topic::Nodes]);
        unit.commit().await?;
    }
    let deadline = tokio::time::Instant::now() + ANSWER;
    let mut answers: Vec<(String, AgentTaskResult)> = vec![];
    let mut waiting = asked.clone();
    while !waiting.is_empty() {
        let mut db = ctx.store.conn().await?;
        let mut still = vec![];
        for (node_id, task_id) in waiting {
            match tasks::result_of(&mut db, &task_id).await? {
                Some(text) => {
                    let r: AgentTaskResult =
                        serde_json::from_str(&text).map_err(Error::internal)?;
                    answers.push((node_id, r));
                }
                None => still.push((node_id, task_id)),
            }
        }
        drop(db);
        waiting = still;
        if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    {
        let mut db = ctx.store.conn().await?;
        for (_, task_id) in &asked {
            tasks::delete(&mut db, task_id).await?;
        }
    }
    let mut missing_nodes: Vec<String> = waiting.into_iter().map(|(n, _)| n).collect();
    let mut lines: Vec<(String, LogLine)> = vec![];
    let mut last_t = HashMap::new();
    for (node_id, a) in answers {
        if let Some(e) = a.error {
            tracing::warn!(node_id, error = %e, "a node could not read its logs");
            missing_nodes.push(node_id);
            continue;
        }
        if let Some(l) = a.lines.last() {
            last_t.insert(node_id.clone(), l.t);
        }
        lines.extend(a.lines.into_iter().map(|l| (node_id.clone(), l)));
    }
    // Time order across nodes (each node's lines are in order already).
    lines.sort_by(|a, b| a.1.t.cmp(&b.1.t).then_with(|| a.0.cmp(&b.0)));
    let skip = lines.len().saturating_sub(r.tail as usize);
    let entries = lines
        .into_iter()
        .skip(skip)
        .map(|(n, l)| entry(&n, l))
        .collect();
    missing_nodes.sort();
    Ok(Found {
        entries,
        missing_nodes,
        last_t,
    })
}

/// The organization's live follows, for a node's desired state.
pub async fn follows_for_node(ctx: &ServerCtx, org: &str) -> Result<Vec<LogFollow>, Error> {
    let rows = log_follows::live(&mut *ctx.store.conn().await?, org).await?;
    Ok(rows
        .into_iter()
        .map(|f| LogFollow {
            id: f.id,
            app_id: f.app_id,
            filter: serde_json::from_str(&f.filter).unwrap_or_default(),
        })
        .collect())
}

/// Follows held open by this process (a gauge of `/metrics`).
static OPEN: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn open_follows() -> i64 {
    OPEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// A follow held by this replica. Dropping it ends the follow (its row,
/// its pushes; the nodes stop pushing with their next sync).
pub struct Follow {
    pub id: String,
    org: String,
    ctx: std::sync::Arc<ServerCtx>,
    renewed: tokio::time::Instant,
    /// Per node, the last line time already delivered.
    seen: HashMap<String, i64>,
}

/// New lines a follow took (with lines the nodes had to leave out).
pub struct Batch {
    pub entries: Vec<LogEntry>,
    pub dropped: u64,
}

impl Follow {
    /// Start following the app: every node of its organization hears of it.
    pub async fn start(
        ctx: &std::sync::Arc<ServerCtx>,
        org: &str,
        app_id: &str,
        filter: &LogFilter,
    ) -> Result<Follow, Error> {
        let id = id::new_id("lgf");
        let filter_json = serde_json::to_string(filter).map_err(Error::internal)?;
        let expires = now() + chrono::Duration::from_std(FOLLOW_TTL).map_err(Error::internal)?;
        let mut unit = ctx.unit().await?;
        log_follows::insert(&mut unit, &id, org, app_id, &filter_json, expires).await?;
        nodes::bump_org(&mut unit, org).await?;
        unit.touch(&[Topic::Nodes]);
        unit.commit().await?;
        OPEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Follow {
            id,
            org: org.to_string(),
            ctx: ctx.clone(),
            renewed: tokio::time::Instant::now(),
            seen: HashMap::new(),
        })
    }

    /// Lines already delivered by a query (live ones up to them are
    /// skipped).
    pub fn seen_up_to(&mut self, last_t: HashMap<String, i64>) {
        self.seen = last_t;
    }

    /// Wait for new lines (or `max_wait`); renews the follow as it goes.
    /// `Ok(None)`: the follow is gone (expired under a stalled replica).
    pub async fn next(
        &mut self,
        sub: &mut crate::bus::Subscription,
        max_wait: Duration,
    ) -> Result<Option<Batch>, Error> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            if self.renewed.elapsed() >= RENEW {
                let until =
                    now() + chrono::Duration::from_std(FOLLOW_TTL).map_err(Error::internal)?;
                if !log_follows::renew(&mut *self.ctx.store.conn().await?, &self.id, until).await? {
                    return Ok(None);
                }
                self.renewed = tokio::time::Instant::now();
            }
            let taken = log_follows::take(&mut *self.ctx.store.conn().await?, &self.id).await?;
            if !taken.is_empty() {
                let mut b = Batch {
                    entries: vec![],
                    dropped: 0,
                };
                for (node_id, body) in taken {
                    let Ok(push) = serde_json::from_str::<LogPush>(&body) else {
                        continue;
                    };
                    b.dropped += push.dropped;
                    let seen = self.seen.entry(node_id.clone()).or_insert(i64::MIN);
                    for l in push.lines {
                        if l.t > *seen {
                            *seen = l.t;
                            b.entries.push(entry(&node_id, l));
                        }
                    }
                }
                if !b.entries.is_empty() || b.dropped > 0 {
                    return Ok(Some(b));
                }
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Some(Batch {
                    entries: vec![],
                    dropped: 0,
                }));
            }
            // Woken by a push through any replica; a second now and then
            // regardless (a lost notification costs latency only).
            let wait = (deadline - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, sub.changed()).await;
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let (ctx, id, org) = (self.ctx.clone(), self.id.clone(), self.org.clone());
        // Not in a runtime any more (the server is stopping): the row
        // expires on its own.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let ended = async {
                    let mut unit = ctx.unit().await?;
                    log_follows::delete(&mut unit, &id).await?;
                    nodes::bump_org(&mut unit, &org).await?;
                    unit.touch(&[Topic::Nodes]);
                    unit.commit().await
                };
                if let Err(e) = ended.await {
                    tracing::warn!(follow_id = %id, error = %e, "cannot end a log follow; it expires on its own");
                }
            });
        }
    }
}

/// How many follows are held (for tests: a client that left leaves none).
pub async fn follows_held(ctx: &ServerCtx) -> Result<i64, Error> {
    log_follows::count(&mut *ctx.store.conn().await?).await
}
