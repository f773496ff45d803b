//! Calls from the controller to host agents, over mutual TLS. The agent is
//! verified by its host id (the name in its certificate), whatever address
//! it has today.
//!
//! The transfer calls take and return domain types ([`transfer`]), and so
//! do the sites calls ([`sites`]), the transit wipe ([`transit`]), the
//! address calls ([`addresses`]), a migration's replication calls
//! ([`replication`]), the actions of its freeze and switch
//! ([`cutover`]), the verification inside the freeze ([`verify`]) and the
//! old copy's retirement ([`retire`]); the conversions to and from the
//! agent API are in [`wire`], so the workflows never see protobuf.

pub mod addresses;
pub mod cutover;
pub mod replication;
pub mod retire;
pub mod sites;
pub mod transfer;
pub mod transit;
pub mod verify;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use navette_proto::identity::agent_server_name;
use navette_proto::v1;
use navette_proto::v1::agent_client::AgentClient;

use crate::error::{Error, Result};
use crate::model::{Host, Inventory};
use crate::state::Controller;
use transfer::{CopyRemoval, TransferReport, TransferSpec};

/// How long a call to an agent may take before the host counts as not
/// answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn client(controller: &Controller, host: &Host) -> Result<AgentClient<tonic::transport::Channel>> {
    let address: SocketAddr = host.agent_endpoint.parse().map_err(|_| {
        Error::FailedPrecondition(format!(
            "host {} has no usable agent endpoint ({:?}); is its agent running?",
            host.id, host.agent_endpoint
        ))
    })?;
    let channel = navette_proto::tls::channel(
        address,
        &agent_server_name(&host.id),
        controller.tls.client_config(),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(AgentClient::new(channel))
}

fn unreachable(host: &Host, status: &tonic::Status) -> Error {
    Error::Unavailable(format!(
        "the agent of host {} at {} did not answer: {} ({:?})",
        host.id,
        host.agent_endpoint,
        status.message(),
        status.code()
    ))
}

/// Asks a host's agent for its inventory now, checked.
pub async fn get_inventory(controller: &Controller, host: &Host) -> Result<Inventory> {
    get_inventory_measuring(controller, host, &[]).await
}

/// [`get_inventory`], the homes of `accounts` measured now.
pub async fn get_inventory_measuring(
    controller: &Controller,
    host: &Host,
    accounts: &[&str],
) -> Result<Inventory> {
    let mut client = client(controller, host)?;
    let mut request = tonic::Request::new(v1::GetInventoryRequest {
        measure_homes: accounts.iter().map(|a| (*a).to_owned()).collect(),
    });
    request.set_timeout(CALL_TIMEOUT);
    let mut report = client
        .get_inventory(request)
        .await
        .map_err(|status| unreachable(host, &status))?
        .into_inner();
    report.host_id = host.id.clone();
    wire::inventory_from(&report)
}

/// The agent of `host` for a workflow's step: a host the controller
/// cannot dial refuses the step (retrying would not change it).
pub(super) fn agent(
    controller: &Controller,
    host: &Host,
) -> std::result::Result<v1::agent_client::AgentClient<tonic::transport::Channel>, CallFailure> {
    client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))
}

/// A request the agent answers within `timeout`, or the call fails.
pub(super) fn request<T>(message: T, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Maps a failed agent call to a step outcome: transport trouble is worth
/// retrying, an answer that refuses is not.
pub fn call_outcome(host: &Host, status: &tonic::Status) -> CallFailure {
    use tonic::Code;
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted => CallFailure::Retry(unreachable(host, status).to_string()),
        _ => CallFailure::Refused(format!(
            "the agent of host {} refused: {} ({:?})",
            host.id,
            status.message(),
            status.code()
        )),
    }
}

/// Why a call to an agent failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    Retry(String),
    Refused(String),
}

/// Grants `spec` on the source host.
pub async fn grant_transfer(
    controller: &Controller,
    host: &Host,
    spec: &TransferSpec,
) -> Result<(), CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    let mut request = tonic::Request::new(wire::transfer_spec(spec));
    request.set_timeout(CALL_TIMEOUT);
    client
        .grant_transfer(request)
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}

/// Starts (or resumes, or looks up) `spec` on the target host.
pub async fn start_transfer(
    controller: &Controller,
    host: &Host,
    spec: &TransferSpec,
) -> Result<TransferReport, CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    let mut request = tonic::Request::new(wire::transfer_spec(spec));
    request.set_timeout(CALL_TIMEOUT);
    client
        .start_transfer(request)
        .await
        .map(|response| wire::transfer_report(response.get_ref()))
        .map_err(|status| call_outcome(host, &status))
}

/// A transfer followed on its target host: its reports, one by one.
pub struct TransferWatch {
    host_id: String,
    stream: tonic::Streaming<v1::TransferProgress>,
}

impl TransferWatch {
    /// The next report; `None` once the agent ends the stream; an error
    /// (in words) when the stream broke.
    pub async fn next(&mut self) -> Result<Option<TransferReport>, String> {
        match self.stream.message().await {
            Ok(report) => Ok(report.as_ref().map(wire::transfer_report)),
            Err(status) => Err(format!(
                "following the copy on host {}: {}",
                self.host_id,
                status.message()
            )),
        }
    }
}

/// Follows a transfer on the target host until it ends.
pub async fn watch_transfer(
    controller: &Controller,
    host: &Host,
    transfer_id: &str,
) -> Result<TransferWatch, CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    client
        .watch_transfer(v1::WatchTransferRequest {
            transfer_id: transfer_id.to_owned(),
        })
        .await
        .map(|response| TransferWatch {
            host_id: host.id.clone(),
            stream: response.into_inner(),
        })
        .map_err(|status| call_outcome(host, &status))
}

/// Removes the copy `spec` names (its `copy_id`) on the target host; what
/// the agent says of the copy's logins.
pub async fn remove_copy(
    controller: &Controller,
    host: &Host,
    spec: &TransferSpec,
) -> Result<CopyRemoval, CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    let mut request = tonic::Request::new(v1::RemoveCopyRequest {
        spec: Some(wire::transfer_spec(spec)),
    });
    request.set_timeout(Duration::from_secs(300));
    client
        .remove_copy(request)
        .await
        .map(|response| wire::copy_removal(response.into_inner()))
        .map_err(|status| call_outcome(host, &status))
}

/// Ends the grant of `transfer_id` on the source host (idempotent);
/// whether a live grant was revoked.
pub async fn revoke_grant(
    controller: &Controller,
    host: &Host,
    transfer_id: &str,
) -> Result<bool, CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    let mut request = tonic::Request::new(v1::RevokeGrantRequest {
        transfer_id: transfer_id.to_owned(),
    });
    request.set_timeout(CALL_TIMEOUT);
    client
        .revoke_grant(request)
        .await
        .map(|response| response.into_inner().revoked)
        .map_err(|status| call_outcome(host, &status))
}
