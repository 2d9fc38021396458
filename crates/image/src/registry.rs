//! A minimal OCI distribution (registry v2) client: manifests, blobs,
//! uploads, and the anonymous / basic / bearer-token auth dance.

use std::error::Error as _;
use std::sync::Mutex;

use reqwest::header::{
    HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;
use crate::manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::{Credentials, ImageError};

/// How much of an error body we quote.
const ERROR_EXCERPT: usize = 512;
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Auth {
    Anonymous,
    Basic,
    Bearer(String),
}

pub(crate) struct RegistryClient {
    http: reqwest::Client,
    /// As the user wrote it, for messages (`docker.io`, `127.0.0.1:5000`).
    registry: String,
    /// `https://host[:port]/`.
    base: Url,
    repo: String,
    creds: Option<Credentials>,
    /// `pull` or `pull,push`: the scope we ask tokens for when the challenge
    /// does not say.
    actions: &'static str,
    auth: Mutex<Auth>,
}

pub(crate) struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    /// `Docker-Content-Digest`, if the registry sent one.
    pub header_digest: Option<String>,
}

impl RegistryClient {
    pub(crate) fn new(
        http: reqwest::Client,
        base: Url,
        registry: String,
        repo: String,
        creds: Option<Credentials>,
        actions: &'static str,
    ) -> Self {
        RegistryClient {
            http,
            registry,
            base,
            repo,
            creds,
            actions,
            auth: Mutex::new(Auth::Anonymous),
        }
    }

    pub(crate) fn registry(&self) -> &str {
        &self.registry
    }

    fn url(&self, rest: &str) -> Result<Url, ImageError> {
        self.base
            .join(&format!("v2/{}/{rest}", self.repo))
            .map_err(|e| ImageError::InvalidReference {
                reference: format!("{}/{}", self.registry, self.repo),
                reason: format!("cannot form a registry URL: {e}"),
            })
    }

