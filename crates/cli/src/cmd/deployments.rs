//! `shellwego deploy APP` and `shellwego deployments list|get|logs|rollback`.
//! A deploy (or a rollback) answers at once with a deployment id; `--wait`
//! then polls `GET /v1/deployments/{id}` and shows its stages on stderr
//! until it ends (stdout stays data, so `-o json --wait` is one document).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{ArgGroup, Args, Subcommand};
use futures::StreamExt;
use serde_json::Value;
use shellwego_api::apps::Source;
use shellwego_api::deployments::{DeployRequest, Deployment, RollbackRequest};
use shellwego_client::{Answer, ApiError, Client, LogEvent};
use shellwego_core::model::{
    DeployStrategy, DeploymentStatus, RollbackStrategy, SourceKind, StageStatus,
};

use crate::cmd::apps::{resolve, upload};
use crate::cmd::wait::POLL;
use crate::cmd::{more_hint, parse_duration, word, ClientArgs, Ctx, ListArgs};
use crate::output::{emit, fields, json, note, or_dash, table, Output};

/// How long `--wait` waits when `--timeout` is not given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Spinner frames per poll on a terminal.
const TICKS_PER_POLL: u32 = 5;
const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
/// Width a progress line is kept under (wrapped lines could not be redrawn).
const LINE_WIDTH: usize = 78;
/// Log lines shown when a waited-for deployment fails.
const LOG_LINES_SHOWN: usize = 5;

/// `deploy`'s and `rollback`'s `--wait` and its `--timeout`.
#[derive(Debug, Clone, Args)]
pub struct DeployWaitArgs {
    /// Follow the deployment until it ends, showing its stages on stderr;
    /// exit 1 with the reason if it fails or is rolled back. With -o json,
    /// print the deployment as it ended. (A blue-green deployment ends
    /// after its warm window.)
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits before giving up (the deployment carries on)
    /// [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
}

impl DeployWaitArgs {
    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }
}

/// A duration the API takes (`30s`, `5m`, `1h`; at most 24h), kept as text.
fn parse_api_duration(s: &str) -> Result<String, String> {
    match shellwego_core::units::parse_duration(s) {
        Some(d) if d.as_secs() <= 24 * 3600 => Ok(s.trim().to_string()),
        _ => Err("expected a duration such as 30s, 5m or 1h (at most 24h)".into()),
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("from").args(["image", "upload", "source_url"])))]
pub struct DeployArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The app's name or id (app_…).
    pub app: String,
    /// Deploy this OCI image (myapp:v2) [default: the app's current image
    /// or source again].
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Deploy a new .tar or .tar.gz of the app's files: uploaded, then
    /// run as a tarball source.
    #[arg(long, value_name = "FILE")]
    pub upload: Option<PathBuf>,
    /// Deploy a new .tar or .tar.gz from this http(s) URL (the nodes
    /// download it).
    #[arg(long, value_name = "URL")]
    pub source_url: Option<String>,
    /// rolling: replace instances a batch at a time; blue-green: start a
    /// whole new set and switch traffic when it is healthy; canary: send a
    /// growing share of requests to the new version, rolled back if it
    /// errs [default: blue-green when the image changes, else rolling].
    #[arg(long, value_parser = word::<DeployStrategy>(DeployStrategy::NAMES))]
    pub strategy: Option<DeployStrategy>,
    /// Rolling and canary: extra instances started next to the running
    /// ones at a time, 0 to 100 (`--batch-size` is the older name). When one
    /// fits on no node, the rollout replaces in place instead: it stops an
    /// old instance, then starts its replacement [default: 1].
    #[arg(long, alias = "batch-size", value_name = "N", value_parser = clap::value_parser!(i64).range(0..=100))]
    pub max_surge: Option<i64>,
    /// Rolling and canary: instances that may be down at a time, 0 to 100
    /// [default: 0; 1 while replacing in place].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..=100))]
    pub max_unavailable: Option<i64>,
    /// How long new instances have to become healthy before the deployment
    /// fails, at most 24h [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_api_duration)]
    pub health_check_timeout: Option<String>,
    /// Blue-green: how long the old set stays warm after the switch, at
    /// most 24h [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_api_duration)]
    pub warm_window: Option<String>,
    /// Canary: the traffic percentages, increasing and ending at 100
    /// [default: 10,50,100].
    #[arg(long, value_name = "PERCENTS", value_delimiter = ',')]
    pub canary_steps: Option<Vec<u32>>,
    /// Canary: how long each step is watched before the next [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = parse_api_duration)]
    pub canary_pause: Option<String>,
    /// Do not roll back if the deployment fails (rollback_on_failure=false).
    #[arg(long)]
    pub no_rollback: bool,
    #[command(flatten)]
    pub wait: DeployWaitArgs,
}

