//! The SQL of the workflow tables (`workflows`, `workflow_events`,
//! `workflow_audit`, migration 0005). Domain types in and out.
//!
//! - here: creating a workflow ([`create`]);
//! - `lease.rs`: claims, leases and fencing tokens, the point of no return;
//! - `record.rs`: recording a transition under the fencing token;
//! - `inbox.rs`: pending events, cancels and commands;
//! - `read.rs`: workflows and audit trails for operators.
//!
//! Invariants: every write that makes a workflow due, or puts an event in
//! its inbox, also sends `NOTIFY navette_workflows` in the same statement
//! or transaction; [`record()`] and [`pass_point_of_no_return`] change
//! nothing unless the caller's fencing token is the workflow's current one
//! and it still holds the lease; the audit entries of what they record are
//! written by the same statement.

mod inbox;
mod lease;
mod read;
mod record;

pub(crate) use inbox::send_event;
pub use inbox::{StoredEvent, cancel, command, pending_events};
pub use lease::{
    Claimed, PointOfNoReturn, claim, next_due_in, pass_point_of_no_return, release, renew,
};
pub use read::{Filter, Workflow, audit_trail, get, list};
pub(crate) use record::record_projected;
pub use record::{Record, Recorded, record};

use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::WorkflowId;
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

/// Creates a workflow with [`crate::engine::Event::Start`] in its inbox, due now.
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
