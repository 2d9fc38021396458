//! App metrics on both store backends: samples a node sends for its own
//! instances are kept (for another node's, dropped), the API combines an
//! app's instances per slot (CPU the mean, memory the sum), downsampling
//! keeps a known series' values (1-minute and 1-hour points, read once the
//! raw samples are gone), statistics are those of the points, retention
//! deletes what is past it (another organization's 404: `stranger`).

use serde_json::{json, Value};
use shellwego_api::agent::AgentSync;
use shellwego_api::metrics::Sample;
use shellwego_core::time::{now, rfc3339, to_micros};
use shellwego_testkit::both_backends;
use shellwego_testkit::server::TestServer;

const SLOT: i64 = 10_000_000;

fn values(m: &Value, name: &str) -> Vec<f64> {
    m[name]["data_points"]
        .as_array()
        .unwrap_or_else(|| panic!("no {name} in {m:#}"))
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect()
}

async fn samples_are_combined_rolled_up_and_expired(s: TestServer) {
    let agent = s.fake_agent("metrics-node", 4, 8 << 30).await;
    let other = s.fake_agent("other-node", 4, 8 << 30).await;
    let app = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "gauge", "image": "nginx:alpine", "replicas": 2}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Both instances land on whichever nodes; report them healthy.
    agent.report_healthy().await;
    other.report_healthy().await;
    let a = s
        .wait_for(&format!("/v1/apps/{app}"), "2 healthy instances", |a| {
            a["replicas"]["healthy"] == 2
        })
        .await;
    let insts: Vec<(String, String)> = a["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["node_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Two hours ago, 120 minutes of slots: instance 0 at CPU 10 + k%,
    // instance 1 at 30%; memory 100 MB and 50 MB.
    let now_us = to_micros(now());
    let start =
        (now_us - 2 * 3_600_000_000) - (now_us - 2 * 3_600_000_000).rem_euclid(3_600_000_000);
    let slots = 720; // two hours
    for (k, (inst, node)) in insts.iter().enumerate() {
        let fa = if *node == agent.node_id {
            &agent
        } else {
            &other
        };
        let samples: Vec<Sample> = (0..slots)
            .map(|j| Sample {
                instance_id: Some(inst.clone()),
                at: start + j * SLOT + 1_000,
                cpu_percent: Some(if k == 0 { 10.0 + (j % 6) as f64 } else { 30.0 }),
                memory_bytes: Some(if k == 0 { 100e6 } else { 50e6 }),
                ..Default::default()
            })
            .collect();
        fa.sync(&AgentSync {
            generation: -1,
            wait_secs: Some(1),
            samples,
            ..Default::default()
        })
        .await;
    }
    // A node cannot speak for an instance that is not its own.
    let stranger_inst = insts
        .iter()
        .find(|(_, n)| *n != agent.node_id)
        .map(|(i, _)| i.clone());
    if let Some(i) = stranger_inst {
        agent
            .sync(&AgentSync {
                generation: -1,
                wait_secs: Some(1),
                samples: vec![Sample {
                    instance_id: Some(i),
                    at: start + 1_000,
                    cpu_percent: Some(99.0),
                    memory_bytes: Some(1e12),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await;
    }
    let from = rfc3339(shellwego_core::time::from_micros(start));
    let to = rfc3339(shellwego_core::time::from_micros(start + slots * SLOT));
    let get = |q: String| {
        let s = &s;
        let app = app.clone();
        async move { s.get(&format!("/v1/apps/{app}/metrics?{q}")).await }
    };
    let enc = |t: &str| t.replace(':', "%3A").replace('+', "%2B");
    // Raw: per slot, CPU the mean of the two, memory the sum.
    let (st, m) = get(format!("from={}&to={}&resolution=1m", enc(&from), enc(&to))).await;
    assert_eq!(st, 200, "{m}");
    let cpu = values(&m, "cpu");
    assert_eq!(cpu.len(), 120);
    // Each minute: mean over slots j%6 = 0..5 of (10+j%6 + 30)/2 = 21.25.
    assert!(cpu.iter().all(|v| (v - 21.25).abs() < 1e-9), "{cpu:?}");
    let mem = values(&m, "memory");
    assert!(mem.iter().all(|v| (v - 150e6).abs() < 1.0), "{mem:?}");
    let st_cpu = &m["cpu"]["statistics"];
    assert_eq!(st_cpu["min"], 21.25);
    assert_eq!(st_cpu["p99"], 21.25);
    // 10-second points: the known pattern, with its statistics.
    let (_, m) = get(format!(
        "from={}&to={}&resolution=10s&metric=cpu",
        enc(&from),
        enc(&rfc3339(shellwego_core::time::from_micros(
            start + 60 * SLOT
        )))
    ))
    .await;
    let cpu = values(&m, "cpu");
    assert_eq!(cpu.len(), 60);
    assert_eq!(cpu[..6], [20.0, 20.5, 21.0, 21.5, 22.0, 22.5]);
    let st = &m["cpu"]["statistics"];
    assert_eq!(
        (st["min"].as_f64(), st["max"].as_f64()),
        (Some(20.0), Some(22.5))
    );
    assert_eq!(st["avg"].as_f64(), Some(21.25));
    assert_eq!(st["p99"].as_f64(), Some(22.5));
    assert!(m.get("memory").is_none());

    // Downsampling: as of the end of the series, then the raw samples go
    // (a retention of a minute), and the points come from the rollups.
    let ctx = s.started.as_ref().unwrap().ctx.clone();
    let end = start + slots * SLOT;
    // Passes as they would have run along the way (each recomputes the
    // recent buckets of each resolution).
    let mut t = start + 15 * 60 * 1_000_000;
    while t <= end + 3_600_000_000 {
        shellwego_server::controller::metrics::roll_up(&ctx, t)
            .await
            .unwrap();
        t += 10 * 60 * 1_000_000;
    }
    shellwego_store::metrics::delete_samples_before(&mut s.store.conn().await.unwrap(), now_us)
        .await
        .unwrap();
    let old_from = rfc3339(shellwego_core::time::from_micros(
        start - 2 * 86_400_000_000,
    ));
    let (st, m) = get(format!(
        "from={}&to={}&resolution=1m",
        enc(&old_from),
        enc(&to)
    ))
    .await;
    assert_eq!(st, 200, "{m}");
    let cpu = values(&m, "cpu");
    assert_eq!(cpu.len(), 120, "{m:#}");
    assert!(cpu.iter().all(|v| (v - 21.25).abs() < 1e-9), "{cpu:?}");
    let (_, m) = get(format!(
        "from={}&to={}&resolution=1h",
        enc(&old_from),
        enc(&to)
    ))
    .await;
    let cpu = values(&m, "cpu");
    assert_eq!(cpu.len(), 2, "{m:#}");
    assert!(cpu.iter().all(|v| (v - 21.25).abs() < 1e-9), "{cpu:?}");
    assert!(values(&m, "memory").iter().all(|v| (v - 150e6).abs() < 1.0));
    // 10-second points of two days ago are gone: a 400 that says so.
    let (st, m) = get(format!("from={}&resolution=10s", enc(&old_from))).await;
    assert_eq!(st, 400, "{m}");
    assert!(m["detail"].as_str().unwrap().contains("resolution"));
    // Retention: minutes older than a week go.
    let mut conn = s.store.conn().await.unwrap();
    let gone = shellwego_store::metrics::delete_rollups_before(&mut conn, 60, end + 1)
        .await
        .unwrap();
    assert_eq!(gone, 2 * 120, "two metrics × 120 minutes");
    drop(conn);
}

both_backends!(samples_are_combined_rolled_up_and_expired);
