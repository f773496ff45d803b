//! The test workflow as a pure state machine: from a test and the outcome of
//! its current step to what is recorded next. No I/O here; the runner
//! performs the steps.
//!
//! ```text
//!  placing ─grant─▶ copying ─copy─▶ ready ─refresh─▶ refreshing ─grant─▶ ─copy─▶ ready
//!     │                │                 └─delete/expiry─▶ deleting ─remove─▶ deleted
//!     └── refusal ─────┴── copy failed ─▶ failed (remove the partial copy) ─remove─▶ failed
//!
//!  any state but deleting/deleted ─delete, or expiry─▶ deleting ─remove─▶ deleted
//! ```
//!
//! Rules beyond the diagram: a deletion recorded while a step runs wins
//! over that step's result ([`settle`]); a removal is never given up,
//! refusals included (the agent refuses while a transfer into the copy
//! runs), only retried with backoff; every test that is not deleted has an
//! expiry ([`expiry`]), failed and stuck ones included, so no copy stays on
//! a test host for ever.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{CopyProgress, HostOutage, Test, TestState, TestStep};
use crate::store::tests::StepResult;

/// What running a step gave.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOutcome {
    /// The source agent granted the transfer.
    Granted,
    /// The target agent finished the copy.
    Copied(CopyProgress),
    /// The target agent reports the copy failed: nothing more will come of
    /// this transfer.
    CopyFailed(String),
    /// The target agent removed the copy.
    Removed,
    /// An agent could not be reached, or the call broke: try again.
    Unreachable(String),
    /// An agent refused the step for good.
    Refused(String),
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

/// When `test` is removed by itself. A ready test: `ttl` after it was last
/// ready. Any other test that is not being deleted (failed, or stuck
/// placing, copying or refreshing): `ttl`, but at least [`COPY_GRACE`],
/// after it was last ready or else created. Deleting and deleted tests do
/// not expire: they are ending already. `store::tests::expire_due`
/// selects with the same rule.
pub fn expiry(test: &Test) -> Option<DateTime<Utc>> {
    let seconds = |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 4));
    match test.state {
        TestState::Deleting | TestState::Deleted => None,
        TestState::Ready => Some(
            test.expires_at
                .unwrap_or_else(|| test.created_at + seconds(test.ttl_seconds)),
        ),
        _ => Some(
            test.ready_at.unwrap_or(test.created_at)
                + seconds(test.ttl_seconds.max(COPY_GRACE.as_secs())),
        ),
    }
}

/// What to record for a step of `claimed` that gave `result`, when the
/// test is now in `current` (a deletion may have been recorded while the
/// step ran). The deletion wins: the step's result is dropped, and the
/// removal runs next, at once. A step that was itself a removal (of a
/// failed test's copy) keeps its result, but the test then ends deleted.
pub fn settle(claimed: &Test, current: TestState, result: StepResult) -> StepResult {
    if current != TestState::Deleting || claimed.state == TestState::Deleting {
        return result;
    }
    if claimed.step == TestStep::Remove {
        return StepResult {
            state: result.state.map(|state| match state {
                TestState::Failed => TestState::Deleted,
                other => other,
            }),
            ..result
        };
    }
    StepResult {
        reset_attempts: true,
        ..StepResult::default()
    }
}

