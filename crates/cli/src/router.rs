//! `shellwego router`: the ingress on its own, fed from the control plane's
//! store. Run several beside one or more control planes (same
//! `--database-url`); each refreshes its route table every second.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct RouterArgs {
    /// The control plane's store: sqlite://PATH or postgres://USER@HOST/DB
    /// [default: SQLite in --data-dir].
    #[arg(long, env = "SHELLWEGO_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// The control plane's data directory (for its SQLite store) [default: ./.shellwego].
    #[arg(long, env = "SHELLWEGO_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    listen: SocketAddr,
    /// Apps answer at <app>.<base-domain>.
    #[arg(long, default_value = "localhost", value_name = "DOMAIN")]
    base_domain: String,
    /// TOML config file; the router reads its `[http]` section (timeouts
    /// and connection caps) and `trusted_proxies`.
    #[arg(long, env = "SHELLWEGO_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

pub async fn run(
    a: RouterArgs,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let file = match &a.config {
        Some(p) => crate::config::FileConfig::load(p)?,
        None => crate::config::FileConfig::default(),
    };
    let limits = file.http.unwrap_or_default().limits()?;
    let trusted_proxies =
        shellwego_net::client_ip::TrustedProxies::new(file.trusted_proxies.unwrap_or_default());
    let url = match a.database_url {
        Some(u) => u,
        None => {
            let dir = a.data_dir.unwrap_or_else(|| PathBuf::from("./.shellwego"));
            let db = dir.join("shellwego.db");
            if !db.exists() {
                anyhow::bail!(
                    "no store at {}: pass --database-url, or --data-dir of a control plane",
                    db.display()
                );
            }
            // Never create a store: the control plane owns it.
            format!("sqlite://{}?mode=rw", db.display())
        }
    };
    let store = shellwego_store::Store::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
    // The router reads; it never migrates. A store without the apps
    // tables is an older or a foreign one: say so now, not once a second.
    let mut db = store
        .conn()
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
    shellwego_store::apps::routable_instances(&mut db).await.map_err(|e| {
        anyhow::anyhow!("the store has no routes ({e}); is it a ShellWeGo control plane's store, migrated by a `shellwego server` of this version?")
    })?;
    drop(db);
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let routes = shellwego_ingress::Routes::new();
    let feed = tokio::spawn(shellwego_server::controller::routes::feed_routes_from(
        store.clone(),
        routes.clone(),
    ));
    tracing::info!(listen = %addr, base_domain = %a.base_domain, "router is up: apps answer at http://<app>.{}:{}", a.base_domain, addr.port());
    let res = shellwego_ingress::serve(
        listener,
        routes,
        shellwego_ingress::IngressConfig {
            base_domain: a.base_domain,
            limits,
            trusted_proxies,
            ..Default::default()
        },
        stop,
    )
    .await;
    feed.abort();
    store.close().await;
    res.map_err(Into::into)
}
