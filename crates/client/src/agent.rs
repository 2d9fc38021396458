//! The agent channel's client: what a node agent calls on its control
//! plane, typed over [`shellwego_api::agent`] (the internal agent
//! protocol, versioned apart from `/v1`). Every call names the protocol
//! version in the [`PROTOCOL_HEADER`] header.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use shellwego_api::agent::{
    AgentDesired, AgentJoin, AgentJoined, AgentSync, PROTOCOL_HEADER, PROTOCOL_VERSION,
};

/// A failed call of the agent channel.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The control plane could not be reached.
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The control plane answered with an error status (401: the join
    /// token or the node credential is not, or no longer, valid).
    #[error("{status}: {}", .detail.as_deref().unwrap_or("no detail"))]
    Refused {
        status: StatusCode,
        /// The problem document's `detail`, when the body is one.
        detail: Option<String>,
    },
    /// The answer could not be read, or is not what the protocol promises.
    #[error("unreadable answer from {url}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// A client of a control plane's agent channel, with the node credential
/// once the node has joined. Cheap to clone (the connection pool, and which
/// replica is in use, are shared).
///
/// A control plane may be several replicas: given several URLs, the client
/// uses one until it cannot be reached (or answers 502/503/504, a replica
/// going away or a load balancer without one), then the next; the caller
/// retries as it would anyway, and the retry goes to the next replica.
#[derive(Clone)]
pub struct AgentClient {
    control_planes: Arc<[String]>,
    /// Index into `control_planes` of the one in use.
    current: Arc<AtomicUsize>,
    credential: Option<String>,
    http: reqwest::Client,
}

impl AgentClient {
    /// A client of the control plane at `control_plane`: its URL (e.g.
    /// `http://10.0.0.1:3000`), or the URLs of its replicas separated by
    /// commas. A call may take up to `timeout` (a sync is held by the
    /// control plane for up to its `wait_secs`).
    pub fn new(control_plane: &str, timeout: Duration) -> Result<AgentClient, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(AgentClient {
            control_planes: split_urls(control_plane).into(),
            current: Arc::new(AtomicUsize::new(0)),
            credential: None,
            http,
        })
    }

    /// The client that authenticates as the node with `credential`
    /// (`nsec_…`, from [`AgentClient::join`]).
    pub fn with_credential(mut self, credential: &str) -> AgentClient {
        self.credential = Some(credential.to_string());
        self
    }

    /// The URL of the control-plane replica in use.
    pub fn control_plane(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.control_planes.len();
        &self.control_planes[i]
    }

    /// Every control-plane URL this client may use.
    pub fn control_planes(&self) -> &[String] {
        &self.control_planes
    }

    /// The URL of `path` (`/v1/agent/sync`) on the control plane in use.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.control_plane().trim_end_matches('/'))
    }

    /// The replica at `url` failed: use the next one from now on (unless
    /// another call already moved on).
    fn fail_over(&self, url: &str) {
        let n = self.control_planes.len();
        if n < 2 {
            return;
        }
        let i = self.current.load(Ordering::Relaxed);
        if url.starts_with(self.control_planes[i % n].trim_end_matches('/')) {
            let _ =
                self.current
                    .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// A request of the channel: the protocol version, and the node
    /// credential when there is one.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, url)
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string());
        if let Some(c) = &self.credential {
            req = req.bearer_auth(c);
        }
        req
    }

    /// Send `req`: its response once the status is a success.
    async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AgentError> {
        let res = req.send().await.map_err(|source| {
            self.fail_over(url);
            AgentError::Transport {
                url: url.to_string(),
                source,
            }
        })?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        if matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            self.fail_over(url);
        }
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        Err(AgentError::Refused {
            status,
            detail: body["detail"].as_str().map(str::to_string),
        })
    }

    /// `POST /v1/agent/join`: exchange the one-time join token in `report`
    /// (with what the host has) for the node's id and credential.
    pub async fn join(&self, report: &AgentJoin) -> Result<AgentJoined, AgentError> {
        let url = self.url("/v1/agent/join");
        let req = self.request(reqwest::Method::POST, &url).json(report);
        let res = self.send(&url, req).await?;
        read(url, res).await
    }

    /// `POST /v1/agent/sync`: report the node's status (its heartbeat) and
    /// long-poll for its desired state. Resolves once the control plane
    /// answers; the desired state is read from the answer apart
    /// ([`SyncAnswer::desired`]), so a caller that drops a waiting sync
    /// for newer news never drops an answer already received.
    pub async fn sync(&self, report: &AgentSync) -> Result<SyncAnswer, AgentError> {
        let url = self.url("/v1/agent/sync");
        let req = self.request(reqwest::Method::POST, &url).json(report);
        let res = self.send(&url, req).await?;
        Ok(SyncAnswer { url, res })
    }

    /// `POST /v1/agent/resolve`: what an internal name stands for, asked
    /// for one of the node's instances.
    pub async fn resolve(
        &self,
        req: &shellwego_api::agent::ResolveRequest,
    ) -> Result<shellwego_api::agent::ResolveAnswer, AgentError> {
        let url = self.url("/v1/agent/resolve");
        let r = self.request(reqwest::Method::POST, &url).json(req);
        let res = self.send(&url, r).await?;
        read(url, res).await
    }

    /// `POST /v1/agent/tasks/{task_id}/result`: the answer to a task the
    /// sync handed out.
    pub async fn task_result(
        &self,
        task_id: &str,
        result: &shellwego_api::agent::AgentTaskResult,
    ) -> Result<(), AgentError> {
        let url = self.url(&format!("/v1/agent/tasks/{task_id}/result"));
        let r = self.request(reqwest::Method::POST, &url).json(result);
        self.send(&url, r).await.map(|_| ())
    }

    /// `GET /v1/agent/exec/{session_id}/input?after=N`: an interactive
    /// session's input after frame N (held until there is some).
    pub async fn exec_input(
        &self,
        session_id: &str,
        after: i64,
    ) -> Result<shellwego_api::exec::ExecInput, AgentError> {
        let url = self.url(&format!("/v1/agent/exec/{session_id}/input?after={after}"));
        let r = self.request(reqwest::Method::GET, &url);
        let res = self.send(&url, r).await?;
        read(url, res).await
    }

    /// `POST /v1/agent/exec/{session_id}/output` (404: the client left).
    pub async fn exec_output(
        &self,
        session_id: &str,
        out: &shellwego_api::exec::ExecOutput,
    ) -> Result<(), AgentError> {
        let url = self.url(&format!("/v1/agent/exec/{session_id}/output"));
        let r = self.request(reqwest::Method::POST, &url).json(out);
        self.send(&url, r).await.map(|_| ())
    }

    /// `POST /v1/agent/logs`: new lines for a follow the control plane
    /// holds (404: the follow is over).
    pub async fn push_logs(&self, push: &shellwego_api::logs::LogPush) -> Result<(), AgentError> {
        let url = self.url("/v1/agent/logs");
        let r = self.request(reqwest::Method::POST, &url).json(push);
        self.send(&url, r).await.map(|_| ())
    }

    /// `GET <path>` of an archive the control plane keeps (a desired
    /// instance's `archive_url`, `/v1/agent/uploads/upl_…`), with the node
    /// credential: the request, for the caller to send (with its own
    /// timeout) and stream.
    pub fn upload(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, &self.url(path))
    }
}

