//! The list-query language shared by every list endpoint (spec: Pagination,
//! Filtering & Sorting):
//!
//! ```text
//! limit=20&cursor=…&sort=status:asc,created_at:desc
//! filter[status]=running,paused          (OR)
//! filter[created_at][gte]=2024-01-01     (ranges: gt, gte, lt, lte)
//! filter[resources.memory]=512m          (nested fields)
//! filter[label][gpu]=true                (labels)
//! filter[q]=my-blog                      (text search over name-like fields)
//! ```
//!
//! This module parses the syntax and encodes cursors; which fields exist and
//! how they map to columns is declared per resource in the store.

#[cfg(feature = "crypto")]
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
#[cfg(feature = "crypto")]
use base64::Engine;
use serde::{Deserialize, Serialize};
#[cfg(feature = "crypto")]
use sha2::{Digest, Sha256};

use crate::error::{Error, FieldError, Result};

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;
/// Most `filter[...]` parameters one request may carry.
pub const MAX_FILTERS: usize = 20;
/// Most values all filters of one request may list together
/// (`filter[type]=a,b,c` is three).
pub const MAX_FILTER_VALUES: usize = 100;
/// Longest query string a list accepts, in bytes.
pub const MAX_QUERY_LEN: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dir {
    #[serde(rename = "asc")]
    Asc,
    #[serde(rename = "desc")]
    Desc,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Asc => "asc",
            Dir::Desc => "desc",
        }
    }
    pub fn reverse(self) -> Dir {
        match self {
            Dir::Asc => Dir::Desc,
            Dir::Desc => Dir::Asc,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub field: String,
    pub dir: Dir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// Equal to one of the (comma-separated) values.
    In,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::In,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Op::In => "eq",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
        }
    }
}

/// One `filter[...]` parameter, not yet checked against a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    /// `filter[field]=a,b` or `filter[field][op]=v`.
    Field {
        field: String,
        op: Op,
        values: Vec<String>,
    },
    /// `filter[label][key]=a,b`.
    Label { key: String, values: Vec<String> },
    /// `filter[q]=text`.
    Search(String),
}

impl Filter {
    /// The query-string name of this filter, for error messages.
    pub fn param_name(&self) -> String {
        match self {
            Filter::Field {
                field, op: Op::In, ..
            } => format!("filter[{field}]"),
            Filter::Field { field, op, .. } => format!("filter[{field}][{}]", op.as_str()),
            Filter::Label { key, .. } => format!("filter[label][{key}]"),
            Filter::Search(_) => "filter[q]".to_string(),
        }
    }
}

/// A parsed list query.
#[derive(Debug, Clone, PartialEq)]
pub struct ListParams {
    pub limit: u32,
    pub cursor: Option<String>,
    /// Empty means the resource's default sort.
    pub sort: Vec<SortKey>,
    /// Sorted, so that equal queries have equal fingerprints.
    pub filters: Vec<Filter>,
    /// Endpoint-specific parameters that the caller allowed (`include`, …).
    pub extra: Vec<(String, String)>,
}

impl Default for ListParams {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            cursor: None,
            sort: vec![],
            filters: vec![],
            extra: vec![],
        }
    }
}