    fn current_auth(&self) -> Auth {
        self.auth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn apply_auth(&self, rb: RequestBuilder) -> RequestBuilder {
        match (self.current_auth(), &self.creds) {
            (Auth::Bearer(token), _) => rb.bearer_auth(token),
            (Auth::Basic, Some(c)) => rb.basic_auth(&c.username, Some(&c.password)),
            (Auth::Basic | Auth::Anonymous, _) => rb,
        }
    }

    fn transport(&self, e: reqwest::Error) -> ImageError {
        if let Some(reason) = shellwego_net::ssrf::refusal(&e) {
            return ImageError::Refused {
                registry: self.registry.clone(),
                url: e
                    .url()
                    .map_or_else(|| self.base.to_string(), |u| u.to_string()),
                reason: reason.clone(),
            };
        }
        let https = e
            .url()
            .map_or(self.base.scheme() == "https", |u| u.scheme() == "https");
        let url = e
            .url()
            .map_or_else(|| self.base.to_string(), |u| u.to_string());
        let detail = error_chain(&e);
        if e.is_connect() {
            ImageError::Connect {
                registry: self.registry.clone(),
                https,
                detail,
            }
        } else {
            ImageError::Http { url, detail }
        }
    }

    /// Sends the request; on `401` answers the challenge once and sends it
    /// again. `build` makes a fresh request each time (bodies are consumed).
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, ImageError> {
        let resp = self
            .apply_auth(build())
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let auth = self.authenticate(resp.headers()).await?;
        *self
            .auth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = auth;
        self.apply_auth(build())
            .send()
            .await
            .map_err(|e| self.transport(e))
    }

    /// Turns unsuccessful statuses into errors.
    async fn check(&self, resp: Response, what: &str) -> Result<Response, ImageError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let url = resp.url().to_string();
        let body = read_limited(resp, ERROR_EXCERPT as u64, what)
            .await
            .unwrap_or_default();
        let detail = excerpt(&body);
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ImageError::Unauthorized {
                registry: self.registry.clone(),
                detail: if self.creds.is_some() {
                    format!("{status} for {what}: {detail}")
                } else {
                    format!("{status} for {what} (no credentials were given): {detail}")
                },
            },
            StatusCode::NOT_FOUND => ImageError::NotFound {
                what: format!("{what} in {}/{}", self.registry, self.repo),
            },
            _ => ImageError::Registry {
                url,
                status: status.as_u16(),
                detail,
            },
        })
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<Auth, ImageError> {
        let unauthorized = |detail: String| ImageError::Unauthorized {
            registry: self.registry.clone(),
            detail,
        };
        let challenges: Vec<Challenge> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .collect();
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer
                .param("realm")
                .ok_or_else(|| unauthorized("bearer challenge without a realm".to_owned()))?;
            let mut url = Url::parse(realm)
                .map_err(|e| unauthorized(format!("token realm {realm:?} is not a URL: {e}")))?;
            match url.scheme() {
                "https" => {}
                // Only when the registry itself is already spoken to in
                // plain HTTP (an insecure registry).
                "http" if self.base.scheme() == "http" => {}
                other => {
                    return Err(unauthorized(format!(
                        "refusing token realm {realm:?} ({other}, registry is HTTPS)"
                    )))
                }
            }
            let default_scope = format!("repository:{}:{}", self.repo, self.actions);
            {
                let mut q = url.query_pairs_mut();
                if let Some(service) = bearer.param("service") {
                    q.append_pair("service", service);
                }
                q.append_pair("scope", bearer.param("scope").unwrap_or(&default_scope));
            }
            let mut rb = self.http.get(url.clone());
            if let Some(c) = &self.creds {
                rb = rb.basic_auth(&c.username, Some(&c.password));
            }
            let resp = rb.send().await.map_err(|e| self.transport(e))?;
            let status = resp.status();
            let body = read_limited(resp, MAX_TOKEN_RESPONSE, "token response").await?;
            if !status.is_success() {
                return Err(unauthorized(format!(
                    "token service {realm} answered {status}: {}",
                    excerpt(&body)
                )));
            }
            #[derive(Deserialize)]
            struct TokenResponse {
                token: Option<String>,
                access_token: Option<String>,
            }
            let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                unauthorized(format!("token service {realm} sent invalid JSON: {e}"))
            })?;
            let token = t
                .token
                .filter(|t| !t.is_empty())
                .or(t.access_token.filter(|t| !t.is_empty()))
                .ok_or_else(|| unauthorized(format!("token service {realm} sent no token")))?;
            return Ok(Auth::Bearer(token));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            if self.creds.is_none() {
                return Err(unauthorized(
                    "the registry requires credentials (basic auth) and none were given".to_owned(),
                ));
            }
            if matches!(self.current_auth(), Auth::Basic) {
                return Err(unauthorized("basic credentials were rejected".to_owned()));
            }
            return Ok(Auth::Basic);
        }
        Err(unauthorized(
            "401 without a usable WWW-Authenticate challenge".to_owned(),
        ))
    }

    pub(crate) async fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<FetchedManifest, ImageError> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let what = format!("manifest {reference}");
        let resp = self
            .send(|| self.http.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT))
            .await?;
        let resp = self.check(resp, &what).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(CONTENT_TYPE.as_str());
        let header_digest = header("docker-content-digest");
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, &what).await?;
        Ok(FetchedManifest {
            bytes,
            content_type,
            header_digest,
        })
    }

    /// Streams a blob into `out` while hashing it; fails (having written
    /// possibly garbage into `out`, which the caller discards) unless it
    /// hashes to `digest`.
    pub(crate) async fn download_blob(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        limit: u64,
        out: &mut tokio::fs::File,
        what: &str,
    ) -> Result<u64, ImageError> {
        let too_large = |limit| ImageError::TooLarge {
            what: what.to_owned(),
            limit,
        };
        if expected_size.is_some_and(|s| s > limit) {
            return Err(too_large(limit));
        }
        let max = expected_size.unwrap_or(limit);
        let url = self.url(&format!("blobs/{digest}"))?;
        let resp = self.send(|| self.http.get(url.clone())).await?;
        let mut resp = self.check(resp, what).await?;
        if resp.content_length().is_some_and(|l| l > max) {
            return Err(too_large(max));
        }
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            total += chunk.len() as u64;
            if total > max {
                return Err(too_large(max));
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(ImageError::io(format!("writing {what}")))?;
        }
        out.flush()
            .await
            .map_err(ImageError::io(format!("writing {what}")))?;
        let actual = Digest::from_hasher(hasher);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                what: what.to_owned(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if expected_size.is_some_and(|s| s != total) {
            return Err(ImageError::InvalidManifest {
                detail: format!("{what} is {total} bytes, its descriptor says {max}"),
            });
        }
        Ok(total)
    }

    pub(crate) async fn blob_exists(&self, digest: &Digest) -> Result<bool, ImageError> {
        let url = self.url(&format!("blobs/{digest}"))?;
        let resp = self.send(|| self.http.head(url.clone())).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.check(resp, &format!("blob {digest}")).await?;
        Ok(true)
    }

    /// Monolithic upload: `POST` an upload session, `PUT` the bytes to it
    /// with `?digest=`.
    pub(crate) async fn upload_blob(
        &self,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), ImageError> {
        let what = format!("upload of blob {digest}");
        let start = self.url("blobs/uploads/")?;
        let resp = self
            .send(|| self.http.post(start.clone()).header(CONTENT_LENGTH, 0))
            .await?;
        let resp = self.check(resp, &what).await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ImageError::Registry {
                url: start.to_string(),
                status: resp.status().as_u16(),
                detail: "upload started without a Location header".to_owned(),
            })?;
        let mut put = start.join(location).map_err(|e| ImageError::Registry {
            url: start.to_string(),
            status: resp.status().as_u16(),
            detail: format!("invalid upload Location {location:?}: {e}"),
        })?;
        put.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let resp = self
            .send(|| {
                self.http
                    .put(put.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.to_vec())
            })
            .await?;
        self.check(resp, &what).await?;
        Ok(())
    }

    /// `PUT` a manifest; returns the registry's `Docker-Content-Digest`.
    pub(crate) async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Option<String>, ImageError> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let resp = self
            .send(|| {
                self.http
                    .put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            })
            .await?;
        let resp = self
            .check(resp, &format!("manifest upload {reference}"))
            .await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }
}

