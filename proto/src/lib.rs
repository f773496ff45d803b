//! # navette-proto
//!
//! The contract between Navette's processes, and nothing else:
//!
//! - [`v1`]: the generated gRPC code for `proto/navette/v1/*.proto` (panel,
//!   operator and agent surfaces) and [`FILE_DESCRIPTOR_SET`] for reflection;
//! - [`identity`]: how a certificate says who its holder is (a role in a
//!   SPIFFE-style URI SAN, agents bound to one host id), and how to read it back
//!   from a peer certificate;
//! - [`tls`]: rustls configurations for mutual TLS, a listener whose
//!   certificate can be swapped without a restart, and a client connector;
//! - [`gate`]: the one tower layer that checks every RPC's caller against a
//!   policy before any handler runs;
//! - [`ids`]: the rules of the names both sides check (account names, host
//!   ids, transfer ids) and [`ids::FieldError`], the refusal of a field
//!   that breaks its rule.
//! - [`metrics_http`]: the plain-HTTP `/metrics` endpoint both daemons
//!   serve (what the metrics are is theirs).
//!
//! Invariant: this crate holds no policy of its own (which role may call
//! what is decided by the controller and the agent) and does no I/O beyond
//! sockets handed to it.

pub mod gate;
pub mod identity;
pub mod ids;
pub mod metrics_http;
pub mod tls;

/// Generated code for package `navette.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("navette.v1");
}

/// Encoded `FileDescriptorSet` of every Navette proto file, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/navette_descriptor.bin"));

/// Converts a `chrono` time to a protobuf timestamp.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp to `chrono`, `None` when out of range.
pub fn from_timestamp(at: &prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

/// Digest of an inventory's content, ignoring when it was collected. Agents
/// send it in heartbeats; the controller computes the same over the last
/// report it stored and asks for a new report when they differ. prost
/// encodes fields in declaration order, so equal content gives equal bytes.
pub fn inventory_digest(inventory: &v1::HostInventory) -> String {
    use prost::Message;
    let mut content = inventory.clone();
    content.collected_at = None;
    for account in &mut content.accounts {
        account.updated_at = None;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &content.encode_to_vec());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
