//! The actions of a migration's freeze and switch, one function each, so
//! that each can grow into its full version without the migration's steps
//! changing: freeze and thaw the account's processes, fence its databases
//! and drain replication, carry its sequences, catch up its files, move
//! its sites, point its DNS names at the new host. Each says what it does
//! today and what the full version adds.

use std::time::{Duration, Instant};

use super::replication::{self, SequenceValue};
use super::sites::{self, SitesSpec};
use super::transfer::{TransferSpec, TransferState};
use super::{CALL_TIMEOUT, CallFailure, call_outcome, client};
use crate::model::Host;
use crate::state::Controller;

/// Freezes `account`'s processes on `host` with the cgroup freezer
/// (requests wait in their sockets); the agent thaws them by itself after
/// `longest`, so a controller that dies never leaves them frozen. How
/// long the freeze took to complete; `None` when the account runs no
/// sites on `host` (nothing to freeze: its definitions list sites that do
/// not run there).
pub async fn freeze_sites(
    controller: &Controller,
    host: &Host,
    account: &str,
    longest: Duration,
) -> Result<Option<u32>, CallFailure> {
    match set_frozen(controller, host, account, true, longest).await {
        Ok(took) => Ok(Some(took)),
        Err(Frozen::NotRunning) => Ok(None),
        Err(Frozen::Failed(failure)) => Err(failure),
    }
}

/// Thaws `account`'s processes on `host`. Safe to repeat.
pub async fn thaw_sites(
    controller: &Controller,
    host: &Host,
    account: &str,
) -> Result<u32, CallFailure> {
    match set_frozen(controller, host, account, false, Duration::ZERO).await {
        Ok(took) => Ok(took),
        Err(Frozen::NotRunning) => Ok(0),
        Err(Frozen::Failed(failure)) => Err(failure),
    }
}

/// Why a freeze or thaw did not happen.
enum Frozen {
    /// The account runs no sites on the host.
    NotRunning,
    Failed(CallFailure),
}

async fn set_frozen(
    controller: &Controller,
    host: &Host,
    account: &str,
    frozen: bool,
    longest: Duration,
) -> Result<u32, Frozen> {
    let mut client = client(controller, host)
        .map_err(|e| Frozen::Failed(CallFailure::Refused(e.to_string())))?;
    let mut request = tonic::Request::new(navette_proto::v1::SetSitesFrozenRequest {
        account: account.to_owned(),
        frozen,
        max_frozen_ms: u32::try_from(longest.as_millis()).unwrap_or(u32::MAX),
    });
    request.set_timeout(CALL_TIMEOUT);
    client
        .set_sites_frozen(request)
        .await
        .map(|r| r.into_inner().took_ms)
        .map_err(|status| {
            // The agent's `SitesError::NotRunning`.
            if status.code() == tonic::Code::FailedPrecondition
                && status.message().contains("no sites running")
            {
                Frozen::NotRunning
            } else {
                Frozen::Failed(call_outcome(host, &status))
            }
        })
}

/// One database the freeze drains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drained {
    /// PostgreSQL: the source database, on `server` of the source host.
    Postgres { server: String, database: String },
    /// MariaDB: the target server's connection, fed from the source's
    /// `source_server`.
    Mariadb {
        source_server: String,
        target_server: String,
    },
}

/// Fences the account's databases and drains replication to the target:
/// the position is taken on the source once the account's writes stopped,
/// and the target is waited for until it applied at least that position,
/// within `deadline`. Returns how long each drain took (name, time).
///
/// Today the account's writes stop because its processes are frozen
/// ([`freeze_sites`]) before this runs: the position is taken after that,
/// and PostgreSQL's drain writes a WAL message first so an idle source
/// cannot stall it; MariaDB's waits with `MASTER_GTID_WAIT` on the target.
/// Sessions opened from outside the account's processes are not fenced:
/// the full version first makes the account's roles and users refuse new
/// writes on the source servers and ends their sessions, then takes the
/// position.
pub async fn fence_databases(
    controller: &Controller,
    source: &Host,
    target: &Host,
    migration_id: &str,
    databases: &[Drained],
    deadline: Instant,
) -> Result<Vec<(String, Duration)>, CallFailure> {
    let mut parts = Vec::new();
    for database in databases {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CallFailure::Retry(
                "the freeze's deadline passed before the drain".to_owned(),
            ));
        }
        let started = Instant::now();
        match database {
            Drained::Postgres { server, database } => {
                replication::drain_postgres(
                    controller,
                    source,
                    migration_id,
                    server,
                    database,
                    left,
                )
                .await?;
                parts.push((format!("drain postgresql {database}"), started.elapsed()));
            }
            Drained::Mariadb {
                source_server,
                target_server,
            } => {
                let position =
                    replication::mariadb_position(controller, source, source_server).await?;
                replication::drain_mariadb(
                    controller,
                    target,
                    migration_id,
                    target_server,
                    &position.gtid_position,
                    left,
                )
                .await?;
                parts.push((format!("drain mariadb {target_server}"), started.elapsed()));
            }
        }
    }
    Ok(parts)
}

