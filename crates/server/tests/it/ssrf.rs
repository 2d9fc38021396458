//! The SSRF guard at the API (issue 11, item 6): a tarball `source.url` or
//! an image registry that reaches a loopback, private, link-local or cloud
//! metadata address is refused when it is given, unless the operator's
//! `[ssrf]` section allows it; agents are sent that policy with their
//! desired state, to judge every fetch again.

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_net::ssrf::SsrfConfig;

use shellwego_testkit::agent::SsrfPolicy;
use shellwego_testkit::server::{fields, problem, TestServer};
use shellwego_testkit::Backend;

/// A server with the default policy (the kit opens private targets).
async fn strict() -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| c.ssrf = SsrfConfig::default())
        .await
        .unwrap()
}

/// `p` is a 400 refusing `field` for the SSRF guard, and says how to allow it.
fn refused(p: &Value, field: &str) -> String {
    assert_eq!(fields(p), [field], "{p:#}");
    assert_eq!(p["errors"][0]["code"], "forbidden_target", "{p:#}");
    let msg = p["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("[ssrf]"), "{msg}");
    msg
}

async fn create_with_source(s: &TestServer, url: &str) -> reqwest::Response {
    s.post(
        "/v1/apps",
        &s.token,
        json!({"name": "src", "replicas": 0, "source": {"type": "tarball", "url": url}}),
    )
    .await
}

#[tokio::test]
async fn source_urls_and_registries_reaching_internal_addresses_are_refused() {
    let s = strict().await;
    for (url, why) in [
        (
            "http://169.254.169.254/latest/meta-data",
            "169.254.169.254 is a cloud metadata address",
        ),
        ("http://127.0.0.1:9/x", "127.0.0.1 is a loopback address"),
        ("http://localhost:9/x", "localhost resolves to "),
        ("http://[::ffff:127.0.0.1]:9/x", "is a loopback address"),
        ("http://0x7f.1:9/x", "127.0.0.1 is a loopback address"),
        ("http://10.0.0.1/a.tgz", "10.0.0.1 is a private address"),
        ("http://100.100.100.200/", "is a cloud metadata address"),
    ] {
        let p = problem(create_with_source(&s, url).await, 400).await;
        let msg = refused(&p, "source.url");
        assert!(msg.contains(why), "{url}: {msg}");
        assert_eq!(p["errors"][0]["value"], url, "{p:#}");
    }
    let (_, apps) = s.get("/v1/apps").await;
    assert_eq!(apps["data"], json!([]), "nothing was created");

    // Images: a registry host on loopback is refused, Docker Hub names
    // (no registry host) are public.
    for image in ["127.0.0.1:5000/x", "localhost:5000/team/app:v1"] {
        let p = problem(
            s.post(
                "/v1/apps",
                &s.token,
                json!({"name": "img", "image": image, "replicas": 0}),
            )
            .await,
            400,
        )
        .await;
        refused(&p, "image");
    }
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "hub", "image": "nginx:alpine", "replicas": 0}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let app = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The same on an update and a deploy of an existing app.
    let p = problem(
        s.call(
            Method::PATCH,
            &format!("/v1/apps/{app}"),
            Some(&s.token),
            Some(json!({"image": "127.0.0.1:5000/x:v2"})),
        )
        .await,
        400,
    )
    .await;
    refused(&p, "image");
    let deploy = format!("/v1/apps/{app}/deploy");
    let p = problem(
        s.post(&deploy, &s.token, json!({"image": "[::1]:5000/x"}))
            .await,
        400,
    )
    .await;
    refused(&p, "image");
    let p = problem(
        s.post(&deploy,
            &s.token,
            json!({"source": {"type": "tarball", "url": "http://169.254.169.254/latest/meta-data"}}),
        )
        .await,
        400,
    )
    .await;
    refused(&p, "source.url");
    // Still the image it had.
    let (_, a) = s.get(&format!("/v1/apps/{app}")).await;
    assert_eq!(a["image"], "nginx:alpine", "{a:#}");

    // Not http(s) at all: refused by validation, naming the field.
    let p = problem(
        s.post(
            &deploy,
            &s.token,
            json!({"source": {"type": "tarball", "url": "file:///etc/passwd"}}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["source.url"], "{p:#}");
}

#[tokio::test]
async fn allow_private_targets_opens_loopback_but_not_metadata() {
    // (The kit's default.)
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let r = create_with_source(&s, "http://127.0.0.1:9/x").await;
    assert_eq!(r.status(), 201);
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "img", "image": "localhost:5000/x", "replicas": 0}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let p = problem(
        s.post("/v1/apps",
            &s.token,
            json!({"name": "meta", "replicas": 0, "source": {"type": "tarball", "url": "http://169.254.169.254/latest/meta-data"}}),
        )
        .await,
        400,
    )
    .await;
    let msg = refused(&p, "source.url");
    // Only an allow entry opens a metadata address.
    assert!(msg.ends_with("(allow = [\"169.254.169.254/32\"])"), "{msg}");
}

#[tokio::test]
async fn allowed_networks_are_exactly_those_listed() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.ssrf = SsrfConfig {
            allow: vec!["127.0.0.2/32".parse().unwrap()],
            allow_private_targets: false,
        }
    })
    .await
    .unwrap();
    let r = create_with_source(&s, "http://127.0.0.2:9/x").await;
    assert_eq!(r.status(), 201);
    let p = problem(
        s.post("/v1/apps",
            &s.token,
            json!({"name": "other", "replicas": 0, "source": {"type": "tarball", "url": "http://127.0.0.1:9/x"}}),
        )
        .await,
        400,
    )
    .await;
    let msg = refused(&p, "source.url");
    assert!(
        msg.ends_with("(allow = [\"127.0.0.1/32\"], or allow_private_targets = true)"),
        "{msg}"
    );
}

#[tokio::test]
async fn agents_are_sent_the_policy() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.ssrf = SsrfConfig {
            allow: vec!["10.1.0.0/16".parse().unwrap()],
            allow_private_targets: false,
        }
    })
    .await
    .unwrap();
    let d = s.fake_agent("n1", 4, 8 << 30).await.desired().await;
    assert_eq!(
        d.ssrf,
        SsrfPolicy {
            allow: vec!["10.1.0.0/16".into()],
            allow_private_targets: false
        },
        "{d:#?}"
    );
}