/// `a,b , c` → the URLs, without empty entries (at least one entry, even
/// if empty, so that a client always has a URL to report).
fn split_urls(s: &str) -> Vec<String> {
    let urls: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        vec![s.trim().to_string()]
    } else {
        urls
    }
}

/// The control plane's answer to a sync, its body not read yet.
pub struct SyncAnswer {
    url: String,
    res: reqwest::Response,
}

impl SyncAnswer {
    /// The node's desired state.
    pub async fn desired(self) -> Result<AgentDesired, AgentError> {
        read(self.url, self.res).await
    }
}

async fn read<T: DeserializeOwned>(url: String, res: reqwest::Response) -> Result<T, AgentError> {
    res.json()
        .await
        .map_err(|source| AgentError::Decode { url, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_and_failing_over_between_them() {
        let c = AgentClient::new(" http://a:1/, http://b:2 ,", Duration::from_secs(1)).unwrap();
        assert_eq!(c.control_planes(), ["http://a:1/", "http://b:2"]);
        assert_eq!(c.url("/v1/agent/sync"), "http://a:1/v1/agent/sync");
        let copy = c.clone();
        c.fail_over("http://a:1/v1/agent/sync");
        assert_eq!(
            copy.control_plane(),
            "http://b:2",
            "clones share the replica in use"
        );
        // A late failure of the replica already left changes nothing.
        c.fail_over("http://a:1/v1/agent/sync");
        assert_eq!(c.control_plane(), "http://b:2");
        c.fail_over("http://b:2/v1/agent/sync");
        assert_eq!(c.control_plane(), "http://a:1/");
        let one = AgentClient::new("http://only:1", Duration::from_secs(1)).unwrap();
        one.fail_over("http://only:1/x");
        assert_eq!(one.control_plane(), "http://only:1");
    }
}
