//! Per-token (per-IP when unauthenticated) rate limits by the
//! organization's plan, with GCRA: in this process (`governor`) for one
//! server on SQLite, or in PostgreSQL when several replicas share it, so
//! that a client spreading its requests over replicas gets the plan's
//! limit, not one per replica (one conditional upsert per request; see
//! `shellwego_store::rate_limits`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use shellwego_core::plan::Plan;
use shellwego_core::RateLimitInfo;
use shellwego_store::{rate_limits, Store};

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
    /// Where buckets are kept when shared by replicas.
    shared: Option<Store>,
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
        RateLimits {
            limiters,
            shared: None,
        }
    }

    /// Limits kept in `store`, shared by every replica using it.
    pub fn shared(store: Store) -> RateLimits {
        RateLimits {
            shared: Some(store),
            ..RateLimits::new()
        }
    }

    /// Count one request of `key` against `plan`'s quota: in the shared
    /// store if there is one, else here.
    pub async fn admit(&self, plan: Plan, key: &str) -> Decision {
        let Some(store) = &self.shared else {
            return self.check(plan, key);
        };
        let q = plan.rate_quota();
        let per_minute = q.per_minute.max(1);
        let burst = q.burst.max(1);
        let interval = 60_000_000 / i64::from(per_minute);
        let capacity = interval * i64::from(burst);
        let now = i64::try_from(unix_now().as_micros()).unwrap_or(i64::MAX);
        let admitted = async {
            let mut c = store.conn().await?;
            rate_limits::admit(&mut c, key, now, interval, capacity).await
        }
        .await;
        let secs = |us: i64| u64::try_from(us.max(0)).unwrap_or(0).div_ceil(1_000_000);
        match admitted {
            Ok(Ok(tat)) => Decision {
                limit: per_minute,
                burst,
                remaining: u32::try_from((capacity - (tat - now)).max(0) / interval).unwrap_or(0),
                reset: secs(tat),
                refused: None,
            },
            Ok(Err(tat)) => Decision {
                limit: per_minute,
                burst,
                remaining: 0,
                reset: secs(tat),
                refused: Some(RateLimitInfo {
                    limit: per_minute,
                    window_secs: 60,
                    retry_after_secs: secs(tat + interval - capacity - now).max(1),
                }),
            },
            // The store is out of reach: the request fails on its own
            // there; the limiter does not add a second error.
            Err(e) => {
                tracing::warn!(error = %e, "rate limit: the shared buckets are out of reach; admitting");
                Decision {
                    limit: per_minute,
                    burst,
                    remaining: burst,
                    reset: secs(now),
                    refused: None,
                }
            }
        }
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
