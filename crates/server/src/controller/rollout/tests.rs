//! The rollout's transitions, table-driven and without a database: each
//! table is one deployment walked through what a controller would observe
//! pass after pass (a row's deployment is the previous row's result), and
//! each row says which stages are where, the deployment's status and the
//! effects. Stages are written one letter each, in order (`resolving_image`
//! … `completed`): `P` pending, `I` in progress, `C` completed, `F` failed.

use shellwego_core::model::{
    AppStatus, DeploymentStage, DeploymentStatus, DesiredState, InstanceStatus, StageStatus,
    Strategy,
};
use shellwego_store::apps::{App, Instance};
use shellwego_store::deployments::Deployment;

use super::*;

/// The deployment's start (µs).
const T0: i64 = 1_000_000_000_000;
const SEC: i64 = 1_000_000;

fn app(replicas: i64, version: i64, traffic: Option<&str>) -> App {
    App {
        id: "app_1".into(),
        organization_id: "org_1".into(),
        name: "web".into(),
        status: AppStatus::Deploying,
        desired_state: DesiredState::Running,
        replicas,
        version,
        memory: 256 << 20,
        cpu_millis: 500,
        traffic: traffic.map(str::to_string),
        ..Default::default()
    }
}

/// An instance `id` of `version`, placed on a node unless `pending`.
fn inst(id: &str, version: i64, status: InstanceStatus) -> Instance {
    Instance {
        id: id.into(),
        app_id: "app_1".into(),
        organization_id: "org_1".into(),
        node_id: (status != InstanceStatus::Pending).then(|| "node_1".into()),
        version,
        desired: DesiredState::Running,
        status,
        ..Default::default()
    }
}

fn with_reason(mut i: Instance, why: &str) -> Instance {
    i.status_reason = Some(why.into());
    i
}

fn old(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| inst(&format!("inst_old{k}"), 1, InstanceStatus::Healthy))
        .collect()
}

fn new(n: usize, status: InstanceStatus) -> Vec<Instance> {
    (0..n)
        .map(|k| inst(&format!("inst_new{k}"), 2, status))
        .collect()
}

fn both(a: Vec<Instance>, b: Vec<Instance>) -> Vec<Instance> {
    a.into_iter().chain(b).collect()
}

/// A deployment of v2 over v1 (none for a first deploy), just started.
fn deployment(strategy: Strategy, from: Option<i64>) -> Deployment {
    Deployment {
        id: "dep_2".into(),
        app_id: "app_1".into(),
        organization_id: "org_1".into(),
        status: DeploymentStatus::InProgress,
        version: 2,
        strategy,
        stages: DeploymentStage::initial(),
        options: Options::default(),
        from_version: from,
        started_at: Some(T0),
        created_at: T0,
        ..Default::default()
    }
}

/// What a pass sees: the app and its instances (no router counts).
fn observe<'a>(app: &'a App, insts: &'a [Instance]) -> Observed<'a> {
    Observed {
        app,
        insts,
        canary_traffic: (0, 0),
    }
}

fn stages(d: &Deployment) -> String {
    d.stages
        .iter()
        .map(|s| match s.status {
            StageStatus::Pending => 'P',
            StageStatus::InProgress => 'I',
            StageStatus::Completed => 'C',
            StageStatus::Failed => 'F',
        })
        .collect()
}

fn effects(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .map(|e| match e {
            Effect::Log(_) => "log".to_string(),
            Effect::Event { kind, .. } => format!("event {kind}"),
            Effect::Stop { instance, .. } => format!("stop {instance}"),
            Effect::SetTraffic(Some(t)) => format!("traffic {t}"),
            Effect::SetTraffic(None) => "traffic none".to_string(),
            Effect::RollBackTo(v) => format!("rollback v{v}"),
        })
        .collect()
}

/// One pass: what the controller observes, and what must follow.
struct Row {
    what: &'static str,
    app: App,
    insts: Vec<Instance>,
    canary_traffic: (i64, i64),
    /// Seconds after the start.
    at: i64,
    stages: &'static str,
    status: DeploymentStatus,
    effects: &'static [&'static str],
}

