//! Rate limits by plan, with the spec's headers and 429 body.

use reqwest::Method;
use shellwego_core::plan::Plan;

use shellwego_testkit::server::{problem, slug, TestServer};
use shellwego_testkit::Backend;

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_free_tier_token_gets_429_after_its_burst() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
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

#[tokio::test]
async fn unauthenticated_callers_are_limited_per_ip() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
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
