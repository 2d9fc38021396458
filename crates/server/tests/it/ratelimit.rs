//! Rate limits by plan, with the spec's headers and 429 body.

use reqwest::Method;
use shellwego_core::plan::Plan;

use shellwego_testkit::both_backends;
use shellwego_testkit::server::{problem, slug, TestServer};
use shellwego_testkit::Backend;

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

both_backends!(
    a_free_tier_token_gets_429_after_its_burst,
    unauthenticated_callers_are_limited_per_ip
);

async fn a_free_tier_token_gets_429_after_its_burst(s: TestServer) {
    let (_, _, free) = s.org_with_user(Plan::Free, "free@example.com").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut remaining = vec![];
    let mut refused = None;
    for _ in 0..30 {
        let r = s.call(Method::GET, "/v1/user", Some(&free), None).await;
        assert_eq!(header(&r, "x-ratelimit-limit"), Some(100));
        assert_eq!(header(&r, "x-ratelimit-burst"), Some(20));
        assert!(header(&r, "x-ratelimit-reset").unwrap() >= now);
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
        remaining.push(header(&r, "x-ratelimit-remaining").unwrap());
    }
    // Burst of 20: remaining counts down 19, 18, … 0.
    assert_eq!(remaining.len(), 20, "remaining: {remaining:?}");
    assert_eq!(remaining[0], 19);
    assert!(
        remaining.windows(2).all(|w| w[1] < w[0]),
        "remaining must count down: {remaining:?}"
    );
    let r = refused.expect("no 429 after the burst");
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some(0));
    let retry = header(&r, "retry-after").unwrap();
    assert!(retry >= 1);
    assert_eq!(header(&r, "x-ratelimit-retry-after"), Some(retry));
    let p = problem(r, 429).await;
    assert_eq!(slug(&p), "rate-limit-exceeded");
    assert_eq!(p["error"], "rate_limit_exceeded");
    assert_eq!(p["retry_after"], retry);
    assert_eq!(p["limit"], 100);
    assert_eq!(p["window"], "60s");
    assert!(p["message"].as_str().unwrap().contains("Retry after"));
    // Other tokens have their own budget; the Enterprise admin's is larger.
    let r = s.call(Method::GET, "/v1/user", Some(&s.token), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit"), Some(50_000));
}

async fn unauthenticated_callers_are_limited_per_ip(s: TestServer) {
    let mut statuses = vec![];
    for _ in 0..21 {
        statuses.push(
            s.call(Method::GET, "/v1/user", None, None)
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(statuses[..20].iter().all(|c| *c == 401), "{statuses:?}");
    assert_eq!(statuses[20], 429);
    // A token-bearing caller from the same IP is not affected.
    assert_eq!(
        s.call(Method::GET, "/v1/user", Some(&s.token), None)
            .await
            .status(),
        200
    );
}

/// With several replicas on one PostgreSQL, a client spreading its
/// requests over them still has one budget, not one per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_budget() {
    let Some(a) = TestServer::start(Backend::Postgres).await else {
        return;
    };
    let b = a.replica().await;
    let (_, _, free) = a.org_with_user(Plan::Free, "free@example.com").await;
    let mut statuses = vec![];
    let mut remaining = vec![];
    for i in 0..21 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = s.call(Method::GET, "/v1/user", Some(&free), None).await;
        statuses.push(r.status().as_u16());
        remaining.push(header(&r, "x-ratelimit-remaining").unwrap());
    }
    assert!(statuses[..20].iter().all(|c| *c == 200), "{statuses:?}");
    assert_eq!(
        statuses[20], 429,
        "the 21st request, whichever replica: {statuses:?}"
    );
    assert_eq!(remaining[0], 19, "{remaining:?}");
    assert_eq!(remaining[19], 0, "{remaining:?}");
}
