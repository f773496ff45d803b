//! The actions of a migration's freeze and switch, one function each,
//! over the agent's cutover rpcs (`proto/navette/v1/cutover.proto` gives
//! their order) and its files catch-up (`catchup.proto`):
//!
//! - on the source: [`freeze_account`] / [`thaw_account`] (every process
//!   of the account's user, with a deadline the agent enforces by
//!   itself), [`fence_databases`] (writers held, the positions taken
//!   after the fence), [`switch_databases`] (the held writers ended, new
//!   sessions refused) and its undo [`release_databases`],
//!   [`forward_sites`] / [`unforward_sites`] (the old host's web server
//!   forwards the account's domains to the new host), the change journal
//!   ([`start_change_journal`], [`change_journal`], [`stop_change_journal`]);
//! - on the target: [`drain_to_positions`] (replication applied up to the
//!   fence's positions) and [`catch_up_files`] (one pass of what the
//!   journal says changed);
//! - between them: [`carry_sequences`].
//!
//! Domain types in and out; the agent API's messages are built and read
//! here and in [`super::wire`].

use std::time::{Duration, Instant};

use navette_proto::v1;
use serde::{Deserialize, Serialize};

use super::replication::{self, SequenceValue};
use super::transfer::TransferSpec;
use super::{CALL_TIMEOUT, CallFailure, agent, call_outcome, request, wire};
use crate::model::Host;
use crate::state::Controller;

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// What a freeze of the account's processes came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountFrozen {
    /// How long the kernel took to freeze them.
    pub took: Duration,
    /// Processes of the account's user moved into its group first.
    pub moved_processes: u32,
    /// Processes frozen.
    pub frozen_processes: u32,
}

/// Freezes every process of `account` on `host` (its sites' pool, and
/// anything else running as its user, moved into its group first) with
/// the cgroup freezer: requests wait in their sockets. The agent thaws
/// them by itself `deadline` after the freeze began, so a controller that
/// dies never leaves them frozen.
pub async fn freeze_account(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    account: &str,
    deadline: Duration,
) -> Result<AccountFrozen, CallFailure> {
    agent(controller, host)?
        .freeze_account(request(
            v1::FreezeAccountRequest {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
                deadline_ms: millis(deadline),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| {
            let r = r.into_inner();
            AccountFrozen {
                took: Duration::from_micros(r.took_us),
                moved_processes: r.moved_processes,
                frozen_processes: r.frozen_processes,
            }
        })
        .map_err(|status| call_outcome(host, &status))
}

/// What a thaw does with the account's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterThaw {
    /// Before the point of no return: they go on, on the source.
    Resume,
    /// After the switch: they would write into the old copy, which is no
    /// longer the account's; they are ended while still frozen.
    End,
}

/// Thaws `account`'s processes on `host`; whether anything was frozen.
/// Safe to repeat.
pub async fn thaw_account(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    account: &str,
    after: AfterThaw,
) -> Result<bool, CallFailure> {
    agent(controller, host)?
        .thaw_account(request(
            v1::ThawAccountRequest {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
                end_processes: after == AfterThaw::End,
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| r.into_inner().thawed)
        .map_err(|status| call_outcome(host, &status))
}

/// The account's databases on the source host, by engine: (server in the
/// agent's configuration, database).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutoverDatabases {
    pub postgres: Vec<(String, String)>,
    pub mariadb: Vec<(String, String)>,
}

/// The positions a fence took, per source server: every write committed
/// on the account's databases there is at or before them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FencePositions {
    /// PostgreSQL server to WAL position.
    pub postgres: Vec<(String, String)>,
    /// MariaDB server to `@@gtid_binlog_pos`.
    pub mariadb: Vec<(String, String)>,
    /// How long taking the fence took.
    pub took: Duration,
}

impl FencePositions {
    fn of<'a>(list: &'a [(String, String)], server: &str) -> Option<&'a str> {
        list.iter()
            .find(|(s, _)| s == server)
            .map(|(_, position)| position.as_str())
    }
}

