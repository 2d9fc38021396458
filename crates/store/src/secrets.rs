//! Secrets (metadata and sealed versions) and the data keys that seal every
//! value kept encrypted at rest. Nothing here sees a plaintext: values come
//! in and go out sealed (see the server's `vault`).

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::time::{now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, Conn};

/// Whether `s` has the form of a value sealed under a data key
/// (`v1.dek_….<base64 of at least a nonce and a tag>`). Env values in
/// stored specs always do; a plaintext value of that exact form is not
/// something anyone writes.
pub fn looks_sealed(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("v1.dek_") else {
        return false;
    };
    let Some((id, b64)) = rest.split_once('.') else {
        return false;
    };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && b64.len() >= 56
        && b64.len() % 4 == 0
        && b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// Refuse to store a spec whose env holds a value that is not sealed (a
/// bug: every path seals before it writes).
pub(crate) fn check_env_sealed(spec: &shellwego_core::model::AppSpec) -> Result<(), Error> {
    match spec.env.iter().find(|(_, v)| !looks_sealed(v)) {
        None => Ok(()),
        Some((k, _)) => Err(Error::Internal(format!(
            "env value {k} was about to be stored unsealed"
        ))),
    }
}

/// A data key as stored: wrapped by a master key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DataKey {
    pub id: String,
    pub scope: String,
    pub wrapped: String,
}

