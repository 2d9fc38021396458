//! Pagination, filtering and sorting: one implementation, both backends.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use reqwest::Method;
use serde_json::Value;

use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, NodeSpec, TestServer};

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Walk a list by next_cursor, inserting rows between pages; returns ids seen.
async fn walk(s: &TestServer, org: &str, first: &str, insert_between: bool) -> Vec<String> {
    let mut seen = vec![];
    let mut url = first.to_string();
    let sep = if first.contains('?') { '&' } else { '?' };
    let mut n = 0;
    loop {
        let (status, page) = s.get(&url).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["data"].as_array().unwrap().len() <= 100);
        seen.extend(ids(&page));
        if insert_between {
            // Rows arrive while the client pages.
            for _ in 0..7 {
                n += 1;
                s.insert_node(NodeSpec::new(org, &format!("late-{n}")))
                    .await;
            }
        }
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(page["pagination"]["has_more"], true);
                url = format!("{first}{sep}cursor={}", enc(c));
            }
            None => {
                assert_eq!(page["pagination"]["has_more"], false);
                break;
            }
        }
    }
    seen
}

async fn pagination_visits_every_row_once_while_rows_are_inserted(s: TestServer) {
    let org = s.admin_org().await;
    let mut originals = vec![];
    for i in 0..250 {
        originals.push(
            s.insert_node(NodeSpec::new(&org, &format!("node-{i:03}")))
                .await,
        );
    }
    // A concurrent writer too, not only the deterministic interleaving.
    let writer = {
        let (store, org) = (s.store.clone(), org.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let mut tx = store.begin().await.unwrap();
                shellwego_store::nodes::insert(
                    &mut tx,
                    shellwego_store::nodes::Node {
                        organization_id: org.clone(),
                        hostname: format!("bg-{i}"),
                        status: shellwego_core::model::NodeStatus::Ready,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                shellwego_store::commit(tx).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    for order in [
        "/v1/nodes?limit=100",
        "/v1/nodes?limit=100&sort=created_at:asc",
        "/v1/nodes?limit=100&sort=hostname:asc",
    ] {
        let seen = walk(&s, &org, order, true).await;
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for id in &seen {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        assert!(
            counts.values().all(|c| *c == 1),
            "{order}: a row was returned twice"
        );
        for id in &originals {
            assert_eq!(
                counts.get(id.as_str()),
                Some(&1),
                "{order}: row {id} was skipped"
            );
        }
    }
    writer.await.unwrap();
}

async fn limits_and_cursors_are_checked(s: TestServer) {
    let org = s.admin_org().await;
    for i in 0..25 {
        s.insert_node(NodeSpec::new(&org, &format!("n{i:02}")))
            .await;
    }
    for bad in ["limit=101", "limit=0", "limit=-1", "limit=ten"] {
        let p = problem(
            s.call(
                Method::GET,
                &format!("/v1/nodes?{bad}"),
                Some(&s.token),
                None,
            )
            .await,
            400,
        )
        .await;
        assert_eq!(fields(&p), ["limit"], "{bad}");
    }
    let (_, page) = s.get("/v1/nodes").await;
    assert_eq!(page["pagination"]["limit"], 20, "default limit");
    assert_eq!(page["data"].as_array().unwrap().len(), 20);
    assert_eq!(page["pagination"]["total"], 25);
    let next = page["pagination"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();

    // A tampered cursor: change one character.
    let mut chars: Vec<char> = next.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    let tampered: String = chars.into_iter().collect();
    for c in [tampered.as_str(), "not-a-cursor", "eyJ9"] {
        let p = problem(
            s.call(
                Method::GET,
                &format!("/v1/nodes?cursor={}", enc(c)),
                Some(&s.token),
                None,
            )
            .await,
            400,
        )
        .await;
        assert_eq!(fields(&p), ["cursor"]);
    }
    // A cursor made for another sort or filter.
    for other in ["sort=hostname:asc", "filter[status]=ready"] {
        let p = problem(
            s.call(
                Method::GET,
                &format!("/v1/nodes?{other}&cursor={}", enc(&next)),
                Some(&s.token),
                None,
            )
            .await,
            400,
        )
        .await;
        assert_eq!(fields(&p), ["cursor"]);
        assert!(p["detail"]
            .as_str()
            .unwrap()
            .contains("different sort or filter"));
    }
    // A cursor of another resource.
    let p = problem(
        s.call(
            Method::GET,
            &format!("/v1/events?cursor={}", enc(&next)),
            Some(&s.token),
            None,
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["cursor"]);

    // Backwards and to both ends.
    let (_, p2) = s
        .get(&format!(
            "/v1/nodes?limit=10&cursor={}",
            enc(
                s.get("/v1/nodes?limit=10").await.1["pagination"]["next_cursor"]
                    .as_str()
                    .unwrap()
            )
        ))
        .await;
    let (_, p1) = s.get("/v1/nodes?limit=10").await;
    assert_eq!(p1["pagination"]["prev_cursor"], Value::Null);
    let prev = p2["pagination"]["prev_cursor"].as_str().unwrap();
    let (_, back) = s
        .get(&format!("/v1/nodes?limit=10&cursor={}", enc(prev)))
        .await;
    assert_eq!(ids(&back), ids(&p1));
    assert_eq!(back["pagination"]["prev_cursor"], Value::Null);
    assert_eq!(back["pagination"]["has_more"], true);
    let (_, last) = s
        .get(&format!(
            "/v1/nodes?limit=10&cursor={}",
            enc(p1["pagination"]["last_cursor"].as_str().unwrap())
        ))
        .await;
    assert_eq!(ids(&last).len(), 10, "the last page is full");
    assert_eq!(last["pagination"]["has_more"], false);
    assert!(last["pagination"]["prev_cursor"].is_string());
    let (_, all) = s.get("/v1/nodes?limit=100").await;
    assert_eq!(ids(&last), ids(&all)[15..].to_vec());
    let (_, first) = s
        .get(&format!(
            "/v1/nodes?limit=10&cursor={}",
            enc(last["pagination"]["first_cursor"].as_str().unwrap())
        ))
        .await;
    assert_eq!(ids(&first), ids(&p1));
}

async fn seed_fleet(s: &TestServer) -> HashMap<&'static str, String> {
    let org = s.admin_org().await;
    let t = |d: u32| Some(Utc.with_ymd_and_hms(2024, 1, d, 12, 0, 0).unwrap());
    let mut m = HashMap::new();
    for (name, status, region, cores, mem_g, labels, day) in [
        (
            "web-1",
            "ready",
            "fra1",
            4,
            8,
            &[("gpu", "false"), ("storage", "nvme")][..],
            1,
        ),
        (
            "web-2",
            "ready",
            "fra1",
            8,
            16,
            &[("gpu", "false"), ("storage", "ssd")][..],
            2,
        ),
        (
            "gpu-1",
            "draining",
            "ams1",
            16,
            64,
            &[("gpu", "true"), ("storage", "nvme")][..],
            3,
        ),
        (
            "db-1",
            "maintenance",
            "ams1",
            8,
            16,
            &[("storage", "nvme")][..],
            4,
        ),
        ("Web-Edge_%", "offline", "nyc1", 2, 1, &[][..], 5),
    ] {
        let mut n = NodeSpec::new(&org, name);
        n.status = status;
        n.region = region;
        n.cpu_cores = cores;
        n.memory_total = mem_g << 30;
        n.labels = labels;
        n.created_at = t(day);
        m.insert(name, s.insert_node(n).await);
    }
    m
}

async fn hosts(s: &TestServer, query: &str) -> Vec<String> {
    let (status, page) = s.get(&format!("/v1/nodes?{query}")).await;
    assert_eq!(status, 200, "{query}: {page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["hostname"].as_str().unwrap().to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn filters_or_ranges_nested_labels_and_search(s: TestServer) {
    seed_fleet(&s).await;
    // Single value and OR.
    assert_eq!(
        sorted(hosts(&s, "filter[status]=ready").await),
        ["web-1", "web-2"]
    );
    assert_eq!(
        sorted(hosts(&s, "filter[status]=draining,maintenance").await),
        ["db-1", "gpu-1"]
    );
    // Ranges on times (a bare date in lte covers that whole day).
    assert_eq!(
        sorted(
            hosts(
                &s,
                "filter[created_at][gte]=2024-01-02&filter[created_at][lte]=2024-01-03"
            )
            .await
        ),
        ["gpu-1", "web-2"]
    );
    assert_eq!(
        sorted(hosts(&s, "filter[created_at][gt]=2024-01-04T00:00:00Z").await),
        ["Web-Edge_%", "db-1"]
    );
    assert_eq!(
        hosts(&s, "filter[created_at][lt]=2024-01-02").await,
        ["web-1"]
    );
    assert_eq!(hosts(&s, "filter[created_at]=2024-01-03").await, ["gpu-1"]);
    // Ranges on numbers and sizes; nested fields.
    assert_eq!(
        sorted(
            hosts(
                &s,
                "filter[capacity.cpu_cores][gte]=8&filter[capacity.cpu_cores][lt]=16"
            )
            .await
        ),
        ["db-1", "web-2"]
    );
    assert_eq!(
        sorted(hosts(&s, "filter[capacity.memory_total]=16g").await),
        ["db-1", "web-2"]
    );
    assert_eq!(
        sorted(hosts(&s, "filter[capacity.memory_total][gt]=16gb").await),
        ["gpu-1"]
    );
    assert_eq!(
        hosts(&s, "filter[capacity.memory_total]=1024m").await,
        ["Web-Edge_%"]
    );
    // Labels, with OR values, and two labels together.
    assert_eq!(hosts(&s, "filter[label][gpu]=true").await, ["gpu-1"]);
    assert_eq!(
        sorted(hosts(&s, "filter[label][storage]=nvme").await),
        ["db-1", "gpu-1", "web-1"]
    );
    assert_eq!(
        sorted(
            hosts(
                &s,
                "filter[label][storage]=ssd,nvme&filter[label][gpu]=false"
            )
            .await
        ),
        ["web-1", "web-2"]
    );
    // Search: case-insensitive substring over name-like fields; LIKE
    // wildcards in the query are literal.
    assert_eq!(
        sorted(hosts(&s, "filter[q]=WEB").await),
        ["Web-Edge_%", "web-1", "web-2"]
    );
    assert_eq!(sorted(hosts(&s, "filter[q]=ams1").await), ["db-1", "gpu-1"]);
    assert_eq!(
        hosts(&s, &format!("filter[q]={}", enc("_%"))).await,
        ["Web-Edge_%"]
    );
    assert_eq!(
        hosts(&s, &format!("filter[q]={}", enc("web 2"))).await,
        ["web-2"]
    );
    assert!(hosts(&s, "filter[q]=nothing-like-this").await.is_empty());
    // Filters combine with AND, and total counts what matches.
    let (_, page) = s
        .get("/v1/nodes?filter[region]=fra1&filter[capacity.cpu_cores][gt]=4")
        .await;
    assert_eq!(page["pagination"]["total"], 1);
    assert_eq!(page["data"][0]["hostname"], "web-2");
    assert_eq!(page["data"][0]["labels"]["storage"], "ssd");
}

async fn sorting_by_several_fields(s: TestServer) {
    seed_fleet(&s).await;
    // Default: newest first.
    assert_eq!(
        hosts(&s, "").await,
        ["Web-Edge_%", "db-1", "gpu-1", "web-2", "web-1"]
    );
    assert_eq!(
        hosts(&s, "sort=created_at:asc").await,
        ["web-1", "web-2", "gpu-1", "db-1", "Web-Edge_%"]
    );
    // Mixed directions.
    let want = ["gpu-1", "db-1", "web-2", "web-1", "Web-Edge_%"];
    assert_eq!(hosts(&s, "sort=region:asc,hostname:desc").await, want);
    // ... and paginated over, two at a time, gives the same order.
    let mut seen = vec![];
    let mut url = "/v1/nodes?limit=2&sort=region:asc,hostname:desc".to_string();
    loop {
        let (_, page) = s.get(&url).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["hostname"].as_str().unwrap().to_string()),
        );
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) => {
                url = format!(
                    "/v1/nodes?limit=2&sort=region:asc,hostname:desc&cursor={}",
                    enc(c)
                )
            }
            None => break,
        }
    }
    assert_eq!(seen, want);
    assert_eq!(
        hosts(&s, "sort=capacity.cpu_cores:desc,created_at:asc").await,
        ["gpu-1", "web-2", "db-1", "web-1", "Web-Edge_%"]
    );
}

async fn unknown_fields_and_bad_values_are_400(s: TestServer) {
    for (query, field) in [
        ("filter[colour]=red", "filter[colour]"),
        ("filter[status]=runing", "filter[status]"),
        ("filter[hostname][gte]=a", "filter[hostname][gte]"),
        (
            "filter[created_at][gte]=yesterday",
            "filter[created_at][gte]",
        ),
        (
            "filter[capacity.memory_total]=lots",
            "filter[capacity.memory_total]",
        ),
        (
            "filter[capacity.cpu_cores][between]=1",
            "filter[capacity.cpu_cores][between]",
        ),
        ("sort=colour:asc", "sort"),
        ("sort=hostname:sideways", "sort"),
    ] {
        let p = problem(
            s.call(
                Method::GET,
                &format!("/v1/nodes?{query}"),
                Some(&s.token),
                None,
            )
            .await,
            400,
        )
        .await;
        assert_eq!(fields(&p), [field], "{query}");
        assert!(!p["errors"][0]["message"].as_str().unwrap().is_empty());
    }
    // Events have no labels.
    let p = problem(
        s.call(
            Method::GET,
            "/v1/events?filter[label][a]=b",
            Some(&s.token),
            None,
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["filter[label][a]"]);
}

async fn events_filter_on_nested_fields(s: TestServer) {
    let (_, all) = s.get("/v1/events").await;
    assert_eq!(all["pagination"]["total"], 3);
    let (_, ev) = s.get("/v1/events?filter[resource.type]=user").await;
    assert_eq!(ev["pagination"]["total"], 1);
    assert_eq!(ev["data"][0]["type"], "user.created");
    let (_, ev) = s
        .get("/v1/events?filter[actor.type]=system&filter[severity]=info,warning&sort=type:asc")
        .await;
    let types: Vec<&str> = ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["organization.created", "token.created", "user.created"]
    );
    let (_, ev) = s.get("/v1/events?filter[q]=organization").await;
    assert_eq!(ev["pagination"]["total"], 1);
    let (_, ev) = s.get("/v1/events?filter[timestamp][lt]=2000-01-01").await;
    assert_eq!(ev["pagination"]["total"], 0);
}

async fn empty_pages_keep_their_cursors(s: TestServer) {
    let org = s.admin_org().await;
    for i in 0..6 {
        s.insert_node(NodeSpec::new(&org, &format!("e{i}"))).await;
    }
    let list = "/v1/nodes?limit=2&sort=hostname:asc";
    let (_, p1) = s.get(list).await;
    let next = p1["pagination"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, p2) = s.get(&format!("{list}&cursor={}", enc(&next))).await;
    let before_e2 = p2["pagination"]["prev_cursor"]
        .as_str()
        .unwrap()
        .to_string();

    // Everything after page 1 goes away: the cursor to page 2 still works,
    // gives an empty page, and leads back to what is left.
    sqlx::query("DELETE FROM nodes WHERE hostname IN ('e2', 'e3', 'e4', 'e5')")
        .execute(s.store.pool())
        .await
        .unwrap();
    let (status, empty) = s.get(&format!("{list}&cursor={}", enc(&next))).await;
    assert_eq!(status, 200);
    assert!(ids(&empty).is_empty());
    assert_eq!(empty["pagination"]["has_more"], false);
    assert_eq!(empty["pagination"]["next_cursor"], Value::Null);
    let prev = empty["pagination"]["prev_cursor"]
        .as_str()
        .expect("an empty page can go back");
    let (_, back) = s.get(&format!("{list}&cursor={}", enc(prev))).await;
    assert_eq!(ids(&back), ids(&p1));

    // A "before" page that comes back empty leads forward: the rows before
    // e2 go away and newer ones arrive after it.
    sqlx::query("DELETE FROM nodes WHERE hostname IN ('e0', 'e1')")
        .execute(s.store.pool())
        .await
        .unwrap();
    let z0 = s.insert_node(NodeSpec::new(&org, "z0")).await;
    let (_, empty) = s.get(&format!("{list}&cursor={}", enc(&before_e2))).await;
    assert!(ids(&empty).is_empty());
    assert_eq!(empty["pagination"]["prev_cursor"], Value::Null);
    assert_eq!(empty["pagination"]["has_more"], true);
    let fwd = empty["pagination"]["next_cursor"]
        .as_str()
        .expect("an empty page can go forward");
    let (_, ahead) = s.get(&format!("{list}&cursor={}", enc(fwd))).await;
    assert_eq!(ids(&ahead), [z0]);
}

async fn sorting_by_id_first_orders_by_id(s: TestServer) {
    seed_fleet(&s).await;
    let (_, page) = s.get("/v1/nodes?sort=id:asc,hostname:desc").await;
    let got = ids(&page);
    let mut want = got.clone();
    want.sort();
    assert_eq!(got, want);
}

async fn search_and_text_filters_handle_unicode_and_nul(s: TestServer) {
    let org = s.admin_org().await;
    s.insert_node(NodeSpec::new(&org, "École-1")).await;
    s.insert_node(NodeSpec::new(&org, "plain")).await;
    assert_eq!(
        hosts(&s, &format!("filter[q]={}", enc("École"))).await,
        ["École-1"]
    );
    assert_eq!(
        hosts(&s, &format!("filter[q]={}", enc("COLE-1"))).await,
        ["École-1"]
    );
    assert_eq!(
        hosts(&s, &format!("filter[hostname]={}", enc("École-1"))).await,
        ["École-1"]
    );
    for q in [
        "filter[hostname]=a%00b",
        "filter[q]=%00",
        "filter[label][a%00]=b",
    ] {
        let r = s
            .call(Method::GET, &format!("/v1/nodes?{q}"), Some(&s.token), None)
            .await;
        problem(r, 400).await;
    }
}

both_backends!(
    empty_pages_keep_their_cursors,
    sorting_by_id_first_orders_by_id,
    search_and_text_filters_handle_unicode_and_nul,
    pagination_visits_every_row_once_while_rows_are_inserted,
    limits_and_cursors_are_checked,
    filters_or_ranges_nested_labels_and_search,
    sorting_by_several_fields,
    unknown_fields_and_bad_values_are_400,
    events_filter_on_nested_fields,
);