fn failed(error: String) -> StepResult {
    StepResult {
        state: Some(TestState::Failed),
        step: Some(TestStep::Remove),
        error: Some(error),
        reset_attempts: true,
        ..StepResult::default()
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

fn retry(test: &Test, why: String, give_up: bool) -> StepResult {
    if give_up && test.attempts + 1 >= MAX_ATTEMPTS {
        return failed(format!(
            "gave up after {} attempts: {why}",
            test.attempts + 1
        ));
    }
    StepResult {
        error: Some(why),
        retry_after: Some(backoff(test.attempts)),
        outage_host: Some(host_of_step(test).to_owned()),
        ..StepResult::default()
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

/// What to record after `test`'s current step gave `outcome`.
pub fn after(test: &Test, outcome: StepOutcome) -> StepResult {
    match (test.step, outcome) {
        (TestStep::Grant, StepOutcome::Granted) => StepResult {
            state: Some(match test.state {
                TestState::Refreshing => TestState::Refreshing,
                _ => TestState::Copying,
            }),
            step: Some(TestStep::Copy),
            error: Some(String::new()),
            reset_attempts: true,
            ..StepResult::default()
        },
        (TestStep::Copy, StepOutcome::Copied(_)) => StepResult {
            state: Some(TestState::Ready),
            step: Some(TestStep::None),
            error: Some(String::new()),
            ready: true,
            reset_attempts: true,
            ..StepResult::default()
        },
        (TestStep::Copy, StepOutcome::CopyFailed(error)) => {
            failed(format!("the copy failed: {error}"))
        }
        (TestStep::Remove, StepOutcome::Removed) => StepResult {
            state: Some(match test.state {
                TestState::Failed => TestState::Failed,
                _ => TestState::Deleted,
            }),
            step: Some(TestStep::None),
            reset_attempts: true,
            ..StepResult::default()
        },
        // Cleaning up must eventually happen: never give up on it.
        (TestStep::Remove, StepOutcome::Unreachable(why)) => retry(test, why, false),
        (TestStep::Remove, StepOutcome::Refused(why)) => StepResult {
            error: Some(format!("the copy is not removed yet (retried): {why}")),
            retry_after: Some(removal_backoff(test.attempts)),
            ..StepResult::default()
        },
        (_, StepOutcome::Unreachable(why)) => retry(test, why, true),
        (_, StepOutcome::Refused(why)) => failed(why),
        (step, outcome) => StepResult {
            error: Some(format!(
                "internal: step {} cannot end with {outcome:?}",
                step.as_str()
            )),
            retry_after: Some(backoff(test.attempts)),
            ..StepResult::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CopyPlan;

    fn test(state: TestState, step: TestStep, attempts: u32) -> Test {
        Test {
            id: "t1".into(),
            account: "alice".into(),
            migration_id: "postgresql-15-to-18".into(),
            source_host_id: "shared-old".into(),
            test_host_id: "test-1".into(),
            state,
            step,
            generation: 1,
            plan: CopyPlan {
                source_endpoint: String::new(),
                target_endpoint: String::new(),
                source_home: String::new(),
                databases: vec![],
                target_address: String::new(),
                protocol_version: 2,
            },
            progress: None,
            error: String::new(),
            ttl_seconds: 60,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            ready_at: None,
            expires_at: None,
            attempts,
            outage: None,
        }
    }

    #[test]
    fn a_test_goes_from_grant_to_copy_to_ready() {
        let granted = after(
            &test(TestState::Placing, TestStep::Grant, 0),
            StepOutcome::Granted,
        );
        assert_eq!(
            (granted.state, granted.step),
            (Some(TestState::Copying), Some(TestStep::Copy))
        );
        let copied = after(
            &test(TestState::Copying, TestStep::Copy, 3),
            StepOutcome::Copied(CopyProgress::default()),
        );
        assert_eq!(
            (copied.state, copied.step, copied.ready),
            (Some(TestState::Ready), Some(TestStep::None), true)
        );
        assert!(copied.reset_attempts);
    }

    #[test]
    fn a_refresh_stays_refreshing_until_ready() {
        let granted = after(
            &test(TestState::Refreshing, TestStep::Grant, 0),
            StepOutcome::Granted,
        );
        assert_eq!(granted.state, Some(TestState::Refreshing));
    }

    #[test]
    fn a_failed_copy_removes_the_partial_copy_and_stays_failed() {
        let failed = after(
            &test(TestState::Copying, TestStep::Copy, 0),
            StepOutcome::CopyFailed("disk full".into()),
        );
        assert_eq!(
            (failed.state, failed.step),
            (Some(TestState::Failed), Some(TestStep::Remove))
        );
        assert!(
            failed
                .error
                .as_deref()
                .is_some_and(|e| e.contains("disk full"))
        );
        let removed = after(
            &test(TestState::Failed, TestStep::Remove, 0),
            StepOutcome::Removed,
        );
        assert_eq!(
            (removed.state, removed.step),
            (Some(TestState::Failed), Some(TestStep::None))
        );
        assert_eq!(removed.error, None, "the failure's reason is kept");
    }

    #[test]
    fn unreachable_agents_are_retried_with_backoff_then_given_up() {
        let retried = after(
            &test(TestState::Copying, TestStep::Copy, 2),
            StepOutcome::Unreachable("link down".into()),
        );
        assert_eq!((retried.state, retried.step), (None, None));
        assert_eq!(retried.retry_after, Some(Duration::from_secs(4)));
        assert_eq!(
            retried.outage_host.as_deref(),
            Some("test-1"),
            "the copy waits for the test host"
        );
        let granting = after(
            &test(TestState::Placing, TestStep::Grant, 0),
            StepOutcome::Unreachable("down".into()),
        );
        assert_eq!(
            granting.outage_host.as_deref(),
            Some("shared-old"),
            "the grant waits for the source"
        );
        let through = after(
            &test(TestState::Copying, TestStep::Copy, 2),
            StepOutcome::Copied(CopyProgress::default()),
        );
        assert_eq!(
            through.outage_host, None,
            "an outage ends when the step gets through"
        );
        let since = chrono::Utc::now();
        let copying = test(TestState::Copying, TestStep::Copy, 2);
        assert_eq!(
            retried_until(&copying, since),
            Some(since + chrono::Duration::from_std(retried_for()).unwrap_or_default())
        );
        assert_eq!(
            retried_until(&test(TestState::Deleting, TestStep::Remove, 2), since),
            None
        );
        let given_up = after(
            &test(TestState::Copying, TestStep::Copy, MAX_ATTEMPTS - 1),
            StepOutcome::Unreachable("link down".into()),
        );
        assert_eq!(given_up.state, Some(TestState::Failed));
        let cleanup = after(
            &test(TestState::Deleting, TestStep::Remove, 100),
            StepOutcome::Unreachable("down".into()),
        );
        assert_eq!(cleanup.state, None, "removal is retried for ever");
        assert_eq!(cleanup.retry_after, Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_copy_waiting_for_its_source_shows_the_source_host_out() {
        use crate::model::CopyWaiting;
        let since = chrono::Utc::now() - chrono::Duration::seconds(4);
        let until = since + chrono::Duration::seconds(120);
        let waiting = CopyWaiting {
            what: "source PostgreSQL server main, database shop".into(),
            error: "connection refused".into(),
            since,
            until: Some(until),
        };
        let mut copying = test(TestState::Copying, TestStep::Copy, 0);
        copying.progress = Some(CopyProgress {
            tables_done: 2,
            waiting: Some(waiting.clone()),
            ..CopyProgress::default()
        });
        let shown = outage(&copying).expect("the copy waits for its source");
        assert_eq!(
            shown.host_id, "shared-old",
            "the source host, not the test host"
        );
        assert_eq!(
            (shown.since, shown.retried_until),
            (since, Some(until)),
            "the agent's own since and until"
        );
        assert!(
            shown
                .error
                .contains("source PostgreSQL server main, database shop")
                && shown.error.contains("connection refused"),
            "{}",
            shown.error
        );
        // The copy reaches its source again: the next progress has no
        // waiting, and the outage is gone.
        let mut through = copying.clone();
        through.progress = Some(CopyProgress {
            tables_done: 3,
            ..CopyProgress::default()
        });
        assert_eq!(outage(&through), None);
        // A refresh waits the same way.
        let mut refreshing = copying.clone();
        refreshing.state = TestState::Refreshing;
        assert_eq!(
            outage(&refreshing).map(|o| o.host_id),
            Some("shared-old".into())
        );
        // A test past its copy shows no outage from its last progress.
        for (state, step) in [
            (TestState::Ready, TestStep::None),
            (TestState::Failed, TestStep::Remove),
            (TestState::Deleting, TestStep::Remove),
        ] {
            let mut past = copying.clone();
            (past.state, past.step) = (state, step);
            assert_eq!(outage(&past), None, "{state:?}");
        }
        // A step that cannot reach the test host says so first, with its
        // own retry bound.
        let step_since = chrono::Utc::now();
        let mut cut_off = copying.clone();
        cut_off.outage = Some(("test-1".into(), step_since));
        cut_off.error = "link down".into();
        assert_eq!(
            outage(&cut_off),
            Some(HostOutage {
                host_id: "test-1".into(),
                since: step_since,
                retried_until: retried_until(&cut_off, step_since),
                error: "link down".into(),
            })
        );
    }

    #[test]
    fn a_refused_removal_is_retried_with_backoff_never_given_up() {
        let refused = after(
            &test(TestState::Deleting, TestStep::Remove, 3),
            StepOutcome::Refused("transfer t1-g1 is still running".into()),
        );
        assert_eq!((refused.state, refused.step), (None, None));
        assert_eq!(refused.retry_after, Some(Duration::from_secs(8)));
        let later = after(
            &test(TestState::Failed, TestStep::Remove, 500),
            StepOutcome::Refused("still running".into()),
        );
        assert_eq!((later.state, later.step), (None, None), "never given up");
        assert_eq!(later.retry_after, Some(Duration::from_secs(300)));
    }

    #[test]
    fn a_deletion_during_a_step_wins_over_the_step_result() {
        // The copy finished while DeleteTest was recorded: not ready.
        let copying = test(TestState::Copying, TestStep::Copy, 2);
        let copied = after(&copying, StepOutcome::Copied(CopyProgress::default()));
        assert_eq!(copied.state, Some(TestState::Ready));
        let settled = settle(&copying, TestState::Deleting, copied);
        assert_eq!(
            (settled.state, settled.step),
            (None, None),
            "deleting/remove stay"
        );
        assert!(
            !settled.ready,
            "no expiry is set from a copy that is being deleted"
        );
        assert_eq!(settled.retry_after, None, "the removal runs at once");
        assert_eq!(settled.error, None);
        // Nothing was deleted: the result stands.
        let copied = after(&copying, StepOutcome::Copied(CopyProgress::default()));
        assert_eq!(
            settle(&copying, TestState::Copying, copied).state,
            Some(TestState::Ready)
        );
        // A failed test's removal that ran when DeleteTest came: deleted.
        let failed = test(TestState::Failed, TestStep::Remove, 0);
        let removed = settle(
            &failed,
            TestState::Deleting,
            after(&failed, StepOutcome::Removed),
        );
        assert_eq!(
            (removed.state, removed.step),
            (Some(TestState::Deleted), Some(TestStep::None))
        );
        // A deleting test's own removal is not changed.
        let deleting = test(TestState::Deleting, TestStep::Remove, 0);
        let removed = settle(
            &deleting,
            TestState::Deleting,
            after(&deleting, StepOutcome::Removed),
        );
        assert_eq!(removed.state, Some(TestState::Deleted));
    }

    #[test]
    fn every_test_that_is_not_deleted_expires() {
        let failed = test(TestState::Failed, TestStep::None, 0);
        assert_eq!(
            expiry(&failed),
            Some(failed.created_at + chrono::Duration::days(1)),
            "a failed test that was never ready expires, after the copy's grace (ttl is 60 s)"
        );
        let mut stuck = test(TestState::Copying, TestStep::Copy, 7);
        stuck.ttl_seconds = 30 * 86_400;
        assert_eq!(
            expiry(&stuck),
            Some(stuck.created_at + chrono::Duration::days(30)),
            "a stuck copy expires, ttl after its creation when longer than the grace"
        );
        let mut refreshing = test(TestState::Refreshing, TestStep::Copy, 0);
        let ready_at = refreshing.created_at + chrono::Duration::days(2);
        refreshing.ready_at = Some(ready_at);
        assert_eq!(
            expiry(&refreshing),
            Some(ready_at + chrono::Duration::days(1)),
            "a stuck refresh expires counted from the last copy"
        );
        let mut ready = test(TestState::Ready, TestStep::None, 0);
        let later = ready.created_at + chrono::Duration::days(3);
        ready.expires_at = Some(later);
        assert_eq!(
            expiry(&ready),
            Some(later),
            "a ready test expires ttl after it was ready"
        );
        for state in [TestState::Placing, TestState::Refreshing] {
            assert!(expiry(&test(state, TestStep::Grant, 0)).is_some());
        }
        for state in [TestState::Deleting, TestState::Deleted] {
            assert_eq!(expiry(&test(state, TestStep::None, 0)), None);
        }
    }

    #[test]
    fn deleting_ends_deleted() {
        let removed = after(
            &test(TestState::Deleting, TestStep::Remove, 0),
            StepOutcome::Removed,
        );
        assert_eq!(removed.state, Some(TestState::Deleted));
    }
}
