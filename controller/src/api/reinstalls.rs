//! The operator API of reinstalls (`navette.v1.Reinstalls`): request one,
//! read them, retry, mark done or abort a stuck one. Converts between
//! protobuf and [`crate::reinstall`]'s domain types, which decide (a
//! refusal is their `FailedPrecondition`). Operators only (`api::policy`).

use std::sync::Arc;

use navette_proto::gate::caller;
use navette_proto::v1;
use navette_proto::v1::reinstalls_server::Reinstalls;
use tonic::Request;

use super::{Reply, reply};
use crate::engine::WorkflowId;
use crate::error::Error;
use crate::ids::{self, HostId, RequestId};
use crate::reinstall::{
    self, MAX_ENROLMENT_TIMEOUT_SECS, NewReinstall, STACK_VERSION, Stage, View,
};
use crate::state::Controller;

pub struct ReinstallsApi(pub Arc<Controller>);

fn stage(stage: Stage) -> v1::ReinstallStage {
    use v1::ReinstallStage as S;
    match stage {
        Stage::Checking => S::Checking,
        Stage::MintingToken => S::MintingToken,
        Stage::Provisioning => S::Provisioning,
        Stage::AwaitingEnrolment => S::AwaitingEnrolment,
        Stage::Stuck => S::Stuck,
        Stage::Aborting => S::Aborting,
        Stage::MarkingDone => S::MarkingDone,
        Stage::Done => S::Done,
        Stage::MarkedDone => S::MarkedDone,
        Stage::Aborted => S::Aborted,
        Stage::Refused => S::Refused,
    }
}

fn reinstall(view: &View) -> v1::Reinstall {
    let r = &view.reinstall;
    v1::Reinstall {
        id: r.id.clone(),
        request_id: r.request_id.clone(),
        host_id: r.host_id.clone(),
        stack_version: r.stack_version.clone(),
        stage: stage(r.stage).into(),
        attempt: r.attempt,
        stuck_reason: r
            .stuck
            .as_ref()
            .map(|s| s.reason.clone())
            .unwrap_or_default(),
        refusal: r.refusal.clone().unwrap_or_default(),
        join_token_id: r.token_id.clone().unwrap_or_default(),
        deadline: r.deadline.map(navette_proto::timestamp),
        enrolment_timeout_seconds: u32::try_from(r.enrolment_timeout_secs).unwrap_or(u32::MAX),
        provisioner_output: r.provisioner_output.clone().unwrap_or_default(),
        enrolled_at: r.enrolled_at.map(navette_proto::timestamp),
        reported_stack_version: r.reported_stack_version.clone().unwrap_or_default(),
        requested_by: r.requested_by.clone(),
        ended_by: r.ended_by.clone().unwrap_or_default(),
        note: r.note.clone().unwrap_or_default(),
        created_at: Some(navette_proto::timestamp(view.created_at)),
        updated_at: Some(navette_proto::timestamp(view.updated_at)),
    }
}

/// A wait for the host: 0 is absent, at most 7 days.
fn enrolment_timeout(value: u32, field: &str) -> Result<Option<u64>, Error> {
    match value {
        0 => Ok(None),
        n if n <= MAX_ENROLMENT_TIMEOUT_SECS => Ok(Some(u64::from(n))),
        n => Err(Error::InvalidArgument(format!(
            "{field} is {n}; at most {MAX_ENROLMENT_TIMEOUT_SECS} (7 days; 0 means the controller's default)"
        ))),
    }
}

fn reinstall_id(value: &str) -> Result<WorkflowId, Error> {
    WorkflowId::parse(value, "id")
}

#[tonic::async_trait]
impl Reinstalls for ReinstallsApi {
    async fn request_reinstall(
        &self,
        request: Request<v1::RequestReinstallRequest>,
    ) -> Reply<v1::Reinstall> {
        let by = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                let request_id = RequestId::parse("request_id", &request.request_id)?;
                let host_id = HostId::parse("host_id", &request.host_id)?;
                STACK_VERSION.check("stack_version", &request.stack_version)?;
                let timeout = enrolment_timeout(
                    request.enrolment_timeout_seconds,
                    "enrolment_timeout_seconds",
                )?;
                let view = reinstall::request(
                    &self.0,
                    &NewReinstall {
                        request_id: &request_id,
                        host_id: &host_id,
                        stack_version: &request.stack_version,
                        enrolment_timeout_secs: timeout,
                        requested_by: &by,
                    },
                )
                .await?;
                Ok(reinstall(&view))
            }
            .await,
        )
    }

    async fn get_reinstall(
        &self,
        request: Request<v1::GetReinstallRequest>,
    ) -> Reply<v1::Reinstall> {
        let request = request.into_inner();
        reply(
            async {
                let id = reinstall_id(&request.id)?;
                let client = self.0.db.get().await?;
                Ok(reinstall(
                    &reinstall::store::get(&**client, id.as_str()).await?,
                ))
            }
            .await,
        )
    }

    async fn list_reinstalls(
        &self,
        request: Request<v1::ListReinstallsRequest>,
    ) -> Reply<v1::ListReinstallsResponse> {
        let request = request.into_inner();
        reply(
            async {
                let host = ids::optional("host_id", &request.host_id, HostId::parse)?;
                let client = self.0.db.get().await?;
                let views =
                    reinstall::store::list(&**client, host.as_deref(), request.include_ended)
                        .await?;
                Ok(v1::ListReinstallsResponse {
                    reinstalls: views.iter().map(reinstall).collect(),
                })
            }
            .await,
        )
    }

    async fn retry_reinstall(
        &self,
        request: Request<v1::RetryReinstallRequest>,
    ) -> Reply<v1::Reinstall> {
        let by = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                let id = reinstall_id(&request.id)?;
                let timeout = enrolment_timeout(
                    request.enrolment_timeout_seconds,
                    "enrolment_timeout_seconds",
                )?;
                Ok(reinstall(
                    &reinstall::retry(&self.0, &id, timeout, &by).await?,
                ))
            }
            .await,
        )
    }

    async fn mark_reinstall_done(
        &self,
        request: Request<v1::MarkReinstallDoneRequest>,
    ) -> Reply<v1::Reinstall> {
        let by = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                let id = reinstall_id(&request.id)?;
                let note = ids::text("note", &request.note)?;
                Ok(reinstall(
                    &reinstall::mark_done(&self.0, &id, note, &by).await?,
                ))
            }
            .await,
        )
    }

    async fn abort_reinstall(
        &self,
        request: Request<v1::AbortReinstallRequest>,
    ) -> Reply<v1::Reinstall> {
        let by = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                let id = reinstall_id(&request.id)?;
                let note = ids::text("note", &request.note)?;
                Ok(reinstall(&reinstall::abort(&self.0, &id, note, &by).await?))
            }
            .await,
        )
    }
}
