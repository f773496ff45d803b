//! The findings of each detector, from inventories as agents report them,
//! against the shipped catalogue.

use std::path::Path;

use super::*;
use crate::catalogue::Catalogue;
use crate::model::{Database, DatabaseServer, HostKind, HostState, TableEngine};

fn migration(id: &str) -> Migration {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue");
    let catalogue = Catalogue::load(&dir).unwrap_or_else(|e| panic!("shipped catalogue: {e}"));
    catalogue
        .get(id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is in the catalogue"))
}

fn server(engine: Engine, version: &str) -> DatabaseServer {
    DatabaseServer {
        name: "main".into(),
        engine,
        version: version.into(),
        address: "192.0.2.12".into(),
        port: if engine == Engine::Postgresql {
            5432
        } else {
            3306
        },
        reachable: true,
        error: String::new(),
        available_extensions: if engine == Engine::Postgresql {
            vec!["plpgsql".into(), "uuid-ossp".into()]
        } else {
            Vec::new()
        },
        data_directory_free_bytes: Some(10 << 30),
        available_engines: if engine == Engine::Mariadb {
            vec!["Aria".into(), "InnoDB".into(), "MyISAM".into()]
        } else {
            Vec::new()
        },
        replication_ready: true,
        replication_reason: String::new(),
    }
}

fn host(id: &str, kind: HostKind, servers: Vec<DatabaseServer>) -> Host {
    Host {
        id: id.into(),
        kind: Some(kind),
        reported_kind: Some(kind),
        declared_disk_bytes: None,
        certificate_serial: None,
        removed: None,
        state: HostState::Online,
        draining: false,
        pool: None,
        stack_version: "2024.1".into(),
        agent_version: String::new(),
        agent_endpoint: format!("{id}:7445"),
        addresses: vec!["192.0.2.12".into()],
        disk_total_bytes: 40 << 30,
        disk_free_bytes: 20 << 30,
        database_servers: servers,
        account_count: 0,
        enrolled_at: None,
        last_heartbeat_at: None,
        inventory_updated_at: None,
        certificate_expires_at: None,
        source_protocols: vec![1, 2],
        target_protocols: vec![1, 2],
        serves_sites: false,
    }
}

fn source() -> Host {
    host(
        "shared-old",
        HostKind::Shared,
        vec![
            server(Engine::Postgresql, "15.18"),
            server(Engine::Mariadb, "10.11.6"),
        ],
    )
}

fn test_host() -> Host {
    host(
        "test-1",
        HostKind::Test,
        vec![
            server(Engine::Postgresql, "18.1"),
            server(Engine::Mariadb, "11.8.3"),
        ],
    )
}

fn database(engine: Engine, name: &str) -> Database {
    Database {
        engine,
        server: "main".into(),
        name: name.into(),
        size_bytes: 1 << 20,
        owner: "alice".into(),
        extensions: if engine == Engine::Postgresql {
            vec!["plpgsql".into()]
        } else {
            Vec::new()
        },
        md5_password_roles: Vec::new(),
        unlogged_partitioned_tables: Vec::new(),
        tables_not_innodb: Vec::new(),
        inspected: true,
    }
}

fn alice(databases: Vec<Database>) -> Account {
    Account {
        name: "alice".into(),
        host_id: "shared-old".into(),
        home: "/home/alice".into(),
        uid: 1000,
        home_size_bytes: 1 << 20,
        home_files: 3,
        databases,
        sites: Vec::new(),
        updated_at: chrono::Utc::now(),
        copy_of_test: None,
    }
}

fn finding_of<'a>(report: &'a Report, id: &str) -> &'a Finding {
    report
        .findings
        .iter()
        .find(|f| f.incompatibility_id == id)
        .unwrap_or_else(|| panic!("a finding for {id}: {report:#?}"))
}

fn pg_report(account: &Account) -> Report {
    report(
        &migration("postgresql-15-to-18"),
        account,
        &source(),
        &[source(), test_host()],
        &[],
    )
}

#[test]
fn an_extension_no_target_server_offers_blocks_naming_database_and_extension() {
    let mut shop = database(Engine::Postgresql, "shop");
    shop.extensions = vec!["pgcrypto".into(), "plpgsql".into()];
    let account = alice(vec![shop]);
    let report = pg_report(&account);
    let found = finding_of(&report, "extensions-not-offered");
    assert_eq!(
        (found.applies, found.severity),
        (Applies::Yes, Severity::Blocking)
    );
    assert!(
        found.message.contains(
            "the test cannot succeed until it is settled: database shop uses pgcrypto, which no PostgreSQL 18 test host offers"
        ),
        "{}",
        found.message
    );
    assert!(!report.compatible);
    let blocking = blocking_findings(
        &migration("postgresql-15-to-18"),
        &account,
        &source(),
        &[test_host()],
    );
    assert_eq!(blocking.len(), 1, "{blocking:?}");
    // Offered on the target: does not apply, and says what was compared.
    let mut uuid = database(Engine::Postgresql, "shop");
    uuid.extensions = vec!["plpgsql".into(), "uuid-ossp".into()];
    let report = pg_report(&alice(vec![uuid]));
    let found = finding_of(&report, "extensions-not-offered");
    assert_eq!(found.applies, Applies::No);
    assert!(
        found
            .message
            .contains("every extension its databases use (plpgsql, uuid-ossp) is offered"),
        "{}",
        found.message
    );
    assert!(report.compatible, "{report:#?}");
}

