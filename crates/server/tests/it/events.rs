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

/// Wait until the sequencer has numbered every event recorded so far (the
/// setup's own): a stream opened after that sees only the test's.
async fn settled(s: &TestServer) {
    let t = std::time::Instant::now();
    loop {
        let mut db = s.store.conn().await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE seq IS NULL")
            .fetch_one(&mut *db)
            .await
            .unwrap();
        if left == 0 {
            return;
        }
        drop(db);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{left} events never numbered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A client of `GET /v1/events/stream`.
struct Stream {
    res: reqwest::Response,
    buf: String,
}

/// A frame: (event, id, data).
type Frame = (String, String, Value);

impl Stream {
    async fn open(s: &TestServer, token: &str, query: &str, last: Option<&str>) -> Stream {
        let mut r = s
            .http
            .get(s.url(&format!("/v1/events/stream{query}")))
            .bearer_auth(token);
        if let Some(id) = last {
            r = r.header("Last-Event-ID", id);
        }
        let res = r.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Stream {
            res,
            buf: String::new(),
        }
    }

    /// The next event within `within` (keep-alive comments skipped).
    async fn next(&mut self, within: std::time::Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut ev, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if !ev.is_empty() {
                    return Some((ev, id, serde_json::from_str(&data).unwrap()));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk()).await;
            match chunk {
                Ok(Ok(Some(b))) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                _ => return None,
            }
        }
    }
}

const SECS: fn(u64) -> std::time::Duration = std::time::Duration::from_secs;

/// The stream: live events of the caller's organization only, in the
/// spec's format; a client that disconnects and reconnects with
/// `Last-Event-ID` gets exactly the 50 it missed, in order, then nothing
/// more (no duplicate, no other organization's); filters as the list's.
async fn streams_resume_in_order_and_stay_in_their_organization(s: TestServer) {
    let org = s.admin_org().await;
    let (other, _, other_token) = s.org_with_user(Plan::Growth, "o@example.com").await;
    settled(&s).await;
    let mut st = Stream::open(&s, &s.token, "", None).await;
    let first = record(&s, &org, "app.created", 0).await;
    let (ev, id, data) = st.next(SECS(10)).await.expect("the live event");
    assert_eq!((ev.as_str(), id.as_str()), ("app.created", first.as_str()));
    assert_eq!(data["id"], first.as_str());
    assert_eq!(data["type"], "app.created");
    assert!(data["timestamp"].is_string(), "{data}");
    drop(st);

    let mut missed = vec![];
    for i in 0..50 {
        missed.push(
            record(
                &s,
                &org,
                if i % 2 == 0 {
                    "app.scaled"
                } else {
                    "node.updated"
                },
                0,
            )
            .await,
        );
        if i % 10 == 0 {
            record(&s, &other, "app.created", 0).await;
        }
    }
    let mut st = Stream::open(&s, &s.token, "", Some(&first)).await;
    let mut got = vec![];
    while got.len() < 50 {
        let Some((_, id, _)) = st.next(SECS(10)).await else {
            panic!("{} of 50 after resuming: {got:?}", got.len())
        };
        got.push(id);
    }
    assert_eq!(got, missed, "exactly the missed ones, in order");
    assert!(st.next(SECS(2)).await.is_none(), "nothing more");

    // Filters, and the other organization's own stream.
    let mut apps = Stream::open(&s, &s.token, "?filter[type]=app.*", None).await;
    let mut theirs = Stream::open(&s, &other_token, "", None).await;
    record(&s, &org, "node.offline", 0).await;
    let mine = record(&s, &org, "app.deleted", 0).await;
    let their = record(&s, &other, "app.deleted", 0).await;
    assert_eq!(apps.next(SECS(10)).await.unwrap().1, mine);
    assert_eq!(theirs.next(SECS(10)).await.unwrap().1, their);
    assert!(theirs.next(SECS(1)).await.is_none());

    // A bounded stream ends by itself.
    let t = std::time::Instant::now();
    let mut short = Stream::open(&s, &s.token, "?max_seconds=1", None).await;
    assert!(short.next(SECS(5)).await.is_none());
    assert!(t.elapsed() < SECS(4), "ended after {:?}", t.elapsed());

    // What it refuses.
    for (q, last) in [
        ("?filter[type]=a*p", None),
        ("?filter[severity]=loud", None),
        ("?filter[nope]=1", None),
        ("?max_seconds=0", None),
        ("", Some(their.as_str())),
        ("", Some("evt_nosuchevent")),
    ] {
        let mut r = s
            .http
            .get(s.url(&format!("/v1/events/stream{q}")))
            .bearer_auth(&s.token);
        if let Some(id) = last {
            r = r.header("Last-Event-ID", id);
        }
        problem(r.send().await.unwrap(), 400).await;
    }
}

/// A stream that does not read falls behind: the server keeps a bounded
/// buffer for it, then ends it with a last `stream.overflow` event naming
/// the id to resume from; resuming from there gets every later event, in
/// order.
async fn a_stream_that_falls_behind_is_told_where_to_resume(s: TestServer) {
    let org = s.admin_org().await;
    settled(&s).await;
    let mut st = Stream::open(&s, &s.token, "", None).await;
    // Far more than the buffer (1 024 events) plus what the sockets hold
    // (6 000 events of 4 KiB: 24 MiB).
    let mut ids = vec![];
    let mut tx = s.store.begin().await.unwrap();
    for i in 0..6000i64 {
        let e = NewEvent::info("app.scaled", &Actor::system(), "app", "app_x")
            .in_org(&org)
            .meta(json!({"padding": "x".repeat(4000)}));
        ids.push(
            events::record_at(&mut tx, e, to_micros(now()) + i)
                .await
                .unwrap(),
        );
    }
    shellwego_store::commit(tx).await.unwrap();
    // Let the sequencer number them and the tail send them unread.
    numbered(&s, ids.last().unwrap()).await;
    tokio::time::sleep(SECS(2)).await;
    let mut seen = vec![];
    let resume = loop {
        let Some((ev, id, data)) = st.next(SECS(20)).await else {
            panic!(
                "the stream ended without an overflow event after {} events",
                seen.len()
            )
        };
        if ev == "stream.overflow" {
            break data["resume_from"].as_str().unwrap().to_string();
        }
        seen.push(id);
    };
    assert!(
        st.next(SECS(2)).await.is_none(),
        "the stream ends after the overflow"
    );
    assert!(seen.len() < ids.len(), "{} of {}", seen.len(), ids.len());
    assert_eq!(seen[..], ids[..seen.len()], "what came, came in order");
    assert_eq!(resume, *seen.last().unwrap());
    // Resuming gets the rest, in order.
    let mut st = Stream::open(&s, &s.token, "", Some(&resume)).await;
    let mut rest = vec![];
    while rest.len() < ids.len() - seen.len() {
        let (_, id, _) = st.next(SECS(20)).await.expect("the rest");
        rest.push(id);
    }
    assert_eq!(rest[..], ids[seen.len()..]);
    println!(
        "overflow after {} of {} events; resumed the other {}",
        seen.len(),
        ids.len(),
        rest.len()
    );
}

/// Two replicas on PostgreSQL: an event committed through one reaches a
/// stream of the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_through_one_replica_reaches_a_stream_of_the_other() {
    let Some(a) = TestServer::start(shellwego_testkit::Backend::Postgres).await else {
        return;
    };
    let b = a.replica().await;
    let mut st = Stream::open(&b, &b.token, "?filter[type]=organization.*", None).await;
    let org = a.admin_org().await;
    let t = std::time::Instant::now();
    let r = a
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{org}"),
            Some(&a.token),
            Some(json!({"settings": {"audit_log_retention": "90d"}})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (ev, _, data) = st
        .next(SECS(5))
        .await
        .expect("the event on the other replica");
    let took = t.elapsed();
    assert_eq!(ev, "organization.updated", "{data}");
    assert!(took < SECS(1), "took {took:?}");
    println!("replica A -> stream on B: {took:?}");
}

both_backends!(
    a_stream_that_falls_behind_is_told_where_to_resume,
    streams_resume_in_order_and_stay_in_their_organization,
    the_log_numbers_events_as_they_commit,
    types_filtered_by_prefix_and_one_event_by_id,
    events_past_the_retention_are_swept
);
