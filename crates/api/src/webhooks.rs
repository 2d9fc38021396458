//! Webhooks: `POST/GET /v1/webhooks`, `GET/PATCH/DELETE
//! /v1/webhooks/{webhook_id}`, `POST /v1/webhooks/{webhook_id}/test`, and
//! their deliveries (`GET /v1/webhooks/{webhook_id}/deliveries[/{id}]`,
//! `POST …/deliveries/{delivery_id}/redeliver`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shellwego_core::model::webhooks::pattern_problem;
use shellwego_core::model::{Backoff, DeliveryStatus, WebhookStatus};
use shellwego_core::{Error, FieldError};
use utoipa::ToSchema;

use crate::{Pagination, Validate};

/// The most patterns one webhook takes.
pub const MAX_EVENTS: usize = 100;
/// The most custom headers one webhook sends.
pub const MAX_HEADERS: usize = 20;
/// The longest custom header name and value.
pub const MAX_HEADER_NAME: usize = 100;
pub const MAX_HEADER_VALUE: usize = 1024;
/// The longest URL.
pub const MAX_URL: usize = 2048;
/// The most retries a policy may ask for.
pub const MAX_RETRIES: u32 = 20;
/// Retries when the policy does not say.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// A secret given by the caller: this many bytes at least, at most.
pub const MIN_SECRET: usize = 16;
pub const MAX_SECRET: usize = 256;

/// Headers a webhook may not set: hop-by-hop ones, those describing the
/// body or the target, and ours (`X-ShellWeGo-*`, checked apart).
pub const REFUSED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "expect",
    "user-agent",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyRequest {
    /// Retries after a first failed attempt, 0 to 20 (default 5).
    #[serde(default)]
    #[schema(example = 5, minimum = 0, maximum = 20)]
    pub max_retries: Option<u32>,
    /// `exponential` (default): the pause doubles after each attempt;
    /// `linear`: it grows by the base each time.
    #[serde(default)]
    pub backoff: Option<Backoff>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookCreate {
    /// Where deliveries are POSTed: an absolute http or https URL that the
    /// control plane's SSRF policy allows (not loopback, private,
    /// link-local or metadata addresses by default).
    #[schema(example = "https://yourapp.com/webhooks/shellwego")]
    pub url: String,
    /// The events to deliver: `*` (all), an event type (`app.deployed`),
    /// or a prefix (`app.*`).
    #[schema(example = json!(["app.deployed", "app.crashed", "node.offline"]))]
    pub events: Vec<String>,
    /// The signing secret (16 to 256 visible ASCII characters); generated
    /// (`whsec_…`) when left out. Returned in this response only.
    #[serde(default)]
    #[schema(example = "whsec_your_signing_secret")]
    pub secret: Option<String>,
    /// Headers sent with every delivery. Their values are write-only, like
    /// the secret (they often carry credentials). Not allowed: hop-by-hop
    /// headers, `Host`, `Content-Length`, `Content-Type`,
    /// `Content-Encoding`, `Expect`, `User-Agent`, `X-ShellWeGo-*`.
    #[serde(default)]
    #[schema(example = json!({"X-Custom-Header": "value"}))]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicyRequest>,
    /// Deliver to it (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A change to a webhook: the fields given replace the webhook's
/// (`headers` as a whole; `retry_policy` field by field).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookUpdate {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// A new signing secret (not returned).
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicyRequest>,
    /// `true` enables a disabled webhook again (it was failing, or
    /// disabled by hand); `false` disables it and cancels its pending
    /// deliveries.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// An absolute http(s) URL of sane length (the SSRF guard judges where it
/// leads).
fn check_url(errs: &mut Vec<FieldError>, url: &str) {
    let u = url.trim();
    let lower = u.to_ascii_lowercase();
    let problem = if u.len() > MAX_URL {
        Some(("too_long", format!("at most {MAX_URL} characters")))
    } else if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        Some((
            "invalid_value",
            "must be an absolute http:// or https:// URL".to_string(),
        ))
    } else if u.len() <= "https://".len() || u.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Some((
            "invalid_value",
            "must be an absolute http:// or https:// URL with a host, without spaces".to_string(),
        ))
    } else {
        None
    };
    if let Some((code, msg)) = problem {
        errs.push(
            FieldError::new("url", code, msg).with_value(url.chars().take(200).collect::<String>()),
        );
    }
}

