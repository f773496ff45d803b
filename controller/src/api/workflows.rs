//! The operator API of workflows (`navette.v1.Workflows`): listing them,
//! reading one and its audit trail, cancelling. Converts between protobuf
//! and the engine's domain types; the engine decides (a cancel after the
//! point of no return is its `FailedPrecondition`, which [`super::status`]
//! turns into `FAILED_PRECONDITION`). Operators only (`api::policy`).

use std::sync::Arc;

use navette_proto::gate::caller;
use navette_proto::v1;
use navette_proto::v1::workflows_server::Workflows;
use tonic::Request;

use super::{Reply, reply};
use crate::engine::WorkflowId;
use crate::engine::audit::{self, Entry};
use crate::engine::store::{self, Filter, Workflow};
use crate::error::Error;
use crate::state::Controller;

/// An optional field: empty is absent.
fn optional(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

pub struct WorkflowsApi(pub Arc<Controller>);

/// `limit` with its default and bound, refused by name above the bound.
fn limit(value: u32, default: i64, most: i64, field: &str) -> Result<i64, Error> {
    match i64::from(value) {
        0 => Ok(default),
        n if n <= most => Ok(n),
        n => Err(Error::InvalidArgument(format!(
            "{field} is {n}; at most {most} (0 means {default})"
        ))),
    }
}

fn workflow(workflow: &Workflow) -> v1::Workflow {
    let (outcome, error) = match &workflow.end {
        Some(end) => (
            end.as_str().to_owned(),
            match end {
                crate::engine::End::Failed(why) => why.clone(),
                _ => String::new(),
            },
        ),
        None => (String::new(), String::new()),
    };
    v1::Workflow {
        id: workflow.id.to_string(),
        kind: workflow.kind.clone(),
        state_json: workflow.state.to_string(),
        step: workflow.step.clone(),
        attempts: workflow.attempts,
        next_run_at: workflow.next_run_at.map(navette_proto::timestamp),
        lease_owner: workflow.lease_owner.clone().unwrap_or_default(),
        parent_id: workflow
            .parent_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        point_of_no_return_at: workflow.point_of_no_return_at.map(navette_proto::timestamp),
        outcome,
        error,
        created_at: Some(navette_proto::timestamp(workflow.created_at)),
        updated_at: Some(navette_proto::timestamp(workflow.updated_at)),
    }
}

fn audit_entry(entry: &Entry) -> v1::WorkflowAuditEntry {
    v1::WorkflowAuditEntry {
        at: Some(navette_proto::timestamp(entry.at)),
        what: entry.what.as_str().to_owned(),
        step: entry.step.clone(),
        who: entry.who.clone(),
        detail: audit::bounded(entry.detail.clone()),
        due_at: entry.due_at.map(navette_proto::timestamp),
        started_at: entry.started_at.map(navette_proto::timestamp),
    }
}

#[tonic::async_trait]
impl Workflows for WorkflowsApi {
    async fn list_workflows(
        &self,
        request: Request<v1::ListWorkflowsRequest>,
    ) -> Reply<v1::ListWorkflowsResponse> {
        let request = request.into_inner();
        reply(
            async {
                let parent = optional(&request.parent_id)
                    .map(|id| WorkflowId::parse(id, "parent_id"))
                    .transpose()?;
                let kind = optional(&request.kind);
                if let Some(kind) = kind {
                    WorkflowId::parse(kind, "kind")?;
                }
                let filter = Filter {
                    kind,
                    parent: parent.as_ref(),
                    include_ended: request.include_ended,
                    limit: limit(request.limit, 100, 1000, "limit")?,
                };
                let client = self.0.db.get().await?;
                let workflows = store::list(&**client, &filter).await?;
                Ok(v1::ListWorkflowsResponse {
                    workflows: workflows.iter().map(workflow).collect(),
                })
            }
            .await,
        )
    }

    async fn get_workflow(&self, request: Request<v1::GetWorkflowRequest>) -> Reply<v1::Workflow> {
        let request = request.into_inner();
        reply(
            async {
                let id = WorkflowId::parse(&request.id, "id")?;
                let client = self.0.db.get().await?;
                Ok(workflow(&store::get(&**client, &id).await?))
            }
            .await,
        )
    }

    async fn list_workflow_audit(
        &self,
        request: Request<v1::ListWorkflowAuditRequest>,
    ) -> Reply<v1::ListWorkflowAuditResponse> {
        let request = request.into_inner();
        reply(
            async {
                let id = WorkflowId::parse(&request.id, "id")?;
                let limit = limit(request.limit, 1000, 10_000, "limit")?;
                let client = self.0.db.get().await?;
                let entries = store::audit_trail(&**client, &id, limit).await?;
                Ok(v1::ListWorkflowAuditResponse {
                    entries: entries.iter().map(audit_entry).collect(),
                })
            }
            .await,
        )
    }

    async fn cancel_workflow(
        &self,
        request: Request<v1::CancelWorkflowRequest>,
    ) -> Reply<v1::CancelWorkflowResponse> {
        let sender = match caller(&request) {
            Ok(caller) => caller.name.clone(),
            Err(status) => return Err(status),
        };
        let request = request.into_inner();
        reply(
            async {
                let id = WorkflowId::parse(&request.id, "id")?;
                let mut client = self.0.db.get().await?;
                let cancelled = store::cancel(&mut client, &id, &sender).await?;
                Ok(v1::CancelWorkflowResponse {
                    cancelled_ids: cancelled.iter().map(ToString::to_string).collect(),
                })
            }
            .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_have_defaults_and_bounds_named_in_refusals() {
        assert_eq!(limit(0, 100, 1000, "limit").ok(), Some(100));
        assert_eq!(limit(7, 100, 1000, "limit").ok(), Some(7));
        let refused = limit(4_294_967_295, 100, 1000, "limit")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(refused, "limit is 4294967295; at most 1000 (0 means 100)");
    }
}
