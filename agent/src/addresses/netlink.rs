//! The host's addresses through rtnetlink: list those on an interface, add
//! one (IPv6 with `nodad`), delete one. Synchronous, one socket per call,
//! in the network namespace the agent runs in; callers run it off the async
//! workers.
//!
//! `netlink-packet-route` builds and parses the messages and `netlink-sys`
//! is the socket: the same crates `rtnetlink` is made of, without its
//! async connection machinery, which three request/acknowledge exchanges do
//! not need.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the kernel refused to {what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unreadable netlink answer: {0}")]
    Decode(String),
}

/// An address on an interface, as the kernel lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub address: IpAddr,
    pub prefix_length: u8,
}

/// Every address on interface `index`.
pub fn addresses_on(index: u32) -> Result<Vec<InterfaceAddress>, NetlinkError> {
    let mut request = AddressMessage::default();
    request.header.index = index;
    let replies = exchange(
        RouteNetlinkMessage::GetAddress(request),
        NLM_F_REQUEST | NLM_F_DUMP,
        "list addresses",
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(message) if message.header.index == index => {
                let address = message
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        AddressAttribute::Local(address) => Some(*address),
                        _ => None,
                    });
                let address = address.or_else(|| {
                    message
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            AddressAttribute::Address(address) => Some(*address),
                            _ => None,
                        })
                })?;
                Some(InterfaceAddress {
                    address,
                    prefix_length: message.header.prefix_len,
                })
            }
            _ => None,
        })
        .collect())
}

/// Adds `address` to interface `index` (or leaves it as it is: the
/// request replaces an equal address). IPv6 addresses skip duplicate
/// address detection: a moved address is, by design, still on the old host
/// for an instant, and DAD would leave it `dadfailed` here.
pub fn add_address(index: u32, address: InterfaceAddress) -> Result<(), NetlinkError> {
    let message = address_message(index, address);
    exchange(
        RouteNetlinkMessage::NewAddress(message),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        &format!("add {}/{}", address.address, address.prefix_length),
    )
    .map(drop)
}

/// Deletes `address` from interface `index`; `false` when it was not
/// there.
pub fn delete_address(index: u32, address: InterfaceAddress) -> Result<bool, NetlinkError> {
    let message = address_message(index, address);
    match exchange(
        RouteNetlinkMessage::DelAddress(message),
        NLM_F_REQUEST | NLM_F_ACK,
        &format!("delete {}/{}", address.address, address.prefix_length),
    ) {
        Ok(_) => Ok(true),
        Err(NetlinkError::Refused { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc_errno::EADDRNOTAVAIL | libc_errno::ENOENT | libc_errno::ESRCH)
            ) =>
        {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// The errno values a delete of a missing address answers with.
mod libc_errno {
    pub const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
    pub const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;
    pub const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
}

fn address_message(index: u32, address: InterfaceAddress) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.index = index;
    message.header.prefix_len = address.prefix_length;
    message.header.family = match address.address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message
        .attributes
        .push(AddressAttribute::Address(address.address));
    message
        .attributes
        .push(AddressAttribute::Local(address.address));
    if address.address.is_ipv6() {
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    message
}

/// Sends one request and reads its answer: the acknowledgement, or every
/// part of a dump.
fn exchange(
    request: RouteNetlinkMessage,
    flags: u16,
    what: &str,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    let mut message = NetlinkMessage::from(request);
    message.header.flags = flags;
    message.header.sequence_number = 1;
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0).map_err(NetlinkError::Socket)?;

    let mut replies = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(NetlinkError::Socket)?;
        if data.is_empty() {
            return Err(NetlinkError::Decode("empty answer".to_owned()));
        }
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|error| NetlinkError::Decode(error.to_string()))?;
            let length = reply.header.length as usize;
            if length == 0 {
                return Err(NetlinkError::Decode("a message of length 0".to_owned()));
            }
            // Messages are aligned to 4 bytes.
            offset += (length + 3) & !3;
            let multipart = reply.header.flags & NLM_F_MULTIPART != 0;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        None => Ok(replies),
                        Some(code) => Err(NetlinkError::Refused {
                            what: what.to_owned(),
                            source: std::io::Error::from_raw_os_error(-code.get()),
                        }),
                    };
                }
                NetlinkPayload::InnerMessage(inner) => {
                    replies.push(inner);
                    if !multipart {
                        return Ok(replies);
                    }
                }
                _ => {}
            }
        }
    }
}
