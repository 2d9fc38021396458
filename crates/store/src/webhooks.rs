//! Webhooks and their deliveries, the durable outbox (migration 0019).
//!
//! - A delivery is written in the transaction that records its event
//!   ([`enqueue_for_event`], called by `events::record_at`): one per active
//!   webhook of the event's organization whose patterns take the event's
//!   type, holding the exact body that will be signed and sent. So an event
//!   committed has its deliveries, and an event rolled back has none.
//! - Dispatchers (one per control-plane replica) take due deliveries with
//!   [`claim_due`]: one conditional `UPDATE` that sets `claimed_by` and
//!   `claim_expires_at` (over `FOR UPDATE SKIP LOCKED` on PostgreSQL, so
//!   two replicas never take the same row; SQLite has one writer). A claim
//!   whose replica died expires and the delivery is taken again, under the
//!   same id: at-least-once.
//! - The outcome of an attempt is written by [`record_attempt`] only while
//!   the claim it was sent under is still the row's, so a sender that
//!   stalled past its lease (and whose delivery was taken over) writes
//!   nothing.
//!
//! Times are the replicas' clocks (microseconds), which must agree to well
//! within a claim's lease.

use serde::Serialize;
use serde_json::Value;
use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::model::webhooks::pattern_matches;
use shellwego_core::model::{Backoff, DeliveryStatus, WebhookStatus};
use shellwego_core::time::{from_micros, rfc3339, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, to_json, Conn};

/// A webhook as stored. `secret` and `headers` are sealed (the server
/// seals and opens them; the store never sees them in the clear).
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: String,
    pub organization_id: String,
    pub url: String,
    /// Patterns: `*`, `app.deployed`, `app.*`.
    pub events: Vec<String>,
    /// The signing secret, sealed.
    pub secret: String,
    /// `whsec_…abcd`
    pub secret_hint: String,
    /// The custom headers as a JSON object, sealed.
    pub headers: String,
    pub max_retries: i64,
    pub backoff: Backoff,
    pub status: WebhookStatus,
    pub disabled_reason: Option<String>,
    /// The first failed attempt since the last success.
    pub failing_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

const COLUMNS: &str = "t.id, t.organization_id, t.url, t.events, t.secret, t.secret_hint, t.headers, t.max_retries, t.backoff, t.status, t.disabled_reason, t.failing_since, t.created_at, t.updated_at";

/// A `webhooks` row as stored ([`COLUMNS`]).
#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: String,
    organization_id: String,
    url: String,
    events: String,
    secret: String,
    secret_hint: String,
    headers: String,
    max_retries: i64,
    backoff: Backoff,
    status: WebhookStatus,
    disabled_reason: Option<String>,
    failing_since: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = Error;
    fn try_from(r: WebhookRow) -> Result<Webhook, Error> {
        Ok(Webhook {
            events: crate::doc("webhooks", &r.id, "events", &r.events)?,
            id: r.id,
            organization_id: r.organization_id,
            url: r.url,
            secret: r.secret,
            secret_hint: r.secret_hint,
            headers: r.headers,
            max_retries: r.max_retries,
            backoff: r.backoff,
            status: r.status,
            disabled_reason: r.disabled_reason,
            failing_since: crate::opt_time(r.failing_since),
            created_at: crate::time(r.created_at),
            updated_at: crate::time(r.updated_at),
        })
    }
}

/// A webhook from a row of [`WEBHOOKS`]' columns.
pub fn from_row(row: &AnyRow) -> Result<Webhook, Error> {
    crate::decode::<WebhookRow, _>(row)
}

fn micros(t: Timestamp) -> i64 {
    shellwego_core::time::to_micros(t)
}

fn lock_clause(db: &Conn) -> &'static str {
    if db.backend_name() == "PostgreSQL" {
        " FOR UPDATE"
    } else {
        ""
    }
}

