//! The `hosts` table: enrolment, heartbeats, inventories, liveness,
//! draining, what a host is (kind, pool, class: the operator's, never the
//! agent's report) and which of its certificates is still good.
//!
//! Invariants: `kind`, `pool` and `declared_disk_bytes` are written only
//! from an operator's request (join token, `set_class`); an agent's report
//! lands in `reported_kind` and the disk columns. `certificate_serial` is
//! replaced only in the transaction that records the certificate replacing
//! it, and a renewal replaces it only when presented with it.

use std::time::Duration;

use tokio_postgres::{GenericClient, Row};

use super::{notify_host, to_i64, to_u64};
use crate::error::{Error, Result};
use crate::model::{Host, HostChange, HostKind, HostState, Inventory, Removal, Time};

const SELECT: &str = "SELECT h.id, h.kind, h.state, h.draining, h.pool, h.stack_version,
        h.agent_version, h.agent_endpoint, h.addresses, h.disk_total_bytes, h.disk_free_bytes,
        h.database_servers, h.enrolled_at, h.last_heartbeat_at, h.inventory_updated_at,
        h.certificate_expires_at, h.reported_kind, h.declared_disk_bytes, h.certificate_serial,
        h.removed_at, h.removed_by, h.removed_reason, h.source_protocols, h.target_protocols,
        h.serves_sites,
        (SELECT count(*) FROM host_accounts a WHERE a.host_id = h.id) AS account_count
    FROM hosts h";

fn from_row(row: &Row) -> Result<Host> {
    let state: String = row.get("state");
    let kind: Option<String> = row.get("kind");
    let servers: serde_json::Value = row.get("database_servers");
    let count: i64 = row.get("account_count");
    let reported_kind: Option<String> = row.get("reported_kind");
    let declared_disk: Option<i64> = row.get("declared_disk_bytes");
    let removed_at: Option<Time> = row.get("removed_at");
    let removed_by: Option<String> = row.get("removed_by");
    let removed_reason: Option<String> = row.get("removed_reason");
    Ok(Host {
        id: row.get("id"),
        kind: kind.as_deref().and_then(HostKind::parse),
        reported_kind: reported_kind.as_deref().and_then(HostKind::parse),
        declared_disk_bytes: declared_disk.map(to_u64),
        certificate_serial: row.get("certificate_serial"),
        removed: removed_at.map(|at| Removal {
            at,
            by: removed_by.unwrap_or_default(),
            reason: removed_reason.unwrap_or_default(),
        }),
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
        source_protocols: protocols(row.get("source_protocols")),
        target_protocols: protocols(row.get("target_protocols")),
        serves_sites: row.get("serves_sites"),
    })
}

/// A protocol version column (`int4[]`; a negative value cannot have been
/// stored, and is dropped).
fn protocols(versions: Vec<i32>) -> Vec<u32> {
    versions
        .into_iter()
        .filter_map(|v| u32::try_from(v).ok())
        .collect()
}

/// Protocol versions for an `int4[]` column: ascending, once each, and only
/// those that fit (a report of 2^31 or more is no version anyone speaks).
fn protocol_column(versions: &[u32]) -> Vec<i32> {
    let mut column: Vec<i32> = versions
        .iter()
        .filter_map(|v| i32::try_from(*v).ok())
        .collect();
    column.sort_unstable();
    column.dedup();
    column
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
/// enrolled yet. A removed host waits for enrolment again; a known one is
/// left as it is until the token is used.
pub async fn ensure_awaiting_enrolment(
    client: &impl GenericClient,
    id: &str,
    pool: Option<&str>,
    kind: Option<HostKind>,
    declared_disk_bytes: Option<u64>,
) -> Result<()> {
    let kind = kind.map(HostKind::as_str);
    let disk = declared_disk_bytes.map(to_i64);
    client
        .execute(
            "INSERT INTO hosts (id, state, pool, kind, declared_disk_bytes)
             VALUES ($1, 'awaiting_enrolment', $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET state = 'awaiting_enrolment'
                 WHERE hosts.state = 'removed'",
            &[&id, &pool, &kind, &disk],
        )
        .await?;
    Ok(())
}

/// What an enrolment makes of a host: the token's choices.
pub struct EnrolmentRecord<'a> {
    pub pool: Option<&'a str>,
    pub kind: Option<HostKind>,
    pub declared_disk_bytes: Option<u64>,
    pub serial: &'a str,
    pub not_after: Time,
}

/// Records a successful enrolment (or re-enrolment, after a reinstall) and
/// the certificate issued for it, which from now on is the host's only
/// good one: every earlier certificate (and so the key of a previous
/// installation) is superseded.
pub async fn record_enrolment(
    client: &impl GenericClient,
    id: &str,
    record: &EnrolmentRecord<'_>,
) -> Result<()> {
    let kind = record.kind.map(HostKind::as_str);
    let disk = record.declared_disk_bytes.map(to_i64);
    client
        .execute(
            "INSERT INTO hosts (id, state, pool, kind, declared_disk_bytes, certificate_serial,
                 enrolled_at, last_heartbeat_at, certificate_expires_at)
             VALUES ($1, 'online', $2, $3, $4, $5, now(), now(), $6)
             ON CONFLICT (id) DO UPDATE SET state = 'online',
                 pool = COALESCE(EXCLUDED.pool, hosts.pool),
                 kind = COALESCE(EXCLUDED.kind, hosts.kind),
                 declared_disk_bytes = COALESCE(EXCLUDED.declared_disk_bytes, hosts.declared_disk_bytes),
                 certificate_serial = EXCLUDED.certificate_serial,
                 enrolled_at = now(), last_heartbeat_at = now(),
                 certificate_expires_at = EXCLUDED.certificate_expires_at,
                 removed_at = NULL, removed_by = NULL, removed_reason = NULL,
                 inventory_digest = ''",
            &[&id, &record.pool, &kind, &disk, &record.serial, &record.not_after],
        )
        .await?;
    record_certificate(client, id, record.serial, record.not_after, "enrolment").await?;
    audit(
        client,
        id,
        "enrolled",
        "join token",
        &format!("certificate {}", record.serial),
    )
    .await?;
    notify_host(client, id, HostChange::Enrolled).await
}

