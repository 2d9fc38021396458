//! Apps, their instances, deployments and uploads: the rows. The rules
//! (what to run where, what an app's status is) live in the server's
//! services; these are the queries.

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::model::{AppSpec, AppStatus, DesiredState, DriverKind, InstanceStatus};
use shellwego_core::time::{now, to_micros};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::list::{FieldSql, Resource};
use crate::{db_err, Store, Tx};

/// A route to one healthy instance: (app name, instance id, ip, port,
/// weight among the app's routes).
pub type Route = (String, String, String, i64, u32);

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

pub fn from_row(row: &AnyRow) -> Result<App, Error> {
    let id: String = row.try_get("id").map_err(db_err)?;
    let spec = crate::doc_col(row, "apps", &id, "spec")?;
    Ok(App {
        id,
        organization_id: row.try_get("organization_id").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        status: row.try_get("status").map_err(db_err)?,
        status_reason: row.try_get("status_reason").map_err(db_err)?,
        desired_state: row.try_get("desired_state").map_err(db_err)?,
        replicas: row.try_get("replicas").map_err(db_err)?,
        memory: row.try_get("memory").map_err(db_err)?,
        cpu_millis: row.try_get("cpu_millis").map_err(db_err)?,
        disk: row.try_get("disk").map_err(db_err)?,
        spec,
        image_pinned: row.try_get("image_pinned").map_err(db_err)?,
        traffic: row.try_get("traffic").map_err(db_err)?,
        deployment_id: row.try_get("deployment_id").map_err(db_err)?,
        version: row.try_get("version").map_err(db_err)?,
        created_by: row.try_get("created_by").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        updated_at: row.try_get("updated_at").map_err(db_err)?,
        tags: vec![],
    })
}

fn lock_clause(tx: &Tx) -> &'static str {
    if tx.backend_name() == "PostgreSQL" {
        " FOR UPDATE"
    } else {
        ""
    }
}

