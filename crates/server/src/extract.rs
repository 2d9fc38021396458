//! Extractors that turn bad input into our problem documents with the
//! field that was wrong, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use shellwego_api::Validate;
use shellwego_core::list::ListParams;
use shellwego_core::{Error, FieldError};

use crate::problem::ApiError;

/// A JSON request body, parsed strictly (unknown fields are errors when the
/// type says `deny_unknown_fields`) and then validated.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        Ok(JsonBody(parse_json(&bytes)?))
    }
}

/// A JSON request body that may be left out: an empty (or blank) body is
/// `T::default()`; anything else is parsed and validated like `JsonBody`.
pub struct OptionalJsonBody<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    T: DeserializeOwned + Validate + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        Ok(OptionalJsonBody(parse_json(&bytes)?))
    }
}

/// The whole body, with our problems (413, 400) instead of axum's plain-text
/// rejections.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge("The request body is larger than 2 MiB.".into())
        } else if let Some(t) = body_timeout(&e) {
            t
        } else {
            Error::field(
                "body",
                "malformed",
                format!("the request body could not be read: {}", e.body_text()),
            )
        }
    })
}

/// A 408 when `err` is the body timeout of `shellwego_net::serve`.
pub fn body_timeout(err: &(dyn std::error::Error + 'static)) -> Option<Error> {
    shellwego_net::serve::BodyTimeout::is_in(err).then(|| {
        Error::RequestTimeout(format!(
            "{err}; the body must arrive within the server's body timeout, at a minimum rate after that (see [http] in the server's configuration)."
        ))
    })
}

/// Parse and validate a JSON body; errors name the field.
pub fn parse_json<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::field(
            "body",
            "required",
            "a JSON object is required",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(de).map_err(json_error)?;
    value.validate()?;
    Ok(value)
}

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = match e.path().to_string() {
        p if p == "." || p == "?" => String::new(),
        p => p,
    };
    let inner = e.inner();
    let (line, column) = (inner.line(), inner.column());
    let msg = inner.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    let ticked = |m: &str| m.split('`').nth(1).map(str::to_string);
    let word = unknown_word(&msg);
    let fe = match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => FieldError::new(
            "body",
            "malformed",
            format!("the body is not valid JSON ({msg} at line {line}, column {column})"),
        ),
        Category::Data if msg.starts_with("unknown field") => {
            let name = ticked(&msg).unwrap_or_default();
            let expected = msg
                .split_once(", expected ")
                .map(|(_, x)| format!("; expected {}", x.replace('`', "'")))
                .unwrap_or_default();
            // The path already ends in the unknown field's name.
            let field = if path.is_empty() {
                name.clone()
            } else {
                path.clone()
            };
            FieldError::new(
                field,
                "unknown_field",
                format!("unknown field '{name}'{expected}"),
            )
        }
        Category::Data if msg.starts_with("missing field") => {
            let name = ticked(&msg).unwrap_or_default();
            FieldError::new(join(&name), "required", "this field is required")
        }
        // A word that is not one of an enum's (a strategy, a status): name
        // the field and what it accepts, as the services' own checks do.
        Category::Data if word.is_some() => {
            let (value, accepted) = word.unwrap_or_default();
            FieldError::new(
                if path.is_empty() {
                    "body".to_string()
                } else {
                    path.clone()
                },
                "invalid_value",
                format!("must be one of: {}", accepted.join(", ")),
            )
            .with_value(value)
        }
        Category::Data => FieldError::new(
            if path.is_empty() {
                "body".to_string()
            } else {
                path.clone()
            },
            "invalid_type",
            msg.replace('`', "'"),
        ),
    };
    Error::invalid(vec![fe])
}

/// The value and the accepted names of an "unknown word" deserialization
/// error: the model's enums say `unknown deployment strategy "x"; expected
/// one of: a, b` (`shellwego_core::model::UnknownValue`), serde's derived
/// enums `unknown variant `x`, expected one of `a`, `b`` (or `` `a` or `b` ``).
fn unknown_word(msg: &str) -> Option<(String, Vec<String>)> {
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let (value, rest) = rest.split_once('`')?;
        let expected = rest.strip_prefix(", expected ")?;
        let accepted: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        return (!accepted.is_empty()).then(|| (value.to_string(), accepted));
    }
    let rest = msg.strip_prefix("unknown ")?;
    let (head, list) = rest.rsplit_once("; expected one of: ")?;
    // `head` is `<what> "<value>"`, the value written as a Rust string.
    let quoted = &head[head.find('"')?..];
    let value = quoted
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))?
        .replace("\\\"", "\"")
        .replace("\\\\", "\\");
    let accepted: Vec<String> = list.split(", ").map(str::to_string).collect();
    Some((value, accepted))
}

