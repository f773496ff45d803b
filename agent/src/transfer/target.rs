//! Transfers as this agent runs them: granting its data as a source, and
//! pulling, following and removing copies as a target.
//!
//! On a target, every transfer leaves a record in
//! `<state_dir>/transfers/<transfer id>/` (its spec, and its final progress
//! once it ended), so that a repeated `StartTransfer` after an agent restart
//! returns the result instead of copying again. Every transfer fills a
//! *copy* ([`super::copies`]): before anything is written the copy drops
//! the databases it created that the spec no longer lists (a spec lists
//! everything the copy is to hold: the account as it is now), claims its
//! home and databases (refused when they exist and are not the copy's,
//! postponed while another copy holds them), and once the pull ends it
//! records the logins it created. `RemoveCopy` removes exactly one copy,
//! by its id, and never while a transfer into it runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use navette_proto::identity::agent_server_name;
use navette_proto::v1::{TransferProgress, TransferSpec, TransferState};
use prost::Message;

use super::copies::{Copies, CopiesError, CopyRecord, OwnedDatabase, OwnedLogin};
use super::grants::{Grant, GrantError, GrantedDatabase, Grants};
use super::postgres::digest::RowHash;
use super::progress::Progress;
use super::protocol;
use super::removal::{self, LoginDrop};
use crate::config::Config;
use crate::gateway::ControllerLink;
use crate::ids::is_transfer_id;

mod catch_up;

/// Why a transfer call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no transfer {0} on this host")]
    Unknown(String),
    /// Worth retrying later: another copy holds what this one needs.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Copies(#[from] CopiesError),
}

/// What a removal did with the logins of a copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemovedLogins {
    pub dropped: Vec<String>,
    pub kept: Vec<String>,
}

/// The logins of this host's servers a transfer may touch, before it runs.
#[derive(Debug, Default)]
struct LoginsBefore {
    /// server -> roles.
    postgres: HashMap<String, std::collections::BTreeSet<String>>,
    /// server -> (user, host).
    mariadb: HashMap<String, std::collections::BTreeSet<(String, String)>>,
}

