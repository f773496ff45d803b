//! *Migrate*'s bad input (issue 10, item 8): each request is refused with
//! its reason, and nothing changes: no acknowledgement; an unknown account
//! or migration; the account's own host, a host that is not a shared one,
//! one without the target version, or without room, as the target; a
//! database server that cannot be a replication source (MariaDB without a
//! ROW binary log); no successful recent test when the policy wants one; a
//! second migration while one is in flight; a test being refreshed. The
//! migration accepted on the way is cancelled before its point of no
//! return and rolls back.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Rig};
use serde_json::{Value, json};
use support::{enrol, list, panel, str_of, wait_for_test};

const ANN: &str = "nvr_ann";
const BOB: &str = "nvr_bob";

/// The result of a server start on another thread.
fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

/// Calls `navette.v1.Migrations/<method>` as the control panel.
fn migrations(rig: &Rig, method: &str, request: Value) -> anyhow::Result<Value> {
    let access = rig.controller_access()?;
    rig.grpcurl_json_as(
        &access.panel,
        &format!("navette.v1.Migrations/{method}"),
        &request,
    )
}

/// `Migrate` with `request` must be refused with `code` and `reason`.
fn refused(rig: &Rig, request: Value, code: &str, reason: &str) -> anyhow::Result<()> {
    let access = rig.controller_access()?;
    let body = request.to_string();
    let output = rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            &body,
            &access.api.to_string(),
            "navette.v1.Migrations/Migrate",
        ],
    )?;
    support::expect_refusal(&output, code, reason).with_context(|| format!("refusing {request}"))
}

/// How many workflows of kind `migrate` the controller has.
fn migration_workflows(rig: &Rig) -> anyhow::Result<usize> {
    let answer = rig.grpcurl_json(
        "navette.v1.Workflows/ListWorkflows",
        &json!({"kind": "migrate", "include_ended": true}),
    )?;
    Ok(list(&answer, "workflows").len())
}

fn ask(account: &str, migration: &str, request_id: &str) -> Value {
    json!({
        "request_id": request_id,
        "account": account,
        "migration_id": migration,
        "acknowledge_irreversible": true,
    })
}

