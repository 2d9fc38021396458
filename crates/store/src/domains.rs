//! Custom domains: host names claimed by an organization (`domain_hosts`)
//! and the routes under them (`domains`, one per host and path prefix).

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::time::{now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, flag, Conn};

/// A domain route.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    pub id: String,
    pub organization_id: String,
    pub hostname: String,
    pub path: String,
    pub app_id: String,
    pub port: Option<u16>,
    pub strip_prefix: bool,
    pub status: String,
    pub tls_provider: String,
    pub tls_status: String,
    pub tls_auto_renew: bool,
    pub tls_issuer: Option<String>,
    pub tls_expires_at: Option<Timestamp>,
    pub tls_error: Option<String>,
    pub cdn_enabled: bool,
    pub cache_ttl_secs: Option<i64>,
    pub waf_enabled: bool,
    /// `Strict-Transport-Security` on its HTTPS answers.
    pub hsts: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

const COLUMNS: &str = "t.id, t.organization_id, t.hostname, t.path, t.app_id, t.port, t.strip_prefix, t.status, t.tls_provider, t.tls_status, t.tls_auto_renew, t.tls_issuer, t.tls_expires_at, t.tls_error, t.cdn_enabled, t.cache_ttl_secs, t.waf_enabled, t.hsts, t.created_at, t.updated_at";

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    organization_id: String,
    hostname: String,
    path: String,
    app_id: String,
    port: Option<i64>,
    strip_prefix: i64,
    status: String,
    tls_provider: String,
    tls_status: String,
    tls_auto_renew: i64,
    tls_issuer: Option<String>,
    tls_expires_at: Option<i64>,
    tls_error: Option<String>,
    cdn_enabled: i64,
    cache_ttl_secs: Option<i64>,
    waf_enabled: i64,
    hsts: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<Row> for Domain {
    type Error = Error;
    fn try_from(r: Row) -> Result<Domain, Error> {
        Ok(Domain {
            id: r.id,
            organization_id: r.organization_id,
            hostname: r.hostname,
            path: r.path,
            app_id: r.app_id,
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            strip_prefix: flag(r.strip_prefix),
            status: r.status,
            tls_provider: r.tls_provider,
            tls_status: r.tls_status,
            tls_auto_renew: flag(r.tls_auto_renew),
            tls_issuer: r.tls_issuer,
            tls_expires_at: crate::opt_time(r.tls_expires_at),
            tls_error: r.tls_error,
            cdn_enabled: flag(r.cdn_enabled),
            cache_ttl_secs: r.cache_ttl_secs,
            waf_enabled: flag(r.waf_enabled),
            hsts: flag(r.hsts),
            created_at: crate::time(r.created_at),
            updated_at: crate::time(r.updated_at),
        })
    }
}

pub fn from_row(row: &AnyRow) -> Result<Domain, Error> {
    crate::decode::<Row, _>(row)
}

pub static DOMAINS: Resource = Resource {
    schema: &ListSchema {
        name: "domains",
        fields: &[
            FieldSpec::new("hostname", Kind::Text),
            FieldSpec::new("app_id", Kind::Text),
            FieldSpec::new("status", Kind::Text).one_of(&["pending", "active", "error", "expired"]),
            FieldSpec::new("tls_status", Kind::Text).one_of(&["provisioning", "active", "failed"]),
            FieldSpec::new("path", Kind::Text),
            FieldSpec::new("created_at", Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("hostname", Dir::Asc)],
    },
    from: "domains t",
    columns: COLUMNS,
    fields: &[
        FieldSql::new("hostname", "t.hostname"),
        FieldSql::new("app_id", "t.app_id"),
        FieldSql::new("status", "t.status"),
        FieldSql::new("tls_status", "t.tls_status"),
        FieldSql::new("path", "t.path"),
        FieldSql::new("created_at", "t.created_at"),
    ],
    search: &["t.hostname"],
    labels: None,
};

/// A new route (its host already claimed, see [`claim_host`]).
pub struct NewDomain<'a> {
    pub organization_id: &'a str,
    pub hostname: &'a str,
    pub path: &'a str,
    pub app_id: &'a str,
    pub port: Option<u16>,
    pub strip_prefix: bool,
    pub tls_provider: &'a str,
    pub tls_auto_renew: bool,
    pub cdn_enabled: bool,
    pub cache_ttl_secs: Option<i64>,
    pub waf_enabled: bool,
    pub hsts: bool,
}

