//! The reinstall hand-off (issue 11, item 4) end to end: the controller
//! runs the rig's provisioner (`tests/rig/provisioner.sh`) with the host,
//! its class, the stack version and a fresh join token, and waits for the
//! host to come back.
//!
//! One rig, in order: a reinstall asked while an account lives on the
//! dedicated host is refused, naming it; once the account left, a
//! provisioner that fails leaves the reinstall stuck with its reason (then
//! aborted: its token revoked); one that accepts but never brings the host
//! back leaves it stuck past its (short) wait; retried, the provisioner
//! gets a new token, the rig wipes the host and brings it back on
//! PostgreSQL 18 and MariaDB 11.8 with a new agent that enrols with it, and
//! the reinstall is done: same host id, kind and class, new certificate,
//! new stack reported. Throughout, the transit host, with an account on
//! it, is untouched: its files, its databases' rows, its agent process and
//! its enrolment.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use navette_tests::{AccountSpec, Agent, AgentKind, ControllerSpec, Netns, PgVersion, Rig};
use serde_json::{Value, json};
use support::{enrol, expect_refusal, list, str_of};

const DEDICATED: &str = "ded-1";
const TRANSIT: &str = "transit-1";
const NEW_STACK: &str = "2026.1";
/// The dedicated server's configuration class (the transit pool's).
const CLASS: &str = "c8-m32-d960";

fn get(rig: &Rig, id: &str) -> anyhow::Result<Value> {
    rig.grpcurl_json("navette.v1.Reinstalls/GetReinstall", &json!({ "id": id }))
}

/// Waits until reinstall `id` is at `stage`; fails at once if it ends at
/// another one.
fn wait_stage(rig: &Rig, id: &str, stage: &str, timeout: Duration) -> anyhow::Result<Value> {
    let ended = [
        "REINSTALL_STAGE_DONE",
        "REINSTALL_STAGE_MARKED_DONE",
        "REINSTALL_STAGE_ABORTED",
        "REINSTALL_STAGE_REFUSED",
    ];
    let mut last = Value::Null;
    let reached = rig.wait_until(&format!("reinstall {id} at {stage}"), timeout, || {
        last = get(rig, id)?;
        let now = str_of(&last, "stage");
        if now != stage && ended.contains(&now) {
            bail!("reinstall {id} ended at {now}, not {stage}: {last}");
        }
        Ok(now == stage)
    });
    reached.with_context(|| format!("last seen: {last}"))?;
    Ok(last)
}

fn request(rig: &Rig, request_id: &str, timeout_secs: u32) -> anyhow::Result<String> {
    let answer = rig.grpcurl_json(
        "navette.v1.Reinstalls/RequestReinstall",
        &json!({
            "request_id": request_id,
            "host_id": DEDICATED,
            "stack_version": NEW_STACK,
            "enrolment_timeout_seconds": timeout_secs,
        }),
    )?;
    ensure!(
        str_of(&answer, "hostId") == DEDICATED && str_of(&answer, "stackVersion") == NEW_STACK,
        "the reinstall as asked: {answer}"
    );
    Ok(str_of(&answer, "id").to_owned())
}

/// The join token `id` as `JoinTokens/ListJoinTokens` shows it.
fn token(rig: &Rig, id: &str) -> anyhow::Result<Value> {
    let tokens = rig.grpcurl_json("navette.v1.JoinTokens/ListJoinTokens", &json!({}))?;
    list(&tokens, "tokens")
        .into_iter()
        .find(|t| str_of(t, "id") == id)
        .with_context(|| format!("join token {id} is not listed: {tokens}"))
}

/// Everything of the transit host a reinstall elsewhere must not touch:
/// every file under its root but what its own agent and servers rewrite
/// as they run (their state, logs, sockets, data files), the rows of its
/// account's databases, its agent's process, and the controller's record
/// of its enrolment.
#[derive(Debug, PartialEq)]
struct TransitSnapshot {
    homes: BTreeMap<String, Vec<u8>>,
    pg_rows: String,
    mariadb_rows: String,
    agent_pid: Option<u32>,
    enrolled_at: String,
    certificate_serial: String,
    stack_version: String,
    tokens: usize,
}

