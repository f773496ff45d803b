//! The SQL of the workflow tables (`workflows`, `workflow_events`,
//! `workflow_audit`, migration 0005). Domain types in and out.
//!
//! Invariants: every write that makes a workflow due, or puts an event in
//! its inbox, also sends `NOTIFY navette_workflows` in the same statement
//! or transaction; [`record`] and [`pass_point_of_no_return`] change
//! nothing unless the caller's fencing token is the workflow's current one
//! and it still holds the lease; the audit entries of what they record are
//! written by the same statement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::audit::{self, Entry, NewEntry, What};
use super::{End, Event, NewChild, WorkflowId};
use crate::error::{Error, Result};

/// What a new workflow is.
#[derive(Clone, Debug)]
pub struct NewWorkflow<'a> {
    pub id: &'a WorkflowId,
    pub kind: &'a str,
    pub state: &'a Value,
    pub parent: Option<&'a WorkflowId>,
    /// Who asked for it (a role or identity, or the parent's id).
    pub sender: &'a str,
}

/// Creates a workflow with [`Event::Start`] in its inbox, due now.
pub async fn create(client: &impl GenericClient, new: &NewWorkflow<'_>) -> Result<()> {
    let parent = new.parent.map(WorkflowId::as_str);
    let detail = match parent {
        Some(parent) => format!("{} workflow, child of {parent}", new.kind),
        None => format!("{} workflow", new.kind),
    };
    let result = client
        .execute(
            "WITH w AS (
                 INSERT INTO workflows (id, kind, state, parent_id, requested_by)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id),
             e AS (INSERT INTO workflow_events (workflow_id, kind, sender)
                 SELECT id, 'start', $5 FROM w),
             a AS (INSERT INTO workflow_audit (workflow_id, what, who, detail)
                 SELECT id, 'created', $5, $6 FROM w)
             SELECT count(*) FROM w, LATERAL (SELECT pg_notify('navette_workflows', w.id)) n",
            &[
                &new.id.as_str(),
                &new.kind,
                new.state,
                &parent,
                &new.sender,
                &detail,
            ],
        )
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(
            Error::AlreadyExists(format!("workflow {} exists already", new.id)),
        ),
        Err(error) => Err(error.into()),
    }
}

/// A workflow claimed by a runner.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: WorkflowId,
    pub kind: String,
    pub state: Value,
    pub step: Option<Value>,
    pub attempts: i32,
    /// This claim's token: only it may record.
    pub fencing: i64,
    /// When it became due (`next_run_at`).
    pub due_at: DateTime<Utc>,
    pub timer_due: bool,
    pub point_of_no_return_passed: bool,
    pub has_events: bool,
}

/// Claims up to `limit` due workflows of `kinds` whose lease is free, for
/// `owner`, for `lease`, bumping each one's fencing token. Controllers
/// claiming at once get different workflows (SKIP LOCKED), or none.
pub async fn claim(
    client: &deadpool_postgres::Client,
    owner: &str,
    kinds: &[String],
    lease: Duration,
    limit: i64,
) -> Result<Vec<Claimed>> {
    let statement = client
        .prepare_cached(
            "UPDATE workflows w SET lease_owner = $1,
                 lease_expires_at = now() + make_interval(secs => $2),
                 fencing = w.fencing + 1
             FROM (SELECT id FROM workflows
                   WHERE NOT done AND next_run_at <= now() AND kind = ANY($3)
                     AND (lease_expires_at IS NULL OR lease_expires_at < now())
                   ORDER BY next_run_at LIMIT $4
                   FOR UPDATE SKIP LOCKED) due
             WHERE w.id = due.id
             RETURNING w.id, w.kind, w.state, w.step, w.attempts, w.fencing, w.next_run_at,
                 (w.timer_at IS NOT NULL AND w.timer_at <= now()) AS timer_due,
                 w.point_of_no_return_at IS NOT NULL AS passed,
                 EXISTS (SELECT 1 FROM workflow_events e
                         WHERE e.workflow_id = w.id AND e.consumed_at IS NULL) AS has_events",
        )
        .await?;
    let rows = client
        .query(&statement, &[&owner, &lease.as_secs_f64(), &kinds, &limit])
        .await?;
    Ok(rows
        .iter()
        .map(|row| Claimed {
            id: WorkflowId::from_stored(row.get(0)),
            kind: row.get(1),
            state: row.get(2),
            step: row.get(3),
            attempts: row.get(4),
            fencing: row.get(5),
            due_at: row.get(6),
            timer_due: row.get(7),
            point_of_no_return_passed: row.get(8),
            has_events: row.get(9),
        })
        .collect())
}

