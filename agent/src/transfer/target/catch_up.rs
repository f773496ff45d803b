//! Files catch-up for a migration, as this agent takes part in it: on a
//! source, the change journals of its accounts' homes
//! ([`journals`](crate::transfer::files::journals)); on a target, catch-up
//! passes into a copy a full transfer made
//! ([`catchup`](crate::transfer::files::catchup)).
//!
//! A pass writes only into the home of a copy this host made, once that
//! copy's full transfer succeeded (a pass on top of a partial copy would
//! take a half-copied tree for the baseline), never while that transfer
//! runs, and one pass at a time per copy.

use std::path::Path;

use navette_proto::v1::{TransferSpec, TransferState};

use super::{Record, TransferError, Transfers, copy_id_of, valid_account};
use crate::transfer::files::PullConfig;
use crate::transfer::files::catchup::{CatchUp, CatchUpReport, catch_up};
use crate::transfer::files::journals::JournalStatus;
use crate::transfer::progress::Progress;

/// A pass running into a copy; the copy is free again when it drops.
struct Passing<'a> {
    transfers: &'a Transfers,
    copy_id: String,
}

impl Drop for Passing<'_> {
    fn drop(&mut self) {
        self.transfers
            .catching_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.copy_id);
    }
}

impl Transfers {
    /// Source side: starts the change journal of `account`'s home for
    /// `migration_id`, or returns the one running (idempotent).
    pub async fn start_journal(
        &self,
        migration_id: &str,
        account: &str,
    ) -> Result<JournalStatus, TransferError> {
        if !valid_account(account) {
            return Err(TransferError::Refused(format!(
                "{account:?} is not an account name"
            )));
        }
        let home = self.config.accounts_dir.join(account);
        if !std::fs::symlink_metadata(&home).is_ok_and(|m| m.is_dir()) {
            return Err(TransferError::Refused(format!(
                "{} is not a directory: {account} has no home on this host to watch",
                home.display()
            )));
        }
        let journals = self.journals.clone();
        let (migration_id, account) = (migration_id.to_owned(), account.to_owned());
        tokio::task::spawn_blocking(move || journals.start(&migration_id, &account, &home))
            .await
            .map_err(|error| TransferError::Refused(format!("starting the journal: {error}")))?
            .map_err(|error| TransferError::Refused(crate::error_chain(&error)))
    }

    /// Source side: where the journal of `migration_id` stands.
    pub fn journal_status(&self, migration_id: &str) -> Option<JournalStatus> {
        self.journals.status(migration_id)
    }

    /// Source side: stops the journal of `migration_id` (idempotent).
    pub fn stop_journal(&self, migration_id: &str) -> bool {
        self.journals.stop(migration_id)
    }

    /// Target side: one catch-up pass into the copy `spec`'s transfer made.
    pub async fn catch_up_files(
        &self,
        mut spec: TransferSpec,
        request: CatchUp,
    ) -> Result<CatchUpReport, TransferError> {
        if spec.target_host_id != self.host_id {
            return Err(TransferError::Refused(format!(
                "transfer {} goes to host {}, and this is host {}",
                spec.transfer_id, spec.target_host_id, self.host_id
            )));
        }
        self.protocol(&spec)?;
        if spec.source_home.is_empty() {
            return Err(TransferError::Refused(format!(
                "transfer {} copies no files (no source home): there is nothing to catch up",
                spec.transfer_id
            )));
        }
        let home = self.target_home(&spec.account);
        if spec.target_home.is_empty() {
            spec.target_home = home.display().to_string();
        } else if Path::new(&spec.target_home) != home {
            return Err(TransferError::Refused(format!(
                "the copy of {}'s home is {} on this host, not {}",
                spec.account,
                home.display(),
                spec.target_home
            )));
        }
        let copy_id = copy_id_of(&spec).to_owned();
        let owned = self.copies.load(&copy_id).is_some_and(|record| {
            record.account == spec.account
                && record.home.as_ref() == Some(&home)
                && record.transfers.contains(&spec.transfer_id)
        });
        if !owned {
            return Err(TransferError::Refused(format!(
                "no copy {copy_id} of {}'s home made by transfer {} on this host: a catch-up pass follows a full copy (StartTransfer)",
                spec.account, spec.transfer_id
            )));
        }
        if self
            .lock()
            .get(&spec.transfer_id)
            .is_some_and(|progress| !progress.is_finished())
        {
            return Err(TransferError::Busy(format!(
                "the full copy (transfer {}) is still running; catch up once it is done",
                spec.transfer_id
            )));
        }
        let succeeded = matches!(
            self.load_record(&spec.transfer_id),
            Some(Record { finished: Some(done) }) if done.state == i32::from(TransferState::Succeeded)
        );
        if !succeeded {
            return Err(TransferError::Refused(format!(
                "the full copy (transfer {}) did not complete: finish it with StartTransfer, then catch up",
                spec.transfer_id
            )));
        }
        if !self
            .catching_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(copy_id.clone())
        {
            return Err(TransferError::Busy(format!(
                "a catch-up pass into copy {copy_id} is running; one at a time"
            )));
        }
        let _passing = Passing {
            transfers: self,
            copy_id,
        };
        let channel = self
            .channel_to_source(&spec)
            .map_err(TransferError::Refused)?;
        let config = PullConfig {
            durable: !spec.disposable,
            ..PullConfig::default()
        };
        let progress = Progress::new(&spec.transfer_id);
        catch_up(
            config,
            channel,
            &spec.transfer_id,
            &request,
            &home,
            &self.config.state_dir,
            &progress,
        )
        .await
        .map_err(|error| {
            let message = crate::error_chain(&error);
            if error.is_transient() {
                TransferError::Busy(message)
            } else {
                TransferError::Refused(message)
            }
        })
    }
}
