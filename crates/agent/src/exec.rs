//! Tasks the control plane hands out with a sync (`AgentDesired.tasks`):
//! `exec` runs a command in an instance through its driver ([`start`]: a
//! host process, or the guest daemon of a microVM), with a timeout
//! that kills the command's process group, stdin given and closed, each
//! output stream kept up to a limit; the result goes back with `POST
//! /v1/agent/tasks/{id}/result`. Each task runs in a task of its own: a
//! long command holds up neither the sync loop nor the reconciler.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shellwego_api::agent::{AgentTask, AgentTaskResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::driver::{Driver, ExecTarget, ExecVia, Running};
use crate::reconcile::{Ctx, Shared};

/// The most of one stream sent back, as JSON text (the control plane takes
/// bodies of up to 2 MiB).
const MAX_JSON: usize = 900 * 1024;

/// Run `task` and send its result (a few tries: the control plane may be
/// failing over).
pub async fn run(
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    known: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    task: AgentTask,
) {
    let result = execute(&ctx, &shared, &task).await;
    let forget = || {
        if let Ok(mut k) = known.lock() {
            k.remove(&task.id);
        }
    };
    for attempt in 0..5u32 {
        match ctx.channel.task_result(&task.id, &result).await {
            Ok(()) => return forget(),
            // Nobody waits for it any more (answered, or given up).
            Err(shellwego_client::agent::AgentError::Refused { status, .. })
                if status == shellwego_client::StatusCode::NOT_FOUND =>
            {
                return forget()
            }
            Err(e) => {
                tracing::warn!(task_id = %task.id, attempt, error = %e, "cannot send a task's result");
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        }
    }
    forget();
}

fn failed(error: String) -> AgentTaskResult {
    AgentTaskResult {
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        timed_out: false,
        execution_time_ms: 0,
        lines: vec![],
        error: Some(error),
    }
}

async fn execute(ctx: &Ctx, shared: &Shared, task: &AgentTask) -> AgentTaskResult {
    if task.kind == "logs" {
        return logs_query(ctx, task).await;
    }
    if task.kind != "exec" {
        return failed(format!(
            "this agent does not know tasks of kind {}",
            task.kind
        ));
    }
    let Some(info) = shared.exec_info(&task.instance_id) else {
        return failed(format!(
            "instance {} is not running on this node",
            task.instance_id
        ));
    };
    let Some(driver) = ctx.drivers.iter().find(|d| d.name() == info.driver) else {
        return failed(format!("no {} driver on this node", info.driver));
    };
    let target = ExecTarget {
        instance_id: &task.instance_id,
        root: &info.root,
        is_rootfs: info.is_rootfs,
        workdir: &info.workdir,
        env: &info.env,
    };
    match start(driver.as_ref(), &info.running, &target, &task.command, None).await {
        Ok(s) => collect(s, task).await,
        Err(e) => failed(format!("{e:#}")),
    }
}

pub type Reader = Box<dyn AsyncRead + Unpin + Send>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// A command started in an instance ([`start`]), on the host or in a
/// microVM's guest.
pub struct Started {
    /// Its standard input (with a terminal: the terminal's input).
    pub stdin: Option<Writer>,
    /// Its standard output (with a terminal: all it writes).
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    pub control: Control,
    pub waiter: Waiter,
}

/// Kills or resizes a started command (cheap to clone).
#[derive(Clone)]
pub enum Control {
    /// A host process group, and its PTY's slave when it has one.
    Host {
        pid: Option<u32>,
        slave: Option<String>,
    },
    Guest(crate::microvm::guest::Control),
}

impl Control {
    /// SIGKILL to the whole command (its process group).
    pub fn kill(&self) {
        match self {
            Control::Host { pid, .. } => kill_group(*pid),
            Control::Guest(g) => g.kill(9),
        }
    }

    /// Its terminal's new size (nothing without a terminal).
    pub async fn resize(&self, cols: u16, rows: u16) {
        match self {
            Control::Host {
                slave: Some(path), ..
            } => {
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
            Control::Host { .. } => {}
            Control::Guest(g) => g.resize(cols, rows),
        }
    }

    /// After the command ended: what it left running goes too (the guest
    /// daemon does this itself).
    pub fn end(&self) {
        if let Control::Host { pid, .. } = self {
            kill_group(*pid);
        }
    }
}

/// Waits for a started command's end.
pub enum Waiter {
    Host(tokio::process::Child),
    Guest(crate::microvm::guest::Session),
}

impl Waiter {
    /// Its exit code (`None` when a signal ended a host process; a guest
    /// reports 128 + the signal), or why it cannot be known.
    pub async fn wait(&mut self) -> Result<Option<i32>, String> {
        match self {
            Waiter::Host(c) => c.wait().await.map(|s| s.code()).map_err(|e| e.to_string()),
            Waiter::Guest(s) => s.wait().await.map(Some),
        }
    }
}

/// Start `argv` in the instance `r` through its driver, with a terminal of
/// (columns, rows) `tty` when given, else pipes.
pub async fn start(
    driver: &dyn Driver,
    r: &Running,
    t: &ExecTarget<'_>,
    argv: &[String],
    tty: Option<(u16, u16)>,
) -> anyhow::Result<Started> {
    match driver.exec(r, t, argv)? {
        ExecVia::Host(cmd) => start_host(cmd, tty),
        ExecVia::Guest(ch) => {
            let g = crate::microvm::guest::start(&ch, argv, tty).await?;
            Ok(Started {
                stdin: Some(Box::new(g.stdin)),
                stdout: Some(Box::new(g.stdout)),
                stderr: if tty.is_some() {
                    None
                } else {
                    Some(Box::new(g.stderr))
                },
                control: Control::Guest(g.session.control.clone()),
                waiter: Waiter::Guest(g.session),
            })
        }
    }
}

/// Start a host command in a process group of its own, with a PTY of
/// (columns, rows) `tty` as its three streams when given, else pipes. The
/// command gets the PTY as its standard streams but not as a controlling
/// terminal (Ctrl-C reaches it as a byte; the agent has no `unsafe` for
/// `setsid`/`TIOCSCTTY`).
pub fn start_host(
    mut cmd: std::process::Command,
    tty: Option<(u16, u16)>,
) -> anyhow::Result<Started> {
    use anyhow::Context as _;
    cmd.process_group(0);
    let mut master: Option<(std::os::fd::OwnedFd, String)> = None;
    if let Some((cols, rows)) = tty {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).context("cannot open a terminal")?;
        let slave_path = nix::unistd::ttyname(&pty.slave)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let (i, o) = (pty.slave.try_clone()?, pty.slave.try_clone()?);
        cmd.stdin(Stdio::from(i))
            .stdout(Stdio::from(o))
            .stderr(Stdio::from(pty.slave));
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
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.as_std().get_program()))?;
    let pid = child.id();
    // The slave's copies in this process go with the command builder: the
    // master then reads EOF (EIO) once the command and its children exit.
    drop(cmd);
    let (stdin, stdout, stderr, slave): (Option<Writer>, Option<Reader>, Option<Reader>, _) =
        match master {
            Some((m, path)) => {
                let w = m.try_clone().context("cannot use the terminal")?;
                (
                    Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(w)))),
                    Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(m)))),
                    None,
                    Some(path),
                )
            }
            None => (
                child.stdin.take().map(|w| Box::new(w) as Writer),
                child.stdout.take().map(|r| Box::new(r) as Reader),
                child.stderr.take().map(|r| Box::new(r) as Reader),
                None,
            ),
        };
    Ok(Started {
        stdin,
        stdout,
        stderr,
        control: Control::Host { pid, slave },
        waiter: Waiter::Host(child),
    })
}

