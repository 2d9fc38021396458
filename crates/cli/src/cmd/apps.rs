//! `shellwego apps create|list|get|delete|scale|start|stop|restart`. An app
//! is named by its id (`app_…`) or by its name, looked up with
//! `GET /v1/apps?filter[name]=…`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use shellwego_api::apps::{
    App, AppCreate, AppUpdate, Cpu, HealthCheck, NetworkingRequest, Placement, Resources,
    RestartRequest, ScaleRequest, Source,
};
use shellwego_client::{Answer, AppAction, Client, ListQuery};
use shellwego_core::model::{DeploymentStatus, DriverKind, RestartStrategy, SourceKind};

use crate::cmd::wait::{self, app_line};
use crate::cmd::{
    confirm, more_hint, parse_duration, parse_key_value, word, ClientArgs, Ctx, ListArgs,
};
use crate::output::{emit, fields, json, list, note, or_dash, table, Output};

#[derive(Debug, Args)]
pub struct AppsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AppsCommand,
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an app from an image, an archive to upload or an archive URL.
    Create(Box<CreateArgs>),
    /// List apps: status, healthy/desired replicas, image or source.
    List(AppListArgs),
    /// Show an app and its instances.
    Get {
        /// The app's name or id (app_…).
        app: String,
    },
    /// Delete an app; its instances are stopped.
    Delete(DeleteArgs),
    /// Set an app's number of replicas.
    Scale(ScaleArgs),
    /// Start a stopped app (with the replica count it had).
    Start(ActionArgs),
    /// Stop an app; its replica count is kept for the next start.
    Stop(ActionArgs),
    /// Restart every instance: rolling (a replacement is healthy before an
    /// old instance stops) or immediate.
    Restart(RestartArgs),
    /// Change an app's networking: --private/--public apply at once; a new
    /// egress policy rolls the instances. Prints the networking block.
    Network(NetworkArgs),
}

/// `--wait` and its `--timeout`.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until every replica is healthy and the app is running (or, for
    /// stop, until it has stopped), showing progress on stderr; with
    /// `-o json`, print the app as it is then.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits before giving up (the app keeps deploying)
    /// [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
}

