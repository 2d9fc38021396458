//! `client.events()`: the audit trail (`/v1/events`).

use shellwego_api::events::{Event, EventList};

use crate::{Answer, ApiError, Client, ListQuery};

/// The calls about events; see [`Client::events`].
pub struct Events<'a> {
    pub(crate) client: &'a Client,
}

impl Events<'_> {
    /// `GET /v1/events`: events of the caller's organizations, newest
    /// first. Filters: `type`, `severity`, `resource_type`, `resource_id`,
    /// `timestamp` ranges, `q`, ….
    pub async fn list(&self, query: &ListQuery) -> Result<Answer<EventList>, ApiError> {
        self.client
            .list("GET /v1/events", &["v1", "events"], query)
            .await
    }

    /// `GET /v1/events/{event_id}`: one event of the caller's organizations.
    pub async fn get(&self, id: &str) -> Result<Answer<Event>, ApiError> {
        self.client
            .get("GET /v1/events/{event_id}", &["v1", "events", id], &[])
            .await
    }
}
