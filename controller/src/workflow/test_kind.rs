//! The test as a kind of the workflow engine ([`TestKind`], `"test"`): its
//! state is the [`Test`] itself (`workflows.state`), its steps are the
//! test's steps (grant, copy, sites, remove), and its transition is
//! [`test_flow::next`] driven by the engine's inputs ([`decide`]).
//!
//! How the panel's commands and the test's timer arrive:
//!
//! - *TestMigration* creates the test and its workflow in one transaction
//!   ([`super::test_events::create`]); [`Event::Start`] runs the first
//!   step the creation decided.
//! - *RefreshTest* is [`Event::Command`] [`REFRESH`], its payload the time
//!   it was asked at (the transition reads no clock) and the plan of the
//!   account as it is now: the new generation copies the databases the
//!   account has now (the test host drops the copies of those it dropped).
//! - *DeleteTest* is [`Event::Cancel`]: the one event the engine passes
//!   into a running step ([`StepContext::cancel_requested`], seen at the
//!   next lease renewal), so a copy stops and the deletion wins. A test has
//!   no point of no return, so a cancel is always delivered.
//! - Expiry is the engine's timer: every transition that leaves the test
//!   without a step waits with [`Next::WaitUntil`] its `expires_at`; a
//!   pending step holds no timer, so each step's end also checks the
//!   expiry. [`Event::Timer`] is delivered only once `expires_at` passed
//!   (on the database's clock); one armed for an older expiry (a test
//!   from before the engine) is armed again, not obeyed.
//!
//! The `tests` row is the panel's view: written by [`Kind::project`] in
//! the transaction that records each transition, and by the copy step's
//! progress while it holds the lease.
//!
//! The sites step ([`sites_spec`]) has the test host run exactly the
//! plan's sites from the copy's home, with the copy's database servers
//! (none left: `StopSites`); the removal stops them before it removes the
//! copy. The test host's agent checks every site it is given (domains,
//! document root) before anything is written, so a preview the answer
//! gives names only sites it accepted.
//!
//! Invariants: [`decide`] is pure (time comes in with the inputs); the
//! steps speak domain types only (`agents::wire` converts them); every
//! host-touching step carries the transfer id, so a step run again after a
//! crash or a lost lease is harmless.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::test_flow::{self, Decision, Finished, Run, StepOutcome};
use crate::agents::sites::{SiteDatabases, SitesSpec};
use crate::agents::transfer::{DatabaseCopy, TransferSpec, TransferState};
use crate::agents::{self, CallFailure};
use crate::engine::{End, Event, Input, Kind, Next, StepContext, Transition, WorkflowId};
use crate::model::{CopyPlan, CopyProgress, Engine, Host, Test, TestState, TestStep};
use crate::state::Controller;
use crate::store;

/// The command of *RefreshTest*; its payload is [`Asked`].
pub const REFRESH: &str = "refresh";

/// How often stored progress is updated while a copy runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long a source lets the test host read for one transfer: time for
/// the copy and its retries. The grant is revoked when the copy ends.
const GRANT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A command's payload: when it was asked for, and (a refresh) the plan
/// of the account as it is now.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Asked {
    #[serde(with = "crate::model::rfc3339")]
    pub at: DateTime<Utc>,
    /// What the new generation copies (`placement::replan_test`); `None`:
    /// the test's plan as it was.
    #[serde(default)]
    pub plan: Option<CopyPlan>,
}

/// What performing a test step came to.
// One value per step run, moved once: its size is of no concern.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum TestOutcome {
    /// The step ended with `outcome` at `at`. `reached_target`: the
    /// test host answered during the step (its outage, if one was
    /// recorded, is over).
    Finished {
        outcome: StepOutcome,
        #[serde(with = "crate::model::rfc3339")]
        at: DateTime<Utc>,
        reached_target: bool,
    },
    /// The step stopped early because a deletion waits in the inbox:
    /// nothing changes, and the deletion is delivered next.
    Stopped,
}

/// The test kind; its steps call the agents through `controller`.
pub struct TestKind {
    controller: Arc<Controller>,
}

