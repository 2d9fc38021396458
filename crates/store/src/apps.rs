//! Apps, their instances, deployments and uploads: the rows. The rules
//! (what to run where, what an app's status is) live in the server's
//! services; these are the queries.

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::model::{AppSpec, AppStatus, DesiredState, DriverKind, InstanceStatus};
use shellwego_core::time::{now, to_micros};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, Conn};

/// A route to one healthy instance, for the routers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The app's name (the host it is reached by).
    pub app: String,
    /// The app's id (what its custom domains name).
    pub app_id: String,
    pub instance_id: String,
    pub ip: String,
    pub port: i64,
    /// Its weight among the app's routes.
    pub weight: u32,
}

/// An app row; `spec` is the stored document of the rest of its spec.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct App {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub status: AppStatus,
    pub status_reason: Option<String>,
    pub desired_state: DesiredState,
    pub replicas: i64,
    pub memory: i64,
    pub cpu_millis: i64,
    pub disk: i64,
    pub spec: AppSpec,
    pub image_pinned: Option<String>,
    pub deployment_id: Option<String>,
    pub version: i64,
    /// Where traffic goes: JSON `{"<version>": weight}`; none: every
    /// healthy instance alike.
    pub traffic: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// From `app_tags`, loaded beside the row.
    pub tags: Vec<String>,
}

