//! The event bus: how one part of the control plane tells the others that
//! the store changed, so they re-read it now instead of at their next poll.
//!
//! A topic is a hint, never the data: whoever wakes reads the store, which
//! is the truth. A missed or merged notification therefore costs latency,
//! not correctness, and every subscriber also polls now and then (agent
//! syncs every second, controllers every two, routers every second).
//!
//! Services publish through a unit of work ([`crate::ctx::Unit`]): the
//! topics a transaction touched go out after it commits, never before (a
//! subscriber that wakes early would read the old state and sleep again)
//! and never for a transaction that rolled back.
//!
//! [`InProcessBus`] serves one process (SQLite). [`PgBus`] serves several
//! replicas on one PostgreSQL: `publish` wakes this replica's subscribers
//! at once and sends a `NOTIFY` on the topic's channel (`shellwego_apps`,
//! …; the payload is the publishing replica's id), and a task holding a
//! `LISTEN` connection feeds what other replicas publish into the same
//! local [`Subscription`]s. When that connection is lost (or its own
//! heartbeat stops coming back through it), the task connects again and
//! then wakes every subscriber of every topic: they re-read the store,
//! so a notification sent while it was away costs latency, never a change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shellwego_store::{notify, Store};
use tokio::sync::{mpsc, watch};

/// What changed. Coarse on purpose: subscribers re-read what they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The desired state of apps (an app, its deployment, the nodes it may
    /// use) changed: the reconcile controller takes a pass.
    Apps,
    /// What some node should run changed (its generation moved): held agent
    /// syncs re-read their node's generation.
    Nodes,
    /// Which instances serve traffic changed: routers re-read their table.
    Routes,
    /// Events were recorded (the audit log grew): the sequencer numbers them.
    Events,
    /// Recorded events were numbered: event streams read on.
    EventLog,
    /// Webhook deliveries became due without an event (a test ping, a
    /// redelivery) or an attempt ended: the dispatchers look again.
    Deliveries,
    /// A node pushed log lines for a follow: its holder reads them.
    Logs,
    /// Frames of an interactive exec session were written.
    Exec,
}

impl Topic {
    pub const ALL: [Topic; 8] = [
        Topic::Apps,
        Topic::Nodes,
        Topic::Routes,
        Topic::Events,
        Topic::EventLog,
        Topic::Deliveries,
        Topic::Logs,
        Topic::Exec,
    ];

    /// The topic's name (log lines, and the channel name of a bus that
    /// crosses processes).
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Apps => "apps",
            Topic::Nodes => "nodes",
            Topic::Routes => "routes",
            Topic::Events => "events",
            Topic::EventLog => "event_log",
            Topic::Deliveries => "deliveries",
            Topic::Logs => "logs",
            Topic::Exec => "exec",
        }
    }

    fn index(self) -> usize {
        match self {
            Topic::Apps => 0,
            Topic::Nodes => 1,
            Topic::Routes => 2,
            Topic::Events => 3,
            Topic::EventLog => 4,
            Topic::Deliveries => 5,
            Topic::Logs => 6,
            Topic::Exec => 7,
        }
    }
}

/// Publish topics, subscribe to them.
pub trait EventBus: Send + Sync + 'static {
    /// What carries the notifications, for `/readyz`: `in-process`,
    /// `postgres`, or `postgres (reconnecting)`.
    fn describe(&self) -> &'static str {
        "in-process"
    }
    /// Tell every subscriber of these topics that the store changed. Called
    /// after the change committed.
    fn publish(&self, topics: &[Topic]);
    /// Wake on these topics from now on.
    fn subscribe(&self, topics: &[Topic]) -> Subscription;
}

/// A subscriber's end: wakes when one of its topics was published since it
/// last woke (several publications while it was busy wake it once).
pub struct Subscription {
    rx: Vec<watch::Receiver<u64>>,
}

/// The bus is gone (the server stopped).
#[derive(Debug)]
pub struct Closed;

impl Subscription {
    /// Wait until one of the topics is published. `Err` once the bus is
    /// dropped.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        if self.rx.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.rx.iter_mut().map(|r| Box::pin(r.changed()));
        match futures::future::select_all(waits).await {
            (Ok(()), ..) => Ok(()),
            (Err(_), ..) => Err(Closed),
        }
    }
}

/// The bus of one process: a counter per topic.
pub struct InProcessBus {
    counters: [watch::Sender<u64>; Topic::ALL.len()],
}

impl InProcessBus {
    pub fn new() -> Arc<InProcessBus> {
        Arc::new(InProcessBus {
            counters: std::array::from_fn(|_| watch::channel(0).0),
        })
    }
}