#[derive(Debug, Args)]
pub struct DeploymentsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: DeploymentsCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// List an app's deployments, newest first.
    List(DeploymentListArgs),
    /// Show a deployment: status, version, image, progress and its stages.
    Get {
        /// The deployment's id (dep_…).
        id: String,
    },
    /// Print a deployment's step log; --follow streams it until the
    /// deployment ends.
    Logs(LogsArgs),
    /// Roll back to a deployment: a new deployment of its release (the
    /// same spec and image digest).
    Rollback(RollbackArgs),
    /// Promote: a canary goes to 100% now, skipping its remaining steps and
    /// pauses; a blue-green deployment past its switch stops the old set now.
    Promote {
        /// The deployment's id (dep_…).
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct DeploymentListArgs {
    /// The app's name or id (app_…).
    pub app: String,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The deployment's id (dep_…).
    pub id: String,
    /// Keep printing new lines until the deployment ends. With -o json,
    /// each line is printed as a JSON object {time, message}.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The deployment to return to (dep_…); see `shellwego deployments list APP`.
    pub id: String,
    /// immediate: start every instance of the target at once and switch
    /// when they are healthy; gradual: replace instances one at a time
    /// [default: immediate].
    #[arg(long, value_parser = word::<RollbackStrategy>(RollbackStrategy::NAMES))]
    pub strategy: Option<RollbackStrategy>,
    /// Why (kept with the deployment and its events).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub wait: DeployWaitArgs,
}

/// The `POST /v1/apps/{id}/deploy` body the flags describe.
fn deploy_body(args: &DeployArgs, source: Option<Source>) -> DeployRequest {
    DeployRequest {
        image: args.image.clone(),
        source,
        strategy: args.strategy,
        health_check_timeout: args.health_check_timeout.clone(),
        rollback_on_failure: args.no_rollback.then_some(false),
        batch_size: None,
        max_surge: args.max_surge,
        max_unavailable: args.max_unavailable,
        warm_window: args.warm_window.clone(),
        canary_steps: args.canary_steps.clone(),
        canary_pause: args.canary_pause.clone(),
    }
}

pub async fn run_deploy(args: DeployArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    let (id, name) = resolve(&ctx.client, &args.app).await?;
    let source = if let Some(path) = &args.upload {
        Some(Source {
            kind: SourceKind::Tarball,
            url: None,
            upload_id: Some(upload(&ctx, path).await?),
            git: None,
        })
    } else {
        args.source_url.as_ref().map(|u| Source {
            kind: SourceKind::Tarball,
            url: Some(u.clone()),
            upload_id: None,
            git: None,
        })
    };
    let req = deploy_body(&args, source);
    let a = ctx.client.apps().deploy(&id, &req).await?;
    started(
        &ctx,
        a.body(),
        &[
            ("DEPLOYMENT", a.deployment_id.clone()),
            ("APP", format!("{name} ({id})")),
            ("STATUS", a.status.to_string()),
        ],
        &a.deployment_id,
        &args.wait,
    )
    .await
}

pub async fn run(args: DeploymentsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    match args.command {
        DeploymentsCommand::List(l) => list(&ctx, &l).await,
        DeploymentsCommand::Get { id } => get(&ctx, &id).await,
        DeploymentsCommand::Logs(l) => logs(&ctx, &l).await,
        DeploymentsCommand::Rollback(r) => rollback(&ctx, &r).await,
        DeploymentsCommand::Promote { id } => promote(&ctx, &id).await,
    }
}

/// After a deploy or a rollback was accepted: say so (and how to follow
/// it), or follow it with `--wait`.
async fn started(
    ctx: &Ctx,
    body: &Value,
    rows: &[(&str, String)],
    id: &str,
    wait: &DeployWaitArgs,
) -> anyhow::Result<()> {
    match ctx.output {
        Output::Json if wait.wait => {}
        Output::Json => emit(&json(body)?)?,
        Output::Table => {
            emit(&fields(rows))?;
            if !wait.wait {
                note(&format!(
                    "Follow it with `shellwego deployments get {id}` or `shellwego deployments logs {id} --follow`."
                ));
            }
        }
    }
    if wait.wait {
        let d = wait_deployment(&ctx.client, id, wait.timeout()).await?;
        return ended(ctx, &d).await;
    }
    Ok(())
}

/// The error for a deployment that ended without success: its reason,
/// what happens next and the end of its log.
pub async fn unsuccessful(client: &Client, d: &Deployment) -> anyhow::Error {
    anyhow::anyhow!(failure_message(d, &log_tail(client, &d.id).await))
}

/// A deployment that ended: success on stdout, else an error with the
/// reason and the end of its log.
async fn ended(ctx: &Ctx, d: &Answer<Deployment>) -> anyhow::Result<()> {
    if ctx.output == Output::Json {
        emit(&json(d.body())?)?;
    }
    if d.status == DeploymentStatus::Successful {
        if ctx.output == Output::Table {
            let took = d
                .metrics
                .deploy_time_ms
                .map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0))
                .unwrap_or_default();
            emit(&format!(
                "Deployment {} ({}) succeeded{took}.\n",
                d.id, d.version
            ))?;
        }
        return Ok(());
    }
    bail!(failure_message(d, &log_tail(&ctx.client, &d.id).await))
}

