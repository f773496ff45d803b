//! The steps of a migration against the agents ([`perform`]): what each
//! [`MigrateStep`] does on the source and target hosts, in domain types
//! (`agents` converts to the agent API). The freeze and the switch are
//! made of the named actions of [`agents::cutover`], in the order of
//! `proto/navette/v1/cutover.proto`: freeze the account's processes,
//! fence its databases, drain the target to the fence's positions, the
//! last file pass from the change journal, verify what it changed
//! ([`super::migrate_verify`]), switch the databases, carry the sequences
//! (all in the freeze step, before the point of no return);
//! then, past it, the sites started on the target, the old host
//! forwarding to them, the account thawed, the placement recorded; the
//! finish (DNS, replication torn down), and at their own times the
//! retirement of the old copy (once the new copy is seen in place, its
//! databases and home removed by `RetireAccount`) and the forward's end
//! (`UnforwardSites` with `end_for_good`, then the old sites stopped).
//!
//! Every step can run again after a crash or a lost lease: each agent
//! call is named by the migration's id (or a transfer id made from it)
//! and idempotent; the copy resumes; the freeze thaws what it froze when
//! it fails; the rollback and the steps after the switch tolerate what is
//! already undone or done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::migrate_dns;
use super::migrate_run::{
    Backlog, FreezePart, FreezeWindow, MigrateOutcome, MigrateStep, MigrationRun,
};
use crate::agents::cutover::{
    self, AfterThaw, CatchUpMode, CutoverDatabases, Drained, JournalMark, Pass,
};
use crate::agents::replication::{self, MariadbReplication, PostgresSource, Side};
use crate::agents::sites::{SiteDatabases, SitesSpec};
use crate::agents::transfer::{DatabaseCopy, TransferSpec, TransferState};
use crate::agents::{self, CallFailure};
use crate::engine::StepContext;
use crate::model::{DatabasePlan, Engine, Host};
use crate::state::Controller;
use crate::store;

/// How long the source lets the target read for the copy.
const GRANT_LIFETIME: chrono::Duration = chrono::Duration::hours(24);
/// How often stored progress is updated while the copy runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// The agent thaws a freeze (and releases a fence) by itself after this
/// much more than the freeze's deadline: the switch that follows the
/// freeze forwards the old sites before then.
const THAW_SLACK: Duration = Duration::from_secs(3);
/// How long the undo of a missed freeze waits for each of its calls to the
/// source: past the slack the agent has released and thawed by itself.
const UNDO_TIMEOUT: Duration = THAW_SLACK;
/// How long a catch-up pass while converging may take (one that compares
/// the whole tree walks it).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3600);
/// The web port of the new host's sites, where the old host forwards.
const WEB_PORT: u16 = 80;

fn outcome_of(failure: CallFailure) -> MigrateOutcome {
    match failure {
        CallFailure::Retry(why) => MigrateOutcome::Unreachable(why),
        CallFailure::Refused(why) => MigrateOutcome::Refused(why),
    }
}

/// The most change lines a converge round's rows verification reads (the
/// rest waits for the next round).
const LIVE_ROUND_CHANGES: u32 = 50_000;

/// A database's place on each host, for its rows verification.
pub(super) fn rows_database<'a>(
    run: &'a MigrationRun,
    database: &'a DatabasePlan,
) -> agents::verify::RowsDatabase<'a> {
    agents::verify::RowsDatabase {
        migration_id: &run.id,
        database: &database.name,
        source_server: &database.source_server,
        target_server: &database.target_server,
    }
}

pub(super) fn postgres(run: &MigrationRun) -> impl Iterator<Item = &DatabasePlan> {
    run.plan
        .databases
        .iter()
        .filter(|d| d.engine == Engine::Postgresql)
}

/// The account's MariaDB databases by target server: each target server
/// runs one replication connection for the migration, from one source
/// server. (source server, target server, databases).
pub(super) fn mariadb_groups(
    run: &MigrationRun,
) -> Result<Vec<(String, String, Vec<String>)>, String> {
    let mut groups: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for database in run
        .plan
        .databases
        .iter()
        .filter(|d| d.engine == Engine::Mariadb)
    {
        let entry = groups
            .entry(database.target_server.clone())
            .or_insert_with(|| (database.source_server.clone(), Vec::new()));
        if entry.0 != database.source_server {
            return Err(format!(
                "the account's MariaDB databases on servers {:?} and {:?} would both replicate into server {:?} of {}; one connection per server carries one source",
                entry.0, database.source_server, database.target_server, run.target_host_id
            ));
        }
        entry.1.push(database.name.clone());
    }
    Ok(groups
        .into_iter()
        .map(|(target, (source, databases))| (source, target, databases))
        .collect())
}

/// The durable copy's transfer: synced and read back (not disposable),
/// PostgreSQL from the slots' snapshots, MariaDB with its positions.
pub fn copy_spec(run: &MigrationRun, slots: &BTreeMap<String, String>) -> TransferSpec {
    TransferSpec {
        transfer_id: run.copy_transfer_id(),
        account: run.account.clone(),
        source_host_id: run.source_host_id.clone(),
        source_endpoint: run.plan.source_endpoint.clone(),
        target_host_id: run.target_host_id.clone(),
        source_home: run.plan.source_home.clone(),
        target_home: String::new(),
        databases: run
            .plan
            .databases
            .iter()
            .map(|d| DatabaseCopy {
                engine: d.engine,
                source_server: d.source_server.clone(),
                source_database: d.name.clone(),
                target_server: d.target_server.clone(),
                target_database: d.name.clone(),
            })
            .collect(),
        disposable: false,
        copy_id: run.id.clone(),
        protocol_version: run.plan.protocol_version,
        grant_expires_at: Some(Utc::now() + GRANT_LIFETIME),
        postgres_replication_slots: slots.clone(),
        mariadb_snapshot_positions: true,
        files_only: false,
    }
}

