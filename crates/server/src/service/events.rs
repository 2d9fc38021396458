//! The event (audit) log, as the caller may see it.

use shellwego_core::list::ListParams;
use shellwego_core::Error;
use shellwego_store::events::{self, Event, EVENTS};
use shellwego_store::list::{Page, Scope};

use crate::auth::Principal;
use crate::ctx::ServerCtx;

/// Events of the caller's organizations.
pub async fn event_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Event>, Error> {
    let store = &ctx.store;
    p.authorize("events", "read", None)?;
    let orgs = p.organization_ids();
    let scope = Scope::new().is_in("t.organization_id", orgs);
    crate::service::list_page(store, &EVENTS, &scope, params, events::from_row).await
}

/// One event of the caller's organizations; 404 otherwise.
pub async fn event_get(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<Event, Error> {
    p.authorize("events", "read", None)?;
    let e = events::get(&mut *ctx.store.conn().await?, id).await?;
    match e {
        Some(e)
            if e.organization_id
                .as_ref()
                .is_some_and(|o| p.organization_ids().contains(o)) =>
        {
            Ok(e)
        }
        _ => Err(Error::not_found("event", id)),
    }
}

/// What an event stream passes on: the caller's organizations, and the
/// list's filters (`filter[type]` with `app.*` prefixes, `severity`,
/// `resource_type`, `resource_id`).
#[derive(Debug, Clone, Default)]
pub struct StreamFilter {
    orgs: Vec<String>,
    types: Vec<String>,
    type_prefixes: Vec<String>,
    severity: Vec<String>,
    resource_type: Vec<String>,
    resource_id: Vec<String>,
    /// End the stream after this long (`max_seconds`); none: never.
    pub max_duration: Option<std::time::Duration>,
}

impl StreamFilter {
    /// From the query string: the filter, and `last_event_id` when given
    /// there (clients that cannot set the `Last-Event-ID` header).
    pub fn parse(
        p: &Principal,
        query: Option<&str>,
    ) -> Result<(StreamFilter, Option<String>), Error> {
        use shellwego_core::FieldError;
        let mut f = StreamFilter {
            orgs: p.organization_ids(),
            ..Default::default()
        };
        let mut last = None;
        let mut errs = vec![];
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let values = || -> Vec<String> {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            };
            match k.as_ref() {
                "filter[type]" => {
                    for t in values() {
                        match t.strip_suffix('*') {
                            Some(stem) if !stem.contains('*') => f.type_prefixes.push(stem.into()),
                            None if !t.contains('*') => f.types.push(t),
                            _ => errs.push(
                                FieldError::new(
                                    "filter[type]",
                                    "invalid_value",
                                    format!("'{t}': '*' may only end a value (app.* matches every type starting with app.)"),
                                )
                                .with_value(t.clone()),
                            ),
                        }
                    }
                }
                "filter[severity]" => {
                    for s in values() {
                        if !["info", "warning", "error", "critical"].contains(&s.as_str()) {
                            errs.push(
                                FieldError::new(
                                    "filter[severity]",
                                    "invalid_value",
                                    format!("'{s}' is not one of: info, warning, error, critical"),
                                )
                                .with_value(s.clone()),
                            );
                        }
                        f.severity.push(s);
                    }
                }
                "filter[resource_type]" => f.resource_type.extend(values()),
                "filter[resource_id]" => f.resource_id.extend(values()),
                "last_event_id" => last = Some(v.to_string()),
                "max_seconds" => match v.parse::<u64>() {
                    Ok(n) if (1..=86_400).contains(&n) => {
                        f.max_duration = Some(std::time::Duration::from_secs(n))
                    }
                    _ => errs.push(
                        FieldError::new(
                            "max_seconds",
                            "invalid_value",
                            "must be a number of seconds from 1 to 86400",
                        )
                        .with_value(v.to_string()),
                    ),
                },
                other => errs.push(FieldError::new(
                    other,
                    "unknown_parameter",
                    "the stream takes filter[type], filter[severity], filter[resource_type], filter[resource_id], last_event_id and max_seconds",
                )),
            }
        }
        if errs.is_empty() {
            Ok((f, last))
        } else {
            Err(Error::invalid(errs))
        }
    }

    /// The one organization the caller sees, when it is one.
    pub fn single_org(&self) -> Option<&str> {
        match self.orgs.as_slice() {
            [o] => Some(o),
            _ => None,
        }
    }

    pub fn matches(&self, e: &Event) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        e.organization_id
            .as_ref()
            .is_some_and(|o| self.orgs.contains(o))
            && ((self.types.is_empty() && self.type_prefixes.is_empty())
                || self.types.contains(&e.event_type)
                || self
                    .type_prefixes
                    .iter()
                    .any(|p| e.event_type.starts_with(p.as_str())))
            && any(&self.severity, e.severity.as_str())
            && any(&self.resource_type, &e.resource_type)
            && any(&self.resource_id, &e.resource_id)
    }
}

/// Where a stream resumed with `Last-Event-ID: id` starts: after that
/// event's number. An id that is no event of the caller's organizations (or
/// one past its retention) is a 400.
pub async fn resume_point(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<i64, Error> {
    let mut db = ctx.store.conn().await?;
    let visible = events::get(&mut db, id).await?.is_some_and(|e| {
        e.organization_id
            .as_ref()
            .is_some_and(|o| p.organization_ids().contains(o))
    });
    match (visible, events::seq_of(&mut db, id).await?) {
        (true, Some(seq)) => Ok(seq),
        _ => Err(Error::field(
            "Last-Event-ID",
            "unknown_event",
            "no event of your organization has this id (deleted past its retention?); reconnect without it to start from now",
        )),
    }
}