impl TestKind {
    pub fn new(controller: Arc<Controller>) -> TestKind {
        TestKind { controller }
    }
}

impl Kind for TestKind {
    const NAME: &'static str = "test";
    type State = Test;
    type Step = TestStep;
    type Outcome = TestOutcome;

    fn transition(&self, test: &Test, input: Input<TestOutcome>) -> Transition<Test, TestStep> {
        decide(test, input)
    }

    async fn perform(&self, test: &Test, step: &TestStep, context: &StepContext) -> TestOutcome {
        run_step(&self.controller, test, *step, context).await
    }

    fn failed(&self, outcome: &TestOutcome) -> bool {
        matches!(
            outcome,
            TestOutcome::Finished {
                outcome: StepOutcome::CopyFailed(_)
                    | StepOutcome::Unreachable(_)
                    | StepOutcome::Refused(_),
                ..
            }
        )
    }

    fn projects(&self) -> bool {
        true
    }

    async fn project(
        &self,
        client: &tokio_postgres::Transaction<'_>,
        _id: &WorkflowId,
        test: &Test,
    ) -> Result<(), crate::error::Error> {
        store::test_runs::project(client, test).await
    }
}

/// The test's transition for an engine input: [`test_flow::next`] with
/// the time the input carries. Pure.
pub fn decide(test: &Test, input: Input<TestOutcome>) -> Transition<Test, TestStep> {
    use test_flow::{Event as Flow, Input as FlowInput};
    match input {
        // The creation decided the first step already.
        Input::Event(Event::Start) => unchanged(test),
        // A deletion carries no time of its own; it sets none that the
        // test shows (`updated_at` is the database's, at projection).
        Input::Event(Event::Cancel) => apply(test, FlowInput::Event(Flow::Delete), test.updated_at),
        Input::Event(Event::Command { name, payload }) if name == REFRESH => {
            match serde_json::from_value::<Asked>(payload) {
                Ok(asked) => {
                    let mut refreshed = apply(test, FlowInput::Event(Flow::Refresh), asked.at);
                    if let Some(plan) = asked.plan
                        && refreshed.state.generation != test.generation
                    {
                        refreshed.state.plan = plan;
                    }
                    refreshed
                }
                Err(_) => unchanged(test),
            }
        }
        // Delivered only once the time it was armed for passed: the test's
        // expiry is due if it is the expiry the timer was armed for. One
        // that moved on (or was never armed) is armed again.
        Input::Event(Event::Timer) => {
            let armed_for = test.expires_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
            apply(test, FlowInput::Event(Flow::Expire), armed_for)
        }
        Input::Event(Event::Command { .. } | Event::ChildFinished { .. }) => unchanged(test),
        Input::Outcome(TestOutcome::Stopped) => unchanged(test),
        Input::Outcome(TestOutcome::Finished {
            outcome,
            at,
            reached_target,
        }) => {
            let mut before = test.clone();
            if reached_target
                && before
                    .outage
                    .as_ref()
                    .is_some_and(|(host, _)| *host == test.test_host_id)
            {
                before.outage = None;
            }
            let finished = FlowInput::Finished(Finished {
                step: test.step,
                generation: test.generation,
                outcome,
            });
            let after = apply(&before, finished, at);
            // A pending step holds no timer: an expiry that passed while
            // it ran is obeyed now.
            match after.state.expires_at {
                Some(expires_at) if expires_at <= at => {
                    apply(&after.state, FlowInput::Event(Flow::Expire), at)
                }
                _ => after,
            }
        }
    }
}

/// What `input` leads to from `test` at `now`; the test unchanged when
/// [`test_flow::next`] records nothing or refuses.
fn apply(test: &Test, input: test_flow::Input, now: DateTime<Utc>) -> Transition<Test, TestStep> {
    match test_flow::next(Some(test), input, now) {
        Decision::Record(transition) => {
            let after = transition.applied(test, now);
            let next = next_of(&after, transition.run);
            Transition::new(after, next)
        }
        Decision::Unchanged | Decision::Refused(_) => unchanged(test),
    }
}

