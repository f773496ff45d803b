//! The panel's commands to tests, as events of their workflows: create
//! (the test and its workflow, in one transaction), refresh (the command
//! [`REFRESH`]) and delete (a cancel). The timer (expiry) is the engine's.
//!
//! A command is decided at once, under the workflow's row lock, by the
//! test kind's own transition ([`test_kind::decide`]) on the test as its
//! inbox will leave it (the events waiting in it folded in): a refused
//! command is refused to the caller, an accepted one goes to the inbox
//! and its effect is written to the `tests` row in the same transaction,
//! so the panel sees it at once. The runner delivers the event later and
//! records the same transition (the decision is pure and the event
//! carries its time); a step running meanwhile records its outcome first,
//! without overwriting that view, and a deletion then wins over it.

use serde_json::json;

use super::test_flow::{self, Decision, Event as Flow, Input as FlowInput};
use super::test_kind::{self, Asked, REFRESH, TestKind};
use crate::engine::{self, Event, Input, Kind, WorkflowId};
use crate::error::{Error, Result};
use crate::model::{CopyPlan, Test};
use crate::store;
use crate::store::test_runs::NewTest;

/// Who sends the panel's commands, as the audit trail names them.
const PANEL: &str = "panel";

/// Creates a test and its workflow; `Ok(None)` when its request id was
/// used already (the caller returns that test).
pub async fn create(
    client: &mut deadpool_postgres::Client,
    new: &NewTest<'_>,
) -> Result<Option<Test>> {
    let event = Flow::Create {
        ttl_seconds: new.ttl_seconds,
    };
    let now = chrono::Utc::now();
    let created = match test_flow::next(None, FlowInput::Event(event), now) {
        Decision::Record(created) => created,
        Decision::Unchanged => return Ok(None),
        Decision::Refused(why) => return Err(Error::Internal(why)),
    };
    let transaction = client.transaction().await?;
    let Some(test) = store::test_runs::create(&*transaction, new, &created, now).await? else {
        return Ok(None);
    };
    let id = WorkflowId::parse(&test.id, "id")?;
    let state =
        serde_json::to_value(&test).map_err(|e| Error::Internal(format!("test state: {e}")))?;
    engine::store::create(
        &*transaction,
        &engine::store::NewWorkflow {
            id: &id,
            kind: TestKind::NAME,
            state: &state,
            parent: None,
            sender: PANEL,
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(Some(test))
}

/// Starts a refresh of a ready test: a new generation, copied into the
/// same copy (only what changed travels), of `plan` (the account as it is
/// now; `None`: as planned before). The test as it is now.
pub async fn refresh(
    client: &mut deadpool_postgres::Client,
    id: &str,
    plan: Option<CopyPlan>,
) -> Result<Test> {
    let asked = Asked {
        at: chrono::Utc::now(),
        plan,
    };
    let at = asked.at;
    let payload = serde_json::to_value(&asked).map_err(|e| Error::Internal(e.to_string()))?;
    let event = Event::Command {
        name: REFRESH.to_owned(),
        payload,
    };
    send(client, id, event, FlowInput::Event(Flow::Refresh), at).await
}

/// Starts removing a test's copy. Idempotent.
pub async fn delete(client: &mut deadpool_postgres::Client, id: &str) -> Result<Test> {
    send(
        client,
        id,
        Event::Cancel,
        FlowInput::Event(Flow::Delete),
        chrono::Utc::now(),
    )
    .await
}

/// Decides `event` (`as_flow` in the test's terms, at `at`) on test
/// `id`, and, unless that changes nothing, puts it in the inbox and
/// writes its effect to the `tests` row, in one transaction.
async fn send(
    client: &mut deadpool_postgres::Client,
    id: &str,
    event: Event,
    as_flow: FlowInput,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Test> {
    let transaction = client.transaction().await?;
    let row = transaction
        .query_opt(
            "SELECT state FROM workflows WHERE id = $1 AND kind = $2 AND NOT done FOR UPDATE",
            &[&id, &TestKind::NAME],
        )
        .await?;
    let Some(row) = row else {
        // No live workflow: the test is deleted (or does not exist); the
        // test's own rules say what the command comes to.
        let test = store::test_runs::get(&*transaction, id).await?;
        return match test_flow::next(Some(&test), as_flow, at) {
            Decision::Refused(why) => Err(Error::FailedPrecondition(why)),
            Decision::Unchanged => Ok(test),
            Decision::Record(_) => Err(Error::Internal(format!(
                "test {id} is {} but has no workflow to take the command (was the database migrated?); an operator should look at it",
                test.state.as_str()
            ))),
        };
    };
    let workflow_id = WorkflowId::parse(id, "id")?;
    let state: serde_json::Value = row.get(0);
    let mut test: Test = serde_json::from_value(state)
        .map_err(|e| Error::Internal(format!("the state of test {id}: {e}")))?;
    // As the runner will find it: the events waiting delivered first.
    for waiting in engine::store::pending_events(&*transaction, &workflow_id).await? {
        test = test_kind::decide(&test, Input::Event(waiting.event)).state;
    }
    match test_flow::next(Some(&test), as_flow, at) {
        Decision::Refused(why) => return Err(Error::FailedPrecondition(why)),
        Decision::Unchanged => {
            return store::test_runs::get(&*transaction, id).await;
        }
        Decision::Record(_) => {}
    }
    let (kind, payload, detail) = match &event {
        Event::Cancel => ("cancel", json!({}), "cancel: delete the test".to_owned()),
        Event::Command { name, payload } => (
            "command",
            json!({ "name": name, "payload": payload }),
            format!("command {name} {payload}"),
        ),
        other => {
            return Err(Error::Internal(format!(
                "not a command of the panel: {other:?}"
            )));
        }
    };
    let after = test_kind::decide(&test, Input::Event(event)).state;
    engine::store::send_event(&*transaction, &workflow_id, kind, &payload, PANEL, &detail).await?;
    store::test_runs::project(&*transaction, &after).await?;
    let shown = store::test_runs::get(&*transaction, id).await?;
    transaction.commit().await?;
    Ok(shown)
}
