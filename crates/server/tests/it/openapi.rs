//! The OpenAPI documents (the public /v1 one and the agent protocol's):
//! valid 3.1, checked in and current, and together in agreement with the
//! router.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::Value;

use shellwego_testkit::server::TestServer;
use shellwego_testkit::Backend;

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/platform-api.json")
}

fn checked_in_agent_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/agent-api.json")
}

#[tokio::test]
async fn served_document_is_openapi_3_1_and_matches_the_checked_in_copy() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let r = s.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(r.status(), 200);
    let served = r.text().await.unwrap();
    let spec = oas3::from_json(&served).expect("the document parses as OpenAPI 3.1");
    assert!(
        spec.openapi.starts_with("3.1"),
        "openapi = {}",
        spec.openapi
    );
    assert!(spec
        .paths
        .as_ref()
        .is_some_and(|p| p.contains_key("/v1/user")));

    let path = checked_in_path();
    if std::env::var("SHELLWEGO_UPDATE_OPENAPI").is_ok() {
        std::fs::write(&path, &served).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == served,
        "openapi/platform-api.json is stale: run `SHELLWEGO_UPDATE_OPENAPI=1 cargo test -p shellwego-server openapi` \
         (or `shellwego openapi > openapi/platform-api.json`) and commit it"
    );
    // The agent protocol is not part of the public contract.
    let doc: Value = serde_json::from_str(&served).unwrap();
    for path in doc["paths"].as_object().unwrap().keys() {
        assert!(
            !path.starts_with("/v1/agent/"),
            "{path} is in the /v1 document"
        );
    }
    for schema in [
        "AgentSync",
        "AgentJoin",
        "DesiredInstance",
        "InstanceReport",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_none(),
            "{schema} is in the /v1 document"
        );
    }
}

/// The agent protocol has a document of its own, versioned by the
/// protocol, checked in beside the public one.
#[test]
fn agent_document_is_openapi_3_1_and_matches_the_checked_in_copy() {
    let generated = shellwego_server::openapi::agent_document_json();
    let spec = oas3::from_json(&generated).expect("the document parses as OpenAPI 3.1");
    assert!(
        spec.openapi.starts_with("3.1"),
        "openapi = {}",
        spec.openapi
    );
    assert_eq!(
        spec.info.version,
        shellwego_api::agent::PROTOCOL_VERSION.to_string()
    );
    let paths = spec.paths.as_ref().unwrap();
    for path in [
        "/v1/agent/join",
        "/v1/agent/sync",
        "/v1/agent/resolve",
        "/v1/agent/uploads/{upload_id}",
        "/v1/agent/tasks/{task_id}/result",
        "/v1/agent/logs",
        "/v1/agent/exec/{session_id}/input",
        "/v1/agent/exec/{session_id}/output",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} is not in the agent document"
        );
    }
    assert_eq!(paths.len(), 8, "only the agent channel's routes");

    let path = checked_in_agent_path();
    if std::env::var("SHELLWEGO_UPDATE_OPENAPI").is_ok() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "openapi/agent-api.json is stale: run `SHELLWEGO_UPDATE_OPENAPI=1 cargo test -p shellwego-server openapi` \
         (or `shellwego openapi --agent > openapi/agent-api.json`) and commit it"
    );
}

/// Every (method, path) of both documents (the public one, then the agent
/// protocol's), with path parameters filled in: every route of the server.
pub fn operations() -> Vec<(Method, String, String)> {
    let mut ops = public_operations();
    ops.extend(operations_of(
        &shellwego_server::openapi::agent_document_json(),
    ));
    ops
}

/// Every (method, path) of the public /v1 document.
pub fn public_operations() -> Vec<(Method, String, String)> {
    operations_of(&shellwego_server::openapi::document_json())
}

/// Both documents, parsed: the public one, then the agent protocol's.
fn documents() -> [Value; 2] {
    [
        serde_json::from_str(&shellwego_server::openapi::document_json()).unwrap(),
        serde_json::from_str(&shellwego_server::openapi::agent_document_json()).unwrap(),
    ]
}

