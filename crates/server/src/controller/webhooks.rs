//! The webhook dispatcher: sends the deliveries of the outbox
//! (`shellwego_store::webhooks`), on every replica (not a singleton: the
//! claims keep two replicas from sending one delivery).
//!
//! A pass claims due deliveries (up to what it can have in flight) for as
//! long as an attempt may take plus a margin, and sends each in a task of
//! its own, so one slow receiver holds up nobody else. An attempt:
//! - the body is the stored payload, byte for byte; the headers are
//!   `Content-Type: application/json`, `User-Agent: ShellWeGo-Webhooks/1`,
//!   `X-ShellWeGo-Event`, `X-ShellWeGo-Delivery` (the delivery id, the same
//!   on every attempt), `X-ShellWeGo-Timestamp` (Unix seconds),
//!   `X-ShellWeGo-Signature: sha256=<hex HMAC-SHA256(secret, body)>` and
//!   `X-ShellWeGo-Signature-256-T: t=<timestamp>,v1=<hex
//!   HMAC-SHA256(secret, "<timestamp>.<body>")>`, and the webhook's own;
//! - it goes through the SSRF guard's client, which judges the address
//!   each connection reaches (no connection is reused, so a policy change
//!   applies to the next attempt), within the configured timeout;
//! - 2xx: succeeded. 5xx, 408, 429, a timeout or a connection error: a
//!   retry after `base × 2^(n−1)` (exponential) or `base × n` (linear) for
//!   attempt n, ±20%, at most an hour, until the webhook's `max_retries`
//!   retries are spent (then failed). Any other answer, or a target the
//!   guard refuses: failed at once.
//! - The outcome is written only while the delivery is still claimed by
//!   this attempt (see `record_attempt`), with the webhook's failure
//!   record: a webhook failing (no success) for the configured window is
//!   disabled, its pending deliveries failed, and `webhook.disabled`
//!   recorded, all in that transaction.
//!
//! Wakes on recorded events and on [`Topic::Deliveries`] (a ping, a
//! redelivery, an attempt that ended), and otherwise when the next retry
//! is due (at most a second).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::json;
use sha2::Sha256;
use shellwego_core::model::{DeliveryStatus, WebhookStatus};
use shellwego_core::time::{from_micros, now, rfc3339, to_micros};
use shellwego_core::Error;
use shellwego_store::events::{Actor, NewEvent, Severity};
use shellwego_store::webhooks::{self as store, Attempt, Delivery, Webhook};
use tokio::task::JoinSet;

use super::Controller;
use crate::bus::Topic;
use crate::ctx::ServerCtx;

/// What of a webhook is sealed: its signing secret, its custom headers.
pub const SECRET: &str = "secret";
pub const HEADERS: &str = "headers";

/// The associated data webhook `id`'s secret or headers (`what`) are
/// sealed with (a sealed value moved to another webhook does not open).
pub fn sealed_aad(id: &str, what: &str) -> String {
    format!("webhook:{id}:{what}")
}

/// Open webhook `w`'s sealed secret or headers (`what`).
pub async fn open_sealed(
    ctx: &ServerCtx,
    w: &Webhook,
    what: &str,
    sealed: &str,
) -> Result<Vec<u8>, Error> {
    let mut db = ctx.store.conn().await?;
    ctx.vault
        .open(&mut db, &sealed_aad(&w.id, what), sealed)
        .await
}

/// The custom headers of `w`, opened.
pub async fn headers_of(ctx: &ServerCtx, w: &Webhook) -> Result<BTreeMap<String, String>, Error> {
    let plain = open_sealed(ctx, w, HEADERS, &w.headers).await?;
    serde_json::from_slice(&plain).map_err(|e| {
        Error::internal_source(format!("webhook {}: the headers do not parse", w.id), e)
    })
}

