//! Conversions between `navette.v1` messages and the controller's domain
//! types. The only place that knows both.

use navette_proto::v1;
use navette_proto::{from_timestamp, timestamp};

use crate::catalogue::{Incompatibility, Migration, SoftwareVersions};
use crate::error::{Error, Result};
use crate::ids;
use crate::model::{
    Account, CopyProgress, CopyWaiting, Database, DatabaseServer, Engine, Host, HostKind, HostPool,
    HostState, Inventory, JoinToken, Test, TestState,
};

pub fn host_kind(kind: HostKind) -> v1::HostKind {
    match kind {
        HostKind::Shared => v1::HostKind::Shared,
        HostKind::Dedicated => v1::HostKind::Dedicated,
        HostKind::Vps => v1::HostKind::Vps,
        HostKind::Transit => v1::HostKind::Transit,
        HostKind::Test => v1::HostKind::Test,
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

fn host_state(state: HostState) -> v1::HostState {
    match state {
        HostState::AwaitingEnrolment => v1::HostState::AwaitingEnrolment,
        HostState::Online => v1::HostState::Online,
        HostState::Unreachable => v1::HostState::Unreachable,
        HostState::Removed => v1::HostState::Removed,
    }
}

fn engine(engine: Engine) -> v1::DatabaseEngine {
    match engine {
        Engine::Postgresql => v1::DatabaseEngine::Postgresql,
        Engine::Mariadb => v1::DatabaseEngine::Mariadb,
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

pub fn database_server(server: &DatabaseServer) -> v1::DatabaseServer {
    v1::DatabaseServer {
        name: server.name.clone(),
        engine: engine(server.engine).into(),
        version: server.version.clone(),
        address: server.address.clone(),
        port: u32::from(server.port),
        reachable: server.reachable,
        error: server.error.clone(),
    }
}

pub fn host(host: &Host) -> v1::Host {
    v1::Host {
        id: host.id.clone(),
        kind: host
            .kind
            .map(host_kind)
            .unwrap_or(v1::HostKind::Unspecified)
            .into(),
        state: host_state(host.state).into(),
        draining: host.draining,
        pool: host.pool.clone().unwrap_or_default(),
        stack_version: host.stack_version.clone(),
        agent_endpoint: host.agent_endpoint.clone(),
        addresses: host.addresses.clone(),
        disk_total_bytes: host.disk_total_bytes,
        disk_free_bytes: host.disk_free_bytes,
        database_servers: host.database_servers.iter().map(database_server).collect(),
        account_count: host.account_count,
        enrolled_at: host.enrolled_at.map(timestamp),
        last_heartbeat_at: host.last_heartbeat_at.map(timestamp),
        inventory_updated_at: host.inventory_updated_at.map(timestamp),
        certificate_expires_at: host.certificate_expires_at.map(timestamp),
        agent_version: host.agent_version.clone(),
        reported_kind: host
            .reported_kind
            .map(host_kind)
            .unwrap_or(v1::HostKind::Unspecified)
            .into(),
        declared_disk_bytes: host.declared_disk_bytes.unwrap_or(0),
        warnings: host.warnings(),
        certificate_serial: host.certificate_serial.clone().unwrap_or_default(),
        removed_at: host.removed.as_ref().map(|r| timestamp(r.at)),
        removed_by: host
            .removed
            .as_ref()
            .map(|r| r.by.clone())
            .unwrap_or_default(),
        removed_reason: host
            .removed
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
    }
}

pub fn account(account: &Account) -> v1::Account {
    v1::Account {
        name: account.name.clone(),
        host_id: account.host_id.clone(),
        home: account.home.clone(),
        uid: account.uid,
        home_size_bytes: account.home_size_bytes,
        home_files: account.home_files,
        databases: account
            .databases
            .iter()
            .map(|d| v1::Database {
                engine: engine(d.engine).into(),
                server: d.server.clone(),
                name: d.name.clone(),
                size_bytes: d.size_bytes,
                owner: d.owner.clone(),
            })
            .collect(),
        updated_at: Some(timestamp(account.updated_at)),
        copy_of_test: account.copy_of_test.clone().unwrap_or_default(),
    }
}

fn software(versions: &SoftwareVersions) -> v1::SoftwareVersions {
    v1::SoftwareVersions {
        software: versions.software.as_str().to_owned(),
        versions: versions.versions.clone(),
    }
}

fn incompatibility(item: &Incompatibility) -> v1::Incompatibility {
    v1::Incompatibility {
        id: item.id.clone(),
        title: item.title.clone(),
        description: item.description.clone(),
        important: item.important,
    }
}

pub fn migration(migration: &Migration) -> v1::Migration {
    v1::Migration {
        id: migration.id.clone(),
        title: migration.title.clone(),
        summary: migration.summary.clone(),
        source: Some(software(&migration.source)),
        target: Some(software(&migration.target)),
        target_host_kinds: migration
            .target_host_kinds
            .iter()
            .map(|k| i32::from(host_kind(*k)))
            .collect(),
        documentation: migration.documentation.clone(),
        incompatibilities: migration
            .incompatibilities
            .iter()
            .map(incompatibility)
            .collect(),
    }
}

pub fn join_token(token: &JoinToken) -> v1::JoinToken {
    v1::JoinToken {
        id: token.id.clone(),
        host_id: token.host_id.clone(),
        pool: token.pool.clone().unwrap_or_default(),
        created_at: Some(timestamp(token.created_at)),
        expires_at: Some(timestamp(token.expires_at)),
        used_at: token.used_at.map(timestamp),
        revoked: token.revoked_at.is_some(),
        created_by: token.created_by.clone(),
        kind: token
            .kind
            .map(host_kind)
            .unwrap_or(v1::HostKind::Unspecified)
            .into(),
        declared_disk_bytes: token.declared_disk_bytes.unwrap_or(0),
    }
}

pub fn host_pool(pool: &HostPool) -> v1::HostPool {
    v1::HostPool {
        name: pool.name.clone(),
        description: pool.description.clone(),
        created_at: Some(timestamp(pool.created_at)),
    }
}

/// The most bytes of one string of an agent's inventory (a version, a
/// home, a database's name, an error it met).
const MAX_REPORTED_BYTES: usize = 4096;

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
    }
    for account in &report.accounts {
        ids::AccountName::parse("accounts.name", &account.name)?;
        text("accounts.home", &account.home)?;
        text("accounts.copy_of_test", &account.copy_of_test)?;
        for database in &account.databases {
            text("accounts.databases.server", &database.server)?;
            text("accounts.databases.name", &database.name)?;
            text("accounts.databases.owner", &database.owner)?;
        }
    }
    Ok(())
}

/// An agent's report, checked.
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
    })
}

