//! Identity can be withdrawn: once a host enrols again, its previous
//! certificate (the old key, say stolen) is refused on every port that
//! takes client certificates (the controller's API, certificate renewal,
//! and the peer port of every other agent); once an operator removes the
//! host, its current certificate is refused the same way, and who removed
//! it and why is shown on the host. Renewal accepts only the latest
//! certificate, and a certificate superseded by a renewal is refused on
//! peers' new connections too. Real controller and agents, real grpcurl.

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{Agent, AgentKind, CertPair, ControllerSpec, Rig};
use serde_json::json;
use support::{enrol, str_of};

/// The certificate and key the agent uses now, copied aside as `name`, so
/// that they can be presented after the agent has moved on.
fn keep_identity(agent: &Agent, dir: &Path, name: &str) -> anyhow::Result<CertPair> {
    let pair = CertPair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::copy(agent.state_dir().join("agent.pem"), &pair.cert)?;
    std::fs::copy(agent.state_dir().join("agent.key"), &pair.key)?;
    Ok(pair)
}

/// The serial (hex) of the certificate in `pair`.
fn serial(pair: &CertPair) -> anyhow::Result<String> {
    let pem = std::fs::read_to_string(&pair.cert)?;
    let certs = navette_proto::tls::certificates_from_pem(&pem, "agent certificate")?;
    navette_proto::identity::serial_from_der(certs.first().context("no certificate")?)
        .context("no serial")
}

/// `AgentGateway/Heartbeat` on the controller's API port, presenting `pair`.
fn heartbeat(rig: &Rig, pair: &CertPair, host_id: &str) -> anyhow::Result<Output> {
    let api = rig.controller_access()?.api.to_string();
    let body = json!({"host_id": host_id}).to_string();
    rig.grpcurl_as(
        pair,
        &["-d", &body, &api, "navette.v1.AgentGateway/Heartbeat"],
    )
}

/// `AgentGateway/RenewCertificate` with a well-formed CSR for a new key,
/// presenting `pair`.
fn renew(rig: &Rig, pair: &CertPair) -> anyhow::Result<Output> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let api = rig.controller_access()?.api.to_string();
    let body = json!({"csr_pem": csr}).to_string();
    rig.grpcurl_as(
        pair,
        &[
            "-d",
            &body,
            &api,
            "navette.v1.AgentGateway/RenewCertificate",
        ],
    )
}

/// `FileSource/ListTree` on `source`'s peer port, presenting `pair`, for a
/// transfer that was never granted: the handler refuses it (naming the
/// transfer) unless the certificate is refused first.
fn list_tree(rig: &Rig, pair: &CertPair, source: &Agent) -> anyhow::Result<Output> {
    let access = rig.controller_access()?;
    let server_name = navette_proto::identity::agent_server_name(source.host().host());
    Ok(rig
        .client()
        .command("grpcurl")
        .arg("-cacert")
        .arg(&access.ca_file)
        .arg("-cert")
        .arg(&pair.cert)
        .arg("-key")
        .arg(&pair.key)
        .args(["-servername", &server_name, "-connect-timeout", "5"])
        .args(["-d", r#"{"transfer_id": "never-granted-1"}"#])
        .arg(source.listen_addr().to_string())
        .arg("navette.v1.FileSource/ListTree")
        .output()?)
}

/// The peer port let the certificate through: the refusal is the
/// handler's, about the transfer.
fn reached_the_handler(output: &Output) -> anyhow::Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success()
            && stderr.contains("never-granted-1")
            && !stderr.contains("revoked or superseded"),
        "expected the grant check to answer, got: {stderr}"
    );
    Ok(())
}

/// Waits until `source`'s peer port refuses `pair` for `reason` (the agent
/// learns the refused serials from its next heartbeat).
fn wait_peer_refuses(
    rig: &Rig,
    pair: &CertPair,
    source: &Agent,
    reason: &str,
) -> anyhow::Result<()> {
    let mut last = String::new();
    rig.wait_until(
        "the peer port refuses the certificate",
        Duration::from_secs(20),
        || {
            let output = list_tree(rig, pair, source)?;
            last = String::from_utf8_lossy(&output.stderr).into_owned();
            Ok(expect_refusal(&output, "PermissionDenied", reason).is_ok())
        },
    )
    .with_context(|| format!("last answer: {last}"))
}

/// The call was refused with PermissionDenied and `reason`. (grpcurl asks
/// for the service's descriptor first; a refused certificate is refused
/// there already, which grpcurl reports in its own words.)
fn expect_refusal(output: &Output, code: &str, reason: &str) -> anyhow::Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains(code) && stderr.contains(reason),
        "expected {code} with {reason:?}, got: {stderr}"
    );
    Ok(())
}

