//! The `migrations` table (the panel's view of each migration's workflow,
//! kind `migrate`) and `account_placements` (where a migrated account
//! lives). A migration's state is its workflow's: [`project`] writes the
//! view in the transaction that records each transition, and announces it
//! on `navette_migrations` (WatchMigration follows it). The checks that
//! refuse a migration before it starts read here too. The freeze step's
//! marker ([`mark_freeze_started`]) is kept here outside the run, so that
//! a freeze cut short by a controller's death is known to its next run.

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};

use crate::engine::{self, WorkflowId};
use crate::error::{Error, Result};
use crate::workflow::migrate_kind::MigrateKind;
use crate::workflow::migrate_run::MigrationRun;

/// The notification channel of migration changes.
pub const CHANNEL: &str = "navette_migrations";

/// Who starts migrations, as the audit trail names it.
const PANEL: &str = "panel";

fn from_row(row: &Row) -> Result<MigrationRun> {
    let run: serde_json::Value = row.get("run");
    serde_json::from_value(run).map_err(|e| Error::Internal(format!("migration run: {e}")))
}

async fn notify(client: &impl GenericClient, id: &str) -> Result<()> {
    client
        .execute("SELECT pg_notify('navette_migrations', $1)", &[&id])
        .await?;
    Ok(())
}

fn encoded(run: &MigrationRun) -> Result<serde_json::Value> {
    serde_json::to_value(run).map_err(|e| Error::Internal(format!("migration run: {e}")))
}

/// Creates the migration and its workflow in one transaction; `Ok(None)`
/// when its request id was used already, or another migration of the
/// account went in flight meanwhile (the caller looks again).
pub async fn create(
    client: &mut deadpool_postgres::Client,
    run: &MigrationRun,
) -> Result<Option<MigrationRun>> {
    let transaction = client.transaction().await?;
    let state = encoded(run)?;
    let inserted = transaction
        .execute(
            "INSERT INTO migrations (id, request_id, account, migration_id, source_host_id,
                 target_host_id, state, run)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT DO NOTHING",
            &[
                &run.id,
                &run.request_id,
                &run.account,
                &run.migration_id,
                &run.source_host_id,
                &run.target_host_id,
                &run.state.as_str(),
                &state,
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(None);
    }
    let id = WorkflowId::parse(&run.id, "id")?;
    engine::store::create(
        &*transaction,
        &engine::store::NewWorkflow {
            id: &id,
            kind: <MigrateKind as engine::Kind>::NAME,
            state: &state,
            parent: None,
            sender: PANEL,
        },
    )
    .await?;
    notify(&*transaction, &run.id).await?;
    transaction.commit().await?;
    Ok(Some(run.clone()))
}

/// Writes the view of `run`, as its workflow records it.
pub async fn project(client: &impl GenericClient, run: &MigrationRun) -> Result<()> {
    client
        .execute(
            // A recorded transition settles any freeze under way.
            "UPDATE migrations SET state = $2, run = $3, freeze_started = NULL, updated_at = now() \
             WHERE id = $1",
            &[&run.id, &run.state.as_str(), &encoded(run)?],
        )
        .await?;
    notify(client, &run.id).await
}

/// Records that freeze `try_number` of migration `id` begins at
/// `frozen_at`, before anything is frozen; the next recorded transition
/// clears it ([`project`]).
pub async fn mark_freeze_started(
    client: &impl GenericClient,
    id: &str,
    try_number: u32,
    frozen_at: DateTime<Utc>,
) -> Result<()> {
    let marker = serde_json::json!({
        "try": try_number,
        "frozen_at": frozen_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    });
    client
        .execute(
            "UPDATE migrations SET freeze_started = $2 WHERE id = $1",
            &[&id, &marker],
        )
        .await?;
    Ok(())
}

