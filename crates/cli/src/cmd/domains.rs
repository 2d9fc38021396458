//! `shellwego domains add|list|get|update|remove|cert upload`: custom
//! domains, host names (and path prefixes under them) routed to apps, and
//! their certificates.

use anyhow::bail;
use clap::{Args, Subcommand};
use shellwego_api::domains::{
    CertificateUpload, Domain, DomainCreate, DomainUpdate, TlsProvider, TlsRequest,
};

use crate::cmd::{more_hint, ClientArgs, Ctx, ListArgs};
use crate::output::{emit, fields, json, or_dash, table, Output};

#[derive(Debug, Args)]
pub struct DomainsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: DomainsCommand,
}

#[derive(Debug, Subcommand)]
pub enum DomainsCommand {
    /// Route a host name (or a path prefix under it) to an app. Point the
    /// host's DNS at the ingress (the record is shown); the host then
    /// belongs to your organization until its last route is removed.
    Add(AddArgs),
    /// List the organization's domains.
    List(DomainListArgs),
    /// Show a domain: routing, DNS record, certificate.
    Get(Target),
    /// Change a domain's routing (app, path, port, prefix stripping).
    Update(UpdateArgs),
    /// Remove a domain route.
    Remove(Target),
    /// Certificates: `cert upload` sets your own for the domain's host.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Upload your own certificate (PEM files) for the domain's host; it is
    /// checked (valid now, covers the host, key matches, chain in order) and
    /// served by the ingress; the key is kept encrypted.
    Upload(UploadArgs),
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    #[command(flatten)]
    pub target: Target,
    /// The certificate (PEM; the chain may follow it).
    #[arg(long, value_name = "FILE")]
    pub cert: std::path::PathBuf,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: std::path::PathBuf,
    /// The intermediate certificates (PEM), each followed by its issuer.
    #[arg(long, value_name = "FILE")]
    pub chain: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct Target {
    /// The domain's id (dom_…), or its host name (with --path when the
    /// host has several routes).
    pub domain: String,
    /// The route's path prefix, to pick one of a host's routes.
    #[arg(long)]
    pub path: Option<String>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The host name (api.example.com, a Unicode name, or *.example.com).
    pub hostname: String,
    /// The app requests go to (name or id).
    #[arg(long)]
    pub app: String,
    /// The path prefix routed to the app [default: /].
    #[arg(long)]
    pub path: Option<String>,
    /// Cut the prefix off the path the app sees.
    #[arg(long)]
    pub strip_prefix: bool,
    /// The port in the instance [default: the app's $PORT].
    #[arg(long)]
    pub port: Option<u16>,
    /// Bring your own certificate (upload it) instead of ordering one.
    #[arg(long)]
    pub custom_certificate: bool,
    /// Do not renew the certificate automatically.
    #[arg(long)]
    pub no_auto_renew: bool,
    /// Send Strict-Transport-Security (one year) on HTTPS answers.
    #[arg(long)]
    pub hsts: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub target: Target,
    /// Another app (name or id).
    #[arg(long)]
    pub app: Option<String>,
    /// A new path prefix.
    #[arg(long)]
    pub new_path: Option<String>,
    /// Cut the prefix off the path the app sees (true or false).
    #[arg(long)]
    pub strip_prefix: Option<bool>,
    /// The port in the instance (0: the app's $PORT again).
    #[arg(long)]
    pub port: Option<u16>,
    /// Strict-Transport-Security on HTTPS answers (true or false).
    #[arg(long)]
    pub hsts: Option<bool>,
}

#[derive(Debug, Args)]
pub struct DomainListArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Only this app's domains (name or id).
    #[arg(long)]
    pub app: Option<String>,
}

