//! Workflows and their audit trails as operators read them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::engine::audit::{Entry, What};
use crate::engine::{End, WorkflowId};
use crate::error::{Error, Result};

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
