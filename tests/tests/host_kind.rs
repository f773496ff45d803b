//! What a host is, the operator decides: an agent whose report claims to be
//! a test host with a petabyte free receives no test copy (and so none of
//! the customers' credentials in it), whether it was enrolled as a shared
//! host or as a test host with a small declared disk; the disagreement is
//! shown on the host as a warning. Real controller and agents, real
//! grpcurl; the lying agents are played with their own certificates, as a
//! compromised host would.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::ensure;
use navette_tests::{
    AccountSpec, Agent, AgentKind, AgentSpec, CertPair, ControllerSpec, JoinTokenSpec, PgVersion,
    Rig,
};
use serde_json::{Value, json};
use support::{enrol, list, str_of};

const PETABYTE: u64 = 1 << 50;

/// Enrols `host` with a token saying `token`, while its agent's own
/// configuration says it is a test host.
fn enrol_claiming_test(
    rig: &Rig,
    host: &navette_tests::Netns,
    token: &JoinTokenSpec,
) -> anyhow::Result<Agent> {
    let token = rig.create_join_token_with(host.host(), token)?;
    rig.start_agent(
        host,
        AgentSpec {
            kind: AgentKind::Test,
            stack_version: "2026.1".into(),
            token,
            ..AgentSpec::default()
        },
    )
}

/// What a compromised agent reports: a test host running everything a test
/// needs, with a petabyte free on a petabyte disk.
fn lie(rig: &Rig, agent: &Agent) -> anyhow::Result<()> {
    let pair = CertPair {
        cert: agent.state_dir().join("agent.pem"),
        key: agent.state_dir().join("agent.key"),
    };
    let address = agent.listen_addr().ip().to_string();
    let report = json!({
        "host_id": agent.host().host(),
        "kind": "HOST_KIND_TEST",
        "stack_version": "2026.1",
        "agent_version": "0.1.0",
        "agent_endpoint": agent.listen_addr().to_string(),
        "addresses": [address],
        "disk_total_bytes": PETABYTE.to_string(),
        "disk_free_bytes": PETABYTE.to_string(),
        "database_servers": [{
            "name": "main",
            "engine": "DATABASE_ENGINE_POSTGRESQL",
            "version": "18.1",
            "address": address,
            "port": 5432,
            "reachable": true
        }],
    });
    rig.grpcurl_json_as(&pair, "navette.v1.AgentGateway/ReportInventory", &report)?;
    Ok(())
}

fn warnings(host: &Value) -> Vec<String> {
    list(host, "warnings")
        .iter()
        .filter_map(|w| w.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_host_that_lies_about_its_kind_or_disk_gets_no_test() -> anyhow::Result<()> {
    let rig = Rig::new("host_kind")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let honest = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 11))?;
    let liar_shared = rig.add_namespace("liar-shared", Ipv4Addr::new(192, 0, 2, 12))?;
    let liar_small = rig.add_namespace("liar-small", Ipv4Addr::new(192, 0, 2, 13))?;
    shared.start_postgres(&rig, PgVersion::V15, 5432)?;
    honest.start_postgres(&rig, PgVersion::V18, 5432)?;
    rig.add_account(
        &shared,
        AccountSpec {
            name: "nvk_erin".into(),
            password: "erin-pw".into(),
            pg_databases: vec!["nvk_erin".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &honest, AgentKind::Test, "2026.1")?;
    // Enrolled by the operator as a shared host.
    let shared_liar = enrol_claiming_test(
        &rig,
        &liar_shared,
        &JoinTokenSpec {
            kind: Some(AgentKind::Shared),
            declared_disk_bytes: None,
        },
    )?;
    // Enrolled as a test host whose disk is 64 MiB.
    let small_liar = enrol_claiming_test(
        &rig,
        &liar_small,
        &JoinTokenSpec {
            kind: Some(AgentKind::Test),
            declared_disk_bytes: Some(64 << 20),
        },
    )?;
    support::wait_online_with_inventory(
        &rig,
        &["shared-1", "test-1", "liar-shared", "liar-small"],
    )?;
    rig.wait_until(
        "erin's database in the inventory",
        Duration::from_secs(30),
        || {
            let account = rig.grpcurl_json(
                "navette.v1.Accounts/GetAccount",
                &json!({"name": "nvk_erin"}),
            )?;
            Ok(list(&account, "databases").len() == 1)
        },
    )?;

    // The two hosts are taken over: their agents stop, and what speaks with
    // their certificates claims a petabyte free on a test host.
    shared_liar.stop();
    small_liar.stop();
    lie(&rig, &shared_liar)?;
    lie(&rig, &small_liar)?;
    for id in ["liar-shared", "liar-small"] {
        let host = support::host(&rig, id)?;
        ensure!(
            str_of(&host, "state") == "HOST_STATE_ONLINE"
                && str_of(&host, "reportedKind") == "HOST_KIND_TEST"
                && str_of(&host, "diskFreeBytes") == PETABYTE.to_string(),
            "the lie was received, and the host is a candidate as far as liveness goes: {host}"
        );
    }

    // Were the reports believed, the petabyte would win the placement.
    let test = support::panel(
        &rig,
        "TestMigration",
        json!({"request_id": "kind-1", "account": "nvk_erin", "migration_id": "postgresql-15-to-18"}),
    )?;
    ensure!(
        str_of(&test, "testHostId") == "test-1",
        "the test goes to the honest test host: {test}"
    );

    // The disagreement is shown on each host, with the operator's values.
    let host = support::host(&rig, "liar-shared")?;
    ensure!(
        str_of(&host, "kind") == "HOST_KIND_SHARED"
            && warnings(&host)
                .iter()
                .any(|w| w.contains("reports kind test") && w.contains("enrolled as shared")),
        "the shared host's warning: {host}"
    );
    let host = rig.grpcurl_json("navette.v1.Hosts/GetHost", &json!({"id": "liar-small"}))?;
    ensure!(
        str_of(&host, "kind") == "HOST_KIND_TEST"
            && str_of(&host, "declaredDiskBytes") == (64u64 << 20).to_string()
            && warnings(&host)
                .iter()
                .any(|w| w.contains("more than the 67108864 bytes declared")),
        "the small host's warning: {host}"
    );
    let host = support::host(&rig, "test-1")?;
    ensure!(
        warnings(&host).is_empty(),
        "an honest host has no warning: {host}"
    );

    // The operator, not the agent, changes what a host is.
    let host = rig.grpcurl_json(
        "navette.v1.Hosts/SetHostClass",
        &json!({"id": "liar-shared", "declared_disk_bytes": (1u64 << 30).to_string()}),
    )?;
    ensure!(
        str_of(&host, "kind") == "HOST_KIND_SHARED"
            && str_of(&host, "declaredDiskBytes") == (1u64 << 30).to_string(),
        "the class is set and the kind left as it was: {host}"
    );
    let access = rig.controller_access()?;
    support::expect_refusal(
        &rig.grpcurl_as(
            &access.operator,
            &[
                "-d",
                r#"{"id": "liar-shared", "pool": "nowhere"}"#,
                &access.api.to_string(),
                "navette.v1.Hosts/SetHostClass",
            ],
        )?,
        "FailedPrecondition",
        "host pool \"nowhere\" does not exist",
    )?;
    Ok(())
}
