//! Multi-step operations (volume restore, certificate order, database
//! provisioning, …): an ordered list of steps, each with an undo, whose
//! progress is a row of the store (`operations`), so that an operation
//! outlives the runner that started it.
//!
//! An operation's steps are one type implementing [`Step`] (an enum, one
//! variant per step, so that each step's name, work and undo are matched
//! in one place), and share a [`Step::State`] (JSON in the row: what the
//! steps made, so that their undos can find it). [`Operation::start`]
//! records an operation in the caller's unit of work; [`Operation::run`]
//! drives one; [`Operation::resume`] drives every one of its kind that no
//! runner holds (a controller's pass, so that nothing stays half done
//! after a crash).
//!
//! What the runner guarantees:
//! - Steps run in order, one at a time. After each one the index of the
//!   next and the state are saved, so a runner that crashes is resumed (by
//!   a restart or another replica) at the step after the last one saved: a
//!   saved step never runs again.
//! - A step that fails is undone, and then every step before it, in
//!   reverse order, each undo saved as it goes. The failed step's own undo
//!   runs too: an error does not prove a step did nothing (a timeout after
//!   the agent acted). The operation ends `undone`, the failure kept in
//!   `error`.
//! - An undo that fails leaves the operation `undo_failed` (the error in
//!   `undo_error`); that undo is tried again after
//!   [`Operation::retry_undo_after`], then the ones before it, until the
//!   operation is `undone`.
//! - One runner at a time: a runner claims the operation for a lease and
//!   renews it while a step runs. A runner that cannot renew it for two
//!   thirds of a lease stops its step; one that stalls instead writes
//!   nothing once another has claimed the operation (each claim counts an
//!   attempt, and every write names its attempt: a fencing token).
//!
//! What a step must do in return: tolerate being repeated. A crash (or a
//! lost lease, which cancels the step where it awaits) between a step's
//! work and the save after it runs the step again; the same holds for an
//! undo. And an undo must tolerate its step having done part of its work,
//! or none. The usual way: name what a step makes after the operation's id
//! (or after an id an earlier step chose and saved in the state), never
//! after a fresh random one, so that a repeat finds what the first try
//! made; and let "create" succeed when the thing exists already and
//! "delete" when it is gone already. A step's error means "give up and
//! undo": a step retries transient errors itself.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shellwego_core::model::{OperationId, OperationStatus};
use shellwego_core::Error;
use shellwego_store::operations::{self, Claim, NewOperation, Progress};
use shellwego_store::Tx;
use tokio::time::Instant;

use crate::ctx::ServerCtx;

/// One step of an operation whose steps share a `Self::State`.
pub trait Step: Send + Sync {
    /// What the operation's steps share, saved after every step and undo.
    type State: Serialize + DeserializeOwned + Send;

    /// For the operation's `error` and log lines (`copy_snapshot`).
    fn name(&self) -> &'static str;

    /// Do the step of operation `id`. May run more than once (see the
    /// module's notes).
    fn run(
        &self,
        ctx: &ServerCtx,
        id: &OperationId,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Undo what `run` did, all of it, part of it or none of it. May run
    /// more than once.
    fn undo(
        &self,
        ctx: &ServerCtx,
        id: &OperationId,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// What an operation acts on.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub organization_id: &'a str,
    /// `volume`
    pub resource_type: &'a str,
    /// `vol_…`
    pub resource_id: &'a str,
}

/// A kind of operation: its steps, in order.
pub struct Operation<St> {
    /// `<resource>.<verb>` (`volume.restore`), stored with each operation.
    pub kind: &'static str,
    pub steps: Vec<St>,
    /// How long a claim holds without a renewal (renewed every third of it
    /// while a step runs).
    pub lease: Duration,
    /// The pause before a failed undo is tried again.
    pub retry_undo_after: Duration,
}

/// How a call to [`Operation::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not driven: another runner holds it, it is finished, it is pausing
    /// before retrying an undo, or there is no such operation.
    NotClaimed,
    /// Driven until it stopped in this status: `succeeded` or `undone`
    /// (final), or `undo_failed` (retried after a pause).
    Ended(OperationStatus),
    /// Its claim was lost to another runner (this one could not renew it
    /// in time); stopped without writing more.
    Lost,
    /// The server is stopping: released between two steps, for the next
    /// start or another replica to resume.
    Stopped,
}

/// Where the runner is: the row's mutable part.
struct Position<S> {
    status: OperationStatus,
    step: usize,
    state: S,
    error: Option<String>,
    undo_error: Option<String>,
}

impl<St: Step> Operation<St> {
    pub fn new(kind: &'static str, steps: Vec<St>) -> Self {
        Operation {
            kind,
            steps,
            lease: Duration::from_secs(30),
            retry_undo_after: Duration::from_secs(60),
        }
    }