/// `deployment dep_… (v3) failed: <reason>`, what happens next, and the
/// end of its log.
fn failure_message(d: &Deployment, log: &[String]) -> String {
    let what = match d.status.as_str() {
        "rolled_back" => "was rolled back",
        "failed" => "failed",
        "cancelled" => "was cancelled",
        other => other,
    };
    let mut msg = format!("deployment {} ({}) {what}", d.id, d.version);
    if let Some(r) = d.status_reason.as_deref().filter(|r| !r.is_empty()) {
        let _ = write!(msg, ": {r}");
    }
    if d.status == DeploymentStatus::Failed && d.completed_at.is_none() {
        if let Some(prev) = &d.previous_version {
            let _ = write!(
                msg,
                "\n(rolling back to {prev}; see `shellwego deployments get {}`)",
                d.id
            );
        }
    }
    if !log.is_empty() {
        msg.push_str("\nlatest log lines:");
        for l in log {
            let _ = write!(msg, "\n  {l}");
        }
    }
    msg
}

/// The last lines of a deployment's log (none when it cannot be read).
async fn log_tail(client: &Client, id: &str) -> Vec<String> {
    let Ok(text) = client.deployments().logs(id).await else {
        return vec![];
    };
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(LOG_LINES_SHOWN)..].to_vec()
}