/// Deliveries one replica sends at once.
const MAX_IN_FLIGHT: usize = 32;
/// A claim lasts the attempt's timeout and this much more (writing the
/// outcome).
const CLAIM_MARGIN: Duration = Duration::from_secs(5);
/// The longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The longest pause between passes (retries due, claims expired).
const TICK: Duration = Duration::from_secs(1);
/// The most of an error kept with a delivery.
const MAX_ERROR: usize = 1000;

pub const USER_AGENT: &str = "ShellWeGo-Webhooks/1";

type HmacSha256 = Hmac<Sha256>;

fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        // (HMAC takes a key of any length.)
        return String::new();
    };
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// `X-ShellWeGo-Signature`: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(secret, &[body]))
}

/// `X-ShellWeGo-Signature-256-T`: `t=<timestamp>,v1=<hex
/// HMAC-SHA256(secret, "<timestamp>.<body>")>`, so a receiver can refuse a
/// replayed (old) delivery.
pub fn timestamped_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    format!("t={t},v1={}", hmac_hex(secret, &[t.as_bytes(), b".", body]))
}

/// The pause before the retry that follows attempt `attempt` (1 for the
/// first), before jitter.
pub fn backoff(policy: shellwego_core::model::Backoff, base: Duration, attempt: u32) -> Duration {
    use shellwego_core::model::Backoff;
    let n = attempt.max(1);
    let d = match policy {
        Backoff::Exponential => base.saturating_mul(2u32.saturating_pow((n - 1).min(30))),
        Backoff::Linear => base.saturating_mul(n),
    };
    d.min(MAX_BACKOFF)
}

fn jittered(d: Duration) -> Duration {
    let f: f64 = rand::thread_rng().gen_range(0.8..=1.2);
    d.mul_f64(f).min(MAX_BACKOFF)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// At most [`MAX_ERROR`] bytes of `s` (on a character boundary).
fn bounded(mut s: String) -> String {
    if s.len() > MAX_ERROR {
        let mut end = MAX_ERROR;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// An error and its causes, each once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn refused(e: &shellwego_net::ssrf::SsrfError) -> String {
    format!("refused by the SSRF guard: {e}")
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// 2xx.
    Delivered { code: i64, latency_ms: i64 },
    /// Worth another attempt (5xx, 408, 429, timeout, connection error).
    Retry {
        code: Option<i64>,
        latency_ms: Option<i64>,
        error: String,
    },
    /// Not worth another (another 4xx, a 3xx left over, a refused target).
    Fail {
        code: Option<i64>,
        latency_ms: Option<i64>,
        error: String,
    },
    /// The claim ran out before the send began (the secret and headers
    /// took long to read) and another replica may have taken it: not sent.
    Lost,
}

/// What an answer's status means for the delivery.
fn classify(code: u16, latency_ms: i64) -> Outcome {
    let c = i64::from(code);
    match code {
        200..=299 => Outcome::Delivered {
            code: c,
            latency_ms,
        },
        408 | 429 | 500..=599 => Outcome::Retry {
            code: Some(c),
            latency_ms: Some(latency_ms),
            error: format!("the receiver answered {code}"),
        },
        _ => Outcome::Fail {
            code: Some(c),
            latency_ms: Some(latency_ms),
            error: format!(
                "the receiver answered {code}, which is not retried (only 5xx, 408 and 429 are)"
            ),
        },
    }
}

/// The dispatcher (see the module).
#[derive(Default)]
pub struct Dispatcher {
    client: Option<reqwest::Client>,
    in_flight: JoinSet<()>,
    /// When the next delivery nobody holds is due.
    next_due: Option<Instant>,
}

impl Dispatcher {
    fn client(&mut self, ctx: &ServerCtx) -> Result<reqwest::Client, Error> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let builder = reqwest::Client::builder()
            .timeout(ctx.config.webhooks.timeout)
            .user_agent(USER_AGENT)
            // A new connection for every attempt: the guard judges the
            // address each connection reaches, now, not when a pooled one
            // was opened.
            .pool_max_idle_per_host(0);
        // No redirects: a 3xx would turn the POST into a GET (and a 200
        // there into a false success) or carry the signed body and the
        // custom headers to another host. A 3xx is a failed attempt.
        let c = ctx
            .config
            .ssrf
            .client_without_redirects(builder)
            .map_err(|e| Error::internal_source("cannot build the webhook client", e))?;
        self.client = Some(c.clone());
        Ok(c)
    }
}

impl Controller for Dispatcher {
    const NAME: &'static str = "webhook-dispatcher";
    const SINGLETON: bool = false;

    fn wakes_on(&self) -> &'static [Topic] {
        &[Topic::Events, Topic::Deliveries]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        match self.next_due {
            Some(t) => t
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(10), TICK),
            None => TICK,
        }
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        while self.in_flight.try_join_next().is_some() {}
        let client = self.client(ctx)?;
        let free = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        let t = to_micros(now());
        let mut db = ctx.store.conn().await?;
        // A read first: on SQLite even an UPDATE that matches nothing takes
        // the write lock, and most passes find nothing due.
        let due = store::next_due(&mut db, t).await?.is_some_and(|at| at <= t);
        if free > 0 && due {
            let lease = ctx.config.webhooks.timeout + CLAIM_MARGIN;
            let claimed = store::claim_due(
                &mut db,
                ctx.replica.id(),
                t,
                t.saturating_add(micros(lease)),
                free as i64,
            )
            .await?;
            for d in claimed {
                let (ctx, client) = (ctx.clone(), client.clone());
                self.in_flight.spawn(async move {
                    let id = d.id.clone();
                    if let Err(e) = deliver(&ctx, &client, d).await {
                        tracing::warn!(delivery_id = %id, error = %e, "a webhook delivery's outcome was not recorded");
                    }
                    // Its retry (or the room it made) may be due before the
                    // next tick: every dispatcher looks again.
                    ctx.publish(&[Topic::Deliveries]);
                });
            }
        }
        let due = store::next_due(&mut db, t).await?;
        self.next_due = due.map(|at| {
            let wait = u64::try_from(at.saturating_sub(t)).unwrap_or(0);
            Instant::now() + Duration::from_micros(wait)
        });
        Ok(&[])
    }
}