impl WaitArgs {
    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(wait::DEFAULT_TIMEOUT)
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("from").required(true).args(["image", "upload", "source_url"])))]
pub struct CreateArgs {
    /// The app's name: a DNS label (lowercase letters, digits and hyphens),
    /// unique in the organization; it answers at <name>.<base-domain>.
    pub name: String,
    /// An OCI image to run (nginx:alpine, registry:5000/web@sha256:…).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// A .tar or .tar.gz of the app's files (e.g. a Procfile app such as
    /// examples/hello): uploaded, then run as a tarball source.
    #[arg(long, value_name = "FILE")]
    pub upload: Option<PathBuf>,
    /// An http(s) URL of a .tar or .tar.gz that the nodes download.
    #[arg(long, value_name = "URL")]
    pub source_url: Option<String>,
    /// Memory per replica, 64m to 32g [default: 256m].
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU cores per replica, 0.1 to 16 [default: 0.5].
    #[arg(long, value_name = "CORES")]
    pub cpu: Option<String>,
    /// Number of replicas, 0 to 100 [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..=100))]
    pub replicas: Option<i64>,
    /// Port the health check connects to (health_check.port) [default: the
    /// app's own port, $PORT, which the platform chooses].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// HTTP path the health check GETs; 2xx/3xx is healthy [default: a TCP
    /// connect to the port].
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// Time between health checks, 1s to 1h [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// An environment variable; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Runtime driver [default: the strongest isolation the node offers].
    #[arg(long, value_parser = word::<DriverKind>(DriverKind::NAMES))]
    pub runtime: Option<DriverKind>,
    /// Place replicas only on nodes in this region.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Place replicas only on nodes with this label; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// A tag; repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Command to run instead of the image's (or the Procfile's web: line),
    /// split into arguments as a shell would, without expanding variables.
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub command: Option<String>,
    #[command(flatten)]
    pub networking: NetworkingArgs,
    /// How long each node keeps the app's output (1h to 365d) [default:
    /// the node's, 7d unless its operator set another].
    #[arg(long, value_name = "DURATION")]
    pub log_retention: Option<String>,
    /// The most of the app's output each node keeps (1mb to 10gb)
    /// [default: the node's, 64mb unless its operator set another].
    #[arg(long, value_name = "SIZE")]
    pub log_max_size: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// An app's `networking`: ingress exposure and egress policy.
#[derive(Debug, Clone, Default, Args)]
pub struct NetworkingArgs {
    /// Keep the app off the ingress (its host name answers 404); the
    /// organization's other apps still reach it at <name>.internal.
    #[arg(long, conflicts_with = "public")]
    pub private: bool,
    /// Route the app through the ingress again (the default).
    #[arg(long)]
    pub public: bool,
    /// A CIDR the app's instances may connect to (10.0.0.0/8, 192.0.2.7);
    /// repeatable. Any other destination is refused (container and microvm
    /// drivers; the process driver refuses to run an app with a policy).
    /// Default: anywhere (0.0.0.0/0).
    #[arg(long = "allow-egress", value_name = "CIDR")]
    pub allow_egress: Vec<String>,
}

impl NetworkingArgs {
    fn request(&self) -> Option<NetworkingRequest> {
        let public = match (self.private, self.public) {
            (true, _) => Some(false),
            (_, true) => Some(true),
            _ => None,
        };
        let allowed_egress = (!self.allow_egress.is_empty()).then(|| self.allow_egress.clone());
        (public.is_some() || allowed_egress.is_some()).then_some(NetworkingRequest {
            public,
            allowed_egress,
            internal_dns: None,
        })
    }
}

#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// The app's name or id (app_…).
    pub app: String,
    #[command(flatten)]
    pub networking: NetworkingArgs,
    /// Allow connections anywhere again (drops the --allow-egress policy).
    #[arg(long, conflicts_with = "allow_egress")]
    pub allow_egress_anywhere: bool,
}

