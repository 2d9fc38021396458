//! Tasks for node agents (see migration 0021): written by the replica that
//! took a request, handed to the agent once, answered by it.

use shellwego_core::time::{now, to_micros, Timestamp};
use shellwego_core::Error;

use crate::{db_err, Conn};

pub struct NewTask<'a> {
    pub id: &'a str,
    pub node_id: &'a str,
    pub organization_id: &'a str,
    pub instance_id: &'a str,
    pub kind: &'a str,
    /// The task as the agent gets it (JSON).
    pub request: &'a str,
    pub expires_at: Timestamp,
}

pub async fn insert(db: &mut Conn, t: NewTask<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO agent_tasks (id, node_id, organization_id, instance_id, kind, request, status, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
    )
    .bind(t.id)
    .bind(t.node_id)
    .bind(t.organization_id)
    .bind(t.instance_id)
    .bind(t.kind)
    .bind(t.request)
    .bind(to_micros(now()))
    .bind(to_micros(t.expires_at))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// The node's unanswered tasks its agent does not have (`known`: the ids
/// it says it has), marked handed out: their requests, oldest first. A
/// task handed out in an answer the agent dropped is handed out again; one
/// it has is not (the agent runs each once). Pending tasks past their
/// pickup time are not handed out any more.
pub async fn take_pending(
    db: &mut Conn,
    node_id: &str,
    known: &[String],
) -> Result<Vec<String>, Error> {
    let at = to_micros(now());
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, request, status FROM agent_tasks WHERE node_id = $1
           AND (status = 'sent' OR (status = 'pending' AND expires_at > $2))
         ORDER BY created_at, id",
    )
    .bind(node_id)
    .bind(at)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, request, status) in rows {
        if known.contains(&id) {
            continue;
        }
        if status == "pending" {
            sqlx::query(
                "UPDATE agent_tasks SET status = 'sent' WHERE id = $1 AND status = 'pending'",
            )
            .bind(&id)
            .execute(&mut *db)
            .await
            .map_err(db_err)?;
        }
        out.push(request);
    }
    Ok(out)
}

/// Whether the node has tasks waiting to be handed out.
pub async fn has_pending(db: &mut Conn, node_id: &str) -> Result<bool, Error> {
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM agent_tasks WHERE node_id = $1 AND status = 'pending' AND expires_at > $2 LIMIT 1",
    )
    .bind(node_id)
    .bind(to_micros(now()))
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(id.is_some())
}

/// The agent's answer to its node's task; false when there is no such
/// task of that node still waiting for one.
pub async fn complete(db: &mut Conn, id: &str, node_id: &str, result: &str) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE agent_tasks SET status = 'done', result = $1 WHERE id = $2 AND node_id = $3 AND status IN ('pending', 'sent')",
    )
    .bind(result)
    .bind(id)
    .bind(node_id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// The result of a task, once done.
pub async fn result_of(db: &mut Conn, id: &str) -> Result<Option<String>, Error> {
    let r: Option<Option<String>> =
        sqlx::query_scalar("SELECT result FROM agent_tasks WHERE id = $1 AND status = 'done'")
            .bind(id)
            .fetch_optional(&mut *db)
            .await
            .map_err(db_err)?;
    Ok(r.flatten())
}

/// Forget a task (its requester has its answer, or has given up).
pub async fn delete(db: &mut Conn, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM agent_tasks WHERE id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Remove tasks that expired before `before` (requesters long gone).
pub async fn delete_expired(db: &mut Conn, before: Timestamp) -> Result<u64, Error> {
    let r = sqlx::query("DELETE FROM agent_tasks WHERE expires_at < $1")
        .bind(to_micros(before))
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected())
}