/// Poll `GET /v1/deployments/{id}` until the deployment ends (any status
/// but `in_progress`), showing its stages; the deployment then. Fails at
/// `timeout`.
pub async fn wait_deployment(
    client: &Client,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<Answer<Deployment>> {
    let started = Instant::now();
    let mut view = StageView::new(std::io::stderr().is_terminal());
    loop {
        let d = match client.deployments().get(id).await {
            Ok(d) => d,
            // A blip (the API restarting) is not the deployment failing.
            Err(ApiError::Transport { .. }) if started.elapsed() < timeout => {
                view.pause().await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        view.update(&d);
        if d.status != DeploymentStatus::InProgress {
            view.finish();
            return Ok(d);
        }
        if started.elapsed() >= timeout {
            view.finish();
            bail!(
                "gave up waiting for deployment {} after {}s: {} ({}/{} stages done)\n\
                 (the deployment carries on; see `shellwego deployments get {}`)",
                d.id,
                timeout.as_secs(),
                d.progress.current_step,
                d.progress.completed_steps,
                d.progress.total_steps,
                d.id
            );
        }
        view.pause().await;
    }
}

/// The live view of a deployment's stages on stderr: on a terminal, lines
/// of `✓ stage` items redrawn with a spinner on the stage in progress;
/// otherwise one plain line per stage change.
struct StageView {
    tty: bool,
    /// Last deployment seen.
    last: Option<Deployment>,
    /// Status of each stage as last printed (not a terminal).
    printed: Vec<(String, String)>,
    /// Lines drawn last time (a terminal).
    drawn: usize,
    frame: usize,
}

impl StageView {
    fn new(tty: bool) -> StageView {
        StageView {
            tty,
            last: None,
            printed: vec![],
            drawn: 0,
            frame: 0,
        }
    }

    fn update(&mut self, d: &Deployment) {
        if self.tty {
            self.last = Some(d.clone());
            self.draw(false);
            return;
        }
        for line in stage_changes(&mut self.printed, d) {
            eprintln!("{line}");
        }
        self.last = Some(d.clone());
    }

    fn draw(&mut self, last: bool) {
        let Some(d) = &self.last else { return };
        let spinner = if last {
            None
        } else {
            Some(FRAMES[self.frame % FRAMES.len()])
        };
        self.frame += 1;
        let lines = stage_lines(d, spinner, LINE_WIDTH);
        let mut err = std::io::stderr().lock();
        let mut s = String::new();
        if self.drawn > 1 {
            let _ = write!(s, "\x1b[{}A", self.drawn - 1);
        }
        s.push_str("\r\x1b[J");
        s.push_str(&lines.join("\n"));
        if last {
            s.push('\n');
        }
        let _ = err.write_all(s.as_bytes());
        let _ = err.flush();
        self.drawn = lines.len();
    }

    /// Sleep until the next poll, turning the spinner meanwhile.
    async fn pause(&mut self) {
        if self.tty {
            for _ in 0..TICKS_PER_POLL {
                tokio::time::sleep(POLL / TICKS_PER_POLL).await;
                self.draw(false);
            }
        } else {
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last state, for good.
    fn finish(&mut self) {
        if self.tty {
            self.draw(true);
        } else if let Some(d) = &self.last {
            eprintln!("deployment {}: {}", d.id, d.status);
        }
    }
}

/// `stage NAME: STATUS` for every stage whose status differs from the
/// one last printed (a stage not printed yet counts as `pending`).
fn stage_changes(printed: &mut Vec<(String, String)>, d: &Deployment) -> Vec<String> {
    let mut out = vec![];
    for s in &d.stages {
        let before = printed
            .iter()
            .position(|(n, _)| n == s.name.as_str())
            .map(|i| printed[i].1.as_str());
        let now = match s
            .reason
            .as_deref()
            .filter(|_| s.status == StageStatus::InProgress)
        {
            Some(r) => format!("{} ({r})", s.status),
            None => s.status.to_string(),
        };
        if before.unwrap_or("pending") != now {
            out.push(format!("stage {}: {now}", s.name));
        }
        match printed.iter_mut().find(|(n, _)| n == s.name.as_str()) {
            Some(p) => p.1 = now,
            None => printed.push((s.name.to_string(), now)),
        }
    }
    out
}

/// `✓ resolving_image  ✓ pulling_image  ⠋ starting_health_checks (2/7)`:
/// the stages begun so far, wrapped into lines under `width`. `spinner`
/// marks the stage in progress (`None`: the final drawing).
fn stage_lines(d: &Deployment, spinner: Option<&str>, width: usize) -> Vec<String> {
    let steps = format!(
        " ({}/{})",
        d.progress.completed_steps, d.progress.total_steps
    );
    let mut items: Vec<String> = vec![];
    let mut current = false;
    for s in &d.stages {
        let item = match s.status.as_str() {
            "pending" => continue,
            "completed" => format!("✓ {}", s.name),
            "failed" => format!("✗ {}", s.name),
            "skipped" => format!("- {}", s.name),
            _ => {
                current = true;
                let mark = match spinner {
                    Some(f) => f,
                    None if d.status == DeploymentStatus::Successful => "✓",
                    None => "✗",
                };
                match s.reason.as_deref().filter(|_| spinner.is_some()) {
                    Some(r) => format!("{mark} {}{steps}: {r}", s.name),
                    None => format!("{mark} {}{steps}", s.name),
                }
            }
        };
        items.push(item);
    }
    if !current && d.status == DeploymentStatus::InProgress {
        items.push(format!(
            "{} {}{steps}",
            spinner.unwrap_or("·"),
            d.progress.current_step
        ));
    }
    if spinner.is_none() {
        items.push(match d.status_reason.as_deref().filter(|r| !r.is_empty()) {
            Some(r) if d.status != DeploymentStatus::Successful => format!("→ {}: {r}", d.status),
            _ => format!("→ {}", d.status),
        });
    }
    let mut lines: Vec<String> = vec![];
    let mut line = String::new();
    for item in items {
        let len = line.chars().count();
        if len > 0 && len + 2 + item.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push_str("  ");
        }
        line.push_str(&item);
    }
    lines.push(line);
    lines
}

async fn list(ctx: &Ctx, args: &DeploymentListArgs) -> anyhow::Result<()> {
    let (id, _) = resolve(&ctx.client, &args.app).await?;
    let l = ctx
        .client
        .deployments()
        .list(&id, &args.list.query())
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
                        d.version.clone(),
                        d.status.to_string(),
                        d.strategy.to_string(),
                        or_dash(d.image.as_deref()),
                        d.created_at.clone(),
                    ]
                })
                .collect();
            emit(&table(
                &["ID", "VERSION", "STATUS", "STRATEGY", "IMAGE", "CREATED"],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.list.all);
        }
    }
    Ok(())
}

