//! The agent channel's client: what a node agent calls on its control
//! plane, typed over [`shellwego_api::agent`] (the internal agent
//! protocol, versioned apart from `/v1`). Every call names the protocol
//! version in the [`PROTOCOL_HEADER`] header.

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

/// A client of one control plane's agent channel, with the node
/// credential once the node has joined. Cheap to clone (the connection
/// pool is shared).
#[derive(Clone)]
pub struct AgentClient {
    control_plane: String,
    credential: Option<String>,
    http: reqwest::Client,
}

impl AgentClient {
    /// A client of the control plane at `control_plane` (its URL, e.g.
    /// `http://10.0.0.1:3000`); a call may take up to `timeout` (a sync is
    /// held by the control plane for up to its `wait_secs`).
    pub fn new(control_plane: &str, timeout: Duration) -> Result<AgentClient, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(AgentClient {
            control_plane: control_plane.to_string(),
            credential: None,
            http,
        })
    }

    /// The same client (connection pool and timeout) for the control plane
    /// at `control_plane`, the one a node credential was issued by.
    pub fn at(&self, control_plane: &str) -> AgentClient {
        AgentClient {
            control_plane: control_plane.to_string(),
            credential: self.credential.clone(),
            http: self.http.clone(),
        }
    }

    /// The client that authenticates as the node with `credential`
    /// (`nsec_…`, from [`AgentClient::join`]).
    pub fn with_credential(mut self, credential: &str) -> AgentClient {
        self.credential = Some(credential.to_string());
        self
    }

    /// The control plane's URL.
    pub fn control_plane(&self) -> &str {
        &self.control_plane
    }

    /// The URL of `path` (`/v1/agent/sync`) on the control plane.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.control_plane.trim_end_matches('/'))
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
        let res = req.send().await.map_err(|source| AgentError::Transport {
            url: url.to_string(),
            source,
        })?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
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

    /// `GET <path>` of an archive the control plane keeps (a desired
    /// instance's `archive_url`, `/v1/agent/uploads/upl_…`), with the node
    /// credential: the request, for the caller to send (with its own
    /// timeout) and stream.
    pub fn upload(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, &self.url(path))
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
