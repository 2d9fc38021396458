//! Keyset (seek) pagination, filtering and sorting: the SQL of every list
//! endpoint, on both backends.
//!
//! A list query arrives resolved ([`ListQuery`], checked against the
//! resource's [`ListSchema`] by `shellwego_core::list`); a [`Resource`]
//! gives each schema field its SQL. A page is `WHERE <scope> AND <filters>
//! AND (<sort keys>, id) beyond the cursor ORDER BY <sort keys>, id LIMIT
//! n+1`, so a page deep in the list costs the same as the first (the index
//! is entered at the cursor) and rows inserted meanwhile never shift rows
//! between pages.

use shellwego_core::list::{
    Cmp, Condition, CursorPos, Dir, KeyField, Kind, ListQuery, ListSchema, OrderKey, Position,
    Scalar,
};
use shellwego_core::Error;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::db_err;

/// The SQL of one schema field.
#[derive(Debug, Clone, Copy)]
pub struct FieldSql {
    /// The schema field's name (checked against the schema).
    pub name: &'static str,
    /// SQL expression over the table alias `t` (or over `within`'s alias).
    pub expr: &'static str,
    /// A multi-valued field kept in another table: `FROM … WHERE` text
    /// relating it to `t` (e.g. `app_tags x WHERE x.app_id = t.id`); a row
    /// matches when any of its values does.
    pub within: Option<&'static str>,
}

impl FieldSql {
    pub const fn new(name: &'static str, expr: &'static str) -> FieldSql {
        FieldSql {
            name,
            expr,
            within: None,
        }
    }
    pub const fn within(mut self, from_where: &'static str) -> FieldSql {
        self.within = Some(from_where);
        self
    }
}

/// A listable resource: its schema and the SQL behind it.
#[derive(Debug)]
pub struct Resource {
    pub schema: &'static ListSchema,
    /// `FROM` clause; the main table has alias `t`.
    pub from: &'static str,
    /// Columns selected for the row mapper.
    pub columns: &'static str,
    /// The SQL of each schema field, in the schema's order.
    pub fields: &'static [FieldSql],
    /// Columns searched by `filter[q]` (the schema is searchable).
    pub search: &'static [&'static str],
    /// `resource_type` in the labels table (the schema has labels).
    pub labels: Option<&'static str>,
}

/// The id of every resource.
const ID_EXPR: &str = "t.id";

fn mismatch(res: &Resource, what: &str) -> Error {
    Error::Internal(format!(
        "the list of {} does not match its SQL: {what}",
        res.schema.name
    ))
}

impl Resource {
    /// The SQL of the schema's field `i`.
    fn field(&self, i: usize) -> Result<&FieldSql, Error> {
        match (self.schema.fields.get(i), self.fields.get(i)) {
            (Some(spec), Some(sql))
                if spec.name == sql.name && spec.multi == sql.within.is_some() =>
            {
                Ok(sql)
            }
            _ => Err(mismatch(self, &format!("field #{i}"))),
        }
    }

    /// Does the SQL declare every field of the schema, in its order, and
    /// search columns and labels exactly when the schema offers them?
    pub fn check(&self) -> Result<(), Error> {
        if self.fields.len() != self.schema.fields.len() {
            return Err(mismatch(self, "the number of fields"));
        }
        for i in 0..self.fields.len() {
            self.field(i)?;
        }
        if self.schema.searchable == self.search.is_empty() {
            return Err(mismatch(self, "search columns"));
        }
        if self.schema.labels != self.labels.is_some() {
            return Err(mismatch(self, "labels"));
        }
        Ok(())
    }
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    Text(String),
}

