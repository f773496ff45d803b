//! The panel's Migrations service (R4, R5): *Migrate*, followed, and
//! cancelled until its point of no return. Every field is parsed by
//! `crate::ids` first; every refusal (item 8 of the issue) is decided here
//! before anything is written, so a refused request changes nothing:
//!
//! - no acknowledgement that the move is irreversible;
//! - unknown account, migration or named host;
//! - the policy (`[migrations] require_recent_test`) wants a successful
//!   test of this migration for this account, recent enough, and there is
//!   none;
//! - the account has a migration in flight, or a test being made or
//!   refreshed (it reads the account's host);
//! - the named target is the account's own host, or no (named) shared host
//!   runs the target version with room (`placement::migrate`);
//! - a blocking finding of the compatibility report, or a database server
//!   of the account that cannot be a replication source (PostgreSQL
//!   without `wal_level=logical`, MariaDB without a ROW binary log).

use std::sync::Arc;

use navette_proto::timestamp;
use navette_proto::v1;
use navette_proto::v1::migrations_server::Migrations;
use ring::rand::SecureRandom;
use tonic::{Request, Response};

use super::watch::{WatchStream, watch};
use super::{Reply, reply, status};
use crate::agents::transfer::TransferState;
use crate::agents::wire;
use crate::compatibility;
use crate::engine::{self, WorkflowId};
use crate::error::{Error, Result};
use crate::ids::{AccountName, MigrationId, RequestId, TestId};
use crate::placement;
use crate::state::Controller;
use crate::store;
use crate::workflow::migrate_run::{
    FreezeWindow, MigrateSettings, MigrateState, MigrateStep, MigrationRun,
};

pub struct MigrationsApi(pub Arc<Controller>);

type MigrationStream = WatchStream<v1::MigrationRun>;

