//! Simulated node agents for `bench cluster` and `bench replicas`: each one
//! a tokio task in the benchmark process, joined with its join token (see
//! [`join`]) and long-polling `POST /v1/agent/sync` through the typed agent
//! client
//! (`shellwego_client::agent::AgentClient`; every agent a clone of one
//! client, so they share one connection pool). An agent "runs" what it is
//! told at once: its next sync reports every desired instance healthy, as
//! the test kit's `FakeAgent::report_healthy` does, with the generation it
//! received, a growing `seq`, and then it is held like a real agent's.
//! When each instance appeared in (or left) an agent's desired state, and
//! when its healthy report went up, is kept in [`Seen`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shellwego_api::agent::{
    AgentJoin, AgentJoined, AgentSync, InstanceReport, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use shellwego_client::agent::{AgentClient, AgentError};
use shellwego_client::StatusCode;
use tokio::sync::{watch, Notify};

/// The port a simulated instance "listens" on.
const PORT: u16 = 4567;

/// What the simulated agents saw, shared by all of them.
#[derive(Default)]
pub struct Seen {
    inner: Mutex<SeenInner>,
    changed: Notify,
    /// Sync calls answered.
    pub syncs: AtomicU64,
    /// Sync calls that failed (refused, unreachable, unreadable).
    pub errors: AtomicU64,
    /// Agents whose first sync was answered.
    pub first_synced: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

#[derive(Default)]
struct SeenInner {
    /// Instance id → when a sync answer first listed it.
    appeared: HashMap<String, Instant>,
    /// Instance id → when a sync answer first no longer listed it.
    gone: HashMap<String, Instant>,
    /// Instance id → when the sync carrying its first healthy report was sent.
    reported: HashMap<String, Instant>,
}

impl Seen {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeenInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When an agent first received instance `id`.
    pub fn appeared(&self, id: &str) -> Option<Instant> {
        self.lock().appeared.get(id).copied()
    }

    /// When an agent first received a desired state without instance `id`.
    pub fn gone(&self, id: &str) -> Option<Instant> {
        self.lock().gone.get(id).copied()
    }

    /// How many instances agents have received, and the last time one did.
    pub fn appeared_count_and_last(&self) -> (usize, Option<Instant>) {
        let g = self.lock();
        (g.appeared.len(), g.appeared.values().max().copied())
    }

    /// How many instances were reported healthy, and the last report's time.
    pub fn reported_count_and_last(&self) -> (usize, Option<Instant>) {
        let g = self.lock();
        (g.reported.len(), g.reported.values().max().copied())
    }

    /// The last error an agent got, for the summary.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wait (up to `limit`) until `at(self)` is known; it.
    pub async fn wait_for(
        &self,
        limit: Duration,
        at: impl Fn(&Seen) -> Option<Instant>,
    ) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = at(self) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return at(self);
            }
        }
    }

    fn error(&self, e: &AgentError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
    }
}

/// A joined node, before its agent runs.
pub struct Joined {
    pub node_id: String,
    client: AgentClient,
    /// The longest the control plane holds a sync (from the join answer).
    wait_secs: u64,
}

/// What a simulated machine reports: `cores` CPUs, `memory` bytes, the
/// process and container drivers, in `zone`.
pub fn machine(join_token: &str, name: &str, cores: i64, memory: i64, zone: &str) -> AgentJoin {
    AgentJoin {
        join_token: join_token.to_string(),
        hostname: name.to_string(),
        cpu_cores: cores,
        memory_total: memory,
        memory_available: memory,
        disk_total: 100 << 30,
        agent_version: Some("bench".into()),
        drivers: vec!["process".into(), "container".into()],
        zone: Some(zone.to_string()),
        ..Default::default()
    }
}

