//! *Test* of an account whose home holds a setgid directory, with the
//! test host's agent run under its systemd unit's capability bounding
//! set, `NoNewPrivileges=` and `UMask=` (applied by the rig with
//! `setpriv`, as systemd is not PID 1 here): the copy completes, the
//! account's setgid directory is setgid on the test host, and a setuid
//! file of root in the home is not setuid there.

mod support;

use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::accounts::add_fidelity_tree;
use navette_tests::{AccountSpec, AgentKind, AgentSpec, ControllerSpec, PgVersion, Rig};
use serde_json::json;
use support::{enrol, panel, str_of};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TEST_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

fn mode_of(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .mode()
        & 0o7777)
}

/// A field of `/proc/<pid>/status`.
fn status_field(pid: u32, name: &str) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
        .with_context(|| format!("{name} in /proc/{pid}/status"))
}

#[test]
fn a_setgid_directory_copies_with_the_test_agent_under_its_units_restrictions() -> anyhow::Result<()>
{
    let rig = Rig::new("files_under_unit")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", SOURCE)?;
    let test_host = rig.add_namespace("test-1", TEST_HOST)?;
    let _source_pg = shared.start_postgres(&rig, PgVersion::V15, 5432)?;
    let _target_pg = test_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let account = rig.add_account(
        &shared,
        AccountSpec {
            name: "nvt_unitfiles".into(),
            password: "unitfiles-S3cret".into(),
            pg_databases: vec!["nvt_unitfiles".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    // tree/setgid is the account's, mode 2775.
    add_fidelity_tree(&account.home, &account.name)?;
    let root_tool = account.home.join("root-tool");
    std::fs::write(&root_tool, b"not the account's\n")?;
    std::fs::set_permissions(&root_tool, std::fs::Permissions::from_mode(0o4755))?;

    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    let token = rig.create_join_token(test_host.host(), AgentKind::Test)?;
    let agent = rig.start_agent(
        &test_host,
        AgentSpec {
            kind: AgentKind::Test,
            stack_version: "2026.1".to_owned(),
            token,
            under_unit_restrictions: true,
            ..AgentSpec::default()
        },
    )?;
    // The agent really runs restricted: CAP_MKNOD and the others outside
    // the unit's set are gone, and privileges cannot grow.
    let pid = agent.process().pid().context("the test host's agent pid")?;
    let bounding = u64::from_str_radix(&status_field(pid, "CapBnd:")?, 16)?;
    let effective = u64::from_str_radix(&status_field(pid, "CapEff:")?, 16)?;
    const CAP_MKNOD: u64 = 1 << 27;
    ensure!(
        bounding == effective && bounding & CAP_MKNOD == 0,
        "the agent's capabilities are not the unit's: bounding {bounding:x}, effective {effective:x}"
    );
    ensure!(
        status_field(pid, "NoNewPrivs:")? == "1",
        "the agent runs without no_new_privs"
    );
    support::wait_online_with_inventory(&rig, &["shared-old", "test-1"])?;

    let started = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-unit", "account": "nvt_unitfiles", "migration_id": "postgresql-15-to-18"}),
    )?;
    let id = str_of(&started, "id").to_owned();
    let test = support::wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(120))?;
    let copy_home = Path::new(str_of(&test["connection"], "home")).to_path_buf();
    ensure!(
        copy_home.starts_with(test_host.root()),
        "the copy is on the test host: {test}"
    );
    let setgid = copy_home.join("tree/setgid");
    ensure!(
        mode_of(&setgid)? == 0o2775,
        "the account's setgid directory has mode {:o} on the test host",
        mode_of(&setgid)?
    );
    ensure!(
        std::fs::metadata(&setgid)?.uid() == account.uid,
        "tree/setgid is not the account's on the test host"
    );
    ensure!(
        mode_of(&copy_home.join("root-tool"))? == 0o755,
        "root's setuid file kept mode {:o} on the test host",
        mode_of(&copy_home.join("root-tool"))?
    );
    ensure!(
        std::fs::read(copy_home.join("tree/plain.txt"))? == b"plain\n",
        "the copy's content differs"
    );
    panel(&rig, "DeleteTest", json!({"id": id}))?;
    support::wait_for_test(&rig, &id, "STATE_DELETED", Duration::from_secs(60))?;
    Ok(())
}