    /// Record a new operation of this kind, `running` from its first step,
    /// in the caller's transaction. Nothing runs yet: after the commit,
    /// call [`run`](Self::run) (or let the kind's controller resume it).
    pub async fn start(
        &self,
        tx: &mut Tx,
        target: Target<'_>,
        state: &St::State,
    ) -> Result<OperationId, Error> {
        let state = serde_json::to_string(state)
            .map_err(|e| Error::Internal(format!("a {} state: {e}", self.kind)))?;
        let op = operations::insert(
            tx,
            NewOperation {
                organization_id: target.organization_id,
                kind: self.kind,
                resource_type: target.resource_type,
                resource_id: target.resource_id,
                state: &state,
            },
        )
        .await?;
        Ok(op.id)
    }

    /// Drive every operation of this kind that no runner holds, one after
    /// another (a controller's pass). An operation that cannot be driven
    /// (its row does not parse) is logged and skipped.
    pub async fn resume(&self, ctx: &ServerCtx) -> Result<Vec<(OperationId, Outcome)>, Error> {
        let mut driven = Vec::new();
        let claimable = {
            let mut db = ctx.store.conn().await?;
            operations::claimable(&mut db, self.kind, 100).await?
        };
        for id in claimable {
            match self.run(ctx, &id).await {
                Ok(outcome) => driven.push((id, outcome)),
                Err(e) => {
                    tracing::warn!(operation = %id, kind = self.kind, error = %e, "operation not driven")
                }
            }
        }
        Ok(driven)
    }

