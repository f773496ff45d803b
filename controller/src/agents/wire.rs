//! Conversions between the agent API (`navette.v1` transfer and inventory
//! messages) and the controller's domain types: the one place outside
//! `api` that knows protobuf. The panel's `Test.progress` is the same
//! `TransferProgress` message, and the gateway receives the same
//! `HostInventory` an inventory call returns, so `api` converts them here
//! too: each message is converted in one place.

use navette_proto::v1;
use navette_proto::{from_timestamp, timestamp};

use super::transfer::{CopyRemoval, DatabaseCopy, TransferReport, TransferSpec, TransferState};
use crate::error::{Error, Result};
use crate::ids;
use crate::model::{
    Account, CopyProgress, CopyWaiting, Database, DatabaseServer, Engine, HostKind, Inventory,
    Site, TableEngine, Time,
};

pub fn transfer_spec(spec: &TransferSpec) -> v1::TransferSpec {
    let copies = |engine: Engine| {
        spec.databases
            .iter()
            .filter(|d| d.engine == engine)
            .map(database_copy)
            .collect()
    };
    v1::TransferSpec {
        transfer_id: spec.transfer_id.clone(),
        account: spec.account.clone(),
        source_host_id: spec.source_host_id.clone(),
        source_endpoint: spec.source_endpoint.clone(),
        target_host_id: spec.target_host_id.clone(),
        source_home: spec.source_home.clone(),
        target_home: spec.target_home.clone(),
        postgresql: copies(Engine::Postgresql),
        mariadb: copies(Engine::Mariadb),
        disposable: spec.disposable,
        copy_id: spec.copy_id.clone(),
        protocol_version: spec.protocol_version,
        grant_expires_at: spec.grant_expires_at.map(timestamp),
        postgres_replication_slots: spec
            .postgres_replication_slots
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mariadb_snapshot_positions: spec.mariadb_snapshot_positions,
        files_only: spec.files_only,
    }
}

fn database_copy(copy: &DatabaseCopy) -> v1::DatabaseCopy {
    v1::DatabaseCopy {
        source_server: copy.source_server.clone(),
        source_database: copy.source_database.clone(),
        target_server: copy.target_server.clone(),
        target_database: copy.target_database.clone(),
    }
}

pub fn transfer_state(state: i32) -> TransferState {
    match v1::TransferState::try_from(state) {
        Ok(v1::TransferState::Running) => TransferState::Running,
        Ok(v1::TransferState::Succeeded) => TransferState::Succeeded,
        Ok(v1::TransferState::Failed) => TransferState::Failed,
        Ok(v1::TransferState::Unspecified) | Err(_) => TransferState::Unknown,
    }
}

fn transfer_state_to(state: TransferState) -> v1::TransferState {
    match state {
        TransferState::Running => v1::TransferState::Running,
        TransferState::Succeeded => v1::TransferState::Succeeded,
        TransferState::Failed => v1::TransferState::Failed,
        TransferState::Unknown => v1::TransferState::Unspecified,
    }
}

