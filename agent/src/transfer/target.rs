//! Transfers as this agent runs them: granting its data as a source, and
//! pulling, following and removing copies as a target.
//!
//! On a target, every transfer leaves a record in
//! `<state_dir>/transfers/<transfer id>/` (its spec, and its final progress
//! once it ended), so that a repeated `StartTransfer` after an agent restart
//! returns the result instead of copying again, and so that `RemoveCopy`
//! only ever removes what a transfer to this host created.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use navette_proto::identity::agent_server_name;
use navette_proto::v1::{TransferProgress, TransferSpec, TransferState};
use prost::Message;

use super::grants::{Grant, GrantError, GrantedDatabase, Grants};
use super::progress::Progress;
use crate::config::Config;
use crate::gateway::ControllerLink;

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
    spec: TransferSpec,
    finished: Option<TransferProgress>,
}

/// The transfers of this agent.
pub struct Transfers {
    host_id: String,
    config: Arc<Config>,
    grants: Arc<Grants>,
    link: Arc<ControllerLink>,
    running: Mutex<HashMap<String, Arc<Progress>>>,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_account(name: &str) -> bool {
    crate::inventory::accounts::is_valid_account_name(name)
}

impl Transfers {
    pub fn new(
        host_id: String,
        config: Arc<Config>,
        grants: Arc<Grants>,
        link: Arc<ControllerLink>,
    ) -> Transfers {
        Transfers {
            host_id,
            config,
            grants,
            link,
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn grants(&self) -> Arc<Grants> {
        self.grants.clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.clone()
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
        };
        self.grants.insert(grant)?;
        tracing::info!(message = "transfer granted", transfer_id = %spec.transfer_id, account = %spec.account, target = %spec.target_host_id);
        Ok(())
    }

    fn load_record(&self, transfer_id: &str) -> Option<Record> {
        let dir = self.record_dir(transfer_id);
        let spec =
            TransferSpec::decode(std::fs::read(dir.join("spec.pb")).ok()?.as_slice()).ok()?;
        let finished = std::fs::read(dir.join("final.pb"))
            .ok()
            .and_then(|bytes| TransferProgress::decode(bytes.as_slice()).ok());
        Some(Record { spec, finished })
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
        if !valid_id(&spec.transfer_id) || !valid_account(&spec.account) {
            return Err(TransferError::Refused(format!(
                "transfer id {:?} or account {:?} is not valid",
                spec.transfer_id, spec.account
            )));
        }
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
            let outcome = transfers.pull(&spec, &task_progress).await;
            if let Err(error) = &outcome {
                tracing::warn!(message = "transfer failed", transfer_id = %spec.transfer_id, %error);
            } else {
                tracing::info!(message = "transfer done", transfer_id = %spec.transfer_id);
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

    /// The whole pull: files, then PostgreSQL, then MariaDB databases.
    async fn pull(&self, spec: &TransferSpec, progress: &Progress) -> Result<(), String> {
        let endpoint: SocketAddr = spec.source_endpoint.parse().map_err(|_| {
            format!(
                "source endpoint {:?} is not address:port",
                spec.source_endpoint
            )
        })?;
        let channel = navette_proto::tls::channel(
            endpoint,
            &agent_server_name(&spec.source_host_id),
            self.link.client_config(),
        )
        .map_err(|e| e.to_string())?;
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
        tracing::info!(message = "PostgreSQL databases copied", transfer_id = %spec.transfer_id, databases = report.databases.len());
        Ok(())
    }

    async fn pull_mariadb(
        &self,
        channel: tonic::transport::Channel,
        spec: &TransferSpec,
        progress: &Progress,
    ) -> Result<(), String> {
        super::mariadb::pull(
            channel,
            &spec.transfer_id,
            &spec.mariadb,
            &self.config.mariadb,
            progress,
        )
        .await
        .map(drop)
        .map_err(|error| crate::error_chain(&error))
    }

    /// Target side: removes what transfers to this host created for the
    /// spec's account: the home copy and the databases. Refuses unless a
    /// transfer of this account to this host is on record, so a mistaken
    /// call to a source host removes nothing.
    pub async fn remove_copy(&self, spec: &TransferSpec) -> Result<(), TransferError> {
        if spec.target_host_id != self.host_id
            || !valid_account(&spec.account)
            || !valid_id(&spec.transfer_id)
        {
            return Err(TransferError::Refused(format!(
                "RemoveCopy for transfer {} of {} names host {}, and this is host {}",
                spec.transfer_id, spec.account, spec.target_host_id, self.host_id
            )));
        }
        let records = self.records_for(&spec.account);
        if records.is_empty() {
            tracing::info!(message = "nothing to remove: no transfer of this account to this host", account = %spec.account);
            return Ok(());
        }
        if let Some(progress) = self.lock().get(&spec.transfer_id)
            && !progress.is_finished()
        {
            return Err(TransferError::Refused(format!(
                "transfer {} is still running; remove the copy once it ended",
                spec.transfer_id
            )));
        }
        let home = self.target_home(&spec.account);
        if records.iter().any(|r| !r.spec.source_home.is_empty()) && home.exists() {
            std::fs::remove_dir_all(&home).map_err(io(&home))?;
        }
        let mut postgres = Vec::new();
        let mut mariadb = Vec::new();
        for record in &records {
            postgres.extend(
                record
                    .spec
                    .postgresql
                    .iter()
                    .map(|c| (c.target_server.clone(), c.target_database.clone())),
            );
            mariadb.extend(
                record
                    .spec
                    .mariadb
                    .iter()
                    .map(|c| (c.target_server.clone(), c.target_database.clone())),
            );
        }
        postgres.sort();
        postgres.dedup();
        mariadb.sort();
        mariadb.dedup();
        for (server, database) in postgres {
            super::removal::drop_postgres_database(&self.config, &server, &database)
                .await
                .map_err(TransferError::Refused)?;
        }
        for (server, database) in mariadb {
            super::removal::drop_mariadb_database(&self.config, &server, &database)
                .await
                .map_err(TransferError::Refused)?;
        }
        for record in records {
            let dir = self.record_dir(&record.spec.transfer_id);
            let _ = std::fs::remove_dir_all(&dir);
            self.lock().remove(&record.spec.transfer_id);
        }
        tracing::info!(message = "copy removed", account = %spec.account, home = %home.display());
        Ok(())
    }

    /// Every transfer of `account` to this host on record.
    fn records_for(&self, account: &str) -> Vec<Record> {
        let dir = self.config.state_dir.join("transfers");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter_map(|id| self.load_record(&id))
            .filter(|r| r.spec.account == account && r.spec.target_host_id == self.host_id)
            .collect()
    }
}

/// A transfer being followed.
pub enum Following {
    Running(Arc<Progress>),
    Finished(Box<TransferProgress>),
}
