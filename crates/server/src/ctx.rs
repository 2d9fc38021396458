//! What the control plane's services and controllers share, without any
//! HTTP part: the store, the event bus, the master key and the settings.
//! `AppState` (the HTTP side) holds one of these behind an `Arc`, and so
//! does every controller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shellwego_core::Error;
use shellwego_store::events::{self, NewEvent};
use shellwego_store::{Store, Tx};
use tokio::sync::watch;

use crate::bus::{EventBus, Topic};

pub struct ServerCtx {
    pub store: Store,
    pub bus: Arc<dyn EventBus>,
    /// The master key (encrypts TOTP secrets at rest).
    pub key: crate::mfa::Key,
    pub config: Settings,
    /// Becomes true when the server starts shutting down (ends long-polls
    /// and controllers).
    pub stopping: watch::Receiver<bool>,
}

/// The settings services and controllers read.
#[derive(Clone)]
pub struct Settings {
    /// A node silent this long is offline; agents sync at least 3× as often.
    pub node_timeout: Duration,
    /// Where uploaded archives are kept.
    pub uploads_dir: PathBuf,
    /// How many Free-plan organizations one user may own.
    pub max_free_orgs_per_user: u32,
    /// The `[ssrf]` policy: which targets user-given URLs may reach (checked
    /// here when they are given, and sent to agents, which check it again
    /// when they fetch).
    pub ssrf: shellwego_net::ssrf::Guard,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_timeout: Duration::from_secs(30),
            uploads_dir: std::env::temp_dir().join("shellwego-uploads"),
            max_free_orgs_per_user: 1,
            ssrf: shellwego_net::ssrf::Guard::strict(),
        }
    }
}

impl ServerCtx {
    /// Begin a unit of work: a transaction whose topics are published once
    /// it commits.
    pub async fn unit(&self) -> Result<Unit<'_>, Error> {
        Ok(Unit {
            tx: self.store.begin().await?,
            topics: Vec::new(),
            audit: Vec::new(),
            bus: &*self.bus,
        })
    }

    /// Publish topics for a change already committed (or made outside a
    /// transaction).
    pub fn publish(&self, topics: &[Topic]) {
        self.bus.publish(topics);
    }

    /// The longest an agent sync is held: a third of the liveness timeout,
    /// so that a node heard from on every sync is never taken for dead.
    pub fn sync_wait(&self) -> Duration {
        (self.config.node_timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// A transaction plus the topics it touched and the events it records.
/// Dereferences to the transaction, so store functions take `&mut unit`.
/// The events are written in the transaction when it commits (a change
/// and its audit entry land together or not at all); the topics, and
/// [`Topic::Events`] when events were recorded, are published after.
pub struct Unit<'c> {
    tx: Tx,
    topics: Vec<Topic>,
    audit: Vec<NewEvent>,
    bus: &'c dyn EventBus,
}

/// What a change to desired state touches: the reconciler, the nodes'
/// syncs and the routers.
pub const DESIRED: &[Topic] = &[Topic::Apps, Topic::Nodes, Topic::Routes];

impl Unit<'_> {
    /// Publish these topics when the unit commits.
    pub fn touch(&mut self, topics: &[Topic]) {
        for t in topics {
            if !self.topics.contains(t) {
                self.topics.push(*t);
            }
        }
    }

    /// Record this event with the change (written when the unit commits).
    pub fn record(&mut self, e: NewEvent) {
        self.audit.push(e);
    }

    /// Write the recorded events, commit, then publish what was touched.
    pub async fn commit(mut self) -> Result<(), Error> {
        if !self.audit.is_empty() {
            for e in std::mem::take(&mut self.audit) {
                events::record(&mut self.tx, e).await?;
            }
            self.touch(&[Topic::Events]);
        }
        shellwego_store::commit(self.tx).await?;
        if !self.topics.is_empty() {
            self.bus.publish(&self.topics);
        }
        Ok(())
    }
}

impl std::ops::Deref for Unit<'_> {
    type Target = Tx;
    fn deref(&self) -> &Tx {
        &self.tx
    }
}

impl std::ops::DerefMut for Unit<'_> {
    fn deref_mut(&mut self) -> &mut Tx {
        &mut self.tx
    }
}