fn check_events(errs: &mut Vec<FieldError>, events: &[String]) {
    if events.is_empty() {
        errs.push(FieldError::new(
            "events",
            "required",
            "name at least one event: * (all), a type such as app.deployed, or a prefix such as app.*",
        ));
    }
    if events.len() > MAX_EVENTS {
        errs.push(FieldError::new(
            "events",
            "too_long",
            format!("at most {MAX_EVENTS} patterns; use a prefix such as app.*"),
        ));
        return;
    }
    for (i, e) in events.iter().enumerate() {
        if let Some(msg) = pattern_problem(e) {
            errs.push(
                FieldError::new(format!("events[{i}]"), "invalid_value", msg)
                    .with_value(e.chars().take(100).collect::<String>()),
            );
        }
    }
}

/// A visible-ASCII secret of 16 to 256 characters.
fn check_secret(errs: &mut Vec<FieldError>, secret: &str) {
    if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len())
        || !secret.bytes().all(|b| b.is_ascii_graphic())
    {
        // Never echo it.
        errs.push(FieldError::new(
            "secret",
            "invalid_value",
            format!("must be {MIN_SECRET} to {MAX_SECRET} visible ASCII characters (no spaces); leave it out to have one generated"),
        ));
    }
}

/// An HTTP token (RFC 9110): what a header name may be made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_headers(errs: &mut Vec<FieldError>, headers: &BTreeMap<String, String>) {
    if headers.len() > MAX_HEADERS {
        errs.push(FieldError::new(
            "headers",
            "too_long",
            format!("at most {MAX_HEADERS} headers"),
        ));
        return;
    }
    let mut seen: Vec<String> = vec![];
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let lower = name.to_ascii_lowercase();
        let problem = if name.len() > MAX_HEADER_NAME || !is_token(name) {
            Some(format!("'{name}' is not a header name: at most {MAX_HEADER_NAME} letters, digits and !#$%&'*+-.^_`|~"))
        } else if lower.starts_with("x-shellwego-") {
            Some("X-ShellWeGo-* headers are the platform's own (event, delivery id, timestamp, signatures)".to_string())
        } else if REFUSED_HEADERS.contains(&lower.as_str()) {
            Some(format!(
                "{name} is set by the platform or describes the connection, and cannot be set"
            ))
        } else if seen.contains(&lower) {
            Some(format!("{name} is given twice (header names ignore case)"))
        } else if value.len() > MAX_HEADER_VALUE
            || !value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            Some(format!("the value must be at most {MAX_HEADER_VALUE} visible ASCII characters, spaces or tabs"))
        } else {
            None
        };
        if let Some(msg) = problem {
            errs.push(FieldError::new(field, "invalid_value", msg));
        }
        seen.push(lower);
    }
}

fn check_retry(errs: &mut Vec<FieldError>, r: &RetryPolicyRequest) {
    if let Some(n) = r.max_retries {
        if n > MAX_RETRIES {
            errs.push(
                FieldError::new(
                    "retry_policy.max_retries",
                    "out_of_range",
                    format!("must be between 0 and {MAX_RETRIES}"),
                )
                .with_value(n),
            );
        }
    }
}

impl Validate for WebhookCreate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        check_url(&mut errs, &self.url);
        check_events(&mut errs, &self.events);
        if let Some(s) = &self.secret {
            check_secret(&mut errs, s);
        }
        check_headers(&mut errs, &self.headers);
        if let Some(r) = &self.retry_policy {
            check_retry(&mut errs, r);
        }
        crate::finish(errs)
    }
}

impl Validate for WebhookUpdate {
    fn validate(&self) -> Result<(), Error> {
        let mut errs = vec![];
        if let Some(u) = &self.url {
            check_url(&mut errs, u);
        }
        if let Some(e) = &self.events {
            check_events(&mut errs, e);
        }
        if let Some(s) = &self.secret {
            check_secret(&mut errs, s);
        }
        if let Some(h) = &self.headers {
            check_headers(&mut errs, h);
        }
        if let Some(r) = &self.retry_policy {
            check_retry(&mut errs, r);
        }
        crate::finish(errs)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RetryPolicy {
    #[schema(example = 5)]
    pub max_retries: u32,
    pub backoff: Backoff,
}

/// A webhook. Never its secret, nor its headers' values.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    #[schema(example = "whk_2v8s9d2k1m")]
    pub id: String,
    #[schema(example = "https://yourapp.com/webhooks/shellwego")]
    pub url: String,
    #[schema(example = json!(["app.deployed", "app.*"]))]
    pub events: Vec<String>,
    /// The custom headers' names; each value is shown as `[redacted]`.
    #[schema(example = json!({"X-Custom-Header": "[redacted]"}))]
    pub headers: BTreeMap<String, String>,
    pub retry_policy: RetryPolicy,
    /// Whether deliveries are sent (`status` is `active`).
    pub enabled: bool,
    /// `active`, or `disabled` (by a user, or after failing for the
    /// failing window; `disabled_reason` says which).
    pub status: WebhookStatus,
    pub disabled_reason: Option<String>,
    /// The first failed attempt since the last success; null when the last
    /// attempt succeeded (or none was made).
    pub failing_since: Option<String>,
    /// The secret's last four characters (after `whsec_…` for a generated
    /// one), to tell secrets apart.
    #[schema(example = "whsec_…x7Kq")]
    pub secret_hint: String,
    pub created_at: String,
    pub updated_at: String,
}

/// The view of a webhook just created: the webhook and its signing
/// secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The signing secret; not shown again.
    #[schema(example = "whsec_3k8s2d9m1x7Kq4p0aZ5bT6nV2cW9eR1y")]
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<Webhook>,
    pub pagination: Pagination,
}