impl ListParams {
    /// Parse a raw query string. `extra_allowed` names the endpoint-specific
    /// parameters accepted besides the list ones; anything else is a 400, so
    /// that a typo (`limt=5`) is not silently ignored.
    pub fn parse(query: &str, extra_allowed: &[&str]) -> Result<Self> {
        let mut p = ListParams::default();
        let mut errors = vec![];
        let (mut filters, mut values) = (0usize, 0usize);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k.starts_with("filter[") {
                filters += 1;
                values += v.split(',').filter(|x| !x.trim().is_empty()).count().max(1);
                if filters > MAX_FILTERS {
                    return Err(Error::field(
                        k.into_owned(),
                        "too_many",
                        format!("at most {MAX_FILTERS} filter parameters per request; list several values in one (filter[type]=a,b) instead of repeating it"),
                    ));
                }
                if values > MAX_FILTER_VALUES {
                    return Err(Error::field(
                        k.into_owned(),
                        "too_many",
                        format!("at most {MAX_FILTER_VALUES} filter values per request in all; narrow the filter"),
                    ));
                }
            }
            let (k, v) = (k.into_owned(), v.into_owned());
            if k.contains('\0') || v.contains('\0') {
                errors.push(FieldError::new(
                    k.replace('\0', ""),
                    "invalid_value",
                    "must not contain NUL bytes",
                ));
                continue;
            }
            match k.as_str() {
                "limit" => match v.trim().parse::<i64>() {
                    Ok(n) if (1..=MAX_LIMIT as i64).contains(&n) => p.limit = n as u32,
                    Ok(n) => errors.push(
                        FieldError::new(
                            "limit",
                            "out_of_range",
                            format!("must be between 1 and {MAX_LIMIT}"),
                        )
                        .with_value(n),
                    ),
                    Err(_) => errors.push(
                        FieldError::new(
                            "limit",
                            "invalid_type",
                            "must be an integer between 1 and 100",
                        )
                        .with_value(v),
                    ),
                },
                "cursor" => {
                    if !v.is_empty() {
                        p.cursor = Some(v)
                    }
                }
                "sort" => match parse_sort(&v) {
                    Ok(s) => p.sort = s,
                    Err(e) => errors.push(e),
                },
                _ if k.starts_with("filter[") => match parse_filter(&k, &v) {
                    Ok(f) => p.filters.push(f),
                    Err(e) => errors.push(e),
                },
                _ if extra_allowed.contains(&k.as_str()) => p.extra.push((k, v)),
                _ => {
                    let mut allowed = vec!["limit", "cursor", "sort", "filter[…]"];
                    allowed.extend_from_slice(extra_allowed);
                    errors.push(FieldError::new(
                        k,
                        "unknown_parameter",
                        format!("unknown query parameter; allowed: {}", allowed.join(", ")),
                    ))
                }
            }
        }
        if query.len() > MAX_QUERY_LEN {
            errors.push(FieldError::new(
                "query",
                "too_long",
                format!(
                    "the query string is {} bytes, more than the {MAX_QUERY_LEN} a list accepts; use fewer or shorter filters",
                    query.len()
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        p.filters.sort();
        p.filters.dedup();
        Ok(p)
    }

    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_sort(v: &str) -> std::result::Result<Vec<SortKey>, FieldError> {
    let mut out = vec![];
    for part in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (field, dir) = match part.split_once(':') {
            Some((f, "asc")) => (f, Dir::Asc),
            Some((f, "desc")) => (f, Dir::Desc),
            Some((_, d)) => {
                return Err(FieldError::new(
                    "sort",
                    "invalid_value",
                    format!("direction '{d}' must be 'asc' or 'desc' (as in sort=created_at:desc)"),
                )
                .with_value(v))
            }
            None => (part, Dir::Asc),
        };
        if out.iter().any(|k: &SortKey| k.field == field) {
            return Err(FieldError::new(
                "sort",
                "invalid_value",
                format!("field '{field}' is given twice"),
            )
            .with_value(v));
        }
        out.push(SortKey {
            field: field.to_string(),
            dir,
        });
    }
    if out.len() > 4 {
        return Err(
            FieldError::new("sort", "invalid_value", "at most 4 sort fields").with_value(v),
        );
    }
    Ok(out)
}

fn parse_filter(key: &str, value: &str) -> std::result::Result<Filter, FieldError> {
    let malformed = || {
        FieldError::new(
            key,
            "malformed",
            "filter parameters look like filter[field]=v, filter[field][gte]=v or filter[label][key]=v",
        )
    };
    // key = "filter[" a "]" ( "[" b "]" )?
    let rest = key.strip_prefix("filter[").ok_or_else(malformed)?;
    let (a, rest) = rest.split_once(']').ok_or_else(malformed)?;
    let b = if rest.is_empty() {
        None
    } else {
        let inner = rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .ok_or_else(malformed)?;
        if inner.contains(['[', ']']) {
            return Err(malformed());
        }
        Some(inner)
    };
    if a.is_empty() || b == Some("") {
        return Err(malformed());
    }
    let values = || -> Vec<String> {
        value
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let empty = || FieldError::new(key, "required", "the filter needs a value");
    match (a, b) {
        ("q", None) => {
            let q = value.trim();
            if q.is_empty() {
                return Err(empty());
            }
            Ok(Filter::Search(q.to_string()))
        }
        ("label" | "labels", Some(k)) => {
            let vs = values();
            if vs.is_empty() {
                return Err(empty());
            }
            Ok(Filter::Label {
                key: k.to_string(),
                values: vs,
            })
        }
        (field, op) => {
            let op = match op {
                None => Op::In,
                Some(o) => Op::parse(o).ok_or_else(|| {
                    FieldError::new(
                        key,
                        "invalid_value",
                        format!("unknown operator '{o}'; use eq, gt, gte, lt or lte"),
                    )
                })?,
            };
            let vs = if op == Op::In {
                values()
            } else {
                let v = value.trim();
                if v.is_empty() {
                    vec![]
                } else {
                    vec![v.to_string()]
                }
            };
            if vs.is_empty() {
                return Err(empty());
            }
            Ok(Filter::Field {
                field: field.to_string(),
                op,
                values: vs,
            })
        }
    }
}

/// Where a cursor points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CursorPos {
    /// The first page.
    #[serde(rename = "f")]
    First,
    /// The last page.
    #[serde(rename = "l")]
    Last,
    /// The page after the row with these keys.
    #[serde(rename = "a")]
    After,
    /// The page before the row with these keys.
    #[serde(rename = "b")]
    Before,
}

/// A decoded cursor: a position in one particular ordering of one
/// particular filtered list. `fingerprint` ties it to that query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "p")]
    pub pos: CursorPos,
    /// Values of the sort keys, then the id, of the row the cursor is next to.
    #[serde(rename = "k", default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<serde_json::Value>,
    #[serde(rename = "q")]
    pub fingerprint: String,
}

/// A short hash identifying a (resource, sort, filters) combination.
#[cfg(feature = "crypto")]
pub fn fingerprint(resource: &str, sort: &[SortKey], filters: &[Filter]) -> String {
    let mut h = Sha256::new();
    h.update(resource.as_bytes());
    for k in sort {
        h.update(format!("\x1fs:{}:{}", k.field, k.dir.as_str()).as_bytes());
    }
    for f in filters {
        h.update(format!("\x1ff:{f:?}").as_bytes());
    }
    let d = h.finalize();
    URL_SAFE_NO_PAD.encode(&d[..9])
}

/// Bytes of HMAC-SHA256 kept in a cursor: enough that forging one is
/// hopeless, short enough to keep URLs tidy.
#[cfg(feature = "crypto")]
const MAC_LEN: usize = 12;

#[cfg(feature = "crypto")]
fn mac(key: &[u8], payload: &[u8]) -> Option<[u8; MAC_LEN]> {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length, so this never returns None.
    let mut m = Hmac::<Sha256>::new_from_slice(key).ok()?;
    m.update(payload);
    let tag = m.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag[..MAC_LEN]);
    Some(out)
}

// Signing needs hmac/sha2: part of the `crypto` feature.
#[cfg(feature = "crypto")]
impl Cursor {
    /// Encode and sign with the installation's cursor key.
    pub fn encode(&self, key: &[u8]) -> String {
        let mut payload = serde_json::to_vec(self).unwrap_or_default();
        let tag = mac(key, &payload).unwrap_or_default();
        payload.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// Decode and check a cursor. Errors are 400s naming `cursor`.
    pub fn decode(s: &str, expected_fingerprint: &str, key: &[u8]) -> Result<Cursor> {
        let bad = |msg: &str| {
            Error::field(
                "cursor",
                "invalid_value",
                format!("{msg}; use a cursor from the pagination block of a previous response"),
            )
        };
        let raw = URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| bad("the cursor does not decode"))?;
        if raw.len() <= MAC_LEN {
            return Err(bad("the cursor does not decode"));
        }
        let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
        // Constant-time comparison of the tag.
        if !mac(key, payload)
            .is_some_and(|m| bool::from(subtle::ConstantTimeEq::ct_eq(&m[..], tag)))
        {
            return Err(bad("the cursor is damaged or was altered"));
        }
        let cur: Cursor =
            serde_json::from_slice(payload).map_err(|_| bad("the cursor does not decode"))?;
        if cur.fingerprint != expected_fingerprint {
            return Err(bad("the cursor was made for a different sort or filter"));
        }
        Ok(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_examples() {
        let p = ListParams::parse(
            "filter[status]=running,paused&filter[created_at][gte]=2024-01-01&filter[created_at][lte]=2024-12-31\
             &filter[resources.memory]=512m&filter[q]=my-blog-app&filter[label][gpu]=true&sort=status:asc,updated_at:desc&limit=50",
            &[],
        )
        .unwrap();
        assert_eq!(p.limit, 50);
        assert_eq!(p.sort.len(), 2);
        assert_eq!(
            p.sort[1],
            SortKey {
                field: "updated_at".into(),
                dir: Dir::Desc
            }
        );
        assert!(p.filters.contains(&Filter::Field {
            field: "status".into(),
            op: Op::In,
            values: vec!["running".into(), "paused".into()]
        }));
        assert!(p.filters.contains(&Filter::Field {
            field: "created_at".into(),
            op: Op::Gte,
            values: vec!["2024-01-01".into()]
        }));
        assert!(p.filters.contains(&Filter::Label {
            key: "gpu".into(),
            values: vec!["true".into()]
        }));
        assert!(p.filters.contains(&Filter::Search("my-blog-app".into())));
    }

    #[test]
    fn rejects_bad_limits_and_syntax() {
        for q in [
            "limit=0",
            "limit=101",
            "limit=x",
            "limt=5",
            "sort=name:up",
            "filter[a][between]=1",
            "filter[a",
            "filter[status]=",
        ] {
            let e = ListParams::parse(q, &[]).unwrap_err();
            assert!(matches!(e, Error::Validation { .. }), "{q}");
        }
        assert!(ListParams::parse("include=volumes", &["include"]).is_ok());
    }

    #[cfg(feature = "crypto")]
    #[test]
    fn cursors_round_trip_and_detect_tampering() {
        let fp = fingerprint("events", &[], &[]);
        let c = Cursor {
            pos: CursorPos::After,
            keys: vec![serde_json::json!(5), serde_json::json!("evt_x")],
            fingerprint: fp.clone(),
        };
        let key = b"installation secret";
        let s = c.encode(key);
        assert_eq!(Cursor::decode(&s, &fp, key).unwrap(), c);
        // Signed: another installation's key (or a forger) cannot make one.
        assert!(Cursor::decode(&s, &fp, b"another key").is_err());
        // Flip one character.
        let mut chars: Vec<char> = s.chars().collect();
        chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
        let t: String = chars.into_iter().collect();
        assert!(Cursor::decode(&t, &fp, key).is_err());
        assert!(Cursor::decode("not a cursor!", &fp, key).is_err());
        let other = fingerprint(
            "events",
            &[SortKey {
                field: "type".into(),
                dir: Dir::Asc,
            }],
            &[],
        );
        assert!(Cursor::decode(&s, &other, key).is_err());
    }
}