/// Run a host command as `task` says (see [`collect`]).
pub async fn exec_command(cmd: std::process::Command, task: &AgentTask) -> AgentTaskResult {
    match start_host(cmd, None) {
        Ok(s) => collect(s, task).await,
        Err(e) => failed(format!("{e:#}")),
    }
}

/// How long a killed command (and its output) may take to end.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Finish a started command as `task` says: its stdin given and closed,
/// each output stream kept up to the task's limit, killed (its whole
/// process group) when it passes the timeout.
pub async fn collect(s: Started, task: &AgentTask) -> AgentTaskResult {
    let Started {
        stdin,
        stdout,
        stderr,
        control,
        mut waiter,
    } = s;
    let started = Instant::now();
    if let Some(mut stdin) = stdin {
        let input = task.stdin.clone().into_bytes();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
            // Dropped: the command sees the end of its input.
        });
    }
    let limit = usize::try_from(task.output_limit).unwrap_or(usize::MAX);
    let out = tokio::spawn(capture(stdout, limit));
    let err = tokio::spawn(capture(stderr, limit));
    let timeout = Duration::from_millis(task.timeout_ms);
    let (status, timed_out) = match tokio::time::timeout(timeout, waiter.wait()).await {
        Ok(s) => (s, false),
        Err(_) => {
            control.kill();
            let ended = tokio::time::timeout(KILL_GRACE, waiter.wait()).await;
            (ended.unwrap_or(Ok(None)), true)
        }
    };
    let elapsed = started.elapsed();
    // Children left behind holding the pipes: the group goes once the
    // command itself has ended (what it started in the background does
    // not outlive the exec).
    control.end();
    let (stdout, t1) = joined(out).await;
    let (stderr, t2) = joined(err).await;
    let (stdout, t3) = fit(stdout);
    let (stderr, t4) = fit(stderr);
    let (exit_code, error) = match status {
        _ if timed_out => (None, None),
        Ok(code) => (code, None),
        Err(e) => (None, Some(e)),
    };
    AgentTaskResult {
        exit_code,
        stdout,
        stderr,
        lines: vec![],
        truncated: t1 || t2 || t3 || t4,
        timed_out,
        execution_time_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        error,
    }
}

