//! Per-token (per-IP when unauthenticated) rate limits by the
//! organization's plan, with GCRA from `governor`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use shellwego_core::plan::Plan;
use shellwego_core::RateLimitInfo;

type Keyed = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// The outcome of one check, for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Requests per window (the plan's sustained rate).
    pub limit: u32,
    /// Size of the bucket: requests that may be sent at once.
    pub burst: u32,
    /// Requests that may be sent right now (what is left of the burst).
    pub remaining: u32,
    /// Unix time (s) when the bucket is full again.
    pub reset: u64,
    /// Set when the request is refused.
    pub refused: Option<RateLimitInfo>,
}

pub struct RateLimits {
    limiters: HashMap<Plan, (Keyed, u32)>,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimits {
    pub fn new() -> RateLimits {
        let limiters = Plan::ALL
            .into_iter()
            .map(|plan| {
                let q = plan.rate_quota();
                let per_minute = NonZeroU32::new(q.per_minute).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::per_minute(per_minute).allow_burst(burst);
                (
                    plan,
                    (
                        RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
                        q.per_minute,
                    ),
                )
            })
            .collect();
        RateLimits { limiters }
    }

    /// Count one request of `key` against `plan`'s quota.
    pub fn check(&self, plan: Plan, key: &str) -> Decision {
        let Some((limiter, per_minute)) = self.limiters.get(&plan) else {
            return Decision {
                limit: 0,
                burst: 0,
                remaining: 0,
                reset: 0,
                refused: None,
            };
        };
        let key = key.to_string();
        let now = unix_now();
        match limiter.check_key(&key) {
            Ok(snap) => {
                let quota = snap.quota();
                let remaining = snap.remaining_burst_capacity();
                let missing = quota.burst_size().get().saturating_sub(remaining);
                let full_in = quota.replenish_interval() * missing;
                Decision {
                    limit: *per_minute,
                    burst: quota.burst_size().get(),
                    remaining,
                    reset: (now + full_in).as_secs_f64().ceil() as u64,
                    refused: None,
                }
            }
            Err(not_until) => {
                let quota = not_until.quota();
                let wait = not_until.wait_time_from(limiter.clock().now());
                let full_in = quota.replenish_interval() * quota.burst_size().get();
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                Decision {
                    limit: *per_minute,
                    burst: quota.burst_size().get(),
                    remaining: 0,
                    reset: (now + full_in).as_secs_f64().ceil() as u64,
                    refused: Some(RateLimitInfo {
                        limit: *per_minute,
                        window_secs: 60,
                        retry_after_secs: retry_after,
                    }),
                }
            }
        }
    }

    /// Forget keys whose buckets are full again (run periodically).
    pub fn retain_recent(&self) {
        for (l, _) in self.limiters.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_tier_allows_its_burst_then_refuses() {
        let rl = RateLimits::new();
        let mut last = u32::MAX;
        for i in 0..20 {
            let d = rl.check(Plan::Free, "k");
            assert!(d.refused.is_none(), "request {i} refused");
            assert!(d.remaining < last);
            last = d.remaining;
        }
        let d = rl.check(Plan::Free, "k");
        let info = d.refused.expect("21st request must be refused");
        assert_eq!(info.limit, 100);
        assert!(info.retry_after_secs >= 1);
        // Another key has its own bucket.
        assert!(rl.check(Plan::Free, "other").refused.is_none());
        // Enterprise has a bigger burst.
        assert_eq!(rl.check(Plan::Enterprise, "e").remaining, 499);
    }
}
