//! App logs: the last lines (text or JSON lines), a follow over
//! Server-Sent Events, and one over WebSocket.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use shellwego_api::logs::{LogEntry, LogsParams};
use shellwego_api::problem::Problem;
use shellwego_core::Error;

use crate::auth::Principal;
use crate::ctx::ServerCtx;
use crate::extract::{PathParam, Query};
use crate::problem::ApiResult;
use crate::service::logs::{self as svc, Follow, Request};
use crate::state::AppState;

/// The header naming nodes whose lines are missing (they did not answer).
pub const MISSING_NODES: &str = "shellwego-missing-nodes";

/// The query string, read by hand so every problem is a 400 naming its
/// parameter.
pub fn params(q: Option<&str>) -> Result<LogsParams, Error> {
    let mut p = LogsParams::default();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "follow" => {
                p.follow = Some(match v.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err(Error::field("follow", "invalid_value", "true or false")),
                })
            }
            "since" => p.since = Some(v),
            "until" => p.until = Some(v),
            "tail" => {
                p.tail = Some(v.parse().map_err(|_| {
                    Error::field(
                        "tail",
                        "invalid_value",
                        format!("{v:?} is not a number of lines (0 to 10000)"),
                    )
                })?)
            }
            "instance_id" => p.instance_id = Some(v),
            "level" => p.level = Some(v),
            "search" => p.search = Some(v),
            // `command`, `tty`, … of other routes, a cache-buster: ignored.
            _ => {}
        }
    }
    Ok(p)
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson") || a.contains("application/jsonl"))
}

