//! The event log (issue 15, item 1): type filters with a prefix
//! (`app.*`), one event by id (404 for another organization's), and the
//! retention sweep that deletes what is older than the organization's
//! `audit_log_retention`.

use reqwest::Method;
use serde_json::{json, Value};

use shellwego_core::plan::Plan;
use shellwego_core::time::{now, to_micros};
use shellwego_server::controller::retention::EventRetention;
use shellwego_server::controller::Controller;
use shellwego_store::events::{self, Actor, NewEvent};
use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, TestServer};

const DAY: i64 = 86_400_000_000;

/// Record an event of `org` of `kind`, `days_ago` days old.
async fn record(s: &TestServer, org: &str, kind: &'static str, days_ago: i64) -> String {
    let mut tx = s.store.begin().await.unwrap();
    let id = events::record_at(
        &mut tx,
        NewEvent::info(kind, &Actor::system(), "app", "app_x").in_org(org),
        to_micros(now()) - days_ago * DAY,
    )
    .await
    .unwrap();
    shellwego_store::commit(tx).await.unwrap();
    id
}

fn types(list: &Value) -> Vec<String> {
    let mut t: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

async fn types_filtered_by_prefix_and_one_event_by_id(s: TestServer) {
    let org = s.admin_org().await;
    record(&s, &org, "app.created", 0).await;
    record(&s, &org, "app.crashed", 0).await;
    let node = record(&s, &org, "node.registered", 0).await;
    record(&s, &org, "application.odd", 0).await;
    let (st, l) = s.get("/v1/events?filter[type]=app.*&limit=100").await;
    assert_eq!(st, 200, "{l}");
    assert_eq!(types(&l), ["app.crashed", "app.created"]);
    let (_, l) = s
        .get("/v1/events?filter[type]=app.*,node.registered&limit=100")
        .await;
    assert_eq!(types(&l), ["app.crashed", "app.created", "node.registered"]);
    // `_` and `%` are no wildcards.
    let (_, l) = s.get("/v1/events?filter[type]=app_*&limit=100").await;
    assert_eq!(types(&l), Vec::<String>::new());
    for bad in ["filter[type]=a*p", "filter[severity]=inf*"] {
        let r = s
            .call(
                Method::GET,
                &format!("/v1/events?{bad}"),
                Some(&s.token),
                None,
            )
            .await;
        let p = problem(r, 400).await;
        assert_eq!(fields(&p).len(), 1, "{bad}: {p:#}");
    }

    // One event by id: the list's own view of it.
    let (st, e) = s.get(&format!("/v1/events/{node}")).await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["id"], node.as_str());
    assert_eq!(e["type"], "node.registered");
    assert!(
        e["timestamp"].is_string() && e["actor"]["type"] == "system",
        "{e}"
    );
    // Another organization's event, and none at all: 404.
    let (other, _, other_token) = s.org_with_user(Plan::Growth, "o@example.com").await;
    let theirs = record(&s, &other, "app.created", 0).await;
    let (st, _) = s.get(&format!("/v1/events/{theirs}")).await;
    assert_eq!(st, 404);
    let (st, _) = s.get_as(&other_token, &format!("/v1/events/{node}")).await;
    assert_eq!(st, 404);
    let (st, mine) = s
        .get_as(&other_token, &format!("/v1/events/{theirs}"))
        .await;
    assert_eq!((st, mine["id"].as_str()), (200, Some(theirs.as_str())));
    let (st, _) = s.get("/v1/events/evt_nosuchevent").await;
    assert_eq!(st, 404);
}

async fn events_past_the_retention_are_swept(s: TestServer) {
    let org = s.admin_org().await;
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{org}"),
            Some(&s.token),
            Some(json!({"settings": {"audit_log_retention": "30d"}})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (other, _, _) = s.org_with_user(Plan::Growth, "o@example.com").await;
    let old = record(&s, &org, "app.created", 31).await;
    let kept = record(&s, &org, "app.created", 29).await;
    // The other organization keeps the default year.
    let theirs_old = record(&s, &other, "app.created", 31).await;
    let theirs_gone = record(&s, &other, "app.created", 366).await;
    let ctx = s.started.as_ref().unwrap().ctx.clone();
    EventRetention.pass(&ctx).await.unwrap();
    let mut db = s.store.conn().await.unwrap();
    for (id, want) in [
        (old, false),
        (kept, true),
        (theirs_old, true),
        (theirs_gone, false),
    ] {
        assert_eq!(
            events::get(&mut db, &id).await.unwrap().is_some(),
            want,
            "{id}"
        );
    }
}

/// Its number in the log, once the (running server's) sequencer gave one.
async fn numbered(s: &TestServer, id: &str) -> i64 {
    let t = std::time::Instant::now();
    loop {
        let mut db = s.store.conn().await.unwrap();
        if let Some(n) = events::seq_of(&mut db, id).await.unwrap() {
            return n;
        }
        drop(db);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{id} never numbered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The log's order: committed events are numbered oldest first by the
/// sequencer; one committed after others were numbered comes after them,
/// even with an older time (a transaction that committed late), so a
/// reader that goes on "after the last number it saw" never skips one.
async fn the_log_numbers_events_as_they_commit(s: TestServer) {
    let org = s.admin_org().await;
    let a = record(&s, &org, "app.created", 0).await;
    let b = record(&s, &org, "app.updated", 0).await;
    let (na, nb) = (numbered(&s, &a).await, numbered(&s, &b).await);
    assert!(na < nb, "{na} {nb}");
    let late = record(&s, &org, "app.crashed", 1).await;
    let nl = numbered(&s, &late).await;
    assert!(nl > nb, "a late commit is numbered after: {nb} {nl}");
    let (other, _, _) = s.org_with_user(Plan::Growth, "o@example.com").await;
    let theirs = record(&s, &other, "app.created", 0).await;
    let nt = numbered(&s, &theirs).await;
    let mut db = s.store.conn().await.unwrap();
    let after: Vec<(i64, String)> = events::after(&mut db, na, Some(&org), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.seq, l.event.id))
        .collect();
    assert!(after.windows(2).all(|w| w[0].0 < w[1].0), "{after:?}");
    let ids: Vec<&str> = after.iter().map(|(_, id)| id.as_str()).collect();
    let pos = |id: &str| ids.iter().position(|x| *x == id);
    assert!(
        matches!((pos(&b), pos(&late)), (Some(i), Some(j)) if i < j),
        "{ids:?}"
    );
    assert_eq!(pos(&a), None, "after {na}: {ids:?}");
    assert!(!ids.contains(&theirs.as_str()), "{ids:?}");
    assert!(nt > 0 && events::max_seq(&mut db).await.unwrap() >= nt);
}

both_backends!(
    the_log_numbers_events_as_they_commit,
    types_filtered_by_prefix_and_one_event_by_id,
    events_past_the_retention_are_swept
);
