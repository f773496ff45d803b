//! IP rerouting (R7): moving a dedicated server's or VPS's addresses to a
//! transit host while it is reinstalled, and back.
//!
//! Owns: deciding whether a move may happen ([`check_destination`]), the
//! order of a move's steps, and its record (`store::addresses`). Must not
//! touch a host itself (the agents do, through `agents::addresses`) nor
//! know protobuf (`api::addresses` converts).
//!
//! A move is make-before-break, and every step is idempotent, so a move cut
//! short (an agent killed, a provider down) is finished by moving again:
//!
//! 1. the new host holds the address (and on shared layer 2 announces it:
//!    gratuitous ARP, unsolicited neighbour advertisement);
//! 2. routed mode only: the provider routes the address to the new host's
//!    main address ([`provider`]);
//! 3. every other host that may hold it (where it was, and where a failed
//!    move may have left it) lets it go.
//!
//! Only then is the address recorded as held by the new host.

pub mod provider;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::agents::{self, addresses::EnsureAddress};
use crate::config::RerouteMode;
use crate::error::{Error, Result};
use crate::model::{Host, HostKind};
use crate::state::Controller;
use crate::store;
use crate::store::addresses::{AddressMove, MoveOutcome, RecordedAddress};
use crate::transit::{Allocation, AllocationState};

/// A running move older than this was left by a controller that stopped:
/// the next move of the address takes over. Longer than any provider call
/// and agent calls of one move.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// An operator's request to move an address, checked by the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveRequest {
    pub server_id: String,
    pub address: IpAddr,
    pub to_host_id: String,
    /// `None`: the configuration's `[addresses] default_mode`.
    pub mode: Option<RerouteMode>,
    /// `None`: the address alone (32 or 128); used at the first move only.
    pub prefix_length: Option<u8>,
    /// The operator's certificate name.
    pub requested_by: String,
}

/// What a move request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveResult {
    /// The move made, or, when `unchanged`, the last one (if any).
    pub last_move: Option<AddressMove>,
    pub unchanged: bool,
}

/// One of a server's addresses, and how it got where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddress {
    pub address: String,
    pub prefix_length: u8,
    pub held_by_host_id: String,
    pub moves: Vec<AddressMove>,
}

