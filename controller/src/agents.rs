//! Calls from the controller to host agents, over mutual TLS. The agent is
//! verified by its host id (the name in its certificate), whatever address
//! it has today.

use std::net::SocketAddr;
use std::time::Duration;

use navette_proto::identity::agent_server_name;
use navette_proto::v1;
use navette_proto::v1::agent_client::AgentClient;

use crate::error::{Error, Result};
use crate::model::Host;
use crate::state::Controller;

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

/// Asks a host's agent for its inventory now.
pub async fn get_inventory(controller: &Controller, host: &Host) -> Result<v1::HostInventory> {
    let mut client = client(controller, host)?;
    let mut request = tonic::Request::new(v1::GetInventoryRequest {});
    request.set_timeout(CALL_TIMEOUT);
    let mut report = client
        .get_inventory(request)
        .await
        .map_err(|status| unreachable(host, &status))?
        .into_inner();
    report.host_id = host.id.clone();
    Ok(report)
}