pub static APPS: Resource = Resource {
    schema: &ListSchema {
        name: "apps",
        fields: &[
            FieldSpec::new("name", Kind::Text),
            FieldSpec::new("status", Kind::Text).one_of(AppStatus::NAMES),
            FieldSpec::new("organization_id", Kind::Text).no_sort(),
            FieldSpec::new("replicas.desired", Kind::Int),
            FieldSpec::new("resources.memory", Kind::Size),
            FieldSpec::new("resources.cpu_millis", Kind::Int),
            FieldSpec::new("created_at", Kind::Time),
            FieldSpec::new("updated_at", Kind::Time),
            FieldSpec::new("tags", Kind::Text).multi(),
            FieldSpec::new("node_id", Kind::Text).multi(),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", Dir::Desc)],
    },
    from: "apps t",
    columns: "t.id, t.organization_id, t.name, t.status, t.status_reason, t.desired_state, t.replicas, t.memory, t.cpu_millis, t.disk, t.spec, t.image_pinned, t.deployment_id, t.version, t.traffic, t.created_by, t.created_at, t.updated_at",
    fields: &[
        FieldSql::new("name", "t.name"),
        FieldSql::new("status", "t.status"),
        FieldSql::new("organization_id", "t.organization_id"),
        FieldSql::new("replicas.desired", "t.replicas"),
        FieldSql::new("resources.memory", "t.memory"),
        FieldSql::new("resources.cpu_millis", "t.cpu_millis"),
        FieldSql::new("created_at", "t.created_at"),
        FieldSql::new("updated_at", "t.updated_at"),
        FieldSql::new("tags", "x.tag").within("app_tags x WHERE x.app_id = t.id"),
        FieldSql::new("node_id", "x.node_id")
            .within("instances x WHERE x.app_id = t.id AND x.desired = 'running'"),
    ],
    search: &["t.name"],
    labels: None,
};

/// An `apps` row as stored ([`APPS`]' columns): `spec` is a document.
#[derive(sqlx::FromRow)]
struct AppRow {
    id: String,
    organization_id: String,
    name: String,
    status: AppStatus,
    status_reason: Option<String>,
    desired_state: DesiredState,
    replicas: i64,
    memory: i64,
    cpu_millis: i64,
    disk: i64,
    spec: String,
    image_pinned: Option<String>,
    deployment_id: Option<String>,
    version: i64,
    traffic: Option<String>,
    created_by: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<AppRow> for App {
    type Error = Error;
    fn try_from(r: AppRow) -> Result<App, Error> {
        Ok(App {
            spec: crate::doc("apps", &r.id, "spec", &r.spec)?,
            id: r.id,
            organization_id: r.organization_id,
            name: r.name,
            status: r.status,
            status_reason: r.status_reason,
            desired_state: r.desired_state,
            replicas: r.replicas,
            memory: r.memory,
            cpu_millis: r.cpu_millis,
            disk: r.disk,
            image_pinned: r.image_pinned,
            deployment_id: r.deployment_id,
            version: r.version,
            traffic: r.traffic,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            tags: vec![],
        })
    }
}

/// An app from a row of [`APPS`]' columns (without its tags).
pub fn from_row(row: &AnyRow) -> Result<App, Error> {
    crate::decode::<AppRow, _>(row)
}

fn lock_clause(db: &Conn) -> &'static str {
    if db.backend_name() == "PostgreSQL" {
        " FOR UPDATE"
    } else {
        ""
    }
}

/// Insert an app with its tags; `a.id` is assigned when empty.
pub async fn insert(db: &mut Conn, mut a: App) -> Result<App, Error> {
    crate::secrets::check_env_sealed(&a.spec)?;
    if a.id.is_empty() {
        a.id = id::new_id("app");
    }
    let t = to_micros(now());
    a.created_at = t;
    a.updated_at = t;
    sqlx::query(
        "INSERT INTO apps (id, organization_id, name, status, status_reason, desired_state, replicas, memory, cpu_millis, disk, spec, image_pinned, deployment_id, version, created_by, created_at, updated_at, internal_only)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16, $17)",
    )
    .bind(&a.id)
    .bind(&a.organization_id)
    .bind(&a.name)
    .bind(a.status)
    .bind(&a.status_reason)
    .bind(a.desired_state)
    .bind(a.replicas)
    .bind(a.memory)
    .bind(a.cpu_millis)
    .bind(a.disk)
    .bind(crate::to_json(&a.spec))
    .bind(&a.image_pinned)
    .bind(&a.deployment_id)
    .bind(a.version)
    .bind(&a.created_by)
    .bind(t)
    .bind(i64::from(!a.spec.networking.public))
    .execute(&mut *db)
    .await
    .map_err(|e| match db_err(e) {
        Error::Conflict(_) => Error::Conflict(format!(
            "An app named '{}' already exists in this organization; pick another name.",
            a.name
        )),
        other => other,
    })?;
    set_tags(db, &a.id, &a.tags).await?;
    Ok(a)
}

pub async fn set_tags(db: &mut Conn, app_id: &str, tags: &[String]) -> Result<(), Error> {
    sqlx::query("DELETE FROM app_tags WHERE app_id = $1")
        .bind(app_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    let mut seen = std::collections::BTreeSet::new();
    for t in tags.iter().filter(|t| seen.insert(t.as_str())) {
        sqlx::query("INSERT INTO app_tags (app_id, tag) VALUES ($1, $2)")
            .bind(app_id)
            .bind(t)
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// The app, locked for the rest of the transaction (PostgreSQL; SQLite's
/// write transactions are serialized).
pub async fn get_for_update(db: &mut Conn, app_id: &str) -> Result<Option<App>, Error> {
    let lock = lock_clause(db);
    let row = sqlx::query_as::<_, AppRow>(&format!(
        "SELECT {} FROM apps t WHERE t.id = $1{lock}",
        APPS.columns
    ))
    .bind(app_id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let mut a = App::try_from(row)?;
    a.tags = tags_of(db, &a.id).await?;
    Ok(Some(a))
}

async fn tags_of(db: &mut Conn, app_id: &str) -> Result<Vec<String>, Error> {
    sqlx::query_scalar("SELECT tag FROM app_tags WHERE app_id = $1 ORDER BY tag")
        .bind(app_id)
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}

/// Write every mutable column of an app.
pub async fn update(db: &mut Conn, a: &App) -> Result<(), Error> {
    crate::secrets::check_env_sealed(&a.spec)?;
    sqlx::query(
        "UPDATE apps SET status = $1, status_reason = $2, desired_state = $3, replicas = $4, memory = $5, cpu_millis = $6, disk = $7,
                         spec = $8, image_pinned = $9, deployment_id = $10, version = $11, updated_at = $12, traffic = $14,
                         internal_only = $15
         WHERE id = $13",
    )
    .bind(a.status)
    .bind(&a.status_reason)
    .bind(a.desired_state)
    .bind(a.replicas)
    .bind(a.memory)
    .bind(a.cpu_millis)
    .bind(a.disk)
    .bind(crate::to_json(&a.spec))
    .bind(&a.image_pinned)
    .bind(&a.deployment_id)
    .bind(a.version)
    .bind(to_micros(now()))
    .bind(&a.id)
    .bind(&a.traffic)
    .bind(i64::from(!a.spec.networking.public))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Only the derived status (no `updated_at` change: it is not a user edit).
pub async fn set_status(
    db: &mut Conn,
    app_id: &str,
    status: AppStatus,
    reason: Option<&str>,
) -> Result<(), Error> {
    sqlx::query("UPDATE apps SET status = $1, status_reason = $2 WHERE id = $3")
        .bind(status)
        .bind(reason)
        .bind(app_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The app's image by digest, when the instance reporting it runs the
/// app's current version.
pub async fn set_image_pinned(
    db: &mut Conn,
    app_id: &str,
    version: i64,
    pinned: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE apps SET image_pinned = $1 WHERE id = $2 AND version = $3 AND (image_pinned IS NULL OR image_pinned <> $1)")
        .bind(pinned)
        .bind(app_id)
        .bind(version)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Delete the app row (its instances are stopped by the caller first).
pub async fn delete(db: &mut Conn, app_id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM app_tags WHERE app_id = $1")
        .bind(app_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM apps WHERE id = $1")
        .bind(app_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// One replica of an app: desired (`desired`, `node_id`, `version`) and
/// observed (the rest, as its agent reports).
#[derive(Debug, Clone, PartialEq, Default, sqlx::FromRow)]
pub struct Instance {
    pub id: String,
    pub app_id: String,
    pub organization_id: String,
    pub node_id: Option<String>,
    pub version: i64,
    pub desired: DesiredState,
    pub status: InstanceStatus,
    pub status_reason: Option<String>,
    pub replaces: Option<String>,
    pub driver: Option<DriverKind>,
    pub ip: Option<String>,
    pub port: Option<i64>,
    pub pid: Option<i64>,
    pub memory: i64,
    pub cpu_millis: i64,
    pub started_at: Option<i64>,
    pub health_checks_passed: i64,
    pub restarts: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const INSTANCE_COLUMNS: &str = "id, app_id, organization_id, node_id, version, desired, status, status_reason, replaces, driver, ip, port, pid, memory, cpu_millis, started_at, health_checks_passed, restarts, created_at, updated_at";

pub async fn insert_instance(db: &mut Conn, mut i: Instance) -> Result<Instance, Error> {
    if i.id.is_empty() {
        i.id = id::new_id("inst");
    }
    let t = to_micros(now());
    i.created_at = t;
    i.updated_at = t;
    sqlx::query(&format!(
        "INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19)"
    ))
    .bind(&i.id)
    .bind(&i.app_id)
    .bind(&i.organization_id)
    .bind(&i.node_id)
    .bind(i.version)
    .bind(i.desired)
    .bind(i.status)
    .bind(&i.status_reason)
    .bind(&i.replaces)
    .bind(i.driver)
    .bind(&i.ip)
    .bind(i.port)
    .bind(i.pid)
    .bind(i.memory)
    .bind(i.cpu_millis)
    .bind(i.started_at)
    .bind(i.health_checks_passed)
    .bind(i.restarts)
    .bind(t)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(i)
}

/// All instances of an app (any desired state), oldest first.
pub async fn instances_of_app(db: &mut Conn, app_id: &str) -> Result<Vec<Instance>, Error> {
    sqlx::query_as(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE app_id = $1 ORDER BY created_at, id"
    ))
    .bind(app_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// All instances assigned to a node.
pub async fn instances_on_node(db: &mut Conn, node_id: &str) -> Result<Vec<Instance>, Error> {
    sqlx::query_as(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE node_id = $1 ORDER BY created_at, id"
    ))
    .bind(node_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// Write an instance's desired and observed columns.
pub async fn update_instance(db: &mut Conn, i: &Instance) -> Result<(), Error> {
    sqlx::query(
        "UPDATE instances SET node_id = $1, desired = $2, status = $3, status_reason = $4, replaces = $5, driver = $6, ip = $7, port = $8, pid = $9,
                              started_at = $10, health_checks_passed = $11, restarts = $12, updated_at = $13
         WHERE id = $14",
    )
    .bind(&i.node_id)
    .bind(i.desired)
    .bind(i.status)
    .bind(&i.status_reason)
    .bind(&i.replaces)
    .bind(i.driver)
    .bind(&i.ip)
    .bind(i.port)
    .bind(i.pid)
    .bind(i.started_at)
    .bind(i.health_checks_passed)
    .bind(i.restarts)
    .bind(to_micros(now()))
    .bind(&i.id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn delete_instance(db: &mut Conn, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn insert_upload(
    db: &mut Conn,
    id: &str,
    org: &str,
    size: i64,
    sha256: &str,
    created_by: Option<&str>,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO uploads (id, organization_id, size, sha256, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id)
        .bind(org)
        .bind(size)
        .bind(sha256)
        .bind(created_by)
        .bind(to_micros(now()))
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// An app, if it belongs to one of `orgs`, with its tags.
pub async fn get_visible(
    db: &mut Conn,
    app_id: &str,
    orgs: &[String],
) -> Result<Option<App>, Error> {
    let row = sqlx::query_as::<_, AppRow>(&format!(
        "SELECT {} FROM apps t WHERE t.id = $1",
        APPS.columns
    ))
    .bind(app_id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let mut a = App::try_from(row)?;
    if !orgs.contains(&a.organization_id) {
        return Ok(None);
    }
    a.tags = tags_of(db, &a.id).await?;
    Ok(Some(a))
}

/// An app of `org` by name (without its tags).
pub async fn by_name(db: &mut Conn, org: &str, name: &str) -> Result<Option<App>, Error> {
    sqlx::query_as::<_, AppRow>(&format!(
        "SELECT {} FROM apps t WHERE t.organization_id = $1 AND t.name = $2",
        APPS.columns
    ))
    .bind(org)
    .bind(name)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?
    .map(App::try_from)
    .transpose()
}

/// One tag of one app.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AppTag {
    pub app_id: String,
    pub tag: String,
}

/// Tags of many apps at once, in tag order.
pub async fn tags_of_apps(db: &mut Conn, ids: &[String]) -> Result<Vec<AppTag>, Error> {
    let mut out = vec![];
    for chunk in ids.chunks(100) {
        let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let text = format!(
            "SELECT app_id, tag FROM app_tags WHERE app_id IN ({}) ORDER BY tag",
            ph.join(", ")
        );
        let mut q = sqlx::query_as::<_, AppTag>(&text);
        for id in chunk {
            q = q.bind(id);
        }
        out.extend(q.fetch_all(&mut *db).await.map_err(db_err)?);
    }
    Ok(out)
}

/// Instances of many apps at once (any desired state), oldest first.
pub async fn instances_of_apps(db: &mut Conn, ids: &[String]) -> Result<Vec<Instance>, Error> {
    let mut out = vec![];
    for chunk in ids.chunks(100) {
        let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let text = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE app_id IN ({}) ORDER BY created_at, id",
            ph.join(", ")
        );
        let mut q = sqlx::query_as::<_, Instance>(&text);
        for id in chunk {
            q = q.bind(id);
        }
        out.extend(q.fetch_all(&mut *db).await.map_err(db_err)?);
    }
    Ok(out)
}

/// Apps whose instances need attention: not yet placed, or on a node
/// that is not ready, or that stopped being wanted; and apps with a
/// deployment under way (a canary's pause ends by the clock).
pub async fn needing_reconcile(db: &mut Conn) -> Result<Vec<String>, Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT i.app_id FROM instances i LEFT JOIN nodes n ON n.id = i.node_id
         WHERE i.desired = 'running' AND (i.node_id IS NULL OR n.id IS NULL OR n.status <> 'ready' OR i.replaces IS NOT NULL)
         UNION SELECT d.app_id FROM deployments d WHERE d.finished_at IS NULL",
    )
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// Every app id (the controller's periodic full pass).
pub async fn ids(db: &mut Conn) -> Result<Vec<String>, Error> {
    sqlx::query_scalar("SELECT id FROM apps ORDER BY id")
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}

/// Specs (of apps, and of releases: `Some(version)`) holding an env value
/// that is not sealed, written before env was encrypted at rest:
/// (organization, app id, release version, spec).
pub async fn legacy_env_specs(
    db: &mut Conn,
) -> Result<Vec<(String, String, Option<i64>, AppSpec)>, Error> {
    let apps: Vec<(String, String, String)> =
        sqlx::query_as("SELECT organization_id, id, spec FROM apps")
            .fetch_all(&mut *db)
            .await
            .map_err(db_err)?;
    let releases: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT a.organization_id, r.app_id, r.version, r.spec FROM releases r JOIN apps a ON a.id = r.app_id",
    )
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    let mut out = vec![];
    let rows = apps
        .into_iter()
        .map(|(o, a, s)| (o, a, None, s))
        .chain(releases.into_iter().map(|(o, a, v, s)| (o, a, Some(v), s)));
    for (org, app, version, text) in rows {
        let spec: AppSpec = crate::doc("apps", &app, "spec", &text)?;
        if crate::secrets::check_env_sealed(&spec).is_err() {
            out.push((org, app, version, spec));
        }
    }
    Ok(out)
}

/// Store a spec whose env was just sealed (see [`legacy_env_specs`]).
pub async fn set_sealed_spec(
    db: &mut Conn,
    app_id: &str,
    release: Option<i64>,
    spec: &AppSpec,
) -> Result<(), Error> {
    crate::secrets::check_env_sealed(spec)?;
    let q = match release {
        None => sqlx::query("UPDATE apps SET spec = $1 WHERE id = $2")
            .bind(crate::to_json(spec))
            .bind(app_id),
        Some(v) => sqlx::query("UPDATE releases SET spec = $1 WHERE app_id = $2 AND version = $3")
            .bind(crate::to_json(spec))
            .bind(app_id)
            .bind(v),
    };
    q.execute(&mut *db).await.map_err(db_err)?;
    Ok(())
}

/// Every app of `org`.
pub async fn ids_of_org(db: &mut Conn, org: &str) -> Result<Vec<String>, Error> {
    sqlx::query_scalar("SELECT id FROM apps WHERE organization_id = $1 ORDER BY id")
        .bind(org)
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}

/// Which of `ids` are apps of `org`.
pub async fn ids_in(db: &mut Conn, org: &str, ids: &[String]) -> Result<Vec<String>, Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT id FROM apps WHERE organization_id = $1 AND id IN ({})",
        marks.join(", ")
    );
    let mut q = sqlx::query_scalar(&sql).bind(org);
    for id in ids {
        q = q.bind(id);
    }
    q.fetch_all(&mut *db).await.map_err(db_err)
}

/// Number of apps of an organization.
pub async fn count_in(db: &mut Conn, org: &str) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT COUNT(*) AS n FROM apps WHERE organization_id = $1")
        .bind(org)
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)
}

/// Whether an upload exists in an organization.
pub async fn upload_exists(db: &mut Conn, id: &str, org: &str) -> Result<bool, Error> {
    let row = sqlx::query("SELECT 1 AS one FROM uploads WHERE id = $1 AND organization_id = $2")
        .bind(id)
        .bind(org)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(row.is_some())
}

/// The organization of an upload.
pub async fn upload_org(db: &mut Conn, id: &str) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT organization_id FROM uploads WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

/// A healthy, wanted instance with an address, and its app's traffic split.
#[derive(sqlx::FromRow)]
struct RoutableRow {
    name: String,
    app_id: String,
    traffic: Option<String>,
    id: String,
    ip: String,
    port: i64,
    version: i64,
}

/// Healthy, wanted instances with an address, for the routers, weighted
/// by their app's traffic split.
pub async fn routable_instances(db: &mut Conn) -> Result<Vec<Route>, Error> {
    let rows = sqlx::query_as::<_, RoutableRow>(
        "SELECT a.name, a.id AS app_id, a.traffic, i.id, i.ip, i.port, i.version FROM instances i JOIN apps a ON a.id = i.app_id
         WHERE i.status = 'healthy' AND i.desired = 'running' AND i.ip IS NOT NULL AND i.port IS NOT NULL
           AND a.internal_only = 0
         ORDER BY a.name, i.created_at, i.id",
    )
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    // Each row with its app's version weights.
    let mut all: Vec<(RoutableRow, Option<std::collections::BTreeMap<String, u32>>)> = vec![];
    for r in rows {
        let weights = match &r.traffic {
            None => None,
            Some(t) => Some(crate::doc("apps", &r.name, "traffic", t)?),
        };
        all.push((r, weights));
    }
    // An app's `traffic` splits its requests between versions (a
    // version's share spread evenly over its healthy instances);
    // versions it does not name get none. Without it, all alike.
    let mut per_version: std::collections::HashMap<(String, i64), u32> = Default::default();
    for (r, _) in &all {
        *per_version.entry((r.name.clone(), r.version)).or_default() += 1;
    }
    let mut out = vec![];
    for (r, weights) in all {
        let weight = match &weights {
            None => 1000,
            Some(w) => {
                let share = w.get(&r.version.to_string()).copied().unwrap_or(0);
                let n = per_version
                    .get(&(r.name.clone(), r.version))
                    .copied()
                    .unwrap_or(1)
                    .max(1);
                share * 1000 / n
            }
        };
        if weight > 0 {
            out.push(Route {
                app: r.name,
                app_id: r.app_id,
                instance_id: r.id,
                ip: r.ip,
                port: r.port,
                weight,
            });
        }
    }
    Ok(out)
}

/// Add what a router counted: per instance, (requests, errors). Run it in
/// a transaction, so that the counts land together.
pub async fn add_instance_traffic(
    db: &mut Conn,
    counts: &std::collections::HashMap<String, (u64, u64)>,
) -> Result<(), Error> {
    for (id, (req, err)) in counts {
        sqlx::query(
            "INSERT INTO instance_traffic (instance_id, requests, errors, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (instance_id) DO UPDATE SET requests = instance_traffic.requests + $2,
                 errors = instance_traffic.errors + $3, updated_at = $4",
        )
        .bind(id)
        .bind(*req as i64)
        .bind(*err as i64)
        .bind(to_micros(now()))
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// An instance a name of the internal DNS stands for.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Endpoint {
    pub instance_id: String,
    pub ip: String,
    pub port: i64,
    /// Its node's address on the WireGuard mesh, if it is on it.
    pub overlay: Option<String>,
}

/// The healthy instances of the app `name` of `org` (of `instance` only,
/// when given), with their addresses: what `<app>.internal` resolves to.
pub async fn internal_endpoints(
    db: &mut Conn,
    org: &str,
    name: &str,
    instance: Option<&str>,
) -> Result<Vec<Endpoint>, Error> {
    sqlx::query_as::<_, Endpoint>(
        "SELECT i.id AS instance_id, i.ip, i.port, o.address AS overlay
         FROM instances i JOIN apps a ON a.id = i.app_id LEFT JOIN node_overlay o ON o.node_id = i.node_id
         WHERE a.organization_id = $1 AND a.name = $2 AND ($3 = '' OR i.id = $3)
           AND i.status = 'healthy' AND i.desired = 'running' AND i.ip IS NOT NULL AND i.port IS NOT NULL
         ORDER BY i.id",
    )
    .bind(org)
    .bind(name)
    .bind(instance.unwrap_or(""))
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// The node an instance is placed on (none: no such instance, or unplaced).
pub async fn node_of_instance(db: &mut Conn, id: &str) -> Result<Option<String>, Error> {
    let n: Option<Option<String>> =
        sqlx::query_scalar("SELECT node_id FROM instances WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *db)
            .await
            .map_err(db_err)?;
    Ok(n.flatten())
}

/// Names of every app (the router answers 503, not 404, for these).
pub async fn names(db: &mut Conn) -> Result<Vec<String>, Error> {
    sqlx::query_scalar("SELECT DISTINCT name FROM apps WHERE internal_only = 0")
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}

/// An instance a node should run, with its app.
#[derive(Debug, Clone, PartialEq)]
pub struct Assigned {
    pub instance: Instance,
    pub app: App,
}

/// Instances a node should run (wanted and placed there), with their app rows.
pub async fn desired_on_node(db: &mut Conn, node_id: &str) -> Result<Vec<Assigned>, Error> {
    let instances = sqlx::query_as::<_, Instance>(&format!(
        "SELECT {} FROM instances WHERE node_id = $1 AND desired = 'running' ORDER BY created_at, id",
        INSTANCE_COLUMNS
    ))
    .bind(node_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    // Their apps, in one query (not one per instance).
    let app_rows = sqlx::query_as::<_, AppRow>(&format!(
        "SELECT {} FROM apps t WHERE t.id IN
           (SELECT app_id FROM instances WHERE node_id = $1 AND desired = 'running')",
        APPS.columns
    ))
    .bind(node_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    let mut apps = std::collections::HashMap::new();
    for r in app_rows {
        let a = App::try_from(r)?;
        apps.insert(a.id.clone(), a);
    }
    let mut out = vec![];
    for instance in instances {
        if let Some(app) = apps.get(&instance.app_id) {
            let app = app.clone();
            out.push(Assigned { instance, app });
        }
    }
    Ok(out)
}

/// What the routers counted: requests and, of them, errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct Traffic {
    pub requests: i64,
    pub errors: i64,
}

/// What the routers counted for these instances, summed.
pub async fn instance_traffic(db: &mut Conn, ids: &[String]) -> Result<Traffic, Error> {
    let mut total = Traffic::default();
    for id in ids {
        let row = sqlx::query_as::<_, Traffic>(
            "SELECT requests, errors FROM instance_traffic WHERE instance_id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?;
        if let Some(t) = row {
            total.requests += t.requests;
            total.errors += t.errors;
        }
    }
    Ok(total)
}
