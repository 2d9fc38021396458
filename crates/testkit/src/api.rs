//! The `/v1` API of a spawned platform as its admin, async, JSON in and
//! out (untyped: the typed client is `shellwego-client`'s job). Used by the
//! async tests and the benchmarks; [`crate::platform::Platform`] has the
//! blocking equivalents.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

pub use reqwest::Method;

/// The API at `base` with a bearer token.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Api {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Api {
            base: base.into(),
            token: token.into(),
            http,
        }
    }

    /// `(status, body)`: the body as JSON, or its text as a JSON string
    /// (plain-text endpoints), or `Null` when empty. A 429 is waited out
    /// and retried; an error when the request itself fails.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = req
                .send()
                .await
                .with_context(|| format!("{method} {path}"))?;
            let status = res.status().as_u16();
            if status == 429 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let bytes = res.bytes().await.unwrap_or_default();
            return Ok((status, crate::http::body_value(&bytes)));
        }
    }

    /// [`Api::send`] for tests that poll through restarts: status 0 (and
    /// the error as the body) when the request itself failed.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        match self.send(method, path, body.as_ref()).await {
            Ok(r) => r,
            Err(e) => (0, Value::String(format!("request failed: {e:#}"))),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(Method::GET, path, None).await
    }

    /// POST, expecting a 2xx; its body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (st, v) = self.send(Method::POST, path, Some(body)).await?;
        if !(200..300).contains(&st) {
            bail!("POST {path} answered {st}: {v}");
        }
        Ok(v)
    }

    /// DELETE, expecting a 2xx or a 404 (gone already).
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let (st, v) = self.send(Method::DELETE, path, None).await?;
        if !(200..300).contains(&st) && st != 404 {
            bail!("DELETE {path} answered {st}: {v}");
        }
        Ok(())
    }

    /// `POST /v1/uploads`: the upload id.
    pub async fn upload(&self, archive: Vec<u8>) -> anyhow::Result<String> {
        let res = self
            .http
            .post(format!("{}/v1/uploads", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(archive)
            .send()
            .await
            .context("POST /v1/uploads")?;
        let status = res.status();
        let v = crate::http::body_value(&res.bytes().await.unwrap_or_default());
        if !status.is_success() {
            bail!("POST /v1/uploads answered {status}: {v}");
        }
        v["upload_id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no upload_id in the answer: {v}"))
    }

    /// Wait (up to 60 s) until node `id` (any node when `None`) is ready
    /// and offers `driver`; its id.
    pub async fn wait_node(&self, id: Option<&str>, driver: &str) -> anyhow::Result<String> {
        let t = Instant::now();
        loop {
            let (_, nodes) = self.get("/v1/nodes").await?;
            let found = nodes["data"].as_array().and_then(|list| {
                list.iter().find(|n| {
                    id.is_none_or(|id| n["id"] == id)
                        && n["status"] == "ready"
                        && n["drivers"]
                            .as_array()
                            .is_some_and(|d| d.iter().any(|x| x == driver))
                })
            });
            if let Some(n) = found.and_then(|n| n["id"].as_str()) {
                return Ok(n.to_string());
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("no node ready with the {driver} driver within 60 s: {nodes}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
