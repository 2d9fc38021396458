//! The route feeder: keeps an ingress's route table equal to the healthy
//! instances in the store, and hands what the ingress counted back to the
//! store (canary analysis). In a control plane's process it is a
//! [`Controller`] woken by [`Topic::Routes`]; a standalone `shellwego
//! router` runs [`feed_routes_from`], the same step on a timer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use shellwego_core::Error;
use shellwego_ingress::{Backend, Routes};
use shellwego_store::{apps, Store};

use super::Controller;
use crate::bus::Topic;
use crate::ctx::ServerCtx;

/// How often the table is re-read when nothing wakes the feeder (changes
/// made by other control planes or routers sharing the store).
const EVERY: Duration = Duration::from_secs(1);

pub struct RouteFeed {
    routes: Routes,
    last: Option<Vec<shellwego_store::apps::Route>>,
}

impl RouteFeed {
    pub fn new(routes: Routes) -> RouteFeed {
        RouteFeed { routes, last: None }
    }

    /// Read the table, replace it when it changed, and record the traffic
    /// counted since the last step.
    pub async fn step(&mut self, store: &Store) {
        let read = async {
            let mut db = store.conn().await?;
            let rows = apps::routable_instances(&mut db).await?;
            let names = apps::names(&mut db).await?;
            Ok::<_, Error>((rows, names))
        };
        match read.await {
            Ok((rows, names)) => {
                if self.last.as_ref() != Some(&rows) || self.routes.snapshot().len() != names.len()
                {
                    let mut table: HashMap<String, Vec<Backend>> =
                        names.into_iter().map(|n| (n, vec![])).collect();
                    for r in &rows {
                        let Ok(ip) = r.ip.parse::<std::net::IpAddr>() else {
                            continue;
                        };
                        let Ok(port) = u16::try_from(r.port) else {
                            continue;
                        };
                        table.entry(r.app.clone()).or_default().push(Backend {
                            instance_id: r.instance_id.clone(),
                            addr: SocketAddr::new(ip, port),
                            weight: r.weight,
                        });
                    }
                    self.routes.replace(table);
                    self.last = Some(rows);
                }
            }
            Err(e) => tracing::warn!(error = %e, "router: cannot read routes"),
        }
        let counts = self.routes.take_stats();
        if let Err(e) = record_traffic(store, &counts).await {
            tracing::warn!(error = %e, "router: cannot record traffic counts");
        }
    }
}

/// Add what a router counted (per instance: requests, errors), in one
/// transaction.
pub async fn record_traffic(
    store: &Store,
    counts: &HashMap<String, (u64, u64)>,
) -> Result<(), Error> {
    if counts.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    apps::add_instance_traffic(&mut tx, counts).await?;
    shellwego_store::commit(tx).await
}

impl Controller for RouteFeed {
    const NAME: &'static str = "routes";

    fn wakes_on(&self) -> &'static [Topic] {
        &[Topic::Routes]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        EVERY
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        self.step(&ctx.store).await;
        Ok(&[])
    }
}

/// Keep `routes` equal to the healthy instances in `store`, every second,
/// forever (a router without a control plane in its process).
pub async fn feed_routes_from(store: Store, routes: Routes) {
    let mut feed = RouteFeed::new(routes);
    loop {
        feed.step(&store).await;
        tokio::time::sleep(EVERY).await;
    }
}
