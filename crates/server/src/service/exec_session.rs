//! Interactive exec (`GET /v1/apps/{id}/exec/ws`): a session row, a task
//! for the instance's node (`exec_session`), and frames relayed through the
//! store in both directions (see migration 0025), so the replica holding the
//! client's WebSocket and the one the node's agent reaches need not be the
//! same. Each side is woken by the bus topic `exec` (and looks every
//! 200 ms regardless).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shellwego_api::agent::AgentTask;
use shellwego_api::exec::{ExecFrame, ExecInput, ExecOutput, ExecSession, ExecWsParams};
use shellwego_core::time::now;
use shellwego_core::{id, Error};
use shellwego_store::events::NewEvent;
use shellwego_store::{exec_sessions as store, nodes, tasks};

use crate::auth::Principal;
use crate::bus::Topic;
use crate::ctx::ServerCtx;

/// How long a node has to start the session.
pub const PICKUP: Duration = Duration::from_secs(15);
/// A session row lives this long unless renewed by its holder.
const TTL: Duration = Duration::from_secs(60);
/// How long an agent's input poll is held without input.
const HOLD: Duration = Duration::from_secs(10);
const LOOK: Duration = Duration::from_millis(200);

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::seconds(60))
}

/// A session held by this replica; dropping it ends the session.
pub struct Session {
    pub id: String,
    pub instance_id: String,
    ctx: Arc<ServerCtx>,
    in_seq: i64,
    out_seq: i64,
    renewed: tokio::time::Instant,
}

/// The command a query asks for: `command` given once is split on
/// whitespace; given several times, each is one argument.
pub fn command_of(params: &[String]) -> Vec<String> {
    match params {
        [] => vec!["/bin/sh".into()],
        [one] => one.split_whitespace().map(str::to_string).collect(),
        many => many.to_vec(),
    }
}

/// Start a session: checks `apps:exec`, picks the instance, records the
/// `app.exec` event, hands the node its task.
pub async fn start(
    ctx: &Arc<ServerCtx>,
    p: &Principal,
    app_id: &str,
    q: &ExecWsParams,
    command: Vec<String>,
) -> Result<Session, Error> {
    if command.is_empty() || command[0].is_empty() {
        return Err(Error::field(
            "command",
            "required",
            "name the program to run",
        ));
    }
    let (app, inst, node_id) =
        crate::service::exec::pick(ctx, p, app_id, q.instance_id.as_deref()).await?;
    let tty = q.tty.unwrap_or(false);
    let session = ExecSession {
        id: id::new_id("exs"),
        command: command.clone(),
        tty,
        cols: q.cols.unwrap_or(80).clamp(10, 1000),
        rows: q.rows.unwrap_or(24).clamp(2, 1000),
    };
    let task = AgentTask {
        id: id::new_id("tsk"),
        kind: "exec_session".into(),
        instance_id: inst.id.clone(),
        command: command.clone(),
        stdin: String::new(),
        timeout_ms: 0,
        output_limit: 0,
        logs: None,
        session: Some(session.clone()),
    };
    let request = serde_json::to_string(&task).map_err(Error::internal)?;
    let mut unit = ctx.unit().await?;
    store::insert(
        &mut unit,
        &session.id,
        &app.organization_id,
        &node_id,
        &inst.id,
        now() + chrono(TTL),
    )
    .await?;
    tasks::insert(
        &mut unit,
        tasks::NewTask {
            id: &task.id,
            node_id: &node_id,
            organization_id: &app.organization_id,
            instance_id: &inst.id,
            kind: "exec_session",
            request: &request,
            expires_at: now() + chrono(PICKUP),
        },
    )
    .await?;
    nodes::bump_node(&mut unit, &node_id).await?;
    unit.touch(&[Topic::Nodes]);
    unit.record(
        NewEvent::info("app.exec", &p.actor(), "app", app_id)
            .in_org(&app.organization_id)
            .meta(
                json!({"instance_id": inst.id, "node_id": node_id, "command": command,
                         "interactive": true, "tty": tty, "session_id": session.id}),
            ),
    );
    unit.commit().await?;
    Ok(Session {
        id: session.id,
        instance_id: inst.id,
        ctx: ctx.clone(),
        in_seq: 0,
        out_seq: 0,
        renewed: tokio::time::Instant::now(),
    })
}

