//! The test workflow as a pure state machine: from a test and what happened
//! to it to what is recorded next. What happens is an [`Input`]: a command
//! (create, refresh, delete), the test's timer (expiry), or the outcome of
//! the step the runner ran. No I/O here: [`next`] decides; the test kind
//! (`super::test_kind`) turns the [`Transition`] it returns into the
//! engine's, which records it and performs the steps.
//!
//! Every edge [`next`] implements (`state[step]`; a step in brackets is
//! what runs next, `none`: nothing):
//!
//! ```text
//!  (no test) ─create─▶ placing[grant] ─granted─▶ copying[copy] ─copied─▶ ready[none]
//!  ready[none] ─refresh: a new generation─▶ refreshing[grant]
//!  refreshing[grant] ─granted─▶ refreshing[copy] ─copied─▶ ready[none]
//!
//!  when the plan runs sites (the test host serves them):
//!  copying[copy] ─copied─▶ copying[sites] ─sites running─▶ ready[none]
//!  refreshing[copy] ─copied─▶ refreshing[sites] ─sites running─▶ ready[none]
//!
//!  placing[grant], copying[copy], copying[sites], refreshing[grant],
//!  refreshing[copy], refreshing[sites]
//!      ─refused, copy failed, or unreachable MAX_ATTEMPTS times─▶ failed[remove]
//!  failed[remove] ─removed─▶ failed[none]
//!
//!  every state but deleting, deleted ─delete, or expiry due─▶ deleting[remove]
//!  deleting[remove] ─removed─▶ deleted[none]
//!  deleting[remove] ─outcome of the grant or copy it stopped─▶ deleting[remove], at once
//!
//!  [grant], [copy], [sites] ─unreachable (fewer than MAX_ATTEMPTS), or an outcome
//!      the step cannot have─▶ the same step, later (backoff)
//!  [remove] ─unreachable, refused, or an outcome it cannot have─▶ the same
//!      removal, later: never given up
//! ```
//!
//! The sites step makes the test host run exactly the plan's sites, from
//! the copy, with the copy's databases: after a refresh, sites added since
//! are started and sites dropped since stopped. The removal stops them
//! before it removes the copy.
//!
//! Rules beyond the diagram: a refresh of a test that is not ready is
//! refused; a create of a test that exists, a delete of a test deleting or
//! deleted, and an expiry of one, change nothing. A deletion wins over the
//! step running when it comes: delivered after the step's outcome, it
//! leads to the removal whatever that outcome was; an outcome arriving for
//! a step that is no longer the test's is dropped, and the removal runs at
//! once.
//! Every test that is not deleting or deleted has a timer ([`expiry`],
//! recorded with every transition as `expires_at`), failed and stuck ones
//! included, so no copy stays on a test host for ever; a timer that fires
//! early (or was never recorded) is set again, not obeyed.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{CopyProgress, HostOutage, Test, TestState, TestStep};

/// What happened to a test.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A command or the test's timer.
    Event(Event),
    /// The step the runner claimed ended.
    Finished(Finished),
}

/// A command from the panel, or the test's timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `Tests/TestMigration`: a new test, removed by itself `ttl` after it
    /// is ready.
    Create { ttl_seconds: u64 },
    /// `Tests/RefreshTest`: copy again what changed, into the same copy.
    Refresh,
    /// `Tests/DeleteTest`.
    Delete,
    /// The test's timer (`expires_at`) is due.
    Expire,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Create { .. } => "create",
            Event::Refresh => "refresh",
            Event::Delete => "delete",
            Event::Expire => "expire",
        }
    }
}

/// A step that ended: which one (the step and generation it was claimed
/// for) and what it gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub step: TestStep,
    pub generation: u32,
    pub outcome: StepOutcome,
}

/// What running a step gave.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum StepOutcome {
    /// The source agent granted the transfer.
    Granted,
    /// The target agent finished the copy.
    Copied(CopyProgress),
    /// The target agent reports the copy failed: nothing more will come of
    /// this transfer.
    CopyFailed(String),
    /// The test host runs the plan's sites (this many), and no others of
    /// the account.
    SitesRunning(usize),
    /// The target agent removed the copy.
    Removed,
    /// An agent could not be reached, or the call broke: try again.
    Unreachable(String),
    /// An agent refused the step for good.
    Refused(String),
}