/// Insert a webhook (its `id` is the caller's: `whk_…`).
pub async fn insert(db: &mut Conn, w: &Webhook) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO webhooks (id, organization_id, url, events, secret, secret_hint, headers, max_retries, backoff, status, disabled_reason, failing_since, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&w.id)
    .bind(&w.organization_id)
    .bind(&w.url)
    .bind(to_json(&w.events))
    .bind(&w.secret)
    .bind(&w.secret_hint)
    .bind(&w.headers)
    .bind(w.max_retries)
    .bind(w.backoff)
    .bind(w.status)
    .bind(&w.disabled_reason)
    .bind(w.failing_since.map(micros))
    .bind(micros(w.created_at))
    .bind(micros(w.updated_at))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// One webhook, whatever its organization (the caller scopes it).
pub async fn get(db: &mut Conn, id: &str) -> Result<Option<Webhook>, Error> {
    let row = sqlx::query_as::<_, WebhookRow>(&format!(
        "SELECT {COLUMNS} FROM webhooks t WHERE t.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    row.map(Webhook::try_from).transpose()
}

/// One webhook, its row locked until the transaction ends (PostgreSQL).
pub async fn get_for_update(db: &mut Conn, id: &str) -> Result<Option<Webhook>, Error> {
    let lock = lock_clause(db);
    let row = sqlx::query_as::<_, WebhookRow>(&format!(
        "SELECT {COLUMNS} FROM webhooks t WHERE t.id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    row.map(Webhook::try_from).transpose()
}

/// Write every settable column of `w` (all but its id, organization and
/// creation time).
pub async fn update(db: &mut Conn, w: &Webhook) -> Result<(), Error> {
    sqlx::query(
        "UPDATE webhooks SET url = $2, events = $3, secret = $4, secret_hint = $5, headers = $6,
             max_retries = $7, backoff = $8, status = $9, disabled_reason = $10,
             failing_since = $11, updated_at = $12
         WHERE id = $1",
    )
    .bind(&w.id)
    .bind(&w.url)
    .bind(to_json(&w.events))
    .bind(&w.secret)
    .bind(&w.secret_hint)
    .bind(&w.headers)
    .bind(w.max_retries)
    .bind(w.backoff)
    .bind(w.status)
    .bind(&w.disabled_reason)
    .bind(w.failing_since.map(micros))
    .bind(micros(w.updated_at))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Delete a webhook and its deliveries; false when there was none.
pub async fn delete(db: &mut Conn, id: &str) -> Result<bool, Error> {
    sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    let r = sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() > 0)
}

/// How many webhooks `org` has.
pub async fn count_in(db: &mut Conn, org: &str) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE organization_id = $1")
        .bind(org)
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)
}

pub static WEBHOOKS: Resource = Resource {
    schema: &ListSchema {
        name: "webhooks",
        fields: &[
            FieldSpec::new("url", Kind::Text),
            FieldSpec::new("status", Kind::Text).one_of(WebhookStatus::NAMES),
            FieldSpec::new("created_at", Kind::Time),
            FieldSpec::new("updated_at", Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", Dir::Desc)],
    },
    from: "webhooks t",
    columns: COLUMNS,
    fields: &[
        FieldSql::new("url", "t.url"),
        FieldSql::new("status", "t.status"),
        FieldSql::new("created_at", "t.created_at"),
        FieldSql::new("updated_at", "t.updated_at"),
    ],
    search: &["t.url"],
    labels: None,
};

/// The body of a delivery: the spec's Webhook Payload, `{id, type,
/// timestamp, data}`, in that order.
#[derive(Serialize)]
struct Payload<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    data: &'a Value,
}

/// The bytes a delivery sends (and signs): `id` is the event's (a ping's
/// own delivery id), `timestamp` the event's time.
pub fn payload_body(id: &str, event_type: &str, at_micros: i64, data: &Value) -> String {
    to_json(&Payload {
        id,
        event_type,
        timestamp: rfc3339(from_micros(at_micros)),
        data,
    })
}

/// What an event's payload carries as `data`: its metadata, and the
/// resource it is about.
pub fn event_data(metadata: &Value, resource_type: &str, resource_id: &str) -> Value {
    let mut data = match metadata {
        Value::Object(m) => m.clone(),
        Value::Null => serde_json::Map::new(),
        other => {
            let mut m = serde_json::Map::new();
            m.insert("metadata".into(), other.clone());
            m
        }
    };
    data.insert("resource_type".into(), Value::from(resource_type));
    data.insert("resource_id".into(), Value::from(resource_id));
    Value::Object(data)
}

/// A delivery about to be written.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub id: &'a str,
    pub webhook_id: &'a str,
    pub organization_id: &'a str,
    /// None: a ping.
    pub event_id: Option<&'a str>,
    pub event_type: &'a str,
    pub payload: &'a str,
    /// Due at, and written at (microseconds).
    pub at: i64,
}

/// Write a pending delivery, due at once.
pub async fn insert_delivery(db: &mut Conn, d: &NewDelivery<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, webhook_id, organization_id, event_id, event_type, payload, status, attempts, next_attempt_at, claim_expires_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, 0, $8, $8)",
    )
    .bind(d.id)
    .bind(d.webhook_id)
    .bind(d.organization_id)
    .bind(d.event_id)
    .bind(d.event_type)
    .bind(d.payload)
    .bind(DeliveryStatus::Pending)
    .bind(d.at)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// What an event is matched against: an active webhook's id and patterns
/// (a JSON array, as stored).
#[derive(sqlx::FromRow)]
struct Subscription {
    id: String,
    events: String,
}

/// The outbox: one pending delivery of the event `event_id` per active
/// webhook of `org` whose patterns take `event_type`, in the caller's
/// transaction (the one recording the event). How many were written.
pub async fn enqueue_for_event(
    db: &mut Conn,
    org: &str,
    event_id: &str,
    event_type: &str,
    data: &Value,
    at_micros: i64,
) -> Result<u64, Error> {
    let hooks: Vec<Subscription> = sqlx::query_as(
        "SELECT id, events FROM webhooks WHERE organization_id = $1 AND status = $2",
    )
    .bind(org)
    .bind(WebhookStatus::Active)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    let mut payload = None;
    let mut n = 0;
    for Subscription { id: hook, events } in hooks {
        let patterns: Vec<String> = crate::doc("webhooks", &hook, "events", &events)?;
        if !patterns.iter().any(|p| pattern_matches(p, event_type)) {
            continue;
        }
        let body =
            payload.get_or_insert_with(|| payload_body(event_id, event_type, at_micros, data));
        insert_delivery(
            db,
            &NewDelivery {
                id: &id::new_id("whd"),
                webhook_id: &hook,
                organization_id: org,
                event_id: Some(event_id),
                event_type,
                payload: body,
                at: at_micros,
            },
        )
        .await?;
        n += 1;
    }
    Ok(n)
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    pub organization_id: String,
    pub event_id: Option<String>,
    pub event_type: String,
    /// The body, exactly as sent.
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
    pub claimed_by: Option<String>,
    /// Microseconds; 0: never claimed. The claim's identity with `claimed_by`.
    pub claim_expires_at: i64,
    pub response_code: Option<i64>,
    pub latency_ms: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

const DELIVERY_COLUMNS: &str = "t.id, t.webhook_id, t.organization_id, t.event_id, t.event_type, t.payload, t.status, t.attempts, t.next_attempt_at, t.claimed_by, t.claim_expires_at, t.response_code, t.latency_ms, t.last_error, t.created_at, t.updated_at, t.delivered_at";

/// A `webhook_deliveries` row as stored ([`DELIVERY_COLUMNS`]).
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    webhook_id: String,
    organization_id: String,
    event_id: Option<String>,
    event_type: String,
    payload: String,
    status: DeliveryStatus,
    attempts: i64,
    next_attempt_at: i64,
    claimed_by: Option<String>,
    claim_expires_at: i64,
    response_code: Option<i64>,
    latency_ms: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    delivered_at: Option<i64>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = Error;
    fn try_from(r: DeliveryRow) -> Result<Delivery, Error> {
        Ok(Delivery {
            id: r.id,
            webhook_id: r.webhook_id,
            organization_id: r.organization_id,
            event_id: r.event_id,
            event_type: r.event_type,
            payload: r.payload,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: crate::time(r.next_attempt_at),
            claimed_by: r.claimed_by,
            claim_expires_at: r.claim_expires_at,
            response_code: r.response_code,
            latency_ms: r.latency_ms,
            last_error: r.last_error,
            created_at: crate::time(r.created_at),
            updated_at: crate::time(r.updated_at),
            delivered_at: crate::opt_time(r.delivered_at),
        })
    }
}

/// A delivery from a row of [`DELIVERIES`]' columns.
pub fn delivery_from_row(row: &AnyRow) -> Result<Delivery, Error> {
    crate::decode::<DeliveryRow, _>(row)
}

pub static DELIVERIES: Resource = Resource {
    schema: &ListSchema {
        name: "webhook_deliveries",
        fields: &[
            FieldSpec::new("status", Kind::Text).one_of(DeliveryStatus::NAMES),
            FieldSpec::new("event_type", Kind::Text).prefix(),
            FieldSpec::new("event_id", Kind::Text).no_sort(),
            FieldSpec::new("attempts", Kind::Int),
            FieldSpec::new("response_code", Kind::Int),
            FieldSpec::new("created_at", Kind::Time),
            FieldSpec::new("next_attempt_at", Kind::Time),
            FieldSpec::new("delivered_at", Kind::Time),
        ],
        searchable: false,
        labels: false,
        default_sort: &[("created_at", Dir::Desc)],
    },
    from: "webhook_deliveries t",
    columns: DELIVERY_COLUMNS,
    fields: &[
        FieldSql::new("status", "t.status"),
        FieldSql::new("event_type", "t.event_type"),
        FieldSql::new("event_id", "t.event_id"),
        FieldSql::new("attempts", "t.attempts"),
        FieldSql::new("response_code", "COALESCE(t.response_code, 0)"),
        FieldSql::new("created_at", "t.created_at"),
        FieldSql::new("next_attempt_at", "t.next_attempt_at"),
        // Undelivered ones sort before every delivered one.
        FieldSql::new("delivered_at", "COALESCE(t.delivered_at, 0)"),
    ],
    search: &[],
    labels: None,
};

/// One delivery of webhook `webhook_id`.
pub async fn get_delivery(
    db: &mut Conn,
    webhook_id: &str,
    id: &str,
) -> Result<Option<Delivery>, Error> {
    let row = sqlx::query_as::<_, DeliveryRow>(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries t WHERE t.id = $1 AND t.webhook_id = $2"
    ))
    .bind(id)
    .bind(webhook_id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    row.map(Delivery::try_from).transpose()
}

/// Claim up to `limit` due deliveries (pending, due by `now`, not held by
/// an unexpired claim), oldest due first, for `holder` until
/// `expires_at`: the rows as claimed. The pair (`holder`, `expires_at`) is
/// the claim that [`record_attempt`] must still find.
pub async fn claim_due(
    db: &mut Conn,
    holder: &str,
    now: i64,
    expires_at: i64,
    limit: i64,
) -> Result<Vec<Delivery>, Error> {
    let skip_locked = if db.backend_name() == "PostgreSQL" {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let rows = sqlx::query_as::<_, DeliveryRow>(&format!(
        "UPDATE webhook_deliveries SET claimed_by = $1, claim_expires_at = $2
         WHERE id IN (SELECT id FROM webhook_deliveries
                      WHERE status = $3 AND next_attempt_at <= $4 AND claim_expires_at <= $4
                      ORDER BY next_attempt_at, id LIMIT $5{skip_locked})
           AND status = $3 AND claim_expires_at <= $4
         RETURNING {}",
        DELIVERY_COLUMNS.replace("t.", "")
    ))
    .bind(holder)
    .bind(expires_at)
    .bind(DeliveryStatus::Pending)
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    crate::convert(rows)
}

/// When the next pending delivery nobody holds is due (microseconds).
pub async fn next_due(db: &mut Conn, now: i64) -> Result<Option<i64>, Error> {
    sqlx::query_scalar(
        "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = $1 AND claim_expires_at <= $2",
    )
    .bind(DeliveryStatus::Pending)
    .bind(now)
    .fetch_one(&mut *db)
    .await
    .map_err(db_err)
}

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// `pending` again (a retry at `next_attempt_at`), `succeeded` or `failed`.
    pub status: DeliveryStatus,
    pub response_code: Option<i64>,
    pub latency_ms: Option<i64>,
    pub error: Option<&'a str>,
    pub next_attempt_at: i64,
    /// When it was made (microseconds).
    pub at: i64,
}

/// Write the outcome of an attempt made under the claim (`holder`,
/// `claim_expires_at`), and release the claim. False: the claim is no
/// longer the row's (it expired and another took the delivery over, or
/// the delivery was redelivered, cancelled or deleted); nothing was written.
/// Extend this replica's claim on a delivery (still pending, still held
/// with `expires_at`, which is after `at`) to `until`; false when the
/// claim is not held any more.
pub async fn renew_claim(
    db: &mut Conn,
    id: &str,
    holder: &str,
    expires_at: i64,
    at: i64,
    until: i64,
) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE webhook_deliveries SET claim_expires_at = $4
         WHERE id = $1 AND claimed_by = $2 AND claim_expires_at = $3 AND claim_expires_at > $5 AND status = $6",
    )
    .bind(id)
    .bind(holder)
    .bind(expires_at)
    .bind(until)
    .bind(at)
    .bind(DeliveryStatus::Pending)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