fn millis(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

fn deployment_fields(d: &Deployment) -> String {
    // The server gives every deployment a reason (`deploy myapp:v2`,
    // `rollback to dep_…`), replaced by the failure's when it fails.
    fields(&[
        ("ID", d.id.clone()),
        ("APP", d.app_id.clone()),
        ("VERSION", d.version.clone()),
        ("STATUS", d.status.to_string()),
        ("REASON", or_dash(d.status_reason.as_deref())),
        ("STRATEGY", d.strategy.to_string()),
        ("IMAGE", or_dash(d.image.as_deref())),
        (
            "PROGRESS",
            format!(
                "{}/{} ({})",
                d.progress.completed_steps, d.progress.total_steps, d.progress.current_step
            ),
        ),
        ("PREVIOUS VERSION", or_dash(d.previous_version.as_deref())),
        ("ROLLBACK TARGET", or_dash(d.rollback_target.as_deref())),
        ("INITIATED BY", or_dash(d.initiated_by.as_deref())),
        ("BUILD TIME", millis(d.metrics.build_time_ms)),
        ("DEPLOY TIME", millis(d.metrics.deploy_time_ms)),
        ("CREATED", d.created_at.clone()),
        ("COMPLETED", or_dash(d.completed_at.as_deref())),
    ])
}

async fn promote(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let d = ctx.client.deployments().promote(id.trim()).await?;
    show(ctx, &d)
}

async fn get(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let d = ctx.client.deployments().get(id.trim()).await?;
    show(ctx, &d)
}

fn show(ctx: &Ctx, d: &Answer<Deployment>) -> anyhow::Result<()> {
    match ctx.output {
        Output::Json => emit(&json(d.body())?)?,
        Output::Table => {
            emit(&deployment_fields(d))?;
            emit("\n")?;
            let rows: Vec<Vec<String>> = d
                .stages
                .iter()
                .map(|s| {
                    vec![
                        s.name.to_string(),
                        s.status.to_string(),
                        or_dash(s.started_at.as_deref()),
                        or_dash(s.completed_at.as_deref()),
                        or_dash(s.reason.as_deref()),
                    ]
                })
                .collect();
            emit(&table(
                &["NAME", "STATUS", "STARTED", "COMPLETED", "REASON"],
                &rows,
            ))?;
        }
    }
    Ok(())
}

/// A log line (`<time> <message>`) as it is printed.
fn log_line(output: Output, line: &str) -> anyhow::Result<String> {
    Ok(match output {
        Output::Table => format!("{line}\n"),
        Output::Json => {
            let (time, message) = line.split_once(' ').unwrap_or(("", line));
            let mut s = serde_json::to_string(&serde_json::json!({
                "time": time,
                "message": message,
            }))?;
            s.push('\n');
            s
        }
    })
}

async fn logs(ctx: &Ctx, args: &LogsArgs) -> anyhow::Result<()> {
    let id = args.id.trim();
    if !args.follow {
        let text = ctx.client.deployments().logs(id).await?;
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            emit(&log_line(ctx.output, l)?)?;
        }
        return Ok(());
    }
    let mut events = ctx.client.deployments().follow_logs(id).await?;
    while let Some(ev) = events.next().await {
        match ev? {
            LogEvent::Data(d) => {
                for l in d.lines() {
                    emit(&log_line(ctx.output, l)?)?;
                }
            }
            LogEvent::End => return Ok(()),
        }
    }
    bail!(
        "the log stream of {} ended before the deployment did",
        args.id
    )
}

