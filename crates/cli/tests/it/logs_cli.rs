//! `shellwego logs` of the real binary against a real `shellwego up
//! --runtime process`: an app's lines captured by the agent, merged across
//! its instances in time order, filtered, followed live, and kept after
//! its instances stop.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_testkit::fixtures::tar_gz;

use crate::apps_cli::start;
use crate::support::Cli;

/// Lines each instance prints at start; the first instance to claim the
/// `EXTRA` directory prints one more: 10 000 in all.
const LINES: usize = 3333;
const TOTAL: usize = 10_000;

/// An app that prints `LINES` (or `LINES + 1`) numbered lines at start — every 100th an
/// `[ERROR]` on stdout, every other 10th a `WARN` on stderr, every other
/// 7th a JSON `debug` line, the rest plain (`info`) — then serves
/// `/health` (quietly) and `/say?<text>`, which prints `<text>`.
const CHATTY: &str = r#"
import http.server, json, os, sys
INST = os.environ["SHELLWEGO_INSTANCE_ID"]
n = int(os.environ["LINES"])
try:
    os.mkdir(os.environ["EXTRA"])
    n += 1
except FileExistsError:
    pass
for i in range(n):
    if i % 100 == 0:
        print(f"[ERROR] {INST} seq={i}; boom")
    elif i % 10 == 0:
        print(f"WARN {INST} seq={i}; slow", file=sys.stderr)
    elif i % 7 == 0:
        print(json.dumps({"level": "debug", "msg": f"{INST} seq={i};"}))
    else:
        print(f"{INST} seq={i}; plain")
sys.stdout.flush(); sys.stderr.flush()

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

class S(http.server.ThreadingHTTPServer):
    def handle_error(self, *a):
        pass