/// When a freeze of migration `id` began that no recorded transition
/// settled: a run of the freeze step stopped during it.
pub async fn freeze_started(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<DateTime<Utc>>> {
    let row = client
        .query_opt(
            "SELECT freeze_started->>'frozen_at' FROM migrations WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&Utc)))
}

pub async fn get(client: &impl GenericClient, id: &str) -> Result<MigrationRun> {
    let row = client
        .query_opt("SELECT run FROM migrations WHERE id = $1", &[&id])
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "migration",
            id: id.to_owned(),
        })?;
    from_row(&row)
}

pub async fn by_request_id(
    client: &impl GenericClient,
    request_id: &str,
) -> Result<Option<MigrationRun>> {
    client
        .query_opt(
            "SELECT run FROM migrations WHERE request_id = $1",
            &[&request_id],
        )
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The migration of `account` in flight, if any.
pub async fn in_flight(client: &impl GenericClient, account: &str) -> Result<Option<MigrationRun>> {
    client
        .query_opt(
            "SELECT run FROM migrations WHERE account = $1
               AND state NOT IN ('completed', 'failed', 'cancelled')",
            &[&account],
        )
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The test of `account` being made or refreshed now (it reads the
/// account's host), as (id, state).
pub async fn test_under_way(
    client: &impl GenericClient,
    account: &str,
) -> Result<Option<(String, String)>> {
    Ok(client
        .query_opt(
            "SELECT id, state FROM tests WHERE account = $1
               AND state IN ('placing', 'copying', 'refreshing') ORDER BY id LIMIT 1",
            &[&account],
        )
        .await?
        .map(|row| (row.get(0), row.get(1))))
}

/// Whether `account` has a test of `migration_id` that became ready within
/// the last `max_age_secs` seconds (on the database's clock) and has not
/// failed since.
pub async fn recent_successful_test(
    client: &impl GenericClient,
    account: &str,
    migration_id: &str,
    max_age_secs: u64,
) -> Result<bool> {
    let seconds = max_age_secs as f64;
    Ok(client
        .query_opt(
            "SELECT 1 FROM tests WHERE account = $1 AND migration_id = $2
               AND ready_at IS NOT NULL AND ready_at > now() - make_interval(secs => $3)
               AND state <> 'failed' LIMIT 1",
            &[&account, &migration_id, &seconds],
        )
        .await?
        .is_some())
}

/// Records that `account` lives on `host_id` now, as copy `copy_id`
/// (migration `migration`). Idempotent.
pub async fn place_account(
    client: &impl GenericClient,
    account: &str,
    host_id: &str,
    copy_id: &str,
    migration: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO account_placements (account, host_id, copy_id, migration)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (account) DO UPDATE SET host_id = EXCLUDED.host_id,
                 copy_id = EXCLUDED.copy_id, migration = EXCLUDED.migration, placed_at = now()",
            &[&account, &host_id, &copy_id, &migration],
        )
        .await?;
    Ok(())
}

/// Where a migration placed `account`, if one did: (host, copy id).
pub async fn placement(
    client: &impl GenericClient,
    account: &str,
) -> Result<Option<(String, String)>> {
    Ok(client
        .query_opt(
            "SELECT host_id, copy_id FROM account_placements WHERE account = $1",
            &[&account],
        )
        .await?
        .map(|row| (row.get(0), row.get(1))))
}

/// Stores the copy's progress in the view while the copy step runs (the
/// workflow records the last one with the copy's outcome). Best effort
/// for the caller.
pub async fn store_progress(
    client: &impl GenericClient,
    id: &str,
    progress: &crate::model::CopyProgress,
) -> Result<()> {
    let progress = serde_json::to_value(progress)
        .map_err(|e| Error::Internal(format!("copy progress: {e}")))?;
    client
        .execute(
            "UPDATE migrations SET run = jsonb_set(run, '{progress}', $2), updated_at = now()
             WHERE id = $1 AND state = 'copying'",
            &[&id, &progress],
        )
        .await?;
    notify(client, id).await
}
