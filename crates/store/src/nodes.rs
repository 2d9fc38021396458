//! Nodes: the machines apps run on. Registration and agents come with the
//! nodes issue; this module holds the table's queries and list definition.

use std::collections::BTreeMap;

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::model::NodeStatus;
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, Conn};

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
    /// Its WireGuard public key, once its agent reported one.
    pub wireguard_pubkey: Option<String>,
    /// Its latest measured usage (percentages), once its agent sampled.
    pub usage_cpu: Option<f64>,
    pub usage_memory: Option<f64>,
    pub usage_disk: Option<f64>,
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
    columns: "t.id, t.organization_id, t.hostname, t.status, t.region, t.zone, t.cpu_cores, t.memory_total, t.disk_total, t.memory_available, t.cpu_available, t.microvm_total, t.microvm_used, t.internal_ip, t.public_ip, t.kernel_version, t.firecracker_version, t.agent_version, t.last_seen, t.created_at, t.drivers, t.qemu_version, (SELECT o.public_key FROM node_overlay o WHERE o.node_id = t.id) AS wireguard_pubkey, t.usage_cpu, t.usage_memory, t.usage_disk",
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

/// A `nodes` row as stored ([`NODES`]' columns).
#[derive(sqlx::FromRow)]
struct NodeRow {
    id: String,
    organization_id: String,
    hostname: String,
    status: NodeStatus,
    region: String,
    zone: String,
    cpu_cores: i64,
    memory_total: i64,
    disk_total: i64,
    memory_available: i64,
    cpu_available: i64,
    microvm_total: i64,
    microvm_used: i64,
    internal_ip: Option<String>,
    public_ip: Option<String>,
    kernel_version: Option<String>,
    firecracker_version: Option<String>,
    agent_version: Option<String>,
    last_seen: Option<i64>,
    created_at: i64,
    drivers: String,
    qemu_version: Option<String>,
    wireguard_pubkey: Option<String>,
    usage_cpu: Option<f64>,
    usage_memory: Option<f64>,
    usage_disk: Option<f64>,
}

impl TryFrom<NodeRow> for Node {
    type Error = Error;
    fn try_from(r: NodeRow) -> Result<Node, Error> {
        Ok(Node {
            drivers: crate::doc("nodes", &r.id, "drivers", &r.drivers)?,
            id: r.id,
            organization_id: r.organization_id,
            hostname: r.hostname,
            status: r.status,
            region: r.region,
            zone: r.zone,
            cpu_cores: r.cpu_cores,
            memory_total: r.memory_total,
            disk_total: r.disk_total,
            memory_available: r.memory_available,
            cpu_available: r.cpu_available,
            microvm_total: r.microvm_total,
            microvm_used: r.microvm_used,
            internal_ip: r.internal_ip,
            public_ip: r.public_ip,
            kernel_version: r.kernel_version,
            firecracker_version: r.firecracker_version,
            agent_version: r.agent_version,
            last_seen: crate::opt_time(r.last_seen),
            created_at: crate::time(r.created_at),
            labels: BTreeMap::new(),
            qemu_version: r.qemu_version,
            wireguard_pubkey: r.wireguard_pubkey,
            usage_cpu: r.usage_cpu,
            usage_memory: r.usage_memory,
            usage_disk: r.usage_disk,
        })
    }
}

/// A node from a row of [`NODES`]' columns (without its labels).
pub fn from_row(row: &AnyRow) -> Result<Node, Error> {
    crate::decode::<NodeRow, _>(row)
}

/// Insert a node and its labels. `n.id` is assigned when empty.
pub async fn insert(db: &mut Conn, mut n: Node) -> Result<Node, Error> {
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
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    put_labels(db, &n.id, &n.labels, false).await?;
    Ok(n)
}

