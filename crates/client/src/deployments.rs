//! `client.deployments()`: an app's deployments, one deployment, its log
//! (whole, or followed as it grows), rollback and promote.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::Method;
use shellwego_api::deployments::{DeployAccepted, Deployment, DeploymentList, RollbackRequest};

use crate::{Answer, ApiError, Client, ListQuery};

/// How long [`Deployments::follow_logs`] may stream: a deployment lasts at
/// most its health-check timeout plus its warm window (24h each).
pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(3 * 24 * 3600);

/// What a followed deployment log carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// Log lines (`<time> <message>`; several are joined with newlines).
    Data(String),
    /// The deployment has ended; nothing follows.
    End,
}

/// A followed deployment log: its events as they come. It ends after
/// [`LogEvent::End`], after an error, or when the connection closes first
/// (the deployment has not ended then).
pub type LogStream = BoxStream<'static, Result<LogEvent, ApiError>>;

/// The calls about deployments; see [`Client::deployments`].
pub struct Deployments<'a> {
    pub(crate) client: &'a Client,
}

impl Deployments<'_> {
    /// `GET /v1/apps/{app_id}/deployments`: an app's deployments, newest first.
    pub async fn list(
        &self,
        app_id: &str,
        query: &ListQuery,
    ) -> Result<Answer<DeploymentList>, ApiError> {
        self.client
            .list(
                "GET /v1/apps/{app_id}/deployments",
                &["v1", "apps", app_id, "deployments"],
                query,
            )
            .await
    }

    /// `GET /v1/deployments/{deployment_id}`: status, progress and stages.
    pub async fn get(&self, id: &str) -> Result<Answer<Deployment>, ApiError> {
        self.client
            .get(
                "GET /v1/deployments/{deployment_id}",
                &["v1", "deployments", id],
                &[],
            )
            .await
    }

    /// `GET /v1/deployments/{deployment_id}/logs`: the step log so far, as text.
    pub async fn logs(&self, id: &str) -> Result<String, ApiError> {
        self.client
            .get_text(&["v1", "deployments", id, "logs"], &[])
            .await
    }

    /// `GET /v1/deployments/{deployment_id}/logs?follow=true`: the step log
    /// as server-sent events, until the deployment ends (at most
    /// [`FOLLOW_TIMEOUT`]).
    pub async fn follow_logs(&self, id: &str) -> Result<LogStream, ApiError> {
        let res = self
            .client
            .get_raw(
                &["v1", "deployments", id, "logs"],
                &[("follow", "true".to_string())],
                "text/event-stream",
                FOLLOW_TIMEOUT,
            )
            .await?;
        let url = res.url().as_str().to_string();
        Ok(log_events(Box::pin(res.bytes_stream()), url).boxed())
    }

    /// `POST /v1/deployments/{deployment_id}/actions/rollback`: a new
    /// deployment of that deployment's release.
    pub async fn rollback(
        &self,
        id: &str,
        req: &RollbackRequest,
    ) -> Result<Answer<DeployAccepted>, ApiError> {
        self.client
            .send_json(
                "POST /v1/deployments/{deployment_id}/actions/rollback",
                Method::POST,
                &["v1", "deployments", id, "actions", "rollback"],
                req,
            )
            .await
    }

    /// `POST /v1/deployments/{deployment_id}/actions/promote`: a canary to
    /// 100% now, or a blue-green deployment's old set stopped now.
    pub async fn promote(&self, id: &str) -> Result<Answer<Deployment>, ApiError> {
        self.client
            .send_json(
                "POST /v1/deployments/{deployment_id}/actions/promote",
                Method::POST,
                &["v1", "deployments", id, "actions", "promote"],
                &serde_json::json!({}),
            )
            .await
    }
}

/// The events of a server-sent event stream of chunks (split anywhere);
/// `url` names it in a transport error.
fn log_events<S, B, E>(chunks: S, url: String) -> impl Stream<Item = Result<LogEvent, ApiError>>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    struct State<S> {
        chunks: S,
        parser: SseParser,
        ready: VecDeque<LogEvent>,
        url: String,
        done: bool,
    }
    let state = State {
        chunks,
        parser: SseParser::default(),
        ready: VecDeque::new(),
        url,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(ev) = st.ready.pop_front() {
                st.done = ev == LogEvent::End;
                return Some((Ok(ev), st));
            }
            match st.chunks.next().await {
                Some(Ok(chunk)) => st.ready.extend(st.parser.feed(chunk.as_ref())),
                Some(Err(e)) => {
                    st.done = true;
                    let err = ApiError::Transport {
                        url: st.url.clone(),
                        message: e.to_string(),
                    };
                    return Some((Err(err), st));
                }
                None => return None,
            }
        }
    })
}

/// Server-sent events, fed as they arrive (chunks split anywhere).
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8]) -> Vec<LogEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = vec![];
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // Dispatch.
                let event = std::mem::take(&mut self.event);
                let data = std::mem::take(&mut self.data);
                if event == "end" {
                    out.push(LogEvent::End);
                } else if !data.is_empty() {
                    out.push(LogEvent::Data(data.join("\n")));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => self.data.push(value.to_string()),
                "event" => self.event = value.to_string(),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "id: 1\ndata: t1 deploying v2\n\n: keep-alive\n\ndata: a\r\ndata: b\r\n\r\nevent: end\ndata: the deployment has ended\n\n";

    #[test]
    fn server_sent_events_split_anywhere() {
        let mut p = SseParser::default();
        let mut got = vec![];
        for chunk in STREAM.as_bytes().chunks(7) {
            got.extend(p.feed(chunk));
        }
        assert_eq!(
            got,
            vec![
                LogEvent::Data("t1 deploying v2".into()),
                LogEvent::Data("a\nb".into()),
                LogEvent::End
            ]
        );
    }

    async fn collect(chunks: Vec<Result<&'static [u8], &'static str>>) -> Vec<String> {
        let s = log_events(futures::stream::iter(chunks), "http://x/logs".into());
        s.map(|e| match e {
            Ok(LogEvent::Data(d)) => d,
            Ok(LogEvent::End) => "END".into(),
            Err(e) => format!("ERR {e}"),
        })
        .collect()
        .await
    }

    #[tokio::test]
    async fn a_followed_log_ends_at_its_end_event_or_its_first_error() {
        let chunks = STREAM.as_bytes().chunks(5).map(Ok).collect();
        assert_eq!(collect(chunks).await, ["t1 deploying v2", "a\nb", "END"]);
        // Nothing after the end is read.
        let got = collect(vec![Ok(b"event: end\n\n"), Ok(b"data: late\n\n")]).await;
        assert_eq!(got, ["END"]);
        let got = collect(vec![Ok(b"data: x\n\n"), Err("reset"), Ok(b"data: y\n\n")]).await;
        assert_eq!(
            got,
            ["x", "ERR cannot reach the API at http://x/logs: reset"]
        );
        // Closed early: no end event.
        assert_eq!(collect(vec![Ok(b"data: x\n\n")]).await, ["x"]);
    }
}
