//! The agent channel: a node joins once with its join token, then keeps
//! calling `sync` (HTTP long-poll): each call carries the node's status up
//! (and is its heartbeat) and returns the node's desired state as soon as
//! it differs from the generation the agent has, or after `wait_secs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;
use shellwego_api::agent::{AgentDesired, AgentJoin, AgentSync, SsrfPolicy};
use shellwego_core::model::{
    AgentEventKind, DesiredState, DriverKind, EventKind, InstanceStatus, UnknownValue,
};
use shellwego_core::Error;
use shellwego_store::apps;
use shellwego_store::events::{Actor, NewEvent, Severity};
use shellwego_store::nodes::{self, HostReport};

use crate::bus::Topic;
use crate::ctx::{ServerCtx, DESIRED};

/// An agent joins with its one-time token; a used, expired or unknown token
/// is a 401.
pub async fn agent_join(
    ctx: &ServerCtx,
    req: &AgentJoin,
    ip: Option<String>,
) -> Result<(String, String), Error> {
    let _store = &ctx.store;
    let report = HostReport {
        hostname: req.hostname.trim().to_string(),
        cpu_cores: req.cpu_cores,
        memory_total: req.memory_total,
        memory_available: req.memory_available,
        disk_total: req.disk_total,
        kernel_version: req.kernel_version.clone(),
        agent_version: req.agent_version.clone(),
        firecracker_version: req.firecracker_version.clone(),
        qemu_version: req.qemu_version.clone(),
        drivers: req.drivers.clone(),
        kvm: req.kvm,
        region: req.region.clone().unwrap_or_default(),
        zone: req.zone.clone().unwrap_or_default(),
        labels: req.labels.clone(),
    };
    let mut tx = ctx.unit().await?;
    let Some(nodes::Joined {
        node_id,
        organization_id: org,
        credential,
    }) = nodes::join(&mut tx, &req.join_token, &report).await?
    else {
        return Err(Error::Unauthenticated(
            "The join token is invalid, used or expired; register the node again for a new one."
                .into(),
        ));
    };
    let actor = Actor {
        kind: "system".into(),
        id: Some(node_id.clone()),
        ip,
    };
    tx.record(
        NewEvent::info("node.joined", &actor, "node", &node_id)
            .in_org(&org)
            .meta(json!({"hostname": report.hostname, "drivers": report.drivers})),
    );
    tx.commit().await?;
    ctx.publish(DESIRED);
    Ok((node_id, credential))
}

/// How often a held sync re-reads its node's generation without being
/// woken: a safety net only, since every replica's changes wake it
/// through the event bus (in-process, or PostgreSQL's NOTIFY, which
/// resynchronises everyone after a lost connection).
const SYNC_RECHECK: Duration = Duration::from_secs(5);

/// One sync call: apply what the agent reports (it is also the node's
/// heartbeat), reconcile the apps that changed, then hold the call until
/// the node's desired state differs from the generation the agent has —
/// woken by the event bus when any replica changes what nodes run (and
/// re-reading the store every [`SYNC_RECHECK`] regardless) — but never
/// past a third of the liveness timeout, nor a shutdown.
pub async fn agent_sync(
    ctx: &ServerCtx,
    credential: Option<&str>,
    req: &AgentSync,
) -> Result<AgentDesired, Error> {
    // Subscribed before the generation is read: a change landing between
    // the read and the wait below still wakes the wait at once.
    let mut changes = ctx.bus.subscribe(&[Topic::Nodes]);
    let nodes::NodeCredential {
        id: node_id,
        organization_id: org,
        mut generation,
    } = node_for_credential(ctx, credential).await?;
    let back = agent_heartbeat(
        ctx,
        &node_id,
        &org,
        req.memory_available,
        req.internal_ip.as_deref(),
    )
    .await?;
    let changed = apply_reports(
        ctx,
        &node_id,
        &org,
        req.instances.as_deref(),
        req.seq,
        &req.events,
        req.internal_ip.as_deref(),
    )
    .await?;
    for app_id in &changed {
        crate::controller::reconcile::reconcile(ctx, app_id).await?;
    }
    if !req.samples.is_empty() {
        crate::service::metrics::ingest(ctx, &node_id, &req.samples).await?;
    }
    let mesh_changed = match &req.wireguard {
        Some(w) => mesh_report(ctx, &node_id, &org, w).await?,
        None => false,
    };
    if mesh_changed {
        generation = nodes::generation(&mut *ctx.store.conn().await?, &node_id).await?;
    }
    if back || !changed.is_empty() || mesh_changed {
        ctx.publish(DESIRED);
    }
    // Tasks waiting: answer at once (they may have been written between
    // this node's last answer and now).
    let tasks_waiting =
        shellwego_store::tasks::has_pending(&mut *ctx.store.conn().await?, &node_id).await?;
    if req.generation == generation && !tasks_waiting {
        let wait = Duration::from_secs(req.wait_secs.unwrap_or(10)).min(ctx.sync_wait());
        let deadline = tokio::time::Instant::now() + wait;
        let mut stopping = ctx.stopping.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stopping.wait_for(|s| *s) => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(SYNC_RECHECK) => {}
            }
            // A connection only for the read: none is held while waiting.
            generation = nodes::generation(&mut *ctx.store.conn().await?, &node_id).await?;
            if generation != req.generation {
                break;
            }
        }
    }
    let region = nodes::get_visible(
        &mut *ctx.store.conn().await?,
        &node_id,
        std::slice::from_ref(&org),
    )
    .await?
    .map(|n| n.region)
    .unwrap_or_default();
    let instances = desired_for_node(ctx, &node_id, &region).await?;
    let ssrf = ctx.config.ssrf.config();
    let overlay = overlay_of(ctx, &node_id, &org).await?;
    let tasks = take_tasks(ctx, &node_id, &req.tasks).await?;
    // After the tasks: a log query handed out here comes with the follow
    // its request made first.
    let log_follows = crate::service::logs::follows_for_node(ctx, &org).await?;
    Ok(AgentDesired {
        tasks,
        log_follows,
        generation,
        instances,
        ssrf: SsrfPolicy {
            allow: ssrf.allow.iter().map(ToString::to_string).collect(),
            allow_private_targets: ssrf.allow_private_targets,
        },
        overlay,
    })
}

