//! The life cycle of one instance on this node, as a state machine: where
//! it is ([`InstancePhase`]), what can happen to it ([`Happened`]) and one
//! function, [`Local::transition`], that moves it on. The reconciler's
//! steps do the I/O (driver commands, health checks, events for the control
//! plane) and report what came of it here; nothing else changes the phase.
//!
//! The status word reported to the control plane is a function of the
//! phase ([`InstancePhase::status`]): those words are the wire contract
//! and are the same as before the phase existed.

use std::time::{Duration, Instant};

use shellwego_core::model::InstanceStatus;

use super::{backoff, now_micros, Local, STARTING_CHECK};
use crate::driver::{Exit, Running};

/// How long an instance must have been healthy for its crash count (and
/// so its restart backoff) to start again from zero.
const HEALTHY_RESETS_BACKOFF: Duration = Duration::from_secs(60);

/// Where an instance is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InstancePhase {
    /// Its files are being prepared (an image pulled, an archive fetched
    /// and unpacked); `retrying` once a try failed (the next one is after
    /// a wait).
    Preparing { retrying: bool },
    /// Not running; started when `until` has come. `after` says why it
    /// waits (and so what is reported meanwhile).
    Backoff { until: Instant, after: Waiting },
    /// Running, its health check not passed yet (just started, or re-adopted
    /// after an agent restart). `settled`: held to its steady CPU limit.
    Starting { settled: bool },
    /// Running and passing its health check since `since`.
    Healthy { since: Instant, settled: bool },
    /// Running and failing its health check.
    Unhealthy { settled: bool },
    /// No longer wanted and still running: reported `stopping` at once (the
    /// routers drop it) and sent SIGTERM at `term_at`, so requests already
    /// on their way finish.
    Deregistering { term_at: Instant },
    /// SIGTERM sent; SIGKILL once `deadline` (its stop timeout) is over.
    Stopping { deadline: Instant },
    /// Not running, and nothing will start it: this node has no driver for
    /// it, or it was removed while its preparation was being retried.
    Failed,
    /// Stopped with the agent ([`super::Ctx::stop_all`]).
    Stopped,
}

/// Why an instance in [`InstancePhase::Backoff`] is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Its files are ready: it starts on the next pass.
    Prepared,
    /// It exited (or was found dead after an agent restart).
    Crashed,
    /// The driver could not start it.
    StartFailed,
}

impl InstancePhase {
    /// The status reported to the control plane (the wire contract).
    pub(super) fn status(&self) -> InstanceStatus {
        match self {
            InstancePhase::Preparing { retrying: false } => InstanceStatus::Starting,
            InstancePhase::Preparing { retrying: true } => InstanceStatus::Failed,
            InstancePhase::Backoff { after, .. } => match after {
                Waiting::Prepared => InstanceStatus::Starting,
                Waiting::Crashed => InstanceStatus::Crashed,
                Waiting::StartFailed => InstanceStatus::Failed,
            },
            InstancePhase::Starting { .. } => InstanceStatus::Starting,
            InstancePhase::Healthy { .. } => InstanceStatus::Healthy,
            InstancePhase::Unhealthy { .. } => InstanceStatus::Unhealthy,
            InstancePhase::Deregistering { .. } | InstancePhase::Stopping { .. } => {
                InstanceStatus::Stopping
            }
            InstancePhase::Failed => InstanceStatus::Failed,
            InstancePhase::Stopped => InstanceStatus::Stopped,
        }
    }

    /// Running and wanted: health checks count.
    pub(super) fn is_up(&self) -> bool {
        matches!(
            self,
            InstancePhase::Starting { .. }
                | InstancePhase::Healthy { .. }
                | InstancePhase::Unhealthy { .. }
        )
    }

    /// Being stopped because it is no longer wanted.
    pub(super) fn is_leaving(&self) -> bool {
        matches!(
            self,
            InstancePhase::Deregistering { .. } | InstancePhase::Stopping { .. }
        )
    }

    pub(super) fn is_preparing(&self) -> bool {
        matches!(self, InstancePhase::Preparing { .. })
    }

    /// Held to its steady CPU limit (only a running instance can be).
    pub(super) fn is_settled(&self) -> bool {
        match self {
            InstancePhase::Starting { settled }
            | InstancePhase::Healthy { settled, .. }
            | InstancePhase::Unhealthy { settled } => *settled,
            InstancePhase::Preparing { .. }
            | InstancePhase::Backoff { .. }
            | InstancePhase::Deregistering { .. }
            | InstancePhase::Stopping { .. }
            | InstancePhase::Failed
            | InstancePhase::Stopped => false,
        }
    }

