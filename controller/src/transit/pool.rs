//! The pool's pure rules: which server may ask for transit, what a
//! release is refused for, and which addresses an allocation holds on its
//! transit host. No I/O: `allocate` reads the hosts and calls these.

use crate::error::{Error, Result};
use crate::model::{Account, Host, HostKind, HostState};

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

/// The host's own main address: the one its agent is reached at. It stays
/// with the host through an allocation; every other address is held for
/// the allocation.
pub fn main_address(host: &Host) -> Option<String> {
    host.agent_endpoint
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|endpoint| endpoint.ip().to_canonical().to_string())
}

/// The addresses a transit host holds for its allocation: every address
/// its agent reports beyond its own main address. Today that is all an
/// address can be there for; once address moves record which allocation
/// moved an address, this is the one function to narrow to them.
pub fn addresses_held_for_allocation(transit: &Host) -> Vec<String> {
    let main = main_address(transit);
    transit
        .addresses
        .iter()
        .filter(|address| Some(address.as_str()) != main.as_deref())
        .cloned()
        .collect()
}

/// Why the transit host may not be released yet, in words an operator or
/// the panel can act on: it still holds accounts (as its agent lists
/// them, copies excluded: the wipe takes those) or addresses for the
/// allocation. `None`: it may be released.
pub fn release_refusal(transit: &Host, accounts: &[Account]) -> Option<String> {
    let names: Vec<&str> = accounts
        .iter()
        .filter(|a| a.host_id == transit.id && a.copy_of_test.is_none())
        .map(|a| a.name.as_str())
        .collect();
    let addresses = addresses_held_for_allocation(transit);
    let mut reasons = Vec::new();
    if !names.is_empty() {
        reasons.push(format!(
            "still holds the accounts {} (move them back to their server first)",
            names.join(", ")
        ));
    }
    if !addresses.is_empty() {
        reasons.push(format!(
            "still holds the addresses {} beyond its own {} (move them back first)",
            addresses.join(", "),
            main_address(transit).unwrap_or_else(|| "main address".to_owned())
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

    #[test]
    fn the_main_address_is_not_held_for_the_allocation() {
        let transit = host("t1", HostKind::Transit, &["192.0.2.20", "192.0.2.200"]);
        assert_eq!(main_address(&transit).as_deref(), Some("192.0.2.20"));
        assert_eq!(addresses_held_for_allocation(&transit), vec!["192.0.2.200"]);
    }

    #[test]
    fn a_release_is_refused_while_accounts_or_addresses_remain() {
        let clean = host("t1", HostKind::Transit, &["192.0.2.20"]);
        assert_eq!(release_refusal(&clean, &[]), None);
        // A test's copy is the wipe's business, not a refusal.
        assert_eq!(
            release_refusal(&clean, &[account("nvk_a", "t1", Some("t0123"))]),
            None
        );
        let refused = release_refusal(&clean, &[account("nvk_a", "t1", None)]).unwrap_or_default();
        assert!(
            refused.contains("still holds the accounts nvk_a"),
            "{refused}"
        );
        let addressed = host("t1", HostKind::Transit, &["192.0.2.20", "192.0.2.200"]);
        let refused = release_refusal(&addressed, &[]).unwrap_or_default();
        assert!(
            refused.contains("still holds the addresses 192.0.2.200 beyond its own 192.0.2.20"),
            "{refused}"
        );
    }
}
