//! Multi-step operations: the persisted progress of the server's step
//! runner (`shellwego_server::steps`), one row per operation. What the
//! words mean is in [`OperationStatus`]; the runner's guarantees are in its
//! module.
//!
//! Claims: several control-plane replicas may share one PostgreSQL, and
//! only one of them may drive an operation at a time. A runner claims an
//! unfinished operation whose lease has run out ([`claim`]:
//! one conditional `UPDATE`, so two claimants cannot both win), which
//! counts one more attempt; every later write names that attempt
//! ([`Claim`]), so a runner that lost its claim (it stalled past its lease
//! and another claimed the operation) writes nothing more: the attempt
//! number is the fencing token. Leases are compared with the replicas'
//! clocks, which must agree to well within a lease.

use std::time::Duration;

use shellwego_core::model::{OperationId, OperationStatus};
use shellwego_core::time::{now, to_micros};
use shellwego_core::Error;

use crate::{db_err, Conn};

/// An operation row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Operation {
    pub id: OperationId,
    pub organization_id: String,
    /// `<resource>.<verb>` (`volume.restore`): which steps it runs.
    pub kind: String,
    pub resource_type: String,
    pub resource_id: String,
    pub status: OperationStatus,
    /// Running: the next step to run. Undoing, undo_failed: the next step
    /// to undo.
    pub step: i64,
    /// The JSON the steps share.
    pub state: String,
    /// Why it is being (or was) undone.
    pub error: Option<String>,
    /// The last undo that failed, while `undo_failed`.
    pub undo_error: Option<String>,
    /// How many times a runner claimed it (the newest claim's number).
    pub attempts: i64,
    /// No runner claims it before this time (microseconds).
    pub lease_until: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, organization_id, kind, resource_type, resource_id, status, step, state, error, undo_error, attempts, lease_until, created_at, updated_at";

/// An operation to start.
#[derive(Debug, Clone, Copy)]
pub struct NewOperation<'a> {
    pub organization_id: &'a str,
    pub kind: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    /// The steps' starting state, as JSON.
    pub state: &'a str,
}

/// One runner's claim on an operation: its id and the attempt that
/// claimed it. Writes made under a claim that another has replaced match
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: OperationId,
    pub attempt: i64,
}

/// Where an operation stands after a step or an undo ([`save`]).
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub status: OperationStatus,
    pub step: i64,
    pub state: &'a str,
    pub error: Option<&'a str>,
    pub undo_error: Option<&'a str>,
}