/// Record the node's WireGuard key and port; when they changed (or the
/// node is new on the mesh), every node of the organization is told (its
/// generation moves). True then.
async fn mesh_report(
    ctx: &ServerCtx,
    node_id: &str,
    org: &str,
    w: &shellwego_api::agent::WireguardReport,
) -> Result<bool, Error> {
    let mut tx = ctx.unit().await?;
    let changed =
        shellwego_store::overlay::report(&mut tx, node_id, &w.public_key, i64::from(w.port))
            .await?;
    if changed {
        nodes::bump_org(&mut tx, org).await?;
        tx.touch(&[Topic::Nodes]);
        let actor = Actor {
            kind: "system".into(),
            id: Some(node_id.to_string()),
            ip: None,
        };
        tx.record(
            NewEvent::info("node.mesh_updated", &actor, "node", node_id)
                .in_org(org)
                .meta(json!({"wireguard_pubkey": w.public_key, "port": w.port})),
        );
    }
    tx.commit().await?;
    Ok(changed)
}

/// The node's pending tasks, handed out now (each once).
async fn take_tasks(
    ctx: &ServerCtx,
    node_id: &str,
    known: &[String],
) -> Result<Vec<shellwego_api::agent::AgentTask>, Error> {
    let mut tx = ctx.begin().await?;
    let requests = shellwego_store::tasks::take_pending(&mut tx, node_id, known).await?;
    shellwego_store::commit(tx).await?;
    Ok(requests
        .iter()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect())
}

/// The agent's answer to a task of its node.
pub async fn agent_task_result(
    ctx: &ServerCtx,
    credential: Option<&str>,
    task_id: &str,
    result: &shellwego_api::agent::AgentTaskResult,
) -> Result<(), Error> {
    let node = node_for_credential(ctx, credential).await?;
    let text = serde_json::to_string(result).map_err(Error::internal)?;
    let mut tx = ctx.begin().await?;
    let done = shellwego_store::tasks::complete(&mut tx, task_id, &node.id, &text).await?;
    shellwego_store::commit(tx).await?;
    if !done {
        return Err(Error::not_found("task", task_id));
    }
    Ok(())
}

/// `POST /v1/agent/logs`: a node's new lines for a follow (404 when the
/// follow is over: the agent stops).
pub async fn agent_log_push(
    ctx: &ServerCtx,
    credential: Option<&str>,
    push: &shellwego_api::logs::LogPush,
) -> Result<(), Error> {
    let node = node_for_credential(ctx, credential).await?;
    let body = serde_json::to_string(push).map_err(Error::internal)?;
    let stored = shellwego_store::log_follows::push(
        &mut *ctx.store.conn().await?,
        &push.follow_id,
        &node.id,
        &shellwego_core::id::new_id("lgc"),
        &body,
    )
    .await?;
    if !stored {
        return Err(Error::not_found("log follow", &push.follow_id));
    }
    ctx.publish(&[Topic::Logs]);
    Ok(())
}