/// Moves an address (the module doc gives the steps).
pub async fn move_address(controller: &Controller, request: &MoveRequest) -> Result<MoveResult> {
    let mode = request
        .mode
        .unwrap_or(controller.config.addresses.default_mode);
    let (server, target) = {
        let client = controller.db.get().await?;
        (
            store::hosts::get(&**client, &request.server_id).await?,
            store::hosts::get(&**client, &request.to_host_id).await?,
        )
    };
    check_server(&server)?;
    let address = request.address.to_string();
    if agent_address(&server) == Some(request.address) {
        return Err(Error::FailedPrecondition(format!(
            "{address} is the address the controller reaches server {}'s agent on: it never moves",
            server.id
        )));
    }
    let provider = match mode {
        RerouteMode::Layer2 => None,
        RerouteMode::Routed => Some(
            provider::from_config(controller.config.addresses.provider.as_ref())
                .map_err(|e| Error::FailedPrecondition(e.to_string()))?,
        ),
    };

    let (started, losers, recorded) = {
        let mut client = controller.db.get().await?;
        let transaction = client.transaction().await?;
        // Read with a share lock until the move is recorded: a release of
        // the allocation (which locks it to end it) waits for this
        // transaction and then sees the running move, or this one waits for
        // the release and sees the allocation ended.
        if target.id != server.id {
            let allocation =
                store::transit::lock_live_for_server(&*transaction, &server.id).await?;
            check_destination(&server, &target, allocation.as_ref())?;
        }
        let recorded = match store::addresses::lock(&*transaction, &address).await? {
            Some(recorded) => recorded,
            None => {
                if !server.addresses.contains(&address) {
                    return Err(Error::FailedPrecondition(format!(
                        "server {} does not report holding {address} (it reports {}); an address is recorded when it first moves from its server",
                        server.id,
                        server.addresses.join(", ")
                    )));
                }
                let longest = if request.address.is_ipv4() { 32 } else { 128 };
                let prefix = request.prefix_length.unwrap_or(longest);
                store::addresses::record(&*transaction, &address, &server.id, prefix).await?
            }
        };
        if recorded.server_host_id != server.id {
            return Err(Error::FailedPrecondition(format!(
                "{address} is an address of server {}, not of {}",
                recorded.server_host_id, server.id
            )));
        }
        let moves = store::addresses::moves(&*transaction, &address).await?;
        if let Some(running) = moves.iter().find(|m| m.outcome == MoveOutcome::Running) {
            let age = (chrono::Utc::now() - running.requested_at)
                .to_std()
                .unwrap_or_default();
            if age < ABANDONED_AFTER {
                return Err(Error::Unavailable(format!(
                    "{address} is being moved to {} (operation {}, asked by {} {}s ago); wait until it ends",
                    running.to_host_id,
                    running.operation_id,
                    running.requested_by,
                    age.as_secs()
                )));
            }
            store::addresses::finish_move(
                &*transaction,
                &running.operation_id,
                MoveOutcome::Failed,
                "abandoned: the controller running it stopped",
                0,
            )
            .await?;
        }
        let last = moves.last().filter(|m| m.outcome != MoveOutcome::Running);
        let settled = last.is_none_or(|m| m.outcome == MoveOutcome::Done)
            && !moves.iter().any(|m| m.outcome == MoveOutcome::Running);
        if settled && recorded.held_by_host_id == target.id {
            transaction.commit().await?;
            return Ok(MoveResult {
                last_move: moves.last().cloned(),
                unchanged: true,
            });
        }
        let losers = hosts_that_may_hold(&recorded, &moves, &target.id);
        let started = store::addresses::start_move(
            &*transaction,
            &AddressMove {
                operation_id: new_operation_id(),
                address: address.clone(),
                server_host_id: server.id.clone(),
                from_host_id: recorded.held_by_host_id.clone(),
                to_host_id: target.id.clone(),
                mode,
                requested_by: request.requested_by.clone(),
                requested_at: chrono::Utc::now(),
                finished_at: None,
                outcome: MoveOutcome::Running,
                error: String::new(),
                provider_ms: 0,
            },
        )
        .await?;
        transaction.commit().await?;
        (started, losers, recorded)
    };
    tracing::info!(message = "moving address", operation_id = %started.operation_id, %address, server = %server.id, from = %started.from_host_id, to = %target.id, mode = mode.as_str(), requested_by = %request.requested_by);

    let steps = run_steps(
        controller,
        &started,
        &recorded,
        &target,
        &losers,
        provider.as_deref(),
    )
    .await;
    let client = controller.db.get().await?;
    match steps {
        Ok(provider_ms) => {
            let done = store::addresses::finish_move(
                &**client,
                &started.operation_id,
                MoveOutcome::Done,
                "",
                provider_ms,
            )
            .await?;
            tracing::info!(message = "address moved", operation_id = %done.operation_id, %address, to = %done.to_host_id, provider_ms);
            Ok(MoveResult {
                last_move: Some(done),
                unchanged: false,
            })
        }
        Err(failure) => {
            store::addresses::finish_move(
                &**client,
                &started.operation_id,
                MoveOutcome::Failed,
                &failure,
                0,
            )
            .await?;
            tracing::warn!(message = "address move failed", operation_id = %started.operation_id, %address, error = %failure);
            Err(Error::Unavailable(format!(
                "move {} of {address} to {} failed; move it again to finish (every step is safe to repeat): {failure}",
                started.operation_id, target.id
            )))
        }
    }
}