fn new_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!(
        "m{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl MigrationsApi {
    async fn start(&self, request: v1::MigrateRequest) -> Result<MigrationRun> {
        let request_id = RequestId::parse("request_id", &request.request_id)?;
        let account_name = AccountName::parse("account", &request.account)?;
        let migration_id = MigrationId::parse("migration_id", &request.migration_id)?;
        let named = crate::ids::optional("target_host_id", &request.target_host_id, |f, v| {
            crate::ids::HostId::parse(f, v)
        })?;
        if !request.acknowledge_irreversible {
            return Err(Error::InvalidArgument(
                "acknowledge_irreversible must be true: once it switched, a migration cannot be undone; ask the customer to confirm, then send it again".to_owned(),
            ));
        }
        let client = self.0.db.get().await?;
        if let Some(existing) = store::migrations::by_request_id(&**client, &request_id).await? {
            if existing.account != *account_name || existing.migration_id != *migration_id {
                return Err(Error::AlreadyExists(format!(
                    "request id {request_id:?} already started migration {} of {} for {}; use a new request id",
                    existing.id, existing.migration_id, existing.account
                )));
            }
            return Ok(existing);
        }
        let migration = self
            .0
            .catalogue
            .get(&migration_id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "migration",
                id: migration_id.to_string(),
            })?;
        let account = store::accounts::get(&**client, &account_name).await?;
        let source = store::hosts::get(&**client, &account.host_id).await?;
        if !migration.applies_to_account(&account, &source) {
            return Err(Error::FailedPrecondition(format!(
                "migration {} does not apply to account {} (see Catalogue/ListMigrations for the account)",
                migration.id, account.name
            )));
        }
        if let Some(in_flight) = store::migrations::in_flight(&**client, &account.name).await? {
            return Err(Error::FailedPrecondition(format!(
                "account {} has migration {} in flight ({}); wait for it to end",
                account.name,
                in_flight.id,
                in_flight.state.as_str()
            )));
        }
        if let Some((test, state)) =
            store::migrations::test_under_way(&**client, &account.name).await?
        {
            return Err(Error::FailedPrecondition(format!(
                "account {} has test {test} {state}; migrate once it is ready",
                account.name
            )));
        }
        if named.as_deref() == Some(source.id.as_str()) {
            return Err(Error::FailedPrecondition(format!(
                "host {} is the account's own host: a migration moves {} to another shared host",
                source.id, account.name
            )));
        }
        let hosts = store::hosts::list(&**client, None, None).await?;
        let blocking = compatibility::blocking_findings(&migration, &account, &source, &hosts);
        let mut reasons: Vec<String> = blocking.iter().map(|f| f.message.clone()).collect();
        reasons.extend(placement::migrate::replication_blockers(&account, &source));
        if !reasons.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{} cannot migrate {}: {} (see Tests/GetCompatibilityReport)",
                migration.id,
                account.name,
                reasons.join("; ")
            )));
        }
        let policy = &self.0.config.migrations;
        if policy.require_recent_test
            && !store::migrations::recent_successful_test(
                &**client,
                &account.name,
                &migration.id,
                policy.test_max_age_secs,
            )
            .await?
        {
            return Err(Error::FailedPrecondition(format!(
                "account {} has no successful test of {} in the last {} days; test it first (Tests/TestMigration), or an operator relaxes [migrations] require_recent_test",
                account.name,
                migration.id,
                policy.test_max_age_secs / 86_400
            )));
        }
        let mut held = store::accounts::list(&**client, None).await?;
        held.extend(store::accounts::list_copies(&**client, None).await?);
        held.extend(store::accounts::planned_copies(&**client).await?);
        let (target, plan) = placement::migrate::plan_migration(
            &migration,
            &account,
            &source,
            &hosts,
            &held,
            named.as_deref(),
        )?;
        drop(client);
        let now = chrono::Utc::now();
        let run = MigrationRun {
            id: new_id(),
            request_id: request_id.to_string(),
            account: account.name.clone(),
            migration_id: migration.id.clone(),
            source_host_id: source.id.clone(),
            target_host_id: target.id.clone(),
            plan,
            settings: MigrateSettings::from_config(policy),
            state: MigrateState::Preparing,
            step: MigrateStep::Prepare,
            attempts: 0,
            phase: "preparing the source: publications, replication slots, the copy's grant"
                .to_owned(),
            error: String::new(),
            slots: Default::default(),
            journal_epoch: 0,
            dns: None,
            snapshot_positions: Default::default(),
            progress: None,
            backlog: None,
            freeze_tries: 0,
            freeze: None,
            missed_freezes: Vec::new(),
            cancelled: false,
            retire_at: None,
            forward_until: None,
            retired_at: None,
            removed: Vec::new(),
            unforwarded_at: None,
            created_at: now,
            updated_at: now,
        };
        let mut client = self.0.db.get().await?;
        match store::migrations::create(&mut client, &run).await? {
            Some(run) => {
                tracing::info!(message = "migration started", migration = %run.id, account = %run.account, catalogue = %run.migration_id, source = %run.source_host_id, target = %run.target_host_id);
                Ok(run)
            }
            // A retry of the same request, or another migration of the
            // account, won the race.
            None => match store::migrations::by_request_id(&**client, &request_id).await? {
                Some(existing) => Ok(existing),
                None => Err(Error::FailedPrecondition(format!(
                    "account {} has a migration in flight; wait for it to end",
                    account.name
                ))),
            },
        }
    }

    async fn cancel(&self, id: &str) -> Result<MigrationRun> {
        let workflow = WorkflowId::parse(id, "id")?;
        let mut client = self.0.db.get().await?;
        let run = store::migrations::get(&**client, id).await?;
        if run.switched() {
            return Err(Error::FailedPrecondition(format!(
                "migration {id} passed its point of no return (the account was switched to {}): it can no longer be cancelled",
                run.target_host_id
            )));
        }
        if run.state.ended() || run.state == MigrateState::RollingBack {
            return Ok(run);
        }
        match engine::store::cancel(&mut client, &workflow, "panel").await {
            Ok(_) => {}
            Err(Error::FailedPrecondition(why))
                if run.switched() || why.contains("point of no return") =>
            {
                return Err(Error::FailedPrecondition(format!(
                    "migration {id} passed its point of no return (the account was switched to {}): it can no longer be cancelled and completes ({why})",
                    run.target_host_id
                )));
            }
            Err(error) => return Err(error),
        }
        tracing::info!(message = "migration cancel asked", migration = %id);
        store::migrations::get(&**client, id).await
    }
}

#[tonic::async_trait]
impl Migrations for MigrationsApi {
    async fn migrate(&self, request: Request<v1::MigrateRequest>) -> Reply<v1::MigrationRun> {
        reply(
            self.start(request.into_inner())
                .await
                .map(|run| migration(&run)),
        )
    }

