//! The source's change journals, one per migration: the
//! [`ChangeJournal`](crate::changes::ChangeJournal) of an account's home,
//! with an epoch and what was sent but not yet confirmed.
//!
//! A journal lives in this process only (inotify watches cannot outlive
//! it): when the agent restarts, every journal is lost, and the changes
//! made until it is started again with them. Each start draws a new
//! *epoch*, so that a target whose copy matched an older epoch knows it
//! cannot trust the new one: its next pass compares the whole tree
//! (`catchup.proto` says how the controller goes about it).
//!
//! Taking changes is safe to repeat: the paths of a pass stay *issued*
//! under a sequence number until the target names that sequence as
//! applied (its next pass); a pass that failed midway gets them again,
//! merged with what changed since. A journal that lost track (the kernel's
//! queue overflowed, a directory could not be watched, the home moved) is
//! started again at once, under a new epoch, before the answer says so:
//! a full comparison the target makes next covers everything until then,
//! and the new journal everything after.
//!
//! Owns: which journals run, their epochs and issued paths. Does not read
//! entries (the `FileChanges` service in [`source`](super::source) does)
//! and does not decide who may ask (the grants do).

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::changes::{ChangeJournal, JournalError};

/// Why a journal could not be started or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalsError {
    #[error("change journal {migration_id}: {source}")]
    Start {
        migration_id: String,
        #[source]
        source: JournalError,
    },
    #[error(
        "change journal {migration_id} watches the home of {running}, not of {asked}: a journal id names one migration of one account"
    )]
    OtherAccount {
        migration_id: String,
        running: String,
        asked: String,
    },
    #[error(
        "change journal {migration_id} watches {}, and transfer {transfer_id} grants {}: the journal is not of the granted home",
        .journal_home.display(),
        .granted_home.display()
    )]
    OtherHome {
        migration_id: String,
        transfer_id: String,
        journal_home: PathBuf,
        granted_home: PathBuf,
    },
}

/// Where a journal stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalStatus {
    pub migration_id: String,
    pub account: String,
    pub epoch: u64,
    pub watched_directories: u64,
    /// Paths changed and not confirmed by the target yet.
    pub pending_paths: u64,
    pub untrusted: Option<String>,
}

/// What a pass takes from a journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// No journal runs under this id: nothing else is set.
    pub missing: bool,
    pub epoch: u64,
    /// To be named as applied once the pass completed.
    pub sequence: u64,
    /// Every path issued and not confirmed, relative to the home.
    pub paths: Vec<PathBuf>,
    /// Why these paths may not be all that changed since the epoch the
    /// target named.
    pub untrusted: Option<String>,
}

/// One running journal.
struct Running {
    account: String,
    home: PathBuf,
    epoch: u64,
    journal: ChangeJournal,
    /// Paths sent under `sequence`, not confirmed yet.
    issued: BTreeSet<PathBuf>,
    sequence: u64,
}

/// Every journal this agent runs, by migration id.
#[derive(Default)]
pub struct Journals {
    running: Mutex<HashMap<String, Arc<Mutex<Running>>>>,
}

impl std::fmt::Debug for Journals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journals")
            .field("running", &self.map().len())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A new epoch: random, so that one drawn after a restart never repeats
/// one drawn before (never 0, which names no epoch).
fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .is_ok();
    let epoch = if random {
        u64::from_le_bytes(bytes)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    epoch.max(1)
}

impl Running {
    fn status(&self, migration_id: &str) -> JournalStatus {
        let pending = self.issued.len() + self.journal.pending();
        JournalStatus {
            migration_id: migration_id.to_owned(),
            account: self.account.clone(),
            epoch: self.epoch,
            watched_directories: self.journal.watched_directories() as u64,
            pending_paths: pending as u64,
            untrusted: self.journal.untrusted(),
        }
    }

    /// Starts the journal again under a new epoch, forgetting what it held.
    fn restart(&mut self, migration_id: &str) -> Result<(), JournalsError> {
        self.journal = ChangeJournal::start(&self.home).map_err(|source| JournalsError::Start {
            migration_id: migration_id.to_owned(),
            source,
        })?;
        self.epoch = new_epoch();
        self.issued.clear();
        self.sequence = 0;
        tracing::info!(message = "change journal started again", migration_id, epoch = self.epoch, home = %self.home.display());
        Ok(())
    }
}

impl Journals {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Mutex<Running>>>> {
        lock(&self.running)
    }

    fn get(&self, migration_id: &str) -> Option<Arc<Mutex<Running>>> {
        self.map().get(migration_id).cloned()
    }

