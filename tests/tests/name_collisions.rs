//! Two customers on two old hosts, each with a PostgreSQL database named
//! `wordpress` owned by a role `wp`, tested at once onto one test host that
//! runs two PostgreSQL 18 servers: each copy goes to its own server, both
//! are complete and separate (each holds exactly its own customer's rows,
//! and the target's role ledger gives each `wp` to its account), and
//! deleting one test leaves the other's database, role (which still logs
//! in with its password) and rows intact. A third customer with the same
//! names, while both servers are taken, is refused up front, with the
//! names and without naming the others. Real controller, agents,
//! PostgreSQL 15 and 18, real grpcurl.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Postgres, Rig};
use serde_json::json;
use support::{enrol, expect_refusal, list, panel, str_of, wait_for_test};

const DATABASE: &str = "wordpress";
const ROLE: &str = "wp";
const MIGRATION: &str = "postgresql-15-to-18";

/// The password of `account`'s `wp` role on its old host.
fn wp_password(account: &str) -> String {
    format!("{account} wp pw")
}

/// Gives `account` (its home made by the rig) a `wordpress` database owned
/// by `wp`, a login role the account's own role is a member of, with the
/// posts only this customer wrote.
fn wordpress(rig: &Rig, server: &Postgres, account: &str) -> anyhow::Result<()> {
    let host = server.host().clone();
    rig.add_account(
        &host,
        AccountSpec {
            name: account.into(),
            password: format!("{account}-pw"),
            pg_databases: vec![],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    server.psql(
        "postgres",
        &format!(
            "CREATE ROLE {account} LOGIN PASSWORD '{account}-pw';
             CREATE ROLE {ROLE} LOGIN PASSWORD '{}';
             GRANT {ROLE} TO {account};
             CREATE DATABASE {DATABASE} OWNER {ROLE};",
            wp_password(account)
        ),
    )?;
    server.psql(
        DATABASE,
        &format!(
            "CREATE TABLE posts (id int PRIMARY KEY, author text NOT NULL);
             INSERT INTO posts SELECT g, '{account}' FROM generate_series(1, 3) g;
             ALTER TABLE posts OWNER TO {ROLE};
             GRANT SELECT ON posts TO {account};"
        ),
    )?;
    Ok(())
}

/// The authors of the posts in `server`'s `wordpress`, with the table's
/// owner: "<author>:<owner>" per row.
fn posts(server: &Postgres) -> anyhow::Result<String> {
    server.psql(
        DATABASE,
        "SELECT string_agg(p.author || ':' || t.tableowner, ',' ORDER BY p.id)
           FROM posts p, pg_tables t WHERE t.tablename = 'posts'",
    )
}

/// The account `server`'s role ledger gives `wp`, or "" when none.
fn ledger_of_wp(server: &Postgres) -> anyhow::Result<String> {
    server.psql(
        "postgres",
        &format!(
            "SELECT coalesce((SELECT account FROM navette.copy_roles WHERE role = '{ROLE}'), '')"
        ),
    )
}

/// Logs in to `server`'s `wordpress` over TCP as `wp` with `password`, as
/// the customer would, and reads the authors.
fn authors_as_wp(rig: &Rig, server: &Postgres, password: &str) -> anyhow::Result<Vec<String>> {
    let config = server.tcp_config(ROLE, password, DATABASE);
    rig.run_in(rig.client(), || async move {
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .context("wp logging in to the copy")?;
        let connection = tokio::spawn(connection);
        let authors = client
            .query("SELECT author FROM posts ORDER BY id", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        drop(client);
        connection.await??;
        Ok(authors)
    })
}

fn test_migration(
    rig: &Rig,
    request_id: &str,
    account: &str,
) -> anyhow::Result<std::process::Output> {
    let access = rig.controller_access()?;
    let request = json!({"request_id": request_id, "account": account, "migration_id": MIGRATION});
    rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            &request.to_string(),
            &access.api.to_string(),
            "navette.v1.Tests/TestMigration",
        ],
    )
}

#[test]
fn two_customers_wordpress_share_a_test_host_on_two_servers() -> anyhow::Result<()> {
    let rig = Rig::new("name_collisions")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let old_1 = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let old_2 = rig.add_namespace("shared-2", Ipv4Addr::new(192, 0, 2, 11))?;
    let old_3 = rig.add_namespace("shared-3", Ipv4Addr::new(192, 0, 2, 12))?;
    let test = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 20))?;
    let pg_old_1 = old_1.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg_old_2 = old_2.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg_old_3 = old_3.start_postgres(&rig, PgVersion::V15, 5432)?;
    // The test host runs two PostgreSQL 18 servers ("main" and "pg5433").
    let pg_test_main = test.start_postgres(&rig, PgVersion::V18, 5432)?;
    let pg_test_second = test.start_postgres(&rig, PgVersion::V18, 5433)?;
    let (alice, bob, carol) = ("nvn_wpalice", "nvn_wpbob", "nvn_wpcarol");
    wordpress(&rig, &pg_old_1, alice)?;
    wordpress(&rig, &pg_old_2, bob)?;
    wordpress(&rig, &pg_old_3, carol)?;
    enrol(&rig, &old_1, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &old_2, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &old_3, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "shared-2", "shared-3", "test-1"])?;
    for name in [alice, bob, carol] {
        rig.wait_until(
            &format!("{name}'s wordpress in the inventory"),
            Duration::from_secs(60),
            || {
                let account =
                    rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": name}))?;
                Ok(list(&account, "databases")
                    .iter()
                    .any(|d| str_of(d, "name") == DATABASE && str_of(d, "owner") == ROLE))
            },
        )?;
    }

    // Both customers press Test at once: neither copy exists yet when the
    // second is placed.
    let started_alice = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "wp-alice", "account": alice, "migration_id": MIGRATION}),
    )?;
    let started_bob = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "wp-bob", "account": bob, "migration_id": MIGRATION}),
    )?;
    let (alice_id, bob_id) = (
        str_of(&started_alice, "id").to_owned(),
        str_of(&started_bob, "id").to_owned(),
    );
    for started in [&started_alice, &started_bob] {
        ensure!(str_of(started, "testHostId") == "test-1", "{started}");
        ensure!(
            !matches!(str_of(started, "state"), "STATE_READY"),
            "a copy finished before the second test was placed: {started}"
        );
    }
    wait_for_test(&rig, &alice_id, "STATE_READY", Duration::from_secs(240))?;
    wait_for_test(&rig, &bob_id, "STATE_READY", Duration::from_secs(240))?;

    // Each server holds exactly one customer's wordpress, with that
    // customer's rows, owned by that customer's wp.
    let expected = |account: &str| format!("{account}:{ROLE},{account}:{ROLE},{account}:{ROLE}");
    ensure!(
        posts(&pg_test_main)? == expected(alice),
        "main: {}",
        posts(&pg_test_main)?
    );
    ensure!(
        posts(&pg_test_second)? == expected(bob),
        "pg5433: {}",
        posts(&pg_test_second)?
    );
    // The ledger of each server gives its wp to its account.
    ensure!(ledger_of_wp(&pg_test_main)? == alice);
    ensure!(ledger_of_wp(&pg_test_second)? == bob);
    // Each wp logs in with its own customer's password, on its own server.
    ensure!(authors_as_wp(&rig, &pg_test_main, &wp_password(alice))? == [alice; 3]);
    ensure!(authors_as_wp(&rig, &pg_test_second, &wp_password(bob))? == [bob; 3]);
    ensure!(
        authors_as_wp(&rig, &pg_test_main, &wp_password(bob)).is_err(),
        "bob's wp password opens alice's copy"
    );

    // A third wordpress with a wp, while both servers hold one for another
    // account: refused before anything is copied, with the name, and
    // without naming the other customers.
    let refused = test_migration(&rig, "wp-carol", carol)?;
    expect_refusal(
        &refused,
        "FailedPrecondition",
        &format!(
            "test-1 already holds a PostgreSQL database named {DATABASE} for another account on every PostgreSQL server that could receive it"
        ),
    )?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !stderr.contains(alice) && !stderr.contains(bob),
        "the refusal names another customer: {stderr}"
    );
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": carol, "migration_id": MIGRATION}),
    )?;
    ensure!(
        report.get("compatible").and_then(|c| c.as_bool()) != Some(true)
            && report
                .to_string()
                .contains("already holds a PostgreSQL database named wordpress"),
        "the report says so beforehand: {report}"
    );

    // Deleting bob's test removes his copy, his wp and its ledger row from
    // pg5433, and leaves alice's copy as it was.
    panel(&rig, "DeleteTest", json!({"id": bob_id}))?;
    wait_for_test(&rig, &bob_id, "STATE_DELETED", Duration::from_secs(120))?;
    rig.wait_until(
        "bob's copy and wp gone from pg5433",
        Duration::from_secs(60),
        || {
            Ok(pg_test_second.psql(
                "postgres",
                &format!(
                    "SELECT (SELECT count(*) FROM pg_database WHERE datname = '{DATABASE}')
                          + (SELECT count(*) FROM pg_roles WHERE rolname = '{ROLE}')"
                ),
            )? == "0")
        },
    )?;
    ensure!(
        ledger_of_wp(&pg_test_second)?.is_empty(),
        "bob's ledger row stays"
    );
    ensure!(posts(&pg_test_main)? == expected(alice));
    ensure!(ledger_of_wp(&pg_test_main)? == alice);
    ensure!(authors_as_wp(&rig, &pg_test_main, &wp_password(alice))? == [alice; 3]);
    let alice_test = panel(&rig, "GetTest", json!({"id": alice_id}))?;
    ensure!(
        str_of(&alice_test, "state") == "STATE_READY",
        "{alice_test}"
    );
    Ok(())
}
