//! An app's `networking` block is input (issue 14): `public: false` keeps
//! it out of every router's table (the ingress answers 404 for its host)
//! and back in when switched on, without new instances; `allowed_egress`
//! is validated, stored canonical, handed to the agent with each instance
//! and rolls the instances when it changes; `internal_dns` is read-only.

use reqwest::Method;
use serde_json::{json, Value};

use shellwego_ingress::Routes;
use shellwego_server::controller::routes::RouteFeed;
use shellwego_testkit::agent::{DesiredInstance, FakeAgent};
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, TestServer};

/// What a router fed from the store would do with `app`'s host: `None`
/// (404, not in the table), else its backends' count (0: 503).
async fn routed(s: &TestServer, app: &str) -> Option<usize> {
    let routes = Routes::new();
    RouteFeed::new(routes.clone()).step(&s.store).await;
    routes.snapshot().backends(app).map(<[_]>::len)
}

async fn create(s: &TestServer, body: Value) -> (String, Value) {
    let r = s.post("/v1/apps", &s.token, body).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    (v["id"].as_str().unwrap().to_string(), v)
}

async fn patch(s: &TestServer, app: &str, body: Value) -> (u16, Value) {
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/apps/{app}"),
            Some(&s.token),
            Some(body),
        )
        .await;
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn versions(d: &[DesiredInstance]) -> Vec<i64> {
    let mut v: Vec<i64> = d.iter().map(|i| i.version).collect();
    v.sort();
    v.dedup();
    v
}