    /// Started (not waiting to be) when `now` has come.
    pub(super) fn start_due(&self, now: Instant) -> bool {
        matches!(self, InstancePhase::Backoff { until, .. } if now >= *until)
    }
}

/// What happened to an instance (the reconciler's steps report these).
#[derive(Debug)]
pub(super) enum Happened {
    /// Its files are ready (a first try or a retry).
    Prepared,
    /// Preparing it failed; it is tried again after a wait.
    PrepareFailed(String),
    /// It is no longer wanted while its preparation waited for a retry.
    PrepareAbandoned,
    /// The driver started it.
    Started(Running),
    /// The driver could not start it.
    StartFailed(String),
    /// It exited.
    Exited(Exit),
    /// A health check passed.
    CheckPassed,
    /// A health check failed; `starting`: a quick check of a starting
    /// instance, whose failures do not count.
    CheckFailed { error: String, starting: bool },
    /// It is running and no longer wanted: SIGTERM at `term_at`.
    Removed { term_at: Instant },
    /// SIGTERM was sent: SIGKILL after `deadline`.
    Terminated { deadline: Instant },
    /// Its boot CPU allowance ended (see `BOOT_WINDOW`).
    Settled,
    /// This node has no driver for it.
    NoDriver,
    /// Stopped with the agent.
    StoppedWithAgent,
}

impl Local {
    /// Apply what happened: the next phase, the reason reported with it and
    /// the counters (restarts, crashes, health checks). Returns true when
    /// what the control plane hears (status or reason) changed.
    pub(super) fn transition(&mut self, happened: Happened) -> bool {
        use InstancePhase as P;
        let before = (self.phase.status(), self.reason.clone());
        let now = Instant::now();
        match happened {
            Happened::Prepared => {
                self.reason = None;
                if self.phase.is_preparing() {
                    self.phase = P::Backoff {
                        until: now,
                        after: Waiting::Prepared,
                    };
                }
            }
            Happened::PrepareFailed(reason) => {
                self.consecutive_crashes += 1;
                self.reason = Some(reason);
                if self.phase.is_preparing() {
                    self.phase = P::Preparing { retrying: true };
                }
            }
            Happened::PrepareAbandoned => {
                if self.phase.is_preparing() {
                    self.phase = P::Failed;
                }
            }
            Happened::Started(r) => {
                self.saved.running = Some(r);
                self.saved.started_at = Some(now_micros());
                self.phase = P::Starting { settled: false };
                self.reason = None;
                self.next_check = now + STARTING_CHECK;
            }
            Happened::StartFailed(reason) => {
                self.reason = Some(reason);
                self.consecutive_crashes += 1;
                self.phase = P::Backoff {
                    until: now + backoff(self.consecutive_crashes),
                    after: Waiting::StartFailed,
                };
            }
            Happened::Exited(exit) => {
                self.saved.running = None;
                self.saved.restarts += 1;
                self.consecutive_crashes += 1;
                self.health_failures = 0;
                let wait = backoff(self.consecutive_crashes.saturating_sub(1));
                self.reason = Some(format!(
                    "{}; restarting in {:.1}s",
                    exit.describe(),
                    wait.as_secs_f64()
                ));
                self.phase = P::Backoff {
                    until: now + wait,
                    after: Waiting::Crashed,
                };
            }
            Happened::CheckPassed => {
                if !self.phase.is_up() {
                    return false;
                }
                self.health_passed += 1;
                self.health_failures = 0;
                self.reason = None;
                let since = match self.phase {
                    P::Healthy { since, .. } => since,
                    _ => now,
                };
                self.phase = P::Healthy {
                    since,
                    settled: self.phase.is_settled(),
                };
                if since.elapsed() > HEALTHY_RESETS_BACKOFF {
                    self.consecutive_crashes = 0;
                }
            }
            Happened::CheckFailed { error, starting } => {
                if !self.phase.is_up() {
                    return false;
                }
                if starting {
                    // The regular checks that follow count.
                    self.reason = Some(format!("waiting for the health check: {error}"));
                } else {
                    self.check_failed(&error);
                }
            }
            Happened::Removed { term_at } => {
                self.phase = P::Deregistering { term_at };
            }
            Happened::Terminated { deadline } => {
                self.phase = P::Stopping { deadline };
            }
            Happened::Settled => {
                self.phase = match self.phase {
                    P::Starting { .. } => P::Starting { settled: true },
                    P::Healthy { since, .. } => P::Healthy {
                        since,
                        settled: true,
                    },
                    P::Unhealthy { .. } => P::Unhealthy { settled: true },
                    other @ (P::Preparing { .. }
                    | P::Backoff { .. }
                    | P::Deregistering { .. }
                    | P::Stopping { .. }
                    | P::Failed
                    | P::Stopped) => other,
                };
            }
            Happened::NoDriver => {
                self.phase = P::Failed;
                self.reason = Some(format!(
                    "this node has no {} driver",
                    self.saved.desired.driver
                ));
            }
            Happened::StoppedWithAgent => {
                self.saved.running = None;
                self.phase = P::Stopped;
                self.reason = Some("stopped with the agent".into());
            }
        }
        (self.phase.status(), self.reason.clone()) != before
    }

