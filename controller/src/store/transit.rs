//! The transit pool's tables: `hosts.configuration_class` and
//! `transit_allocations` (migration 0011).
//!
//! Invariants: every change of who holds a transit host, and of a class's
//! queue, is made under [`lock_class`] (a transaction-scoped advisory
//! lock per class), so two controllers serving the same class take turns;
//! the unique indexes of the migration (one live allocation per transit
//! host, one per server) hold even if a caller forgot it.

use tokio_postgres::{GenericClient, Row};

use super::{to_i64, to_u64};
use crate::error::{Error, Result};
use crate::transit::{Allocation, AllocationState, Price, PricePeriod};

const SELECT: &str = "SELECT a.id, a.server_host_id, a.configuration_class, a.state,
        a.transit_host_id, a.price_minor_units, a.price_period, a.currency, a.requested_by,
        a.requested_at, a.started_at, a.ended_at, a.free_seconds, a.wipe_error,
        CASE WHEN a.state = 'waiting' THEN
            (SELECT count(*) FROM transit_allocations w
             WHERE w.state = 'waiting' AND w.configuration_class = a.configuration_class
               AND w.queued_seq <= a.queued_seq)
        END AS queue_position
    FROM transit_allocations a";

fn from_row(row: &Row) -> Result<Allocation> {
    let state: String = row.get("state");
    let period: String = row.get("price_period");
    let position: Option<i64> = row.get("queue_position");
    Ok(Allocation {
        id: row.get("id"),
        server_host_id: row.get("server_host_id"),
        configuration_class: row.get("configuration_class"),
        state: AllocationState::parse(&state).ok_or_else(|| {
            Error::Internal(format!("unknown allocation state {state:?} in database"))
        })?,
        transit_host_id: row.get("transit_host_id"),
        queue_position: position.map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
        price: Price {
            minor_units: to_u64(row.get("price_minor_units")),
            period: PricePeriod::parse(&period).ok_or_else(|| {
                Error::Internal(format!("unknown price period {period:?} in database"))
            })?,
            currency: row.get("currency"),
        },
        requested_by: row.get("requested_by"),
        requested_at: row.get("requested_at"),
        started_at: row.get("started_at"),
        ended_at: row.get("ended_at"),
        free_seconds: to_u64(row.get("free_seconds")),
        wipe_error: row.get("wipe_error"),
    })
}

/// Takes the class's advisory lock until the transaction ends: the queue
/// of `class` and its transit hosts change under it only.
pub async fn lock_class(client: &impl GenericClient, class: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('navette_transit_class:' || $1, 0))",
            &[&class],
        )
        .await?;
    Ok(())
}

/// The configuration class an operator gave host `id`; `NotFound` for an
/// unknown host.
pub async fn host_class(client: &impl GenericClient, id: &str) -> Result<Option<String>> {
    match client
        .query_opt(
            "SELECT configuration_class FROM hosts WHERE id = $1",
            &[&id],
        )
        .await?
    {
        Some(row) => Ok(row.get(0)),
        None => Err(Error::NotFound {
            what: "host",
            id: id.to_owned(),
        }),
    }
}

/// Sets host `id`'s configuration class. Call under [`lock_class`] of the
/// old and the new class; refused while the host holds an allocation as
/// a transit host (it would leave its class with a server of the other).
pub async fn set_host_class(client: &impl GenericClient, id: &str, class: &str) -> Result<()> {
    if let Some(row) = client
        .query_opt(
            "SELECT id FROM transit_allocations
             WHERE transit_host_id = $1 AND state IN ('active', 'wiping')",
            &[&id],
        )
        .await?
    {
        let allocation: String = row.get(0);
        return Err(Error::FailedPrecondition(format!(
            "host {id} serves transit allocation {allocation}; its class changes once it is released"
        )));
    }
    client
        .execute(
            "UPDATE hosts SET configuration_class = $2 WHERE id = $1",
            &[&id, &class],
        )
        .await?;
    Ok(())
}