fn unchanged(test: &Test) -> Transition<Test, TestStep> {
    Transition::new(test.clone(), next_of(test, Run::Now))
}

/// What the engine does next with `test`: its step (at once, or after a
/// retry's wait), or wait for a command until its expiry; a deleted test's
/// workflow is over.
pub fn next_of(test: &Test, run: Run) -> Next<TestStep> {
    match test.step {
        TestStep::None if test.state == TestState::Deleted => Next::Done(End::Completed),
        TestStep::None => match test.expires_at {
            Some(at) => Next::WaitUntil(at),
            None => Next::Wait,
        },
        step => match run {
            Run::After(wait) => Next::RunAfter(step, wait),
            Run::Now | Run::Keep => Next::Run(step),
        },
    }
}

/// The transfer of the current generation of `test`.
pub fn transfer_spec(test: &Test) -> TransferSpec {
    TransferSpec {
        transfer_id: test.transfer_id(),
        account: test.account.clone(),
        source_host_id: test.source_host_id.clone(),
        source_endpoint: test.plan.source_endpoint.clone(),
        target_host_id: test.test_host_id.clone(),
        source_home: test.plan.source_home.clone(),
        // The target agent puts the home in its own accounts directory.
        target_home: String::new(),
        databases: test
            .plan
            .databases
            .iter()
            .map(|d| DatabaseCopy {
                engine: d.engine,
                source_server: d.source_server.clone(),
                source_database: d.name.clone(),
                target_server: d.target_server.clone(),
                target_database: d.name.clone(),
            })
            .collect(),
        // A test copy can be made again; it need not be synced to disk.
        disposable: true,
        // Every generation fills the test's one copy on the test host.
        copy_id: test.id.clone(),
        protocol_version: test.plan.protocol_version,
        grant_expires_at: Some(
            Utc::now()
                + chrono::Duration::from_std(GRANT_LIFETIME).unwrap_or(chrono::Duration::hours(24)),
        ),
        postgres_replication_slots: Default::default(),
        mariadb_snapshot_positions: false,
        files_only: false,
    }
}