    /// A regular health check failed: unhealthy after `retries` failures in
    /// a row (for a starting instance, only once its grace period is over).
    fn check_failed(&mut self, error: &str) {
        use InstancePhase as P;
        let hc = &self.saved.desired.health_check;
        self.health_failures += 1;
        let failing = self.health_failures >= hc.retries.max(1);
        let in_grace = self
            .saved
            .started_at
            .is_some_and(|t| now_micros() - t < (hc.grace_ms as i64) * 1000);
        match self.phase {
            P::Healthy { settled, .. } if failing => {
                self.phase = P::Unhealthy { settled };
                self.reason = Some(format!("health check failing: {error}"));
            }
            P::Starting { settled } | P::Unhealthy { settled } if failing && !in_grace => {
                self.phase = P::Unhealthy { settled };
                self.reason = Some(format!("health check failing: {error}"));
            }
            P::Starting { .. } => {
                self.reason = Some(format!("waiting for the health check: {error}"));
            }
            P::Healthy { .. }
            | P::Unhealthy { .. }
            | P::Preparing { .. }
            | P::Backoff { .. }
            | P::Deregistering { .. }
            | P::Stopping { .. }
            | P::Failed
            | P::Stopped => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::reconcile::tests::local_listening_on;

    fn exit(code: i32) -> Exit {
        Exit {
            code: Some(code),
            signal: None,
            oom_killed: false,
        }
    }

    /// One status per phase, as the control plane has always heard it (the
    /// words themselves are the model's, tested in `shellwego_core`).
    #[test]
    fn each_phase_reports_its_status_word() {
        let now = Instant::now();
        let cases = [
            (
                InstancePhase::Preparing { retrying: false },
                InstanceStatus::Starting,
            ),
            (
                InstancePhase::Preparing { retrying: true },
                InstanceStatus::Failed,
            ),
            (
                InstancePhase::Backoff {
                    until: now,
                    after: Waiting::Prepared,
                },
                InstanceStatus::Starting,
            ),
            (
                InstancePhase::Backoff {
                    until: now,
                    after: Waiting::Crashed,
                },
                InstanceStatus::Crashed,
            ),
            (
                InstancePhase::Backoff {
                    until: now,
                    after: Waiting::StartFailed,
                },
                InstanceStatus::Failed,
            ),
            (
                InstancePhase::Starting { settled: false },
                InstanceStatus::Starting,
            ),
            (
                InstancePhase::Healthy {
                    since: now,
                    settled: true,
                },
                InstanceStatus::Healthy,
            ),
            (
                InstancePhase::Unhealthy { settled: false },
                InstanceStatus::Unhealthy,
            ),
            (
                InstancePhase::Deregistering { term_at: now },
                InstanceStatus::Stopping,
            ),
            (
                InstancePhase::Stopping { deadline: now },
                InstanceStatus::Stopping,
            ),
            (InstancePhase::Failed, InstanceStatus::Failed),
            (InstancePhase::Stopped, InstanceStatus::Stopped),
        ];
        for (phase, word) in cases {
            assert_eq!(phase.status(), word, "{phase:?}");
        }
    }

    /// Prepared, started, healthy, failing, crashed and restarted after a
    /// backoff: the phases, reasons and counters on the way.
    #[test]
    fn a_life_from_preparing_to_a_restart() {
        let mut l = local_listening_on(1, Some("/health"), 0);
        let r = l.saved.running.take().unwrap();
        l.phase = InstancePhase::Preparing { retrying: false };
        l.reason = Some("preparing".into());

        assert!(l.transition(Happened::PrepareFailed("registry down".into())));
        assert_eq!(l.phase, InstancePhase::Preparing { retrying: true });
        assert_eq!(l.consecutive_crashes, 1);
        assert!(l.transition(Happened::Prepared));
        assert!(l.phase.start_due(Instant::now()));
        assert_eq!(
            (l.phase.status(), l.reason.as_deref()),
            (InstanceStatus::Starting, None)
        );

        l.transition(Happened::Started(r.clone()));
        assert_eq!(l.phase, InstancePhase::Starting { settled: false });
        assert!(l.saved.running.is_some() && l.saved.started_at.is_some());
        // Within its grace period, failures wait; a quick check's never count.
        l.transition(Happened::CheckFailed {
            error: "refused".into(),
            starting: true,
        });
        assert_eq!(l.health_failures, 0);
        for _ in 0..5 {
            l.transition(Happened::CheckFailed {
                error: "refused".into(),
                starting: false,
            });
        }
        assert_eq!(l.phase.status(), InstanceStatus::Starting);
        assert!(l.reason.as_deref().unwrap().starts_with("waiting for"));

        l.transition(Happened::Settled);
        assert!(l.transition(Happened::CheckPassed));
        assert!(matches!(
            l.phase,
            InstancePhase::Healthy { settled: true, .. }
        ));
        assert_eq!((l.health_passed, l.health_failures), (1, 0));
        // Healthy: unhealthy after `retries` failures in a row.
        for n in 1..=3 {
            l.transition(Happened::CheckFailed {
                error: "500".into(),
                starting: false,
            });
            assert_eq!(l.phase.status() == InstanceStatus::Unhealthy, n == 3, "{n}");
        }
        assert_eq!(l.reason.as_deref(), Some("health check failing: 500"));
        assert!(l.phase.is_settled(), "settled holds for the run");

        l.transition(Happened::Exited(exit(3)));
        assert!(l.saved.running.is_none());
        assert_eq!(l.saved.restarts, 1);
        assert_eq!(l.consecutive_crashes, 2);
        assert_eq!(l.phase.status(), InstanceStatus::Crashed);
        assert!(!l.phase.start_due(Instant::now()), "backs off first");
        assert!(l
            .reason
            .as_deref()
            .unwrap()
            .starts_with("exited with code 3; restarting in"));
        // Checks of a run that ended change nothing.
        assert!(!l.transition(Happened::CheckPassed));
        assert_eq!(l.health_passed, 1);

        assert!(l.transition(Happened::StartFailed("no such file".into())));
        assert_eq!(l.phase.status(), InstanceStatus::Failed);
        assert_eq!(l.consecutive_crashes, 3);
    }

    /// A removed instance is reported `stopping` before its SIGTERM and
    /// after it; health checks no longer count.
    #[test]
    fn a_removed_instance_is_stopping() {
        let mut l = local_listening_on(1, None, 0);
        let now = Instant::now();
        assert!(l.transition(Happened::Removed { term_at: now }));
        assert!(l.phase.is_leaving());
        assert_eq!(l.phase.status(), InstanceStatus::Stopping);
        assert!(!l.transition(Happened::CheckPassed));
        assert!(!l.transition(Happened::Terminated { deadline: now }));
        assert_eq!(l.phase, InstancePhase::Stopping { deadline: now });
        assert!(l.transition(Happened::StoppedWithAgent));
        assert_eq!(
            (l.phase.status(), l.reason.as_deref()),
            (InstanceStatus::Stopped, Some("stopped with the agent"))
        );
        assert!(l.saved.running.is_none());
    }

    /// No driver: failed, saying why; a preparation given up is failed too.
    #[test]
    fn nothing_to_run_it_with_is_failed() {
        let mut l = local_listening_on(1, None, 0);
        l.saved.running = None;
        l.phase = InstancePhase::Preparing { retrying: true };
        l.transition(Happened::PrepareAbandoned);
        assert_eq!(l.phase, InstancePhase::Failed);
        l.phase = InstancePhase::Preparing { retrying: false };
        l.transition(Happened::NoDriver);
        assert_eq!(
            (l.phase.status(), l.reason.as_deref()),
            (
                InstanceStatus::Failed,
                Some("this node has no process driver")
            )
        );
        // Its preparation ending does not make it startable.
        l.transition(Happened::Prepared);
        assert_eq!(l.phase, InstancePhase::Failed);
    }
}
