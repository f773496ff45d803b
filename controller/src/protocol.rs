//! Transfer protocol versions on the controller's side: which version a
//! copy from one host to another runs on, from what their agents report
//! (`HostInventory.source_protocols` / `target_protocols`). A version fixes
//! what both agents of a transfer compute alike (so far: the PostgreSQL row
//! digest; 1 = the fold hash of agents before XXH3, 2 = XXH3-64); the
//! agents' `transfer::protocol` says what each means. Pure functions, no
//! I/O.
//!
//! Invariant: a source and a target are paired only on a version both
//! speak, the highest one; otherwise the refusal names both hosts, their
//! agents' versions and the protocol versions each speaks.

use crate::model::Host;

/// The protocol versions taken for an agent that reports none: agents
/// from before versions were reported computed version 2's digest.
const UNREPORTED_PROTOCOLS: &[u32] = &[2];

/// The versions `spoken` (one role's, as reported), or the unreported
/// agent's.
fn protocols_of(spoken: &[u32]) -> &[u32] {
    if spoken.is_empty() {
        UNREPORTED_PROTOCOLS
    } else {
        spoken
    }
}

/// "agent 0.1.0, protocol versions 1 as a source", for refusals.
fn describe_protocols(host: &Host, spoken: &[u32], role: &str) -> String {
    let agent = if host.agent_version.is_empty() {
        "agent of unknown version".to_owned()
    } else {
        format!("agent {}", host.agent_version)
    };
    let versions = protocols_of(spoken)
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if spoken.is_empty() {
        format!("{agent}, no protocol versions reported (taken as {versions}) as a {role}")
    } else {
        format!("{agent}, protocol versions {versions} as a {role}")
    }
}

/// The transfer protocol version a copy from `source` to `target` runs on:
/// the highest the source's agent speaks as a source and the target's as a
/// target. Otherwise why not, naming both hosts, their agents' versions and
/// the protocol versions each speaks (starting with the target's id, as
/// the other reasons a host is passed over do). Fleets upgrade one host at
/// a time, so two hosts a version apart still share one.
pub fn protocol_version(source: &Host, target: &Host) -> Result<u32, String> {
    let sent = protocols_of(&source.source_protocols);
    protocols_of(&target.target_protocols)
        .iter()
        .filter(|version| sent.contains(version))
        .max()
        .copied()
        .ok_or_else(|| {
            format!(
                "{} shares no transfer protocol version with {} ({}: {}; {}: {}); upgrade the older agent",
                target.id,
                source.id,
                source.id,
                describe_protocols(source, &source.source_protocols, "source"),
                target.id,
                describe_protocols(target, &target.target_protocols, "target"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HostState;

    fn host(id: &str, agent_version: &str, source: &[u32], target: &[u32]) -> Host {
        Host {
            id: id.into(),
            kind: None,
            reported_kind: None,
            declared_disk_bytes: None,
            certificate_serial: None,
            removed: None,
            state: HostState::Online,
            draining: false,
            pool: None,
            stack_version: "2024.1".into(),
            agent_version: agent_version.into(),
            agent_endpoint: format!("{id}:7445"),
            addresses: vec![],
            disk_total_bytes: 0,
            disk_free_bytes: 0,
            database_servers: vec![],
            account_count: 0,
            enrolled_at: None,
            last_heartbeat_at: None,
            inventory_updated_at: None,
            certificate_expires_at: None,
            source_protocols: source.to_vec(),
            target_protocols: target.to_vec(),
            serves_sites: false,
        }
    }

    #[test]
    fn the_highest_version_both_speak_is_chosen() {
        let new = host("test-1", "0.2.0", &[1, 2], &[1, 2]);
        let old = host("shared-1", "0.1.0", &[1], &[1]);
        assert_eq!(protocol_version(&new, &new), Ok(2));
        // One version back either way: the new agent speaks the old one.
        assert_eq!(protocol_version(&old, &new), Ok(1));
        assert_eq!(protocol_version(&new, &old), Ok(1));
        // Each side in its own role: what the source serves, what the
        // target pulls.
        let serves_3 = host("shared-2", "0.3.0", &[2, 3], &[1]);
        let pulls_3 = host("test-2", "0.3.0", &[1], &[2, 3]);
        assert_eq!(protocol_version(&serves_3, &pulls_3), Ok(3));
        assert_eq!(protocol_version(&pulls_3, &serves_3), Ok(1));
    }

    #[test]
    fn no_common_version_is_refused_naming_both_hosts_and_versions() {
        let old = host("shared-1", "0.1.0", &[1], &[1]);
        let newer = host("test-1", "0.3.0", &[2, 3], &[2, 3]);
        let refused = protocol_version(&old, &newer).expect_err("nothing in common");
        assert_eq!(
            refused,
            "test-1 shares no transfer protocol version with shared-1 (shared-1: agent 0.1.0, \
             protocol versions 1 as a source; test-1: agent 0.3.0, protocol versions 2, 3 as a \
             target); upgrade the older agent"
        );
    }

    #[test]
    fn an_agent_that_reports_no_versions_is_taken_as_speaking_2() {
        let unreported = host("shared-1", "", &[], &[]);
        assert_eq!(
            protocol_version(&unreported, &host("test-1", "0.2.0", &[1, 2], &[1, 2])),
            Ok(2)
        );
        let refused = protocol_version(&unreported, &host("test-1", "0.1.0", &[1], &[1]))
            .expect_err("2 is not 1");
        assert!(
            refused.contains(
                "shared-1: agent of unknown version, no protocol versions reported (taken as 2) as a source"
            ),
            "{refused}"
        );
    }
}