/// Runs `step` of `test`, logged in `step_runs` (the test's own record of
/// step runs, beside the engine's audit trail).
async fn run_step(
    controller: &Arc<Controller>,
    test: &Test,
    step: TestStep,
    context: &StepContext,
) -> TestOutcome {
    let started = match controller.db.get().await {
        Ok(client) => store::test_runs::step_started(&**client, test, &context.controller_id).await,
        Err(error) => Err(error.into()),
    };
    let run_id = match started {
        Ok(run_id) => Some(run_id),
        Err(error) => {
            // The step runs all the same: `step_runs` misses this run (the
            // engine's audit trail has it).
            tracing::warn!(message = "the step's run could not be logged in step_runs", test_id = %test.id, %error);
            None
        }
    };
    let outcome = perform(controller, test, step, context).await;
    if let Some(run_id) = run_id {
        let text = match &outcome {
            TestOutcome::Finished { outcome, .. } => format!("{outcome:?}"),
            TestOutcome::Stopped => "Stopped: the test is being deleted".to_owned(),
        };
        let logged = match controller.db.get().await {
            Ok(client) => store::test_runs::step_finished(&**client, run_id, &text).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = logged {
            tracing::warn!(message = "the step's end could not be logged in step_runs", test_id = %test.id, run_id, %error);
        }
    }
    outcome
}

/// Performs one step against the agents.
async fn perform(
    controller: &Arc<Controller>,
    test: &Test,
    step: TestStep,
    context: &StepContext,
) -> TestOutcome {
    let finished = |outcome, reached_target| TestOutcome::Finished {
        outcome,
        at: Utc::now(),
        reached_target,
    };
    let hosts = async {
        let client = controller.db.get().await?;
        let source = store::hosts::get(&**client, &test.source_host_id).await?;
        let target = store::hosts::get(&**client, &test.test_host_id).await?;
        Ok::<_, crate::error::Error>((source, target))
    }
    .await;
    let (source, target) = match hosts {
        Ok(hosts) => hosts,
        Err(error) => return finished(StepOutcome::Unreachable(error.to_string()), false),
    };
    let spec = transfer_spec(test);
    match step {
        TestStep::Grant => match agents::grant_transfer(controller, &source, &spec).await {
            Ok(()) => finished(StepOutcome::Granted, false),
            Err(error) => finished(failure(error), false),
        },
        TestStep::Copy => {
            let mut cancel = context.cancel_requested.clone();
            let copied = tokio::select! {
                copied = follow_copy(controller, test, &target, &spec, context) => copied,
                _ = cancel.wait_for(|requested| *requested) => {
                    tracing::info!(message = "the test is being deleted: the copy step stops; the deletion wins");
                    return TestOutcome::Stopped;
                }
            };
            let (outcome, reached_target) = copied;
            if matches!(outcome, StepOutcome::Copied(_) | StepOutcome::CopyFailed(_)) {
                revoke_grants(controller, &source, &[spec.transfer_id]).await;
            }
            finished(outcome, reached_target)
        }
        TestStep::Sites => match run_sites(controller, test, &target).await {
            Ok(running) => finished(StepOutcome::SitesRunning(running), true),
            Err(error) => finished(failure(error), false),
        },
        TestStep::Remove => match remove(controller, test, &target, &spec).await {
            Ok(removed) => {
                tracing::info!(
                    message = "copy removed",
                    logins_dropped = ?removed.logins_dropped,
                    logins_kept = ?removed.logins_kept
                );
                // Every generation's grant, should an earlier revocation
                // have failed.
                let transfers: Vec<String> = (1..=test.generation)
                    .map(|generation| format!("{}-g{generation}", test.id))
                    .collect();
                revoke_grants(controller, &source, &transfers).await;
                finished(StepOutcome::Removed, true)
            }
            Err(error) => finished(failure(error), false),
        },
        TestStep::None => finished(StepOutcome::Refused("nothing to do".to_owned()), false),
    }
}

/// Makes the test host run exactly the plan's sites, from the copy's home,
/// with the copy's databases: started (or changed, after a refresh), or
/// stopped when the account has none now. Returns how many run.
async fn run_sites(
    controller: &Controller,
    test: &Test,
    target: &Host,
) -> Result<usize, CallFailure> {
    if test.plan.sites.is_empty() {
        let stopped = agents::sites::stop_sites(controller, target, &test.account).await?;
        tracing::info!(message = "the account has no sites now; none run on the test host", test_id = %test.id, was_running = stopped);
        return Ok(0);
    }
    let spec = sites_spec(test, target);
    let started = agents::sites::start_sites(controller, target, &spec).await?;
    tracing::info!(
        message = "sites running on the test host",
        test_id = %test.id,
        sites = started.sites.len(),
        already_running = started.already_running
    );
    Ok(started.sites.len())
}

/// The sites of `test` as the test host runs them: the plan's, from the
/// copy (`copy_id` is the test's id), their databases defaulting to the
/// servers the copy's databases landed on (the first of each engine, as a
/// site's code names no host); an engine the account has no database of
/// defaults to the test host's first server of it.
pub fn sites_spec(test: &Test, target: &Host) -> SitesSpec {
    let planned = |engine: Engine| {
        test.plan
            .databases
            .iter()
            .find(|d| d.engine == engine)
            .map(|d| (d.target_address.clone(), d.target_port))
            .or_else(|| {
                target
                    .database_servers
                    .iter()
                    .find(|s| s.engine == engine)
                    .map(|s| (s.address.clone(), s.port))
            })
    };
    SitesSpec {
        account: test.account.clone(),
        copy_id: Some(test.id.clone()),
        sites: test.plan.sites.clone(),
        databases: Some(SiteDatabases {
            postgres: planned(Engine::Postgresql),
            mariadb: planned(Engine::Mariadb).map(|(host, port)| (host, port, String::new())),
        }),
    }
}

/// Removes the copy of `test` from the test host: its sites stopped first
/// (when the plan runs sites), so that no pool serves a home being removed.
async fn remove(
    controller: &Controller,
    test: &Test,
    target: &Host,
    spec: &TransferSpec,
) -> Result<agents::transfer::CopyRemoval, CallFailure> {
    if test.plan.runs_sites {
        let stopped = agents::sites::stop_sites(controller, target, &test.account).await?;
        tracing::info!(message = "the test's sites are stopped", test_id = %test.id, were_running = stopped);
    }
    agents::remove_copy(controller, target, spec).await
}

/// A failed agent call as a step outcome: transport trouble is retried, a
/// refusal is not.
fn failure(failure: CallFailure) -> StepOutcome {
    match failure {
        CallFailure::Retry(why) => StepOutcome::Unreachable(why),
        CallFailure::Refused(why) => StepOutcome::Refused(why),
    }
}

/// Asks the source agent to revoke the grants of `transfer_ids`. Best
/// effort: a grant that cannot be revoked now still expires by itself.
async fn revoke_grants(controller: &Controller, source: &Host, transfer_ids: &[String]) {
    for transfer_id in transfer_ids {
        match agents::revoke_grant(controller, source, transfer_id).await {
            Ok(revoked) => {
                tracing::info!(message = "grant revoked", %transfer_id, source = %source.id, was_live = revoked)
            }
            Err(error) => tracing::warn!(
                message = "the grant could not be revoked now; it expires by itself",
                %transfer_id,
                source = %source.id,
                error = ?error
            ),
        }
    }
}

/// Starts (or resumes) the copy on the target and follows it to its end,
/// storing progress on the way; also whether the target answered.
async fn follow_copy(
    controller: &Arc<Controller>,
    test: &Test,
    target: &Host,
    spec: &TransferSpec,
    context: &StepContext,
) -> (StepOutcome, bool) {
    let mut last = match agents::start_transfer(controller, target, spec).await {
        Ok(report) => report,
        Err(error) => return (failure(error), false),
    };
    let mut stored_at = Instant::now() - PROGRESS_EVERY;
    // What the target agent last said it waits for, as stored: a change
    // (an outage of the source begins or ends) is stored at once.
    let mut stored_waiting = None;
    if last.state == TransferState::Running {
        let mut watch = match agents::watch_transfer(controller, target, &spec.transfer_id).await {
            Ok(watch) => watch,
            Err(error) => return (failure(error), true),
        };
        loop {
            match watch.next().await {
                Ok(Some(report)) => {
                    last = report;
                    if last.state != TransferState::Running {
                        break;
                    }
                    if stored_at.elapsed() >= PROGRESS_EVERY
                        || last.progress.waiting != stored_waiting
                    {
                        stored_at = Instant::now();
                        stored_waiting = last.progress.waiting.clone();
                        store_progress(controller, test, context, &last.progress).await;
                    }
                }
                Ok(None) => break,
                Err(why) => return (StepOutcome::Unreachable(why), true),
            }
        }
    }
    store_progress(controller, test, context, &last.progress).await;
    let outcome = match last.state {
        TransferState::Succeeded => StepOutcome::Copied(last.progress),
        TransferState::Failed => StepOutcome::CopyFailed(last.error),
        TransferState::Running | TransferState::Unknown => StepOutcome::Unreachable(format!(
            "the copy on host {} stopped before its end",
            target.id
        )),
    };
    (outcome, true)
}

/// Stores the copy's progress while the lease is ours. Best effort: the
/// copy goes on, and the next progress is stored again.
async fn store_progress(
    controller: &Controller,
    test: &Test,
    context: &StepContext,
    progress: &CopyProgress,
) {
    let stored = match controller.db.get().await {
        Ok(client) => {
            store::test_runs::store_progress(&**client, &test.id, &context.controller_id, progress)
                .await
        }
        Err(error) => Err(error.into()),
    };
    if let Err(error) = stored {
        tracing::warn!(message = "storing the copy's progress failed; the copy goes on", test_id = %test.id, %error);
    }
}

#[cfg(test)]
mod tests;
