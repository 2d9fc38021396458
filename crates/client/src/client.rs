//! [`Client`]: a base URL, an optional bearer token and a `reqwest::Client`,
//! and the plumbing every resource's calls go through (one request, its
//! answer or its [`ApiError`], list paging).

use std::ops::Deref;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{chain, decode, error_of, ApiError};

/// How long one request may take, connection included.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The `User-Agent` of [`Client::new`].
const USER_AGENT: &str = concat!("shellwego-client/", env!("CARGO_PKG_VERSION"));

/// A client that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API URL is not an http(s) URL that can be a base.
    #[error("{0}")]
    BaseUrl(String),
    /// The HTTP client could not be built (its TLS backend, say).
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// A client of the `/v1` API. Each resource has its calls under an
/// accessor ([`Client::apps`], [`Client::deployments`], …), typed over the
/// `shellwego-api` bodies; errors are [`ApiError`]s.
#[derive(Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

/// A successful answer: its typed view (which it dereferences to) and the
/// JSON body it was read from, as the API sent it (for a caller that shows
/// the API's own JSON, such as `shellwego … --output json`).
#[derive(Debug, Clone)]
pub struct Answer<T> {
    value: T,
    body: Value,
}

impl<T> Answer<T> {
    /// The JSON body, as the API sent it.
    pub fn body(&self) -> &Value {
        &self.body
    }

    /// The typed view.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// The typed view and the JSON body.
    pub fn into_parts(self) -> (T, Value) {
        (self.value, self.body)
    }
}

impl<T> Deref for Answer<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// Filters, sort and paging of a list call (`GET /v1/apps?filter[status]=running&limit=20`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    filters: Vec<(String, String)>,
    sort: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    all: bool,
}

impl ListQuery {
    /// The first page, with the API's default size and order.
    pub fn new() -> ListQuery {
        ListQuery::default()
    }

    /// Only items whose `field` matches `value`: sent as
    /// `filter[<field>]=<value>` (a comma-separated value is a set;
    /// `filter[q]` searches text).
    pub fn filter(mut self, field: &str, value: impl Into<String>) -> ListQuery {
        self.filters
            .push((format!("filter[{field}]"), value.into()));
        self
    }

    /// The order, e.g. `created_at:desc`.
    /// `filter[field][op]=value`: a range (`op` is gt, gte, lt or lte).
    pub fn range(mut self, field: &str, op: &str, value: impl Into<String>) -> ListQuery {
        self.filters
            .push((format!("filter[{field}][{op}]"), value.into()));
        self
    }

    pub fn sort(mut self, sort: impl Into<String>) -> ListQuery {
        self.sort = Some(sort.into());
        self
    }

    /// Items per page (1-100).
    pub fn limit(mut self, limit: Option<u32>) -> ListQuery {
        self.limit = limit;
        self
    }

    /// Start at this cursor (a previous page's `next_cursor`).
    pub fn cursor(mut self, cursor: Option<String>) -> ListQuery {
        self.cursor = cursor;
        self
    }

    /// Fetch every page, following `pagination.next_cursor`: the answer is
    /// one `{data, pagination}` with every item and the last page's
    /// pagination.
    pub fn all(mut self, all: bool) -> ListQuery {
        self.all = all;
        self
    }

    /// The query parameters of one page: filters, sort, limit, cursor.
    fn params(&self, cursor: Option<&String>) -> Vec<(&str, String)> {
        let mut q: Vec<(&str, String)> = self
            .filters
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        if let Some(s) = &self.sort {
            q.push(("sort", s.clone()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.clone()));
        }
        q
    }
}

