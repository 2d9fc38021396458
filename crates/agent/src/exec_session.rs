//! Interactive exec sessions (`exec_session` tasks): the command runs in
//! the instance through its driver ([`crate::exec::start`], as `exec` does:
//! on the host, or in a microVM's guest), with a PTY when the session asks
//! for a terminal (else pipes); its input comes from
//! `GET /v1/agent/exec/{id}/input` (long-polled), its output goes to
//! `POST /v1/agent/exec/{id}/output` in small batches. The session ends
//! when the command exits (a last frame with its exit code) or the client
//! leaves (the input poll says `closed`, or an output push gets 404: the
//! command's process group is killed).
//!
//! On the host, the terminal's size is set when the PTY is made and changed
//! with `stty` on its slave (no `ioctl` here: the agent has no `unsafe`);
//! the command gets the PTY as its standard streams but not as a
//! controlling terminal, so Ctrl-C reaches it as a byte, not as SIGINT. In a
//! microVM the guest daemon makes the PTY the command's controlling
//! terminal (Ctrl-C is SIGINT there).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use shellwego_api::agent::AgentTask;
use shellwego_api::exec::{ExecFrame, ExecOutput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::driver::ExecTarget;
use crate::exec::{Reader, Started};
use crate::reconcile::{Ctx, Shared};

/// How long output is gathered before it is sent.
const GATHER: Duration = Duration::from_millis(20);

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Send the end (an error) when the command cannot start.
async fn fail(ctx: &Ctx, session_id: &str, error: String) {
    let out = ExecOutput {
        frames: vec![ExecFrame {
            seq: 1,
            end: true,
            error: Some(error),
            ..Default::default()
        }],
    };
    let _ = ctx.channel.exec_output(session_id, &out).await;
}

/// Take an `exec_session` task: answer it (so it is not handed out
/// again), forget it, and run the session.
pub async fn start(
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    known: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    task: AgentTask,
) {
    let taken = shellwego_api::agent::AgentTaskResult {
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        timed_out: false,
        execution_time_ms: 0,
        lines: vec![],
        error: None,
    };
    for attempt in 0..5u32 {
        match ctx.channel.task_result(&task.id, &taken).await {
            Ok(()) => break,
            Err(shellwego_client::agent::AgentError::Refused { .. }) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
        }
    }
    if let Ok(mut k) = known.lock() {
        k.remove(&task.id);
    }
    run(ctx, shared, task).await
}

pub async fn run(ctx: Arc<Ctx>, shared: Arc<Shared>, task: AgentTask) {
    let Some(s) = task.session.clone() else {
        return;
    };
    let Some(info) = shared.exec_info(&task.instance_id) else {
        return fail(
            &ctx,
            &s.id,
            format!("instance {} is not running on this node", task.instance_id),
        )
        .await;
    };
    let Some(driver) = ctx.drivers.iter().find(|d| d.name() == info.driver) else {
        return fail(
            &ctx,
            &s.id,
            format!("no {} driver on this node", info.driver),
        )
        .await;
    };
    let target = ExecTarget {
        instance_id: &task.instance_id,
        root: &info.root,
        is_rootfs: info.is_rootfs,
        workdir: &info.workdir,
        env: &info.env,
    };
    let tty = s.tty.then_some((s.cols, s.rows));
    let started =
        crate::exec::start(driver.as_ref(), &info.running, &target, &s.command, tty).await;
    let Started {
        stdin: writer,
        stdout,
        stderr,
        control,
        mut waiter,
    } = match started {
        Ok(st) => st,
        Err(e) => return fail(&ctx, &s.id, format!("{e:#}")).await,
    };
    let reader: Vec<Reader> = [stdout, stderr].into_iter().flatten().collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    for mut r in reader {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    // Input: until the client leaves (then the command goes) or the
    // command ends (this task is aborted).
    let input = {
        let (channel, id, control, tty) =
            (ctx.channel.clone(), s.id.clone(), control.clone(), s.tty);
        tokio::spawn(async move {
            let mut writer = writer;
            let mut after = 0;
            loop {
                let got = match channel.exec_input(&id, after).await {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(session_id = %id, error = %e, "exec session: cannot read input");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                if got.closed {
                    control.kill();
                    return;
                }
                for f in got.frames {
                    after = after.max(f.seq);
                    if let Some((cols, rows)) = f.resize {
                        control.resize(cols, rows).await;
                    }
                    if !f.data.is_empty() {
                        let bytes = b64().decode(&f.data).unwrap_or_default();
                        if let Some(w) = writer.as_mut() {
                            let _ = w.write_all(&bytes).await;
                            let _ = w.flush().await;
                        }
                    }
                    if f.end {
                        if tty {
                            // Ctrl-D at the terminal.
                            if let Some(w) = writer.as_mut() {
                                let _ = w.write_all(&[4]).await;
                            }
                        } else {
                            writer = None;
                        }
                    }
                }
            }
        })
    };
    // Output: batches, then the exit.
    let mut seq = 0i64;
    let mut gone = false;
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut data = first;
        let deadline = tokio::time::Instant::now() + GATHER;
        while data.len() < 256 * 1024 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => data.extend(more),
                _ => break,
            }
        }
        seq += 1;
        let out = ExecOutput {
            frames: vec![ExecFrame {
                seq,
                data: b64().encode(&data),
                ..Default::default()
            }],
        };
        if let Err(shellwego_client::agent::AgentError::Refused { status, .. }) =
            ctx.channel.exec_output(&s.id, &out).await
        {
            if status == shellwego_client::StatusCode::NOT_FOUND {
                gone = true;
                control.kill();
                break;
            }
        }
    }
    let status = waiter.wait().await;
    control.end();
    input.abort();
    if gone {
        return;
    }
    seq += 1;
    let out = ExecOutput {
        frames: vec![ExecFrame {
            seq,
            end: true,
            exit_code: status.as_ref().ok().copied().flatten(),
            error: status.err(),
            ..Default::default()
        }],
    };
    let _ = ctx.channel.exec_output(&s.id, &out).await;
}
