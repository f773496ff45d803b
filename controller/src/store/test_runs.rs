//! The `tests` table: test runs as the panel sees them, and `step_runs`,
//! the test's own log of step runs.
//!
//! A test's state is its workflow's (`workflows.state`, kind `test`):
//! this table is its view, written by [`project`] in the transaction that
//! records each transition, and by [`store_progress`] while the copy step
//! holds the workflow's lease. It decides nothing: leases, fencing, the
//! inbox and timers are the engine's. Every write announces the test on
//! `navette_tests` (WatchTest follows it).

use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, Result};
use crate::model::{CopyPlan, CopyProgress, Test, TestState, TestStep};
use crate::workflow::test_flow::Transition;

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

/// Writes the panel's view of `test` (every column its workflow decides,
/// `updated_at` on the database's clock), and announces it on
/// `navette_tests`. Called in the transaction that records the
/// transition (the engine's projection), or that sends a command whose
/// effect it shows at once.
pub async fn project(client: &impl GenericClient, test: &Test) -> Result<()> {
    let plan =
        serde_json::to_value(&test.plan).map_err(|e| Error::Internal(format!("plan: {e}")))?;
    let generation = i32::try_from(test.generation).unwrap_or(i32::MAX);
    let attempts = i32::try_from(test.attempts).unwrap_or(i32::MAX);
    let (outage_host, outage_since) = test.outage.clone().unzip();
    client
        .execute(
            "UPDATE tests SET state = $2, step = $3, error = $4, generation = $5, plan = $6,
                 ready_at = $7, expires_at = $8, attempts = $9, outage_host = $10,
                 outage_since = $11, updated_at = now()
             WHERE id = $1",
            &[
                &test.id,
                &test.state.as_str(),
                &test.step.as_str(),
                &test.error,
                &generation,
                &plan,
                &test.ready_at,
                &test.expires_at,
                &attempts,
                &outage_host,
                &outage_since,
            ],
        )
        .await?;
    notify(client, &test.id).await
}

/// Stores the copy's progress (only while `owner` holds the lease of the
/// test's workflow). The progress came from the test host: an outage the
/// step recorded before (the test host was out) is over.
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
             WHERE id = $1 AND EXISTS (SELECT 1 FROM workflows w WHERE w.id = $1
                 AND w.lease_owner = $2 AND w.lease_expires_at > now())",
            &[&id, &owner, &value],
        )
        .await?;
    if updated == 1 {
        notify(client, id).await?;
    }
    Ok(())
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
