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

    /// `GET /v1/events/stream`: the live stream (Server-Sent Events) with
    /// these query parameters (`filter[type]`, `last_event_id`,
    /// `max_seconds`, …); the response, for the caller to read as it comes
    /// ([`next_event`]).
    pub async fn stream(&self, query: &[(&str, String)]) -> Result<reqwest::Response, ApiError> {
        self.client
            .get_raw(
                &["v1", "events", "stream"],
                query,
                "text/event-stream",
                std::time::Duration::from_secs(365 * 86_400),
            )
            .await
    }

    /// `GET /v1/events/{event_id}`: one event of the caller's organizations.
    pub async fn get(&self, id: &str) -> Result<Answer<Event>, ApiError> {
        self.client
            .get("GET /v1/events/{event_id}", &["v1", "events", id], &[])
            .await
    }
}

/// The next event of a stream ([`Events::stream`]): `(event, id, data)`,
/// keep-alive comments skipped; `None` once the stream ended. `buf` keeps
/// what was read past the event (start with an empty one).
pub async fn next_event(
    res: &mut reqwest::Response,
    buf: &mut String,
) -> Result<Option<(String, String, String)>, ApiError> {
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut ev, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !ev.is_empty() {
                return Ok(Some((ev, id, data)));
            }
        }
        match res.chunk().await {
            Ok(Some(b)) => buf.push_str(&String::from_utf8_lossy(&b)),
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(ApiError::Transport {
                    url: res.url().to_string(),
                    message: e.to_string(),
                })
            }
        }
    }
}
