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
//! [`InProcessBus`] serves one process (SQLite, or one replica). A
//! PostgreSQL implementation (`LISTEN`/`NOTIFY`, a channel per topic) can
//! sit behind the same trait: `publish` also sends a `NOTIFY`, and a task
//! holding a `LISTEN` connection feeds what other replicas publish into the
//! same local [`Subscription`]s, so no caller changes.

use std::sync::Arc;

use tokio::sync::watch;

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
    /// Events were recorded (the audit log grew): event streams read on.
    Events,
}

impl Topic {
    pub const ALL: [Topic; 4] = [Topic::Apps, Topic::Nodes, Topic::Routes, Topic::Events];

    /// The topic's name (log lines, and the channel name of a bus that
    /// crosses processes).
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Apps => "apps",
            Topic::Nodes => "nodes",
            Topic::Routes => "routes",
            Topic::Events => "events",
        }
    }

    fn index(self) -> usize {
        match self {
            Topic::Apps => 0,
            Topic::Nodes => 1,
            Topic::Routes => 2,
            Topic::Events => 3,
        }
    }
}

/// Publish topics, subscribe to them.
pub trait EventBus: Send + Sync + 'static {
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