/// Insert an app with its tags; `a.id` is assigned when empty.
pub async fn insert(tx: &mut Tx, mut a: App) -> Result<App, Error> {
    if a.id.is_empty() {
        a.id = id::new_id("app");
    }
    let t = to_micros(now());
    a.created_at = t;
    a.updated_at = t;
    sqlx::query(
        "INSERT INTO apps (id, organization_id, name, status, status_reason, desired_state, replicas, memory, cpu_millis, disk, spec, image_pinned, deployment_id, version, created_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)",
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
    .execute(&mut **tx)
    .await
    .map_err(|e| match db_err(e) {
        Error::Conflict(_) => Error::Conflict(format!(
            "An app named '{}' already exists in this organization; pick another name.",
            a.name
        )),
        other => other,
    })?;
    set_tags(tx, &a.id, &a.tags).await?;
    Ok(a)
}

pub async fn set_tags(tx: &mut Tx, app_id: &str, tags: &[String]) -> Result<(), Error> {
    sqlx::query("DELETE FROM app_tags WHERE app_id = $1")
        .bind(app_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    let mut seen = std::collections::BTreeSet::new();
    for t in tags.iter().filter(|t| seen.insert(t.as_str())) {
        sqlx::query("INSERT INTO app_tags (app_id, tag) VALUES ($1, $2)")
            .bind(app_id)
            .bind(t)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// The app, locked for the rest of the transaction (PostgreSQL; SQLite's
/// write transactions are serialized).
pub async fn get_for_update(tx: &mut Tx, app_id: &str) -> Result<Option<App>, Error> {
    let lock = lock_clause(tx);
    let row = sqlx::query(&format!(
        "SELECT {} FROM apps t WHERE t.id = $1{lock}",
        APPS.columns
    ))
    .bind(app_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let mut a = from_row(&row)?;
    a.tags = tags_of(&mut **tx, &a.id).await?;
    Ok(Some(a))
}

async fn tags_of<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    ex: E,
    app_id: &str,
) -> Result<Vec<String>, Error> {
    let rows = sqlx::query("SELECT tag FROM app_tags WHERE app_id = $1 ORDER BY tag")
        .bind(app_id)
        .fetch_all(ex)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("tag").map_err(db_err))
        .collect()
}

/// Write every mutable column of an app.
pub async fn update(tx: &mut Tx, a: &App) -> Result<(), Error> {
    sqlx::query(
        "UPDATE apps SET status = $1, status_reason = $2, desired_state = $3, replicas = $4, memory = $5, cpu_millis = $6, disk = $7,
                         spec = $8, image_pinned = $9, deployment_id = $10, version = $11, updated_at = $12, traffic = $14
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
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Only the derived status (no `updated_at` change: it is not a user edit).
pub async fn set_status(
    tx: &mut Tx,
    app_id: &str,
    status: AppStatus,
    reason: Option<&str>,
) -> Result<(), Error> {
    sqlx::query("UPDATE apps SET status = $1, status_reason = $2 WHERE id = $3")
        .bind(status)
        .bind(reason)
        .bind(app_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The app's image by digest, when the instance reporting it runs the
/// app's current version.
pub async fn set_image_pinned(
    tx: &mut Tx,
    app_id: &str,
    version: i64,
    pinned: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE apps SET image_pinned = $1 WHERE id = $2 AND version = $3 AND (image_pinned IS NULL OR image_pinned <> $1)")
        .bind(pinned)
        .bind(app_id)
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Delete the app row (its instances are stopped by the caller first).
pub async fn delete(tx: &mut Tx, app_id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM app_tags WHERE app_id = $1")
        .bind(app_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM apps WHERE id = $1")
        .bind(app_id)
        .execute(&mut **tx)
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

fn instance_from_row(row: &AnyRow) -> Result<Instance, Error> {
    Instance::from_row(row).map_err(db_err)
}

pub async fn insert_instance(tx: &mut Tx, mut i: Instance) -> Result<Instance, Error> {
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
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(i)
}

/// All instances of an app (any desired state), oldest first.
pub async fn instances_of_app(tx: &mut Tx, app_id: &str) -> Result<Vec<Instance>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE app_id = $1 ORDER BY created_at, id"
    ))
    .bind(app_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    rows.iter().map(instance_from_row).collect()
}

/// All instances assigned to a node.
pub async fn instances_on_node(tx: &mut Tx, node_id: &str) -> Result<Vec<Instance>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE node_id = $1 ORDER BY created_at, id"
    ))
    .bind(node_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    rows.iter().map(instance_from_row).collect()
}

/// Write an instance's desired and observed columns.
pub async fn update_instance(tx: &mut Tx, i: &Instance) -> Result<(), Error> {
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
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn delete_instance(tx: &mut Tx, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn insert_upload(
    tx: &mut Tx,
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
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

impl Store {
    pub async fn app(&self, app_id: &str, orgs: &[String]) -> Result<Option<App>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM apps t WHERE t.id = $1",
            APPS.columns
        ))
        .bind(app_id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let mut a = from_row(&row)?;
        if !orgs.contains(&a.organization_id) {
            return Ok(None);
        }
        a.tags = tags_of(self.pool(), &a.id).await?;
        Ok(Some(a))
    }

    pub async fn app_by_name(&self, org: &str, name: &str) -> Result<Option<App>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM apps t WHERE t.organization_id = $1 AND t.name = $2",
            APPS.columns
        ))
        .bind(org)
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(from_row).transpose()
    }

    /// Tags of many apps at once.
    pub async fn tags_of_apps(&self, ids: &[String]) -> Result<Vec<(String, String)>, Error> {
        let mut out = vec![];
        for chunk in ids.chunks(100) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let text = format!(
                "SELECT app_id, tag FROM app_tags WHERE app_id IN ({}) ORDER BY tag",
                ph.join(", ")
            );
            let mut q = sqlx::query_as::<_, (String, String)>(&text);
            for id in chunk {
                q = q.bind(id);
            }
            out.extend(q.fetch_all(self.pool()).await.map_err(db_err)?);
        }
        Ok(out)
    }

    /// Instances of many apps at once (any desired state), oldest first.
    pub async fn instances_of_apps(&self, ids: &[String]) -> Result<Vec<Instance>, Error> {
        let mut out = vec![];
        for chunk in ids.chunks(100) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let text = format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances WHERE app_id IN ({}) ORDER BY created_at, id",
                ph.join(", ")
            );
            let mut q = sqlx::query(&text);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(self.pool()).await.map_err(db_err)? {
                out.push(instance_from_row(&r)?);
            }
        }
        Ok(out)
    }

    /// Apps whose instances need attention: not yet placed, or on a node
    /// that is not ready, or that stopped being wanted; and apps with a
    /// deployment under way (a canary's pause ends by the clock).
    pub async fn apps_needing_reconcile(&self) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "SELECT DISTINCT i.app_id FROM instances i LEFT JOIN nodes n ON n.id = i.node_id
             WHERE i.desired = 'running' AND (i.node_id IS NULL OR n.id IS NULL OR n.status <> 'ready' OR i.replaces IS NOT NULL)
             UNION SELECT d.app_id FROM deployments d WHERE d.finished_at IS NULL",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("app_id").map_err(db_err))
            .collect()
    }

    /// Every app id (the controller's periodic full pass).
    pub async fn app_ids(&self) -> Result<Vec<String>, Error> {
        let rows = sqlx::query("SELECT id FROM apps ORDER BY id")
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(db_err))
            .collect()
    }

    /// Number of apps of an organization.
    /// Which of `ids` are apps of `org`.
    pub async fn app_ids_in(&self, org: &str, ids: &[String]) -> Result<Vec<String>, Error> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT id FROM apps WHERE organization_id = $1 AND id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(org);
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(self.pool()).await.map_err(db_err)?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(db_err))
            .collect()
    }

    pub async fn app_count(&self, org: &str) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM apps WHERE organization_id = $1")
            .bind(org)
            .fetch_one(self.pool())
            .await
            .map_err(db_err)?;
        row.try_get("n").map_err(db_err)
    }

    /// Whether an upload exists in an organization.
    pub async fn upload_exists(&self, id: &str, org: &str) -> Result<bool, Error> {
        let row =
            sqlx::query("SELECT 1 AS one FROM uploads WHERE id = $1 AND organization_id = $2")
                .bind(id)
                .bind(org)
                .fetch_optional(self.pool())
                .await
                .map_err(db_err)?;
        Ok(row.is_some())
    }

    /// The organization of an upload.
    pub async fn upload_org(&self, id: &str) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT organization_id FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.map(|r| r.try_get::<String, _>("organization_id").map_err(db_err))
            .transpose()
    }

    /// Healthy, wanted instances with an address, for the router:
    /// `(app name, instance id, ip, port)`.
    pub async fn routable_instances(&self) -> Result<Vec<Route>, Error> {
        let rows = sqlx::query(
        "SELECT a.name, a.traffic, i.id, i.ip, i.port, i.version FROM instances i JOIN apps a ON a.id = i.app_id
             WHERE i.status = 'healthy' AND i.desired = 'running' AND i.ip IS NOT NULL AND i.port IS NOT NULL
             ORDER BY a.name, i.created_at, i.id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        // (app, instance, ip, port, version, the app's version weights)
        type Row = (
            String,
            String,
            String,
            i64,
            i64,
            Option<std::collections::BTreeMap<String, u32>>,
        );
        let mut all: Vec<Row> = vec![];
        for r in &rows {
            let traffic: Option<String> = r.try_get("traffic").map_err(db_err)?;
            let app: String = r.try_get("name").map_err(db_err)?;
            let traffic = match traffic {
                None => None,
                Some(t) => Some(crate::doc("apps", &app, "traffic", &t)?),
            };
            all.push((
                r.try_get("name").map_err(db_err)?,
                r.try_get("id").map_err(db_err)?,
                r.try_get("ip").map_err(db_err)?,
                r.try_get("port").map_err(db_err)?,
                r.try_get("version").map_err(db_err)?,
                traffic,
            ));
        }
        // An app's `traffic` splits its requests between versions (a
        // version's share spread evenly over its healthy instances);
        // versions it does not name get none. Without it, all alike.
        let mut per_version: std::collections::HashMap<(String, i64), u32> = Default::default();
        for (app, _, _, _, v, _) in &all {
            *per_version.entry((app.clone(), *v)).or_default() += 1;
        }
        let mut out = vec![];
        for (app, id, ip, port, v, traffic) in all {
            let weight = match &traffic {
                None => 1000,
                Some(w) => {
                    let share = w.get(&v.to_string()).copied().unwrap_or(0);
                    let n = per_version
                        .get(&(app.clone(), v))
                        .copied()
                        .unwrap_or(1)
                        .max(1);
                    share * 1000 / n
                }
            };
            if weight > 0 {
                out.push((app, id, ip, port, weight));
            }
        }
        Ok(out)
    }

    /// Add what a router counted: per instance, (requests, errors).
    pub async fn add_instance_traffic(
        &self,
        counts: &std::collections::HashMap<String, (u64, u64)>,
    ) -> Result<(), Error> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
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
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        crate::commit(tx).await
    }

    /// Names of every app (the router answers 503, not 404, for these).
    pub async fn app_names(&self) -> Result<Vec<String>, Error> {
        let rows = sqlx::query("SELECT DISTINCT name FROM apps")
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("name").map_err(db_err))
            .collect()
    }
}

