//! The transit host's wipe, as the controller asks it: the domain side of
//! the agent API's `WipeTransit` (what the agent removes is said there and
//! in `agent/src/transit/`).

use super::{CallFailure, call_outcome, client};
use crate::model::Host;
use crate::state::Controller;

/// What a wipe removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wiped {
    pub copies_removed: Vec<String>,
    pub sites_stopped: Vec<String>,
    pub logins_dropped: Vec<String>,
}

/// Has `host`'s agent remove what it holds for `allocation_id`, refusing
/// while one of `addresses` is still there. Safe to repeat.
pub async fn wipe(
    controller: &Controller,
    host: &Host,
    allocation_id: &str,
    addresses: &[String],
) -> Result<Wiped, CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    let mut request = tonic::Request::new(navette_proto::v1::WipeTransitRequest {
        allocation_id: allocation_id.to_owned(),
        addresses: addresses.to_vec(),
    });
    request.set_timeout(std::time::Duration::from_secs(300));
    let response = client
        .wipe_transit(request)
        .await
        .map_err(|status| call_outcome(host, &status))?
        .into_inner();
    Ok(Wiped {
        copies_removed: response.copies_removed,
        sites_stopped: response.sites_stopped,
        logins_dropped: response.logins_dropped,
    })
}
