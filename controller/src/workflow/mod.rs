//! Durable workflows: tests today, migrations and server shuttles next.
//!
//! Every controller runs [`spawn_runner`]. It claims due steps from the
//! database with a lease (`FOR UPDATE SKIP LOCKED`, so two controllers never
//! claim the same step), keeps the lease alive while the step runs, and
//! records the step's result only if it still holds the lease (fencing). A
//! controller killed mid-step loses its lease; another (or the same one,
//! restarted) runs the step again, which agents make harmless: every call
//! carries the transfer id.
//!
//! A deletion (DeleteTest, expiry) may be recorded while a step runs: the
//! lease renewal sees it and stops the step, and the step's result is
//! recorded in the same transaction that reads the test's state again, so
//! the deletion wins ([`test_flow::settle`]).
//!
//! Grants end with their copy: when a copy ends (done or failed), and again
//! when a copy is removed, the source agent is asked to revoke the grants
//! of the test's transfers (best effort: a grant also expires by itself).
//!
//! The decisions are in pure state machines ([`test_flow`]); this module
//! only performs the steps.

pub mod test_flow;

use std::sync::Arc;
use std::time::{Duration, Instant};

use navette_proto::v1;
use tokio::sync::Semaphore;

use crate::agents::{self, CallFailure};
use crate::api::convert;
use crate::db::Change;
use crate::error::Result;
use crate::model::{CopyProgress, Engine, Test, TestState, TestStep};
use crate::state::Controller;
use crate::store;
use test_flow::StepOutcome;

/// How long a claimed step is ours without renewal.
const LEASE: Duration = Duration::from_secs(15);
/// How often a running step renews its lease.
const LEASE_RENEWAL: Duration = Duration::from_secs(5);
/// Steps run at once by one controller.
const CONCURRENT_STEPS: usize = 8;
/// How often stored progress is updated while a copy runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long a source lets the test host read for one transfer: time for
/// the copy and its retries. The grant is revoked when the copy ends.
const GRANT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The transfer of the current generation of `test`.
pub fn transfer_spec(test: &Test) -> v1::TransferSpec {
    let copies = |engine: Engine| {
        test.plan
            .databases
            .iter()
            .filter(|d| d.engine == engine)
            .map(|d| v1::DatabaseCopy {
                source_server: d.source_server.clone(),
                source_database: d.name.clone(),
                target_server: d.target_server.clone(),
                target_database: d.name.clone(),
            })
            .collect()
    };
    v1::TransferSpec {
        transfer_id: test.transfer_id(),
        account: test.account.clone(),
        source_host_id: test.source_host_id.clone(),
        source_endpoint: test.plan.source_endpoint.clone(),
        target_host_id: test.test_host_id.clone(),
        source_home: test.plan.source_home.clone(),
        // The target agent puts the home in its own accounts directory.
        target_home: String::new(),
        postgresql: copies(Engine::Postgresql),
        mariadb: copies(Engine::Mariadb),
        // A test copy can be made again; it need not be synced to disk.
        disposable: true,
        // Every generation fills the test's one copy on the test host.
        copy_id: test.id.clone(),
        protocol_version: test.plan.protocol_version,
        grant_expires_at: Some(navette_proto::timestamp(
            chrono::Utc::now()
                + chrono::Duration::from_std(GRANT_LIFETIME).unwrap_or(chrono::Duration::hours(24)),
        )),
    }
}