fn files_under(dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            files_under(&path, into)?;
        } else if entry.file_type()?.is_file() {
            into.insert(path.display().to_string(), std::fs::read(&path)?);
        }
    }
    Ok(())
}

fn transit_snapshot(
    rig: &Rig,
    transit: &Netns,
    agent: &Agent,
    account: &str,
) -> anyhow::Result<TransitSnapshot> {
    let mut homes = BTreeMap::new();
    files_under(&transit.accounts_dir(), &mut homes)?;
    let servers = rig.servers(transit);
    let pg = servers.postgres.first().context("transit PostgreSQL")?;
    let mariadb = servers.mariadb.first().context("transit MariaDB")?;
    let host = support::host(rig, TRANSIT)?;
    let tokens = rig.grpcurl_json("navette.v1.JoinTokens/ListJoinTokens", &json!({}))?;
    Ok(TransitSnapshot {
        homes,
        pg_rows: pg.psql(
            account,
            "SELECT string_agg(id || ':' || label, ',' ORDER BY id) FROM items",
        )?,
        mariadb_rows: mariadb.sql(&format!(
            "SELECT group_concat(id, ':', label ORDER BY id) FROM {account}_my.items"
        ))?,
        agent_pid: agent.process().pid(),
        enrolled_at: str_of(&host, "enrolledAt").to_owned(),
        certificate_serial: str_of(&host, "certificateSerial").to_owned(),
        stack_version: str_of(&host, "stackVersion").to_owned(),
        tokens: list(&tokens, "tokens")
            .iter()
            .filter(|t| str_of(t, "hostId") == TRANSIT)
            .count(),
    })
}