/// How long until the earliest workflow of `kinds` becomes due or its
/// lease expires (`None`: nothing scheduled). The runner sleeps that long
/// at most, so timers fire on time without a notification.
pub async fn next_due_in(
    client: &impl GenericClient,
    kinds: &[String],
) -> Result<Option<Duration>> {
    let row = client
        .query_one(
            "SELECT EXTRACT(EPOCH FROM min(GREATEST(next_run_at,
                        COALESCE(lease_expires_at, next_run_at))) - now())::float8
             FROM workflows
             WHERE NOT done AND kind = ANY($1) AND next_run_at < 'infinity'",
            &[&kinds],
        )
        .await?;
    let seconds: Option<f64> = row.get(0);
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

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
    /// `run_in` is a timer ([`Event::Timer`] when it fires).
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
/// (`projection`: [`super::Kind::project`]) in the same transaction,
/// unless unconsumed events wait.
pub(crate) async fn record_projected(
    client: &mut deadpool_postgres::Client,
    r: &Record<'_>,
    projection: Option<&dyn super::ErasedKind>,
) -> Result<Option<Recorded>> {
    let parent_to_tell = r.end.is_some();
    if r.children.is_empty() && !parent_to_tell && projection.is_none() {
        let statement = client.prepare_cached(RECORD).await?;
        return Ok(record_statement(&***client, &statement, r)
            .await?
            .map(|(recorded, _)| recorded));
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
    Ok(Some(recorded))
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

/// Extends the lease of `owner` on `id`; `None` when the lease is no
/// longer `owner`'s with `fencing` (the step must stop, recording nothing),
/// else whether a cancel is waiting in the inbox.
pub async fn renew(
    client: &impl GenericClient,
    id: &WorkflowId,
    owner: &str,
    fencing: i64,
    lease: Duration,
) -> Result<Option<bool>> {
    let row = client
        .query_opt(
            "UPDATE workflows SET lease_expires_at = now() + make_interval(secs => $4)
             WHERE id = $1 AND fencing = $2 AND lease_owner = $3
             RETURNING EXISTS (SELECT 1 FROM workflow_events e WHERE e.workflow_id = $1
                               AND e.consumed_at IS NULL AND e.kind = 'cancel')",
            &[&id.as_str(), &fencing, &owner, &lease.as_secs_f64()],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Frees the lease of a claimed workflow with nothing to do, leaving it
/// due when its step, timer or inbox says so.
pub async fn release(
    client: &impl GenericClient,
    id: &WorkflowId,
    owner: &str,
    fencing: i64,
) -> Result<()> {
    client
        .execute(
            "WITH w AS (
                 UPDATE workflows SET lease_owner = NULL, lease_expires_at = NULL,
                     next_run_at = CASE
                         WHEN EXISTS (SELECT 1 FROM workflow_events e WHERE e.workflow_id = $1
                                      AND e.consumed_at IS NULL) THEN now()
                         WHEN timer_at IS NOT NULL THEN timer_at
                         WHEN step IS NULL THEN 'infinity'
                         ELSE next_run_at END
                 WHERE id = $1 AND fencing = $2 AND lease_owner = $3
                 RETURNING id, next_run_at <= now() AS due_now)
             SELECT count(*) FROM w, LATERAL (SELECT pg_notify('navette_workflows', w.id)
                                              WHERE w.due_now) n",
            &[&id.as_str(), &fencing, &owner],
        )
        .await?;
    Ok(())
}

/// What became of an attempt to pass the point of no return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointOfNoReturn {
    /// Recorded, with its audit entry: the step may run.
    Passed,
    /// A cancel is waiting: deliver it first.
    CancelWaiting,
    /// The lease is no longer ours.
    LeaseLost,
}

/// Records that `id` passes its point of no return with `step`, unless a
/// cancel is waiting or the lease was lost. The audit entry names who
/// asked for what comes next (`requested_by`) and when.
pub async fn pass_point_of_no_return(
    client: &impl GenericClient,
    id: &WorkflowId,
    owner: &str,
    fencing: i64,
    step: &Value,
) -> Result<PointOfNoReturn> {
    let passed = client
        .query_opt(
            "WITH w AS (
                 UPDATE workflows SET point_of_no_return_at = now(), updated_at = now()
                 WHERE id = $1 AND fencing = $2 AND lease_owner = $3
                   AND NOT EXISTS (SELECT 1 FROM workflow_events e WHERE e.workflow_id = $1
                                   AND e.consumed_at IS NULL AND e.kind = 'cancel')
                 RETURNING id, requested_by, requested_at, point_of_no_return_at)
             INSERT INTO workflow_audit (workflow_id, what, step, who, detail)
             SELECT id, 'point_of_no_return', $4, requested_by,
                 'asked at ' || to_char(requested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
                 || '; passed at ' || to_char(point_of_no_return_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
                 || ' by ' || $3
             FROM w RETURNING id",
            &[&id.as_str(), &fencing, &owner, step],
        )
        .await?;
    if passed.is_some() {
        return Ok(PointOfNoReturn::Passed);
    }
    let ours = client
        .query_opt(
            "SELECT 1 FROM workflows WHERE id = $1 AND fencing = $2 AND lease_owner = $3",
            &[&id.as_str(), &fencing, &owner],
        )
        .await?;
    Ok(match ours {
        Some(_) => PointOfNoReturn::CancelWaiting,
        None => PointOfNoReturn::LeaseLost,
    })
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

/// A workflow as operators see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    pub id: WorkflowId,
    pub kind: String,
    pub state: Value,
    /// The step to run next, as the kind serialises it; empty if none.
    pub step: String,
    pub attempts: u32,
    /// `None` while waiting for an event (or ended).
    pub next_run_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub parent_id: Option<WorkflowId>,
    pub point_of_no_return_at: Option<DateTime<Utc>>,
    pub end: Option<End>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, kind, state, COALESCE(step #>> '{}', ''), attempts,
    CASE WHEN done OR NOT isfinite(next_run_at) THEN NULL ELSE next_run_at END,
    CASE WHEN lease_expires_at > now() THEN lease_owner END,
    parent_id, point_of_no_return_at, outcome, error, created_at, updated_at";

fn workflow_from(row: &tokio_postgres::Row) -> Workflow {
    let outcome: Option<String> = row.get(9);
    let error: String = row.get(10);
    Workflow {
        id: WorkflowId::from_stored(row.get(0)),
        kind: row.get(1),
        state: row.get(2),
        step: row.get(3),
        attempts: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
        next_run_at: row.get(5),
        lease_owner: row.get(6),
        parent_id: row.get::<_, Option<String>>(7).map(WorkflowId::from_stored),
        point_of_no_return_at: row.get(8),
        end: outcome.map(|outcome| match outcome.as_str() {
            "completed" => End::Completed,
            "cancelled" => End::Cancelled,
            _ => End::Failed(error),
        }),
        created_at: row.get(11),
        updated_at: row.get(12),
    }
}

pub async fn get(client: &impl GenericClient, id: &WorkflowId) -> Result<Workflow> {
    client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM workflows WHERE id = $1"),
            &[&id.as_str()],
        )
        .await?
        .map(|row| workflow_from(&row))
        .ok_or_else(|| Error::NotFound {
            what: "workflow",
            id: id.to_string(),
        })
}

/// Which workflows to list.
#[derive(Clone, Debug, Default)]
pub struct Filter<'a> {
    pub kind: Option<&'a str>,
    pub parent: Option<&'a WorkflowId>,
    /// Also those that ended.
    pub include_ended: bool,
    pub limit: i64,
}

/// Workflows, oldest first.
pub async fn list(client: &impl GenericClient, filter: &Filter<'_>) -> Result<Vec<Workflow>> {
    let parent = filter.parent.map(WorkflowId::as_str);
    Ok(client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM workflows
                 WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR parent_id = $2)
                   AND ($3 OR NOT done)
                 ORDER BY created_at, id LIMIT $4"
            ),
            &[&filter.kind, &parent, &filter.include_ended, &filter.limit],
        )
        .await?
        .iter()
        .map(workflow_from)
        .collect())
}

/// The audit trail of `id`, oldest first (at most `limit` entries).
pub async fn audit_trail(
    client: &impl GenericClient,
    id: &WorkflowId,
    limit: i64,
) -> Result<Vec<Entry>> {
    get(client, id).await?;
    client
        .query(
            "SELECT id, workflow_id, at, what, COALESCE(step #>> '{}', ''), who, detail, due_at, started_at
             FROM workflow_audit WHERE workflow_id = $1 ORDER BY id LIMIT $2",
            &[&id.as_str(), &limit],
        )
        .await?
        .iter()
        .map(|row| {
            let what: String = row.get(3);
            Ok(Entry {
                id: row.get(0),
                workflow_id: WorkflowId::from_stored(row.get(1)),
                at: row.get(2),
                what: What::parse(&what)
                    .ok_or_else(|| Error::Internal(format!("unknown audit entry {what:?}")))?,
                step: row.get(4),
                who: row.get(5),
                detail: row.get(6),
                due_at: row.get(7),
                started_at: row.get(8),
            })
        })
        .collect()
}
