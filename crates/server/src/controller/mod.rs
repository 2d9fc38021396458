//! Controllers: the control plane's background loops. Each one compares
//! what the store says should be with what is, and acts; one pass at a
//! time, woken by the topics it cares about (see [`crate::bus`]) and, since
//! a notification is only a hint, every `every()` regardless.
//!
//! - [`reconcile::Reconcile`]: apps whose instances need attention;
//! - [`nodes::Liveness`]: silent nodes become offline;
//! - [`nodes::DrainedNodes`]: drained nodes marked for deletion go;
//! - [`routes::RouteFeed`]: the in-process ingress's route table;
//! - [`retention::EventRetention`], [`retention::EventSequencer`]: the
//!   event log's upkeep;
//! - [`webhooks::Dispatcher`]: sends webhook deliveries.
//!
//! [`run`] is the one loop they all share. A singleton controller (all of
//! them but the route feed, which serves its own replica's ingress, and the
//! webhook dispatcher, whose claims share the work between replicas) runs
//! only on the replica that leads it ([`crate::leader`]), with a context
//! whose transactions are fenced by its term.

pub mod autoscale;
pub mod instances;
pub mod metrics;
pub mod nodes;
pub mod reconcile;
pub mod retention;
pub mod rollout;
pub mod routes;
pub mod secrets;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shellwego_core::Error;

use crate::bus::Topic;
use crate::ctx::ServerCtx;
use crate::leader::{self, Fence};

pub trait Controller: Send + 'static {
    /// For log lines, and the name of its lease.
    const NAME: &'static str;
    /// One replica runs it at a time (it decides for the whole
    /// installation); `false`: every replica runs its own.
    const SINGLETON: bool = true;
    /// Topics that wake it before `every()` is up.
    fn wakes_on(&self) -> &'static [Topic];
    /// The longest it sleeps between passes.
    fn every(&self, ctx: &ServerCtx) -> Duration;
    /// How long to wait before the first pass (after a start).
    fn first_pass_after(&self, _ctx: &ServerCtx) -> Duration {
        Duration::ZERO
    }
    /// One pass. Returns the topics its changes touched (published after
    /// the pass; a controller must not return the topics it wakes on, or
    /// it would wake itself forever).
    fn pass(
        &mut self,
        ctx: &ServerCtx,
    ) -> impl Future<Output = Result<&'static [Topic], Error>> + Send;
}

