//! `shellwego`: one binary for the control plane, (later) the node agent and
//! ingress, and the CLI client (`auth`, `tokens`, `orgs`).

mod bench;
mod client;
mod cmd;
mod config;
mod credentials;
mod output;
mod prompt;

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
    /// Run everything on this machine with local defaults (today: the control plane;
    /// the node agent and the ingress join it in later releases).
    Up(ServerArgs),
    /// Run the control plane only (API server, controllers, store).
    Server(ServerArgs),
    /// Run a node agent: join a control plane and keep its channel open.
    Agent(shellwego_agent::AgentArgs),
    /// Print the OpenAPI 3.1 document of the /v1 API.
    Openapi,
    /// Measure ShellWeGo's speed (prints figures; see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Log in to a ShellWeGo API, log out, and show who you are.
    Auth(cmd::auth::AuthArgs),
    /// Create, list and revoke your API tokens.
    Tokens(cmd::tokens::TokensArgs),
    /// Show your organization and its members, and invite people.
    Orgs(cmd::orgs::OrgsArgs),
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SHELLWEGO_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn serve(args: ServerArgs, up: bool) -> anyhow::Result<()> {
    let settings = args.resolve(up)?;
    init_logging(settings.log_format);
    shellwego_server::run(settings.server, shutdown_signal()).await
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
    let result = rt.block_on(async {
        match cli.command {
            Command::Up(a) => serve(a, true).await,
            Command::Server(a) => serve(a, false).await,
            Command::Agent(a) => {
                init_logging(LogFormat::Pretty);
                shellwego_agent::run(a, shutdown_signal()).await
            }
            Command::Openapi => {
                print!("{}", shellwego_server::openapi::document_json());
                Ok(())
            }
            Command::Bench(b) => bench::run(b).await,
            Command::Auth(a) => cmd::auth::run(a).await,
            Command::Tokens(t) => cmd::tokens::run(t).await,
            Command::Orgs(o) => cmd::orgs::run(o).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A problem document: its detail, field errors and trace id.
            match e.downcast_ref::<client::ApiError>() {
                Some(api) => eprint!("{}", api.report()),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