#[test]
fn a_dedicated_host_is_reinstalled_by_the_provisioner_and_keeps_its_id() -> anyhow::Result<()> {
    let rig = Rig::new("reinstall")?;
    let provisioner = rig.provisioner()?;
    support::controller(
        &rig,
        ControllerSpec {
            reinstall: Some(provisioner.controller_section(60, 600)),
            ..ControllerSpec::default()
        },
    )?;
    let dedicated = rig.add_namespace(DEDICATED, Ipv4Addr::new(192, 0, 2, 20))?;
    let transit = rig.add_namespace(TRANSIT, Ipv4Addr::new(192, 0, 2, 30))?;
    for host in [&dedicated, &transit] {
        host.start_postgres(&rig, PgVersion::V15, 5432)?;
        host.start_mariadb(&rig)?;
    }
    rig.add_account(
        &dedicated,
        AccountSpec {
            name: "nvr_ann".into(),
            password: "nvr_ann-pw".into(),
            pg_databases: vec!["nvr_ann".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    rig.add_account(
        &transit,
        AccountSpec {
            name: "nvr_tom".into(),
            password: "nvr_tom-pw".into(),
            pg_databases: vec!["nvr_tom".into()],
            mariadb_databases: vec!["nvr_tom_my".into()],
            files: true,
        },
    )?;
    let old_agent = enrol(&rig, &dedicated, AgentKind::Dedicated, "2024.1")?;
    let transit_agent = enrol(&rig, &transit, AgentKind::Transit, "2024.1")?;
    support::wait_online_with_inventory(&rig, &[DEDICATED, TRANSIT])?;
    let account_count = |id: &str| -> anyhow::Result<u64> {
        Ok(support::host(&rig, id)?
            .get("accountCount")
            .and_then(Value::as_u64)
            .unwrap_or(0))
    };
    rig.wait_until("ann on the dedicated host", Duration::from_secs(30), || {
        Ok(account_count(DEDICATED)? == 1 && account_count(TRANSIT)? == 1)
    })?;
    // The configuration class the transit pool matches on: the provisioner
    // is told it, and the reinstalled host keeps it.
    rig.grpcurl_json(
        "navette.v1.TransitPool/SetConfigurationClass",
        &json!({"host_id": DEDICATED, "configuration_class": CLASS}),
    )?;
    let transit_before = transit_snapshot(&rig, &transit, &transit_agent, "nvr_tom")?;
    let before = support::host(&rig, DEDICATED)?;

    // Refused while an account lives on the server, naming it; nothing
    // reaches the provisioner.
    let api = rig.controller_access()?.api.to_string();
    let body = json!({"request_id": "r-early", "host_id": DEDICATED, "stack_version": NEW_STACK})
        .to_string();
    let refused = rig.grpcurl(&["-d", &body, &api, "navette.v1.Reinstalls/RequestReinstall"])?;
    expect_refusal(
        &refused,
        "FailedPrecondition",
        "a reinstall requested while accounts still live on the server: host ded-1 holds 1 account (nvr_ann)",
    )?;
    ensure!(
        provisioner.requests()?.is_empty(),
        "a refused reinstall runs no provisioner"
    );

    // The account leaves the server (a move to the transit host would).
    std::fs::remove_dir_all(dedicated.accounts_dir().join("nvr_ann"))?;
    rig.wait_until("the dedicated host empty", Duration::from_secs(30), || {
        Ok(account_count(DEDICATED)? == 0)
    })?;

    // A provisioner that fails: stuck with its reason; then aborted.
    let failing = request(&rig, "r-fail", 0)?;
    let asked = provisioner.next_request(Duration::from_secs(30))?;
    ensure!(
        asked.contract == 1
            && asked.reinstall_id == failing
            && asked.attempt == 1
            && asked.host_id == DEDICATED
            && asked.stack_version == NEW_STACK
            && asked.class.kind.as_deref() == Some("dedicated")
            && asked.class.configuration_class.as_deref() == Some(CLASS)
            && asked.addresses.iter().any(|a| a == "192.0.2.20")
            && !asked.join_token.is_empty(),
        "the provisioner is told the host, its class, the stack and a token: {asked:?}"
    );
    let first_token = token(&rig, asked.join_token_id())?;
    ensure!(
        str_of(&first_token, "hostId") == DEDICATED
            && str_of(&first_token, "kind") == "HOST_KIND_DEDICATED"
            && first_token.get("revoked").is_none()
            && first_token.get("usedAt").is_none(),
        "a fresh one-time token bound to the host: {first_token}"
    );
    provisioner.fail(
        &asked,
        "the provider refused: server ded-1 is locked by its rescue system",
    )?;
    let stuck = wait_stage(
        &rig,
        &failing,
        "REINSTALL_STAGE_STUCK",
        Duration::from_secs(30),
    )?;
    let reason = str_of(&stuck, "stuckReason");
    ensure!(
        reason.starts_with("the provisioner failed for host ded-1 (attempt 1): ")
            && reason.contains("server ded-1 is locked by its rescue system"),
        "the failure's reason: {stuck}"
    );
    println!("provisioner failed: {reason}");
    // A second request for the host is refused while this one is stuck.
    let body = json!({"request_id": "r-second", "host_id": DEDICATED, "stack_version": NEW_STACK})
        .to_string();
    let refused = rig.grpcurl(&["-d", &body, &api, "navette.v1.Reinstalls/RequestReinstall"])?;
    expect_refusal(
        &refused,
        "FailedPrecondition",
        &format!("reinstall {failing} of host ded-1 is under way (stuck)"),
    )?;
    rig.grpcurl_json(
        "navette.v1.Reinstalls/AbortReinstall",
        &json!({"id": failing, "note": "provider ticket 42"}),
    )?;
    let aborted = wait_stage(
        &rig,
        &failing,
        "REINSTALL_STAGE_ABORTED",
        Duration::from_secs(30),
    )?;
    ensure!(
        str_of(&aborted, "endedBy").contains("operator")
            && str_of(&aborted, "note") == "provider ticket 42",
        "who aborted it and why: {aborted}"
    );
    ensure!(
        token(&rig, asked.join_token_id())?.get("revoked") == Some(&Value::Bool(true)),
        "an aborted reinstall's token is revoked"
    );
    ensure!(
        old_agent.process().is_running(),
        "a failed provisioner left the host as it was"
    );

    // A provisioner that accepts, and a host that never comes back.
    let lost = request(&rig, "r-lost", 3)?;
    let asked = provisioner.next_request(Duration::from_secs(30))?;
    provisioner.accept(&asked, "reinstall queued at the provider")?;
    let stuck = wait_stage(
        &rig,
        &lost,
        "REINSTALL_STAGE_STUCK",
        Duration::from_secs(60),
    )?;
    let reason = str_of(&stuck, "stuckReason");
    ensure!(
        reason.starts_with(&format!(
            "host ded-1 did not come back: its agent did not enrol with join token {} within 3 s",
            asked.join_token_id()
        )),
        "the timeout's reason: {stuck}"
    );
    ensure!(
        str_of(&stuck, "provisionerOutput") == "accepted reinstall queued at the provider",
        "what the provisioner said is kept: {stuck}"
    );
    println!("host never came back: {reason}");

    // Retried with a longer wait: a new attempt, a new token (the first
    // revoked), and this time the rig reinstalls the host.
    rig.grpcurl_json(
        "navette.v1.Reinstalls/RetryReinstall",
        &json!({"id": lost, "enrolment_timeout_seconds": 300}),
    )?;
    let again = provisioner.next_request(Duration::from_secs(30))?;
    ensure!(
        again.reinstall_id == lost && again.attempt == 2 && again.join_token != asked.join_token,
        "a retry is a new attempt with a new token: {again:?}"
    );
    ensure!(
        token(&rig, asked.join_token_id())?.get("revoked") == Some(&Value::Bool(true)),
        "the previous attempt's token is revoked"
    );
    provisioner.accept(&again, "reinstalling")?;
    let began = Instant::now();
    let new_agent = rig.reinstall_host(&dedicated, &old_agent, &again, AgentKind::Dedicated)?;
    let done = wait_stage(
        &rig,
        &lost,
        "REINSTALL_STAGE_DONE",
        Duration::from_secs(120),
    )?;
    println!(
        "reinstalled host {DEDICATED} back on {NEW_STACK} {:.1} s after the provisioner accepted (wipe, PostgreSQL 18, MariaDB 11.8, enrolment)",
        began.elapsed().as_secs_f64()
    );
    ensure!(
        str_of(&done, "reportedStackVersion") == NEW_STACK
            && !str_of(&done, "enrolledAt").is_empty()
            && done.get("attempt").and_then(Value::as_u64) == Some(2),
        "done: {done}"
    );
    ensure!(
        token(&rig, again.join_token_id())?.get("usedAt").is_some(),
        "the new agent enrolled with the token the provisioner was given"
    );
    let after = support::host(&rig, DEDICATED)?;
    ensure!(
        str_of(&after, "kind") == "HOST_KIND_DEDICATED"
            && str_of(&after, "stackVersion") == NEW_STACK
            && str_of(&after, "state") == "HOST_STATE_ONLINE"
            && str_of(&after, "configurationClass") == CLASS
            && str_of(&after, "certificateSerial") != str_of(&before, "certificateSerial"),
        "the same host, on the new stack, with a new certificate: before {before}, after {after}"
    );
    ensure!(
        support::hosts(&rig)?.len() == 2,
        "no new host appeared: the reinstalled one kept its id"
    );
    let versions: Vec<String> = list(&after, "databaseServers")
        .iter()
        .map(|s| format!("{} {}", str_of(s, "engine"), str_of(s, "version")))
        .collect();
    ensure!(
        versions.iter().any(|v| v.contains("POSTGRESQL 18."))
            && versions.iter().any(|v| v.contains("MARIADB 11.8.")),
        "the new stack's servers: {versions:?}"
    );
    ensure!(
        rig.servers(&dedicated)
            .postgres
            .iter()
            .all(|s| s.version() == PgVersion::V18),
        "the rig knows only the new servers of the host"
    );
    ensure!(new_agent.process().is_running(), "the new agent runs");

    // Nothing on the transit host was touched.
    let transit_after = transit_snapshot(&rig, &transit, &transit_agent, "nvr_tom")?;
    ensure!(
        transit_after == transit_before,
        "the transit host is unchanged: before {transit_before:?}, after {transit_after:?}"
    );
    ensure!(
        transit_agent.process().is_running(),
        "the transit host's agent runs"
    );
    Ok(())
}