/// Send delivery `d` (claimed by this replica) once, and write how it went.
async fn deliver(ctx: &ServerCtx, client: &reqwest::Client, d: Delivery) -> Result<(), Error> {
    let w = store::get(&mut *ctx.store.conn().await?, &d.webhook_id).await?;
    let Some(w) = w else {
        // Deleted with its deliveries meanwhile.
        return Ok(());
    };
    let mut d = d;
    let outcome = match w.status {
        WebhookStatus::Active => attempt(ctx, client, &w, &mut d).await,
        WebhookStatus::Disabled => Outcome::Fail {
            code: None,
            latency_ms: None,
            error: "cancelled: the webhook is disabled".into(),
        },
    };
    match outcome {
        // Another replica holds it now: it sends it, and records that.
        Outcome::Lost => Ok(()),
        outcome => record(ctx, &w, &d, outcome).await,
    }
}

/// One attempt: sign, send through the guard, classify the answer.
async fn attempt(
    ctx: &ServerCtx,
    client: &reqwest::Client,
    w: &Webhook,
    d: &mut Delivery,
) -> Outcome {
    let opened = match open_sealed(ctx, w, SECRET, &w.secret).await {
        Ok(s) => headers_of(ctx, w).await.map(|h| (s, h)),
        Err(e) => Err(e),
    };
    let (secret, headers) = match opened {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(webhook_id = %w.id, error = %e, "cannot open a webhook's secret or headers");
            return Outcome::Retry {
                code: None,
                latency_ms: None,
                error: "the control plane cannot open this webhook's secret (is every replica on the same master key?)".into(),
            };
        }
    };
    // An address in the URL itself is judged before connecting, for a
    // clear error (the client judges every connection anyway).
    match reqwest::Url::parse(&w.url) {
        Ok(u) => {
            if let Err(e) = ctx.config.ssrf.check_target(&u) {
                return Outcome::Fail {
                    code: None,
                    latency_ms: None,
                    error: bounded(refused(&e)),
                };
            }
        }
        Err(e) => {
            return Outcome::Fail {
                code: None,
                latency_ms: None,
                error: format!("the webhook's URL does not parse: {e}"),
            }
        }
    }
    // The claim is renewed right before the send, for the whole send: the
    // reads above may have taken part of it, and a claim that ran out may
    // be another replica's now (then this one does not send at all).
    let at = to_micros(now());
    let renewed = at.saturating_add(micros(ctx.config.webhooks.timeout + CLAIM_MARGIN));
    let kept = match ctx.store.conn().await {
        Ok(mut db) => store::renew_claim(
            &mut db,
            &d.id,
            ctx.replica.id(),
            d.claim_expires_at,
            at,
            renewed,
        )
        .await
        .unwrap_or(false),
        Err(_) => false,
    };
    if !kept {
        return Outcome::Lost;
    }
    d.claim_expires_at = renewed;
    let body = d.payload.as_bytes();
    let ts = now().timestamp();
    let mut req = client.post(&w.url);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .header("content-type", "application/json")
        .header("x-shellwego-event", &d.event_type)
        .header("x-shellwego-delivery", &d.id)
        .header("x-shellwego-timestamp", ts.to_string())
        .header("x-shellwego-signature", signature(&secret, body))
        .header(
            "x-shellwego-signature-256-t",
            timestamped_signature(&secret, ts, body),
        )
        .body(d.payload.clone());
    let started = Instant::now();
    let res = req.send().await;
    let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    match res {
        Ok(r) => classify(r.status().as_u16(), latency_ms),
        Err(e) => {
            if let Some(r) = shellwego_net::ssrf::refusal(&e) {
                Outcome::Fail {
                    code: None,
                    latency_ms: None,
                    error: bounded(refused(r)),
                }
            } else if e.is_timeout() {
                Outcome::Retry {
                    code: None,
                    latency_ms: Some(latency_ms),
                    error: format!(
                        "no answer within {:?} (the delivery timeout)",
                        ctx.config.webhooks.timeout
                    ),
                }
            } else {
                Outcome::Retry {
                    code: None,
                    latency_ms: None,
                    error: bounded(chain(&e)),
                }
            }
        }
    }
}

