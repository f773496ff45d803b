//! *Refresh* copies what the account has now: a PostgreSQL and a MariaDB
//! database the customer created after the test was ready are in the copy
//! after `RefreshTest`, with their rows; one the customer dropped on the
//! source is gone from the copy's server; a database on the test host that
//! no copy created is left alone.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::ensure;
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, MariaDb, PgVersion, Postgres, Rig};
use serde_json::{Value, json};
use support::{list, panel, str_of, wait_for_test};

const ACCOUNT: &str = "nvh_hana";
const MIGRATION: &str = "postgresql-15-to-18";

/// The result of a server start on another thread.
fn join<T>(started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("a server start panicked"))?
}

/// The databases of the account the copy's server `pg` has, sorted.
fn postgres_databases(pg: &Postgres) -> anyhow::Result<String> {
    Ok(pg
        .psql(
            "postgres",
            &format!(
                "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database
                 WHERE datname LIKE '{ACCOUNT}%'"
            ),
        )?
        .trim()
        .to_owned())
}

fn mariadb_databases(maria: &MariaDb) -> anyhow::Result<String> {
    Ok(maria
        .sql(&format!(
            "SELECT GROUP_CONCAT(SCHEMA_NAME ORDER BY SCHEMA_NAME) FROM information_schema.SCHEMATA
             WHERE SCHEMA_NAME LIKE '{ACCOUNT}%'"
        ))?
        .trim()
        .replace("NULL", ""))
}

/// The database names the panel's `connection` lists for the copy.
fn connection_databases(test: &Value) -> Vec<String> {
    let mut names: Vec<String> = test
        .get("connection")
        .map(|c| list(c, "databases"))
        .unwrap_or_default()
        .iter()
        .map(|d| str_of(d, "name").to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_refresh_copies_the_databases_the_account_has_now() -> anyhow::Result<()> {
    let rig = Rig::new("test_refresh")?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    let (source_pg, target_pg, source_maria, target_maria) = std::thread::scope(|s| {
        let a = s.spawn(|| shared.start_postgres(&rig, PgVersion::V15, 5432));
        let b = s.spawn(|| test_host.start_postgres(&rig, PgVersion::V18, 5432));
        let c = s.spawn(|| shared.start_mariadb(&rig));
        let d = s.spawn(|| test_host.start_mariadb_11_8(&rig));
        anyhow::Ok((
            join(a.join())?,
            join(b.join())?,
            join(c.join())?,
            join(d.join())?,
        ))
    })?;
    let spec = |pg: &[&str], maria: &[&str]| AccountSpec {
        name: ACCOUNT.into(),
        password: "hana-pw".into(),
        pg_databases: pg.iter().map(|d| (*d).to_owned()).collect(),
        mariadb_databases: maria.iter().map(|d| (*d).to_owned()).collect(),
        files: true,
    };
    rig.add_account(
        &shared,
        spec(&["nvh_hana", "nvh_hana_old"], &["nvh_hana_shop"]),
    )?;
    support::enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    support::enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;

    let started = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-refresh", "account": ACCOUNT, "migration_id": MIGRATION}),
    )?;
    let id = str_of(&started, "id").to_owned();
    wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(120))?;
    ensure!(
        postgres_databases(&target_pg)? == "nvh_hana,nvh_hana_old",
        "the first copy: {}",
        postgres_databases(&target_pg)?
    );
    // A database of the test host's server that no copy made.
    target_pg.psql("postgres", "CREATE DATABASE nvh_hana_local")?;

    // After the test: the customer drops one database and creates a
    // PostgreSQL and a MariaDB one, with rows.
    source_pg.psql("postgres", "DROP DATABASE nvh_hana_old")?;
    rig.add_account(
        &shared,
        spec(
            &["nvh_hana", "nvh_hana_new"],
            &["nvh_hana_shop", "nvh_hana_blog"],
        ),
    )?;
    source_pg.psql(
        "nvh_hana_new",
        &format!("SET ROLE {ACCOUNT}; INSERT INTO items (label) VALUES ('after the test')"),
    )?;
    source_maria.sql("INSERT INTO nvh_hana_blog.items (id, label) VALUES (4, 'after the test')")?;

    let refreshing = panel(&rig, "RefreshTest", json!({"id": id}))?;
    ensure!(
        str_of(&refreshing, "state") == "STATE_REFRESHING",
        "refresh: {refreshing}"
    );
    let refreshed = wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(120))?;
    ensure!(
        refreshed.get("generation").and_then(Value::as_u64) == Some(2),
        "a new generation: {refreshed}"
    );

    let rows = target_pg.psql(
        "nvh_hana_new",
        "SELECT string_agg(label, ',' ORDER BY id) FROM items",
    )?;
    ensure!(
        rows.trim() == "apple,banana,cherry,after the test",
        "the PostgreSQL database created after the test is copied with its rows: {rows:?}"
    );
    let rows =
        target_maria.sql("SELECT GROUP_CONCAT(label ORDER BY id) FROM nvh_hana_blog.items")?;
    ensure!(
        rows.trim() == "apple,banana,cherry,after the test",
        "the MariaDB database created after the test is copied with its rows: {rows:?}"
    );
    ensure!(
        postgres_databases(&target_pg)? == "nvh_hana,nvh_hana_local,nvh_hana_new",
        "the dropped database is gone from the copy's server, the test host's own stays: {}",
        postgres_databases(&target_pg)?
    );
    ensure!(
        mariadb_databases(&target_maria)? == "nvh_hana_blog,nvh_hana_shop",
        "MariaDB on the test host: {}",
        mariadb_databases(&target_maria)?
    );
    ensure!(
        connection_databases(&refreshed)
            == ["nvh_hana", "nvh_hana_blog", "nvh_hana_new", "nvh_hana_shop"],
        "the panel shows the databases of the copy as it is: {refreshed}"
    );

    // Deleting the test removes every database of the copy, and only those.
    panel(&rig, "DeleteTest", json!({"id": id}))?;
    wait_for_test(&rig, &id, "STATE_DELETED", Duration::from_secs(60))?;
    ensure!(
        postgres_databases(&target_pg)? == "nvh_hana_local"
            && mariadb_databases(&target_maria)?.is_empty(),
        "after the deletion: PostgreSQL {}, MariaDB {}",
        postgres_databases(&target_pg)?,
        mariadb_databases(&target_maria)?
    );
    drop(controller);
    Ok(())
}