    /// Claim operation `id` and drive it from where it stands until it
    /// ends, an undo fails, its claim is lost or the server stops.
    pub async fn run(&self, ctx: &ServerCtx, id: &OperationId) -> Result<Outcome, Error> {
        let claimed = {
            let mut db = ctx.store.conn().await?;
            operations::claim(&mut db, id, self.lease).await?
        };
        let Some(row) = claimed else {
            return Ok(Outcome::NotClaimed);
        };
        let kind = row.kind;
        let bad = |what: String| Error::Internal(format!("operation {id} ({kind}): {what}"));
        if kind != self.kind {
            return Err(bad(format!("not a {}", self.kind)));
        }
        let claim = Claim {
            id: id.clone(),
            attempt: row.attempts,
        };
        let state = serde_json::from_str(&row.state)
            .map_err(|e| bad(format!("its state does not parse: {e}")))?;
        let n = self.steps.len();
        let step = usize::try_from(row.step)
            .ok()
            .filter(|s| match row.status {
                OperationStatus::Running => *s <= n,
                OperationStatus::Undoing | OperationStatus::UndoFailed => *s < n,
                OperationStatus::Succeeded | OperationStatus::Undone => true,
            })
            .ok_or_else(|| bad(format!("step {} of {n} steps", row.step)))?;
        let mut at = Position {
            status: row.status,
            step,
            state,
            error: row.error,
            undo_error: row.undo_error,
        };
        loop {
            if *ctx.stopping.borrow() {
                let released = self.save(ctx, &claim, &at, Duration::ZERO).await?;
                return Ok(if released {
                    Outcome::Stopped
                } else {
                    Outcome::Lost
                });
            }
            match at.status {
                OperationStatus::Succeeded | OperationStatus::Undone => {
                    return Ok(Outcome::Ended(at.status));
                }
                OperationStatus::Running => match self.steps.get(at.step) {
                    None => at.status = OperationStatus::Succeeded,
                    Some(step) => {
                        let work = step.run(ctx, id, &mut at.state);
                        let Some(done) = self.renewing(ctx, &claim, work).await else {
                            return Ok(Outcome::Lost);
                        };
                        match done {
                            Ok(()) => {
                                tracing::debug!(operation = %id, step = step.name(), "step done");
                                at.step += 1;
                                if at.step == n {
                                    at.status = OperationStatus::Succeeded;
                                }
                            }
                            Err(e) => {
                                tracing::info!(operation = %id, step = step.name(), error = %e, "step failed; undoing");
                                at.status = OperationStatus::Undoing;
                                at.error = Some(format!("step `{}` failed: {e}", step.name()));
                            }
                        }
                    }
                },
                OperationStatus::Undoing | OperationStatus::UndoFailed => {
                    let Some(step) = self.steps.get(at.step) else {
                        return Err(bad(format!("no step {} to undo", at.step)));
                    };
                    let work = step.undo(ctx, id, &mut at.state);
                    let Some(done) = self.renewing(ctx, &claim, work).await else {
                        return Ok(Outcome::Lost);
                    };
                    match done {
                        Ok(()) => {
                            tracing::debug!(operation = %id, step = step.name(), "step undone");
                            at.undo_error = None;
                            match at.step.checked_sub(1) {
                                Some(before) => {
                                    at.step = before;
                                    at.status = OperationStatus::Undoing;
                                }
                                None => at.status = OperationStatus::Undone,
                            }
                        }
                        Err(e) => {
                            tracing::warn!(operation = %id, step = step.name(), error = %e, "undo failed; retried later");
                            at.status = OperationStatus::UndoFailed;
                            at.undo_error =
                                Some(format!("undoing step `{}` failed: {e}", step.name()));
                        }
                    }
                }
            }
            // Saved after every step and every undo, and held while it goes on.
            let hold = match at.status {
                OperationStatus::Running | OperationStatus::Undoing => self.lease,
                OperationStatus::UndoFailed => self.retry_undo_after,
                OperationStatus::Succeeded | OperationStatus::Undone => Duration::ZERO,
            };
            if !self.save(ctx, &claim, &at, hold).await? {
                return Ok(Outcome::Lost);
            }
            match at.status {
                OperationStatus::Running | OperationStatus::Undoing => {}
                OperationStatus::UndoFailed
                | OperationStatus::Succeeded
                | OperationStatus::Undone => return Ok(Outcome::Ended(at.status)),
            }
        }
    }

    /// Save `at` under `claim`, held for `hold`; false if the claim is lost.
    async fn save(
        &self,
        ctx: &ServerCtx,
        claim: &Claim,
        at: &Position<St::State>,
        hold: Duration,
    ) -> Result<bool, Error> {
        let state = serde_json::to_string(&at.state)
            .map_err(|e| Error::Internal(format!("operation {}: its state: {e}", claim.id)))?;
        let step = i64::try_from(at.step)
            .map_err(|_| Error::Internal(format!("operation {}: step {}", claim.id, at.step)))?;
        let mut db = ctx.store.conn().await?;
        operations::save(
            &mut db,
            claim,
            &Progress {
                status: at.status,
                step,
                state: &state,
                error: at.error.as_deref(),
                undo_error: at.undo_error.as_deref(),
            },
            hold,
        )
        .await
    }

