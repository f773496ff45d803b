//! What the controller asks agents to copy, and what they say of it: the
//! domain side of the agent API's transfers. Plain data; [`super::wire`]
//! converts it to and from `navette.v1`.

use std::collections::BTreeMap;

use crate::model::{CopyProgress, Engine, Time};

/// One transfer of one account, from a source host to a target host. The
/// same `transfer_id` always means the same transfer, so every call made
/// with it is safe to repeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferSpec {
    pub transfer_id: String,
    pub account: String,
    pub source_host_id: String,
    /// Where the target dials the source's agent (address:port).
    pub source_endpoint: String,
    pub target_host_id: String,
    /// The account's home on the source; empty: no files.
    pub source_home: String,
    /// Where the copy of the home goes on the target; empty: the target
    /// agent's own accounts directory.
    pub target_home: String,
    pub databases: Vec<DatabaseCopy>,
    /// The copy may be lost with the target host (a test copy): it need
    /// not be synced to disk.
    pub disposable: bool,
    /// The copy this transfer fills on the target, stable across
    /// generations (a test's id); what `RemoveCopy` removes.
    pub copy_id: String,
    /// The transfer protocol version both agents speak, chosen at
    /// placement (`crate::protocol`).
    pub protocol_version: u32,
    /// Until when the source lets the target read.
    pub grant_expires_at: Option<Time>,
    /// A migration's copy: source PostgreSQL database to the replication
    /// slot whose snapshot the copy reads (empty for a test).
    pub postgres_replication_slots: BTreeMap<String, String>,
    /// A migration's copy: the target reports each MariaDB database's
    /// snapshot GTID position ([`TransferReport::snapshot_positions`]).
    pub mariadb_snapshot_positions: bool,
    /// A migration's catch-up pass: the home only, the copy's databases
    /// left as replication keeps them.
    pub files_only: bool,
}

/// One database of a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseCopy {
    pub engine: Engine,
    /// Server names as configured on each agent.
    pub source_server: String,
    pub source_database: String,
    pub target_server: String,
    pub target_database: String,
}

/// Where a transfer stands, as the target agent says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferState {
    Running,
    Succeeded,
    Failed,
    /// A state this controller does not know (an agent newer than it), or
    /// none said.
    Unknown,
}

/// What the target agent reports of a transfer.
#[derive(Clone, Debug, PartialEq)]
pub struct TransferReport {
    pub state: TransferState,
    /// Why it failed, in words an operator can act on.
    pub error: String,
    /// Its counters, and what it waits for.
    pub progress: CopyProgress,
    /// Where each database's copy was read ("postgresql:shop" to the
    /// slot's consistent point, "mariadb:blog" to a GTID position), for
    /// replication to start there.
    pub snapshot_positions: BTreeMap<String, String>,
}

/// What a target agent did with the logins of a copy it removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyRemoval {
    /// Logins dropped from the target's servers.
    pub logins_dropped: Vec<String>,
    /// Logins the copy created but the removal kept, with why.
    pub logins_kept: Vec<String>,
}
