//! `shellwego events list|get`: the audit log of your organization.

use clap::{Args, Subcommand};

use crate::cmd::{more_hint, ClientArgs, Ctx, ListArgs};
use crate::output::{emit, fields, json, or_dash, table, Output};

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, newest first.
    List(EventListArgs),
    /// Follow events as they happen (until interrupted, or --max-seconds);
    /// --last-event-id first shows every event since that one.
    Stream(EventStreamArgs),
    /// Show one event with its metadata.
    Get {
        /// The event's id (evt_…).
        event_id: String,
    },
}

#[derive(Debug, Args)]
pub struct EventListArgs {
    /// Only these types; `app.*` takes every type starting with `app.`
    /// (comma-separated for several).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Only this severity: info, warning, error, critical.
    #[arg(long, value_name = "SEVERITY")]
    pub severity: Option<String>,
    /// Only events about this kind of resource (app, node, user, …).
    #[arg(long, value_name = "TYPE")]
    pub resource_type: Option<String>,
    /// Only events about this resource (app_…, node_…).
    #[arg(long, value_name = "ID")]
    pub resource_id: Option<String>,
    /// Only events at or after this time (RFC 3339, or a date).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events at or before this time (RFC 3339, or a date).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Args)]
pub struct EventStreamArgs {
    /// Only these types; `app.*` takes every type starting with `app.`
    /// (comma-separated for several).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Only this severity: info, warning, error, critical.
    #[arg(long, value_name = "SEVERITY")]
    pub severity: Option<String>,
    /// Only events about this resource (app_…, node_…).
    #[arg(long, value_name = "ID")]
    pub resource_id: Option<String>,
    /// Start with every event after this one (evt_…), then follow.
    #[arg(long, value_name = "EVENT_ID")]
    pub last_event_id: Option<String>,
    /// Stop after this many seconds [default: never].
    #[arg(long, value_name = "SECONDS")]
    pub max_seconds: Option<u64>,
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    match args.command {
        EventsCommand::List(l) => list_events(&ctx, &l).await,
        EventsCommand::Get { event_id } => get(&ctx, &event_id).await,
        EventsCommand::Stream(s) => stream(&ctx, &s).await,
    }
}

async fn stream(ctx: &Ctx, args: &EventStreamArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = vec![];
    for (k, v) in [
        ("filter[type]", &args.event_type),
        ("filter[severity]", &args.severity),
        ("filter[resource_id]", &args.resource_id),
        ("last_event_id", &args.last_event_id),
    ] {
        if let Some(v) = v {
            query.push((k, v.clone()));
        }
    }
    if let Some(n) = args.max_seconds {
        query.push(("max_seconds", n.to_string()));
    }
    let mut res = ctx.client.events().stream(&query).await?;
    let mut buf = String::new();
    while let Some((ev, id, data)) = shellwego_client::next_event(&mut res, &mut buf).await? {
        let line = match ctx.output {
            // One JSON event per line.
            Output::Json => format!("{data}\n"),
            Output::Table => {
                let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                if ev == "stream.overflow" {
                    format!(
                        "the stream fell behind; resume with --last-event-id {}\n",
                        v["resume_from"].as_str().unwrap_or("-")
                    )
                } else {
                    format!(
                        "{}  {}  {}  {} {}  {id}\n",
                        v["timestamp"].as_str().unwrap_or("-"),
                        ev,
                        v["severity"].as_str().unwrap_or("-"),
                        v["resource"]["type"].as_str().unwrap_or("-"),
                        v["resource"]["id"].as_str().unwrap_or("-"),
                    )
                }
            }
        };
        emit(&line)?;
    }
    Ok(())
}

async fn list_events(ctx: &Ctx, args: &EventListArgs) -> anyhow::Result<()> {
    let mut query = args.list.query();
    for (field, value) in [
        ("type", &args.event_type),
        ("severity", &args.severity),
        ("resource_type", &args.resource_type),
        ("resource_id", &args.resource_id),
    ] {
        if let Some(v) = value {
            query = query.filter(field, v.clone());
        }
    }
    if let Some(t) = &args.since {
        query = query.range("timestamp", "gte", t.clone());
    }
    if let Some(t) = &args.until {
        query = query.range("timestamp", "lte", t.clone());
    }
    let l = ctx.client.events().list(&query).await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|e| {
                    vec![
                        e.timestamp.clone(),
                        e.event_type.clone(),
                        e.severity.clone(),
                        format!("{} {}", e.resource.kind, e.resource.id),
                        format!("{} {}", e.actor.kind, or_dash(e.actor.id.as_deref())),
                        e.id.clone(),
                    ]
                })
                .collect();
            emit(&table(
                &["TIME", "TYPE", "SEVERITY", "RESOURCE", "ACTOR", "ID"],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.list.all);
        }
    }
    Ok(())
}

async fn get(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let e = ctx.client.events().get(id).await?;
    match ctx.output {
        Output::Json => emit(&json(e.body())?)?,
        Output::Table => {
            let e = e.into_inner();
            emit(&fields(&[
                ("ID", e.id),
                ("TIME", e.timestamp),
                ("TYPE", e.event_type),
                ("SEVERITY", e.severity),
                ("RESOURCE", format!("{} {}", e.resource.kind, e.resource.id)),
                (
                    "ACTOR",
                    format!(
                        "{} {} {}",
                        e.actor.kind,
                        or_dash(e.actor.id.as_deref()),
                        or_dash(e.actor.ip.as_deref())
                    ),
                ),
                ("METADATA", serde_json::to_string(&e.metadata)?),
            ]))?;
        }
    }
    Ok(())
}