/// The data key of `scope` (an organization id, or `system`).
pub async fn data_key_of(db: &mut Conn, scope: &str) -> Result<Option<DataKey>, Error> {
    sqlx::query_as("SELECT id, scope, wrapped FROM data_keys WHERE scope = $1")
        .bind(scope)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

pub async fn data_key(db: &mut Conn, id: &str) -> Result<Option<DataKey>, Error> {
    sqlx::query_as("SELECT id, scope, wrapped FROM data_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

/// Store a new data key for `scope` unless it has one already (a
/// concurrent replica may have made it first: then that one is kept).
pub async fn insert_data_key(db: &mut Conn, k: &DataKey) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO data_keys (id, scope, wrapped, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (scope) DO NOTHING",
    )
    .bind(&k.id)
    .bind(&k.scope)
    .bind(&k.wrapped)
    .bind(to_micros(now()))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Every data key (rotation of the master key re-wraps them all).
pub async fn all_data_keys(db: &mut Conn) -> Result<Vec<DataKey>, Error> {
    sqlx::query_as("SELECT id, scope, wrapped FROM data_keys ORDER BY id")
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}

pub async fn rewrap_data_key(db: &mut Conn, id: &str, wrapped: &str) -> Result<(), Error> {
    sqlx::query("UPDATE data_keys SET wrapped = $1 WHERE id = $2")
        .bind(wrapped)
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Take the installation's master-key row for the rest of the transaction:
/// a replica making a data key and a rotation of the master key are never
/// interleaved (a data key wrapped under a key that was just retired). The
/// row's value: the probe sealed by the current master key.
pub async fn lock_master_check(db: &mut Conn) -> Result<Option<String>, Error> {
    sqlx::query("UPDATE system_state SET updated_at = updated_at WHERE key = 'master_key_check'")
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query_scalar("SELECT value FROM system_state WHERE key = 'master_key_check'")
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

pub async fn set_master_check(db: &mut Conn, value: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE system_state SET value = $1, updated_at = $2 WHERE key = 'master_key_check'",
    )
    .bind(value)
    .bind(to_micros(now()))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A secret's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Secret {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// `organization` or `app`.
    pub scope: String,
    pub app_id: Option<String>,
    pub version: i64,
    pub expires_at: Option<Timestamp>,
    pub last_used: Option<Timestamp>,
    pub created_at: Timestamp,
    pub created_by: Option<String>,
}

/// One version of a secret, its value sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub version: i64,
    pub value_enc: String,
    pub created_at: Timestamp,
    pub created_by: Option<String>,
}

const COLUMNS: &str = "t.id, t.organization_id, t.name, t.scope, t.app_id, t.version, t.expires_at, t.last_used, t.created_at, t.created_by";

#[derive(sqlx::FromRow)]
struct SecretRow {
    id: String,
    organization_id: String,
    name: String,
    scope: String,
    app_id: Option<String>,
    version: i64,
    expires_at: Option<i64>,
    last_used: Option<i64>,
    created_at: i64,
    created_by: Option<String>,
}

impl TryFrom<SecretRow> for Secret {
    type Error = Error;
    fn try_from(r: SecretRow) -> Result<Secret, Error> {
        Ok(Secret {
            id: r.id,
            organization_id: r.organization_id,
            name: r.name,
            scope: r.scope,
            app_id: r.app_id,
            version: r.version,
            expires_at: crate::opt_time(r.expires_at),
            last_used: crate::opt_time(r.last_used),
            created_at: crate::time(r.created_at),
            created_by: r.created_by,
        })
    }
}

pub fn from_row(row: &AnyRow) -> Result<Secret, Error> {
    crate::decode::<SecretRow, _>(row)
}

pub static SECRETS: Resource = Resource {
    schema: &ListSchema {
        name: "secrets",
        fields: &[
            FieldSpec::new("name", Kind::Text),
            FieldSpec::new("scope", Kind::Text).one_of(&["organization", "app"]),
            FieldSpec::new("app_id", Kind::Text),
            FieldSpec::new("created_at", Kind::Time),
            FieldSpec::new("expires_at", Kind::Time),
            FieldSpec::new("last_used", Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("name", Dir::Asc)],
    },
    from: "(SELECT * FROM secrets WHERE deleted_at IS NULL) t",
    columns: COLUMNS,
    fields: &[
        FieldSql::new("name", "t.name"),
        FieldSql::new("scope", "t.scope"),
        FieldSql::new("app_id", "t.app_id"),
        FieldSql::new("created_at", "t.created_at"),
        FieldSql::new("expires_at", "COALESCE(t.expires_at, 9223372036854775807)"),
        FieldSql::new("last_used", "COALESCE(t.last_used, 0)"),
    ],
    search: &["t.name"],
    labels: None,
};

pub struct NewSecret<'a> {
    pub organization_id: &'a str,
    pub name: &'a str,
    pub scope: &'a str,
    pub app_id: Option<&'a str>,
    pub expires_at: Option<Timestamp>,
    pub created_by: Option<&'a str>,
}

/// The id a new secret will have (its values are sealed with it as
/// associated data before the row exists).
pub fn new_id() -> String {
    id::new_id("sec")
}

/// Insert a secret with its first version. A live secret of the same name
/// and scope: `Error::Conflict`.
pub async fn insert(
    db: &mut Conn,
    id: &str,
    s: NewSecret<'_>,
    value_enc: &str,
) -> Result<Secret, Error> {
    let at = to_micros(now());
    let r = sqlx::query(
        "INSERT INTO secrets (id, organization_id, name, scope, app_id, version, expires_at, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8)",
    )
    .bind(id)
    .bind(s.organization_id)
    .bind(s.name)
    .bind(s.scope)
    .bind(s.app_id)
    .bind(s.expires_at.map(to_micros))
    .bind(at)
    .bind(s.created_by)
    .execute(&mut *db)
    .await;
    if let Err(e) = r {
        let err = db_err(e);
        return Err(match err {
            Error::Conflict(_) => Error::Conflict(format!(
                "a secret named {} exists already in this scope; rotate it with POST /v1/secrets/{{id}}/versions",
                s.name
            )),
            e => e,
        });
    }
    insert_version(db, id, 1, value_enc, s.created_by).await?;
    get(db, id)
        .await?
        .ok_or_else(|| Error::Internal("secret vanished".into()))
}

async fn insert_version(
    db: &mut Conn,
    id: &str,
    version: i64,
    value_enc: &str,
    by: Option<&str>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO secret_versions (secret_id, version, value_enc, created_at, created_by) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(version)
    .bind(value_enc)
    .bind(to_micros(now()))
    .bind(by)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A live secret by id.
pub async fn get(db: &mut Conn, id: &str) -> Result<Option<Secret>, Error> {
    let row: Option<SecretRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM secrets t WHERE t.id = $1 AND t.deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    row.map(Secret::try_from).transpose()
}

/// A live secret by id, locked for the rest of the transaction (rotations
/// of one secret are serialized: versions are numbered without gaps).
pub async fn get_for_update(db: &mut Conn, id: &str) -> Result<Option<Secret>, Error> {
    sqlx::query("UPDATE secrets SET version = version WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    get(db, id).await
}

/// Add version `s.version + 1` (the caller holds the row, see
/// [`get_for_update`]); returns the new number.
pub async fn add_version(
    db: &mut Conn,
    s: &Secret,
    value_enc: &str,
    by: Option<&str>,
    expires_at: Option<Option<Timestamp>>,
) -> Result<i64, Error> {
    let v = s.version + 1;
    insert_version(db, &s.id, v, value_enc, by).await?;
    let expires = expires_at.unwrap_or(s.expires_at);
    sqlx::query(
        "UPDATE secrets SET version = $1, expires_at = $2, expiry_warned_at = NULL, expired_handled_at = NULL WHERE id = $3",
    )
    .bind(v)
    .bind(expires.map(to_micros))
    .bind(&s.id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(v)
}

/// Every version of a secret, newest first (metadata and sealed values).
pub async fn versions(db: &mut Conn, id: &str) -> Result<Vec<Version>, Error> {
    let rows: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT version, value_enc, created_at, created_by FROM secret_versions WHERE secret_id = $1 ORDER BY version DESC",
    )
    .bind(id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|(version, value_enc, at, by)| Version {
            version,
            value_enc,
            created_at: crate::time(at),
            created_by: by,
        })
        .collect())
}

/// Mark a secret deleted (its name is free again; its versions stay until
/// no instance runs a release that pins them, see [`purge_deleted`]).
pub async fn delete(db: &mut Conn, id: &str) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE secrets SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
        .bind(to_micros(now()))
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() > 0)
}

/// Mark every live secret of app `app_id` deleted (the app is going):
/// their (id, name).
pub async fn delete_of_app(db: &mut Conn, app_id: &str) -> Result<Vec<(String, String)>, Error> {
    let gone: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, name FROM secrets WHERE app_id = $1 AND deleted_at IS NULL ORDER BY name",
    )
    .bind(app_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    sqlx::query("UPDATE secrets SET deleted_at = $1 WHERE app_id = $2 AND deleted_at IS NULL")
        .bind(to_micros(now()))
        .bind(app_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(gone)
}

/// The live secrets an app of `org` receives: the organization's and the
/// app's own, not expired at `at`.
pub async fn for_app(
    db: &mut Conn,
    org: &str,
    app_id: &str,
    at: Timestamp,
) -> Result<Vec<Secret>, Error> {
    let rows: Vec<SecretRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM secrets t WHERE t.organization_id = $1 AND t.deleted_at IS NULL
           AND (t.scope = 'organization' OR t.app_id = $2)
           AND (t.expires_at IS NULL OR t.expires_at > $3)
         ORDER BY t.name"
    ))
    .bind(org)
    .bind(app_id)
    .bind(to_micros(at))
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    crate::convert(rows)
}

/// The sealed values of these (secret id, version) pairs, with the
/// secret's name and scope: what an instance's environment is made of.
/// Pairs whose secret or version no longer exists are left out.
pub async fn pinned_values(
    db: &mut Conn,
    pins: &[(String, i64)],
) -> Result<Vec<PinnedValue>, Error> {
    if pins.is_empty() {
        return Ok(vec![]);
    }
    // One query for all of them (a sync asks for every instance's).
    let marks: Vec<String> = (0..pins.len())
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let sql = format!(
        "SELECT sv.secret_id, sv.version, s.name, s.scope, sv.value_enc
         FROM secret_versions sv JOIN secrets s ON s.id = sv.secret_id
         WHERE (sv.secret_id, sv.version) IN ({})",
        marks.join(", ")
    );
    let mut q = sqlx::query_as::<_, (String, i64, String, String, String)>(&sql);
    for (id, v) in pins {
        q = q.bind(id).bind(*v);
    }
    let rows = q.fetch_all(&mut *db).await.map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|(secret_id, version, name, scope, value_enc)| PinnedValue {
            secret_id,
            version,
            name,
            scope,
            value_enc,
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedValue {
    pub secret_id: String,
    pub version: i64,
    pub name: String,
    pub scope: String,
    pub value_enc: String,
}

/// Note that these secrets were handed to an instance (at most once a
/// minute per secret, so a sync does not write every time).
pub async fn touch_used(db: &mut Conn, ids: &[String]) -> Result<(), Error> {
    let at = to_micros(now());
    for id in ids {
        // A read first: most syncs find it fresh and write nothing (no
        // write lock taken on SQLite).
        let stale: Option<String> = sqlx::query_scalar(
            "SELECT id FROM secrets WHERE id = $1 AND (last_used IS NULL OR last_used < $2)",
        )
        .bind(id)
        .bind(at - 60_000_000)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?;
        if stale.is_none() {
            continue;
        }
        sqlx::query("UPDATE secrets SET last_used = $1 WHERE id = $2 AND (last_used IS NULL OR last_used < $3)")
            .bind(at)
            .bind(id)
            .bind(at - 60_000_000)
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Live secrets expiring by `by` whose `mark` column (a time it was acted
/// on) is still empty, soonest first (at most 100).
async fn expiring_unmarked(db: &mut Conn, by: Timestamp, mark: &str) -> Result<Vec<Secret>, Error> {
    let rows: Vec<SecretRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM secrets t WHERE t.deleted_at IS NULL AND t.expires_at IS NOT NULL
           AND t.expires_at <= $1 AND t.{mark} IS NULL ORDER BY t.expires_at LIMIT 100"
    ))
    .bind(to_micros(by))
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    crate::convert(rows)
}

/// Live secrets expiring before `before` whose warning has not been
/// recorded yet.
pub async fn expiring_unwarned(db: &mut Conn, before: Timestamp) -> Result<Vec<Secret>, Error> {
    expiring_unmarked(db, before, "expiry_warned_at").await
}

pub async fn set_warned(db: &mut Conn, id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE secrets SET expiry_warned_at = $1 WHERE id = $2")
        .bind(to_micros(now()))
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Live secrets that have expired and whose expiry has not been acted on.
pub async fn expired_unhandled(db: &mut Conn, at: Timestamp) -> Result<Vec<Secret>, Error> {
    expiring_unmarked(db, at, "expired_handled_at").await
}

pub async fn set_expired_handled(db: &mut Conn, id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE secrets SET expired_handled_at = $1, expiry_warned_at = COALESCE(expiry_warned_at, $1) WHERE id = $2")
        .bind(to_micros(now()))
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Whether a deleted secret waits to be purged.
pub async fn any_deleted(db: &mut Conn) -> Result<bool, Error> {
    let id: Option<String> =
        sqlx::query_scalar("SELECT id FROM secrets WHERE deleted_at IS NOT NULL LIMIT 1")
            .fetch_optional(&mut *db)
            .await
            .map_err(db_err)?;
    Ok(id.is_some())
}

/// Remove deleted secrets not in `pinned` (the secrets pinned by a release
/// some instance runs).
pub async fn purge_deleted(db: &mut Conn, pinned: &[String]) -> Result<u64, Error> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM secrets WHERE deleted_at IS NOT NULL")
            .fetch_all(&mut *db)
            .await
            .map_err(db_err)?;
    let mut n = 0;
    for id in ids.iter().filter(|i| !pinned.contains(i)) {
        sqlx::query("DELETE FROM secret_versions WHERE secret_id = $1")
            .bind(id)
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
        n += sqlx::query("DELETE FROM secrets WHERE id = $1")
            .bind(id)
            .execute(&mut *db)
            .await
            .map_err(db_err)?
            .rows_affected();
    }
    Ok(n)
}

/// The secret versions a new release of `app_id` pins: the live ones of
/// the app and its organization, latest versions.
pub async fn current_pins(
    db: &mut Conn,
    org: &str,
    app_id: &str,
) -> Result<std::collections::BTreeMap<String, i64>, Error> {
    Ok(for_app(db, org, app_id, now())
        .await?
        .into_iter()
        .map(|s| (s.id, s.version))
        .collect())
}
