//! The `tests` table: test runs and their durable workflow state, with
//! leases so that several controllers never run the same step at once.
//!
//! This module records what `workflow::test_flow::next` decided (a
//! [`Transition`]); it decides nothing. Two ways to record, both
//! conditional: a command or timer only if the test is still as it was
//! read ([`record_event`]: a test that changed meanwhile is decided
//! again), a step's outcome only by the controller holding its lease
//! ([`finish_step`]: fencing). A command does not take the lease: a
//! deletion recorded while a step runs lands at once, and the step's
//! outcome, recorded after, is dropped by `next`.

use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, Result};
use crate::model::{CopyPlan, CopyProgress, Test, TestState, TestStep};
use crate::workflow::test_flow::{Attempts, Outage, Run, Transition};

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

/// Creates a test as `created`, what `test_flow::next` decided for its
/// creation at `now` (its creation time, from which its timer counts).
/// `Ok(None)` when the request id was used already (the caller returns
/// that test).
pub async fn create(
    client: &impl GenericClient,
    new: &NewTest<'_>,
    created: &Transition,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Test>> {
    let plan = serde_json::to_value(new.plan).map_err(|e| Error::Internal(format!("plan: {e}")))?;
    let ttl = i64::try_from(new.ttl_seconds).unwrap_or(i64::MAX);
    let (Some(state), Some(step)) = (created.state, created.step) else {
        return Err(Error::Internal(
            "a new test needs a state and a step".to_owned(),
        ));
    };
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO tests (id, request_id, account, migration_id, source_host_id,
                     test_host_id, state, step, plan, ttl_seconds, expires_at, created_at,
                     updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
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
                &state.as_str(),
                &step.as_str(),
                &plan,
                &ttl,
                &created.expires_at,
                &now,
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

/// Test `id` and who holds its lease, locking the row until the
/// transaction ends (so that a deletion cannot slip in between reading the
/// test and recording a step).
pub async fn lock(client: &impl GenericClient, id: &str) -> Result<(Test, Option<String>)> {
    let row = client
        .query_one(
            &format!("SELECT {COLUMNS}, lease_owner FROM tests WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?;
    Ok((from_row(&row)?, row.get("lease_owner")))
}

/// The columns a [`Transition`] writes, as query parameters `$3` onwards
/// (`$1` is the test's id; `$2` what the write is conditional on).
struct Written {
    state: Option<&'static str>,
    step: Option<&'static str>,
    error: Option<String>,
    new_generation: bool,
    ready_at: Option<chrono::DateTime<chrono::Utc>>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds from now; `None`: when it was due.
    run_in: Option<f64>,
    attempts: &'static str,
    keep_outage: bool,
    outage_host: Option<String>,
}

/// What `SET` does with [`Written`]: `Transition::applied`, in SQL. Every
/// expression reads the row as it was before the update.
const SET: &str = "state = COALESCE($3, state),
    step = COALESCE($4, step),
    error = COALESCE($5, error),
    generation = CASE WHEN $6 THEN generation + 1 ELSE generation END,
    ready_at = COALESCE($7, ready_at),
    expires_at = $8,
    next_run_at = CASE WHEN $9::float8 IS NULL THEN next_run_at
        ELSE now() + make_interval(secs => $9::float8) END,
    attempts = CASE $10::text WHEN 'reset' THEN 0 WHEN 'count' THEN attempts + 1 ELSE attempts END,
    outage_since = CASE WHEN $11 THEN outage_since
        WHEN $12::text IS NULL THEN NULL
        WHEN outage_host IS DISTINCT FROM $12::text OR outage_since IS NULL THEN now()
        ELSE outage_since END,
    outage_host = CASE WHEN $11 THEN outage_host ELSE $12::text END,
    updated_at = now()";

impl Written {
    fn of(transition: &Transition) -> Written {
        let (keep_outage, outage_host) = match &transition.outage {
            Outage::Keep => (true, None),
            Outage::Clear => (false, None),
            Outage::Host(host) => (false, Some(host.clone())),
        };
        Written {
            state: transition.state.map(TestState::as_str),
            step: transition.step.map(TestStep::as_str),
            error: transition.error.clone(),
            new_generation: transition.new_generation,
            ready_at: transition.ready_at,
            expires_at: transition.expires_at,
            run_in: match transition.run {
                Run::Keep => None,
                Run::Now => Some(0.0),
                Run::After(wait) => Some(wait.as_secs_f64()),
            },
            attempts: match transition.attempts {
                Attempts::Keep => "keep",
                Attempts::Reset => "reset",
                Attempts::Count => "count",
            },
            keep_outage,
            outage_host,
        }
    }

    /// `$3` onwards, in the order [`SET`] reads them.
    fn parameters(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.state,
            &self.step,
            &self.error,
            &self.new_generation,
            &self.ready_at,
            &self.expires_at,
            &self.run_in,
            &self.attempts,
            &self.keep_outage,
            &self.outage_host,
        ]
    }
}

/// Records `transition` (a command's or the timer's) on test `read`, only
/// if the test is still in the state, step, generation and timer it was
/// read with; the test as recorded, or `None` when it changed meanwhile
/// (the caller reads it again and decides again). The lease is left as it
/// is: a running step keeps it, and its outcome is dropped.
pub async fn record_event(
    client: &impl GenericClient,
    read: &Test,
    transition: &Transition,
) -> Result<Option<Test>> {
    let written = Written::of(transition);
    let generation = i32::try_from(read.generation).unwrap_or(i32::MAX);
    let condition = (
        read.state.as_str(),
        read.step.as_str(),
        generation,
        read.expires_at,
    );
    let mut parameters: Vec<&(dyn ToSql + Sync)> = vec![&read.id, &condition.0];
    parameters.extend(written.parameters());
    parameters.extend([
        &condition.1 as &(dyn ToSql + Sync),
        &condition.2,
        &condition.3,
    ]);
    let row = client
        .query_opt(
            &format!(
                "UPDATE tests SET {SET}
                 WHERE id = $1 AND state = $2 AND step = $13 AND generation = $14
                   AND expires_at IS NOT DISTINCT FROM $15
                 RETURNING {COLUMNS}"
            ),
            &parameters,
        )
        .await?;
    match row {
        Some(row) => {
            notify(client, &read.id).await?;
            from_row(&row).map(Some)
        }
        None => Ok(None),
    }
}

/// Records a step's `transition` and frees the lease, only if `owner`
/// still holds it (fencing: a controller that lost its lease records
/// nothing).
pub async fn finish_step(
    client: &impl GenericClient,
    id: &str,
    owner: &str,
    transition: &Transition,
) -> Result<bool> {
    let written = Written::of(transition);
    let mut parameters: Vec<&(dyn ToSql + Sync)> = vec![&id, &owner];
    parameters.extend(written.parameters());
    let updated = client
        .execute(
            &format!(
                "UPDATE tests SET {SET}, lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = $1 AND lease_owner = $2"
            ),
            &parameters,
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

/// Tests whose timer is due (`expires_at` passed), or was never set (a
/// test recorded before timers), oldest first, at most `limit`: each gets
/// an `Expire` event. Deleting and deleted tests have no timer.
pub async fn due_timers(client: &impl GenericClient, limit: i64) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT id FROM tests
             WHERE state NOT IN ('deleting', 'deleted')
               AND (expires_at IS NULL OR expires_at <= now())
             ORDER BY expires_at NULLS FIRST
             LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
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
