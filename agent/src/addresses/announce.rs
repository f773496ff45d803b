//! Telling the segment that an address moved here: a gratuitous ARP for
//! IPv4, an unsolicited neighbour advertisement for IPv6. The kernel sends
//! neither when an address is added (`arp_notify` and `ndisc_notify` act
//! only on link up or a MAC change), and without one the router keeps
//! sending to the old host until its neighbour entry expires: tens of
//! seconds.
//!
//! The frames are built by plain functions (unit-tested byte for byte);
//! the senders are a raw `AF_PACKET` socket for ARP and a raw ICMPv6 socket
//! for the advertisement (the kernel fills in its checksum), through nix
//! without `unsafe`: the link-layer address to send to comes from
//! `getifaddrs`, which gives each interface's `sockaddr_ll`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6, bind, sendto,
    setsockopt, socket, sockopt,
};

/// Why an announcement could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("interface {interface} has no link-layer (MAC) address to announce from")]
    NoLinkAddress { interface: String },
    #[error("cannot list the interfaces: {0}")]
    Interfaces(#[source] nix::Error),
    #[error("announcing {address} on {interface}: {source}")]
    Send {
        address: String,
        interface: String,
        #[source]
        source: nix::Error,
    },
}

/// An interface's link: its `sockaddr_ll` (index, MAC) for `sendto`.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    link: LinkAddr,
    mac: [u8; 6],
}

impl Link {
    /// The link of interface `name`.
    pub fn of(name: &str) -> Result<Link, AnnounceError> {
        let interfaces = nix::ifaddrs::getifaddrs().map_err(AnnounceError::Interfaces)?;
        for interface in interfaces {
            if interface.interface_name != name {
                continue;
            }
            if let Some(link) = interface.address.as_ref().and_then(|a| a.as_link_addr())
                && let Some(mac) = link.addr()
            {
                return Ok(Link { link: *link, mac });
            }
        }
        Err(AnnounceError::NoLinkAddress {
            interface: name.to_owned(),
        })
    }

    pub fn index(&self) -> u32 {
        u32::try_from(self.link.ifindex()).unwrap_or(0)
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// A gratuitous ARP: an Ethernet broadcast ARP request whose sender and
/// target protocol addresses are both `address` (what `arping -U` and
/// keepalived send). Receivers update an entry they already have for the
/// address, which is all a move needs.
pub fn gratuitous_arp(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]); // destination: broadcast
    frame.extend_from_slice(&mac); // source
    frame.extend_from_slice(&0x0806u16.to_be_bytes()); // EtherType ARP
    frame.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    frame.push(6); // hardware address length
    frame.push(4); // protocol address length
    frame.extend_from_slice(&1u16.to_be_bytes()); // operation: request
    frame.extend_from_slice(&mac); // sender hardware address
    frame.extend_from_slice(&address.octets()); // sender protocol address
    frame.extend_from_slice(&[0; 6]); // target hardware address: unknown
    frame.extend_from_slice(&address.octets()); // target protocol address
    frame
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) for `address`
/// with the Override flag and the target link-layer address option: the
/// ICMPv6 message, checksum left to the kernel.
pub fn unsolicited_advertisement(mac: [u8; 6], address: Ipv6Addr) -> Vec<u8> {
    let mut message = Vec::with_capacity(32);
    message.push(136); // type: neighbour advertisement
    message.push(0); // code
    message.extend_from_slice(&[0, 0]); // checksum: the kernel's
    message.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // R=0 S=0 O=1
    message.extend_from_slice(&address.octets()); // target address
    message.push(2); // option: target link-layer address
    message.push(1); // length, in units of 8 bytes
    message.extend_from_slice(&mac);
    message
}

/// Sends one gratuitous ARP for `address` on `link`.
pub fn send_gratuitous_arp(
    interface: &str,
    link: &Link,
    address: Ipv4Addr,
) -> Result<(), AnnounceError> {
    let failed = |source| AnnounceError::Send {
        address: address.to_string(),
        interface: interface.to_owned(),
        source,
    };
    // Protocol 0: a socket that sends and receives nothing.
    let socket = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(failed)?;
    let frame = gratuitous_arp(link.mac, address);
    sendto(socket.as_raw_fd(), &frame, &link.link, MsgFlags::empty()).map_err(failed)?;
    Ok(())
}

/// All-nodes multicast, where unsolicited advertisements go.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Sends one unsolicited neighbour advertisement for `address` on
/// `interface`, from `address` itself, with hop limit 255 (receivers drop
/// neighbour discovery with any other).
pub fn send_unsolicited_advertisement(
    interface: &str,
    link: &Link,
    address: Ipv6Addr,
) -> Result<(), AnnounceError> {
    let failed = |source| AnnounceError::Send {
        address: address.to_string(),
        interface: interface.to_owned(),
        source,
    };
    let socket = socket(
        AddressFamily::Inet6,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::IcmpV6,
    )
    .map_err(failed)?;
    setsockopt(&socket, sockopt::Ipv6MulticastHops, &255).map_err(failed)?;
    setsockopt(
        &socket,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )
    .map_err(failed)?;
    let source = SockaddrIn6::from(SocketAddrV6::new(address, 0, 0, link.index()));
    bind(socket.as_raw_fd(), &source).map_err(failed)?;
    let destination = SockaddrIn6::from(SocketAddrV6::new(ALL_NODES, 0, 0, link.index()));
    let message = unsolicited_advertisement(link.mac, address);
    sendto(
        socket.as_raw_fd(),
        &message,
        &destination,
        MsgFlags::empty(),
    )
    .map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let frame = gratuitous_arp(MAC, Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(frame.len(), 42);
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &MAC);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[20..22], &[0, 1], "a request");
        assert_eq!(&frame[22..28], &MAC);
        assert_eq!(&frame[28..32], &[198, 51, 100, 10]);
        assert_eq!(&frame[38..42], &[198, 51, 100, 10]);
    }

    #[test]
    fn an_unsolicited_advertisement_overrides_and_carries_the_mac() {
        let address: Ipv6Addr = "2001:db8:1::10".parse().expect("an address");
        let message = unsolicited_advertisement(MAC, address);
        assert_eq!(message.len(), 32);
        assert_eq!(message[0], 136);
        assert_eq!(message[4], 0x20, "Override set, Solicited and Router not");
        assert_eq!(&message[8..24], &address.octets());
        assert_eq!(&message[24..26], &[2, 1]);
        assert_eq!(&message[26..32], &MAC);
    }
}
