//! Durability and liveness: a controller killed with SIGKILL comes back with
//! every host, account and token it had acknowledged, and the agents find
//! it again by themselves; a host whose agent dies is marked unreachable
//! and comes back online when the agent does; agents renew short-lived
//! certificates before they expire, without a token.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Rig};
use serde_json::json;
use support::{enrol, host, hosts, list, str_of};

fn timestamp(
    value: &serde_json::Value,
    field: &str,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let text = str_of(value, field);
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{field} {text:?} in {value}"))?
        .to_utc())
}

#[test]
fn a_killed_controller_loses_nothing_and_agents_reconnect() -> anyhow::Result<()> {
    let rig = Rig::new("restart")?;
    let controller = support::controller(
        &rig,
        ControllerSpec {
            heartbeat_timeout_secs: 3,
            ..ControllerSpec::default()
        },
    )?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let transit = rig.add_namespace("transit-1", Ipv4Addr::new(192, 0, 2, 11))?;
    shared.start_postgres(&rig, PgVersion::V15, 5432)?;
    rig.add_account(
        &shared,
        AccountSpec {
            name: "nvr_carol".into(),
            password: "carol-pw".into(),
            pg_databases: vec!["nvr_carol".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    let shared_agent = enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &transit, AgentKind::Transit, "2024.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "transit-1"])?;
    // Acknowledged just before the crash: a pool and a token for a host
    // that has not enrolled yet.
    rig.grpcurl_json(
        "navette.v1.HostPools/CreateHostPool",
        &json!({"request_id": "pool-1", "name": "paris", "description": "Paris DC"}),
    )?;
    let token = rig.grpcurl_json(
        "navette.v1.JoinTokens/CreateJoinToken",
        &json!({"request_id": "token-later", "host_id": "later-1", "pool": "paris"}),
    )?;
    let before_hosts = hosts(&rig)?;

    controller.kill9();
    let restarted_at = chrono::Utc::now();
    controller.restart()?;

    // Everything acknowledged is still there.
    let after_hosts = hosts(&rig)?;
    let ids = |hosts: &[serde_json::Value]| -> Vec<String> {
        hosts.iter().map(|h| str_of(h, "id").to_owned()).collect()
    };
    ensure!(
        ids(&after_hosts) == ids(&before_hosts),
        "hosts {:?} became {:?}",
        ids(&before_hosts),
        ids(&after_hosts)
    );
    ensure!(
        ids(&after_hosts) == ["later-1", "shared-1", "transit-1"],
        "hosts: {:?}",
        ids(&after_hosts)
    );
    let later = host(&rig, "later-1")?;
    ensure!(
        str_of(&later, "state") == "HOST_STATE_AWAITING_ENROLMENT"
            && str_of(&later, "pool") == "paris",
        "the pending host: {later}"
    );
    let carol = rig.grpcurl_json(
        "navette.v1.Accounts/GetAccount",
        &json!({"name": "nvr_carol"}),
    )?;
    ensure!(
        str_of(&carol, "hostId") == "shared-1" && list(&carol, "databases").len() == 1,
        "carol: {carol}"
    );
    let tokens = list(
        &rig.grpcurl_json("navette.v1.JoinTokens/ListJoinTokens", &json!({}))?,
        "tokens",
    );
    let token_id = str_of(&token["token"], "id");
    ensure!(
        tokens
            .iter()
            .any(|t| str_of(t, "id") == token_id && str_of(t, "usedAt").is_empty()),
        "the unused token {token_id} is still there: {tokens:?}"
    );
    let pools = list(
        &rig.grpcurl_json("navette.v1.HostPools/ListHostPools", &json!({}))?,
        "pools",
    );
    ensure!(
        pools.len() == 1 && str_of(&pools[0], "name") == "paris",
        "pools: {pools:?}"
    );
    // A retried request id gives back the same token, not a second one.
    let retried = rig.grpcurl_json(
        "navette.v1.JoinTokens/CreateJoinToken",
        &json!({"request_id": "token-later", "host_id": "later-1", "pool": "paris"}),
    )?;
    ensure!(
        retried == token,
        "a retry returns the same token: {retried} vs {token}"
    );

    // The agents found the new controller by themselves.
    rig.wait_until(
        "agents heartbeat to the restarted controller",
        Duration::from_secs(30),
        || {
            let hosts = hosts(&rig)?;
            Ok(["shared-1", "transit-1"].iter().all(|id| {
                hosts.iter().any(|h| {
                    str_of(h, "id") == *id
                        && str_of(h, "state") == "HOST_STATE_ONLINE"
                        && timestamp(h, "lastHeartbeatAt").is_ok_and(|at| at > restarted_at)
                })
            }))
        },
    )?;

    // A dead agent makes its host unreachable; back, it is online again.
    shared_agent.kill9();
    rig.wait_until(
        "shared-1 marked unreachable",
        Duration::from_secs(20),
        || Ok(str_of(&host(&rig, "shared-1")?, "state") == "HOST_STATE_UNREACHABLE"),
    )?;
    let watched = rig.grpcurl(&[
        "-max-time",
        "3",
        "-d",
        r#"{"id": "shared-1"}"#,
        &rig.controller_access()?.api.to_string(),
        "navette.v1.Hosts/WatchHosts",
    ])?;
    let stream = String::from_utf8_lossy(&watched.stdout);
    ensure!(
        stream.contains("KIND_SNAPSHOT") && stream.contains("HOST_STATE_UNREACHABLE"),
        "WatchHosts starts with the host as it is: {stream}"
    );
    shared_agent.restart()?;
    rig.wait_until("shared-1 online again", Duration::from_secs(20), || {
        Ok(str_of(&host(&rig, "shared-1")?, "state") == "HOST_STATE_ONLINE")
    })?;
    Ok(())
}

#[test]
fn agents_renew_short_lived_certificates_without_a_token() -> anyhow::Result<()> {
    let rig = Rig::new("renewal")?;
    // Certificates live 12 s; agents renew two thirds in.
    let _controller = support::controller(
        &rig,
        ControllerSpec {
            agent_certificate_ttl_secs: 12,
            ..ControllerSpec::default()
        },
    )?;
    let vps = rig.add_namespace("vps-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let agent = enrol(&rig, &vps, AgentKind::Vps, "2024.1")?;
    support::wait_online_with_inventory(&rig, &["vps-1"])?;
    let first = host(&rig, "vps-1")?;
    let first_expiry = timestamp(&first, "certificateExpiresAt")?;
    let first_pem = std::fs::read_to_string(agent.state_dir().join("agent.pem"))?;

    // Past the first certificate's expiry the agent still talks to the
    // controller, with a renewed certificate.
    rig.wait_until(
        "the agent renewed its certificate",
        Duration::from_secs(30),
        || {
            let now = host(&rig, "vps-1")?;
            Ok(timestamp(&now, "certificateExpiresAt")? > first_expiry)
        },
    )?;
    // The controller records the certificate when it issues it; the agent
    // writes it to disk once the answer arrives, a moment later.
    rig.wait_until(
        "the agent stored its new certificate",
        Duration::from_secs(10),
        || Ok(std::fs::read_to_string(agent.state_dir().join("agent.pem"))? != first_pem),
    )?;
    let wait = (first_expiry - chrono::Utc::now())
        .to_std()
        .unwrap_or_default()
        + Duration::from_secs(2);
    std::thread::sleep(wait);
    let heartbeat_after_expiry = chrono::Utc::now();
    rig.wait_until(
        "heartbeats after the first certificate expired",
        Duration::from_secs(15),
        || {
            let now = host(&rig, "vps-1")?;
            Ok(str_of(&now, "state") == "HOST_STATE_ONLINE"
                && timestamp(&now, "lastHeartbeatAt").is_ok_and(|at| at > heartbeat_after_expiry))
        },
    )?;
    // And the controller can still call the agent (its server certificate
    // was swapped too).
    let refreshed = rig.grpcurl_json(
        "navette.v1.Hosts/RefreshHostInventory",
        &json!({"id": "vps-1"}),
    )?;
    ensure!(
        str_of(&refreshed, "state") == "HOST_STATE_ONLINE",
        "refresh: {refreshed}"
    );
    Ok(())
}
