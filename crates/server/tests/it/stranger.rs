//! Table-driven isolation: every /v1 route, called by a user of another
//! organization, neither shows nor changes the owner's data.

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_core::plan::Plan;

use crate::both_backends;
use crate::kit::{problem, NodeSpec, Srv};

async fn strangers_see_nothing_of_another_organization(s: Srv) {
    let owner_org = s.admin_org().await;
    let node = s
        .insert_node(NodeSpec::new(&owner_org, "owners-node"))
        .await;
    let (_, list) = s.get("/v1/user/tokens").await;
    let owner_token_id = list["data"][0]["id"].as_str().unwrap().to_string();
    let (_, _, stranger) = s.org_with_user(Plan::Free, "stranger@example.com").await;

    // One case per documented /v1 route; a new route without a case fails here.
    let mut covered = vec![];
    let cases: Vec<(Method, &str, String, Option<Value>)> = vec![
        (Method::GET, "/v1/user", "/v1/user".into(), None),
        (
            Method::GET,
            "/v1/user/tokens",
            "/v1/user/tokens".into(),
            None,
        ),
        (
            Method::POST,
            "/v1/user/tokens",
            "/v1/user/tokens".into(),
            Some(json!({"name": "mine"})),
        ),
        (
            Method::DELETE,
            "/v1/user/tokens/{token_id}",
            format!("/v1/user/tokens/{owner_token_id}"),
            None,
        ),
        (
            Method::GET,
            "/v1/events",
            format!("/v1/events?filter[organization_id]={owner_org}"),
            None,
        ),
        (Method::GET, "/v1/nodes", "/v1/nodes".into(), None),
        (
            Method::GET,
            "/v1/nodes/{node_id}",
            format!("/v1/nodes/{node}"),
            None,
        ),
        (
            Method::GET,
            "/v1/openapi.json",
            "/v1/openapi.json".into(),
            None,
        ),
    ];
    for (method, template, path, body) in cases {
        covered.push((method.clone(), template.to_string()));
        let r = s.call(method.clone(), &path, Some(&stranger), body).await;
        let status = r.status().as_u16();
        match (method.as_str(), template) {
            ("GET", "/v1/user") => {
                let u: Value = r.json().await.unwrap();
                assert_eq!(u["email"], "stranger@example.com");
                assert!(!u.to_string().contains(&owner_org));
            }
            ("GET", "/v1/user/tokens") => {
                let l: Value = r.json().await.unwrap();
                assert!(!l.to_string().contains(&owner_token_id));
            }
            ("POST", "/v1/user/tokens") => assert_eq!(status, 201),
            ("DELETE", _) => {
                problem(r, 404).await;
            }
            ("GET", "/v1/events") | ("GET", "/v1/nodes") => {
                let l: Value = r.json().await.unwrap();
                assert_eq!(status, 200);
                assert_eq!(l["pagination"]["total"], 0, "{template}: {l}");
            }
            ("GET", "/v1/nodes/{node_id}") => {
                let p = problem(r, 404).await;
                assert_eq!(crate::kit::slug(&p), "resource-not-found");
            }
            ("GET", "/v1/openapi.json") => assert_eq!(status, 200),
            other => panic!("no expectation for {other:?}"),
        }
    }
    // The owner's token survived the stranger's attempt, and the owner does
    // not see the stranger's new token or its event.
    let (status, list) = s.get("/v1/user/tokens").await;
    assert_eq!(status, 200);
    assert!(list.to_string().contains(&owner_token_id));
    assert!(!list.to_string().contains("\"mine\""));
    let (_, ev) = s.get("/v1/events?filter[type]=token.created").await;
    assert_eq!(
        ev["pagination"]["total"], 1,
        "only the bootstrap token's event: {ev}"
    );

    for (method, template, _) in crate::openapi::operations() {
        if template.starts_with("/v1/") {
            assert!(
                covered.contains(&(method.clone(), template.clone())),
                "no stranger case for {method} {template}"
            );
        }
    }
}

both_backends!(strangers_see_nothing_of_another_organization);
