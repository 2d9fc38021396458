//! A small client of the `/v1` API: a base URL, an optional bearer token and
//! a `reqwest::Client`. Error responses become a typed [`ApiError`]; an RFC
//! 7807 problem body is kept whole so the CLI can show its field errors and
//! trace id.

use std::fmt::Write as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shellwego_api::problem::Problem;

/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with a problem document.
    #[error("{}", problem_text(.problem))]
    Problem {
        problem: Box<Problem>,
        /// `Retry-After` (seconds), from the header or the body.
        retry_after: Option<u64>,
    },
    /// The API answered with an error status but no problem document
    /// (a proxy in the way, or not a ShellWeGo API at all).
    #[error("{url} answered {status}{}", body_text(.body))]
    Status {
        url: String,
        status: StatusCode,
        body: String,
        trace_id: Option<String>,
    },
    /// The request did not get an answer.
    #[error("cannot reach the API at {url}: {message}")]
    Transport { url: String, message: String },
    /// The answer was not what the API contract promises.
    #[error("unexpected response from {url}: {message}")]
    Decode { url: String, message: String },
    /// A command that needs a token was run without one.
    #[error("not logged in: run `shellwego auth login`, or set SHELLWEGO_TOKEN or --token")]
    NoToken,
}

fn problem_text(p: &Problem) -> String {
    if p.detail.is_empty() {
        p.title.clone()
    } else {
        p.detail.clone()
    }
}

fn body_text(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        let short: String = body.chars().take(300).collect();
        format!(": {short}")
    }
}

impl ApiError {
    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Problem { problem, .. } => StatusCode::from_u16(problem.status).ok(),
            ApiError::Status { status, .. } => Some(*status),
            ApiError::Transport { .. } | ApiError::Decode { .. } | ApiError::NoToken => None,
        }
    }

    /// The login needs an MFA code (none was sent, or it was wrong).
    pub fn wants_mfa_code(&self) -> bool {
        match self {
            ApiError::Problem { problem, .. } => {
                problem.status == 401 && problem.errors.iter().any(|e| e.field == "mfa_code")
            }
            ApiError::Status { .. }
            | ApiError::Transport { .. }
            | ApiError::Decode { .. }
            | ApiError::NoToken => false,
        }
    }

    /// What to print on stderr: `error: <detail>`, then one line per field
    /// error, the retry delay and the trace id.
    pub fn report(&self) -> String {
        let mut s = format!("error: {self}\n");
        match self {
            ApiError::Problem {
                problem,
                retry_after,
            } => {
                for e in &problem.errors {
                    let _ = writeln!(s, "  {}: {}", e.field, e.message);
                }
                if let Some(secs) = retry_after {
                    let _ = writeln!(s, "  retry after: {secs}s");
                }
                if !problem.trace_id.is_empty() {
                    let _ = writeln!(s, "  trace_id: {}", problem.trace_id);
                }
            }
            ApiError::Status {
                trace_id: Some(t), ..
            } => {
                let _ = writeln!(s, "  trace_id: {t}");
            }
            ApiError::Status { trace_id: None, .. }
            | ApiError::Transport { .. }
            | ApiError::Decode { .. }
            | ApiError::NoToken => {}
        }
        s
    }
}

/// The error and its causes, `a: b: c` (reqwest's own message alone says
/// little; the cause says "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the API's root, e.g. `http://127.0.0.1:3000` (the `/v1`
    /// prefix is part of each path).
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = parse_base(base)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("shellwego-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Client { base, token, http })
    }

    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Fail early, before any request, when there is no token.
    pub fn require_token(&self) -> Result<(), ApiError> {
        if self.has_token() {
            Ok(())
        } else {
            Err(ApiError::NoToken)
        }
    }

    /// The URL of `segments` (each one percent-encoded) under the base.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, ApiError> {
        self.send::<()>(Method::GET, segments, query, None).await
    }

    pub async fn post<B: Serialize>(&self, segments: &[&str], body: &B) -> Result<Value, ApiError> {
        self.send(Method::POST, segments, &[], Some(body)).await
    }

    /// POST without a body (actions such as `start` take none).
    pub async fn post_empty(&self, segments: &[&str]) -> Result<Value, ApiError> {
        self.send::<()>(Method::POST, segments, &[], None).await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Value, ApiError> {
        self.send::<()>(Method::DELETE, segments, &[], None).await
    }

    /// DELETE with query parameters (`force=true`, `migrate_apps=true`).
    pub async fn delete_with(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, ApiError> {
        self.send::<()>(Method::DELETE, segments, query, None).await
    }

    /// POST a raw body (an archive for `/v1/uploads`). `timeout` replaces
    /// the usual one: a large upload over a slow link takes a while.
    pub async fn post_bytes(
        &self,
        segments: &[&str],
        body: Vec<u8>,
        content_type: &str,
        timeout: Duration,
    ) -> Result<Value, ApiError> {
        let url = self.url(segments, &[]);
        let req = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, content_type)
            .timeout(timeout)
            .body(body);
        self.finish(url, req).await
    }

    /// GET a body that is not JSON (a deployment's text log): the
    /// response once its status is a success, for the caller to read
    /// whole or as a stream. `timeout` replaces the usual one (a followed
    /// stream lasts as long as what it follows).
    pub async fn get_raw(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        accept: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let url = self.url(segments, query);
        let shown = url.as_str().to_string();
        let mut req = self
            .http
            .get(url)
            .header(ACCEPT, format!("{accept}, application/problem+json"))
            .timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.map_err(|e| ApiError::Transport {
            url: shown.clone(),
            message: chain(&e),
        })?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let headers = res.headers().clone();
        let bytes = res.bytes().await.map_err(|e| ApiError::Transport {
            url: shown.clone(),
            message: chain(&e),
        })?;
        Err(error_of(shown, status, &headers, &bytes))
    }

    /// GET a text body (`text/plain`).
    pub async fn get_text(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<String, ApiError> {
        let res = self.get_raw(segments, query, "text/plain", TIMEOUT).await?;
        let shown = res.url().as_str().to_string();
        res.text().await.map_err(|e| ApiError::Transport {
            url: shown,
            message: chain(&e),
        })
    }

    /// One request. A success returns the JSON body (`null` when empty,
    /// as for 204); an error status returns [`ApiError`].
    async fn send<B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Value, ApiError> {
        let url = self.url(segments, query);
        let url_for_errors = url.clone();
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.finish(url_for_errors, req).await
    }

    /// Send a built request (the token is added here) and read the answer.
    async fn finish(&self, url: Url, mut req: RequestBuilder) -> Result<Value, ApiError> {
        let shown = url.as_str().to_string();
        req = req.header(ACCEPT, "application/json, application/problem+json");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.map_err(|e| ApiError::Transport {
            url: shown.clone(),
            message: chain(&e),
        })?;
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.map_err(|e| ApiError::Transport {
            url: shown.clone(),
            message: chain(&e),
        })?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
                url: shown,
                message: format!("the body is not JSON ({e})"),
            });
        }
        Err(error_of(shown, status, &headers, &bytes))
    }
}