/// A target agent's word on a transfer.
pub fn transfer_report(report: &v1::TransferProgress) -> TransferReport {
    TransferReport {
        state: transfer_state(report.state),
        error: report.error.clone(),
        progress: copy_progress(report),
        snapshot_positions: report
            .snapshot_positions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The counters a target agent reported, and what its copy waits for.
pub fn copy_progress(report: &v1::TransferProgress) -> CopyProgress {
    CopyProgress {
        phase: report.phase.clone(),
        bytes_total: report.bytes_total,
        bytes_done: report.bytes_done,
        bytes_sent: report.bytes_sent,
        files_total: report.files_total,
        files_done: report.files_done,
        files_unchanged: report.files_unchanged,
        tables_total: report.tables_total,
        tables_done: report.tables_done,
        bytes_per_second: report.bytes_per_second,
        eta_seconds: report.eta_seconds,
        target_home: report.target_home.clone(),
        waiting: report.waiting.as_ref().map(|waiting| CopyWaiting {
            what: waiting.what.clone(),
            error: waiting.error.clone(),
            // An agent that does not say since when: since it said so.
            since: waiting
                .since
                .as_ref()
                .and_then(from_timestamp)
                .unwrap_or_else(chrono::Utc::now),
            until: waiting.until.as_ref().and_then(from_timestamp),
        }),
    }
}

/// A transfer's progress as the message says it, for the panel: `state`
/// and the stored counters of `transfer_id`, as of `updated_at`. What the
/// copy waits for is shown only while it runs.
pub fn transfer_progress(
    transfer_id: String,
    state: TransferState,
    progress: &CopyProgress,
    updated_at: Time,
) -> v1::TransferProgress {
    v1::TransferProgress {
        transfer_id,
        state: transfer_state_to(state).into(),
        phase: progress.phase.clone(),
        bytes_total: progress.bytes_total,
        bytes_done: progress.bytes_done,
        files_total: progress.files_total,
        files_done: progress.files_done,
        tables_total: progress.tables_total,
        tables_done: progress.tables_done,
        bytes_sent: progress.bytes_sent,
        files_unchanged: progress.files_unchanged,
        bytes_per_second: progress.bytes_per_second,
        eta_seconds: progress.eta_seconds,
        error: String::new(),
        updated_at: Some(timestamp(updated_at)),
        target_home: progress.target_home.clone(),
        waiting: progress
            .waiting
            .as_ref()
            .filter(|_| state == TransferState::Running)
            .map(|waiting| v1::TransferWaiting {
                what: waiting.what.clone(),
                error: waiting.error.clone(),
                since: Some(timestamp(waiting.since)),
                until: waiting.until.map(timestamp),
            }),
        snapshot_positions: Default::default(),
    }
}

pub fn copy_removal(response: v1::RemoveCopyResponse) -> CopyRemoval {
    CopyRemoval {
        logins_dropped: response.logins_dropped,
        logins_kept: response.logins_kept,
    }
}

/// `None` for UNSPECIFIED (no filter, or missing).
pub fn host_kind_from(kind: i32) -> Result<Option<HostKind>> {
    match v1::HostKind::try_from(kind) {
        Ok(v1::HostKind::Unspecified) => Ok(None),
        Ok(v1::HostKind::Shared) => Ok(Some(HostKind::Shared)),
        Ok(v1::HostKind::Dedicated) => Ok(Some(HostKind::Dedicated)),
        Ok(v1::HostKind::Vps) => Ok(Some(HostKind::Vps)),
        Ok(v1::HostKind::Transit) => Ok(Some(HostKind::Transit)),
        Ok(v1::HostKind::Test) => Ok(Some(HostKind::Test)),
        Err(_) => Err(Error::InvalidArgument(format!(
            "kind: {kind} is not a host kind (HOST_KIND_SHARED, HOST_KIND_DEDICATED, HOST_KIND_VPS, HOST_KIND_TRANSIT or HOST_KIND_TEST)"
        ))),
    }
}

fn engine_from(value: i32, what: &str) -> Result<Engine> {
    match v1::DatabaseEngine::try_from(value) {
        Ok(v1::DatabaseEngine::Postgresql) => Ok(Engine::Postgresql),
        Ok(v1::DatabaseEngine::Mariadb) => Ok(Engine::Mariadb),
        _ => Err(Error::InvalidArgument(format!(
            "{what}: database engine {value} is not known"
        ))),
    }
}

/// The most protocol versions kept from one report.
const MAX_PROTOCOLS: usize = 32;

/// Protocol versions an agent reported: ascending, once each, at most
/// [`MAX_PROTOCOLS`] (an agent's report is a claim, and a long list is no
/// set of versions anyone speaks).
fn reported_protocols(versions: &[u32]) -> Vec<u32> {
    let mut versions = versions.to_vec();
    versions.sort_unstable();
    versions.dedup();
    versions.truncate(MAX_PROTOCOLS);
    versions
}

/// The most bytes of one string of an agent's inventory (a version, a
/// home, a database's name, an error it met).
const MAX_REPORTED_BYTES: usize = 4096;

/// The most items of one list of an agent's report on a database or a
/// server (roles, tables, engines): the agent reports at most 1000.
const MAX_REPORTED_ITEMS: usize = 1000;

fn too_many(field: &str) -> Error {
    Error::InvalidArgument(format!(
        "inventory: {field} lists more than {MAX_REPORTED_ITEMS} items"
    ))
}

/// Every string of an agent's report keeps its rule: account names are
/// account names, the rest is short text without control characters.
/// Agents, and old hosts above all, are not trusted to send clean text.
fn check_inventory(report: &v1::HostInventory) -> Result<()> {
    let text = |field: &str, value: &str| ids::reported(field, value, MAX_REPORTED_BYTES);
    text("stack_version", &report.stack_version)?;
    text("agent_version", &report.agent_version)?;
    ids::agent_endpoint("agent_endpoint", &report.agent_endpoint)?;
    for address in &report.addresses {
        text("addresses", address)?;
    }
    for server in &report.database_servers {
        text("database_servers.name", &server.name)?;
        text("database_servers.version", &server.version)?;
        text("database_servers.address", &server.address)?;
        text("database_servers.error", &server.error)?;
        for extension in &server.available_extensions {
            text("database_servers.available_extensions", extension)?;
        }
        if server.available_engines.len() > MAX_REPORTED_ITEMS {
            return Err(too_many("database_servers.available_engines"));
        }
        for engine in &server.available_engines {
            text("database_servers.available_engines", engine)?;
        }
    }
    for account in &report.accounts {
        ids::AccountName::parse("accounts.name", &account.name)?;
        text("accounts.home", &account.home)?;
        text("accounts.copy_of_test", &account.copy_of_test)?;
        for database in &account.databases {
            text("accounts.databases.server", &database.server)?;
            text("accounts.databases.name", &database.name)?;
            text("accounts.databases.owner", &database.owner)?;
            for extension in &database.extensions {
                text("accounts.databases.extensions", extension)?;
            }
            for (field, items) in [
                ("md5_password_roles", &database.md5_password_roles),
                (
                    "unlogged_partitioned_tables",
                    &database.unlogged_partitioned_tables,
                ),
            ] {
                if items.len() > MAX_REPORTED_ITEMS {
                    return Err(too_many(&format!("accounts.databases.{field}")));
                }
                for item in items {
                    text(&format!("accounts.databases.{field}"), item)?;
                }
            }
            if database.tables_not_innodb.len() > MAX_REPORTED_ITEMS {
                return Err(too_many("accounts.databases.tables_not_innodb"));
            }
            for table in &database.tables_not_innodb {
                text("accounts.databases.tables_not_innodb.table", &table.table)?;
                text("accounts.databases.tables_not_innodb.engine", &table.engine)?;
            }
        }
    }
    Ok(())
}

/// An agent's report, checked.
/// Whether an inventory's server can be a replication source: PostgreSQL's
/// own flag, MariaDB's row binlog readiness (unread: not ready).
fn replication_ready(server: &v1::DatabaseServer) -> bool {
    match v1::DatabaseEngine::try_from(server.engine) {
        Ok(v1::DatabaseEngine::Postgresql) => server.logical_replication_ready,
        Ok(v1::DatabaseEngine::Mariadb) => server.row_binlog.as_ref().is_some_and(|r| r.ready),
        _ => false,
    }
}

fn replication_reason(server: &v1::DatabaseServer) -> String {
    if replication_ready(server) {
        return String::new();
    }
    let reason = match v1::DatabaseEngine::try_from(server.engine) {
        Ok(v1::DatabaseEngine::Postgresql) => server.logical_replication_reason.clone(),
        Ok(v1::DatabaseEngine::Mariadb) => server
            .row_binlog
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    if reason.is_empty() {
        "its agent did not report whether it can be a replication source".to_owned()
    } else {
        reason
    }
}

pub fn inventory_from(report: &v1::HostInventory) -> Result<Inventory> {
    check_inventory(report)?;
    let kind = host_kind_from(report.kind)?.ok_or_else(|| {
        Error::InvalidArgument(
            "inventory: host kind is missing; set `kind` in the agent's configuration".to_owned(),
        )
    })?;
    let database_servers = report
        .database_servers
        .iter()
        .map(|s| {
            Ok(DatabaseServer {
                name: s.name.clone(),
                engine: engine_from(s.engine, &format!("database server {:?}", s.name))?,
                version: s.version.clone(),
                address: s.address.clone(),
                port: u16::try_from(s.port).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "database server {:?}: port {} is out of range",
                        s.name, s.port
                    ))
                })?,
                reachable: s.reachable,
                error: s.error.clone(),
                available_extensions: s.available_extensions.clone(),
                data_directory_free_bytes: s.data_directory_free_bytes,
                available_engines: s.available_engines.clone(),
                replication_ready: replication_ready(s),
                replication_reason: replication_reason(s),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let now = chrono::Utc::now();
    let accounts = report
        .accounts
        .iter()
        .map(|a| {
            Ok(Account {
                name: a.name.clone(),
                host_id: report.host_id.clone(),
                home: a.home.clone(),
                uid: a.uid,
                home_size_bytes: a.home_size_bytes,
                home_files: a.home_files,
                copy_of_test: (!a.copy_of_test.is_empty()).then(|| a.copy_of_test.clone()),
                sites: a.sites.iter().map(site_from).collect(),
                databases: a
                    .databases
                    .iter()
                    .map(|d| {
                        Ok(Database {
                            engine: engine_from(d.engine, &format!("database {:?}", d.name))?,
                            server: d.server.clone(),
                            name: d.name.clone(),
                            size_bytes: d.size_bytes,
                            owner: d.owner.clone(),
                            extensions: d.extensions.clone(),
                            md5_password_roles: d.md5_password_roles.clone(),
                            unlogged_partitioned_tables: d.unlogged_partitioned_tables.clone(),
                            tables_not_innodb: d
                                .tables_not_innodb
                                .iter()
                                .map(|t| TableEngine {
                                    table: t.table.clone(),
                                    engine: t.engine.clone(),
                                })
                                .collect(),
                            inspected: d.inspected,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
                updated_at: a
                    .updated_at
                    .as_ref()
                    .and_then(from_timestamp)
                    .unwrap_or(now),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Inventory {
        kind,
        stack_version: report.stack_version.clone(),
        agent_version: report.agent_version.clone(),
        agent_endpoint: report.agent_endpoint.clone(),
        addresses: report.addresses.clone(),
        disk_total_bytes: report.disk_total_bytes,
        disk_free_bytes: report.disk_free_bytes,
        database_servers,
        accounts,
        digest: navette_proto::inventory_digest(report),
        source_protocols: reported_protocols(&report.source_protocols),
        target_protocols: reported_protocols(&report.target_protocols),
        web_server_running: report.web_server_running,
    })
}

/// A site as the agent API carries it. The agent checked it against its
/// host's rules; the agent that runs it checks it again.
pub fn site_from(site: &v1::Site) -> Site {
    Site {
        domains: site.domains.clone(),
        document_root: site.document_root.clone(),
        runtime: site.runtime.clone(),
    }
}

/// A site for the agent API.
pub fn site_to(site: &Site) -> v1::Site {
    v1::Site {
        domains: site.domains.clone(),
        document_root: site.document_root.clone(),
        runtime: site.runtime.clone(),
    }
}

/// `StartSites` for `spec`.
pub fn start_sites_request(spec: &super::sites::SitesSpec) -> v1::StartSitesRequest {
    v1::StartSitesRequest {
        account: spec.account.clone(),
        copy_id: spec.copy_id.clone().unwrap_or_default(),
        sites: spec.sites.iter().map(site_to).collect(),
        databases: spec.databases.as_ref().map(|databases| {
            let (postgres_host, postgres_port) = databases.postgres.clone().unwrap_or_default();
            let (mariadb_host, mariadb_port, mariadb_socket) =
                databases.mariadb.clone().unwrap_or_default();
            v1::SiteDatabaseEndpoints {
                postgres_host,
                postgres_port: u32::from(postgres_port),
                mariadb_host,
                mariadb_port: u32::from(mariadb_port),
                mariadb_socket,
            }
        }),
    }
}

/// What `StartSites` answered.
pub fn started_sites(response: &v1::StartSitesResponse) -> super::sites::StartedSites {
    super::sites::StartedSites {
        sites: response.sites.iter().map(site_from).collect(),
        already_running: response.already_running,
    }
}

/// The cutover's databases, (server, database), as the agent API lists
/// them.
pub fn cutover_databases(databases: &[(String, String)]) -> Vec<v1::CutoverDatabase> {
    databases
        .iter()
        .map(|(server, database)| v1::CutoverDatabase {
            server: server.clone(),
            database: database.clone(),
        })
        .collect()
}

/// A fence's answer.
pub fn fence_positions(response: v1::FenceDatabasesResponse) -> super::cutover::FencePositions {
    super::cutover::FencePositions {
        postgres: response
            .postgres
            .into_iter()
            .map(|p| (p.server, p.lsn))
            .collect(),
        mariadb: response
            .mariadb
            .into_iter()
            .map(|p| (p.server, p.gtid_position))
            .collect(),
        took: std::time::Duration::from_micros(response.took_us),
    }
}

/// A change journal's status.
pub fn journal_status(status: v1::ChangeJournalStatus) -> super::cutover::JournalStatus {
    super::cutover::JournalStatus {
        epoch: status.epoch,
        missing: status.journal_missing,
        pending_paths: status.pending_paths,
        untrusted: status.untrusted,
    }
}

/// A catch-up pass's answer. An unknown mode counts as a pass that
/// changed nothing and needs a full comparison: never one to trust.
pub fn catch_up(response: v1::CatchUpFilesResponse) -> super::cutover::CatchUp {
    use super::cutover::CatchUpMode;
    let mode = match v1::CatchUpMode::try_from(response.mode) {
        Ok(v1::CatchUpMode::Journal) => CatchUpMode::Journal,
        Ok(v1::CatchUpMode::FullComparison) => CatchUpMode::FullComparison,
        _ => CatchUpMode::FullComparisonNeeded,
    };
    super::cutover::CatchUp {
        mode,
        untrusted: response.untrusted,
        journal_missing: response.journal_missing,
        mark: super::cutover::JournalMark {
            epoch: response.journal_epoch,
            applied_sequence: response.applied_sequence,
        },
        entries_compared: response.entries_compared,
        files_sent: response.files_sent,
        elapsed: std::time::Duration::from_millis(response.elapsed_ms),
        changed_paths: response.changed_paths,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inventorys_sites_reach_the_account_and_go_back_to_an_agent_unchanged() {
        let site = v1::Site {
            domains: vec!["alice.example".into(), "www.alice.example".into()],
            document_root: "www".into(),
            runtime: "php".into(),
        };
        let report = v1::HostInventory {
            host_id: "shared-1".into(),
            kind: v1::HostKind::Shared.into(),
            accounts: vec![v1::Account {
                name: "alice".into(),
                sites: vec![site.clone()],
                ..v1::Account::default()
            }],
            ..v1::HostInventory::default()
        };
        let inventory = inventory_from(&report).expect("a valid inventory");
        let sites = &inventory.accounts[0].sites;
        assert_eq!(sites[0].domains, site.domains);
        let spec = super::super::sites::SitesSpec {
            account: "alice".into(),
            copy_id: Some("t-1".into()),
            sites: sites.clone(),
            databases: Some(super::super::sites::SiteDatabases {
                postgres: Some(("192.0.2.30".into(), 5432)),
                mariadb: Some(("192.0.2.30".into(), 3306, String::new())),
            }),
        };
        let request = start_sites_request(&spec);
        assert_eq!(request.sites, [site]);
        assert_eq!(request.copy_id, "t-1");
        let databases = request.databases.expect("endpoints");
        assert_eq!(
            (databases.postgres_host.as_str(), databases.postgres_port),
            ("192.0.2.30", 5432)
        );
        assert_eq!(databases.mariadb_port, 3306);
    }

    #[test]
    fn what_a_copy_waits_for_is_kept_with_its_progress() {
        let since = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("a time");
        let until = since + chrono::Duration::seconds(120);
        let report = v1::TransferProgress {
            state: v1::TransferState::Running.into(),
            tables_done: 2,
            waiting: Some(v1::TransferWaiting {
                what: "source PostgreSQL server main, database shop".into(),
                error: "connection refused".into(),
                since: Some(timestamp(since)),
                until: Some(timestamp(until)),
            }),
            ..v1::TransferProgress::default()
        };
        let read = transfer_report(&report);
        assert_eq!(read.state, TransferState::Running);
        let progress = read.progress;
        assert_eq!(
            progress.waiting,
            Some(CopyWaiting {
                what: "source PostgreSQL server main, database shop".into(),
                error: "connection refused".into(),
                since,
                until: Some(until),
            })
        );
        // Shown to the panel as it came, while the copy runs.
        let shown = transfer_progress("t1-g1".into(), TransferState::Running, &progress, since);
        assert_eq!(shown.waiting, report.waiting);
        assert_eq!(shown.tables_done, 2);
        let done = transfer_progress("t1-g1".into(), TransferState::Succeeded, &progress, since);
        assert_eq!(done.waiting, None, "a copy that ended waits for nothing");
        // Stored as JSON in the test's row, and read back the same.
        let stored = serde_json::to_value(&progress).expect("progress to JSON");
        let read: CopyProgress = serde_json::from_value(stored).expect("progress from JSON");
        assert_eq!(read, progress);
        // Progress stored before copies said what they wait for reads as
        // not waiting.
        let older: CopyProgress =
            serde_json::from_value(serde_json::json!({"phase": "tables", "bytes_total": 1,
                "bytes_done": 0, "bytes_sent": 0, "files_total": 0, "files_done": 0,
                "files_unchanged": 0, "tables_total": 1, "tables_done": 0,
                "bytes_per_second": 0, "eta_seconds": 0}))
            .expect("older progress");
        assert_eq!(older.waiting, None);
        let through = copy_progress(&v1::TransferProgress {
            tables_done: 3,
            ..v1::TransferProgress::default()
        });
        assert_eq!(
            through.waiting, None,
            "a progress without waiting clears it"
        );
        // A state this controller does not know is not taken for an end.
        assert_eq!(transfer_state(99), TransferState::Unknown);
    }

    #[test]
    fn a_spec_splits_its_databases_by_engine() {
        let copy = |engine, name: &str| DatabaseCopy {
            engine,
            source_server: "main".into(),
            source_database: name.into(),
            target_server: "pg18".into(),
            target_database: name.into(),
        };
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("a time");
        let spec = TransferSpec {
            transfer_id: "t1-g2".into(),
            account: "alice".into(),
            source_host_id: "shared-old".into(),
            source_endpoint: "10.0.0.1:7443".into(),
            target_host_id: "test-1".into(),
            source_home: "/home/alice".into(),
            target_home: String::new(),
            databases: vec![
                copy(Engine::Postgresql, "shop"),
                copy(Engine::Mariadb, "blog"),
            ],
            disposable: true,
            copy_id: "t1".into(),
            protocol_version: 1,
            grant_expires_at: Some(at),
            postgres_replication_slots: Default::default(),
            mariadb_snapshot_positions: false,
            files_only: false,
        };
        let message = transfer_spec(&spec);
        assert_eq!(
            (
                message.postgresql.len(),
                message.mariadb.len(),
                message.postgresql[0].source_database.as_str(),
                message.mariadb[0].target_database.as_str()
            ),
            (1, 1, "shop", "blog")
        );
        assert_eq!(message.grant_expires_at, Some(timestamp(at)));
        assert_eq!(message.protocol_version, 1);
        assert_eq!((message.copy_id.as_str(), message.disposable), ("t1", true));
    }
}