pub async fn record_attempt(
    db: &mut Conn,
    id: &str,
    holder: &str,
    claim_expires_at: i64,
    a: &Attempt<'_>,
) -> Result<bool, Error> {
    let delivered = (a.status == DeliveryStatus::Succeeded).then_some(a.at);
    let r = sqlx::query(
        "UPDATE webhook_deliveries SET status = $4, attempts = attempts + 1, response_code = $5,
             latency_ms = $6, last_error = $7, next_attempt_at = $8, delivered_at = $9,
             claimed_by = NULL, claim_expires_at = 0, updated_at = $10
         WHERE id = $1 AND claimed_by = $2 AND claim_expires_at = $3 AND status = $11",
    )
    .bind(id)
    .bind(holder)
    .bind(claim_expires_at)
    .bind(a.status)
    .bind(a.response_code)
    .bind(a.latency_ms)
    .bind(a.error)
    .bind(a.next_attempt_at)
    .bind(delivered)
    .bind(a.at)
    .bind(DeliveryStatus::Pending)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// How long without a failed attempt ends a streak of failures (twice the
/// longest pause between retries, in microseconds): a webhook is failing
/// "straight" only while failures keep coming.
pub const STREAK_GAP_MICROS: i64 = 2 * 3600 * 1_000_000;

/// A failed attempt of webhook `id` at `at`: it has been failing since the
/// first failure after its last success, or after the last quiet gap of
/// [`STREAK_GAP_MICROS`]. The webhook's status and that time (`None`: there
/// is no such webhook).
pub async fn mark_failing(db: &mut Conn, id: &str, at: i64) -> Result<Option<Failing>, Error> {
    sqlx::query_as::<_, Failing>(
        "UPDATE webhooks SET
           failing_since = CASE WHEN failing_since IS NULL OR last_failure_at IS NULL OR last_failure_at < $3
                                THEN $2 ELSE failing_since END,
           last_failure_at = $2
         WHERE id = $1
         RETURNING status, failing_since",
    )
    .bind(id)
    .bind(at)
    .bind(at - STREAK_GAP_MICROS)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)
}

