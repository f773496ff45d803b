//! Two customers on two old hosts with a database of the same name
//! (`nvn_wordpress`): the second customer's test never lands on the server
//! that holds the first one's copy. With one test host it is refused up
//! front, naming the database and not the other customer; with a second
//! test host it goes there. Both copies are then complete and separate, and
//! deleting one leaves the other intact. Real controller, agents,
//! PostgreSQL 15 and 18, real grpcurl.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::ensure;
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Rig};
use serde_json::json;
use support::{enrol, expect_refusal, list, panel, str_of, wait_for_test};

const DATABASE: &str = "nvn_wordpress";

fn account(name: &str) -> AccountSpec {
    AccountSpec {
        name: name.into(),
        password: format!("{name}-pw"),
        pg_databases: vec![DATABASE.into()],
        mariadb_databases: vec![],
        files: true,
    }
}

/// The copies `ListAccounts` shows: (account, host).
fn copies(rig: &Rig) -> anyhow::Result<Vec<(String, String)>> {
    let answer = rig.grpcurl_json_as(
        &rig.controller_access()?.panel,
        "navette.v1.Accounts/ListAccounts",
        &json!({}),
    )?;
    let mut copies: Vec<(String, String)> = list(&answer, "copies")
        .iter()
        .map(|c| (str_of(c, "name").to_owned(), str_of(c, "hostId").to_owned()))
        .collect();
    copies.sort();
    Ok(copies)
}

#[test]
fn a_copy_never_lands_where_another_accounts_database_name_is() -> anyhow::Result<()> {
    let rig = Rig::new("name_collisions")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let old_1 = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let old_2 = rig.add_namespace("shared-2", Ipv4Addr::new(192, 0, 2, 11))?;
    let test_1 = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 20))?;
    let test_2 = rig.add_namespace("test-2", Ipv4Addr::new(192, 0, 2, 21))?;
    let pg_old_1 = old_1.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg_old_2 = old_2.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg_test_1 = test_1.start_postgres(&rig, PgVersion::V18, 5432)?;
    let pg_test_2 = test_2.start_postgres(&rig, PgVersion::V18, 5432)?;
    rig.add_account(&old_1, account("nvn_alice"))?;
    rig.add_account(&old_2, account("nvn_bob"))?;
    // What each customer keeps in "their" wordpress.
    for (server, owner) in [(&pg_old_1, "nvn_alice"), (&pg_old_2, "nvn_bob")] {
        server.psql(
            DATABASE,
            &format!(
                "CREATE TABLE posts (id int PRIMARY KEY, author text);
                 INSERT INTO posts VALUES (1, '{owner}');
                 ALTER TABLE posts OWNER TO {owner};"
            ),
        )?;
    }
    enrol(&rig, &old_1, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &old_2, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_1, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "shared-2", "test-1"])?;
    for name in ["nvn_alice", "nvn_bob"] {
        rig.wait_until(
            &format!("{name}'s database in the inventory"),
            Duration::from_secs(60),
            || {
                let account =
                    rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": name}))?;
                Ok(list(&account, "databases").len() == 1)
            },
        )?;
    }

    let alice = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "collide-alice", "account": "nvn_alice", "migration_id": "postgresql-15-to-18"}),
    )?;
    let alice_id = str_of(&alice, "id").to_owned();
    ensure!(str_of(&alice, "testHostId") == "test-1", "{alice}");
    wait_for_test(&rig, &alice_id, "STATE_READY", Duration::from_secs(180))?;
    rig.wait_until(
        "alice's copy in test-1's inventory",
        Duration::from_secs(90),
        || Ok(copies(&rig)? == [("nvn_alice".to_owned(), "test-1".to_owned())]),
    )?;

    // Bob's wordpress would meet alice's copy on test-1: refused before
    // anything is copied, with the name, and without naming alice.
    let access = rig.controller_access()?;
    let refused = rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            r#"{"request_id": "collide-bob-1", "account": "nvn_bob", "migration_id": "postgresql-15-to-18"}"#,
            &access.api.to_string(),
            "navette.v1.Tests/TestMigration",
        ],
    )?;
    expect_refusal(
        &refused,
        "FailedPrecondition",
        &format!("test-1 already holds a PostgreSQL database named {DATABASE} for another account"),
    )?;
    ensure!(
        !String::from_utf8_lossy(&refused.stderr).contains("nvn_alice"),
        "the refusal names another customer: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": "nvn_bob", "migration_id": "postgresql-15-to-18"}),
    )?;
    ensure!(
        report.get("compatible").and_then(|c| c.as_bool()) != Some(true)
            && report
                .to_string()
                .contains("already holds a PostgreSQL database"),
        "the report says so beforehand: {report}"
    );

    // A second test host: bob's copy goes there.
    enrol(&rig, &test_2, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["test-2"])?;
    let bob = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "collide-bob-2", "account": "nvn_bob", "migration_id": "postgresql-15-to-18"}),
    )?;
    let bob_id = str_of(&bob, "id").to_owned();
    ensure!(str_of(&bob, "testHostId") == "test-2", "{bob}");
    wait_for_test(&rig, &bob_id, "STATE_READY", Duration::from_secs(180))?;

    // Each copy holds its own customer's rows, owned by its own role.
    let authors = |server: &navette_tests::Postgres| {
        server.psql(
            DATABASE,
            "SELECT author || ':' || tableowner FROM posts, pg_tables WHERE tablename = 'posts'",
        )
    };
    ensure!(authors(&pg_test_1)? == "nvn_alice:nvn_alice");
    ensure!(authors(&pg_test_2)? == "nvn_bob:nvn_bob");

    // Deleting bob's test leaves alice's copy as it was.
    panel(&rig, "DeleteTest", json!({"id": bob_id}))?;
    wait_for_test(&rig, &bob_id, "STATE_DELETED", Duration::from_secs(120))?;
    rig.wait_until(
        "bob's copy gone from test-2",
        Duration::from_secs(60),
        || {
            Ok(pg_test_2.psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{DATABASE}'"),
            )? == "0")
        },
    )?;
    ensure!(authors(&pg_test_1)? == "nvn_alice:nvn_alice");
    let alice = panel(&rig, "GetTest", json!({"id": alice_id}))?;
    ensure!(str_of(&alice, "state") == "STATE_READY", "{alice}");
    Ok(())
}
