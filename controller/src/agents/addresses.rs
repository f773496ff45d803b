//! IP rerouting on a host, as the controller asks it: the domain side of
//! the agent API's `EnsureAddress`. Plain data and one thin call.

use super::{CALL_TIMEOUT, CallFailure, call_outcome, client};
use crate::model::Host;
use crate::state::Controller;

/// "This host holds (or does not hold) this address", for one move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnsureAddress {
    pub operation_id: String,
    pub address: String,
    pub prefix_length: u8,
    pub held: bool,
    /// Announce it once taken (shared layer 2).
    pub announce: bool,
}

/// What the agent did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnsuredAddress {
    /// False: the host already was as asked.
    pub changed: bool,
    pub interface: String,
}

impl CallFailure {
    /// The failure in words.
    pub fn message(&self) -> &str {
        match self {
            CallFailure::Retry(message) | CallFailure::Refused(message) => message,
        }
    }
}

/// Puts `host` in the state `ensure` asks for. Safe to repeat.
pub async fn ensure_address(
    controller: &Controller,
    host: &Host,
    ensure: &EnsureAddress,
) -> Result<EnsuredAddress, CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    let mut request = tonic::Request::new(navette_proto::v1::EnsureAddressRequest {
        operation_id: ensure.operation_id.clone(),
        address: ensure.address.clone(),
        prefix_length: u32::from(ensure.prefix_length),
        held: ensure.held,
        announce: ensure.announce,
    });
    request.set_timeout(CALL_TIMEOUT);
    let response = client
        .ensure_address(request)
        .await
        .map_err(|status| call_outcome(host, &status))?
        .into_inner();
    Ok(EnsuredAddress {
        changed: response.changed,
        interface: response.interface,
    })
}
