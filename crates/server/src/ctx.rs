//! What the control plane's services and controllers share, without any
//! HTTP part: the store, the event bus, the master key and the settings.
//! `AppState` (the HTTP side) holds one of these behind an `Arc`, and so
//! does every controller.

use std::sync::Arc;
use std::time::Duration;

use shellwego_core::Error;
use shellwego_store::events::{self, NewEvent};
use shellwego_store::{Store, Tx};
use tokio::sync::watch;

use crate::bus::{EventBus, Topic};
use crate::leader::{Fence, Replica};

#[derive(Clone)]
pub struct ServerCtx {
    pub store: Store,
    pub bus: Arc<dyn EventBus>,
    /// Encryption at rest: the master keys and the data keys they wrap.
    pub vault: crate::vault::Vault,
    pub config: Settings,
    /// Becomes true when the server starts shutting down (ends long-polls
    /// and controllers).
    pub stopping: watch::Receiver<bool>,
    /// This replica: its id and the controllers it leads.
    pub replica: Arc<Replica>,
    /// Set in the context a leading controller runs with: every
    /// transaction begun through it first checks that this replica still
    /// leads (see [`crate::leader`]).
    pub fence: Option<Fence>,
}

/// The settings services and controllers read.
#[derive(Clone)]
pub struct Settings {
    /// A node silent this long is offline; agents sync at least 3× as often.
    pub node_timeout: Duration,
    /// Where uploaded archives (and later other objects) are kept.
    pub objects: crate::objects::Objects,
    /// How many Free-plan organizations one user may own.
    pub max_free_orgs_per_user: u32,
    /// The `[ssrf]` policy: which targets user-given URLs may reach (checked
    /// here when they are given, and sent to agents, which check it again
    /// when they fetch).
    pub ssrf: shellwego_net::ssrf::Guard,
    /// How webhook deliveries are sent and retried (`[webhooks]`).
    pub webhooks: WebhookConfig,
    /// How long each resolution of app metrics is kept (`[metrics]`).
    pub metrics: MetricsRetention,
    /// Custom domains.
    pub domains: DomainSettings,
}

/// What custom domains need to know of the installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSettings {
    /// The ingress's base domain (`<app>.<base>`): custom domains under it
    /// are refused.
    pub base_domain: String,
    /// What a custom domain's CNAME record points at (`dns_validation`);
    /// default: the base domain (its wildcard record reaches the ingress).
    pub cname_target: Option<String>,
}

impl Default for DomainSettings {
    fn default() -> Self {
        DomainSettings {
            base_domain: "localhost".into(),
            cname_target: None,
        }
    }
}

/// The `[webhooks]` settings: how the dispatcher sends and retries
/// deliveries, and when it gives up on a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The longest one attempt may take (connecting, sending, and the
    /// answer's headers).
    pub timeout: Duration,
    /// The pause before the first retry; later ones grow from it by the
    /// webhook's backoff (±20% jitter, at most an hour).
    pub retry_base: Duration,
    /// A webhook whose deliveries have failed for this long without a
    /// success in between is disabled.
    pub disable_after: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(10),
            disable_after: Duration::from_secs(3 * 86_400),
        }
    }
}

/// How long each resolution is kept (seconds): raw 10 s for a day, 1 m for
/// a week, 1 h for 90 days, 1 d for a year.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsRetention {
    pub raw: i64,
    pub minute: i64,
    pub hour: i64,
    pub day: i64,
}

impl Default for MetricsRetention {
    fn default() -> Self {
        MetricsRetention {
            raw: 86_400,
            minute: 7 * 86_400,
            hour: 90 * 86_400,
            day: 365 * 86_400,
        }
    }
}

impl Settings {
    /// Defaults, with objects in `objects` (tests).
    pub fn with_objects(objects: crate::objects::Objects) -> Settings {
        Settings {
            node_timeout: Duration::from_secs(30),
            objects,
            max_free_orgs_per_user: 1,
            ssrf: shellwego_net::ssrf::Guard::strict(),
            webhooks: WebhookConfig::default(),
            metrics: Default::default(),
            domains: Default::default(),
        }
    }
}

impl ServerCtx {
    /// The same context for a controller leading under `fence`.
    pub fn fenced(&self, fence: Fence) -> ServerCtx {
        ServerCtx {
            fence: Some(fence),
            ..self.clone()
        }
    }

    /// Begin a transaction. In a leader's context its first statement
    /// checks the lease's term (and holds the lease until it ends), so a
    /// deposed leader commits nothing.
    pub async fn begin(&self) -> Result<Tx, Error> {
        let mut tx = self.store.begin().await?;
        if let Some(f) = &self.fence {
            let backend = self.store.backend();
            if !shellwego_store::leases::fence(&mut tx, backend, f.name, &f.holder, f.term).await? {
                return Err(Error::Unavailable(format!(
                    "this replica no longer leads {} (term {} is over)",
                    f.name, f.term
                )));
            }
        }
        Ok(tx)
    }

    /// Begin a unit of work: a transaction whose topics are published once
    /// it commits.
    pub async fn unit(&self) -> Result<Unit<'_>, Error> {
        Ok(Unit {
            tx: self.begin().await?,
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
