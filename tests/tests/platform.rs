//! The foundation seen from outside: agents on three real hosts enrol with
//! join tokens and report what their hosts hold, and an operator sees it
//! all through the real grpcurl over mutual TLS (reflection, health,
//! catalogue, hosts, accounts).

mod support;

use std::net::Ipv4Addr;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Rig};
use serde_json::json;
use support::{enrol, host, list, str_of};

#[test]
fn three_hosts_enrol_and_operators_see_them_with_grpcurl() -> anyhow::Result<()> {
    let rig = Rig::new("platform")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let test = rig.add_namespace("test-new", Ipv4Addr::new(192, 0, 2, 11))?;
    let dedicated = rig.add_namespace("dedicated-1", Ipv4Addr::new(192, 0, 2, 12))?;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let a = scope.spawn(|| shared.start_postgres(&rig, PgVersion::V15, 5432).map(drop));
        let b = scope.spawn(|| shared.start_mariadb(&rig).map(drop));
        let c = scope.spawn(|| test.start_postgres(&rig, PgVersion::V18, 5432).map(drop));
        let d = scope.spawn(|| {
            dedicated
                .start_postgres(&rig, PgVersion::V15, 5432)
                .map(drop)
        });
        for handle in [a, b, c, d] {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("server start panicked"))??;
        }
        Ok(())
    })?;
    rig.add_account(
        &shared,
        AccountSpec {
            name: "nvp_alice".into(),
            password: "alice-pw".into(),
            pg_databases: vec!["nvp_alice".into(), "nvp_alice_shop".into()],
            mariadb_databases: vec!["nvp_alice_blog".into()],
            files: true,
        },
    )?;
    rig.add_account(
        &dedicated,
        AccountSpec {
            name: "nvp_bob".into(),
            password: "bob-pw".into(),
            pg_databases: vec!["nvp_bob".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test, AgentKind::Test, "2026.1")?;
    enrol(&rig, &dedicated, AgentKind::Dedicated, "2024.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "test-new", "dedicated-1"])?;

    // Each host with its kind, PostgreSQL version and address.
    for (id, kind, pg_major, address) in [
        ("shared-old", "HOST_KIND_SHARED", "15.", "192.0.2.10"),
        ("test-new", "HOST_KIND_TEST", "18.", "192.0.2.11"),
        ("dedicated-1", "HOST_KIND_DEDICATED", "15.", "192.0.2.12"),
    ] {
        let host = host(&rig, id)?;
        ensure!(str_of(&host, "kind") == kind, "{id}: kind in {host}");
        let addresses = list(&host, "addresses");
        ensure!(
            addresses.iter().any(|a| a == address),
            "{id}: address {address} in {host}"
        );
        let servers = list(&host, "databaseServers");
        let postgres = servers
            .iter()
            .find(|s| str_of(s, "engine") == "DATABASE_ENGINE_POSTGRESQL")
            .with_context(|| format!("{id}: no PostgreSQL server in {host}"))?;
        ensure!(
            str_of(postgres, "version").starts_with(pg_major)
                && postgres["reachable"] == json!(true),
            "{id}: PostgreSQL {pg_major}x reachable, got {postgres}"
        );
        ensure!(
            host["diskTotalBytes"].as_str().is_some_and(|n| n != "0"),
            "{id}: disk size in {host}"
        );
    }
    let shared_host = host(&rig, "shared-old")?;
    let mariadb = list(&shared_host, "databaseServers")
        .into_iter()
        .find(|s| str_of(s, "engine") == "DATABASE_ENGINE_MARIADB")
        .context("shared-old reports its MariaDB")?;
    ensure!(
        str_of(&mariadb, "version").starts_with("10.11"),
        "MariaDB 10.11: {mariadb}"
    );

    // The accounts found on them, with their databases.
    let accounts = list(
        &rig.grpcurl_json("navette.v1.Accounts/ListAccounts", &json!({}))?,
        "accounts",
    );
    let alice = accounts
        .iter()
        .find(|a| str_of(a, "name") == "nvp_alice")
        .context("nvp_alice is listed")?;
    ensure!(
        str_of(alice, "hostId") == "shared-old",
        "alice lives on shared-old: {alice}"
    );
    let mut databases: Vec<(String, String)> = list(alice, "databases")
        .iter()
        .map(|d| (str_of(d, "engine").to_owned(), str_of(d, "name").to_owned()))
        .collect();
    databases.sort();
    ensure!(
        databases
            == vec![
                (
                    "DATABASE_ENGINE_MARIADB".to_owned(),
                    "nvp_alice_blog".to_owned()
                ),
                (
                    "DATABASE_ENGINE_POSTGRESQL".to_owned(),
                    "nvp_alice".to_owned()
                ),
                (
                    "DATABASE_ENGINE_POSTGRESQL".to_owned(),
                    "nvp_alice_shop".to_owned()
                ),
            ],
        "alice's databases: {databases:?}"
    );
    ensure!(
        alice["homeFiles"].as_str().is_some_and(|n| n != "0"),
        "alice's home files are counted: {alice}"
    );
    let bob = rig.grpcurl_json(
        "navette.v1.Accounts/GetAccount",
        &json!({"name": "nvp_bob"}),
    )?;
    ensure!(
        str_of(&bob, "hostId") == "dedicated-1",
        "bob lives on dedicated-1: {bob}"
    );
    ensure!(
        list(&bob, "databases").len() == 1,
        "bob has one database: {bob}"
    );

    // grpcurl discovers the API through reflection (it asks for v1alpha).
    let access = rig.controller_access()?;
    let api = access.api.to_string();
    let listed = rig.grpcurl(&[&api, "list"])?;
    let services = String::from_utf8_lossy(&listed.stdout);
    for service in [
        "grpc.health.v1.Health",
        "navette.v1.Catalogue",
        "navette.v1.Accounts",
        "navette.v1.Hosts",
        "navette.v1.JoinTokens",
    ] {
        ensure!(
            services.lines().any(|l| l == service),
            "grpcurl list shows {service}: {services}"
        );
    }
    let described = rig.grpcurl(&[&api, "describe", "navette.v1.Hosts.ListHosts"])?;
    ensure!(
        String::from_utf8_lossy(&described.stdout).contains("rpc ListHosts"),
        "describe works: {}",
        String::from_utf8_lossy(&described.stderr)
    );
    let health = rig.grpcurl_json("grpc.health.v1.Health/Check", &json!({}))?;
    ensure!(str_of(&health, "status") == "SERVING", "health: {health}");

    // The catalogue, whole and for one account or host.
    let ids = |answer: serde_json::Value| -> Vec<String> {
        list(&answer, "migrations")
            .iter()
            .map(|m| str_of(m, "id").to_owned())
            .collect()
    };
    let all = ids(rig.grpcurl_json("navette.v1.Catalogue/ListMigrations", &json!({}))?);
    ensure!(
        all == [
            "mariadb-10.11-to-11.8",
            "postgresql-15-to-18",
            "stack-2024.1-to-2026.1"
        ],
        "catalogue: {all:?}"
    );
    let for_alice = ids(rig.grpcurl_json_as(
        &access.panel,
        "navette.v1.Catalogue/ListMigrations",
        &json!({"account": "nvp_alice"}),
    )?);
    ensure!(
        for_alice == all,
        "alice uses PostgreSQL 15, MariaDB 10.11 and stack 2024.1: {for_alice:?}"
    );
    let for_bob = ids(rig.grpcurl_json_as(
        &access.panel,
        "navette.v1.Catalogue/ListMigrations",
        &json!({"account": "nvp_bob"}),
    )?);
    ensure!(
        for_bob == ["postgresql-15-to-18", "stack-2024.1-to-2026.1"],
        "bob has no MariaDB: {for_bob:?}"
    );
    let for_test_host = ids(rig.grpcurl_json(
        "navette.v1.Catalogue/ListMigrations",
        &json!({"host_id": "test-new"}),
    )?);
    ensure!(
        for_test_host.is_empty(),
        "the new-stack PostgreSQL 18 host needs nothing: {for_test_host:?}"
    );
    let migration = rig.grpcurl_json_as(
        &access.panel,
        "navette.v1.Catalogue/GetMigration",
        &json!({"id": "postgresql-15-to-18"}),
    )?;
    let incompatibilities = list(&migration, "incompatibilities");
    ensure!(
        incompatibilities
            .first()
            .is_some_and(|i| i["important"] == json!(true)),
        "important incompatibilities come first: {migration}"
    );
    ensure!(
        str_of(&migration, "documentation").contains("Test"),
        "documentation is served"
    );
    Ok(())
}
