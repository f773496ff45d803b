//! The metrics endpoints during a *Test* copy, read as a Prometheus server
//! reads them (a plain HTTP GET, the text format): the controller shows the
//! test's workflow copying, then ready, with its steps counted; the test
//! host's agent shows the transfer running, then ended, and the bytes it
//! copied: at least the account's file bytes, and exactly what the test's
//! own progress says was sent.

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Rig, Scrape};
use serde_json::json;
use support::{enrol, str_of};

/// A sample's value, or an error naming it and showing the scrape.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    scrape
        .value(name, labels)
        .with_context(|| format!("no sample {name}{labels:?} in:\n{}", scrape.text))
}

/// Bytes of the regular files under `dir`, each file once however many
/// hard links it has.
fn file_bytes(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let metadata = std::fs::symlink_metadata(entry.path())?;
        if metadata.is_dir() {
            bytes += file_bytes(&entry.path(), seen)?;
        } else if metadata.is_file() && seen.insert((metadata.dev(), metadata.ino())) {
            bytes += metadata.len();
        }
    }
    Ok(bytes)
}

#[test]
fn metrics_show_a_test_copy_and_its_bytes() -> anyhow::Result<()> {
    let rig = Rig::new("metrics")?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    shared.start_postgres(&rig, PgVersion::V15, 5432)?;
    test_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let mona = rig.add_account(
        &shared,
        AccountSpec {
            name: "nvm_mona".into(),
            password: "mona-pw".into(),
            pg_databases: vec!["nvm_mona".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    support::random_file(&mona.home.join("uploads.bin"), 160, &mona.name)?;
    let home_bytes = file_bytes(&mona.home, &mut HashSet::new())?;
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    let target = enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;

    // Before any test: nothing copying, nothing copied.
    let before = controller.scrape_metrics()?;
    ensure!(
        before.content_type.starts_with("text/plain; version=0.0.4"),
        "the Prometheus text format: {}",
        before.content_type
    );
    ensure!(
        value(
            &before,
            "navette_workflows",
            &[("kind", "test"), ("state", "copying")]
        )? == 0.0,
        "no test copying yet:\n{}",
        before.text
    );
    let agent_before = target.scrape_metrics()?;
    let files_bytes = ("engine", "files");
    ensure!(
        value(
            &agent_before,
            "navette_agent_copied_bytes_total",
            &[files_bytes]
        )? == 0.0
    );
    ensure!(value(&agent_before, "navette_agent_transfers_running", &[])? == 0.0);

    // 160 MiB at 160 Mbit/s: about 8 s of copying, time to look at it.
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
        json!({"request_id": "r-metrics", "account": "nvm_mona", "migration_id": "postgresql-15-to-18"}),
    )?;
    let id = str_of(&started, "id").to_owned();
    rig.wait_until("the copy is under way", Duration::from_secs(60), || {
        let test = support::panel(&rig, "GetTest", json!({"id": id}))?;
        Ok(support::counter(&test, "bytesDone") > 16 << 20)
    })?;

    // Mid-copy.
    let copying = controller.scrape_metrics()?;
    let agent_copying = target.scrape_metrics()?;
    let test = support::panel(&rig, "GetTest", json!({"id": id}))?;
    ensure!(
        str_of(&test, "state") == "STATE_COPYING",
        "still copying when scraped: {test}"
    );
    ensure!(
        value(
            &copying,
            "navette_workflows",
            &[("kind", "test"), ("state", "copying")]
        )? == 1.0,
        "the controller shows the test copying:\n{}",
        copying.text
    );
    ensure!(
        value(
            &copying,
            "navette_workflow_step_runs_total",
            &[("kind", "test"), ("step", "grant")]
        )? == 1.0,
        "the grant step ran once:\n{}",
        copying.text
    );
    ensure!(
        value(&agent_copying, "navette_agent_transfers_running", &[])? == 1.0,
        "the agent shows its transfer running:\n{}",
        agent_copying.text
    );
    let bytes_mid = value(
        &agent_copying,
        "navette_agent_copied_bytes_total",
        &[files_bytes],
    )?;
    ensure!(
        bytes_mid > 0.0 && bytes_mid < home_bytes as f64,
        "mid-copy, some of the {home_bytes} bytes are copied: {bytes_mid}"
    );

    // Ready.
    let done = support::wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(180))?;
    let ready = controller.scrape_metrics()?;
    for (state, expected) in [("ready", 1.0), ("copying", 0.0), ("failed", 0.0)] {
        ensure!(
            value(
                &ready,
                "navette_workflows",
                &[("kind", "test"), ("state", state)]
            )? == expected,
            "{expected} test(s) {state}:\n{}",
            ready.text
        );
    }
    let copy_step = [("kind", "test"), ("step", "copy")];
    ensure!(
        value(&ready, "navette_workflow_step_runs_total", &copy_step)? == 1.0
            && value(
                &ready,
                "navette_workflow_step_duration_seconds_count",
                &copy_step
            )? == 1.0,
        "the copy step ran once, its duration observed:\n{}",
        ready.text
    );
    ensure!(
        value(
            &ready,
            "navette_workflow_step_duration_seconds_sum",
            &copy_step
        )? >= 4.0,
        "the copy step lasted as long as the shaped copy:\n{}",
        ready.text
    );
    ensure!(
        ready
            .value("navette_workflow_step_failures_total", &copy_step)
            .is_none(),
        "no step failed:\n{}",
        ready.text
    );

    let agent_ready = target.scrape_metrics()?;
    let metric = |name: &str, labels: &[(&str, &str)]| value(&agent_ready, name, labels);
    ensure!(metric("navette_agent_transfers_running", &[])? == 0.0);
    ensure!(metric("navette_agent_transfers_finished_total", &[])? == 1.0);
    ensure!(metric("navette_agent_transfers_failed_total", &[])? == 0.0);
    let files = metric("navette_agent_copied_bytes_total", &[files_bytes])?;
    let postgresql = metric(
        "navette_agent_copied_bytes_total",
        &[("engine", "postgresql")],
    )?;
    let mariadb = metric("navette_agent_copied_bytes_total", &[("engine", "mariadb")])?;
    ensure!(
        files >= home_bytes as f64,
        "the agent copied at least the home's {home_bytes} bytes: {files}"
    );
    ensure!(postgresql > 0.0, "the database's rows were counted");
    ensure!(mariadb == 0.0, "no MariaDB database in this account");
    let sent = support::counter(&done, "bytesSent");
    ensure!(
        (files + postgresql + mariadb) as u64 == sent,
        "the agent's counters add up to what the test says was sent ({sent}): files {files}, postgresql {postgresql}"
    );
    ensure!(
        metric("navette_agent_copied_files_total", &[])? >= 1.0,
        "files were counted:\n{}",
        agent_ready.text
    );
    eprintln!(
        "copied {files} file bytes (home: {home_bytes}) and {postgresql} PostgreSQL bytes; {sent} sent"
    );
    Ok(())
}
