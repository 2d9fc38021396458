//! Nodes: the machines apps run on. Registration and agents come with the
//! nodes issue; this module holds the table's queries and list definition.

use std::collections::BTreeMap;

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::model::NodeStatus;
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::list::{Arg, FieldSql, Resource, Sql};
use crate::{db_err, Store, Tx};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Node {
    pub id: String,
    pub organization_id: String,
    pub hostname: String,
    pub status: NodeStatus,
    pub region: String,
    pub zone: String,
    pub cpu_cores: i64,
    pub memory_total: i64,
    pub disk_total: i64,
    pub memory_available: i64,
    /// Millicores.
    pub cpu_available: i64,
    pub microvm_total: i64,
    pub microvm_used: i64,
    pub internal_ip: Option<String>,
    pub public_ip: Option<String>,
    pub kernel_version: Option<String>,
    pub firecracker_version: Option<String>,
    pub agent_version: Option<String>,
    pub last_seen: Option<Timestamp>,
    pub created_at: Timestamp,
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<String>,
    pub qemu_version: Option<String>,
}

pub static NODES: Resource = Resource {
    schema: &ListSchema {
        name: "nodes",
        fields: &[
            FieldSpec::new("hostname", Kind::Text),
            FieldSpec::new("status", Kind::Text).one_of(NodeStatus::NAMES),
            FieldSpec::new("region", Kind::Text),
            FieldSpec::new("zone", Kind::Text),
            FieldSpec::new("organization_id", Kind::Text).no_sort(),
            FieldSpec::new("capacity.cpu_cores", Kind::Int),
            FieldSpec::new("capacity.memory_total", Kind::Size),
            FieldSpec::new("capacity.disk_total", Kind::Size),
            FieldSpec::new("capacity.memory_available", Kind::Size),
            FieldSpec::new("created_at", Kind::Time),
            FieldSpec::new("updated_at", Kind::Time),
            FieldSpec::new("last_seen", Kind::Time),
        ],
        searchable: true,
        labels: true,
        default_sort: &[("created_at", Dir::Desc)],
    },
    from: "nodes t",
    columns: "t.id, t.organization_id, t.hostname, t.status, t.region, t.zone, t.cpu_cores, t.memory_total, t.disk_total, t.memory_available, t.cpu_available, t.microvm_total, t.microvm_used, t.internal_ip, t.public_ip, t.kernel_version, t.firecracker_version, t.agent_version, t.last_seen, t.created_at, t.drivers, t.qemu_version",
    fields: &[
        FieldSql::new("hostname", "t.hostname"),
        FieldSql::new("status", "t.status"),
        FieldSql::new("region", "t.region"),
        FieldSql::new("zone", "t.zone"),
        FieldSql::new("organization_id", "t.organization_id"),
        FieldSql::new("capacity.cpu_cores", "t.cpu_cores"),
        FieldSql::new("capacity.memory_total", "t.memory_total"),
        FieldSql::new("capacity.disk_total", "t.disk_total"),
        FieldSql::new("capacity.memory_available", "t.memory_available"),
        FieldSql::new("created_at", "t.created_at"),
        FieldSql::new("updated_at", "t.updated_at"),
        FieldSql::new("last_seen", "COALESCE(t.last_seen, 0)"),
    ],
    search: &["t.hostname", "t.region", "t.zone"],
    labels: Some("node"),
};

