//! `POST /v1/apps/{id}/exec`: run a command in a running instance, on
//! whichever node it runs. The request becomes a task row for that node
//! (`shellwego_store::tasks`); the node's held sync wakes (its generation
//! moves) and hands it to the agent, which runs the command through the
//! instance's driver (its environment, root filesystem and namespaces) and
//! posts the result; the replica that took the request reads it. Any
//! replica may hold the node's sync.

use std::time::Duration;

use serde_json::json;
use shellwego_api::agent::{AgentTask, AgentTaskResult};
use shellwego_api::apps::{ExecRequest, ExecResponse, EXEC_OUTPUT_LIMIT};
use shellwego_core::model::InstanceStatus;
use shellwego_core::time::now;
use shellwego_core::{id, Error};
use shellwego_store::events::NewEvent;
use shellwego_store::{apps, nodes, tasks};

use crate::auth::Principal;
use crate::bus::Topic;
use crate::ctx::ServerCtx;

/// How long a node has to take a task before the request gives up.
const PICKUP: Duration = Duration::from_secs(15);
/// How often the waiting request reads the task's row.
const POLL: Duration = Duration::from_millis(50);

/// The running instance a command goes to (`want`, else a healthy one,
/// else any running one), its app and its node.
pub async fn pick(
    ctx: &ServerCtx,
    p: &Principal,
    app_id: &str,
    want: Option<&str>,
) -> Result<(apps::App, apps::Instance, String), Error> {
    p.authorize("apps", "exec", Some(app_id))?;
    let mut db = ctx.store.conn().await?;
    let app = apps::get_visible(&mut db, app_id, &p.organization_ids())
        .await?
        .ok_or_else(|| Error::not_found("app", app_id))?;
    let insts = apps::instances_of_app(&mut db, app_id).await?;
    drop(db);
    let running = |s: InstanceStatus| {
        matches!(
            s,
            InstanceStatus::Healthy | InstanceStatus::Starting | InstanceStatus::Unhealthy
        )
    };
    let inst = match want {
        Some(want) => {
            let i = insts
                .iter()
                .find(|i| i.id == want)
                .ok_or_else(|| Error::not_found("instance", want))?;
            if !running(i.status) {
                return Err(Error::Conflict(format!(
                    "instance {want} is {}, not running; pick a running one from GET /v1/apps/{app_id}",
                    i.status
                )));
            }
            i
        }
        None => insts
            .iter()
            .filter(|i| i.node_id.is_some())
            .find(|i| i.status == InstanceStatus::Healthy)
            .or_else(|| insts.iter().find(|i| running(i.status) && i.node_id.is_some()))
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "app {} has no running instance to run the command in; start it or wait for it to be healthy",
                    app.name
                ))
            })?,
    };
    let node_id = inst
        .node_id
        .clone()
        .ok_or_else(|| Error::Conflict(format!("instance {} is not on a node yet", inst.id)))?;
    let inst = inst.clone();
    Ok((app, inst, node_id))
}

pub async fn app_exec(
    ctx: &ServerCtx,
    p: &Principal,
    app_id: &str,
    req: &ExecRequest,
) -> Result<ExecResponse, Error> {
    let (app, inst, node_id) = pick(ctx, p, app_id, req.instance_id.as_deref()).await?;
    let inst = &inst;
    let timeout = req.timeout();
    let task = AgentTask {
        id: id::new_id("tsk"),
        kind: "exec".into(),
        instance_id: inst.id.clone(),
        command: req.command.clone(),
        stdin: req.stdin.clone(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        output_limit: EXEC_OUTPUT_LIMIT,
        logs: None,
        session: None,
    };
    let request = serde_json::to_string(&task).map_err(Error::internal)?;
    let expires = now() + chrono::Duration::from_std(PICKUP).map_err(Error::internal)?;
    let mut unit = ctx.unit().await?;
    tasks::insert(
        &mut unit,
        tasks::NewTask {
            id: &task.id,
            node_id: &node_id,
            organization_id: &app.organization_id,
            instance_id: &inst.id,
            kind: "exec",
            request: &request,
            expires_at: expires,
        },
    )
    .await?;
    nodes::bump_node(&mut unit, &node_id).await?;
    unit.touch(&[Topic::Nodes]);
    // The command line is recorded (not stdin, which may carry data).
    unit.record(
        NewEvent::info("app.exec", &p.actor(), "app", app_id)
            .in_org(&app.organization_id)
            .meta(json!({"instance_id": inst.id, "node_id": node_id, "command": req.command, "task_id": task.id})),
    );
    unit.commit().await?;

    let deadline = tokio::time::Instant::now() + PICKUP + timeout + Duration::from_secs(5);
    let result = loop {
        if let Some(r) = tasks::result_of(&mut *ctx.store.conn().await?, &task.id).await? {
            break Some(r);
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(POLL).await;
    };
    tasks::delete(&mut *ctx.store.conn().await?, &task.id).await?;
    let Some(result) = result else {
        return Err(Error::Unavailable(format!(
            "node {node_id} did not answer within {}s (is its agent running?)",
            (PICKUP + timeout).as_secs()
        )));
    };
    let r: AgentTaskResult = serde_json::from_str(&result).map_err(Error::internal)?;
    if let Some(e) = r.error {
        return Err(Error::Conflict(format!(
            "the command could not run in instance {}: {e}",
            inst.id
        )));
    }
    Ok(ExecResponse {
        exit_code: r.exit_code,
        stdout: r.stdout,
        stderr: r.stderr,
        execution_time_ms: r.execution_time_ms,
        truncated: r.truncated,
        timed_out: r.timed_out,
        instance_id: inst.id.clone(),
    })
}
