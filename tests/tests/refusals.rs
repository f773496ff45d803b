//! Every way in that must stay shut, each refused with the gRPC status a
//! client can act on and a message that says why: TLS-level refusals (no
//! certificate, a foreign CA, an expired certificate), role refusals (an
//! agent on the panel API, the panel on the agent API, an agent on another
//! host's agent or speaking for another host), and join tokens used twice
//! or after they expired.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, ensure};
use navette_proto::v1;
use navette_tests::{AgentKind, CertPair, ControllerSpec, Rig};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use serde_json::json;
use support::{enrol, expect_refusal};

/// A certificate for `role_uri`, written next to the rig's files. Signed by
/// `issuer` (the real CA, or a stranger's), valid from/to the given dates.
fn forge(
    dir: &Path,
    name: &str,
    role_uri: &str,
    issuer: (&str, &KeyPair),
    validity: (time::OffsetDateTime, time::OffsetDateTime),
) -> anyhow::Result<CertPair> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .subject_alt_names
        .push(SanType::URI(role_uri.try_into()?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    (params.not_before, params.not_after) = validity;
    let issuer = Issuer::from_ca_cert_pem(issuer.0, issuer.1)?;
    let cert = params.signed_by(&key, &issuer)?;
    let pair = CertPair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pair.cert, cert.pem())?;
    std::fs::write(&pair.key, key.serialize_pem())?;
    Ok(pair)
}

/// Calls `Hosts/ListHosts` with our own client presenting `cert` (or none)
/// and returns the refusal's code and full message.
fn call_with(rig: &Rig, cert: Option<&CertPair>) -> anyhow::Result<(tonic::Code, String)> {
    use navette_proto::tls;
    let access = rig.controller_access()?;
    rig.run_in(rig.client(), || async move {
        tls::install_crypto_provider();
        let roots = tls::load_ca_roots(&access.ca_file)?;
        let identity = match cert {
            Some(pair) => Some(tls::Identity::load(&pair.cert, &pair.key)?),
            None => None,
        };
        let channel = tls::channel(
            SocketAddr::from(access.api),
            navette_proto::identity::CONTROLLER_SERVER_NAME,
            tls::client_config(roots, identity)?,
        )?;
        let mut client = v1::hosts_client::HostsClient::new(channel);
        match client.list_hosts(v1::ListHostsRequest::default()).await {
            Ok(_) => Ok((tonic::Code::Ok, String::new())),
            Err(status) => Ok((status.code(), status.message().to_owned())),
        }
    })
}

