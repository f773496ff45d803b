//! The `tests` table: tests and their durable workflow state, with leases
//! so that several controllers never run the same step at once.

use std::time::Duration;

use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, Result};
use crate::model::{CopyPlan, CopyProgress, Test, TestState, TestStep};

const COLUMNS: &str = "id, account, migration_id, source_host_id, test_host_id, state, step,
    generation, plan, progress, error, ttl_seconds, created_at, updated_at, ready_at, expires_at,
    attempts, outage_host, outage_since";

fn from_row(row: &Row) -> Result<Test> {
    let state: String = row.get("state");
    let step: String = row.get("step");
    let plan: serde_json::Value = row.get("plan");
    let progress: Option<serde_json::Value> = row.get("progress");
    let generation: i32 = row.get("generation");
    let attempts: i32 = row.get("attempts");
    let ttl: i64 = row.get("ttl_seconds");
    let outage_host: Option<String> = row.get("outage_host");
    let outage_since: Option<chrono::DateTime<chrono::Utc>> = row.get("outage_since");
    Ok(Test {
        id: row.get("id"),
        account: row.get("account"),
        migration_id: row.get("migration_id"),
        source_host_id: row.get("source_host_id"),
        test_host_id: row.get("test_host_id"),
        state: TestState::parse(&state)
            .ok_or_else(|| Error::Internal(format!("unknown test state {state:?}")))?,
        step: TestStep::parse(&step)
            .ok_or_else(|| Error::Internal(format!("unknown test step {step:?}")))?,
        generation: u32::try_from(generation).unwrap_or(1),
        plan: serde_json::from_value::<CopyPlan>(plan)
            .map_err(|e| Error::Internal(format!("test plan: {e}")))?,
        progress: progress.and_then(|p| serde_json::from_value::<CopyProgress>(p).ok()),
        error: row.get("error"),
        ttl_seconds: u64::try_from(ttl).unwrap_or(0),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        ready_at: row.get("ready_at"),
        expires_at: row.get("expires_at"),
        attempts: u32::try_from(attempts).unwrap_or(0),
        outage: outage_host.zip(outage_since),
    })
}

async fn notify(client: &impl GenericClient, id: &str) -> Result<()> {
    client
        .execute("SELECT pg_notify('navette_tests', $1)", &[&id])
        .await?;
    Ok(())
}

/// What a new test is made of.
pub struct NewTest<'a> {
    pub id: &'a str,
    pub request_id: &'a str,
    pub account: &'a str,
    pub migration_id: &'a str,
    pub source_host_id: &'a str,
    pub test_host_id: &'a str,
    pub plan: &'a CopyPlan,
    pub ttl_seconds: u64,
}

/// Creates a test, ready for its first step. `Ok(None)` when the request id
/// was used already (the caller returns that test).
pub async fn create(client: &impl GenericClient, new: &NewTest<'_>) -> Result<Option<Test>> {
    let plan = serde_json::to_value(new.plan).map_err(|e| Error::Internal(format!("plan: {e}")))?;
    let ttl = i64::try_from(new.ttl_seconds).unwrap_or(i64::MAX);
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO tests (id, request_id, account, migration_id, source_host_id,
                     test_host_id, state, step, plan, ttl_seconds)
                 VALUES ($1, $2, $3, $4, $5, $6, 'placing', 'grant', $7, $8)
                 ON CONFLICT (request_id) DO NOTHING
                 RETURNING {COLUMNS}"
            ),
            &[
                &new.id,
                &new.request_id,
                &new.account,
                &new.migration_id,
                &new.source_host_id,
                &new.test_host_id,
                &plan,
                &ttl,
            ],
        )
        .await;
    match row {
        Ok(Some(row)) => {
            notify(client, new.id).await?;
            from_row(&row).map(Some)
        }
        Ok(None) => Ok(None),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            Err(Error::FailedPrecondition(format!(
                "account {} already has a live test of {}; refresh or delete it",
                new.account, new.migration_id
            )))
        }
        Err(error) => Err(error.into()),
    }
}

pub async fn by_request_id(client: &impl GenericClient, request_id: &str) -> Result<Option<Test>> {
    client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM tests WHERE request_id = $1"),
            &[&request_id],
        )
        .await?
        .map(|row| from_row(&row))
        .transpose()
}