async fn private_apps_leave_the_ingress_and_egress_policies_reach_the_agent(s: TestServer) {
    let mut agent: FakeAgent = s.fake_agent("n", 8, 16 << 30).await;
    // Reported instances get this address (routes need one).
    agent.internal_ip = Some("10.0.0.7".into());
    let (app, _) = create(
        &s,
        json!({"name": "db", "image": "db:1", "replicas": 2,
               "networking": {"public": false, "allowed_egress": ["10.99.0.0/24", "10.0.0.7", "10.99.0.0/24"]}}),
    )
    .await;
    let (_, got) = s.get(&format!("/v1/apps/{app}")).await;
    assert_eq!(
        got["networking"],
        json!({"internal_dns": "db.internal", "public": false,
               "allowed_egress": ["10.99.0.0/24", "10.0.0.7/32"]}),
        "canonical, deduplicated: {got:#}"
    );
    // The agent is told the policy with every instance.
    let desired = agent.desired_of(&app).await;
    assert_eq!(desired.len(), 2);
    for d in &desired {
        assert_eq!(
            d.allowed_egress.as_deref(),
            Some(&["10.99.0.0/24".to_string(), "10.0.0.7/32".to_string()][..])
        );
    }
    agent.report_healthy().await;
    assert_eq!(routed(&s, "db").await, None, "a private app is no route");

    // A public app beside it is routed; its agent gets no policy.
    let (web, _) = create(&s, json!({"name": "web", "image": "web:1"})).await;
    let (_, w) = s.get(&format!("/v1/apps/{web}")).await;
    assert_eq!(
        w["networking"],
        json!({"internal_dns": "web.internal", "public": true, "allowed_egress": ["0.0.0.0/0"]})
    );
    let t = std::time::Instant::now();
    let mut placed = agent.desired_of(&web).await;
    while placed.is_empty() && t.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        placed = agent.desired_of(&web).await;
    }
    assert_eq!(placed.len(), 1);
    assert!(placed.iter().all(|d| d.allowed_egress.is_none()));
    agent.report_healthy().await;
    assert_eq!(routed(&s, "web").await, Some(1));

    // Public again: routed at once, by the same instances (no new version).
    let before = versions(&agent.desired_of(&app).await);
    let (st, body) = patch(&s, &app, json!({"networking": {"public": true}})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(routed(&s, "db").await, Some(2));
    assert_eq!(versions(&agent.desired_of(&app).await), before);
    let (st, body) = patch(&s, &app, json!({"networking": {"public": false}})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(routed(&s, "db").await, None);

    // A new policy is a new version (set when an instance starts).
    let (st, body) = patch(
        &s,
        &app,
        json!({"networking": {"allowed_egress": ["0.0.0.0/0"]}}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let now = agent.desired_of(&app).await;
    assert!(
        versions(&now).iter().any(|v| !before.contains(v)),
        "a new version rolls out: {before:?} -> {:?}",
        versions(&now)
    );
    let newest = now.iter().map(|i| i.version).max().unwrap();
    assert!(now
        .iter()
        .filter(|i| i.version == newest)
        .all(|i| i.allowed_egress.is_none()));
    let (_, got) = s.get(&format!("/v1/apps/{app}")).await;
    assert_eq!(got["networking"]["allowed_egress"], json!(["0.0.0.0/0"]));
    assert_eq!(got["networking"]["public"], false);
}

async fn networking_input_is_validated(s: TestServer) {
    let bad = |networking: Value| json!({"name": "x", "image": "x:1", "networking": networking});
    for (body, field, says) in [
        (
            bad(json!({"allowed_egress": ["10.99.0.5/24"]})),
            "networking.allowed_egress[0]",
            "10.99.0.0/24",
        ),
        (
            bad(json!({"allowed_egress": ["10.0.0.0/8", "example.com"]})),
            "networking.allowed_egress[1]",
            "not a CIDR",
        ),
        (
            bad(json!({"allowed_egress": ["10.0.0.0/40"]})),
            "networking.allowed_egress[0]",
            "0 to 32",
        ),
        (
            bad(json!({"internal_dns": "other.internal"})),
            "networking.internal_dns",
            "x.internal",
        ),
        (
            bad(
                json!({"allowed_egress": (0..65).map(|i| format!("10.0.{i}.0/24")).collect::<Vec<_>>()}),
            ),
            "networking.allowed_egress",
            "at most 64",
        ),
    ] {
        let r = s.post("/v1/apps", &s.token, body.clone()).await;
        let p = problem(r, 400).await;
        assert!(fields(&p).contains(&field.to_string()), "{body} -> {p:#}");
        assert!(p.to_string().contains(says), "{body} -> {p:#}");
    }
    // Unknown keys and wrong types are 400s too.
    for networking in [json!({"publik": false}), json!({"public": "no"})] {
        let r = s.post("/v1/apps", &s.token, bad(networking.clone())).await;
        problem(r, 400).await;
    }
    // Its own name under .internal is accepted (the value GET shows).
    let (app, _) = create(
        &s,
        json!({"name": "x", "image": "x:1", "networking": {"internal_dns": "x.internal"}}),
    )
    .await;
    let (st, p) = patch(
        &s,
        &app,
        json!({"networking": {"internal_dns": "y.internal"}}),
    )
    .await;
    assert_eq!(st, 400, "{p}");
    assert_eq!(p["errors"][0]["field"], "networking.internal_dns", "{p}");
    let (st, p) = patch(
        &s,
        &app,
        json!({"networking": {"allowed_egress": ["::1/200"]}}),
    )
    .await;
    assert_eq!(st, 400, "{p}");
    assert_eq!(
        p["errors"][0]["field"], "networking.allowed_egress[0]",
        "{p}"
    );
}

/// `<app>.internal` as an agent asks it for one of its instances: the
/// healthy instances of the app in the node's organization, one of them by
/// `<instance>.<app>.internal`; nothing of another organization's app of
/// the same name; a 404 for an instance not on the asking node; a 400 for a
/// name outside `.internal`; a 401 without the node's credential.
async fn internal_names_resolve_within_the_organization(s: TestServer) {
    let mut agent: FakeAgent = s.fake_agent("n", 8, 16 << 30).await;
    agent.internal_ip = Some("10.0.0.7".into());
    let (db, _) = create(
        &s,
        json!({"name": "db", "image": "db:1", "replicas": 2, "networking": {"public": false}}),
    )
    .await;
    let (web, _) = create(&s, json!({"name": "web", "image": "web:1"})).await;
    let t = std::time::Instant::now();
    while agent.desired().await.instances.len() < 3 {
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    agent.report_healthy().await;
    let asker = agent.desired_of(&web).await[0].id.clone();
    let mut dbs: Vec<String> = agent
        .desired_of(&db)
        .await
        .iter()
        .map(|i| i.id.clone())
        .collect();
    dbs.sort();

    let (st, a) = agent.resolve(&asker, "DB.internal.").await;
    assert_eq!(st, 200, "{a}");
    let mut got: Vec<String> = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["ip"], "10.0.0.7", "{a}");
            assert!(r["port"].as_u64().is_some(), "{a}");
            r["instance_id"].as_str().unwrap().to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, dbs);
    assert!(a["ttl_secs"].as_u64().unwrap() >= 1, "{a}");
    let (_, one) = agent
        .resolve(&asker, &format!("{}.db.internal", dbs[1]))
        .await;
    assert_eq!(one["records"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["records"][0]["instance_id"], dbs[1].as_str());
    let (st, none) = agent.resolve(&asker, "nosuch.internal").await;
    assert_eq!(
        (st, none["records"].as_array().unwrap().len()),
        (200, 0),
        "{none}"
    );

    // Another organization's node, with an app named db of its own: it
    // never sees this one's, and cannot ask for this one's instances.
    let (other_org, _, other_token) = s
        .org_with_user(shellwego_core::plan::Plan::Growth, "o@example.com")
        .await;
    let stranger = FakeAgent::register(&s.base, &other_token, "s", 8, 16 << 30).await;
    let r = s
        .call(
            Method::POST,
            "/v1/apps",
            Some(&other_token),
            Some(json!({"name": "db", "image": "db:1"})),
        )
        .await;
    assert_eq!(
        r.status(),
        201,
        "{other_org}: {}",
        r.text().await.unwrap_or_default()
    );
    let t = std::time::Instant::now();
    while stranger.desired().await.instances.is_empty() {
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let theirs = stranger.desired().await.instances[0].id.clone();
    let (st, a) = stranger.resolve(&theirs, "db.internal").await;
    assert_eq!(st, 200, "{a}");
    assert!(
        a["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !dbs.contains(&r["instance_id"].as_str().unwrap().to_string())),
        "another organization's instances: {a}"
    );
    let (st, p) = stranger.resolve(&asker, "db.internal").await;
    assert_eq!(st, 404, "an instance of another node: {p}");

    let (st, p) = agent.resolve(&asker, "example.com").await;
    assert_eq!(st, 400, "{p}");
    assert_eq!(p["errors"][0]["field"], "name", "{p}");
    let (st, _) = agent
        .with_credential("nsec_nope")
        .resolve(&asker, "db.internal")
        .await;
    assert_eq!(st, 401);
}

/// The mesh: a node that reports a WireGuard key gets an address of its
/// own on 10.90.0.0/16 and the organization's other nodes as peers (not
/// another organization's); its key shows in the node's view; a new node
/// on the mesh wakes the others; a key that is not one is a 400.
async fn nodes_report_wireguard_keys_and_get_their_peers(s: TestServer) {
    use shellwego_testkit::agent::AgentSync;
    let key = |c: char| format!("{}=", c.to_string().repeat(43));
    let mut a = s.fake_agent("a", 4, 8 << 30).await;
    a.internal_ip = Some("10.99.0.2".into());
    let b = s.fake_agent("b", 4, 8 << 30).await;
    let report = |agent: &FakeAgent, k: String, ip: &str, generation: i64| {
        let body = AgentSync {
            generation,
            wait_secs: Some(1),
            internal_ip: Some(ip.to_string()),
            wireguard: Some(shellwego_api::agent::WireguardReport {
                public_key: k,
                port: 51820,
            }),
            ..Default::default()
        };
        let agent = agent.clone();
        async move { agent.sync(&body).await }
    };
    let da = report(&a, key('A'), "10.99.0.2", -1).await;
    let oa = da.overlay.clone().expect("a is on the mesh");
    assert_eq!(oa.prefix, 16);
    assert!(oa.address.starts_with("10.90."), "{oa:?}");
    assert!(oa.peers.is_empty(), "{oa:?}");
    // b joins: a is told (its generation moved), each sees the other.
    let db = report(&b, key('B'), "10.99.0.3", -1).await;
    let ob = db.overlay.clone().unwrap();
    assert_ne!(ob.address, oa.address);
    assert_eq!(ob.peers.len(), 1);
    assert_eq!(ob.peers[0].public_key, key('A'));
    assert_eq!(ob.peers[0].endpoint, "10.99.0.2:51820");
    assert_eq!(ob.peers[0].address, oa.address);
    let again = report(&a, key('A'), "10.99.0.2", da.generation).await;
    assert_ne!(again.generation, da.generation, "a was not woken");
    let peers = again.overlay.unwrap().peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, key('B'));
    assert_eq!(peers[0].address, ob.address);
    // The key shows in the node's view; joining the mesh is an event.
    let (_, n) = s.get(&format!("/v1/nodes/{}", a.node_id)).await;
    assert_eq!(n["networking"]["wireguard_pubkey"], key('A'), "{n:#}");
    let (_, ev) = s
        .get("/v1/events?filter[type]=node.mesh_updated&limit=10")
        .await;
    assert!(
        ev["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["resource"]["id"] == a.node_id.as_str()),
        "{ev:#}"
    );

    // Another organization's node is no peer of these.
    let (_, _, other) = s
        .org_with_user(shellwego_core::plan::Plan::Growth, "m@example.com")
        .await;
    let c = FakeAgent::register(&s.base, &other, "c", 4, 8 << 30).await;
    let dc = report(&c, key('C'), "10.99.0.4", -1).await;
    let oc = dc.overlay.unwrap();
    assert!(oc.peers.is_empty(), "{oc:?}");
    assert!(oc.address != oa.address && oc.address != ob.address);

    // Not a key: 400, naming the field.
    let r = a
        .sync_raw(&serde_json::json!({"generation": -1, "wireguard": {"public_key": "nope", "port": 51820}}))
        .await;
    let p = problem(r, 400).await;
    assert!(
        fields(&p).contains(&"wireguard.public_key".to_string()),
        "{p:#}"
    );
}

both_backends!(
    nodes_report_wireguard_keys_and_get_their_peers,
    internal_names_resolve_within_the_organization,
    private_apps_leave_the_ingress_and_egress_policies_reach_the_agent,
    networking_input_is_validated
);