#[test]
fn extensions_offered_only_on_different_servers_block_too() {
    // test-1 has pgcrypto, test-2 postgis; the shop needs both on one.
    let mut with_pgcrypto = test_host();
    with_pgcrypto.database_servers[0].available_extensions = vec!["pgcrypto".into()];
    let mut with_postgis = test_host();
    with_postgis.id = "test-2".into();
    with_postgis.database_servers[0].available_extensions = vec!["postgis".into()];
    let mut shop = database(Engine::Postgresql, "shop");
    shop.extensions = vec!["pgcrypto".into(), "postgis".into()];
    let findings = super::findings(
        &migration("postgresql-15-to-18"),
        &alice(vec![shop]),
        &source(),
        &[with_pgcrypto, with_postgis],
    );
    let found = &findings[0];
    assert_eq!(found.severity, Severity::Blocking, "{found:?}");
    assert!(
        found.message.contains(
            "database shop uses pgcrypto, postgis, which no single PostgreSQL 18 test server offers together"
        ),
        "{}",
        found.message
    );
}

#[test]
fn extensions_are_not_checked_without_a_target_that_reports_them() {
    let mut old_agent = test_host();
    old_agent.database_servers[0].available_extensions.clear();
    let mut shop = database(Engine::Postgresql, "shop");
    shop.extensions = vec!["pgcrypto".into()];
    let findings = super::findings(
        &migration("postgresql-15-to-18"),
        &alice(vec![shop.clone()]),
        &source(),
        &[old_agent],
    );
    let found = &findings[0];
    assert_eq!(found.applies, Applies::NotChecked, "{found:?}");
    assert!(
        found
            .message
            .contains("no PostgreSQL 18 test server reports the extensions it offers"),
        "{}",
        found.message
    );
    // No PostgreSQL 18 test host at all (a draining one does not count).
    let mut draining = test_host();
    draining.draining = true;
    let findings = super::findings(
        &migration("postgresql-15-to-18"),
        &alice(vec![shop]),
        &source(),
        &[draining],
    );
    assert!(
        findings[0]
            .message
            .contains("no test host runs a reachable PostgreSQL 18 server now"),
        "{findings:?}"
    );
}

#[test]
fn md5_passwords_name_each_role_and_its_databases() {
    let mut shop = database(Engine::Postgresql, "shop");
    shop.md5_password_roles = vec!["alice".into(), "alice_ro".into()];
    let mut blog = database(Engine::Postgresql, "blog");
    blog.md5_password_roles = vec!["alice".into()];
    let report = pg_report(&alice(vec![shop, blog]));
    let found = finding_of(&report, "md5-passwords-deprecated");
    assert_eq!(
        (found.applies, found.severity),
        (Applies::Yes, Severity::Warning)
    );
    assert!(
        found.message.contains(
            "role alice (of database shop, blog) still has an MD5 password; role alice_ro (of database shop) still has an MD5 password"
        ),
        "{}",
        found.message
    );
    // A warning does not make the report incompatible.
    assert!(report.compatible, "{report:#?}");
    // None: says so; not read by the agent: not checked, naming the database.
    let report = pg_report(&alice(vec![database(Engine::Postgresql, "shop")]));
    assert_eq!(
        finding_of(&report, "md5-passwords-deprecated").applies,
        Applies::No
    );
    let mut unread = database(Engine::Postgresql, "shop");
    unread.inspected = false;
    let report = pg_report(&alice(vec![unread]));
    let found = finding_of(&report, "md5-passwords-deprecated");
    assert_eq!(found.applies, Applies::NotChecked);
    assert!(
        found.message.contains("did not read database shop"),
        "{}",
        found.message
    );
}

#[test]
fn an_unlogged_partitioned_table_blocks_naming_the_table() {
    let mut shop = database(Engine::Postgresql, "shop");
    shop.unlogged_partitioned_tables = vec!["public.events".into()];
    let report = pg_report(&alice(vec![shop]));
    let found = finding_of(&report, "unlogged-partitioned-tables");
    assert_eq!(
        (found.applies, found.severity),
        (Applies::Yes, Severity::Blocking)
    );
    assert!(
        found
            .message
            .contains("table public.events of database shop is an unlogged partitioned table"),
        "{}",
        found.message
    );
    assert!(!report.compatible);
}

