//! `--wait`: poll until an app settles, showing progress on stderr (stdout
//! stays data, so `-o json --wait` is still one JSON document). On a
//! terminal the progress is one line redrawn with a spinner; otherwise a
//! plain line each time the state changes.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_api::apps::App;
use shellwego_client::{Answer, ApiError, Client};
use shellwego_core::model::AppStatus;

/// Time between two polls of the API.
pub const POLL: Duration = Duration::from_millis(500);
/// Spinner frames per poll on a terminal.
const TICKS_PER_POLL: u32 = 5;
const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
/// How long `--wait` waits when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Events shown when a wait fails.
const EVENTS_SHOWN: usize = 5;

pub struct Progress {
    tty: bool,
    line: Option<String>,
    frame: usize,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            line: None,
            frame: 0,
        }
    }

    /// The current state; printed at once on a terminal, else only when
    /// it differs from the last one printed.
    pub fn set(&mut self, line: String) {
        if self.tty {
            self.line = Some(line);
            self.draw();
        } else if self.line.as_deref() != Some(line.as_str()) {
            eprintln!("{line}");
            self.line = Some(line);
        }
    }

    fn draw(&mut self) {
        if let Some(l) = &self.line {
            let f = FRAMES[self.frame % FRAMES.len()];
            self.frame += 1;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{f} {l}");
            let _ = err.flush();
        }
    }

    /// Sleep until the next poll, turning the spinner meanwhile.
    pub async fn pause(&mut self) {
        if self.tty {
            for _ in 0..TICKS_PER_POLL {
                tokio::time::sleep(POLL / TICKS_PER_POLL).await;
                self.draw();
            }
        } else {
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last state, for good: on a terminal the spinner becomes `mark`.
    pub fn done(&mut self, mark: &str, line: String) {
        if self.tty {
            eprint!("\r\x1b[2K");
            eprintln!("{mark} {line}");
        } else if self.line.as_deref() != Some(line.as_str()) {
            eprintln!("{line}");
        }
        self.line = None;
    }
}

/// `web: 1/3 healthy (deploying)`, with the reason when there is one.
pub fn app_line(a: &App) -> String {
    let mut s = format!(
        "{}: {}/{} healthy ({})",
        a.name, a.replicas.healthy, a.replicas.desired, a.status
    );
    if let Some(r) = a.status_reason.as_deref().filter(|r| !r.is_empty()) {
        let _ = write!(s, ": {r}");
    }
    s
}

/// Settled: every wanted replica healthy and the app `running`, or (when
/// it wants none, as after `stop` or `scale 0`) `stopped`.
pub fn settled(a: &App) -> bool {
    if a.replicas.desired == 0 {
        a.status == AppStatus::Stopped
    } else {
        a.status == AppStatus::Running && a.replicas.healthy >= a.replicas.desired
    }
}

/// Poll `GET /v1/apps/{id}` until the app settles; the app then. Fails on
/// `error` status or at `timeout`, with the reason and the latest events.
pub async fn wait_app(client: &Client, id: &str, timeout: Duration) -> anyhow::Result<Answer<App>> {
    let started = Instant::now();
    let mut progress = Progress::new();
    loop {
        let a = match client.apps().get(id).await {
            Ok(a) => a,
            // A blip (the API restarting) is not the app failing: retry
            // until the deadline.
            Err(ApiError::Transport { .. }) if started.elapsed() < timeout => {
                progress.pause().await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let line = app_line(&a);
        if settled(&a) {
            progress.done("✓", line);
            return Ok(a);
        }
        if a.status == AppStatus::Error {
            progress.done("✗", line);
            let mut msg = format!(
                "{} ({}) failed: {}",
                a.name,
                a.id,
                a.status_reason.as_deref().unwrap_or("status error")
            );
            msg.push_str(&recent_events(client, id).await);
            anyhow::bail!(msg);
        }
        if started.elapsed() >= timeout {
            progress.done("✗", line.clone());
            let mut msg = format!(
                "gave up waiting for {} after {}s: {line}",
                a.name,
                timeout.as_secs()
            );
            msg.push_str(&recent_events(client, id).await);
            let _ = write!(
                msg,
                "\n(the platform keeps working on it; see `shellwego apps get {}`)",
                a.name
            );
            anyhow::bail!(msg);
        }
        progress.set(line);
        progress.pause().await;
    }
}

/// The app's latest events, one per line after a heading, or "" when
/// there are none (or they cannot be read).
async fn recent_events(client: &Client, id: &str) -> String {
    let Ok(a) = client.apps().get_with_events(id).await else {
        return String::new();
    };
    let events = a.into_inner().events.unwrap_or_default();
    if events.is_empty() {
        return String::new();
    }
    let mut s = String::from("\nlatest events:");
    for e in events.iter().take(EVENTS_SHOWN) {
        let detail = match e.metadata.get("reason").and_then(Value::as_str) {
            Some(r) => r.to_string(),
            None => match &e.metadata {
                Value::Object(m) if m.is_empty() => String::new(),
                Value::Null => String::new(),
                other => other.to_string(),
            },
        };
        let _ = write!(
            s,
            "\n  {}  {} ({})  {}",
            e.timestamp, e.event_type, e.severity, detail
        );
        while s.ends_with(' ') {
            s.pop();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(status: &str, healthy: i64, desired: i64, reason: Option<&str>) -> App {
        let v = serde_json::json!({
            "id": "app_1", "name": "web", "slug": "web", "status": status,
            "status_reason": reason, "image": null, "command": null,
            "resources": {}, "env": {}, "domains": [], "volumes": [],
            "replicas": {"current": healthy, "desired": desired, "healthy": healthy},
            "networking": {"internal_dns": "web.internal", "public": true, "allowed_egress": []},
            "health_check": {}, "source": null, "placement": {},
            "runtime": {"driver": null, "requested": null, "kernel_version": null,
                "microvm_version": null, "firecracker_version": null},
            "instances": [], "deployment_id": null, "version": 1, "autoscale": null,
            "created_at": "t", "updated_at": "t", "created_by": null,
            "organization_id": "org_1", "tags": []
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn lines_and_settling() {
        let a = app("deploying", 1, 3, None);
        assert_eq!(app_line(&a), "web: 1/3 healthy (deploying)");
        assert!(!settled(&a));
        assert!(settled(&app("running", 3, 3, None)));
        // Healthy but still rolling: not settled.
        assert!(!settled(&app("deploying", 3, 3, None)));
        assert!(!settled(&app(
            "deploying",
            0,
            0,
            Some("stopping 2 instance(s)")
        )));
        assert!(settled(&app("stopped", 0, 0, None)));
        assert_eq!(
            app_line(&app("pending", 0, 1, Some("no node has room"))),
            "web: 0/1 healthy (pending): no node has room"
        );
    }
}
