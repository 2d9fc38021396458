//! Webhooks of the caller's organization (create, list, get, update,
//! delete, test) and their deliveries (list, get, redeliver). Deliveries
//! themselves are written with their events (`shellwego_store::webhooks`)
//! and sent by the dispatcher (`crate::controller::webhooks`).
//!
//! A webhook's signing secret and its custom headers are sealed at rest
//! under its organization's data key (`crate::vault`), with associated data
//! naming the webhook and which of the two it is
//! ([`crate::controller::webhooks::sealed_aad`]); the dispatcher opens them
//! (`crate::controller::webhooks::open_sealed`).

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::json;
use shellwego_api::webhooks::DEFAULT_MAX_RETRIES;
use shellwego_api::webhooks::{RetryPolicyRequest, WebhookCreate, WebhookUpdate};
use shellwego_core::list::ListParams;
use shellwego_core::model::webhooks::PING;
use shellwego_core::model::{Backoff, WebhookStatus};
use shellwego_core::time::{now, to_micros};
use shellwego_core::{id, Error};
use shellwego_store::events::NewEvent;
use shellwego_store::list::{Page, Scope};
use shellwego_store::webhooks::{
    self as store, Delivery, NewDelivery, Webhook, DELIVERIES, WEBHOOKS,
};
use shellwego_store::Tx;

use crate::auth::Principal;
use crate::bus::Topic;
use crate::controller::webhooks::{headers_of, sealed_aad, HEADERS, SECRET};
use crate::ctx::ServerCtx;
use crate::vault::DataKey;

/// The most webhooks one organization may have (each event is matched
/// against every one of them, in the transaction that records it).
pub const MAX_PER_ORG: i64 = 50;

/// Why a webhook disabled by hand is.
pub const DISABLED_BY_USER: &str = "disabled by a user (PATCH enabled: true turns it back on)";

/// Seal webhook `id`'s secret or headers (`what`) for storage.
fn seal_secret(key: &DataKey, id: &str, what: &str, plaintext: &[u8]) -> Result<String, Error> {
    key.seal(&sealed_aad(id, what), plaintext)
}

/// A new signing secret: `whsec_` and 32 random letters and digits (190 bits).
pub fn new_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..32)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("whsec_{tail}")
}

/// What tells a secret apart without giving it away: its last four
/// characters (after `whsec_…` for a generated one).
fn hint(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if secret.starts_with("whsec_") {
        format!("whsec_…{tail}")
    } else {
        format!("…{tail}")
    }
}

/// A webhook as the API shows it: the row, and the names of its custom
/// headers (their values are sealed and never shown).
#[derive(Debug, Clone)]
pub struct WebhookInfo {
    pub webhook: Webhook,
    pub header_names: Vec<String>,
}

async fn info(ctx: &ServerCtx, w: Webhook) -> Result<WebhookInfo, Error> {
    let header_names = headers_of(ctx, &w).await?.into_keys().collect();
    Ok(WebhookInfo {
        webhook: w,
        header_names,
    })
}

fn seal_headers(
    key: &DataKey,
    id: &str,
    headers: &BTreeMap<String, String>,
) -> Result<String, Error> {
    let text = serde_json::to_string(headers).map_err(Error::internal)?;
    seal_secret(key, id, HEADERS, text.as_bytes())
}

