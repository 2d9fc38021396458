//! `shellwego apps scale --auto` against a real `shellwego up --runtime
//! process`: a CPU-bound app goes from 1 to 3 replicas under load and back
//! to 1 when the load stops, never outside its bounds, each step an
//! `app.scaled` event with the CPU behind it.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_testkit::fixtures::tar_gz;

use crate::apps_cli::start;
use crate::support::Cli;

/// Burns CPU while the file `$BURN_FILE` exists (every instance reads the
/// same host file: the process driver runs the app's directory on the
/// host); answers every GET with `ok`.
const BURNER: &str = r#"
import http.server, os, threading, time
flag = os.environ["BURN_FILE"]
def burn():
    while True:
        if os.path.exists(flag):
            t = time.time()
            while time.time() - t < 0.5:
                pass
        else:
            time.sleep(0.2)
threading.Thread(target=burn, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn desired(p: &shellwego_testkit::platform::Platform) -> i64 {
    p.json(&["apps", "get", "burner"])["replicas"]["desired"]
        .as_i64()
        .unwrap()
}

#[test]
fn a_cpu_bound_app_scales_out_under_load_and_back_in_after() {
    let p = start();
    let src = p.dir().join("burner-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Procfile"), "web: exec python3 burner.py\n").unwrap();
    std::fs::write(src.join("burner.py"), BURNER).unwrap();
    let archive = p.dir().join("burner.tgz");
    std::fs::write(&archive, tar_gz(&src).unwrap()).unwrap();
    let flag = p.dir().join("burn");
    p.ok(&[
        "apps",
        "create",
        "burner",
        "--upload",
        archive.to_str().unwrap(),
        "--cpu",
        "0.2",
        "--memory",
        "128m",
        "--env",
        &format!("BURN_FILE={}", flag.display()),
        "--health-path",
        "/health",
        "--wait",
    ]);
    let out = p
        .ok(&[
            "apps",
            "scale",
            "burner",
            "--auto",
            "--min",
            "1",
            "--max",
            "3",
            "--cpu-threshold",
            "50",
            "--scale-out-cooldown",
            "10s",
            "--scale-in-cooldown",
            "20s",
        ])
        .stdout;
    assert!(out.contains("between 1 and 3"), "{out}");
    // Idle: it stays at 1.
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(desired(&p), 1);

    // Load: out to 3, never beyond.
    std::fs::write(&flag, "").unwrap();
    let t = Instant::now();
    loop {
        let d = desired(&p);
        assert!((1..=3).contains(&d), "{d} replicas");
        if d == 3 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "not at 3 replicas after 4 minutes of load: {d}\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let scaled = p.json(&["events", "list", "--type", "app.scaled"]);
    let auto: Vec<&Value> = scaled["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["metadata"]["strategy"] == "auto" && e["actor"]["type"] == "system")
        .collect();
    assert!(!auto.is_empty(), "{scaled:#}");
    for e in &auto {
        let d = &e["metadata"];
        assert!(d["to"].as_i64() > d["from"].as_i64(), "{e}");
        assert!(d["cpu_percent"].as_f64().unwrap() > 50.0, "{e}");
        assert_eq!(d["cpu_threshold"], 50);
        assert_eq!(d["window_seconds"], 60);
    }

    // The load stops: back in to 1.
    std::fs::remove_file(&flag).unwrap();
    let t = Instant::now();
    loop {
        let d = desired(&p);
        assert!((1..=3).contains(&d), "{d} replicas");
        if d == 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "not back at 1 replica 4 minutes after the load: {d}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let scaled = p.json(&["events", "list", "--type", "app.scaled"]);
    assert!(
        scaled["data"].as_array().unwrap().iter().any(|e| {
            e["metadata"]["strategy"] == "auto"
                && e["metadata"]["to"].as_i64() < e["metadata"]["from"].as_i64()
                && e["metadata"]["cpu_percent"].as_f64().unwrap() < 25.0
        }),
        "{scaled:#}"
    );
    // Manual scaling ends autoscaling.
    p.ok(&["apps", "scale", "burner", "2"]);
    std::fs::write(&flag, "").unwrap();
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(desired(&p), 2);
    std::fs::remove_file(&flag).unwrap();
}
