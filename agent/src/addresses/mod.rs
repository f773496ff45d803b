//! IP rerouting on this host (R7): "this address is held by this host", or
//! "it is not", as the controller asks (`Agent.EnsureAddress`).
//!
//! Owns: adding and removing an address on the host's interface through
//! netlink ([`netlink`]), and announcing an address the host takes
//! ([`announce`]). Must not decide *where* an address goes, nor talk to a
//! provider: that is the controller's `addresses` module. Each call is
//! idempotent: asking for the state the host is already in changes nothing
//! on the host (an address held is announced again, which only repeats what
//! the segment already knows), so the controller can retry a move that was
//! cut short. Every call carries the move's operation id, logged with what
//! was done and returned.
//!
//! Make-before-break: the controller asks the new host first; IPv6
//! addresses are added with `nodad`, since the old host still holds the
//! address for an instant and duplicate address detection would fail it.

pub mod announce;
pub mod netlink;

use std::net::IpAddr;
use std::time::Duration;

use crate::config::Config;
use announce::{AnnounceError, Link};
use netlink::{InterfaceAddress, NetlinkError};

/// Why an address could not be put in the state asked for.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("operation_id: {0}")]
    BadOperationId(String),
    #[error("address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error(
        "no interface for moved addresses: the agent listens on {listen}, which no interface holds; set [addresses] interface in the agent's configuration"
    )]
    NoInterface { listen: IpAddr },
    #[error("interface {interface}: {source}")]
    Interface {
        interface: String,
        #[source]
        source: nix::Error,
    },
    #[error("interface {interface}: {source}")]
    Netlink {
        interface: String,
        #[source]
        source: NetlinkError,
    },
    #[error(transparent)]
    Announce(#[from] AnnounceError),
}

/// One `EnsureAddress` call, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnsureRequest {
    pub operation_id: String,
    pub address: IpAddr,
    pub prefix_length: u8,
    pub held: bool,
    pub announce: bool,
}

impl EnsureRequest {
    /// Checks the fields of a call: an operation id of 1 to 64 letters,
    /// digits, `-` or `_`; a unicast address another host could hold; a
    /// prefix length that fits (0: the address alone).
    pub fn parse(
        operation_id: &str,
        address: &str,
        prefix_length: u32,
        held: bool,
        announce: bool,
    ) -> Result<EnsureRequest, AddressError> {
        let id_ok = !operation_id.is_empty()
            && operation_id.len() <= 64
            && operation_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(AddressError::BadOperationId(format!(
                "{} is not 1 to 64 letters, digits, '-' or '_'",
                navette_proto::ids::quote(operation_id)
            )));
        }
        let bad = |reason: &str| AddressError::BadAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed: IpAddr = address
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address (no prefix length here)"))?;
        let parsed = parsed.to_canonical();
        let link_local = matches!(parsed, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if parsed.is_loopback() || parsed.is_unspecified() || parsed.is_multicast() || link_local {
            return Err(bad(
                "loopback, unspecified, multicast and link-local addresses do not move",
            ));
        }
        let longest = if parsed.is_ipv4() { 32 } else { 128 };
        let prefix_length = match prefix_length {
            0 => longest,
            n if n <= u32::from(longest) => n as u8,
            n => {
                return Err(bad(&format!("prefix length {n} is longer than {longest}")));
            }
        };
        Ok(EnsureRequest {
            operation_id: operation_id.to_owned(),
            address: parsed,
            prefix_length,
            held,
            announce,
        })
    }
}

/// What a call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensured {
    /// False: the host already was as asked.
    pub changed: bool,
    pub interface: String,
    /// Sent before returning (the first of [`Repeats`]).
    pub announcements_sent: u32,
    /// The announcements still to send, if any.
    pub repeats: Option<Repeats>,
}

/// The rest of an announcement burst, sent by [`Repeats::send`] while the
/// address stays on the interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repeats {
    pub operation_id: String,
    pub interface: String,
    pub address: InterfaceAddress,
    pub index: u32,
    pub remaining: u32,
    pub interval: Duration,
}

impl Repeats {
    /// Sends the remaining announcements, `interval` apart, stopping as
    /// soon as the address left the interface (the next move took it
    /// away: announcing it from here would pull traffic back). Blocking.
    pub fn send(self) {
        for _ in 0..self.remaining {
            std::thread::sleep(self.interval);
            match netlink::addresses_on(self.index) {
                Ok(held) if held.iter().any(|a| a.address == self.address.address) => {}
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(message = "announcement stopped: cannot list addresses", operation_id = %self.operation_id, %error);
                    return;
                }
            }
            if let Err(error) = announce_once(&self.interface, self.address.address) {
                tracing::warn!(message = "announcement not sent", operation_id = %self.operation_id, error = %crate::error_chain(&error));
                return;
            }
        }
    }
}