/// A capture's result, given up (empty) when its stream does not end soon
/// after the command did.
async fn joined(mut h: tokio::task::JoinHandle<(String, bool)>) -> (String, bool) {
    match tokio::time::timeout(KILL_GRACE, &mut h).await {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => {
            h.abort();
            (String::new(), true)
        }
    }
}

pub(crate) fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Read all of `r`, keeping the first `limit` bytes: (text, truncated).
async fn capture(r: Option<Reader>, limit: usize) -> (String, bool) {
    let Some(mut r) = r else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

/// `s`, cut so that its JSON text stays within [`MAX_JSON`]: (text, cut).
fn fit(mut s: String) -> (String, bool) {
    let json_len = |s: &str| serde_json::to_string(s).map_or(usize::MAX, |j| j.len());
    if json_len(&s) <= MAX_JSON {
        return (s, false);
    }
    while json_len(&s) > MAX_JSON {
        let mut cut = s.len() * 3 / 4;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    (s, true)
}

/// A `logs` task: the app's stored lines that answer the query.
async fn logs_query(ctx: &Ctx, task: &AgentTask) -> AgentTaskResult {
    let Some(q) = task.logs.clone() else {
        return failed("a logs task without its query".into());
    };
    let logs = ctx.logs.clone();
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || logs.query(&q)).await {
        Ok(lines) => AgentTaskResult {
            exit_code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
            execution_time_ms: started.elapsed().as_millis() as u64,
            lines,
            error: None,
        },
        Err(e) => failed(format!("the log query failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(command: &[&str], stdin: &str, timeout_ms: u64, limit: u64) -> AgentTask {
        AgentTask {
            id: "tsk_test".into(),
            kind: "exec".into(),
            instance_id: "inst_test".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            logs: None,
            session: None,
            stdin: stdin.into(),
            timeout_ms,
            output_limit: limit,
        }
    }

    fn sh(t: &AgentTask) -> std::process::Command {
        let mut c = std::process::Command::new(&t.command[0]);
        c.args(&t.command[1..]);
        c
    }

    #[tokio::test]
    async fn output_stdin_exit_code_timeout_and_limits() {
        let t = task(
            &["/bin/sh", "-c", "read x; echo out $x; echo err >&2; exit 3"],
            "hi\n",
            5000,
            1024,
        );
        let r = exec_command(sh(&t), &t).await;
        assert_eq!(
            (r.exit_code, r.stdout.as_str(), r.stderr.as_str()),
            (Some(3), "out hi\n", "err\n")
        );
        assert!(!r.timed_out && !r.truncated && r.error.is_none());

        // Past its timeout: the whole group is killed, background children too.
        let t = task(
            &["/bin/sh", "-c", "sleep 30 & sleep 30; echo never"],
            "",
            300,
            1024,
        );
        let t0 = Instant::now();
        let r = exec_command(sh(&t), &t).await;
        assert!(r.timed_out, "{r:?}");
        assert_eq!(r.exit_code, None);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

        // More than the limit: kept up to it, flagged.
        let t = task(
            &["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a"],
            "",
            5000,
            1000,
        );
        let r = exec_command(sh(&t), &t).await;
        assert_eq!(r.stdout.len(), 1000);
        assert!(r.truncated);

        let t = task(&["/nonexistent/program"], "", 1000, 10);
        let r = exec_command(sh(&t), &t).await;
        assert!(r.error.unwrap().contains("cannot start"));
    }
}