impl EventBus for InProcessBus {
    fn publish(&self, topics: &[Topic]) {
        for t in topics {
            self.counters[t.index()].send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn subscribe(&self, topics: &[Topic]) -> Subscription {
        let mut seen = [false; Topic::ALL.len()];
        let rx = topics
            .iter()
            .filter(|t| !std::mem::replace(&mut seen[t.index()], true))
            .map(|t| self.counters[t.index()].subscribe())
            .collect();
        Subscription { rx }
    }
}

/// The bus of a replica sharing PostgreSQL with others.
pub struct PgBus {
    local: Arc<InProcessBus>,
    notify: mpsc::UnboundedSender<Topic>,
    listening: Arc<AtomicBool>,
}

/// How often a replica sends itself a heartbeat through PostgreSQL; its
/// `LISTEN` connection is deemed lost when three in a row do not arrive.
const HEARTBEAT: Duration = Duration::from_secs(2);
const HEARTBEAT_CHANNEL: &str = "shellwego_heartbeat";

fn channel(t: Topic) -> String {
    format!("shellwego_{}", t.as_str())
}

fn topic_of(channel: &str) -> Option<Topic> {
    let name = channel.strip_prefix("shellwego_")?;
    Topic::ALL.into_iter().find(|t| t.as_str() == name)
}

impl PgBus {
    /// Start the bus of replica `origin`: its `LISTEN` connection (to
    /// `url`) and the task that sends its `NOTIFY`s (through `store`), both
    /// until `stopping`.
    pub fn start(
        url: &str,
        store: Store,
        origin: Arc<str>,
        stopping: watch::Receiver<bool>,
    ) -> Arc<PgBus> {
        let local = InProcessBus::new();
        let (notify, rx) = mpsc::unbounded_channel();
        let listening = Arc::new(AtomicBool::new(false));
        tokio::spawn(send_notifications(store.clone(), origin.clone(), rx));
        tokio::spawn(listen(
            url.to_string(),
            store,
            origin,
            local.clone(),
            listening.clone(),
            stopping,
        ));
        Arc::new(PgBus {
            local,
            notify,
            listening,
        })
    }

    /// Is the `LISTEN` connection up?
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
}

impl EventBus for PgBus {
    fn describe(&self) -> &'static str {
        if self.listening() {
            "postgres"
        } else {
            "postgres (reconnecting)"
        }
    }

    fn publish(&self, topics: &[Topic]) {
        self.local.publish(topics);
        for t in topics {
            let _ = self.notify.send(*t);
        }
    }

    fn subscribe(&self, topics: &[Topic]) -> Subscription {
        self.local.subscribe(topics)
    }
}

/// Send a `NOTIFY` for each topic published here (several publications of
/// one topic waiting together go out as one).
async fn send_notifications(
    store: Store,
    origin: Arc<str>,
    mut rx: mpsc::UnboundedReceiver<Topic>,
) {
    while let Some(first) = rx.recv().await {
        let mut topics = vec![first];
        while let Ok(t) = rx.try_recv() {
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        for t in topics {
            if let Err(e) = notify::notify(&store, &channel(t), &origin).await {
                // A hint lost: other replicas notice at their next poll.
                tracing::warn!(topic = t.as_str(), error = %e, "cannot send a notification");
            }
        }
    }
}

/// Hold a `LISTEN` connection and feed other replicas' notifications to
/// this replica's subscribers; reconnect (and wake everyone) when it is
/// lost.
async fn listen(
    url: String,
    store: Store,
    origin: Arc<str>,
    local: Arc<InProcessBus>,
    listening: Arc<AtomicBool>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stopping.borrow() {
            return;
        }
        let mut channels: Vec<String> = Topic::ALL.into_iter().map(channel).collect();
        channels.push(HEARTBEAT_CHANNEL.into());
        let names: Vec<&str> = channels.iter().map(String::as_str).collect();
        let mut l = match notify::Listener::connect(&url, &names).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "event bus: cannot listen on PostgreSQL; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        listening.store(true, Ordering::Relaxed);
        // Whatever was published while this replica was not listening is
        // in the store: everyone re-reads it.
        local.publish(&Topic::ALL);
        tracing::debug!("event bus: listening on PostgreSQL");

        // The connection is read in its own task (a receive is not
        // cancel-safe), which hands notifications over.
        let (tx, mut rx) = mpsc::channel::<(String, String)>(1024);
        let reader = tokio::spawn(async move {
            while let Some(n) = l.recv().await {
                if tx.send((n.channel, n.payload)).await.is_err() {
                    return;
                }
            }
        });
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some((ch, from)) if ch == HEARTBEAT_CHANNEL => {
                        if *from == *origin {
                            heard = tokio::time::Instant::now();
                        }
                    }
                    Some((ch, from)) => {
                        if *from != *origin {
                            if let Some(t) = topic_of(&ch) {
                                local.publish(&[t]);
                            }
                        }
                    }
                    None => {
                        tracing::warn!("event bus: the LISTEN connection was lost; reconnecting");
                        break;
                    }
                },
                _ = beat.tick() => {
                    if heard.elapsed() > HEARTBEAT * 3 {
                        tracing::warn!("event bus: no heartbeat through the LISTEN connection; reconnecting");
                        break;
                    }
                    let (store, origin) = (store.clone(), origin.clone());
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(HEARTBEAT, notify::notify(&store, HEARTBEAT_CHANNEL, &origin)).await;
                    });
                }
                _ = stopping.wait_for(|s| *s) => {
                    reader.abort();
                    listening.store(false, Ordering::Relaxed);
                    return;
                }
            }
        }
        reader.abort();
        listening.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_subscriber_wakes_on_its_topics_only_and_merges_bursts() {
        let bus = InProcessBus::new();
        let mut routes = bus.subscribe(&[Topic::Routes]);
        let quiet = tokio::time::timeout(Duration::from_millis(20), routes.changed()).await;
        assert!(quiet.is_err(), "nothing was published yet");
        bus.publish(&[Topic::Apps]);
        let other = tokio::time::timeout(Duration::from_millis(20), routes.changed()).await;
        assert!(other.is_err(), "another topic does not wake it");
        bus.publish(&[Topic::Routes]);
        bus.publish(&[Topic::Routes, Topic::Nodes]);
        routes.changed().await.unwrap();
        let again = tokio::time::timeout(Duration::from_millis(20), routes.changed()).await;
        assert!(again.is_err(), "two publications while busy wake it once");
    }

    #[tokio::test]
    async fn dropping_the_bus_closes_subscriptions() {
        let bus = InProcessBus::new();
        let mut s = bus.subscribe(&Topic::ALL);
        drop(bus);
        assert!(s.changed().await.is_err());
    }
}
