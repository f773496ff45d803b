//! How many workflows of each kind are in each state, for the metrics
//! ([`crate::metrics::workflows`]). One grouped count per workflow table,
//! read in one statement: the tests, by their test state (`tests`, the
//! view of their workflows, counted once), and the engine's workflows of
//! every other kind (`workflows`), whose state for the metrics is where
//! the engine has them: `running` (leased), `due`, `waiting` (an event or a timer),
//! or their outcome once done (`completed`, `failed`, `cancelled`).

use tokio_postgres::GenericClient;

use crate::error::Result;

/// Workflows of one kind in one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowCount {
    pub kind: String,
    pub state: String,
    pub workflows: i64,
}

/// Every (kind, state) with at least one workflow, and how many.
pub async fn by_kind_and_state(client: &impl GenericClient) -> Result<Vec<WorkflowCount>> {
    let rows = client
        .query(
            "SELECT 'test'::text, state, count(*) FROM tests GROUP BY state
             UNION ALL
             SELECT kind,
                    CASE WHEN done THEN outcome
                         WHEN lease_expires_at > now() THEN 'running'
                         WHEN next_run_at <= now() THEN 'due'
                         ELSE 'waiting' END,
                    count(*)
             FROM workflows WHERE kind <> 'test' GROUP BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| WorkflowCount {
            kind: row.get(0),
            state: row.get(1),
            workflows: row.get(2),
        })
        .collect())
}
