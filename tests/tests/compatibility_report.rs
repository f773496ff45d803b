//! The compatibility report matched to the account, for real: an account
//! on PostgreSQL 15 with a role that still has an MD5 password and an
//! unlogged partitioned table gets both findings, naming the role and the
//! table; the table blocks the test (PostgreSQL 18 refuses it), so the
//! report is not compatible and `TestMigration` is refused with the
//! finding's text before anything is copied; once the table is made again
//! as a normal one, the next report says so. A MariaDB 10.11 account with
//! a table on the ARCHIVE engine, which the MariaDB 11.8 test server does
//! not load, is refused the same way, naming the table and the engine. And
//! a test host whose
//! PostgreSQL 18 data directory is on a small filesystem of its own (a
//! 96 MiB tmpfs), while its homes' filesystem has room, is refused naming
//! the host, the server, the need and the free space. Real controller,
//! agents, servers and grpcurl.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Postgres, Rig};
use serde_json::{Value, json};
use support::{enrol, list, panel, str_of};

const MIGRATION: &str = "postgresql-15-to-18";

/// The report item of incompatibility `id`.
fn finding(report: &Value, id: &str) -> anyhow::Result<(String, String)> {
    let items = list(report, "items");
    let item = items
        .iter()
        .find(|item| str_of(item, "incompatibilityId") == id)
        .with_context(|| format!("no item for {id}: {report}"))?;
    Ok((
        str_of(item, "severity").to_owned(),
        str_of(item, "message").to_owned(),
    ))
}

/// Asks for a test as the panel; grpcurl's output.
fn test_migration(
    rig: &Rig,
    request_id: &str,
    account: &str,
) -> anyhow::Result<std::process::Output> {
    let access = rig.controller_access()?;
    let body = json!({"request_id": request_id, "account": account, "migration_id": MIGRATION})
        .to_string();
    rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            &body,
            &access.api.to_string(),
            "navette.v1.Tests/TestMigration",
        ],
    )
}

/// Starts PostgreSQL 15 on shared-old and 18 on test-1, in parallel.
fn start_servers(
    rig: &Rig,
    shared: &navette_tests::Netns,
    test_host: &navette_tests::Netns,
) -> anyhow::Result<(Postgres, Postgres)> {
    std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| shared.start_postgres(rig, PgVersion::V15, 5432));
        let b = s.spawn(|| test_host.start_postgres(rig, PgVersion::V18, 5432));
        let join = |what: &str, r: std::thread::Result<anyhow::Result<_>>| {
            r.map_err(|_| anyhow::anyhow!("starting {what} panicked"))?
        };
        Ok((join("pg15", a.join())?, join("pg18", b.join())?))
    })
}

fn no_test_and_nothing_copied(rig: &Rig, target: &Postgres, account: &str) -> anyhow::Result<()> {
    let tests = panel(rig, "ListTests", json!({"account": account}))?;
    ensure!(
        list(&tests, "tests").is_empty(),
        "no test was made: {tests}"
    );
    ensure!(
        target.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{account}'")
        )? == "0",
        "nothing of {account}'s reached the test host"
    );
    Ok(())
}

