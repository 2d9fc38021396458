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
//! This module parses the syntax, checks a query against the [`ListSchema`]
//! of the resource listed (which fields exist, how their values are
//! written, which can be sorted) and encodes cursors: [`ListParams::resolve`]
//! turns a query into a typed [`ListQuery`], or into a 400 naming the
//! parameter that is wrong. How fields map to columns is the store's
//! business; it receives only resolved queries.

#[cfg(feature = "crypto")]
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
#[cfg(feature = "crypto")]
use base64::Engine;
use serde::{Deserialize, Serialize};
#[cfg(feature = "crypto")]
use sha2::{Digest, Sha256};

use crate::error::{Error, FieldError, Result};
#[cfg(feature = "crypto")]
use crate::time::{parse_filter_time, DateEdge};
#[cfg(feature = "crypto")]
use crate::units::parse_size;

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

/// How a field's values are written in a filter and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    /// Microseconds since the epoch; filter values are RFC 3339 or dates.
    Time,
    /// Bytes; filter values are sizes (`512m`).
    Size,
}

/// One field a list can be filtered or sorted by.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// The name in `filter[…]` and `sort=` (`status`, `resources.memory`).
    pub name: &'static str,
    pub kind: Kind,
    pub filter: bool,
    pub sort: bool,
    /// Allowed values (empty: any).
    pub values: &'static [&'static str],
    /// A field with several values per row, kept elsewhere (an app's tags):
    /// a row matches when any of its values does. Never sortable.
    pub multi: bool,
    /// A text field whose filter values may end with `*`: a prefix
    /// (`filter[type]=app.*`).
    pub prefix: bool,
}

impl FieldSpec {
    pub const fn new(name: &'static str, kind: Kind) -> FieldSpec {
        FieldSpec {
            name,
            kind,
            filter: true,
            sort: true,
            values: &[],
            multi: false,
            prefix: false,
        }
    }
    pub const fn prefix(mut self) -> FieldSpec {
        self.prefix = true;
        self
    }
    pub const fn multi(mut self) -> FieldSpec {
        self.multi = true;
        self.sort = false;
        self
    }
    pub const fn one_of(mut self, values: &'static [&'static str]) -> FieldSpec {
        self.values = values;
        self
    }
    pub const fn no_sort(mut self) -> FieldSpec {
        self.sort = false;
        self
    }
}

/// What a listable resource offers to the list query language, without a
/// word of SQL: its fields, whether it can be searched (`filter[q]`) and
/// has labels (`filter[label][key]`), its default order. Every resource
/// can also be sorted by `id`.
#[derive(Debug)]
pub struct ListSchema {
    /// Name used in messages and cursor fingerprints (`events`).
    pub name: &'static str,
    pub fields: &'static [FieldSpec],
    pub searchable: bool,
    pub labels: bool,
    pub default_sort: &'static [(&'static str, Dir)],
}

/// A filter or cursor value, typed after its field's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    /// Integers, sizes (bytes) and times (microseconds).
    Int(i64),
    Text(String),
}

impl Scalar {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Scalar::Int(i) => serde_json::Value::from(*i),
            Scalar::Text(s) => serde_json::Value::from(s.clone()),
        }
    }
}

/// What a sort key sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    /// The resource's id (unique: the last key of every order).
    Id,
    /// The schema's field at this index.
    Field(usize),
}

/// One key of a resolved order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKey {
    pub field: KeyField,
    pub kind: Kind,
    pub dir: Dir,
}

/// A range comparison (`filter[f][gte]=v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// A filter checked against the schema, with typed values. `field` is an
/// index into the schema's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The field is one of the values (a multi-valued field: any of its
    /// values is).
    In { field: usize, values: Vec<Scalar> },
    /// The (time) field falls in one of the inclusive ranges: a time
    /// equals a bare date when it falls on that day.
    Ranges {
        field: usize,
        ranges: Vec<(i64, i64)>,
    },
    Cmp {
        field: usize,
        op: Cmp,
        value: Scalar,
    },
    /// The (text) field is one of `exact` or starts with one of
    /// `prefixes` (values given as `app.*`).
    Text {
        field: usize,
        exact: Vec<String>,
        prefixes: Vec<String>,
    },
    /// The label `key` is one of the values.
    Label { key: String, values: Vec<String> },
    /// Every term is in one of the searched columns (case-insensitive).
    Search(Vec<String>),
}

