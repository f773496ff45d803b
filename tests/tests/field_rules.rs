//! Every request field keeps its rule, as a client sees it through the real
//! grpcurl: a NUL byte, white space around a value, a megabyte where a name
//! goes and a number out of range are each `INVALID_ARGUMENT` with a
//! message that names the field, never `UNAVAILABLE` (which a panel would
//! retry forever), and no refusal is longer than a few hundred bytes (gRPC
//! C-core clients cannot read more than 16 KiB of metadata). Well-formed
//! values of the same calls are not refused by the rules, so the table
//! cannot pass by refusing everything.
//!
//! The calls cover the panel (Tests, Accounts, Catalogue), the operator
//! (Hosts, HostPools, JoinTokens), enrolment, the agent gateway (as an
//! enrolled agent) and the agent's own service (as the controller).

mod support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail, ensure};
use navette_tests::{AgentKind, CertPair, ControllerSpec, Rig};
use serde_json::{Value, json};

/// The longest refusal message accepted, in bytes.
const MAX_MESSAGE_BYTES: usize = 400;

/// Where and as whom a call goes.
#[derive(Clone, Copy)]
enum Caller<'a> {
    /// The controller's mTLS API, presenting this certificate.
    Api(&'a CertPair),
    /// The enrolment listener, without a client certificate.
    Enrolment,
    /// An agent's listener, as the controller.
    Agent(&'a CertPair, &'a navette_tests::Agent),
}

/// Runs grpcurl with `body` on its standard input (`-d @`: a megabyte does
/// not fit in one command-line argument).
fn call(rig: &Rig, caller: Caller<'_>, method: &str, body: &Value) -> anyhow::Result<Output> {
    let access = rig.controller_access()?;
    let mut command: Command = rig.client().command("grpcurl");
    command.arg("-cacert").arg(&access.ca_file);
    let (address, server_name) = match caller {
        Caller::Api(cert) => {
            command
                .arg("-cert")
                .arg(&cert.cert)
                .arg("-key")
                .arg(&cert.key);
            (
                access.api.to_string(),
                navette_proto::identity::CONTROLLER_SERVER_NAME.to_owned(),
            )
        }
        Caller::Enrolment => (
            access.enrolment.to_string(),
            navette_proto::identity::CONTROLLER_SERVER_NAME.to_owned(),
        ),
        Caller::Agent(cert, agent) => {
            command
                .arg("-cert")
                .arg(&cert.cert)
                .arg("-key")
                .arg(&cert.key);
            (
                agent.listen_addr().to_string(),
                navette_proto::identity::agent_server_name(agent.host().host()),
            )
        }
    };
    command
        .args(["-servername", &server_name, "-connect-timeout", "5"])
        .args(["-max-time", "20", "-d", "@", &address, method])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("running grpcurl")?;
    let mut stdin = child.stdin.take().context("grpcurl's stdin")?;
    let text = body.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writing to grpcurl panicked"))?
        .context("writing the request to grpcurl")?;
    Ok(output)
}

/// A certificate with the controller's role, signed with the rig's CA key
/// (as the controller signs its own): what the agent's service takes.
fn controller_certificate(
    rig: &Rig,
    access: &navette_tests::ControllerAccess,
) -> anyhow::Result<CertPair> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let ca_dir = access.ca_file.parent().context("CA directory")?;
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key"))?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "field-rules-controller");
    params
        .subject_alt_names
        .push(SanType::URI("spiffe://navette/controller".try_into()?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?)?;
    let pair = CertPair {
        cert: rig.dir().join("field-rules-controller.pem"),
        key: rig.dir().join("field-rules-controller.key"),
    };
    std::fs::write(&pair.cert, cert.pem())?;
    std::fs::write(&pair.key, key.serialize_pem())?;
    Ok(pair)
}

/// grpcurl's status code and message (`Ok` and "" when the call
/// succeeded). grpcurl prints `Code: X` and `Message: ...` on stderr.
fn outcome(output: &Output) -> (String, String) {
    if output.status.success() {
        return ("OK".to_owned(), String::new());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Code: "))
        .unwrap_or("(no code)")
        .to_owned();
    let message = match stderr.find("Message: ") {
        Some(at) => stderr[at + "Message: ".len()..].trim_end().to_owned(),
        None => stderr.trim().to_owned(),
    };
    (code, message)
}

/// One request field and the call that carries it.
struct Field<'a> {
    caller: Caller<'a>,
    method: &'static str,
    /// A well-formed request.
    base: Value,
    /// Where the field is in the request (`["spec", "account"]`).
    path: &'static [&'static str],
    /// The field's name as refusals say it.
    name: &'static str,
    /// Free text keeps no character set, only the plain-text rules.
    text: bool,
}