/// Write the outcome of `d`'s attempt, and the webhook's failure record
/// (disabling it when it has failed for the whole window), in one
/// transaction that writes nothing if the claim is no longer ours.
async fn record(ctx: &ServerCtx, w: &Webhook, d: &Delivery, outcome: Outcome) -> Result<(), Error> {
    let t = to_micros(now());
    let attempt_no = u32::try_from(d.attempts.saturating_add(1)).unwrap_or(u32::MAX);
    let retries_left = d.attempts < w.max_retries;
    let (status, next_at, code, latency_ms, error) = match outcome {
        Outcome::Delivered { code, latency_ms } => (
            DeliveryStatus::Succeeded,
            t,
            Some(code),
            Some(latency_ms),
            None,
        ),
        Outcome::Retry {
            code,
            latency_ms,
            error,
        } if retries_left => {
            let pause = jittered(backoff(
                w.backoff,
                ctx.config.webhooks.retry_base,
                attempt_no,
            ));
            (
                DeliveryStatus::Pending,
                t.saturating_add(micros(pause)),
                code,
                latency_ms,
                Some(error),
            )
        }
        Outcome::Retry {
            code,
            latency_ms,
            error,
        } => (
            DeliveryStatus::Failed,
            t,
            code,
            latency_ms,
            Some(bounded(format!(
                "{error} (out of retries: {} attempts)",
                attempt_no
            ))),
        ),
        Outcome::Fail {
            code,
            latency_ms,
            error,
        } => (DeliveryStatus::Failed, t, code, latency_ms, Some(error)),
        // Not sent: nothing to write (the replica holding it writes).
        Outcome::Lost => return Ok(()),
    };
    let mut unit = ctx.unit().await?;
    let written = store::record_attempt(
        &mut unit,
        &d.id,
        ctx.replica.id(),
        d.claim_expires_at,
        &Attempt {
            status,
            response_code: code,
            latency_ms,
            error: error.as_deref(),
            next_attempt_at: next_at,
            at: t,
        },
    )
    .await?;
    if !written {
        tracing::info!(delivery_id = %d.id, "a webhook delivery's claim was taken over (or the delivery changed) while it was sent; its outcome is not recorded");
        return Ok(());
    }
    if status == DeliveryStatus::Succeeded {
        store::mark_succeeded(&mut unit, &w.id).await?;
    } else if let Some(store::Failing {
        status: WebhookStatus::Active,
        failing_since: since,
    }) = store::mark_failing(&mut unit, &w.id, t).await?
    {
        let window = ctx.config.webhooks.disable_after;
        if t.saturating_sub(since) >= micros(window) {
            let reason = bounded(format!(
                "every delivery attempt has failed for {} (since {}); the last: {}",
                human(window),
                rfc3339(from_micros(since)),
                error.as_deref().unwrap_or("-")
            ));
            if store::disable(&mut unit, &w.id, &reason, t).await? {
                let cancelled = store::cancel_pending(
                    &mut unit,
                    &w.id,
                    "cancelled: the webhook was disabled after failing for too long",
                    t,
                )
                .await?;
                unit.record(
                    NewEvent::info("webhook.disabled", &Actor::system(), "webhook", &w.id)
                        .in_org(&w.organization_id)
                        .severity(Severity::Warning)
                        .meta(json!({
                            "reason": reason,
                            "failing_since": rfc3339(from_micros(since)),
                            "cancelled_deliveries": cancelled,
                        })),
                );
                tracing::warn!(webhook_id = %w.id, %reason, "webhook disabled");
            }
        }
    }
    unit.commit().await
}