/// Serialize claims of host names until the transaction ends (see the
/// migration): call before [`claimed_by_others`] and [`claim_host`].
pub async fn lock_claims(db: &mut Conn) -> Result<(), Error> {
    sqlx::query("UPDATE system_state SET updated_at = updated_at WHERE key = 'domain_claims'")
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The claimed host names that conflict with `hostname` and belong to
/// another organization than `org`: the same name; for a wildcard
/// `*.x`, the names one label under `x`; for a name `a.x`, the wildcard
/// `*.x`.
pub async fn claimed_by_others(
    db: &mut Conn,
    org: &str,
    hostname: &str,
) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = sqlx::query_scalar(
        "SELECT hostname FROM domain_hosts WHERE organization_id <> $1 AND hostname = $2",
    )
    .bind(org)
    .bind(hostname)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    if let Some(parent) = hostname.strip_prefix("*.") {
        let under: Vec<String> = sqlx::query_scalar(
            "SELECT hostname FROM domain_hosts WHERE organization_id <> $1 AND hostname LIKE $2",
        )
        .bind(org)
        .bind(format!("%.{}", parent.replace('%', "").replace('_', "\\_")))
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)?;
        // Only one label more (a wildcard covers one label).
        out.extend(under.into_iter().filter(|h| {
            h.strip_suffix(parent)
                .and_then(|l| l.strip_suffix('.'))
                .is_some_and(|l| !l.is_empty() && !l.contains('.'))
        }));
    } else if let Some((_, parent)) = hostname.split_once('.') {
        let wild: Vec<String> = sqlx::query_scalar(
            "SELECT hostname FROM domain_hosts WHERE organization_id <> $1 AND hostname = $2",
        )
        .bind(org)
        .bind(format!("*.{parent}"))
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)?;
        out.extend(wild);
    }
    Ok(out)
}

/// Claim `hostname` for `org` (kept when it has it already).
pub async fn claim_host(db: &mut Conn, org: &str, hostname: &str) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO domain_hosts (hostname, organization_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (hostname) DO NOTHING",
    )
    .bind(hostname)
    .bind(org)
    .bind(to_micros(now()))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Give `hostname` up when no route of it is left.
pub async fn release_host_if_unused(db: &mut Conn, hostname: &str) -> Result<(), Error> {
    sqlx::query(
        "DELETE FROM domain_hosts WHERE hostname = $1 AND NOT EXISTS (SELECT 1 FROM domains WHERE hostname = $1)",
    )
    .bind(hostname)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Insert a route; the same host and path again: `Error::Conflict`.
pub async fn insert(db: &mut Conn, d: NewDomain<'_>) -> Result<Domain, Error> {
    let id = id::new_id("dom");
    let at = to_micros(now());
    let r = sqlx::query(
        "INSERT INTO domains (id, organization_id, hostname, path, app_id, port, strip_prefix, status, tls_provider, tls_status, tls_auto_renew, cdn_enabled, cache_ttl_secs, waf_enabled, created_at, updated_at, hsts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, 'provisioning', $9, $10, $11, $12, $13, $13, $14)",
    )
    .bind(&id)
    .bind(d.organization_id)
    .bind(d.hostname)
    .bind(d.path)
    .bind(d.app_id)
    .bind(d.port.map(i64::from))
    .bind(i64::from(d.strip_prefix))
    .bind(d.tls_provider)
    .bind(i64::from(d.tls_auto_renew))
    .bind(i64::from(d.cdn_enabled))
    .bind(d.cache_ttl_secs)
    .bind(i64::from(d.waf_enabled))
    .bind(at)
    .bind(i64::from(d.hsts))
    .execute(&mut *db)
    .await;
    if let Err(e) = r {
        return Err(match db_err(e) {
            Error::Conflict(_) => Error::Conflict(format!(
                "{}{} is routed already; change that domain (PATCH /v1/domains/{{id}}) or choose another path",
                d.hostname, d.path
            )),
            e => e,
        });
    }
    get(db, &id)
        .await?
        .ok_or_else(|| Error::Internal("domain vanished".into()))
}

pub async fn get(db: &mut Conn, id: &str) -> Result<Option<Domain>, Error> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM domains t WHERE t.id = $1"))
            .bind(id)
            .fetch_optional(&mut *db)
            .await
            .map_err(db_err)?;
    row.map(Domain::try_from).transpose()
}

/// The routes of these apps, by host and path.
pub async fn of_apps(db: &mut Conn, app_ids: &[String]) -> Result<Vec<Domain>, Error> {
    let mut out = vec![];
    for app in app_ids {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM domains t WHERE t.app_id = $1 ORDER BY t.hostname, t.path"
        ))
        .bind(app)
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)?;
        out.extend(crate::convert::<Row, Domain>(rows)?);
    }
    Ok(out)
}

/// What a route may change.
pub struct Routing<'a> {
    pub app_id: &'a str,
    pub path: &'a str,
    pub port: Option<u16>,
    pub strip_prefix: bool,
    pub tls_auto_renew: bool,
    pub cdn_enabled: bool,
    pub cache_ttl_secs: Option<i64>,
    pub waf_enabled: bool,
    pub hsts: bool,
}