pub fn from_row(row: &AnyRow) -> Result<Node, Error> {
    let g = |c: &str| row.try_get::<i64, _>(c).map_err(db_err);
    let s = |c: &str| row.try_get::<Option<String>, _>(c).map_err(db_err);
    Ok(Node {
        id: row.try_get("id").map_err(db_err)?,
        organization_id: row.try_get("organization_id").map_err(db_err)?,
        hostname: row.try_get("hostname").map_err(db_err)?,
        status: row.try_get("status").map_err(db_err)?,
        region: row.try_get("region").map_err(db_err)?,
        zone: row.try_get("zone").map_err(db_err)?,
        cpu_cores: g("cpu_cores")?,
        memory_total: g("memory_total")?,
        disk_total: g("disk_total")?,
        memory_available: g("memory_available")?,
        cpu_available: g("cpu_available")?,
        microvm_total: g("microvm_total")?,
        microvm_used: g("microvm_used")?,
        internal_ip: s("internal_ip")?,
        public_ip: s("public_ip")?,
        kernel_version: s("kernel_version")?,
        firecracker_version: s("firecracker_version")?,
        agent_version: s("agent_version")?,
        last_seen: row
            .try_get::<Option<i64>, _>("last_seen")
            .map_err(db_err)?
            .map(from_micros),
        created_at: from_micros(g("created_at")?),
        labels: BTreeMap::new(),
        drivers: crate::json_col(row, "drivers")?,
        qemu_version: s("qemu_version")?,
    })
}

/// Insert a node and its labels. `n.id` is assigned when empty.
pub async fn insert(tx: &mut Tx, mut n: Node) -> Result<Node, Error> {
    if n.id.is_empty() {
        n.id = id::new_id("node");
    }
    let t = if n.created_at.timestamp() == 0 {
        to_micros(now())
    } else {
        to_micros(n.created_at)
    };
    n.created_at = from_micros(t);
    sqlx::query(
        "INSERT INTO nodes (id, organization_id, hostname, status, region, zone, cpu_cores, memory_total, disk_total, memory_available, cpu_available,
                            microvm_total, microvm_used, internal_ip, public_ip, kernel_version, firecracker_version, agent_version, last_seen, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $20)",
    )
    .bind(&n.id)
    .bind(&n.organization_id)
    .bind(&n.hostname)
    .bind(n.status)
    .bind(&n.region)
    .bind(&n.zone)
    .bind(n.cpu_cores)
    .bind(n.memory_total)
    .bind(n.disk_total)
    .bind(n.memory_available)
    .bind(n.cpu_available)
    .bind(n.microvm_total)
    .bind(n.microvm_used)
    .bind(&n.internal_ip)
    .bind(&n.public_ip)
    .bind(&n.kernel_version)
    .bind(&n.firecracker_version)
    .bind(&n.agent_version)
    .bind(n.last_seen.map(to_micros))
    .bind(t)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    put_labels(tx, &n.id, &n.labels, false).await?;
    Ok(n)
}

/// Set a node's labels: replacing all of them, or only the keys given.
async fn put_labels(
    tx: &mut Tx,
    node_id: &str,
    labels: &BTreeMap<String, String>,
    replace_all: bool,
) -> Result<(), Error> {
    if replace_all {
        sqlx::query("DELETE FROM labels WHERE resource_type = 'node' AND resource_id = $1")
            .bind(node_id)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
    }
    for (k, v) in labels {
        if !replace_all {
            sqlx::query(
                "DELETE FROM labels WHERE resource_type = 'node' AND resource_id = $1 AND key = $2",
            )
            .bind(node_id)
            .bind(k)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        sqlx::query("INSERT INTO labels (resource_type, resource_id, key, value) VALUES ('node', $1, $2, $3)")
            .bind(node_id)
            .bind(k)
            .bind(v)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

impl Store {
    /// Fill in the labels of `nodes` with one query.
    pub async fn load_node_labels(&self, nodes: &mut [Node]) -> Result<(), Error> {
        if nodes.is_empty() {
            return Ok(());
        }
        let mut sql = Sql::default();
        sql.push("SELECT resource_id, key, value FROM labels WHERE resource_type = 'node' AND resource_id IN (");
        for (i, n) in nodes.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.arg(Arg::Text(n.id.clone()));
        }
        sql.push(")");
        let rows = sql.query().fetch_all(self.pool()).await.map_err(db_err)?;
        for r in rows {
            let rid: String = r.try_get("resource_id").map_err(db_err)?;
            if let Some(n) = nodes.iter_mut().find(|n| n.id == rid) {
                n.labels.insert(
                    r.try_get("key").map_err(db_err)?,
                    r.try_get("value").map_err(db_err)?,
                );
            }
        }
        Ok(())
    }

    /// A node, if it belongs to one of `org_ids`.
    pub async fn node(&self, node_id: &str, org_ids: &[String]) -> Result<Option<Node>, Error> {
        let mut sql = Sql::default();
        sql.push("SELECT ")
            .push(NODES.columns)
            .push(" FROM nodes t WHERE t.id = ")
            .arg(Arg::Text(node_id.into()));
        sql.push(" AND t.organization_id IN (");
        if org_ids.is_empty() {
            sql.push("NULL");
        }
        for (i, o) in org_ids.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.arg(Arg::Text(o.clone()));
        }
        sql.push(")");
        let row = sql
            .query()
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let mut nodes = [from_row(&row)?];
        self.load_node_labels(&mut nodes).await?;
        let [n] = nodes;
        Ok(Some(n))
    }
}

/// What an agent reports about its host when it joins or syncs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostReport {
    pub hostname: String,
    pub cpu_cores: i64,
    pub memory_total: i64,
    pub memory_available: i64,
    pub disk_total: i64,
    pub kernel_version: Option<String>,
    pub agent_version: Option<String>,
    pub firecracker_version: Option<String>,
    pub qemu_version: Option<String>,
    pub drivers: Vec<String>,
    pub kvm: bool,
    /// Given by the agent's flags; empty keeps what registration set.
    pub region: String,
    pub zone: String,
    /// Merged over the labels set at registration.
    pub labels: BTreeMap<String, String>,
}