impl From<&Scalar> for Arg {
    fn from(v: &Scalar) -> Arg {
        match v {
            Scalar::Int(i) => Arg::Int(*i),
            Scalar::Text(s) => Arg::Text(s.clone()),
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

/// An order key's SQL.
struct Key {
    expr: &'static str,
    kind: Kind,
    dir: Dir,
}

fn keys(res: &Resource, keys: &[OrderKey]) -> Result<Vec<Key>, Error> {
    keys.iter()
        .map(|k| {
            let expr = match k.field {
                KeyField::Id => ID_EXPR,
                KeyField::Field(i) => {
                    let f = res.field(i)?;
                    if f.within.is_some() {
                        return Err(mismatch(
                            res,
                            &format!("sorting by the multi-valued {}", f.name),
                        ));
                    }
                    f.expr
                }
            };
            Ok(Key {
                expr,
                kind: k.kind,
                dir: k.dir,
            })
        })
        .collect()
}

/// A condition's SQL, checked against the resource.
enum Cond<'a> {
    /// `expr IN values`, or `EXISTS (SELECT 1 FROM within AND expr IN values)`.
    In(&'a FieldSql, Vec<Arg>),
    /// (expr >= a AND expr <= b) OR … : a time filter with bare dates.
    Ranges(&'a FieldSql, &'a [(i64, i64)]),
    Cmp(&'a FieldSql, &'static str, Arg),
    Label(&'static str, &'a str, &'a [String]),
    Search(&'a [String]),
    /// expr IN (exact) OR expr LIKE 'prefix%' …
    Text(&'a FieldSql, &'a [String], &'a [String]),
}

fn conds<'a>(res: &'a Resource, q: &'a ListQuery) -> Result<Vec<Cond<'a>>, Error> {
    q.conditions
        .iter()
        .map(|c| {
            Ok(match c {
                Condition::In { field, values } => {
                    Cond::In(res.field(*field)?, values.iter().map(Arg::from).collect())
                }
                Condition::Ranges { field, ranges } => Cond::Ranges(res.field(*field)?, ranges),
                Condition::Cmp { field, op, value } => {
                    let op = match op {
                        Cmp::Gt => ">",
                        Cmp::Gte => ">=",
                        Cmp::Lt => "<",
                        Cmp::Lte => "<=",
                    };
                    Cond::Cmp(res.field(*field)?, op, Arg::from(value))
                }
                Condition::Text {
                    field,
                    exact,
                    prefixes,
                } => Cond::Text(res.field(*field)?, exact, prefixes),
                Condition::Label { key, values } => {
                    let Some(labels) = res.labels else {
                        return Err(mismatch(res, "a label filter, but no labels"));
                    };
                    Cond::Label(labels, key, values)
                }
                Condition::Search(terms) => {
                    if res.search.is_empty() {
                        return Err(mismatch(res, "a search, but no search columns"));
                    }
                    Cond::Search(terms)
                }
            })
        })
        .collect()
}

fn like_pattern(term: &str) -> String {
    format!("%{}", prefix_pattern(term))
}

/// `term%`, with LIKE's own characters escaped by `!`.
fn prefix_pattern(term: &str) -> String {
    let mut s = String::with_capacity(term.len() + 1);
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
            Cond::In(f, values) => within(sql, f, |sql| in_list(sql, f.expr, values)),
            Cond::Ranges(f, ranges) => within(sql, f, |sql| {
                sql.push(" AND (1=0");
                for (a, b) in *ranges {
                    sql.push(" OR (")
                        .push(f.expr)
                        .push(" >= ")
                        .arg(Arg::Int(*a))
                        .push(" AND ")
                        .push(f.expr)
                        .push(" <= ")
                        .arg(Arg::Int(*b))
                        .push(")");
                }
                sql.push(")");
            }),
            Cond::Cmp(f, op, a) => within(sql, f, |sql| {
                sql.push(" AND ")
                    .push(f.expr)
                    .push(" ")
                    .push(op)
                    .push(" ")
                    .arg(a.clone());
            }),
            Cond::Label(resource_type, key, values) => {
                sql.push(" AND EXISTS (SELECT 1 FROM labels l WHERE l.resource_type = ")
                    .arg(Arg::Text(resource_type.to_string()))
                    .push(" AND l.resource_id = t.id AND l.key = ")
                    .arg(Arg::Text(key.to_string()));
                in_list(
                    sql,
                    "l.value",
                    &values.iter().cloned().map(Arg::Text).collect::<Vec<_>>(),
                );
                sql.push(")");
            }
            Cond::Text(f, exact, prefixes) => within(sql, f, |sql| {
                sql.push(" AND (1=0");
                for e in *exact {
                    sql.push(" OR ")
                        .push(f.expr)
                        .push(" = ")
                        .arg(Arg::Text(e.clone()));
                }
                for p in *prefixes {
                    sql.push(" OR ")
                        .push(f.expr)
                        .push(" LIKE ")
                        .arg(Arg::Text(prefix_pattern(p)))
                        .push(" ESCAPE '!'");
                }
                sql.push(")");
            }),
            Cond::Search(terms) => {
                for term in *terms {
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

/// `AND` the condition `cond` pushes about `f`: as it is, or, for a field
/// kept in another table, as "any of the row's values meets it".
fn within(sql: &mut Sql, f: &FieldSql, cond: impl FnOnce(&mut Sql)) {
    match f.within {
        None => cond(sql),
        Some(from_where) => {
            sql.push(" AND EXISTS (SELECT 1 FROM ")
                .push(from_where)
                .push(" ");
            cond(sql);
            sql.push(")");
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

fn row_keys(row: &AnyRow, keys: &[Key]) -> Result<Vec<Scalar>, Error> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let col = format!("_k{i}");
            Ok(match k.kind {
                Kind::Text => Scalar::Text(row.try_get::<String, _>(col.as_str()).map_err(db_err)?),
                Kind::Int | Kind::Time | Kind::Size => {
                    Scalar::Int(row.try_get::<i64, _>(col.as_str()).map_err(db_err)?)
                }
            })
        })
        .collect()
}

/// One page of `res` as seen by `scope`, per the resolved query `q`;
/// `cursor_key` signs the cursors of the answer. Runs the page, then the
/// count and (after a cursor) a probe of the side the caller came from,
/// one after the other on `db`.
pub async fn list<T>(
    db: &mut AnyConnection,
    res: &Resource,
    scope: &Scope,
    q: &ListQuery,
    cursor_key: &[u8],
    map: impl Fn(&AnyRow) -> Result<T, Error>,
) -> Result<Page<T>, Error> {
    if q.resource != res.schema.name {
        return Err(mismatch(
            res,
            &format!("a query resolved for {}", q.resource),
        ));
    }
    let keys = keys(res, &q.keys)?;
    let conds = conds(res, q)?;
    let seek = match &q.position {
        Position::After(vals) | Position::Before(vals) => {
            if vals.len() != keys.len() {
                return Err(mismatch(res, "cursor values for another order"));
            }
            Some(vals.iter().map(Arg::from).collect::<Vec<_>>())
        }
        Position::First | Position::Last => None,
    };
    let backwards = q.backwards();
    let limit = q.limit.max(1);

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
    let mut rows = sql.query().fetch_all(&mut *db).await.map_err(db_err)?;
    let more_this_way = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    if backwards {
        rows.reverse();
    }

    let total = {
        let mut sql = Sql::default();
        sql.push("SELECT COUNT(*) AS n FROM ").push(res.from);
        push_where(&mut sql, res, scope, &conds);
        let row = sql.query().fetch_one(&mut *db).await.map_err(db_err)?;
        row.try_get::<i64, _>("n").map_err(db_err)?
    };

    let first_keys = rows.first().map(|r| row_keys(r, &keys)).transpose()?;
    let last_keys = rows.last().map(|r| row_keys(r, &keys)).transpose()?;
    // After a seek, is there anything on the side of the page we came
    // from? (Rows may have been deleted meanwhile, so ask.)
    let probe = match q.position {
        Position::After(_) => first_keys.as_ref().map(|k| (k, true)),
        Position::Before(_) => last_keys.as_ref().map(|k| (k, false)),
        Position::First | Position::Last => None,
    };
    let beyond = match probe {
        None => None,
        Some((vals, backwards)) => {
            let vals: Vec<Arg> = vals.iter().map(Arg::from).collect();
            let mut sql = Sql::default();
            sql.push("SELECT t.id FROM ").push(res.from);
            push_where(&mut sql, res, scope, &conds);
            push_seek(&mut sql, &keys, &vals, backwards);
            // Ordered, so that the index is entered at the cursor instead of
            // scanning from wherever the table happens to start.
            push_order(&mut sql, &keys, backwards);
            sql.push(" LIMIT 1");
            let found = sql.query().fetch_optional(&mut *db).await.map_err(db_err)?;
            Some(found.is_some())
        }
    };
    let (has_next, has_prev) = match q.position {
        Position::First => (more_this_way, false),
        Position::Last => (false, more_this_way),
        // An empty page reached by a cursor (its neighbours were deleted)
        // has every row on the side it came from: see the edge cursors.
        Position::After(_) => (more_this_way, beyond.unwrap_or(total > 0)),
        Position::Before(_) => (beyond.unwrap_or(total > 0), more_this_way),
    };

    let make = |pos: CursorPos, vals: &[Scalar]| q.cursor(pos, vals, cursor_key);
    let pagination = PageInfo {
        total,
        limit,
        has_more: has_next,
        // Past an empty page the neighbour is the other end of the list.
        next_cursor: has_next.then(|| match &last_keys {
            Some(k) => make(CursorPos::After, k),
            None => make(CursorPos::First, &[]),
        }),
        prev_cursor: has_prev.then(|| match &first_keys {
            Some(k) => make(CursorPos::Before, k),
            None => make(CursorPos::Last, &[]),
        }),
        first_cursor: Some(make(CursorPos::First, &[])),
        last_cursor: Some(make(CursorPos::Last, &[])),
    };
    let items = rows.iter().map(map).collect::<Result<Vec<T>, Error>>()?;
    Ok(Page { items, pagination })
}

#[cfg(test)]
mod tests {
    use shellwego_core::list::{FieldSpec, ListParams};

    use super::*;

    #[test]
    fn every_resource_declares_the_sql_of_its_schema() {
        for res in [
            &crate::apps::APPS,
            &crate::nodes::NODES,
            &crate::events::EVENTS,
            &crate::tokens::TOKENS,
            &crate::deployments::DEPLOYMENTS,
            &crate::invitations::INVITATIONS,
            &crate::service_accounts::SERVICE_ACCOUNTS,
            &crate::orgs::ORGANIZATIONS,
            &crate::orgs::MEMBERS,
            &crate::webhooks::WEBHOOKS,
            &crate::webhooks::DELIVERIES,
        ] {
            if let Err(e) = res.check() {
                panic!("{}: {e}", res.schema.name);
            }
        }
    }

    static SCHEMA: ListSchema = ListSchema {
        name: "things",
        fields: &[
            FieldSpec::new("name", Kind::Text),
            FieldSpec::new("tags", Kind::Text).multi(),
        ],
        searchable: false,
        labels: false,
        default_sort: &[("name", Dir::Asc)],
    };
    /// SQL that lost track of its schema: a field renamed, one not
    /// declared multi-valued.
    static DRIFTED: Resource = Resource {
        schema: &SCHEMA,
        from: "things t",
        columns: "t.id",
        fields: &[
            FieldSql::new("title", "t.title"),
            FieldSql::new("tags", "x.tag"),
        ],
        search: &[],
        labels: None,
    };

    #[test]
    fn sql_that_does_not_match_its_schema_is_an_internal_error_naming_no_field() {
        assert!(matches!(DRIFTED.check(), Err(Error::Internal(_))));
        let q = ListParams::parse("filter[tags]=a", &[])
            .unwrap()
            .resolve(&SCHEMA, b"k")
            .unwrap();
        assert!(matches!(conds(&DRIFTED, &q), Err(Error::Internal(_))));
        let q = ListParams::default().resolve(&SCHEMA, b"k").unwrap();
        assert!(matches!(keys(&DRIFTED, &q.keys), Err(Error::Internal(_))));
        // The right SQL for the same query.
        static RIGHT: Resource = Resource {
            schema: &SCHEMA,
            from: "things t",
            columns: "t.id",
            fields: &[
                FieldSql::new("name", "t.name"),
                FieldSql::new("tags", "x.tag").within("thing_tags x WHERE x.thing_id = t.id"),
            ],
            search: &[],
            labels: None,
        };
        RIGHT.check().unwrap();
        let q = ListParams::parse("filter[tags]=a,b&filter[name]=n", &[])
            .unwrap()
            .resolve(&SCHEMA, b"k")
            .unwrap();
        let mut sql = Sql::default();
        push_where(&mut sql, &RIGHT, &Scope::new(), &conds(&RIGHT, &q).unwrap());
        assert_eq!(
            sql.text,
            " WHERE 1=1 AND t.name = $1 AND EXISTS (SELECT 1 FROM thing_tags x WHERE x.thing_id = t.id  AND x.tag IN ($2, $3))"
        );
        assert_eq!(
            sql.args,
            [
                Arg::Text("n".into()),
                Arg::Text("a".into()),
                Arg::Text("b".into())
            ]
        );
    }
}