/// The steps on the hosts and at the provider; the provider's time in ms.
async fn run_steps(
    controller: &Controller,
    started: &AddressMove,
    recorded: &RecordedAddress,
    target: &Host,
    losers: &[String],
    provider: Option<&dyn provider::Provider>,
) -> std::result::Result<u32, String> {
    let ensure = |held: bool| EnsureAddress {
        operation_id: started.operation_id.clone(),
        address: started.address.clone(),
        prefix_length: recorded.prefix_length,
        held,
        announce: held && started.mode == RerouteMode::Layer2,
    };
    agents::addresses::ensure_address(controller, target, &ensure(true))
        .await
        .map_err(|failure| format!("taking the address on {}: {}", target.id, failure.message()))?;
    let mut provider_ms = 0;
    if let Some(provider) = provider {
        let main = {
            let client = controller.db.get().await.map_err(|e| e.to_string())?;
            let recorded_all = store::addresses::all_addresses(&**client)
                .await
                .map_err(|e| e.to_string())?;
            main_address(target, &started.address, &recorded_all)?
        };
        let address: IpAddr = started
            .address
            .parse()
            .map_err(|_| format!("{} is not an address", started.address))?;
        let began = Instant::now();
        provider
            .route(address, main, &started.operation_id)
            .await
            .map_err(|e| format!("routing it to {} ({main}): {e}", target.id))?;
        provider_ms = u32::try_from(began.elapsed().as_millis()).unwrap_or(u32::MAX);
    }
    for loser in losers {
        let host = {
            let client = controller.db.get().await.map_err(|e| e.to_string())?;
            store::hosts::get(&**client, loser)
                .await
                .map_err(|e| e.to_string())?
        };
        agents::addresses::ensure_address(controller, &host, &ensure(false))
            .await
            .map_err(|failure| {
                format!("letting the address go on {loser}: {}", failure.message())
            })?;
    }
    Ok(provider_ms)
}

/// Only a dedicated server's or a VPS's addresses are rerouted.
fn check_server(server: &Host) -> Result<()> {
    match server.kind {
        Some(HostKind::Dedicated | HostKind::Vps) => Ok(()),
        other => Err(Error::FailedPrecondition(format!(
            "host {} is {}: only a dedicated server's or a VPS's addresses are rerouted",
            server.id,
            other.map_or("of no kind yet".to_owned(), |k| format!(
                "a {} host",
                k.as_str()
            ))
        ))),
    }
}

/// Whether `target` may hold `server`'s addresses: the server itself (the
/// move back, always allowed), or the transit host of the server's active
/// transit allocation ([`check_transit_allocation`]). `allocation` is the
/// server's live allocation (waiting, active or wiping), if any.
pub fn check_destination(
    server: &Host,
    target: &Host,
    allocation: Option<&Allocation>,
) -> Result<()> {
    if target.id == server.id {
        return Ok(());
    }
    check_transit_allocation(server, target, allocation)
}

/// Whether `target` is the transit host of `server`'s active allocation:
/// the one rule that joins IP rerouting to the transit pool. Any other
/// host is refused, naming the server, the host and the allocation the
/// server has (or that it has none).
pub fn check_transit_allocation(
    server: &Host,
    target: &Host,
    allocation: Option<&Allocation>,
) -> Result<()> {
    let why = match allocation {
        Some(a)
            if a.state == AllocationState::Active
                && a.transit_host_id.as_deref() == Some(target.id.as_str()) =>
        {
            return Ok(());
        }
        None => format!(
            "server {} has no transit allocation (ask for one with Transit/RequestTransit)",
            server.id
        ),
        Some(a) => match (a.state, a.transit_host_id.as_deref()) {
            (AllocationState::Active, Some(holder)) => format!(
                "server {}'s transit allocation {} is active on transit host {holder}",
                server.id, a.id
            ),
            (AllocationState::Waiting, _) => format!(
                "server {}'s transit allocation {} still waits for a transit host of class {} (position {} in the queue)",
                server.id,
                a.id,
                a.configuration_class,
                a.queue_position.unwrap_or(0)
            ),
            (state, holder) => format!(
                "server {}'s transit allocation {} is {}{}",
                server.id,
                a.id,
                state.as_str(),
                holder.map_or(String::new(), |h| format!(" (transit host {h})"))
            ),
        },
    };
    Err(Error::FailedPrecondition(format!(
        "host {} is not the transit host of server {}'s allocation: {why}; its addresses move only to the transit host of its active allocation, or back to {}",
        target.id, server.id, server.id
    )))
}

/// Whether `host` may hold the address, as its moves record it: it is
/// where the last finished move put it, or an end of a move since then
/// that is running or failed (a failed move may have left it on either
/// end). What the transit pool counts as held by a transit host
/// (`transit::pool::addresses_held_for_allocation`).
pub fn may_be_held_by(recorded: &RecordedAddress, moves: &[AddressMove], host: &str) -> bool {
    recorded.held_by_host_id == host
        || moves
            .iter()
            .rev()
            .take_while(|m| m.outcome != MoveOutcome::Done)
            .any(|m| m.from_host_id == host || m.to_host_id == host)
}