S(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn entries(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn seq_lines(v: &[Value]) -> Vec<&Value> {
    v.iter()
        .filter(|e| e["message"].as_str().unwrap().contains("seq="))
        .collect()
}

#[test]
fn lines_are_merged_filtered_followed_and_kept_after_a_stop() {
    let p = start();
    let src = p.dir().join("chatty-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Procfile"), "web: exec python3 chatty.py\n").unwrap();
    std::fs::write(src.join("chatty.py"), CHATTY).unwrap();
    let archive = p.dir().join("chatty.tgz");
    std::fs::write(&archive, tar_gz(&src).unwrap()).unwrap();
    p.ok(&[
        "apps",
        "create",
        "chatty",
        "--upload",
        archive.to_str().unwrap(),
        "--replicas",
        "3",
        "--env",
        &format!("LINES={LINES}"),
        "--env",
        &format!("EXTRA={}", p.dir().join("extra-line").display()),
        "--health-path",
        "/health",
        "--wait",
    ]);
    let app = p.json(&["apps", "get", "chatty"]);
    let insts: Vec<(String, u64)> = app["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(insts.len(), 3, "{app:#}");

    // Every line of the three instances, in time order.
    let t = Instant::now();
    let all = loop {
        let out = p
            .ok(&["logs", "--app", "chatty", "--tail", "10000", "-o", "json"])
            .stdout;
        let all = entries(&out);
        if seq_lines(&all).len() == TOTAL {
            break all;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} of {TOTAL} lines after a minute",
            seq_lines(&all).len(),
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(all.len(), TOTAL);
    let stamps: Vec<&str> = all
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "not in time order");
    // Each stream of each instance in the order it was written (stdout
    // and stderr are separate pipes: their order to each other is the
    // writer's buffering's), and every line there.
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for e in seq_lines(&all) {
        let inst = e["instance_id"].as_str().unwrap();
        let m = e["message"].as_str().unwrap();
        let seq: usize = m
            .split("seq=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let before = last.insert((inst, e["stream"].as_str().unwrap()), seq);
        assert!(
            before.is_none_or(|b| b < seq),
            "{inst}: {m} after seq {before:?}"
        );
        *count.entry(inst).or_default() += 1;
        let level = e["level"].as_str().unwrap();
        let expect = if seq.is_multiple_of(100) {
            "error"
        } else if seq.is_multiple_of(10) {
            "warn"
        } else if seq.is_multiple_of(7) {
            "debug"
        } else {
            "info"
        };
        assert_eq!(level, expect, "{e}");
        assert_eq!(
            e["stream"],
            if expect == "warn" { "stderr" } else { "stdout" },
            "{e}"
        );
    }
    let mut per: Vec<usize> = count.values().copied().collect();
    per.sort();
    assert_eq!(per, [LINES, LINES, LINES + 1], "{count:?}");
    let count: HashMap<String, usize> =
        count.into_iter().map(|(i, n)| (i.to_string(), n)).collect();
    // The text form is the spec's.
    let text = p
        .ok(&[
            "logs",
            "--app",
            "chatty",
            "--tail",
            "1",
            "--search",
            "seq=3331;",
        ])
        .stdout;
    assert!(
        text.starts_with('[')
            && text.contains("] [INFO] [inst_")
            && text.contains("seq=3331; plain"),
        "{text}"
    );

    // Filters.
    let errors = entries(
        &p.ok(&[
            "logs", "--app", "chatty", "--tail", "10000", "--level", "error", "-o", "json",
        ])
        .stdout,
    );
    let per_inst_errors = LINES.div_ceil(100);
    assert_eq!(errors.len(), 3 * per_inst_errors, "{errors:?}");
    assert!(errors.iter().all(|e| e["level"] == "error"));
    let warn_up = entries(
        &p.ok(&[
            "logs", "--app", "chatty", "--tail", "10000", "--level", "warn", "-o", "json",
        ])
        .stdout,
    );
    assert_eq!(warn_up.len(), 3 * LINES.div_ceil(10));
    let found = entries(
        &p.ok(&[
            "logs",
            "--app",
            "chatty",
            "--search",
            "SEQ=1234;",
            "-o",
            "json",
        ])
        .stdout,
    );
    assert_eq!(found.len(), 3, "{found:?}");
    let (one, _) = &insts[1];
    let mine = entries(
        &p.ok(&[
            "logs",
            "--app",
            "chatty",
            "--tail",
            "10000",
            "--instance",
            one,
            "-o",
            "json",
        ])
        .stdout,
    );
    assert_eq!(seq_lines(&mine).len(), count[one.as_str()]);
    assert!(mine.iter().all(|e| e["instance_id"] == one.as_str()));
    // since: from the 5000th line on.
    let cut = all[all.len() - 2000]["timestamp"].as_str().unwrap();
    let since = entries(
        &p.ok(&[
            "logs", "--app", "chatty", "--tail", "10000", "--since", cut, "-o", "json",
        ])
        .stdout,
    );
    assert_eq!(since.len(), 2000, "since {cut}");
    assert_eq!(since[0]["timestamp"], cut);
    // The default is the last 100; a bad parameter is a 400 naming it.
    assert_eq!(
        p.ok(&["logs", "--app", "chatty"]).stdout.lines().count(),
        100
    );
    let bad = p
        .fails(&["logs", "--app", "chatty", "--since", "yesterday"])
        .stderr;
    assert!(bad.contains("since"), "{bad}");

    // Follow: a line printed now reaches the follower within a second
    // (the best of three tries), and the follower leaves nothing behind.
    let mut follower = p
        .cli(&[
            "logs", "--app", "chatty", "--follow", "--tail", "0", "--search", "marker-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    // The follow is set up once a line sent now comes through.
    let port = insts[0].1;
    let say = |text: &str| {
        let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}/say?{text}")).unwrap();
        assert!(r.status().is_success());
    };
    let t = Instant::now();
    'ready: loop {
        say("marker-warmup");
        let until = Instant::now() + Duration::from_secs(2);
        while let Ok(l) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if l.contains("marker-warmup") {
                break 'ready;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the follow never delivered"
        );
    }
    let mut best = Duration::MAX;
    for k in 0..3 {
        let marker = format!("marker-{k}-{}", std::process::id());
        let sent = Instant::now();
        say(&marker);
        loop {
            let l = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the followed line did not come");
            if l.contains(&marker) {
                assert!(l.contains(&insts[0].0), "{l}");
                best = best.min(sent.elapsed());
                break;
            }
        }
    }
    assert!(
        best < Duration::from_secs(1),
        "a followed line took {best:?}"
    );
    assert_eq!(open_follows(&p), 1);
    follower.kill().unwrap();
    let _ = follower.wait();
    let t = Instant::now();
    while open_follows(&p) != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the follow outlived its client"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The same over WebSocket: a line printed now comes as a message, and
    // closing the socket ends the follow.
    {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!(
            "ws://127.0.0.1:{}/v1/apps/{}/logs/stream?tail=0&search=wsmark",
            p.api_port(),
            app["id"].as_str().unwrap()
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", p.token()).parse().unwrap(),
        );
        let (mut ws, got) = rt.block_on(async {
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let t = Instant::now();
            let got = 'got: loop {
                let (port, text) = (port, format!("wsmark-{}", t.elapsed().as_millis()));
                tokio::task::spawn_blocking(move || {
                    reqwest::blocking::get(format!("http://127.0.0.1:{port}/say?{text}")).unwrap();
                })
                .await
                .unwrap();
                let until = tokio::time::Instant::now() + Duration::from_secs(2);
                while let Ok(Some(m)) = tokio::time::timeout_at(until, ws.next()).await {
                    let m = m.unwrap();
                    if let Ok(text) = m.to_text() {
                        if text.contains("wsmark-") {
                            break 'got text.to_string();
                        }
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "nothing came over the WebSocket"
                );
            };
            (ws, got)
        });
        let e: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(e["instance_id"], insts[0].0.as_str());
        assert_eq!(open_follows(&p), 1);
        rt.block_on(async {
            ws.close(None).await.unwrap();
            let _ = ws.flush().await;
        });
        let t = Instant::now();
        while open_follows(&p) != 0 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the WebSocket's follow outlived it"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Logs of stopped instances stay.
    p.ok(&["apps", "scale", "chatty", "1", "--wait"]);
    let t = Instant::now();
    let left = loop {
        let a = p.json(&["apps", "get", "chatty"]);
        let ids: Vec<String> = a["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() == 1 {
            break ids;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{a:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let gone: Vec<String> = insts
        .iter()
        .map(|(i, _)| i.clone())
        .filter(|i| !left.contains(i))
        .collect();
    assert!(!gone.is_empty());
    let kept = entries(
        &p.ok(&[
            "logs",
            "--app",
            "chatty",
            "--tail",
            "10000",
            "--instance",
            &gone[0],
            "-o",
            "json",
        ])
        .stdout,
    );
    assert_eq!(seq_lines(&kept).len(), count[gone[0].as_str()]);
}

/// The `shellwego_log_follows_open` gauge of the control plane's /metrics.
fn open_follows(p: &shellwego_testkit::platform::Platform) -> i64 {
    let text = reqwest::blocking::get(format!("{}/metrics", p.url()))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("shellwego_log_follows_open "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(-1)
}
