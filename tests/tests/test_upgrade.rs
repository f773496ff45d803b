//! Tests recorded before tests ran on the workflow engine are not stranded
//! by the upgrade: the controller, restarted on a database as schema 6 left
//! it (tests rows with their own lease columns, no test workflows),
//! migrates it (0007) and carries on. A test whose expiry passed while the
//! controller was down is removed; another one takes the panel's refresh
//! and delete; the operator API's audit trail shows the upgrade, the step
//! runs and the commands.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::ensure;
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Rig};
use serde_json::json;
use support::{enrol, list, panel, str_of, wait_for_test};

const MIGRATION: &str = "postgresql-15-to-18";

/// The database as it was before migration 0007: the tests' workflows
/// gone, their own schedule and lease columns back, version 7 unapplied.
/// One test's expiry (its ttl, 7 days by default, after it was ready)
/// passed while the controller was down.
fn as_before_the_engine(expired: &str) -> String {
    format!(
        "BEGIN;
         DELETE FROM workflow_audit WHERE workflow_id IN (SELECT id FROM workflows WHERE kind = 'test');
         DELETE FROM workflow_events WHERE workflow_id IN (SELECT id FROM workflows WHERE kind = 'test');
         DELETE FROM workflows WHERE kind = 'test';
         ALTER TABLE tests ADD COLUMN next_run_at timestamptz NOT NULL DEFAULT now(),
                           ADD COLUMN lease_owner text,
                           ADD COLUMN lease_expires_at timestamptz;
         CREATE INDEX tests_due ON tests (next_run_at) WHERE step <> 'none';
         DELETE FROM schema_migrations WHERE version = 7;
         UPDATE tests SET ready_at = now() - interval '8 days',
                          expires_at = now() - interval '1 day' WHERE id = '{expired}';
         COMMIT;"
    )
}

#[test]
fn tests_recorded_before_the_engine_carry_on_after_the_upgrade() -> anyhow::Result<()> {
    let rig = Rig::new("test_upgrade")?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    shared.start_postgres(&rig, PgVersion::V15, 5432)?;
    test_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    for name in ["nvu_una", "nvu_ugo"] {
        rig.add_account(
            &shared,
            AccountSpec {
                name: name.into(),
                password: format!("{name}-pw"),
                pg_databases: vec![name.into()],
                mariadb_databases: vec![],
                files: true,
            },
        )?;
    }
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;
    let start = |account: &str| -> anyhow::Result<String> {
        let started = panel(
            &rig,
            "TestMigration",
            json!({"request_id": format!("r-{account}"), "account": account, "migration_id": MIGRATION}),
        )?;
        Ok(str_of(&started, "id").to_owned())
    };
    let (expiring, kept) = (start("nvu_una")?, start("nvu_ugo")?);
    for id in [&expiring, &kept] {
        wait_for_test(&rig, id, "STATE_READY", Duration::from_secs(120))?;
    }
    let expiring_home = test_host.accounts_dir().join("nvu_una");
    ensure!(expiring_home.exists(), "the first copy is on the test host");

    controller.kill9();
    controller
        .state_db()
        .psql("navette", &as_before_the_engine(&expiring))?;
    controller.restart()?;

    let upgraded = controller.state_db().psql(
        "navette",
        "SELECT string_agg(workflow_id, ',' ORDER BY workflow_id) FROM workflow_audit
         WHERE what = 'created' AND who = 'upgrade'",
    )?;
    let mut expected = [expiring.clone(), kept.clone()];
    expected.sort();
    ensure!(
        upgraded.trim() == expected.join(","),
        "every test got its workflow from its row: {upgraded:?}"
    );

    // The expiry that passed while the controller was down: the copy goes.
    wait_for_test(&rig, &expiring, "STATE_DELETED", Duration::from_secs(60))?;
    ensure!(!expiring_home.exists(), "the expired copy is removed");

    // The other one takes the panel's commands.
    let refreshing = panel(&rig, "RefreshTest", json!({"id": kept}))?;
    ensure!(
        str_of(&refreshing, "state") == "STATE_REFRESHING",
        "refresh: {refreshing}"
    );
    let refreshed = wait_for_test(&rig, &kept, "STATE_READY", Duration::from_secs(120))?;
    ensure!(
        refreshed.get("generation").and_then(|g| g.as_u64()) == Some(2),
        "a new generation: {refreshed}"
    );
    panel(&rig, "DeleteTest", json!({"id": kept}))?;
    wait_for_test(&rig, &kept, "STATE_DELETED", Duration::from_secs(60))?;
    ensure!(
        !test_host.accounts_dir().join("nvu_ugo").exists(),
        "the deleted copy is removed"
    );

    // The audit trail: the upgrade, each step run, the commands, the end.
    let trail = rig.grpcurl_json(
        "navette.v1.Workflows/ListWorkflowAudit",
        &json!({"id": kept}),
    )?;
    let entries: Vec<String> = list(&trail, "entries")
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                str_of(e, "what"),
                str_of(e, "step"),
                str_of(e, "who")
            )
        })
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.starts_with("event"))
        .collect();
    let steps: Vec<&str> = entries
        .iter()
        .filter(|line| line.starts_with("step"))
        .map(|line| line.split(' ').nth(1).unwrap_or_default())
        .collect();
    ensure!(
        entries.first().map(String::as_str) == Some("created upgrade"),
        "the trail begins with the upgrade: {entries:?}"
    );
    ensure!(
        steps == ["grant", "copy", "remove"],
        "each step ran once: {entries:?}"
    );
    let commands: Vec<&String> = entries
        .iter()
        .filter(|line| line.starts_with("command"))
        .collect();
    ensure!(
        commands == ["command panel", "command panel"],
        "the refresh and the delete, from the panel: {entries:?}"
    );
    ensure!(
        entries.last().is_some_and(|line| line.starts_with("done")),
        "the workflow ended: {entries:?}"
    );
    Ok(())
}