#[derive(Debug, Args)]
pub struct AppListArgs {
    /// Only apps with this status: running, stopped, error, deploying,
    /// pending, paused (comma-separated for several).
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only apps with this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Only apps with an instance on this node (node_…).
    #[arg(long, value_name = "NODE_ID")]
    pub node: Option<String>,
    /// Only apps whose name contains this text.
    #[arg(long, short = 'q', value_name = "QUERY")]
    pub query: Option<String>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The app's name or id (app_…).
    pub app: String,
    /// Delete even if it is running (sent as force=true).
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The app's name or id (app_…).
    pub app: String,
    /// The number of replicas, 0 to 100 (with --auto: where to start,
    /// within --min and --max).
    #[arg(value_parser = clap::value_parser!(i64).range(0..=100), required_unless_present = "auto")]
    pub replicas: Option<i64>,
    /// Scale by CPU between --min and --max: out when the instances' mean
    /// CPU over a minute is above --cpu-threshold (% of their allocation),
    /// in when it is below half of it.
    #[arg(long, requires_all = ["min", "max"])]
    pub auto: bool,
    /// With --auto: the fewest replicas (0 to 100).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..=100))]
    pub min: Option<i64>,
    /// With --auto: the most replicas (1 to 100).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=100))]
    pub max: Option<i64>,
    /// Percent of the CPU allocation [default: 70].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=100))]
    pub cpu_threshold: Option<i64>,
    /// Time after a scaling before the next scale-out [default: 1m].
    #[arg(long, value_name = "DURATION")]
    pub scale_out_cooldown: Option<String>,
    /// Time after a scaling before a scale-in [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub scale_in_cooldown: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The app's name or id (app_…).
    pub app: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The app's name or id (app_…).
    pub app: String,
    /// rolling: a replacement is healthy before each old instance stops;
    /// immediate: stop all at once [default: rolling].
    #[arg(long, value_parser = word::<RestartStrategy>(RestartStrategy::NAMES))]
    pub strategy: Option<RestartStrategy>,
    /// Rolling: extra instances started next to the running ones at a
    /// time, 0 to 100 (`--batch-size` is the older name). When one fits on
    /// no node, the restart replaces in place instead: it stops an old
    /// instance, then starts its replacement [default: 1].
    #[arg(long, alias = "batch-size", value_name = "N", value_parser = clap::value_parser!(i64).range(0..=100))]
    pub max_surge: Option<i64>,
    /// Rolling: instances that may be down at a time, 0 to 100 [default: 0;
    /// 1 while replacing in place].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..=100))]
    pub max_unavailable: Option<i64>,
    /// Wait until the restart's deployment has ended (the old instances
    /// drained), then until every replica is healthy.
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(args: AppsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    match args.command {
        AppsCommand::Create(c) => create(&ctx, *c).await,
        AppsCommand::List(l) => list_apps(&ctx, &l).await,
        AppsCommand::Get { app } => get(&ctx, &app).await,
        AppsCommand::Delete(d) => delete(&ctx, &d).await,
        AppsCommand::Scale(s) => scale(&ctx, &s).await,
        AppsCommand::Start(a) => action(&ctx, &a.app, AppAction::Start, &a.wait).await,
        AppsCommand::Stop(a) => action(&ctx, &a.app, AppAction::Stop, &a.wait).await,
        AppsCommand::Restart(r) => {
            let req = RestartRequest {
                strategy: r.strategy,
                batch_size: None,
                max_surge: r.max_surge,
                max_unavailable: r.max_unavailable,
            };
            action(&ctx, &r.app, AppAction::Restart(req), &r.wait).await
        }
        AppsCommand::Network(n) => network(&ctx, &n).await,
    }
}

async fn network(ctx: &Ctx, args: &NetworkArgs) -> anyhow::Result<()> {
    let mut req = args.networking.request().unwrap_or_default();
    if args.allow_egress_anywhere {
        req.allowed_egress = Some(vec!["0.0.0.0/0".into()]);
    }
    let (id, _) = resolve(&ctx.client, &args.app).await?;
    if req != NetworkingRequest::default() {
        let update = AppUpdate {
            networking: Some(req),
            ..Default::default()
        };
        ctx.client.apps().update(&id, &update).await?;
    }
    let app = ctx.client.apps().get(&id).await?.into_inner();
    let n = &app.networking;
    match ctx.output {
        Output::Json => emit(&json(&serde_json::to_value(n)?)?)?,
        Output::Table => emit(&fields(&[
            ("INTERNAL DNS", n.internal_dns.clone()),
            (
                "PUBLIC",
                if n.public {
                    "yes"
                } else {
                    "no (internal only)"
                }
                .to_string(),
            ),
            ("ALLOWED EGRESS", n.allowed_egress.join(", ")),
        ]))?,
    }
    Ok(())
}

/// An app named by id or by name: `(id, name)`.
pub(crate) async fn resolve(client: &Client, app: &str) -> anyhow::Result<(String, String)> {
    let app = app.trim();
    if app.starts_with("app_") {
        let a = client.apps().get(app).await?.into_inner();
        return Ok((a.id, a.name));
    }
    if !shellwego_api::apps::valid_dns_label(app) {
        bail!("no app named '{app}' (names are lowercase DNS labels; ids start with app_)");
    }
    let l = client
        .apps()
        .list(&ListQuery::new().filter("name", app).limit(Some(100)))
        .await?
        .into_inner();
    let mut found: Vec<App> = l.data.into_iter().filter(|a| a.name == app).collect();
    match found.len() {
        0 => bail!("no app named '{app}' (see `shellwego apps list`)"),
        1 => {
            let a = found.remove(0);
            Ok((a.id, a.name))
        }
        n => {
            let ids: Vec<String> = found
                .iter()
                .map(|a| format!("{} in {}", a.id, a.organization_id))
                .collect();
            bail!(
                "{n} apps are named '{app}' ({}); name the one you mean by its id",
                ids.join(", ")
            )
        }
    }
}

/// Upload an archive with `POST /v1/uploads`; its id.
pub(crate) async fn upload(ctx: &Ctx, path: &Path) -> anyhow::Result<String> {
    if path.is_dir() {
        bail!(
            "{} is a directory; --upload takes an archive: tar -C {} -czf app.tgz . && shellwego apps create … --upload app.tgz",
            path.display(),
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.is_empty() {
        bail!(
            "{} is empty; --upload takes a .tar or .tar.gz",
            path.display()
        );
    }
    let u = ctx.client.apps().upload(bytes).await?;
    note(&format!(
        "Uploaded {} ({} bytes) as {}.",
        path.display(),
        u.size,
        u.upload_id
    ));
    Ok(u.into_inner().upload_id)
}

/// The `POST /v1/apps` body the flags describe (the source comes apart).
fn create_body(args: &CreateArgs, source: Option<Source>) -> anyhow::Result<AppCreate> {
    let command = match &args.command {
        None => None,
        Some(c) => match shlex::split(c) {
            Some(words) if !words.is_empty() => Some(words),
            Some(_) => bail!("--command is empty"),
            None => bail!("--command has an unclosed quote: {c}"),
        },
    };
    let health_check = (args.health_path.is_some()
        || args.port.is_some()
        || args.health_interval.is_some())
    .then(|| HealthCheck {
        path: args.health_path.clone(),
        port: args.port,
        interval: args.health_interval.clone(),
        ..Default::default()
    });
    let placement = (args.region.is_some() || !args.labels.is_empty()).then(|| Placement {
        region: args.region.clone(),
        labels: args.labels.iter().cloned().collect(),
    });
    Ok(AppCreate {
        name: args.name.clone(),
        image: args.image.clone(),
        command,
        resources: Resources {
            memory: args.memory.clone(),
            cpu: args.cpu.clone().map(Cpu::Text),
            disk: None,
        },
        env: args
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().into()))
            .collect(),
        health_check,
        replicas: args.replicas,
        tags: args.tags.clone(),
        source,
        runtime: args.runtime,
        placement,
        networking: args.networking.request(),
        logging: (args.log_retention.is_some() || args.log_max_size.is_some()).then(|| {
            shellwego_api::apps::Logging {
                retention: args.log_retention.clone(),
                max_size: args.log_max_size.clone(),
            }
        }),
        ..Default::default()
    })
}

async fn create(ctx: &Ctx, args: CreateArgs) -> anyhow::Result<()> {
    // Check what can be checked here before uploading anything.
    create_body(&args, None)?;
    let source = if let Some(path) = &args.upload {
        Some(Source {
            kind: SourceKind::Tarball,
            url: None,
            upload_id: Some(upload(ctx, path).await?),
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
    let req = create_body(&args, source)?;
    let c = ctx.client.apps().create(&req).await?;
    match ctx.output {
        Output::Json if args.wait.wait => {}
        Output::Json => emit(&json(c.body())?)?,
        Output::Table => emit(&fields(&[
            ("ID", c.id.clone()),
            ("NAME", c.name.clone()),
            ("STATUS", c.status.to_string()),
            ("DEPLOYMENT", c.deployment_id.clone()),
        ]))?,
    }
    if args.wait.wait {
        let app = wait::wait_app(&ctx.client, &c.id, args.wait.timeout()).await?;
        if ctx.output == Output::Json {
            emit(&json(app.body())?)?;
        }
    }
    Ok(())
}

/// Image or source, in a few words.
fn origin(a: &App) -> String {
    if let Some(i) = a.image.as_deref().filter(|i| !i.is_empty()) {
        return i.to_string();
    }
    match &a.source {
        Some(s) => match (&s.upload_id, &s.url) {
            (Some(u), _) => format!("{} {u}", s.kind),
            (None, Some(u)) => format!("{} {u}", s.kind),
            (None, None) => s.kind.to_string(),
        },
        None => "-".into(),
    }
}

async fn list_apps(ctx: &Ctx, args: &AppListArgs) -> anyhow::Result<()> {
    let mut query = args.list.query();
    for (field, value) in [
        ("status", &args.status),
        ("tags", &args.tag),
        ("node_id", &args.node),
        ("q", &args.query),
    ] {
        if let Some(v) = value {
            query = query.filter(field, v.clone());
        }
    }
    let l = ctx.client.apps().list(&query).await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.status.to_string(),
                        format!("{}/{}", a.replicas.healthy, a.replicas.desired),
                        origin(a),
                        a.id.clone(),
                    ]
                })
                .collect();
            emit(&table(
                &["NAME", "STATUS", "REPLICAS", "IMAGE/SOURCE", "ID"],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.list.all);
        }
    }
    Ok(())
}