/// Hosts other than `target` that may hold the address: where the last
/// finished move put it, and both ends of every move since that failed.
fn hosts_that_may_hold(
    recorded: &RecordedAddress,
    moves: &[AddressMove],
    target: &str,
) -> Vec<String> {
    let mut hosts = vec![recorded.held_by_host_id.clone()];
    for m in moves
        .iter()
        .rev()
        .take_while(|m| m.outcome != MoveOutcome::Done)
    {
        hosts.push(m.from_host_id.clone());
        hosts.push(m.to_host_id.clone());
    }
    let mut kept = Vec::new();
    for host in hosts {
        if host != target && !kept.contains(&host) {
            kept.push(host);
        }
    }
    kept
}

/// The address the controller reaches a host's agent on.
fn agent_address(host: &Host) -> Option<IpAddr> {
    host.agent_endpoint
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Where the provider routes `address` to on `host`: the host's main
/// address of the same family: its agent's address, else the first address
/// it reports that Navette does not move.
fn main_address(
    host: &Host,
    address: &str,
    moved: &[String],
) -> std::result::Result<IpAddr, String> {
    let family_v4 = address.parse::<IpAddr>().is_ok_and(|a| a.is_ipv4());
    if let Some(agent) = agent_address(host).filter(|a| a.is_ipv4() == family_v4) {
        return Ok(agent);
    }
    host.addresses
        .iter()
        .filter(|a| !moved.contains(a) && a.as_str() != address)
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() == family_v4)
        .ok_or_else(|| {
            format!(
                "host {} reports no {} main address to route {address} to",
                host.id,
                if family_v4 { "IPv4" } else { "IPv6" }
            )
        })
}

/// The server's addresses: recorded ones with their moves, then those it
/// reports holding that never moved (its agent's address left out).
pub async fn server_addresses(
    controller: &Controller,
    server_id: &str,
) -> Result<Vec<ServerAddress>> {
    let client = controller.db.get().await?;
    let server = store::hosts::get(&**client, server_id).await?;
    let recorded = store::addresses::of_server(&**client, &server.id).await?;
    let mut listed = Vec::new();
    for address in &recorded {
        listed.push(ServerAddress {
            address: address.address.clone(),
            prefix_length: address.prefix_length,
            held_by_host_id: address.held_by_host_id.clone(),
            moves: store::addresses::moves(&**client, &address.address).await?,
        });
    }
    let agent = agent_address(&server).map(|a| a.to_string());
    for address in &server.addresses {
        if Some(address) == agent.as_ref() || recorded.iter().any(|r| &r.address == address) {
            continue;
        }
        let prefix = if address.contains(':') { 128 } else { 32 };
        listed.push(ServerAddress {
            address: address.clone(),
            prefix_length: prefix,
            held_by_host_id: server.id.clone(),
            moves: Vec::new(),
        });
    }
    Ok(listed)
}

