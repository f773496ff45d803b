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
    /// An operator removed the host: its certificates are revoked; a new
    /// join token brings it back.
    Removed,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::AwaitingEnrolment => "awaiting_enrolment",
            HostState::Online => "online",
            HostState::Unreachable => "unreachable",
            HostState::Removed => "removed",
        }
    }

    pub fn parse(text: &str) -> Option<HostState> {
        [
            HostState::AwaitingEnrolment,
            HostState::Online,
            HostState::Unreachable,
            HostState::Removed,
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
    /// PostgreSQL: the extensions the server can create, sorted.
    #[serde(default)]
    pub available_extensions: Vec<String>,
    /// Free bytes of the filesystem of the server's data directory, where
    /// a copy's databases land; `None` when the agent did not measure it
    /// (an older agent, or a directory it cannot see).
    #[serde(default)]
    pub data_directory_free_bytes: Option<u64>,
    /// MariaDB: the storage engines the server can create tables with.
    #[serde(default)]
    pub available_engines: Vec<String>,
    /// Whether the server can be a migration's replication source
    /// (PostgreSQL `wal_level=logical` with slots and senders; MariaDB's
    /// binary log on, in ROW format, with a server id), as its agent last
    /// reported. False when not reported (an older inventory): *Migrate*
    /// refuses until the agent says it is ready.
    #[serde(default)]
    pub replication_ready: bool,
    /// Why it is not ready, and what an operator sets; empty when ready.
    #[serde(default)]
    pub replication_reason: String,
}

/// A MariaDB table and its storage engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEngine {
    pub table: String,
    pub engine: String,
}

/// One database of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub engine: Engine,
    pub server: String,
    pub name: String,
    pub size_bytes: u64,
    pub owner: String,
    /// PostgreSQL: the extensions created in it, sorted.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// PostgreSQL: the owner's roles (the owner and its direct members)
    /// whose stored password is an MD5 hash.
    #[serde(default)]
    pub md5_password_roles: Vec<String>,
    /// PostgreSQL: unlogged partitioned tables (`schema.table`).
    #[serde(default)]
    pub unlogged_partitioned_tables: Vec<String>,
    /// MariaDB: the base tables whose engine is not InnoDB.
    #[serde(default)]
    pub tables_not_innodb: Vec<TableEngine>,
    /// Whether the agent read the three fields above; when false they say
    /// nothing (an older agent, or a database it could not read).
    #[serde(default)]
    pub inspected: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub id: String,
    /// What the host is for, as an operator set it (join token or
    /// `Hosts/SetHostClass`); `None` until one does. Never the agent's word.
    pub kind: Option<HostKind>,
    /// What the agent last reported; shown as a warning when it differs.
    pub reported_kind: Option<HostKind>,
    /// The host's class: the disk size an operator declared, if any.
    /// Placement never counts more free space than this.
    pub declared_disk_bytes: Option<u64>,
    /// Serial (hex) of the one agent certificate of this host still
    /// accepted; every other is superseded or revoked.
    pub certificate_serial: Option<String>,
    /// Why and by whom the host was removed (state `Removed`).
    pub removed: Option<Removal>,
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
    /// Transfer protocol versions the agent reported speaking as a source
    /// and as a target (ascending); empty: not reported (see
    /// [`crate::placement::protocol_version`]).
    pub source_protocols: Vec<u32>,
    pub target_protocols: Vec<u32>,
    /// The host's web server runs, as its agent last reported: sites
    /// started there answer. A test host that serves none gets copies
    /// without their sites.
    pub serves_sites: bool,
}

/// An operator's removal of a host.
#[derive(Clone, Debug, PartialEq)]
pub struct Removal {
    pub at: Time,
    pub by: String,
    pub reason: String,
}

