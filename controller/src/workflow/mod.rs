//! Durable workflows: tests today, migrations and server shuttles next.
//!
//! Every controller runs [`spawn_runner`]. It claims due steps from the
//! database with a lease (`FOR UPDATE SKIP LOCKED`, so two controllers never
//! claim the same step), keeps the lease alive while the step runs, and
//! records the step's result only if it still holds the lease (fencing). A
//! controller killed mid-step loses its lease; another (or the same one,
//! restarted) runs the step again, which agents make harmless: every call
//! carries the transfer id. The runner also fires due timers: a test's
//! `expires_at` is an `Expire` event ([`test_events::expire`]).
//!
//! Commands (create, refresh, delete) and timers are events of the test's
//! pure transition function ([`test_flow::next`]), as are step outcomes;
//! the store only records what it decided. A deletion (DeleteTest, expiry)
//! may be recorded while a step runs: the lease renewal sees it and stops
//! the step, and the step's outcome is decided on the test as it is now,
//! read again under lock in the transaction that records it, so the
//! deletion wins.
//!
//! Grants end with their copy: when a copy ends (done or failed), and again
//! when a copy is removed, the source agent is asked to revoke the grants
//! of the test's transfers (best effort: a grant also expires by itself).
//!
//! This module only performs the steps, with domain types: the agent API's
//! messages are `agents::wire`'s.

pub mod test_events;
pub mod test_flow;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::agents::transfer::{DatabaseCopy, TransferSpec, TransferState};
use crate::agents::{self, CallFailure};
use crate::db::Change;
use crate::error::Result;
use crate::model::{CopyProgress, Test, TestState, TestStep};
use crate::state::Controller;
use crate::store;
use test_flow::{Decision, Finished, Input, StepOutcome};

/// How long a claimed step is ours without renewal.
const LEASE: Duration = Duration::from_secs(15);
/// How often a running step renews its lease.
const LEASE_RENEWAL: Duration = Duration::from_secs(5);
/// Steps run at once by one controller.
const CONCURRENT_STEPS: usize = 8;
/// How often stored progress is updated while a copy runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How often the runner looks for due timers.
const TIMERS_EVERY: Duration = Duration::from_secs(1);
/// Timers fired at most per look.
const TIMERS_AT_ONCE: i64 = 100;
/// How long a source lets the test host read for one transfer: time for
/// the copy and its retries. The grant is revoked when the copy ends.
const GRANT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

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
            chrono::Utc::now()
                + chrono::Duration::from_std(GRANT_LIFETIME).unwrap_or(chrono::Duration::hours(24)),
        ),
    }
}

/// Starts this controller's workflow runner: due steps and due timers.
pub fn spawn_runner(controller: Arc<Controller>) {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(CONCURRENT_STEPS));
        let mut changes = controller.changes.subscribe();
        let mut timers_looked_at = Instant::now() - TIMERS_EVERY;
        loop {
            if timers_looked_at.elapsed() >= TIMERS_EVERY {
                timers_looked_at = Instant::now();
                if let Err(error) = fire_timers(&controller).await {
                    tracing::warn!(message = "firing due timers failed; retried in a moment", %error);
                }
            }
            // Claim as many due steps as there are free slots.
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                let claimed = match controller.db.get().await {
                    Ok(client) => {
                        store::test_runs::claim_due(&**client, &controller.controller_id, LEASE)
                            .await
                    }
                    Err(error) => Err(error.into()),
                };
                match claimed {
                    Ok(Some(test)) => {
                        let controller = controller.clone();
                        tokio::spawn(async move {
                            run_step(&controller, test).await;
                            drop(permit);
                        });
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(message = "claiming workflow steps failed", %error);
                        break;
                    }
                }
            }
            // Wake on any test change, or every second for retries and
            // timers due.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match changes.recv().await {
                        Ok(Change::Notified { channel, .. }) if channel == "navette_tests" => {
                            return;
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            })
            .await;
        }
    });
}

/// Fires every due timer: an `Expire` event for each test whose
/// `expires_at` passed. Several controllers may fire the same timer: the
/// event is recorded once, the others find the test deleting already.
async fn fire_timers(controller: &Controller) -> Result<()> {
    let client = controller.db.get().await?;
    for id in store::test_runs::due_timers(&**client, TIMERS_AT_ONCE).await? {
        match test_events::expire(&**client, &id).await {
            Ok(true) => tracing::info!(message = "test expired; removing its copy", test_id = %id),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(message = "expiring a test failed; retried in a moment", test_id = %id, %error)
            }
        }
    }
    Ok(())
}