/// Parse the query string of a list endpoint. `extra` names the
/// endpoint-specific parameters it accepts besides limit/cursor/sort/filter.
pub fn list_params(parts_query: Option<&str>, extra: &[&str]) -> Result<ListParams, ApiError> {
    Ok(ListParams::parse(parts_query.unwrap_or(""), extra)?)
}

/// The raw query of the request, for `list_params`.
pub struct Query(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Query(parts.uri.query().map(str::to_string)))
    }
}

/// Several path parameters (a tuple), with our 400 instead of axum's
/// plain-text rejection (a segment that is not UTF-8 once decoded).
pub struct PathParams<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError(Error::field("path", "invalid_value", e.body_text())))
    }
}

/// One path parameter, with our 404/400 instead of axum's rejection.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e| ApiError(Error::field("path", "invalid_value", e.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        replicas: u32,
        resources: Option<Res>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Res {
        memory: String,
    }
    impl Validate for Req {
        fn validate(&self) -> Result<(), Error> {
            if self.replicas > 100 {
                return Err(Error::field(
                    "replicas",
                    "out_of_range",
                    "must be between 0 and 100",
                ));
            }
            Ok(())
        }
    }

    fn field(body: &str) -> (String, String) {
        match parse_json::<Req>(body.as_bytes()) {
            Err(Error::Validation { errors, .. }) => {
                (errors[0].field.clone(), errors[0].code.clone())
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field(r#"{"replica": 3}"#),
            ("replica".into(), "unknown_field".into())
        );
        assert_eq!(
            field(r#"{"replicas": "three"}"#),
            ("replicas".into(), "invalid_type".into())
        );
        assert_eq!(
            field(r#"{"replicas": 1, "resources": {"memroy": "1g"}}"#),
            ("resources.memroy".into(), "unknown_field".into())
        );
        assert_eq!(
            field(r#"{"replicas": 101}"#),
            ("replicas".into(), "out_of_range".into())
        );
        assert_eq!(
            field(r#"{"replicas": 1,"#),
            ("body".into(), "malformed".into())
        );
        assert_eq!(field(r#"{}"#), ("replicas".into(), "required".into()));
        assert_eq!(field(""), ("body".into(), "required".into()));
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Words {
        #[serde(default)]
        strategy: Option<shellwego_core::model::DeployStrategy>,
        #[serde(default)]
        nested: Option<Nested>,
        #[serde(default)]
        mode: Option<Mode>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        #[serde(rename = "type")]
        kind: shellwego_core::model::SourceKind,
    }
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Slow,
    }
    impl Validate for Words {
        fn validate(&self) -> Result<(), Error> {
            Ok(())
        }
    }

    fn word_error(body: &str) -> (String, FieldError) {
        match parse_json::<Words>(body.as_bytes()) {
            Err(Error::Validation { detail, errors }) => (detail, errors[0].clone()),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_word_names_the_field_and_what_it_accepts() {
        let (detail, e) = word_error(r#"{"strategy": "yolo"}"#);
        assert_eq!(e.field, "strategy");
        assert_eq!(e.code, "invalid_value");
        assert_eq!(e.message, "must be one of: rolling, blue-green, canary");
        assert_eq!(e.value, Some(serde_json::json!("yolo")));
        assert_eq!(
            detail,
            "'strategy': must be one of: rolling, blue-green, canary"
        );
        let (_, e) = word_error(r#"{"nested": {"type": "svn \"x\""}}"#);
        assert_eq!(e.field, "nested.type");
        assert_eq!(e.message, "must be one of: docker, tarball, git");
        assert_eq!(e.value, Some(serde_json::json!("svn \"x\"")));
        // serde's own enums too.
        let (_, e) = word_error(r#"{"mode": "medium"}"#);
        assert_eq!(e.field, "mode");
        assert_eq!(e.code, "invalid_value");
        assert_eq!(e.message, "must be one of: fast, slow");
        assert_eq!(e.value, Some(serde_json::json!("medium")));
        // Not a string at all: still a type error.
        let (_, e) = word_error(r#"{"strategy": 3}"#);
        assert_eq!(
            (e.field.as_str(), e.code.as_str()),
            ("strategy", "invalid_type")
        );
    }
}