/// Records a certificate renewal, which must have been asked for with the
/// host's current certificate (`presented_serial`): a superseded or revoked
/// certificate, say a stolen key after the host renewed or enrolled again,
/// gets nothing. Call inside the transaction that issues nothing else.
pub async fn record_renewal(
    client: &impl GenericClient,
    id: &str,
    presented_serial: &str,
    serial: &str,
    not_after: Time,
) -> Result<()> {
    let updated = client
        .execute(
            "UPDATE hosts SET certificate_expires_at = $3, certificate_serial = $4
             WHERE id = $1 AND certificate_serial = $2 AND state <> 'removed'",
            &[&id, &presented_serial, &not_after, &serial],
        )
        .await?;
    if updated == 0 {
        return Err(refused_certificate(client, id, presented_serial).await);
    }
    record_certificate(client, id, serial, not_after, "renewal").await?;
    notify_host(client, id, HostChange::Certificate).await
}

/// Why the certificate `serial` of host `id` is not accepted, for the
/// caller: removed host, revoked certificate, or superseded one.
pub async fn refused_certificate(client: &impl GenericClient, id: &str, serial: &str) -> Error {
    let row = client
        .query_opt(
            "SELECT h.state, h.removed_reason, c.revoked_reason
             FROM hosts h LEFT JOIN agent_certificates c ON c.serial = $2 AND c.host_id = h.id
             WHERE h.id = $1",
            &[&id, &serial],
        )
        .await;
    let why = match row {
        Err(error) => return Error::Database(error),
        Ok(None) => format!("host {id} is not known to this controller"),
        Ok(Some(row)) => {
            let state: String = row.get(0);
            let removed: Option<String> = row.get(1);
            let revoked: Option<String> = row.get(2);
            if state == HostState::Removed.as_str() {
                format!(
                    "host {id} was removed by an operator ({})",
                    removed.unwrap_or_default()
                )
            } else if let Some(reason) = revoked {
                format!("certificate {serial} of host {id} was revoked ({reason})")
            } else {
                format!(
                    "certificate {serial} is no longer host {id}'s current certificate (superseded by a renewal or a new enrolment)"
                )
            }
        }
    };
    Error::PermissionDenied(format!(
        "{why}; the agent must be enrolled again with a new join token (JoinTokens/CreateJoinToken, then `navette-agent enrol --force`)"
    ))
}

/// The serial of host `id`'s current certificate, unless the host is
/// removed or unknown.
pub async fn current_certificate(client: &impl GenericClient, id: &str) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT certificate_serial FROM hosts WHERE id = $1 AND state <> 'removed'",
            &[&id],
        )
        .await?
        .and_then(|row| row.get(0)))
}

/// What agents refuse on their peer ports ([`peer_lists`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerLists {
    /// Refused on every call: revoked, of a removed host, or older than
    /// the host's latest enrolment (the key of a previous installation, or
    /// one stolen before the operator enrolled the host again).
    pub refused: Vec<String>,
    /// Superseded by a renewal only: the host's own previous key. Refused
    /// on every connection opened after the agent learned it; a connection
    /// the host opened with it before (a transfer in flight) finishes.
    pub renewed: Vec<String>,
}