pub fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgresql => "PostgreSQL",
        Engine::Mariadb => "MariaDB",
    }
}

pub fn report_item(
    severity: v1::report_item::Severity,
    topic: &str,
    message: &str,
    incompatibility_id: &str,
) -> v1::ReportItem {
    v1::ReportItem {
        severity: severity.into(),
        topic: topic.to_owned(),
        message: message.to_owned(),
        incompatibility_id: incompatibility_id.to_owned(),
    }
}

fn test_state(state: TestState) -> v1::test::State {
    use v1::test::State;
    match state {
        TestState::Placing => State::Placing,
        TestState::Copying => State::Copying,
        TestState::Ready => State::Ready,
        TestState::Refreshing => State::Refreshing,
        TestState::Failed => State::Failed,
        TestState::Deleting => State::Deleting,
        TestState::Deleted => State::Deleted,
    }
}

/// The counters a target agent reported, and what its copy waits for.
pub fn copy_progress_from(report: &v1::TransferProgress) -> CopyProgress {
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

fn copy_progress(test: &Test) -> Option<v1::TransferProgress> {
    let progress = test.progress.as_ref()?;
    let state = match test.state {
        TestState::Ready | TestState::Deleting | TestState::Deleted => v1::TransferState::Succeeded,
        TestState::Failed => v1::TransferState::Failed,
        _ => v1::TransferState::Running,
    };
    Some(v1::TransferProgress {
        transfer_id: test.transfer_id(),
        state: state.into(),
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
        updated_at: Some(timestamp(test.updated_at)),
        target_home: progress.target_home.clone(),
        // What the running copy waits for, as its target agent last said.
        waiting: progress
            .waiting
            .as_ref()
            .filter(|_| state == v1::TransferState::Running)
            .map(|waiting| v1::TransferWaiting {
                what: waiting.what.clone(),
                error: waiting.error.clone(),
                since: Some(timestamp(waiting.since)),
                until: waiting.until.map(timestamp),
            }),
    })
}

/// How to reach a ready test's copy, with what to type.
fn connection(test: &Test) -> v1::TestConnection {
    let databases: Vec<v1::DatabaseEndpoint> = test
        .plan
        .databases
        .iter()
        .map(|d| v1::DatabaseEndpoint {
            engine: engine(d.engine).into(),
            name: d.name.clone(),
            address: d.target_address.clone(),
            port: u32::from(d.target_port),
            user: d.owner.clone(),
            server_version: d.target_version.clone(),
        })
        .collect();
    let mut instructions = vec![format!(
        "Your copy runs on {} with the same database names, users and passwords as your account.",
        test.plan.target_address
    )];
    for d in &test.plan.databases {
        instructions.push(match d.engine {
            Engine::Postgresql => format!(
                "psql -h {} -p {} -U {} {}   # PostgreSQL {}",
                d.target_address, d.target_port, d.owner, d.name, d.target_version
            ),
            Engine::Mariadb => format!(
                "mariadb -h {} -P {} -u {} -p {}   # MariaDB {}",
                d.target_address, d.target_port, d.owner, d.name, d.target_version
            ),
        });
    }
    v1::TestConnection {
        host_address: test.plan.target_address.clone(),
        databases,
        home: test
            .progress
            .as_ref()
            .map(|p| p.target_home.clone())
            .unwrap_or_default(),
        instructions: instructions.join("\n"),
    }
}

pub fn test(test: &Test) -> v1::Test {
    let usable = matches!(test.state, TestState::Ready | TestState::Refreshing);
    v1::Test {
        id: test.id.clone(),
        account: test.account.clone(),
        migration_id: test.migration_id.clone(),
        state: test_state(test.state).into(),
        source_host_id: test.source_host_id.clone(),
        test_host_id: test.test_host_id.clone(),
        connection: usable.then(|| connection(test)),
        progress: copy_progress(test),
        error: test.error.clone(),
        generation: test.generation,
        created_at: Some(timestamp(test.created_at)),
        updated_at: Some(timestamp(test.updated_at)),
        ready_at: test.ready_at.map(timestamp),
        // When it is removed by itself, whatever its state.
        expires_at: crate::workflow::test_flow::expiry(test).map(timestamp),
        outage: crate::workflow::test_flow::outage(test).map(|outage| v1::HostOutage {
            host_id: outage.host_id,
            since: Some(timestamp(outage.since)),
            retried_until: outage.retried_until.map(timestamp),
            error: outage.error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_copy_waits_for_is_kept_with_its_progress() {
        let since = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("a time");
        let until = since + chrono::Duration::seconds(120);
        let report = v1::TransferProgress {
            tables_done: 2,
            waiting: Some(v1::TransferWaiting {
                what: "source PostgreSQL server main, database shop".into(),
                error: "connection refused".into(),
                since: Some(timestamp(since)),
                until: Some(timestamp(until)),
            }),
            ..v1::TransferProgress::default()
        };
        let progress = copy_progress_from(&report);
        assert_eq!(
            progress.waiting,
            Some(CopyWaiting {
                what: "source PostgreSQL server main, database shop".into(),
                error: "connection refused".into(),
                since,
                until: Some(until),
            })
        );
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
        let through = copy_progress_from(&v1::TransferProgress {
            tables_done: 3,
            ..v1::TransferProgress::default()
        });
        assert_eq!(
            through.waiting, None,
            "a progress without waiting clears it"
        );
    }
}
