//! The WireGuard mesh between an organization's nodes: each node's public
//! key, port and overlay address (`node_overlay`, migration 0016).

use std::net::Ipv4Addr;

use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;

use crate::{db_err, Conn};

/// Overlay addresses: `10.90.0.1` … `10.90.255.254`, one per node.
pub const OVERLAY_NET: [u8; 2] = [10, 90];
pub const OVERLAY_PREFIX: u8 = 16;

/// A node on the mesh, as its peers configure it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Peer {
    pub node_id: String,
    pub public_key: String,
    pub port: i64,
    pub address: String,
    /// Where its WireGuard answers (the node's reported address).
    pub internal_ip: Option<String>,
}

/// Record `node_id`'s key and port (its agent's report); the node keeps
/// its address, or gets the lowest free one. True when anything changed
/// (the other nodes must learn it).
pub async fn report(
    db: &mut Conn,
    node_id: &str,
    public_key: &str,
    port: i64,
) -> Result<bool, Error> {
    let known: Option<(String, i64)> =
        sqlx::query_as("SELECT public_key, port FROM node_overlay WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&mut *db)
            .await
            .map_err(db_err)?;
    match known {
        Some((k, p)) if k == public_key && p == port => Ok(false),
        Some(_) => {
            sqlx::query(
                "UPDATE node_overlay SET public_key = $1, port = $2, updated_at = $3 WHERE node_id = $4",
            )
            .bind(public_key)
            .bind(port)
            .bind(to_micros(now()))
            .bind(node_id)
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
            Ok(true)
        }
        None => {
            let used: Vec<String> = sqlx::query_scalar("SELECT address FROM node_overlay")
                .fetch_all(&mut *db)
                .await
                .map_err(db_err)?;
            let used: std::collections::HashSet<String> = used.into_iter().collect();
            let address = (1u32..0xfffe)
                .map(|n| {
                    Ipv4Addr::new(OVERLAY_NET[0], OVERLAY_NET[1], (n >> 8) as u8, n as u8)
                        .to_string()
                })
                .find(|a| !used.contains(a))
                .ok_or_else(|| {
                    Error::Conflict("the overlay network 10.90.0.0/16 is full".into())
                })?;
            // Two nodes reporting at once may pick the same address: the
            // UNIQUE constraint refuses the second (its agent reports again).
            sqlx::query(
                "INSERT INTO node_overlay (node_id, public_key, port, address, updated_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(node_id)
            .bind(public_key)
            .bind(port)
            .bind(&address)
            .bind(to_micros(now()))
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
            Ok(true)
        }
    }
}

/// Every node of `org` on the mesh.
pub async fn peers_of_org(db: &mut Conn, org: &str) -> Result<Vec<Peer>, Error> {
    sqlx::query_as::<_, Peer>(
        "SELECT o.node_id, o.public_key, o.port, o.address, n.internal_ip
         FROM node_overlay o JOIN nodes n ON n.id = o.node_id
         WHERE n.organization_id = $1 ORDER BY o.address",
    )
    .bind(org)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}
