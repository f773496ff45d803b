//! grpcurl, the operators' client, run from the rig's client namespace.
//!
//! Owns: the TLS flags (CA, client certificate, the controller's server
//! name `controller.navette.internal`), running grpcurl inside
//! `<prefix>-net`, and reading its JSON (proto3 JSON: camelCase field
//! names, 64-bit integers as strings). Join tokens are created here, the way
//! an operator would, and carry what the host is (its kind, optionally its
//! declared disk): the controller takes that from the token, not from the
//! agent's configuration.

use std::process::Output;

use anyhow::{Context, bail};

use crate::agent::AgentKind;
use crate::controller::CertPair;
use crate::install::GRPCURL;
use crate::rig::Rig;
use crate::sweep::unique_hex;

impl Rig {
    /// Runs `grpcurl <TLS flags> ARGS` in the client namespace with the
    /// operator certificate. `args` are grpcurl's own, address included:
    /// `["-d", "{}", &api, "navette.v1.Hosts/ListHosts"]`.
    pub fn grpcurl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let access = self.controller_access()?;
        self.grpcurl_as(&access.operator, args)
    }

    /// [`Rig::grpcurl`] presenting `cert` (panel, an agent, a stranger).
    pub fn grpcurl_as(&self, cert: &CertPair, args: &[&str]) -> anyhow::Result<Output> {
        let access = self.controller_access()?;
        let mut command = self.client().command(GRPCURL);
        command
            .arg("-cacert")
            .arg(&access.ca_file)
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key)
            .args([
                "-servername",
                navette_proto::identity::CONTROLLER_SERVER_NAME,
            ])
            .args(["-connect-timeout", "5"])
            .args(args);
        command
            .output()
            .with_context(|| format!("running {GRPCURL} (build the rig with tests/setup.sh)"))
    }

    /// Calls `method` ("navette.v1.Hosts/ListHosts") on the controller's API
    /// with `request` as the operator; the answer as JSON (an array when
    /// the method streams several messages). An error with grpcurl's
    /// message unless it succeeds.
    pub fn grpcurl_json(
        &self,
        method: &str,
        request: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let access = self.controller_access()?;
        self.grpcurl_json_as(&access.operator, method, request)
    }

    /// [`Rig::grpcurl_json`] presenting `cert`.
    pub fn grpcurl_json_as(
        &self,
        cert: &CertPair,
        method: &str,
        request: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let access = self.controller_access()?;
        let api = access.api.to_string();
        let body = request.to_string();
        let output = self.grpcurl_as(cert, &["-d", &body, &api, method])?;
        if !output.status.success() {
            bail!(
                "grpcurl {method} {body}: {} ({})",
                String::from_utf8_lossy(&output.stderr).trim(),
                output.status
            );
        }
        parse_messages(&String::from_utf8_lossy(&output.stdout))
            .with_context(|| format!("grpcurl {method}: reading its output"))
    }

    /// Creates a join token for `host_id`, enrolling it as a `kind` host,
    /// as an operator would, and returns its secret (for
    /// `navette-agent enrol --token`).
    pub fn create_join_token(&self, host_id: &str, kind: AgentKind) -> anyhow::Result<String> {
        self.create_join_token_with(
            host_id,
            &JoinTokenSpec {
                kind: Some(kind),
                declared_disk_bytes: None,
            },
        )
    }

    /// [`Rig::create_join_token`] with every choice the operator has.
    pub fn create_join_token_with(
        &self,
        host_id: &str,
        spec: &JoinTokenSpec,
    ) -> anyhow::Result<String> {
        let mut request = serde_json::json!({
            "request_id": request_id(),
            "host_id": host_id,
        });
        if let Some(kind) = spec.kind {
            request["kind"] = serde_json::Value::from(kind.proto_name());
        }
        if let Some(bytes) = spec.declared_disk_bytes {
            request["declared_disk_bytes"] = serde_json::Value::from(bytes.to_string());
        }
        let answer = self.grpcurl_json("navette.v1.JoinTokens/CreateJoinToken", &request)?;
        let secret = answer
            .get("secret")
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("CreateJoinToken for {host_id}: no secret in {answer}"))?;
        Ok(secret.to_owned())
    }
}

/// What an operator says about a host when creating its join token.
#[derive(Clone, Debug, Default)]
pub struct JoinTokenSpec {
    /// `None`: the host receives nothing until an operator sets its kind.
    pub kind: Option<AgentKind>,
    /// The host's class: its disk size.
    pub declared_disk_bytes: Option<u64>,
}

/// A fresh request id shaped like a UUID (`8-4-4-4-12` hex digits).
pub fn request_id() -> String {
    let hex = format!("{}{}", unique_hex(16), unique_hex(16));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// One JSON value, or an array of the several grpcurl printed.
fn parse_messages(stdout: &str) -> anyhow::Result<serde_json::Value> {
    let mut messages = serde_json::Deserializer::from_str(stdout)
        .into_iter::<serde_json::Value>()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match messages.len() {
        0 => serde_json::Value::Null,
        1 => messages.remove(0),
        _ => serde_json::Value::Array(messages),
    })
}