impl Session {
    /// Pass a frame to the command (its `seq` is set here).
    pub async fn send(&mut self, mut f: ExecFrame) -> Result<(), Error> {
        self.in_seq += 1;
        f.seq = self.in_seq;
        let body = serde_json::to_string(&f).map_err(Error::internal)?;
        store::put_frame(
            &mut *self.ctx.store.conn().await?,
            &self.id,
            "in",
            f.seq,
            &body,
        )
        .await?;
        self.ctx.publish(&[Topic::Exec]);
        Ok(())
    }

    /// The command's new output frames (none yet: empty); renews the
    /// session as it goes.
    pub async fn receive(&mut self) -> Result<Vec<ExecFrame>, Error> {
        if self.renewed.elapsed() >= TTL / 3 {
            store::renew(
                &mut *self.ctx.store.conn().await?,
                &self.id,
                now() + chrono(TTL),
            )
            .await?;
            self.renewed = tokio::time::Instant::now();
        }
        let bodies = store::frames_after(
            &mut *self.ctx.store.conn().await?,
            &self.id,
            "out",
            self.out_seq,
        )
        .await?;
        let mut out = vec![];
        for b in bodies {
            let f: ExecFrame = serde_json::from_str(&b).map_err(Error::internal)?;
            if f.seq == self.out_seq + 1 {
                self.out_seq = f.seq;
                out.push(f);
            }
        }
        Ok(out)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let (ctx, id) = (self.ctx.clone(), self.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let ended = async {
                    store::delete(&mut *ctx.store.conn().await?, &id).await?;
                    ctx.publish(&[Topic::Exec]);
                    Ok::<_, Error>(())
                };
                if let Err(e) = ended.await {
                    tracing::warn!(session_id = %id, error = %e, "cannot end an exec session; it expires on its own");
                }
            });
        }
    }
}

/// The session, if it is this node's.
async fn of_node(
    ctx: &ServerCtx,
    credential: Option<&str>,
    session_id: &str,
) -> Result<bool, Error> {
    let node = crate::service::agent_channel::node_for_credential(ctx, credential).await?;
    let owner = store::node_of(&mut *ctx.store.conn().await?, session_id).await?;
    Ok(owner.as_deref() == Some(node.id.as_str()))
}

/// `GET /v1/agent/exec/{session_id}/input?after=N`.
pub async fn agent_input(
    ctx: &ServerCtx,
    credential: Option<&str>,
    session_id: &str,
    after: i64,
) -> Result<ExecInput, Error> {
    let mut wake = ctx.bus.subscribe(&[Topic::Exec]);
    if !of_node(ctx, credential, session_id).await? {
        return Ok(ExecInput {
            frames: vec![],
            closed: true,
        });
    }
    let deadline = tokio::time::Instant::now() + HOLD;
    loop {
        let bodies =
            store::frames_after(&mut *ctx.store.conn().await?, session_id, "in", after).await?;
        if !bodies.is_empty() {
            let mut frames = vec![];
            for b in bodies {
                frames.push(serde_json::from_str(&b).map_err(Error::internal)?);
            }
            return Ok(ExecInput {
                frames,
                closed: false,
            });
        }
        if store::node_of(&mut *ctx.store.conn().await?, session_id)
            .await?
            .is_none()
        {
            return Ok(ExecInput {
                frames: vec![],
                closed: true,
            });
        }
        if tokio::time::Instant::now() >= deadline || *ctx.stopping.borrow() {
            return Ok(ExecInput::default());
        }
        let _ = tokio::time::timeout(LOOK, wake.changed()).await;
    }
}

/// `POST /v1/agent/exec/{session_id}/output`: 404 once the client has gone.
pub async fn agent_output(
    ctx: &ServerCtx,
    credential: Option<&str>,
    session_id: &str,
    out: &ExecOutput,
) -> Result<(), Error> {
    if !of_node(ctx, credential, session_id).await? {
        return Err(Error::not_found("exec session", session_id));
    }
    let mut db = ctx.store.conn().await?;
    for f in &out.frames {
        let body = serde_json::to_string(f).map_err(Error::internal)?;
        store::put_frame(&mut db, session_id, "out", f.seq, &body).await?;
    }
    drop(db);
    ctx.publish(&[Topic::Exec]);
    Ok(())
}