    async fn get_migration(
        &self,
        request: Request<v1::GetMigrationRunRequest>,
    ) -> Reply<v1::MigrationRun> {
        let request = request.into_inner();
        reply(
            async {
                let id = TestId::parse("id", &request.id)?;
                let client = self.0.db.get().await?;
                Ok(migration(&store::migrations::get(&**client, &id).await?))
            }
            .await,
        )
    }

    async fn cancel_migration(
        &self,
        request: Request<v1::CancelMigrationRequest>,
    ) -> Reply<v1::MigrationRun> {
        let request = request.into_inner();
        reply(
            async {
                let id = TestId::parse("id", &request.id)?;
                self.cancel(&id).await.map(|run| migration(&run))
            }
            .await,
        )
    }

    type WatchMigrationStream = MigrationStream;

    async fn watch_migration(
        &self,
        request: Request<v1::WatchMigrationRequest>,
    ) -> Reply<MigrationStream> {
        let id = TestId::parse("id", &request.get_ref().id)
            .map_err(|e| status(e.into()))?
            .to_string();
        let stream = watch(
            self.0.clone(),
            id,
            store::migrations::CHANNEL,
            |controller: Arc<Controller>, id: String| async move {
                let client = controller.db.get().await?;
                store::migrations::get(&**client, &id).await
            },
            migration,
            |run: &MigrationRun| run.state.ended(),
        )
        .await?;
        Ok(Response::new(stream))
    }
}

fn state(state: MigrateState) -> v1::migration_run::State {
    use v1::migration_run::State;
    match state {
        MigrateState::Preparing => State::Preparing,
        MigrateState::Copying => State::Copying,
        MigrateState::Replicating => State::Replicating,
        MigrateState::Converging => State::Converging,
        MigrateState::Freezing => State::Freezing,
        MigrateState::Switched => State::Switched,
        MigrateState::Completed => State::Completed,
        MigrateState::RollingBack => State::RollingBack,
        MigrateState::Failed => State::Failed,
        MigrateState::Cancelled => State::Cancelled,
    }
}

fn freeze_window(window: &FreezeWindow) -> v1::FreezeWindow {
    v1::FreezeWindow {
        total_ms: window.total_ms,
        parts: window
            .parts
            .iter()
            .map(|p| v1::FreezePart {
                name: p.name.clone(),
                ms: p.ms,
            })
            .collect(),
        frozen_at: Some(timestamp(window.frozen_at)),
        missed_because: window.missed_because.clone(),
        unverified_tables: window.unverified.clone(),
    }
}

/// A migration as the panel sees it.
pub fn migration(run: &MigrationRun) -> v1::MigrationRun {
    let copy_state = match run.state {
        MigrateState::Preparing | MigrateState::Copying => TransferState::Running,
        _ => TransferState::Succeeded,
    };
    v1::MigrationRun {
        id: run.id.clone(),
        account: run.account.clone(),
        migration_id: run.migration_id.clone(),
        state: state(run.state).into(),
        source_host_id: run.source_host_id.clone(),
        target_host_id: run.target_host_id.clone(),
        phase: run.phase.clone(),
        error: run.error.clone(),
        progress: run.progress.as_ref().map(|progress| {
            wire::transfer_progress(run.copy_transfer_id(), copy_state, progress, run.updated_at)
        }),
        backlog: run.backlog.as_ref().map(|b| v1::MigrationBacklog {
            postgres_lag_bytes: b.postgres_lag_bytes,
            mariadb_transactions: b.mariadb_transactions,
            below_threshold: b.below(&run.settings),
            measured_at: Some(timestamp(b.measured_at)),
            unverified_tables: b.unverified.clone(),
        }),
        // The window is the migration's once it switched; a freeze under
        // way shows in `phase`.
        freeze_window: run
            .freeze
            .as_ref()
            .filter(|_| run.switched())
            .map(freeze_window),
        freeze_attempts: run.freeze_tries,
        point_of_no_return_passed: run.switched(),
        created_at: Some(timestamp(run.created_at)),
        updated_at: Some(timestamp(run.updated_at)),
        retire_at: run.retire_at.map(timestamp),
        forward_until: run.forward_until.map(timestamp),
        retired_at: run.retired_at.map(timestamp),
        removed: run.removed.clone(),
        unforwarded_at: run.unforwarded_at.map(timestamp),
        missed_freezes: run.missed_freezes.iter().map(freeze_window).collect(),
    }
}