/// The node's place on the mesh: its address and the organization's
/// other nodes that have one and an address to reach them at.
async fn overlay_of(
    ctx: &ServerCtx,
    node_id: &str,
    org: &str,
) -> Result<Option<shellwego_api::agent::Overlay>, Error> {
    let peers = shellwego_store::overlay::peers_of_org(&mut *ctx.store.conn().await?, org).await?;
    let Some(me) = peers.iter().find(|p| p.node_id == node_id) else {
        return Ok(None);
    };
    Ok(Some(shellwego_api::agent::Overlay {
        address: me.address.clone(),
        prefix: shellwego_store::overlay::OVERLAY_PREFIX,
        peers: peers
            .iter()
            .filter(|p| p.node_id != node_id)
            .filter_map(|p| {
                let ip = p.internal_ip.as_deref()?.parse::<std::net::IpAddr>().ok()?;
                Some(shellwego_api::agent::OverlayPeer {
                    node_id: p.node_id.clone(),
                    public_key: p.public_key.clone(),
                    endpoint: std::net::SocketAddr::new(ip, u16::try_from(p.port).ok()?)
                        .to_string(),
                    address: p.address.clone(),
                })
            })
            .collect(),
    }))
}

/// An uploaded archive a node may download (one of its organization's):
/// its bytes and size. Anything else is a 404.
pub async fn agent_upload(
    ctx: &ServerCtx,
    credential: Option<&str>,
    upload_id: &str,
) -> Result<(crate::objects::ByteStream, u64), Error> {
    let org = node_for_credential(ctx, credential).await?.organization_id;
    let not_found = || Error::not_found("upload", upload_id);
    if !upload_id.starts_with("upl_")
        || !upload_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(not_found());
    }
    if apps::upload_org(&mut *ctx.store.conn().await?, upload_id)
        .await?
        .as_deref()
        != Some(org.as_str())
    {
        return Err(not_found());
    }
    ctx.config
        .objects
        .get(&crate::service::apps::upload_key(upload_id))
        .await?
        .ok_or_else(not_found)
}

/// How long an agent may keep an internal DNS answer.
pub const RESOLVE_TTL_SECS: u32 = 2;

/// What an internal name stands for, asked by an instance of the calling
/// node: the healthy instances of the app of that name in the node's
/// organization (nothing of another organization, whatever the name).
pub async fn agent_resolve(
    ctx: &ServerCtx,
    credential: Option<&str>,
    req: &shellwego_api::agent::ResolveRequest,
) -> Result<shellwego_api::agent::ResolveAnswer, Error> {
    let node = node_for_credential(ctx, credential).await?;
    let mut db = ctx.store.conn().await?;
    if apps::node_of_instance(&mut db, &req.instance_id)
        .await?
        .as_deref()
        != Some(node.id.as_str())
    {
        return Err(Error::not_found("instance", &req.instance_id));
    }
    let name = req.name.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let (instance, app) = match labels.as_slice() {
        [app, "internal"] => (None, *app),
        [inst, app, "internal"] => (Some(*inst), *app),
        _ => {
            return Err(Error::field(
                "name",
                "invalid_value",
                "must be <app>.internal or <instance_id>.<app>.internal",
            ))
        }
    };
    // From a node on the mesh, at the target node's mesh address
    // (encrypted between nodes; on the same node, the published port
    // answers there too); off the mesh, at the address the routers use.
    let on_mesh = shellwego_store::overlay::peers_of_org(&mut db, &node.organization_id)
        .await?
        .iter()
        .any(|p| p.node_id == node.id);
    let records = apps::internal_endpoints(&mut db, &node.organization_id, app, instance)
        .await?
        .into_iter()
        .filter_map(|e| {
            let ip = match e.overlay {
                Some(o) if on_mesh => o,
                _ => e.ip,
            };
            Some(shellwego_api::agent::InternalEndpoint {
                port: u16::try_from(e.port).ok()?,
                instance_id: e.instance_id,
                ip,
            })
        })
        .collect();
    Ok(shellwego_api::agent::ResolveAnswer {
        records,
        ttl_secs: RESOLVE_TTL_SECS,
    })
}

