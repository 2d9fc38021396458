//! `shellwego exec` of the real binary against a real `shellwego up
//! --runtime process`: the command runs in the instance (its environment,
//! its directory), stdin reaches it, its exit code is `shellwego`'s, and a
//! command past its timeout is killed with what it started.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use shellwego_testkit::fixtures::hello_tarball;
use shellwego_testkit::platform::{run, run_with_stdin};

use crate::apps_cli::start;
use crate::support::Cli;

#[test]
fn exec_runs_in_the_instance_passes_stdin_and_exit_codes_and_kills_on_timeout() {
    let p = start();
    let archive = hello_tarball(p.dir());
    p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive.to_str().unwrap(),
        "--health-path",
        "/health",
        "--wait",
    ]);
    let a = p.json(&["apps", "get", "hello"]);
    let port = a["instances"][0]["port"].as_u64().unwrap();
    let inst = a["instances"][0]["id"].as_str().unwrap().to_string();

    // Its environment and its directory (the app's files).
    let o = p.ok(&[
        "exec",
        "--app",
        "hello",
        "--",
        "/bin/sh",
        "-c",
        "echo $PORT; ls",
    ]);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], port.to_string(), "{}", o.stdout);
    assert!(lines.contains(&"server.py"), "{}", o.stdout);

    // stdin, the exit code, stderr, a chosen instance.
    let o = run_with_stdin(
        &mut p.cli(&[
            "exec",
            "--app",
            "hello",
            "--instance",
            &inst,
            "--stdin",
            "-",
            "--",
            "/bin/sh",
            "-c",
            "read x; echo got $x; echo oops >&2; exit 7",
        ]),
        "hello\n",
    );
    assert_eq!(o.code, Some(7), "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "got hello\n");
    assert!(o.stderr.contains("oops"), "{}", o.stderr);

    // Past its timeout: killed, with what it started in the background.
    let t0 = Instant::now();
    let o = run(&mut p.cli(&[
        "exec",
        "--app",
        "hello",
        "--timeout",
        "1s",
        "--",
        "/bin/sh",
        "-c",
        "sleep 300 & echo $! > bg.pid; sleep 300",
    ]));
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("ran past --timeout"), "{}", o.stderr);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let bg = p
        .ok(&["exec", "--app", "hello", "--", "/bin/cat", "bg.pid"])
        .stdout;
    let bg = bg.trim();
    assert!(
        !std::path::Path::new(&format!("/proc/{bg}")).exists()
            || std::fs::read_to_string(format!("/proc/{bg}/stat")).is_ok_and(|s| s.contains(") Z")),
        "the background child {bg} outlived the timeout"
    );

    // JSON: the API's body.
    let out = p
        .ok(&[
            "exec",
            "-o",
            "json",
            "--app",
            "hello",
            "--",
            "/bin/echo",
            "hi",
        ])
        .stdout;
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["stdout"], "hi\n");
    assert_eq!(j["exit_code"], 0);
    // Recorded.
    let ev = p.json(&["events", "list", "--type", "app.exec"]);
    assert!(ev["data"].as_array().unwrap().len() >= 4, "{ev:#}");
}

/// An interactive session over WebSocket with a terminal: `sh` prompts,
/// a typed command's output comes back, a resize reaches the terminal,
/// `exit 3` ends it with its code; `shellwego ssh` with stdin from a pipe
/// runs what it is given; a viewer's token may not open one.
#[test]
fn interactive_sessions_run_a_shell_in_a_terminal() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let p = start();
    let archive = hello_tarball(p.dir());
    p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive.to_str().unwrap(),
        "--health-path",
        "/health",
        "--wait",
    ]);
    let app = p.json(&["apps", "get", "hello"]);
    let id = app["id"].as_str().unwrap().to_string();
    let port = app["instances"][0]["port"].as_u64().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!(
        "ws://127.0.0.1:{}/v1/apps/{id}/exec/ws?command=/bin/sh&command=-i&tty=true&cols=100&rows=30",
        p.api_port()
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", p.token()).parse().unwrap(),
    );
    let (text, exit) = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut seen = String::new();
        let mut exit = None;
        let mut step = 0;
        let t = Instant::now();
        while exit.is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "session output: {seen}"
            );
            let next = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
            match next {
                Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["type"], "exit", "{v}");
                    exit = Some(v["exit_code"].clone());
                }
                Ok(Some(Ok(_))) => {}
                Ok(None) | Ok(Some(Err(_))) => break,
                Err(_) => {}
            }
            // Type once the shell is there, one command at a time.
            if step == 0 && !seen.is_empty() {
                ws.send(Message::Binary(
                    b"echo $((6*7))-marker $PORT\n".to_vec().into(),
                ))
                .await
                .unwrap();
                step = 1;
            } else if step == 1 && seen.contains("42-marker") {
                ws.send(Message::Text(
                    r#"{"type":"resize","cols":132,"rows":43}"#.into(),
                ))
                .await
                .unwrap();
                ws.send(Message::Text(
                    r#"{"type":"stdin","data":"stty size; tty\n"}"#.into(),
                ))
                .await
                .unwrap();
                step = 2;
            } else if step == 2 && seen.contains("43 132") {
                ws.send(Message::Binary(b"exit 3\n".to_vec().into()))
                    .await
                    .unwrap();
                step = 3;
            }
        }
        (seen, exit)
    });
    assert!(text.contains(&format!("42-marker {port}")), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert_eq!(exit, Some(serde_json::json!(3)), "{text}");

    // `shellwego ssh` with stdin from a pipe: no terminal, the input's end
    // ends the shell.
    let o = run_with_stdin(
        &mut p.cli(&["ssh", "--app", "hello"]),
        "echo from-ssh $PORT\nexit 5\n",
    );
    assert_eq!(o.code, Some(5), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains(&format!("from-ssh {port}")),
        "{}",
        o.stdout
    );
    // Recorded, as interactive.
    let ev = p.json(&["events", "list", "--type", "app.exec"]);
    assert!(
        ev["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["metadata"]["interactive"] == true && e["metadata"]["tty"] == true),
        "{ev:#}"
    );
    // Not a WebSocket: a 400 that says what to do.
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/v1/apps/{id}/exec/ws", p.url()))
        .bearer_auth(p.token())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
}