/// Register a node (organization, hostname, region, zone and labels from
/// `node`) that an agent will join with the returned one-time token
/// (`sw_join_…`, valid for `valid_for`).
pub async fn register(
    tx: &mut Tx,
    node: Node,
    capabilities: &serde_json::Value,
    valid_for: std::time::Duration,
) -> Result<(Node, String), Error> {
    let (secret, hash) = shellwego_core::token::secret_with_prefix("sw_join_");
    let node = insert(
        tx,
        Node {
            status: NodeStatus::Joining,
            ..node
        },
    )
    .await?;
    let expires = to_micros(now()) + i64::try_from(valid_for.as_micros()).unwrap_or(0);
    sqlx::query("UPDATE nodes SET join_token_hash = $1, join_expires_at = $2, capabilities = $3 WHERE id = $4")
        .bind(&hash)
        .bind(expires)
        .bind(crate::to_json(capabilities))
        .bind(&node.id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok((node, secret))
}

/// Exchange a join token for a node credential (`nsec_…`): once, before it
/// expires. Records what the host reported and marks the node ready.
/// Returns `(node id, organization id, credential)`.
pub async fn join(
    tx: &mut Tx,
    join_secret: &str,
    r: &HostReport,
) -> Result<Option<(String, String, String)>, Error> {
    let lock = if tx.backend_name() == "PostgreSQL" {
        " FOR UPDATE"
    } else {
        ""
    };
    let row = sqlx::query(&format!(
        "SELECT id, organization_id, join_expires_at, capabilities FROM nodes WHERE join_token_hash = $1{lock}"
    ))
    .bind(shellwego_core::token::hash(join_secret))
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let expires: Option<i64> = row.try_get("join_expires_at").map_err(db_err)?;
    if expires.is_none_or(|e| e <= to_micros(now())) {
        return Ok(None);
    }
    let id: String = row.try_get("id").map_err(db_err)?;
    let org: String = row.try_get("organization_id").map_err(db_err)?;
    let mut caps: serde_json::Value = crate::json_col(&row, "capabilities")?;
    if !caps.is_object() {
        caps = serde_json::json!({});
    }
    caps["kvm"] = serde_json::Value::Bool(r.kvm);
    let (credential, cred_hash) = shellwego_core::token::secret_with_prefix("nsec_");
    let t = to_micros(now());
    sqlx::query(
        "UPDATE nodes SET join_token_hash = NULL, join_expires_at = NULL, credential_hash = $1, status = 'ready', last_seen = $2, updated_at = $2,
                hostname = CASE WHEN $3 = '' THEN hostname ELSE $3 END, cpu_cores = $4, memory_total = $5, memory_available = $6, disk_total = $7,
                cpu_available = $8, kernel_version = $9, agent_version = $10, firecracker_version = $11, qemu_version = $12, drivers = $13,
                capabilities = $14
         WHERE id = $15",
    )
    .bind(&cred_hash)
    .bind(t)
    .bind(&r.hostname)
    .bind(r.cpu_cores)
    .bind(r.memory_total)
    .bind(r.memory_available)
    .bind(r.disk_total)
    .bind(r.cpu_cores.saturating_mul(1000))
    .bind(&r.kernel_version)
    .bind(&r.agent_version)
    .bind(&r.firecracker_version)
    .bind(&r.qemu_version)
    .bind(crate::to_json(&r.drivers))
    .bind(crate::to_json(&caps))
    .bind(&id)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    sqlx::query("UPDATE nodes SET region = CASE WHEN $1 = '' THEN region ELSE $1 END, zone = CASE WHEN $2 = '' THEN zone ELSE $2 END WHERE id = $3")
        .bind(&r.region)
        .bind(&r.zone)
        .bind(&id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    put_labels(tx, &id, &r.labels, false).await?;
    Ok(Some((id, org, credential)))
}

/// The node a credential belongs to: `(id, organization id, generation)`.
impl Store {
    /// The node's desired-state generation.
    pub async fn node_generation(&self, node_id: &str) -> Result<i64, Error> {
        let row = sqlx::query("SELECT generation FROM nodes WHERE id = $1")
            .bind(node_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.map(|r| r.try_get::<i64, _>("generation").map_err(db_err))
            .transpose()
            .map(|g| g.unwrap_or(-1))
    }

    pub async fn node_by_credential(
        &self,
        credential: &str,
    ) -> Result<Option<(String, String, i64)>, Error> {
        let row = sqlx::query(
            "SELECT id, organization_id, generation FROM nodes WHERE credential_hash = $1",
        )
        .bind(shellwego_core::token::hash(credential))
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok::<_, Error>((
                r.try_get("id").map_err(db_err)?,
                r.try_get("organization_id").map_err(db_err)?,
                r.try_get("generation").map_err(db_err)?,
            ))
        })
        .transpose()
    }

    /// Nodes not heard from since `cutoff` that are not offline yet.
    pub async fn stale_nodes(
        &self,
        cutoff_micros: i64,
    ) -> Result<Vec<(String, String, Option<i64>)>, Error> {
        let rows = sqlx::query(
            "SELECT id, organization_id, last_seen FROM nodes WHERE status <> 'offline' AND credential_hash IS NOT NULL AND (last_seen IS NULL OR last_seen < $1)",
        )
        .bind(cutoff_micros)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id").map_err(db_err)?,
                    r.try_get("organization_id").map_err(db_err)?,
                    r.try_get("last_seen").map_err(db_err)?,
                ))
            })
            .collect()
    }
}