impl Host {
    /// Where the agent's report disagrees with what the operator declared,
    /// or cannot be true, in words an operator can act on. The operator's
    /// values are the ones used; these only say what looks wrong.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        match (self.kind, self.reported_kind) {
            (None, _) if self.state != HostState::AwaitingEnrolment => warnings.push(
                "no operator has set this host's kind, so it receives nothing; set it with Hosts/SetHostClass"
                    .to_owned(),
            ),
            (Some(kind), Some(reported)) if kind != reported => warnings.push(format!(
                "the agent reports kind {}, but the host was enrolled as {}; the operator's kind is used (check the agent's configuration, or correct the kind with Hosts/SetHostClass)",
                reported.as_str(),
                kind.as_str()
            )),
            _ => {}
        }
        if let Some(declared) = self.declared_disk_bytes
            && self.disk_total_bytes > declared
        {
            warnings.push(format!(
                "the agent reports a disk of {} bytes, more than the {} bytes declared for this host; placement counts at most the declared size",
                self.disk_total_bytes, declared
            ));
        }
        if self.disk_free_bytes > self.disk_total_bytes {
            warnings.push(format!(
                "the agent reports {} bytes free on a disk of {} bytes; placement counts at most the disk's size",
                self.disk_free_bytes, self.disk_total_bytes
            ));
        }
        warnings
    }
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
    /// Set when this is not the account but a copy of it made by a test
    /// (the test's id): copies are never taken for accounts.
    pub copy_of_test: Option<String>,
    /// The account's sites, as its host's site definitions list them
    /// (checked by the agent that reported them).
    pub sites: Vec<Site>,
}

/// A site of an account: what a test starts on the test host
/// (`agents::sites`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Host names, the main one first.
    pub domains: Vec<String>,
    /// Relative to the account's home.
    pub document_root: String,
    /// `php` or `static`.
    pub runtime: String,
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
    /// Transfer protocol versions the agent speaks as a source and as a
    /// target.
    pub source_protocols: Vec<u32>,
    pub target_protocols: Vec<u32>,
    /// The host's web server runs.
    pub web_server_running: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JoinToken {
    pub id: String,
    pub host_id: String,
    pub pool: Option<String>,
    /// What the host becomes (the operator's choice, not the agent's).
    pub kind: Option<HostKind>,
    /// The host's class: its declared disk size.
    pub declared_disk_bytes: Option<u64>,
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
    /// A new certificate was issued (renewal): the previous one is
    /// superseded.
    Certificate,
    /// An operator changed the host's kind, pool or class.
    Reclassified,
    /// An operator removed the host and revoked its certificates.
    Removed,
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
            HostChange::Certificate => "certificate",
            HostChange::Reclassified => "reclassified",
            HostChange::Removed => "removed",
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
            HostChange::Certificate,
            HostChange::Reclassified,
            HostChange::Removed,
        ]
        .into_iter()
        .find(|change| change.as_str() == text)
    }
}

/// Where a test stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestState {
    Placing,
    Copying,
    Ready,
    Refreshing,
    Failed,
    Deleting,
    Deleted,
}

