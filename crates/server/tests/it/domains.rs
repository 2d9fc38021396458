//! Custom domains over the API: validation (IDNA, labels, paths), one
//! organization per host (wildcards included), routes by path on one host,
//! updates, deletes (the host given up with its last route), apps created
//! and deleted with their domains, rights, events — and the route table the
//! ingress gets.

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_core::plan::Plan;
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, TestServer};

async fn app(s: &TestServer, token: &str, name: &str) -> String {
    let r = s
        .post(
            "/v1/apps",
            token,
            json!({"name": name, "image": "nginx:alpine", "replicas": 0}),
        )
        .await;
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, 201, "{v:#}");
    v["id"].as_str().unwrap().to_string()
}

async fn created(r: reqwest::Response) -> Value {
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, 201, "{v:#}");
    v
}

async fn domains_are_claimed_routed_and_released(s: TestServer) {
    let web = app(&s, &s.token, "web").await;
    let api = app(&s, &s.token, "api").await;

    // Validation: the field and what to change.
    for (body, field) in [
        (
            json!({"hostname": "bad_name.example.com", "app_id": web}),
            "hostname",
        ),
        (json!({"hostname": "1.2.3.4", "app_id": web}), "hostname"),
        (
            json!({"hostname": "a.*.example.com", "app_id": web}),
            "hostname",
        ),
        (
            json!({"hostname": "shop.example.com", "app_id": web, "path": "api"}),
            "path",
        ),
        (
            json!({"hostname": "shop.example.com", "app_id": web, "path": "/a/../b"}),
            "path",
        ),
        (
            json!({"hostname": "shop.example.com", "app_id": web, "port": 0}),
            "port",
        ),
        (
            json!({"hostname": "shop.example.com", "app_id": "app_nope"}),
            "app_id",
        ),
        // The platform's own domain is the apps' already.
        (
            json!({"hostname": "x.localhost", "app_id": web}),
            "hostname",
        ),
    ] {
        let p = problem(s.post("/v1/domains", &s.token, body.clone()).await, 400).await;
        assert_eq!(fields(&p), [field], "{body}: {p:#}");
    }
    // Not offered yet: a 422, not a flag that does nothing.
    let p = problem(
        s.post(
            "/v1/domains",
            &s.token,
            json!({"hostname": "shop.example.com", "app_id": web, "cdn": {"enabled": true}}),
        )
        .await,
        422,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("cdn"), "{p:#}");

    // Two apps on one host by path; a Unicode name stored as punycode.
    let root = created(
        s.post(
            "/v1/domains",
            &s.token,
            json!({"hostname": "Shop.Example.com.", "app_id": web}),
        )
        .await,
    )
    .await;
    assert_eq!(root["hostname"], "shop.example.com");
    assert_eq!(root["routing"]["path"], "/");
    assert_eq!(root["status"], "pending");
    assert_eq!(root["tls_status"], "provisioning");
    assert_eq!(root["tls_provider"], "letsencrypt");
    assert_eq!(root["dns_validation"]["type"], "CNAME");
    assert_eq!(root["dns_validation"]["name"], "shop.example.com");
    let under = created(
        s.post(
            "/v1/domains",
            &s.token,
            json!({"hostname": "shop.example.com", "app_id": api, "path": "/api/", "strip_prefix": true, "port": 9000, "hsts": true}),
        )
        .await,
    )
    .await;
    assert_eq!(under["routing"]["path"], "/api");
    assert_eq!(under["routing"]["strip_prefix"], true);
    assert_eq!(under["routing"]["port"], 9000);
    assert_eq!(under["hsts"], true);
    assert_eq!(root["hsts"], false);
    let idn = created(
        s.post(
            "/v1/domains",
            &s.token,
            json!({"hostname": "bücher.example", "app_id": web}),
        )
        .await,
    )
    .await;
    assert_eq!(idn["hostname"], "xn--bcher-kva.example");
    // The same host and path again: 409.
    let p = problem(
        s.post(
            "/v1/domains",
            &s.token,
            json!({"hostname": "shop.example.com", "app_id": api, "path": "/api"}),
        )
        .await,
        409,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("routed already"),
        "{p:#}"
    );

    // Another organization: cannot claim the host, a wildcard over it, or
    // a name under our wildcard; sees none of ours (404).
    let wild = created(
        s.post(
            "/v1/domains",
            &s.token,
            json!({"hostname": "*.tenant.example.net", "app_id": web}),
        )
        .await,
    )
    .await;
    let (_, _, other) = s.org_with_user(Plan::Growth, "other@example.com").await;
    let theirs = app(&s, &other, "theirs").await;
    for host in [
        "shop.example.com",
        "*.example.com",
        "a.tenant.example.net",
        "*.tenant.example.net",
    ] {
        let p = problem(
            s.post(
                "/v1/domains",
                &other,
                json!({"hostname": host, "app_id": theirs}),
            )
            .await,
            409,
        )
        .await;
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("another organization"),
            "{host}: {p:#}"
        );
    }
    // Two labels under the wildcard is not covered by it.
    created(
        s.post(
            "/v1/domains",
            &other,
            json!({"hostname": "a.b.tenant.example.net", "app_id": theirs}),
        )
        .await,
    )
    .await;
    let id = root["id"].as_str().unwrap();
    assert_eq!(s.get_as(&other, &format!("/v1/domains/{id}")).await.0, 404);
    let (_, list) = s.get_as(&other, "/v1/domains").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list:#}");
    // Nor attach ours to their app, nor ours to theirs.
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/domains/{id}"),
            Some(&other),
            Some(json!({"app_id": theirs})),
        )
        .await;
    assert_eq!(r.status().as_u16(), 404);
    let p = problem(
        s.call(
            Method::PATCH,
            &format!("/v1/domains/{id}"),
            Some(&s.token),
            Some(json!({"app_id": theirs})),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["app_id"]);

    // List with filters.
    let (_, l) = s.get(&format!("/v1/domains?filter[app_id]={api}")).await;
    let ids: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [under["id"].as_str().unwrap()], "{l:#}");
    let (_, l) = s.get("/v1/domains?filter[hostname]=shop.example.com").await;
    assert_eq!(l["data"].as_array().unwrap().len(), 2, "{l:#}");
    let (_, l) = s.get("/v1/domains?filter[status]=pending").await;
    assert_eq!(l["data"].as_array().unwrap().len(), 4, "{l:#}");

    // The app shows its hosts.
    let (_, a) = s.get(&format!("/v1/apps/{web}")).await;
    let hosts: Vec<&str> = a["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        [
            "*.tenant.example.net",
            "shop.example.com",
            "xn--bcher-kva.example"
        ]
    );

    // Update the routing; the port back to $PORT with 0.
    let uid = under["id"].as_str().unwrap();
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/domains/{uid}"),
            Some(&s.token),
            Some(json!({"path": "/v2", "port": 0, "strip_prefix": false, "hsts": false})),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let u: Value = r.json().await.unwrap();
    assert_eq!(u["routing"]["path"], "/v2");
    assert_eq!(u["routing"]["port"], Value::Null);
    assert_eq!(u["routing"]["strip_prefix"], false);
    assert_eq!(u["hsts"], false);

    // A viewer reads but cannot change.
    let org = s.admin_org().await;
    let (_, viewer) = s.member_with_role(&org, "viewer", "v@example.com").await;
    assert_eq!(s.get_as(&viewer, &format!("/v1/domains/{id}")).await.0, 200);
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/domains/{id}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(r.status().as_u16(), 403);

    // Deleting the host's last route frees it for anyone.
    let wid = wild["id"].as_str().unwrap();
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/domains/{wid}"),
            Some(&s.token),
            None,
        )
        .await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(s.get(&format!("/v1/domains/{wid}")).await.0, 404);
    created(
        s.post(
            "/v1/domains",
            &other,
            json!({"hostname": "a.tenant.example.net", "app_id": theirs}),
        )
        .await,
    )
    .await;

    // An app created with domains has them; deleting it removes them.
    let r = s
        .post(
            "/v1/apps",
            &s.token,
            json!({"name": "blog", "image": "nginx:alpine", "replicas": 0, "domains": ["blog.example.com"]}),
        )
        .await;
    let blog: Value = r.json().await.unwrap();
    let blog_id = blog["id"].as_str().unwrap().to_string();
    let (_, l) = s
        .get(&format!("/v1/domains?filter[app_id]={blog_id}"))
        .await;
    assert_eq!(l["data"][0]["hostname"], "blog.example.com", "{l:#}");
    // An app whose domain is taken is not created at all.
    let p = problem(
        s.post(
            "/v1/apps",
            &other,
            json!({"name": "copycat", "image": "nginx:alpine", "replicas": 0, "domains": ["blog.example.com"]}),
        )
        .await,
        409,
    )
    .await;
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("another organization"));
    let (_, apps) = s.get_as(&other, "/v1/apps?filter[name]=copycat").await;
    assert_eq!(apps["data"].as_array().unwrap().len(), 0, "{apps:#}");
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/apps/{blog_id}"),
            Some(&s.token),
            None,
        )
        .await;
    assert!(r.status().is_success());
    let (_, l) = s.get("/v1/domains?filter[hostname]=blog.example.com").await;
    assert_eq!(l["data"].as_array().unwrap().len(), 0, "{l:#}");

    // Every change is an event.
    let (_, ev) = s.get("/v1/events?filter[type]=domain.*").await;
    let types: Vec<&str> = ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in ["domain.created", "domain.updated", "domain.deleted"] {
        assert!(types.contains(&t), "{t}: {types:?}");
    }

    // What the routers read: each route with its app.
    let mut db = s.store.conn().await.unwrap();
    let routes = shellwego_store::domains::routes(&mut db).await.unwrap();
    let shop: Vec<(&str, &str)> = routes
        .iter()
        .filter(|r| r.hostname == "shop.example.com")
        .map(|r| (r.path.as_str(), r.app.as_str()))
        .collect();
    assert_eq!(shop, [("/", "web"), ("/v2", "api")]);
}

