//! Commands and timers of tests: create, refresh, delete (from the panel)
//! and expiry (the test's timer, fired by the runner). Each reads the test,
//! asks the pure [`test_flow::next`] what to record, and records it only
//! if the test is still as it was read; a test that changed meanwhile (a
//! step recorded, another command) is read and decided again. A running
//! step keeps its lease: a deletion lands at once, and the step's outcome
//! is dropped when it is recorded.

use tokio_postgres::GenericClient;

use super::test_flow::{self, Decision, Event, Input};
use crate::error::{Error, Result};
use crate::model::Test;
use crate::store;
use crate::store::test_runs::NewTest;

/// How many times a command is decided again on a test that keeps
/// changing under it before the caller is told to retry.
const DECIDE_AGAIN: usize = 8;

/// Creates a test; `Ok(None)` when its request id was used already (the
/// caller returns that test).
pub async fn create(client: &impl GenericClient, new: &NewTest<'_>) -> Result<Option<Test>> {
    let event = Event::Create {
        ttl_seconds: new.ttl_seconds,
    };
    let now = chrono::Utc::now();
    match test_flow::next(None, Input::Event(event), now) {
        Decision::Record(created) => store::test_runs::create(client, new, &created, now).await,
        Decision::Unchanged => Ok(None),
        Decision::Refused(why) => Err(Error::Internal(why)),
    }
}

/// Starts a refresh of a ready test: a new generation, copied into the
/// same copy (only what changed travels).
pub async fn refresh(client: &impl GenericClient, id: &str) -> Result<Test> {
    apply(client, id, Event::Refresh)
        .await
        .map(|(test, _)| test)
}

/// Starts removing a test's copy. Idempotent.
pub async fn delete(client: &impl GenericClient, id: &str) -> Result<Test> {
    apply(client, id, Event::Delete).await.map(|(test, _)| test)
}

/// Fires the timer of test `id`: removes its copy if it is due, or sets
/// the timer again if it fired early. Whether the test now expired.
pub async fn expire(client: &impl GenericClient, id: &str) -> Result<bool> {
    let (test, changed) = apply(client, id, Event::Expire).await?;
    Ok(changed && test.state == crate::model::TestState::Deleting)
}

/// Applies `event` to test `id`; the test as it is after, and whether
/// anything was recorded.
async fn apply(client: &impl GenericClient, id: &str, event: Event) -> Result<(Test, bool)> {
    for _ in 0..DECIDE_AGAIN {
        let test = store::test_runs::get(client, id).await?;
        match test_flow::next(Some(&test), Input::Event(event), chrono::Utc::now()) {
            Decision::Unchanged => return Ok((test, false)),
            Decision::Refused(why) => return Err(Error::FailedPrecondition(why)),
            Decision::Record(transition) => {
                if let Some(recorded) =
                    store::test_runs::record_event(client, &test, &transition).await?
                {
                    return Ok((recorded, true));
                }
            }
        }
    }
    Err(Error::Unavailable(format!(
        "test {id} kept changing while its {} was recorded; retry in a moment",
        event.as_str()
    )))
}
