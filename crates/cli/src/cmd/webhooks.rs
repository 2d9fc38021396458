//! `shellwego webhooks create|list|get|update|delete|deliveries|redeliver|test`:
//! your organization's webhooks and their deliveries.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use shellwego_api::model::Backoff;
use shellwego_api::webhooks::{
    Delivery, RetryPolicyRequest, Webhook, WebhookCreate, WebhookUpdate,
};

use crate::cmd::{confirm, more_hint, parse_key_value, word, ClientArgs, Ctx, ListArgs};
use crate::output::{emit, fields, json, list, note, or_dash, table, Output};

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Create a webhook (its signing secret is shown once).
    Create(CreateArgs),
    /// List your organization's webhooks (never their secrets).
    List(WebhookListArgs),
    /// Show one webhook: its events, retry policy and status.
    Get {
        /// The webhook's id (whk_…).
        webhook_id: String,
    },
    /// Change a webhook; --enable turns a disabled one back on.
    Update(UpdateArgs),
    /// Delete a webhook and its deliveries.
    Delete {
        /// The webhook's id (whk_…).
        webhook_id: String,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List a webhook's deliveries, or show one with its body.
    Deliveries(DeliveriesArgs),
    /// Send a delivery again (same id and body), now.
    Redeliver {
        /// The webhook's id (whk_…).
        webhook_id: String,
        /// The delivery's id (whd_…), as `webhooks deliveries` shows it.
        delivery_id: String,
    },
    /// Send a ping to a webhook now, to check it receives and verifies.
    Test {
        /// The webhook's id (whk_…).
        webhook_id: String,
    },
}

/// Where a signing secret comes from: never a flag's value, so it does not
/// land in the shell's history.
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// Read the signing secret from stdin (16 to 256 visible characters).
    #[arg(long, conflicts_with = "secret_file")]
    pub secret_stdin: bool,
    /// Read the signing secret from this file.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