/// A webhook's failure record after a failed attempt ([`mark_failing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Failing {
    pub status: WebhookStatus,
    /// Microseconds: the first failed attempt since the last success.
    pub failing_since: i64,
}

/// A successful attempt of webhook `id`: it is not failing any more.
pub async fn mark_succeeded(db: &mut Conn, id: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE webhooks SET failing_since = NULL, last_failure_at = NULL WHERE id = $1 AND failing_since IS NOT NULL",
    )
    .bind(id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Disable an active webhook for `reason`; false when it was not active.
pub async fn disable(db: &mut Conn, id: &str, reason: &str, at: i64) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE webhooks SET status = $2, disabled_reason = $3, updated_at = $4 WHERE id = $1 AND status = $5",
    )
    .bind(id)
    .bind(WebhookStatus::Disabled)
    .bind(reason)
    .bind(at)
    .bind(WebhookStatus::Active)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// Fail every pending delivery of webhook `id` (it was disabled), claims
/// included: a sender still holding one writes nothing. How many.
pub async fn cancel_pending(db: &mut Conn, id: &str, reason: &str, at: i64) -> Result<u64, Error> {
    let r = sqlx::query(
        "UPDATE webhook_deliveries SET status = $2, last_error = $3, claimed_by = NULL,
             claim_expires_at = 0, updated_at = $4
         WHERE webhook_id = $1 AND status = $5",
    )
    .bind(id)
    .bind(DeliveryStatus::Failed)
    .bind(reason)
    .bind(at)
    .bind(DeliveryStatus::Pending)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected())
}

