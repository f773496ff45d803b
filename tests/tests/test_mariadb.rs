//! *Test* of the MariaDB migration onto its target version: an account
//! whose MariaDB 10.11 database has a second user with narrower grants, a
//! view, a function, a procedure and a trigger is tested onto a test host
//! running MariaDB 11.8. The copy is checked as a customer would: every
//! table holds the same rows, the view and the routines answer the same,
//! the trigger still fires, each user logs in with its own password, and
//! the read-only user is still refused a write.

mod support;

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, MariaDb, Rig};
use serde_json::{Value, json};
use support::{list, panel, str_of, wait_for_test};

const ACCOUNT: &str = "nvm_mia";
const PASSWORD: &str = "mia-Pw-1";
const READER: &str = "nvm_mia_ro";
const READER_PASSWORD: &str = "mia-Reader-2";
const DATABASE: &str = "nvm_mia_shop";

/// The result of a server start on another thread.
fn join<T>(started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("a server start panicked"))?
}

/// `sql` run by `user` with `password` over TCP from the client namespace,
/// on the server at `address:port`.
fn as_user(
    rig: &Rig,
    address: &str,
    port: u64,
    user: &str,
    password: &str,
    sql: &str,
) -> anyhow::Result<Output> {
    Ok(rig
        .client()
        .command("mariadb")
        .args(["--no-defaults", "-h", address, "-P", &port.to_string()])
        .args([
            "-u",
            user,
            &format!("-p{password}"),
            DATABASE,
            "-N",
            "-e",
            sql,
        ])
        .output()?)
}

/// What a customer sees of the database on `server`: every table's rows,
/// the view's rows, what the function and the procedure return, and the
/// list of routines and triggers.
fn contents(server: &MariaDb) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    for table in ["items", "orders", "audit"] {
        seen.push(format!(
            "{table}: {}",
            server.sql(&format!("SELECT * FROM {DATABASE}.{table} ORDER BY 1"))?
        ));
    }
    seen.push(format!(
        "view: {}",
        server.sql(&format!("SELECT * FROM {DATABASE}.order_totals ORDER BY 1"))?
    ));
    seen.push(format!(
        "function: {}",
        server.sql(&format!("SELECT {DATABASE}.with_tax(100)"))?
    ));
    seen.push(format!(
        "procedure: {}",
        server.sql(&format!("CALL {DATABASE}.count_orders()"))?
    ));
    seen.push(format!(
        "routines: {}",
        server.sql(&format!(
            "SELECT GROUP_CONCAT(CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME, ' ', DEFINER)
                                 ORDER BY ROUTINE_NAME)
             FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{DATABASE}'"
        ))?
    ));
    seen.push(format!(
        "triggers: {}",
        server.sql(&format!(
            "SELECT GROUP_CONCAT(CONCAT(TRIGGER_NAME, ' ', EVENT_MANIPULATION, ' ', DEFINER)
                                 ORDER BY TRIGGER_NAME)
             FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{DATABASE}'"
        ))?
    ));
    Ok(seen)
}