    /// Run `work` (a step or an undo) while renewing the claim every third
    /// of a lease. `None`: the claim was lost, or not renewed for two
    /// thirds of a lease (another runner may claim it once the lease is
    /// out, so this one stops well before); `work` was dropped where it
    /// awaited.
    async fn renewing<T>(
        &self,
        ctx: &ServerCtx,
        claim: &Claim,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let renew = async {
            // The lease was taken or renewed just before this call.
            let mut held_until = Instant::now() + self.lease * 2 / 3;
            loop {
                tokio::time::sleep_until((Instant::now() + self.lease / 3).min(held_until)).await;
                let asked = Instant::now();
                let renewed = async {
                    let mut db = ctx.store.conn().await?;
                    operations::renew(&mut db, claim, self.lease).await
                };
                match tokio::time::timeout_at(held_until, renewed).await {
                    Ok(Ok(true)) => held_until = asked + self.lease * 2 / 3,
                    Ok(Ok(false)) => {
                        tracing::warn!(operation = %claim.id, "operation claimed by another runner; stopping");
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(operation = %claim.id, error = %e, "operation lease not renewed; trying again");
                    }
                    Err(_) => {
                        tracing::warn!(operation = %claim.id, "operation lease not renewed in time; stopping");
                        return;
                    }
                }
            }
        };
        tokio::select! {
            out = work => Some(out),
            () = renew => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde::Deserialize;
    use shellwego_core::plan::Plan;
    use shellwego_store::Store;
    use tokio::sync::watch;

    use super::*;

    /// A control plane's context on a migrated store, with an organization.
    struct Db {
        ctx: Arc<ServerCtx>,
        org: String,
        stop: watch::Sender<bool>,
        _dir: tempfile::TempDir,
        /// A scratch PostgreSQL database.
        pg: Option<shellwego_testkit::db::PgDb>,
    }

    impl Db {
        async fn open(
            dir: tempfile::TempDir,
            url: &str,
            pg: Option<shellwego_testkit::db::PgDb>,
        ) -> Db {
            let store = Store::connect(url).await.unwrap();
            store.migrate().await.unwrap();
            let mut tx = store.begin().await.unwrap();
            let org = shellwego_store::orgs::create(&mut tx, "Ops", "ops", Plan::Enterprise)
                .await
                .unwrap();
            shellwego_store::commit(tx).await.unwrap();
            let (stop, stopping) = watch::channel(false);
            let ctx = Arc::new(ServerCtx {
                store: store.clone(),
                bus: crate::bus::InProcessBus::new(),
                vault: crate::vault::Vault::new(
                    crate::vault::Keyring::load_or_create(dir.path(), None).unwrap(),
                ),
                config: crate::ctx::Settings::with_objects(crate::objects::Objects::Database(
                    store,
                )),
                stopping,
                replica: crate::leader::Replica::new(),
                fence: None,
            });
            Db {
                ctx,
                org: org.id,
                stop,
                _dir: dir,
                pg,
            }
        }

        async fn close(self) {
            self.ctx.store.close().await;
            if let Some(db) = self.pg {
                db.drop_now().await.unwrap();
            }
        }
    }

    /// A SQLite store, and a PostgreSQL one when
    /// SHELLWEGO_TEST_DATABASE_URL names a server.
    async fn backends() -> Vec<Db> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let mut dbs = vec![Db::open(dir, &url, None).await];
        if let Ok(server) = std::env::var("SHELLWEGO_TEST_DATABASE_URL") {
            let db = shellwego_testkit::db::PgDb::empty(&server, "swtest")
                .await
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let url = db.url().to_string();
            dbs.push(Db::open(dir, &url, Some(db)).await);
        }
        dbs
    }

    /// What the test steps share: the names of the steps whose work is
    /// in place (run adds, undo removes), as a real operation would keep
    /// the ids of what it made.
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Made {
        made: Vec<String>,
    }

    /// How a test step behaves.
    #[derive(Clone, Copy, PartialEq)]
    enum Act {
        Ok,
        Fail,
        /// Never ends (the runner crashes, or drops it).
        Hang,
    }

    /// A test step: records each call in a journal shared by a runner's
    /// steps, and fails, hangs or succeeds as told.
    struct Probe {
        name: &'static str,
        run: Act,
        /// How many of its undos fail before one succeeds.
        undo_failures: Mutex<u32>,
        journal: Arc<Mutex<Vec<String>>>,
    }

    impl Step for Probe {
        type State = Made;

        fn name(&self) -> &'static str {
            self.name
        }

        async fn run(&self, _: &ServerCtx, _: &OperationId, state: &mut Made) -> Result<(), Error> {
            self.journal
                .lock()
                .unwrap()
                .push(format!("run {}", self.name));
            match self.run {
                Act::Ok => {}
                Act::Fail => {
                    // Part of its work done before it fails: its undo must
                    // remove it.
                    state.made.push(self.name.into());
                    return Err(Error::Unavailable("the disk is full".into()));
                }
                Act::Hang => std::future::pending().await,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            state.made.push(self.name.into());
            Ok(())
        }

        async fn undo(
            &self,
            _: &ServerCtx,
            _: &OperationId,
            state: &mut Made,
        ) -> Result<(), Error> {
            self.journal
                .lock()
                .unwrap()
                .push(format!("undo {}", self.name));
            {
                let mut failures = self.undo_failures.lock().unwrap();
                if *failures > 0 {
                    *failures -= 1;
                    return Err(Error::Unavailable("the agent is away".into()));
                }
            }
            state.made.retain(|m| m != self.name);
            Ok(())
        }
    }

    /// A `test.op` runner over steps a, b, c, … behaving as `acts` says,
    /// with short leases; and its journal.
    fn probes(acts: &[Act], undo_failures: &[u32]) -> (Operation<Probe>, Arc<Mutex<Vec<String>>>) {
        const NAMES: [&str; 4] = ["a", "b", "c", "d"];
        let journal = Arc::new(Mutex::new(Vec::new()));
        let steps = acts
            .iter()
            .enumerate()
            .map(|(i, act)| Probe {
                name: NAMES[i],
                run: *act,
                undo_failures: Mutex::new(undo_failures.get(i).copied().unwrap_or(0)),
                journal: journal.clone(),
            })
            .collect();
        let mut op = Operation::new("test.op", steps);
        op.lease = Duration::from_secs(1);
        op.retry_undo_after = Duration::from_millis(200);
        (op, journal)
    }

    fn journal(j: &Mutex<Vec<String>>) -> Vec<String> {
        j.lock().unwrap().clone()
    }

    async fn start(db: &Db, op: &Operation<Probe>) -> OperationId {
        let mut tx = db.ctx.store.begin().await.unwrap();
        let id = op
            .start(
                &mut tx,
                Target {
                    organization_id: &db.org,
                    resource_type: "volume",
                    resource_id: "vol_1",
                },
                &Made::default(),
            )
            .await
            .unwrap();
        shellwego_store::commit(tx).await.unwrap();
        id
    }

    async fn row(db: &Db, id: &OperationId) -> shellwego_store::operations::Operation {
        let mut c = db.ctx.store.conn().await.unwrap();
        operations::get(&mut c, id).await.unwrap().unwrap()
    }

    fn made(row: &shellwego_store::operations::Operation) -> Vec<String> {
        serde_json::from_str::<Made>(&row.state).unwrap().made
    }

    #[tokio::test]
    async fn steps_run_in_order_once_each() {
        for db in backends().await {
            let (op, j) = probes(&[Act::Ok, Act::Ok, Act::Ok], &[]);
            let id = start(&db, &op).await;
            assert_eq!(
                op.run(&db.ctx, &id).await.unwrap(),
                Outcome::Ended(OperationStatus::Succeeded)
            );
            assert_eq!(journal(&j), ["run a", "run b", "run c"]);
            let r = row(&db, &id).await;
            assert_eq!(
                (r.status, r.step, r.attempts),
                (OperationStatus::Succeeded, 3, 1)
            );
            assert_eq!(made(&r), ["a", "b", "c"]);
            assert_eq!((r.error, r.undo_error), (None, None));
            // Finished: nobody drives it again.
            assert_eq!(op.run(&db.ctx, &id).await.unwrap(), Outcome::NotClaimed);
            assert!(op.resume(&db.ctx).await.unwrap().is_empty());
            db.close().await;
        }
    }

    #[tokio::test]
    async fn a_failure_at_any_step_undoes_it_and_every_step_before_in_reverse() {
        for db in backends().await {
            for failing in 0..3 {
                let mut acts = [Act::Ok; 3];
                acts[failing] = Act::Fail;
                let (op, j) = probes(&acts, &[]);
                let id = start(&db, &op).await;
                assert_eq!(
                    op.run(&db.ctx, &id).await.unwrap(),
                    Outcome::Ended(OperationStatus::Undone)
                );
                let names = ["a", "b", "c"];
                let mut want: Vec<String> = names[..=failing]
                    .iter()
                    .map(|n| format!("run {n}"))
                    .collect();
                want.extend(names[..=failing].iter().rev().map(|n| format!("undo {n}")));
                assert_eq!(journal(&j), want, "step {failing} failing");
                let r = row(&db, &id).await;
                assert_eq!((r.status, r.step), (OperationStatus::Undone, 0));
                assert!(made(&r).is_empty(), "everything made is removed");
                assert_eq!(
                    r.error.as_deref(),
                    Some(format!("step `{}` failed: the disk is full", names[failing]).as_str())
                );
                assert_eq!(r.undo_error, None);
            }
            db.close().await;
        }
    }

    #[tokio::test]
    async fn a_crashed_runner_is_resumed_after_its_last_saved_step() {
        for db in backends().await {
            // The first runner does a, then hangs in b; it crashes there.
            let (first, j1) = probes(&[Act::Ok, Act::Hang, Act::Ok], &[]);
            let id = start(&db, &first).await;
            let ctx = db.ctx.clone();
            let id1 = id.clone();
            let crashed = tokio::spawn(async move { first.run(&ctx, &id1).await });
            let t = Instant::now();
            while row(&db, &id).await.step < 1 {
                assert!(t.elapsed() < Duration::from_secs(5), "step a never saved");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            crashed.abort();
            assert_eq!(journal(&j1), ["run a", "run b"]);
            let saved = row(&db, &id).await;
            assert_eq!((saved.status, saved.step), (OperationStatus::Running, 1));
            assert_eq!(made(&saved), ["a"]);
            // Held until its lease runs out; then a new runner resumes at
            // b, and a does not run again.
            let (second, j2) = probes(&[Act::Ok, Act::Ok, Act::Ok], &[]);
            assert_eq!(second.run(&db.ctx, &id).await.unwrap(), Outcome::NotClaimed);
            tokio::time::sleep(second.lease).await;
            let resumed = second.resume(&db.ctx).await.unwrap();
            assert_eq!(
                resumed,
                [(id.clone(), Outcome::Ended(OperationStatus::Succeeded))]
            );
            assert_eq!(journal(&j2), ["run b", "run c"]);
            let r = row(&db, &id).await;
            assert_eq!(
                (r.status, r.step, r.attempts),
                (OperationStatus::Succeeded, 3, 2)
            );
            assert_eq!(made(&r), ["a", "b", "c"]);
            db.close().await;
        }
    }

    #[tokio::test]
    async fn a_failed_undo_is_kept_and_retried_after_a_pause() {
        for db in backends().await {
            // c fails; undoing b fails once.
            let (op, j) = probes(&[Act::Ok, Act::Ok, Act::Fail], &[0, 1, 0]);
            let id = start(&db, &op).await;
            assert_eq!(
                op.run(&db.ctx, &id).await.unwrap(),
                Outcome::Ended(OperationStatus::UndoFailed)
            );
            assert_eq!(journal(&j), ["run a", "run b", "run c", "undo c", "undo b"]);
            let r = row(&db, &id).await;
            assert_eq!((r.status, r.step), (OperationStatus::UndoFailed, 1));
            assert_eq!(
                r.error.as_deref(),
                Some("step `c` failed: the disk is full")
            );
            assert_eq!(
                r.undo_error.as_deref(),
                Some("undoing step `b` failed: the agent is away")
            );
            assert_eq!(made(&r), ["a", "b"]);
            // Not before the pause; then the undo of b again, and of a.
            assert_eq!(op.run(&db.ctx, &id).await.unwrap(), Outcome::NotClaimed);
            tokio::time::sleep(op.retry_undo_after).await;
            assert_eq!(
                op.resume(&db.ctx).await.unwrap(),
                [(id.clone(), Outcome::Ended(OperationStatus::Undone))]
            );
            assert_eq!(
                journal(&j)[5..],
                ["undo b".to_string(), "undo a".to_string()]
            );
            let r = row(&db, &id).await;
            assert_eq!((r.status, r.step), (OperationStatus::Undone, 0));
            assert_eq!(
                r.error.as_deref(),
                Some("step `c` failed: the disk is full")
            );
            assert_eq!(r.undo_error, None);
            assert!(made(&r).is_empty());
            db.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_runners_racing_for_one_operation_run_it_once() {
        for db in backends().await {
            let (one, j1) = probes(&[Act::Ok, Act::Ok, Act::Ok], &[]);
            let (two, j2) = probes(&[Act::Ok, Act::Ok, Act::Ok], &[]);
            let id = start(&db, &one).await;
            let (a, b) = tokio::join!(one.run(&db.ctx, &id), two.run(&db.ctx, &id));
            let mut outcomes = [a.unwrap(), b.unwrap()];
            outcomes.sort_by_key(|o| *o == Outcome::NotClaimed);
            assert_eq!(
                outcomes,
                [
                    Outcome::Ended(OperationStatus::Succeeded),
                    Outcome::NotClaimed
                ]
            );
            let mut ran = journal(&j1);
            ran.extend(journal(&j2));
            assert_eq!(ran, ["run a", "run b", "run c"]);
            assert_eq!(row(&db, &id).await.attempts, 1);
            db.close().await;
        }
    }

    #[tokio::test]
    async fn a_runner_whose_claim_is_taken_over_stops_and_writes_nothing() {
        for db in backends().await {
            let (stalled, j) = probes(&[Act::Ok, Act::Hang, Act::Ok], &[]);
            let id = start(&db, &stalled).await;
            let ctx = db.ctx.clone();
            let id1 = id.clone();
            let task = tokio::spawn(async move { stalled.run(&ctx, &id1).await });
            while row(&db, &id).await.step < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // As if its lease had run out (it stalled), another runner
            // claims the operation.
            sqlx::query("UPDATE operations SET lease_until = 0 WHERE id = $1")
                .bind(&id)
                .execute(db.ctx.store.pool())
                .await
                .unwrap();
            let mut c = db.ctx.store.conn().await.unwrap();
            let other = operations::claim(&mut c, &id, Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap();
            drop(c);
            assert_eq!(other.attempts, 2);
            // The stalled runner finds out at its next renewal and stops.
            let outcome = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(outcome.unwrap(), Outcome::Lost);
            assert_eq!(journal(&j), ["run a", "run b"]);
            let r = row(&db, &id).await;
            assert_eq!(
                (r.status, r.step, r.attempts),
                (OperationStatus::Running, 1, 2)
            );
            assert_eq!(made(&r), ["a"]);
            db.close().await;
        }
    }

    #[tokio::test]
    async fn a_stopping_server_releases_its_operations_between_steps() {
        for db in backends().await {
            let (op, j) = probes(&[Act::Ok, Act::Ok], &[]);
            let id = start(&db, &op).await;
            db.stop.send(true).unwrap();
            assert_eq!(op.run(&db.ctx, &id).await.unwrap(), Outcome::Stopped);
            assert!(journal(&j).is_empty());
            // Claimable at once by the next start.
            let mut c = db.ctx.store.conn().await.unwrap();
            assert_eq!(
                operations::claimable(&mut c, "test.op", 10).await.unwrap(),
                std::slice::from_ref(&id)
            );
            drop(c);
            db.close().await;
        }
    }

    #[tokio::test]
    async fn an_operation_of_another_kind_or_with_a_bad_state_is_an_error_naming_it() {
        for db in backends().await {
            let (op, _) = probes(&[Act::Ok], &[]);
            let id = start(&db, &op).await;
            let other = Operation::new("other.op", Vec::<Probe>::new());
            let e = other.run(&db.ctx, &id).await.unwrap_err().to_string();
            assert!(
                e.contains(id.as_str()) && e.contains("not a other.op"),
                "{e}"
            );
            sqlx::query("UPDATE operations SET state = '[1]', lease_until = 0 WHERE id = $1")
                .bind(&id)
                .execute(db.ctx.store.pool())
                .await
                .unwrap();
            let e = op.run(&db.ctx, &id).await.unwrap_err().to_string();
            assert!(
                e.contains(id.as_str()) && e.contains("state does not parse"),
                "{e}"
            );
            db.close().await;
        }
    }
}