#[test]
fn md5_roles_and_unlogged_partitioned_tables_are_found_by_name() -> anyhow::Result<()> {
    let rig = Rig::new("compat_report")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    let (source_pg, target_pg) = start_servers(&rig, &shared, &test_host)?;
    let erin = "nvcr_erin";
    let legacy = "nvcr_erin_legacy";
    rig.add_account(
        &shared,
        AccountSpec {
            name: erin.into(),
            password: "erin pw".into(),
            pg_databases: vec![erin.into()],
            ..AccountSpec::default()
        },
    )?;
    // A login of erin's with a password stored as MD5 (PostgreSQL 15
    // still does so when asked), member of erin's role.
    source_pg.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'md5'; CREATE ROLE {legacy} LOGIN PASSWORD 'legacy pw'; GRANT {erin} TO {legacy}"
        ),
    )?;
    ensure!(
        source_pg.psql(
            "postgres",
            &format!("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = '{legacy}'")
        )? == "md5",
        "the legacy role's password is stored as MD5"
    );
    let unlogged = "SET ROLE nvcr_erin; \
         CREATE UNLOGGED TABLE public.events (id int, at date) PARTITION BY RANGE (at); \
         CREATE TABLE public.events_2026 PARTITION OF public.events \
           FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')";
    source_pg.psql(erin, unlogged)?;

    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "test-1"])?;

    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": erin, "migration_id": MIGRATION}),
    )?;
    let (severity, message) = finding(&report, "md5-passwords-deprecated")?;
    ensure!(
        severity == "SEVERITY_WARNING"
            && message.contains(&format!(
                "role {legacy} (of database {erin}) still has an MD5 password"
            ))
            && !message.contains(&format!("role {erin} ")),
        "the MD5 finding names the legacy role only: {severity} {message}"
    );
    let (severity, message) = finding(&report, "unlogged-partitioned-tables")?;
    ensure!(
        severity == "SEVERITY_BLOCKING"
            && message.contains("the test cannot succeed")
            && message.contains(&format!(
                "table public.events of database {erin} is an unlogged partitioned table"
            ))
            && !message.contains("events_2026"),
        "the unlogged finding names the partitioned table: {severity} {message}"
    );
    ensure!(
        report.get("compatible").and_then(Value::as_bool) != Some(true),
        "a blocking finding makes the report incompatible: {report}"
    );

    // Refused with the finding's text, before anything is copied.
    let refused = test_migration(&rig, "r-erin", erin)?;
    support::expect_refusal(
        &refused,
        "FailedPrecondition",
        &format!("table public.events of database {erin} is an unlogged partitioned table"),
    )?;
    no_test_and_nothing_copied(&rig, &target_pg, erin)?;

    // Made again as a normal partitioned table: the next report, which
    // reads the database again, no longer finds it.
    source_pg.psql(
        erin,
        &format!(
            "DROP TABLE public.events; {}",
            unlogged.replace("UNLOGGED ", "")
        ),
    )?;
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": erin, "migration_id": MIGRATION}),
    )?;
    let (severity, message) = finding(&report, "unlogged-partitioned-tables")?;
    ensure!(
        severity == "SEVERITY_INFO" && message.contains("does not apply to this account"),
        "once fixed: {severity} {message}"
    );
    ensure!(
        report.get("compatible").and_then(Value::as_bool) == Some(true),
        "an MD5 password warns but does not block: {report}"
    );
    Ok(())
}

/// A tmpfs mounted at a directory, unmounted (lazily: the server on it may
/// still run) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .status()?;
        ensure!(
            status.success(),
            "mount tmpfs on {}: {status}",
            dir.display()
        );
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_data_directory_without_room_is_refused_naming_host_server_need_and_free() -> anyhow::Result<()>
{
    let rig = Rig::new("compat_room")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    // test-1's PostgreSQL 18 keeps its data on a 96 MiB filesystem; its
    // homes are on the machine's disk.
    let _small = Tmpfs::mount(&test_host.root().join("pg").join("5432"), "96m")?;
    let (source_pg, target_pg) = start_servers(&rig, &shared, &test_host)?;
    let gina = "nvcr_gina";
    rig.add_account(
        &shared,
        AccountSpec {
            name: gina.into(),
            password: "gina pw".into(),
            pg_databases: vec![gina.into()],
            ..AccountSpec::default()
        },
    )?;
    source_pg.psql(
        gina,
        "CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )?;
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "test-1"])?;
    rig.wait_until(
        "test-1's data directory measured",
        Duration::from_secs(30),
        || {
            let host = support::host(&rig, "test-1")?;
            Ok(list(&host, "databaseServers")
                .iter()
                .any(|s| s.get("dataDirectoryFreeBytes").is_some()))
        },
    )?;

    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": gina, "migration_id": MIGRATION}),
    )?;
    let placement: Vec<String> = list(&report, "items")
        .iter()
        .filter(|item| str_of(item, "topic") == "placement")
        .map(|item| str_of(item, "message").to_owned())
        .collect();
    ensure!(
        report.get("compatible").and_then(Value::as_bool) != Some(true)
            && placement.iter().any(|m| {
                m.contains("test-1: PostgreSQL server main has ")
                    && m.contains(
                        " MiB free on its data directory; the databases it would receive need ",
                    )
            }),
        "the report names the server without room: {report}"
    );
    let refused = test_migration(&rig, "r-gina", gina)?;
    support::expect_refusal(
        &refused,
        "ResourceExhausted",
        "test-1: PostgreSQL server main has ",
    )?;
    no_test_and_nothing_copied(&rig, &target_pg, gina)?;
    Ok(())
}