pub async fn update(db: &mut Conn, id: &str, r: Routing<'_>) -> Result<(), Error> {
    let res = sqlx::query(
        "UPDATE domains SET app_id = $1, path = $2, port = $3, strip_prefix = $4, tls_auto_renew = $5, cdn_enabled = $6, cache_ttl_secs = $7, waf_enabled = $8, updated_at = $9, hsts = $11 WHERE id = $10",
    )
    .bind(r.app_id)
    .bind(r.path)
    .bind(r.port.map(i64::from))
    .bind(i64::from(r.strip_prefix))
    .bind(i64::from(r.tls_auto_renew))
    .bind(i64::from(r.cdn_enabled))
    .bind(r.cache_ttl_secs)
    .bind(i64::from(r.waf_enabled))
    .bind(to_micros(now()))
    .bind(id)
    .bind(i64::from(r.hsts))
    .execute(&mut *db)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) => Err(match db_err(e) {
            Error::Conflict(_) => Error::Conflict(format!(
                "that host already routes the path {}; choose another path",
                r.path
            )),
            e => e,
        }),
    }
}

/// Delete a route (its host is given up with its last route).
pub async fn delete(db: &mut Conn, d: &Domain) -> Result<(), Error> {
    sqlx::query("DELETE FROM domains WHERE id = $1")
        .bind(&d.id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    release_host_if_unused(db, &d.hostname).await
}

/// Delete the routes of an app (it is being deleted); returns them.
pub async fn delete_of_app(db: &mut Conn, app_id: &str) -> Result<Vec<Domain>, Error> {
    let gone = of_apps(db, &[app_id.to_string()]).await?;
    for d in &gone {
        delete(db, d).await?;
    }
    Ok(gone)
}

/// A route as the ingress needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RouteRow {
    pub hostname: String,
    pub path: String,
    pub strip_prefix: i64,
    pub port: Option<i64>,
    pub hsts: i64,
    pub app_id: String,
    /// The app's name (for logs and pages).
    pub app: String,
}

/// Every route to an app that is served publicly, for the ingress.
pub async fn routes(db: &mut Conn) -> Result<Vec<RouteRow>, Error> {
    sqlx::query_as(
        "SELECT d.hostname, d.path, d.strip_prefix, d.port, d.hsts, d.app_id, a.name AS app FROM domains d JOIN apps a ON a.id = d.app_id
         WHERE a.internal_only = 0 ORDER BY d.hostname, d.path",
    )
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// A host's certificate as kept (the key sealed).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HostCert {
    pub hostname: String,
    pub organization_id: String,
    pub cert_pem: String,
    pub key_enc: String,
    pub cert_updated_at: i64,
}

/// What is kept of a certificate set on a host.
pub struct NewCert<'a> {
    pub cert_pem: &'a str,
    pub key_enc: &'a str,
    pub source: &'a str,
    pub issuer: &'a str,
    pub not_after: Timestamp,
    pub serial: &'a str,
}

/// Set `hostname`'s certificate, and what its routes show of it.
pub async fn set_host_cert(db: &mut Conn, hostname: &str, c: NewCert<'_>) -> Result<(), Error> {
    let at = to_micros(now());
    sqlx::query(
        "UPDATE domain_hosts SET cert_pem = $1, key_enc = $2, cert_source = $3, cert_issuer = $4, cert_not_after = $5, cert_serial = $6, cert_updated_at = $7 WHERE hostname = $8",
    )
    .bind(c.cert_pem)
    .bind(c.key_enc)
    .bind(c.source)
    .bind(c.issuer)
    .bind(to_micros(c.not_after))
    .bind(c.serial)
    .bind(at)
    .bind(hostname)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    let provider = if c.source == "custom" {
        "custom"
    } else {
        "letsencrypt"
    };
    sqlx::query(
        "UPDATE domains SET tls_status = 'active', tls_provider = $1, tls_issuer = $2, tls_expires_at = $3, tls_error = NULL, updated_at = $4 WHERE hostname = $5",
    )
    .bind(provider)
    .bind(c.issuer)
    .bind(to_micros(c.not_after))
    .bind(at)
    .bind(hostname)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Every host's certificate (for the ingress).
pub async fn host_certs(db: &mut Conn) -> Result<Vec<HostCert>, Error> {
    sqlx::query_as(
        "SELECT hostname, organization_id, cert_pem, key_enc, cert_updated_at FROM domain_hosts
         WHERE cert_pem IS NOT NULL AND key_enc IS NOT NULL ORDER BY hostname",
    )
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}
