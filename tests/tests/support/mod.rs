//! What several end-to-end tests share: a controller plus enrolled hosts,
//! and reading the controller's answers (grpcurl's proto3 JSON).

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, bail};
use navette_tests::{Agent, AgentKind, AgentSpec, Controller, ControllerSpec, Netns, Rig};
use serde_json::Value;

pub const CONTROLLER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Starts the controller in its own namespace.
pub fn controller(rig: &Rig, spec: ControllerSpec) -> anyhow::Result<Controller> {
    let ctl = rig.add_namespace("ctl", CONTROLLER_ADDR)?;
    rig.start_controller(&ctl, spec)
}

/// Creates a join token for `host` (its namespace's host name is the host
/// id) and starts its agent.
pub fn enrol(
    rig: &Rig,
    host: &Netns,
    kind: AgentKind,
    stack_version: &str,
) -> anyhow::Result<Agent> {
    let token = rig.create_join_token(host.host())?;
    rig.start_agent(
        host,
        AgentSpec {
            kind,
            stack_version: stack_version.to_owned(),
            token,
            ..AgentSpec::default()
        },
    )
}

/// `Hosts/ListHosts` as the operator, by host id.
pub fn hosts(rig: &Rig) -> anyhow::Result<Vec<Value>> {
    let answer = rig.grpcurl_json("navette.v1.Hosts/ListHosts", &serde_json::json!({}))?;
    Ok(list(&answer, "hosts"))
}

pub fn host(rig: &Rig, id: &str) -> anyhow::Result<Value> {
    hosts(rig)?
        .into_iter()
        .find(|h| str_of(h, "id") == id)
        .with_context(|| format!("host {id} is not listed"))
}

/// The repeated field `name` of a grpcurl answer (absent when empty).
pub fn list(value: &Value, name: &str) -> Vec<Value> {
    value
        .get(name)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A string field of a grpcurl answer ("" when absent, as proto3 omits
/// defaults).
pub fn str_of<'a>(value: &'a Value, name: &str) -> &'a str {
    value.get(name).and_then(Value::as_str).unwrap_or("")
}

/// Waits until every host in `ids` is online and has reported an inventory.
pub fn wait_online_with_inventory(rig: &Rig, ids: &[&str]) -> anyhow::Result<()> {
    rig.wait_until(
        "hosts online with an inventory",
        Duration::from_secs(60),
        || {
            let hosts = hosts(rig)?;
            Ok(ids.iter().all(|id| {
                hosts.iter().any(|h| {
                    str_of(h, "id") == *id
                        && str_of(h, "state") == "HOST_STATE_ONLINE"
                        && !str_of(h, "inventoryUpdatedAt").is_empty()
                })
            }))
        },
    )
}

/// grpcurl's error output must show `code` and contain `reason`.
pub fn expect_refusal(
    output: &std::process::Output,
    code: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        bail!(
            "expected {code} ({reason}), but the call succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    if !stderr.contains(&format!("Code: {code}")) || !stderr.contains(reason) {
        bail!("expected {code} with {reason:?}, got: {stderr}");
    }
    Ok(())
}
