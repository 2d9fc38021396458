//! `GET /v1/apps/{app_id}/exec/ws`: an interactive command over WebSocket.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::extract::State;
use base64::Engine;
use shellwego_api::exec::{ExecFrame, ExecWsParams};
use shellwego_api::problem::Problem;
use shellwego_core::Error;

use crate::auth::Principal;
use crate::extract::{PathParam, Query};
use crate::problem::ApiResult;
use crate::service::exec_session::{self as svc, Session};
use crate::state::AppState;

fn params(q: Option<&str>) -> Result<(ExecWsParams, Vec<String>), Error> {
    let mut p = ExecWsParams::default();
    let mut command = vec![];
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        let num = |field: &str| {
            v.parse::<u16>().map_err(|_| {
                Error::field(
                    field,
                    "invalid_value",
                    format!("{v:?} is not a number of cells"),
                )
            })
        };
        match k.as_ref() {
            "command" => command.push(v.clone()),
            "instance_id" => p.instance_id = Some(v.clone()),
            "tty" => p.tty = Some(matches!(v.as_str(), "true" | "1" | "")),
            "cols" => p.cols = Some(num("cols")?),
            "rows" => p.rows = Some(num("rows")?),
            _ => {}
        }
    }
    Ok((p, svc::command_of(&command)))
}

/// An interactive command in a running instance (`instance_id`, else a
/// healthy one), on whichever node it runs, with the instance's
/// environment, root filesystem and namespaces; with a terminal (PTY) when
/// `tty=true` (`cols`/`rows` its size). Binary messages are its input;
/// text messages are JSON controls (`{"type":"resize","cols":120,"rows":40}`,
/// `{"type":"stdin","data":"ls\n"}`, `{"type":"eof"}`). The server sends its
/// output as binary messages, then `{"type":"exit","exit_code":N}` (or
/// `{"type":"error","message":…}`) and closes; closing the socket ends the
/// command. Needs `apps:exec`; recorded as an `app.exec` event.
#[utoipa::path(get, path = "/v1/apps/{app_id}/exec/ws", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)"), ExecWsParams),
    responses(
        (status = 101, description = "Switching to WebSocket"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No running instance", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn app_exec_ws(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> ApiResult<axum::response::Response> {
    let (params, command) = params(q.as_deref())?;
    p.authorize("apps", "exec", Some(&id))?;
    // The app must be the caller's before anything else is said.
    crate::service::exec::pick(&st.ctx, &p, &id, params.instance_id.as_deref()).await?;
    let Ok(ws) = ws else {
        return Err(Error::field(
            "upgrade",
            "invalid_value",
            "this route speaks WebSocket only (Connection: Upgrade, Upgrade: websocket); POST …/exec runs a command without one",
        )
        .into());
    };
    let session = svc::start(&st.ctx, &p, &id, &params, command).await?;
    let mut bus = st.ctx.bus.subscribe(&[crate::bus::Topic::Exec]);
    let stopping = st.ctx.stopping.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        relay(socket, session, &mut bus, stopping).await;
    }))
}

fn control(text: &str) -> Option<ExecFrame> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    match v["type"].as_str()? {
        "resize" => Some(ExecFrame {
            resize: Some((
                u16::try_from(v["cols"].as_u64()?).ok()?,
                u16::try_from(v["rows"].as_u64()?).ok()?,
            )),
            ..Default::default()
        }),
        "stdin" => Some(ExecFrame {
            data: base64::engine::general_purpose::STANDARD.encode(v["data"].as_str()?),
            ..Default::default()
        }),
        "eof" => Some(ExecFrame {
            end: true,
            ..Default::default()
        }),
        _ => None,
    }
}

async fn relay(
    mut socket: WebSocket,
    mut session: Session,
    bus: &mut crate::bus::Subscription,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let started = tokio::time::Instant::now();
    let mut heard = false;
    loop {
        // Output first: whatever the command printed goes out.
        match session.receive().await {
            Ok(frames) => {
                for f in frames {
                    heard = true;
                    if !f.data.is_empty() {
                        let bytes = b64.decode(&f.data).unwrap_or_default();
                        if socket.send(Message::Binary(bytes.into())).await.is_err() {
                            return;
                        }
                    }
                    if f.end {
                        let last = match f.error {
                            Some(e) => serde_json::json!({"type": "error", "message": e}),
                            None => serde_json::json!({"type": "exit", "exit_code": f.exit_code}),
                        };
                        let _ = socket.send(Message::Text(last.to_string().into())).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(session_id = %session.id, error = %e, "exec session relay failed");
            }
        }
        if !heard && started.elapsed() > svc::PICKUP + Duration::from_secs(5) {
            let msg = serde_json::json!({"type": "error", "message": "the instance's node did not start the command in time (is its agent running?)"});
            let _ = socket.send(Message::Text(msg.to_string().into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        tokio::select! {
            m = socket.recv() => {
                let frame = match m {
                    Some(Ok(Message::Binary(b))) => Some(ExecFrame { data: b64.encode(&b), ..Default::default() }),
                    Some(Ok(Message::Text(t))) => control(&t),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => None,
                };
                if let Some(f) = frame {
                    if let Err(e) = session.send(f).await {
                        tracing::warn!(session_id = %session.id, error = %e, "cannot pass input to an exec session");
                    }
                }
            }
            _ = tokio::time::timeout(Duration::from_millis(200), bus.changed()) => {}
            r = stopping.changed() => {
                if r.is_err() || *stopping.borrow() {
                    return;
                }
            }
        }
    }
}