/// The copy a transfer fills: its `copy_id`, else the transfer itself.
pub fn copy_id_of(spec: &TransferSpec) -> &str {
    if spec.copy_id.is_empty() {
        &spec.transfer_id
    } else {
        &spec.copy_id
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a transfer to this host left behind.
#[derive(Debug)]
struct Record {
    finished: Option<TransferProgress>,
}

/// The transfers of this agent.
pub struct Transfers {
    host_id: String,
    config: Arc<Config>,
    grants: Arc<Grants>,
    link: Arc<ControllerLink>,
    running: Mutex<HashMap<String, Arc<Progress>>>,
    copies: Copies,
    /// As a source: the change journals of homes being migrated.
    journals: Arc<super::files::journals::Journals>,
    /// As a target: the copies a catch-up pass runs into now (one at a
    /// time per copy).
    catching_up: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

fn valid_account(name: &str) -> bool {
    crate::ids::AccountName::is_valid(name)
}

impl Transfers {
    pub fn new(
        host_id: String,
        config: Arc<Config>,
        grants: Arc<Grants>,
        link: Arc<ControllerLink>,
    ) -> Transfers {
        Transfers {
            copies: Copies::new(&config.state_dir),
            host_id,
            config,
            grants,
            link,
            running: Mutex::new(HashMap::new()),
            journals: Arc::default(),
            catching_up: Mutex::default(),
        }
    }

    /// The change journals this host runs as a source.
    pub fn journals(&self) -> Arc<super::files::journals::Journals> {
        self.journals.clone()
    }

    pub fn grants(&self) -> Arc<Grants> {
        self.grants.clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.clone()
    }

    /// This host's id.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// What every copy on this host recorded it created (the transit wipe
    /// picks an allocation's copies from them).
    pub fn copy_records(&self) -> Vec<CopyRecord> {
        self.copies.list()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Progress>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_dir(&self, transfer_id: &str) -> PathBuf {
        self.config.state_dir.join("transfers").join(transfer_id)
    }

    /// Where the copy of `account`'s home goes on this host.
    pub fn target_home(&self, account: &str) -> PathBuf {
        self.config.accounts_dir.join(account)
    }

    /// Source side: lets the spec's target read what it names.
    pub fn grant(&self, spec: &TransferSpec) -> Result<(), TransferError> {
        if spec.source_host_id != self.host_id {
            return Err(TransferError::Refused(format!(
                "transfer {} reads from host {}, and this is host {}",
                spec.transfer_id, spec.source_host_id, self.host_id
            )));
        }
        if !valid_account(&spec.account) {
            return Err(TransferError::Refused(format!(
                "{:?} is not an account name",
                spec.account
            )));
        }
        let (protocol_version, _) = self.protocol(spec)?;
        let home = if spec.source_home.is_empty() {
            None
        } else {
            // Only an account's own home, under this host's accounts directory.
            let expected = self.config.accounts_dir.join(&spec.account);
            if Path::new(&spec.source_home) != expected {
                return Err(TransferError::Refused(format!(
                    "transfer {} names {} as the home of {}; on this host it is {}",
                    spec.transfer_id,
                    spec.source_home,
                    spec.account,
                    expected.display()
                )));
            }
            Some(expected)
        };
        let databases = |copies: &[navette_proto::v1::DatabaseCopy],
                         known: &[String]|
         -> Result<Vec<GrantedDatabase>, TransferError> {
            copies
                .iter()
                .map(|copy| {
                    if !known.contains(&copy.source_server) {
                        return Err(TransferError::Refused(format!(
                            "no database server {:?} on host {}",
                            copy.source_server, self.host_id
                        )));
                    }
                    Ok(GrantedDatabase {
                        server: copy.source_server.clone(),
                        database: copy.source_database.clone(),
                    })
                })
                .collect()
        };
        let postgres_servers: Vec<String> = self
            .config
            .postgresql
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let mariadb_servers: Vec<String> =
            self.config.mariadb.iter().map(|s| s.name.clone()).collect();
        let grant = Grant {
            transfer_id: spec.transfer_id.clone(),
            account: spec.account.clone(),
            target_host_id: spec.target_host_id.clone(),
            home,
            postgresql: databases(&spec.postgresql, &postgres_servers)?,
            mariadb: databases(&spec.mariadb, &mariadb_servers)?,
            // As the spec says it (0 stays 0), so that repeating a grant
            // recorded before versions were named is not a conflict.
            protocol_version: spec.protocol_version,
        };
        let expires_at = spec.grant_expires_at.as_ref().and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        });
        self.grants.insert_until(grant, expires_at)?;
        tracing::info!(message = "transfer granted", transfer_id = %spec.transfer_id, account = %spec.account, target = %spec.target_host_id, protocol_version);
        Ok(())
    }

    /// The transfer protocol version `spec` runs on and its row hash, if
    /// this agent speaks it ([`protocol::check`]); refused otherwise.
    fn protocol(&self, spec: &TransferSpec) -> Result<(u32, RowHash), TransferError> {
        protocol::check(
            &spec.transfer_id,
            spec.protocol_version,
            &self.config.transfer_protocols(),
            &self.host_id,
        )
        .map_err(TransferError::Refused)
    }

    /// Source side: ends a transfer's grant (idempotent). `true` when a
    /// live grant was revoked.
    pub fn revoke_grant(&self, transfer_id: &str) -> Result<bool, TransferError> {
        let revoked = self.grants.revoke(transfer_id)?;
        tracing::info!(message = "grant revoked", %transfer_id, was_live = revoked);
        Ok(revoked)
    }

    /// Claims for `spec`'s copy what the transfer will write: its home and
    /// databases. A home that exists without being the copy's is refused;
    /// a home or database another copy holds postpones the transfer.
    fn claim(&self, spec: &TransferSpec) -> Result<CopyRecord, TransferError> {
        let copy_id = copy_id_of(spec);
        if !is_transfer_id(copy_id) {
            return Err(TransferError::Refused(format!(
                "copy id {copy_id:?} is not valid: use letters, digits, '-' and '_'"
            )));
        }
        let home = (!spec.target_home.is_empty()).then(|| PathBuf::from(&spec.target_home));
        let databases = |copies: &[navette_proto::v1::DatabaseCopy]| -> Vec<OwnedDatabase> {
            copies
                .iter()
                .map(|c| OwnedDatabase {
                    server: c.target_server.clone(),
                    database: c.target_database.clone(),
                })
                .collect()
        };
        let (postgres, mariadb) = (databases(&spec.postgresql), databases(&spec.mariadb));
        self.copies.update(copy_id, &spec.account, |record, others| {
            if record.account != spec.account {
                return Err(TransferError::Refused(format!(
                    "copy {copy_id} on this host is a copy of {}, not of {}",
                    record.account, spec.account
                )));
            }
            if let Some(home) = &home {
                if let Some(other) = others.iter().find(|o| o.home.as_ref() == Some(home)) {
                    return Err(TransferError::Busy(format!(
                        "the home {} on this host holds copy {} of {}, which is not removed yet; this copy starts once it is",
                        home.display(),
                        other.copy_id,
                        other.account
                    )));
                }
                if record.home.as_ref() != Some(home) {
                    if std::fs::symlink_metadata(home).is_ok() {
                        return Err(TransferError::Refused(format!(
                            "{} already exists on this host and is not a copy made by Navette (an account of this host?); nothing is written into it",
                            home.display()
                        )));
                    }
                    record.home = Some(home.clone());
                }
            }
            for (engine, wanted, taken) in [
                ("PostgreSQL", &postgres, others.iter().map(|o| &o.postgresql).collect::<Vec<_>>()),
                ("MariaDB", &mariadb, others.iter().map(|o| &o.mariadb).collect::<Vec<_>>()),
            ] {
                for database in wanted {
                    if let Some(other) = taken
                        .iter()
                        .zip(others)
                        .find(|(held, _)| held.contains(database))
                        .map(|(_, other)| other)
                    {
                        return Err(TransferError::Busy(format!(
                            "{engine} database {} of server {} on this host holds copy {} of {}, which is not removed yet; this copy starts once it is",
                            database.database, database.server, other.copy_id, other.account
                        )));
                    }
                }
            }
            CopyRecord::add(&mut record.transfers, spec.transfer_id.clone());
            Ok(())
        })?
    }

    /// Records for the copy the databases the transfer will create:
    /// refused for a database that exists and is not the copy's.
    async fn claim_databases(&self, spec: &TransferSpec) -> Result<(), String> {
        let copy_id = copy_id_of(spec);
        let owned = self.copies.load(copy_id).unwrap_or_default();
        for copy in &spec.postgresql {
            let database = OwnedDatabase {
                server: copy.target_server.clone(),
                database: copy.target_database.clone(),
            };
            if owned.postgresql.contains(&database) {
                continue;
            }
            if removal::postgres_database_exists(&self.config, &database.server, &database.database)
                .await?
            {
                return Err(format!(
                    "PostgreSQL database {} already exists on server {} of this host and is not a copy made by Navette; nothing was written to it",
                    database.database, database.server
                ));
            }
            self.record(spec, |record| {
                CopyRecord::add(&mut record.postgresql, database)
            })?;
        }
        for copy in &spec.mariadb {
            let database = OwnedDatabase {
                server: copy.target_server.clone(),
                database: copy.target_database.clone(),
            };
            if owned.mariadb.contains(&database) {
                continue;
            }
            if removal::mariadb_database_exists(&self.config, &database.server, &database.database)
                .await?
            {
                return Err(format!(
                    "MariaDB database {} already exists on server {} of this host and is not a copy made by Navette; nothing was written to it",
                    database.database, database.server
                ));
            }
            self.record(spec, |record| {
                CopyRecord::add(&mut record.mariadb, database)
            })?;
        }
        Ok(())
    }

    fn record(
        &self,
        spec: &TransferSpec,
        change: impl FnOnce(&mut CopyRecord),
    ) -> Result<(), String> {
        self.copies
            .update(copy_id_of(spec), &spec.account, |record, _| {
                change(record);
                Ok::<(), ()>(())
            })
            .map(drop)
            .map_err(|error| crate::error_chain(&error))
    }

    /// The logins of the servers `spec` copies into, now.
    async fn logins_now(&self, spec: &TransferSpec) -> Result<LoginsBefore, String> {
        let mut before = LoginsBefore::default();
        for copy in &spec.postgresql {
            if !before.postgres.contains_key(&copy.target_server) {
                let roles = removal::postgres_roles(&self.config, &copy.target_server).await?;
                before.postgres.insert(copy.target_server.clone(), roles);
            }
        }
        for copy in &spec.mariadb {
            if !before.mariadb.contains_key(&copy.target_server) {
                let users = removal::mariadb_users(&self.config, &copy.target_server).await?;
                before.mariadb.insert(copy.target_server.clone(), users);
            }
        }
        Ok(before)
    }

    /// Records the logins the transfer created: those the copy's databases
    /// need that the server did not have before the transfer.
    async fn record_logins(
        &self,
        spec: &TransferSpec,
        before: &LoginsBefore,
    ) -> Result<(), String> {
        let record = self.copies.load(copy_id_of(spec)).unwrap_or_default();
        let mut found = Vec::new();
        for (server, roles_before) in &before.postgres {
            let databases: Vec<String> = record
                .postgresql
                .iter()
                .filter(|d| &d.server == server)
                .map(|d| d.database.clone())
                .collect();
            // The ledger's roles of the account: those this transfer
            // claimed (also when the copy stopped before its databases
            // existed), and those of other copies of the account the
            // copy's databases use.
            let ledger =
                removal::postgres_ledger_roles(&self.config, server, &spec.account).await?;
            for role in removal::postgres_roles_of(&self.config, server, &databases).await? {
                let login = OwnedLogin {
                    server: server.clone(),
                    user: role,
                    host: String::new(),
                };
                if !roles_before.contains(&login.user)
                    || record.postgres_roles.contains(&login)
                    || ledger.contains_key(&login.user)
                {
                    found.push((true, login));
                }
            }
            for (role, transfer) in ledger {
                if transfer == spec.transfer_id {
                    found.push((
                        true,
                        OwnedLogin {
                            server: server.clone(),
                            user: role,
                            host: String::new(),
                        },
                    ));
                }
            }
        }
        for (server, users_before) in &before.mariadb {
            let databases: Vec<String> = record
                .mariadb
                .iter()
                .filter(|d| &d.server == server)
                .map(|d| d.database.clone())
                .collect();
            for (user, host) in removal::mariadb_users_of(&self.config, server, &databases).await? {
                let login = OwnedLogin {
                    server: server.clone(),
                    user,
                    host,
                };
                if !users_before.contains(&(login.user.clone(), login.host.clone()))
                    || record.mariadb_users.contains(&login)
                {
                    found.push((false, login));
                }
            }
        }
        self.record(spec, |record| {
            for (postgres, login) in found {
                if postgres {
                    CopyRecord::add(&mut record.postgres_roles, login);
                } else {
                    CopyRecord::add(&mut record.mariadb_users, login);
                }
            }
        })
    }

    /// Drops the databases the copy created that `spec` no longer lists
    /// (the account dropped them on its host since the last generation),
    /// and forgets them. Only what the copy's own record names is ever
    /// dropped: another copy's database, or one this host had before, is
    /// never the copy's. Idempotent: one dropped already is forgotten.
    async fn prune_databases(&self, spec: &TransferSpec) -> Result<(), String> {
        let Some(owned) = self.copies.load(copy_id_of(spec)) else {
            return Ok(());
        };
        let listed = |copies: &[navette_proto::v1::DatabaseCopy]| -> Vec<OwnedDatabase> {
            copies
                .iter()
                .map(|c| OwnedDatabase {
                    server: c.target_server.clone(),
                    database: c.target_database.clone(),
                })
                .collect()
        };
        let (postgres, mariadb) = (listed(&spec.postgresql), listed(&spec.mariadb));
        for database in owned.postgresql.iter().filter(|d| !postgres.contains(d)) {
            removal::drop_postgres_database(&self.config, &database.server, &database.database)
                .await?;
            self.record(spec, |record| record.postgresql.retain(|d| d != database))?;
            tracing::info!(message = "database no longer in the copy dropped", engine = "postgresql", server = %database.server, database = %database.database, transfer_id = %spec.transfer_id);
        }
        for database in owned.mariadb.iter().filter(|d| !mariadb.contains(d)) {
            removal::drop_mariadb_database(&self.config, &database.server, &database.database)
                .await?;
            self.record(spec, |record| record.mariadb.retain(|d| d != database))?;
            tracing::info!(message = "database no longer in the copy dropped", engine = "mariadb", server = %database.server, database = %database.database, transfer_id = %spec.transfer_id);
        }
        Ok(())
    }

    /// Everything a transfer does once started: drops the copy's databases
    /// the spec no longer lists, claims the ones it lists, pulls, and
    /// records the logins it created (also after a failure, so that
    /// removing the partial copy takes them).
    async fn run(&self, spec: &TransferSpec, progress: &Progress) -> Result<(), String> {
        // A catch-up pass lists no databases: the copy's, kept converging
        // by replication, stay.
        if !spec.files_only {
            self.prune_databases(spec).await?;
        }
        self.claim_databases(spec).await?;
        let before = self.logins_now(spec).await?;
        let pulled = self.pull(spec, progress).await;
        let recorded = self.record_logins(spec, &before).await;
        match (pulled, recorded) {
            (Err(error), Err(also)) => {
                tracing::warn!(message = "the copy's logins could not be recorded", transfer_id = %spec.transfer_id, error = %also);
                Err(error)
            }
            (Err(error), Ok(())) => Err(error),
            (Ok(()), Err(error)) => Err(format!(
                "the copy is complete, but the logins it created could not be recorded (removal would leave them): {error}"
            )),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    fn load_record(&self, transfer_id: &str) -> Option<Record> {
        let dir = self.record_dir(transfer_id);
        // A record is a transfer whose spec was written.
        TransferSpec::decode(std::fs::read(dir.join("spec.pb")).ok()?.as_slice()).ok()?;
        let finished = std::fs::read(dir.join("final.pb"))
            .ok()
            .and_then(|bytes| TransferProgress::decode(bytes.as_slice()).ok());
        Some(Record { finished })
    }

    fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TransferError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Target side: starts pulling, or says where an earlier start stands.
    pub fn start(
        self: &Arc<Self>,
        mut spec: TransferSpec,
    ) -> Result<TransferProgress, TransferError> {
        if spec.target_host_id != self.host_id {
            return Err(TransferError::Refused(format!(
                "transfer {} goes to host {}, and this is host {}",
                spec.transfer_id, spec.target_host_id, self.host_id
            )));
        }
        if !is_transfer_id(&spec.transfer_id) || !valid_account(&spec.account) {
            return Err(TransferError::Refused(format!(
                "transfer id {:?} or account {:?} is not valid",
                spec.transfer_id, spec.account
            )));
        }
        let (protocol_version, _) = self.protocol(&spec)?;
        if spec.target_home.is_empty() && !spec.source_home.is_empty() {
            spec.target_home = self.target_home(&spec.account).display().to_string();
        } else if !spec.target_home.is_empty()
            && Path::new(&spec.target_home) != self.target_home(&spec.account)
        {
            return Err(TransferError::Refused(format!(
                "the copy of {}'s home goes to {} on this host, not {}",
                spec.account,
                self.target_home(&spec.account).display(),
                spec.target_home
            )));
        }
        if let Some(progress) = self.lock().get(&spec.transfer_id)
            && !progress.is_finished()
        {
            return Ok(progress.snapshot());
        }
        if let Some(Record {
            finished: Some(done),
            ..
        }) = self.load_record(&spec.transfer_id)
            && done.state == i32::from(TransferState::Succeeded)
        {
            return Ok(done);
        }
        self.claim(&spec)?;
        let dir = self.record_dir(&spec.transfer_id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Self::write_atomically(&dir.join("spec.pb"), &spec.encode_to_vec())?;
        let _ = std::fs::remove_file(dir.join("final.pb"));
        let progress = Arc::new(Progress::new(&spec.transfer_id));
        progress.set_target_home(spec.target_home.clone());
        self.lock()
            .insert(spec.transfer_id.clone(), progress.clone());
        let transfers = self.clone();
        let task_progress = progress.clone();
        tokio::spawn(async move {
            let running = crate::metrics::transfer_started();
            let outcome = transfers.run(&spec, &task_progress).await;
            running.finished(outcome.is_ok());
            if let Err(error) = &outcome {
                tracing::warn!(message = "transfer failed", transfer_id = %spec.transfer_id, %error);
            } else {
                tracing::info!(message = "transfer done", transfer_id = %spec.transfer_id, protocol_version);
            }
            task_progress.finish(outcome);
            let last = task_progress.snapshot();
            let _ = Self::write_atomically(
                &transfers.record_dir(&spec.transfer_id).join("final.pb"),
                &last.encode_to_vec(),
            );
        });
        Ok(progress.snapshot())
    }

    /// The progress of a transfer to follow, or its final state.
    pub fn follow(&self, transfer_id: &str) -> Result<Following, TransferError> {
        if let Some(progress) = self.lock().get(transfer_id) {
            return Ok(Following::Running(progress.clone()));
        }
        match self.load_record(transfer_id) {
            Some(Record {
                finished: Some(done),
                ..
            }) => Ok(Following::Finished(Box::new(done))),
            _ => Err(TransferError::Unknown(transfer_id.to_owned())),
        }
    }

    /// A channel to the spec's source agent.
    fn channel_to_source(&self, spec: &TransferSpec) -> Result<tonic::transport::Channel, String> {
        let endpoint: SocketAddr = spec.source_endpoint.parse().map_err(|_| {
            format!(
                "source endpoint {:?} is not address:port",
                spec.source_endpoint
            )
        })?;
        // Each connection presents the agent's current certificate: one
        // renewed since the copy began is refused on new connections.
        let link = self.link.clone();
        navette_proto::tls::channel_with(
            endpoint,
            &agent_server_name(&spec.source_host_id),
            move || link.client_config(),
        )
        .map_err(|e| e.to_string())
    }

    /// The whole pull: files, then PostgreSQL, then MariaDB databases.
    async fn pull(&self, spec: &TransferSpec, progress: &Progress) -> Result<(), String> {
        let channel = self.channel_to_source(spec)?;
        if !spec.source_home.is_empty() {
            progress.set_phase("files");
            self.pull_files(channel.clone(), spec, progress).await?;
        }
        if !spec.postgresql.is_empty() {
            self.pull_postgres(channel.clone(), spec, progress).await?;
        }
        if !spec.mariadb.is_empty() {
            self.pull_mariadb(channel, spec, progress).await?;
        }
        progress.set_phase("done");
        Ok(())
    }

    async fn pull_files(
        &self,
        channel: tonic::transport::Channel,
        spec: &TransferSpec,
        progress: &Progress,
    ) -> Result<(), String> {
        let config = super::files::PullConfig {
            durable: !spec.disposable,
            ..super::files::PullConfig::default()
        };
        let report = super::files::pull_with(
            config,
            channel,
            &spec.transfer_id,
            Path::new(&spec.target_home),
            &self.config.state_dir,
            progress,
        )
        .await
        .map_err(|error| crate::error_chain(&error))?;
        tracing::info!(message = "files copied", transfer_id = %spec.transfer_id, files = report.files, bytes = report.bytes, bytes_sent = report.bytes_sent);
        Ok(())
    }

    async fn pull_postgres(
        &self,
        channel: tonic::transport::Channel,
        spec: &TransferSpec,
        progress: &Progress,
    ) -> Result<(), String> {
        let work_dir = self.record_dir(&spec.transfer_id).join("postgres");
        std::fs::create_dir_all(&work_dir).map_err(|e| format!("{}: {e}", work_dir.display()))?;
        let tools = self
            .config
            .postgresql
            .iter()
            .filter_map(|server| {
                super::postgres::PgTools::configured(server)
                    .map(|tools| (server.name.clone(), tools))
            })
            .collect();
        let options = super::postgres::PullOptions {
            work_dir: work_dir.clone(),
            tools,
            // A test's copy is checked as it arrives; a copy that must last
            // is also read back from the database once loaded.
            check: if spec.disposable {
                super::postgres::DataCheck::Stream
            } else {
                super::postgres::DataCheck::RowDigest
            },
            // Only roles this account's copies made on the target (its
            // ledger says so), or new ones, are its own; any other role the
            // source names is refused before the target changes.
            account: Some(spec.account.clone()),
            // Checked when the transfer started; a record from a build
            // that spoke a version this one does not fails here.
            row_hash: self.protocol(spec).map_err(|e| e.to_string())?.1,
            // A migration's copy reads each slot's exported snapshot.
            replication_slots: spec
                .postgres_replication_slots
                .iter()
                .map(|(database, slot)| (database.clone(), slot.clone()))
                .collect(),
            ..super::postgres::PullOptions::default()
        };
        let result = super::postgres::pull(
            channel,
            &spec.transfer_id,
            &spec.postgresql,
            &self.config.postgresql,
            &options,
            progress,
        )
        .await;
        let _ = std::fs::remove_dir_all(&work_dir);
        let report = result.map_err(|error| crate::error_chain(&error))?;
        for database in &report.databases {
            if !database.consistent_lsn.is_empty() {
                progress.set_snapshot_position(
                    format!("postgresql:{}", database.source_database),
                    database.consistent_lsn.clone(),
                );
            }
        }
        tracing::info!(message = "PostgreSQL databases copied", transfer_id = %spec.transfer_id, databases = report.databases.len());
        Ok(())
    }

    async fn pull_mariadb(
        &self,
        channel: tonic::transport::Channel,
        spec: &TransferSpec,
        progress: &Progress,
    ) -> Result<(), String> {
        let report = super::mariadb::pull_with_options(
            channel,
            &spec.transfer_id,
            &spec.account,
            &spec.mariadb,
            &self.config.mariadb,
            progress,
            super::mariadb::PullOptions {
                snapshot_position: spec.mariadb_snapshot_positions,
            },
        )
        .await
        .map_err(|error| crate::error_chain(&error))?;
        for database in &report.databases {
            if let Some(position) = &database.snapshot_gtid_position {
                progress.set_snapshot_position(
                    format!("mariadb:{}", database.source_database),
                    position.clone(),
                );
            }
        }
        Ok(())
    }

    /// Target side: removes one copy (by its id), exactly what its record
    /// says it created: the home, the databases, and the logins no other
    /// live copy on this host needs. Refused while a transfer into the copy
    /// runs. A copy this host has no record of is already removed.
    pub async fn remove_copy(&self, spec: &TransferSpec) -> Result<RemovedLogins, TransferError> {
        if spec.target_host_id != self.host_id
            || !valid_account(&spec.account)
            || !is_transfer_id(&spec.transfer_id)
        {
            return Err(TransferError::Refused(format!(
                "RemoveCopy for transfer {} of {} names host {}, and this is host {}",
                spec.transfer_id, spec.account, spec.target_host_id, self.host_id
            )));
        }
        let copy_id = copy_id_of(spec);
        let Some(record) = self.copies.load(copy_id) else {
            tracing::info!(message = "nothing to remove: no such copy on this host", copy_id, account = %spec.account);
            return Ok(RemovedLogins::default());
        };
        if record.account != spec.account {
            return Err(TransferError::Refused(format!(
                "copy {copy_id} on this host is a copy of {}, not of {}",
                record.account, spec.account
            )));
        }
        let running: Vec<&String> = {
            let running = self.lock();
            record
                .transfers
                .iter()
                .filter(|t| running.get(*t).is_some_and(|p| !p.is_finished()))
                .collect()
        };
        if let Some(transfer) = running.first() {
            return Err(TransferError::Refused(format!(
                "transfer {transfer} into copy {copy_id} is still running; the copy is removed once it ended"
            )));
        }
        if let Some(home) = &record.home {
            if home.parent() != Some(self.config.accounts_dir.as_path()) {
                return Err(TransferError::Refused(format!(
                    "copy {copy_id} records the home {}, outside {}; it is left for an operator to look at",
                    home.display(),
                    self.config.accounts_dir.display()
                )));
            }
            if std::fs::symlink_metadata(home).is_ok() {
                std::fs::remove_dir_all(home).map_err(io(home))?;
            }
        }
        for database in &record.postgresql {
            removal::drop_postgres_database(&self.config, &database.server, &database.database)
                .await
                .map_err(TransferError::Refused)?;
        }
        for database in &record.mariadb {
            removal::drop_mariadb_database(&self.config, &database.server, &database.database)
                .await
                .map_err(TransferError::Refused)?;
        }
        let others: Vec<CopyRecord> = self
            .copies
            .list()
            .into_iter()
            .filter(|r| r.copy_id != copy_id)
            .collect();
        let mut logins = RemovedLogins::default();
        for role in &record.postgres_roles {
            let what = format!("postgresql {} role {}", role.server, role.user);
            let outcome = match others.iter().find(|o| o.postgres_roles.contains(role)) {
                Some(other) => {
                    LoginDrop::Kept(format!("copy {} on this host needs it", other.copy_id))
                }
                None => removal::drop_postgres_role(
                    &self.config,
                    &role.server,
                    &role.user,
                    &record.account,
                )
                .await
                .map_err(TransferError::Refused)?,
            };
            note(&mut logins, what, outcome);
        }
        for user in &record.mariadb_users {
            let what = format!(
                "mariadb {} user '{}'@'{}'",
                user.server, user.user, user.host
            );
            let own: Vec<String> = record
                .mariadb
                .iter()
                .filter(|d| d.server == user.server)
                .map(|d| d.database.clone())
                .collect();
            let outcome = match others.iter().find(|o| o.mariadb_users.contains(user)) {
                Some(other) => {
                    LoginDrop::Kept(format!("copy {} on this host needs it", other.copy_id))
                }
                None => removal::drop_mariadb_user(
                    &self.config,
                    &user.server,
                    &user.user,
                    &user.host,
                    &own,
                )
                .await
                .map_err(TransferError::Refused)?,
            };
            note(&mut logins, what, outcome);
        }
        for transfer in &record.transfers {
            if is_transfer_id(transfer) {
                let _ = std::fs::remove_dir_all(self.record_dir(transfer));
            }
            self.lock().remove(transfer);
        }
        self.copies.forget(copy_id)?;
        tracing::info!(
            message = "copy removed",
            copy_id,
            account = %spec.account,
            home = ?record.home,
            logins_dropped = ?logins.dropped,
            logins_kept = ?logins.kept
        );
        Ok(logins)
    }
}

fn note(logins: &mut RemovedLogins, what: String, outcome: LoginDrop) {
    match outcome {
        LoginDrop::Dropped => logins.dropped.push(what),
        LoginDrop::Kept(why) => logins.kept.push(format!("{what}: {why}")),
    }
}

/// A transfer being followed.
pub enum Following {
    Running(Arc<Progress>),
    Finished(Box<TransferProgress>),
}