fn with(base: &Value, path: &[&str], value: Value) -> Value {
    let mut request = base.clone();
    let mut at = &mut request;
    for part in &path[..path.len() - 1] {
        at = &mut at[*part];
    }
    at[path[path.len() - 1]] = value;
    request
}

/// The refusal must be INVALID_ARGUMENT, name `name`, and be short.
fn expect_invalid(
    rig: &Rig,
    caller: Caller<'_>,
    method: &str,
    request: &Value,
    name: &str,
    what: &str,
) -> anyhow::Result<usize> {
    let output = call(rig, caller, method, request)?;
    let (code, message) = outcome(&output);
    ensure!(
        code == "InvalidArgument",
        "{method} with {what} in {name}: expected InvalidArgument, got {code}: {}",
        short(&message)
    );
    ensure!(
        message.starts_with(&format!("{name}: ")) || message.starts_with(&format!("{name} ")),
        "{method} with {what} in {name}: the message does not name the field: {}",
        short(&message)
    );
    ensure!(
        message.len() <= MAX_MESSAGE_BYTES,
        "{method} with {what} in {name}: a {}-byte message: {}",
        message.len(),
        short(&message)
    );
    Ok(message.len())
}

fn short(message: &str) -> String {
    message.chars().take(300).collect()
}