both_backends!(domains_are_claimed_routed_and_released);

/// A CA, an intermediate it signed, and a leaf for `names` signed by the
/// intermediate (valid `days` from `from_days` days ago).
struct Pki {
    root: rcgen::Certificate,
    inter: rcgen::Certificate,
    inter_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut rp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        rp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rp.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Test Root");
        let root = rp.self_signed(&root_key).unwrap();
        let inter_key = rcgen::KeyPair::generate().unwrap();
        let mut ip = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ip.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Test Intermediate");
        let inter = ip.signed_by(&inter_key, &root, &root_key).unwrap();
        Pki {
            root,
            inter,
            inter_key,
        }
    }

    /// (certificate PEM, key PEM) of a leaf for `names`.
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let c = p.signed_by(&key, &self.inter, &self.inter_key).unwrap();
        (c.pem(), key.serialize_pem())
    }
}

async fn upload(s: &TestServer, id: &str, body: Value) -> reqwest::Response {
    s.post(&format!("/v1/domains/{id}/certificate"), &s.token, body)
        .await
}

async fn custom_certificates_are_checked_and_kept_sealed(s: TestServer) {
    let web = app(&s, &s.token, "web").await;
    let d = created(
        s.post(
            "/v1/domains",
            &s.token,
            json!({"hostname": "secure.example.com", "app_id": web, "tls": {"provider": "custom"}}),
        )
        .await,
    )
    .await;
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["tls_provider"], "custom");
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&["secure.example.com"], false);
    let inter = pki.inter.pem();
    let root = pki.root.pem();

    // Each check, its field.
    let (_, other_key) = pki.leaf(&["secure.example.com"], false);
    let (expired, expired_key) = pki.leaf(&["secure.example.com"], true);
    let (elsewhere, elsewhere_key) = pki.leaf(&["other.example.com"], false);
    for (body, field, says) in [
        (
            json!({"certificate": cert, "private_key": other_key, "chain": inter}),
            "private_key",
            "does not match",
        ),
        (
            json!({"certificate": cert, "private_key": "not a key", "chain": inter}),
            "private_key",
            "PEM",
        ),
        (
            json!({"certificate": "garbage", "private_key": key}),
            "certificate",
            "no certificate",
        ),
        (
            json!({"certificate": expired, "private_key": expired_key, "chain": inter}),
            "certificate",
            "expired",
        ),
        (
            json!({"certificate": elsewhere, "private_key": elsewhere_key, "chain": inter}),
            "certificate",
            "does not cover secure.example.com",
        ),
        (
            json!({"certificate": cert, "private_key": key, "chain": format!("{root}{inter}")}),
            "chain",
            "out of order",
        ),
    ] {
        let p = problem(upload(&s, &id, body).await, 400).await;
        assert_eq!(fields(&p), [field], "{p:#}");
        assert!(
            p["errors"][0]["message"].as_str().unwrap().contains(says),
            "{says}: {p:#}"
        );
    }

    // A good one: kept, shown without its key, the key sealed at rest.
    let r = upload(
        &s,
        &id,
        json!({"certificate": cert, "private_key": key, "chain": format!("{inter}{root}")}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["tls_status"], "active", "{v:#}");
    assert_eq!(v["tls_certificate"]["issuer"], "Test Intermediate");
    assert!(v["tls_certificate"]["expires_at"].is_string(), "{v:#}");
    let mut db = s.store.conn().await.unwrap();
    let kept = shellwego_store::domains::host_certs(&mut db).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(!kept[0].key_enc.contains("PRIVATE KEY"), "sealed");
    let body = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    assert!(!kept[0].key_enc.contains(&body[..40]));
    let (_, ev) = s
        .get("/v1/events?filter[type]=domain.certificate_uploaded")
        .await;
    assert_eq!(ev["data"][0]["resource"]["id"], id.as_str(), "{ev:#}");
    // A viewer cannot upload.
    let org = s.admin_org().await;
    let (_, viewer) = s.member_with_role(&org, "viewer", "v@example.com").await;
    let r = s
        .post(
            &format!("/v1/domains/{id}/certificate"),
            &viewer,
            json!({"certificate": cert, "private_key": key}),
        )
        .await;
    assert_eq!(r.status().as_u16(), 403);
}

both_backends!(custom_certificates_are_checked_and_kept_sealed);
