//! `shellwego`: one binary for the control plane, the node agent, the
//! ingress, and the CLI client (`auth`, `tokens`, `orgs`, `apps`, `deploy`,
//! `deployments`, `nodes`).

#[cfg(feature = "bench")]
mod bench;
mod cmd;
mod config;
mod credentials;
mod output;
mod prompt;
mod router;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, ServerArgs};

#[derive(Parser)]
#[command(
    name = "shellwego",
    version,
    about = "ShellWeGo: a self-hostable platform-as-a-service in one binary",
    long_about = "ShellWeGo: a self-hostable platform-as-a-service in one binary.\n\n\
Start everything on this machine with `shellwego up`; the first start prints where the \
admin token was written (<data-dir>/admin-token). The API is then at http://127.0.0.1:3000/v1 \
and its reference at http://127.0.0.1:3000/docs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: the control plane, a local node agent and the
    /// ingress router (apps answer at http://<app>.localhost:8000). Ctrl-C or SIGTERM
    /// stops its instances too, unless started with --keep-instances.
    Up(UpArgs),
    /// Run the control plane only (API server, controllers, store); or,
    /// with a subcommand, act on its installation (`rotate-master-key`).
    Server(ServerCmd),
    /// Run a node agent: join a control plane and keep its channel open. Its
    /// instances keep running when it stops (a restarted agent re-adopts them).
    Agent(shellwego_agent::AgentArgs),
    /// Run the ingress router on its own, fed from a control plane's store
    /// (routes `Host: <app>.<base-domain>` to healthy instances).
    Router(router::RouterArgs),
    /// Print the OpenAPI 3.1 document of the /v1 API.
    Openapi {
        /// Print the agent protocol's document instead (the internal
        /// channel between node agents and the control plane).
        #[arg(long)]
        agent: bool,
    },
    // (Built with the `bench` feature only.)
    /// Measure ShellWeGo's speed (prints figures; see docs/benchmarks.md).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Log in to a ShellWeGo API, log out, and show who you are.
    Auth(cmd::auth::AuthArgs),
    /// Create, list and revoke your API tokens.
    Tokens(cmd::tokens::TokensArgs),
    /// Show your organization and its members, and invite people.
    Orgs(cmd::orgs::OrgsArgs),
    /// Create, list, scale, start, stop, restart and delete apps.
    Apps(cmd::apps::AppsArgs),
    /// Deploy an app: a new image, a new source archive or the same again,
    /// rolled out rolling, blue-green or canary; --wait follows its stages.
    Deploy(Box<cmd::deployments::DeployArgs>),
    /// List, show and follow an app's deployments, and roll back to one.
    Deployments(cmd::deployments::DeploymentsArgs),
    /// List nodes, register machines, drain and remove nodes.
    Nodes(cmd::nodes::NodesArgs),
    /// The audit log: list events (filter by type, `app.*`, severity,
    /// resource, time) and show one.
    Events(cmd::events::EventsArgs),
    /// Custom domains: route a host name (or a path under it) to an app;
    /// list, show, change and remove routes.
    Domains(cmd::domains::DomainsArgs),
    /// Secrets: set (create or rotate; the value from a file or stdin),
    /// list, get, rotate and delete. Apps receive them as environment
    /// variables; values are never shown.
    Secrets(cmd::secrets::SecretsArgs),
    /// Run a command in a running instance of an app (`--app APP -- CMD
    /// ARGS…`) and print its output; exits with the command's exit code.
    Exec(cmd::exec::ExecArgs),
    /// An app's output lines, merged across its instances and nodes in
    /// time order (`--follow` keeps printing new ones).
    Logs(cmd::logs::LogsArgs),
    /// An interactive session in a running instance of an app (a shell by
    /// default; `-- CMD ARGS…` for another command), with a terminal when
    /// stdin is one; exits with the command's exit code.
    Ssh(cmd::ssh::SshArgs),
    /// An app's CPU, memory, disk, network, requests and latency over time
    /// (statistics and a chart per metric).
    Metrics(cmd::metrics::MetricsArgs),
    /// Webhooks: create and change them, list their deliveries, redeliver
    /// one, send a test ping.
    Webhooks(cmd::webhooks::WebhooksArgs),
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SHELLWEGO_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colours only for a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed
/// when this is called, not when it is first polled: a server polls it only
/// once it serves, and a signal that came before (right after it wrote its
/// admin token, say) would otherwise kill it with the default action.
/// Called inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ServerCmd {
    #[command(subcommand)]
    action: Option<ServerAction>,
    #[command(flatten)]
    args: ServerArgs,
}

