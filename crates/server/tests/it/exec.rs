//! `POST /v1/apps/{id}/exec` through the agent channel: the request becomes
//! a task the node's sync hands out once, the agent's answer is the
//! response. (The real agent running commands: the agent's `exec` tests and
//! the CLI's `exec_cli`.)

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, TestServer};

async fn exec_is_a_task_for_the_instances_node(s: TestServer) {
    let agent = s.fake_agent("exec-node", 4, 8 << 30).await;
    let app = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "shell", "image": "nginx:alpine", "replicas": 1}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(agent.report_healthy().await, 1);
    let inst = s
        .wait_for(&format!("/v1/apps/{app}"), "a healthy instance", |a| {
            a["replicas"]["healthy"] == 1
        })
        .await["instances"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (base, token, app2) = (s.base.clone(), s.token.clone(), app.clone());
    let call = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/apps/{app2}/exec"))
            .bearer_auth(token)
            .json(&json!({"command": ["/bin/sh", "-c", "cat; echo $PORT"], "stdin": "in\n", "timeout": "5s"}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    // The node's next sync carries it, once.
    let t = Instant::now();
    let task = loop {
        let d = agent.desired().await;
        if let Some(t) = d.tasks.first() {
            break t.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no task came down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(task.kind, "exec");
    assert_eq!(task.instance_id, inst);
    assert_eq!(task.command, ["/bin/sh", "-c", "cat; echo $PORT"]);
    assert_eq!(task.stdin, "in\n");
    assert_eq!(task.timeout_ms, 5000);
    // An agent that has it does not get it again; one that dropped the
    // answer (does not say it has it) does.
    let mut has = shellwego_testkit::agent::ask();
    has.tasks = vec![task.id.clone()];
    assert!(agent.sync(&has).await.tasks.is_empty(), "the agent has it");
    assert_eq!(
        agent.desired().await.tasks,
        std::slice::from_ref(&task),
        "handed out again"
    );
    // The agent's answer is the response.
    let http = reqwest::Client::new();
    let answer = json!({"exit_code": 0, "stdout": "in\n8080\n", "stderr": "", "truncated": false,
                        "timed_out": false, "execution_time_ms": 12});
    let r = http
        .post(s.url(&format!("/v1/agent/tasks/{}/result", task.id)))
        .bearer_auth(&agent.credential)
        .json(&answer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (st, body) = call.await.unwrap();
    assert_eq!(st, 200, "{body:#}");
    assert_eq!(body["exit_code"], 0);
    assert_eq!(body["stdout"], "in\n8080\n");
    assert_eq!(body["execution_time_ms"], 12);
    assert_eq!(body["instance_id"], inst.as_str());
    // Answered once; the task is gone.
    let r = http
        .post(s.url(&format!("/v1/agent/tasks/{}/result", task.id)))
        .bearer_auth(&agent.credential)
        .json(&answer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Recorded with the command line (not stdin).
    let (_, ev) = s.get("/v1/events?filter[type]=app.exec").await;
    assert_eq!(
        ev["data"][0]["metadata"]["command"],
        json!(["/bin/sh", "-c", "cat; echo $PORT"])
    );
    assert!(!ev.to_string().contains("in\\n"), "{ev:#}");

    // An agent that cannot run it: a 409 with its reason.
    let (base, token, app2) = (s.base.clone(), s.token.clone(), app.clone());
    let call = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/apps/{app2}/exec"))
            .bearer_auth(token)
            .json(&json!({"command": ["true"], "instance_id": inst}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    let task = loop {
        if let Some(t) = agent.desired().await.tasks.first() {
            break t.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    http.post(s.url(&format!("/v1/agent/tasks/{}/result", task.id)))
        .bearer_auth(&agent.credential)
        .json(&json!({"exit_code": null, "execution_time_ms": 0, "error": "the microvm driver cannot run a command in an instance yet"}))
        .send()
        .await
        .unwrap();
    let (st, body) = call.await.unwrap();
    assert_eq!(st, 409, "{body:#}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("cannot run a command"),
        "{body:#}"
    );

    // Refusals.
    let exec = |body: Value| {
        let s = &s;
        let app = app.clone();
        async move {
            s.call(
                Method::POST,
                &format!("/v1/apps/{app}/exec"),
                Some(&s.token),
                Some(body),
            )
            .await
        }
    };
    let p = problem(exec(json!({"command": []})).await, 400).await;
    assert_eq!(fields(&p), ["command"]);
    let p = problem(exec(json!({"command": ["sh"], "tty": true})).await, 400).await;
    assert_eq!(fields(&p), ["tty"]);
    let p = problem(exec(json!({"command": ["sh"], "timeout": "2h"})).await, 400).await;
    assert_eq!(fields(&p), ["timeout"]);
    problem(
        exec(json!({"command": ["sh"], "instance_id": "inst_nope"})).await,
        404,
    )
    .await;
    let org = s.admin_org().await;
    let (_, viewer) = s
        .member_with_role(&org, "viewer", "viewer@example.com")
        .await;
    let r = s
        .call(
            Method::POST,
            &format!("/v1/apps/{app}/exec"),
            Some(&viewer),
            Some(json!({"command": ["sh"]})),
        )
        .await;
    assert_eq!(r.status(), 403, "a viewer cannot exec");
    // Nor open an interactive session; but may read the app's logs.
    let r = s
        .call(
            Method::GET,
            &format!("/v1/apps/{app}/exec/ws?command=sh&tty=true"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(r.status(), 403, "a viewer cannot open a session");
    let r = s
        .call(
            Method::GET,
            &format!("/v1/apps/{app}/logs?tail=0"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(r.status(), 200, "a viewer reads logs");
    let r = s
        .call(
            Method::GET,
            &format!("/v1/apps/{app}/exec/ws"),
            Some(&s.token),
            None,
        )
        .await;
    let p = problem(r, 400).await;
    assert_eq!(fields(&p), ["upgrade"]);
    // An app with no running instance: 409.
    let idle = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "idle", "image": "nginx:alpine", "replicas": 0}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .call(
            Method::POST,
            &format!("/v1/apps/{idle}/exec"),
            Some(&s.token),
            Some(json!({"command": ["sh"]})),
        )
        .await;
    assert_eq!(r.status(), 409);
}

both_backends!(exec_is_a_task_for_the_instances_node);
