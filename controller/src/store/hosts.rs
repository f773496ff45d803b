//! The `hosts` table: enrolment, heartbeats, inventories, liveness, draining.

use std::time::Duration;

use tokio_postgres::{GenericClient, Row};

use super::{notify_host, to_i64, to_u64};
use crate::error::{Error, Result};
use crate::model::{Host, HostChange, HostKind, HostState, Inventory, Time};

const SELECT: &str = "SELECT h.id, h.kind, h.state, h.draining, h.pool, h.stack_version,
        h.agent_version, h.agent_endpoint, h.addresses, h.disk_total_bytes, h.disk_free_bytes,
        h.database_servers, h.enrolled_at, h.last_heartbeat_at, h.inventory_updated_at,
        h.certificate_expires_at,
        (SELECT count(*) FROM host_accounts a WHERE a.host_id = h.id) AS account_count
    FROM hosts h";

fn from_row(row: &Row) -> Result<Host> {
    let state: String = row.get("state");
    let kind: Option<String> = row.get("kind");
    let servers: serde_json::Value = row.get("database_servers");
    let count: i64 = row.get("account_count");
    Ok(Host {
        id: row.get("id"),
        kind: kind.as_deref().and_then(HostKind::parse),
        state: HostState::parse(&state)
            .ok_or_else(|| Error::Internal(format!("unknown host state {state:?} in database")))?,
        draining: row.get("draining"),
        pool: row.get("pool"),
        stack_version: row.get("stack_version"),
        agent_version: row.get("agent_version"),
        agent_endpoint: row.get("agent_endpoint"),
        addresses: row.get("addresses"),
        disk_total_bytes: to_u64(row.get("disk_total_bytes")),
        disk_free_bytes: to_u64(row.get("disk_free_bytes")),
        database_servers: serde_json::from_value(servers)
            .map_err(|e| Error::Internal(format!("database_servers column: {e}")))?,
        account_count: u32::try_from(count).unwrap_or(u32::MAX),
        enrolled_at: row.get("enrolled_at"),
        last_heartbeat_at: row.get("last_heartbeat_at"),
        inventory_updated_at: row.get("inventory_updated_at"),
        certificate_expires_at: row.get("certificate_expires_at"),
    })
}

pub async fn list(
    client: &impl GenericClient,
    kind: Option<HostKind>,
    pool: Option<&str>,
) -> Result<Vec<Host>> {
    let sql = format!(
        "{SELECT} WHERE ($1::text IS NULL OR h.kind = $1) AND ($2::text IS NULL OR h.pool = $2)
         ORDER BY h.id"
    );
    let kind = kind.map(HostKind::as_str);
    client
        .query(&sql, &[&kind, &pool])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

pub async fn get(client: &impl GenericClient, id: &str) -> Result<Host> {
    let sql = format!("{SELECT} WHERE h.id = $1");
    match client.query_opt(&sql, &[&id]).await? {
        Some(row) => from_row(&row),
        None => Err(Error::NotFound {
            what: "host",
            id: id.to_owned(),
        }),
    }
}

/// Makes sure a host row exists for a host that has a join token but has not
/// enrolled yet.
pub async fn ensure_awaiting_enrolment(
    client: &impl GenericClient,
    id: &str,
    pool: Option<&str>,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO hosts (id, state, pool) VALUES ($1, 'awaiting_enrolment', $2)
             ON CONFLICT (id) DO NOTHING",
            &[&id, &pool],
        )
        .await?;
    Ok(())
}

/// Records a successful enrolment (or re-enrolment, after a reinstall) and
/// the certificate issued for it.
pub async fn record_enrolment(
    client: &impl GenericClient,
    id: &str,
    pool: Option<&str>,
    serial: &str,
    not_after: Time,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO hosts (id, state, pool, enrolled_at, last_heartbeat_at, certificate_expires_at)
             VALUES ($1, 'online', $2, now(), now(), $3)
             ON CONFLICT (id) DO UPDATE SET state = 'online',
                 pool = COALESCE(EXCLUDED.pool, hosts.pool),
                 enrolled_at = now(), last_heartbeat_at = now(),
                 certificate_expires_at = EXCLUDED.certificate_expires_at,
                 inventory_digest = ''",
            &[&id, &pool, &not_after],
        )
        .await?;
    record_certificate(client, id, serial, not_after, "enrolment").await?;
    notify_host(client, id, HostChange::Enrolled).await
}

/// Records a certificate renewal.
pub async fn record_renewal(
    client: &impl GenericClient,
    id: &str,
    serial: &str,
    not_after: Time,
) -> Result<()> {
    client
        .execute(
            "UPDATE hosts SET certificate_expires_at = $2 WHERE id = $1",
            &[&id, &not_after],
        )
        .await?;
    record_certificate(client, id, serial, not_after, "renewal").await
}

