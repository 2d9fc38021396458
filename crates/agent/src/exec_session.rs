//! Interactive exec sessions (`exec_session` tasks): the command runs in
//! the instance through its driver (as `exec` does), with a PTY when the
//! session asks for a terminal (else pipes); its input comes from
//! `GET /v1/agent/exec/{id}/input` (long-polled), its output goes to
//! `POST /v1/agent/exec/{id}/output` in small batches. The session ends
//! when the command exits (a last frame with its exit code) or the client
//! leaves (the input poll says `closed`, or an output push gets 404: the
//! command's process group is killed).
//!
//! The terminal's size is set when the PTY is made and changed with
//! `stty` on its slave (no `ioctl` here: the agent has no `unsafe`). The
//! command gets the PTY as its standard streams but not as a controlling
//! terminal, so Ctrl-C reaches it as a byte, not as SIGINT.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use shellwego_api::agent::AgentTask;
use shellwego_api::exec::{ExecFrame, ExecOutput};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::driver::ExecTarget;
use crate::exec::kill_group;
use crate::reconcile::{Ctx, Shared};

type Readers = Vec<Box<dyn AsyncRead + Unpin + Send>>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

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
    let mut cmd = match driver.exec(&info.running, &target, &s.command) {
        Ok(c) => c,
        Err(e) => return fail(&ctx, &s.id, format!("{e:#}")).await,
    };
    cmd.process_group(0);
    // A terminal: the PTY's slave as the three streams, its master here.
    let mut master: Option<(OwnedFd, String)> = None;
    if s.tty {
        let ws = nix::pty::Winsize {
            ws_row: s.rows,
            ws_col: s.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = match nix::pty::openpty(Some(&ws), None) {
            Ok(p) => p,
            Err(e) => return fail(&ctx, &s.id, format!("cannot open a terminal: {e}")).await,
        };
        let slave_path = nix::unistd::ttyname(&pty.slave)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let streams = (|| {
            Ok::<_, std::io::Error>((pty.slave.try_clone()?, pty.slave.try_clone()?, pty.slave))
        })();
        let Ok((i, o, e)) = streams else {
            return fail(&ctx, &s.id, "cannot set up the terminal".into()).await;
        };
        cmd.stdin(Stdio::from(i))
            .stdout(Stdio::from(o))
            .stderr(Stdio::from(e));
        if !cmd.get_envs().any(|(k, _)| k == "TERM") {
            cmd.env("TERM", "xterm-256color");
        }
        master = Some((pty.master, slave_path));
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(&ctx, &s.id, format!("cannot start {:?}: {e}", s.command)).await,
    };
    let pid = child.id();
    // The slave's copies in this process go with the command builder: the
    // master then reads EOF (EIO) once the command and its children exit.
    drop(cmd);
    let (reader, writer, slave): (Readers, Option<Writer>, Option<String>) = match master {
        Some((m, path)) => {
            let w = match m.try_clone() {
                Ok(w) => w,
                Err(e) => return fail(&ctx, &s.id, format!("cannot use the terminal: {e}")).await,
            };
            (
                vec![Box::new(tokio::fs::File::from_std(std::fs::File::from(m)))],
                Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(w)))),
                Some(path),
            )
        }
        None => {
            let mut r: Readers = vec![];
            if let Some(o) = child.stdout.take() {
                r.push(Box::new(o));
            }
            if let Some(e) = child.stderr.take() {
                r.push(Box::new(e));
            }
            (r, child.stdin.take().map(|w| Box::new(w) as Writer), None)
        }
    };
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
        let (channel, id) = (ctx.channel.clone(), s.id.clone());
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
                    kill_group(pid);
                    return;
                }
                for f in got.frames {
                    after = after.max(f.seq);
                    if let (Some((cols, rows)), Some(path)) = (f.resize, &slave) {
                        let _ = tokio::process::Command::new("stty")
                            .args([
                                "-F",
                                path,
                                "cols",
                                &cols.to_string(),
                                "rows",
                                &rows.to_string(),
                            ])
                            .status()
                            .await;
                    }
                    if !f.data.is_empty() {
                        let bytes = b64().decode(&f.data).unwrap_or_default();
                        if let Some(w) = writer.as_mut() {
                            let _ = w.write_all(&bytes).await;
                            let _ = w.flush().await;
                        }
                    }
                    if f.end {
                        if slave.is_some() {
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
                kill_group(pid);
                break;
            }
        }
    }
    let status = child.wait().await.ok();
    kill_group(pid);
    input.abort();
    if gone {
        return;
    }
    seq += 1;
    let out = ExecOutput {
        frames: vec![ExecFrame {
            seq,
            end: true,
            exit_code: status.and_then(|s| s.code()),
            ..Default::default()
        }],
    };
    let _ = ctx.channel.exec_output(&s.id, &out).await;
}
