//! *Migrate* as a kind of the workflow engine ([`MigrateKind`],
//! `"migrate"`): the real, irreversible move of an account onto a shared
//! host. Its state is the [`MigrationRun`]; its transition is [`decide`],
//! pure; its steps are performed by [`super::migrate_steps`].
//!
//! Every edge [`decide`] implements (`state[step]`):
//!
//! ```text
//!  preparing[prepare] ─prepared─▶ copying[copy] ─copied─▶ replicating[replicate]
//!  replicating[replicate] ─replicating─▶ converging[converge]
//!  converging[converge] ─backlog above the threshold─▶ converging[converge], after the poll
//!  converging[converge] ─backlog below─▶ freezing[freeze] (one more try)
//!  freezing[freeze] ─frozen, fenced, drained─▶ freezing[switch]
//!  freezing[freeze] ─missed its deadline (thawed)─▶ converging[converge], after the poll,
//!                                 or, after the last try, rolling_back[rollback]
//!  freezing[freeze] ─verification mismatch (thawed)─▶ rolling_back[rollback]
//!  freezing[switch] ─switched─▶ switched[finish]            (the point of no return)
//!  switched[finish] ─finished (forward_until set)─▶ switched[none]
//!  switched[none] ─timer at the earlier of retire_at, forward_until─▶
//!                                 switched[retire] or switched[unforward]
//!  switched[retire] ─retired─▶ switched[none], or completed[none] once unforwarded
//!  switched[unforward] ─unforwarded─▶ switched[none], or completed[none] once retired
//!
//!  before the switch: cancel ─▶ rolling_back[rollback] (cancelled)
//!  before the switch: refused, copy failed, unreachable MAX_ATTEMPTS times
//!                                 ─▶ rolling_back[rollback] (failed)
//!  rolling_back[rollback] ─rolled back─▶ failed[none] or cancelled[none]
//!  [rollback], [switch], [finish], [retire], [unforward] ─unreachable or refused─▶ the same
//!      step, later: never given up (a rollback must finish; so must a
//!      migration past its point of no return)
//! ```
//!
//! The engine holds the point of no return: [`MigrateKind`] says
//! [`MigrateStep::Switch`] (and what follows it) is past it, so a cancel
//! asked once the switch began is refused by the engine, with the time it
//! passed, and never reaches [`decide`]. A cancel that does reach it, in
//! any state before the switch, rolls back; the freeze's deadline is the
//! freeze step's own (it thaws the source and says so), so a missed freeze
//! comes back as an outcome like any other.
//!
//! Invariants: [`decide`] is pure (times come with the outcomes); nothing
//! of the source is removed before the switch (the rollback removes only
//! what the migration made: the target's copy, the replication objects);
//! after the switch, every step is retried until it succeeds; the grace
//! period (`retire_at`) and the forwarding time (`forward_until`, the old
//! DNS records' TTL after their switch) are two timers, each step run once
//! when its own comes: retiring the old copy never ends the forward.

use std::sync::Arc;

use super::migrate_run::{MigrateOutcome, MigrateState, MigrateStep, MigrationRun};
use super::test_flow::{backoff, removal_backoff};
use crate::engine::{End, Event, Input, Kind, Next, StepContext, Transition, WorkflowId};
use crate::placement::human_bytes;
use crate::state::Controller;
use crate::store;

/// How many times a step before the switch may fail to reach its host
/// before the migration rolls back.
pub const MAX_ATTEMPTS: u32 = 20;

/// The migrate kind; its steps call the agents through `controller`.
pub struct MigrateKind {
    controller: Arc<Controller>,
}

impl MigrateKind {
    pub fn new(controller: Arc<Controller>) -> MigrateKind {
        MigrateKind { controller }
    }
}

impl Kind for MigrateKind {
    const NAME: &'static str = "migrate";
    type State = MigrationRun;
    type Step = MigrateStep;
    type Outcome = MigrateOutcome;

