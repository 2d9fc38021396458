//! Webhooks: the words of a webhook and its deliveries, and the event
//! patterns a webhook subscribes with (`*`, an event type, or a prefix
//! such as `app.*`), matched the same way when a webhook is created (every
//! pattern must be able to match a known [`EventKind`]) and when an event
//! is recorded (which webhooks get a delivery).

use super::{vocabulary, EventKind};

vocabulary! {
    #[derive(Default)]
    /// Whether a webhook is sent deliveries (`webhooks.status`).
    pub enum WebhookStatus ("webhook status") {
        #[default]
        Active = "active",
        /// By a user (`enabled: false`), or by the dispatcher after its
        /// deliveries failed for the whole failing window.
        Disabled = "disabled",
    }
}

vocabulary! {
    #[derive(Default)]
    /// Where one delivery stands (`webhook_deliveries.status`).
    pub enum DeliveryStatus ("delivery status") {
        /// Waiting for its (next) attempt, or being sent.
        #[default]
        Pending = "pending",
        /// The receiver answered 2xx.
        Succeeded = "succeeded",
        /// Out of retries, refused without retry (a 4xx other than 408 and
        /// 429, a target the SSRF guard refuses), or cancelled with its
        /// webhook's disabling.
        Failed = "failed",
    }
}

vocabulary! {
    #[derive(Default)]
    /// How the pause between attempts grows (`retry_policy.backoff`).
    pub enum Backoff ("backoff") {
        /// `base × 2^(attempt−1)`.
        #[default]
        Exponential = "exponential",
        /// `base × attempt`.
        Linear = "linear",
    }
}

/// The event type of the delivery `POST /v1/webhooks/{id}/test` sends.
pub const PING: &str = "ping";

/// Does `pattern` take events of `event_type`? `*` takes every type,
/// `app.*` every type starting with `app.`, anything else that one type.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(stem) => event_type.starts_with(stem),
        None => pattern == event_type,
    }
}

/// Why `pattern` is not one a webhook may subscribe with, or `None`: it
/// must be `*`, a known event type, or `<resource>.*` for a resource some
/// known event type is about.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    let known = |p: &str| EventKind::NAMES.iter().any(|n| pattern_matches(p, n));
    let ok = match pattern.strip_suffix('*') {
        Some("") => true,
        Some(stem) => stem.ends_with('.') && !stem.contains('*') && known(pattern),
        None => EventKind::NAMES.contains(&pattern),
    };
    (!ok).then(|| {
        if pattern.contains('*') && pattern != "*" {
            format!("'{pattern}' matches no event type: a prefix pattern is a resource followed by .* (app.*, deployment.*, node.*, …)")
        } else {
            format!("'{pattern}' is not an event type: use *, a type such as app.deployed, or a prefix such as app.*")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_all_a_prefix_or_one_type() {
        assert!(pattern_matches("*", "app.deployed"));
        assert!(pattern_matches("app.*", "app.deployed"));
        assert!(!pattern_matches("app.*", "apps.deployed"));
        assert!(!pattern_matches("app.*", "deployment.failed"));
        assert!(pattern_matches("node.offline", "node.offline"));
        assert!(!pattern_matches("node.offline", "node.online"));
    }

    #[test]
    fn only_patterns_that_can_match_a_known_type_are_accepted() {
        for ok in [
            "*",
            "app.*",
            "webhook.*",
            "app.deployed",
            "webhook.disabled",
        ] {
            assert_eq!(pattern_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "app",
            "app.",
            "apps.*",
            "app*",
            "a*.b",
            "**",
            "app.deploy*",
            "ping",
            "App.*",
        ] {
            assert!(pattern_problem(bad).is_some(), "{bad}");
        }
    }
}