/// `status IN ('running', …)` over [`OperationStatus::UNFINISHED`] (fixed
/// words of ours, so written into the SQL rather than bound).
fn unfinished() -> String {
    let names: Vec<String> = OperationStatus::UNFINISHED
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("status IN ({})", names.join(", "))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Start an operation, in the caller's transaction (so that it exists if
/// and only if the change that needs it commits). It is `running` at step
/// 0, and claimable at once.
pub async fn insert(db: &mut Conn, new: NewOperation<'_>) -> Result<Operation, Error> {
    let t = to_micros(now());
    let op = Operation {
        id: OperationId::new(),
        organization_id: new.organization_id.to_string(),
        kind: new.kind.to_string(),
        resource_type: new.resource_type.to_string(),
        resource_id: new.resource_id.to_string(),
        status: OperationStatus::Running,
        step: 0,
        state: new.state.to_string(),
        error: None,
        undo_error: None,
        attempts: 0,
        lease_until: 0,
        created_at: t,
        updated_at: t,
    };
    sqlx::query(&format!(
        "INSERT INTO operations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&op.id)
    .bind(&op.organization_id)
    .bind(&op.kind)
    .bind(&op.resource_type)
    .bind(&op.resource_id)
    .bind(op.status)
    .bind(op.step)
    .bind(&op.state)
    .bind(&op.error)
    .bind(&op.undo_error)
    .bind(op.attempts)
    .bind(op.lease_until)
    .bind(op.created_at)
    .bind(op.updated_at)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(op)
}

pub async fn get(db: &mut Conn, id: &OperationId) -> Result<Option<Operation>, Error> {
    sqlx::query_as::<_, Operation>(&format!("SELECT {COLUMNS} FROM operations WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

/// Claim an unfinished operation whose lease has run out, for `lease`:
/// counts one more attempt and returns the row as claimed (its
/// `attempts` is the claim's). `None`: it is finished, held by another
/// runner (or pausing before a retry), or does not exist.
pub async fn claim(
    db: &mut Conn,
    id: &OperationId,
    lease: Duration,
) -> Result<Option<Operation>, Error> {
    let t = to_micros(now());
    sqlx::query_as::<_, Operation>(&format!(
        "UPDATE operations SET attempts = attempts + 1, lease_until = $2, updated_at = $3
         WHERE id = $1 AND {} AND lease_until <= $3
         RETURNING {COLUMNS}",
        unfinished()
    ))
    .bind(id)
    .bind(t.saturating_add(micros(lease)))
    .bind(t)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)
}

/// Save progress under `claim`, and hold the operation for `hold` more
/// (the lease while it runs, zero to let anyone claim it now, or the
/// pause before a retry). False: the claim was replaced, nothing was
/// written, and the caller must stop.
pub async fn save(
    db: &mut Conn,
    claim: &Claim,
    progress: &Progress<'_>,
    hold: Duration,
) -> Result<bool, Error> {
    let t = to_micros(now());
    let done = sqlx::query(
        "UPDATE operations SET status = $3, step = $4, state = $5, error = $6, undo_error = $7,
                               lease_until = $8, updated_at = $9
         WHERE id = $1 AND attempts = $2",
    )
    .bind(&claim.id)
    .bind(claim.attempt)
    .bind(progress.status)
    .bind(progress.step)
    .bind(progress.state)
    .bind(progress.error)
    .bind(progress.undo_error)
    .bind(t.saturating_add(micros(hold)))
    .bind(t)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected() == 1)
}

/// Extend `claim`'s lease to `lease` from now. False: the claim was
/// replaced (or the operation finished).
pub async fn renew(db: &mut Conn, claim: &Claim, lease: Duration) -> Result<bool, Error> {
    let t = to_micros(now());
    let done = sqlx::query(&format!(
        "UPDATE operations SET lease_until = $3 WHERE id = $1 AND attempts = $2 AND {}",
        unfinished()
    ))
    .bind(&claim.id)
    .bind(claim.attempt)
    .bind(t.saturating_add(micros(lease)))
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected() == 1)
}

/// Up to `limit` unfinished operations of `kind` that no runner holds,
/// oldest first: what a runner resumes.
pub async fn claimable(db: &mut Conn, kind: &str, limit: i64) -> Result<Vec<OperationId>, Error> {
    sqlx::query_scalar::<_, OperationId>(&format!(
        "SELECT id FROM operations WHERE kind = $1 AND {} AND lease_until <= $2
         ORDER BY created_at, id LIMIT $3",
        unfinished()
    ))
    .bind(kind)
    .bind(to_micros(now()))
    .bind(limit)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use shellwego_core::plan::Plan;

    /// Run `check` on a migrated SQLite store, and on a scratch PostgreSQL
    /// database when SHELLWEGO_TEST_DATABASE_URL names a server.
    async fn on_each_backend<F, Fut>(check: F)
    where
        F: Fn(Store, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let (store, org) = migrated(&url).await;
        check(store.clone(), org).await;
        store.close().await;
        if let Ok(server) = std::env::var("SHELLWEGO_TEST_DATABASE_URL") {
            let db = shellwego_testkit::db::PgDb::empty(&server, "swtest")
                .await
                .unwrap();
            let (store, org) = migrated(db.url()).await;
            check(store.clone(), org).await;
            store.close().await;
            db.drop_now().await.unwrap();
        }
    }

    /// A migrated store and an organization in it.
    async fn migrated(url: &str) -> (Store, String) {
        let store = Store::connect(url).await.unwrap();
        store.migrate().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let org = crate::orgs::create(&mut tx, "Ops", "ops", Plan::Enterprise)
            .await
            .unwrap();
        crate::commit(tx).await.unwrap();
        (store, org.id)
    }

    async fn start(store: &Store, org: &str, kind: &str) -> Operation {
        let mut tx = store.begin().await.unwrap();
        let op = insert(
            &mut tx,
            NewOperation {
                organization_id: org,
                kind,
                resource_type: "volume",
                resource_id: "vol_1",
                state: r#"{"n":1}"#,
            },
        )
        .await
        .unwrap();
        crate::commit(tx).await.unwrap();
        op
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn an_operation_is_stored_and_read_back_typed() {
        on_each_backend(|store, org| async move {
            let op = start(&store, &org, "volume.restore").await;
            assert!(op.id.as_str().starts_with("op_"));
            let read = get(&mut store.conn().await.unwrap(), &op.id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(read, op);
            assert_eq!(read.status, OperationStatus::Running);
            assert_eq!(read.state, r#"{"n":1}"#);
            let other = OperationId::new();
            assert_eq!(
                get(&mut store.conn().await.unwrap(), &other).await.unwrap(),
                None
            );
        })
        .await;
    }

    #[tokio::test]
    async fn one_claim_at_a_time_and_a_replaced_claim_writes_nothing() {
        on_each_backend(|store, org| async move {
            let op = start(&store, &org, "volume.restore").await;
            let first = claim(&mut store.conn().await.unwrap(), &op.id, LEASE)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(first.attempts, 1);
            assert!(first.lease_until > first.updated_at);
            // Held: nobody else claims it, and it is not listed.
            assert_eq!(
                claim(&mut store.conn().await.unwrap(), &op.id, LEASE)
                    .await
                    .unwrap(),
                None
            );
            assert!(
                claimable(&mut store.conn().await.unwrap(), "volume.restore", 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let first = Claim {
                id: op.id.clone(),
                attempt: first.attempts,
            };
            let progress = Progress {
                status: OperationStatus::Running,
                step: 1,
                state: r#"{"n":2}"#,
                error: None,
                undo_error: None,
            };
            assert!(renew(&mut store.conn().await.unwrap(), &first, LEASE)
                .await
                .unwrap());
            // Released (hold zero): claimable again, by a second runner.
            assert!(save(
                &mut store.conn().await.unwrap(),
                &first,
                &progress,
                Duration::ZERO
            )
            .await
            .unwrap());
            assert_eq!(
                claimable(&mut store.conn().await.unwrap(), "volume.restore", 10)
                    .await
                    .unwrap(),
                std::slice::from_ref(&op.id)
            );
            let second = claim(&mut store.conn().await.unwrap(), &op.id, LEASE)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((second.attempts, second.step), (2, 1));
            assert_eq!(second.state, r#"{"n":2}"#);
            // The first runner's claim is gone: its writes match nothing.
            let stale = Progress {
                step: 2,
                ..progress
            };
            assert!(
                !save(&mut store.conn().await.unwrap(), &first, &stale, LEASE)
                    .await
                    .unwrap()
            );
            assert!(!renew(&mut store.conn().await.unwrap(), &first, LEASE)
                .await
                .unwrap());
            assert_eq!(
                get(&mut store.conn().await.unwrap(), &op.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .step,
                1
            );
        })
        .await;
    }

    #[tokio::test]
    async fn finished_and_pausing_operations_are_not_claimable() {
        on_each_backend(|store, org| async move {
            let done = start(&store, &org, "volume.restore").await;
            let pausing = start(&store, &org, "volume.restore").await;
            let other_kind = start(&store, &org, "certificate.order").await;
            for (op, status, hold) in [
                (&done, OperationStatus::Succeeded, Duration::ZERO),
                (&pausing, OperationStatus::UndoFailed, LEASE),
            ] {
                let c = claim(&mut store.conn().await.unwrap(), &op.id, LEASE)
                    .await
                    .unwrap()
                    .unwrap();
                let claim = Claim {
                    id: op.id.clone(),
                    attempt: c.attempts,
                };
                let progress = Progress {
                    status,
                    step: 0,
                    state: "{}",
                    error: Some("step `copy` failed: disk full"),
                    undo_error: None,
                };
                assert!(
                    save(&mut store.conn().await.unwrap(), &claim, &progress, hold)
                        .await
                        .unwrap()
                );
            }
            assert!(
                claimable(&mut store.conn().await.unwrap(), "volume.restore", 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                claim(&mut store.conn().await.unwrap(), &done.id, LEASE)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                claim(&mut store.conn().await.unwrap(), &pausing.id, LEASE)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                claimable(&mut store.conn().await.unwrap(), "certificate.order", 10)
                    .await
                    .unwrap(),
                std::slice::from_ref(&other_kind.id)
            );
            let read = get(&mut store.conn().await.unwrap(), &done.id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(read.status, OperationStatus::Succeeded);
            assert_eq!(read.error.as_deref(), Some("step `copy` failed: disk full"));
        })
        .await;
    }
}