    fn transition(
        &self,
        run: &MigrationRun,
        input: Input<MigrateOutcome>,
    ) -> Transition<MigrationRun, MigrateStep> {
        decide(run, input)
    }

    async fn perform(
        &self,
        run: &MigrationRun,
        step: &MigrateStep,
        context: &StepContext,
    ) -> MigrateOutcome {
        super::migrate_steps::perform(&self.controller, run, *step, context).await
    }

    fn point_of_no_return(&self, step: &MigrateStep) -> bool {
        past_point_of_no_return(*step)
    }

    fn compensates(&self, step: &MigrateStep) -> bool {
        *step == MigrateStep::Rollback
    }

    fn failed(&self, outcome: &MigrateOutcome) -> bool {
        matches!(
            outcome,
            MigrateOutcome::CopyFailed(_)
                | MigrateOutcome::FreezeMissed(_)
                | MigrateOutcome::VerifyMismatch(_)
                | MigrateOutcome::Unreachable(_)
                | MigrateOutcome::Refused(_)
        )
    }

    fn projects(&self) -> bool {
        true
    }

    async fn project(
        &self,
        client: &tokio_postgres::Transaction<'_>,
        _id: &WorkflowId,
        run: &MigrationRun,
    ) -> Result<(), crate::error::Error> {
        store::migrations::project(client, run).await
    }
}

/// Whether `step` is the switch or follows it: once it starts, cancels are
/// refused and nothing is undone.
pub fn past_point_of_no_return(step: MigrateStep) -> bool {
    matches!(
        step,
        MigrateStep::Switch | MigrateStep::Finish | MigrateStep::Retire | MigrateStep::Unforward
    )
}

/// The step of the switched migration's next timer and when it is due:
/// the earlier of the retirement (at `retire_at`) and the forward's end
/// (at `forward_until`) not yet done; the retirement first on a tie.
/// `None` when both are done.
pub fn next_timer(run: &MigrationRun) -> Option<(MigrateStep, chrono::DateTime<chrono::Utc>)> {
    let retire = run
        .retire_at
        .filter(|_| run.retired_at.is_none())
        .map(|at| (MigrateStep::Retire, at));
    let unforward = run
        .forward_until
        .filter(|_| run.unforwarded_at.is_none())
        .map(|at| (MigrateStep::Unforward, at));
    match (retire, unforward) {
        (Some(r), Some(u)) => Some(if u.1 < r.1 { u } else { r }),
        (r, u) => r.or(u),
    }
}

/// The migration's transition for an engine input. Pure.
pub fn decide(
    run: &MigrationRun,
    input: Input<MigrateOutcome>,
) -> Transition<MigrationRun, MigrateStep> {
    match input {
        Input::Event(Event::Cancel) => {
            if run.switched() || run.state.ended() || run.state == MigrateState::RollingBack {
                unchanged(run)
            } else {
                rollback(
                    run,
                    "cancelled at the customer's or an operator's request",
                    true,
                )
            }
        }
        Input::Event(Event::Timer)
            if run.state == MigrateState::Switched && run.step == MigrateStep::None =>
        {
            let mut after = run.clone();
            after.attempts = 0;
            match next_timer(run) {
                Some((MigrateStep::Unforward, _)) => {
                    after.step = MigrateStep::Unforward;
                    after.phase = format!(
                        "ending the forward from {}: the old DNS records' TTL has passed",
                        run.source_host_id
                    );
                }
                _ => {
                    after.step = MigrateStep::Retire;
                    after.phase = "retiring the old copy".to_owned();
                }
            }
            record(after)
        }
        // The creation decided the first step; commands and children are
        // not a migration's.
        Input::Event(_) => unchanged(run),
        Input::Outcome(outcome) => after(run, outcome),
    }
}

