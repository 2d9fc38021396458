//! The route feeder: keeps an ingress's route table equal to the healthy
//! instances in the store, and hands what the ingress counted back to the
//! store (canary analysis). In a control plane's process it is a
//! [`Controller`] woken by [`Topic::Routes`]; a standalone `shellwego
//! router` runs [`feed_routes_from`], the same step on a timer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use shellwego_core::Error;
use shellwego_ingress::{Backend, DomainRoute, Routes};
use shellwego_store::{apps, Store};

use super::Controller;
use crate::bus::Topic;
use crate::ctx::ServerCtx;

/// How often the table is re-read when nothing wakes the feeder (changes
/// made by other control planes or routers sharing the store).
const EVERY: Duration = Duration::from_secs(1);

pub struct RouteFeed {
    routes: Routes,
    last: Option<(
        Vec<shellwego_store::apps::Route>,
        Vec<shellwego_store::domains::RouteRow>,
    )>,
    /// Names this process's request counts (`request_samples.source`).
    source: String,
    /// The certificates the HTTPS listener serves, and the version of
    /// each host's certificate loaded into them.
    certs: Option<(shellwego_ingress::Certs, Vec<(String, i64)>)>,
}

impl RouteFeed {
    pub fn new(routes: Routes) -> RouteFeed {
        RouteFeed {
            routes,
            last: None,
            source: shellwego_core::id::new_id("ing"),
            certs: None,
        }
    }

    /// Also keep `certs` equal to the hosts' certificates in the store
    /// (their keys opened with the control plane's vault).
    pub fn with_certs(mut self, certs: shellwego_ingress::Certs) -> RouteFeed {
        self.certs = Some((certs, vec![]));
        self
    }