fn row(what: &'static str, app: App, insts: Vec<Instance>, at: i64) -> Row {
    Row {
        what,
        app,
        insts,
        canary_traffic: (0, 0),
        at,
        stages: "",
        status: DeploymentStatus::InProgress,
        effects: &[],
    }
}

impl Row {
    fn expect(mut self, stages: &'static str, effects: &'static [&'static str]) -> Row {
        self.stages = stages;
        self.effects = effects;
        self
    }
    fn status(mut self, s: DeploymentStatus) -> Row {
        self.status = s;
        self
    }
    fn traffic(mut self, requests: i64, errors: i64) -> Row {
        self.canary_traffic = (requests, errors);
        self
    }
}

/// Walk `d` through `rows`; returns the deployment after the last one.
fn walk(mut d: Deployment, rows: Vec<Row>) -> Deployment {
    for r in rows {
        let obs = Observed {
            app: &r.app,
            insts: &r.insts,
            canary_traffic: r.canary_traffic,
        };
        let (next, fx) = step(&d, &obs, T0 + r.at * SEC);
        assert_eq!(stages(&next), r.stages, "{}: stages", r.what);
        assert_eq!(next.status, r.status, "{}: status", r.what);
        assert_eq!(effects(&fx), r.effects, "{}: effects", r.what);
        // The same observation again changes nothing more (a pass that
        // finds nothing new is quiet), except where the clock decides.
        d = next;
    }
    d
}

/// Rolling and immediate move through every stage alike (they differ in
/// the controller's plan, not in the stages).
#[test]
fn rolling_and_immediate_walk_every_stage() {
    for strategy in [Strategy::Rolling, Strategy::Immediate] {
        let a = || app(2, 2, None);
        let d = walk(
            deployment(strategy, Some(1)),
            vec![
                row(
                    "nothing placed yet",
                    a(),
                    both(old(2), new(1, InstanceStatus::Pending)),
                    1,
                )
                .expect("IPPPPPP", &[]),
                row(
                    "a new instance is prepared",
                    a(),
                    both(old(2), new(1, InstanceStatus::Starting)),
                    2,
                )
                .expect("CCIPPPP", &[]),
                row(
                    "every new instance placed, none healthy",
                    a(),
                    both(old(2), new(2, InstanceStatus::Starting)),
                    3,
                )
                .expect("CCCIPPP", &[]),
                row(
                    "new instances healthy, old still there",
                    a(),
                    both(old(2), new(2, InstanceStatus::Healthy)),
                    4,
                )
                .expect("CCCCCIP", &["log"]),
                row(
                    "a quiet pass",
                    a(),
                    both(old(1), new(2, InstanceStatus::Healthy)),
                    5,
                )
                .expect("CCCCCIP", &[]),
                row(
                    "the old set is gone",
                    a(),
                    new(2, InstanceStatus::Healthy),
                    6,
                )
                .expect("CCCCCCC", &["log", "event app.deployed"])
                .status(DeploymentStatus::Successful),
            ],
        );
        assert_eq!(d.finished_at, Some(T0 + 6 * SEC));
        // A finished deployment no longer moves.
        let a = app(2, 2, None);
        let insts = new(2, InstanceStatus::Healthy);
        let obs = observe(&a, &insts);
        assert_eq!(step(&d, &obs, T0 + 7 * SEC), (d.clone(), vec![]));
    }
}

#[test]
fn a_first_deploy_completes_without_an_old_set() {
    let a = || app(1, 2, None);
    walk(
        deployment(Strategy::Rolling, None),
        vec![
            row("placed", a(), new(1, InstanceStatus::Starting), 1).expect("CCCIPPP", &[]),
            row(
                "every instance healthy",
                a(),
                new(1, InstanceStatus::Healthy),
                2,
            )
            .expect("CCCCCCC", &["log", "log", "event app.deployed"])
            .status(DeploymentStatus::Successful),
        ],
    );
}

#[test]
fn stage_reasons_say_why_a_rollout_waits() {
    let a = app(2, 2, None);
    let insts = both(
        old(2),
        vec![with_reason(
            inst("inst_new0", 2, InstanceStatus::Pending),
            "no node has 256 MiB free",
        )],
    );
    let obs = observe(&a, &insts);
    let (d, _) = step(&deployment(Strategy::Rolling, Some(1)), &obs, T0 + SEC);
    assert_eq!(
        d.stages[0].reason.as_deref(),
        Some("waiting for room: no node has 256 MiB free")
    );
    let mut in_place = deployment(Strategy::Rolling, Some(1));
    in_place.options.in_place = true;
    let (d, _) = step(&in_place, &obs, T0 + SEC);
    assert_eq!(
        d.stages[0].reason.as_deref(),
        Some("no room for a surge instance (no node has 256 MiB free): replacing in place, 1 at a time")
    );
}

#[test]
fn blue_green_switches_traffic_keeps_the_old_set_warm_then_completes() {
    let held = || app(2, 2, Some(r#"{"1":100}"#));
    let switched = || app(2, 2, Some(r#"{"2":100}"#));
    let d = walk(
        deployment(Strategy::BlueGreen, Some(1)),
        vec![
            row(
                "nothing placed yet",
                held(),
                both(old(2), new(2, InstanceStatus::Pending)),
                1,
            )
            .expect("IPPPPPP", &[]),
            row(
                "the second set starts",
                held(),
                both(old(2), new(2, InstanceStatus::Starting)),
                2,
            )
            .expect("CCCIPPP", &[]),
            row(
                "the second set is healthy: the switch",
                held(),
                both(old(2), new(2, InstanceStatus::Healthy)),
                3,
            )
            .expect("CCCCCIP", &[r#"traffic {"2":100}"#, "log"]),
            row(
                "warm: the old set stays",
                switched(),
                both(old(2), new(2, InstanceStatus::Healthy)),
                4,
            )
            .expect("CCCCCIP", &[]),
            row(
                "the old set is gone after the window",
                switched(),
                new(2, InstanceStatus::Healthy),
                400,
            )
            .expect("CCCCCCC", &["traffic none", "log", "event app.deployed"])
            .status(DeploymentStatus::Successful),
        ],
    );
    assert_eq!(d.finished_at, Some(T0 + 400 * SEC));
}

#[test]
fn blue_green_switch_window_is_the_warm_time() {
    let a = app(2, 2, Some(r#"{"1":100}"#));
    let insts = both(old(2), new(2, InstanceStatus::Healthy));
    let obs = observe(&a, &insts);
    let (d, _) = step(&deployment(Strategy::BlueGreen, Some(1)), &obs, T0);
    assert_eq!(d.wait_until, Some(T0 + Options::default().warm_ms * 1000));
    // The controller's plan holds the old set until then.
    assert!(plan(Some(&d), 2, T0 + SEC).hold_old);
    assert!(!plan(Some(&d), 2, d.wait_until.unwrap()).hold_old);
}

#[test]
fn canary_steps_through_its_shares_then_switches_and_completes() {
    let at = |t: &'static str| app(4, 2, Some(t));
    let d = deployment(Strategy::Canary, Some(1));
    let pause = d.options.canary_pause_ms / 1000;
    let d = walk(
        d,
        vec![
            row(
                "the canary instance starts",
                at(r#"{"1":100}"#),
                both(old(4), new(1, InstanceStatus::Starting)),
                1,
            )
            .expect("CCPPPPP", &[]),
            row(
                "the canary is healthy: 10%",
                at(r#"{"1":100}"#),
                both(old(4), new(1, InstanceStatus::Healthy)),
                2,
            )
            .expect("CCCCIPP", &[r#"traffic {"1":90,"2":10}"#, "log"]),
            row(
                "watching",
                at(r#"{"1":90,"2":10}"#),
                both(old(4), new(1, InstanceStatus::Healthy)),
                3,
            )
            .traffic(10, 0)
            .expect("CCCCIPP", &[]),
            row(
                "the pause is over: next step",
                at(r#"{"1":90,"2":10}"#),
                both(old(4), new(1, InstanceStatus::Healthy)),
                2 + pause,
            )
            .traffic(30, 0)
            .expect("CCCCIPP", &["log"]),
            row(
                "50%: its instances healthy",
                at(r#"{"1":90,"2":10}"#),
                both(old(4), new(2, InstanceStatus::Healthy)),
                3 + pause,
            )
            .expect("CCCCIPP", &[r#"traffic {"1":50,"2":50}"#, "log"]),
            row(
                "the pause is over: last step",
                at(r#"{"1":50,"2":50}"#),
                both(old(4), new(2, InstanceStatus::Healthy)),
                3 + 2 * pause,
            )
            .expect("CCCCIPP", &["log"]),
            row(
                "100%: every new instance healthy, the switch",
                at(r#"{"1":50,"2":50}"#),
                both(old(4), new(4, InstanceStatus::Healthy)),
                4 + 2 * pause,
            )
            .expect("CCCCCIP", &[r#"traffic {"2":100}"#, "log"]),
            row(
                "the old set is gone",
                at(r#"{"2":100}"#),
                new(4, InstanceStatus::Healthy),
                5 + 2 * pause,
            )
            .expect("CCCCCCC", &["traffic none", "log", "event app.deployed"])
            .status(DeploymentStatus::Successful),
        ],
    );
    assert_eq!(d.canary_step, 2);
}

#[test]
fn a_canary_answering_errors_is_rolled_back() {
    let insts = both(old(4), new(1, InstanceStatus::Healthy));
    let d = walk(
        deployment(Strategy::Canary, Some(1)),
        vec![
            // Too few requests to judge.
            row(
                "errors, but few requests",
                app(4, 2, Some(r#"{"1":100}"#)),
                insts.clone(),
                1,
            )
            .traffic(MIN_CANARY_REQUESTS - 1, MIN_CANARY_REQUESTS - 1)
            .expect("CCCCIPP", &[r#"traffic {"1":90,"2":10}"#, "log"]),
            row(
                "too many errors",
                app(4, 2, Some(r#"{"1":90,"2":10}"#)),
                insts,
                2,
            )
            .traffic(100, 30)
            .expect(
                "CCCCFPP",
                &[
                    "log",
                    "event deployment.failed",
                    "rollback v1",
                    "traffic none",
                    "log",
                ],
            )
            .status(DeploymentStatus::Failed),
        ],
    );
    assert!(d.reason.unwrap().contains("30 of 100 requests"));
}

/// Every failure, on each strategy it can meet: the stage in progress
/// fails, the app returns to the version that served (its new instances
/// that do not serve stop; for a blue-green, all of them), and the
/// deployment stays `failed` until the old version is whole again.
#[test]
fn failures_roll_back() {
    let crash_looping = {
        let mut i = inst("inst_new1", 2, InstanceStatus::Crashed);
        i.restarts = CRASH_LOOP_RESTARTS;
        i
    };
    let timeout = Options::default().health_check_timeout_ms / 1000;
    type Case = (
        &'static str,
        Strategy,
        Vec<Instance>,
        i64,
        &'static str,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "an instance cannot start",
            Strategy::Rolling,
            both(
                old(2),
                vec![
                    inst("inst_new0", 2, InstanceStatus::Healthy),
                    inst("inst_new1", 2, InstanceStatus::Failed),
                ],
            ),
            1,
            "FPPPPPP",
            &[
                "log",
                "event deployment.failed",
                "rollback v1",
                "traffic none",
                "stop inst_new1",
                "log",
            ],
        ),
        (
            "an instance crash-loops",
            Strategy::Immediate,
            both(
                old(2),
                vec![
                    inst("inst_new0", 2, InstanceStatus::Starting),
                    crash_looping.clone(),
                ],
            ),
            1,
            "FPPPPPP",
            &[
                "log",
                "event deployment.failed",
                "rollback v1",
                "traffic none",
                "stop inst_new0",
                "stop inst_new1",
                "log",
            ],
        ),
        (
            "not healthy in time",
            Strategy::Rolling,
            both(old(2), new(2, InstanceStatus::Starting)),
            timeout + 1,
            "FPPPPPP",
            &[
                "log",
                "event deployment.failed",
                "rollback v1",
                "traffic none",
                "stop inst_new0",
                "stop inst_new1",
                "log",
            ],
        ),
        (
            "blue-green: no room for the second set",
            Strategy::BlueGreen,
            both(
                old(2),
                vec![
                    inst("inst_new0", 2, InstanceStatus::Healthy),
                    with_reason(
                        inst("inst_new1", 2, InstanceStatus::Pending),
                        "no node has room",
                    ),
                ],
            ),
            1,
            "FPPPPPP",
            &[
                "log",
                "event deployment.failed",
                "rollback v1",
                "traffic none",
                "stop inst_new0",
                "stop inst_new1",
                "log",
            ],
        ),
        (
            "blue-green: a crash-loop stops the whole new set",
            Strategy::BlueGreen,
            both(
                old(2),
                vec![inst("inst_new0", 2, InstanceStatus::Healthy), crash_looping],
            ),
            1,
            "FPPPPPP",
            &[
                "log",
                "event deployment.failed",
                "rollback v1",
                "traffic none",
                "stop inst_new0",
                "stop inst_new1",
                "log",
            ],
        ),
    ];
    for (what, strategy, insts, at, want_stages, want_effects) in cases {
        let a = app(2, 2, None);
        let obs = observe(&a, &insts);
        let (d, fx) = step(&deployment(strategy, Some(1)), &obs, T0 + at * SEC);
        assert_eq!(stages(&d), want_stages, "{what}: stages");
        assert_eq!(d.status, DeploymentStatus::Failed, "{what}");
        assert_eq!(d.finished_at, None, "{what}: rolling back, not over");
        assert_eq!(effects(&fx), want_effects, "{what}: effects");
    }
}

#[test]
fn a_failed_deployment_is_rolled_back_once_the_old_version_is_whole() {
    let mut d = deployment(Strategy::Rolling, Some(1));
    d.status = DeploymentStatus::Failed;
    d.reason = Some("instance inst_new1 cannot start".into());
    // Re-targeted at v1.
    let a = || app(2, 1, None);
    let d = walk(
        d,
        vec![
            row(
                "a new instance still runs",
                a(),
                both(old(2), vec![inst("inst_new0", 2, InstanceStatus::Healthy)]),
                1,
            )
            .expect("PPPPPPP", &[])
            .status(DeploymentStatus::Failed),
            row("the old version is not whole", a(), old(1), 2)
                .expect("PPPPPPP", &[])
                .status(DeploymentStatus::Failed),
            row("whole again", a(), old(2), 3)
                .expect("PPPPPPP", &["log", "event deployment.rolled_back"])
                .status(DeploymentStatus::RolledBack),
        ],
    );
    assert_eq!(d.finished_at, Some(T0 + 3 * SEC));
}

#[test]
fn without_rollback_a_failure_ends_the_deployment() {
    let mut d = deployment(Strategy::Rolling, Some(1));
    d.options.rollback_on_failure = false;
    let a = app(2, 2, None);
    let insts = both(old(2), new(1, InstanceStatus::Failed));
    let obs = observe(&a, &insts);
    let (d, fx) = step(&d, &obs, T0 + SEC);
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert_eq!(d.finished_at, Some(T0 + SEC));
    assert_eq!(
        effects(&fx),
        ["log", "event deployment.failed", "traffic none"]
    );
    // A first deploy has nothing to return to either.
    let insts = new(1, InstanceStatus::Failed);
    let obs = observe(&a, &insts);
    let (d, _) = step(&deployment(Strategy::Rolling, None), &obs, T0 + SEC);
    assert_eq!(d.finished_at, Some(T0 + SEC));
}

#[test]
fn a_superseded_deployment_fails_and_cancels_what_does_not_serve_yet() {
    let by = Deployment {
        id: "dep_3".into(),
        version: 3,
        ..deployment(Strategy::Rolling, Some(1))
    };
    let insts = both(
        old(2),
        vec![
            inst("inst_new0", 2, InstanceStatus::Healthy),
            inst("inst_new1", 2, InstanceStatus::Starting),
            inst("inst_new2", 2, InstanceStatus::Pending),
        ],
    );
    let (d, fx) = supersede_step(
        &deployment(Strategy::Rolling, Some(1)),
        &by,
        &insts,
        T0 + SEC,
    );
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert_eq!(d.reason.as_deref(), Some("superseded by dep_3"));
    assert_eq!(d.finished_at, Some(T0 + SEC));
    assert_eq!(
        effects(&fx),
        ["log", "stop inst_new1", "stop inst_new2", "log"]
    );
}

#[test]
fn a_superseded_deployment_only_draining_succeeded() {
    let by = Deployment {
        id: "dep_3".into(),
        version: 3,
        ..deployment(Strategy::Rolling, Some(2))
    };
    // Its traffic has shifted; the old set drains.
    let a = app(2, 2, None);
    let insts = both(old(2), new(2, InstanceStatus::Healthy));
    let obs = observe(&a, &insts);
    let (draining, _) = step(&deployment(Strategy::Rolling, Some(1)), &obs, T0 + SEC);
    assert_eq!(stages(&draining), "CCCCCIP");
    let (d, fx) = supersede_step(&draining, &by, &insts, T0 + 2 * SEC);
    assert_eq!(stages(&d), "CCCCCCC");
    assert_eq!(d.status, DeploymentStatus::Successful);
    assert_eq!(effects(&fx), ["log", "event app.deployed"]);
}

#[test]
fn a_deployment_rolling_back_when_superseded_stays_failed() {
    let mut rolling_back = deployment(Strategy::Rolling, Some(1));
    rolling_back.status = DeploymentStatus::Failed;
    let by = Deployment {
        id: "dep_3".into(),
        version: 3,
        ..deployment(Strategy::Rolling, Some(1))
    };
    let (d, fx) = supersede_step(&rolling_back, &by, &new(1, InstanceStatus::Starting), T0);
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert_eq!(d.finished_at, Some(T0));
    assert_eq!(effects(&fx), ["log", "stop inst_new0", "log"]);
}

#[test]
fn stopping_the_app_cancels_its_deployment() {
    let a = app(2, 2, Some(r#"{"1":100}"#));
    let insts = both(old(2), new(2, InstanceStatus::Starting));
    let obs = observe(&a, &insts);
    let (under_way, _) = step(&deployment(Strategy::BlueGreen, Some(1)), &obs, T0 + SEC);
    assert_eq!(stages(&under_way), "CCCIPPP");
    let (d, fx) = cancel_step(&under_way, "the app was stopped", T0 + 2 * SEC);
    assert_eq!(stages(&d), "CCCFPPP");
    assert_eq!(d.stages[3].reason.as_deref(), Some("the app was stopped"));
    assert_eq!(d.status, DeploymentStatus::Cancelled);
    assert_eq!(
        effects(&fx),
        ["event deployment.cancelled", "log", "traffic none"]
    );
    // One rolling back stays failed, and ends.
    let mut rolling_back = under_way;
    rolling_back.status = DeploymentStatus::Failed;
    let (d, fx) = cancel_step(&rolling_back, "the app was deleted", T0 + 2 * SEC);
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert_eq!(d.finished_at, Some(T0 + 2 * SEC));
    assert_eq!(effects(&fx), ["log", "traffic none"]);
}

#[test]
fn plans_follow_the_strategy() {
    let p = |s: Strategy| plan(Some(&deployment(s, Some(1))), 4, T0);
    assert_eq!(
        (p(Strategy::Rolling).surge, p(Strategy::Rolling).in_place),
        (1, true)
    );
    assert_eq!(p(Strategy::Immediate).surge, i64::MAX);
    assert!(p(Strategy::BlueGreen).hold_old && !p(Strategy::BlueGreen).in_place);
    assert_eq!(p(Strategy::Canary).max_new, Some(1));
    // No rollout: one at a time, in place when there is no room.
    let none = plan(None, 4, T0);
    assert_eq!((none.surge, none.unavailable, none.in_place), (1, 0, true));
}