/// Serials of every unexpired agent certificate that agents must refuse on
/// their peer ports, in two lists ([`PeerLists`]). An operator who suspects
/// a key re-enrols or removes the host: both take effect on every call at
/// the next heartbeat.
pub async fn peer_lists(client: &impl GenericClient) -> Result<PeerLists> {
    let rows = client
        .query(
            "SELECT c.serial,
                    (c.revoked_at IS NOT NULL OR h.state = 'removed'
                     OR EXISTS (SELECT 1 FROM agent_certificates later
                                WHERE later.host_id = c.host_id AND later.reason = 'enrolment'
                                  AND later.issued_at > c.issued_at)) AS refused
             FROM agent_certificates c JOIN hosts h ON h.id = c.host_id
             WHERE c.not_after > now()
               AND (c.revoked_at IS NOT NULL OR h.state = 'removed'
                    OR EXISTS (SELECT 1 FROM agent_certificates later
                               WHERE later.host_id = c.host_id AND later.issued_at > c.issued_at))
             ORDER BY c.serial",
            &[],
        )
        .await?;
    let mut lists = PeerLists::default();
    for row in rows {
        let serial: String = row.get(0);
        if row.get::<_, bool>(1) {
            lists.refused.push(serial);
        } else {
            lists.renewed.push(serial);
        }
    }
    Ok(lists)
}

/// What an operator changes about a host; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct ClassChange<'a> {
    pub kind: Option<HostKind>,
    pub pool: Option<&'a str>,
    pub declared_disk_bytes: Option<u64>,
}

/// Sets the host's kind, pool or class, as an operator asked.
pub async fn set_class(
    client: &impl GenericClient,
    id: &str,
    change: &ClassChange<'_>,
    actor: &str,
) -> Result<Host> {
    let before = get(client, id).await?;
    let kind = change.kind.map(HostKind::as_str);
    let disk = change.declared_disk_bytes.map(to_i64);
    client
        .execute(
            "UPDATE hosts SET kind = COALESCE($2, kind), pool = COALESCE($3, pool),
                 declared_disk_bytes = COALESCE($4, declared_disk_bytes)
             WHERE id = $1",
            &[&id, &kind, &change.pool, &disk],
        )
        .await?;
    let after = get(client, id).await?;
    if (before.kind, &before.pool, before.declared_disk_bytes)
        != (after.kind, &after.pool, after.declared_disk_bytes)
    {
        let detail = format!(
            "kind {} -> {}, pool {} -> {}, declared disk {} -> {}",
            before.kind.map_or("none", HostKind::as_str),
            after.kind.map_or("none", HostKind::as_str),
            before.pool.as_deref().unwrap_or("none"),
            after.pool.as_deref().unwrap_or("none"),
            before.declared_disk_bytes.unwrap_or(0),
            after.declared_disk_bytes.unwrap_or(0),
        );
        audit(client, id, "reclassified", actor, &detail).await?;
        notify_host(client, id, HostChange::Reclassified).await?;
    }
    Ok(after)
}

/// Removes a host: revokes every certificate and unused join token it has,
/// and marks it removed, with who did it and why. A second call changes
/// nothing.
pub async fn remove(
    client: &impl GenericClient,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<Host> {
    let removed = client
        .execute(
            "UPDATE hosts SET state = 'removed', removed_at = now(), removed_by = $2,
                 removed_reason = $3
             WHERE id = $1 AND state <> 'removed'",
            &[&id, &actor, &reason],
        )
        .await?;
    if removed == 0 {
        // Unknown (NotFound) or already removed (unchanged).
        return get(client, id).await;
    }
    let certificates = client
        .execute(
            "UPDATE agent_certificates SET revoked_at = now(), revoked_by = $2, revoked_reason = $3
             WHERE host_id = $1 AND revoked_at IS NULL",
            &[&id, &actor, &reason],
        )
        .await?;
    let tokens = client
        .execute(
            "UPDATE join_tokens SET revoked_at = now()
             WHERE host_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    audit(
        client,
        id,
        "removed",
        actor,
        &format!("{reason} ({certificates} certificates and {tokens} join tokens revoked)"),
    )
    .await?;
    notify_host(client, id, HostChange::Removed).await?;
    get(client, id).await
}

/// One line of the host's audit trail.
async fn audit(
    client: &impl GenericClient,
    id: &str,
    action: &str,
    actor: &str,
    detail: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO host_audit (host_id, action, actor, detail) VALUES ($1, $2, $3, $4)",
            &[&id, &action, &actor, &detail],
        )
        .await?;
    Ok(())
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
             FROM (SELECT id, state FROM hosts WHERE id = $1 AND state <> 'removed' FOR UPDATE) AS before
             WHERE h.id = before.id
             RETURNING before.state AS previous_state, h.inventory_digest",
            &[&id, &endpoint],
        )
        .await?;
    let Some(row) = row else {
        return Err(Error::FailedPrecondition(format!(
            "host {id:?} is not known to the controller, or was removed; enrol it again with a new join token"
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
            "UPDATE hosts SET reported_kind = $2, stack_version = $3, agent_version = $4,
                 agent_endpoint = $5, addresses = $6, disk_total_bytes = $7, disk_free_bytes = $8,
                 database_servers = $9, inventory_digest = $10, inventory_updated_at = now(),
                 last_heartbeat_at = now(), state = 'online', source_protocols = $11,
                 target_protocols = $12, serves_sites = $13
             WHERE id = $1 AND state <> 'removed'",
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
                &protocol_column(&inventory.source_protocols),
                &protocol_column(&inventory.target_protocols),
                &inventory.web_server_running,
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
