//! Releases (what each app version runs), deployments (the durable state
//! of a change of version) and their step logs: the rows. The state
//! machine lives in the server's `service::deploy`.

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::model::{AppSpec, DeployOptions, DeploymentStage, DeploymentStatus, Strategy};
use shellwego_core::time::{now, to_micros};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::list::{FieldSql, Resource};
use crate::{db_err, Store, Tx};

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

fn release_from_row(r: &AnyRow) -> Result<Release, Error> {
    let app_id: String = r.try_get("app_id").map_err(db_err)?;
    let version: i64 = r.try_get("version").map_err(db_err)?;
    let spec = crate::doc_col(r, "releases", &format!("{app_id} v{version}"), "spec")?;
    Ok(Release {
        app_id,
        version,
        spec,
        replicas: r.try_get("replicas").map_err(db_err)?,
        memory: r.try_get("memory").map_err(db_err)?,
        cpu_millis: r.try_get("cpu_millis").map_err(db_err)?,
        disk: r.try_get("disk").map_err(db_err)?,
        image_pinned: r.try_get("image_pinned").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
    })
}

pub async fn insert_release(tx: &mut Tx, r: &Release) -> Result<(), Error> {
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
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn release(tx: &mut Tx, app_id: &str, version: i64) -> Result<Option<Release>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE app_id = $1 AND version = $2"
    ))
    .bind(app_id)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?;
    row.as_ref().map(release_from_row).transpose()
}

/// Releases of the given versions of one app.
pub async fn releases_of(tx: &mut Tx, app_id: &str) -> Result<Vec<Release>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE app_id = $1 ORDER BY version"
    ))
    .bind(app_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    rows.iter().map(release_from_row).collect()
}

/// Releases of every app with an instance meant to run on `node_id`.
pub async fn releases_for_node(tx: &mut Tx, node_id: &str) -> Result<Vec<Release>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE app_id IN
           (SELECT app_id FROM instances WHERE node_id = $1 AND desired = 'running')"
    ))
    .bind(node_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    rows.iter().map(release_from_row).collect()
}

/// Record the digest an agent resolved for a version's image (first wins).
pub async fn pin_release_image(
    tx: &mut Tx,
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
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn delete_releases(tx: &mut Tx, app_id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM releases WHERE app_id = $1")
        .bind(app_id)
        .execute(&mut **tx)
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

pub fn from_row(r: &AnyRow) -> Result<Deployment, Error> {
    let id: String = r.try_get("id").map_err(db_err)?;
    let mut stages: Vec<DeploymentStage> = crate::doc_col(r, "deployments", &id, "stages")?;
    if stages.is_empty() {
        stages = DeploymentStage::initial();
    }
    let options = crate::doc_col(r, "deployments", &id, "options")?;
    Ok(Deployment {
        id,
        app_id: r.try_get("app_id").map_err(db_err)?,
        organization_id: r.try_get("organization_id").map_err(db_err)?,
        status: r.try_get("status").map_err(db_err)?,
        version: r.try_get("version").map_err(db_err)?,
        image: r.try_get("image").map_err(db_err)?,
        strategy: r.try_get("strategy").map_err(db_err)?,
        initiated_by: r.try_get("initiated_by").map_err(db_err)?,
        reason: r.try_get("reason").map_err(db_err)?,
        stages,
        options,
        from_version: r.try_get("from_version").map_err(db_err)?,
        rollback_target: r.try_get("rollback_target").map_err(db_err)?,
        started_at: r.try_get("started_at").map_err(db_err)?,
        finished_at: r.try_get("finished_at").map_err(db_err)?,
        wait_until: r.try_get("wait_until").map_err(db_err)?,
        canary_step: r.try_get("canary_step").map_err(db_err)?,
        step_started_at: r.try_get("step_started_at").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        updated_at: r.try_get("updated_at").map_err(db_err)?,
    })
}

pub async fn insert(tx: &mut Tx, mut d: Deployment) -> Result<Deployment, Error> {
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
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(d)
}

/// Write the mutable part of a deployment.
pub async fn update(tx: &mut Tx, d: &Deployment) -> Result<(), Error> {
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
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// The app's active deployment, if any (at most one): in progress, or
/// failed and rolling back.
pub async fn active(tx: &mut Tx, app_id: &str) -> Result<Option<Deployment>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM deployments t WHERE t.app_id = $1 AND t.finished_at IS NULL ORDER BY t.created_at DESC LIMIT 1",
        DEPLOYMENTS.columns
    ))
    .bind(app_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?;
    row.as_ref().map(from_row).transpose()
}

/// The newest successful deployment of `version` (what serves it).
pub async fn serving(tx: &mut Tx, app_id: &str, version: i64) -> Result<Option<Deployment>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM deployments t WHERE t.app_id = $1 AND t.version = $2 AND t.status = 'successful'
         ORDER BY t.created_at DESC LIMIT 1",
        DEPLOYMENTS.columns
    ))
    .bind(app_id)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?;
    row.as_ref().map(from_row).transpose()
}

pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<Deployment>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM deployments t WHERE t.id = $1",
        DEPLOYMENTS.columns
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?;
    row.as_ref().map(from_row).transpose()
}

/// Append a line to a deployment's step log.
pub async fn log(tx: &mut Tx, deployment_id: &str, message: &str) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO deployment_logs (deployment_id, seq, at, message)
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployment_logs WHERE deployment_id = $1), $2, $3)",
    )
    .bind(deployment_id)
    .bind(to_micros(now()))
    .bind(message)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

impl Store {
    pub async fn deployment(&self, id: &str, orgs: &[String]) -> Result<Option<Deployment>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM deployments t WHERE t.id = $1",
            DEPLOYMENTS.columns
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        Ok(row
            .as_ref()
            .map(from_row)
            .transpose()?
            .filter(|d| orgs.contains(&d.organization_id)))
    }

    /// A deployment's log lines after `after_seq`: (seq, at, message).
    pub async fn deployment_log(
        &self,
        id: &str,
        after_seq: i64,
    ) -> Result<Vec<(i64, i64, String)>, Error> {
        let rows = sqlx::query(
            "SELECT seq, at, message FROM deployment_logs WHERE deployment_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(id)
        .bind(after_seq)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("seq").map_err(db_err)?,
                    r.try_get("at").map_err(db_err)?,
                    r.try_get("message").map_err(db_err)?,
                ))
            })
            .collect()
    }
}