/// The account's databases on the source, for the fence and the switch.
fn cutover_databases(run: &MigrationRun) -> CutoverDatabases {
    let of = |engine| {
        run.plan
            .databases
            .iter()
            .filter(|d| d.engine == engine)
            .map(|d| (d.source_server.clone(), d.name.clone()))
            .collect()
    };
    CutoverDatabases {
        postgres: of(Engine::Postgresql),
        mariadb: of(Engine::Mariadb),
    }
}

/// What the next catch-up pass names: the last pass's answer, or the
/// journal Prepare started (sequence 0).
fn journal_mark(run: &MigrationRun) -> JournalMark {
    run.backlog
        .as_ref()
        .and_then(|b| b.journal)
        .unwrap_or(JournalMark {
            epoch: run.journal_epoch,
            applied_sequence: 0,
        })
}

/// The account's sites as the target runs them: from the copy, with the
/// copy's databases.
fn sites_spec(run: &MigrationRun) -> SitesSpec {
    let first = |engine| {
        run.plan
            .databases
            .iter()
            .find(|d| d.engine == engine)
            .map(|d| (d.target_address.clone(), d.target_port))
    };
    SitesSpec {
        account: run.account.clone(),
        copy_id: Some(run.id.clone()),
        sites: run.plan.sites.clone(),
        databases: Some(SiteDatabases {
            postgres: first(Engine::Postgresql),
            mariadb: first(Engine::Mariadb).map(|(host, port)| (host, port, String::new())),
        }),
    }
}

/// Where the source host's `server` of `engine` listens.
fn server_address(host: &Host, engine: Engine, server: &str) -> Option<(String, u16)> {
    host.database_servers
        .iter()
        .find(|s| s.engine == engine && s.name == server)
        .map(|s| (s.address.clone(), s.port))
}

/// Runs `step` of `run`.
pub async fn perform(
    controller: &Arc<Controller>,
    run: &MigrationRun,
    step: MigrateStep,
    context: &StepContext,
) -> MigrateOutcome {
    let hosts = async {
        let client = controller.db.get().await?;
        let source = store::hosts::get(&**client, &run.source_host_id).await?;
        let target = store::hosts::get(&**client, &run.target_host_id).await?;
        Ok::<_, crate::error::Error>((source, target))
    }
    .await;
    let (source, target) = match hosts {
        Ok(hosts) => hosts,
        Err(error) => return MigrateOutcome::Unreachable(error.to_string()),
    };
    let steps = Steps {
        controller,
        run,
        source: &source,
        target: &target,
    };
    let done = match step {
        MigrateStep::Prepare => steps.prepare().await,
        MigrateStep::Copy => {
            let mut cancel = context.cancel_requested.clone();
            tokio::select! {
                copied = steps.copy() => copied,
                _ = cancel.wait_for(|requested| *requested) => {
                    tracing::info!(message = "the migration is cancelled: the copy step stops", migration = %run.id);
                    return MigrateOutcome::Stopped;
                }
            }
        }
        MigrateStep::Replicate => steps.replicate().await,
        MigrateStep::Converge => steps.measure().await,
        MigrateStep::Freeze => return steps.freeze().await,
        MigrateStep::Switch => steps.switch().await,
        MigrateStep::Finish => steps.finish().await,
        MigrateStep::Retire => steps.retire().await,
        MigrateStep::Unforward => steps.unforward().await,
        MigrateStep::Rollback => steps.rollback().await,
        MigrateStep::None => Err(CallFailure::Refused("nothing to do".to_owned())),
    };
    done.unwrap_or_else(outcome_of)
}

struct Steps<'a> {
    controller: &'a Arc<Controller>,
    run: &'a MigrationRun,
    source: &'a Host,
    target: &'a Host,
}

