//! Leader election for the singleton controllers, so that several
//! control-plane replicas on one PostgreSQL act as one server.
//!
//! The mechanism is a lease row per controller with a fencing term
//! (`shellwego_store::leases`), not a PostgreSQL advisory lock: an advisory
//! lock lives as long as one connection, so a replica cut off from the
//! database keeps believing it leads until TCP notices (minutes), and
//! nothing in the rows says which leader wrote them. With a lease:
//! - a leader renews every [`RENEW_EVERY`]; a lease not renewed for
//!   [`LEASE_TTL`] is taken over by whichever replica asks first (every
//!   [`RETRY_EVERY`]), so a dead leader is replaced within
//!   `LEASE_TTL + RETRY_EVERY` (4 s; the target is 5);
//! - a leader that cannot renew stops acting once its lease would have run
//!   out by its own count, and
//! - every transaction its controller runs starts by checking the term
//!   under a share lock of the lease row ([`crate::ctx::ServerCtx::begin`]),
//!   so even a leader that does not know it was deposed (a pause longer
//!   than the lease) cannot commit: fencing by term.
//!
//! Each controller has its own lease, so different replicas may lead
//! different controllers. A replica shutting down releases its leases,
//! and another takes over at its next try.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shellwego_core::Error;
use shellwego_store::leases;

use shellwego_store::Store;

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often a leader renews.
pub const RENEW_EVERY: Duration = Duration::from_millis(1000);
/// How often a replica that does not lead asks for the lease.
pub const RETRY_EVERY: Duration = Duration::from_millis(1000);

/// What a leader's transactions prove: that `holder` still leads `name`
/// under `term`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: &'static str,
    pub holder: Arc<str>,
    pub term: i64,
}

/// This replica: its id and what it leads (for `/readyz` and `/metrics`).
#[derive(Debug)]
pub struct Replica {
    id: Arc<str>,
    leading: Mutex<BTreeMap<&'static str, i64>>,
}

impl Replica {
    /// A replica with a fresh id (`rep_…`), leading nothing yet.
    pub fn new() -> Arc<Replica> {
        Arc::new(Replica {
            id: shellwego_core::id::new_id("rep").into(),
            leading: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id, shared (a [`Fence`]'s holder).
    pub fn holder(&self) -> Arc<str> {
        self.id.clone()
    }

    /// The controllers this replica leads, with their terms.
    pub fn leading(&self) -> BTreeMap<&'static str, i64> {
        self.leading.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Record that this replica leads `name` under `term` (or no longer).
    pub fn set(&self, name: &'static str, term: Option<i64>) {
        if let Ok(mut m) = self.leading.lock() {
            match term {
                Some(t) => m.insert(name, t),
                None => m.remove(name),
            };
        }
    }
}

/// Ask for the lease `name` for `holder`: its term when it is ours now.
pub async fn acquire(store: &Store, name: &str, holder: &str) -> Result<Option<i64>, Error> {
    let mut c = store.conn().await?;
    leases::acquire(&mut c, store.backend(), name, holder, LEASE_TTL).await
}

/// Give the lease up (shutting down): another replica takes it at its
/// next try instead of after the lease runs out.
pub async fn release(store: &Store, f: &Fence) {
    if let Ok(mut c) = store.conn().await {
        let _ = leases::release(&mut c, f.name, &f.holder, f.term).await;
    }
}

/// Renew the lease while it can; returns once it is lost (taken over, or
/// not renewed for as long as it lasts).
pub async fn keep(store: &Store, f: &Fence) {
    let mut valid_until = tokio::time::Instant::now() + LEASE_TTL;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let asked = tokio::time::Instant::now();
        let renewed = async {
            let mut c = store.conn().await?;
            leases::renew(
                &mut c,
                store.backend(),
                f.name,
                &f.holder,
                f.term,
                LEASE_TTL,
            )
            .await
        };
        match tokio::time::timeout(LEASE_TTL, renewed).await {
            Ok(Ok(true)) => valid_until = asked + LEASE_TTL,
            Ok(Ok(false)) => return,
            Ok(Err(e)) => tracing::warn!(controller = f.name, error = %e, "cannot renew the lease"),
            Err(_) => tracing::warn!(controller = f.name, "renewing the lease timed out"),
        }
        // Stop acting a little before the lease runs out by our count
        // (the fence would refuse our commits after that anyway).
        if tokio::time::Instant::now() + RENEW_EVERY / 2 >= valid_until {
            return;
        }
    }
}
