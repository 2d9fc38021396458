//! `shellwego nodes list|get|register|drain|delete`. A node is named by its
//! id (`node_…`) or by its host name.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use shellwego_api::apps::AppList;
use shellwego_api::nodes::{Node, NodeDrain, NodeRegister};
use shellwego_client::{Answer, ApiError, Client, ListQuery, StatusCode};
use shellwego_core::model::InstanceStatus;

use crate::cmd::wait::Progress;
use crate::cmd::{confirm, more_hint, parse_key_value, ClientArgs, Ctx, ListArgs};
use crate::output::{emit, fields, human_size, json, list, note, or_dash, table, Output};

/// Where `nodes register` tells the agent to keep its state.
const AGENT_DATA_DIR: &str = "/var/lib/shellwego-agent";
/// A drain's own timeout when `--timeout` is not given (the API's default).
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// `drain --wait` waits this much longer than the drain's timeout: when
/// that passes, the control plane stops what has not moved.
const DRAIN_WAIT_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: NodesCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes: status, region, free CPU and memory, apps, drivers.
    List(NodeListArgs),
    /// Show a node: capacity, usage, drivers, labels, versions.
    Get {
        /// The node's id (node_…) or host name.
        node: String,
    },
    /// Register a machine: prints a one-time join token and the command to
    /// run there.
    Register(RegisterArgs),
    /// Drain a node: no new instances go there, and each of its instances
    /// is replaced on another node and healthy there before it stops here.
    Drain(DrainArgs),
    /// Remove a node; its instances are placed on other nodes.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct NodeListArgs {
    /// Only nodes with this status: ready, draining, maintenance, offline
    /// (comma-separated for several).
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only nodes in this region.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The machine's host name [default: what its agent reports when it joins].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Region the node is in (apps may ask for one).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Zone within the region (replicas are spread over zones).
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// A label for placement (apps may require labels); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node's id (node_…) or host name.
    pub node: String,
    /// Instances moved at a time, 1 to 100 [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=100))]
    pub batch_size: Option<i64>,
    /// After this long, instances not yet moved are stopped and placed
    /// elsewhere from scratch, 1s to 24h [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = drain_timeout)]
    pub timeout: Option<String>,
    /// Move instances only to this node (node_…); repeatable.
    #[arg(long = "destination", value_name = "NODE_ID")]
    pub destinations: Vec<String>,
    /// Wait until no instance runs on the node any more, showing progress
    /// on stderr.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The node's id (node_…) or host name.
    pub node: String,
    /// Move its instances first (each replacement healthy before the old
    /// one stops); the node is removed once it runs nothing.
    #[arg(long)]
    pub migrate_apps: bool,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `--timeout` of a drain: kept as typed (the API reads it), checked here.
fn drain_timeout(s: &str) -> Result<String, String> {
    crate::cmd::parse_duration(s).map(|_| s.trim().to_string())
}

pub async fn run(args: NodesArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    match args.command {
        NodesCommand::List(l) => list_nodes(&ctx, &l).await,
        NodesCommand::Get { node } => get(&ctx, &node).await,
        NodesCommand::Register(r) => register(&ctx, r).await,
        NodesCommand::Drain(d) => drain(&ctx, d).await,
        NodesCommand::Delete(d) => delete(&ctx, &d).await,
    }
}

/// A node named by id or host name.
async fn resolve(client: &Client, node: &str) -> anyhow::Result<Node> {
    let node = node.trim();
    if node.starts_with("node_") {
        return Ok(client.nodes().get(node).await?.into_inner());
    }
    if node.is_empty() || node.contains(',') {
        bail!("no node named '{node}'");
    }
    let l = client
        .nodes()
        .list(&ListQuery::new().filter("hostname", node).limit(Some(100)))
        .await?
        .into_inner();
    let mut found: Vec<Node> = l.data.into_iter().filter(|n| n.hostname == node).collect();
    match found.len() {
        0 => bail!("no node named '{node}' (see `shellwego nodes list`)"),
        1 => Ok(found.remove(0)),
        n => {
            let ids: Vec<String> = found.iter().map(|n| n.id.clone()).collect();
            bail!(
                "{n} nodes are named '{node}' ({}); name the one you mean by its id",
                ids.join(", ")
            )
        }
    }
}

