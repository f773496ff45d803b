//! Fleets upgrade one host at a time: an old host whose agent speaks only
//! transfer protocol 1 (as an agent from before the row digest moved to
//! XXH3 did; played with the test-only `[testing] transfer_protocols`) and
//! a test host whose agent speaks only 2 are never paired: `TestMigration`
//! is refused up front and the compatibility report says so, both naming
//! the two hosts, their agents' versions and protocol versions. With a
//! second test host whose agent speaks 1 and 2 (today's build), the test
//! goes there and completes on version 1: the new agent still serves an old
//! peer, and both sides' row digests agree. An agent that stops speaking
//! the version a test was placed on refuses its refresh, saying why. Real
//! controller, agents, PostgreSQL 15 and 18, real grpcurl.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{
    AccountSpec, Agent, AgentKind, AgentSpec, ControllerSpec, Netns, PgVersion, Rig,
};
use serde_json::{Value, json};
use support::{expect_refusal, host, list, panel, str_of, wait_for_test};

const ACCOUNT: &str = "nvn_olga";
const DATABASE: &str = "nvn_olga_shop";
/// Every agent of this build reports this version.
const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Enrols `host` with an agent speaking only `protocols` (`None`: every
/// version of its build).
fn enrol_speaking(
    rig: &Rig,
    host: &Netns,
    kind: AgentKind,
    stack_version: &str,
    protocols: Option<Vec<u32>>,
) -> anyhow::Result<Agent> {
    let token = rig.create_join_token(host.host(), kind)?;
    rig.start_agent(
        host,
        AgentSpec {
            kind,
            stack_version: stack_version.to_owned(),
            token,
            transfer_protocols: protocols,
            ..AgentSpec::default()
        },
    )
}

/// A repeated number field of a grpcurl answer.
fn numbers(value: &Value, name: &str) -> Vec<u64> {
    list(value, name).iter().filter_map(Value::as_u64).collect()
}

/// Whether `agent`'s log has a line with `message` and `"protocol_version":
/// version` (the agent logs JSON in the rig).
fn logged_with_version(agent: &Agent, message: &str, version: u32) -> anyhow::Result<bool> {
    let path = agent.process().log_path();
    let log = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(log.lines().any(|line| {
        line.contains(&format!("\"message\":\"{message}\""))
            && line.contains(&format!("\"protocol_version\":{version}"))
    }))
}

#[test]
fn hosts_sharing_no_protocol_version_are_never_paired() -> anyhow::Result<()> {
    let rig = Rig::new("protocol_versions")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let old = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_1 = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 20))?;
    let test_2 = rig.add_namespace("test-2", Ipv4Addr::new(192, 0, 2, 21))?;
    let pg_old = old.start_postgres(&rig, PgVersion::V15, 5432)?;
    test_1.start_postgres(&rig, PgVersion::V18, 5432)?;
    let pg_test_2 = test_2.start_postgres(&rig, PgVersion::V18, 5432)?;
    rig.add_account(
        &old,
        AccountSpec {
            name: ACCOUNT.into(),
            password: "olga-pw".into(),
            pg_databases: vec![DATABASE.into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    // Rows of several shapes (NULLs, long and empty values): each is
    // hashed by the digest the transfer's version names, on both sides.
    pg_old.psql(
        DATABASE,
        &format!(
            "CREATE TABLE orders (id int PRIMARY KEY, item text, note text);
             INSERT INTO orders
                 SELECT n, 'item ' || n, CASE WHEN n % 3 = 0 THEN NULL
                                              WHEN n % 3 = 1 THEN '' ELSE repeat('x', n) END
                 FROM generate_series(1, 500) AS n;
             ALTER TABLE orders OWNER TO {ACCOUNT};"
        ),
    )?;
    let old_agent = enrol_speaking(&rig, &old, AgentKind::Shared, "2024.1", Some(vec![1]))?;
    enrol_speaking(&rig, &test_1, AgentKind::Test, "2026.1", Some(vec![2]))?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;
    rig.wait_until(
        "the account's database in the inventory",
        Duration::from_secs(60),
        || {
            let account =
                rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ACCOUNT}))?;
            Ok(list(&account, "databases").len() == 1)
        },
    )?;

    // What each agent speaks is on its host, for operators.
    let shared = host(&rig, "shared-1")?;
    ensure!(
        str_of(&shared, "agentVersion") == AGENT_VERSION
            && numbers(&shared, "sourceProtocols") == [1]
            && numbers(&shared, "targetProtocols") == [1],
        "{shared}"
    );
    let newer = host(&rig, "test-1")?;
    ensure!(
        numbers(&newer, "sourceProtocols") == [2] && numbers(&newer, "targetProtocols") == [2],
        "{newer}"
    );

    // No version in common: refused before anything is copied, naming both
    // hosts and their versions.
    let why = format!(
        "test-1 shares no transfer protocol version with shared-1 (shared-1: agent {AGENT_VERSION}, protocol versions 1 as a source; test-1: agent {AGENT_VERSION}, protocol versions 2 as a target)"
    );
    let access = rig.controller_access()?;
    let refused = rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            &json!({"request_id": "protocols-1", "account": ACCOUNT, "migration_id": "postgresql-15-to-18"})
                .to_string(),
            &access.api.to_string(),
            "navette.v1.Tests/TestMigration",
        ],
    )?;
    expect_refusal(&refused, "FailedPrecondition", &why)?;
    let tests = panel(&rig, "ListTests", json!({}))?;
    ensure!(
        list(&tests, "tests").is_empty(),
        "a test was created: {tests}"
    );
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": ACCOUNT, "migration_id": "postgresql-15-to-18"}),
    )?;
    ensure!(
        report.get("compatible").and_then(Value::as_bool) != Some(true)
            && list(&report, "items").iter().any(|item| {
                str_of(item, "topic") == "placement"
                    && str_of(item, "severity") == "SEVERITY_BLOCKING"
                    && str_of(item, "message").contains(&why)
            }),
        "the report says so beforehand: {report}"
    );

    // A test host running today's agent (1 and 2): the test goes there, on
    // version 1, and completes.
    let new_agent = enrol_speaking(&rig, &test_2, AgentKind::Test, "2026.1", None)?;
    support::wait_online_with_inventory(&rig, &["test-2"])?;
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": ACCOUNT, "migration_id": "postgresql-15-to-18"}),
    )?;
    ensure!(
        report.get("compatible").and_then(Value::as_bool) == Some(true)
            && str_of(&report, "testHostId") == "test-2",
        "{report}"
    );
    let test = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "protocols-2", "account": ACCOUNT, "migration_id": "postgresql-15-to-18"}),
    )?;
    let id = str_of(&test, "id").to_owned();
    ensure!(str_of(&test, "testHostId") == "test-2", "{test}");
    wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(180))?;
    ensure!(
        pg_test_2.psql(
            DATABASE,
            "SELECT count(*) || ':' || count(note) || ':' || sum(length(coalesce(note, '')))
             FROM orders"
        )? == pg_old.psql(
            DATABASE,
            "SELECT count(*) || ':' || count(note) || ':' || sum(length(coalesce(note, '')))
             FROM orders"
        )?,
        "the copy's rows differ from the source's"
    );
    // Both agents ran the transfer on version 1: the old source granted it,
    // the new target pulled and checked it.
    ensure!(
        logged_with_version(&old_agent, "transfer granted", 1)?,
        "the old agent's log has no grant on version 1:\n{}",
        old_agent.process().log_tail(20)
    );
    ensure!(
        logged_with_version(&new_agent, "transfer done", 1)?,
        "the new agent's log has no transfer done on version 1:\n{}",
        new_agent.process().log_tail(20)
    );

    // The old host's agent is replaced by one that no longer speaks 1
    // (played by its test setting): the test placed on version 1 cannot
    // refresh, and says which version and host refused, rather than
    // copying with digests that cannot agree.
    let config = old_agent.config_path();
    let text = std::fs::read_to_string(config)?;
    let replaced: Vec<&str> = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("transfer_protocols") {
                "transfer_protocols = [2]"
            } else {
                line
            }
        })
        .collect();
    ensure!(
        replaced.join("\n") != text.trim_end(),
        "no protocol setting in:\n{text}"
    );
    std::fs::write(config, replaced.join("\n") + "\n")?;
    old_agent.restart()?;
    rig.wait_until(
        "shared-1 reports speaking 2 only",
        Duration::from_secs(60),
        || Ok(numbers(&host(&rig, "shared-1")?, "sourceProtocols") == [2]),
    )?;
    panel(&rig, "RefreshTest", json!({"id": id}))?;
    let failed = wait_for_test(&rig, &id, "STATE_FAILED", Duration::from_secs(120))?;
    ensure!(
        str_of(&failed, "error").contains(&format!(
            "uses transfer protocol version 1, but the agent of host shared-1 (version {AGENT_VERSION}) speaks only 2"
        )),
        "{failed}"
    );
    Ok(())
}