/// Set a node's labels: replacing all of them, or only the keys given.
async fn put_labels(
    db: &mut Conn,
    node_id: &str,
    labels: &BTreeMap<String, String>,
    replace_all: bool,
) -> Result<(), Error> {
    if replace_all {
        sqlx::query("DELETE FROM labels WHERE resource_type = 'node' AND resource_id = $1")
            .bind(node_id)
            .execute(&mut *db)
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
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
        }
        sqlx::query("INSERT INTO labels (resource_type, resource_id, key, value) VALUES ('node', $1, $2, $3)")
            .bind(node_id)
            .bind(k)
            .bind(v)
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// One label of a node.
#[derive(sqlx::FromRow)]
struct LabelRow {
    resource_id: String,
    key: String,
    value: String,
}

/// `$first, $first+1, …`: one placeholder per value.
fn marks(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fill in the labels of `nodes` with one query.
pub async fn load_labels(db: &mut Conn, nodes: &mut [Node]) -> Result<(), Error> {
    if nodes.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT resource_id, key, value FROM labels WHERE resource_type = 'node' AND resource_id IN ({})",
        marks(1, nodes.len())
    );
    let mut q = sqlx::query_as::<_, LabelRow>(&sql);
    for n in nodes.iter() {
        q = q.bind(n.id.clone());
    }
    for l in q.fetch_all(&mut *db).await.map_err(db_err)? {
        if let Some(n) = nodes.iter_mut().find(|n| n.id == l.resource_id) {
            n.labels.insert(l.key, l.value);
        }
    }
    Ok(())
}

/// A node, with its labels, if it belongs to one of `org_ids`.
pub async fn get_visible(
    db: &mut Conn,
    node_id: &str,
    org_ids: &[String],
) -> Result<Option<Node>, Error> {
    let orgs = if org_ids.is_empty() {
        "NULL".to_string()
    } else {
        marks(2, org_ids.len())
    };
    let sql = format!(
        "SELECT {} FROM nodes t WHERE t.id = $1 AND t.organization_id IN ({orgs})",
        NODES.columns
    );
    let mut q = sqlx::query_as::<_, NodeRow>(&sql).bind(node_id);
    for o in org_ids {
        q = q.bind(o);
    }
    let row = q.fetch_optional(&mut *db).await.map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let mut nodes = [Node::try_from(row)?];
    load_labels(db, &mut nodes).await?;
    let [n] = nodes;
    Ok(Some(n))
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
    db: &mut Conn,
    node: Node,
    capabilities: &serde_json::Value,
    valid_for: std::time::Duration,
) -> Result<(Node, String), Error> {
    let (secret, hash) = shellwego_core::token::secret_with_prefix("sw_join_");
    let node = insert(
        db,
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
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok((node, secret))
}

/// A node a join token stands for.
#[derive(sqlx::FromRow)]
struct JoiningRow {
    id: String,
    organization_id: String,
    join_expires_at: Option<i64>,
    capabilities: String,
}

/// A node that joined: what its agent is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub node_id: String,
    pub organization_id: String,
    /// The node's credential (`nsec_…`), shown once; only its hash is kept.
    pub credential: String,
}

/// Exchange a join token for a node credential (`nsec_…`): once, before it
/// expires. Records what the host reported and marks the node ready.
pub async fn join(
    db: &mut Conn,
    join_secret: &str,
    r: &HostReport,
) -> Result<Option<Joined>, Error> {
    let lock = if db.backend_name() == "PostgreSQL" {
        " FOR UPDATE"
    } else {
        ""
    };
    let row = sqlx::query_as::<_, JoiningRow>(&format!(
        "SELECT id, organization_id, join_expires_at, capabilities FROM nodes WHERE join_token_hash = $1{lock}"
    ))
    .bind(shellwego_core::token::hash(join_secret))
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    if row.join_expires_at.is_none_or(|e| e <= to_micros(now())) {
        return Ok(None);
    }
    let id = row.id;
    let org = row.organization_id;
    let mut caps: serde_json::Value = crate::doc("nodes", &id, "capabilities", &row.capabilities)?;
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
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    sqlx::query("UPDATE nodes SET region = CASE WHEN $1 = '' THEN region ELSE $1 END, zone = CASE WHEN $2 = '' THEN zone ELSE $2 END WHERE id = $3")
        .bind(&r.region)
        .bind(&r.zone)
        .bind(&id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    put_labels(db, &id, &r.labels, false).await?;
    Ok(Some(Joined {
        node_id: id,
        organization_id: org,
        credential,
    }))
}

/// The node's desired-state generation (-1: no such node).
pub async fn generation(db: &mut Conn, node_id: &str) -> Result<i64, Error> {
    let g: Option<i64> = sqlx::query_scalar("SELECT generation FROM nodes WHERE id = $1")
        .bind(node_id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(g.unwrap_or(-1))
}

/// The node a credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeCredential {
    pub id: String,
    pub organization_id: String,
    /// Its desired-state generation.
    pub generation: i64,
}

/// The node a credential belongs to.
pub async fn by_credential(
    db: &mut Conn,
    credential: &str,
) -> Result<Option<NodeCredential>, Error> {
    sqlx::query_as("SELECT id, organization_id, generation FROM nodes WHERE credential_hash = $1")
        .bind(shellwego_core::token::hash(credential))
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

/// A node not heard from lately.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StaleNode {
    pub id: String,
    pub organization_id: String,
    /// When it was last heard from (microseconds; never: none).
    pub last_seen: Option<i64>,
}

/// Nodes not heard from since `cutoff` that are not offline yet.
pub async fn stale(db: &mut Conn, cutoff_micros: i64) -> Result<Vec<StaleNode>, Error> {
    sqlx::query_as(
        "SELECT id, organization_id, last_seen FROM nodes WHERE status <> 'offline' AND credential_hash IS NOT NULL AND (last_seen IS NULL OR last_seen < $1)",
    )
    .bind(cutoff_micros)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// A heartbeat: the node is alive. An offline node comes back with the
/// status it had before (ready, draining or maintenance). Returns true when
/// it came back.
pub async fn heartbeat(
    db: &mut Conn,
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
    .execute(&mut *db)
    .await
    .map_err(db_err)?
    .rows_affected()
        == 1;
    sqlx::query("UPDATE nodes SET last_seen = $1, memory_available = COALESCE($2, memory_available), internal_ip = COALESCE($3, internal_ip) WHERE id = $4")
        .bind(t)
        .bind(memory_available)
        .bind(internal_ip)
        .bind(node_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(back)
}

/// Mark a node offline if it is not already and has still not been heard
/// from since `cutoff` (a heartbeat racing this check wins). True when this
/// call did it.
pub async fn mark_offline(db: &mut Conn, node_id: &str, cutoff_micros: i64) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE nodes SET status_before_offline = status, status = 'offline', updated_at = $1
         WHERE id = $2 AND status <> 'offline' AND (last_seen IS NULL OR last_seen < $3)",
    )
    .bind(to_micros(now()))
    .bind(node_id)
    .bind(cutoff_micros)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// Change status and/or replace labels.
pub async fn update(
    db: &mut Conn,
    node_id: &str,
    status: Option<NodeStatus>,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<(), Error> {
    sqlx::query("UPDATE nodes SET status = COALESCE($1, status), updated_at = $2 WHERE id = $3")
        .bind(status)
        .bind(to_micros(now()))
        .bind(node_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    if let Some(labels) = labels {
        put_labels(db, node_id, labels, true).await?;
    }
    Ok(())
}

pub async fn delete(db: &mut Conn, node_id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM labels WHERE resource_type = 'node' AND resource_id = $1")
        .bind(node_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(node_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Record `seq` as the node's newest applied instance report, if it is
/// newer than the one recorded. False: an older report arrived late and
/// must not overwrite what a newer one said.
pub async fn claim_report_seq(db: &mut Conn, node_id: &str, seq: i64) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE nodes SET report_seq = $1 WHERE id = $2 AND report_seq < $1")
        .bind(seq)
        .bind(node_id)
        .execute(&mut *db)
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

/// A node with what the scheduler needs, and what instances on it hold.
#[derive(sqlx::FromRow)]
struct NodeRoomRow {
    id: String,
    organization_id: String,
    status: NodeStatus,
    region: String,
    zone: String,
    cpu_cores: i64,
    memory_total: i64,
    drivers: String,
    drain_batch: Option<i64>,
    drain_destinations: Option<String>,
    drain_deadline: Option<i64>,
    used_memory: i64,
    used_cpu: i64,
    used_slots: i64,
}

impl TryFrom<NodeRoomRow> for NodeUse {
    type Error = Error;
    fn try_from(r: NodeRoomRow) -> Result<NodeUse, Error> {
        let room = NodeRoom {
            drivers: crate::doc("nodes", &r.id, "drivers", &r.drivers)?,
            drain_destinations: match &r.drain_destinations {
                None => vec![],
                Some(s) => crate::doc("nodes", &r.id, "drain_destinations", s)?,
            },
            id: r.id,
            organization_id: r.organization_id,
            status: r.status,
            region: r.region,
            zone: r.zone,
            cpu_millis: r.cpu_cores.saturating_mul(1000),
            memory: r.memory_total,
            labels: Default::default(),
            drain_batch: r.drain_batch,
            drain_deadline: r.drain_deadline,
        };
        Ok(NodeUse {
            room,
            memory: r.used_memory,
            cpu_millis: r.used_cpu,
            instances: r.used_slots,
        })
    }
}

/// A node's room and what the instances on it hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeUse {
    pub room: NodeRoom,
    /// Memory held by its instances.
    pub memory: i64,
    /// Millicores held by its instances.
    pub cpu_millis: i64,
    /// How many instances it holds.
    pub instances: i64,
}

/// Nodes of an organization with what the scheduler needs, and the
/// resources held by instances on each (a stopping instance holds its
/// room until its agent reports it gone).
pub async fn node_rooms(db: &mut Conn, org: &str) -> Result<Vec<NodeUse>, Error> {
    let rows = sqlx::query_as::<_, NodeRoomRow>(
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
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    let mut out: Vec<NodeUse> = crate::convert(rows)?;
    let labels = sqlx::query_as::<_, LabelRow>(
        "SELECT l.resource_id, l.key, l.value FROM labels l JOIN nodes n ON n.id = l.resource_id
         WHERE l.resource_type = 'node' AND n.organization_id = $1",
    )
    .bind(org)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    for l in labels {
        if let Some(u) = out.iter_mut().find(|u| u.room.id == l.resource_id) {
            u.room.labels.insert(l.key, l.value);
        }
    }
    Ok(out)
}

/// Bump a node's generation so that its agent's waiting sync returns.
/// Every node of `org` has something new to hear (the mesh changed).
pub async fn bump_org(db: &mut Conn, org: &str) -> Result<(), Error> {
    sqlx::query("UPDATE nodes SET generation = generation + 1 WHERE organization_id = $1")
        .bind(org)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn bump_node(db: &mut Conn, node_id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE nodes SET generation = generation + 1 WHERE id = $1")
        .bind(node_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The organization's nodes whose agents are syncing (joined, not offline).
pub async fn reachable_in_org(db: &mut Conn, org: &str) -> Result<Vec<String>, Error> {
    sqlx::query_scalar(
        "SELECT id FROM nodes WHERE organization_id = $1 AND credential_hash IS NOT NULL AND status <> $2 ORDER BY id",
    )
    .bind(org)
    .bind(shellwego_core::model::NodeStatus::Offline.as_str())
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// Nodes of an organization registered whose agent has not joined yet.
pub async fn joining_nodes(db: &mut Conn, org: &str) -> Result<i64, Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) AS n FROM nodes WHERE organization_id = $1 AND credential_hash IS NULL",
    )
    .bind(org)
    .fetch_one(&mut *db)
    .await
    .map_err(db_err)
}

/// Replacements under way (not healthy yet) for instances on `node_id`,
/// across every app: what a drain has in flight.
pub async fn drain_in_flight(db: &mut Conn, node_id: &str) -> Result<i64, Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM instances n JOIN instances o ON o.id = n.replaces
         WHERE o.node_id = $1 AND n.desired = 'running' AND n.status <> 'healthy'",
    )
    .bind(node_id)
    .fetch_one(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(n)
}

/// Start draining a node: no new placements, instances move elsewhere.
pub async fn start_drain(
    db: &mut Conn,
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
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Instances (wanted) on a node.
pub async fn count_on_node(db: &mut Conn, node_id: &str) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT COUNT(*) AS n FROM instances WHERE node_id = $1")
        .bind(node_id)
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)
}

/// A node to delete: marked for deletion once drained, and running nothing.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DrainedNode {
    pub id: String,
    pub organization_id: String,
}

/// Nodes marked for deletion once drained that now run nothing.
pub async fn drained_to_delete(db: &mut Conn) -> Result<Vec<DrainedNode>, Error> {
    sqlx::query_as(
        "SELECT n.id, n.organization_id FROM nodes n WHERE n.delete_when_drained = 1
         AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.node_id = n.id)",
    )
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

/// What the instances meant to run on a node hold (what the scheduler
/// counts).
#[derive(Debug, Clone, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct NodeLoad {
    pub node_id: String,
    /// How many apps have instances there.
    pub apps: i64,
    /// Memory reserved.
    pub memory: i64,
    /// Millicores reserved.
    pub cpu_millis: i64,
}

/// What instances hold on each of `ids` (nodes running nothing are left
/// out).
pub async fn loads(db: &mut Conn, ids: &[String]) -> Result<Vec<NodeLoad>, Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let sql = format!(
        "SELECT node_id, COUNT(DISTINCT app_id) AS apps,
                CAST(COALESCE(SUM(memory), 0) AS BIGINT) AS memory,
                CAST(COALESCE(SUM(cpu_millis), 0) AS BIGINT) AS cpu_millis
         FROM instances WHERE desired = 'running' AND node_id IN ({})
         GROUP BY node_id",
        marks(1, ids.len())
    );
    let mut q = sqlx::query_as::<_, NodeLoad>(&sql);
    for id in ids {
        q = q.bind(id);
    }
    q.fetch_all(&mut *db).await.map_err(db_err)
}