/// Join with `join` (`POST /v1/agent/join`, with the agent protocol's
/// header), from the local address `from` when given: joining is limited
/// per client address like any anonymous call (20 at once, 100 a minute),
/// so a benchmark of many nodes joins each from its own loopback address,
/// as separate machines would. Refusals for load (429, 503) and an
/// unreachable control plane are retried for up to a minute. The joined
/// node's agent then syncs through `client` (shared by all).
pub async fn join(
    client: &AgentClient,
    from: Option<std::net::IpAddr>,
    join: &AgentJoin,
) -> anyhow::Result<Joined> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!(
        "{}/v1/agent/join",
        client.control_plane().trim_end_matches('/')
    );
    let t = Instant::now();
    loop {
        let res = http
            .post(&url)
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string())
            .json(join)
            .send()
            .await;
        let retry = match res {
            Ok(r) if r.status().is_success() => {
                let j: AgentJoined = r.json().await.context("the join answer")?;
                return Ok(Joined {
                    client: client.clone().with_credential(&j.credential),
                    node_id: j.node_id,
                    wait_secs: j.sync_wait_secs.clamp(1, 30),
                });
            }
            Ok(r)
                if r.status() == StatusCode::TOO_MANY_REQUESTS
                    || r.status() == StatusCode::SERVICE_UNAVAILABLE =>
            {
                format!("{}", r.status())
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                bail!("join {}: {status}: {body}", join.hostname)
            }
            Err(e) => e.to_string(),
        };
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "join {}: still refused after a minute: {retry}",
                join.hostname
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The local address node `i` of a benchmark joins from: 127.10.x.y, one
/// per node (all of 127.0.0.0/8 is the loopback interface on Linux).
pub fn loopback(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        10,
        (i / 250) as u8,
        1 + (i % 250) as u8,
    ))
}

/// The client every simulated agent clones: `urls` (comma-separated
/// replicas), calls allowed to take up to a minute past the longest hold.
pub fn client(urls: &str) -> anyhow::Result<AgentClient> {
    Ok(AgentClient::new(urls, Duration::from_secs(30 + 60))?)
}

impl Joined {
    /// Run the node's agent until `stop` turns true.
    pub fn spawn(
        self,
        seen: Arc<Seen>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(self, seen, stop))
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

async fn run(a: Joined, seen: Arc<Seen>, mut stop: watch::Receiver<bool>) {
    let mut generation = -1i64;
    // Instance id → (driver, started_at): what it runs, "started" when it
    // first appeared (kept, so that an unchanged report changes no row).
    let mut running: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut unreported: Vec<String> = vec![];
    let mut seq = 0i64;
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    loop {
        seq = (seq + 1).max(now_micros());
        let reports: Vec<InstanceReport> = running
            .iter()
            .map(|(id, (driver, started_at))| InstanceReport {
                id: id.clone(),
                status: "healthy".into(),
                driver: Some(driver.clone()),
                port: Some(PORT),
                pid: Some(42),
                started_at: Some(*started_at),
                health_checks_passed: 1,
                ..Default::default()
            })
            .collect();
        let body = AgentSync {
            generation,
            wait_secs: Some(a.wait_secs),
            instances: Some(reports),
            internal_ip: Some("127.0.0.1".into()),
            seq: Some(seq),
            ..Default::default()
        };
        if !unreported.is_empty() {
            let now = Instant::now();
            let mut g = seen.lock();
            for id in unreported.drain(..) {
                g.reported.entry(id).or_insert(now);
            }
        }
        let answer = async {
            match a.client.sync(&body).await {
                Ok(ans) => ans.desired().await,
                Err(e) => Err(e),
            }
        };
        let res = tokio::select! {
            r = answer => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match res {
            Ok(d) => {
                let now = Instant::now();
                seen.syncs.fetch_add(1, Ordering::Relaxed);
                backoff = Duration::from_millis(200);
                if first {
                    first = false;
                    seen.first_synced.fetch_add(1, Ordering::Relaxed);
                }
                if d.generation != generation {
                    generation = d.generation;
                    let mut next = BTreeMap::new();
                    let mut added = vec![];
                    for i in d.instances {
                        let kept = running.remove(&i.id);
                        if kept.is_none() {
                            added.push(i.id.clone());
                        }
                        let v = kept.unwrap_or_else(|| (i.driver.clone(), now_micros()));
                        next.insert(i.id, v);
                    }
                    let removed = std::mem::replace(&mut running, next);
                    {
                        let mut g = seen.lock();
                        for id in &added {
                            g.appeared.entry(id.clone()).or_insert(now);
                        }
                        for id in removed.into_keys() {
                            g.gone.entry(id).or_insert(now);
                        }
                    }
                    unreported.extend(added);
                    seen.changed.notify_waiters();
                }
            }
            Err(AgentError::Refused { status, .. }) if status == StatusCode::UNAUTHORIZED => {
                seen.error(&AgentError::Refused {
                    status,
                    detail: Some(format!("node {} no longer accepted", a.node_id)),
                });
                return;
            }
            Err(e) => {
                seen.error(&e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