impl Client {
    /// A client of the API at `base`, e.g. `http://127.0.0.1:3000` (the
    /// `/v1` prefix is part of each path; a base with a path of its own,
    /// `https://host/api/`, is kept), sending `token` as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_user_agent(base, token, USER_AGENT)
    }

    /// [`Client::new`] that names itself `user_agent`.
    pub fn with_user_agent(
        base: &str,
        token: Option<String>,
        user_agent: &str,
    ) -> Result<Client, ClientError> {
        let base = parse_base(base)?;
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Client { base, token, http })
    }

    /// The same API without a token (for logging in: a stale token must
    /// not get in the way).
    pub fn anonymous(&self) -> Client {
        Client {
            base: self.base.clone(),
            token: None,
            http: self.http.clone(),
        }
    }

    /// The API's base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The `ws://`/`wss://` URL of `segments` with `query` (for the
    /// WebSocket routes), and the bearer token to send with it.
    pub fn websocket(&self, segments: &[&str], query: &[(&str, String)]) -> (String, Option<&str>) {
        let mut url = self.url(segments, query);
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        let _ = url.set_scheme(scheme);
        (url.to_string(), self.token.as_deref())
    }

    /// Whether a token is sent.
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
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
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

    /// GET a JSON body, typed; `what` names the route in a decode error.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Answer<T>, ApiError> {
        let body = self.send::<()>(Method::GET, segments, query, None).await?;
        answer(what, body)
    }

    /// Send `body` as JSON with `method` (POST, PATCH); the answer, typed.
    pub(crate) async fn send_json<T: DeserializeOwned, B: Serialize>(
        &self,
        what: &str,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> Result<Answer<T>, ApiError> {
        let body = self.send(method, segments, &[], Some(body)).await?;
        answer(what, body)
    }

    /// POST without a body (actions such as `start` take none).
    pub(crate) async fn post_empty<T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
    ) -> Result<Answer<T>, ApiError> {
        let body = self.send::<()>(Method::POST, segments, &[], None).await?;
        answer(what, body)
    }

    /// DELETE, with query parameters (`force=true`, `migrate_apps=true`);
    /// the body of the answer (empty for a 204) is not looked at.
    pub(crate) async fn delete(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<(), ApiError> {
        self.send::<()>(Method::DELETE, segments, query, None)
            .await
            .map(drop)
    }

    /// POST a raw body (an archive). `timeout` replaces the usual one: a
    /// large upload over a slow link takes a while.
    pub(crate) async fn post_bytes<T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        body: Vec<u8>,
        content_type: &str,
        timeout: Duration,
    ) -> Result<Answer<T>, ApiError> {
        let url = self.url(segments, &[]);
        let req = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, content_type)
            .timeout(timeout)
            .body(body);
        let body = self.finish(url, req).await?;
        answer(what, body)
    }

    /// Send `body` as JSON with POST, with `timeout` instead of the usual
    /// one (a call that lasts as long as what it runs: an exec).
    pub(crate) async fn post_json_within<T: DeserializeOwned, B: Serialize>(
        &self,
        what: &str,
        segments: &[&str],
        body: &B,
        timeout: Duration,
    ) -> Result<Answer<T>, ApiError> {
        let url = self.url(segments, &[]);
        let req = self.http.post(url.clone()).timeout(timeout).json(body);
        let body = self.finish(url, req).await?;
        answer(what, body)
    }

    /// GET a body that is not JSON (a deployment's text log): the response
    /// once its status is a success, for the caller to read whole or as a
    /// stream. `timeout` replaces the usual one (a followed stream lasts as
    /// long as what it follows).
    pub(crate) async fn get_raw(
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
    pub(crate) async fn get_text(
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

    /// One page of a list, or with [`ListQuery::all`] every page joined
    /// into one `{data, pagination}` body; typed as `what` says.
    pub(crate) async fn list<T: DeserializeOwned>(
        &self,
        what: &str,
        segments: &[&str],
        query: &ListQuery,
    ) -> Result<Answer<T>, ApiError> {
        let body = self.list_body(segments, query).await?;
        answer(what, body)
    }

    async fn list_body(&self, segments: &[&str], query: &ListQuery) -> Result<Value, ApiError> {
        let what = segments.join("/");
        let mut cursor = query.cursor.clone();
        let mut items: Vec<Value> = vec![];
        let mut seen: Vec<String> = vec![];
        loop {
            let params = query.params(cursor.as_ref());
            let page = self
                .send::<()>(Method::GET, segments, &params, None)
                .await?;
            if !query.all {
                return Ok(page);
            }
            let Value::Object(mut page) = page else {
                return Err(ApiError::decode(&what, "a list is not an object"));
            };
            match page.remove("data") {
                Some(Value::Array(a)) => items.extend(a),
                Some(_) | None => return Err(ApiError::decode(&what, "a list has no data array")),
            }
            let pagination = page.remove("pagination").unwrap_or(Value::Null);
            let next = pagination
                .get("next_cursor")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            let has_more = pagination
                .get("has_more")
                .and_then(Value::as_bool)
                .unwrap_or(next.is_some());
            match next {
                Some(c) if has_more => {
                    if seen.contains(&c) {
                        return Err(ApiError::decode(
                            &what,
                            "the API returned the same cursor twice",
                        ));
                    }
                    seen.push(c.clone());
                    cursor = Some(c);
                }
                Some(_) | None => {
                    let mut all = Map::new();
                    all.insert("data".into(), Value::Array(items));
                    all.insert("pagination".into(), pagination);
                    return Ok(Value::Object(all));
                }
            }
        }
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

/// `body` with its typed view.
fn answer<T: DeserializeOwned>(what: &str, body: Value) -> Result<Answer<T>, ApiError> {
    Ok(Answer {
        value: decode(what, &body)?,
        body,
    })
}

fn parse_base(base: &str) -> Result<Url, ClientError> {
    let url = Url::parse(base.trim())
        .map_err(|e| ClientError::BaseUrl(format!("API URL '{base}' is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ClientError::BaseUrl(format!(
            "API URL '{base}' must start with http:// or https://"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ClientError::BaseUrl(format!(
            "API URL '{base}' must not have a query or fragment"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bad_base_urls_say_what_to_change() {
        let e = |b: &str| Client::new(b, None).err().unwrap().to_string();
        assert_eq!(
            e("ftp://h"),
            "API URL 'ftp://h' must start with http:// or https://"
        );
        assert_eq!(
            e("http://h/?x=1"),
            "API URL 'http://h/?x=1' must not have a query or fragment"
        );
        assert!(e("nonsense").starts_with("API URL 'nonsense' is not a URL ("));
    }

    #[test]
    fn list_queries_send_filters_then_sort_limit_and_cursor() {
        let q = ListQuery::new()
            .filter("status", "running,stopped")
            .filter("q", "web")
            .sort("name:asc")
            .limit(Some(5))
            .cursor(Some("c1".into()));
        let c = Client::new("http://h:1", None).unwrap();
        assert_eq!(
            c.url(&["v1", "apps"], &q.params(q.cursor.as_ref())).as_str(),
            "http://h:1/v1/apps?filter%5Bstatus%5D=running%2Cstopped&filter%5Bq%5D=web&sort=name%3Aasc&limit=5&cursor=c1"
        );
        assert!(ListQuery::new().params(None).is_empty());
    }

    #[test]
    fn answers_keep_the_body_and_deref_to_the_value() {
        let a: Answer<std::collections::BTreeMap<String, i64>> =
            answer("GET /x", serde_json::json!({"b": 1, "a": 2})).unwrap();
        assert_eq!(a["a"], 2);
        assert_eq!(a.body()["b"], 1);
        let e = answer::<Vec<String>>("GET /x", serde_json::json!({"b": 1})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unexpected response from GET /x: "),
            "{e}"
        );
    }
}
