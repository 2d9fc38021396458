//! Tasks the control plane hands out with a sync (`AgentDesired.tasks`):
//! `exec` runs a command in an instance through its driver, with a timeout
//! that kills the command's process group, stdin given and closed, each
//! output stream kept up to a limit; the result goes back with `POST
//! /v1/agent/tasks/{id}/result`. Each task runs in a task of its own: a
//! long command holds up neither the sync loop nor the reconciler.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shellwego_api::agent::{AgentTask, AgentTaskResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::driver::ExecTarget;
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
    let std_cmd = match driver.exec(&info.running, &target, &task.command) {
        Ok(c) => c,
        Err(e) => return failed(format!("{e:#}")),
    };
    exec_command(std_cmd, task).await
}

/// Run `cmd` as `task` says: stdin, timeout (the process group is killed),
/// output limits.
pub async fn exec_command(mut cmd: std::process::Command, task: &AgentTask) -> AgentTaskResult {
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start {:?}: {e}", task.command)),
    };
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let input = task.stdin.clone().into_bytes();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            // Dropped: the command sees the end of its input.
        });
    }
    let limit = usize::try_from(task.output_limit).unwrap_or(usize::MAX);
    let out = tokio::spawn(capture(child.stdout.take(), limit));
    let err = tokio::spawn(capture(child.stderr.take(), limit));
    let timeout = Duration::from_millis(task.timeout_ms);
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => (s.ok(), false),
        Err(_) => {
            kill_group(pid);
            (child.wait().await.ok(), true)
        }
    };
    let elapsed = started.elapsed();
    // Children left behind holding the pipes: the group goes once the
    // command itself has ended (what it started in the background does
    // not outlive the exec).
    kill_group(pid);
    let (stdout, t1) = out.await.unwrap_or_default();
    let (stderr, t2) = err.await.unwrap_or_default();
    let (stdout, t3) = fit(stdout);
    let (stderr, t4) = fit(stderr);
    AgentTaskResult {
        exit_code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout,
        stderr,
        lines: vec![],
        truncated: t1 || t2 || t3 || t4,
        timed_out,
        execution_time_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        error: None,
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
async fn capture(r: Option<impl AsyncRead + Unpin>, limit: usize) -> (String, bool) {
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