impl SecretArgs {
    fn read(&self) -> anyhow::Result<Option<String>> {
        let text = if self.secret_stdin {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the secret from stdin")?;
            s
        } else if let Some(p) = &self.secret_file {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the secret from {}", p.display()))?
        } else {
            return Ok(None);
        };
        let s = text.trim().to_string();
        anyhow::ensure!(!s.is_empty(), "the secret is empty");
        Ok(Some(s))
    }
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Retries after a failed attempt, 0 to 20 [default: 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub max_retries: Option<u32>,
    /// How the pause between attempts grows [default: exponential].
    #[arg(long, value_parser = word::<Backoff>(Backoff::NAMES))]
    pub backoff: Option<Backoff>,
}

impl RetryArgs {
    fn policy(&self) -> Option<RetryPolicyRequest> {
        (self.max_retries.is_some() || self.backoff.is_some()).then_some(RetryPolicyRequest {
            max_retries: self.max_retries,
            backoff: self.backoff,
        })
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Where deliveries are POSTed (http:// or https://).
    pub url: String,
    /// An event to deliver: `*`, a type (app.deployed) or a prefix
    /// (app.*); repeat or separate with commas.
    #[arg(
        long = "event",
        short = 'e',
        value_delimiter = ',',
        required = true,
        value_name = "PATTERN"
    )]
    pub events: Vec<String>,
    /// A header to send with every delivery, KEY=VALUE; repeat for more.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Create it disabled (nothing is delivered until it is enabled).
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The webhook's id (whk_…).
    pub webhook_id: String,
    /// A new URL.
    #[arg(long)]
    pub url: Option<String>,
    /// Replace the events: `*`, types or prefixes; repeat or separate with commas.
    #[arg(
        long = "event",
        short = 'e',
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub events: Vec<String>,
    /// Replace the headers with these, KEY=VALUE; repeat for more.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Send no custom headers any more.
    #[arg(long, conflicts_with = "headers")]
    pub clear_headers: bool,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Turn a disabled webhook back on (its failures are forgotten).
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Turn it off; its pending deliveries are failed.
    #[arg(long)]
    pub disable: bool,
}

#[derive(Debug, Args)]
pub struct WebhookListArgs {
    /// Only webhooks in this status: active or disabled.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// The webhook's id (whk_…).
    pub webhook_id: String,
    /// Show this delivery (whd_…) with its body, instead of the list.
    pub delivery_id: Option<String>,
    /// Only deliveries in this status: pending, succeeded or failed.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only deliveries of these event types; `app.*` for a prefix.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    #[command(flatten)]
    pub list: ListArgs,
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    match args.command {
        WebhooksCommand::Create(c) => create(&ctx, c).await,
        WebhooksCommand::List(l) => list_webhooks(&ctx, &l).await,
        WebhooksCommand::Get { webhook_id } => get(&ctx, &webhook_id).await,
        WebhooksCommand::Update(u) => update(&ctx, u).await,
        WebhooksCommand::Delete { webhook_id, yes } => delete(&ctx, &webhook_id, yes).await,
        WebhooksCommand::Deliveries(d) => deliveries(&ctx, &d).await,
        WebhooksCommand::Redeliver {
            webhook_id,
            delivery_id,
        } => {
            let (d, body) = ctx
                .client
                .webhooks()
                .redeliver(&webhook_id, &delivery_id)
                .await?
                .into_parts();
            show_delivery(&ctx, &body, d, "Queued again")
        }
        WebhooksCommand::Test { webhook_id } => {
            let (d, body) = ctx.client.webhooks().test(&webhook_id).await?.into_parts();
            show_delivery(&ctx, &body, d, "Ping queued")
        }
    }
}

fn webhook_fields(w: &Webhook) -> Vec<(&'static str, String)> {
    let headers: Vec<String> = w.headers.keys().cloned().collect();
    vec![
        ("ID", w.id.clone()),
        ("URL", w.url.clone()),
        ("EVENTS", list(&w.events)),
        ("HEADERS", list(&headers)),
        (
            "RETRIES",
            format!(
                "{} ({})",
                w.retry_policy.max_retries, w.retry_policy.backoff
            ),
        ),
        ("STATUS", w.status.to_string()),
        ("DISABLED BECAUSE", or_dash(w.disabled_reason.as_deref())),
        ("FAILING SINCE", or_dash(w.failing_since.as_deref())),
        ("SECRET", w.secret_hint.clone()),
        ("CREATED", w.created_at.clone()),
        ("UPDATED", w.updated_at.clone()),
    ]
}

async fn create(ctx: &Ctx, args: CreateArgs) -> anyhow::Result<()> {
    let req = WebhookCreate {
        url: args.url,
        events: args.events,
        secret: args.secret.read()?,
        headers: args.headers.into_iter().collect(),
        retry_policy: args.retry.policy(),
        enabled: args.disabled.then_some(false),
    };
    let w = ctx.client.webhooks().create(&req).await?;
    match ctx.output {
        Output::Json => emit(&json(w.body())?)?,
        Output::Table => {
            let w = w.into_inner();
            let mut rows = webhook_fields(&w.webhook);
            rows.retain(|(k, _)| {
                *k != "SECRET" && *k != "DISABLED BECAUSE" && *k != "FAILING SINCE"
            });
            rows.push(("SECRET", w.secret));
            emit(&fields(&rows))?;
            note("Copy the secret now: it is not shown again. Receivers check X-ShellWeGo-Signature with it.");
        }
    }
    Ok(())
}

async fn list_webhooks(ctx: &Ctx, args: &WebhookListArgs) -> anyhow::Result<()> {
    let mut query = args.list.query();
    if let Some(s) = &args.status {
        query = query.filter("status", s.clone());
    }
    let l = ctx.client.webhooks().list(&query).await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|w| {
                    vec![
                        w.id.clone(),
                        w.url.clone(),
                        list(&w.events),
                        w.status.to_string(),
                        or_dash(w.failing_since.as_deref()),
                        w.created_at.clone(),
                    ]
                })
                .collect();
            emit(&table(
                &["ID", "URL", "EVENTS", "STATUS", "FAILING SINCE", "CREATED"],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.list.all);
        }
    }
    Ok(())
}

async fn get(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let w = ctx.client.webhooks().get(id).await?;
    match ctx.output {
        Output::Json => emit(&json(w.body())?)?,
        Output::Table => emit(&fields(&webhook_fields(&w)))?,
    }
    Ok(())
}

