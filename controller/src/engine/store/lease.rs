//! Claims and leases: claiming due workflows under a lease with a fresh
//! fencing token, how long until the next is due, renewing and freeing a
//! lease, and passing the point of no return under it.
//!
//! Invariant: [`pass_point_of_no_return`] changes nothing unless the
//! caller's fencing token is the workflow's current one and it still holds
//! the lease.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::engine::WorkflowId;
use crate::error::Result;

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