pub async fn get(client: &impl GenericClient, id: &str) -> Result<Test> {
    client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM tests WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|row| from_row(&row))
        .transpose()?
        .ok_or_else(|| Error::NotFound {
            what: "test",
            id: id.to_owned(),
        })
}

pub async fn list(client: &impl GenericClient, account: Option<&str>) -> Result<Vec<Test>> {
    client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM tests WHERE ($1::text IS NULL OR account = $1)
                 ORDER BY created_at"
            ),
            &[&account],
        )
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Claims the most overdue step whose lease is free, for `owner`, for
/// `lease`. Several controllers may call this at once: each gets a
/// different test (SKIP LOCKED), or none.
pub async fn claim_due(
    client: &impl GenericClient,
    owner: &str,
    lease: Duration,
) -> Result<Option<Test>> {
    let seconds = lease.as_secs_f64();
    client
        .query_opt(
            &format!(
                "UPDATE tests SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)
                 WHERE id = (
                     SELECT id FROM tests
                     WHERE step <> 'none' AND next_run_at <= now()
                       AND (lease_expires_at IS NULL OR lease_expires_at < now())
                     ORDER BY next_run_at
                     FOR UPDATE SKIP LOCKED
                     LIMIT 1)
                 RETURNING {COLUMNS}"
            ),
            &[&owner, &seconds],
        )
        .await?
        .map(|row| from_row(&row))
        .transpose()
}

/// Extends `owner`'s lease; the test's state now (a deletion may have been
/// recorded meanwhile), or `None` when the lease was lost (another
/// controller took over): the step must stop without recording anything.
pub async fn renew_lease(
    client: &impl GenericClient,
    id: &str,
    owner: &str,
    lease: Duration,
) -> Result<Option<TestState>> {
    let seconds = lease.as_secs_f64();
    let row = client
        .query_opt(
            "UPDATE tests SET lease_expires_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND lease_owner = $2
             RETURNING state",
            &[&id, &owner, &seconds],
        )
        .await?;
    Ok(row.and_then(|row| TestState::parse(row.get::<_, &str>(0))))
}

/// The state of test `id` and who holds its lease, locking the row until
/// the transaction ends (so that a deletion cannot slip in between reading
/// the state and recording a step).
pub async fn lock_state(
    client: &impl GenericClient,
    id: &str,
) -> Result<(TestState, Option<String>)> {
    let row = client
        .query_one(
            "SELECT state, lease_owner FROM tests WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
    let state: String = row.get(0);
    let state = TestState::parse(&state)
        .ok_or_else(|| Error::Internal(format!("unknown test state {state:?}")))?;
    Ok((state, row.get(1)))
}

/// The outcome of a step, to record if the lease is still ours.
#[derive(Clone, Debug, Default)]
pub struct StepResult {
    pub state: Option<TestState>,
    pub step: Option<TestStep>,
    pub error: Option<String>,
    pub ready: bool,
    /// Run again after this long (retries), keeping the lease free.
    pub retry_after: Option<Duration>,
    /// Reset the attempts counter (the step made progress).
    pub reset_attempts: bool,
    /// The host the step could not reach (retried): recorded with the time
    /// it was first seen out, kept while it stays out. `None`: the step got
    /// through, and any outage is cleared.
    pub outage_host: Option<String>,
}

/// Records a step's result and frees the lease, only if `owner` still
/// holds it (fencing: a controller that lost its lease records nothing).
pub async fn finish_step(
    client: &impl GenericClient,
    id: &str,
    owner: &str,
    result: &StepResult,
) -> Result<bool> {
    let state = result.state.map(TestState::as_str);
    let step = result.step.map(TestStep::as_str);
    let retry = result.retry_after.map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let updated = client
        .execute(
            "UPDATE tests SET
                 state = COALESCE($3, state),
                 step = COALESCE($4, step),
                 error = COALESCE($5, error),
                 ready_at = CASE WHEN $6 THEN now() ELSE ready_at END,
                 expires_at = CASE WHEN $6 THEN now() + make_interval(secs => ttl_seconds) ELSE expires_at END,
                 attempts = CASE WHEN $8 THEN 0 WHEN $7::float8 > 0 THEN attempts + 1 ELSE attempts END,
                 next_run_at = now() + make_interval(secs => $7::float8),
                 updated_at = now(),
                 outage_since = CASE WHEN $9::text IS NULL THEN NULL
                     WHEN outage_host IS DISTINCT FROM $9::text OR outage_since IS NULL THEN now()
                     ELSE outage_since END,
                 outage_host = $9::text,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner, &state, &step, &result.error, &result.ready, &retry, &result.reset_attempts, &result.outage_host],
        )
        .await?;
    if updated == 1 {
        notify(client, id).await?;
    }
    Ok(updated == 1)
}