async fn update(ctx: &Ctx, args: UpdateArgs) -> anyhow::Result<()> {
    let headers = if args.clear_headers {
        Some(BTreeMap::new())
    } else if args.headers.is_empty() {
        None
    } else {
        Some(args.headers.into_iter().collect())
    };
    let req = WebhookUpdate {
        url: args.url,
        events: (!args.events.is_empty()).then_some(args.events),
        secret: args.secret.read()?,
        headers,
        retry_policy: args.retry.policy(),
        enabled: if args.enable {
            Some(true)
        } else if args.disable {
            Some(false)
        } else {
            None
        },
    };
    let w = ctx.client.webhooks().update(&args.webhook_id, &req).await?;
    match ctx.output {
        Output::Json => emit(&json(w.body())?)?,
        Output::Table => emit(&fields(&webhook_fields(&w)))?,
    }
    Ok(())
}

async fn delete(ctx: &Ctx, id: &str, yes: bool) -> anyhow::Result<()> {
    let what = format!("webhook {id}");
    confirm(
        &what,
        &format!("Delete {what} and its deliveries? Nothing more is sent to it."),
        yes,
    )?;
    ctx.client.webhooks().delete(id).await?;
    match ctx.output {
        // 204: the API's body is empty, and so is ours.
        Output::Json => {}
        Output::Table => emit(&format!("Deleted {what}.\n"))?,
    }
    Ok(())
}

fn delivery_fields(d: &Delivery) -> Vec<(&'static str, String)> {
    vec![
        ("ID", d.id.clone()),
        ("WEBHOOK", d.webhook_id.clone()),
        (
            "EVENT",
            format!("{} {}", d.event_type, or_dash(d.event_id.as_deref())),
        ),
        ("STATUS", d.status.to_string()),
        ("ATTEMPTS", d.attempts.to_string()),
        (
            "RESPONSE",
            d.response_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "LATENCY",
            d.latency_ms
                .map(|l| format!("{l}ms"))
                .unwrap_or_else(|| "-".into()),
        ),
        ("LAST ERROR", or_dash(d.last_error.as_deref())),
        ("NEXT ATTEMPT", or_dash(d.next_attempt_at.as_deref())),
        ("CREATED", d.created_at.clone()),
        ("DELIVERED", or_dash(d.delivered_at.as_deref())),
    ]
}

fn show_delivery(
    ctx: &Ctx,
    body: &serde_json::Value,
    d: Delivery,
    what: &str,
) -> anyhow::Result<()> {
    match ctx.output {
        Output::Json => emit(&json(body)?)?,
        Output::Table => {
            emit(&fields(&delivery_fields(&d)))?;
            note(&format!(
                "{what}; follow it with `shellwego webhooks deliveries {} {}`.",
                d.webhook_id, d.id
            ));
        }
    }
    Ok(())
}

async fn deliveries(ctx: &Ctx, args: &DeliveriesArgs) -> anyhow::Result<()> {
    if let Some(did) = &args.delivery_id {
        let d = ctx
            .client
            .webhooks()
            .delivery(&args.webhook_id, did)
            .await?;
        match ctx.output {
            Output::Json => emit(&json(d.body())?)?,
            Output::Table => {
                let d = d.into_inner();
                let mut rows = delivery_fields(&d.delivery);
                rows.push(("PAYLOAD", serde_json::to_string(&d.payload)?));
                emit(&fields(&rows))?;
            }
        }
        return Ok(());
    }
    let mut query = args.list.query();
    if let Some(s) = &args.status {
        query = query.filter("status", s.clone());
    }
    if let Some(t) = &args.event_type {
        query = query.filter("event_type", t.clone());
    }
    let l = ctx
        .client
        .webhooks()
        .deliveries(&args.webhook_id, &query)
        .await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.event_type.clone(),
                        d.status.to_string(),
                        d.attempts.to_string(),
                        d.response_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        d.latency_ms
                            .map(|l| format!("{l}ms"))
                            .unwrap_or_else(|| "-".into()),
                        or_dash(d.next_attempt_at.as_deref()),
                        d.created_at.clone(),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "ID",
                    "EVENT",
                    "STATUS",
                    "ATTEMPTS",
                    "RESPONSE",
                    "LATENCY",
                    "NEXT ATTEMPT",
                    "CREATED",
                ],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.list.all);
        }
    }
    Ok(())
}