#[test]
fn a_mariadb_table_on_an_engine_the_target_lacks_blocks_the_test() -> anyhow::Result<()> {
    const MARIADB: &str = "mariadb-10.11-to-11.8";
    let rig = Rig::new("compat_engine")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    let (source_db, target_db) = std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| shared.start_mariadb(&rig));
        let b = s.spawn(|| test_host.start_mariadb_11_8(&rig));
        let join = |what: &str, r: std::thread::Result<anyhow::Result<_>>| {
            r.map_err(|_| anyhow::anyhow!("starting {what} panicked"))?
        };
        Ok((join("10.11", a.join())?, join("11.8", b.join())?))
    })?;
    let hal = "nvcr_hal";
    let blog = format!("{hal}_blog");
    rig.add_account(
        &shared,
        AccountSpec {
            name: hal.into(),
            password: "hal pw".into(),
            mariadb_databases: vec![blog.clone()],
            ..AccountSpec::default()
        },
    )?;
    source_db.sql(&format!(
        "INSTALL SONAME 'ha_archive'; \
         CREATE TABLE {blog}.posts (id int PRIMARY KEY) ENGINE=InnoDB; \
         CREATE TABLE {blog}.cache (id int) ENGINE=Aria; \
         CREATE TABLE {blog}.logs (id int, line text) ENGINE=ARCHIVE"
    ))?;
    ensure!(
        target_db.sql(
            "SELECT count(*) FROM information_schema.ENGINES \
             WHERE ENGINE = 'ARCHIVE' AND SUPPORT IN ('YES', 'DEFAULT')"
        )? == "0",
        "the rig's MariaDB 11.8 is expected not to load ARCHIVE"
    );
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "test-1"])?;

    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": hal, "migration_id": MARIADB}),
    )?;
    let (severity, message) = finding(&report, "engines-not-offered")?;
    ensure!(
        severity == "SEVERITY_BLOCKING"
            && message.contains(&format!(
                "table {blog}.logs uses engine ARCHIVE, which no MariaDB 11.8 test host offers"
            ))
            && !message.contains("cache")
            && !message.contains("posts"),
        "the engine finding names the ARCHIVE table only: {severity} {message}"
    );
    let (_, optimizer) = finding(&report, "optimizer-cost-model")?;
    ensure!(
        optimizer.contains(&format!("every database moved to MariaDB 11.8: {blog}")),
        "the optimizer item names the database: {optimizer}"
    );
    ensure!(
        report.get("compatible").and_then(Value::as_bool) != Some(true),
        "not compatible: {report}"
    );
    let access = rig.controller_access()?;
    let body = json!({"request_id": "r-hal", "account": hal, "migration_id": MARIADB}).to_string();
    let refused = rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            &body,
            &access.api.to_string(),
            "navette.v1.Tests/TestMigration",
        ],
    )?;
    support::expect_refusal(
        &refused,
        "FailedPrecondition",
        &format!("table {blog}.logs uses engine ARCHIVE"),
    )?;
    let tests = panel(&rig, "ListTests", json!({"account": hal}))?;
    ensure!(
        list(&tests, "tests").is_empty(),
        "no test was made: {tests}"
    );
    ensure!(
        target_db.sql(&format!(
            "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{blog}'"
        ))? == "0",
        "nothing of hal's reached the test host"
    );
    Ok(())
}