/// Runs the claimed step of `test` while renewing the lease, then records
/// what happened (if the lease is still ours).
async fn run_step(controller: &Arc<Controller>, test: Test) {
    use tracing::Instrument;
    let span = tracing::info_span!("step", test_id = %test.id, step = test.step.as_str(), generation = test.generation);
    run_step_in_span(controller, test).instrument(span).await;
}

async fn run_step_in_span(controller: &Arc<Controller>, test: Test) {
    let began = Instant::now();
    let owner = controller.controller_id.clone();
    let started = match controller.db.get().await {
        Ok(client) => store::test_runs::step_started(&**client, &test, &owner).await,
        Err(error) => Err(error.into()),
    };
    let run_id = match started {
        Ok(run_id) => Some(run_id),
        Err(error) => {
            // The step runs all the same: the audit misses this run.
            tracing::warn!(message = "the step's run could not be logged in step_runs", test_id = %test.id, %error);
            None
        }
    };
    let (stop_sender, mut stop) = tokio::sync::watch::channel(Interruption::None);
    let renewal = {
        let controller = controller.clone();
        let (id, owner) = (test.id.clone(), owner.clone());
        let removing = test.step == TestStep::Remove;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_RENEWAL).await;
                let renewed = match controller.db.get().await {
                    Ok(client) => {
                        store::test_runs::renew_lease(&**client, &id, &owner, LEASE).await
                    }
                    Err(error) => Err(error.into()),
                };
                let state = match renewed {
                    Ok(state) => state,
                    Err(error) => {
                        tracing::warn!(message = "renewing the lease failed; the step stops", test_id = %id, %error);
                        None
                    }
                };
                // The receiver is gone only once the step ended: nothing
                // is left to stop.
                match state {
                    None => {
                        let _ = stop_sender.send(Interruption::LeaseLost);
                        return;
                    }
                    Some(TestState::Deleting) if !removing => {
                        let _ = stop_sender.send(Interruption::Deleted);
                        return;
                    }
                    Some(_) => {}
                }
            }
        })
    };
    let outcome = tokio::select! {
        outcome = perform(controller, &test) => Some(outcome),
        stopped = stop.wait_for(|stop| *stop != Interruption::None) => match stopped.map(|s| *s) {
            Ok(Interruption::Deleted) => Some(StepOutcome::Unreachable(
                "the test is being deleted: the step stopped".to_owned(),
            )),
            _ => None,
        },
    };
    renewal.abort();
    let Some(outcome) = outcome else {
        crate::metrics::lease_lost("test");
        tracing::warn!(message = "lost the lease on a step; another controller will run it");
        return;
    };
    let outcome_text = format!("{outcome:?}");
    crate::metrics::step_finished(
        "test",
        test.step.as_str(),
        began.elapsed(),
        !matches!(
            outcome,
            StepOutcome::CopyFailed(_) | StepOutcome::Unreachable(_) | StepOutcome::Refused(_)
        ),
    );
    let finished = Finished {
        step: test.step,
        generation: test.generation,
        outcome,
    };
    let recorded = record(controller, &test, &owner, finished).await;
    if let Some(run_id) = run_id {
        let logged = match controller.db.get().await {
            Ok(client) => store::test_runs::step_finished(&**client, run_id, &outcome_text).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = logged {
            tracing::warn!(message = "the step's end could not be logged in step_runs", test_id = %test.id, run_id, %error);
        }
    }
    match recorded {
        Ok(Some(after)) => tracing::info!(
            message = "step done",
            outcome = %outcome_text,
            state = after.state.as_str(),
            next = after.step.as_str()
        ),
        Ok(None) => {
            crate::metrics::lease_lost("test");
            tracing::warn!(message = "step done, but the lease was lost: not recorded")
        }
        Err(error) => {
            tracing::warn!(message = "recording a step failed; it will run again", %error)
        }
    }
}

/// Why a running step was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interruption {
    None,
    LeaseLost,
    /// A deletion was recorded while the step ran.
    Deleted,
}

/// Records that the step of `claimed` `finished`, if `owner` still holds
/// the lease: what `test_flow::next` decides on the test read again, under
/// lock, in the transaction that records it (a deletion recorded meanwhile
/// wins). The test as recorded; `None` when the lease was lost.
async fn record(
    controller: &Controller,
    claimed: &Test,
    owner: &str,
    finished: Finished,
) -> Result<Option<Test>> {
    let mut client = controller.db.get().await?;
    let transaction = client.transaction().await?;
    let (current, lease_owner) = store::test_runs::lock(&*transaction, &claimed.id).await?;
    if lease_owner.as_deref() != Some(owner) {
        return Ok(None);
    }
    let now = chrono::Utc::now();
    let transition = match test_flow::next(Some(&current), Input::Finished(finished), now) {
        Decision::Record(transition) => transition,
        // `next` records every outcome; should it not, the lease is
        // freed and the step retried later.
        other => {
            tracing::warn!(message = "internal: a step outcome was not recorded", decision = ?other);
            test_flow::Transition {
                run: test_flow::Run::After(test_flow::backoff(current.attempts)),
                expires_at: current.expires_at,
                ..test_flow::Transition::default()
            }
        }
    };
    let recorded =
        store::test_runs::finish_step(&*transaction, &claimed.id, owner, &transition).await?;
    transaction.commit().await?;
    if current.state == TestState::Deleting && claimed.state != TestState::Deleting {
        tracing::info!(message = "the test was deleted while its step ran: the deletion wins");
    }
    Ok(recorded.then(|| transition.applied(&current, now)))
}