/// One delivery of an event (or a ping) to a webhook, and how its
/// attempts went. Its id is sent as `X-ShellWeGo-Delivery` with every
/// attempt: receivers deduplicate on it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    #[schema(example = "whd_2v8s9d2k1m")]
    pub id: String,
    pub webhook_id: String,
    /// The event delivered; null for a ping.
    pub event_id: Option<String>,
    #[schema(example = "app.deployed")]
    pub event_type: String,
    pub status: DeliveryStatus,
    /// Attempts made (since the last redelivery).
    pub attempts: i64,
    /// The HTTP status of the last attempt's answer; null when it got none.
    pub response_code: Option<i64>,
    /// How long the last attempt waited for its answer.
    pub latency_ms: Option<i64>,
    pub last_error: Option<String>,
    /// When the next attempt is due (`pending` only).
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    /// When a 2xx answer came.
    pub delivered_at: Option<String>,
}

/// A delivery with the body it sends.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    /// The request body, `{id, type, timestamp, data}` (the spec's Webhook
    /// Payload), as signed and sent.
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<Delivery>,
    pub pagination: Pagination,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(v: serde_json::Value) -> Result<(), Vec<String>> {
        let r: WebhookCreate = serde_json::from_value(v).map_err(|e| vec![e.to_string()])?;
        r.validate().map_err(|e| match e {
            Error::Validation { errors, .. } => errors.into_iter().map(|e| e.field).collect(),
            other => vec![other.to_string()],
        })
    }

    #[test]
    fn the_spec_example_is_valid() {
        create(serde_json::json!({
            "url": "https://yourapp.com/webhooks/shellwego",
            "events": ["app.deployed", "app.crashed", "node.offline"],
            "secret": "whsec_your_signing_secret",
            "headers": {"X-Custom-Header": "value"},
            "retry_policy": {"max_retries": 5, "backoff": "exponential"}
        }))
        .unwrap();
    }

    #[test]
    fn each_problem_names_its_field() {
        let base = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"url": "https://x.example/h", "events": ["*"]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            create(v)
        };
        assert_eq!(
            base(serde_json::json!({"url": "ftp://x/"})),
            Err(vec!["url".into()])
        );
        assert_eq!(
            base(serde_json::json!({"url": "/relative"})),
            Err(vec!["url".into()])
        );
        assert_eq!(
            base(serde_json::json!({"events": []})),
            Err(vec!["events".into()])
        );
        assert_eq!(
            base(serde_json::json!({"events": ["app.*", "nope", "apps.*"]})),
            Err(vec!["events[1]".into(), "events[2]".into()])
        );
        assert_eq!(
            base(serde_json::json!({"secret": "short"})),
            Err(vec!["secret".into()])
        );
        for bad in [
            "Host",
            "content-type",
            "Connection",
            "X-ShellWeGo-Event",
            "Bad Name",
        ] {
            assert_eq!(
                base(serde_json::json!({"headers": {bad: "v"}})),
                Err(vec![format!("headers.{bad}")]),
                "{bad}"
            );
        }
        assert_eq!(
            base(serde_json::json!({"headers": {"X-A": "line\nbreak"}})),
            Err(vec!["headers.X-A".into()])
        );
        assert_eq!(
            base(serde_json::json!({"retry_policy": {"max_retries": 21}})),
            Err(vec!["retry_policy.max_retries".into()])
        );
        assert!(base(serde_json::json!({"retry_policy": {"backoff": "random"}})).is_err());
        base(serde_json::json!({"retry_policy": {"backoff": "linear", "max_retries": 0}})).unwrap();
    }
}