async fn get(ctx: &Ctx, app: &str) -> anyhow::Result<()> {
    let (id, _) = resolve(&ctx.client, app).await?;
    let a = ctx.client.apps().get(&id).await?;
    match ctx.output {
        Output::Json => emit(&json(a.body())?)?,
        Output::Table => {
            emit(&app_fields(&a))?;
            emit("\n")?;
            if a.instances.is_empty() {
                emit("(no instances)\n")?;
            } else {
                let rows: Vec<Vec<String>> = a
                    .instances
                    .iter()
                    .map(|i| {
                        let status = match i.status_reason.as_deref().filter(|r| !r.is_empty()) {
                            Some(r) => format!("{} ({r})", i.status),
                            None => i.status.to_string(),
                        };
                        vec![
                            i.id.clone(),
                            or_dash(i.node_id.as_deref()),
                            status,
                            or_dash(i.ip.as_deref()),
                            or_dash(i.started_at.as_deref()),
                        ]
                    })
                    .collect();
                emit(&table(&["ID", "NODE", "STATUS", "IP", "STARTED"], &rows))?;
            }
        }
    }
    Ok(())
}

fn app_fields(a: &App) -> String {
    let status = match a.status_reason.as_deref().filter(|r| !r.is_empty()) {
        Some(r) => format!("{} ({r})", a.status),
        None => a.status.to_string(),
    };
    let r = &a.resources;
    let cpu = match &r.cpu {
        Some(Cpu::Text(t)) => t.clone(),
        Some(Cpu::Number(n)) => n.to_string(),
        None => "-".into(),
    };
    let h = &a.health_check;
    let health = match (&h.path, h.port) {
        (Some(p), Some(port)) => format!("GET {p} on port {port}"),
        (Some(p), None) => format!("GET {p}"),
        (None, Some(port)) => format!("TCP connect to port {port}"),
        (None, None) => "TCP connect".into(),
    };
    let health = match &h.interval {
        Some(i) => format!("{health}, every {i}"),
        None => health,
    };
    let placement = {
        let mut p: Vec<String> = a.placement.region.iter().cloned().collect();
        p.extend(a.placement.labels.iter().map(|(k, v)| format!("{k}={v}")));
        list(&p)
    };
    let env: Vec<String> = a.env.keys().cloned().collect();
    fields(&[
        ("ID", a.id.clone()),
        ("NAME", a.name.clone()),
        ("STATUS", status),
        (
            "REPLICAS",
            format!(
                "{}/{} healthy, {} running",
                a.replicas.healthy, a.replicas.desired, a.replicas.current
            ),
        ),
        ("IMAGE/SOURCE", origin(a)),
        (
            "COMMAND",
            a.command
                .as_ref()
                .map(|c| shlex::try_join(c.iter().map(String::as_str)).unwrap_or(c.join(" ")))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "RESOURCES",
            format!("{} memory, {cpu} CPU", or_dash(r.memory.as_deref()),),
        ),
        (
            "RUNTIME",
            or_dash(
                a.runtime
                    .driver
                    .map(|d| d.as_str())
                    .or(a.runtime.requested.map(|d| d.as_str())),
            ),
        ),
        ("HEALTH CHECK", health),
        ("PLACEMENT", placement),
        ("ENV", list(&env)),
        ("TAGS", list(&a.tags)),
        ("VERSION", a.version.to_string()),
        ("CREATED", a.created_at.clone()),
        ("UPDATED", a.updated_at.clone()),
    ])
}

