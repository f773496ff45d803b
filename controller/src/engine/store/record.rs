//! Recording a transition: the new state, the step or timer next, the
//! events consumed, the audit entries, the children started and the
//! parent told, with the kind's own view when it keeps one.
//!
//! Invariant: nothing is written unless the caller's fencing token is the
//! workflow's current one and it still holds the lease; the audit entries
//! are written by the same statement. A workflow with an unconsumed
//! event is due once its record committed, even when the event committed
//! while the record waited for the row ([`wake_if_events`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_postgres::GenericClient;

use super::{NewWorkflow, create};
use crate::engine::audit::NewEntry;
use crate::engine::{End, ErasedKind, NewChild, WorkflowId};
use crate::error::Result;

/// What a runner records after a transition.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    pub id: &'a WorkflowId,
    pub owner: &'a str,
    pub fencing: i64,
    pub state: &'a Value,
    /// The step to run next; `None` while waiting or done.
    pub step: Option<&'a Value>,
    pub attempts: i32,
    /// Due again after this long; `None`: only when an event arrives (or
    /// at `run_at`).
    pub run_in: Option<Duration>,
    /// Due again at this time (a timer at a deadline); wins over `run_in`.
    pub run_at: Option<DateTime<Utc>>,
    /// `run_in` is a timer ([`crate::engine::Event::Timer`] when it fires).
    pub timer: bool,
    pub end: Option<&'a End>,
    /// Keep the lease (for this long) to go on at once; `None` frees it.
    pub keep_lease: Option<Duration>,
    /// Inbox events delivered by this transition.
    pub consumed: &'a [i64],
    /// The sender and time of the last command consumed.
    pub requested: Option<(&'a str, DateTime<Utc>)>,
    pub audit: &'a [NewEntry],
    pub children: &'a [(WorkflowId, NewChild)],
}

/// What [`record`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Events arrived that this transition did not consume.
    pub has_events: bool,
}

/// Records a transition if `owner` still holds the lease with `fencing`:
/// `Ok(None)` when it does not (nothing was written). With children to
/// start, or a parent to tell, in one transaction; otherwise in one
/// statement.
pub async fn record(
    client: &mut deadpool_postgres::Client,
    r: &Record<'_>,
) -> Result<Option<Recorded>> {
    record_projected(client, r, None).await
}

/// [`record`], also writing the kind's view of the new state
/// (`projection`: [`crate::engine::Kind::project`]) in the same transaction,
/// unless unconsumed events wait.
pub(crate) async fn record_projected(
    client: &mut deadpool_postgres::Client,
    r: &Record<'_>,
    projection: Option<&dyn ErasedKind>,
) -> Result<Option<Recorded>> {
    let parent_to_tell = r.end.is_some();
    if r.children.is_empty() && !parent_to_tell && projection.is_none() {
        let statement = client.prepare_cached(RECORD).await?;
        let recorded = record_statement(&***client, &statement, r)
            .await?
            .map(|(recorded, _)| recorded);
        if recorded.as_ref().is_some_and(|r| !r.has_events) {
            wake_if_events(&***client, r.id.as_str()).await?;
        }
        return Ok(recorded);
    }
    let transaction = client.transaction().await?;
    let statement = transaction.prepare_cached(RECORD).await?;
    let Some((recorded, parent)) = record_statement(&*transaction, &statement, r).await? else {
        return Ok(None);
    };
    if let Some(kind) = projection.filter(|_| !recorded.has_events) {
        kind.project(&transaction, r.id, r.state).await?;
    }
    for (child_id, child) in r.children {
        create(
            &*transaction,
            &NewWorkflow {
                id: child_id,
                kind: child.kind,
                state: &child.state,
                parent: Some(r.id),
                sender: r.id.as_str(),
            },
        )
        .await?;
    }
    if let (Some(parent), Some(end)) = (parent, r.end) {
        let payload = json!({ "child": r.id.as_str(), "end": end });
        transaction
            .execute(
                "WITH e AS (INSERT INTO workflow_events (workflow_id, kind, payload, sender)
                     VALUES ($1, 'child_finished', $2, $3) RETURNING workflow_id),
                 w AS (UPDATE workflows SET next_run_at = now()
                     WHERE id = $1 AND NOT done RETURNING id)
                 SELECT count(*) FROM e, LATERAL (SELECT pg_notify('navette_workflows', $1)) n",
                &[&parent, &payload, &r.id.as_str()],
            )
            .await?;
    }
    transaction.commit().await?;
    if !recorded.has_events {
        wake_if_events(&***client, r.id.as_str()).await?;
    }
    Ok(Some(recorded))
}

