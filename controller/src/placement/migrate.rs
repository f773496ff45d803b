//! Where a migration goes: a shared host running the migration's target
//! version, with room, that is not the account's own host; or the one an
//! operator names, refused with the reason when it cannot take the
//! account. The same checks as a test's placement (software, protocol,
//! names, room), on shared hosts instead of test hosts. Pure, like the
//! rest of [`super`].
//!
//! Also [`replication_blockers`]: what keeps the account's database servers
//! from being a migration's replication source, in words an operator can
//! act on.

use super::{
    ServerRoom, copy_plan, disk_needed, human_bytes, missing_software, name_collision, server_room,
    source_server, usable_free_bytes,
};
use crate::catalogue::Migration;
use crate::error::Error;
use crate::model::{Account, CopyPlan, Engine, Host, HostKind, HostState};
use crate::protocol;

/// Why `host` cannot receive `account` for `migration`, or `None`.
fn refusal(
    migration: &Migration,
    account: &Account,
    source_host: &Host,
    host: &Host,
    held: &[Account],
) -> Option<(String, bool)> {
    let needed = disk_needed(account);
    let free = usable_free_bytes(host);
    if host.id == source_host.id {
        return Some((
            format!(
                "{} is the account's own host: a migration moves it to another one",
                host.id
            ),
            false,
        ));
    }
    if host.kind != Some(HostKind::Shared) {
        return Some((
            format!(
                "{} is not a shared host (it is {}); a migration moves accounts to shared hosts",
                host.id,
                host.kind.map(|k| k.as_str()).unwrap_or("of no kind yet")
            ),
            false,
        ));
    }
    let why = if host.state == HostState::Removed {
        format!("{} was removed", host.id)
    } else if host.state != HostState::Online {
        format!("{} is unreachable", host.id)
    } else if host.draining {
        format!("{} is draining", host.id)
    } else if let Some(why) = missing_software(migration, account, source_host, host) {
        format!("{} {why}", host.id)
    } else if let Err(why) = protocol::protocol_version(source_host, host) {
        why
    } else if let Some(why) = name_collision(migration, account, source_host, host, held) {
        format!("{} {why}", host.id)
    } else if free < needed {
        return Some((
            format!(
                "{} has {} free and the account needs {}",
                host.id,
                human_bytes(free),
                human_bytes(needed)
            ),
            true,
        ));
    } else if let Some(short) = server_room(migration, account, source_host, host, held)
        .into_iter()
        .find(ServerRoom::short)
    {
        return Some((format!("{}: {}", host.id, short.describe()), true));
    } else {
        return None;
    };
    Some((why, false))
}

/// Chooses the shared host `account` (living on `source_host`) moves to
/// for `migration`: `named` if an operator named one, else the fitting
/// shared host with the most room; and the copy plan.
pub fn plan_migration(
    migration: &Migration,
    account: &Account,
    source_host: &Host,
    hosts: &[Host],
    held: &[Account],
    named: Option<&str>,
) -> Result<(Host, CopyPlan), Error> {
    if source_host.state != HostState::Online {
        return Err(Error::Unavailable(format!(
            "the account's host {} is unreachable; a migration needs it online",
            source_host.id
        )));
    }
    for database in &account.databases {
        source_server(source_host, database, "migrate")?;
    }
    let chosen = match named {
        Some(id) => {
            let host = hosts
                .iter()
                .find(|h| h.id == id)
                .ok_or_else(|| Error::NotFound {
                    what: "host",
                    id: id.to_owned(),
                })?;
            if let Some((why, room)) = refusal(migration, account, source_host, host, held) {
                let message = format!(
                    "host {id} cannot receive {} for {}: {why}",
                    account.name, migration.id
                );
                return Err(if room {
                    Error::NoRoom(message)
                } else {
                    Error::FailedPrecondition(message)
                });
            }
            host
        }
        None => {
            let mut refusals = Vec::new();
            let mut short_of_room = false;
            let mut fitting = Vec::new();
            for host in hosts
                .iter()
                .filter(|h| h.kind == Some(HostKind::Shared) && h.id != source_host.id)
            {
                match refusal(migration, account, source_host, host, held) {
                    Some((why, room)) => {
                        short_of_room |= room;
                        refusals.push(why);
                    }
                    None => fitting.push(host),
                }
            }
            let Some(host) = fitting.into_iter().max_by_key(|h| usable_free_bytes(h)) else {
                let detail = if refusals.is_empty() {
                    "there is no other shared host".to_owned()
                } else {
                    refusals.join("; ")
                };
                return Err(if short_of_room {
                    Error::NoRoom(format!(
                        "no shared host has room for {}: it needs {} ({detail}); retry when one has",
                        account.name,
                        human_bytes(disk_needed(account))
                    ))
                } else {
                    Error::FailedPrecondition(format!(
                        "no shared host can receive {} for {}: {detail}",
                        account.name, migration.id
                    ))
                });
            };
            host
        }
    };
    let plan = copy_plan(
        migration,
        account,
        source_host,
        chosen,
        held,
        chosen.serves_sites && !account.sites.is_empty(),
        "migrate",
    )?;
    Ok((chosen.clone(), plan))
}

/// What keeps `account`'s databases on `source_host` from converging by
/// replication: each server that holds one of them and cannot be a
/// replication source, with what its agent says an operator must set.
pub fn replication_blockers(account: &Account, source_host: &Host) -> Vec<String> {
    let mut blockers: Vec<String> = Vec::new();
    for database in &account.databases {
        let Some(server) = source_host
            .database_servers
            .iter()
            .find(|s| s.name == database.server && s.engine == database.engine)
        else {
            continue;
        };
        if server.replication_ready {
            continue;
        }
        let what = match server.engine {
            Engine::Postgresql => "PostgreSQL server",
            Engine::Mariadb => "MariaDB server",
        };
        let blocker = format!(
            "the {what} {:?} of database {} cannot be a replication source ({}); an operator sets it once on host {}",
            server.name, database.name, server.replication_reason, source_host.id
        );
        if !blockers.contains(&blocker) {
            blockers.push(blocker);
        }
    }
    blockers
}