#[derive(Subcommand)]
enum ServerAction {
    /// Make a new master key the installation's: re-wraps every data key
    /// (in one transaction) under it; the encrypted values themselves do not
    /// change and running replicas keep serving. With <data-dir>/master.key
    /// the new key is written there, before the old one (remove the old
    /// line once every replica has the new key); with SHELLWEGO_MASTER_KEY
    /// the new key is printed: give it to every replica first as
    /// SHELLWEGO_MASTER_KEY=OLD,NEW (see docs/operations.md, "Rotating the
    /// master key").
    RotateMasterKey(RotateArgs),
}

#[derive(clap::Args)]
struct RotateArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The new key (base64 of 32 bytes) from this file; default: a new
    /// random key. Also SHELLWEGO_NEW_MASTER_KEY.
    #[arg(long, value_name = "FILE")]
    new_key_file: Option<std::path::PathBuf>,
}

async fn rotate_master_key(a: RotateArgs) -> anyhow::Result<()> {
    let settings = a.server.resolve(false)?;
    let given = match &a.new_key_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?,
        ),
        None => std::env::var("SHELLWEGO_NEW_MASTER_KEY")
            .ok()
            .filter(|s| !s.is_empty()),
    };
    let r = shellwego_server::serve::rotate_master_key(&settings.server, given.as_deref()).await?;
    eprintln!(
        "master key rotated: {} -> {} ({} data keys re-wrapped, {} values resealed)",
        r.rotated.old_key_id, r.rotated.new_key_id, r.rotated.data_keys, r.rotated.resealed
    );
    if let Some(f) = &r.key_file {
        eprintln!(
            "the new key is the first line of {}; remove the old line(s) once every replica holds the new key",
            f.display()
        );
    }
    if let Some(k) = &r.new_key {
        eprintln!("set SHELLWEGO_MASTER_KEY to the new key (below) on every replica; keep the old one beside it (NEW,OLD) until each has restarted");
        println!("{k}");
    }
    Ok(())
}

#[derive(clap::Args)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Address of the ingress router (HTTP).
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    ingress_listen: std::net::SocketAddr,
    /// Address of the ingress router's HTTPS listener (custom domains with
    /// a certificate; their plain-HTTP requests are redirected to it).
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
    ingress_https_listen: std::net::SocketAddr,
    /// Apps answer at <app>.<base-domain>.
    #[arg(long, default_value = "localhost", value_name = "DOMAIN")]
    base_domain: String,
    /// A registry (`host:port`) the agent may pull from over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// The runtime driver the local agent offers [default: every one that works here].
    #[arg(long, value_parser = ["process", "container", "microvm"])]
    runtime: Option<String>,
    /// Leave the instances running when `up` stops (Ctrl-C, SIGTERM); the
    /// next `up` on the same data directory re-adopts them. Without it they
    /// are stopped (SIGTERM, then SIGKILL after their stop timeout).
    #[arg(long)]
    keep_instances: bool,
    /// CPU cores the local node reports (and the scheduler fills) instead
    /// of the host's, as `agent --cpus`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=4096))]
    cpus: Option<i64>,
    /// The local agent's owner tag, in the name of everything it makes on
    /// the host (1 to 6 of 0-9, a-z) [default: derived from the data
    /// directory's path]; what carries it and no saved state describes is
    /// removed at start.
    #[arg(long, env = "SHELLWEGO_OWNER_TAG", value_name = "TAG")]
    owner_tag: Option<shellwego_agent::owner::Owner>,
    /// Leave the host's cgroup v2 mount options alone, as `agent
    /// --no-cgroup-favordynmods`.
    #[arg(long)]
    no_cgroup_favordynmods: bool,
}