/// What the engine does next with `run`.
pub fn next_of(run: &MigrationRun) -> Next<MigrateStep> {
    match run.step {
        MigrateStep::None => match run.state {
            MigrateState::Completed => Next::Done(End::Completed),
            MigrateState::Cancelled => Next::Done(End::Cancelled),
            MigrateState::Failed => Next::Done(End::Failed(run.error.clone())),
            // The finish sets the retire step itself when no grace period
            // is recorded.
            MigrateState::Switched => match next_timer(run) {
                Some((_, at)) => Next::WaitUntil(at),
                None => Next::Wait,
            },
            _ => Next::Wait,
        },
        step => Next::Run(step),
    }
}

fn seconds(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

/// `run` after one of its two timers' steps: waiting for the other, or
/// completed when both are done.
fn after_timer(run: &MigrationRun, done: &str) -> MigrationRun {
    match next_timer(run) {
        Some((step, at)) => {
            let mut after = moved(
                run,
                MigrateState::Switched,
                MigrateStep::None,
                String::new(),
            );
            after.phase = format!(
                "switched: {done}; {} at {}",
                match step {
                    MigrateStep::Unforward => "the forward ends",
                    _ => "the old copy is retired",
                },
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            after
        }
        None => moved(
            run,
            MigrateState::Completed,
            MigrateStep::None,
            format!("completed: the account lives on {}", run.target_host_id),
        ),
    }
}

fn unchanged(run: &MigrationRun) -> Transition<MigrationRun, MigrateStep> {
    Transition::new(run.clone(), next_of(run))
}

fn record(run: MigrationRun) -> Transition<MigrationRun, MigrateStep> {
    let next = next_of(&run);
    Transition::new(run, next)
}

fn later(run: MigrationRun, wait: std::time::Duration) -> Transition<MigrationRun, MigrateStep> {
    let step = run.step;
    Transition::new(run, Next::RunAfter(step, wait))
}

/// `run` moved to `state` and `step`, its attempts and error cleared.
fn moved(
    run: &MigrationRun,
    state: MigrateState,
    step: MigrateStep,
    phase: String,
) -> MigrationRun {
    let mut after = run.clone();
    after.state = state;
    after.step = step;
    after.attempts = 0;
    after.error = String::new();
    after.phase = phase;
    after
}

/// Everything before the switch undone: the source thawed, replication
/// torn down, the target's copy removed.
fn rollback(
    run: &MigrationRun,
    why: &str,
    cancelled: bool,
) -> Transition<MigrationRun, MigrateStep> {
    let mut after = moved(
        run,
        MigrateState::RollingBack,
        MigrateStep::Rollback,
        format!(
            "rolling back: {why}; the account keeps serving from {}",
            run.source_host_id
        ),
    );
    after.cancelled = cancelled;
    if !cancelled {
        after.error = why.to_owned();
    }
    record(after)
}

/// A step that could not reach its host: later, or (before the switch,
/// after [`MAX_ATTEMPTS`]) the rollback.
fn retry(run: &MigrationRun, why: String) -> Transition<MigrationRun, MigrateStep> {
    let forever = run.switched()
        || matches!(
            run.step,
            MigrateStep::Switch
                | MigrateStep::Finish
                | MigrateStep::Retire
                | MigrateStep::Unforward
                | MigrateStep::Rollback
        );
    if !forever && run.attempts + 1 >= MAX_ATTEMPTS {
        return rollback(
            run,
            &format!("gave up after {} attempts: {why}", run.attempts + 1),
            false,
        );
    }
    let mut after = run.clone();
    after.attempts = run.attempts.saturating_add(1);
    let wait = if run.step == MigrateStep::Rollback {
        removal_backoff(run.attempts)
    } else {
        backoff(run.attempts)
    };
    after.error = format!("{why} (retried)");
    later(after, wait)
}

fn after(run: &MigrationRun, outcome: MigrateOutcome) -> Transition<MigrationRun, MigrateStep> {
    use MigrateOutcome as O;
    use MigrateStep as S;
    let settings = &run.settings;
    match (run.step, outcome) {
        // A cancel waits in the inbox: it is delivered next.
        (_, O::Stopped) => unchanged(run),
        // No step ran: nothing to finish.
        (S::None, _) => unchanged(run),
        (
            S::Prepare,
            O::Prepared {
                slots,
                journal_epoch,
                dns,
            },
        ) => {
            let mut after = moved(
                run,
                MigrateState::Copying,
                S::Copy,
                "copying: the durable copy runs while the account works".to_owned(),
            );
            after.slots = slots;
            after.journal_epoch = journal_epoch;
            after.dns = dns;
            record(after)
        }
        (
            S::Copy,
            O::Copied {
                positions,
                progress,
            },
        ) => {
            let mut after = moved(
                run,
                MigrateState::Replicating,
                S::Replicate,
                "replicating: starting replication from the copy's snapshots".to_owned(),
            );
            after.snapshot_positions = positions;
            after.progress = Some(progress);
            record(after)
        }
        (S::Copy, O::CopyFailed(error)) => {
            rollback(run, &format!("the copy failed: {error}"), false)
        }
        (S::Replicate, O::Replicating) => record(moved(
            run,
            MigrateState::Converging,
            S::Converge,
            "converging: measuring the backlog".to_owned(),
        )),
        (S::Converge, O::Measured(backlog)) => {
            // The freeze waits until the lowered DNS TTL can be relied on:
            // the switch of the records follows the freeze at once.
            let dns_wait = run
                .dns
                .as_ref()
                .map(|plan| plan.safe_at())
                .filter(|at| *at > backlog.measured_at);
            if let (Some(at), true) = (dns_wait, backlog.below(settings)) {
                let mut after = run.clone();
                after.attempts = 0;
                after.error = String::new();
                after.phase = format!(
                    "converging: the backlog is small; the freeze waits until {} for the lowered DNS TTL",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                );
                after.backlog = Some(backlog);
                return later(after, settings.converge_poll());
            }
            if backlog.below(settings) {
                let try_number = run.freeze_tries.saturating_add(1);
                let mut after = moved(
                    run,
                    MigrateState::Freezing,
                    S::Freeze,
                    format!(
                        "freezing: attempt {try_number} of {}",
                        settings.freeze_tries
                    ),
                );
                after.freeze_tries = try_number;
                after.backlog = Some(backlog);
                record(after)
            } else {
                let mut after = run.clone();
                after.attempts = 0;
                after.error = String::new();
                after.phase = format!(
                    "converging: backlog {}{}, {} MariaDB transactions and {} paths{}, above the threshold ({}, {} and {}); the freeze waits",
                    human_bytes(backlog.postgres_lag_bytes),
                    match backlog.rows_unread_bytes() {
                        0 => String::new(),
                        unread => format!(
                            " ({} of WAL the rows' verification has not read)",
                            human_bytes(unread)
                        ),
                    },
                    backlog.mariadb_transactions,
                    backlog.files_pending,
                    if backlog.files_full_comparison {
                        " (the files' last pass compared the whole tree)"
                    } else {
                        ""
                    },
                    human_bytes(settings.backlog_threshold_bytes),
                    settings.backlog_threshold_transactions,
                    settings.backlog_threshold_paths
                );
                after.backlog = Some(backlog);
                later(after, settings.converge_poll())
            }
        }
        (S::Freeze, O::Frozen(window)) => {
            let mut after = run.clone();
            after.step = S::Switch;
            after.attempts = 0;
            after.error = String::new();
            after.phase = "switching: the sites start on the target".to_owned();
            after.freeze = Some(window);
            record(after)
        }
        (S::Freeze, O::FreezeMissed(window)) => {
            let why = window.missed_because.clone();
            let mut after = run.clone();
            after.missed_freezes.push(window);
            after.freeze = None;
            if run.freeze_tries >= settings.freeze_tries {
                return rollback(
                    &after,
                    &format!(
                        "{} freezes did not complete within their deadline of {} ms; the last: {why}",
                        run.freeze_tries, settings.freeze_deadline_ms
                    ),
                    false,
                );
            }
            let mut after = moved(
                &after,
                MigrateState::Converging,
                S::Converge,
                format!(
                    "converging: freeze {} was undone ({why}); the source serves again, another follows",
                    run.freeze_tries
                ),
            );
            after.error = why;
            later(after, settings.converge_poll())
        }
        (S::Freeze, O::VerifyMismatch(window)) => {
            let why = format!(
                "the copy differs from the source inside the freeze: {}",
                window.missed_because
            );
            let mut after = run.clone();
            after.missed_freezes.push(window);
            after.freeze = None;
            rollback(&after, &why, false)
        }
        (S::Switch, O::Switched { parts, accepted_at }) => {
            let mut after = moved(
                run,
                MigrateState::Switched,
                S::Finish,
                format!(
                    "switched: the account serves from {}; tearing down replication",
                    run.target_host_id
                ),
            );
            if let Some(window) = after.freeze.as_mut() {
                window.parts.extend(parts);
                window.total_ms =
                    u64::try_from((accepted_at - window.frozen_at).num_milliseconds().max(0))
                        .unwrap_or(0);
            }
            after.retire_at = Some(accepted_at + seconds(settings.retire_after_secs));
            record(after)
        }
        (S::Finish, O::Finished { at }) => {
            let step = if run.retire_at.is_some() {
                S::None
            } else {
                S::Retire
            };
            let mut after = moved(run, MigrateState::Switched, step, String::new());
            let forward_secs = run
                .dns
                .as_ref()
                .and_then(|plan| plan.switched_ttl_secs())
                .unwrap_or(settings.forward_for_secs);
            let forward_until = at + seconds(forward_secs);
            after.forward_until = Some(forward_until);
            after.phase = match run.retire_at {
                Some(retire_at) => format!(
                    "switched: the old copy on {} is kept stopped until {}; it forwards to {} until {}",
                    run.source_host_id,
                    retire_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    run.target_host_id,
                    forward_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => "switched".to_owned(),
            };
            record(after)
        }
        (S::Retire, O::Retired { at, removed }) => {
            let mut after = run.clone();
            after.retired_at = Some(at);
            after.removed = removed;
            record(after_timer(&after, "the old copy is removed"))
        }
        (S::Unforward, O::Unforwarded { at }) => {
            let mut after = run.clone();
            after.unforwarded_at = Some(at);
            record(after_timer(&after, "the old host no longer forwards"))
        }
        (S::Rollback, O::RolledBack) => {
            let state = if run.cancelled {
                MigrateState::Cancelled
            } else {
                MigrateState::Failed
            };
            let mut after = run.clone();
            after.state = state;
            after.step = S::None;
            after.attempts = 0;
            after.phase = format!(
                "rolled back: the account serves from {} as before, and the target's copy is removed",
                run.source_host_id
            );
            record(after)
        }
        (_, O::Unreachable(why)) => retry(run, why),
        // Past the switch, or undoing: a refusal is retried too (an agent
        // may refuse while a transfer ends), never given up.
        (S::Switch | S::Finish | S::Retire | S::Unforward | S::Rollback, O::Refused(why)) => {
            retry(run, why)
        }
        (_, O::Refused(why)) if run.switched() => retry(run, why),
        (_, O::Refused(why)) => rollback(run, &why, false),
        (step, outcome) => {
            let mut after = run.clone();
            after.attempts = run.attempts.saturating_add(1);
            after.error = format!(
                "internal: step {} cannot end with {outcome:?}",
                step.as_str()
            );
            later(after, backoff(run.attempts))
        }
    }
}

#[cfg(test)]
mod tests;
