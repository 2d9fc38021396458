//! The event recorder: every state change is recorded as an event row in the
//! same transaction as the change itself, so there is never a change without
//! its event or an event without its change.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::time::{now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, to_json, Conn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
    fn parse(s: &str) -> Severity {
        match s {
            "warning" => Severity::Warning,
            "error" => Severity::Error,
            "critical" => Severity::Critical,
            _ => Severity::Info,
        }
    }
}

/// Who caused a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `user`, `token` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
    pub ip: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            kind: "system".into(),
            id: None,
            ip: None,
        }
    }
    pub fn user(id: &str, ip: Option<String>) -> Actor {
        Actor {
            kind: "user".into(),
            id: Some(id.into()),
            ip,
        }
    }
}

/// An event about to be recorded.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub organization_id: Option<String>,
    /// `app.deployed`, `token.created`, …
    pub event_type: &'static str,
    pub severity: Severity,
    pub actor: Actor,
    pub resource_type: &'static str,
    pub resource_id: String,
    pub metadata: Value,
}

impl NewEvent {
    pub fn info(
        event_type: &'static str,
        actor: &Actor,
        resource_type: &'static str,
        resource_id: &str,
    ) -> NewEvent {
        NewEvent {
            organization_id: None,
            event_type,
            severity: Severity::Info,
            actor: actor.clone(),
            resource_type,
            resource_id: resource_id.to_string(),
            metadata: Value::Object(Default::default()),
        }
    }
    pub fn in_org(mut self, org_id: &str) -> NewEvent {
        self.organization_id = Some(org_id.to_string());
        self
    }
    pub fn meta(mut self, metadata: Value) -> NewEvent {
        self.metadata = metadata;
        self
    }
    pub fn severity(mut self, s: Severity) -> NewEvent {
        self.severity = s;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: String,
    pub organization_id: Option<String>,
    pub event_type: String,
    pub severity: Severity,
    pub actor: Actor,
    pub resource_type: String,
    pub resource_id: String,
    pub metadata: Value,
    pub timestamp: Timestamp,
}

/// Record `e` inside the caller's transaction; returns the event id.
pub async fn record(db: &mut Conn, e: NewEvent) -> Result<String, Error> {
    record_at(db, e, to_micros(now())).await
}

/// Record with an explicit time (tests and imports). With the event go
/// its webhook deliveries, in the same transaction: one per active webhook
/// of its organization that takes its type (the durable outbox, see
/// [`crate::webhooks`]); an event of no organization has none.
pub async fn record_at(db: &mut Conn, e: NewEvent, at_micros: i64) -> Result<String, Error> {
    let id = id::new_id("evt");
    let data = e.organization_id.as_ref().map(|org| {
        (
            org.clone(),
            crate::webhooks::event_data(&e.metadata, e.resource_type, &e.resource_id),
        )
    });
    sqlx::query(
        "INSERT INTO events (id, organization_id, event_type, severity, actor_type, actor_id, actor_ip, resource_type, resource_id, metadata, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(e.organization_id)
    .bind(e.event_type)
    .bind(e.severity.as_str())
    .bind(e.actor.kind)
    .bind(e.actor.id)
    .bind(e.actor.ip)
    .bind(e.resource_type)
    .bind(e.resource_id)
    .bind(to_json(&e.metadata))
    .bind(at_micros)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    if let Some((org, data)) = data {
        crate::webhooks::enqueue_for_event(db, &org, &id, e.event_type, &data, at_micros).await?;
    }
    Ok(id)
}

pub static EVENTS: Resource = Resource {
    schema: &ListSchema {
        name: "events",
        fields: &[
            FieldSpec::new("type", Kind::Text).prefix(),
            FieldSpec::new("severity", Kind::Text).one_of(&["info", "warning", "error", "critical"]),
            FieldSpec::new("resource_type", Kind::Text),
            FieldSpec::new("resource_id", Kind::Text),
            FieldSpec::new("resource.type", Kind::Text),
            FieldSpec::new("resource.id", Kind::Text),
            FieldSpec::new("actor.type", Kind::Text).one_of(&["user", "token", "system"]),
            FieldSpec::new("actor.id", Kind::Text).no_sort(),
            FieldSpec::new("organization_id", Kind::Text).no_sort(),
            FieldSpec::new("timestamp", Kind::Time),
            FieldSpec::new("created_at", Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("timestamp", Dir::Desc)],
    },
    from: "events t",
    columns: "t.id, t.organization_id, t.event_type, t.severity, t.actor_type, t.actor_id, t.actor_ip, t.resource_type, t.resource_id, t.metadata, t.created_at",
    fields: &[
        FieldSql::new("type", "t.event_type"),
        FieldSql::new("severity", "t.severity"),
        FieldSql::new("resource_type", "t.resource_type"),
        FieldSql::new("resource_id", "t.resource_id"),
        FieldSql::new("resource.type", "t.resource_type"),
        FieldSql::new("resource.id", "t.resource_id"),
        FieldSql::new("actor.type", "t.actor_type"),
        FieldSql::new("actor.id", "t.actor_id"),
        FieldSql::new("organization_id", "t.organization_id"),
        FieldSql::new("timestamp", "t.created_at"),
        FieldSql::new("created_at", "t.created_at"),
    ],
    search: &["t.event_type", "t.resource_id"],
    labels: None,
};

/// An `events` row as stored ([`EVENTS`]' columns).
#[derive(sqlx::FromRow)]
struct EventRow {
    id: String,
    organization_id: Option<String>,
    event_type: String,
    severity: String,
    actor_type: String,
    actor_id: Option<String>,
    actor_ip: Option<String>,
    resource_type: String,
    resource_id: String,
    metadata: String,
    created_at: i64,
}

impl TryFrom<EventRow> for Event {
    type Error = Error;
    fn try_from(r: EventRow) -> Result<Event, Error> {
        Ok(Event {
            metadata: crate::doc("events", &r.id, "metadata", &r.metadata)?,
            id: r.id,
            organization_id: r.organization_id,
            event_type: r.event_type,
            severity: Severity::parse(&r.severity),
            actor: Actor {
                kind: r.actor_type,
                id: r.actor_id,
                ip: r.actor_ip,
            },
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            timestamp: crate::time(r.created_at),
        })
    }
}

/// Number the committed events that have no `seq` yet, oldest first, after
/// the highest one given (at most `limit`); how many were numbered. Run in
/// the sequencer's own (fenced) transaction: one writer at a time.
pub async fn sequence(db: &mut Conn, limit: i64) -> Result<u64, Error> {
    let top: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)?;
    // One statement for the batch (a row at a time made the sequencer,
    // on SQLite's one writer, the log's bottleneck under load).
    let r = sqlx::query(
        "UPDATE events SET seq = n.s FROM (
           SELECT id, $1 + ROW_NUMBER() OVER (ORDER BY created_at, id) AS s
           FROM (SELECT id, created_at FROM events WHERE seq IS NULL ORDER BY created_at, id LIMIT $2) u
         ) n WHERE events.id = n.id",
    )
    .bind(top.unwrap_or(0))
    .bind(limit)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected())
}