fn ok(output: &Output, what: &str) -> anyhow::Result<()> {
    ensure!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[test]
fn superseded_and_revoked_certificates_are_refused_on_every_port() -> anyhow::Result<()> {
    let rig = Rig::new("identity")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 11))?;
    let source = enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    let agent = enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;
    let dir = rig.dir().to_path_buf();

    // The first certificate works everywhere, as it should.
    let first = keep_identity(&agent, &dir, "test-1-first")?;
    ok(&heartbeat(&rig, &first, "test-1")?, "heartbeat, first key")?;
    reached_the_handler(&list_tree(&rig, &first, &source)?)?;
    let host = support::host(&rig, "test-1")?;
    ensure!(
        str_of(&host, "certificateSerial") == serial(&first)?,
        "the host's current certificate is the first: {host}"
    );

    // The host is reinstalled and enrols again with a new key.
    let token = rig.create_join_token("test-1", AgentKind::Test)?;
    agent.stop();
    let enrolled = agent
        .command(&["enrol", "--force", "--token", &token])
        .output()?;
    ok(&enrolled, "enrol --force")?;
    agent.restart()?;
    let second = keep_identity(&agent, &dir, "test-1-second")?;
    ensure!(serial(&second)? != serial(&first)?, "a new certificate");
    rig.wait_until(
        "the host shows its new certificate",
        Duration::from_secs(20),
        || Ok(str_of(&support::host(&rig, "test-1")?, "certificateSerial") == serial(&second)?),
    )?;

    // The old key stops working: controller API, renewal, peer port.
    let superseded = "no longer host test-1's current certificate";
    expect_refusal(
        &heartbeat(&rig, &first, "test-1")?,
        "PermissionDenied",
        superseded,
    )?;
    expect_refusal(&renew(&rig, &first)?, "PermissionDenied", superseded)?;
    wait_peer_refuses(&rig, &first, &source, "revoked or superseded")?;
    // The new one works.
    ok(
        &heartbeat(&rig, &second, "test-1")?,
        "heartbeat, second key",
    )?;
    reached_the_handler(&list_tree(&rig, &second, &source)?)?;

    // An operator removes the host: every certificate it has is revoked.
    let removed = rig.grpcurl_json(
        "navette.v1.Hosts/RemoveHost",
        &json!({"id": "test-1", "reason": "disk failure, host decommissioned"}),
    )?;
    ensure!(
        str_of(&removed, "state") == "HOST_STATE_REMOVED"
            && str_of(&removed, "removedReason") == "disk failure, host decommissioned"
            && str_of(&removed, "removedBy").contains("operator"),
        "the removal says who and why: {removed}"
    );
    let removed_by = "removed by an operator (disk failure, host decommissioned)";
    expect_refusal(
        &heartbeat(&rig, &second, "test-1")?,
        "PermissionDenied",
        removed_by,
    )?;
    expect_refusal(&renew(&rig, &second)?, "PermissionDenied", removed_by)?;
    expect_refusal(
        &heartbeat(&rig, &first, "test-1")?,
        "PermissionDenied",
        "test-1",
    )?;
    wait_peer_refuses(&rig, &second, &source, "revoked or superseded")?;
    // The running agent keeps trying; its heartbeats do not bring the host
    // back.
    std::thread::sleep(Duration::from_secs(3));
    let host = support::host(&rig, "test-1")?;
    ensure!(
        str_of(&host, "state") == "HOST_STATE_REMOVED",
        "a removed host stays removed while its agent keeps calling: {host}"
    );
    // A second removal changes nothing.
    let again = rig.grpcurl_json(
        "navette.v1.Hosts/RemoveHost",
        &json!({"id": "test-1", "reason": "again"}),
    )?;
    ensure!(
        str_of(&again, "removedReason") == "disk failure, host decommissioned"
            && str_of(&again, "removedAt") == str_of(&removed, "removedAt"),
        "removal is idempotent: {again}"
    );
    // A removal needs a reason.
    let api = rig.controller_access()?.api.to_string();
    let access = rig.controller_access()?;
    expect_refusal(
        &rig.grpcurl_as(
            &access.operator,
            &[
                "-d",
                r#"{"id": "shared-1"}"#,
                &api,
                "navette.v1.Hosts/RemoveHost",
            ],
        )?,
        "InvalidArgument",
        "reason is required",
    )?;

    // A new join token is the way back.
    let token = rig.create_join_token("test-1", AgentKind::Test)?;
    agent.stop();
    ok(
        &agent
            .command(&["enrol", "--force", "--token", &token])
            .output()?,
        "enrol after removal",
    )?;
    agent.restart()?;
    rig.wait_until("the host is back", Duration::from_secs(20), || {
        Ok(str_of(&support::host(&rig, "test-1")?, "state") == "HOST_STATE_ONLINE")
    })?;
    let third = keep_identity(&agent, &dir, "test-1-third")?;
    reached_the_handler(&list_tree(&rig, &third, &source)?)?;
    expect_refusal(
        &heartbeat(&rig, &second, "test-1")?,
        "PermissionDenied",
        "test-1",
    )?;

    // Renewal accepts only the latest certificate: once a certificate has
    // renewed, it renews no more and the controller refuses it.
    ok(
        &renew(&rig, &third)?,
        "renewal with the current certificate",
    )?;
    expect_refusal(&renew(&rig, &third)?, "PermissionDenied", superseded)?;
    expect_refusal(
        &heartbeat(&rig, &third, "test-1")?,
        "PermissionDenied",
        superseded,
    )?;
    // Peers refuse it on every new connection (grpcurl dials anew each
    // call) once they hear of the renewal; only a connection opened with it
    // before (a transfer in flight) may finish.
    wait_peer_refuses(&rig, &third, &source, "superseded by a renewal")?;
    Ok(())
}