#[test]
fn a_mariadb_account_is_tested_onto_mariadb_11_8_with_its_users_and_objects() -> anyhow::Result<()>
{
    let rig = Rig::new("test_mariadb")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    let (source, target) = std::thread::scope(|s| {
        let a = s.spawn(|| shared.start_mariadb(&rig));
        let b = s.spawn(|| test_host.start_mariadb_11_8(&rig));
        anyhow::Ok((join(a.join())?, join(b.join())?))
    })?;
    rig.add_account(
        &shared,
        AccountSpec {
            name: ACCOUNT.into(),
            password: PASSWORD.into(),
            mariadb_databases: vec![DATABASE.into()],
            files: true,
            ..AccountSpec::default()
        },
    )?;
    // What a real shop's database holds beyond tables.
    source.sql(&format!(
        "USE {DATABASE};
         CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, item INT NOT NULL,
                              amount DECIMAL(10,2) NOT NULL, note VARCHAR(40));
         CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, what VARCHAR(80));
         INSERT INTO orders (item, amount, note) VALUES (1, 12.50, 'first'), (2, 3.25, NULL),
                                                        (1, 7.00, 'élan ✓');
         CREATE DEFINER = '{ACCOUNT}'@'%' VIEW order_totals AS
             SELECT item, SUM(amount) AS total, COUNT(*) AS n FROM orders GROUP BY item;
         CREATE DEFINER = '{ACCOUNT}'@'%' FUNCTION with_tax(x DECIMAL(10,2))
             RETURNS DECIMAL(10,2) DETERMINISTIC RETURN x * 1.2;
         CREATE DEFINER = '{ACCOUNT}'@'%' PROCEDURE count_orders()
             SELECT COUNT(*) FROM orders;
         CREATE DEFINER = '{ACCOUNT}'@'%' TRIGGER orders_audit AFTER INSERT ON orders
             FOR EACH ROW INSERT INTO audit (what) VALUES (CONCAT('order ', NEW.id));
         CREATE USER '{READER}'@'%' IDENTIFIED BY '{READER_PASSWORD}';
         GRANT SELECT ON {DATABASE}.* TO '{READER}'@'%';"
    ))?;
    support::enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    support::enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;

    let started = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-maria", "account": ACCOUNT, "migration_id": "mariadb-10.11-to-11.8"}),
    )?;
    let id = str_of(&started, "id").to_owned();
    let ready = wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(120))?;
    let version = target.server_version()?;
    ensure!(
        version.starts_with("11.8."),
        "the test host runs MariaDB 11.8: {version}"
    );
    let copy: Value = list(&ready["connection"], "databases")
        .into_iter()
        .find(|d| str_of(d, "name") == DATABASE)
        .with_context(|| format!("{DATABASE} in the test's connection: {ready}"))?;
    let address = str_of(&copy, "address").to_owned();
    let port = copy["port"].as_u64().unwrap_or_default();
    ensure!(
        address == target.address().to_string() && port == u64::from(target.port()),
        "the copy is on the test host's MariaDB 11.8: {copy}"
    );

    let before = contents(&source)?;
    let after = contents(&target)?;
    ensure!(
        before == after,
        "the copy shows what the source shows:\n source: {before:#?}\n copy:   {after:#?}"
    );
    ensure!(
        after
            .iter()
            .any(|line| line.contains("orders_audit INSERT")),
        "the trigger is on the copy: {after:#?}"
    );

    // Each user logs in to the copy with its own password; the reader
    // reads but may not write, the account writes and its trigger fires.
    let read = as_user(
        &rig,
        &address,
        port,
        READER,
        READER_PASSWORD,
        "SELECT COUNT(*) FROM orders",
    )?;
    ensure!(
        read.status.success() && String::from_utf8_lossy(&read.stdout).trim() == "3",
        "the reader reads the copy: {} {}",
        String::from_utf8_lossy(&read.stdout),
        String::from_utf8_lossy(&read.stderr)
    );
    let refused = as_user(
        &rig,
        &address,
        port,
        READER,
        READER_PASSWORD,
        "INSERT INTO orders (item, amount) VALUES (9, 1)",
    )?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("INSERT command denied"),
        "the reader may still not write: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let wrong = as_user(&rig, &address, port, READER, PASSWORD, "SELECT 1")?;
    ensure!(
        !wrong.status.success(),
        "another user's password does not open the reader's login"
    );
    let written = as_user(
        &rig,
        &address,
        port,
        ACCOUNT,
        PASSWORD,
        "INSERT INTO orders (item, amount) VALUES (3, 5.00);
         SELECT what FROM audit ORDER BY id DESC LIMIT 1",
    )?;
    ensure!(
        written.status.success() && String::from_utf8_lossy(&written.stdout).trim() == "order 4",
        "the account writes to its copy and the trigger fires there: {} {}",
        String::from_utf8_lossy(&written.stdout),
        String::from_utf8_lossy(&written.stderr)
    );
    ensure!(
        source.sql(&format!("SELECT COUNT(*) FROM {DATABASE}.orders"))? == "3",
        "a write to the copy never reaches the source"
    );

    panel(&rig, "DeleteTest", json!({"id": id}))?;
    wait_for_test(&rig, &id, "STATE_DELETED", Duration::from_secs(60))?;
    ensure!(
        target.sql(&format!(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{DATABASE}'"
        ))? == "0",
        "DeleteTest removes the copy"
    );
    Ok(())
}