/// The patterns given, without repeats, in their order.
fn patterns(events: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for e in events {
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    out
}

/// The URL, judged by the SSRF guard as it resolves now: a 400 naming
/// `url` when it leads somewhere user-given URLs may not reach (the
/// dispatcher judges every delivery again). Its host.
async fn check_target(ctx: &ServerCtx, url: &str) -> Result<String, Error> {
    let parsed = ctx
        .config
        .ssrf
        .check_url(url)
        .await
        .map_err(|e| super::apps::target_error("url", url, &e))?;
    Ok(parsed.host_str().unwrap_or_default().to_string())
}

fn apply_retry(w: &mut Webhook, r: &RetryPolicyRequest) {
    if let Some(n) = r.max_retries {
        w.max_retries = i64::from(n);
    }
    if let Some(b) = r.backoff {
        w.backoff = b;
    }
}

/// Create a webhook; the answer carries its secret, shown this once.
pub async fn webhook_create(
    ctx: &ServerCtx,
    p: &Principal,
    req: &WebhookCreate,
) -> Result<(WebhookInfo, String), Error> {
    p.authorize("webhooks", "write", None)?;
    let org = p.organization_id.clone();
    let url = req.url.trim().to_string();
    let host = check_target(ctx, &url).await?;
    let count = store::count_in(&mut *ctx.store.conn().await?, &org).await?;
    if count >= MAX_PER_ORG {
        return Err(Error::QuotaExceeded(format!(
            "An organization may have {MAX_PER_ORG} webhooks; delete one, or subscribe an existing one to more events."
        )));
    }
    let secret = req.secret.clone().unwrap_or_else(new_secret);
    let enabled = req.enabled.unwrap_or(true);
    let t = shellwego_core::time::from_micros(to_micros(now()));
    let key = ctx.vault.key_for(&ctx.store, &org).await?;
    let id = id::new_id("whk");
    let mut w = Webhook {
        secret: seal_secret(&key, &id, SECRET, secret.as_bytes())?,
        headers: seal_headers(&key, &id, &req.headers)?,
        id,
        organization_id: org.clone(),
        url,
        events: patterns(&req.events),
        secret_hint: hint(&secret),
        max_retries: i64::from(DEFAULT_MAX_RETRIES),
        backoff: Backoff::default(),
        status: if enabled {
            WebhookStatus::Active
        } else {
            WebhookStatus::Disabled
        },
        disabled_reason: (!enabled).then(|| DISABLED_BY_USER.to_string()),
        failing_since: None,
        created_at: t,
        updated_at: t,
    };
    if let Some(r) = &req.retry_policy {
        apply_retry(&mut w, r);
    }
    let mut unit = ctx.unit().await?;
    store::insert(&mut unit, &w).await?;
    // The URL's host only: a path or query may carry a credential, and
    // events are read more widely than webhooks.
    unit.record(
        NewEvent::info("webhook.created", &p.actor(), "webhook", &w.id)
            .in_org(&org)
            .meta(json!({"host": host, "events": w.events, "enabled": enabled})),
    );
    unit.commit().await?;
    let header_names = req.headers.keys().cloned().collect();
    Ok((
        WebhookInfo {
            webhook: w,
            header_names,
        },
        secret,
    ))
}

/// The caller's organization's webhooks.
pub async fn webhook_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<WebhookInfo>, Error> {
    p.authorize("webhooks", "read", None)?;
    let scope = Scope::new().is_in("t.organization_id", p.organization_ids());
    let page =
        crate::service::list_page(&ctx.store, &WEBHOOKS, &scope, params, store::from_row).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for w in page.items {
        items.push(info(ctx, w).await?);
    }
    Ok(Page {
        items,
        pagination: page.pagination,
    })
}

/// Webhook `id` of the caller's organization; 404 otherwise.
async fn visible(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<Webhook, Error> {
    if !id::is_valid("whk", id) {
        return Err(Error::not_found("webhook", id));
    }
    match store::get(&mut *ctx.store.conn().await?, id).await? {
        Some(w) if w.organization_id == p.organization_id => Ok(w),
        _ => Err(Error::not_found("webhook", id)),
    }
}

/// Webhook `id` of the caller's organization, locked for a change.
async fn locked(tx: &mut Tx, p: &Principal, id: &str) -> Result<Webhook, Error> {
    if !id::is_valid("whk", id) {
        return Err(Error::not_found("webhook", id));
    }
    match store::get_for_update(tx, id).await? {
        Some(w) if w.organization_id == p.organization_id => Ok(w),
        _ => Err(Error::not_found("webhook", id)),
    }
}

pub async fn webhook_get(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<WebhookInfo, Error> {
    p.authorize("webhooks", "read", Some(id))?;
    info(ctx, visible(ctx, p, id).await?).await
}

/// Change a webhook. Enabling a disabled one clears its failure record;
/// disabling one fails its pending deliveries.
pub async fn webhook_update(
    ctx: &ServerCtx,
    p: &Principal,
    id: &str,
    req: &WebhookUpdate,
) -> Result<WebhookInfo, Error> {
    p.authorize("webhooks", "write", Some(id))?;
    // Judged before the transaction (it may wait for DNS); a webhook of
    // another organization is still a 404, found below.
    visible(ctx, p, id).await?;
    let url = req.url.as_deref().map(str::trim);
    if let Some(u) = url {
        check_target(ctx, u).await?;
    }
    // Made (if need be) before the unit: a data key is written in a
    // transaction of its own.
    let key = ctx.vault.key_for(&ctx.store, &p.organization_id).await?;
    let mut unit = ctx.unit().await?;
    let mut w = locked(&mut unit, p, id).await?;
    let org = w.organization_id.clone();
    let t = shellwego_core::time::from_micros(to_micros(now()));
    let mut changed = vec![];
    if let Some(u) = url {
        if u != w.url {
            // Another host does not inherit the custom headers (they often
            // carry credentials, which the API never shows): given again
            // with the change, or dropped.
            let host = |x: &str| {
                reqwest::Url::parse(x)
                    .ok()
                    .map(|u| (u.host_str().map(str::to_string), u.port_or_known_default()))
            };
            if host(u) != host(&w.url) && req.headers.is_none() {
                w.headers = seal_headers(&key, &w.id, &BTreeMap::new())?;
                changed.push("headers");
            }
            w.url = u.to_string();
            changed.push("url");
        }
    }
    if let Some(e) = &req.events {
        let e = patterns(e);
        if e != w.events {
            w.events = e;
            changed.push("events");
        }
    }
    if let Some(s) = &req.secret {
        w.secret = seal_secret(&key, &w.id, SECRET, s.as_bytes())?;
        w.secret_hint = hint(s);
        changed.push("secret");
    }
    if let Some(h) = &req.headers {
        w.headers = seal_headers(&key, &w.id, h)?;
        changed.push("headers");
    }
    if let Some(r) = &req.retry_policy {
        let before = (w.max_retries, w.backoff);
        apply_retry(&mut w, r);
        if (w.max_retries, w.backoff) != before {
            changed.push("retry_policy");
        }
    }
    match (req.enabled, w.status) {
        (Some(true), WebhookStatus::Disabled) => {
            w.status = WebhookStatus::Active;
            w.disabled_reason = None;
            w.failing_since = None;
            changed.push("enabled");
        }
        (Some(false), WebhookStatus::Active) => {
            w.status = WebhookStatus::Disabled;
            w.disabled_reason = Some(DISABLED_BY_USER.into());
            store::cancel_pending(
                &mut unit,
                &w.id,
                "cancelled: the webhook was disabled by a user",
                to_micros(t),
            )
            .await?;
            changed.push("enabled");
        }
        (Some(true), WebhookStatus::Active)
        | (Some(false), WebhookStatus::Disabled)
        | (None, _) => {}
    }
    if !changed.is_empty() {
        w.updated_at = t;
        store::update(&mut unit, &w).await?;
        unit.record(
            NewEvent::info("webhook.updated", &p.actor(), "webhook", &w.id)
                .in_org(&org)
                .meta(json!({"changed": changed})),
        );
    }
    unit.commit().await?;
    info(ctx, w).await
}

/// Delete a webhook and its deliveries.
pub async fn webhook_delete(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<(), Error> {
    p.authorize("webhooks", "delete", Some(id))
        .or_else(|_| p.authorize("webhooks", "write", Some(id)))?;
    let mut unit = ctx.unit().await?;
    let w = locked(&mut unit, p, id).await?;
    store::delete(&mut unit, &w.id).await?;
    unit.record(
        NewEvent::info("webhook.deleted", &p.actor(), "webhook", &w.id).in_org(&w.organization_id),
    );
    unit.commit().await
}

/// A disabled webhook is sent nothing: a 409 that says how to enable it.
fn must_be_active(w: &Webhook) -> Result<(), Error> {
    match w.status {
        WebhookStatus::Active => Ok(()),
        WebhookStatus::Disabled => Err(Error::Conflict(format!(
            "webhook {} is disabled ({}); enable it with PATCH /v1/webhooks/{} {{\"enabled\": true}} first",
            w.id,
            w.disabled_reason.as_deref().unwrap_or("no reason recorded"),
            w.id
        ))),
    }
}

/// Send a `ping` to the webhook now: a delivery of its own, due at once.
pub async fn webhook_test(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<Delivery, Error> {
    p.authorize("webhooks", "write", Some(id))?;
    let mut unit = ctx.unit().await?;
    let w = locked(&mut unit, p, id).await?;
    must_be_active(&w)?;
    let delivery_id = id::new_id("whd");
    let at = to_micros(now());
    let payload = store::payload_body(&delivery_id, PING, at, &json!({"webhook_id": w.id}));
    store::insert_delivery(
        &mut unit,
        &NewDelivery {
            id: &delivery_id,
            webhook_id: &w.id,
            organization_id: &w.organization_id,
            event_id: None,
            event_type: PING,
            payload: &payload,
            at,
        },
    )
    .await?;
    let d = store::get_delivery(&mut unit, &w.id, &delivery_id)
        .await?
        .ok_or_else(|| Error::Internal("the ping just written is not there".into()))?;
    unit.touch(&[Topic::Deliveries]);
    unit.commit().await?;
    Ok(d)
}

/// A webhook's deliveries.
pub async fn delivery_list(
    ctx: &ServerCtx,
    p: &Principal,
    webhook_id: &str,
    params: &ListParams,
) -> Result<Page<Delivery>, Error> {
    p.authorize("webhooks", "read", Some(webhook_id))?;
    let w = visible(ctx, p, webhook_id).await?;
    let scope = Scope::new().is_in("t.webhook_id", [w.id]);
    crate::service::list_page(
        &ctx.store,
        &DELIVERIES,
        &scope,
        params,
        store::delivery_from_row,
    )
    .await
}

pub async fn delivery_get(
    ctx: &ServerCtx,
    p: &Principal,
    webhook_id: &str,
    delivery_id: &str,
) -> Result<Delivery, Error> {
    p.authorize("webhooks", "read", Some(webhook_id))?;
    let w = visible(ctx, p, webhook_id).await?;
    store::get_delivery(&mut *ctx.store.conn().await?, &w.id, delivery_id)
        .await?
        .ok_or_else(|| Error::not_found("delivery", delivery_id))
}

/// Send a delivery again: the same id and body, pending and due now, its
/// attempts counted from zero under the webhook's retry policy.
pub async fn delivery_redeliver(
    ctx: &ServerCtx,
    p: &Principal,
    webhook_id: &str,
    delivery_id: &str,
) -> Result<Delivery, Error> {
    p.authorize("webhooks", "write", Some(webhook_id))?;
    let mut unit = ctx.unit().await?;
    let w = locked(&mut unit, p, webhook_id).await?;
    if store::get_delivery(&mut unit, &w.id, delivery_id)
        .await?
        .is_none()
    {
        return Err(Error::not_found("delivery", delivery_id));
    }
    must_be_active(&w)?;
    if !store::redeliver(&mut unit, &w.id, delivery_id, to_micros(now())).await? {
        return Err(Error::Conflict(format!(
            "delivery {delivery_id} is being sent right now; redeliver it once this attempt has ended"
        )));
    }
    let d = store::get_delivery(&mut unit, &w.id, delivery_id)
        .await?
        .ok_or_else(|| Error::not_found("delivery", delivery_id))?;
    unit.touch(&[Topic::Deliveries]);
    unit.commit().await?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_hinted_by_their_end() {
        let a = new_secret();
        assert!(a.starts_with("whsec_") && a.len() == 38, "{a}");
        assert_ne!(a, new_secret());
        assert_eq!(hint("whsec_abcdefghijkl1234"), "whsec_…1234");
        assert_eq!(hint("my-own-secret-value-xyz9"), "…xyz9");
    }

    #[test]
    fn repeated_patterns_are_kept_once_in_order() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(patterns(&v(&["app.*", "*", "app.*"])), v(&["app.*", "*"]));
    }
}