/// Starts this controller's workflow runner and the expiry sweeper.
pub fn spawn_runner(controller: Arc<Controller>) {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(CONCURRENT_STEPS));
        let mut changes = controller.changes.subscribe();
        let mut last_sweep = Instant::now() - Duration::from_secs(60);
        loop {
            if last_sweep.elapsed() >= Duration::from_secs(5) {
                last_sweep = Instant::now();
                if let Err(error) = expire(&controller).await {
                    tracing::warn!(message = "expiring tests failed", %error);
                }
            }
            // Claim as many due steps as there are free slots.
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                let claimed = match controller.db.get().await {
                    Ok(client) => {
                        store::tests::claim_due(&**client, &controller.controller_id, LEASE).await
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
            // Wake on any test change, or every second for retries due.
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

async fn expire(controller: &Controller) -> Result<()> {
    let client = controller.db.get().await?;
    for id in store::tests::expire_due(&**client, test_flow::COPY_GRACE).await? {
        tracing::info!(message = "test expired; removing its copy", test_id = %id);
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
    let owner = controller.controller_id.clone();
    let run_id = match controller.db.get().await {
        Ok(client) => store::tests::step_started(&**client, &test, &owner)
            .await
            .ok(),
        Err(_) => None,
    };
    let (stop_sender, mut stop) = tokio::sync::watch::channel(Interruption::None);
    let renewal = {
        let controller = controller.clone();
        let (id, owner) = (test.id.clone(), owner.clone());
        let removing = test.step == TestStep::Remove;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_RENEWAL).await;
                let state = match controller.db.get().await {
                    Ok(client) => store::tests::renew_lease(&**client, &id, &owner, LEASE)
                        .await
                        .unwrap_or(None),
                    Err(_) => None,
                };
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
        tracing::warn!(message = "lost the lease on a step; another controller will run it");
        return;
    };
    let outcome_text = format!("{outcome:?}");
    let result = test_flow::after(&test, outcome);
    let recorded = record(controller, &test, &owner, result.clone()).await;
    if let (Some(run_id), Ok(client)) = (run_id, controller.db.get().await) {
        let _ = store::tests::step_finished(&**client, run_id, &outcome_text).await;
    }
    match recorded {
        Ok(true) => tracing::info!(
            message = "step done",
            outcome = %outcome_text,
            state = result.state.map(|s| s.as_str()).unwrap_or("unchanged"),
            next = result.step.map(|s| s.as_str()).unwrap_or("same step, later")
        ),
        Ok(false) => tracing::warn!(message = "step done, but the lease was lost: not recorded"),
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

/// Records `result` of `test`'s step if `owner` still holds the lease,
/// after reading the test's state again in the same transaction: a
/// deletion recorded meanwhile wins ([`test_flow::settle`]).
async fn record(
    controller: &Controller,
    test: &Test,
    owner: &str,
    result: store::tests::StepResult,
) -> Result<bool> {
    let mut client = controller.db.get().await?;
    let transaction = client.transaction().await?;
    let (state, lease_owner) = store::tests::lock_state(&*transaction, &test.id).await?;
    if lease_owner.as_deref() != Some(owner) {
        return Ok(false);
    }
    let settled = test_flow::settle(test, state, result);
    let recorded = store::tests::finish_step(&*transaction, &test.id, owner, &settled).await?;
    transaction.commit().await?;
    if state == TestState::Deleting && test.state != TestState::Deleting {
        tracing::info!(message = "the test was deleted while its step ran: the deletion wins");
    }
    Ok(recorded)
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
    let failure = |failure: CallFailure| match failure {
        CallFailure::Retry(why) => StepOutcome::Unreachable(why),
        CallFailure::Refused(why) => StepOutcome::Refused(why),
    };
    match test.step {
        TestStep::Grant => match agents::grant_transfer(controller, &source, spec).await {
            Ok(()) => StepOutcome::Granted,
            Err(error) => failure(error),
        },
        TestStep::Copy => {
            let transfer_id = spec.transfer_id.clone();
            let outcome = follow_copy(controller, test, &target, spec).await;
            if matches!(outcome, StepOutcome::Copied(_) | StepOutcome::CopyFailed(_)) {
                revoke_grants(controller, &source, &[transfer_id]).await;
            }
            outcome
        }
        TestStep::Remove => match agents::remove_copy(controller, &target, spec).await {
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

/// Starts (or resumes) the copy on the target and follows it to its end,
/// storing progress on the way.
async fn follow_copy(
    controller: &Arc<Controller>,
    test: &Test,
    target: &crate::model::Host,
    spec: v1::TransferSpec,
) -> StepOutcome {
    let transfer_id = spec.transfer_id.clone();
    let started = match agents::start_transfer(controller, target, spec).await {
        Ok(progress) => progress,
        Err(CallFailure::Retry(why)) => return StepOutcome::Unreachable(why),
        Err(CallFailure::Refused(why)) => return StepOutcome::Refused(why),
    };
    let mut last = started;
    let mut stored_at = Instant::now() - PROGRESS_EVERY;
    // What the target agent last said it waits for, as stored: a change
    // (an outage of the source begins or ends) is stored at once.
    let mut stored_waiting = None;
    if last.state == i32::from(v1::TransferState::Running) {
        let mut stream = match agents::watch_transfer(controller, target, &transfer_id).await {
            Ok(stream) => stream,
            Err(CallFailure::Retry(why)) => return StepOutcome::Unreachable(why),
            Err(CallFailure::Refused(why)) => return StepOutcome::Refused(why),
        };
        loop {
            match stream.message().await {
                Ok(Some(progress)) => {
                    let running = progress.state == i32::from(v1::TransferState::Running);
                    last = progress;
                    if !running {
                        break;
                    }
                    let report = convert::copy_progress_from(&last);
                    if stored_at.elapsed() >= PROGRESS_EVERY || report.waiting != stored_waiting {
                        stored_at = Instant::now();
                        stored_waiting = report.waiting.clone();
                        store_progress(controller, test, &report).await;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    return StepOutcome::Unreachable(format!(
                        "following the copy on host {}: {}",
                        target.id,
                        status.message()
                    ));
                }
            }
        }
    }
    let report = convert::copy_progress_from(&last);
    store_progress(controller, test, &report).await;
    match v1::TransferState::try_from(last.state) {
        Ok(v1::TransferState::Succeeded) => StepOutcome::Copied(report),
        Ok(v1::TransferState::Failed) => StepOutcome::CopyFailed(last.error),
        _ => StepOutcome::Unreachable(format!(
            "the copy on host {} stopped before its end",
            target.id
        )),
    }
}

async fn store_progress(controller: &Controller, test: &Test, progress: &CopyProgress) {
    if let Ok(client) = controller.db.get().await {
        let _ =
            store::tests::store_progress(&**client, &test.id, &controller.controller_id, progress)
                .await;
    }
}