#[test]
fn every_field_that_breaks_its_rule_is_invalid_argument_naming_it() -> anyhow::Result<()> {
    let rig = Rig::new("field-rules")?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    let host = rig.add_namespace("host-a", Ipv4Addr::new(192, 0, 2, 10))?;
    let agent = support::enrol(&rig, &host, AgentKind::Shared, "2024.1")?;
    support::wait_online_with_inventory(&rig, &["host-a"])?;
    let access = rig.controller_access()?;
    let as_controller = controller_certificate(&rig, &access)?;
    let agent_cert = CertPair {
        cert: agent.state_dir().join("agent.pem"),
        key: agent.state_dir().join("agent.key"),
    };
    let panel = Caller::Api(&access.panel);
    let operator = Caller::Api(&access.operator);
    let gateway = Caller::Api(&agent_cert);
    let on_agent = Caller::Agent(&as_controller, &agent);
    let migration = "postgresql-15-to-18";
    let test_id = "t0123456789abcdef";
    let request_id = navette_tests::grpcurl::request_id;
    // A spec for another host: well-formed, refused by the agent for that
    // reason alone, so that no call of the table starts anything.
    let spec = json!({
        "transfer_id": "t0123456789abcdef-g1", "account": "nobody",
        "source_host_id": "host-b", "target_host_id": "host-b",
    });
    let endpoint = agent.listen_addr().to_string();

    let field = |caller, method, base: Value, path, name| Field {
        caller,
        method,
        base,
        path,
        name,
        text: false,
    };
    let text = |caller, method, base: Value, path, name| Field {
        caller,
        method,
        base,
        path,
        name,
        text: true,
    };
    let test = json!({"request_id": request_id(), "account": "nobody", "migration_id": migration});
    let report = json!({"account": "nobody", "migration_id": migration});
    let enrol = json!({
        "token": "0000.1111",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
    });
    #[rustfmt::skip]
    let fields = vec![
        // The panel.
        field(panel, "navette.v1.Tests/TestMigration", test.clone(), &["request_id"], "request_id"),
        field(panel, "navette.v1.Tests/TestMigration", test.clone(), &["account"], "account"),
        field(panel, "navette.v1.Tests/TestMigration", test.clone(), &["migration_id"], "migration_id"),
        field(panel, "navette.v1.Tests/GetTest", json!({"id": test_id}), &["id"], "id"),
        field(panel, "navette.v1.Tests/RefreshTest", json!({"id": test_id}), &["id"], "id"),
        field(panel, "navette.v1.Tests/DeleteTest", json!({"id": test_id}), &["id"], "id"),
        field(panel, "navette.v1.Tests/WatchTest", json!({"id": test_id}), &["id"], "id"),
        field(panel, "navette.v1.Tests/ListTests", json!({"account": "nobody"}), &["account"], "account"),
        field(panel, "navette.v1.Tests/GetCompatibilityReport", report.clone(), &["account"], "account"),
        field(panel, "navette.v1.Tests/GetCompatibilityReport", report.clone(), &["migration_id"], "migration_id"),
        field(panel, "navette.v1.Accounts/GetAccount", json!({"name": "nobody"}), &["name"], "name"),
        field(panel, "navette.v1.Accounts/ListAccounts", json!({"host_id": "host-a"}), &["host_id"], "host_id"),
        field(panel, "navette.v1.Catalogue/GetMigration", json!({"id": migration}), &["id"], "id"),
        field(panel, "navette.v1.Catalogue/ListMigrations", json!({"account": "nobody"}), &["account"], "account"),
        field(panel, "navette.v1.Catalogue/ListMigrations", json!({"host_id": "host-a"}), &["host_id"], "host_id"),
        // The operator.
        field(operator, "navette.v1.Hosts/GetHost", json!({"id": "host-z"}), &["id"], "id"),
        field(operator, "navette.v1.Hosts/DrainHost", json!({"id": "host-z"}), &["id"], "id"),
        field(operator, "navette.v1.Hosts/UndrainHost", json!({"id": "host-z"}), &["id"], "id"),
        field(operator, "navette.v1.Hosts/RefreshHostInventory", json!({"id": "host-z"}), &["id"], "id"),
        field(operator, "navette.v1.Hosts/WatchHosts", json!({"id": "host-z"}), &["id"], "id"),
        field(operator, "navette.v1.Hosts/ListHosts", json!({"pool": "paris"}), &["pool"], "pool"),
        field(operator, "navette.v1.Hosts/SetHostClass", json!({"id": "host-z"}), &["id"], "id"),
        field(operator, "navette.v1.Hosts/SetHostClass", json!({"id": "host-z", "pool": "paris"}), &["pool"], "pool"),
        field(operator, "navette.v1.Hosts/RemoveHost", json!({"id": "host-z", "reason": "gone"}), &["id"], "id"),
        text(operator, "navette.v1.Hosts/RemoveHost", json!({"id": "host-z", "reason": "gone"}), &["reason"], "reason"),
        field(operator, "navette.v1.HostPools/CreateHostPool",
            json!({"request_id": request_id(), "name": "paris"}), &["request_id"], "request_id"),
        field(operator, "navette.v1.HostPools/CreateHostPool",
            json!({"request_id": request_id(), "name": "lyon"}), &["name"], "name"),
        text(operator, "navette.v1.HostPools/CreateHostPool",
            json!({"request_id": request_id(), "name": "nice", "description": "Nice DC"}),
            &["description"], "description"),
        field(operator, "navette.v1.JoinTokens/CreateJoinToken",
            json!({"request_id": request_id(), "host_id": "host-y"}), &["request_id"], "request_id"),
        field(operator, "navette.v1.JoinTokens/CreateJoinToken",
            json!({"request_id": request_id(), "host_id": "host-x"}), &["host_id"], "host_id"),
        field(operator, "navette.v1.JoinTokens/CreateJoinToken",
            json!({"request_id": request_id(), "host_id": "host-w", "pool": "paris"}), &["pool"], "pool"),
        field(operator, "navette.v1.JoinTokens/RevokeJoinToken", json!({"id": "00ff12ab34cd56ef"}), &["id"], "id"),
        // Enrolment, without a certificate.
        field(Caller::Enrolment, "navette.v1.Enrolment/Enrol", enrol, &["token"], "token"),
        // The agent gateway, as the enrolled agent.
        field(gateway, "navette.v1.AgentGateway/Heartbeat", json!({"host_id": "host-a"}), &["host_id"], "host_id"),
        field(gateway, "navette.v1.AgentGateway/Heartbeat",
            json!({"agent_endpoint": endpoint}), &["agent_endpoint"], "agent_endpoint"),
        // The agent's service, as the controller.
        field(on_agent, "navette.v1.Agent/StartTransfer", spec.clone(), &["transfer_id"], "transfer_id"),
        field(on_agent, "navette.v1.Agent/StartTransfer", spec.clone(), &["account"], "account"),
        field(on_agent, "navette.v1.Agent/StartTransfer", spec.clone(), &["target_host_id"], "target_host_id"),
        field(on_agent, "navette.v1.Agent/GrantTransfer", spec.clone(), &["account"], "account"),
        field(on_agent, "navette.v1.Agent/RemoveCopy", json!({"spec": spec.clone()}),
            &["spec", "transfer_id"], "spec.transfer_id"),
        field(on_agent, "navette.v1.Agent/WatchTransfer",
            json!({"transfer_id": "t0123456789abcdef-g1"}), &["transfer_id"], "transfer_id"),
        field(on_agent, "navette.v1.Agent/RevokeGrant",
            json!({"transfer_id": "t0123456789abcdef-g1"}), &["transfer_id"], "transfer_id"),
    ];

    let megabyte = "a".repeat(1 << 20);
    let (mut longest, mut refusals) = (0, 0);
    for field in &fields {
        // The well-formed request is not refused by any rule.
        let (code, message) = outcome(&call(&rig, field.caller, field.method, &field.base)?);
        ensure!(
            code != "InvalidArgument",
            "{} {}: the well-formed request was refused: {}",
            field.method,
            field.base,
            short(&message)
        );
        ensure!(
            message.len() <= MAX_MESSAGE_BYTES,
            "{}: a {}-byte message: {}",
            field.method,
            message.len(),
            short(&message)
        );
        let good = field
            .path
            .iter()
            .fold(&field.base, |at, part| &at[*part])
            .as_str()
            .context("a string field")?
            .to_owned();
        let mut bad = vec![
            ("a NUL byte", format!("{}\0{}", &good[..1], &good[1..])),
            ("leading white space", format!(" {good}")),
            ("a trailing newline", format!("{good}\n")),
            ("a megabyte", megabyte.clone()),
        ];
        if !field.text {
            bad.push(("a space inside", format!("{} {}", &good[..1], &good[1..])));
        }
        for (what, value) in bad {
            let request = with(&field.base, field.path, Value::from(value));
            let length =
                expect_invalid(&rig, field.caller, field.method, &request, field.name, what)?;
            longest = longest.max(length);
            refusals += 1;
        }
    }

    // Numbers out of range.
    let numbers = [
        (
            panel,
            "navette.v1.Tests/TestMigration",
            json!({"request_id": request_id(), "account": "nobody", "migration_id": migration, "ttl_seconds": 4_294_967_295u32}),
            "ttl_seconds",
        ),
        (
            panel,
            "navette.v1.Tests/TestMigration",
            json!({"request_id": request_id(), "account": "nobody", "migration_id": migration, "ttl_seconds": 7_776_001}),
            "ttl_seconds",
        ),
        (
            operator,
            "navette.v1.JoinTokens/CreateJoinToken",
            json!({"request_id": request_id(), "host_id": "host-v", "ttl_seconds": 4_294_967_295u32}),
            "ttl_seconds",
        ),
        (
            operator,
            "navette.v1.JoinTokens/CreateJoinToken",
            json!({"request_id": request_id(), "host_id": "host-v", "declared_disk_bytes": u64::MAX.to_string()}),
            "declared_disk_bytes",
        ),
        (
            operator,
            "navette.v1.Hosts/SetHostClass",
            json!({"id": "host-a", "declared_disk_bytes": u64::MAX.to_string()}),
            "declared_disk_bytes",
        ),
        (
            operator,
            "navette.v1.Hosts/SetHostClass",
            json!({"id": "host-a", "kind": 99}),
            "kind",
        ),
    ];
    for (caller, method, request, name) in &numbers {
        let length = expect_invalid(
            &rig,
            *caller,
            method,
            request,
            name,
            "a number out of range",
        )?;
        longest = longest.max(length);
        refusals += 1;
    }
    eprintln!(
        "{refusals} refusals over {} fields and {} numbers; the longest message is {longest} bytes",
        fields.len(),
        numbers.len()
    );
    // At their maxima (documented in the .proto files) they are taken.
    let (code, message) = outcome(&call(
        &rig,
        panel,
        "navette.v1.Tests/TestMigration",
        &json!({"request_id": request_id(), "account": "nobody", "migration_id": migration, "ttl_seconds": 7_776_000}),
    )?);
    ensure!(
        code == "NotFound" && message.contains("nobody"),
        "a 90-day test of an unknown account: {code}: {message}"
    );
    let token = rig.grpcurl_json(
        "navette.v1.JoinTokens/CreateJoinToken",
        &json!({"request_id": request_id(), "host_id": "host-u", "ttl_seconds": 604_800, "declared_disk_bytes": (1u64 << 60).to_string()}),
    )?;
    let expires = token["token"]["expiresAt"].as_str().unwrap_or("");
    let created = token["token"]["createdAt"].as_str().unwrap_or("");
    let (expires, created) = (
        chrono::DateTime::parse_from_rfc3339(expires)
            .with_context(|| format!("expiresAt in {token}"))?,
        chrono::DateTime::parse_from_rfc3339(created)
            .with_context(|| format!("createdAt in {token}"))?,
    );
    let lifetime = (expires - created).num_seconds();
    ensure!(
        (604_790..=604_810).contains(&lifetime),
        "a 7-day token lives {lifetime} s"
    );

    // What was refused left nothing behind: no pool, token or test was
    // made of a refused value, and the controller still answers.
    let pools = rig.grpcurl_json("navette.v1.HostPools/ListHostPools", &json!({}))?;
    for pool in support::list(&pools, "pools") {
        let name = support::str_of(&pool, "name");
        if !["paris", "lyon", "nice"].contains(&name) {
            bail!("a pool was created from a refused value: {name:?}");
        }
    }
    let tests = support::panel(&rig, "ListTests", json!({}))?;
    ensure!(
        support::list(&tests, "tests").is_empty(),
        "no test was started: {tests}"
    );
    drop(controller);
    Ok(())
}
