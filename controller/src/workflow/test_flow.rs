//! The test workflow as a pure state machine: from a test and the outcome of
//! its current step to what is recorded next. No I/O here; the runner
//! performs the steps.
//!
//! ```text
//!  placing ─grant─▶ copying ─copy─▶ ready ─refresh─▶ refreshing ─grant─▶ ─copy─▶ ready
//!     │                │                 └─delete/expiry─▶ deleting ─remove─▶ deleted
//!     └── refusal ─────┴── copy failed ─▶ failed (remove the partial copy) ─remove─▶ failed
//! ```

use std::time::Duration;

use crate::model::{CopyProgress, Test, TestState, TestStep};
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

fn failed(error: String) -> StepResult {
    StepResult {
        state: Some(TestState::Failed),
        step: Some(TestStep::Remove),
        error: Some(error),
        reset_attempts: true,
        ..StepResult::default()
    }
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
        ..StepResult::default()
    }
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
            step: Some(TestStep::None),
            error: Some(format!("the copy could not be removed: {why}")),
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
            },
            progress: None,
            error: String::new(),
            ttl_seconds: 60,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            ready_at: None,
            expires_at: None,
            attempts,
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
    fn deleting_ends_deleted() {
        let removed = after(
            &test(TestState::Deleting, TestStep::Remove, 0),
            StepOutcome::Removed,
        );
        assert_eq!(removed.state, Some(TestState::Deleted));
    }
}