fn operations_of(json: &str) -> Vec<(Method, String, String)> {
    let doc: Value = serde_json::from_str(json).unwrap();
    let mut out = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let concrete = path
                .split('/')
                .map(|seg| {
                    if seg.starts_with('{') {
                        "x_unknown"
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            out.push((m, path.clone(), concrete));
        }
    }
    out
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_exists() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let ops = operations();
    assert!(ops.len() >= 11);
    for (method, template, path) in &ops {
        // The event stream ends only when asked to.
        let path = if template == "/v1/events/stream" {
            format!("{path}?max_seconds=1")
        } else {
            path.clone()
        };
        let r = s.call(method.clone(), &path, Some(&s.token), None).await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_ne!(
            status, 405,
            "{method} {template} is documented but not routed"
        );
        assert!(
            !(status == 404 && body.contains("There is no route")),
            "{method} {template} is documented but not routed"
        );
    }
    // And the other way: every route template the server matched while
    // serving those requests is in the document.
    let metrics = s
        .call(Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();
    let documented: Vec<&String> = ops.iter().map(|(_, t, _)| t).collect();
    let mut matched = 0;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("shellwego_http_requests_total{"))
    {
        let route = line
            .split("route=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        if route != "unmatched" {
            matched += 1;
            assert!(
                documented.iter().any(|d| *d == route),
                "route {route} is served but not documented"
            );
        }
    }
    assert!(matched >= ops.len() - 1);
}

#[tokio::test]
async fn docs_page_lists_the_endpoints() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let r = s.call(Method::GET, "/docs", None, None).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    for (_, template, _) in public_operations() {
        assert!(
            html.contains(&format!("<code>{template}</code>")),
            "{template} missing from /docs"
        );
    }
}

/// The served document, parsed.
async fn served(s: &TestServer) -> Value {
    let r = s.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `op`'s response for `status`, with a `$ref` into `components.responses`
/// resolved.
fn response<'a>(doc: &'a Value, op: &'a Value, status: u16) -> Option<&'a Value> {
    let r = op.get("responses")?.get(status.to_string())?;
    match r.get("$ref").and_then(Value::as_str) {
        Some(reference) => doc.pointer(reference.strip_prefix('#')?),
        None => Some(r),
    }
}

fn is_problem(r: &Value) -> bool {
    r.pointer("/content/application~1problem+json/schema/$ref")
        .and_then(Value::as_str)
        == Some("#/components/schemas/Problem")
}

/// Issue 11, item 9: every operation documents the problem responses it
/// can answer, as `application/problem+json` with the Problem schema. What
/// each needs, by what it is:
/// - every operation: 500;
/// - every /v1 operation: 503 (the store, which authentication reads);
/// - behind the /v1 gate (every /v1 route but the agent's node-credential
///   ones): 401, 403 and 429; secured ones: 401;
/// - a path parameter: 400 and 404; query parameters or a body: 400;
/// - a body: 408 (slow body) and 413;
/// - operations whose service can conflict: 409; invitation accept: 410.
#[tokio::test]
async fn every_operation_documents_the_problem_responses_it_can_answer() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let doc = served(&s).await;
    let checked = check_problem_responses(&doc);
    assert!(checked > 300, "only {checked} responses checked");
    // A response an operation describes itself is kept.
    let login_401 = &doc["paths"]["/v1/auth/token"]["post"]["responses"]["401"];
    assert!(login_401.get("$ref").is_some() || is_problem(login_401));
    // The agent protocol's document follows the same rules.
    let [_, agent_doc] = documents();
    let checked = check_problem_responses(&agent_doc);
    assert!(checked >= 20, "only {checked} responses checked");
}