#[test]
fn an_account_using_nothing_incompatible_gets_every_item_with_its_reason() {
    let migration = migration("postgresql-15-to-18");
    let report = pg_report(&alice(vec![database(Engine::Postgresql, "shop")]));
    assert!(report.compatible, "{report:#?}");
    assert_eq!(report.findings.len(), migration.incompatibilities.len());
    for (finding, incompatibility) in report.findings.iter().zip(&migration.incompatibilities) {
        assert_eq!(finding.incompatibility_id, incompatibility.id);
        assert_ne!(finding.severity, Severity::Blocking);
        let expected = match incompatibility.detect {
            crate::catalogue::Detector::Manual { .. } => "not checked: check by hand ",
            _ => "does not apply to this account: ",
        };
        assert!(
            finding
                .message
                .starts_with(&format!("{}: {expected}", incompatibility.title)),
            "{}",
            finding.message
        );
    }
}

#[test]
fn mariadb_tables_on_an_engine_the_target_lacks_block() {
    let migration = migration("mariadb-10.11-to-11.8");
    let mut blog = database(Engine::Mariadb, "alice_blog");
    blog.tables_not_innodb = vec![
        TableEngine {
            table: "logs".into(),
            engine: "CONNECT".into(),
        },
        TableEngine {
            table: "cache".into(),
            engine: "aria".into(),
        },
    ];
    let account = alice(vec![blog.clone()]);
    let report = super::report(&migration, &account, &source(), &[test_host()], &[]);
    let found = finding_of(&report, "engines-not-offered");
    assert_eq!(found.severity, Severity::Blocking);
    assert!(
        found.message.contains(
            "table alice_blog.logs uses engine CONNECT, which no MariaDB 11.8 test host offers"
        ) && !found.message.contains("cache"),
        "{}",
        found.message
    );
    // Every other item: applies to every database, or not checked.
    let optimizer = finding_of(&report, "optimizer-cost-model");
    assert_eq!(optimizer.applies, Applies::Yes);
    assert!(
        optimizer
            .message
            .contains("every database moved to MariaDB 11.8: alice_blog"),
        "{}",
        optimizer.message
    );
    assert_eq!(
        finding_of(&report, "innodb-change-buffer-removed").applies,
        Applies::NotChecked
    );
    // Aria alone is offered: does not apply.
    blog.tables_not_innodb.remove(0);
    let report = super::report(
        &migration,
        &alice(vec![blog]),
        &source(),
        &[test_host()],
        &[],
    );
    let found = finding_of(&report, "engines-not-offered");
    assert_eq!(found.applies, Applies::No, "{}", found.message);
    assert!(
        found.message.contains("(InnoDB, aria)"),
        "{}",
        found.message
    );
}

#[test]
fn the_stack_migrations_code_checks_are_not_checked_and_say_what_to_check() {
    let migration = migration("stack-2024.1-to-2026.1");
    let mut new_stack = test_host();
    new_stack.stack_version = "2026.1".into();
    new_stack.database_servers[1].version = "10.11.6".into();
    let account = alice(vec![database(Engine::Postgresql, "shop")]);
    let report = super::report(&migration, &account, &source(), &[new_stack], &[]);
    assert!(report.compatible, "{report:#?}");
    let php = finding_of(&report, "php-dynamic-properties");
    assert_eq!(
        (php.applies, php.severity),
        (Applies::NotChecked, Severity::Warning)
    );
    assert!(
        php.message
            .contains("not checked: check by hand the PHP code of your sites"),
        "{}",
        php.message
    );
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.applies == Applies::NotChecked)
    );
}

#[test]
fn the_report_shows_each_receiving_servers_room_and_refuses_a_full_one() {
    let account = alice(vec![database(Engine::Postgresql, "shop")]);
    let report = pg_report(&account);
    assert!(
        report.notes.iter().any(|n| n.topic == "disk"
            && n.message.contains(
                "on test-1, PostgreSQL server main has 10.0 GiB free on its data directory"
            )),
        "{report:#?}"
    );
    let mut full = test_host();
    full.database_servers[0].data_directory_free_bytes = Some(1 << 20);
    let report = super::report(
        &migration("postgresql-15-to-18"),
        &account,
        &source(),
        &[full],
        &[],
    );
    assert!(!report.compatible);
    assert!(
        report.notes.iter().any(|n| n.severity == Severity::Blocking
            && n.message
                .contains("test-1: PostgreSQL server main has 1.0 MiB free on its data directory")),
        "{report:#?}"
    );
}