#[test]
fn every_refusal_has_the_right_status_and_says_why() -> anyhow::Result<()> {
    let rig = Rig::new("refusals")?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    let host_a = rig.add_namespace("host-a", Ipv4Addr::new(192, 0, 2, 10))?;
    let host_b = rig.add_namespace("host-b", Ipv4Addr::new(192, 0, 2, 11))?;
    let agent_a = enrol(&rig, &host_a, AgentKind::Shared, "2024.1")?;
    let agent_b = enrol(&rig, &host_b, AgentKind::Shared, "2024.1")?;
    support::wait_online_with_inventory(&rig, &["host-a", "host-b"])?;
    let access = rig.controller_access()?;

    // The operator gets in: the refusals below are about the credentials.
    let (code, message) = call_with(&rig, Some(&access.operator))?;
    ensure!(code == tonic::Code::Ok, "operator refused: {message}");

    // TLS refusals: the connection never reaches a service.
    let (code, message) = call_with(&rig, None)?;
    ensure!(
        code == tonic::Code::Unavailable && message.contains("requires a client certificate"),
        "no certificate: {code:?} {message}"
    );
    let stranger_key = KeyPair::generate()?;
    let mut stranger_ca = CertificateParams::default();
    stranger_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    stranger_ca
        .distinguished_name
        .push(DnType::CommonName, "Some other CA");
    let stranger_ca_pem = stranger_ca.self_signed(&stranger_key)?.pem();
    let dir = rig.dir().to_path_buf();
    let long_ago = rcgen::date_time_ymd(2020, 1, 1);
    let far_ahead = rcgen::date_time_ymd(2100, 1, 1);
    let foreign = forge(
        &dir,
        "foreign-operator",
        "spiffe://navette/operator",
        (&stranger_ca_pem, &stranger_key),
        (long_ago, far_ahead),
    )?;
    let (code, message) = call_with(&rig, Some(&foreign))?;
    ensure!(
        code == tonic::Code::Unavailable && message.contains("not issued by the server's CA"),
        "foreign CA: {code:?} {message}"
    );
    let ca_dir = access.ca_file.parent().context("CA directory")?;
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key"))?)?;
    let expired = forge(
        &dir,
        "expired-operator",
        "spiffe://navette/operator",
        (&ca_pem, &ca_key),
        (long_ago, rcgen::date_time_ymd(2020, 2, 1)),
    )?;
    let (code, message) = call_with(&rig, Some(&expired))?;
    ensure!(
        code == tonic::Code::Unavailable && message.contains("expired"),
        "expired certificate: {code:?} {message}"
    );

    // Role refusals, as the real grpcurl sees them.
    let api = access.api.to_string();
    let agent_cert = |agent: &navette_tests::Agent| CertPair {
        cert: agent.state_dir().join("agent.pem"),
        key: agent.state_dir().join("agent.key"),
    };
    let a_cert = agent_cert(&agent_a);
    let output = rig.grpcurl_as(
        &a_cert,
        &["-d", "{}", &api, "navette.v1.Catalogue/ListMigrations"],
    )?;
    expect_refusal(&output, "PermissionDenied", "panel API")?;
    expect_refusal(
        &output,
        "PermissionDenied",
        "the caller is agent of host host-a",
    )?;

    let output = rig.grpcurl_as(
        &access.panel,
        &["-d", "{}", &api, "navette.v1.Hosts/ListHosts"],
    )?;
    expect_refusal(&output, "PermissionDenied", "operator API")?;

    let body = json!({"host_id": "host-b"}).to_string();
    let output = rig.grpcurl_as(
        &a_cert,
        &["-d", &body, &api, "navette.v1.AgentGateway/Heartbeat"],
    )?;
    expect_refusal(&output, "PermissionDenied", "may not speak for host host-b")?;

    // Calls to an agent: only the controller may use its Agent service.
    let call_agent =
        |cert: &CertPair, agent: &navette_tests::Agent| -> anyhow::Result<std::process::Output> {
            let server_name = navette_proto::identity::agent_server_name(agent.host().host());
            Ok(rig
                .client()
                .command("grpcurl")
                .arg("-cacert")
                .arg(&access.ca_file)
                .arg("-cert")
                .arg(&cert.cert)
                .arg("-key")
                .arg(&cert.key)
                .args([
                    "-servername",
                    &server_name,
                    "-connect-timeout",
                    "5",
                    "-d",
                    "{}",
                ])
                .arg(agent.listen_addr().to_string())
                .arg("navette.v1.Agent/GetInventory")
                .output()?)
        };
    let output = call_agent(&access.panel, &agent_b)?;
    expect_refusal(&output, "PermissionDenied", "the caller is panel")?;
    let output = call_agent(&a_cert, &agent_b)?;
    expect_refusal(
        &output,
        "PermissionDenied",
        "the caller is agent of host host-a",
    )?;

    // Join tokens: once only, and not after they expire.
    let enrolment = access.enrolment.to_string();
    let csr_key = KeyPair::generate()?;
    let csr = CertificateParams::default()
        .serialize_request(&csr_key)?
        .pem()?;
    let enrol_with = |token: &str| -> anyhow::Result<std::process::Output> {
        let body = json!({"token": token, "csr_pem": csr}).to_string();
        Ok(rig
            .client()
            .command("grpcurl")
            .arg("-cacert")
            .arg(&access.ca_file)
            .args([
                "-servername",
                navette_proto::identity::CONTROLLER_SERVER_NAME,
            ])
            .args([
                "-connect-timeout",
                "5",
                "-d",
                &body,
                &enrolment,
                "navette.v1.Enrolment/Enrol",
            ])
            .output()?)
    };
    let token = rig.create_join_token("host-c", AgentKind::Shared)?;
    let first = enrol_with(&token)?;
    ensure!(
        first.status.success(),
        "a fresh token enrols: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    expect_refusal(&enrol_with(&token)?, "Unauthenticated", "already used")?;
    // The agent's own command says the same to the operator.
    let again = agent_a
        .command(&["enrol", "--force", "--token", &token])
        .output()?;
    ensure!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already used"),
        "navette-agent enrol with a used token: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let short = rig.grpcurl_json(
        "navette.v1.JoinTokens/CreateJoinToken",
        &json!({"request_id": navette_tests::grpcurl::request_id(), "host_id": "host-d", "ttl_seconds": 1}),
    )?;
    let short_secret = support::str_of(&short, "secret").to_owned();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    expect_refusal(&enrol_with(&short_secret)?, "Unauthenticated", "expired")?;
    expect_refusal(&enrol_with("0000.1111")?, "Unauthenticated", "not valid")?;
    drop(controller);
    Ok(())
}