/// Fences the account's databases on the source: its writers wait (not
/// refused; readers go on), and the positions are taken after the fence.
/// The agent releases the fence by itself after `deadline` unless the
/// switch came first.
pub async fn fence_databases(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
    databases: &CutoverDatabases,
    deadline: Duration,
) -> Result<FencePositions, CallFailure> {
    agent(controller, source)?
        .fence_databases(request(
            v1::FenceDatabasesRequest {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
                postgres: wire::cutover_databases(&databases.postgres),
                mariadb: wire::cutover_databases(&databases.mariadb),
                deadline_ms: millis(deadline),
                acquire_timeout_ms: 0,
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| wire::fence_positions(r.into_inner()))
        .map_err(|status| call_outcome(source, &status))
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

/// Waits until the target applied at least the fence's positions, for
/// every database, within `deadline`. How long each drain took (name,
/// time).
pub async fn drain_to_positions(
    controller: &Controller,
    source: &Host,
    target: &Host,
    migration_id: &str,
    databases: &[Drained],
    positions: &FencePositions,
    deadline: Instant,
) -> Result<Vec<(String, Duration)>, CallFailure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(CallFailure::Retry(
            "the freeze's deadline passed before the drain".to_owned(),
        ));
    }
    // Every database at once: each waits for its own replication only.
    futures_util::future::try_join_all(databases.iter().map(|database| async move {
        let started = Instant::now();
        match database {
            Drained::Postgres { server, database } => {
                let lsn = FencePositions::of(&positions.postgres, server).ok_or_else(|| {
                    CallFailure::Refused(format!(
                        "the fence on host {} gave no position for PostgreSQL server {server:?}",
                        source.id
                    ))
                })?;
                replication::drain_postgres(
                    controller,
                    source,
                    migration_id,
                    server,
                    database,
                    lsn,
                    left,
                )
                .await?;
                Ok((format!("drain postgresql {database}"), started.elapsed()))
            }
            Drained::Mariadb {
                source_server,
                target_server,
            } => {
                let gtid =
                    FencePositions::of(&positions.mariadb, source_server).ok_or_else(|| {
                        CallFailure::Refused(format!(
                            "the fence on host {} gave no position for MariaDB server {source_server:?}",
                            source.id
                        ))
                    })?;
                replication::drain_mariadb(
                    controller,
                    target,
                    migration_id,
                    target_server,
                    gtid,
                    left,
                )
                .await?;
                Ok((format!("drain mariadb {target_server}"), started.elapsed()))
            }
        }
    }))
    .await
}

/// Ends the account's sessions on the source's servers (the fence's held
/// writers among them: nothing they did is committed) and refuses new
/// ones, naming `new_address`. Sessions ended.
pub async fn switch_databases(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
    new_address: &str,
    databases: &CutoverDatabases,
) -> Result<u32, CallFailure> {
    agent(controller, source)?
        .switch_databases(request(
            v1::SwitchDatabasesRequest {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
                new_address: new_address.to_owned(),
                postgres: wire::cutover_databases(&databases.postgres),
                mariadb: wire::cutover_databases(&databases.mariadb),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| r.into_inner().ended_sessions)
        .map_err(|status| call_outcome(source, &status))
}

/// The rollback of [`fence_databases`] and [`switch_databases`]: held
/// writers go on, connection limits and users restored. Harmless when
/// neither ran.
pub async fn release_databases(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
) -> Result<(), CallFailure> {
    agent(controller, source)?
        .release_databases(request(
            v1::ReleaseDatabasesRequest {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(source, &status))
}

/// The old host's web server forwards the account's domains to
/// `new_address`:`port` (the new host's web server), and its frozen pool
/// is ended, so what it held is answered by the new host. The domains
/// forwarded; none when the account runs no sites on the old host.
pub async fn forward_sites(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
    new_address: &str,
    port: u16,
) -> Result<Vec<String>, CallFailure> {
    agent(controller, source)?
        .forward_sites(request(
            v1::ForwardSitesRequest {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
                new_address: new_address.to_owned(),
                new_port: u32::from(port),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| r.into_inner().domains)
        .or_else(|status| {
            // The agent's "has no sites running on this host".
            if status.code() == tonic::Code::FailedPrecondition
                && status.message().contains("no sites running")
            {
                Ok(Vec::new())
            } else {
                Err(call_outcome(source, &status))
            }
        })
}

/// The undo of [`forward_sites`]: the account's own server blocks and
/// pool restored on the old host. Harmless when nothing was forwarded.
pub async fn unforward_sites(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
) -> Result<bool, CallFailure> {
    unforward(controller, source, migration_id, account, false).await
}

/// The end of [`forward_sites`] after the switch: the forwarding block
/// removed from the old host, nothing of the account's restored. Harmless
/// when the forward has ended already.
pub async fn end_forward(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
) -> Result<bool, CallFailure> {
    unforward(controller, source, migration_id, account, true).await
}

async fn unforward(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
    end_for_good: bool,
) -> Result<bool, CallFailure> {
    agent(controller, source)?
        .unforward_sites(request(
            v1::UnforwardSitesRequest {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
                end_for_good,
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| r.into_inner().restored)
        .map_err(|status| call_outcome(source, &status))
}

/// Carries the sequences of each PostgreSQL database (source database,
/// source server, target database, target server) from the source to the
/// target: logical replication does not. Read after the switch, so no
/// `nextval` of the account can follow the reading.
pub async fn carry_sequences(
    controller: &Controller,
    source: &Host,
    target: &Host,
    migration_id: &str,
    databases: &[(String, String, String, String)],
) -> Result<usize, CallFailure> {
    // Every database at once: each is read, then written, on its own.
    let carried = futures_util::future::try_join_all(databases.iter().map(
        |(database, server, target_database, target_server)| async move {
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
            Ok::<_, CallFailure>(values.len())
        },
    ))
    .await?;
    Ok(carried.into_iter().sum())
}

/// Where the target's copy of the home stands against the source's change
/// journal: what the next catch-up pass names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalMark {
    pub epoch: u64,
    pub applied_sequence: u64,
}

/// Where a change journal stands on the source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStatus {
    pub epoch: u64,
    /// No journal runs for the migration (never started, stopped, or lost
    /// with a restart of the source agent).
    pub missing: bool,
    /// Paths changed and not yet confirmed sent: the files' backlog.
    pub pending_paths: u64,
    /// Why the journal may have missed changes; empty when trusted.
    pub untrusted: String,
}

/// Starts the change journal of `account`'s home for the migration
/// (before the full copy lists the home). Idempotent: a running journal
/// is kept, with its epoch.
pub async fn start_change_journal(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
) -> Result<JournalStatus, CallFailure> {
    agent(controller, source)?
        .start_change_journal(request(
            v1::StartChangeJournalRequest {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| wire::journal_status(r.into_inner()))
        .map_err(|status| call_outcome(source, &status))
}

/// Where the migration's journal stands.
pub async fn change_journal(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
) -> Result<JournalStatus, CallFailure> {
    agent(controller, source)?
        .get_change_journal(request(
            v1::ChangeJournalRequest {
                migration_id: migration_id.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| wire::journal_status(r.into_inner()))
        .map_err(|status| call_outcome(source, &status))
}

/// Stops the migration's journal (past the point of no return, or rolled
/// back). Idempotent.
pub async fn stop_change_journal(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
) -> Result<(), CallFailure> {
    agent(controller, source)?
        .stop_change_journal(request(
            v1::ChangeJournalRequest {
                migration_id: migration_id.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(source, &status))
}

/// How a catch-up pass went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUpMode {
    /// Only the paths the journal named were compared.
    Journal,
    /// The journal could not be trusted: the whole tree was compared.
    FullComparison,
    /// The journal could not be trusted and a full comparison was not
    /// allowed: nothing was changed.
    FullComparisonNeeded,
}

/// One catch-up pass's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatchUp {
    pub mode: CatchUpMode,
    pub untrusted: String,
    /// No journal runs on the source: start it again.
    pub journal_missing: bool,
    /// What the next pass names.
    pub mark: JournalMark,
    pub entries_compared: u64,
    pub files_sent: u64,
    pub elapsed: Duration,
    /// A journal pass's paths (changed, their directories, gone), relative
    /// to the home: what the freeze verifies.
    pub changed_paths: Vec<Vec<u8>>,
}

/// Which catch-up pass of a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// While the account runs: compares the whole tree when the journal
    /// cannot be trusted, and leaves its writes unsynced (recorded on the
    /// target, for a later pass to sync).
    Converging,
    /// Just before the freeze: as converging, but syncs what it and every
    /// converging pass wrote, so that the freeze's pass syncs only its own.
    BeforeFreeze,
    /// Inside the freeze: a journal that cannot be trusted changes nothing
    /// and says [`CatchUpMode::FullComparisonNeeded`]; synced.
    Frozen,
}

/// One catch-up pass on the target of the migration's copy (`spec`, the
/// full copy's), from the source's journal `journal_id`, starting from
/// `mark`. At most `timeout`.
pub async fn catch_up_files(
    controller: &Controller,
    target: &Host,
    spec: &TransferSpec,
    journal_id: &str,
    mark: JournalMark,
    pass: Pass,
    timeout: Duration,
) -> Result<CatchUp, CallFailure> {
    agent(controller, target)?
        .catch_up_files(request(
            v1::CatchUpFilesRequest {
                spec: Some(wire::transfer_spec(spec)),
                journal_id: journal_id.to_owned(),
                journal_epoch: mark.epoch,
                applied_sequence: mark.applied_sequence,
                allow_full_comparison: pass != Pass::Frozen,
                defer_sync: pass == Pass::Converging,
            },
            timeout,
        ))
        .await
        .map(|r| wire::catch_up(r.into_inner()))
        .map_err(|status| call_outcome(target, &status))
}