/// The node a request's `Authorization: Bearer nsec_…` belongs to.
pub async fn node_for_credential(
    ctx: &ServerCtx,
    credential: Option<&str>,
) -> Result<nodes::NodeCredential, Error> {
    let store = &ctx.store;
    let denied = || {
        Error::Unauthenticated(
            "This endpoint needs a node credential: 'Authorization: Bearer nsec_…'.".into(),
        )
    };
    let c = credential
        .filter(|c| c.starts_with("nsec_"))
        .ok_or_else(denied)?;
    nodes::by_credential(&mut *store.conn().await?, c)
        .await?
        .ok_or_else(denied)
}

/// A sync is a heartbeat; a node that was offline is back (an event says so).
pub async fn agent_heartbeat(
    ctx: &ServerCtx,
    node_id: &str,
    org: &str,
    memory_available: Option<i64>,
    internal_ip: Option<&str>,
) -> Result<bool, Error> {
    let _store = &ctx.store;
    let mut tx = ctx.unit().await?;
    let back = nodes::heartbeat(&mut tx, node_id, memory_available, internal_ip).await?;
    if back {
        tx.record(NewEvent::info("node.online", &Actor::system(), "node", node_id).in_org(org));
    }
    tx.commit().await?;
    Ok(back)
}

/// What the agent reported, applied to the node's instance rows. Returns
/// the apps whose instances changed (to be reconciled). A report with a
/// `seq` no newer than the last applied one is stale (its call was
/// overtaken by a newer one): its instance statuses are ignored, its events
/// are still recorded (they are sent once).
pub async fn apply_reports(
    ctx: &ServerCtx,
    node_id: &str,
    org: &str,
    mut reports: Option<&[shellwego_api::agent::InstanceReport]>,
    seq: Option<i64>,
    agent_events: &[shellwego_api::agent::AgentEvent],
    node_ip: Option<&str>,
) -> Result<BTreeSet<String>, Error> {
    let _store = &ctx.store;
    let mut changed = BTreeSet::new();
    if reports.is_none() && agent_events.is_empty() {
        return Ok(changed);
    }
    let mut tx = ctx.unit().await?;
    if let (Some(_), Some(seq)) = (reports, seq) {
        if !shellwego_store::nodes::claim_report_seq(&mut tx, node_id, seq).await? {
            tracing::debug!(node_id, seq, "stale instance report ignored");
            reports = None;
        }
    }
    let rows = apps::instances_on_node(&mut tx, node_id).await?;
    let by_id: BTreeMap<&str, &shellwego_api::agent::InstanceReport> = reports
        .unwrap_or_default()
        .iter()
        .map(|r| (r.id.as_str(), r))
        .collect();
    for row in &rows {
        match by_id.get(row.id.as_str()) {
            Some(r) => {
                let mut i = row.clone();
                let reported: InstanceStatus = r.status.parse().map_err(|e: UnknownValue| {
                    Error::field("instances.status", "invalid_value", e.to_string())
                })?;
                i.status = match (row.desired, reported) {
                    (DesiredState::Stopped, InstanceStatus::Stopped) => InstanceStatus::Stopped,
                    (DesiredState::Stopped, _) => InstanceStatus::Stopping,
                    (DesiredState::Running, s) => s,
                };
                i.status_reason = r.reason.clone();
                let driver = r
                    .driver
                    .as_deref()
                    .map(str::parse::<DriverKind>)
                    .transpose()
                    .map_err(|e| {
                        Error::field("instances.driver", "invalid_value", e.to_string())
                    })?;
                i.driver = driver.or(i.driver);
                i.ip =
                    r.ip.clone()
                        .or_else(|| node_ip.map(str::to_string))
                        .or(i.ip);
                i.port = r.port.map(i64::from).or(i.port);
                i.pid = r.pid.map(i64::from);
                i.started_at = r.started_at;
                i.health_checks_passed = r.health_checks_passed;
                i.restarts = r.restarts;
                if i != *row {
                    apps::update_instance(&mut tx, &i).await?;
                    if i.status != row.status || i.restarts != row.restarts {
                        changed.insert(row.app_id.clone());
                    }
                }
                if let Some(pinned) = &r.image_pinned {
                    shellwego_store::deployments::pin_release_image(
                        &mut tx,
                        &row.app_id,
                        row.version,
                        pinned,
                    )
                    .await?;
                    apps::set_image_pinned(&mut tx, &row.app_id, row.version, pinned).await?;
                }
            }
            None if reports.is_some() && row.desired == DesiredState::Stopped => {
                apps::delete_instance(&mut tx, &row.id).await?;
                changed.insert(row.app_id.clone());
            }
            None => {}
        }
    }
    for e in agent_events {
        let row = rows.iter().find(|r| r.id == e.instance_id);
        // A kind this server does not know (a newer agent's) counts as a
        // failure of the instance.
        let kind = e.kind.parse::<AgentEventKind>().ok();
        if kind == Some(AgentEventKind::OrphanRemoved) {
            // Left on the host by an earlier run of the agent (often with
            // a data directory since removed, so unknown here): the node's.
            let actor = Actor {
                kind: "system".into(),
                id: Some(node_id.to_string()),
                ip: None,
            };
            tx.record(NewEvent::info("instance.orphan_removed", &actor, "node", node_id)
                    .in_org(org)
                    .severity(Severity::Warning)
                    .meta(json!({"instance_id": e.instance_id, "node_id": node_id, "app_id": row.map(|r| &r.app_id), "reason": e.reason})));
            continue;
        }
        let Some(row) = row else {
            continue;
        };
        let kind = match kind {
            Some(AgentEventKind::Crashed | AgentEventKind::OomKilled) => EventKind::AppCrashed,
            Some(AgentEventKind::Unhealthy) => EventKind::AppUnhealthy,
            Some(AgentEventKind::Failed | AgentEventKind::OrphanRemoved) | None => {
                EventKind::AppInstanceFailed
            }
        }
        .as_str();
        tx.record(NewEvent::info(kind, &Actor { kind: "system".into(), id: Some(node_id.to_string()), ip: None }, "app", &row.app_id)
                .in_org(org)
                .severity(Severity::Warning)
                .meta(json!({"instance_id": e.instance_id, "node_id": node_id, "kind": e.kind, "reason": e.reason, "exit_code": e.exit_code})));
        changed.insert(row.app_id.clone());
    }
    tx.commit().await?;
    Ok(changed)
}