/// `3d`, `2h`, `90s`, `150ms`: a window as a person reads it.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shellwego_core::model::Backoff;

    #[test]
    fn backoff_grows_exponentially_or_linearly_up_to_an_hour() {
        let base = Duration::from_secs(10);
        let e: Vec<u64> = (1..=5)
            .map(|n| backoff(Backoff::Exponential, base, n).as_secs())
            .collect();
        assert_eq!(e, [10, 20, 40, 80, 160]);
        let l: Vec<u64> = (1..=5)
            .map(|n| backoff(Backoff::Linear, base, n).as_secs())
            .collect();
        assert_eq!(l, [10, 20, 30, 40, 50]);
        assert_eq!(backoff(Backoff::Exponential, base, 20), MAX_BACKOFF);
        assert_eq!(backoff(Backoff::Exponential, base, u32::MAX), MAX_BACKOFF);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(100)).as_secs_f64();
            assert!((80.0..=120.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn answers_are_retried_only_when_worth_it() {
        assert!(matches!(classify(200, 1), Outcome::Delivered { .. }));
        assert!(matches!(classify(204, 1), Outcome::Delivered { .. }));
        for c in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(classify(c, 1), Outcome::Retry { .. }), "{c}");
        }
        for c in [301, 400, 401, 403, 404, 410, 422] {
            assert!(matches!(classify(c, 1), Outcome::Fail { .. }), "{c}");
        }
    }

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let t = timestamped_signature(b"Jefe", 1_700_000_000, b"{}");
        assert_eq!(
            t,
            format!("t=1700000000,v1={}", hmac_hex(b"Jefe", &[b"1700000000.{}"]))
        );
    }

    #[test]
    fn errors_are_bounded() {
        let long = "é".repeat(2000);
        let b = bounded(long);
        assert!(b.len() <= MAX_ERROR + '…'.len_utf8());
        assert_eq!(human(Duration::from_secs(3 * 86_400)), "3d");
        assert_eq!(human(Duration::from_millis(800)), "800ms");
    }
}