    /// Starts the journal of `account`'s `home` for `migration_id`, or
    /// returns the one running. Blocking: it watches every directory.
    pub fn start(
        &self,
        migration_id: &str,
        account: &str,
        home: &Path,
    ) -> Result<JournalStatus, JournalsError> {
        if let Some(running) = self.get(migration_id) {
            let running = lock(&running);
            if running.account != account {
                return Err(JournalsError::OtherAccount {
                    migration_id: migration_id.to_owned(),
                    running: running.account.clone(),
                    asked: account.to_owned(),
                });
            }
            return Ok(running.status(migration_id));
        }
        let journal = ChangeJournal::start(home).map_err(|source| JournalsError::Start {
            migration_id: migration_id.to_owned(),
            source,
        })?;
        let running = Running {
            account: account.to_owned(),
            home: home.to_path_buf(),
            epoch: new_epoch(),
            journal,
            issued: BTreeSet::new(),
            sequence: 0,
        };
        // Started outside the lock (it walks the home); a start that raced
        // this one and won is kept, and this journal dropped.
        let kept = self
            .map()
            .entry(migration_id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(running)))
            .clone();
        let kept = lock(&kept);
        tracing::info!(message = "change journal running", migration_id, account, epoch = kept.epoch, watched_directories = kept.journal.watched_directories(), home = %home.display());
        Ok(kept.status(migration_id))
    }

    /// Where the journal of `migration_id` stands; `None` if none runs.
    pub fn status(&self, migration_id: &str) -> Option<JournalStatus> {
        let running = self.get(migration_id)?;
        let status = lock(&running).status(migration_id);
        Some(status)
    }

    /// Stops the journal of `migration_id`; `false` if none ran.
    pub fn stop(&self, migration_id: &str) -> bool {
        let stopped = self.map().remove(migration_id).is_some();
        tracing::info!(
            message = "change journal stopped",
            migration_id,
            was_running = stopped
        );
        stopped
    }

    /// The changes of `migration_id`'s journal for a pass of a copy of
    /// `home` that matched `epoch` up to the pass `applied` (0: none).
    /// Blocking: a journal that lost track is started again.
    pub fn take(
        &self,
        migration_id: &str,
        transfer_id: &str,
        home: &Path,
        epoch: u64,
        applied: u64,
    ) -> Result<Taken, JournalsError> {
        let Some(running) = self.get(migration_id) else {
            return Ok(Taken {
                missing: true,
                ..Taken::default()
            });
        };
        let mut running = lock(&running);
        if running.home != home {
            return Err(JournalsError::OtherHome {
                migration_id: migration_id.to_owned(),
                transfer_id: transfer_id.to_owned(),
                journal_home: running.home.clone(),
                granted_home: home.to_path_buf(),
            });
        }
        if epoch == running.epoch && applied != 0 && applied == running.sequence {
            running.issued.clear();
        }
        let changes = running.journal.take();
        if let Some(why) = changes.untrusted {
            running.restart(migration_id)?;
            return Ok(Taken {
                epoch: running.epoch,
                untrusted: Some(format!(
                    "the source's change journal lost track ({why}); it was started again (epoch {})",
                    running.epoch
                )),
                ..Taken::default()
            });
        }
        running.issued.extend(changes.paths);
        running.sequence += 1;
        let untrusted = (epoch != running.epoch).then(|| {
            if epoch == 0 {
                "the pass names no journal epoch: nothing says which changes the copy already has"
                    .to_owned()
            } else {
                format!(
                    "the copy matched journal epoch {epoch}, and the source's journal runs epoch {} (started again since, after its agent restarted?): changes in between are unknown",
                    running.epoch
                )
            }
        });
        Ok(Taken {
            missing: false,
            epoch: running.epoch,
            sequence: running.sequence,
            paths: running.issued.iter().cloned().collect(),
            untrusted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn home(label: &str) -> std::io::Result<TempDir> {
        let dir =
            std::env::temp_dir().join(format!("navette-journals-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    #[test]
    fn issued_paths_are_sent_again_until_the_target_confirms_them()
    -> Result<(), Box<dyn std::error::Error>> {
        let home = home("issued")?;
        let journals = Journals::default();
        let started = journals.start("m-1", "alice", &home.0)?;
        assert_eq!(
            journals.start("m-1", "alice", &home.0)?.epoch,
            started.epoch
        );
        assert!(journals.start("m-1", "bob", &home.0).is_err());
        std::fs::write(home.0.join("a"), "a")?;
        let first = journals.take("m-1", "t-1", &home.0, started.epoch, 0)?;
        assert_eq!((first.sequence, first.untrusted.clone()), (1, None));
        assert_eq!(first.paths, [PathBuf::from("a")]);
        // The pass failed: the next one gets `a` again, with what is new.
        std::fs::write(home.0.join("b"), "b")?;
        let again = journals.take("m-1", "t-1", &home.0, started.epoch, 0)?;
        assert_eq!(again.paths, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(journals.status("m-1").map(|s| s.pending_paths), Some(2));
        // Confirmed: only what changed since.
        std::fs::write(home.0.join("c"), "c")?;
        let next = journals.take("m-1", "t-1", &home.0, started.epoch, again.sequence)?;
        assert_eq!(next.paths, [PathBuf::from("c")]);
        // Another home than the journal's is refused.
        assert!(
            journals
                .take("m-1", "t-1", Path::new("/"), started.epoch, 0)
                .is_err()
        );
        assert!(journals.stop("m-1"));
        assert!(
            journals
                .take("m-1", "t-1", &home.0, started.epoch, 0)?
                .missing
        );
        Ok(())
    }

    #[test]
    fn another_epoch_or_a_journal_that_lost_track_is_not_trusted()
    -> Result<(), Box<dyn std::error::Error>> {
        let home = home("epoch")?;
        let journals = Journals::default();
        let started = journals.start("m-2", "alice", &home.0)?;
        let stale = journals.take("m-2", "t-2", &home.0, started.epoch ^ 1, 0)?;
        assert!(stale.untrusted.is_some_and(|why| why.contains("epoch")));
        // The home moved away and back: the journal lost track, and starts
        // again under a new epoch.
        let moved = home.0.with_extension("moved");
        std::fs::rename(&home.0, &moved)?;
        std::fs::rename(&moved, &home.0)?;
        let lost = journals.take("m-2", "t-2", &home.0, started.epoch, 0)?;
        assert!(lost.untrusted.is_some_and(|why| why.contains("lost track")));
        assert_ne!(lost.epoch, started.epoch);
        let fresh = journals.take("m-2", "t-2", &home.0, lost.epoch, 0)?;
        assert_eq!((fresh.untrusted, fresh.paths.len()), (None, 0));
        Ok(())
    }
}