impl TestState {
    pub const ALL: [TestState; 7] = [
        TestState::Placing,
        TestState::Copying,
        TestState::Ready,
        TestState::Refreshing,
        TestState::Failed,
        TestState::Deleting,
        TestState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestState::Placing => "placing",
            TestState::Copying => "copying",
            TestState::Ready => "ready",
            TestState::Refreshing => "refreshing",
            TestState::Failed => "failed",
            TestState::Deleting => "deleting",
            TestState::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<TestState> {
        TestState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What a test's workflow runs next (serialised as [`TestStep::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestStep {
    /// Grant the source's data to the test host for this generation.
    Grant,
    /// Have the test host pull it, and follow the copy to its end.
    Copy,
    /// Run the account's sites on the test host from the copy, with the
    /// copy's databases: those of the plan started, any others stopped.
    Sites,
    /// Remove the copy from the test host.
    Remove,
    /// Nothing: the test is ready, failed or deleted.
    None,
}

impl TestStep {
    pub fn as_str(self) -> &'static str {
        match self {
            TestStep::Grant => "grant",
            TestStep::Copy => "copy",
            TestStep::Sites => "sites",
            TestStep::Remove => "remove",
            TestStep::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<TestStep> {
        [
            TestStep::Grant,
            TestStep::Copy,
            TestStep::Sites,
            TestStep::Remove,
            TestStep::None,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One database of a copy plan: where it is, where its copy goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabasePlan {
    pub engine: Engine,
    pub name: String,
    pub owner: String,
    pub source_server: String,
    pub target_server: String,
    /// Where customers reach the copy.
    pub target_address: String,
    pub target_port: u16,
    pub target_version: String,
}

/// What a test copies, from where to where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyPlan {
    pub source_endpoint: String,
    pub target_endpoint: String,
    /// The account's home on the source.
    pub source_home: String,
    pub databases: Vec<DatabasePlan>,
    /// Main address of the test host.
    pub target_address: String,
    /// The transfer protocol version placement chose for the source and
    /// the test host (the highest both speak); 0 in plans stored before
    /// versions were chosen (agents take it as 2).
    #[serde(default)]
    pub protocol_version: u32,
    /// The test host runs sites (its web server is up, as its agent
    /// reported when the test was placed): the test's `sites` step makes
    /// it run exactly [`CopyPlan::sites`]. False in plans from before
    /// sites: such a test has no sites step.
    #[serde(default)]
    pub runs_sites: bool,
    /// The account's sites, as its source's inventory listed them when
    /// planned (a refresh plans them again): what the test runs from the
    /// copy when [`CopyPlan::runs_sites`].
    #[serde(default)]
    pub sites: Vec<Site>,
}

/// Counters of the last copy, as the target agent reported them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    pub phase: String,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub bytes_sent: u64,
    pub files_total: u64,
    pub files_done: u64,
    pub files_unchanged: u64,
    pub tables_total: u64,
    pub tables_done: u64,
    pub bytes_per_second: u64,
    pub eta_seconds: u32,
    /// Where the copy of the home is on the target.
    #[serde(default)]
    pub target_home: String,
    /// What the copy waits for while its source is unreachable, as the
    /// target agent last said; `None` while the copy is not waiting.
    #[serde(default)]
    pub waiting: Option<CopyWaiting>,
}

/// A copy waiting out an outage: the target agent retries reaching `what`
/// from `since` until `until`, then the copy fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyWaiting {
    /// What it cannot reach, in words ("source PostgreSQL server main,
    /// database shop").
    pub what: String,
    /// The last failure, in words.
    pub error: String,
    #[serde(with = "rfc3339")]
    pub since: Time,
    #[serde(default, with = "rfc3339::option")]
    pub until: Option<Time>,
}

/// A host a test cannot reach, as `WatchTest` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostOutage {
    pub host_id: String,
    /// Since when it has not been reached.
    pub since: Time,
    /// Until when it is retried before the test fails; `None`: for as long
    /// as it takes.
    pub retried_until: Option<Time>,
    /// The last reason.
    pub error: String,
}

/// Times in stored JSON (chrono is built without serde here).
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Time;

    pub fn serialize<S: Serializer>(at: &Time, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Time, D::Error> {
        let text = String::deserialize(deserializer)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&chrono::Utc))
            .map_err(serde::de::Error::custom)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::super::Time;

        pub fn serialize<S: Serializer>(
            at: &Option<Time>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => serializer.serialize_some(&at.to_rfc3339()),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Time>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| {
                    chrono::DateTime::parse_from_rfc3339(&text)
                        .map(|at| at.with_timezone(&chrono::Utc))
                        .map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }

    /// A host and a time (`Test::outage`), as `[host, time]`.
    pub mod host_since {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        use super::super::Time;

        pub fn serialize<S: Serializer>(
            outage: &Option<(String, Time)>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            outage
                .as_ref()
                .map(|(host, since)| (host, since.to_rfc3339()))
                .serialize(serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<(String, Time)>, D::Error> {
            Option::<(String, String)>::deserialize(deserializer)?
                .map(|(host, text)| {
                    chrono::DateTime::parse_from_rfc3339(&text)
                        .map(|at| (host, at.with_timezone(&chrono::Utc)))
                        .map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }
}

/// A test run, as the panel sees it (the `tests` row) and as its
/// workflow remembers it (`workflows.state`, serialised).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Test {
    pub id: String,
    pub account: String,
    pub migration_id: String,
    pub source_host_id: String,
    pub test_host_id: String,
    pub state: TestState,
    pub step: TestStep,
    pub generation: u32,
    pub plan: CopyPlan,
    pub progress: Option<CopyProgress>,
    pub error: String,
    pub ttl_seconds: u64,
    #[serde(with = "rfc3339")]
    pub created_at: Time,
    #[serde(with = "rfc3339")]
    pub updated_at: Time,
    #[serde(default, with = "rfc3339::option")]
    pub ready_at: Option<Time>,
    #[serde(default, with = "rfc3339::option")]
    pub expires_at: Option<Time>,
    pub attempts: u32,
    /// The host the current step cannot reach, and since when; `None`
    /// once the step gets through.
    #[serde(default, with = "rfc3339::host_since")]
    pub outage: Option<(String, Time)>,
}

impl Test {
    /// The transfer id of the current copy: one per generation, so a
    /// refresh is a new transfer into the same target.
    pub fn transfer_id(&self) -> String {
        format!("{}-g{}", self.id, self.generation)
    }
}
