//! `shellwego bench deploy`: time from `POST /v1/apps/{id}/deploy` to all
//! traffic on the new version, per strategy, with 3 replicas of
//! examples/hello on a real `shellwego up` (this binary) in a temp dir.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::kit::{self, Api, Platform};

const STRATEGIES: &[(&str, &str)] = &[
    ("rolling", r#"{"strategy": "rolling"}"#),
    (
        "blue-green",
        r#"{"strategy": "blue-green", "warm_window": "0s"}"#,
    ),
    (
        "canary",
        r#"{"strategy": "canary", "canary_steps": [34, 100], "canary_pause": "0s"}"#,
    ),
];

pub async fn run(runs: usize, replicas: i64) -> anyhow::Result<()> {
    if runs == 0 || !(1..=20).contains(&replicas) {
        bail!("--runs must be at least 1 and --replicas 1 to 20");
    }
    let dir = tempfile::tempdir()?;
    let mut up = kit::up(dir.path(), &["--runtime", "process"])?
        .start_async()
        .await?;
    let res = measure(&up, dir.path(), runs, replicas).await;
    up.terminate_async(Duration::from_secs(15)).await;
    kit::reap_leftovers(&up.agent_dir()).await;
    if res.is_err() {
        eprintln!("the end of `shellwego up`'s log:\n{}", up.log_tail(40));
    }
    res
}

async fn measure(
    up: &Platform,
    tmp: &std::path::Path,
    runs: usize,
    replicas: i64,
) -> anyhow::Result<()> {
    let api = up.api();
    api.wait_node(None, "process").await?;
    let src = tmp.join("app");
    kit::write_hello(&src)?;
    let upload = api.upload(kit::tar_gz(&src)?).await?;
    let created = api
        .post(
            "/v1/apps",
            &json!({"name": "bench", "replicas": replicas, "resources": {"memory": "64m", "cpu": "0.1"},
                    "source": {"type": "tarball", "upload_id": upload},
                    "health_check": {"path": "/health", "interval": "1s"}}),
        )
        .await?;
    let app = created["id"].as_str().context("no app id")?.to_string();
    let dep = created["deployment_id"]
        .as_str()
        .context("no deployment id")?;
    wait_done(&api, dep).await?;
    println!(
        "deploy: {replicas} replicas of examples/hello (process driver), {runs} run(s) per strategy; \
         time from POST …/deploy to every request going to the new version"
    );
    println!("| strategy | median | min | max | until the deployment ended (median) |");
    println!("|---|---|---|---|---|");
    for (name, body) in STRATEGIES {
        let mut to_traffic = vec![];
        let mut to_end = vec![];
        for _ in 0..runs {
            let body: Value = serde_json::from_str(body)?;
            let t = Instant::now();
            let d = api.post(&format!("/v1/apps/{app}/deploy"), &body).await?;
            let id = d["deployment_id"].as_str().context("no deployment id")?;
            let d = wait_done(&api, id).await?;
            to_end.push(t.elapsed());
            // The switch: when the shifting_traffic stage completed.
            let created = d["created_at"].as_str().unwrap_or_default();
            let shifted = d["stages"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "shifting_traffic"))
                .and_then(|s| s["completed_at"].as_str())
                .unwrap_or_default();
            let ms = |s: &str| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| t.timestamp_micros())
                    .unwrap_or(0)
            };
            to_traffic.push(Duration::from_micros(
                (ms(shifted) - ms(created)).max(0) as u64
            ));
        }
        to_traffic.sort();
        to_end.sort();
        println!(
            "| {name} | {} | {} | {} | {} |",
            kit::ms(kit::pct(&to_traffic, 0.5)),
            kit::ms(to_traffic[0]),
            kit::ms(to_traffic[to_traffic.len() - 1]),
            kit::ms(kit::pct(&to_end, 0.5)),
        );
    }
    api.delete(&format!("/v1/apps/{app}")).await?;
    Ok(())
}

/// Wait until the deployment is successful; an error when it fails.
async fn wait_done(api: &Api, id: &str) -> anyhow::Result<Value> {
    let t = Instant::now();
    loop {
        let (_, d) = api.get(&format!("/v1/deployments/{id}")).await?;
        match d["status"].as_str() {
            Some("successful") => return Ok(d),
            Some("in_progress") | None => {}
            Some(other) => bail!("deployment {id} ended {other}: {}", d["status_reason"]),
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("deployment {id} did not end within 5 minutes: {d}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
