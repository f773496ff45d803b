//! The pool's pure rules: which server may ask for transit, what a
//! release is refused for, and which addresses an allocation holds on its
//! transit host. No I/O: `allocate` reads the hosts, the allocation and
//! the server's address moves and calls these.

use super::Allocation;
use crate::error::{Error, Result};
use crate::model::{Account, Host, HostKind, HostState};
use crate::store::addresses::{AddressMove, RecordedAddress};

/// The class a server asks for transit in, or why it may not ask: only a
/// dedicated server or a VPS (the operator's kind), not removed, with a
/// configuration class.
pub fn class_of_server(server: &Host, class: Option<&str>) -> Result<String> {
    if server.state == HostState::Removed {
        return Err(Error::FailedPrecondition(format!(
            "host {} was removed; it cannot ask for transit",
            server.id
        )));
    }
    if !matches!(server.kind, Some(HostKind::Dedicated | HostKind::Vps)) {
        return Err(Error::FailedPrecondition(format!(
            "host {} is a {} host; transit is for dedicated servers and VPS only (the operator sets the kind with Hosts/SetHostClass)",
            server.id,
            server.kind.map_or("kind-less", HostKind::as_str)
        )));
    }
    match class {
        Some(class) => Ok(class.to_owned()),
        None => Err(Error::FailedPrecondition(format!(
            "host {} has no configuration class, so no transit host can match it; an operator sets it with TransitPool/SetConfigurationClass",
            server.id
        ))),
    }
}

/// The addresses the transit host holds for its allocation, as the
/// address moves record them: those of the allocation's server (`server`:
/// every recorded address of it, with its moves) that the last finished
/// move put on the transit host, or that a move since, running or failed,
/// may have left there ([`crate::addresses::may_be_held_by`]). The host's
/// own addresses are never a server's, so they never count.
pub fn addresses_held_for_allocation(
    allocation: &Allocation,
    server: &[(RecordedAddress, Vec<AddressMove>)],
) -> Vec<String> {
    let Some(transit) = allocation.transit_host_id.as_deref() else {
        return Vec::new();
    };
    server
        .iter()
        .filter(|(recorded, moves)| {
            recorded.server_host_id == allocation.server_host_id
                && crate::addresses::may_be_held_by(recorded, moves, transit)
        })
        .map(|(recorded, _)| recorded.address.clone())
        .collect()
}

