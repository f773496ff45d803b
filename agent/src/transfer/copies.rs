//! Copies on a target host, and what each one created there.
//!
//! A *copy* is what the transfers of one copy id (a test's id) fill on this
//! host, generation after generation. Its record,
//! `<state_dir>/copies/<copy id>.json`, lists what the copy created: the
//! home it made, the databases it made, and the logins (PostgreSQL roles,
//! MariaDB users) its transfers created and that its databases depend on.
//! `RemoveCopy` removes exactly that, and the inventory reports a home held
//! by a copy as a copy, not as an account.
//!
//! Invariants: a thing is recorded only when this host did not have it
//! before the copy (a home, a database, a login that already existed is
//! never the copy's); one thing belongs to at most one copy; records are
//! written before the thing is created (home, databases) or as soon as it is
//! found (logins), so a crash mid-copy never leaves something unrecorded
//! that removal should take; a database is forgotten only once dropped (a
//! later generation whose spec no longer lists it drops it first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A database a copy created.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedDatabase {
    /// The server's name in this agent's configuration.
    pub server: String,
    pub database: String,
}

/// A login a copy created: a PostgreSQL role (`host` empty) or a MariaDB
/// user `'user'@'host'`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedLogin {
    pub server: String,
    pub user: String,
    #[serde(default)]
    pub host: String,
}

/// What one copy created on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    pub copy_id: String,
    pub account: String,
    /// The home the copy created; `None`: no files.
    pub home: Option<PathBuf>,
    #[serde(default)]
    pub postgresql: Vec<OwnedDatabase>,
    #[serde(default)]
    pub mariadb: Vec<OwnedDatabase>,
    #[serde(default)]
    pub postgres_roles: Vec<OwnedLogin>,
    #[serde(default)]
    pub mariadb_users: Vec<OwnedLogin>,
    /// Every transfer into the copy (its generations).
    #[serde(default)]
    pub transfers: Vec<String>,
}

impl CopyRecord {
    /// Adds `item` to `list` unless it is there.
    pub fn add<T: PartialEq>(list: &mut Vec<T>, item: T) {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("copy records in {path}: {source}")]
pub struct CopiesError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The copy records of this host.
#[derive(Debug)]
pub struct Copies {
    dir: PathBuf,
    /// Held while a record is read, changed and written, so that two
    /// transfers never claim the same thing.
    writing: Mutex<()>,
}

impl Copies {
    /// `<state_dir>/copies` (created when the first record is written).
    pub fn new(state_dir: &Path) -> Copies {
        Copies {
            dir: state_dir.join("copies"),
            writing: Mutex::new(()),
        }
    }

    fn path(&self, copy_id: &str) -> PathBuf {
        self.dir.join(format!("{copy_id}.json"))
    }

    /// Runs `change` on the record of `copy_id` (a new one if none) and
    /// writes it, under the lock; `change` may refuse by returning an
    /// error, and then nothing is written.
    pub fn update<E>(
        &self,
        copy_id: &str,
        account: &str,
        change: impl FnOnce(&mut CopyRecord, &[CopyRecord]) -> Result<(), E>,
    ) -> Result<Result<CopyRecord, E>, CopiesError> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let others: Vec<CopyRecord> = self
            .list()
            .into_iter()
            .filter(|r| r.copy_id != copy_id)
            .collect();
        let mut record = self.load(copy_id).unwrap_or_else(|| CopyRecord {
            copy_id: copy_id.to_owned(),
            account: account.to_owned(),
            ..CopyRecord::default()
        });
        if let Err(refusal) = change(&mut record, &others) {
            return Ok(Err(refusal));
        }
        self.write(&record)?;
        Ok(Ok(record))
    }

    fn write(&self, record: &CopyRecord) -> Result<(), CopiesError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CopiesError { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.path(&record.copy_id);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(record).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The record of `copy_id`, if this host has one.
    pub fn load(&self, copy_id: &str) -> Option<CopyRecord> {
        let text = std::fs::read_to_string(self.path(copy_id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every copy record of this host.
    pub fn list(&self) -> Vec<CopyRecord> {
        list_records(&self.dir)
    }

    /// Forgets `copy_id` (once what it created is removed).
    pub fn forget(&self, copy_id: &str) -> Result<(), CopiesError> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = self.path(copy_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CopiesError { path, source }),
        }
    }
}

fn list_records(dir: &Path) -> Vec<CopyRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|text| serde_json::from_str::<CopyRecord>(&text).ok())
        .collect()
}

/// The homes held by copies on this host, with their copy ids (for the
/// inventory, which reports them as copies).
pub fn homes(state_dir: &Path) -> HashMap<PathBuf, String> {
    list_records(&state_dir.join("copies"))
        .into_iter()
        .filter_map(|r| r.home.map(|home| (home, r.copy_id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thing_belongs_to_one_copy() -> Result<(), CopiesError> {
        let dir = std::env::temp_dir().join(format!("navette-copies-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let copies = Copies::new(&dir);
        let home = PathBuf::from("/accounts/alice");
        let claim = |copy: &str| {
            copies.update(copy, "alice", |record, others| {
                if let Some(other) = others.iter().find(|o| o.home.as_ref() == Some(&home)) {
                    return Err(other.copy_id.clone());
                }
                record.home = Some(home.clone());
                Ok(())
            })
        };
        assert!(claim("t-old")?.is_ok());
        assert!(claim("t-old")?.is_ok(), "a copy claims its home again");
        assert_eq!(claim("t-new")?.err().as_deref(), Some("t-old"));
        assert_eq!(homes(&dir).get(&home).map(String::as_str), Some("t-old"));
        copies.forget("t-old")?;
        copies.forget("t-old")?;
        assert!(claim("t-new")?.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