/// What [`next`] decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to record: the input changes nothing (a repeated command, a
    /// timer for a test already ending).
    Unchanged,
    /// The command is refused, with why; the test stays as it is.
    Refused(String),
    /// Record this.
    Record(Transition),
}

/// What to record of a test. Every field left at its default keeps the
/// column as it is, but `expires_at`, the test's timer, which is always
/// written. [`Transition::applied`] is what the store writes, in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transition {
    pub state: Option<TestState>,
    pub step: Option<TestStep>,
    pub error: Option<String>,
    /// Start a new generation: a new transfer into the same copy (refresh).
    pub new_generation: bool,
    /// The copy became ready at this time.
    pub ready_at: Option<DateTime<Utc>>,
    /// When the test expires ([`expiry`] of the test as recorded); `None`:
    /// no timer (deleting, deleted).
    pub expires_at: Option<DateTime<Utc>>,
    /// When the current step runs next.
    pub run: Run,
    pub attempts: Attempts,
    pub outage: Outage,
}

/// When the test's step runs next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Run {
    /// When it was due to run.
    #[default]
    Keep,
    /// At once.
    Now,
    /// After this long (a retry).
    After(Duration),
}

/// The count of failed attempts at the current step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Attempts {
    #[default]
    Keep,
    /// Back to 0: the step made progress, or a new step begins.
    Reset,
    /// One more failed attempt.
    Count,
}

/// The host the current step cannot reach, as recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Outage {
    /// As it is (a command does not change what a step saw).
    #[default]
    Keep,
    /// The step got through, or ended: no outage.
    Clear,
    /// The step could not reach this host: recorded with the time it was
    /// first seen out, kept while it stays out.
    Host(String),
}

impl Transition {
    /// `test` as it is once this transition is recorded at `now`: what the
    /// store writes, column by column.
    pub fn applied(&self, test: &Test, now: DateTime<Utc>) -> Test {
        let mut after = test.clone();
        if let Some(state) = self.state {
            after.state = state;
        }
        if let Some(step) = self.step {
            after.step = step;
        }
        if let Some(error) = &self.error {
            after.error.clone_from(error);
        }
        if self.new_generation {
            after.generation = test.generation.saturating_add(1);
        }
        if let Some(ready_at) = self.ready_at {
            after.ready_at = Some(ready_at);
        }
        after.expires_at = self.expires_at;
        after.attempts = match self.attempts {
            Attempts::Keep => test.attempts,
            Attempts::Reset => 0,
            Attempts::Count => test.attempts.saturating_add(1),
        };
        after.outage = match &self.outage {
            Outage::Keep => test.outage.clone(),
            Outage::Clear => None,
            Outage::Host(host) => match &test.outage {
                Some((seen, since)) if seen == host => Some((host.clone(), *since)),
                _ => Some((host.clone(), now)),
            },
        };
        after.updated_at = now;
        after
    }
}

/// How many times an unreachable agent is retried before a copy fails.
pub const MAX_ATTEMPTS: u32 = 40;

/// Wait before retry number `attempts` (1, 2, 4 ... 30 s).
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(5)).min(Duration::from_secs(30))
}

/// Wait before retrying a removal the agent refused (1, 2, 4 ... 300 s):
/// it may refuse for as long as a transfer runs.
pub fn removal_backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9)).min(Duration::from_secs(300))
}

/// The least time a test that is not ready is given before it expires: a
/// copy may take longer than a short `ttl`, which counts from readiness.
pub const COPY_GRACE: Duration = Duration::from_secs(86_400);