/// An event that committed while the record waited for the workflow's
/// row (a child ending as its parent records) is not seen by the record's
/// snapshot, which then sets the next run from the kind alone: once the
/// record committed, a workflow with an unconsumed event is made due, and
/// the runners told, as the event's sender does.
async fn wake_if_events(client: &impl GenericClient, id: &str) -> Result<()> {
    client
        .execute(
            "WITH w AS (UPDATE workflows SET next_run_at = now()
                 WHERE id = $1 AND NOT done AND next_run_at > now()
                   AND EXISTS (SELECT 1 FROM workflow_events e
                               WHERE e.workflow_id = $1 AND e.consumed_at IS NULL)
                 RETURNING id)
             SELECT count(*) FROM w, LATERAL (SELECT pg_notify('navette_workflows', w.id)) n",
            &[&id],
        )
        .await?;
    Ok(())
}

/// The statement of [`record`]: see the module's invariants.
const RECORD: &str = "WITH w AS (
                 UPDATE workflows SET
                     state = $4, step = $5, attempts = $6,
                     next_run_at = CASE
                         WHEN EXISTS (SELECT 1 FROM workflow_events e WHERE e.workflow_id = $1
                                      AND e.consumed_at IS NULL AND e.id <> ALL($7))
                             THEN now()
                         WHEN $21::timestamptz IS NOT NULL THEN $21::timestamptz
                         WHEN $8::float8 IS NULL THEN 'infinity'
                         ELSE now() + make_interval(secs => $8::float8) END,
                     timer_at = CASE WHEN $9 THEN COALESCE($21::timestamptz,
                         now() + make_interval(secs => $8::float8)) END,
                     done = $10::text IS NOT NULL, outcome = $10::text, error = $11,
                     lease_owner = CASE WHEN $12::float8 IS NULL THEN NULL ELSE lease_owner END,
                     lease_expires_at = CASE WHEN $12::float8 IS NULL THEN NULL
                         ELSE now() + make_interval(secs => $12::float8) END,
                     requested_by = COALESCE($13, requested_by),
                     requested_at = COALESCE($14, requested_at),
                     updated_at = now()
                 WHERE id = $1 AND fencing = $2 AND lease_owner = $3
                 RETURNING id, parent_id, next_run_at <= now() AS due_now, lease_owner IS NULL AS freed,
                     EXISTS (SELECT 1 FROM workflow_events e WHERE e.workflow_id = $1
                             AND e.consumed_at IS NULL AND e.id <> ALL($7)) AS has_events),
             c AS (UPDATE workflow_events SET consumed_at = now()
                 WHERE workflow_id IN (SELECT id FROM w) AND id = ANY($7) AND consumed_at IS NULL),
             a AS (INSERT INTO workflow_audit (workflow_id, what, step, who, detail, due_at, started_at)
                 SELECT w.id, x.what, x.step, x.who, x.detail, x.due_at, x.started_at
                 FROM w, unnest($15::text[], $16::jsonb[], $17::text[], $18::text[],
                                $19::timestamptz[], $20::timestamptz[])
                     AS x(what, step, who, detail, due_at, started_at))
             SELECT w.parent_id, w.has_events,
                 (SELECT count(*) FROM (SELECT pg_notify('navette_workflows', w.id)
                                        WHERE w.freed AND w.due_now) n)
             FROM w";

async fn record_statement(
    client: &impl GenericClient,
    statement: &tokio_postgres::Statement,
    r: &Record<'_>,
) -> Result<Option<(Recorded, Option<String>)>> {
    let run_in = r.run_in.map(|d| d.as_secs_f64());
    let keep = r.keep_lease.map(|d| d.as_secs_f64());
    let end = r.end.map(End::as_str);
    let error = match r.end {
        Some(End::Failed(why)) => why.clone(),
        _ => String::new(),
    };
    let (sender, requested_at) = r.requested.unzip();
    let whats: Vec<&str> = r.audit.iter().map(|e| e.what.as_str()).collect();
    let steps: Vec<Option<Value>> = r.audit.iter().map(|e| e.step.clone()).collect();
    let whos: Vec<&str> = r.audit.iter().map(|e| e.who.as_str()).collect();
    let details: Vec<&str> = r.audit.iter().map(|e| e.detail.as_str()).collect();
    let dues: Vec<Option<DateTime<Utc>>> = r.audit.iter().map(|e| e.due_at).collect();
    let starts: Vec<Option<DateTime<Utc>>> = r.audit.iter().map(|e| e.started_at).collect();
    let row = client
        .query_opt(
            statement,
            &[
                &r.id.as_str(),
                &r.fencing,
                &r.owner,
                r.state,
                &r.step,
                &r.attempts,
                &r.consumed,
                &run_in,
                &r.timer,
                &end,
                &error,
                &keep,
                &sender,
                &requested_at,
                &whats,
                &steps,
                &whos,
                &details,
                &dues,
                &starts,
                &r.run_at,
            ],
        )
        .await?;
    Ok(row.map(|row| {
        (
            Recorded {
                has_events: row.get(1),
            },
            row.get(0),
        )
    }))
}