pub async fn run(args: DomainsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    match args.command {
        DomainsCommand::Add(a) => {
            let app = crate::cmd::apps::resolve(&ctx.client, &a.app).await?.0;
            let d = ctx
                .client
                .domains()
                .create(&DomainCreate {
                    hostname: a.hostname,
                    app_id: app,
                    port: a.port,
                    path: a.path,
                    strip_prefix: Some(a.strip_prefix),
                    tls: Some(TlsRequest {
                        provider: if a.custom_certificate {
                            TlsProvider::Custom
                        } else {
                            TlsProvider::Letsencrypt
                        },
                        auto_renew: Some(!a.no_auto_renew),
                    }),
                    cdn: None,
                    waf_enabled: None,
                    hsts: Some(a.hsts),
                })
                .await?;
            show(&ctx, d)
        }
        DomainsCommand::List(l) => list(&ctx, &l).await,
        DomainsCommand::Get(t) => {
            let id = resolve(&ctx, &t).await?;
            let d = ctx.client.domains().get(&id).await?;
            show(&ctx, d)
        }
        DomainsCommand::Update(u) => {
            let id = resolve(&ctx, &u.target).await?;
            let app_id = match &u.app {
                Some(a) => Some(crate::cmd::apps::resolve(&ctx.client, a).await?.0),
                None => None,
            };
            let d = ctx
                .client
                .domains()
                .update(
                    &id,
                    &DomainUpdate {
                        app_id,
                        port: u.port,
                        path: u.new_path,
                        strip_prefix: u.strip_prefix,
                        hsts: u.hsts,
                        ..Default::default()
                    },
                )
                .await?;
            show(&ctx, d)
        }
        DomainsCommand::Cert(CertCommand::Upload(u)) => {
            let id = resolve(&ctx, &u.target).await?;
            let read = |p: &std::path::PathBuf| {
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
            };
            let req = CertificateUpload {
                certificate: read(&u.cert)?,
                private_key: read(&u.key)?,
                chain: u.chain.as_ref().map(read).transpose()?,
            };
            let d = ctx.client.domains().upload_certificate(&id, &req).await?;
            show(&ctx, d)
        }
        DomainsCommand::Remove(t) => {
            let id = resolve(&ctx, &t).await?;
            ctx.client.domains().delete(&id).await?;
            if ctx.output == Output::Table {
                emit(&format!("Removed {id}.\n"))?;
            }
            Ok(())
        }
    }
}

/// The domain's id: given, or found by host name (and path).
async fn resolve(ctx: &Ctx, t: &Target) -> anyhow::Result<String> {
    if t.domain.starts_with("dom_") {
        return Ok(t.domain.clone());
    }
    let host = shellwego_api::domains::normalize_hostname(&t.domain)
        .map_err(|m| anyhow::anyhow!("{}: {m}", t.domain))?;
    let q = shellwego_client::ListQuery::new()
        .filter("hostname", &host)
        .limit(Some(100));
    let found = ctx.client.domains().list(&q).await?.into_inner().data;
    let mut hits: Vec<&Domain> = found
        .iter()
        .filter(|d| t.path.as_deref().is_none_or(|p| d.routing.path == p))
        .collect();
    match hits.len() {
        0 => bail!("no domain {host} in this organization (see `shellwego domains list`)"),
        1 => Ok(hits.remove(0).id.clone()),
        _ => bail!(
            "{host} has {} routes ({}); pick one with --path",
            hits.len(),
            hits.iter()
                .map(|d| d.routing.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn show(ctx: &Ctx, answer: shellwego_client::Answer<Domain>) -> anyhow::Result<()> {
    if ctx.output == Output::Json {
        return emit(&json(answer.body())?);
    }
    let d = answer.into_inner();
    emit(&fields(&[
        ("ID", d.id),
        ("HOSTNAME", d.hostname.clone()),
        ("APP", d.routing.app_id),
        ("PATH", d.routing.path),
        ("STRIP PREFIX", d.routing.strip_prefix.to_string()),
        (
            "PORT",
            d.routing
                .port
                .map_or_else(|| "$PORT".to_string(), |p| p.to_string()),
        ),
        ("HSTS", d.hsts.to_string()),
        ("STATUS", d.status),
        ("TLS", d.tls_status),
        ("TLS ERROR", or_dash(d.tls_error.as_deref())),
        (
            "CERTIFICATE EXPIRES",
            or_dash(d.tls_certificate.expires_at.as_deref()),
        ),
        (
            "DNS",
            format!(
                "{} {} {}",
                d.dns_validation.name, d.dns_validation.kind, d.dns_validation.value
            ),
        ),
        ("CREATED", d.created_at),
    ]))
}

async fn list(ctx: &Ctx, args: &DomainListArgs) -> anyhow::Result<()> {
    let mut q = args.list.query();
    if let Some(a) = &args.app {
        q = q.filter("app_id", crate::cmd::apps::resolve(&ctx.client, a).await?.0);
    }
    let l = ctx.client.domains().list(&q).await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.hostname.clone(),
                        d.routing.path.clone(),
                        d.routing.app_id.clone(),
                        d.status.clone(),
                        d.tls_status.clone(),
                    ]
                })
                .collect();
            emit(&table(
                &["ID", "HOSTNAME", "PATH", "APP", "STATUS", "TLS"],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.list.all);
        }
    }
    Ok(())
}
