//! The OpenAPI document: valid 3.1, checked in and current, and in
//! agreement with the router.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::Value;

use crate::kit::{start, Backend};

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/platform-api.json")
}

#[tokio::test]
async fn served_document_is_openapi_3_1_and_matches_the_checked_in_copy() {
    let s = start(Backend::Sqlite).await.unwrap();
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
}

/// Every (method, path) of the document, with path parameters filled in.
pub fn operations() -> Vec<(Method, String, String)> {
    let doc: Value = serde_json::from_str(&shellwego_server::openapi::document_json()).unwrap();
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
    let s = start(Backend::Sqlite).await.unwrap();
    let ops = operations();
    assert!(ops.len() >= 11);
    for (method, template, path) in &ops {
        let r = s.call(method.clone(), path, Some(&s.token), None).await;
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
    let s = start(Backend::Sqlite).await.unwrap();
    let r = s.call(Method::GET, "/docs", None, None).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    for (_, template, _) in operations() {
        assert!(
            html.contains(&format!("<code>{template}</code>")),
            "{template} missing from /docs"
        );
    }
}