async fn list_nodes(ctx: &Ctx, args: &NodeListArgs) -> anyhow::Result<()> {
    let mut query = args.list.query();
    if let Some(s) = &args.status {
        query = query.filter("status", s.clone());
    }
    if let Some(r) = &args.region {
        query = query.filter("region", r.clone());
    }
    let l = ctx.client.nodes().list(&query).await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|n| {
                    vec![
                        n.id.clone(),
                        or_dash(Some(&n.hostname)),
                        n.status.to_string(),
                        or_dash(Some(&n.region)),
                        n.running_apps.to_string(),
                        format!("{}/{}", n.capacity.cpu_available, n.capacity.cpu_cores),
                        format!(
                            "{}/{}",
                            // No spaces inside a column.
                            human_size(&n.capacity.memory_available).replace(' ', ""),
                            human_size(&n.capacity.memory_total).replace(' ', "")
                        ),
                        list(&n.drivers),
                        or_dash(n.last_seen.as_deref()),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "ID",
                    "HOSTNAME",
                    "STATUS",
                    "REGION",
                    "APPS",
                    "CPU FREE",
                    "MEMORY FREE",
                    "DRIVERS",
                    "LAST SEEN",
                ],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.list.all);
        }
    }
    Ok(())
}

async fn get(ctx: &Ctx, node: &str) -> anyhow::Result<()> {
    let id = resolve(&ctx.client, node).await?.id;
    // The body as the API gives it for this id (the resolved one may have
    // come from a list).
    let n = ctx.client.nodes().get(&id).await?;
    match ctx.output {
        Output::Json => emit(&json(n.body())?)?,
        Output::Table => {
            let c = &n.capacity;
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let versions: Vec<String> = [
                ("agent", &n.agent_version),
                ("kernel", &n.kernel_version),
                ("qemu", &n.qemu_version),
                ("firecracker", &n.firecracker_version),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
            .collect();
            emit(&fields(&[
                ("ID", n.id.clone()),
                ("HOSTNAME", or_dash(Some(&n.hostname))),
                ("STATUS", n.status.to_string()),
                ("REGION", or_dash(Some(&n.region))),
                ("ZONE", or_dash(Some(&n.zone))),
                (
                    "CPU",
                    format!("{} of {} cores free", c.cpu_available, c.cpu_cores),
                ),
                (
                    "MEMORY",
                    format!(
                        "{} of {} free ({}% in use, measured)",
                        human_size(&c.memory_available),
                        human_size(&c.memory_total),
                        n.usage.memory_percent
                    ),
                ),
                ("DISK", human_size(&c.disk_total)),
                (
                    "RESERVED",
                    format!("cpu {}% (by instances)", n.usage.cpu_percent),
                ),
                ("APPS", n.running_apps.to_string()),
                ("DRIVERS", list(&n.drivers)),
                ("LABELS", list(&labels)),
                ("INTERNAL IP", or_dash(n.networking.internal_ip.as_deref())),
                ("PUBLIC IP", or_dash(n.networking.public_ip.as_deref())),
                (
                    "WIREGUARD KEY",
                    or_dash(n.networking.wireguard_pubkey.as_deref()),
                ),
                (
                    "VERSIONS",
                    if versions.is_empty() {
                        "-".into()
                    } else {
                        versions.join(", ")
                    },
                ),
                ("LAST SEEN", or_dash(n.last_seen.as_deref())),
                ("CREATED", n.created_at.clone()),
            ]))?;
        }
    }
    Ok(())
}

/// The command that joins a machine with `token`, talking to `api`.
fn join_command(api: &str, token: &str) -> String {
    format!(
        "shellwego agent --control-plane {api} --join-token {token} --data-dir {AGENT_DATA_DIR}"
    )
}

async fn register(ctx: &Ctx, args: RegisterArgs) -> anyhow::Result<()> {
    let req = NodeRegister {
        hostname: args.name.unwrap_or_default(),
        region: args.region,
        zone: args.zone,
        labels: args.labels.into_iter().collect(),
        capabilities: Default::default(),
    };
    let r = ctx.client.nodes().register(&req).await?;
    match ctx.output {
        Output::Json => emit(&json(r.body())?)?,
        Output::Table => {
            let api = ctx.client.base();
            emit(&fields(&[
                ("ID", r.id.clone()),
                ("JOIN TOKEN", r.join_token.clone()),
            ]))?;
            emit(&format!(
                "\nOn the machine, within an hour (the token works once):\n\n  {}\n",
                join_command(api, &r.join_token)
            ))?;
            if is_loopback(api) {
                note(&format!(
                    "note: {api} is this machine; on another one, use an address of the control plane it can reach"
                ));
            }
        }
    }
    Ok(())
}

fn is_loopback(api: &str) -> bool {
    let Some(host) = reqwest::Url::parse(api)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    else {
        return false;
    };
    // An IPv6 host comes in brackets.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn drain(ctx: &Ctx, args: DrainArgs) -> anyhow::Result<()> {
    let node = resolve(&ctx.client, &args.node).await?;
    let wait_for = args
        .timeout
        .as_deref()
        .and_then(shellwego_core::units::parse_duration)
        .unwrap_or(DEFAULT_DRAIN_TIMEOUT)
        + DRAIN_WAIT_MARGIN;
    let req = NodeDrain {
        batch_size: args.batch_size,
        timeout: args.timeout,
        destination_nodes: args.destinations,
    };
    let d = ctx.client.nodes().drain(&node.id, &req).await?;
    match ctx.output {
        Output::Json => emit(&json(d.body())?)?,
        Output::Table => {
            let plural = if d.instances == 1 { "" } else { "s" };
            emit(&format!(
                "Draining {}: {} instance{plural} to move.\n",
                d.node_id, d.instances
            ))?;
        }
    }
    if args.wait {
        wait_drained(&ctx.client, &node, wait_for).await?;
    }
    Ok(())
}

/// Instances still on the node: `(to move, stopping)`. Apps with an
/// instance meant to run there are found with a filter; once there are
/// none, the instances stopping there (no longer meant to run, so no
/// filter finds them) are looked for in every app.
async fn instances_on(client: &Client, node_id: &str) -> Result<(usize, usize), ApiError> {
    let on_node = |l: &Answer<AppList>, stopping: bool| {
        l.data
            .iter()
            .flat_map(|a| &a.instances)
            .filter(|i| i.node_id.as_deref() == Some(node_id))
            .filter(|i| !stopping || i.status == InstanceStatus::Stopping)
            .count()
    };
    let all = ListQuery::new().limit(Some(100)).all(true);
    let apps = client.apps();
    let filtered = apps.list(&all.clone().filter("node_id", node_id)).await?;
    let moving = on_node(&filtered, false);
    if moving > 0 {
        return Ok((moving, 0));
    }
    Ok((0, on_node(&apps.list(&all).await?, true)))
}

async fn wait_drained(client: &Client, node: &Node, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut progress = Progress::new();
    let name = if node.hostname.is_empty() {
        node.id.clone()
    } else {
        format!("{} ({})", node.hostname, node.id)
    };
    let count = |n: usize| format!("{n} instance{}", if n == 1 { "" } else { "s" });
    loop {
        let line = match instances_on(client, &node.id).await? {
            (0, 0) => {
                progress.done("✓", format!("{name}: drained"));
                return Ok(());
            }
            (0, stopping) => format!("{name}: {} stopping (draining)", count(stopping)),
            (moving, _) => format!("{name}: {} left (draining)", count(moving)),
        };
        if started.elapsed() >= timeout {
            progress.done("✗", line.clone());
            bail!(
                "gave up waiting for {name} to drain after {}s: {line}",
                timeout.as_secs()
            );
        }
        progress.set(line);
        progress.pause().await;
    }
}

async fn delete(ctx: &Ctx, args: &DeleteArgs) -> anyhow::Result<()> {
    let node = resolve(&ctx.client, &args.node).await?;
    let name = if node.hostname.is_empty() {
        node.id.clone()
    } else {
        format!("{} ({})", node.hostname, node.id)
    };
    let what = if args.migrate_apps {
        "Its instances are moved to other nodes first."
    } else {
        "Its instances are placed on other nodes."
    };
    confirm(
        &format!("node {name}"),
        &format!("Delete node {name}? {what}"),
        args.yes,
    )?;
    ctx.client
        .nodes()
        .delete(&node.id, args.migrate_apps)
        .await?;
    // 204 (deleted) or, with --migrate-apps, 202 (draining first): ask.
    let still_there = match ctx.client.nodes().get(&node.id).await {
        Ok(_) => true,
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => false,
        Err(e) => return Err(e.into()),
    };
    match ctx.output {
        // The API's body is empty, and so is ours.
        Output::Json => {}
        Output::Table if still_there => emit(&format!(
            "Draining {name}; it is removed once its instances have moved.\n"
        ))?,
        Output::Table => emit(&format!("Deleted node {name}.\n"))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_commands_and_loopback() {
        assert_eq!(
            join_command("http://10.0.0.1:3000", "sw_join_x"),
            "shellwego agent --control-plane http://10.0.0.1:3000 --join-token sw_join_x --data-dir /var/lib/shellwego-agent"
        );
        assert!(is_loopback("http://127.0.0.1:3000"));
        assert!(is_loopback("http://localhost:3000"));
        assert!(is_loopback("http://[::1]:3000"));
        assert!(!is_loopback("https://api.example.com"));
    }
}