/// Carries the sequences of each PostgreSQL database (source database,
/// source server, target database, target server) from the source to the
/// target: logical replication does not.
pub async fn carry_sequences(
    controller: &Controller,
    source: &Host,
    target: &Host,
    migration_id: &str,
    databases: &[(String, String, String, String)],
) -> Result<usize, CallFailure> {
    let mut carried = 0;
    for (database, server, target_database, target_server) in databases {
        let values: Vec<SequenceValue> = replication::read_postgres_sequences(
            controller,
            source,
            migration_id,
            server,
            database,
        )
        .await?;
        replication::write_postgres_sequences(
            controller,
            target,
            migration_id,
            target_server,
            target_database,
            &values,
        )
        .await?;
        carried += values.len();
    }
    Ok(carried)
}

/// The last file pass inside the freeze: what changed in the home since
/// the copy travels into the copy (a files-only transfer of its own id
/// into the same copy; the copy's databases are left to replication).
/// Bounded by `deadline`.
///
/// Today the pass compares the whole home with the copy (the files
/// protocol sends only what differs, but it walks the tree, so its time
/// grows with the number of files). The full version reads a change
/// journal (inotify) kept on the source since the copy began and sends
/// only the paths it names, falling back to a full comparison before the
/// freeze, never inside it, when the journal overflowed.
pub async fn catch_up_files(
    controller: &Controller,
    source: &Host,
    target: &Host,
    spec: &TransferSpec,
    deadline: Instant,
) -> Result<(), CallFailure> {
    super::grant_transfer(controller, source, spec).await?;
    let work = async {
        let mut last = super::start_transfer(controller, target, spec).await?;
        if last.state == TransferState::Running {
            let mut watch = super::watch_transfer(controller, target, &spec.transfer_id).await?;
            while let Some(report) = watch.next().await.map_err(CallFailure::Retry)? {
                last = report;
                if last.state != TransferState::Running {
                    break;
                }
            }
        }
        match last.state {
            TransferState::Succeeded => Ok(()),
            TransferState::Failed => Err(CallFailure::Refused(format!(
                "the last file pass failed: {}",
                last.error
            ))),
            _ => Err(CallFailure::Retry(
                "the last file pass stopped before its end".to_owned(),
            )),
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let outcome = match tokio::time::timeout(left, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(CallFailure::Retry(
            "the last file pass did not end within the freeze's deadline".to_owned(),
        )),
    };
    let _ = super::revoke_grant(controller, source, &spec.transfer_id).await;
    outcome
}

/// Moves the account's sites to the new host: they start there, from the
/// copy, with the copy's databases, and stop on the old host. Returns how
/// many run on the target.
///
/// Today that is all: requests that still reach the old host (held in
/// its frozen pool's backlog, or from clients whose DNS is stale) are
/// refused once its sites stop. The full version keeps a forwarding proxy
/// on the old host for the account's domains and database names, with the
/// PROXY protocol so the new host sees the client's address, flipped
/// inside the freeze, so that those requests reach the new host.
pub async fn forward_sites(
    controller: &Controller,
    source: &Host,
    target: &Host,
    spec: &SitesSpec,
) -> Result<usize, CallFailure> {
    let started = sites::start_sites(controller, target, spec).await?;
    sites::stop_sites(controller, source, &spec.account).await?;
    Ok(started.sites.len())
}

/// What became of the account's DNS names at the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsSwitch {
    /// The controller manages no DNS zone: the account's names were not
    /// changed, and point where the customer (or the platform's own
    /// tooling) points them.
    NotManaged,
}

/// Points the account's DNS names at the new host, after the freeze.
///
/// Today the controller manages no DNS zone, and says so: nothing is
/// changed. The full version sends RFC 2136 updates signed with TSIG to
/// the platform's authoritative server, the TTL lowered at least one old
/// TTL ahead, and keeps the old host's forwarding until the old records'
/// TTL has passed.
pub fn switch_dns(_account: &str, _target: &Host) -> DnsSwitch {
    DnsSwitch::NotManaged
}
