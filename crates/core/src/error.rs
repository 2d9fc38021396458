//! One domain error enum. It is turned into an HTTP problem document in
//! exactly one place (the server's `problem` module); internal detail never
//! leaves the process.

use serde::Serialize;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem with one input field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field (`resources.memory`, `filter[status]`, `limit`).
    pub field: String,
    /// Machine-readable code: `required`, `unknown_field`, `invalid_type`,
    /// `invalid_value`, `out_of_range`, `malformed`, `too_long`.
    pub code: String,
    /// What is wrong and what to change, for a person.
    pub message: String,
    /// The offending value, when there is one and it is safe to echo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code: code.to_string(),
            message: message.into(),
            value: None,
        }
    }

    pub fn with_value(mut self, value: impl Into<serde_json::Value>) -> Self {
        self.value = Some(value.into());
        self
    }
}

/// What a rate-limited caller needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitInfo {
    /// Requests per window (the tier's sustained rate).
    pub limit: u32,
    /// Window length in seconds.
    pub window_secs: u32,
    /// Whole seconds until the next request will be admitted (at least 1).
    pub retry_after_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unauthenticated(String),
    /// The password was right but a second factor is needed (or was wrong).
    #[error("{detail}")]
    MfaRequired { detail: String, code: &'static str },
    #[error("{0}")]
    Forbidden(String),
    /// The thing existed but is used up or expired (an invitation).
    #[error("{0}")]
    Gone(String),
    #[error("{kind} '{id}' was not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    PaymentRequired(String),
    #[error("{0}")]
    DeploymentFailed(String),
    /// A well-formed request for something this installation does not
    /// offer (422).
    #[error("{0}")]
    NotOffered(String),
    /// The request body is larger than the server accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The client sent its request (body) too slowly.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("rate limit exceeded")]
    RateLimited(RateLimitInfo),
    /// A dependency (the store) is not reachable right now.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. The message is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// An unexpected failure of a dependency (the store's driver, a
    /// serializer), its cause kept (`source()`) for the log, never sent.
    #[error("internal error: {context}")]
    InternalSource {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// A validation error about one field.
    pub fn field(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        let fe = FieldError::new(field, code, message);
        Self::invalid(vec![fe])
    }

    /// A validation error about several fields; the detail summarises the first.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [] => "The request is invalid.".to_string(),
            [one] => format!("'{}': {}", one.field, one.message),
            [first, rest @ ..] => format!(
                "'{}': {} (and {} more problem{})",
                first.field,
                first.message,
                rest.len(),
                if rest.len() == 1 { "" } else { "s" }
            ),
        };
        Self::Validation { detail, errors }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// An unexpected failure in `context`, keeping `source` as its cause.
    pub fn internal_source(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::InternalSource {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