/// The node's desired state: every instance it should run, with its spec.
pub async fn desired_for_node(
    ctx: &ServerCtx,
    node_id: &str,
    region: &str,
) -> Result<Vec<shellwego_api::agent::DesiredInstance>, Error> {
    let _store = &ctx.store;
    let mut tx = ctx.unit().await?;
    let rows = apps::desired_on_node(&mut tx, node_id).await?;
    let releases: HashMap<(String, i64), shellwego_store::deployments::Release> =
        shellwego_store::deployments::releases_for_node(&mut tx, node_id)
            .await?
            .into_iter()
            .map(|r| ((r.app_id.clone(), r.version), r))
            .collect();
    tx.commit().await?;
    // Env values and secrets are opened here, for the agent only.
    let mut db = ctx.store.conn().await?;
    let mut out = vec![];
    for apps::Assigned {
        instance: i,
        app: a,
    } in rows
    {
        // What the instance's own version runs (an older one during a
        // deployment), the image by digest once known.
        let release = releases.get(&(a.id.clone(), i.version));
        let spec = release.map_or(&a.spec, |r| &r.spec);
        let image = release
            .and_then(|r| r.image_pinned.clone())
            .or_else(|| spec.image.clone());
        let hc = &spec.health_check;
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let archive_url = spec.source.as_ref().and_then(|s| {
            s.url.clone().or_else(|| {
                s.upload_id
                    .as_ref()
                    .map(|u| format!("/v1/agent/uploads/{u}"))
            })
        });
        out.push(shellwego_api::agent::DesiredInstance {
            id: i.id,
            app_id: a.id.clone(),
            app_name: a.name.clone(),
            organization_id: a.organization_id.clone(),
            version: i.version,
            driver: i.driver.unwrap_or(DriverKind::Process).to_string(),
            image,
            archive_url,
            command: spec.command.clone(),
            env: crate::service::secrets::instance_env(&ctx.vault, &mut db, &a.id, spec).await?,
            memory: i.memory,
            cpu_millis: i.cpu_millis,
            health_check: shellwego_api::agent::DesiredHealthCheck {
                path: hc.path.clone(),
                port: hc.port,
                interval_ms: ms(hc.interval()),
                timeout_ms: ms(hc.timeout()),
                retries: hc.retries(),
                grace_ms: ms(hc.grace_period()),
            },
            stop_timeout_ms: ms(spec.stop_timeout()),
            region: region.to_string(),
            allowed_egress: spec
                .networking
                .restricts_egress()
                .then(|| spec.networking.allowed_egress.clone()),
            // The app's current settings (not its release's): they apply
            // at once.
            log_policy: a
                .spec
                .logging
                .as_ref()
                .map(|l| shellwego_api::logs::LogSettings {
                    retention_secs: l.retention_secs(),
                    max_bytes: l.max_bytes(),
                })
                .unwrap_or_default(),
        });
    }
    Ok(out)
}