/// `at` plus `seconds`, or the last time there is.
fn later(at: DateTime<Utc>, seconds: u64) -> DateTime<Utc> {
    i64::try_from(seconds)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|delta| at.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// When `test` is removed by itself. A ready test: `ttl` after it was last
/// ready. Any other test that is not being deleted (failed, or stuck
/// placing, copying or refreshing): `ttl`, but at least [`COPY_GRACE`],
/// after it was last ready or else created. Deleting and deleted tests do
/// not expire: they are ending already. Recorded as the test's timer
/// (`expires_at`) with every transition.
pub fn expiry(test: &Test) -> Option<DateTime<Utc>> {
    let since = test.ready_at.unwrap_or(test.created_at);
    match test.state {
        TestState::Deleting | TestState::Deleted => None,
        TestState::Ready => Some(later(since, test.ttl_seconds)),
        _ => Some(later(since, test.ttl_seconds.max(COPY_GRACE.as_secs()))),
    }
}

/// What to record when `input` happens to `test` (`None`: there is no
/// such test yet) at `now`. Pure: the whole test workflow is here.
pub fn next(test: Option<&Test>, input: Input, now: DateTime<Utc>) -> Decision {
    let Some(test) = test else {
        return match input {
            Input::Event(Event::Create { ttl_seconds }) => Decision::Record(Transition {
                state: Some(TestState::Placing),
                step: Some(TestStep::Grant),
                error: Some(String::new()),
                // Not ready yet: the copy's grace, from its creation (now).
                expires_at: Some(later(now, ttl_seconds.max(COPY_GRACE.as_secs()))),
                run: Run::Now,
                attempts: Attempts::Reset,
                outage: Outage::Clear,
                ..Transition::default()
            }),
            other => Decision::Refused(format!("there is no such test for {other:?}")),
        };
    };
    let transition = match input {
        // The request was recorded already: a retry of it changes nothing.
        Input::Event(Event::Create { .. }) => return Decision::Unchanged,
        Input::Event(Event::Refresh) => match test.state {
            TestState::Ready => Transition {
                state: Some(TestState::Refreshing),
                step: Some(TestStep::Grant),
                new_generation: true,
                error: Some(String::new()),
                run: Run::Now,
                attempts: Attempts::Reset,
                ..Transition::default()
            },
            state => {
                return Decision::Refused(format!(
                    "test {} is {}; only a ready test can be refreshed",
                    test.id,
                    state.as_str()
                ));
            }
        },
        Input::Event(Event::Delete) => match test.state {
            TestState::Deleting | TestState::Deleted => return Decision::Unchanged,
            _ => removal(),
        },
        Input::Event(Event::Expire) => match expiry(test) {
            None => return Decision::Unchanged,
            Some(at) if at <= now => removal(),
            // Early, or never recorded (a test from before timers): set it.
            Some(at) if test.expires_at != Some(at) => Transition::default(),
            Some(_) => return Decision::Unchanged,
        },
        Input::Finished(finished) => after(test, finished, now),
    };
    let expires_at = expiry(&transition.applied(test, now));
    Decision::Record(Transition {
        expires_at,
        ..transition
    })
}

/// Delete, or expiry: the copy is removed, at once. A running step keeps
/// its lease; its outcome is dropped when it ends ([`after`]).
fn removal() -> Transition {
    Transition {
        state: Some(TestState::Deleting),
        step: Some(TestStep::Remove),
        run: Run::Now,
        attempts: Attempts::Reset,
        ..Transition::default()
    }
}

fn failed(error: String) -> Transition {
    Transition {
        state: Some(TestState::Failed),
        step: Some(TestStep::Remove),
        error: Some(error),
        run: Run::Now,
        attempts: Attempts::Reset,
        outage: Outage::Clear,
        ..Transition::default()
    }
}

/// The host the current step of `test` calls: the source for the grant,
/// the test host for the copy and the removal.
pub fn host_of_step(test: &Test) -> &str {
    match test.step {
        TestStep::Grant => &test.source_host_id,
        _ => &test.test_host_id,
    }
}

/// How long a step that keeps failing to reach its host is retried before
/// the test fails: the sum of every backoff.
pub fn retried_for() -> Duration {
    (0..MAX_ATTEMPTS).map(backoff).sum()
}

fn retry(test: &Test, why: String, give_up: bool) -> Transition {
    if give_up && test.attempts + 1 >= MAX_ATTEMPTS {
        return failed(format!(
            "gave up after {} attempts: {why}",
            test.attempts + 1
        ));
    }
    Transition {
        error: Some(why),
        run: Run::After(backoff(test.attempts)),
        attempts: Attempts::Count,
        outage: Outage::Host(host_of_step(test).to_owned()),
        ..Transition::default()
    }
}

/// Until when the step of `test`, cut off from a host since `since`, is
/// retried before the test fails; `None`: for as long as it takes (a
/// removal is never given up).
pub fn retried_until(test: &Test, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (test.step != TestStep::Remove)
        .then(|| since + chrono::Duration::from_std(retried_for()).unwrap_or_default())
}
/// The host `test` cannot reach now, as `WatchTest` shows it, if any. A
/// step that cannot reach its host says so first (since its first failure,
/// until [`retried_until`]); otherwise a copy whose target agent waits for
/// the source (the last progress says so) names the source host, with the
/// agent's own since and until. The agent's word ends with the copy step:
/// a ready, failed or deleted test shows no outage from its last copy.
pub fn outage(test: &Test) -> Option<HostOutage> {
    if let Some((host, since)) = &test.outage {
        return Some(HostOutage {
            host_id: host.clone(),
            since: *since,
            retried_until: retried_until(test, *since),
            error: test.error.clone(),
        });
    }
    let copying = matches!(test.state, TestState::Copying | TestState::Refreshing)
        && test.step == TestStep::Copy;
    let waiting = test
        .progress
        .as_ref()?
        .waiting
        .as_ref()
        .filter(|_| copying)?;
    Some(HostOutage {
        host_id: test.source_host_id.clone(),
        since: waiting.since,
        retried_until: waiting.until,
        error: format!(
            "the test host cannot reach the {}: {}",
            waiting.what, waiting.error
        ),
    })
}

/// What to record when the step `finished` of `test` ended, `test` being
/// as it is now (read again, under lock, after the step ran).
fn after(test: &Test, finished: Finished, now: DateTime<Utc>) -> Transition {
    let Finished {
        step,
        generation,
        outcome,
    } = finished;
    if step == TestStep::None || (step, generation) != (test.step, test.generation) {
        // A deletion (or expiry) was recorded while the step ran: the
        // deletion wins. The outcome is dropped, no expiry is set from a
        // copy being deleted, and the removal runs at once. (A test with
        // no step has nothing to finish: nothing changes.)
        return Transition {
            run: Run::Now,
            attempts: Attempts::Reset,
            outage: Outage::Clear,
            ..Transition::default()
        };
    }
    match (test.step, outcome) {
        (TestStep::Grant, StepOutcome::Granted) => Transition {
            state: Some(match test.state {
                TestState::Refreshing => TestState::Refreshing,
                _ => TestState::Copying,
            }),
            step: Some(TestStep::Copy),
            error: Some(String::new()),
            run: Run::Now,
            attempts: Attempts::Reset,
            outage: Outage::Clear,
            ..Transition::default()
        },
        // The copy is there: its sites are started from it before the
        // test is ready.
        (TestStep::Copy, StepOutcome::Copied(_)) if test.plan.runs_sites => Transition {
            step: Some(TestStep::Sites),
            error: Some(String::new()),
            run: Run::Now,
            attempts: Attempts::Reset,
            outage: Outage::Clear,
            ..Transition::default()
        },
        (TestStep::Copy, StepOutcome::Copied(_))
        | (TestStep::Sites, StepOutcome::SitesRunning(_)) => Transition {
            state: Some(TestState::Ready),
            step: Some(TestStep::None),
            error: Some(String::new()),
            ready_at: Some(now),
            run: Run::Now,
            attempts: Attempts::Reset,
            outage: Outage::Clear,
            ..Transition::default()
        },
        (TestStep::Sites, StepOutcome::Refused(why)) => failed(format!(
            "the account's sites could not be started on test host {}: {why}",
            test.test_host_id
        )),
        (TestStep::Copy, StepOutcome::CopyFailed(error)) => {
            failed(format!("the copy failed: {error}"))
        }
        // The partial copy of a failed test is gone: it stays failed (with
        // its reason), unless a deletion came meanwhile.
        (TestStep::Remove, StepOutcome::Removed) => Transition {
            state: Some(match test.state {
                TestState::Failed => TestState::Failed,
                _ => TestState::Deleted,
            }),
            step: Some(TestStep::None),
            run: Run::Now,
            attempts: Attempts::Reset,
            outage: Outage::Clear,
            ..Transition::default()
        },
        // Cleaning up must eventually happen: never give up on it.
        (TestStep::Remove, StepOutcome::Unreachable(why)) => retry(test, why, false),
        (TestStep::Remove, StepOutcome::Refused(why)) => Transition {
            error: Some(format!("the copy is not removed yet (retried): {why}")),
            run: Run::After(removal_backoff(test.attempts)),
            attempts: Attempts::Count,
            outage: Outage::Clear,
            ..Transition::default()
        },
        (_, StepOutcome::Unreachable(why)) => retry(test, why, true),
        (_, StepOutcome::Refused(why)) => failed(why),
        (step, outcome) => Transition {
            error: Some(format!(
                "internal: step {} cannot end with {outcome:?}",
                step.as_str()
            )),
            run: Run::After(backoff(test.attempts)),
            attempts: Attempts::Count,
            outage: Outage::Clear,
            ..Transition::default()
        },
    }
}

#[cfg(test)]
mod tests;