async fn record_certificate(
    client: &impl GenericClient,
    id: &str,
    serial: &str,
    not_after: Time,
    reason: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO agent_certificates (serial, host_id, not_after, reason) VALUES ($1, $2, $3, $4)",
            &[&serial, &id, &not_after, &reason],
        )
        .await?;
    Ok(())
}

/// What a heartbeat tells the agent back.
pub struct HeartbeatOutcome {
    /// The controller's copy of the inventory differs from the agent's.
    pub send_inventory: bool,
}

/// Records a heartbeat: the host is online, and reachable at `endpoint`.
pub async fn record_heartbeat(
    client: &impl GenericClient,
    id: &str,
    endpoint: &str,
    agent_digest: &str,
) -> Result<HeartbeatOutcome> {
    let row = client
        .query_opt(
            "UPDATE hosts h SET last_heartbeat_at = now(), state = 'online',
                 agent_endpoint = CASE WHEN $2 = '' THEN h.agent_endpoint ELSE $2 END
             FROM (SELECT id, state FROM hosts WHERE id = $1 FOR UPDATE) AS before
             WHERE h.id = before.id
             RETURNING before.state AS previous_state, h.inventory_digest",
            &[&id, &endpoint],
        )
        .await?;
    let Some(row) = row else {
        return Err(Error::FailedPrecondition(format!(
            "host {id:?} is not known to the controller; enrol it again with a new join token"
        )));
    };
    let previous: String = row.get("previous_state");
    let digest: String = row.get("inventory_digest");
    if previous != HostState::Online.as_str() {
        notify_host(client, id, HostChange::Online).await?;
    }
    Ok(HeartbeatOutcome {
        send_inventory: digest.is_empty() || digest != agent_digest,
    })
}

/// Stores an agent's inventory: the host's columns and its accounts.
pub async fn store_inventory(
    client: &impl GenericClient,
    id: &str,
    inventory: &Inventory,
) -> Result<()> {
    let servers = serde_json::to_value(&inventory.database_servers)
        .map_err(|e| Error::Internal(format!("encoding database servers: {e}")))?;
    let updated = client
        .execute(
            "UPDATE hosts SET kind = $2, stack_version = $3, agent_version = $4,
                 agent_endpoint = $5, addresses = $6, disk_total_bytes = $7, disk_free_bytes = $8,
                 database_servers = $9, inventory_digest = $10, inventory_updated_at = now(),
                 last_heartbeat_at = now(), state = 'online'
             WHERE id = $1",
            &[
                &id,
                &inventory.kind.as_str(),
                &inventory.stack_version,
                &inventory.agent_version,
                &inventory.agent_endpoint,
                &inventory.addresses,
                &to_i64(inventory.disk_total_bytes),
                &to_i64(inventory.disk_free_bytes),
                &servers,
                &inventory.digest,
            ],
        )
        .await?;
    if updated == 0 {
        return Err(Error::FailedPrecondition(format!(
            "host {id:?} is not known to the controller; enrol it again with a new join token"
        )));
    }
    // A database server that is down lists no databases; its accounts still
    // have them: keep what was last seen there.
    let down: Vec<(crate::model::Engine, &str)> = inventory
        .database_servers
        .iter()
        .filter(|s| !s.reachable)
        .map(|s| (s.engine, s.name.as_str()))
        .collect();
    let mut accounts = inventory.accounts.clone();
    if !down.is_empty() {
        let known = super::accounts::list(client, Some(id)).await?;
        for account in &mut accounts {
            if let Some(before) = known.iter().find(|k| k.name == account.name) {
                account.databases.extend(
                    before
                        .databases
                        .iter()
                        .filter(|d| down.contains(&(d.engine, d.server.as_str())))
                        .cloned(),
                );
            }
        }
    }
    super::accounts::replace_for_host(client, id, &accounts).await?;
    notify_host(client, id, HostChange::Inventory).await
}

/// Marks hosts unreachable whose last heartbeat is older than `timeout`.
/// Safe to run on several controllers at once.
pub async fn mark_unreachable(
    client: &impl GenericClient,
    timeout: Duration,
) -> Result<Vec<String>> {
    let seconds = timeout.as_secs_f64();
    let rows = client
        .query(
            "UPDATE hosts SET state = 'unreachable'
             WHERE state = 'online' AND last_heartbeat_at < now() - make_interval(secs => $1)
             RETURNING id",
            &[&seconds],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get(0);
        notify_host(client, &id, HostChange::Unreachable).await?;
        ids.push(id);
    }
    Ok(ids)
}

pub async fn set_draining(client: &impl GenericClient, id: &str, draining: bool) -> Result<Host> {
    let changed = client
        .execute(
            "UPDATE hosts SET draining = $2 WHERE id = $1 AND draining <> $2",
            &[&id, &draining],
        )
        .await?;
    if changed > 0 {
        let change = if draining {
            HostChange::Draining
        } else {
            HostChange::Undrained
        };
        notify_host(client, id, change).await?;
    }
    get(client, id).await
}