/// A heartbeat: the node is alive. An offline node comes back with the
/// status it had before (ready, draining or maintenance). Returns true when
/// it came back.
pub async fn heartbeat(
    tx: &mut Tx,
    node_id: &str,
    memory_available: Option<i64>,
    internal_ip: Option<&str>,
) -> Result<bool, Error> {
    let t = to_micros(now());
    let back = sqlx::query(
        "UPDATE nodes SET status = COALESCE(status_before_offline, 'ready'), status_before_offline = NULL, updated_at = $1 WHERE id = $2 AND status = 'offline'",
    )
    .bind(t)
    .bind(node_id)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?
    .rows_affected()
        == 1;
    sqlx::query("UPDATE nodes SET last_seen = $1, memory_available = COALESCE($2, memory_available), internal_ip = COALESCE($3, internal_ip) WHERE id = $4")
        .bind(t)
        .bind(memory_available)
        .bind(internal_ip)
        .bind(node_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(back)
}

/// Mark a node offline if it is not already and has still not been heard
/// from since `cutoff` (a heartbeat racing this check wins). True when this
/// call did it.
pub async fn mark_offline(tx: &mut Tx, node_id: &str, cutoff_micros: i64) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE nodes SET status_before_offline = status, status = 'offline', updated_at = $1
         WHERE id = $2 AND status <> 'offline' AND (last_seen IS NULL OR last_seen < $3)",
    )
    .bind(to_micros(now()))
    .bind(node_id)
    .bind(cutoff_micros)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// Change status and/or replace labels.