/// `m` and 16 hex digits.
fn new_operation_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    format!(
        "m{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_move(from: &str, to: &str, outcome: MoveOutcome) -> AddressMove {
        AddressMove {
            operation_id: format!("m-{from}-{to}"),
            address: "198.51.100.10".into(),
            server_host_id: "ded-1".into(),
            from_host_id: from.into(),
            to_host_id: to.into(),
            mode: RerouteMode::Layer2,
            requested_by: "operator".into(),
            requested_at: chrono::Utc::now(),
            finished_at: None,
            outcome,
            error: String::new(),
            provider_ms: 0,
        }
    }

    fn recorded(held_by: &str) -> RecordedAddress {
        RecordedAddress {
            address: "198.51.100.10".into(),
            server_host_id: "ded-1".into(),
            prefix_length: 24,
            held_by_host_id: held_by.into(),
        }
    }

    fn host(id: &str, kind: HostKind) -> Host {
        Host {
            id: id.to_owned(),
            kind: Some(kind),
            reported_kind: Some(kind),
            declared_disk_bytes: None,
            certificate_serial: None,
            removed: None,
            state: crate::model::HostState::Online,
            draining: false,
            pool: None,
            stack_version: String::new(),
            agent_version: String::new(),
            agent_endpoint: String::new(),
            addresses: vec![],
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

    fn allocation(state: AllocationState, transit: Option<&str>) -> Allocation {
        Allocation {
            id: "a01".into(),
            server_host_id: "ded-1".into(),
            configuration_class: "c8".into(),
            state,
            transit_host_id: transit.map(str::to_owned),
            queue_position: (state == AllocationState::Waiting).then_some(2),
            price: crate::transit::Price {
                minor_units: 2999,
                period: crate::transit::PricePeriod::Month,
                currency: "EUR".into(),
            },
            requested_by: "panel".into(),
            requested_at: chrono::Utc::now(),
            started_at: None,
            ended_at: None,
            free_seconds: 0,
            wipe_error: String::new(),
        }
    }

    fn refusal(result: Result<()>) -> String {
        match result {
            Err(Error::FailedPrecondition(message)) => message,
            other => format!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn only_the_transit_host_of_the_active_allocation_receives_addresses() {
        let server = host("ded-1", HostKind::Dedicated);
        let transit = host("transit-1", HostKind::Transit);
        let other = host("transit-2", HostKind::Transit);
        let active = allocation(AllocationState::Active, Some("transit-1"));
        assert!(check_destination(&server, &transit, Some(&active)).is_ok());
        // Back to the server: always, whatever the allocation.
        assert!(check_destination(&server, &server, None).is_ok());
        let wiping = allocation(AllocationState::Wiping, Some("transit-1"));
        assert!(check_destination(&server, &server, Some(&wiping)).is_ok());

        let to_other = refusal(check_destination(&server, &other, Some(&active)));
        assert!(
            to_other
                .contains("host transit-2 is not the transit host of server ded-1's allocation")
                && to_other.contains("allocation a01 is active on transit host transit-1"),
            "{to_other}"
        );
        let shared = refusal(check_destination(
            &server,
            &host("shared-1", HostKind::Shared),
            Some(&active),
        ));
        assert!(
            shared.contains("host shared-1 is not the transit host"),
            "{shared}"
        );
        let none = refusal(check_destination(&server, &transit, None));
        assert!(
            none.contains("server ded-1 has no transit allocation")
                && none.contains("Transit/RequestTransit"),
            "{none}"
        );
        let waiting = allocation(AllocationState::Waiting, None);
        let waits = refusal(check_destination(&server, &transit, Some(&waiting)));
        assert!(
            waits.contains("still waits") && waits.contains("position 2"),
            "{waits}"
        );
        let ended = refusal(check_destination(&server, &transit, Some(&wiping)));
        assert!(
            ended.contains("a01 is wiping (transit host transit-1)"),
            "{ended}"
        );
    }

    #[test]
    fn a_host_may_hold_what_the_moves_put_there_or_left_unsettled() {
        let done = [a_move("ded-1", "transit-1", MoveOutcome::Done)];
        assert!(may_be_held_by(&recorded("transit-1"), &done, "transit-1"));
        assert!(!may_be_held_by(&recorded("transit-1"), &done, "ded-1"));
        let back_failed = [
            a_move("ded-1", "transit-1", MoveOutcome::Done),
            a_move("transit-1", "ded-1", MoveOutcome::Done),
            a_move("ded-1", "transit-1", MoveOutcome::Failed),
        ];
        // Recorded on the server, but the failed move may have left it on
        // the transit host.
        assert!(may_be_held_by(
            &recorded("ded-1"),
            &back_failed,
            "transit-1"
        ));
        let running = [a_move("ded-1", "transit-1", MoveOutcome::Running)];
        assert!(may_be_held_by(&recorded("ded-1"), &running, "transit-1"));
        assert!(!may_be_held_by(&recorded("ded-1"), &[], "transit-1"));
    }

    #[test]
    fn a_failed_move_leaves_both_its_ends_to_clear() {
        let moves = [
            a_move("ded-1", "transit-1", MoveOutcome::Done),
            a_move("transit-1", "ded-1", MoveOutcome::Failed),
        ];
        // Moving to transit-1 again: ded-1 may hold it (the failed move
        // back added it there), transit-1 is the target.
        assert_eq!(
            hosts_that_may_hold(&recorded("transit-1"), &moves, "transit-1"),
            vec!["ded-1".to_owned()]
        );
        // Moving back: transit-1 must let it go.
        assert_eq!(
            hosts_that_may_hold(&recorded("transit-1"), &moves, "ded-1"),
            vec!["transit-1".to_owned()]
        );
        // After a finished move, only its holder.
        assert_eq!(
            hosts_that_may_hold(&recorded("ded-1"), &moves[..1], "transit-2"),
            vec!["ded-1".to_owned()]
        );
    }
}
