//! Conversions between `navette.v1` messages and the controller's domain
//! types, for the services in `api`. The agent API's transfer messages
//! are converted in `agents::wire` (the panel's `Test.progress` too).

use navette_proto::timestamp;
use navette_proto::v1;

use crate::agents::transfer::TransferState;
use crate::agents::wire;
// Host kinds and inventories come from agents too: decoded in one place.
pub use crate::agents::wire::{host_kind_from, inventory_from};
use crate::catalogue::{Incompatibility, Migration, SoftwareVersions};
use crate::compatibility;
use crate::model::{
    Account, DatabaseServer, Engine, Host, HostKind, HostPool, HostState, JoinToken, Test,
    TestState,
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

pub fn database_server(server: &DatabaseServer) -> v1::DatabaseServer {
    v1::DatabaseServer {
        name: server.name.clone(),
        engine: engine(server.engine).into(),
        version: server.version.clone(),
        address: server.address.clone(),
        port: u32::from(server.port),
        reachable: server.reachable,
        error: server.error.clone(),
        available_extensions: server.available_extensions.clone(),
        data_directory_free_bytes: server.data_directory_free_bytes,
        available_engines: server.available_engines.clone(),
        logical_replication_ready: server.engine == Engine::Postgresql && server.replication_ready,
        logical_replication_reason: if server.engine == Engine::Postgresql {
            server.replication_reason.clone()
        } else {
            String::new()
        },
        row_binlog: (server.engine == Engine::Mariadb).then(|| v1::RowBinlogReadiness {
            ready: server.replication_ready,
            reason: server.replication_reason.clone(),
        }),
    }
}

/// The host as the operator API shows it, without its configuration
/// class (kept in `hosts.configuration_class`, outside the domain `Host`):
/// [`host_of_class`] adds it.
pub fn host(host: &Host) -> v1::Host {
    host_of_class(host, None)
}

/// The host with its configuration class (`store::transit::host_classes`).
pub fn host_of_class(host: &Host, configuration_class: Option<&str>) -> v1::Host {
    v1::Host {
        configuration_class: configuration_class.unwrap_or_default().to_owned(),
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
        source_protocols: host.source_protocols.clone(),
        target_protocols: host.target_protocols.clone(),
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
                extensions: d.extensions.clone(),
                md5_password_roles: d.md5_password_roles.clone(),
                unlogged_partitioned_tables: d.unlogged_partitioned_tables.clone(),
                tables_not_innodb: d
                    .tables_not_innodb
                    .iter()
                    .map(|t| v1::TableEngine {
                        table: t.table.clone(),
                        engine: t.engine.clone(),
                    })
                    .collect(),
                inspected: d.inspected,
            })
            .collect(),
        updated_at: Some(timestamp(account.updated_at)),
        copy_of_test: account.copy_of_test.clone().unwrap_or_default(),
        sites: account
            .sites
            .iter()
            .map(crate::agents::wire::site_to)
            .collect(),
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
        blocking: item.blocking,
        detect: item.detect.name().to_owned(),
        check: match &item.detect {
            crate::catalogue::Detector::Manual { check } => check.clone(),
            _ => String::new(),
        },
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

fn report_severity(severity: compatibility::Severity) -> v1::report_item::Severity {
    match severity {
        compatibility::Severity::Info => v1::report_item::Severity::Info,
        compatibility::Severity::Warning => v1::report_item::Severity::Warning,
        compatibility::Severity::Blocking => v1::report_item::Severity::Blocking,
    }
}

/// The report's notes, then one `incompatibility` item per finding.
pub fn compatibility_report(report: &compatibility::Report) -> v1::CompatibilityReport {
    let notes = report.notes.iter().map(|note| v1::ReportItem {
        severity: report_severity(note.severity).into(),
        topic: note.topic.to_owned(),
        message: note.message.clone(),
        incompatibility_id: String::new(),
    });
    let findings = report.findings.iter().map(|finding| v1::ReportItem {
        severity: report_severity(finding.severity).into(),
        topic: "incompatibility".to_owned(),
        message: finding.message.clone(),
        incompatibility_id: finding.incompatibility_id.clone(),
    });
    let (test_host_id, test_host_free_bytes) = report.test_host.clone().unwrap_or_default();
    v1::CompatibilityReport {
        account: report.account.clone(),
        migration_id: report.migration_id.clone(),
        compatible: report.compatible,
        home_size_bytes: report.home_size_bytes,
        database_size_bytes: report.database_size_bytes,
        disk_needed_bytes: report.disk_needed_bytes,
        test_host_id,
        test_host_free_bytes,
        items: notes.chain(findings).collect(),
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

fn copy_progress(test: &Test) -> Option<v1::TransferProgress> {
    let progress = test.progress.as_ref()?;
    let state = match test.state {
        TestState::Ready | TestState::Deleting | TestState::Deleted => TransferState::Succeeded,
        TestState::Failed => TransferState::Failed,
        _ => TransferState::Running,
    };
    // The same message the target agent sent: converted in one place.
    Some(wire::transfer_progress(
        test.transfer_id(),
        state,
        progress,
        test.updated_at,
    ))
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

/// The account's sites as they answer on the test host: each domain
/// pointed at the test host's address (the site sees its real domain).
fn previews(test: &Test) -> Vec<v1::SitePreview> {
    let address = &test.plan.target_address;
    test.plan
        .sites
        .iter()
        .filter_map(|site| {
            let domain = site.domains.first()?;
            Some(v1::SitePreview {
                domains: site.domains.clone(),
                address: address.clone(),
                command: format!("curl --resolve {domain}:80:{address} http://{domain}/"),
            })
        })
        .collect()
}

/// Why an account with sites has no previews: its test host serves none.
fn previews_note(test: &Test) -> String {
    match test.plan.runs_sites || test.plan.sites.is_empty() {
        true => String::new(),
        false => format!(
            "test host {} runs no web server, so the account's sites are not started there; the files and databases are copied",
            test.test_host_id
        ),
    }
}

pub fn test(test: &Test) -> v1::Test {
    let usable = matches!(test.state, TestState::Ready | TestState::Refreshing);
    // Running as listed once the sites step ended: ready. (While a refresh
    // copies, the previous generation's sites keep running, but the plan
    // already lists those the account has now.)
    let previewed = test.state == TestState::Ready && test.plan.runs_sites;
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
        previews: match previewed {
            true => previews(test),
            false => Vec::new(),
        },
        previews_note: previews_note(test),
    }
}
