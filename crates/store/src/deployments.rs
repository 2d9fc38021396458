//! Releases (what each app version runs), deployments (the durable state
//! of a change of version) and their step logs: the rows. The state
//! machine lives in the server's `service::deploy`.

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::model::{AppSpec, DeployOptions, DeploymentStage, DeploymentStatus, Strategy};
use shellwego_core::time::{now, to_micros};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, Conn};

/// What one version of an app runs, frozen when the version is made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Release {
    pub app_id: String,
    pub version: i64,
    pub spec: AppSpec,
    pub replicas: i64,
    pub memory: i64,
    pub cpu_millis: i64,
    pub disk: i64,
    pub image_pinned: Option<String>,
    pub created_at: i64,
}

const RELEASE_COLUMNS: &str =
    "app_id, version, spec, replicas, memory, cpu_millis, disk, image_pinned, created_at";

/// A `releases` row as stored: `spec` is a document.
#[derive(sqlx::FromRow)]
struct ReleaseRow {
    app_id: String,
    version: i64,
    spec: String,
    replicas: i64,
    memory: i64,
    cpu_millis: i64,
    disk: i64,
    image_pinned: Option<String>,
    created_at: i64,
}

impl TryFrom<ReleaseRow> for Release {
    type Error = Error;
    fn try_from(r: ReleaseRow) -> Result<Release, Error> {
        let spec = serde_json::from_str(&r.spec).map_err(|e| {
            let row = format!("{} v{}", r.app_id, r.version);
            crate::doc_error("releases", &row, "spec", e)
        })?;
        Ok(Release {
            spec,
            app_id: r.app_id,
            version: r.version,
            replicas: r.replicas,
            memory: r.memory,
            cpu_millis: r.cpu_millis,
            disk: r.disk,
            image_pinned: r.image_pinned,
            created_at: r.created_at,
        })
    }
}

pub async fn insert_release(db: &mut Conn, r: &Release) -> Result<(), Error> {
    crate::secrets::check_env_sealed(&r.spec)?;
    sqlx::query(
        "INSERT INTO releases (app_id, version, spec, replicas, memory, cpu_millis, disk, image_pinned, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&r.app_id)
    .bind(r.version)
    .bind(crate::to_json(&r.spec))
    .bind(r.replicas)
    .bind(r.memory)
    .bind(r.cpu_millis)
    .bind(r.disk)
    .bind(&r.image_pinned)
    .bind(to_micros(now()))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn release(db: &mut Conn, app_id: &str, version: i64) -> Result<Option<Release>, Error> {
    sqlx::query_as::<_, ReleaseRow>(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE app_id = $1 AND version = $2"
    ))
    .bind(app_id)
    .bind(version)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?
    .map(Release::try_from)
    .transpose()
}

/// The specs of the releases some instance runs (or is meant to run).
pub async fn specs_in_use(db: &mut Conn) -> Result<Vec<AppSpec>, Error> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT r.app_id, r.version, r.spec FROM releases r
         WHERE EXISTS (SELECT 1 FROM instances i WHERE i.app_id = r.app_id AND i.version = r.version)",
    )
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    rows.into_iter()
        .map(|(a, v, s)| crate::doc("releases", &format!("{a}@{v}"), "spec", &s))
        .collect()
}

/// Releases of the given versions of one app.
pub async fn releases_of(db: &mut Conn, app_id: &str) -> Result<Vec<Release>, Error> {
    let rows = sqlx::query_as::<_, ReleaseRow>(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE app_id = $1 ORDER BY version"
    ))
    .bind(app_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    crate::convert(rows)
}

/// Releases of every app with an instance meant to run on `node_id`.
pub async fn releases_for_node(db: &mut Conn, node_id: &str) -> Result<Vec<Release>, Error> {
    let rows = sqlx::query_as::<_, ReleaseRow>(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE app_id IN
           (SELECT app_id FROM instances WHERE node_id = $1 AND desired = 'running')"
    ))
    .bind(node_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    crate::convert(rows)
}