async fn delete(ctx: &Ctx, args: &DeleteArgs) -> anyhow::Result<()> {
    let (id, name) = resolve(&ctx.client, &args.app).await?;
    let what = format!("app {name} ({id})");
    confirm(
        &what,
        &format!("Delete {what}? Its instances are stopped."),
        args.yes,
    )?;
    ctx.client.apps().delete(&id, args.force).await?;
    match ctx.output {
        // 204: the API's body is empty, and so is ours.
        Output::Json => {}
        Output::Table => emit(&format!("Deleted app {name} ({id}).\n"))?,
    }
    Ok(())
}

async fn scale(ctx: &Ctx, args: &ScaleArgs) -> anyhow::Result<()> {
    let (id, name) = resolve(&ctx.client, &args.app).await?;
    let req = ScaleRequest {
        replicas: args.replicas,
        strategy: args.auto.then_some(shellwego_api::model::ScaleMode::Auto),
        constraints: args.auto.then(|| shellwego_api::apps::ScaleConstraints {
            min: args.min.unwrap_or(1),
            max: args.max.unwrap_or(1),
            cpu_threshold: args.cpu_threshold,
            scale_out_cooldown: args.scale_out_cooldown.clone(),
            scale_in_cooldown: args.scale_in_cooldown.clone(),
        }),
    };
    let a = ctx.client.apps().scale(&id, &req).await?;
    let done = match (args.auto, args.replicas) {
        (true, _) => format!(
            "Autoscaling {name} between {} and {} replicas (now {}).",
            args.min.unwrap_or(1),
            args.max.unwrap_or(1),
            a.body()["replicas"]["desired"]
        ),
        (false, Some(1)) => format!("Scaled {name} to 1 replica."),
        (false, r) => format!("Scaled {name} to {} replicas.", r.unwrap_or(0)),
    };
    finish_action(ctx, &id, &a, &done, &args.wait, false).await
}

