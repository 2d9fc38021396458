//! `client.apps()`: apps, their actions and deployments, and uploaded
//! archives (`/v1/apps`, `/v1/uploads`).

use std::time::Duration;

use reqwest::Method;
use shellwego_api::apps::{
    App, AppCreate, AppCreated, AppList, AppUpdate, RestartRequest, ScaleRequest, UploadCreated,
};
use shellwego_api::deployments::{DeployAccepted, DeployRequest};

use crate::{Answer, ApiError, Client, ListQuery};

/// How long [`Apps::upload`] may take: a large archive over a slow link.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `POST /v1/apps/{app_id}/actions/{action}`.
#[derive(Debug, Clone)]
pub enum AppAction {
    /// Start a stopped app with the replica count it had.
    Start,
    /// Stop an app; its replica count is kept for the next start.
    Stop,
    /// Restart every instance, as the request says (rolling by default).
    Restart(RestartRequest),
}

/// The calls about apps; see [`Client::apps`].
pub struct Apps<'a> {
    pub(crate) client: &'a Client,
}

impl Apps<'_> {
    /// `GET /v1/apps`: apps of the caller's organizations. Filters:
    /// `name`, `status`, `tags`, `node_id`, `q`, ….
    pub async fn list(&self, query: &ListQuery) -> Result<Answer<AppList>, ApiError> {
        self.client
            .list("GET /v1/apps", &["v1", "apps"], query)
            .await
    }

    /// `GET /v1/apps/{app_id}`: the app and its instances.
    pub async fn get(&self, id: &str) -> Result<Answer<App>, ApiError> {
        self.client
            .get("GET /v1/apps/{app_id}", &["v1", "apps", id], &[])
            .await
    }

    /// `GET /v1/apps/{app_id}/metrics` with `metric`, `resolution`,
    /// `from`, `to`.
    pub async fn metrics(
        &self,
        id: &str,
        query: &[(&str, String)],
    ) -> Result<Answer<shellwego_api::metrics::AppMetrics>, ApiError> {
        self.client
            .get(
                "GET /v1/apps/{app_id}/metrics",
                &["v1", "apps", id, "metrics"],
                query,
            )
            .await
    }

    /// `GET /v1/apps/{app_id}/logs` (as JSON lines): the last lines that
    /// answer the query (`since`, `until`, `tail`, `instance_id`, `level`,
    /// `search`), oldest first, and the nodes that did not answer.
    pub async fn logs(
        &self,
        id: &str,
        query: &[(&str, String)],
    ) -> Result<(Vec<shellwego_api::logs::LogEntry>, Vec<String>), ApiError> {
        let res = self
            .client
            .get_raw(
                &["v1", "apps", id, "logs"],
                query,
                "application/x-ndjson",
                Duration::from_secs(60),
            )
            .await?;
        let missing = res
            .headers()
            .get("shellwego-missing-nodes")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let url = res.url().to_string();
        let text = res.text().await.map_err(|e| ApiError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let mut lines = vec![];
        for l in text.lines().filter(|l| !l.is_empty()) {
            lines.push(serde_json::from_str(l).map_err(|e| ApiError::Transport {
                url: url.clone(),
                message: format!("an unreadable log line: {e}"),
            })?);
        }
        Ok((lines, missing))
    }

    /// `GET /v1/apps/{app_id}/logs?follow=true`: the last lines, then new
    /// ones as they are printed (Server-Sent Events: `log`, `logs.partial`,
    /// `logs.dropped`; read with [`crate::events::next_event`]).
    pub async fn logs_follow(
        &self,
        id: &str,
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, ApiError> {
        let mut q = query.to_vec();
        q.push(("follow", "true".into()));
        self.client
            .get_raw(
                &["v1", "apps", id, "logs"],
                &q,
                "text/event-stream",
                Duration::from_secs(365 * 86_400),
            )
            .await
    }

    /// `POST /v1/apps/{app_id}/exec`: run a command in a running instance;
    /// waits as long as the command may run (its timeout) and a minute more.
    pub async fn exec(
        &self,
        id: &str,
        req: &shellwego_api::apps::ExecRequest,
    ) -> Result<Answer<shellwego_api::apps::ExecResponse>, ApiError> {
        self.client
            .post_json_within(
                "POST /v1/apps/{app_id}/exec",
                &["v1", "apps", id, "exec"],
                req,
                req.timeout() + Duration::from_secs(60),
            )
            .await
    }

    /// `GET /v1/apps/{app_id}?include=events`: the app with its latest events.
    pub async fn get_with_events(&self, id: &str) -> Result<Answer<App>, ApiError> {
        self.client
            .get(
                "GET /v1/apps/{app_id}?include=events",
                &["v1", "apps", id],
                &[("include", "events".to_string())],
            )
            .await
    }

    /// `POST /v1/apps`: create an app (and its first deployment).
    pub async fn create(&self, app: &AppCreate) -> Result<Answer<AppCreated>, ApiError> {
        self.client
            .send_json("POST /v1/apps", Method::POST, &["v1", "apps"], app)
            .await
    }

    /// `PATCH /v1/apps/{app_id}`.
    pub async fn update(&self, id: &str, update: &AppUpdate) -> Result<Answer<App>, ApiError> {
        self.client
            .send_json(
                "PATCH /v1/apps/{app_id}",
                Method::PATCH,
                &["v1", "apps", id],
                update,
            )
            .await
    }

    /// `DELETE /v1/apps/{app_id}`; `force` deletes a running app too.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), ApiError> {
        let query = if force {
            vec![("force", "true".to_string())]
        } else {
            vec![]
        };
        self.client.delete(&["v1", "apps", id], &query).await
    }

    /// `POST /v1/apps/{app_id}/scale`.
    pub async fn scale(&self, id: &str, req: &ScaleRequest) -> Result<Answer<App>, ApiError> {
        self.client
            .send_json(
                "POST /v1/apps/{app_id}/scale",
                Method::POST,
                &["v1", "apps", id, "scale"],
                req,
            )
            .await
    }

    /// `POST /v1/apps/{app_id}/actions/{start|stop|restart}`.
    pub async fn action(&self, id: &str, action: &AppAction) -> Result<Answer<App>, ApiError> {
        match action {
            AppAction::Start => {
                self.client
                    .post_empty(
                        "POST /v1/apps/{app_id}/actions/start",
                        &["v1", "apps", id, "actions", "start"],
                    )
                    .await
            }
            AppAction::Stop => {
                self.client
                    .post_empty(
                        "POST /v1/apps/{app_id}/actions/stop",
                        &["v1", "apps", id, "actions", "stop"],
                    )
                    .await
            }
            AppAction::Restart(req) => {
                self.client
                    .send_json(
                        "POST /v1/apps/{app_id}/actions/restart",
                        Method::POST,
                        &["v1", "apps", id, "actions", "restart"],
                        req,
                    )
                    .await
            }
        }
    }

    /// `POST /v1/apps/{app_id}/deploy`: a new deployment; it runs on after
    /// the answer (follow it with [`Client::deployments`]).
    pub async fn deploy(
        &self,
        id: &str,
        req: &DeployRequest,
    ) -> Result<Answer<DeployAccepted>, ApiError> {
        self.client
            .send_json(
                "POST /v1/apps/{app_id}/deploy",
                Method::POST,
                &["v1", "apps", id, "deploy"],
                req,
            )
            .await
    }

    /// `POST /v1/uploads`: upload a `.tar` or `.tar.gz` of an app's files,
    /// for a tarball source (`upload_id`). It may take up to
    /// [`UPLOAD_TIMEOUT`].
    pub async fn upload(&self, archive: Vec<u8>) -> Result<Answer<UploadCreated>, ApiError> {
        self.client
            .post_bytes(
                "POST /v1/uploads",
                &["v1", "uploads"],
                archive,
                "application/octet-stream",
                UPLOAD_TIMEOUT,
            )
            .await
    }
}