/// Asks the source agent to revoke the grants of `transfer_ids`. Best
/// effort: a grant that cannot be revoked now still expires by itself.
async fn revoke_grants(
    controller: &Controller,
    source: &crate::model::Host,
    transfer_ids: &[String],
) {
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

/// Performs one step against the agents.
async fn perform(controller: &Arc<Controller>, test: &Test) -> StepOutcome {
    let hosts = async {
        let client = controller.db.get().await?;
        let source = store::hosts::get(&**client, &test.source_host_id).await?;
        let target = store::hosts::get(&**client, &test.test_host_id).await?;
        Ok::<_, crate::error::Error>((source, target))
    }
    .await;
    let (source, target) = match hosts {
        Ok(hosts) => hosts,
        Err(error) => return StepOutcome::Unreachable(error.to_string()),
    };
    let spec = transfer_spec(test);
    match test.step {
        TestStep::Grant => match agents::grant_transfer(controller, &source, &spec).await {
            Ok(()) => StepOutcome::Granted,
            Err(error) => failure(error),
        },
        TestStep::Copy => {
            let outcome = follow_copy(controller, test, &target, &spec).await;
            if matches!(outcome, StepOutcome::Copied(_) | StepOutcome::CopyFailed(_)) {
                revoke_grants(controller, &source, &[spec.transfer_id]).await;
            }
            outcome
        }
        TestStep::Remove => match agents::remove_copy(controller, &target, &spec).await {
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
                StepOutcome::Removed
            }
            Err(error) => failure(error),
        },
        TestStep::None => StepOutcome::Refused("nothing to do".to_owned()),
    }
}

/// A failed agent call as a step outcome: transport trouble is retried, a
/// refusal is not.
fn failure(failure: CallFailure) -> StepOutcome {
    match failure {
        CallFailure::Retry(why) => StepOutcome::Unreachable(why),
        CallFailure::Refused(why) => StepOutcome::Refused(why),
    }
}

/// Starts (or resumes) the copy on the target and follows it to its end,
/// storing progress on the way.
async fn follow_copy(
    controller: &Arc<Controller>,
    test: &Test,
    target: &crate::model::Host,
    spec: &TransferSpec,
) -> StepOutcome {
    let mut last = match agents::start_transfer(controller, target, spec).await {
        Ok(report) => report,
        Err(error) => return failure(error),
    };
    let mut stored_at = Instant::now() - PROGRESS_EVERY;
    // What the target agent last said it waits for, as stored: a change
    // (an outage of the source begins or ends) is stored at once.
    let mut stored_waiting = None;
    if last.state == TransferState::Running {
        let mut watch = match agents::watch_transfer(controller, target, &spec.transfer_id).await {
            Ok(watch) => watch,
            Err(error) => return failure(error),
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
                        store_progress(controller, test, &last.progress).await;
                    }
                }
                Ok(None) => break,
                Err(why) => return StepOutcome::Unreachable(why),
            }
        }
    }
    store_progress(controller, test, &last.progress).await;
    match last.state {
        TransferState::Succeeded => StepOutcome::Copied(last.progress),
        TransferState::Failed => StepOutcome::CopyFailed(last.error),
        TransferState::Running | TransferState::Unknown => StepOutcome::Unreachable(format!(
            "the copy on host {} stopped before its end",
            target.id
        )),
    }
}

/// Stores the copy's progress while the lease is ours. Best effort: the
/// copy goes on, and the next progress is stored again.
async fn store_progress(controller: &Controller, test: &Test, progress: &CopyProgress) {
    let stored = match controller.db.get().await {
        Ok(client) => {
            store::test_runs::store_progress(
                &**client,
                &test.id,
                &controller.controller_id,
                progress,
            )
            .await
        }
        Err(error) => Err(error.into()),
    };
    if let Err(error) = stored {
        tracing::warn!(message = "storing the copy's progress failed; the copy goes on", test_id = %test.id, %error);
    }
}
