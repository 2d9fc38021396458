//! `shellwego bench logs`: how fast a node's agent stores instance output,
//! and how long a printed line takes to reach a follower.
//!
//! Ingest: N instances (real processes, the process driver) each write
//! their share of the lines (100 bytes each) to their output files before
//! the tailer starts (under its 16 MiB backlog limit, so nothing is
//! skipped); then the agent's tailer thread reads, classifies and stores
//! them all. Lines per second = lines / time from its start to the last
//! line stored.
//!
//! Follow: a real `shellwego up` (process driver) runs an app that prints
//! what `/say?<text>` gives it; a follower holds `GET
//! /v1/apps/{id}/logs?follow=true` (SSE); each sample is the time from the
//! request to the app (answered after the app printed and flushed) to the
//! follower reading the line.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use shellwego_agent::driver::{Command, Driver, Launch, Reply};
use shellwego_agent::logs::Logs;
use shellwego_agent::process::ProcessDriver;
use shellwego_api::logs::{LogPolicy, LogQuery, LogSettings};

use super::kit::{self, ms, pct};

const APP: &str = r#"
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/say?"):
            print(self.path[5:], flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
print("ready", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

pub async fn run(lines: u64, instances: u64, samples: usize) -> anyhow::Result<()> {
    if !(1..=64).contains(&instances) || lines == 0 || samples == 0 {
        bail!("--instances 1 to 64, --lines and --samples at least 1");
    }
    // Under the tailer's backlog limit per file (100-byte lines).
    let per = lines.div_ceil(instances);
    if per * 100 > (15 << 20) {
        bail!(
            "at most {} lines per instance (raise --instances)",
            (15u64 << 20) / 100
        );
    }
    ingest(per, instances).await?;
    follow(samples).await
}

async fn ingest(per: u64, instances: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("agent");
    let logs = Logs::new(
        &data,
        LogPolicy {
            retention_secs: 3600,
            max_bytes: 1 << 30,
        },
    );
    let driver = ProcessDriver::new();
    let mut running = vec![];
    for k in 0..instances {
        let inst = format!("inst_bench{k}");
        let idir = dir.path().join(&inst);
        std::fs::create_dir_all(&idir)?;
        let (stdout, stderr) = logs.output_files("app_bench", &inst, LogSettings::default())?;
        // 99 characters and a newline.
        let script = format!("line=$(printf '%094d' 0); yes \"INFO $line\" | head -n {per}");
        let l = Launch {
            instance_id: inst.clone(),
            dir: idir.clone(),
            root: idir,
            is_rootfs: false,
            argv: vec!["/bin/sh".into(), "-c".into(), script],
            workdir: "/".into(),
            env: Default::default(),
            port: 0,
            memory: 256 << 20,
            cpu_millis: 1000,
            stdout,
            stderr,
            allowed_egress: None,
        };
        match driver.run(Command::Start(&l))? {
            Reply::Started(r) => running.push((l, r)),
            Reply::Done => bail!("not started"),
        }
    }
    // Written in full before the tailer starts.
    for (l, r) in &running {
        let t = Instant::now();
        while driver.poll(r).is_none() {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("instance {} did not finish writing", l.instance_id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = driver.run(Command::Cleanup {
            instance_id: &l.instance_id,
            handle: Some(r),
        });
    }
    let total = per * instances;
    let t = Instant::now();
    logs.start(Arc::new(|_: &str| true))?;
    let stored = loop {
        let n = stored_lines(&data.join("logs/apps/app_bench"));
        if n >= total {
            break n;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("only {n} of {total} lines stored after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let took = t.elapsed();
    let q = Instant::now();
    let last = logs.query(&LogQuery {
        app_id: "app_bench".into(),
        since: None,
        until: None,
        tail: 10_000,
        filter: Default::default(),
    });
    let query = q.elapsed();
    println!(
        "logs ingest: {instances} instances × {per} lines of 100 bytes, written before the tailer starts"
    );
    println!("| lines | time | lines/s | MB/s | query of the last 10 000 |");
    println!("|---|---|---|---|---|");
    println!(
        "| {stored} | {} | {:.0} | {:.1} | {} ({} lines) |",
        ms(took),
        stored as f64 / took.as_secs_f64(),
        (stored * 100) as f64 / took.as_secs_f64() / 1e6,
        ms(query),
        last.len()
    );
    Ok(())
}

/// Lines stored in an app's segments.
fn stored_lines(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ndjson"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|b| bytecount(&b))
        .sum()
}

fn bytecount(b: &[u8]) -> u64 {
    b.iter().filter(|c| **c == b'\n').count() as u64
}

async fn follow(samples: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut up = kit::up(dir.path(), &["--runtime", "process"])?
        .start_async()
        .await?;
    let res = measure_follow(&up, dir.path(), samples).await;
    up.terminate_async(Duration::from_secs(15)).await;
    kit::reap_leftovers(&up.agent_dir()).await;
    if res.is_err() {
        eprintln!("the end of `shellwego up`'s log:\n{}", up.log_tail(40));
    }
    res
}

async fn measure_follow(up: &kit::Platform, tmp: &Path, samples: usize) -> anyhow::Result<()> {
    let api = up.api();
    api.wait_node(None, "process").await?;
    let src = tmp.join("app");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("Procfile"), "web: exec python3 say.py\n")?;
    std::fs::write(src.join("say.py"), APP)?;
    let upload = api.upload(kit::tar_gz(&src)?).await?;
    let created = api
        .post(
            "/v1/apps",
            &json!({"name": "say", "replicas": 1, "resources": {"memory": "64m", "cpu": "0.1"},
                    "source": {"type": "tarball", "upload_id": upload},
                    "health_check": {"path": "/health", "interval": "1s"}}),
        )
        .await?;
    let app = created["id"].as_str().context("no app id")?.to_string();
    let port = loop {
        let (_, a) = api.get(&format!("/v1/apps/{app}")).await?;
        if a["replicas"]["healthy"] == 1 {
            break a["instances"][0]["port"].as_u64().context("no port")?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut res = api
        .http
        .get(format!(
            "{}/v1/apps/{app}/logs?follow=true&tail=0&search=mark-",
            api.base
        ))
        .bearer_auth(&api.token)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("the follow answered {}", res.status());
    }
    let http = reqwest::Client::new();
    let say = |text: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/say?{text}"))
                .send()
                .await
                .map(|_| ())
        }
    };
    let mut buf = String::new();
    // Until the follow is in place on the node.
    let t = Instant::now();
    'ready: loop {
        say("mark-warmup".into()).await?;
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(until, shellwego_client::next_event(&mut res, &mut buf))
                .await
            {
                Ok(Ok(Some((ev, _, data)))) => {
                    if ev == "log" && data.contains("mark-warmup") {
                        break 'ready;
                    }
                }
                Ok(Ok(None)) => bail!("the follow ended"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => break,
            }
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the follow never delivered a line");
        }
    }
    let mut lat = vec![];
    for k in 0..samples {
        let marker = format!("mark-{k}");
        let sent = Instant::now();
        say(marker.clone()).await?;
        loop {
            let got = tokio::time::timeout(
                Duration::from_secs(10),
                shellwego_client::next_event(&mut res, &mut buf),
            )
            .await
            .context("a followed line did not come within 10 s")??;
            let Some((ev, _, data)) = got else {
                bail!("the follow ended");
            };
            if ev == "log" && data.contains(&format!("\"{marker}\"")) {
                lat.push(sent.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lat.sort();
    println!(
        "logs follow: a line printed by an instance (process driver) to a follower's SSE stream on a real `shellwego up`, {samples} samples"
    );
    println!("| p50 | p99 | max |");
    println!("|---|---|---|");
    println!(
        "| {} | {} | {} |",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(lat[lat.len() - 1])
    );
    api.delete(&format!("/v1/apps/{app}")).await?;
    Ok(())
}
