//! Keyset (seek) pagination, filtering and sorting: one implementation for
//! every list endpoint and both backends.
//!
//! A resource declares its filterable and sortable fields as SQL
//! expressions. A page is `WHERE <scope> AND <filters> AND (<sort keys>, id)
//! beyond the cursor ORDER BY <sort keys>, id LIMIT n+1`, so a page deep in
//! the list costs the same as the first (the index is entered at the cursor)
//! and rows inserted meanwhile never shift rows between pages.

use serde_json::Value;
use shellwego_core::list::{fingerprint, Cursor, CursorPos, Dir, Filter, ListParams, Op, SortKey};
use shellwego_core::time::{parse_filter_time, DateEdge};
use shellwego_core::units::parse_size;
use shellwego_core::{Error, FieldError};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{db_err, Store};

/// How a field's values are written in a filter and stored in its column.
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
pub struct Field {
    /// The name in `filter[…]` and `sort=` (`status`, `resources.memory`).
    pub name: &'static str,
    /// SQL expression over the table alias `t`.
    pub expr: &'static str,
    pub kind: Kind,
    pub filter: bool,
    pub sort: bool,
    /// Allowed values (empty: any).
    pub values: &'static [&'static str],
    /// A multi-valued field kept in another table: `FROM … WHERE` text
    /// relating it to `t` (e.g. `app_tags x WHERE x.app_id = t.id`); a row
    /// matches when any of its values does.
    pub within: Option<&'static str>,
}

impl Field {
    pub const fn new(name: &'static str, expr: &'static str, kind: Kind) -> Field {
        Field {
            name,
            expr,
            kind,
            filter: true,
            sort: true,
            values: &[],
            within: None,
        }
    }
    pub const fn within(mut self, from_where: &'static str) -> Field {
        self.within = Some(from_where);
        self.sort = false;
        self
    }
    pub const fn one_of(mut self, values: &'static [&'static str]) -> Field {
        self.values = values;
        self
    }
    pub const fn no_sort(mut self) -> Field {
        self.sort = false;
        self
    }
}

/// A listable resource.
#[derive(Debug)]
pub struct Resource {
    /// Name used in messages and cursor fingerprints (`events`).
    pub name: &'static str,
    /// `FROM` clause; the main table has alias `t`.
    pub from: &'static str,
    /// Columns selected for the row mapper.
    pub columns: &'static str,
    pub fields: &'static [Field],
    /// Columns searched by `filter[q]`.
    pub search: &'static [&'static str],
    /// `resource_type` in the labels table, when the resource has labels.
    pub labels: Option<&'static str>,
    pub default_sort: &'static [(&'static str, Dir)],
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    Text(String),
}

impl Arg {
    fn to_json(&self) -> Value {
        match self {
            Arg::Int(i) => Value::from(*i),
            Arg::Text(s) => Value::from(s.clone()),
        }
    }
}

/// SQL text with its arguments, numbered `$1…` in order of appearance.
#[derive(Debug, Default)]
pub struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }
    /// Append a placeholder for `a`.
    pub fn arg(&mut self, a: Arg) -> &mut Self {
        self.args.push(a);
        let n = self.args.len();
        self.text.push('$');
        self.text.push_str(&n.to_string());
        self
    }
    pub fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::Int(i) => q.bind(*i),
                Arg::Text(s) => q.bind(s.as_str()),
            };
        }
        q
    }
}

/// Conditions every query of a list carries: who may see what. Each entry
/// is `expr IN (values)`; an empty value list matches nothing.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    conds: Vec<(&'static str, Vec<Arg>)>,
}

