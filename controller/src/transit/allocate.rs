//! Requesting, releasing and serving the queue: the pool's decisions made
//! durable. Each change of who holds a transit host commits in one
//! transaction under its class's advisory lock (`store::transit`), so
//! several controllers serving one class take turns and agree.
//!
//! A release is three steps, each retry-safe: the transit host's agent is
//! asked for its inventory and the release refused while it holds
//! accounts, or addresses of the server as its address moves record them
//! ([`super::pool::release_refusal`], decided under the allocation's row
//! lock that address moves to it take too); the
//! allocation ends (billing stops) and goes to `wiping`; the agent wipes
//! what it holds for the allocation, and only then is the allocation
//! released and the host handed to the next in line. A controller that
//! dies in between leaves a `wiping` allocation holding its host, which the
//! next `ReleaseTransit` carries on.

use ring::rand::SecureRandom;

use super::{Allocation, AllocationState, Price, pool};
use crate::agents;
use crate::error::{Error, Result};
use crate::model::Host;
use crate::state::Controller;
use crate::store;

/// A request for transit, checked.
pub struct TransitRequest<'a> {
    pub request_id: &'a str,
    pub server_host_id: &'a str,
    pub price: Price,
    /// Who asked (the caller's certificate name).
    pub requested_by: &'a str,
}