/// Stores the copy's progress (only while `owner` holds the lease). The
/// progress came from the test host: an outage the step recorded before
/// (the test host was out) is over.
pub async fn store_progress(
    client: &impl GenericClient,
    id: &str,
    owner: &str,
    progress: &CopyProgress,
) -> Result<()> {
    let value =
        serde_json::to_value(progress).map_err(|e| Error::Internal(format!("progress: {e}")))?;
    let updated = client
        .execute(
            "UPDATE tests SET progress = $3, updated_at = now(),
                 outage_host = NULL, outage_since = NULL
             WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner, &value],
        )
        .await?;
    if updated == 1 {
        notify(client, id).await?;
    }
    Ok(())
}

/// Starts a refresh of a ready test: a new generation, copied into the same
/// target (only what changed travels).
pub async fn start_refresh(client: &impl GenericClient, id: &str) -> Result<Test> {
    let updated = client
        .execute(
            "UPDATE tests SET state = 'refreshing', step = 'grant', generation = generation + 1,
                 error = '', attempts = 0, next_run_at = now(), updated_at = now()
             WHERE id = $1 AND state = 'ready'",
            &[&id],
        )
        .await?;
    let test = get(client, id).await?;
    if updated == 0 {
        return Err(Error::FailedPrecondition(format!(
            "test {id} is {}; only a ready test can be refreshed",
            test.state.as_str()
        )));
    }
    notify(client, id).await?;
    Ok(test)
}

/// Starts removing a test's copy (delete or expiry). Idempotent.
pub async fn start_removal(client: &impl GenericClient, id: &str) -> Result<Test> {
    let updated = client
        .execute(
            "UPDATE tests SET state = 'deleting', step = 'remove', attempts = 0,
                 next_run_at = now(), updated_at = now()
             WHERE id = $1 AND state NOT IN ('deleting', 'deleted')",
            &[&id],
        )
        .await?;
    if updated == 1 {
        notify(client, id).await?;
    }
    get(client, id).await
}

/// Starts the removal of every test past its expiry, whatever its state
/// (ready, failed, or stuck placing or copying), but deleting and deleted
/// ones; their ids. The rule is `test_flow::expiry`, with `copy_grace`
/// its `COPY_GRACE`. A test whose step is running keeps its lease: the
/// deletion wins when the step ends (`test_flow::settle`).
pub async fn expire_due(client: &impl GenericClient, copy_grace: Duration) -> Result<Vec<String>> {
    let grace = copy_grace.as_secs_f64();
    let rows = client
        .query(
            "UPDATE tests SET state = 'deleting', step = 'remove', attempts = 0,
                 next_run_at = now(), updated_at = now()
             WHERE state NOT IN ('deleting', 'deleted')
               AND CASE WHEN state = 'ready'
                   THEN COALESCE(expires_at,
                                 created_at + make_interval(secs => ttl_seconds::float8))
                   ELSE COALESCE(ready_at, created_at)
                        + make_interval(secs => GREATEST(ttl_seconds::float8, $1::float8))
                   END <= now()
             RETURNING id",
            &[&grace],
        )
        .await?;
    let mut ids = Vec::new();
    for row in rows {
        let id: String = row.get(0);
        notify(client, &id).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Audit: a step starts.
pub async fn step_started(client: &impl GenericClient, test: &Test, owner: &str) -> Result<i64> {
    let generation = i32::try_from(test.generation).unwrap_or(i32::MAX);
    let row = client
        .query_one(
            "INSERT INTO step_runs (workflow_id, step, generation, controller) VALUES ($1, $2, $3, $4)
             RETURNING id",
            &[&test.id, &test.step.as_str(), &generation, &owner],
        )
        .await?;
    Ok(row.get(0))
}

/// Audit: a step ended with `outcome`.
pub async fn step_finished(client: &impl GenericClient, run_id: i64, outcome: &str) -> Result<()> {
    client
        .execute(
            "UPDATE step_runs SET finished_at = now(), outcome = $2 WHERE id = $1",
            &[&run_id, &outcome],
        )
        .await?;
    Ok(())
}