/// Instances a node should run (wanted and placed there), with their app rows.
pub async fn desired_on_node(tx: &mut Tx, node_id: &str) -> Result<Vec<(Instance, App)>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {} FROM instances WHERE node_id = $1 AND desired = 'running' ORDER BY created_at, id",
        INSTANCE_COLUMNS
    ))
    .bind(node_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    // Their apps, in one query (not one per instance).
    let app_rows = sqlx::query(&format!(
        "SELECT {} FROM apps t WHERE t.id IN
           (SELECT app_id FROM instances WHERE node_id = $1 AND desired = 'running')",
        APPS.columns
    ))
    .bind(node_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    let mut apps = std::collections::HashMap::new();
    for r in &app_rows {
        let a = from_row(r)?;
        apps.insert(a.id.clone(), a);
    }
    let mut out = vec![];
    for r in &rows {
        let i = instance_from_row(r)?;
        if let Some(a) = apps.get(&i.app_id) {
            out.push((i, a.clone()));
        }
    }
    Ok(out)
}

/// What the routers counted for these instances: (requests, errors).
pub async fn instance_traffic(tx: &mut Tx, ids: &[String]) -> Result<(i64, i64), Error> {
    let mut total = (0, 0);
    for id in ids {
        let row =
            sqlx::query("SELECT requests, errors FROM instance_traffic WHERE instance_id = $1")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_err)?;
        if let Some(r) = row {
            total.0 += r.try_get::<i64, _>("requests").map_err(db_err)?;
            total.1 += r.try_get::<i64, _>("errors").map_err(db_err)?;
        }
    }
    Ok(total)
}
