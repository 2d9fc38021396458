//! `shellwego logs --app APP [--follow] [--since 1h] [--until T] [--tail N]
//! [--instance ID] [--level warn] [--search TEXT]`: an app's output lines,
//! merged across its instances and nodes in time order.

use std::io::Write;

use clap::Args;
use shellwego_api::logs::LogEntry;

use crate::cmd::{ClientArgs, Ctx};
use crate::output::Output;

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The app (name or id).
    #[arg(long)]
    pub app: String,
    /// Keep printing new lines as they are printed (Ctrl-C ends).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Lines from this time: RFC 3339, or a time ago (30s, 15m, 1h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Lines up to this time: RFC 3339, or a time ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// The last this many lines (at most 10000) [default: 100].
    #[arg(long, short = 'n', value_name = "LINES")]
    pub tail: Option<u32>,
    /// Only this instance's lines (inst_…).
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// This level and above: debug, info, warn or error.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
    /// Only lines containing this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
}

fn print(out: &mut impl Write, e: &LogEntry, json: bool) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default())
    } else {
        writeln!(out, "{}", e.text())
    }
}

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    let (id, _) = crate::cmd::apps::resolve(&ctx.client, &args.app).await?;
    let mut query: Vec<(&str, String)> = vec![];
    for (k, v) in [
        ("since", &args.since),
        ("until", &args.until),
        ("instance_id", &args.instance),
        ("level", &args.level),
        ("search", &args.search),
    ] {
        if let Some(v) = v {
            query.push((k, v.clone()));
        }
    }
    if let Some(t) = args.tail {
        query.push(("tail", t.to_string()));
    }
    let json = ctx.output == Output::Json;
    let stdout = std::io::stdout();
    if !args.follow {
        let (lines, missing) = ctx.client.apps().logs(&id, &query).await?;
        let mut out = stdout.lock();
        for e in &lines {
            print(&mut out, e, json)?;
        }
        if !missing.is_empty() {
            eprintln!(
                "(nodes {} did not answer: their lines are missing)",
                missing.join(", ")
            );
        }
        return Ok(());
    }
    let mut res = ctx.client.apps().logs_follow(&id, &query).await?;
    let mut buf = String::new();
    while let Some((ev, _, data)) = shellwego_client::next_event(&mut res, &mut buf).await? {
        match ev.as_str() {
            "log" => {
                let e: LogEntry = serde_json::from_str(&data)?;
                let mut out = stdout.lock();
                print(&mut out, &e, json)?;
                out.flush()?;
            }
            "logs.dropped" => eprintln!("(lines were left out: the stream fell behind: {data})"),
            "logs.partial" => {
                eprintln!("(some nodes did not answer; their last lines are missing: {data})")
            }
            _ => {}
        }
    }
    Ok(())
}