/// The highest `seq` given so far (0: none).
pub async fn max_seq(db: &mut Conn) -> Result<i64, Error> {
    let top: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(top.unwrap_or(0))
}

/// An event's place in the log (none: no such event, or not numbered yet).
pub async fn seq_of(db: &mut Conn, id: &str) -> Result<Option<i64>, Error> {
    let s: Option<Option<i64>> = sqlx::query_scalar("SELECT seq FROM events WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(s.flatten())
}

/// A numbered event.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub seq: i64,
    pub event: Event,
}

#[derive(sqlx::FromRow)]
struct LoggedRow {
    seq: i64,
    #[sqlx(flatten)]
    row: EventRow,
}

/// The numbered events after `seq`, in order (at most `limit`), of `org`
/// only when given.
pub async fn after(
    db: &mut Conn,
    seq: i64,
    org: Option<&str>,
    limit: i64,
) -> Result<Vec<Logged>, Error> {
    let rows = sqlx::query_as::<_, LoggedRow>(&format!(
        "SELECT {}, t.seq FROM events t WHERE t.seq > $1 AND ($2 = '' OR t.organization_id = $2)
         ORDER BY t.seq LIMIT $3",
        EVENTS.columns
    ))
    .bind(seq)
    .bind(org.unwrap_or(""))
    .bind(limit)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    rows.into_iter()
        .map(|r| {
            Ok(Logged {
                seq: r.seq,
                event: Event::try_from(r.row)?,
            })
        })
        .collect()
}

/// One event, whatever its organization (the caller scopes it).
pub async fn get(db: &mut Conn, id: &str) -> Result<Option<Event>, Error> {
    let row = sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {} FROM events t WHERE t.id = $1",
        EVENTS.columns
    ))
    .bind(id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    row.map(Event::try_from).transpose()
}

/// Delete the events of `org` recorded before `before` (micros), at most
/// `limit` of them (the oldest); how many went.
pub async fn delete_older(db: &mut Conn, org: &str, before: i64, limit: i64) -> Result<u64, Error> {
    let r = sqlx::query(
        "DELETE FROM events WHERE id IN (SELECT id FROM events
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

/// An event from a row of [`EVENTS`]' columns.
pub fn from_row(row: &AnyRow) -> Result<Event, Error> {
    crate::decode::<EventRow, _>(row)
}
