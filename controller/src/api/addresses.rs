//! The operator API of IP rerouting (`navette.v1.Addresses`): move an
//! address of a dedicated server or VPS to a transit host or back, and
//! list where each of its addresses is held and how it got there. Checks
//! and converts; the domain is `crate::addresses`.

use std::net::IpAddr;
use std::sync::Arc;

use navette_proto::gate::caller;
use navette_proto::v1;
use navette_proto::v1::addresses_server::Addresses;
use tonic::Request;

use super::{Reply, reply};
use crate::addresses::{self, MoveRequest, ServerAddress};
use crate::config::RerouteMode;
use crate::error::Error;
use crate::ids::HostId;
use crate::state::Controller;
use crate::store::addresses::{AddressMove, MoveOutcome};

pub struct AddressesApi(pub Arc<Controller>);

#[tonic::async_trait]
impl Addresses for AddressesApi {
    async fn move_address(
        &self,
        request: Request<v1::MoveAddressRequest>,
    ) -> Reply<v1::MoveAddressResponse> {
        let requested_by = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                let server_id = HostId::parse("server_id", &request.server_id)?;
                let to_host_id = HostId::parse("to_host_id", &request.to_host_id)?;
                let address = parse_address(&request.address)?;
                let mode = match v1::RerouteMode::try_from(request.mode) {
                    Ok(v1::RerouteMode::Unspecified) => None,
                    Ok(v1::RerouteMode::Layer2) => Some(RerouteMode::Layer2),
                    Ok(v1::RerouteMode::Routed) => Some(RerouteMode::Routed),
                    Err(_) => {
                        return Err(Error::InvalidArgument(format!(
                            "mode: {} is not a RerouteMode",
                            request.mode
                        )));
                    }
                };
                let longest = if address.is_ipv4() { 32 } else { 128 };
                let prefix_length = match request.prefix_length {
                    0 => None,
                    n if n <= longest => u8::try_from(n).ok(),
                    n => {
                        return Err(Error::InvalidArgument(format!(
                            "prefix_length: {n} is longer than {longest}"
                        )));
                    }
                };
                let result = addresses::move_address(
                    &self.0,
                    &MoveRequest {
                        server_id: server_id.into_string(),
                        address,
                        to_host_id: to_host_id.into_string(),
                        mode,
                        prefix_length,
                        requested_by,
                    },
                )
                .await?;
                Ok(v1::MoveAddressResponse {
                    r#move: result.last_move.as_ref().map(address_move),
                    unchanged: result.unchanged,
                })
            }
            .await,
        )
    }

    async fn list_server_addresses(
        &self,
        request: Request<v1::ListServerAddressesRequest>,
    ) -> Reply<v1::ListServerAddressesResponse> {
        let request = request.into_inner();
        reply(
            async {
                let server_id = HostId::parse("server_id", &request.server_id)?;
                let listed = addresses::server_addresses(&self.0, &server_id).await?;
                Ok(v1::ListServerAddressesResponse {
                    addresses: listed.iter().map(server_address).collect(),
                })
            }
            .await,
        )
    }
}

/// An IP address alone, canonical (`::ffff:a.b.c.d` is IPv4).
fn parse_address(text: &str) -> Result<IpAddr, Error> {
    let address: IpAddr = text.parse().map_err(|_| {
        Error::InvalidArgument(format!(
            "address: {} is not an IPv4 or IPv6 address (without prefix length)",
            crate::ids::quote(text)
        ))
    })?;
    let address = address.to_canonical();
    let link_local = matches!(address, IpAddr::V6(v6) if v6.is_unicast_link_local());
    if address.is_loopback() || address.is_unspecified() || address.is_multicast() || link_local {
        return Err(Error::InvalidArgument(format!(
            "address: {address} is loopback, unspecified, multicast or link-local: it cannot move"
        )));
    }
    Ok(address)
}

fn mode(mode: RerouteMode) -> v1::RerouteMode {
    match mode {
        RerouteMode::Layer2 => v1::RerouteMode::Layer2,
        RerouteMode::Routed => v1::RerouteMode::Routed,
    }
}

fn outcome(outcome: MoveOutcome) -> v1::MoveOutcome {
    match outcome {
        MoveOutcome::Running => v1::MoveOutcome::Running,
        MoveOutcome::Done => v1::MoveOutcome::Done,
        MoveOutcome::Failed => v1::MoveOutcome::Failed,
    }
}

fn address_move(m: &AddressMove) -> v1::AddressMove {
    v1::AddressMove {
        operation_id: m.operation_id.clone(),
        address: m.address.clone(),
        server_id: m.server_host_id.clone(),
        from_host_id: m.from_host_id.clone(),
        to_host_id: m.to_host_id.clone(),
        mode: mode(m.mode).into(),
        requested_by: m.requested_by.clone(),
        requested_at: Some(navette_proto::timestamp(m.requested_at)),
        finished_at: m.finished_at.map(navette_proto::timestamp),
        outcome: outcome(m.outcome).into(),
        error: m.error.clone(),
        provider_ms: m.provider_ms,
    }
}

fn server_address(address: &ServerAddress) -> v1::ServerAddress {
    v1::ServerAddress {
        address: address.address.clone(),
        prefix_length: u32::from(address.prefix_length),
        held_by_host_id: address.held_by_host_id.clone(),
        moves: address.moves.iter().map(address_move).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_one_unicast_ip() {
        assert!(parse_address("198.51.100.10").is_ok());
        assert_eq!(
            parse_address("::ffff:198.51.100.10").ok(),
            parse_address("198.51.100.10").ok()
        );
        for bad in [
            "198.51.100.10/24",
            "fe80::1",
            "127.0.0.1",
            "ff02::1",
            "host",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
