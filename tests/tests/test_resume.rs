//! The *Test* copy under faults: a link cut in the middle of a copy, which
//! resumes without starting over; controllers killed mid-copy, with a second
//! controller sharing the database, where every step still completes once.

mod support;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Rig};
use serde_json::json;
use support::{enrol, str_of};

#[test]
fn a_cut_link_and_killed_controllers_do_not_restart_the_copy() -> anyhow::Result<()> {
    let rig = Rig::new("test_resume")?;
    let first = support::controller(&rig, ControllerSpec::default())?;
    let second = first.start_second(&rig, 7543, 7544)?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    shared.start_postgres(&rig, PgVersion::V15, 5432)?;
    test_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let erin = rig.add_account(
        &shared,
        AccountSpec {
            name: "nvf_erin".into(),
            password: "erin-pw".into(),
            pg_databases: vec!["nvf_erin".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    support::random_file(&erin.home.join("archive.bin"), 300, &erin.name)?;
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;
    // 300 MiB at 160 Mbit/s: about 15 s of copying, time to break things.
    let shaped = Command::new("ip")
        .args([
            "netns",
            "exec",
            shared.name(),
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            "160mbit",
            "burst",
            "256kb",
            "latency",
            "50ms",
        ])
        .status()?;
    ensure!(shaped.success(), "shaping the source's link");

    let started = support::panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-resume", "account": "nvf_erin", "migration_id": "postgresql-15-to-18"}),
    )?;
    let id = str_of(&started, "id").to_owned();
    rig.wait_until("the copy is under way", Duration::from_secs(60), || {
        let test = support::panel(&rig, "GetTest", json!({"id": id}))?;
        Ok(support::counter(&test, "bytesDone") > 20 << 20)
    })?;

    // Cut the test host's link for a few seconds.
    test_host.link_down()?;
    std::thread::sleep(Duration::from_secs(4));
    test_host.link_up()?;

    // Kill the first controller mid-copy; the second one carries on, and the
    // first, restarted, is there again.
    first.kill9();
    std::thread::sleep(Duration::from_secs(2));
    first.restart()?;
    let done = support::wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(180))?;
    let total = support::counter(&done, "bytesTotal");
    let sent = support::counter(&done, "bytesSent");
    ensure!(total >= 300 << 20, "the whole account was copied: {done}");
    ensure!(
        sent < total + total / 3,
        "the copy resumed instead of starting over: sent {sent} of {total}"
    );
    let copied = test_host.accounts_dir().join("nvf_erin/archive.bin");
    let same = Command::new("cmp")
        .arg(erin.home.join("archive.bin"))
        .arg(&copied)
        .status()?;
    ensure!(same.success(), "the copied file is identical");

    // Every step completed once, whichever controller ran it.
    let runs = first.state_db().psql(
        "navette",
        &format!(
            "SELECT step || ' ' || generation || ' ' || count(*) FILTER (WHERE outcome = 'Granted' OR outcome LIKE 'Copied%')
             FROM step_runs WHERE workflow_id = '{id}' GROUP BY step, generation ORDER BY 1"
        ),
    )?;
    let runs: Vec<&str> = runs.lines().filter(|l| !l.is_empty()).collect();
    ensure!(
        runs == ["copy 1 1", "grant 1 1"],
        "steps completed once each: {runs:?}"
    );
    let controllers = first.state_db().psql(
        "navette",
        &format!("SELECT count(DISTINCT controller) FROM step_runs WHERE workflow_id = '{id}'"),
    )?;
    drop(second);
    eprintln!(
        "steps of {id} were run by {} controller(s)",
        controllers.trim()
    );
    Ok(())
}