/// Make delivery `id` of webhook `webhook_id` pending again, due at `at`,
/// with its attempts counted from zero (the same id and body). False when
/// it is being sent right now (a claim that has not expired).
pub async fn redeliver(db: &mut Conn, webhook_id: &str, id: &str, at: i64) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE webhook_deliveries SET status = $3, attempts = 0, next_attempt_at = $4,
             delivered_at = NULL, claimed_by = NULL, claim_expires_at = 0, updated_at = $4
         WHERE id = $1 AND webhook_id = $2 AND claim_expires_at <= $4",
    )
    .bind(id)
    .bind(webhook_id)
    .bind(DeliveryStatus::Pending)
    .bind(at)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// Delete the deliveries of `org` written before `before` (micros), at
/// most `limit` of them (the oldest); how many went.
pub async fn delete_older_deliveries(
    db: &mut Conn,
    org: &str,
    before: i64,
    limit: i64,
) -> Result<u64, Error> {
    let r = sqlx::query(
        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries
           WHERE organization_id = $1 AND created_at < $2 ORDER BY created_at LIMIT $3)",
    )
    .bind(org)
    .bind(before)
    .bind(limit)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use shellwego_core::plan::Plan;
    use std::collections::BTreeSet;

    /// Run `check` on a migrated SQLite store, and on a scratch PostgreSQL
    /// database when SHELLWEGO_TEST_DATABASE_URL names a server.
    async fn on_each_backend<F, Fut>(check: F)
    where
        F: Fn(Store, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let (store, org) = migrated(&url).await;
        check(store.clone(), org).await;
        store.close().await;
        if let Ok(server) = std::env::var("SHELLWEGO_TEST_DATABASE_URL") {
            let db = shellwego_testkit::db::PgDb::empty(&server, "swtest")
                .await
                .unwrap();
            let (store, org) = migrated(db.url()).await;
            check(store.clone(), org).await;
            store.close().await;
            db.drop_now().await.unwrap();
        }
    }

    async fn migrated(url: &str) -> (Store, String) {
        let store = Store::connect(url).await.unwrap();
        store.migrate().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let org = crate::orgs::create(&mut tx, "Hooks", "hooks", Plan::Enterprise)
            .await
            .unwrap();
        crate::commit(tx).await.unwrap();
        (store, org.id)
    }

    fn hook(org: &str, events: &[&str], status: WebhookStatus) -> Webhook {
        let t = from_micros(1_000_000);
        Webhook {
            id: id::new_id("whk"),
            organization_id: org.into(),
            url: "https://example.com/hook".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            secret: "sealed".into(),
            secret_hint: "whsec_…abcd".into(),
            headers: "sealed".into(),
            max_retries: 5,
            backoff: Backoff::Exponential,
            status,
            disabled_reason: None,
            failing_since: None,
            created_at: t,
            updated_at: t,
        }
    }

    #[tokio::test]
    async fn an_event_enqueues_one_delivery_per_active_matching_webhook() {
        on_each_backend(|store, org| async move {
            let all = hook(&org, &["*"], WebhookStatus::Active);
            let apps = hook(&org, &["app.*", "node.offline"], WebhookStatus::Active);
            let nodes = hook(&org, &["node.*"], WebhookStatus::Active);
            let off = hook(&org, &["*"], WebhookStatus::Disabled);
            let mut tx = store.begin().await.unwrap();
            for h in [&all, &apps, &nodes, &off] {
                insert(&mut tx, h).await.unwrap();
            }
            let data = event_data(&serde_json::json!({"a": 1}), "app", "app_x");
            let n = enqueue_for_event(&mut tx, &org, "evt_1", "app.deployed", &data, 2_000_000)
                .await
                .unwrap();
            assert_eq!(n, 2);
            // Another organization's event reaches none of them.
            let n = enqueue_for_event(&mut tx, "org_other", "evt_2", "app.deployed", &data, 0)
                .await
                .unwrap();
            assert_eq!(n, 0);
            crate::commit(tx).await.unwrap();

            let mut db = store.conn().await.unwrap();
            let got = claim_due(&mut db, "rep_a", 3_000_000, 9_000_000, 10)
                .await
                .unwrap();
            let hooks: BTreeSet<&str> = got.iter().map(|d| d.webhook_id.as_str()).collect();
            assert_eq!(hooks, BTreeSet::from([all.id.as_str(), apps.id.as_str()]));
            let body: Value = serde_json::from_str(&got[0].payload).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"id": "evt_1", "type": "app.deployed",
                    "timestamp": "1970-01-01T00:00:02.000Z",
                    "data": {"a": 1, "resource_type": "app", "resource_id": "app_x"}})
            );
            // Claimed: nobody else gets them until the claim expires.
            assert!(claim_due(&mut db, "rep_b", 3_000_000, 9_000_000, 10)
                .await
                .unwrap()
                .is_empty());
            assert_eq!(next_due(&mut db, 3_000_000).await.unwrap(), None);
            let again = claim_due(&mut db, "rep_b", 9_000_000, 19_000_000, 10)
                .await
                .unwrap();
            assert_eq!(again.len(), 2, "an expired claim is taken over");
            // The first holder's outcome is refused; the second's is written.
            let ok = Attempt {
                status: DeliveryStatus::Succeeded,
                response_code: Some(200),
                latency_ms: Some(3),
                error: None,
                next_attempt_at: 9_000_000,
                at: 9_500_000,
            };
            let d = &again[0];
            assert!(!record_attempt(&mut db, &d.id, "rep_a", 9_000_000, &ok)
                .await
                .unwrap());
            assert!(record_attempt(&mut db, &d.id, "rep_b", 19_000_000, &ok)
                .await
                .unwrap());
            let stored = get_delivery(&mut db, &d.webhook_id, &d.id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored.status, DeliveryStatus::Succeeded);
            assert_eq!(stored.attempts, 1);
            assert_eq!(stored.claimed_by, None);
            assert_eq!(stored.delivered_at, Some(from_micros(9_500_000)));
            // Redelivered: pending again, attempts from zero, same body.
            assert!(redeliver(&mut db, &d.webhook_id, &d.id, 10_000_000)
                .await
                .unwrap());
            let again = get_delivery(&mut db, &d.webhook_id, &d.id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (again.status, again.attempts, &again.payload),
                (DeliveryStatus::Pending, 0, &stored.payload)
            );
            // Failing since the first failure; a success clears it.
            let failing = Some(Failing {
                status: WebhookStatus::Active,
                failing_since: 5,
            });
            assert_eq!(mark_failing(&mut db, &all.id, 5).await.unwrap(), failing);
            assert_eq!(mark_failing(&mut db, &all.id, 7).await.unwrap(), failing);
            mark_succeeded(&mut db, &all.id).await.unwrap();
            assert_eq!(
                get(&mut db, &all.id).await.unwrap().unwrap().failing_since,
                None
            );
            // A failure after a quiet gap starts a new streak.
            let t = 1_000_000_000_000;
            mark_failing(&mut db, &all.id, t).await.unwrap();
            let later = t + STREAK_GAP_MICROS + 1;
            assert_eq!(
                mark_failing(&mut db, &all.id, later).await.unwrap(),
                Some(Failing {
                    status: WebhookStatus::Active,
                    failing_since: later,
                })
            );
            assert_eq!(
                mark_failing(&mut db, &all.id, later + 10)
                    .await
                    .unwrap()
                    .map(|f| f.failing_since),
                Some(later),
                "failures that keep coming continue it"
            );
            mark_succeeded(&mut db, &all.id).await.unwrap();
            // Disabling cancels what is pending.
            assert!(disable(&mut db, &all.id, "failing", 8).await.unwrap());
            assert!(!disable(&mut db, &all.id, "failing", 8).await.unwrap());
            // (Each webhook has one pending delivery: the redelivered one,
            // and the other still claimed.)
            assert_eq!(
                cancel_pending(&mut db, &all.id, "disabled", 8)
                    .await
                    .unwrap(),
                1
            );
            assert!(delete(&mut db, &apps.id).await.unwrap());
            assert!(!delete(&mut db, &apps.id).await.unwrap());
        })
        .await;
    }
}
