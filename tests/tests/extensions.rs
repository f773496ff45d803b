//! An account whose database uses an extension the test host's PostgreSQL
//! cannot create (`pgcrypto`: Debian's PostgreSQL 15 has it, the rig's
//! PostgreSQL 18 does not) is told so before anything is copied: the
//! compatibility report is not compatible and names the extension and the
//! database, and `TestMigration` is refused with the same reason. An
//! account without such an extension is compatible, and its report lists
//! what its database uses, and every incompatibility of the migration item
//! by item, each not applying or not checked, with why. The report counts
//! the home as it is when the report is asked: a file added just before is
//! in its size. Real controller, agents, servers and grpcurl.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::ensure;
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Rig};
use serde_json::json;
use support::{enrol, list, panel, str_of};

const MIGRATION: &str = "postgresql-15-to-18";

#[test]
fn an_extension_the_target_lacks_is_reported_and_refused_before_any_copy() -> anyhow::Result<()> {
    let rig = Rig::new("extensions")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    let (source_pg, target_pg) = std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| shared.start_postgres(&rig, PgVersion::V15, 5432));
        let b = s.spawn(|| test_host.start_postgres(&rig, PgVersion::V18, 5432));
        let join = |what: &str, r: std::thread::Result<anyhow::Result<_>>| {
            r.map_err(|_| anyhow::anyhow!("starting {what} panicked"))?
        };
        Ok((join("pg15", a.join())?, join("pg18", b.join())?))
    })?;
    let (carol, dave) = ("nvx_carol", "nvx_dave");
    let mut homes = Vec::new();
    for name in [carol, dave] {
        let account = rig.add_account(
            &shared,
            AccountSpec {
                name: name.into(),
                password: format!("{name} pw"),
                pg_databases: vec![name.into()],
                ..AccountSpec::default()
            },
        )?;
        homes.push(account.home);
    }
    source_pg.psql(carol, "CREATE EXTENSION pgcrypto")?;
    ensure!(
        target_pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pgcrypto'"
        )? == "0",
        "the rig's PostgreSQL 18 is expected to lack pgcrypto"
    );

    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "test-1"])?;
    rig.wait_until(
        "carol's extension in the inventory",
        Duration::from_secs(30),
        || {
            let account =
                rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": carol}))?;
            Ok(list(&account, "databases")
                .iter()
                .any(|d| d.to_string().contains("pgcrypto")))
        },
    )?;

    // The report says the test cannot succeed, and why.
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": carol, "migration_id": MIGRATION}),
    )?;
    let text = report.to_string();
    ensure!(
        report.get("compatible").and_then(|c| c.as_bool()) != Some(true)
            && text.contains(&format!(
                "has no PostgreSQL server with the extensions database {carol} uses: pgcrypto cannot be created there"
            )),
        "carol's report: {report}"
    );
    let finding = format!(
        "the test cannot succeed until it is settled: database {carol} uses pgcrypto, which no PostgreSQL 18 test host offers"
    );
    ensure!(
        list(&report, "items").iter().any(|item| {
            str_of(item, "severity") == "SEVERITY_BLOCKING"
                && str_of(item, "incompatibilityId") == "extensions-not-offered"
                && str_of(item, "message").contains(&finding)
        }),
        "a blocking finding says why the test cannot succeed: {report}"
    );

    // TestMigration is refused with that reason, and nothing is copied.
    let access = rig.controller_access()?;
    let body =
        json!({"request_id": "r-carol", "account": carol, "migration_id": MIGRATION}).to_string();
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
        &format!("database {carol} uses pgcrypto, which no PostgreSQL 18 test host offers"),
    )?;
    let tests = panel(&rig, "ListTests", json!({"account": carol}))?;
    ensure!(
        list(&tests, "tests").is_empty(),
        "no test was made: {tests}"
    );
    ensure!(
        target_pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{carol}'")
        )? == "0",
        "nothing of carol's reached the test host"
    );

    // Dave uses only plpgsql, which every server has: compatible, and the
    // report lists what his database uses.
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": dave, "migration_id": MIGRATION}),
    )?;
    ensure!(
        report.get("compatible").and_then(|c| c.as_bool()) == Some(true),
        "dave's report: {report}"
    );
    ensure!(
        list(&report, "items").iter().any(|item| {
            str_of(item, "topic") == "database"
                && item.to_string().contains("uses extensions plpgsql")
        }),
        "dave's database item lists its extensions: {report}"
    );
    // Every incompatibility of the migration, item by item: none applies
    // to dave, and each says why, or what to check by hand.
    let catalogue = rig.grpcurl_json(
        "navette.v1.Catalogue/GetMigration",
        &json!({"id": MIGRATION}),
    )?;
    let incompatibilities = list(&catalogue, "incompatibilities");
    ensure!(
        incompatibilities.len() >= 8,
        "the migration lists its incompatibilities: {catalogue}"
    );
    ensure!(
        incompatibilities
            .iter()
            .all(|i| !str_of(i, "detect").is_empty()),
        "each incompatibility says how it is detected: {catalogue}"
    );
    let items = list(&report, "items");
    for incompatibility in &incompatibilities {
        let id = str_of(incompatibility, "id");
        let item = items
            .iter()
            .find(|item| str_of(item, "incompatibilityId") == id)
            .ok_or_else(|| anyhow::anyhow!("no item for {id} in dave's report: {report}"))?;
        let message = str_of(item, "message");
        ensure!(
            str_of(item, "severity") != "SEVERITY_BLOCKING"
                && (message.contains(": does not apply to this account: ")
                    || message.contains(": not checked: check by hand ")),
            "{id} for dave: {item}"
        );
    }
    let extensions = items
        .iter()
        .find(|item| str_of(item, "incompatibilityId") == "extensions-not-offered")
        .map(|item| str_of(item, "message"))
        .unwrap_or_default();
    ensure!(
        extensions.contains("every extension its databases use (plpgsql) is offered"),
        "dave's extensions were compared with the target's: {extensions}"
    );

    // A file added to dave's home just before the report is asked counts
    // (the agents' periodic walk of a home is every 15 minutes).
    let before = report["homeSizeBytes"]
        .as_str()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let added: u64 = 5 << 20;
    std::fs::write(homes[1].join("big-upload.bin"), vec![7u8; added as usize])?;
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": dave, "migration_id": MIGRATION}),
    )?;
    let after = report["homeSizeBytes"]
        .as_str()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    ensure!(
        after >= before + added,
        "the report's home size follows the new file: {before} then {after} bytes"
    );
    Ok(())
}