/// Where the page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    First,
    Last,
    /// After the row with these key values (one per order key).
    After(Vec<Scalar>),
    /// Before the row with these key values.
    Before(Vec<Scalar>),
}

/// A list query resolved against a [`ListSchema`]: what the store runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// The schema's name.
    pub resource: &'static str,
    /// The order: the sort asked for (or the default), ending with the id.
    pub keys: Vec<OrderKey>,
    pub conditions: Vec<Condition>,
    pub position: Position,
    /// Rows per page (at least 1).
    pub limit: u32,
    /// Ties cursors to this resource, sort and filter.
    pub fingerprint: String,
}

impl ListQuery {
    /// Does the page run against the order (a cursor `Before`, or `Last`)?
    pub fn backwards(&self) -> bool {
        matches!(self.position, Position::Before(_) | Position::Last)
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

#[cfg(feature = "crypto")]
impl ListQuery {
    /// A signed cursor to the page at `pos`, next to the row whose order
    /// keys are `keys` (none for `First` and `Last`).
    pub fn cursor(&self, pos: CursorPos, keys: &[Scalar], cursor_key: &[u8]) -> String {
        Cursor {
            pos,
            keys: keys.iter().map(Scalar::to_json).collect(),
            fingerprint: self.fingerprint.clone(),
        }
        .encode(cursor_key)
    }
}

#[cfg(feature = "crypto")]
impl ListParams {
    /// Check this query against `schema` and type its values: a 400 naming
    /// the parameter (`sort`, `filter[…]`, `cursor`) when something does
    /// not fit. `cursor_key` checks the cursor's signature.
    pub fn resolve(&self, schema: &ListSchema, cursor_key: &[u8]) -> Result<ListQuery> {
        let sort = resolve_sort(schema, &self.sort)?;
        let conditions = resolve_filters(schema, &self.filters)?;
        let fp = fingerprint(schema.name, &sort, &self.filters);
        let keys = order_keys(schema, &sort);
        let position = match &self.cursor {
            None => Position::First,
            Some(c) => {
                let cur = Cursor::decode(c, &fp, cursor_key)?;
                match cur.pos {
                    CursorPos::First => Position::First,
                    CursorPos::Last => Position::Last,
                    CursorPos::After => Position::After(cursor_values(&cur, &keys)?),
                    CursorPos::Before => Position::Before(cursor_values(&cur, &keys)?),
                }
            }
        };
        Ok(ListQuery {
            resource: schema.name,
            keys,
            conditions,
            position,
            limit: self.limit.max(1),
            fingerprint: fp,
        })
    }
}

#[cfg(feature = "crypto")]
fn field_names(schema: &ListSchema, pred: impl Fn(&FieldSpec) -> bool) -> String {
    schema
        .fields
        .iter()
        .filter(|f| pred(f))
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sort asked for, or the default; every field sortable.
#[cfg(feature = "crypto")]
fn resolve_sort(schema: &ListSchema, sort: &[SortKey]) -> Result<Vec<SortKey>> {
    let sort: Vec<SortKey> = if sort.is_empty() {
        schema
            .default_sort
            .iter()
            .map(|(f, d)| SortKey {
                field: f.to_string(),
                dir: *d,
            })
            .collect()
    } else {
        sort.to_vec()
    };
    for k in &sort {
        if k.field != "id" && !schema.fields.iter().any(|f| f.sort && f.name == k.field) {
            return Err(Error::invalid(vec![FieldError::new(
                "sort",
                "invalid_value",
                format!(
                    "cannot sort {} by '{}'; sortable fields: {}",
                    schema.name,
                    k.field,
                    field_names(schema, |f| f.sort)
                ),
            )
            .with_value(k.field.clone())]));
        }
    }
    Ok(sort)
}

/// The order keys: the sort as given, ending with the id (unique, so the
/// order is total). Keys after an explicit `id` could never decide
/// anything and are dropped.
#[cfg(feature = "crypto")]
fn order_keys(schema: &ListSchema, sort: &[SortKey]) -> Vec<OrderKey> {
    let mut out = vec![];
    for k in sort {
        if k.field == "id" {
            out.push(OrderKey {
                field: KeyField::Id,
                kind: Kind::Text,
                dir: k.dir,
            });
            return out;
        }
        if let Some(i) = schema.fields.iter().position(|f| f.name == k.field) {
            out.push(OrderKey {
                field: KeyField::Field(i),
                kind: schema.fields[i].kind,
                dir: k.dir,
            });
        }
    }
    let dir = out.last().map(|k| k.dir).unwrap_or(Dir::Asc);
    out.push(OrderKey {
        field: KeyField::Id,
        kind: Kind::Text,
        dir,
    });
    out
}

#[cfg(feature = "crypto")]
fn parse_value(
    f: &FieldSpec,
    param: &str,
    v: &str,
    edge: DateEdge,
) -> std::result::Result<Scalar, FieldError> {
    let bad = |what: &str| {
        FieldError::new(param, "invalid_value", format!("'{v}' is not {what}")).with_value(v)
    };
    match f.kind {
        Kind::Text => {
            if !f.values.is_empty() && !f.values.contains(&v) {
                return Err(FieldError::new(
                    param,
                    "invalid_value",
                    format!("'{v}' is not one of: {}", f.values.join(", ")),
                )
                .with_value(v));
            }
            Ok(Scalar::Text(v.to_string()))
        }
        Kind::Int => v
            .parse::<i64>()
            .map(Scalar::Int)
            .map_err(|_| bad("an integer")),
        Kind::Time => parse_filter_time(v, edge)
            .map(Scalar::Int)
            .ok_or_else(|| bad("an RFC 3339 time or a YYYY-MM-DD date")),
        Kind::Size => parse_size(v)
            .and_then(|b| i64::try_from(b).ok())
            .map(Scalar::Int)
            .ok_or_else(|| bad("a size such as 512m or 10gb")),
    }
}

#[cfg(feature = "crypto")]
fn resolve_filters(schema: &ListSchema, filters: &[Filter]) -> Result<Vec<Condition>> {
    let mut out = vec![];
    let mut errors = vec![];
    for flt in filters {
        let param = flt.param_name();
        match flt {
            Filter::Search(q) => {
                if !schema.searchable {
                    errors.push(FieldError::new(
                        param,
                        "unknown_field",
                        format!("{} cannot be searched", schema.name),
                    ));
                    continue;
                }
                let terms: Vec<String> = q.split_whitespace().take(8).map(str::to_string).collect();
                out.push(Condition::Search(terms));
            }
            Filter::Label { key, values } => {
                if !schema.labels {
                    errors.push(FieldError::new(
                        param,
                        "unknown_field",
                        format!("{} have no labels", schema.name),
                    ));
                    continue;
                }
                out.push(Condition::Label {
                    key: key.clone(),
                    values: values.clone(),
                });
            }
            Filter::Field { field, op, values } => {
                let Some(i) = schema
                    .fields
                    .iter()
                    .position(|f| f.filter && f.name == field)
                else {
                    errors.push(
                        FieldError::new(
                            param,
                            "unknown_field",
                            format!(
                                "{} cannot be filtered by '{field}'; filterable fields: {}, q{}",
                                schema.name,
                                field_names(schema, |f| f.filter),
                                if schema.labels { ", label[key]" } else { "" }
                            ),
                        )
                        .with_value(field.clone()),
                    );
                    continue;
                };
                let f = &schema.fields[i];
                let cmp = match op {
                    Op::In => None,
                    Op::Gt => Some((Cmp::Gt, DateEdge::End)),
                    Op::Gte => Some((Cmp::Gte, DateEdge::Start)),
                    Op::Lt => Some((Cmp::Lt, DateEdge::Start)),
                    Op::Lte => Some((Cmp::Lte, DateEdge::End)),
                };
                match cmp {
                    Some(_) if f.kind == Kind::Text => errors.push(FieldError::new(
                        param,
                        "invalid_value",
                        format!("'{field}' is text: use filter[{field}]=a,b; ranges apply to numbers, sizes and times"),
                    )),
                    Some((op, edge)) => match values.first().map(|v| parse_value(f, &param, v, edge)) {
                        Some(Ok(value)) => out.push(Condition::Cmp { field: i, op, value }),
                        Some(Err(e)) => errors.push(e),
                        None => {}
                    },
                    None if f.kind == Kind::Time => {
                        // A time equals a bare date when it falls on that day.
                        let mut ranges = vec![];
                        for v in values {
                            match (parse_value(f, &param, v, DateEdge::Start), parse_value(f, &param, v, DateEdge::End)) {
                                (Ok(Scalar::Int(a)), Ok(Scalar::Int(b))) => ranges.push((a, b)),
                                (Err(e), _) | (_, Err(e)) => errors.push(e),
                                _ => {}
                            }
                        }
                        out.push(Condition::Ranges { field: i, ranges });
                    }
                    None if values.iter().any(|v| v.contains('*')) => {
                        let (mut exact, mut prefixes) = (vec![], vec![]);
                        for v in values {
                            let stem = v.strip_suffix('*').unwrap_or(v);
                            if !f.prefix || stem.contains('*') {
                                errors.push(
                                    FieldError::new(
                                        param.clone(),
                                        "invalid_value",
                                        if f.prefix {
                                            format!("'{v}': '*' may only end a value ({field}=app.* matches every {field} starting with app.)")
                                        } else {
                                            format!("'{field}' takes exact values, not patterns")
                                        },
                                    )
                                    .with_value(v.clone()),
                                );
                            } else if v.ends_with('*') {
                                prefixes.push(stem.to_string());
                            } else {
                                exact.push(v.clone());
                            }
                        }
                        out.push(Condition::Text { field: i, exact, prefixes });
                    }
                    None => {
                        let parsed: std::result::Result<Vec<Scalar>, FieldError> = values.iter().map(|v| parse_value(f, &param, v, DateEdge::Start)).collect();
                        match parsed {
                            Ok(values) => out.push(Condition::In { field: i, values }),
                            Err(e) => errors.push(e),
                        }
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    Ok(out)
}

/// The cursor's key values, typed after the order keys.
#[cfg(feature = "crypto")]
fn cursor_values(cur: &Cursor, keys: &[OrderKey]) -> Result<Vec<Scalar>> {
    let bad = || {
        Error::field(
            "cursor",
            "invalid_value",
            "the cursor does not match this list; start again without a cursor",
        )
    };
    if cur.keys.len() != keys.len() {
        return Err(bad());
    }
    keys.iter()
        .zip(&cur.keys)
        .map(|(k, v)| match (k.kind, v) {
            (Kind::Text, serde_json::Value::String(s)) => Ok(Scalar::Text(s.clone())),
            (Kind::Int | Kind::Time | Kind::Size, serde_json::Value::Number(n)) => {
                n.as_i64().map(Scalar::Int).ok_or_else(bad)
            }
            _ => Err(bad()),
        })
        .collect()
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

    #[cfg(feature = "crypto")]
    mod resolve {
        use super::super::*;
        use crate::time::{parse_filter_time, DateEdge};

        static THINGS: ListSchema = ListSchema {
            name: "things",
            fields: &[
                FieldSpec::new("name", Kind::Text),
                FieldSpec::new("status", Kind::Text).one_of(&["on", "off"]),
                FieldSpec::new("count", Kind::Int),
                FieldSpec::new("memory", Kind::Size),
                FieldSpec::new("created_at", Kind::Time),
                FieldSpec::new("owner", Kind::Text).no_sort(),
                FieldSpec::new("tags", Kind::Text).multi(),
            ],
            searchable: true,
            labels: false,
            default_sort: &[("created_at", Dir::Desc)],
        };
        const KEY: &[u8] = b"installation secret";

        fn resolve(q: &str) -> Result<ListQuery> {
            ListParams::parse(q, &[]).unwrap().resolve(&THINGS, KEY)
        }

        /// The field errors of a refused query: (field, code, message).
        fn refused(q: &str) -> Vec<(String, String, String)> {
            match resolve(q) {
                Err(Error::Validation { errors, .. }) => errors
                    .into_iter()
                    .map(|e| (e.field, e.code, e.message))
                    .collect(),
                other => panic!("{q}: expected a validation error, got {other:?}"),
            }
        }

        fn key(field: KeyField, kind: Kind, dir: Dir) -> OrderKey {
            OrderKey { field, kind, dir }
        }

        #[test]
        fn the_order_is_the_sort_asked_for_or_the_default_ending_with_the_id() {
            let q = resolve("").unwrap();
            assert_eq!(
                q.keys,
                [
                    key(KeyField::Field(4), Kind::Time, Dir::Desc),
                    key(KeyField::Id, Kind::Text, Dir::Desc)
                ]
            );
            assert_eq!(q.resource, "things");
            assert_eq!((q.limit, q.position.clone()), (20, Position::First));
            assert!(!q.backwards());
            let q = resolve("sort=name,count:desc").unwrap();
            assert_eq!(
                q.keys,
                [
                    key(KeyField::Field(0), Kind::Text, Dir::Asc),
                    key(KeyField::Field(2), Kind::Int, Dir::Desc),
                    key(KeyField::Id, Kind::Text, Dir::Desc)
                ]
            );
            // Nothing after the id could decide anything.
            let q = resolve("sort=name,id:desc,count").unwrap();
            assert_eq!(
                q.keys,
                [
                    key(KeyField::Field(0), Kind::Text, Dir::Asc),
                    key(KeyField::Id, Kind::Text, Dir::Desc)
                ]
            );
        }

        #[test]
        fn only_sortable_fields_sort() {
            for f in ["nope", "owner", "tags"] {
                let e = refused(&format!("sort={f}"));
                assert_eq!(
                    e,
                    [(
                        "sort".to_string(),
                        "invalid_value".to_string(),
                        format!("cannot sort things by '{f}'; sortable fields: name, status, count, memory, created_at")
                    )]
                );
            }
            match resolve("sort=nope") {
                Err(Error::Validation { errors, .. }) => {
                    assert_eq!(errors[0].value, Some(serde_json::json!("nope")))
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn filters_become_typed_conditions() {
            let q = resolve(
                "filter[status]=on,off&filter[count][gte]=5&filter[memory]=512m&filter[tags]=a&filter[q]=one two",
            )
            .unwrap();
            let day = |edge| parse_filter_time("2024-01-01", edge).unwrap();
            for c in [
                Condition::In {
                    field: 1,
                    values: vec![Scalar::Text("on".into()), Scalar::Text("off".into())],
                },
                Condition::Cmp {
                    field: 2,
                    op: Cmp::Gte,
                    value: Scalar::Int(5),
                },
                Condition::In {
                    field: 3,
                    values: vec![Scalar::Int(512 << 20)],
                },
                Condition::In {
                    field: 6,
                    values: vec![Scalar::Text("a".into())],
                },
                Condition::Search(vec!["one".into(), "two".into()]),
            ] {
                assert!(q.conditions.contains(&c), "{c:?} not in {:?}", q.conditions);
            }
            assert_eq!(q.conditions.len(), 5);
            // A bare date is that whole day; a bound is its start or end.
            let q = resolve("filter[created_at]=2024-01-01").unwrap();
            assert_eq!(
                q.conditions,
                [Condition::Ranges {
                    field: 4,
                    ranges: vec![(day(DateEdge::Start), day(DateEdge::End))]
                }]
            );
            let q = resolve("filter[created_at][gt]=2024-01-01").unwrap();
            assert_eq!(
                q.conditions,
                [Condition::Cmp {
                    field: 4,
                    op: Cmp::Gt,
                    value: Scalar::Int(day(DateEdge::End))
                }]
            );
            let q = resolve("filter[created_at][lt]=2024-01-01").unwrap();
            assert_eq!(
                q.conditions,
                [Condition::Cmp {
                    field: 4,
                    op: Cmp::Lt,
                    value: Scalar::Int(day(DateEdge::Start))
                }]
            );
            let terms = match &resolve("filter[q]=a b c d e f g h i j").unwrap().conditions[0] {
                Condition::Search(t) => t.len(),
                other => panic!("{other:?}"),
            };
            assert_eq!(terms, 8, "at most 8 search terms");
        }

        #[test]
        fn bad_filters_name_their_parameter_all_at_once() {
            let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
            assert_eq!(
                refused("filter[status]=bogus&filter[count]=many&filter[name][gt]=a&filter[nope]=1&filter[label][gpu]=1"),
                [
                    s("filter[count]", "invalid_value", "'many' is not an integer"),
                    s("filter[name][gt]", "invalid_value", "'name' is text: use filter[name]=a,b; ranges apply to numbers, sizes and times"),
                    s("filter[nope]", "unknown_field", "things cannot be filtered by 'nope'; filterable fields: name, status, count, memory, created_at, owner, tags, q"),
                    s("filter[status]", "invalid_value", "'bogus' is not one of: on, off"),
                    s("filter[label][gpu]", "unknown_field", "things have no labels"),
                ]
            );
            assert_eq!(
                refused("filter[memory]=lots&filter[created_at][gte]=yesterday"),
                [
                    s(
                        "filter[created_at][gte]",
                        "invalid_value",
                        "'yesterday' is not an RFC 3339 time or a YYYY-MM-DD date"
                    ),
                    s(
                        "filter[memory]",
                        "invalid_value",
                        "'lots' is not a size such as 512m or 10gb"
                    ),
                ]
            );
            // A bad sort is told before bad filters.
            assert_eq!(refused("sort=nope&filter[nope]=1")[0].0, "sort");
            static PLAIN: ListSchema = ListSchema {
                name: "plain",
                fields: &[FieldSpec::new("name", Kind::Text)],
                searchable: false,
                labels: false,
                default_sort: &[("name", Dir::Asc)],
            };
            match ListParams::parse("filter[q]=x", &[])
                .unwrap()
                .resolve(&PLAIN, KEY)
            {
                Err(Error::Validation { errors, .. }) => {
                    assert_eq!(
                        (errors[0].field.as_str(), errors[0].message.as_str()),
                        ("filter[q]", "plain cannot be searched")
                    )
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn cursors_carry_typed_keys_and_belong_to_their_query() {
            let q = resolve("sort=count&filter[status]=on").unwrap();
            let vals = [Scalar::Int(7), Scalar::Text("thg_1".into())];
            let after = q.cursor(CursorPos::After, &vals, KEY);
            let next = resolve(&format!("sort=count&filter[status]=on&cursor={after}")).unwrap();
            assert_eq!(next.position, Position::After(vals.to_vec()));
            assert_eq!(next.fingerprint, q.fingerprint);
            assert!(!next.backwards());
            let before = q.cursor(CursorPos::Before, &vals, KEY);
            let prev = resolve(&format!("sort=count&filter[status]=on&cursor={before}")).unwrap();
            assert_eq!(prev.position, Position::Before(vals.to_vec()));
            assert!(prev.backwards());
            let last = q.cursor(CursorPos::Last, &[], KEY);
            let end = resolve(&format!("sort=count&filter[status]=on&cursor={last}")).unwrap();
            assert_eq!(end.position, Position::Last);
            // The same fingerprint as before the schema moved to core:
            // cursors handed out earlier keep working.
            let p = ListParams::parse("sort=count&filter[status]=on", &[]).unwrap();
            let sort = vec![SortKey {
                field: "count".into(),
                dir: Dir::Asc,
            }];
            assert_eq!(q.fingerprint, fingerprint("things", &sort, &p.filters));

            // Another sort or filter: refused, naming the cursor.
            let e = refused(&format!("sort=name&filter[status]=on&cursor={after}"));
            assert_eq!(e[0].0, "cursor");
            assert!(e[0].2.contains("different sort or filter"), "{e:?}");
            // Keys that do not fit the order (a forged or stale cursor
            // signed with this key).
            for bad in [
                vec![Scalar::Text("x".into()), Scalar::Text("thg_1".into())],
                vec![Scalar::Int(7)],
            ] {
                let c = q.cursor(CursorPos::After, &bad, KEY);
                let e = refused(&format!("sort=count&filter[status]=on&cursor={c}"));
                assert_eq!(
                    e,
                    [(
                        "cursor".to_string(),
                        "invalid_value".to_string(),
                        "the cursor does not match this list; start again without a cursor"
                            .to_string()
                    )]
                );
            }
            // Another installation's cursor.
            let foreign = q.cursor(CursorPos::After, &vals, b"another key");
            assert_eq!(
                refused(&format!("sort=count&filter[status]=on&cursor={foreign}"))[0].0,
                "cursor"
            );
        }
    }
}
