//! The inbox: reading a workflow's pending events, and sending them
//! (cancels, with a parent's descendants; commands), each with its audit
//! entry.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_postgres::GenericClient;

use super::get;
use crate::engine::audit::{self, NewEntry, What};
use crate::engine::{Event, WorkflowId};
use crate::error::{Error, Result};

/// An event of the inbox.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub event: Event,
    pub sender: String,
    pub received_at: DateTime<Utc>,
}

/// The unconsumed events of `id`, oldest first (at most 100).
pub async fn pending_events(
    client: &impl GenericClient,
    id: &WorkflowId,
) -> Result<Vec<StoredEvent>> {
    let rows = client
        .query(
            "SELECT id, kind, payload, sender, received_at FROM workflow_events
             WHERE workflow_id = $1 AND consumed_at IS NULL ORDER BY id LIMIT 100",
            &[&id.as_str()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.get(1);
            let payload: Value = row.get(2);
            Ok(StoredEvent {
                id: row.get(0),
                event: event_from(&kind, payload)?,
                sender: row.get(3),
                received_at: row.get(4),
            })
        })
        .collect()
}

fn event_from(kind: &str, payload: Value) -> Result<Event> {
    let unreadable = |what: &str| Error::Internal(format!("inbox event {kind}: unreadable {what}"));
    match kind {
        "start" => Ok(Event::Start),
        "cancel" => Ok(Event::Cancel),
        "command" => Ok(Event::Command {
            name: payload["name"]
                .as_str()
                .ok_or_else(|| unreadable("name"))?
                .to_owned(),
            payload: payload["payload"].clone(),
        }),
        "child_finished" => Ok(Event::ChildFinished {
            child: WorkflowId::from_stored(
                payload["child"]
                    .as_str()
                    .ok_or_else(|| unreadable("child"))?
                    .to_owned(),
            ),
            end: serde_json::from_value(payload["end"].clone()).map_err(|_| unreadable("end"))?,
        }),
        other => Err(Error::Internal(format!(
            "unknown inbox event kind {other:?}"
        ))),
    }
}

/// Asks to cancel `id`, and every unfinished descendant that has not
/// passed its point of no return; the workflows the cancel was delivered
/// to. Refused (and the refusal audited) once `id` has passed its point of
/// no return, or has ended.
pub async fn cancel(
    client: &mut deadpool_postgres::Client,
    id: &WorkflowId,
    sender: &str,
) -> Result<Vec<WorkflowId>> {
    let transaction = client.transaction().await?;
    let row = transaction
        .query_opt(
            "SELECT outcome, point_of_no_return_at, requested_by FROM workflows
             WHERE id = $1 FOR UPDATE",
            &[&id.as_str()],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "workflow",
            id: id.to_string(),
        })?;
    let outcome: Option<String> = row.get(0);
    let passed: Option<DateTime<Utc>> = row.get(1);
    if let Some(outcome) = outcome {
        return Err(Error::FailedPrecondition(format!(
            "workflow {id} has ended ({outcome}); there is nothing to cancel"
        )));
    }
    if let Some(passed) = passed {
        let requested_by: String = row.get(2);
        let message = format!(
            "workflow {id} passed its point of no return at {} (asked by {requested_by}); it can no longer be cancelled and runs to its end",
            passed.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        audit_entry(
            &*transaction,
            id,
            &NewEntry::new(
                What::CommandRefused,
                sender,
                format!("cancel refused: {message}"),
            ),
        )
        .await?;
        transaction.commit().await?;
        return Err(Error::FailedPrecondition(message));
    }
    let targets: Vec<String> = transaction
        .query(
            "WITH RECURSIVE tree AS (
                 SELECT id FROM workflows WHERE id = $1
                 UNION ALL
                 SELECT w.id FROM workflows w JOIN tree ON w.parent_id = tree.id)
             SELECT w.id FROM workflows w JOIN tree USING (id)
             WHERE NOT w.done AND w.point_of_no_return_at IS NULL
             ORDER BY w.id = $1 DESC, w.id
             FOR UPDATE OF w",
            &[&id.as_str()],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut delivered = Vec::new();
    for target in targets {
        let target = WorkflowId::from_stored(target);
        let (who, detail) = if target == *id {
            (sender.to_owned(), "cancel".to_owned())
        } else {
            (
                format!("{sender} (cancelling {id})"),
                format!("cancel, because its ancestor {id} was cancelled"),
            )
        };
        send_event(&*transaction, &target, "cancel", &json!({}), &who, &detail).await?;
        delivered.push(target);
    }
    transaction.commit().await?;
    Ok(delivered)
}

/// Delivers command `name` with `payload` from `sender` to `id`'s inbox.
pub async fn command(
    client: &impl GenericClient,
    id: &WorkflowId,
    name: &str,
    payload: &Value,
    sender: &str,
) -> Result<()> {
    let workflow = get(client, id).await?;
    if let Some(end) = workflow.end {
        return Err(Error::FailedPrecondition(format!(
            "workflow {id} has ended ({}); it takes no more commands",
            end.as_str()
        )));
    }
    let body = json!({ "name": name, "payload": payload });
    let detail = format!("command {name} {payload}");
    send_event(client, id, "command", &body, sender, &detail).await
}

/// Puts event `kind` with `payload` from `sender` in `id`'s inbox, with
/// its audit entry (`detail`), and makes the workflow due.
pub(crate) async fn send_event(
    client: &impl GenericClient,
    id: &WorkflowId,
    kind: &str,
    payload: &Value,
    sender: &str,
    detail: &str,
) -> Result<()> {
    client
        .execute(
            "WITH e AS (INSERT INTO workflow_events (workflow_id, kind, payload, sender)
                 VALUES ($1, $2, $3, $4) RETURNING workflow_id),
             a AS (INSERT INTO workflow_audit (workflow_id, what, who, detail)
                 SELECT workflow_id, 'command', $4, $5 FROM e),
             w AS (UPDATE workflows SET next_run_at = now() WHERE id = $1 AND NOT done)
             SELECT count(*) FROM e, LATERAL (SELECT pg_notify('navette_workflows', $1)) n",
            &[
                &id.as_str(),
                &kind,
                payload,
                &sender,
                &audit::bounded(detail.to_owned()),
            ],
        )
        .await?;
    Ok(())
}

async fn audit_entry(client: &impl GenericClient, id: &WorkflowId, entry: &NewEntry) -> Result<()> {
    client
        .execute(
            "INSERT INTO workflow_audit (workflow_id, what, step, who, detail, due_at, started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &id.as_str(),
                &entry.what.as_str(),
                &entry.step,
                &entry.who,
                &entry.detail,
                &entry.due_at,
                &entry.started_at,
            ],
        )
        .await?;
    Ok(())
}
