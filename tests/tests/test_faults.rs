//! The *Test* button refused before anything is copied: a migration that
//! does not apply, no test host with room, a source database that is down.

mod support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, Netns, PgVersion, Rig};
use serde_json::json;
use support::{enrol, str_of};

fn start_test(
    rig: &Rig,
    request_id: &str,
    account: &str,
    migration: &str,
) -> anyhow::Result<std::process::Output> {
    let access = rig.controller_access()?;
    let body = json!({"request_id": request_id, "account": account, "migration_id": migration})
        .to_string();
    rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            &body,
            &access.api.to_string(),
            "navette.v1.Tests/TestMigration",
        ],
    )
}

/// A small filesystem mounted on a host's accounts directory, unmounted on
/// drop (before the rig removes its directory).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(host: &Netns, size: &str) -> anyhow::Result<SmallDisk> {
        let dir = host.accounts_dir();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()?;
        ensure!(
            status.success(),
            "mounting a {size} tmpfs on {}",
            dir.display()
        );
        Ok(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn bad_tests_are_refused_before_anything_is_copied() -> anyhow::Result<()> {
    let rig = Rig::new("test_refusals")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let small = rig.add_namespace("test-small", Ipv4Addr::new(192, 0, 2, 12))?;
    let _disk = SmallDisk::mount(&small, "100m")?;
    shared.start_postgres(&rig, PgVersion::V15, 5432)?;
    let source_maria = shared.start_mariadb(&rig)?;
    small.start_postgres(&rig, PgVersion::V18, 5432)?;
    small.start_mariadb_11_8(&rig)?;
    let carol = rig.add_account(
        &shared,
        AccountSpec {
            name: "nvf_carol".into(),
            password: "carol-pw".into(),
            pg_databases: vec!["nvf_carol".into()],
            mariadb_databases: vec!["nvf_carol_wiki".into()],
            files: true,
        },
    )?;
    support::random_file(&carol.home.join("video.bin"), 60, &carol.name)?;
    rig.add_account(
        &shared,
        AccountSpec {
            name: "nvf_dan".into(),
            password: "dan-pw".into(),
            pg_databases: vec!["nvf_dan".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    rig.add_account(
        &shared,
        AccountSpec {
            name: "nvf_fay".into(),
            password: "fay-pw".into(),
            pg_databases: vec!["nvf_fay".into()],
            mariadb_databases: vec!["nvf_fay_forum".into()],
            files: true,
        },
    )?;
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &small, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-small"])?;

    // dan has no MariaDB: the MariaDB upgrade does not apply to him.
    support::expect_refusal(
        &start_test(&rig, "r1", "nvf_dan", "mariadb-10.11-to-11.8")?,
        "FailedPrecondition",
        "does not apply to account nvf_dan",
    )?;
    // carol's 60 MiB, with the margin, do not fit on a 100 MiB test host.
    support::expect_refusal(
        &start_test(&rig, "r2", "nvf_carol", "postgresql-15-to-18")?,
        "ResourceExhausted",
        "no test host has room",
    )?;
    // fay fits; but first her MariaDB server goes down.
    source_maria.stop();
    let stopped_at = chrono::Utc::now();
    rig.wait_until(
        "the inventory shows MariaDB down",
        Duration::from_secs(30),
        || {
            let host = support::host(&rig, "shared-1")?;
            let inventory_at =
                chrono::DateTime::parse_from_rfc3339(str_of(&host, "inventoryUpdatedAt"))?.to_utc();
            Ok(inventory_at > stopped_at
                && support::list(&host, "databaseServers").iter().any(|s| {
                    str_of(s, "engine") == "DATABASE_ENGINE_MARIADB"
                        && s["reachable"] != json!(true)
                }))
        },
    )?;
    support::expect_refusal(
        &start_test(&rig, "r3", "nvf_fay", "postgresql-15-to-18")?,
        "FailedPrecondition",
        "is down",
    )?;
    // Nothing was copied, and no test exists.
    let entries = std::fs::read_dir(small.accounts_dir())?.count();
    ensure!(
        entries == 0,
        "nothing written on the test host ({entries} entries)"
    );
    let tests = support::panel(&rig, "ListTests", json!({}))?;
    ensure!(
        support::list(&tests, "tests").is_empty(),
        "no test was created: {tests}"
    );
    Ok(())
}