pub async fn update(
    tx: &mut Tx,
    node_id: &str,
    status: Option<NodeStatus>,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<(), Error> {
    sqlx::query("UPDATE nodes SET status = COALESCE($1, status), updated_at = $2 WHERE id = $3")
        .bind(status)
        .bind(to_micros(now()))
        .bind(node_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    if let Some(labels) = labels {
        put_labels(tx, node_id, labels, true).await?;
    }
    Ok(())
}

pub async fn delete(tx: &mut Tx, node_id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM labels WHERE resource_type = 'node' AND resource_id = $1")
        .bind(node_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(node_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Record `seq` as the node's newest applied instance report, if it is
/// newer than the one recorded. False: an older report arrived late and
/// must not overwrite what a newer one said.
pub async fn claim_report_seq(tx: &mut Tx, node_id: &str, seq: i64) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE nodes SET report_seq = $1 WHERE id = $2 AND report_seq < $1")
        .bind(seq)
        .bind(node_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() > 0)
}

/// What the scheduler needs of a node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeRoom {
    pub id: String,
    pub organization_id: String,
    pub status: NodeStatus,
    pub region: String,
    pub zone: String,
    pub cpu_millis: i64,
    pub memory: i64,
    pub drivers: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub drain_batch: Option<i64>,
    pub drain_destinations: Vec<String>,
    pub drain_deadline: Option<i64>,
}

/// Nodes of an organization with what the scheduler needs, and the
/// resources held by instances on each (a stopping instance holds its
/// room until its agent reports it gone):
/// `(node, used memory, used millicores, instances)`.
pub async fn node_rooms(tx: &mut Tx, org: &str) -> Result<Vec<(NodeRoom, i64, i64, i64)>, Error> {
    let rows = sqlx::query(
        "SELECT n.id, n.organization_id, n.status, n.region, n.zone, n.cpu_cores, n.memory_total, n.drivers, n.drain_batch, n.drain_destinations, n.drain_deadline,
                CAST(COALESCE(SUM(i.memory), 0) AS BIGINT) AS used_memory,
                CAST(COALESCE(SUM(i.cpu_millis), 0) AS BIGINT) AS used_cpu,
                COUNT(i.id) AS used_slots
         FROM nodes n LEFT JOIN instances i ON i.node_id = n.id
         WHERE n.organization_id = $1 AND n.credential_hash IS NOT NULL
         GROUP BY n.id, n.organization_id, n.status, n.region, n.zone, n.cpu_cores, n.memory_total, n.drivers, n.drain_batch, n.drain_destinations, n.drain_deadline
         ORDER BY n.id",
    )
    .bind(org)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id").map_err(db_err)?;
        let n = NodeRoom {
            organization_id: r.try_get("organization_id").map_err(db_err)?,
            status: r.try_get("status").map_err(db_err)?,
            region: r.try_get("region").map_err(db_err)?,
            zone: r.try_get("zone").map_err(db_err)?,
            cpu_millis: r
                .try_get::<i64, _>("cpu_cores")
                .map_err(db_err)?
                .saturating_mul(1000),
            memory: r.try_get("memory_total").map_err(db_err)?,
            drivers: crate::json_col(r, "drivers")?,
            labels: Default::default(),
            drain_batch: r.try_get("drain_batch").map_err(db_err)?,
            drain_destinations: match r
                .try_get::<Option<String>, _>("drain_destinations")
                .map_err(db_err)?
            {
                None => vec![],
                Some(s) => crate::doc("nodes", &id, "drain_destinations", &s)?,
            },
            id,
            drain_deadline: r.try_get("drain_deadline").map_err(db_err)?,
        };
        out.push((
            n,
            r.try_get("used_memory").map_err(db_err)?,
            r.try_get("used_cpu").map_err(db_err)?,
            r.try_get("used_slots").map_err(db_err)?,
        ));
    }
    let labels = sqlx::query_as::<_, (String, String, String)>(
        "SELECT l.resource_id, l.key, l.value FROM labels l JOIN nodes n ON n.id = l.resource_id
         WHERE l.resource_type = 'node' AND n.organization_id = $1",
    )
    .bind(org)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    for (id, k, v) in labels {
        if let Some((n, ..)) = out.iter_mut().find(|(n, ..)| n.id == id) {
            n.labels.insert(k, v);
        }
    }
    Ok(out)
}

/// Bump a node's generation so that its agent's waiting sync returns.
pub async fn bump_node(tx: &mut Tx, node_id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE nodes SET generation = generation + 1 WHERE id = $1")
        .bind(node_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Nodes of an organization registered whose agent has not joined yet.
pub async fn joining_nodes(tx: &mut Tx, org: &str) -> Result<i64, Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM nodes WHERE organization_id = $1 AND credential_hash IS NULL",
    )
    .bind(org)
    .fetch_one(&mut **tx)
    .await
    .map_err(db_err)?;
    row.try_get::<i64, _>("n").map_err(db_err)
}

/// Replacements under way (not healthy yet) for instances on `node_id`,
/// across every app: what a drain has in flight.
pub async fn drain_in_flight(tx: &mut Tx, node_id: &str) -> Result<i64, Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM instances n JOIN instances o ON o.id = n.replaces
         WHERE o.node_id = $1 AND n.desired = 'running' AND n.status <> 'healthy'",
    )
    .bind(node_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(n)
}

/// Start draining a node: no new placements, instances move elsewhere.
pub async fn start_drain(
    tx: &mut Tx,
    node_id: &str,
    batch: i64,
    destinations: &[String],
    deadline: i64,
    delete_when_drained: bool,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE nodes SET status = CASE WHEN status = 'offline' THEN status ELSE 'draining' END,
                          status_before_offline = CASE WHEN status = 'offline' THEN 'draining' ELSE status_before_offline END,
                          drain_batch = $1, drain_destinations = $2, drain_deadline = $3, delete_when_drained = $4, updated_at = $5
         WHERE id = $6",
    )
    .bind(batch)
    .bind(serde_json::to_string(destinations).unwrap_or_else(|_| "[]".into()))
    .bind(deadline)
    .bind(i64::from(delete_when_drained))
    .bind(to_micros(now()))
    .bind(node_id)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Instances (wanted) on a node.
pub async fn count_on_node(tx: &mut Tx, node_id: &str) -> Result<i64, Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE node_id = $1")
        .bind(node_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
    row.try_get("n").map_err(db_err)
}

impl Store {
    /// Nodes marked for deletion once drained that now run nothing.
    pub async fn drained_nodes_to_delete(&self) -> Result<Vec<(String, String)>, Error> {
        sqlx::query_as::<_, (String, String)>(
            "SELECT n.id, n.organization_id FROM nodes n WHERE n.delete_when_drained = 1
             AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.node_id = n.id)",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err)
    }

    /// Apps with instances on a node.
    /// What instances hold on each node: `(node, apps, reserved memory,
    /// reserved millicores)`, counting instances meant to run (what the
    /// scheduler counts).
    pub async fn node_loads(&self, ids: &[String]) -> Result<Vec<(String, i64, i64, i64)>, Error> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let marks: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT node_id, COUNT(DISTINCT app_id) AS n,
                    CAST(COALESCE(SUM(memory), 0) AS BIGINT) AS mem,
                    CAST(COALESCE(SUM(cpu_millis), 0) AS BIGINT) AS cpu
             FROM instances WHERE desired = 'running' AND node_id IN ({})
             GROUP BY node_id",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(self.pool()).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("node_id").map_err(db_err)?,
                    r.try_get("n").map_err(db_err)?,
                    r.try_get("mem").map_err(db_err)?,
                    r.try_get("cpu").map_err(db_err)?,
                ))
            })
            .collect()
    }
}