impl Steps<'_> {
    /// The source's publications and slots, its MariaDB servers' binlog
    /// checked, the copy's grant, the home's change journal (started
    /// before the copy lists the home), the DNS TTL lowered.
    async fn prepare(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        let dns = migrate_dns::lower(c, run).await?;
        let mut slots = BTreeMap::new();
        for database in postgres(run) {
            let slot = replication::prepare_postgres(
                c,
                self.source,
                &run.id,
                &database.source_server,
                &database.name,
            )
            .await?;
            slots.insert(database.name.clone(), slot);
        }
        for (source_server, _, _) in mariadb_groups(run).map_err(CallFailure::Refused)? {
            let position = replication::mariadb_position(c, self.source, &source_server).await?;
            if !position.ready {
                return Err(CallFailure::Refused(format!(
                    "the MariaDB server {source_server:?} of host {} cannot be a replication source: {}",
                    run.source_host_id, position.reason
                )));
            }
        }
        agents::grant_transfer(c, self.source, &copy_spec(run, &slots)).await?;
        let mut journal_epoch = 0;
        if !run.plan.source_home.is_empty() {
            let journal =
                cutover::start_change_journal(c, self.source, &run.id, &run.account).await?;
            journal_epoch = journal.epoch;
        }
        Ok(MigrateOutcome::Prepared {
            slots,
            journal_epoch,
            dns,
        })
    }

    /// The durable copy, followed to its end; where each database was read.
    async fn copy(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        let spec = copy_spec(run, &run.slots);
        let mut last = agents::start_transfer(c, self.target, &spec).await?;
        if last.state == TransferState::Running {
            let mut watch = agents::watch_transfer(c, self.target, &spec.transfer_id).await?;
            let mut stored_at = Instant::now();
            while let Some(report) = watch.next().await.map_err(CallFailure::Retry)? {
                last = report;
                if last.state != TransferState::Running {
                    break;
                }
                if stored_at.elapsed() >= PROGRESS_EVERY {
                    stored_at = Instant::now();
                    if let Ok(client) = c.db.get().await
                        && let Err(error) =
                            store::migrations::store_progress(&**client, &run.id, &last.progress)
                                .await
                    {
                        tracing::warn!(message = "the copy's progress was not stored; the copy goes on", migration = %run.id, %error);
                    }
                }
            }
        }
        match last.state {
            TransferState::Succeeded => {}
            TransferState::Failed => return Ok(MigrateOutcome::CopyFailed(last.error)),
            _ => {
                return Err(CallFailure::Retry(format!(
                    "the copy on host {} stopped before its end",
                    run.target_host_id
                )));
            }
        }
        // The grant stays: the catch-up passes read with it (the finish
        // and the rollback revoke it).
        for database in &run.plan.databases {
            let key = match database.engine {
                Engine::Postgresql => format!("postgresql:{}", database.name),
                Engine::Mariadb => format!("mariadb:{}", database.name),
            };
            if !last.snapshot_positions.contains_key(&key) {
                return Ok(MigrateOutcome::CopyFailed(format!(
                    "host {} did not say where the copy of database {} was read, so replication cannot start from it; upgrade its agent",
                    run.target_host_id, database.name
                )));
            }
        }
        Ok(MigrateOutcome::Copied {
            positions: last.snapshot_positions,
            progress: last.progress,
        })
    }

    /// Subscriptions on the target from the copy's slots, and MariaDB
    /// connections from the copy's positions.
    async fn replicate(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        for database in postgres(run) {
            let (address, port) =
                server_address(self.source, Engine::Postgresql, &database.source_server)
                    .ok_or_else(|| {
                        CallFailure::Refused(format!(
                            "host {} no longer reports PostgreSQL server {:?}",
                            run.source_host_id, database.source_server
                        ))
                    })?;
            let password = replication::admit_postgres_subscriber(
                c,
                self.source,
                &run.id,
                &database.source_server,
                &database.name,
            )
            .await?;
            replication::subscribe_postgres(
                c,
                self.target,
                &run.id,
                &database.target_server,
                &database.name,
                PostgresSource {
                    address: &address,
                    port,
                    database: &database.name,
                    password,
                },
            )
            .await?;
        }
        for (source_server, target_server, databases) in
            mariadb_groups(run).map_err(CallFailure::Refused)?
        {
            let (address, port) = server_address(self.source, Engine::Mariadb, &source_server)
                .ok_or_else(|| {
                    CallFailure::Refused(format!(
                        "host {} no longer reports MariaDB server {source_server:?}",
                        run.source_host_id
                    ))
                })?;
            let (user, password) = replication::ensure_mariadb_user(
                c,
                self.source,
                &run.id,
                &source_server,
                &run.plan.target_address,
            )
            .await?;
            let snapshot_positions = databases
                .iter()
                .filter_map(|d| run.snapshot_positions.get(&format!("mariadb:{d}")).cloned())
                .collect();
            replication::start_mariadb(
                c,
                self.target,
                &MariadbReplication {
                    migration_id: run.id.clone(),
                    target_server,
                    source_address: address,
                    source_port: port,
                    user,
                    password,
                    snapshot_positions,
                    databases,
                },
            )
            .await?;
        }
        Ok(MigrateOutcome::Replicating)
    }

    /// A files catch-up pass, then the backlog now: PostgreSQL lag in
    /// bytes, MariaDB transactions not applied, paths the journal names
    /// that no pass carried. A MariaDB connection that stopped with an
    /// error fails the migration (it rolls back).
    async fn measure(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        let mut backlog = Backlog {
            postgres_lag_bytes: 0,
            mariadb_transactions: 0,
            files_pending: 0,
            files_full_comparison: false,
            journal: None,
            rows: BTreeMap::new(),
            mariadb_rows: BTreeMap::new(),
            // Those of earlier rounds stay named: their rows are not
            // checked again.
            unverified: run
                .backlog
                .as_ref()
                .map(|b| b.unverified.clone())
                .unwrap_or_default(),
            measured_at: Utc::now(),
        };
        if !run.plan.source_home.is_empty() {
            let pass = cutover::catch_up_files(
                c,
                self.target,
                &copy_spec(run, &run.slots),
                &run.id,
                journal_mark(run),
                Pass::Converging,
                CATCH_UP_TIMEOUT,
            )
            .await?;
            backlog.journal = Some(pass.mark);
            backlog.files_full_comparison = pass.mode != CatchUpMode::Journal;
            if pass.journal_missing {
                // Lost with a restart of the source agent: a new epoch,
                // which the next pass compares in full.
                cutover::start_change_journal(c, self.source, &run.id, &run.account).await?;
                backlog.files_full_comparison = true;
            }
            let journal = cutover::change_journal(c, self.source, &run.id).await?;
            backlog.files_pending = journal.pending_paths;
            if journal.missing || !journal.untrusted.is_empty() {
                backlog.files_full_comparison = true;
            }
            tracing::debug!(message = "files caught up", migration = %run.id, mode = ?pass.mode, files_sent = pass.files_sent, entries_compared = pass.entries_compared, pending = journal.pending_paths);
        }
        // Back from a missed freeze: the target applies without a flush
        // per transaction again, to keep ahead of the source.
        if run.freeze_tries > 0 {
            self.set_apply_flush(false).await?;
        }
        for database in postgres(run) {
            backlog.postgres_lag_bytes += replication::postgres_lag(
                c,
                self.source,
                &run.id,
                &database.source_server,
                &database.name,
            )
            .await?;
        }
        // A round of each database's rows verification: what changed
        // since the last one, compared while the account writes (what
        // differs is checked again next round, and inside the freeze).
        for database in postgres(run) {
            let mark = run.rows_mark(&database.name);
            let round = agents::verify::verify_rows(
                c,
                self.source,
                self.target,
                &rows_database(run, database),
                &mark,
                LIVE_ROUND_CHANGES,
                CATCH_UP_TIMEOUT,
            )
            .await?;
            tracing::debug!(message = "rows verified while converging", migration = %run.id, database = %database.name, changes = round.changes, rows = round.rows, pending = round.mark.pending.iter().map(|p| p.keys.len()).sum::<usize>(), unread_bytes = round.mark.unread_bytes);
            for table in &round.unverified {
                tracing::warn!(message = "rows not verified", migration = %run.id, database = %database.name, table = %table);
                backlog.name_unverified(format!("{}: {table}", database.name));
            }
            backlog.rows.insert(database.name.clone(), round.mark);
        }
        for (source_server, target_server, _) in
            mariadb_groups(run).map_err(CallFailure::Refused)?
        {
            let position = replication::mariadb_position(c, self.source, &source_server).await?;
            let status = replication::mariadb_status(
                c,
                self.target,
                &run.id,
                &target_server,
                &position.gtid_position,
            )
            .await?;
            if !status.running && !status.last_error.is_empty() {
                return Err(CallFailure::Refused(format!(
                    "MariaDB replication into server {target_server:?} of {} stopped: {}",
                    run.target_host_id, status.last_error
                )));
            }
            backlog.mariadb_transactions += status.backlog_transactions;
        }
        // A round of each MariaDB server's rows verification, as for
        // PostgreSQL. One that fails is logged and its mark kept: the
        // freeze's round reads from there.
        for (source_server, target_server, databases) in
            mariadb_groups(run).map_err(CallFailure::Refused)?
        {
            let mark = run.mariadb_rows_mark(&source_server, &databases);
            let round = agents::verify::verify_mariadb_rows(
                c,
                self.source,
                self.target,
                &agents::verify::MariadbRowsDatabases {
                    migration_id: &run.id,
                    source_server: &source_server,
                    target_server: &target_server,
                    databases: &databases,
                },
                &mark,
                CATCH_UP_TIMEOUT,
            )
            .await;
            let mark = match round {
                Ok(round) => {
                    tracing::debug!(message = "MariaDB rows verified while converging", migration = %run.id, server = %source_server, rows = round.rows, pending = round.mark.pending.len(), through = %round.mark.through_gtid);
                    for table in round.unverified {
                        tracing::warn!(message = "rows not verified", migration = %run.id, server = %source_server, table = %table);
                        backlog.name_unverified(table);
                    }
                    round.mark
                }
                Err(failure) => {
                    tracing::warn!(message = "a round of the MariaDB rows verification failed", migration = %run.id, server = %source_server, ?failure);
                    mark
                }
            };
            backlog.mariadb_rows.insert(source_server, mark);
        }
        backlog.measured_at = Utc::now();
        Ok(MigrateOutcome::Measured(backlog))
    }

    /// The freeze, before the point of no return: every process of the
    /// account frozen on the source, its databases fenced (writers held,
    /// the positions taken after the fence), the target drained to those
    /// positions, the last file pass from the journal (never a walk of
    /// the tree), the databases switched (held writers ended, new
    /// sessions refused), the sequences carried; all within the deadline.
    /// Otherwise the databases released and the account thawed again.
    async fn freeze(&self) -> MigrateOutcome {
        let (c, run) = (self.controller.as_ref(), self.run);
        // A run of this step stopped during its freeze (the controller
        // killed): that freeze is undone and counted missed first.
        match self.interrupted_freeze().await {
            Ok(Some(missed)) => return missed,
            Ok(None) => {}
            Err(failure) => return outcome_of(failure),
        }
        // The sites start on the target before the freeze, on the copy
        // (nothing reaches them until the old host forwards and the DNS
        // moves): the switch then only has to confirm them.
        // A target that does not answer within the freeze's deadline (cut
        // off) counts as a missed try with nothing frozen: retried by the
        // engine, the migration would stay freezing while it is cut off.
        // An answer that is an error is retried as before.
        if !run.plan.sites.is_empty() {
            let deadline = Instant::now() + run.settings.freeze_deadline();
            match tokio::time::timeout_at(
                deadline.into(),
                agents::sites::start_sites(c, self.target, &sites_spec(run)),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(failure)) => return outcome_of(failure),
                Err(_) => {
                    return MigrateOutcome::FreezeMissed(FreezeWindow {
                        frozen_at: Utc::now(),
                        total_ms: 0,
                        parts: Vec::new(),
                        missed_because: format!(
                            "nothing frozen: host {} did not start the sites within the freeze's deadline",
                            run.target_host_id
                        ),
                        sites_frozen: false,
                        unverified: Vec::new(),
                    });
                }
            }
        }
        // What the converging passes left unsynced is synced now, with
        // the changes since, before anything is frozen: the freeze's pass
        // then syncs only its own.
        let mut mark = journal_mark(run);
        if !run.plan.source_home.is_empty() {
            match cutover::catch_up_files(
                c,
                self.target,
                &copy_spec(run, &run.slots),
                &run.id,
                mark,
                Pass::BeforeFreeze,
                CATCH_UP_TIMEOUT,
            )
            .await
            {
                Ok(pass) => {
                    tracing::debug!(message = "files synced before the freeze", migration = %run.id, mode = ?pass.mode, files_sent = pass.files_sent, elapsed_ms = pass.elapsed.as_millis() as u64);
                    mark = pass.mark;
                }
                Err(failure) => return outcome_of(failure),
            }
        }
        // Each transaction the target applies from now is flushed before
        // it is confirmed: the drain inside the freeze then waits for the
        // last ones alone, not for the target's WAL writer.
        if let Err(failure) = self.set_apply_flush(true).await {
            return outcome_of(failure);
        }
        let frozen_at = Utc::now();
        if let Err(failure) = self.mark_freeze_started(frozen_at).await {
            return outcome_of(failure);
        }
        let started = Instant::now();
        let deadline = started + run.settings.freeze_deadline();
        // The agent's own holds outlast the deadline by the slack, so the
        // switch step can forward the sites before the account thaws.
        let hold = run.settings.freeze_deadline() + THAW_SLACK;
        let mut parts: Vec<FreezePart> = Vec::new();
        let mut frozen = false;
        let databases = cutover_databases(run);
        // The last pass's paths, for the verification; and what it found
        // when the copy differs (a rollback, not another try).
        let mut changed_paths: Vec<Vec<u8>> = Vec::new();
        let mut mismatch: Option<String> = None;
        let mut unverified: Vec<String> = Vec::new();
        let result = async {
            let part = Instant::now();
            let account = bounded(
                deadline,
                "freezing the account",
                cutover::freeze_account(c, self.source, &run.id, &run.account, hold),
            )
            .await?;
            frozen = true;
            parts.push(part_of("freeze processes", part.elapsed()));
            tracing::info!(message = "account frozen", migration = %run.id, processes = account.frozen_processes, moved = account.moved_processes, kernel_us = account.took.as_micros() as u64);
            let mut drained: Vec<Drained> = postgres(run)
                .map(|d| Drained::Postgres {
                    server: d.source_server.clone(),
                    database: d.name.clone(),
                })
                .collect();
            for (source_server, target_server, _) in
                mariadb_groups(run).map_err(CallFailure::Refused)?
            {
                drained.push(Drained::Mariadb {
                    source_server,
                    target_server,
                });
            }
            if !drained.is_empty() {
                let part = Instant::now();
                let positions = bounded(
                    deadline,
                    "fencing the databases",
                    cutover::fence_databases(
                        c,
                        self.source,
                        &run.id,
                        &run.account,
                        &databases,
                        hold,
                    ),
                )
                .await?;
                parts.push(part_of("fence databases", part.elapsed()));
                for (name, took) in bounded(
                    deadline,
                    "draining the target",
                    cutover::drain_to_positions(
                        c,
                        self.source,
                        self.target,
                        &run.id,
                        &drained,
                        &positions,
                        deadline,
                    ),
                )
                .await?
                {
                    parts.push(part_of(&name, took));
                }
            }
            if !run.plan.source_home.is_empty() {
                let part = Instant::now();
                let left = deadline.saturating_duration_since(Instant::now());
                let pass = bounded(
                    deadline,
                    "the last file pass",
                    cutover::catch_up_files(
                        c,
                        self.target,
                        &copy_spec(run, &run.slots),
                        &run.id,
                        mark,
                        Pass::Frozen,
                        left.max(Duration::from_millis(1)),
                    ),
                )
                .await?;
                if pass.mode != CatchUpMode::Journal {
                    return Err(CallFailure::Retry(format!(
                        "the change journal cannot be trusted ({}); the whole home is compared before the next freeze",
                        if pass.journal_missing {
                            "no journal runs on the source"
                        } else {
                            pass.untrusted.as_str()
                        }
                    )));
                }
                parts.push(part_of("catch up files", part.elapsed()));
                changed_paths = pass.changed_paths;
            }
            // Before the switch ends the held writers: a mismatch then
            // leaves the source exactly as it served.
            let part = Instant::now();
            let verified = super::migrate_verify::verify_changes(
                c,
                self.source,
                self.target,
                run,
                &changed_paths,
                deadline,
            )
            .await?;
            unverified = verified.unverified;
            if let Some(why) = verified.mismatch {
                mismatch = Some(why.clone());
                return Err(CallFailure::Refused(why));
            }
            parts.push(part_of("verify", part.elapsed()));
            if !drained.is_empty() {
                let part = Instant::now();
                bounded(
                    deadline,
                    "switching the databases",
                    cutover::switch_databases(
                        c,
                        self.source,
                        &run.id,
                        &run.account,
                        &run.plan.target_address,
                        &databases,
                    ),
                )
                .await?;
                parts.push(part_of("switch databases", part.elapsed()));
            }
            let sequences: Vec<(String, String, String, String)> = postgres(run)
                .map(|d| {
                    (
                        d.name.clone(),
                        d.source_server.clone(),
                        d.name.clone(),
                        d.target_server.clone(),
                    )
                })
                .collect();
            if !sequences.is_empty() {
                let part = Instant::now();
                bounded(
                    deadline,
                    "carrying the sequences",
                    cutover::carry_sequences(c, self.source, self.target, &run.id, &sequences),
                )
                .await?;
                parts.push(part_of("sequences", part.elapsed()));
            }
            if Instant::now() > deadline {
                return Err(CallFailure::Retry(format!(
                    "the freeze took {} ms, past its deadline of {} ms",
                    started.elapsed().as_millis(),
                    run.settings.freeze_deadline_ms
                )));
            }
            Ok(())
        }
        .await;
        let window = |parts: Vec<FreezePart>, missed_because: String, sites_frozen| FreezeWindow {
            frozen_at,
            total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            parts,
            missed_because,
            sites_frozen,
            unverified: unverified.clone(),
        };
        match result {
            Ok(()) => MigrateOutcome::Frozen(window(parts, String::new(), frozen)),
            Err(failure) => {
                let why = match failure {
                    CallFailure::Retry(why) | CallFailure::Refused(why) => why,
                };
                self.undo_freeze(&mut parts).await;
                tracing::warn!(message = "freeze undone", migration = %run.id, reason = %why);
                if mismatch.is_some() {
                    return MigrateOutcome::VerifyMismatch(window(parts, why, frozen));
                }
                MigrateOutcome::FreezeMissed(window(parts, why, frozen))
            }
        }
    }

    /// The undo of a freeze: the source's databases released and the
    /// account thawed, each bounded by [`UNDO_TIMEOUT`] (past it the
    /// agent releases and thaws by itself, at the hold's end). Harmless
    /// when nothing was frozen.
    async fn undo_freeze(&self, parts: &mut Vec<FreezePart>) {
        let (c, run) = (self.controller.as_ref(), self.run);
        let part = Instant::now();
        if let Err(error) = bounded(
            Instant::now() + UNDO_TIMEOUT,
            "releasing the databases",
            cutover::release_databases(c, self.source, &run.id, &run.account),
        )
        .await
        {
            tracing::warn!(message = "the source's databases could not be released now; its agent releases them at the fence's deadline", migration = %run.id, error = ?error);
        }
        match bounded(
            Instant::now() + UNDO_TIMEOUT,
            "thawing the account",
            cutover::thaw_account(c, self.source, &run.id, &run.account, AfterThaw::Resume),
        )
        .await
        {
            Ok(_) => parts.push(part_of("release and thaw", part.elapsed())),
            Err(error) => {
                tracing::warn!(message = "the account could not be thawed now; its agent thaws it by itself", migration = %run.id, error = ?error)
            }
        }
    }

    /// Records, before anything is frozen, that this try's freeze begins.
    /// Sets each PostgreSQL subscription of the migration to flush every
    /// transaction it applies before confirming it, or not.
    async fn set_apply_flush(&self, flush_each_transaction: bool) -> Result<(), CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        for database in postgres(run) {
            replication::set_postgres_apply_flush(
                c,
                self.target,
                &run.id,
                &database.target_server,
                &database.name,
                flush_each_transaction,
            )
            .await?;
        }
        Ok(())
    }

    async fn mark_freeze_started(
        &self,
        frozen_at: chrono::DateTime<Utc>,
    ) -> Result<(), CallFailure> {
        let run = self.run;
        let client = self
            .controller
            .db
            .get()
            .await
            .map_err(|e| CallFailure::Retry(format!("recording the freeze's start: {e}")))?;
        store::migrations::mark_freeze_started(&**client, &run.id, run.freeze_tries, frozen_at)
            .await
            .map_err(|e| CallFailure::Retry(format!("recording the freeze's start: {e}")))
    }

    /// A freeze a previous run of this step began and no recorded
    /// transition settled (the controller stopped during it): undone
    /// (idempotent) and counted as a missed freeze, which the tries
    /// policy then follows.
    async fn interrupted_freeze(&self) -> Result<Option<MigrateOutcome>, CallFailure> {
        let run = self.run;
        let started_at =
            {
                let client =
                    self.controller.db.get().await.map_err(|e| {
                        CallFailure::Retry(format!("reading the freeze's marker: {e}"))
                    })?;
                store::migrations::freeze_started(&**client, &run.id)
                    .await
                    .map_err(|e| CallFailure::Retry(format!("reading the freeze's marker: {e}")))?
            };
        let Some(frozen_at) = started_at else {
            return Ok(None);
        };
        let mut parts = Vec::new();
        self.undo_freeze(&mut parts).await;
        // Frozen until now at most: the agent thaws by itself at the
        // hold's end.
        let hold = run.settings.freeze_deadline() + THAW_SLACK;
        let since = (Utc::now() - frozen_at).to_std().unwrap_or_default();
        let why = "the controller stopped during the freeze".to_owned();
        tracing::warn!(message = "a freeze was cut short by the controller's stop; undone and counted missed", migration = %run.id, frozen_at = %frozen_at);
        Ok(Some(MigrateOutcome::FreezeMissed(FreezeWindow {
            frozen_at,
            total_ms: u64::try_from(since.min(hold).as_millis()).unwrap_or(u64::MAX),
            parts,
            missed_because: why,
            sites_frozen: false,
            unverified: Vec::new(),
        })))
    }

    /// Past the point of no return: the sites start on the target, the
    /// old host forwards the account's domains there (what its frozen pool
    /// held is answered by the new host), the account's other processes
    /// on the old host ended while frozen (they would write into the old
    /// copy) and the group thawed, the placement recorded.
    async fn switch(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        let mut parts = Vec::new();
        if !run.plan.sites.is_empty() {
            let part = Instant::now();
            agents::sites::start_sites(c, self.target, &sites_spec(run)).await?;
            parts.push(part_of("sites on the target", part.elapsed()));
        }
        if run.freeze.as_ref().is_some_and(|f| f.sites_frozen) {
            let part = Instant::now();
            let domains = cutover::forward_sites(
                c,
                self.source,
                &run.id,
                &run.account,
                &run.plan.target_address,
                WEB_PORT,
            )
            .await?;
            parts.push(part_of("sites forwarded", part.elapsed()));
            tracing::info!(message = "the old host forwards the account's domains", migration = %run.id, domains = ?domains);
            let part = Instant::now();
            cutover::thaw_account(c, self.source, &run.id, &run.account, AfterThaw::End).await?;
            parts.push(part_of("thaw", part.elapsed()));
        }
        let part = Instant::now();
        let placed = async {
            let client = c.db.get().await?;
            store::migrations::place_account(
                &**client,
                &run.account,
                &run.target_host_id,
                &run.id,
                &run.id,
            )
            .await
        }
        .await;
        placed.map_err(|e| CallFailure::Retry(format!("recording the new placement: {e}")))?;
        parts.push(part_of("placement recorded", part.elapsed()));
        tracing::info!(message = "migration switched: the account lives on the target", migration = %run.id, account = %run.account, target = %run.target_host_id);
        Ok(MigrateOutcome::Switched {
            parts,
            accepted_at: Utc::now(),
        })
    }

    /// After the switch: the DNS records pointed at the new host and their
    /// TTL restored, the change journal stopped, replication torn down on
    /// both sides, the replication users and grants ended.
    async fn finish(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        let dns = migrate_dns::switch_and_restore(c, run, self.source, self.target).await?;
        tolerate(
            cutover::stop_change_journal(c, self.source, &run.id).await,
            "stopping the change journal",
        )?;
        self.teardown(true).await?;
        for transfer_id in std::iter::once(run.copy_transfer_id())
            .chain((1..=run.freeze_tries).map(|n| run.catch_up_transfer_id(n)))
        {
            let _ = agents::revoke_grant(c, self.source, &transfer_id).await;
        }
        tracing::info!(message = "migration finished", migration = %run.id, dns = ?dns);
        Ok(MigrateOutcome::Finished { at: Utc::now() })
    }

    /// At the end of the grace period, once the new copy is seen in
    /// place (the placement names the target, whose agent answers and
    /// reports the account's home and databases; otherwise a retry, and
    /// nothing goes): the old copy's databases and home removed
    /// (`RetireAccount`), the old sites stopped. While the old host still
    /// forwards, its sites are the forward (the switch replaced their
    /// server blocks and killed their pool), and stopping them would end
    /// it: they are stopped when the forward ends.
    async fn retire(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        let placement = async {
            let client = c.db.get().await?;
            store::migrations::placement(&**client, &run.account).await
        }
        .await
        .map_err(|e| CallFailure::Retry(format!("reading the account's placement: {e}")))?;
        match placement {
            Some((host, _)) if host == run.target_host_id => {}
            other => {
                return Err(CallFailure::Refused(format!(
                    "{} is placed on {:?}, not on the migration's target {}; the old copy is kept",
                    run.account,
                    other.map(|(host, _)| host),
                    run.target_host_id
                )));
            }
        }
        let on_target: Vec<(Engine, String, String)> = run
            .plan
            .databases
            .iter()
            .map(|d| (d.engine, d.target_server.clone(), d.name.clone()))
            .collect();
        agents::retire::new_copy_in_place(c, self.target, &run.account, &on_target).await?;
        let mariadb: Vec<(String, String)> = run
            .plan
            .databases
            .iter()
            .filter(|d| d.engine == Engine::Mariadb)
            .map(|d| (d.source_server.clone(), d.name.clone()))
            .collect();
        let retired =
            agents::retire::retire_account(c, self.source, &run.id, &run.account, &mariadb).await?;
        if run.forward_until.is_none() || run.unforwarded_at.is_some() {
            agents::sites::stop_sites(c, self.source, &run.account).await?;
        }
        tracing::info!(message = "the old copy is retired", migration = %run.id, account = %run.account, host = %run.source_host_id, removed = ?retired.removed, kept = ?retired.kept, already = retired.already, forwarding = run.unforwarded_at.is_none());
        // The outcome, `removed` with it, is the audit trail's entry of the step.
        Ok(MigrateOutcome::Retired {
            at: Utc::now(),
            removed: retired.removed,
        })
    }

    /// Once the old DNS records' TTL has passed since their switch: the
    /// old host's forward ended (its block removed, nothing of the
    /// account's restored), then what is left of the old sites stopped.
    async fn unforward(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        let ended = cutover::end_forward(c, self.source, &run.id, &run.account).await?;
        agents::sites::stop_sites(c, self.source, &run.account).await?;
        tracing::info!(message = "the old host no longer forwards the account's domains", migration = %run.id, account = %run.account, host = %run.source_host_id, ended);
        Ok(MigrateOutcome::Unforwarded { at: Utc::now() })
    }

    /// Replication's objects on the target dropped: the subscriptions and
    /// MariaDB connections. What is gone already is not an error.
    async fn teardown_target(&self) -> Result<(), CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        for database in postgres(run) {
            tolerate(
                replication::teardown_postgres(
                    c,
                    self.target,
                    &run.id,
                    &database.target_server,
                    Side::Target,
                    &database.name,
                    &database.name,
                )
                .await,
                "the subscription",
            )?;
        }
        for (_, target_server, _) in mariadb_groups(run).unwrap_or_default() {
            tolerate(
                replication::stop_mariadb(c, self.target, &run.id, &target_server).await,
                "the MariaDB connection",
            )?;
        }
        Ok(())
    }

    /// Replication's objects on the source dropped: the slots,
    /// publications and roles, the MariaDB replication users (and their
    /// sessions). The customer's data stays.
    async fn teardown_source(&self) -> Result<(), CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        for database in postgres(run) {
            tolerate(
                replication::teardown_postgres(
                    c,
                    self.source,
                    &run.id,
                    &database.source_server,
                    Side::Source,
                    &database.name,
                    "",
                )
                .await,
                "the slot and publication",
            )?;
        }
        for (source_server, _, _) in mariadb_groups(run).unwrap_or_default() {
            tolerate(
                replication::drop_mariadb_user(c, self.source, &run.id, &source_server).await,
                "the MariaDB replication user",
            )?;
        }
        Ok(())
    }

    async fn teardown(&self, target_too: bool) -> Result<(), CallFailure> {
        if target_too {
            self.teardown_target().await?;
        }
        self.teardown_source().await
    }

    /// Before the point of no return: the source's databases released,
    /// a forward undone, the account thawed, the journal stopped,
    /// replication torn down, the target's copy removed (once no transfer writes into it:
    /// the agent refuses until then, and the removal is retried). Nothing
    /// of the account's own data is touched.
    async fn rollback(&self) -> Result<MigrateOutcome, CallFailure> {
        let (c, run) = (self.controller.as_ref(), self.run);
        // Each harmless if its step never ran: the held writers go on (or
        // the switched databases serve again), a forward sent by a switch
        // that failed half-way is undone, the account runs again.
        tolerate(
            cutover::release_databases(c, self.source, &run.id, &run.account).await,
            "releasing the databases",
        )?;
        tolerate(
            cutover::unforward_sites(c, self.source, &run.id, &run.account)
                .await
                .map(drop),
            "undoing the forward",
        )?;
        tolerate(
            cutover::thaw_account(c, self.source, &run.id, &run.account, AfterThaw::Resume)
                .await
                .map(drop),
            "thawing the account",
        )?;
        tolerate(
            cutover::stop_change_journal(c, self.source, &run.id).await,
            "stopping the change journal",
        )?;
        // A subscription exists only once the copy is complete; it goes
        // before its database.
        if !run.snapshot_positions.is_empty() {
            self.teardown_target().await?;
        }
        // The sites the freeze started on the target, before their copy.
        if !run.plan.sites.is_empty() {
            tolerate(
                agents::sites::stop_sites(c, self.target, &run.account)
                    .await
                    .map(drop),
                "stopping the sites on the target",
            )?;
        }
        let removed = agents::remove_copy(c, self.target, &copy_spec(run, &run.slots)).await?;
        tracing::info!(message = "the migration's copy is removed", migration = %run.id, logins_dropped = ?removed.logins_dropped);
        // The slots go once no copy reads from them.
        self.teardown_source().await?;
        for transfer_id in std::iter::once(run.copy_transfer_id())
            .chain((1..=run.freeze_tries).map(|n| run.catch_up_transfer_id(n)))
        {
            let _ = agents::revoke_grant(c, self.source, &transfer_id).await;
        }
        Ok(MigrateOutcome::RolledBack)
    }
}

/// `call`, given up at `deadline` (a host cut off answers nothing, and a
/// call's own timeout may be longer than what the freeze has left).
async fn bounded<T>(
    deadline: Instant,
    what: &str,
    call: impl std::future::Future<Output = Result<T, CallFailure>>,
) -> Result<T, CallFailure> {
    tokio::time::timeout_at(deadline.into(), call)
        .await
        .unwrap_or_else(|_| {
            Err(CallFailure::Retry(format!(
                "{what} did not answer before the freeze's deadline"
            )))
        })
}

fn part_of(name: &str, took: Duration) -> FreezePart {
    FreezePart {
        name: name.to_owned(),
        ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
    }
}

/// An undo that the agent refuses (nothing of that name, a server gone)
/// is logged and passed; one that cannot reach its host is retried.
fn tolerate(result: Result<(), CallFailure>, what: &str) -> Result<(), CallFailure> {
    match result {
        Ok(()) => Ok(()),
        Err(CallFailure::Refused(why)) => {
            tracing::warn!(message = "an undo was refused; passed", what, reason = %why);
            Ok(())
        }
        Err(retry) => Err(retry),
    }
}