fn parse_base(base: &str) -> anyhow::Result<Url> {
    let url = Url::parse(base.trim())
        .map_err(|e| anyhow::anyhow!("API URL '{base}' is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        anyhow::bail!("API URL '{base}' must start with http:// or https://");
    }
    if url.query().is_some() || url.fragment().is_some() {
        anyhow::bail!("API URL '{base}' must not have a query or fragment");
    }
    Ok(url)
}

/// An error response as an [`ApiError`]: a problem document when the body
/// is one, whatever its content type says.
fn error_of(url: String, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let header_retry = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match serde_json::from_slice::<Problem>(body) {
        Ok(problem) => ApiError::Problem {
            retry_after: header_retry.or(problem.retry_after),
            problem: Box::new(problem),
        },
        Err(_) => ApiError::Status {
            url,
            status,
            body: String::from_utf8_lossy(body).into_owned(),
            trace_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        },
    }
}

/// The typed view of a body the API returned.
pub fn decode<T: DeserializeOwned>(what: &str, v: &Value) -> Result<T, ApiError> {
    T::deserialize(v).map_err(|e| ApiError::Decode {
        url: what.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: serde_json::Value) -> ApiError {
        error_of(
            "u".into(),
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            json.to_string().as_bytes(),
        )
    }

    #[test]
    fn urls_encode_segments_and_keep_a_base_path() {
        let c = Client::new("http://h:1/api/", None).unwrap();
        assert_eq!(
            c.url(&["v1", "user", "tokens", "a/b c"], &[("limit", "5".into())])
                .as_str(),
            "http://h:1/api/v1/user/tokens/a%2Fb%20c?limit=5"
        );
        let c = Client::new("http://h:1", None).unwrap();
        assert_eq!(c.url(&["v1", "user"], &[]).as_str(), "http://h:1/v1/user");
        assert_eq!(c.base(), "http://h:1");
        assert!(Client::new("ftp://h", None).is_err());
        assert!(Client::new("localhost:3000", None).is_err());
    }

    #[test]
    fn problems_are_reported_with_fields_and_trace_id() {
        let e = problem(serde_json::json!({
            "type": "https://api.shellwego.com/errors/validation-failed",
            "title": "Validation Failed", "status": 400, "detail": "2 fields are invalid",
            "instance": "/v1/user/tokens", "trace_id": "req_1",
            "errors": [{"field": "expires_in", "code": "out_of_range", "message": "must be between 1h and 365d"}]
        }));
        assert_eq!(
            e.report(),
            "error: 2 fields are invalid\n  expires_in: must be between 1h and 365d\n  trace_id: req_1\n"
        );
        assert!(!e.wants_mfa_code());
    }

    #[test]
    fn mfa_required_is_recognised() {
        let e = problem(serde_json::json!({
            "type": "t", "title": "Unauthorized", "status": 401, "detail": "MFA code required",
            "instance": "/v1/auth/token", "trace_id": "req_2",
            "errors": [{"field": "mfa_code", "code": "required", "message": "enter the code"}]
        }));
        assert!(e.wants_mfa_code());
    }

    #[test]
    fn retry_after_comes_from_the_header_or_the_body() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "30".parse().unwrap());
        let body = serde_json::json!({"type": "t", "title": "Too Many Requests", "status": 429,
            "detail": "slow down", "instance": "/", "trace_id": "req_3", "retry_after": 7});
        let e = error_of(
            "u".into(),
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            body.to_string().as_bytes(),
        );
        assert!(e.report().contains("retry after: 30s"));
        let e = error_of(
            "u".into(),
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            body.to_string().as_bytes(),
        );
        assert!(e.report().contains("retry after: 7s"));
    }

    #[test]
    fn other_bodies_keep_status_and_request_id() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "req_9".parse().unwrap());
        let e = error_of("http://x/".into(), StatusCode::BAD_GATEWAY, &h, b"<html>");
        assert_eq!(
            e.report(),
            "error: http://x/ answered 502 Bad Gateway: <html>\n  trace_id: req_9\n"
        );
    }
}