async fn rollback(ctx: &Ctx, args: &RollbackArgs) -> anyhow::Result<()> {
    let target = args.id.trim();
    let req = RollbackRequest {
        strategy: args.strategy,
        reason: args.reason.clone(),
    };
    let a = ctx.client.deployments().rollback(target, &req).await?;
    started(
        ctx,
        a.body(),
        &[
            ("DEPLOYMENT", a.deployment_id.clone()),
            ("ROLLBACK TO", target.to_string()),
            ("STATUS", a.status.to_string()),
        ],
        &a.deployment_id,
        &args.wait,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        d: DeployArgs,
    }

    fn parse(args: &[&str]) -> Result<DeployArgs, clap::Error> {
        T::try_parse_from(std::iter::once("deploy").chain(args.iter().copied())).map(|t| t.d)
    }

    fn dep(status: &str, stages: &[(&str, &str)], done: i64, current: &str) -> Deployment {
        Deployment {
            id: "dep_1".into(),
            status: status.parse().unwrap(),
            version: "v2".into(),
            stages: stages
                .iter()
                .map(|(n, s)| shellwego_api::deployments::Stage {
                    name: n.parse().unwrap(),
                    status: s.parse().unwrap(),
                    ..Default::default()
                })
                .collect(),
            progress: shellwego_api::deployments::Progress {
                total_steps: 7,
                completed_steps: done,
                current_step: current.into(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn deploy_flags_map_to_the_deploy_body() {
        let a = parse(&[
            "hello",
            "--image",
            "web:v2",
            "--strategy",
            "blue-green",
            "--max-surge",
            "2",
            "--health-check-timeout",
            "90s",
            "--warm-window",
            "1m",
            "--no-rollback",
            "--wait",
            "--timeout",
            "3m",
        ])
        .unwrap();
        assert_eq!(a.wait.timeout(), Duration::from_secs(180));
        let body = serde_json::to_value(deploy_body(&a, None)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "image": "web:v2", "source": null, "strategy": "blue-green",
                "health_check_timeout": "90s", "rollback_on_failure": false,
                "batch_size": null, "max_surge": 2, "max_unavailable": null, "warm_window": "1m",
                "canary_steps": null, "canary_pause": null
            })
        );
        // The server's own parser and checks take it.
        let r: DeployRequest = serde_json::from_value(body).unwrap();
        shellwego_api::Validate::validate(&r).unwrap();
        let a = parse(&["hello"]).unwrap();
        assert_eq!(deploy_body(&a, None).rollback_on_failure, None);
        assert_eq!(a.wait.timeout(), DEFAULT_TIMEOUT);
    }

    #[test]
    fn bad_deploy_flags_name_the_flag() {
        let e = parse(&["hello", "--strategy", "yolo"]).unwrap_err();
        assert!(e.to_string().contains("--strategy"), "{e}");
        let e = parse(&["hello", "--health-check-timeout", "soon"]).unwrap_err();
        assert!(e.to_string().contains("--health-check-timeout"), "{e}");
        assert!(parse(&["hello", "--warm-window", "25h"]).is_err());
        assert!(parse(&["hello", "--max-surge", "101"]).is_err());
        // The older name still works.
        assert_eq!(
            parse(&["hello", "--batch-size", "3"]).unwrap().max_surge,
            Some(3)
        );
        assert!(parse(&["hello", "--image", "a", "--upload", "x.tgz"]).is_err());
        assert!(
            parse(&["hello", "--timeout", "5m"]).is_err(),
            "needs --wait"
        );
    }

    #[test]
    fn stage_changes_are_printed_once_each() {
        let mut printed = vec![];
        let d = dep(
            "in_progress",
            &[
                ("resolving_image", "completed"),
                ("pulling_image", "in_progress"),
                ("completed", "pending"),
            ],
            1,
            "pulling_image",
        );
        assert_eq!(
            stage_changes(&mut printed, &d),
            vec![
                "stage resolving_image: completed",
                "stage pulling_image: in_progress"
            ]
        );
        assert!(stage_changes(&mut printed, &d).is_empty());
        let d = dep(
            "successful",
            &[
                ("resolving_image", "completed"),
                ("pulling_image", "completed"),
                ("completed", "completed"),
            ],
            3,
            "completed",
        );
        assert_eq!(
            stage_changes(&mut printed, &d),
            vec![
                "stage pulling_image: completed",
                "stage completed: completed"
            ]
        );
    }

    #[test]
    fn stage_lines_mark_done_stages_and_spin_on_the_current_one() {
        let d = dep(
            "in_progress",
            &[
                ("resolving_image", "completed"),
                ("pulling_image", "completed"),
                ("creating_instances", "completed"),
                ("starting_health_checks", "in_progress"),
                ("shifting_traffic", "pending"),
            ],
            3,
            "starting_health_checks",
        );
        assert_eq!(
            stage_lines(&d, Some("⠋"), 200),
            vec!["✓ resolving_image  ✓ pulling_image  ✓ creating_instances  ⠋ starting_health_checks (3/7)"]
        );
        // Kept under the width: wrapped between items.
        let lines = stage_lines(&d, Some("⠋"), 40);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:?}");
        let mut d = dep(
            "failed",
            &[
                ("resolving_image", "completed"),
                ("pulling_image", "failed"),
            ],
            1,
            "pulling_image",
        );
        d.status_reason = Some("no such image".into());
        assert_eq!(
            stage_lines(&d, None, 200),
            vec!["✓ resolving_image  ✗ pulling_image  → failed: no such image"]
        );
    }

    #[test]
    fn failures_say_why_and_what_happens_next() {
        let mut d = dep("failed", &[], 3, "starting_health_checks");
        d.status_reason = Some("instance inst_1 is crash-looping".into());
        d.previous_version = Some("v1".into());
        assert_eq!(
            failure_message(&d, &["t failed: x".to_string()]),
            "deployment dep_1 (v2) failed: instance inst_1 is crash-looping\n\
             (rolling back to v1; see `shellwego deployments get dep_1`)\n\
             latest log lines:\n  t failed: x"
        );
        d.status = DeploymentStatus::RolledBack;
        d.completed_at = Some("t".into());
        assert_eq!(
            failure_message(&d, &[]),
            "deployment dep_1 (v2) was rolled back: instance inst_1 is crash-looping"
        );
    }

    #[test]
    fn json_log_lines_split_time_and_message() {
        assert_eq!(
            log_line(Output::Json, "2024-01-01T00:00:00Z completed in 1.0s").unwrap(),
            "{\"time\":\"2024-01-01T00:00:00Z\",\"message\":\"completed in 1.0s\"}\n"
        );
        assert_eq!(log_line(Output::Table, "x y").unwrap(), "x y\n");
    }
}