/// Puts the host in the state `request` asks for. Blocking (netlink and
/// raw sockets): run it off the async workers.
pub fn ensure(config: &Config, request: &EnsureRequest) -> Result<Ensured, AddressError> {
    let interface = interface(config)?;
    let index = nix::net::if_::if_nametoindex(interface.as_str()).map_err(|source| {
        AddressError::Interface {
            interface: interface.clone(),
            source,
        }
    })?;
    let netlink_error = |source| AddressError::Netlink {
        interface: interface.clone(),
        source,
    };
    if !request.held && request.address == agent_address(config) {
        return Err(AddressError::BadAddress {
            address: request.address.to_string(),
            reason:
                "it is the agent's own address: removing it would cut the host off the controller"
                    .to_owned(),
        });
    }
    let present: Vec<InterfaceAddress> = netlink::addresses_on(index)
        .map_err(netlink_error)?
        .into_iter()
        .filter(|a| a.address == request.address)
        .collect();
    let wanted = InterfaceAddress {
        address: request.address,
        prefix_length: request.prefix_length,
    };
    if !request.held {
        let mut changed = false;
        for address in present {
            changed |= netlink::delete_address(index, address).map_err(netlink_error)?;
        }
        tracing::info!(message = "address not held", operation_id = %request.operation_id, address = %request.address, %interface, changed);
        return Ok(Ensured {
            changed,
            interface,
            announcements_sent: 0,
            repeats: None,
        });
    }
    let changed = !present.contains(&wanted);
    if changed {
        netlink::add_address(index, wanted).map_err(netlink_error)?;
        // The same address with another prefix length: the one asked for
        // replaces it.
        for other in present.into_iter().filter(|a| *a != wanted) {
            netlink::delete_address(index, other).map_err(netlink_error)?;
        }
    }
    let count = match (request.announce, config.testing.skip_address_announcements) {
        (true, false) => config.addresses.announce_count,
        _ => 0,
    };
    let mut announcements_sent = 0;
    if count > 0 {
        announce_once(&interface, request.address)?;
        announcements_sent = 1;
    }
    tracing::info!(message = "address held", operation_id = %request.operation_id, address = %request.address, %interface, changed, announcements = count);
    let repeats = (count > 1).then(|| Repeats {
        operation_id: request.operation_id.clone(),
        interface: interface.clone(),
        address: wanted,
        index,
        remaining: count - 1,
        interval: Duration::from_millis(config.addresses.announce_interval_ms),
    });
    Ok(Ensured {
        changed,
        interface,
        announcements_sent,
        repeats,
    })
}

fn announce_once(interface: &str, address: IpAddr) -> Result<(), AnnounceError> {
    let link = Link::of(interface)?;
    match address {
        IpAddr::V4(v4) => announce::send_gratuitous_arp(interface, &link, v4),
        IpAddr::V6(v6) => announce::send_unsolicited_advertisement(interface, &link, v6),
    }
}

/// The address the controller reaches this agent on.
fn agent_address(config: &Config) -> IpAddr {
    config
        .advertise
        .map(|a| a.ip())
        .unwrap_or(config.listen.ip())
        .to_canonical()
}

/// The interface moved addresses go on: the configured one, else the one
/// holding the agent's address.
fn interface(config: &Config) -> Result<String, AddressError> {
    if let Some(name) = &config.addresses.interface {
        return Ok(name.clone());
    }
    let listen = agent_address(config);
    let interfaces = nix::ifaddrs::getifaddrs().map_err(|source| AddressError::Interface {
        interface: "(all)".to_owned(),
        source,
    })?;
    for interface in interfaces {
        let address = interface.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        });
        if address.map(|a| a.to_canonical()) == Some(listen) {
            return Ok(interface.interface_name);
        }
    }
    Err(AddressError::NoInterface { listen })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_names_one_unicast_address_and_a_fitting_prefix() -> Result<(), AddressError> {
        let request = EnsureRequest::parse("op-1", "198.51.100.10", 0, true, true)?;
        assert_eq!(request.prefix_length, 32);
        let request = EnsureRequest::parse("op-1", "2001:db8:1::10", 64, true, false)?;
        assert_eq!(request.prefix_length, 64);
        for address in [
            "198.51.100.10/24",
            "127.0.0.1",
            "fe80::1",
            "ff02::1",
            "::",
            "x",
        ] {
            assert!(
                EnsureRequest::parse("op-1", address, 0, true, true).is_err(),
                "{address}"
            );
        }
        assert!(EnsureRequest::parse("op-1", "198.51.100.10", 33, true, true).is_err());
        assert!(EnsureRequest::parse("", "198.51.100.10", 0, true, true).is_err());
        assert!(EnsureRequest::parse("op 1", "198.51.100.10", 0, true, true).is_err());
        Ok(())
    }
}
