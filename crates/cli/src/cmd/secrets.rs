//! `shellwego secrets set|list|get|rotate|delete`: the organization's
//! secrets. A value is read from a file or from stdin, never from an
//! argument, so it does not land in shell history or `ps`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use shellwego_api::secrets::{Secret, SecretCreate, SecretScope, SecretVersionCreate};
use shellwego_client::ListQuery;

use crate::cmd::{more_hint, ClientArgs, Ctx, ListArgs};
use crate::output::{emit, fields, json, or_dash, table, Output};

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SecretsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set a secret: create it, or rotate it to a new version when it
    /// exists. The value is read from --value-file, else from stdin (one
    /// trailing newline dropped). The apps it reaches roll to a release
    /// that has it as an environment variable.
    Set(SetArgs),
    /// List secrets (never their values).
    List(SecretListArgs),
    /// Show a secret's metadata: versions, last use, expiry.
    Get(Target),
    /// Rotate a secret to a new value (from --value-file or stdin); its
    /// apps roll to it.
    Rotate(RotateArgs),
    /// Delete a secret; its apps roll without it.
    Delete(Target),
}

#[derive(Debug, Args)]
pub struct Target {
    /// The secret's name (with --app for an app secret) or id (sec_…).
    pub secret: String,
    /// The app of an app secret (name or id).
    #[arg(long)]
    pub app: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// An environment variable name: apps receive the value under it.
    pub name: String,
    /// Only this app (name or id) receives it; without it, every app of
    /// the organization does (an app secret wins over an organization one).
    #[arg(long)]
    pub app: Option<String>,
    /// Read the value from this file [default: stdin].
    #[arg(long, value_name = "FILE")]
    pub value_file: Option<PathBuf>,
    /// RFC 3339 time after which apps no longer receive it.
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub target: Target,
    /// Read the value from this file [default: stdin].
    #[arg(long, value_name = "FILE")]
    pub value_file: Option<PathBuf>,
    /// A new expiry (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Args)]
pub struct SecretListArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Only this app's own secrets (name or id).
    #[arg(long)]
    pub app: Option<String>,
}

pub async fn run(args: SecretsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    match args.command {
        SecretsCommand::Set(a) => set(&ctx, a).await,
        SecretsCommand::List(l) => list(&ctx, &l).await,
        SecretsCommand::Get(t) => {
            let id = resolve(&ctx, &t).await?;
            let s = ctx.client.secrets().get(&id).await?;
            show(&ctx, s)
        }
        SecretsCommand::Rotate(r) => {
            let id = resolve(&ctx, &r.target).await?;
            let value = read_value(r.value_file.as_ref())?;
            let s = ctx
                .client
                .secrets()
                .rotate(
                    &id,
                    &SecretVersionCreate {
                        value,
                        expires_at: r.expires_at,
                    },
                )
                .await?;
            show(&ctx, s)
        }
        SecretsCommand::Delete(t) => {
            let id = resolve(&ctx, &t).await?;
            ctx.client.secrets().delete(&id).await?;
            if ctx.output == Output::Table {
                emit(&format!("Deleted {id}.\n"))?;
            }
            Ok(())
        }
    }
}

/// The value, from `file` or stdin; one trailing newline (what `echo` and
/// editors add) is dropped.
fn read_value(file: Option<&PathBuf>) -> anyhow::Result<String> {
    let mut v = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the value from {}", f.display()))?,
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("Reading the value from stdin (end with Ctrl-D):");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the value from stdin")?;
            s
        }
    };
    if v.ends_with('\n') {
        v.pop();
        if v.ends_with('\r') {
            v.pop();
        }
    }
    Ok(v)
}

/// The live secret named `name` in the scope `app` says, if any.
async fn find(ctx: &Ctx, name: &str, app: Option<&str>) -> anyhow::Result<Option<Secret>> {
    let mut q = ListQuery::new().filter("name", name).limit(Some(100));
    q = match app {
        Some(a) => q.filter("app_id", a),
        None => q.filter("scope", "organization"),
    };
    let l = ctx.client.secrets().list(&q).await?.into_inner();
    Ok(l.data.into_iter().find(|s| s.name == name))
}

async fn resolve(ctx: &Ctx, t: &Target) -> anyhow::Result<String> {
    if t.secret.starts_with("sec_") {
        return Ok(t.secret.clone());
    }
    let app = match &t.app {
        Some(a) => Some(crate::cmd::apps::resolve(&ctx.client, a).await?.0),
        None => None,
    };
    match find(ctx, &t.secret, app.as_deref()).await? {
        Some(s) => Ok(s.id),
        None => match &t.app {
            Some(a) => bail!("app {a} has no secret named {} (see `shellwego secrets list --app {a}`)", t.secret),
            None => bail!(
                "the organization has no secret named {} (for an app secret add --app; see `shellwego secrets list`)",
                t.secret
            ),
        },
    }
}

async fn set(ctx: &Ctx, a: SetArgs) -> anyhow::Result<()> {
    let app = match &a.app {
        Some(x) => Some(crate::cmd::apps::resolve(&ctx.client, x).await?.0),
        None => None,
    };
    let existing = find(ctx, &a.name, app.as_deref()).await?;
    let value = read_value(a.value_file.as_ref())?;
    let s = match existing {
        Some(s) => {
            ctx.client
                .secrets()
                .rotate(
                    &s.id,
                    &SecretVersionCreate {
                        value,
                        expires_at: a.expires_at,
                    },
                )
                .await?
        }
        None => {
            ctx.client
                .secrets()
                .create(&SecretCreate {
                    name: a.name,
                    value,
                    scope: Some(if app.is_some() {
                        SecretScope::App
                    } else {
                        SecretScope::Organization
                    }),
                    app_id: app,
                    expires_at: a.expires_at,
                })
                .await?
        }
    };
    show(ctx, s)
}

fn show(ctx: &Ctx, answer: shellwego_client::Answer<Secret>) -> anyhow::Result<()> {
    if ctx.output == Output::Json {
        return emit(&json(answer.body())?);
    }
    let s = answer.into_inner();
    match ctx.output {
        Output::Json => Ok(()),
        Output::Table => emit(&fields(&[
            ("ID", s.id),
            ("NAME", s.name),
            ("SCOPE", s.scope.as_str().to_string()),
            ("APP", or_dash(s.app_id.as_deref())),
            ("VERSION", s.version.to_string()),
            ("LAST USED", or_dash(s.last_used.as_deref())),
            ("EXPIRES", or_dash(s.expires_at.as_deref())),
            ("CREATED", s.created_at),
        ])),
    }
}

async fn list(ctx: &Ctx, args: &SecretListArgs) -> anyhow::Result<()> {
    let mut q = args.list.query();
    if let Some(a) = &args.app {
        q = q.filter("app_id", crate::cmd::apps::resolve(&ctx.client, a).await?.0);
    }
    let l = ctx.client.secrets().list(&q).await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.name.clone(),
                        s.scope.as_str().to_string(),
                        or_dash(s.app_id.as_deref()),
                        s.version.to_string(),
                        or_dash(s.last_used.as_deref()),
                        or_dash(s.expires_at.as_deref()),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "ID",
                    "NAME",
                    "SCOPE",
                    "APP",
                    "VERSION",
                    "LAST USED",
                    "EXPIRES",
                ],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.list.all);
        }
    }
    Ok(())
}
