//! [`ApiError`]: what a call of the `/v1` API can end in besides success,
//! and how a response with an error status becomes one.

use std::fmt::Write as _;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shellwego_api::problem::Problem;

/// A failed call of the `/v1` API. An RFC 7807 problem body is kept whole,
/// so a caller can show its field errors and trace id ([`ApiError::report`]).
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

    /// A [`ApiError::Decode`] about `what` (a route, or the list being
    /// paged through).
    pub(crate) fn decode(what: &str, message: impl Into<String>) -> ApiError {
        ApiError::Decode {
            url: what.to_string(),
            message: message.into(),
        }
    }
}

/// The error and its causes, `a: b: c` (reqwest's own message alone says
/// little; the cause says "connection refused").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
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

/// An error response as an [`ApiError`]: a problem document when the body
/// is one, whatever its content type says.
pub(crate) fn error_of(
    url: String,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiError {
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

/// The typed view of a body the API returned; `what` names the route in
/// the error.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, v: &Value) -> Result<T, ApiError> {
    T::deserialize(v).map_err(|e| ApiError::decode(what, e.to_string()))
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