/// Record the digest an agent resolved for a version's image (first wins).
pub async fn pin_release_image(
    db: &mut Conn,
    app_id: &str,
    version: i64,
    pinned: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE releases SET image_pinned = $1 WHERE app_id = $2 AND version = $3 AND image_pinned IS NULL",
    )
    .bind(pinned)
    .bind(app_id)
    .bind(version)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn delete_releases(db: &mut Conn, app_id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM releases WHERE app_id = $1")
        .bind(app_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// A deployment row. `stages` and `options` are JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Deployment {
    pub id: String,
    pub app_id: String,
    pub organization_id: String,
    pub status: DeploymentStatus,
    pub version: i64,
    pub image: Option<String>,
    pub strategy: Strategy,
    pub initiated_by: Option<String>,
    pub reason: Option<String>,
    /// Every stage, in order (a row stored with none reads as the initial
    /// stages).
    pub stages: Vec<DeploymentStage>,
    pub options: DeployOptions,
    pub from_version: Option<i64>,
    pub rollback_target: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub wait_until: Option<i64>,
    /// A canary's step (index into `options.canary_steps`).
    pub canary_step: i64,
    pub step_started_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub static DEPLOYMENTS: Resource = Resource {
    schema: &ListSchema {
        name: "deployments",
        fields: &[
            FieldSpec::new("status", Kind::Text).one_of(DeploymentStatus::NAMES),
            FieldSpec::new("strategy", Kind::Text),
            FieldSpec::new("app_id", Kind::Text).no_sort(),
            FieldSpec::new("created_at", Kind::Time),
        ],
        searchable: false,
        labels: false,
        default_sort: &[("created_at", Dir::Desc)],
    },
    from: "deployments t",
    columns: "t.id, t.app_id, t.organization_id, t.status, t.version, t.image, t.strategy, t.initiated_by, t.reason, t.stages, t.options, t.from_version, t.rollback_target, t.started_at, t.finished_at, t.wait_until, t.canary_step, t.step_started_at, t.created_at, t.updated_at",
    fields: &[
        FieldSql::new("status", "t.status"),
        FieldSql::new("strategy", "t.strategy"),
        FieldSql::new("app_id", "t.app_id"),
        FieldSql::new("created_at", "t.created_at"),
    ],
    search: &[],
    labels: None,
};

/// A `deployments` row as stored ([`DEPLOYMENTS`]' columns): `stages` and
/// `options` are documents.
#[derive(sqlx::FromRow)]
struct DeploymentRow {
    id: String,
    app_id: String,
    organization_id: String,
    status: DeploymentStatus,
    version: i64,
    image: Option<String>,
    strategy: Strategy,
    initiated_by: Option<String>,
    reason: Option<String>,
    stages: String,
    options: String,
    from_version: Option<i64>,
    rollback_target: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    wait_until: Option<i64>,
    canary_step: i64,
    step_started_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<DeploymentRow> for Deployment {
    type Error = Error;
    fn try_from(r: DeploymentRow) -> Result<Deployment, Error> {
        let mut stages: Vec<DeploymentStage> =
            crate::doc("deployments", &r.id, "stages", &r.stages)?;
        if stages.is_empty() {
            stages = DeploymentStage::initial();
        }
        Ok(Deployment {
            options: crate::doc("deployments", &r.id, "options", &r.options)?,
            stages,
            id: r.id,
            app_id: r.app_id,
            organization_id: r.organization_id,
            status: r.status,
            version: r.version,
            image: r.image,
            strategy: r.strategy,
            initiated_by: r.initiated_by,
            reason: r.reason,
            from_version: r.from_version,
            rollback_target: r.rollback_target,
            started_at: r.started_at,
            finished_at: r.finished_at,
            wait_until: r.wait_until,
            canary_step: r.canary_step,
            step_started_at: r.step_started_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A deployment from a row of [`DEPLOYMENTS`]' columns.
pub fn from_row(row: &AnyRow) -> Result<Deployment, Error> {
    crate::decode::<DeploymentRow, _>(row)
}

pub async fn insert(db: &mut Conn, mut d: Deployment) -> Result<Deployment, Error> {
    if d.id.is_empty() {
        d.id = id::new_id("dep");
    }
    let t = to_micros(now());
    d.created_at = t;
    d.updated_at = t;
    d.started_at = Some(t);
    sqlx::query(
        "INSERT INTO deployments (id, app_id, organization_id, status, version, image, strategy, initiated_by, reason,
                                  stages, options, from_version, rollback_target, started_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $14)",
    )
    .bind(&d.id)
    .bind(&d.app_id)
    .bind(&d.organization_id)
    .bind(d.status)
    .bind(d.version)
    .bind(&d.image)
    .bind(d.strategy)
    .bind(&d.initiated_by)
    .bind(&d.reason)
    .bind(crate::to_json(&d.stages))
    .bind(crate::to_json(&d.options))
    .bind(d.from_version)
    .bind(&d.rollback_target)
    .bind(t)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(d)
}

/// Write the mutable part of a deployment.
pub async fn update(db: &mut Conn, d: &Deployment) -> Result<(), Error> {
    sqlx::query(
        "UPDATE deployments SET status = $1, reason = $2, stages = $3, finished_at = $4, wait_until = $5, image = $6, updated_at = $7,
                                canary_step = $9, step_started_at = $10, options = $11
         WHERE id = $8",
    )
    .bind(d.status)
    .bind(&d.reason)
    .bind(crate::to_json(&d.stages))
    .bind(d.finished_at)
    .bind(d.wait_until)
    .bind(&d.image)
    .bind(to_micros(now()))
    .bind(&d.id)
    .bind(d.canary_step)
    .bind(d.step_started_at)
    .bind(crate::to_json(&d.options))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// The app's active deployment, if any (at most one): in progress, or
/// failed and rolling back.
pub async fn active(db: &mut Conn, app_id: &str) -> Result<Option<Deployment>, Error> {
    sqlx::query_as::<_, DeploymentRow>(&format!(
        "SELECT {} FROM deployments t WHERE t.app_id = $1 AND t.finished_at IS NULL ORDER BY t.created_at DESC LIMIT 1",
        DEPLOYMENTS.columns
    ))
    .bind(app_id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?
    .map(Deployment::try_from)
    .transpose()
}

/// The newest successful deployment of `version` (what serves it).
pub async fn serving(
    db: &mut Conn,
    app_id: &str,
    version: i64,
) -> Result<Option<Deployment>, Error> {
    sqlx::query_as::<_, DeploymentRow>(&format!(
        "SELECT {} FROM deployments t WHERE t.app_id = $1 AND t.version = $2 AND t.status = 'successful'
         ORDER BY t.created_at DESC LIMIT 1",
        DEPLOYMENTS.columns
    ))
    .bind(app_id)
    .bind(version)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?
    .map(Deployment::try_from)
    .transpose()
}

pub async fn get_in(db: &mut Conn, id: &str) -> Result<Option<Deployment>, Error> {
    sqlx::query_as::<_, DeploymentRow>(&format!(
        "SELECT {} FROM deployments t WHERE t.id = $1",
        DEPLOYMENTS.columns
    ))
    .bind(id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?
    .map(Deployment::try_from)
    .transpose()
}

/// Append a line to a deployment's step log.
pub async fn log(db: &mut Conn, deployment_id: &str, message: &str) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO deployment_logs (deployment_id, seq, at, message)
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployment_logs WHERE deployment_id = $1), $2, $3)",
    )
    .bind(deployment_id)
    .bind(to_micros(now()))
    .bind(message)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A deployment, if it belongs to one of `orgs`.
pub async fn get_visible(
    db: &mut Conn,
    id: &str,
    orgs: &[String],
) -> Result<Option<Deployment>, Error> {
    Ok(get_in(db, id)
        .await?
        .filter(|d| orgs.contains(&d.organization_id)))
}

/// One line of a deployment's step log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LogLine {
    /// Its number in the log (from 1).
    pub seq: i64,
    /// When it was written (microseconds).
    pub at: i64,
    pub message: String,
}

/// A deployment's log lines after `after_seq`.
pub async fn log_after(db: &mut Conn, id: &str, after_seq: i64) -> Result<Vec<LogLine>, Error> {
    sqlx::query_as(
        "SELECT seq, at, message FROM deployment_logs WHERE deployment_id = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(id)
    .bind(after_seq)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}