pub async fn get(client: &impl GenericClient, id: &str) -> Result<Allocation> {
    let sql = format!("{SELECT} WHERE a.id = $1");
    match client.query_opt(&sql, &[&id]).await? {
        Some(row) => from_row(&row),
        None => Err(Error::NotFound {
            what: "transit allocation",
            id: id.to_owned(),
        }),
    }
}

pub async fn by_request_id(
    client: &impl GenericClient,
    request_id: &str,
) -> Result<Option<Allocation>> {
    let sql = format!("{SELECT} WHERE a.request_id = $1");
    client
        .query_opt(&sql, &[&request_id])
        .await?
        .map(|row| from_row(&row))
        .transpose()
}

/// Allocations, newest first, of one server or all.
pub async fn list(client: &impl GenericClient, server: Option<&str>) -> Result<Vec<Allocation>> {
    let sql = format!(
        "{SELECT} WHERE ($1::text IS NULL OR a.server_host_id = $1)
         ORDER BY a.requested_at DESC, a.queued_seq DESC"
    );
    client
        .query(&sql, &[&server])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// The server's allocation that waits for or holds a transit host.
pub async fn live_for_server(
    client: &impl GenericClient,
    server: &str,
) -> Result<Option<Allocation>> {
    let sql = format!(
        "{SELECT} WHERE a.server_host_id = $1 AND a.state IN ('waiting', 'active', 'wiping')"
    );
    client
        .query_opt(&sql, &[&server])
        .await?
        .map(|row| from_row(&row))
        .transpose()
}

/// [`live_for_server`], with a share lock on the allocation until the
/// transaction ends: what an address move reads, so that a release (which
/// takes [`lock`]) cannot end the allocation while the move is being
/// recorded.
pub async fn lock_live_for_server(
    client: &impl GenericClient,
    server: &str,
) -> Result<Option<Allocation>> {
    let sql = format!(
        "{SELECT} WHERE a.server_host_id = $1 AND a.state IN ('waiting', 'active', 'wiping')
         FOR SHARE OF a"
    );
    client
        .query_opt(&sql, &[&server])
        .await?
        .map(|row| from_row(&row))
        .transpose()
}

/// Allocation `id`, locked until the transaction ends: a release decides
/// and ends under it, while no address move of its server is being
/// recorded (see [`lock_live_for_server`]).
pub async fn lock(client: &impl GenericClient, id: &str) -> Result<Allocation> {
    let sql = format!("{SELECT} WHERE a.id = $1 FOR UPDATE OF a");
    match client.query_opt(&sql, &[&id]).await? {
        Some(row) => from_row(&row),
        None => Err(Error::NotFound {
            what: "transit allocation",
            id: id.to_owned(),
        }),
    }
}

/// The configuration classes of `hosts` (those that have one).
pub async fn host_classes(
    client: &impl GenericClient,
    hosts: &[&str],
) -> Result<std::collections::HashMap<String, String>> {
    Ok(client
        .query(
            "SELECT id, configuration_class FROM hosts
             WHERE id = ANY($1) AND configuration_class IS NOT NULL",
            &[&hosts],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// A new request, as it enters its class's queue.
pub struct NewAllocation<'a> {
    pub id: &'a str,
    pub request_id: &'a str,
    pub server_host_id: &'a str,
    pub configuration_class: &'a str,
    pub price: &'a Price,
    pub requested_by: &'a str,
}

/// Puts a request at the end of its class's queue. Call under
/// [`lock_class`].
pub async fn insert_waiting(client: &impl GenericClient, new: &NewAllocation<'_>) -> Result<()> {
    client
        .execute(
            "INSERT INTO transit_allocations (id, request_id, server_host_id, configuration_class,
                 state, price_minor_units, price_period, currency, requested_by)
             VALUES ($1, $2, $3, $4, 'waiting', $5, $6, $7, $8)",
            &[
                &new.id,
                &new.request_id,
                &new.server_host_id,
                &new.configuration_class,
                &to_i64(new.price.minor_units),
                &new.price.period.as_str(),
                &new.price.currency,
                &new.requested_by,
            ],
        )
        .await?;
    Ok(())
}

/// Hands the class's free transit hosts to the oldest requests waiting for
/// them, one each, starting their allocations now with `free_seconds`
/// free. A free transit host is of kind `transit` and of the class,
/// online, not draining, and held by no active or wiping allocation. Call
/// under [`lock_class`]. The ids of the allocations it started.
pub async fn serve_queue(
    client: &impl GenericClient,
    class: &str,
    free_seconds: u64,
) -> Result<Vec<String>> {
    let mut served = Vec::new();
    loop {
        let Some(waiting) = client
            .query_opt(
                "SELECT id FROM transit_allocations
                 WHERE state = 'waiting' AND configuration_class = $1
                 ORDER BY queued_seq LIMIT 1 FOR UPDATE",
                &[&class],
            )
            .await?
        else {
            return Ok(served);
        };
        let Some(free) = client
            .query_opt(
                "SELECT h.id FROM hosts h
                 WHERE h.kind = 'transit' AND h.configuration_class = $1 AND h.state = 'online'
                   AND NOT h.draining
                   AND NOT EXISTS (SELECT 1 FROM transit_allocations a
                                   WHERE a.transit_host_id = h.id
                                     AND a.state IN ('active', 'wiping'))
                 ORDER BY h.id LIMIT 1 FOR UPDATE OF h",
                &[&class],
            )
            .await?
        else {
            return Ok(served);
        };
        let allocation: String = waiting.get(0);
        let host: String = free.get(0);
        client
            .execute(
                "UPDATE transit_allocations SET state = 'active', transit_host_id = $2,
                     started_at = now(), free_seconds = $3
                 WHERE id = $1 AND state = 'waiting'",
                &[&allocation, &host, &to_i64(free_seconds)],
            )
            .await?;
        tracing::info!(message = "transit host handed over", allocation_id = %allocation, transit_host_id = %host, configuration_class = %class);
        served.push(allocation);
    }
}

/// Ends an active allocation: billing stops now, and its transit host is
/// to be wiped. Whether it was active.
pub async fn end(client: &impl GenericClient, id: &str) -> Result<bool> {
    Ok(client
        .execute(
            "UPDATE transit_allocations SET state = 'wiping', ended_at = now()
             WHERE id = $1 AND state = 'active'",
            &[&id],
        )
        .await?
        == 1)
}

/// Records why the wipe of allocation `id`'s transit host failed.
pub async fn record_wipe_error(client: &impl GenericClient, id: &str, error: &str) -> Result<()> {
    client
        .execute(
            "UPDATE transit_allocations SET wipe_error = $2 WHERE id = $1 AND state = 'wiping'",
            &[&id, &error],
        )
        .await?;
    Ok(())
}

/// The transit host is wiped: the allocation is released and the host
/// free. Call under [`lock_class`], then [`serve_queue`].
pub async fn finish_wipe(client: &impl GenericClient, id: &str) -> Result<()> {
    client
        .execute(
            "UPDATE transit_allocations SET state = 'released', wipe_error = ''
             WHERE id = $1 AND state = 'wiping'",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Withdraws a waiting request from its queue. Call under [`lock_class`].
pub async fn cancel(client: &impl GenericClient, id: &str) -> Result<()> {
    client
        .execute(
            "UPDATE transit_allocations SET state = 'cancelled', ended_at = now()
             WHERE id = $1 AND state = 'waiting'",
            &[&id],
        )
        .await?;
    Ok(())
}

/// The classes whose queue has a request waiting.
pub async fn waiting_classes(client: &impl GenericClient) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT DISTINCT configuration_class FROM transit_allocations
             WHERE state = 'waiting' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}