    /// Load the hosts' certificates when one changed.
    async fn load_certs(&mut self, ctx: &ServerCtx) -> Result<(), Error> {
        let Some((certs, loaded)) = self.certs.as_mut() else {
            return Ok(());
        };
        let mut db = ctx.store.conn().await?;
        let rows = shellwego_store::domains::host_certs(&mut db).await?;
        let now: Vec<(String, i64)> = rows
            .iter()
            .map(|r| (r.hostname.clone(), r.cert_updated_at))
            .collect();
        if &now == loaded {
            return Ok(());
        }
        let mut map = HashMap::new();
        for r in &rows {
            let key = match ctx
                .vault
                .open_string(&mut db, &crate::certs::key_aad(&r.hostname), &r.key_enc)
                .await
            {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(hostname = %r.hostname, error = %e, "router: cannot open a certificate's key");
                    continue;
                }
            };
            match crate::certs::certified_key(&r.cert_pem, &key) {
                Ok(ck) => {
                    map.insert(r.hostname.clone(), std::sync::Arc::new(ck));
                }
                Err(e) => {
                    tracing::warn!(hostname = %r.hostname, error = %e, "router: cannot use a certificate")
                }
            }
        }
        tracing::info!(certificates = map.len(), "router: certificates loaded");
        certs.replace(map);
        *loaded = now;
        Ok(())
    }

    /// Read the table, replace it when it changed, and record the traffic
    /// counted since the last step.
    pub async fn step(&mut self, store: &Store) {
        let read = async {
            let mut db = store.conn().await?;
            let rows = apps::routable_instances(&mut db).await?;
            let names = apps::names(&mut db).await?;
            let domains = shellwego_store::domains::routes(&mut db).await?;
            Ok::<_, Error>((rows, names, domains))
        };
        match read.await {
            Ok((rows, names, domains)) => {
                let now = (rows, domains);
                if self.last.as_ref() != Some(&now) || self.routes.snapshot().len() != names.len() {
                    let (rows, domains) = &now;
                    let mut table: HashMap<String, Vec<Backend>> =
                        names.into_iter().map(|n| (n, vec![])).collect();
                    for r in rows {
                        if let Some(b) = backend(r, None) {
                            table.entry(r.app.clone()).or_default().push(b);
                        }
                    }
                    // A custom domain: its app's backends, at its port
                    // when it names one.
                    let routes = domains
                        .iter()
                        .map(|d| DomainRoute {
                            host: d.hostname.clone(),
                            path: d.path.clone(),
                            strip_prefix: d.strip_prefix != 0,
                            hsts: d.hsts != 0,
                            app: d.app.clone(),
                            backends: rows
                                .iter()
                                .filter(|r| r.app_id == d.app_id)
                                .filter_map(|r| {
                                    backend(r, d.port.and_then(|p| u16::try_from(p).ok()))
                                })
                                .collect(),
                        })
                        .collect();
                    self.routes.replace_with_domains(table, routes);
                    self.last = Some(now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "router: cannot read routes"),
        }
        let counts = self.routes.take_stats();
        if let Err(e) = record_traffic(store, &counts).await {
            tracing::warn!(error = %e, "router: cannot record traffic counts");
        }
        // Requests per instance and slot, for the apps' metrics.
        let requests = self.routes.take_requests();
        if !requests.is_empty() {
            let rows: Vec<shellwego_store::metrics::RequestRow> = requests
                .into_iter()
                .map(
                    |((instance_id, slot), c)| shellwego_store::metrics::RequestRow {
                        instance_id,
                        slot,
                        requests: c.requests as i64,
                        status: c.status.map(|x| x as i64),
                        latency_ms_sum: c.latency_ms_sum,
                    },
                )
                .collect();
            let write = async {
                let mut tx = store.begin().await?;
                shellwego_store::metrics::put_requests(&mut tx, &self.source, &rows).await?;
                shellwego_store::commit(tx).await
            };
            if let Err(e) = write.await {
                tracing::warn!(error = %e, "router: cannot record request counts");
            }
        }
    }
}

/// An instance as a backend, at `port` when given (else its own).
fn backend(r: &shellwego_store::apps::Route, port: Option<u16>) -> Option<Backend> {
    let ip = r.ip.parse::<std::net::IpAddr>().ok()?;
    let port = match port {
        Some(p) => p,
        None => u16::try_from(r.port).ok()?,
    };
    Some(Backend {
        instance_id: r.instance_id.clone(),
        addr: SocketAddr::new(ip, port),
        weight: r.weight,
    })
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
    const SINGLETON: bool = false;

    fn wakes_on(&self) -> &'static [Topic] {
        &[Topic::Routes]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        EVERY
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        self.step(&ctx.store).await;
        if let Err(e) = self.load_certs(ctx).await {
            tracing::warn!(error = %e, "router: cannot read certificates");
        }
        Ok(&[])
    }
}

/// Keep `routes` equal to the healthy instances in `store`, forever (a
/// router without a control plane in its process, `url` being the store's
/// URL): on PostgreSQL at once when a replica publishes a routes change
/// (its `NOTIFY`), and every 5 s regardless; on SQLite (no notifications
/// between processes) every second.
pub async fn feed_routes_from(store: Store, url: &str, routes: Routes) {
    let mut feed = RouteFeed::new(routes);
    let (_keep, stopping) = tokio::sync::watch::channel(false);
    let (mut wake, every) = match store.backend() {
        shellwego_store::Backend::Postgres => {
            let origin: std::sync::Arc<str> = shellwego_core::id::new_id("rtr").into();
            let bus = crate::bus::PgBus::start(url, store.clone(), origin, stopping);
            (
                Some(crate::bus::EventBus::subscribe(&*bus, &[Topic::Routes])),
                Duration::from_secs(5),
            )
        }
        shellwego_store::Backend::Sqlite => (None, EVERY),
    };
    loop {
        feed.step(&store).await;
        match wake.as_mut() {
            Some(w) => {
                tokio::select! {
                    _ = w.changed() => {}
                    _ = tokio::time::sleep(every) => {}
                }
            }
            None => tokio::time::sleep(every).await,
        }
    }
}
