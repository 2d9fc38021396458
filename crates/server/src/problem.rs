//! The one place where errors become HTTP responses.
//!
//! Handlers and middleware return `ApiError` (or a `ProblemSpec`); the
//! response carries the spec in its extensions, and the request-context
//! middleware (which knows the request path and id) writes the RFC 7807
//! body. Internal details are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use shellwego_api::problem::{FieldProblem, Problem};
use shellwego_core::{Error, FieldError, RateLimitInfo};

pub const TYPE_BASE: &str = "https://api.shellwego.com/errors/";

/// A problem waiting for its `instance` and `trace_id`.
#[derive(Debug, Clone)]
pub struct ProblemSpec {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub rate: Option<RateLimitInfo>,
}

impl ProblemSpec {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ProblemSpec {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: vec![],
            rate: None,
        }
    }

    pub fn into_body(self, instance: &str, trace_id: &str) -> Problem {
        let (error, message, retry_after, limit, window) = match &self.rate {
            Some(r) => (
                Some("rate_limit_exceeded".to_string()),
                Some(format!(
                    "API rate limit exceeded. Retry after {} seconds.",
                    r.retry_after_secs
                )),
                Some(r.retry_after_secs),
                Some(r.limit),
                Some(format!("{}s", r.window_secs)),
            ),
            None => (None, None, None, None, None),
        };
        Problem {
            type_uri: format!("{TYPE_BASE}{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            instance: instance.to_string(),
            trace_id: trace_id.to_string(),
            errors: self
                .errors
                .into_iter()
                .map(|e| FieldProblem {
                    field: e.field,
                    code: e.code,
                    message: e.message,
                    value: e.value,
                })
                .collect(),
            error,
            message,
            retry_after,
            limit,
            window,
        }
    }
}

impl IntoResponse for ProblemSpec {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(r) = &self.rate {
            if let Ok(v) = HeaderValue::from_str(&r.retry_after_secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v.clone());
                res.headers_mut().insert("x-ratelimit-retry-after", v);
            }
        }
        res.extensions_mut().insert(self);
        res
    }
}

/// The error type of every handler.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn spec_for(e: Error) -> ProblemSpec {
    use StatusCode as S;
    match e {
        Error::Unauthenticated(d) => ProblemSpec::new(
            S::UNAUTHORIZED,
            "authentication-required",
            "Authentication Required",
            d,
        ),
        Error::MfaRequired { detail, code } => {
            let mut p = ProblemSpec::new(
                S::UNAUTHORIZED,
                "authentication-required",
                "Authentication Required",
                detail.clone(),
            );
            p.errors = vec![FieldError::new("mfa_code", code, detail)];
            p
        }
        Error::Gone(d) => ProblemSpec::new(S::GONE, "gone", "Gone", d),
        Error::Forbidden(d) => ProblemSpec::new(
            S::FORBIDDEN,
            "insufficient-permissions",
            "Insufficient Permissions",
            d,
        ),
        Error::NotFound { kind, id } => ProblemSpec::new(
            S::NOT_FOUND,
            "resource-not-found",
            "Resource Not Found",
            format!("{kind} '{id}' was not found"),
        ),
        Error::Validation { detail, errors } => {
            let mut p = ProblemSpec::new(
                S::BAD_REQUEST,
                "validation-failed",
                "Validation Failed",
                detail,
            );
            p.errors = errors;
            p
        }
        Error::Conflict(d) => ProblemSpec::new(S::CONFLICT, "conflict", "Conflict", d),
        Error::QuotaExceeded(d) => {
            ProblemSpec::new(S::TOO_MANY_REQUESTS, "quota-exceeded", "Quota Exceeded", d)
        }
        Error::PaymentRequired(d) => ProblemSpec::new(
            S::PAYMENT_REQUIRED,
            "payment-required",
            "Payment Required",
            d,
        ),
        Error::DeploymentFailed(d) => ProblemSpec::new(
            S::UNPROCESSABLE_ENTITY,
            "deployment-failed",
            "Deployment Failed",
            d,
        ),
        Error::NotOffered(d) => {
            ProblemSpec::new(S::UNPROCESSABLE_ENTITY, "not-offered", "Not Offered", d)
        }
        Error::PayloadTooLarge(d) => ProblemSpec::new(
            S::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload Too Large",
            d,
        ),
        Error::RequestTimeout(d) => {
            ProblemSpec::new(S::REQUEST_TIMEOUT, "request-timeout", "Request Timeout", d)
        }
        Error::RateLimited(info) => {
            let mut p = ProblemSpec::new(
                S::TOO_MANY_REQUESTS,
                "rate-limit-exceeded",
                "Rate Limit Exceeded",
                format!(
                    "API rate limit exceeded. Retry after {} seconds.",
                    info.retry_after_secs
                ),
            );
            p.rate = Some(info);
            p
        }
        Error::Unavailable(d) => {
            tracing::warn!(error = %d, "service unavailable");
            ProblemSpec::new(
                S::SERVICE_UNAVAILABLE,
                "service-unavailable",
                "Service Unavailable",
                "The service is temporarily unavailable; retry shortly.",
            )
        }
        Error::Internal(d) => {
            tracing::error!(error = %d, "internal error");
            internal()
        }
        Error::InternalSource { context, source } => {
            let mut cause = source.to_string();
            let mut next = source.source();
            while let Some(e) = next {
                cause.push_str(": ");
                cause.push_str(&e.to_string());
                next = e.source();
            }
            tracing::error!(error = %context, cause = %cause, "internal error");
            internal()
        }
    }
}

/// The generic 500: no detail beyond the trace id.
pub fn internal() -> ProblemSpec {
    ProblemSpec::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal-error",
        "Internal Server Error",
        "An unexpected error occurred. Quote the trace_id when reporting it.",
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        spec_for(self.0).into_response()
    }
}