/// Why the transit host may not be released yet, in words an operator or
/// the panel can act on: it still holds accounts (as its agent lists
/// them, copies excluded: the wipe takes those) or addresses of the
/// allocation's server (`held`, from [`addresses_held_for_allocation`]).
/// `None`: it may be released.
pub fn release_refusal(
    allocation: &Allocation,
    transit: &Host,
    accounts: &[Account],
    held: &[String],
) -> Option<String> {
    let names: Vec<&str> = accounts
        .iter()
        .filter(|a| a.host_id == transit.id && a.copy_of_test.is_none())
        .map(|a| a.name.as_str())
        .collect();
    let mut reasons = Vec::new();
    if !names.is_empty() {
        reasons.push(format!(
            "still holds the accounts {} (move them back to their server first)",
            names.join(", ")
        ));
    }
    if !held.is_empty() {
        reasons.push(format!(
            "still holds the addresses {} of server {} (move them back to {} first with Addresses/MoveAddress; a move that failed is finished by moving again)",
            held.join(", "),
            allocation.server_host_id,
            allocation.server_host_id
        ));
    }
    (!reasons.is_empty()).then(|| {
        format!(
            "transit host {} cannot be released: it {}",
            transit.id,
            reasons.join("; and it ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::addresses::MoveOutcome;

    fn host(id: &str, kind: HostKind, addresses: &[&str]) -> Host {
        Host {
            id: id.to_owned(),
            kind: Some(kind),
            reported_kind: Some(kind),
            declared_disk_bytes: None,
            certificate_serial: None,
            removed: None,
            state: HostState::Online,
            draining: false,
            pool: None,
            stack_version: String::new(),
            agent_version: String::new(),
            agent_endpoint: "192.0.2.20:7445".to_owned(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            disk_total_bytes: 0,
            disk_free_bytes: 0,
            database_servers: vec![],
            account_count: 0,
            enrolled_at: None,
            last_heartbeat_at: None,
            inventory_updated_at: None,
            certificate_expires_at: None,
            source_protocols: vec![],
            target_protocols: vec![],
            serves_sites: false,
        }
    }

    fn account(name: &str, host_id: &str, copy: Option<&str>) -> Account {
        Account {
            name: name.to_owned(),
            host_id: host_id.to_owned(),
            home: format!("/home/{name}"),
            uid: 2000,
            home_size_bytes: 0,
            home_files: 0,
            databases: vec![],
            updated_at: chrono::Utc::now(),
            copy_of_test: copy.map(str::to_owned),
            sites: vec![],
        }
    }

    #[test]
    fn only_dedicated_servers_and_vps_with_a_class_ask() {
        let dedicated = host("d1", HostKind::Dedicated, &[]);
        assert_eq!(
            class_of_server(&dedicated, Some("c8")).ok(),
            Some("c8".to_owned())
        );
        assert!(class_of_server(&host("v1", HostKind::Vps, &[]), Some("c8")).is_ok());
        let shared = class_of_server(&host("s1", HostKind::Shared, &[]), Some("c8"));
        assert!(
            matches!(shared, Err(Error::FailedPrecondition(m)) if m.contains("dedicated servers and VPS only"))
        );
        let classless = class_of_server(&dedicated, None);
        assert!(
            matches!(classless, Err(Error::FailedPrecondition(m)) if m.contains("SetConfigurationClass"))
        );
    }

    fn allocation(transit: &str) -> Allocation {
        Allocation {
            id: "a01".into(),
            server_host_id: "d1".into(),
            configuration_class: "c8".into(),
            state: super::super::AllocationState::Active,
            transit_host_id: Some(transit.to_owned()),
            queue_position: None,
            price: super::super::Price {
                minor_units: 2999,
                period: super::super::PricePeriod::Month,
                currency: "EUR".into(),
            },
            requested_by: "panel".into(),
            requested_at: chrono::Utc::now(),
            started_at: Some(chrono::Utc::now()),
            ended_at: None,
            free_seconds: 0,
            wipe_error: String::new(),
        }
    }

    fn address(
        address: &str,
        held_by: &str,
        moves: &[(&str, &str, MoveOutcome)],
    ) -> (RecordedAddress, Vec<AddressMove>) {
        (
            RecordedAddress {
                address: address.into(),
                server_host_id: "d1".into(),
                prefix_length: 32,
                held_by_host_id: held_by.into(),
            },
            moves
                .iter()
                .map(|(from, to, outcome)| AddressMove {
                    operation_id: format!("m-{from}-{to}"),
                    address: address.into(),
                    server_host_id: "d1".into(),
                    from_host_id: (*from).into(),
                    to_host_id: (*to).into(),
                    mode: crate::config::RerouteMode::Layer2,
                    requested_by: "operator".into(),
                    requested_at: chrono::Utc::now(),
                    finished_at: None,
                    outcome: *outcome,
                    error: String::new(),
                    provider_ms: 0,
                })
                .collect(),
        )
    }

    #[test]
    fn the_addresses_held_are_the_servers_the_moves_put_there() {
        let done = MoveOutcome::Done;
        let recorded = [
            // Moved there and still there.
            address("198.51.100.10", "t1", &[("d1", "t1", done)]),
            // Moved there and back.
            address(
                "198.51.100.11",
                "d1",
                &[("d1", "t1", done), ("t1", "d1", done)],
            ),
            // Back, then a move there that failed: it may be there.
            address(
                "198.51.100.12",
                "d1",
                &[
                    ("d1", "t1", done),
                    ("t1", "d1", done),
                    ("d1", "t1", MoveOutcome::Failed),
                ],
            ),
            // Never moved.
            address("198.51.100.13", "d1", &[]),
        ];
        assert_eq!(
            addresses_held_for_allocation(&allocation("t1"), &recorded),
            vec!["198.51.100.10", "198.51.100.12"]
        );
        // Another transit host holds none of them.
        assert!(addresses_held_for_allocation(&allocation("t2"), &recorded).is_empty());
    }

    #[test]
    fn a_release_is_refused_while_accounts_or_addresses_remain() {
        let clean = host("t1", HostKind::Transit, &["192.0.2.20"]);
        let allocation = allocation("t1");
        assert_eq!(release_refusal(&allocation, &clean, &[], &[]), None);
        // A test's copy is the wipe's business, not a refusal.
        assert_eq!(
            release_refusal(
                &allocation,
                &clean,
                &[account("nvk_a", "t1", Some("t0123"))],
                &[]
            ),
            None
        );
        let refused = release_refusal(&allocation, &clean, &[account("nvk_a", "t1", None)], &[])
            .unwrap_or_default();
        assert!(
            refused.contains("still holds the accounts nvk_a"),
            "{refused}"
        );
        let refused = release_refusal(&allocation, &clean, &[], &["198.51.100.10".to_owned()])
            .unwrap_or_default();
        assert!(
            refused.contains("still holds the addresses 198.51.100.10 of server d1"),
            "{refused}"
        );
    }
}