fn new_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!(
        "a{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The free period allocations starting now get.
fn free_seconds(controller: &Controller) -> u64 {
    u64::from(controller.config.transit.free_days) * super::billing::DAY_SECONDS
}

/// Puts the server's request in its class's queue and serves the queue:
/// the allocation comes back active if a transit host was free, waiting
/// with its position otherwise. A retried `request_id` returns the
/// allocation it made.
pub async fn request(controller: &Controller, request: &TransitRequest<'_>) -> Result<Allocation> {
    let mut client = controller.db.get().await?;
    let transaction = client.transaction().await?;
    let server = store::hosts::get(&*transaction, request.server_host_id).await?;
    let class = store::transit::host_class(&*transaction, &server.id).await?;
    let class = pool::class_of_server(&server, class.as_deref())?;
    store::transit::lock_class(&*transaction, &class).await?;
    if let Some(earlier) = store::transit::by_request_id(&*transaction, request.request_id).await? {
        if earlier.server_host_id != server.id {
            return Err(Error::AlreadyExists(format!(
                "request_id {} was used for server {}'s request; choose a new one",
                request.request_id, earlier.server_host_id
            )));
        }
        return Ok(earlier);
    }
    if let Some(live) = store::transit::live_for_server(&*transaction, &server.id).await? {
        return Err(Error::FailedPrecondition(format!(
            "server {} already has transit allocation {} ({}); release it first (Transit/ReleaseTransit)",
            server.id,
            live.id,
            live.state.as_str()
        )));
    }
    let id = new_id();
    store::transit::insert_waiting(
        &*transaction,
        &store::transit::NewAllocation {
            id: &id,
            request_id: request.request_id,
            server_host_id: &server.id,
            configuration_class: &class,
            price: &request.price,
            requested_by: request.requested_by,
        },
    )
    .await?;
    store::transit::serve_queue(&*transaction, &class, free_seconds(controller)).await?;
    let allocation = store::transit::get(&*transaction, &id).await?;
    transaction.commit().await?;
    tracing::info!(message = "transit requested", allocation_id = %id, server_host_id = %server.id, configuration_class = %class, state = allocation.state.as_str(), transit_host_id = ?allocation.transit_host_id, queue_position = ?allocation.queue_position);
    Ok(allocation)
}

/// Sets host `host_id`'s configuration class and, if it is a free transit
/// host, lets it serve its class's queue. The allocations it started.
pub async fn set_configuration_class(
    controller: &Controller,
    host_id: &str,
    class: &str,
) -> Result<Vec<String>> {
    let mut client = controller.db.get().await?;
    let transaction = client.transaction().await?;
    let before = store::transit::host_class(&*transaction, host_id).await?;
    // Both classes' locks, in one order, so two changes cannot deadlock.
    let mut classes = vec![class.to_owned()];
    classes.extend(before.filter(|b| b != class));
    classes.sort();
    for each in &classes {
        store::transit::lock_class(&*transaction, each).await?;
    }
    store::transit::set_host_class(&*transaction, host_id, class).await?;
    let served =
        store::transit::serve_queue(&*transaction, class, free_seconds(controller)).await?;
    transaction.commit().await?;
    tracing::info!(message = "configuration class set", %host_id, configuration_class = %class, served = ?served);
    Ok(served)
}

/// Releases allocation `id` (see the module's doc); a waiting one is
/// withdrawn from its queue, an ended one returned as it is.
pub async fn release(controller: &Controller, id: &str) -> Result<Allocation> {
    let allocation = {
        let client = controller.db.get().await?;
        store::transit::get(&**client, id).await?
    };
    match allocation.state {
        AllocationState::Released | AllocationState::Cancelled => return Ok(allocation),
        AllocationState::Waiting => return cancel(controller, &allocation).await,
        AllocationState::Active | AllocationState::Wiping => {}
    }
    let mut transit = transit_host(controller, &allocation).await?;
    if allocation.state == AllocationState::Active {
        // The agent's word now, not the last report: the panel may just
        // have moved the last account away.
        let inventory = agents::get_inventory(controller, &transit).await?;
        let mut client = controller.db.get().await?;
        store::hosts::store_inventory(&**client, &transit.id, &inventory).await?;
        transit = store::hosts::get(&**client, &transit.id).await?;
        // Decided and ended under the allocation's lock: an address move of
        // the server being recorded now is waited for and counted, and no
        // move to the transit host starts once it has ended.
        let transaction = client.transaction().await?;
        let locked = store::transit::lock(&*transaction, id).await?;
        if locked.state == AllocationState::Active {
            let accounts = store::accounts::list(&*transaction, Some(&transit.id)).await?;
            let server =
                store::addresses::of_server_with_moves(&*transaction, &locked.server_host_id)
                    .await?;
            let held = pool::addresses_held_for_allocation(&locked, &server);
            if let Some(refusal) = pool::release_refusal(&locked, &transit, &accounts, &held) {
                return Err(Error::FailedPrecondition(format!(
                    "{refusal}; allocation {id} stays active"
                )));
            }
            if store::transit::end(&*transaction, id).await? {
                tracing::info!(message = "transit allocation ended; wiping its transit host", allocation_id = %id, transit_host_id = %transit.id);
            }
        }
        transaction.commit().await?;
    }
    // The wipe refuses while any address of the server is still on the
    // transit host, whatever the records say.
    let addresses: Vec<String> = {
        let client = controller.db.get().await?;
        store::addresses::of_server(&**client, &allocation.server_host_id)
            .await?
            .into_iter()
            .map(|recorded| recorded.address)
            .collect()
    };
    match agents::transit::wipe(controller, &transit, id, &addresses).await {
        Ok(wiped) => {
            tracing::info!(message = "transit host wiped", allocation_id = %id, transit_host_id = %transit.id, copies = ?wiped.copies_removed, sites = ?wiped.sites_stopped, logins = ?wiped.logins_dropped);
        }
        Err(failure) => {
            let reason = match failure {
                agents::CallFailure::Retry(reason) | agents::CallFailure::Refused(reason) => reason,
            };
            let client = controller.db.get().await?;
            store::transit::record_wipe_error(&**client, id, &reason).await?;
            return Err(Error::Unavailable(format!(
                "allocation {id} is released (billing stopped), but transit host {} was not wiped: {reason}; call ReleaseTransit again",
                transit.id
            )));
        }
    }
    let mut client = controller.db.get().await?;
    let transaction = client.transaction().await?;
    store::transit::lock_class(&*transaction, &allocation.configuration_class).await?;
    store::transit::finish_wipe(&*transaction, id).await?;
    let served = store::transit::serve_queue(
        &*transaction,
        &allocation.configuration_class,
        free_seconds(controller),
    )
    .await?;
    let released = store::transit::get(&*transaction, id).await?;
    transaction.commit().await?;
    tracing::info!(message = "transit host released", allocation_id = %id, transit_host_id = %transit.id, served = ?served);
    Ok(released)
}

async fn cancel(controller: &Controller, allocation: &Allocation) -> Result<Allocation> {
    let mut client = controller.db.get().await?;
    let transaction = client.transaction().await?;
    store::transit::lock_class(&*transaction, &allocation.configuration_class).await?;
    store::transit::cancel(&*transaction, &allocation.id).await?;
    let after = store::transit::get(&*transaction, &allocation.id).await?;
    transaction.commit().await?;
    if after.state == AllocationState::Cancelled {
        tracing::info!(message = "transit request withdrawn", allocation_id = %allocation.id);
        Ok(after)
    } else {
        // Served between the read and the lock: release it like any other.
        Box::pin(release(controller, &allocation.id)).await
    }
}

async fn transit_host(controller: &Controller, allocation: &Allocation) -> Result<Host> {
    let Some(host_id) = &allocation.transit_host_id else {
        return Err(Error::Internal(format!(
            "allocation {} is {} without a transit host",
            allocation.id,
            allocation.state.as_str()
        )));
    };
    let client = controller.db.get().await?;
    store::hosts::get(&**client, host_id).await
}

/// Serves every class's queue: what a transit host that came back online
/// or was undrained can take. Every controller runs it now and then
/// (`server::spawn_transit_queue`); the class locks keep them apart. The
/// allocations it started.
pub async fn serve_every_queue(controller: &Controller) -> Result<Vec<String>> {
    let classes = {
        let client = controller.db.get().await?;
        store::transit::waiting_classes(&**client).await?
    };
    let mut served = Vec::new();
    for class in classes {
        let mut client = controller.db.get().await?;
        let transaction = client.transaction().await?;
        store::transit::lock_class(&*transaction, &class).await?;
        served.extend(
            store::transit::serve_queue(&*transaction, &class, free_seconds(controller)).await?,
        );
        transaction.commit().await?;
    }
    Ok(served)
}