/// Reads a body, refusing more than `limit` bytes.
async fn read_limited(mut resp: Response, limit: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    let too_large = || ImageError::TooLarge {
        what: what.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let url = resp.url().to_string();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ImageError::Http {
        url: url.clone(),
        detail: error_chain(&e),
    })? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    let mut end = s.len().min(ERROR_EXCERPT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if s.is_empty() {
        "(empty body)".to_owned()
    } else {
        s[..end].to_owned()
    }
}

/// `e`, then its sources, without repeating a message already included.
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}

#[derive(Debug, PartialEq)]
struct Challenge {
    /// Lowercased.
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `Bearer realm="https://auth/token",service="reg",scope="repository:a:pull,push"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=') {
            key.push(c);
        }
        if chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
        }
        params.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/nginx:pull,push"));

        let c = parse_challenge(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("REALM"), Some("basic-realm"));

        let c = parse_challenge(r#"Bearer realm=https://t/x, error="invalid_token", q="a\"b""#)
            .unwrap();
        assert_eq!(c.param("realm"), Some("https://t/x"));
        assert_eq!(c.param("error"), Some("invalid_token"));
        assert_eq!(c.param("q"), Some("a\"b"));
        assert_eq!(parse_challenge("Basic").unwrap().params, vec![]);
    }
}
