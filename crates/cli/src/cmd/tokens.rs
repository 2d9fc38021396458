//! `shellwego tokens create|list|revoke`: the calling user's API tokens.

use clap::{Args, Subcommand};
use shellwego_api::tokens::TokenCreateRequest;

use crate::cmd::{more_hint, ClientArgs, Ctx, ListArgs};
use crate::output::{emit, fields, json, list, note, or_dash, table, Output};

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokensCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token (the secret is shown once).
    Create(CreateArgs),
    /// List your API tokens (never their secrets).
    List(ListArgs),
    /// Revoke an API token; it stops working at once.
    Revoke {
        /// The token's id (tok_…), as `tokens list` shows it.
        token_id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name to recognise the token by.
    pub name: String,
    /// Permission, `resource:action` (e.g. apps:read); repeat or separate
    /// with commas [default: every permission you have].
    #[arg(long, value_delimiter = ',', value_name = "PERMISSION")]
    pub scope: Vec<String>,
    /// Lifetime, 1h to 365d [default: 365d].
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
    /// Limit the token to this app (app_…); repeat for more.
    #[arg(long = "restrict-to-app", value_delimiter = ',', value_name = "APP_ID")]
    pub restrict_to_apps: Vec<String>,
    /// Make the token act in another organization you belong to.
    #[arg(long = "org", value_name = "ORG_ID")]
    pub org: Option<String>,
    /// A temporary token: 15 minutes, good for one request.
    #[arg(long)]
    pub temporary: bool,
}

pub async fn run(args: TokensArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    match args.command {
        TokensCommand::Create(c) => create(&ctx, c).await,
        TokensCommand::List(l) => list_tokens(&ctx, &l).await,
        TokensCommand::Revoke { token_id } => revoke(&ctx, &token_id).await,
    }
}

async fn create(ctx: &Ctx, args: CreateArgs) -> anyhow::Result<()> {
    let req = TokenCreateRequest {
        name: args.name,
        scope: args.scope,
        expires_in: args.expires_in,
        restrict_to_apps: args.restrict_to_apps,
        token_type: args
            .temporary
            .then_some(shellwego_api::model::NewTokenType::TemporaryToken),
        organization_id: args.org,
    };
    let t = ctx.client.tokens().create(&req).await?;
    match ctx.output {
        Output::Json => emit(&json(t.body())?)?,
        Output::Table => {
            let t = t.into_inner();
            emit(&fields(&[
                ("ID", t.id),
                ("NAME", t.name),
                ("TYPE", t.token_type),
                ("SCOPE", list(&t.scope)),
                ("APPS", list(&t.restrict_to_apps)),
                ("EXPIRES", or_dash(t.expires_at.as_deref())),
                ("TOKEN", t.token),
            ]))?;
            note("Copy the token now: it is not shown again.");
        }
    }
    Ok(())
}

async fn list_tokens(ctx: &Ctx, args: &ListArgs) -> anyhow::Result<()> {
    let l = ctx.client.tokens().list(&args.query()).await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.token_type.clone(),
                        list(&t.scope),
                        t.hint.clone(),
                        t.created_at.clone(),
                        or_dash(t.expires_at.as_deref()),
                        or_dash(t.last_used_at.as_deref()),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "ID",
                    "NAME",
                    "TYPE",
                    "SCOPE",
                    "HINT",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                ],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.all);
        }
    }
    Ok(())
}

async fn revoke(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    ctx.client.tokens().revoke(id).await?;
    match ctx.output {
        // 204: the API's body is empty, and so is ours.
        Output::Json => {}
        Output::Table => emit(&format!("Revoked {id}.\n"))?,
    }
    if ctx.stored.token_id.as_deref() == Some(id) {
        note("note: that was the token `auth login` saved; run `shellwego auth login` again");
    }
    Ok(())
}
