//! The controller's domain types: hosts, accounts, join tokens, pools.
//!
//! Plain data, no I/O and no protobuf: the `store` reads and writes them, the
//! `api` converts them to and from `navette.v1` messages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub type Time = DateTime<Utc>;

/// What a host is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKind {
    Shared,
    Dedicated,
    Vps,
    Transit,
    Test,
}

impl HostKind {
    pub const ALL: [HostKind; 5] = [
        HostKind::Shared,
        HostKind::Dedicated,
        HostKind::Vps,
        HostKind::Transit,
        HostKind::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::Shared => "shared",
            HostKind::Dedicated => "dedicated",
            HostKind::Vps => "vps",
            HostKind::Transit => "transit",
            HostKind::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<HostKind> {
        HostKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// How the controller sees a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    AwaitingEnrolment,
    Online,
    Unreachable,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::AwaitingEnrolment => "awaiting_enrolment",
            HostState::Online => "online",
            HostState::Unreachable => "unreachable",
        }
    }

    pub fn parse(text: &str) -> Option<HostState> {
        [
            HostState::AwaitingEnrolment,
            HostState::Online,
            HostState::Unreachable,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgresql,
    Mariadb,
}

/// A database server on a host, as its agent reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseServer {
    pub name: String,
    pub engine: Engine,
    pub version: String,
    pub address: String,
    pub port: u16,
    pub reachable: bool,
    #[serde(default)]
    pub error: String,
}

/// One database of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub engine: Engine,
    pub server: String,
    pub name: String,
    pub size_bytes: u64,
    pub owner: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub id: String,
    pub kind: Option<HostKind>,
    pub state: HostState,
    pub draining: bool,
    pub pool: Option<String>,
    pub stack_version: String,
    pub agent_version: String,
    pub agent_endpoint: String,
    pub addresses: Vec<String>,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub database_servers: Vec<DatabaseServer>,
    pub account_count: u32,
    pub enrolled_at: Option<Time>,
    pub last_heartbeat_at: Option<Time>,
    pub inventory_updated_at: Option<Time>,
    pub certificate_expires_at: Option<Time>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub name: String,
    pub host_id: String,
    pub home: String,
    pub uid: u32,
    pub home_size_bytes: u64,
    pub home_files: u64,
    pub databases: Vec<Database>,
    pub updated_at: Time,
}

/// What an agent reports about its host.
#[derive(Clone, Debug, PartialEq)]
pub struct Inventory {
    pub kind: HostKind,
    pub stack_version: String,
    pub agent_version: String,
    pub agent_endpoint: String,
    pub addresses: Vec<String>,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub database_servers: Vec<DatabaseServer>,
    pub accounts: Vec<Account>,
    /// `navette_proto::inventory_digest` of the report.
    pub digest: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JoinToken {
    pub id: String,
    pub host_id: String,
    pub pool: Option<String>,
    pub created_by: String,
    pub created_at: Time,
    pub expires_at: Time,
    pub used_at: Option<Time>,
    pub revoked_at: Option<Time>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostPool {
    pub name: String,
    pub description: String,
    pub created_at: Time,
}

/// A change to a host, as announced to watchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostChange {
    Enrolled,
    Online,
    Unreachable,
    Inventory,
    Draining,
    Undrained,
}

impl HostChange {
    pub fn as_str(self) -> &'static str {
        match self {
            HostChange::Enrolled => "enrolled",
            HostChange::Online => "online",
            HostChange::Unreachable => "unreachable",
            HostChange::Inventory => "inventory",
            HostChange::Draining => "draining",
            HostChange::Undrained => "undrained",
        }
    }

    pub fn parse(text: &str) -> Option<HostChange> {
        [
            HostChange::Enrolled,
            HostChange::Online,
            HostChange::Unreachable,
            HostChange::Inventory,
            HostChange::Draining,
            HostChange::Undrained,
        ]
        .into_iter()
        .find(|change| change.as_str() == text)
    }
}