/// Check `doc`'s operations as above; how many responses were checked.
fn check_problem_responses(doc: &Value) -> usize {
    const CONFLICTS: [&str; 14] = [
        "app_create",
        "webhook_test",
        "delivery_redeliver",
        "token_rotate",
        "mfa_enroll",
        "mfa_confirm",
        "mfa_disable",
        "node_update",
        "deployment_rollback",
        "deployment_promote",
        "org_create",
        "member_update",
        "member_delete",
        "invitation_accept",
    ];
    let mut missing = vec![];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let has = |place: &str| params.iter().any(|p| p["in"] == place);
            let body = op.get("requestBody").is_some();
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let v1 = path.starts_with("/v1/");
            let gated = v1
                && !["/v1/agent/sync", "/v1/agent/resolve", "/v1/agent/logs"]
                    .contains(&path.as_str())
                && !path.starts_with("/v1/agent/uploads/")
                && !path.starts_with("/v1/agent/tasks/")
                && !path.starts_with("/v1/agent/exec/");
            let mut needed = vec![500];
            if v1 {
                needed.push(503);
            }
            if gated {
                needed.extend([401, 403, 429]);
            }
            if secured {
                needed.push(401);
            }
            if has("path") {
                needed.extend([400, 404]);
            }
            // A header the operation reads (the agent protocol's version).
            if has("query") || has("header") || body {
                needed.push(400);
            }
            if body {
                needed.extend([408, 413]);
            }
            if CONFLICTS.contains(&id) {
                needed.push(409);
            }
            if id == "invitation_accept" {
                needed.push(410);
            }
            for status in needed {
                checked += 1;
                match response(doc, op, status) {
                    Some(r) if is_problem(r) => {}
                    _ => missing.push(format!("{} {path}: {status}", method.to_uppercase())),
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "operations missing problem responses:\n{}",
        missing.join("\n")
    );
    // The shared responses are defined once, with the headers that go with them.
    let shared = &doc["components"]["responses"];
    for name in [
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "RequestTimeout",
        "Conflict",
        "Gone",
        "PayloadTooLarge",
        "UriTooLong",
        "TooManyRequests",
        "RequestHeaderFieldsTooLarge",
        "InternalError",
        "ServiceUnavailable",
    ] {
        assert!(is_problem(&shared[name]), "components.responses.{name}");
        assert!(
            !shared[name]["description"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "components.responses.{name} has no description"
        );
    }
    assert!(shared["TooManyRequests"]["headers"]
        .get("Retry-After")
        .is_some());
    assert!(shared["Unauthorized"]["headers"]
        .get("WWW-Authenticate")
        .is_some());
    checked
}

/// What the server really answers is documented: every operation, called
/// without a token; with a token that is not valid; with a good one, unknown ids and a malformed body; with a
/// path segment that is not UTF-8 once decoded; and with a body over the
/// 2 MiB limit, answers a status its operation lists, and an error as
/// `application/problem+json` as the document says.
#[tokio::test]
async fn crude_probes_get_documented_answers() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let doc = served(&s).await;
    let [_, agent_doc] = documents();
    // A public route still answers 401 to a token that is not valid, hence
    // the 401 (and, for MFA enforcement, 403) on every gated operation.
    let r = s
        .call(Method::GET, "/v1/openapi.json", Some("pat_notatoken"), None)
        .await;
    assert_eq!(r.status(), 401);
    let big = "a".repeat(3 << 20);
    let mut wrong = vec![];
    let mut probed = 0;
    for (method, template, path) in operations() {
        // An operation of the public document, else of the agent protocol's.
        let (doc, op) = match doc["paths"].get(&template) {
            Some(item) => (&doc, &item[method.as_str().to_lowercase()]),
            None => (
                &agent_doc,
                &agent_doc["paths"][&template][method.as_str().to_lowercase()],
            ),
        };
        let has_body = op.get("requestBody").is_some();
        let not_utf8 = path.replace("x_unknown", "%FF");
        let mut probes: Vec<(&str, Option<&str>, &str, Option<&str>)> = vec![
            ("no token", None, &path, has_body.then_some("{")),
            // Public /v1 routes too answer 401 to a token that is not valid.
            ("bad token", Some("pat_notatoken"), &path, None),
            ("malformed", Some(&s.token), &path, has_body.then_some("{")),
        ];
        // The agent channel refuses a protocol version it does not speak,
        // before anything else. (With a token: anonymous calls share one
        // rate limit per address, which the probes above come close to.)
        if template.starts_with("/v1/agent/") {
            probes.push((
                "agent protocol 2",
                Some(&s.token),
                &path,
                has_body.then_some("{"),
            ));
        }
        if not_utf8 != path {
            probes.push(("not UTF-8", Some(&s.token), &not_utf8, None));
        }
        if has_body {
            probes.push(("3 MiB body", Some(&s.token), &path, Some(&big)));
        }
        for (probe, token, path, body) in probes {
            let mut r = s.http.request(method.clone(), s.url(path));
            if probe == "agent protocol 2" {
                r = r.header(shellwego_api::agent::PROTOCOL_HEADER, "2");
            }
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(b) = body {
                r = r
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let res = r.send().await.unwrap();
            probed += 1;
            let status = res.status().as_u16();
            let content_type = res
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let what = format!("{method} {template} ({probe}): {status}");
            if probe == "agent protocol 2" {
                let text = res.text().await.unwrap_or_default();
                if status != 400 || !text.contains(shellwego_api::agent::PROTOCOL_HEADER) {
                    wrong.push(format!("{what} does not name the protocol header: {text}"));
                }
            }
            match response(doc, op, status) {
                None => wrong.push(format!("{what} is not documented")),
                Some(r) if status >= 400 && !is_problem(r) => {
                    wrong.push(format!("{what} is not documented as a problem"))
                }
                Some(_) if status >= 400 && content_type != "application/problem+json" => {
                    wrong.push(format!("{what} came as {content_type}"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(probed > 150, "{probed}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The event stream of a deployment's log is documented as events (an
/// object of `id`, `event` and `data` each), not as a string: schemathesis
/// checks each event of a `text/event-stream` answer against the schema.
#[tokio::test]
async fn deployment_log_events_match_the_documented_event_schema() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let doc = served(&s).await;
    let op = &doc["paths"]["/v1/deployments/{deployment_id}/logs"]["get"];
    let schema = op
        .pointer("/responses/200/content/text~1event-stream/schema/$ref")
        .and_then(Value::as_str)
        .and_then(|r| doc.pointer(r.strip_prefix('#').unwrap()))
        .expect("the event stream's schema is a component");
    assert_eq!(schema["type"], "object", "{schema:#}");
    assert_eq!(
        schema["required"],
        serde_json::json!(["data"]),
        "{schema:#}"
    );
    let fields = schema["properties"].as_object().unwrap();

    // No replicas: the app's first deployment ends at once, and so does
    // following its log.
    let r = s
        .call(
            Method::POST,
            "/v1/apps",
            Some(&s.token),
            Some(serde_json::json!({"name": "sse", "image": "sse:v1", "replicas": 0})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let dep = r.json::<Value>().await.unwrap()["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .http
        .get(s.url(&format!("/v1/deployments/{dep}/logs?follow=true")))
        .bearer_auth(&s.token)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    assert!(events.len() >= 2, "{text}");
    for event in &events {
        let mut has_data = false;
        for line in event.lines() {
            let (name, _) = line.split_once(':').unwrap_or((line, ""));
            assert!(
                fields.contains_key(name),
                "field {name} of {event:?} is not documented"
            );
            has_data |= name == "data";
        }
        assert!(has_data, "{event:?}");
    }
    assert!(events.last().unwrap().contains("event: end"), "{text}");
}

fn repo_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Issue 11, item 12: CI fuzzes the served document of a real `shellwego
/// up` with schemathesis (pinned), the four checks, a fixed seed and
/// budget, excluding no operation, and prints its figures at the end; and
/// every request the guard hook keeps from the server is an operation the
/// document still has (a renamed route must not silently lose its guard).
#[test]
fn ci_fuzzes_the_served_document() {
    let run = repo_file(".ci/run");
    let tests = run.find("cargo test --workspace").unwrap();
    let fuzz = run.find(".ci/fuzz 2>&1").expect(".ci/run runs .ci/fuzz");
    let summary = run.find("grep '^schemathesis:'").unwrap();
    let workspace = run.find("workspace: %d passed").unwrap();
    assert!(tests < fuzz && fuzz < summary && summary < workspace);

    let script = repo_file(".ci/fuzz");
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("SCHEMATHESIS_VERSION="))
        .expect("schemathesis is pinned");
    assert_eq!(version.split('.').count(), 3, "{version}");
    assert!(script.contains("\"schemathesis==$SCHEMATHESIS_VERSION\""));
    for needle in [
        "target/debug/shellwego up",
        "/v1/openapi.json",
        "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        "--seed \"$SEED\"",
        "--max-examples \"$EXAMPLES\"",
        "Authorization: Bearer",
        "schemathesis: ${ops:-0} operations, ${cases:-0} cases, $failures failures",
    ] {
        assert!(script.contains(needle), ".ci/fuzz lacks {needle}");
    }
    assert!(!script.contains("--exclude"), "no operation is left out");

    let doc: Value = serde_json::from_str(&shellwego_server::openapi::document_json()).unwrap();
    let guard = repo_file(".ci/fuzz_guard.py");
    let mut guarded = 0;
    for line in guard.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("(\"") else {
            continue;
        };
        let mut parts = rest.split('"').filter(|p| !p.trim().starts_with(','));
        let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            doc["paths"][path][method.to_lowercase()].is_object(),
            "the guard names {method} {path}, which the document does not have"
        );
        guarded += 1;
    }
    assert!(guarded >= 6, "{guarded}");
}