#[test]
fn bad_migrations_are_refused_with_their_reason_and_change_nothing() -> anyhow::Result<()> {
    let rig = Rig::new("migrate_refusals")?;
    // The documented default: a recent successful test is required.
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let old = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let new = rig.add_namespace("shared-new", Ipv4Addr::new(192, 0, 2, 11))?;
    let bare = rig.add_namespace("shared-bare", Ipv4Addr::new(192, 0, 2, 13))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let a = s.spawn(|| old.start_postgres(&rig, PgVersion::V15, 5432));
        // Started without a binary log: no replication source.
        let b = s.spawn(|| old.start_mariadb(&rig));
        let c = s.spawn(|| new.start_postgres(&rig, PgVersion::V18, 5432));
        let d = s.spawn(|| test_host.start_postgres(&rig, PgVersion::V18, 5432));
        join("pg15", a.join())?;
        join("mariadb", b.join())?;
        join("pg18", c.join())?;
        join("pg18 test", d.join())?;
        Ok(())
    })?;
    rig.add_account(
        &old,
        AccountSpec {
            name: ANN.into(),
            password: "ann-S3cret".into(),
            pg_databases: vec!["nvr_ann_shop".into()],
            files: true,
            ..AccountSpec::default()
        },
    )?;
    rig.add_account(
        &old,
        AccountSpec {
            name: BOB.into(),
            password: "bob-S3cret".into(),
            mariadb_databases: vec!["nvr_bob".into()],
            ..AccountSpec::default()
        },
    )?;
    let _old_agent = enrol(&rig, &old, AgentKind::Shared, "2024.1")?;
    let _new_agent = enrol(&rig, &new, AgentKind::Shared, "2026.1")?;
    let _bare_agent = enrol(&rig, &bare, AgentKind::Shared, "2026.1")?;
    let test_agent = enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(
        &rig,
        &["shared-old", "shared-new", "shared-bare", "test-1"],
    )?;
    rig.wait_until(
        "the accounts' databases in the inventory",
        Duration::from_secs(30),
        || {
            let ann = rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ANN}))?;
            let bob = rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": BOB}))?;
            Ok(list(&ann, "databases").len() == 1 && list(&bob, "databases").len() == 1)
        },
    )?;
    let pg = "postgresql-15-to-18";

    let mut unacknowledged = ask(ANN, pg, "r-1");
    unacknowledged["acknowledge_irreversible"] = json!(false);
    refused(
        &rig,
        unacknowledged,
        "InvalidArgument",
        "acknowledge_irreversible must be true",
    )?;
    refused(
        &rig,
        ask("nobody", pg, "r-2"),
        "NotFound",
        "account \"nobody\" not found",
    )?;
    refused(
        &rig,
        ask(ANN, "oracle-upgrade", "r-3"),
        "NotFound",
        "migration \"oracle-upgrade\" not found",
    )?;
    let mut own = ask(ANN, pg, "r-4");
    own["target_host_id"] = json!("shared-old");
    refused(&rig, own, "FailedPrecondition", "is the account's own host")?;
    refused(
        &rig,
        ask(BOB, "mariadb-10.11-to-11.8", "r-5"),
        "FailedPrecondition",
        "cannot be a replication source",
    )?;
    // The compatibility report says so too.
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": BOB, "migration_id": "mariadb-10.11-to-11.8"}),
    )?;
    ensure!(
        list(&report, "items")
            .iter()
            .any(|item| str_of(item, "topic") == "replication"
                && str_of(item, "message").contains("cannot be a replication source")),
        "the report names the server that cannot replicate: {report}"
    );
    refused(
        &rig,
        ask(ANN, pg, "r-6"),
        "FailedPrecondition",
        "has no successful test of postgresql-15-to-18",
    )?;

    // A successful test satisfies the policy.
    let test = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "t-1", "account": ANN, "migration_id": pg}),
    )?;
    let test_id = str_of(&test, "id").to_owned();
    wait_for_test(&rig, &test_id, "STATE_READY", Duration::from_secs(120))?;

    let mut not_shared = ask(ANN, pg, "r-7");
    not_shared["target_host_id"] = json!("test-1");
    refused(
        &rig,
        not_shared,
        "FailedPrecondition",
        "test-1 is not a shared host",
    )?;
    let mut no_version = ask(ANN, pg, "r-8");
    no_version["target_host_id"] = json!("shared-bare");
    refused(
        &rig,
        no_version,
        "FailedPrecondition",
        "shared-bare runs no PostgreSQL 18",
    )?;
    ensure!(
        migration_workflows(&rig)? == 0,
        "a refused request started nothing"
    );

    // One migration in flight: a second one is refused; the first is
    // cancelled before its point of no return and rolls back.
    let first = migrations(&rig, "Migrate", ask(ANN, pg, "r-9"))?;
    let first_id = str_of(&first, "id").to_owned();
    ensure!(
        str_of(&first, "targetHostId") == "shared-new",
        "placed on the shared host with PostgreSQL 18: {first}"
    );
    let again = migrations(&rig, "Migrate", ask(ANN, pg, "r-9"))?;
    ensure!(
        str_of(&again, "id") == first_id,
        "a retried request id returns the same migration"
    );
    refused(
        &rig,
        ask(ANN, pg, "r-10"),
        "FailedPrecondition",
        "in flight",
    )?;
    let cancelled = migrations(&rig, "CancelMigration", json!({"id": first_id}))?;
    ensure!(str_of(&cancelled, "id") == first_id, "{cancelled}");
    let mut last = Value::Null;
    rig.wait_until(
        "the cancelled migration rolled back",
        Duration::from_secs(120),
        || {
            last = migrations(&rig, "GetMigration", json!({"id": first_id}))?;
            Ok(str_of(&last, "state") == "STATE_CANCELLED")
        },
    )
    .with_context(|| format!("last seen: {last}"))?;
    let ann = rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ANN}))?;
    ensure!(
        str_of(&ann, "hostId") == "shared-old",
        "the account stays where it was: {ann}"
    );

    // A target without room.
    rig.grpcurl_json(
        "navette.v1.Hosts/SetHostClass",
        &json!({"id": "shared-new", "declared_disk_bytes": 1024}),
    )?;
    refused(
        &rig,
        ask(ANN, pg, "r-11"),
        "ResourceExhausted",
        "no shared host has room",
    )?;

    // A test being refreshed: its test host does not answer, so the
    // refresh stays under way.
    test_agent.kill9();
    panel(&rig, "RefreshTest", json!({"id": test_id}))?;
    refused(
        &rig,
        ask(ANN, pg, "r-12"),
        "FailedPrecondition",
        "refreshing",
    )?;
    ensure!(
        migration_workflows(&rig)? == 1,
        "only the one accepted migration exists"
    );
    Ok(())
}