impl Scope {
    pub fn new() -> Scope {
        Scope::default()
    }
    pub fn is_in(mut self, expr: &'static str, values: impl IntoIterator<Item = String>) -> Scope {
        self.conds
            .push((expr, values.into_iter().map(Arg::Text).collect()));
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PageInfo {
    pub total: i64,
    pub limit: u32,
    pub has_more: bool,
    pub next_cursor: Option<String>,
    pub prev_cursor: Option<String>,
    pub first_cursor: Option<String>,
    pub last_cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub pagination: PageInfo,
}

/// A filter checked against the resource, with typed values.
#[derive(Debug)]
enum Cond {
    In(&'static str, Vec<Arg>),
    /// EXISTS (SELECT 1 FROM from_where AND expr IN values)
    Within(&'static str, &'static str, Vec<Arg>),
    /// (expr >= a AND expr <= b) OR … : a time filter with bare dates.
    Ranges(&'static str, Vec<(i64, i64)>),
    Cmp(&'static str, &'static str, Arg),
    Label(String, Vec<String>),
    Search(Vec<String>),
}

struct Key {
    expr: &'static str,
    kind: Kind,
    dir: Dir,
}

const ID_FIELD: Field = Field::new("id", "t.id", Kind::Text);

fn field_names(res: &Resource, pred: impl Fn(&Field) -> bool) -> String {
    res.fields
        .iter()
        .filter(|f| pred(f))
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn resolve_sort(res: &Resource, sort: &[SortKey]) -> Result<Vec<SortKey>, Error> {
    let sort: Vec<SortKey> = if sort.is_empty() {
        res.default_sort
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
        if k.field != "id" && !res.fields.iter().any(|f| f.sort && f.name == k.field) {
            return Err(Error::invalid(vec![FieldError::new(
                "sort",
                "invalid_value",
                format!(
                    "cannot sort {} by '{}'; sortable fields: {}",
                    res.name,
                    k.field,
                    field_names(res, |f| f.sort)
                ),
            )
            .with_value(k.field.clone())]));
        }
    }
    Ok(sort)
}

/// The ORDER BY keys: the sort as given, ending with the id (unique, so
/// the order is total). Keys after an explicit `id` could never decide
/// anything and are dropped.
fn keys(res: &Resource, sort: &[SortKey]) -> Vec<Key> {
    let mut out = vec![];
    for k in sort {
        if k.field == "id" {
            out.push(Key {
                expr: ID_FIELD.expr,
                kind: Kind::Text,
                dir: k.dir,
            });
            return out;
        }
        if let Some(f) = res.fields.iter().find(|f| f.name == k.field) {
            out.push(Key {
                expr: f.expr,
                kind: f.kind,
                dir: k.dir,
            });
        }
    }
    let dir = out.last().map(|k| k.dir).unwrap_or(Dir::Asc);
    out.push(Key {
        expr: ID_FIELD.expr,
        kind: Kind::Text,
        dir,
    });
    out
}

fn parse_value(f: &Field, param: &str, v: &str, edge: DateEdge) -> Result<Arg, FieldError> {
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
            Ok(Arg::Text(v.to_string()))
        }
        Kind::Int => v
            .parse::<i64>()
            .map(Arg::Int)
            .map_err(|_| bad("an integer")),
        Kind::Time => parse_filter_time(v, edge)
            .map(Arg::Int)
            .ok_or_else(|| bad("an RFC 3339 time or a YYYY-MM-DD date")),
        Kind::Size => parse_size(v)
            .and_then(|b| i64::try_from(b).ok())
            .map(Arg::Int)
            .ok_or_else(|| bad("a size such as 512m or 10gb")),
    }
}

fn resolve_filters(res: &Resource, filters: &[Filter]) -> Result<Vec<Cond>, Error> {
    let mut out = vec![];
    let mut errors = vec![];
    for flt in filters {
        let param = flt.param_name();
        match flt {
            Filter::Search(q) => {
                if res.search.is_empty() {
                    errors.push(FieldError::new(
                        param,
                        "unknown_field",
                        format!("{} cannot be searched", res.name),
                    ));
                    continue;
                }
                let terms: Vec<String> = q.split_whitespace().take(8).map(str::to_string).collect();
                out.push(Cond::Search(terms));
            }
            Filter::Label { key, values } => {
                if res.labels.is_none() {
                    errors.push(FieldError::new(
                        param,
                        "unknown_field",
                        format!("{} have no labels", res.name),
                    ));
                    continue;
                }
                out.push(Cond::Label(key.clone(), values.clone()));
            }
            Filter::Field { field, op, values } => {
                let Some(f) = res.fields.iter().find(|f| f.filter && f.name == field) else {
                    errors.push(
                        FieldError::new(
                            param,
                            "unknown_field",
                            format!(
                                "{} cannot be filtered by '{field}'; filterable fields: {}, q{}",
                                res.name,
                                field_names(res, |f| f.filter),
                                if res.labels.is_some() {
                                    ", label[key]"
                                } else {
                                    ""
                                }
                            ),
                        )
                        .with_value(field.clone()),
                    );
                    continue;
                };
                let cmp = match op {
                    Op::In => None,
                    Op::Gt => Some((">", DateEdge::End)),
                    Op::Gte => Some((">=", DateEdge::Start)),
                    Op::Lt => Some(("<", DateEdge::Start)),
                    Op::Lte => Some(("<=", DateEdge::End)),
                };
                match cmp {
                    Some(_) if f.kind == Kind::Text => errors.push(FieldError::new(
                        param,
                        "invalid_value",
                        format!("'{field}' is text: use filter[{field}]=a,b; ranges apply to numbers, sizes and times"),
                    )),
                    Some((sql_op, edge)) => match values.first().map(|v| parse_value(f, &param, v, edge)) {
                        Some(Ok(a)) => out.push(Cond::Cmp(f.expr, sql_op, a)),
                        Some(Err(e)) => errors.push(e),
                        None => {}
                    },
                    None if f.kind == Kind::Time => {
                        // A time equals a bare date when it falls on that day.
                        let mut ranges = vec![];
                        for v in values {
                            match (parse_value(f, &param, v, DateEdge::Start), parse_value(f, &param, v, DateEdge::End)) {
                                (Ok(Arg::Int(a)), Ok(Arg::Int(b))) => ranges.push((a, b)),
                                (Err(e), _) | (_, Err(e)) => errors.push(e),
                                _ => {}
                            }
                        }
                        out.push(Cond::Ranges(f.expr, ranges));
                    }
                    None => {
                        let parsed: Result<Vec<Arg>, FieldError> = values.iter().map(|v| parse_value(f, &param, v, DateEdge::Start)).collect();
                        match parsed {
                            Ok(args) => match f.within {
                                Some(w) => out.push(Cond::Within(w, f.expr, args)),
                                None => out.push(Cond::In(f.expr, args)),
                            },
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

fn like_pattern(term: &str) -> String {
    let mut s = String::with_capacity(term.len() + 2);
    s.push('%');
    for c in term.chars() {
        if matches!(c, '%' | '_' | '!') {
            s.push('!');
        }
        s.push(c);
    }
    s.push('%');
    s
}

fn push_where(sql: &mut Sql, res: &Resource, scope: &Scope, conds: &[Cond]) {
    sql.push(" WHERE 1=1");
    for (expr, values) in &scope.conds {
        in_list(sql, expr, values);
    }
    for c in conds {
        match c {
            Cond::In(expr, values) => in_list(sql, expr, values),
            Cond::Within(from_where, expr, values) => {
                sql.push(" AND EXISTS (SELECT 1 FROM ")
                    .push(from_where)
                    .push(" ");
                in_list(sql, expr, values);
                sql.push(")");
            }
            Cond::Ranges(expr, ranges) => {
                sql.push(" AND (1=0");
                for (a, b) in ranges {
                    sql.push(" OR (")
                        .push(expr)
                        .push(" >= ")
                        .arg(Arg::Int(*a))
                        .push(" AND ")
                        .push(expr)
                        .push(" <= ")
                        .arg(Arg::Int(*b))
                        .push(")");
                }
                sql.push(")");
            }
            Cond::Cmp(expr, op, a) => {
                sql.push(" AND ")
                    .push(expr)
                    .push(" ")
                    .push(op)
                    .push(" ")
                    .arg(a.clone());
            }
            Cond::Label(key, values) => {
                sql.push(" AND EXISTS (SELECT 1 FROM labels l WHERE l.resource_type = ")
                    .arg(Arg::Text(res.labels.unwrap_or_default().to_string()))
                    .push(" AND l.resource_id = t.id AND l.key = ")
                    .arg(Arg::Text(key.clone()));
                in_list(
                    sql,
                    "l.value",
                    &values.iter().cloned().map(Arg::Text).collect::<Vec<_>>(),
                );
                sql.push(")");
            }
            Cond::Search(terms) => {
                for term in terms {
                    sql.push(" AND (1=0");
                    // LOWER() on both sides, so that each backend folds case
                    // the same way for the text and the term (SQLite folds
                    // ASCII only, PostgreSQL all of Unicode).
                    for col in res.search {
                        sql.push(" OR LOWER(")
                            .push(col)
                            .push(") LIKE LOWER(")
                            .arg(Arg::Text(like_pattern(term)))
                            .push(") ESCAPE '!'");
                    }
                    sql.push(")");
                }
            }
        }
    }
}

fn in_list(sql: &mut Sql, expr: &str, values: &[Arg]) {
    if values.is_empty() {
        sql.push(" AND 1=0");
        return;
    }
    sql.push(" AND ").push(expr);
    if values.len() == 1 {
        sql.push(" = ").arg(values[0].clone());
        return;
    }
    sql.push(" IN (");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.arg(v.clone());
    }
    sql.push(")");
}

/// `AND` the condition "the row comes after `vals` in the order `keys`
/// (each key's direction reversed when `backwards`)".
fn push_seek(sql: &mut Sql, keys: &[Key], vals: &[Arg], backwards: bool) {
    let dirs: Vec<Dir> = keys
        .iter()
        .map(|k| if backwards { k.dir.reverse() } else { k.dir })
        .collect();
    let op = |d: Dir, strict: bool| match (d, strict) {
        (Dir::Asc, true) => " > ",
        (Dir::Asc, false) => " >= ",
        (Dir::Desc, true) => " < ",
        (Dir::Desc, false) => " <= ",
    };
    if dirs.iter().all(|d| *d == dirs[0]) {
        // Row-value comparison: both backends seek the index with it.
        sql.push(" AND (");
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push(k.expr);
        }
        sql.push(")").push(op(dirs[0], true)).push("(");
        for (i, v) in vals.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.arg(v.clone());
        }
        sql.push(")");
        return;
    }
    // Mixed directions: bound the leading key (so the index is entered at
    // the cursor), then expand lexicographically.
    sql.push(" AND ")
        .push(keys[0].expr)
        .push(op(dirs[0], false))
        .arg(vals[0].clone());
    sql.push(" AND (1=0");
    for i in 0..keys.len() {
        sql.push(" OR (1=1");
        for j in 0..i {
            sql.push(" AND ")
                .push(keys[j].expr)
                .push(" = ")
                .arg(vals[j].clone());
        }
        sql.push(" AND ")
            .push(keys[i].expr)
            .push(op(dirs[i], true))
            .arg(vals[i].clone());
        sql.push(")");
    }
    sql.push(")");
}

fn push_order(sql: &mut Sql, keys: &[Key], backwards: bool) {
    sql.push(" ORDER BY ");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        let d = if backwards { k.dir.reverse() } else { k.dir };
        sql.push(k.expr)
            .push(if d == Dir::Asc { " ASC" } else { " DESC" });
    }
}

fn row_keys(row: &AnyRow, keys: &[Key]) -> Result<Vec<Arg>, Error> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let col = format!("_k{i}");
            Ok(match k.kind {
                Kind::Text => Arg::Text(row.try_get::<String, _>(col.as_str()).map_err(db_err)?),
                Kind::Int | Kind::Time | Kind::Size => {
                    Arg::Int(row.try_get::<i64, _>(col.as_str()).map_err(db_err)?)
                }
            })
        })
        .collect()
}

fn cursor_args(cur: &Cursor, keys: &[Key]) -> Result<Vec<Arg>, Error> {
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
            (Kind::Text, Value::String(s)) => Ok(Arg::Text(s.clone())),
            (Kind::Int | Kind::Time | Kind::Size, Value::Number(n)) => {
                n.as_i64().map(Arg::Int).ok_or_else(bad)
            }
            _ => Err(bad()),
        })
        .collect()
}

impl Store {
    /// One page of `res` as seen by `scope`, per `params`.
    pub async fn list<T>(
        &self,
        res: &Resource,
        scope: &Scope,
        params: &ListParams,
        map: impl Fn(&AnyRow) -> Result<T, Error>,
    ) -> Result<Page<T>, Error> {
        let sort = resolve_sort(res, &params.sort)?;
        let conds = resolve_filters(res, &params.filters)?;
        let fp = fingerprint(res.name, &sort, &params.filters);
        let keys = keys(res, &sort);
        let cursor = match &params.cursor {
            Some(c) => Cursor::decode(c, &fp, self.cursor_key()?)?,
            None => Cursor {
                pos: CursorPos::First,
                keys: vec![],
                fingerprint: fp.clone(),
            },
        };
        let seek = match cursor.pos {
            CursorPos::After | CursorPos::Before => Some(cursor_args(&cursor, &keys)?),
            CursorPos::First | CursorPos::Last => None,
        };
        let backwards = matches!(cursor.pos, CursorPos::Before | CursorPos::Last);
        let limit = params.limit.max(1);

        // The page itself, one row more than asked to learn if there is more.
        let mut sql = Sql::default();
        sql.push("SELECT ").push(res.columns);
        for (i, k) in keys.iter().enumerate() {
            sql.push(", ").push(k.expr).push(&format!(" AS _k{i}"));
        }
        sql.push(" FROM ").push(res.from);
        push_where(&mut sql, res, scope, &conds);
        if let Some(vals) = &seek {
            push_seek(&mut sql, &keys, vals, backwards);
        }
        push_order(&mut sql, &keys, backwards);
        sql.push(&format!(" LIMIT {}", limit + 1));
        let mut rows = sql.query().fetch_all(self.pool()).await.map_err(db_err)?;
        let more_this_way = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        if backwards {
            rows.reverse();
        }

        let count = async {
            let mut sql = Sql::default();
            sql.push("SELECT COUNT(*) AS n FROM ").push(res.from);
            push_where(&mut sql, res, scope, &conds);
            let row = sql.query().fetch_one(self.pool()).await.map_err(db_err)?;
            row.try_get::<i64, _>("n").map_err(db_err)
        };

        let first_keys = rows.first().map(|r| row_keys(r, &keys)).transpose()?;
        let last_keys = rows.last().map(|r| row_keys(r, &keys)).transpose()?;
        // After a seek, is there anything on the side of the page we came
        // from? (Rows may have been deleted meanwhile, so ask.)
        let probe = match cursor.pos {
            CursorPos::After => first_keys.clone().map(|k| (k, true)),
            CursorPos::Before => last_keys.clone().map(|k| (k, false)),
            CursorPos::First | CursorPos::Last => None,
        };
        let beyond = async {
            let Some((vals, backwards)) = probe else {
                return Ok(None);
            };
            let mut sql = Sql::default();
            sql.push("SELECT t.id FROM ").push(res.from);
            push_where(&mut sql, res, scope, &conds);
            push_seek(&mut sql, &keys, &vals, backwards);
            // Ordered, so that the index is entered at the cursor instead of
            // scanning from wherever the table happens to start.
            push_order(&mut sql, &keys, backwards);
            sql.push(" LIMIT 1");
            let found = sql
                .query()
                .fetch_optional(self.pool())
                .await
                .map_err(db_err)?;
            Ok(Some(found.is_some()))
        };
        // Both are independent reads: run them side by side.
        let (total, beyond) = tokio::try_join!(count, beyond)?;
        let (has_next, has_prev) = match cursor.pos {
            CursorPos::First => (more_this_way, false),
            CursorPos::Last => (false, more_this_way),
            // An empty page reached by a cursor (its neighbours were deleted)
            // has every row on the side it came from: see the edge cursors.
            CursorPos::After => (more_this_way, beyond.unwrap_or(total > 0)),
            CursorPos::Before => (beyond.unwrap_or(total > 0), more_this_way),
        };

        let key = self.cursor_key()?;
        let make = |pos: CursorPos, vals: Option<&Vec<Arg>>| {
            Cursor {
                pos,
                keys: vals
                    .map(|v| v.iter().map(Arg::to_json).collect())
                    .unwrap_or_default(),
                fingerprint: fp.clone(),
            }
            .encode(key)
        };
        let pagination = PageInfo {
            total,
            limit,
            has_more: has_next,
            // Past an empty page the neighbour is the other end of the list.
            next_cursor: has_next.then(|| match &last_keys {
                Some(k) => make(CursorPos::After, Some(k)),
                None => make(CursorPos::First, None),
            }),
            prev_cursor: has_prev.then(|| match &first_keys {
                Some(k) => make(CursorPos::Before, Some(k)),
                None => make(CursorPos::Last, None),
            }),
            first_cursor: Some(make(CursorPos::First, None)),
            last_cursor: Some(make(CursorPos::Last, None)),
        };
        let items = rows.iter().map(map).collect::<Result<Vec<T>, Error>>()?;
        Ok(Page { items, pagination })
    }
}