/// Run `c` until the server stops: a singleton while this replica leads
/// it, any other always.
pub async fn run<C: Controller>(mut c: C, ctx: Arc<ServerCtx>) {
    if !C::SINGLETON {
        return passes(&mut c, ctx).await;
    }
    let replica = ctx.replica.clone();
    let mut stopping = ctx.stopping.clone();
    loop {
        // A follower asks for the lease until it is this replica's.
        let term = loop {
            match leader::acquire(&ctx.store, C::NAME, replica.id()).await {
                Ok(Some(t)) => break t,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(controller = C::NAME, error = %e, "cannot ask for the lease")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(leader::RETRY_EVERY) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        };
        let fence = Fence {
            name: C::NAME,
            holder: replica.holder(),
            term,
        };
        tracing::info!(
            controller = C::NAME,
            term,
            replica = replica.id(),
            "leading"
        );
        replica.set(C::NAME, Some(term));
        let led = Arc::new(ctx.fenced(fence.clone()));
        // The passes stop the moment the lease is lost (a pass cut short
        // rolls its transaction back; the fence refuses what it would
        // commit late).
        let stopped = tokio::select! {
            _ = passes(&mut c, led) => true,
            _ = leader::keep(&ctx.store, &fence) => false,
        };
        replica.set(C::NAME, None);
        if stopped {
            leader::release(&ctx.store, &fence).await;
            return;
        }
        tracing::warn!(
            controller = C::NAME,
            term,
            "lost the lease; no longer leading"
        );
    }
}

/// Passes of `c`: at start, on its topics and every `every()`, until the
/// server stops.
async fn passes<C: Controller>(c: &mut C, ctx: Arc<ServerCtx>) {
    let mut wake = ctx.bus.subscribe(c.wakes_on());
    let mut stopping = ctx.stopping.clone();
    let first = c.first_pass_after(&ctx);
    if !first.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(first) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
    loop {
        match c.pass(&ctx).await {
            Ok(topics) => {
                if !topics.is_empty() {
                    ctx.publish(topics);
                }
            }
            Err(e) => tracing::warn!(controller = C::NAME, error = %e, "controller pass failed"),
        }
        tokio::select! {
            woke = wake.changed() => if woke.is_err() { return },
            _ = tokio::time::sleep(c.every(&ctx)) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// The singleton controllers (their lease names).
pub const SINGLETONS: [&str; 9] = [
    reconcile::Reconcile::NAME,
    nodes::DrainedNodes::NAME,
    nodes::Liveness::NAME,
    nodes::RateLimitSweep::NAME,
    retention::EventRetention::NAME,
    retention::EventSequencer::NAME,
    secrets::SecretExpiry::NAME,
    metrics::MetricRollups::NAME,
    autoscale::Autoscaler::NAME,
];

/// Start every controller of a control plane.
pub fn start_all(ctx: &Arc<ServerCtx>) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(run(reconcile::Reconcile::default(), ctx.clone())),
        tokio::spawn(run(nodes::DrainedNodes, ctx.clone())),
        tokio::spawn(run(nodes::Liveness, ctx.clone())),
        tokio::spawn(run(nodes::RateLimitSweep, ctx.clone())),
        tokio::spawn(run(retention::EventRetention, ctx.clone())),
        tokio::spawn(run(retention::EventSequencer, ctx.clone())),
        tokio::spawn(run(secrets::SecretExpiry, ctx.clone())),
        tokio::spawn(run(metrics::MetricRollups, ctx.clone())),
        tokio::spawn(run(autoscale::Autoscaler, ctx.clone())),
        tokio::spawn(run(webhooks::Dispatcher::default(), ctx.clone())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts its passes; wakes on `Apps`, otherwise once an hour.
    struct Counter(Arc<AtomicU32>);

    impl Controller for Counter {
        const NAME: &'static str = "counter";
        const SINGLETON: bool = false;
        fn wakes_on(&self) -> &'static [Topic] {
            &[Topic::Apps]
        }
        fn every(&self, _: &ServerCtx) -> Duration {
            Duration::from_secs(3600)
        }
        async fn pass(&mut self, _: &ServerCtx) -> Result<&'static [Topic], Error> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(&[Topic::Routes])
        }
    }

    async fn wait_for(n: &AtomicU32, want: u32) {
        let t = tokio::time::Instant::now();
        while n.load(Ordering::SeqCst) < want {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{} passes, not {want}",
                n.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_controller_passes_at_start_on_its_topics_and_stops_with_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let store = shellwego_store::Store::connect(&url).await.unwrap();
        let ctx = Arc::new(ServerCtx {
            store: store.clone(),
            bus: crate::bus::InProcessBus::new(),
            vault: crate::vault::Vault::new(
                crate::vault::Keyring::load_or_create(dir.path(), None).unwrap(),
            ),
            config: crate::ctx::Settings::with_objects(crate::objects::Objects::Database(store)),
            stopping,
            replica: crate::leader::Replica::new(),
            fence: None,
        });
        let passes = Arc::new(AtomicU32::new(0));
        let mut routes = ctx.bus.subscribe(&[Topic::Routes]);
        let task = tokio::spawn(run(Counter(passes.clone()), ctx.clone()));
        // A pass at start, and what it returned is published.
        wait_for(&passes, 1).await;
        tokio::time::timeout(Duration::from_secs(5), routes.changed())
            .await
            .expect("the pass's topics are published")
            .unwrap();
        // Another topic does not wake it; its own does.
        ctx.publish(&[Topic::Nodes]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1);
        ctx.publish(&[Topic::Apps]);
        wait_for(&passes, 2).await;
        // The server stopping ends the loop.
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the controller stops with the server")
            .unwrap();
    }
}