/// Control plane + local agent + ingress, until a signal.
async fn up(a: UpArgs) -> anyhow::Result<()> {
    // Before anything starts: a SIGTERM during start-up stops it cleanly.
    let shutdown = shutdown_signal();
    let mut settings = a.server.resolve(true)?;
    init_logging(settings.log_format);
    settings.server.domains.base_domain = a.base_domain.clone();
    let data_dir = settings.server.data_dir.clone();
    let (http_limits, trusted_proxies) = (
        settings.server.http.clone(),
        settings.server.trusted_proxies.clone(),
    );
    let started = shellwego_server::serve::start(settings.server).await?;
    let api = started.addr;
    // The ingress, fed from the store.
    let routes = shellwego_ingress::Routes::new();
    let listener = tokio::net::TcpListener::bind(a.ingress_listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on {} for the ingress: {e}", a.ingress_listen)
        })?;
    let ingress_addr = listener.local_addr()?;
    let tls_listener = tokio::net::TcpListener::bind(a.ingress_https_listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} for the ingress's HTTPS: {e}",
                a.ingress_https_listen
            )
        })?;
    let https_addr = tls_listener.local_addr()?;
    let certs = shellwego_ingress::Certs::new();
    let feed = tokio::spawn(shellwego_server::serve::feed_routes_and_certs(
        started.ctx.clone(),
        routes.clone(),
        certs.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx = stop_rx.clone();
    let ingress_cfg = shellwego_ingress::IngressConfig {
        base_domain: a.base_domain.clone(),
        limits: http_limits,
        trusted_proxies,
        https_redirect: Some((certs.clone(), https_addr.port())),
        ..Default::default()
    };
    let ingress = tokio::spawn(shellwego_ingress::serve(
        listener,
        routes.clone(),
        ingress_cfg.clone(),
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    let mut tls_rx = stop_rx.clone();
    let ingress_tls = tokio::spawn(shellwego_ingress::serve_tls(
        tls_listener,
        routes,
        shellwego_ingress::IngressConfig {
            https_redirect: None,
            ..ingress_cfg
        },
        certs,
        async move {
            let _ = tls_rx.wait_for(|s| *s).await;
        },
    ));
    // The local agent: joined once, its credential kept in <data>/agent.
    let agent_dir = data_dir.join("agent");
    let join_token = if agent_dir.join("node-credential.toml").exists() {
        None
    } else {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "local".into());
        Some(shellwego_server::serve::local_join_token(&started.ctx, &host).await?)
    };
    let agent_args = shellwego_agent::AgentArgs {
        control_plane: format!("http://{api}"),
        join_token,
        data_dir: agent_dir,
        name: None,
        region: None,
        zone: None,
        labels: vec![],
        sync_wait: 10,
        advertise_ip: Some("127.0.0.1".into()),
        drivers: a.runtime.iter().cloned().collect(),
        insecure_registries: a.insecure_registries.clone(),
        cpus: a.cpus,
        owner_tag: a.owner_tag.clone(),
        no_cgroup_favordynmods: a.no_cgroup_favordynmods,
        stop_instances_on_exit: !a.keep_instances,
        // One node on loopback: no mesh.
        wireguard_port: shellwego_agent::mesh::DEFAULT_PORT,
        no_wireguard: true,
        log_retention: shellwego_agent::logs::DEFAULT_POLICY_RETENTION,
        log_max_app_bytes: shellwego_agent::logs::DEFAULT_POLICY.max_bytes,
    };
    let mut agent_stop = stop_rx.clone();
    let mut agent = tokio::spawn(shellwego_agent::run(agent_args, async move {
        let _ = agent_stop.wait_for(|s| *s).await;
    }));
    tracing::info!(api = %api, ingress = %ingress_addr, ingress_https = %https_addr, base_domain = %a.base_domain, "shellwego is up: apps answer at http://<app>.{}:{}", a.base_domain, ingress_addr.port());
    // The local agent ending on its own (a driver that does not work here,
    // say) ends `up` with its error.
    let agent_failed = tokio::select! {
        _ = shutdown => None,
        r = &mut agent => Some(match r {
            Ok(Ok(())) => anyhow::anyhow!("the local agent stopped"),
            Ok(Err(e)) => e.context("the local agent failed"),
            Err(e) => anyhow::anyhow!("the local agent failed: {e}"),
        }),
    };
    if a.keep_instances || agent_failed.is_some() {
        tracing::info!("shutting down (instances keep running; the next `up` re-adopts them)");
    } else {
        tracing::info!(
            "shutting down, and stopping the instances (--keep-instances leaves them running)"
        );
    }
    let _ = stop_tx.send(true);
    if agent_failed.is_none() {
        let _ = agent.await;
    }
    feed.abort();
    let _ = ingress.await;
    let _ = ingress_tls.await;
    started.shutdown().await?;
    match agent_failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn serve(args: ServerArgs, up: bool) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let settings = args.resolve(up)?;
    init_logging(settings.log_format);
    shellwego_server::run(settings.server, shutdown).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The exit code of a command that passes one on (`exec`).
    let mut code: i32 = 0;
    let result = rt.block_on(async {
        match cli.command {
            Command::Up(a) => up(a).await,
            Command::Server(ServerCmd {
                action: Some(ServerAction::RotateMasterKey(a)),
                ..
            }) => rotate_master_key(a).await,
            Command::Server(ServerCmd { args, .. }) => serve(args, false).await,
            Command::Agent(a) => {
                init_logging(LogFormat::Pretty);
                shellwego_agent::run(a, shutdown_signal()).await
            }
            Command::Router(a) => {
                init_logging(LogFormat::Pretty);
                router::run(a, shutdown_signal()).await
            }
            Command::Openapi { agent: false } => {
                print!("{}", shellwego_server::openapi::document_json());
                Ok(())
            }
            Command::Openapi { agent: true } => {
                print!("{}", shellwego_server::openapi::agent_document_json());
                Ok(())
            }
            #[cfg(feature = "bench")]
            Command::Bench(b) => bench::run(b).await,
            Command::Auth(a) => cmd::auth::run(a).await,
            Command::Tokens(t) => cmd::tokens::run(t).await,
            Command::Events(e) => cmd::events::run(e).await,
            Command::Secrets(s) => cmd::secrets::run(s).await,
            Command::Domains(d) => cmd::domains::run(d).await,
            Command::Exec(x) => {
                code = cmd::exec::run(x).await?;
                Ok(())
            }
            Command::Logs(l) => cmd::logs::run(l).await,
            Command::Ssh(x) => {
                code = cmd::ssh::run(x).await?;
                Ok(())
            }
            Command::Metrics(m) => cmd::metrics::run(m).await,
            Command::Webhooks(w) => cmd::webhooks::run(w).await,
            Command::Orgs(o) => cmd::orgs::run(o).await,
            Command::Apps(a) => cmd::apps::run(a).await,
            Command::Deploy(d) => cmd::deployments::run_deploy(*d).await,
            Command::Deployments(d) => cmd::deployments::run(d).await,
            Command::Nodes(n) => cmd::nodes::run(n).await,
        }
    });
    match result {
        Ok(()) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            // A problem document: its detail, field errors and trace id.
            match e.downcast_ref::<shellwego_client::ApiError>() {
                Some(api) => eprint!("{}", api.report()),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every `apps`, `deploy`, `deployments` and `nodes` subcommand,
    /// argument and flag says what it is.
    #[test]
    fn client_commands_and_flags_have_help() {
        fn check(c: &clap::Command, path: &str) {
            assert!(c.get_about().is_some(), "{path} has no about");
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(a.get_help().is_some(), "{path} {id} has no help");
            }
            for s in c.get_subcommands() {
                check(s, &format!("{path} {}", s.get_name()));
            }
        }
        let cli = super::Cli::command();
        for name in ["apps", "deploy", "deployments", "nodes"] {
            let c = cli.find_subcommand(name).unwrap();
            check(c, name);
        }
    }
}