/// An app's output lines, merged across its instances and nodes in time
/// order: the last `tail` (default 100, at most 10000) that pass the
/// filters. Plain text `[ts] [LEVEL] [inst_id] message` per line, or one
/// JSON object per line with `Accept: application/x-ndjson`. With
/// `follow=true`, Server-Sent Events: the last lines, then new ones as they
/// are printed (event `log`, data: the JSON object; `logs.dropped` when the
/// stream fell behind and lines were left out). Lines of stopped instances
/// stay until the app's log retention ends. A node that did not answer in
/// time is named in the `ShellWeGo-Missing-Nodes` header (or a
/// `logs.partial` event). Needs `apps:read`.
#[utoipa::path(get, path = "/v1/apps/{app_id}/logs", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)"), LogsParams),
    responses(
        (status = 200, description = "The lines",
            content(
                (String = "text/plain"),
                (LogEntry = "application/x-ndjson"),
                (String = "text/event-stream"),
            ),
            headers(("ShellWeGo-Missing-Nodes" = String, description = "Nodes whose lines are missing (they did not answer in time), comma-separated"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn app_logs(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    headers: HeaderMap,
    Query(q): Query,
) -> ApiResult<axum::response::Response> {
    let r = Request::parse(&params(q.as_deref())?)?;
    let org = svc::authorize(&st.ctx, &p, &id).await?;
    if r.follow {
        return Ok(follow_sse(st.ctx.clone(), org, id, r).await?);
    }
    let found = svc::query(&st.ctx, &org, &id, &r).await?;
    let ndjson = wants_ndjson(&headers);
    let mut body = String::with_capacity(found.entries.len() * 100);
    for e in &found.entries {
        if ndjson {
            body.push_str(&serde_json::to_string(e).map_err(Error::internal)?);
        } else {
            body.push_str(&e.text());
        }
        body.push('\n');
    }
    let mut res = body.into_response();
    let ct = if ndjson {
        "application/x-ndjson"
    } else {
        "text/plain; charset=utf-8"
    };
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    if !found.missing_nodes.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&found.missing_nodes.join(",")) {
            res.headers_mut().insert(MISSING_NODES, v);
        }
    }
    Ok(res)
}

/// What a follow stream sends.
pub enum Item {
    Line(LogEntry),
    /// Nodes whose last lines are missing.
    Partial(Vec<String>),
    /// Lines left out because the stream fell behind.
    Dropped(u64),
}

/// Start a follow: the follow first, then the last lines (so nothing
/// printed in between is missed), then live lines, into a channel. The
/// follow ends when the receiver is dropped (the client left) or the
/// server stops.
pub async fn follow_items(
    ctx: Arc<ServerCtx>,
    org: String,
    app_id: String,
    r: Request,
) -> Result<tokio::sync::mpsc::Receiver<Item>, Error> {
    let mut sub = ctx.bus.subscribe(&[crate::bus::Topic::Logs]);
    let mut follow = Follow::start(&ctx, &org, &app_id, &r.filter).await?;
    let found = svc::query(&ctx, &org, &app_id, &r).await?;
    follow.seen_up_to(found.last_t);
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(256);
    tokio::spawn(async move {
        if !found.missing_nodes.is_empty()
            && tx.send(Item::Partial(found.missing_nodes)).await.is_err()
        {
            return;
        }
        for e in found.entries {
            if tx.send(Item::Line(e)).await.is_err() {
                return;
            }
        }
        let mut stopping = ctx.stopping.clone();
        loop {
            let got = tokio::select! {
                got = follow.next(&mut sub, Duration::from_secs(15)) => got,
                _ = tx.closed() => return,
                _ = stopping.wait_for(|s| *s) => return,
            };
            let batch = match got {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "a log follow failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.dropped > 0 && tx.send(Item::Dropped(batch.dropped)).await.is_err() {
                return;
            }
            for e in batch.entries {
                if tx.send(Item::Line(e)).await.is_err() {
                    return;
                }
            }
        }
        // `follow` is dropped here: the follow ends.
    });
    Ok(rx)
}

async fn follow_sse(
    ctx: Arc<ServerCtx>,
    org: String,
    app_id: String,
    r: Request,
) -> Result<axum::response::Response, Error> {
    use axum::response::sse::{Event as Frame, KeepAlive, Sse};
    let rx = follow_items(ctx, org, app_id, r).await?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let frame = match item {
            Item::Line(e) => Frame::default()
                .event("log")
                .data(serde_json::to_string(&e).unwrap_or_default()),
            Item::Partial(nodes) => Frame::default()
                .event("logs.partial")
                .data(serde_json::json!({"missing_nodes": nodes}).to_string()),
            Item::Dropped(n) => Frame::default()
                .event("logs.dropped")
                .data(serde_json::json!({"dropped": n}).to_string()),
        };
        Some((Ok::<_, std::convert::Infallible>(frame), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The same follow over WebSocket: the last lines (`tail`, default 100),
/// then new ones as they are printed, each a text message holding the
/// line's JSON object; `{"dropped": n}` when the stream fell behind and
/// lines were left out, `{"missing_nodes": [...]}` when nodes did not
/// answer. Same query parameters (but `follow`), same permission
/// (`apps:read`). Closing the socket ends the follow.
#[utoipa::path(get, path = "/v1/apps/{app_id}/logs/stream", tag = "apps", security(("bearer" = [])),
    params(("app_id" = String, Path, description = "App id (app_…)"), LogsParams),
    responses(
        (status = 101, description = "Switching to WebSocket: one text message per line"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn app_logs_stream(
    State(st): State<AppState>,
    p: Principal,
    PathParam(id): PathParam,
    Query(q): Query,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> ApiResult<axum::response::Response> {
    let r = Request::parse(&params(q.as_deref())?)?;
    let org = svc::authorize(&st.ctx, &p, &id).await?;
    let Ok(ws) = ws else {
        return Err(Error::field(
            "upgrade",
            "invalid_value",
            "this route speaks WebSocket only (Connection: Upgrade, Upgrade: websocket); GET …/logs?follow=true streams Server-Sent Events",
        )
        .into());
    };
    let mut rx = follow_items(st.ctx.clone(), org, id, r).await?;
    Ok(ws.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        loop {
            tokio::select! {
                item = rx.recv() => {
                    let Some(item) = item else { break };
                    let text = match item {
                        Item::Line(e) => serde_json::to_string(&e).unwrap_or_default(),
                        Item::Partial(nodes) => serde_json::json!({"missing_nodes": nodes}).to_string(),
                        Item::Dropped(n) => serde_json::json!({"dropped": n}).to_string(),
                    };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                got = socket.recv() => match got {
                    // The client's messages are not read (pings are
                    // answered by the library); a close or an error ends it.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        // `rx` dropped: the follow task sees it and ends the follow.
    }))
}