async fn action(ctx: &Ctx, app: &str, what: AppAction, wait: &WaitArgs) -> anyhow::Result<()> {
    let (id, name) = resolve(&ctx.client, app).await?;
    let restarted = matches!(what, AppAction::Restart(_));
    let a = ctx.client.apps().action(&id, &what).await?;
    let done = match &what {
        AppAction::Start => format!("Starting {name}."),
        AppAction::Stop => format!("Stopping {name}."),
        AppAction::Restart(r) => {
            let strategy = r.strategy.unwrap_or_default();
            match (strategy, r.max_surge) {
                (RestartStrategy::Rolling, Some(b)) => {
                    format!("Restarting {name} (rolling, {b} at a time).")
                }
                (s, _) => format!("Restarting {name} ({s})."),
            }
        }
    };
    finish_action(ctx, &id, &a, &done, wait, restarted).await
}

/// After an action that answers with the app: say what was done, then
/// wait if asked; JSON output is the answer, or the app once settled.
async fn finish_action(
    ctx: &Ctx,
    id: &str,
    a: &Answer<App>,
    done: &str,
    wait: &WaitArgs,
    restarted: bool,
) -> anyhow::Result<()> {
    match ctx.output {
        Output::Json if wait.wait => {}
        Output::Json => emit(&json(a.body())?)?,
        Output::Table => {
            emit(&format!("{done}\n"))?;
            if !wait.wait {
                note(&app_line(a));
            }
        }
    }
    if wait.wait {
        let started = std::time::Instant::now();
        // A restart is a deployment: it is over when its old instances
        // are drained, not when the new ones are healthy.
        if let Some(dep) = a.deployment_id.as_deref().filter(|_| restarted) {
            let d =
                crate::cmd::deployments::wait_deployment(&ctx.client, dep, wait.timeout()).await?;
            if d.status != DeploymentStatus::Successful {
                return Err(crate::cmd::deployments::unsuccessful(&ctx.client, &d).await);
            }
        }
        // What is left of the timeout after the deployment's wait.
        let left = if restarted {
            wait.timeout().saturating_sub(started.elapsed())
        } else {
            wait.timeout()
        };
        let app = wait::wait_app(&ctx.client, id, left).await?;
        if ctx.output == Output::Json {
            emit(&json(app.body())?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: AppsCommand,
    }

    fn parse(args: &[&str]) -> Result<AppsCommand, clap::Error> {
        T::try_parse_from(std::iter::once("apps").chain(args.iter().copied())).map(|t| t.c)
    }

    #[test]
    fn create_flags_map_to_the_create_body() {
        let AppsCommand::Create(c) = parse(&[
            "create",
            "web",
            "--image",
            "nginx:alpine",
            "--memory",
            "512m",
            "--cpu",
            "0.5",
            "--replicas",
            "3",
            "--port",
            "8080",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--health-path",
            "/health",
            "--runtime",
            "process",
            "--region",
            "fra1",
            "--label",
            "ssd=true",
            "--tag",
            "prod",
            "--tag",
            "api",
            "--command",
            "nginx -g 'daemon off;'",
        ])
        .unwrap() else {
            panic!("not create")
        };
        let body = serde_json::to_value(create_body(&c, None).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "name": "web", "image": "nginx:alpine",
                "command": ["nginx", "-g", "daemon off;"],
                "resources": {"memory": "512m", "cpu": "0.5"},
                "env": {"A": "1", "B": "x=y"}, "domains": [], "volumes": [],
                "health_check": {"path": "/health", "port": 8080},
                "replicas": 3, "tags": ["prod", "api"], "source": null,
                "runtime": "process",
                "placement": {"region": "fra1", "labels": {"ssd": "true"}},
                "stop_timeout": null, "networking": null, "logging": null
            })
        );
        // The server's own parser takes it.
        let _: AppCreate = serde_json::from_value(body).unwrap();
    }

    #[test]
    fn networking_flags_map_to_the_networking_block() {
        let AppsCommand::Create(c) = parse(&[
            "create",
            "db",
            "--image",
            "postgres:16",
            "--private",
            "--allow-egress",
            "10.99.0.0/24",
            "--allow-egress",
            "192.0.2.7",
        ])
        .unwrap() else {
            panic!("not create")
        };
        let body = serde_json::to_value(create_body(&c, None).unwrap()).unwrap();
        assert_eq!(
            body["networking"],
            serde_json::json!({"public": false, "allowed_egress": ["10.99.0.0/24", "192.0.2.7"], "internal_dns": null})
        );
        assert!(parse(&["create", "db", "--image", "a", "--private", "--public"]).is_err());
        let AppsCommand::Network(n) = parse(&["network", "db", "--allow-egress-anywhere"]).unwrap()
        else {
            panic!("not network")
        };
        assert!(n.allow_egress_anywhere && n.networking.request().is_none());
        assert!(parse(&[
            "network",
            "db",
            "--allow-egress",
            "10.0.0.0/8",
            "--allow-egress-anywhere"
        ])
        .is_err());
    }

    #[test]
    fn create_needs_exactly_one_origin_and_env_needs_an_equals_sign() {
        assert!(parse(&["create", "web"]).is_err());
        assert!(parse(&[
            "create",
            "web",
            "--image",
            "a",
            "--source-url",
            "http://x/a.tgz"
        ])
        .is_err());
        let e = parse(&["create", "web", "--image", "a", "--env", "FOO"]).unwrap_err();
        assert!(e.to_string().contains("--env"), "{e}");
        assert!(parse(&["create", "web", "--image", "a", "--timeout", "5s"]).is_err());
        assert!(parse(&["create", "web", "--image", "a", "--wait", "--timeout", "5s"]).is_ok());
        assert!(parse(&["scale", "web", "101"]).is_err());
    }
}
