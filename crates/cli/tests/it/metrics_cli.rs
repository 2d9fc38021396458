//! `shellwego metrics` of the real binary against a real `shellwego up
//! --runtime process`: a CPU-burning app that holds 200 MB shows CPU near
//! its allocation and ≈200 MB of memory, the requests sent through the
//! ingress are counted exactly, the statistics are those of the points,
//! the node's usage is measured, and Prometheus sees the app.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_testkit::fixtures::tar_gz;

use crate::apps_cli::start;
use crate::support::Cli;

/// Holds 200 MB (written, so resident), burns CPU in a second thread, and
/// answers every GET with `ok`.
const GAUGE: &str = r#"
import http.server, os, threading
held = b"a" * (200 << 20)
def burn():
    x = 0
    while True:
        x += 1
threading.Thread(target=burn, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    def handle_error(self, *a):
        pass
S(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

const REQUESTS: usize = 37;

fn values(m: &Value, name: &str) -> Vec<f64> {
    m[name]["data_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect()
}

#[test]
fn usage_and_requests_are_measured_with_their_statistics() {
    let p = start();
    let src = p.dir().join("gauge-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Procfile"), "web: exec python3 gauge.py\n").unwrap();
    std::fs::write(src.join("gauge.py"), GAUGE).unwrap();
    let archive = p.dir().join("gauge.tgz");
    std::fs::write(&archive, tar_gz(&src).unwrap()).unwrap();
    p.ok(&[
        "apps",
        "create",
        "gauge",
        "--upload",
        archive.to_str().unwrap(),
        "--cpu",
        "0.5",
        "--memory",
        "512m",
        "--health-path",
        "/health",
        "--wait",
    ]);
    // Requests through the ingress.
    let http = reqwest::blocking::Client::new();
    for _ in 0..REQUESTS {
        let r = http
            .get(format!("http://127.0.0.1:{}/", p.ingress_port()))
            .header("host", "gauge.localhost")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let t = Instant::now();
    let m = loop {
        let m = p.json(&[
            "metrics",
            "--app",
            "gauge",
            "--since",
            "10m",
            "--resolution",
            "10s",
        ]);
        let cpu = values(&m, "cpu");
        let requests: f64 = values(&m, "requests").iter().sum();
        // Two CPU samples after the instance settled (its start may burn
        // more than its allocation: the boot window).
        if cpu.len() >= 3 && requests >= REQUESTS as f64 {
            break m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "metrics after 2 minutes: {m:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(m["resolution_seconds"], 10);
    let cpu = values(&m, "cpu");
    let last_cpu = *cpu.last().unwrap();
    assert!(
        (60.0..=130.0).contains(&last_cpu),
        "a burning app with 0.5 CPU shows {last_cpu}% of its allocation: {cpu:?}"
    );
    assert_eq!(m["cpu"]["unit"], "percentage");
    let mem = *values(&m, "memory").last().unwrap();
    assert!(
        ((190 << 20) as f64..=(280 << 20) as f64).contains(&mem),
        "an app holding 200 MB shows {mem} bytes"
    );
    let mem_pct = *values(&m, "memory_percent").last().unwrap();
    assert!((35.0..=56.0).contains(&mem_pct), "{mem_pct}% of 512 MiB");
    assert!(*values(&m, "disk").last().unwrap() > 0.0);
    // Every request counted once, all 2xx, with a latency.
    let requests: f64 = values(&m, "requests").iter().sum();
    assert_eq!(requests, REQUESTS as f64, "{m:#}");
    assert_eq!(
        values(&m, "status_2xx").iter().sum::<f64>(),
        REQUESTS as f64
    );
    assert_eq!(values(&m, "status_5xx").iter().sum::<f64>(), 0.0);
    assert!(values(&m, "latency")
        .iter()
        .all(|l| *l > 0.0 && *l < 5000.0));
    // The statistics are the points'.
    for name in ["cpu", "memory", "requests"] {
        let v = values(&m, name);
        let s = &m[name]["statistics"];
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        let max = v.iter().cloned().fold(f64::MIN, f64::max);
        let avg = v.iter().sum::<f64>() / v.len() as f64;
        assert_eq!(s["min"].as_f64().unwrap(), min, "{name}");
        assert_eq!(s["max"].as_f64().unwrap(), max, "{name}");
        assert!((s["avg"].as_f64().unwrap() - avg).abs() < 1e-6, "{name}");
        assert!(s["p99"].as_f64().unwrap() <= max, "{name}");
    }
    // A coarser resolution sums requests and averages the rest.
    let per_min = p.json(&[
        "metrics",
        "--app",
        "gauge",
        "--since",
        "10m",
        "--resolution",
        "1m",
        "--metric",
        "requests,cpu",
    ]);
    assert_eq!(per_min["resolution_seconds"], 60);
    assert_eq!(
        values(&per_min, "requests").iter().sum::<f64>(),
        REQUESTS as f64
    );
    assert!(per_min.get("memory").is_none());
    // The table.
    let table = p
        .ok(&["metrics", "--app", "gauge", "--since", "10m"])
        .stdout;
    assert!(
        table.contains("METRIC") && table.lines().any(|l| l.starts_with("cpu ")),
        "{table}"
    );
    // Bad parameters are 400s naming the field.
    let bad = p
        .fails(&["metrics", "--app", "gauge", "--resolution", "2m"])
        .stderr;
    assert!(bad.contains("resolution"), "{bad}");
    // The node's usage is measured.
    let nodes = p.json(&["nodes", "list"]);
    let usage = &nodes["data"][0]["usage"];
    assert!(usage["disk_percent"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(usage["memory_percent"].as_f64().unwrap() > 0.0, "{usage}");
    // Prometheus.
    let prom = reqwest::blocking::get(format!("{}/metrics", p.url()))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        prom.lines()
            .any(|l| l.starts_with("shellwego_app_memory_bytes{") && l.contains("app=\"gauge\"")),
        "{prom}"
    );
    assert!(prom.trim_end().ends_with("# EOF"));
}
