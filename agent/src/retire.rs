//! `Agent/RetireAccount`: on the old host, at the end of a migration's
//! grace period, the old copy of the account removed: its databases and
//! its home. The sites are not this room's: they are stopped by
//! `StopSites` (after the forward's end, while the old host forwards).
//!
//! Only what this agent's own switch record of the migration
//! (`<state_dir>/cutover/switch-<account>.json`, written by
//! `SwitchDatabases`, kept after the finish) backs is removed:
//! - the PostgreSQL databases the record lists;
//! - a MariaDB database of the request only if, on its server, a user
//!   the switch locked (the account's users, in the record) holds grants
//!   on it: the request alone never names a database to drop;
//! - `<accounts_dir>/<account>`, if it is a directory (a symbolic link
//!   there is kept), removed without following links
//!   (`std::fs::remove_dir_all`, as `RemoveCopy` does).
//!
//! Roles and MariaDB users stay: the record does not say the migration
//! made them (the switch locked the MariaDB users; they stay locked).
//!
//! Without the record, or with a record of another migration, nothing is
//! removed (FAILED_PRECONDITION). Each drop is "if it exists", so a call
//! killed half-way is finished by the next; once all is gone a
//! `retired-<account>.json` record answers repeats and the switch record
//! is removed (the account may come back to this host and be switched
//! away again by another migration; a retired record of an earlier
//! migration does not stand in the way). Calls run under the fences'
//! lock, so no switch of the account runs meanwhile.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cutover::state::{self, SwitchRecord};
use crate::cutover::{Cutover, CutoverError};
use crate::transfer::removal;

/// What a finished retirement removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredRecord {
    pub migration_id: String,
    pub account: String,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

/// What [`retire`] answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub already: bool,
}

fn failed(what: String) -> CutoverError {
    CutoverError::Precondition(what)
}

/// Retires `account`'s old copy for `migration_id`; `mariadb` is the
/// request's (server, database) list. See the module doc for what goes.
pub async fn retire(
    cutover: &Cutover,
    migration_id: &str,
    account: &str,
    mariadb: &[(String, String)],
) -> Result<Retired, CutoverError> {
    let config = cutover.config.clone();
    let _no_switch_meanwhile = cutover.fences.lock().await;
    let retired_path = state::path(&config.state_dir, "retired", account);
    // A record of an earlier migration's retirement (the account came
    // back to this host since, and leaves it again) does not stand in the
    // way: this migration's switch record decides.
    if let Some(done) = state::read::<RetiredRecord>(&retired_path)?
        && done.migration_id == migration_id
    {
        return Ok(Retired {
            removed: done.removed,
            kept: done.kept,
            already: true,
        });
    }
    let switch_path = state::path(&config.state_dir, "switch", account);
    let record = match state::read::<SwitchRecord>(&switch_path)? {
        Some(record) => record,
        None => {
            return Err(failed(format!(
                "this host has no record of switching {account}'s databases away ({}); \
                 nothing is removed: retire only an account this host switched for the migration",
                switch_path.display()
            )));
        }
    };
    if record.migration_id != migration_id || record.account != account {
        return Err(failed(format!(
            "{account}'s databases were switched by migration {}, not {migration_id}; nothing is removed",
            record.migration_id
        )));
    }
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for (server, database, _) in &record.postgres {
        removal::drop_postgres_database(&config, server, database)
            .await
            .map_err(failed)?;
        removed.push(format!("postgresql {server}/{database}"));
    }
    if !record.postgres.is_empty() {
        kept.push(
            "PostgreSQL roles: the switch record does not say the migration made them".to_owned(),
        );
    }
    for (server, database) in mariadb {
        let owners: BTreeSet<(String, String)> = record
            .mariadb
            .iter()
            .filter(|(s, _, _)| s == server)
            .map(|(_, user, host)| (user.clone(), host.clone()))
            .collect();
        let name = format!("mariadb {server}/{database}");
        if !removal::mariadb_database_exists(&config, server, database)
            .await
            .map_err(failed)?
        {
            // Gone already (an earlier call dropped it, or never here).
            removed.push(name);
            continue;
        }
        let grantees = removal::mariadb_users_of(&config, server, std::slice::from_ref(database))
            .await
            .map_err(failed)?;
        if owners.is_empty() || grantees.is_disjoint(&owners) {
            kept.push(format!(
                "{name}: no user the switch locked holds grants on it"
            ));
            continue;
        }
        removal::drop_mariadb_database(&config, server, database)
            .await
            .map_err(failed)?;
        removed.push(name);
    }
    if !record.mariadb.is_empty() {
        kept.push("MariaDB users: locked by the switch, kept".to_owned());
    }
    let home = config.accounts_dir.join(account);
    let removing = home.clone();
    let home_removal = tokio::task::spawn_blocking(move || remove_home(&removing))
        .await
        .map_err(|e| {
            failed(format!(
                "removing {}: stopped unexpectedly: {e}",
                home.display()
            ))
        })?;
    match home_removal? {
        HomeRemoval::Removed => removed.push(format!("home {}", home.display())),
        HomeRemoval::Kept(why) => kept.push(format!("home {}: {why}", home.display())),
    }
    let done = RetiredRecord {
        migration_id: migration_id.to_owned(),
        account: account.to_owned(),
        removed,
        kept,
    };
    state::write(&retired_path, &done)?;
    // The switch is over for good: what it changed is gone or is named in
    // the retired record, and the account may live here again one day and
    // be switched away by another migration.
    state::remove(&switch_path)?;
    tracing::info!(
        message = "the old copy is retired",
        migration = %migration_id,
        %account,
        removed = ?done.removed,
        kept = ?done.kept
    );
    Ok(Retired {
        removed: done.removed,
        kept: done.kept,
        already: false,
    })
}

enum HomeRemoval {
    Removed,
    Kept(String),
}

/// Removes the directory `home` and its tree without following a link;
/// gone already counts as removed; a link or a file there is kept.
fn remove_home(home: &Path) -> Result<HomeRemoval, CutoverError> {
    let metadata = match std::fs::symlink_metadata(home) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HomeRemoval::Removed);
        }
        Err(source) => {
            return Err(CutoverError::Io {
                what: "looking at",
                path: home.to_owned(),
                source,
            });
        }
    };
    if !metadata.is_dir() {
        return Ok(HomeRemoval::Kept(
            "not a directory (a link or a file); left for an operator".to_owned(),
        ));
    }
    match std::fs::remove_dir_all(home) {
        Ok(()) => Ok(HomeRemoval::Removed),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(HomeRemoval::Removed),
        Err(source) => Err(CutoverError::Io {
            what: "removing",
            path: home.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_goes_without_following_a_link_and_gone_counts_as_removed() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("navette-retire-{}", std::process::id()));
        let outside = dir.join("outside");
        let home = dir.join("accounts/rita");
        std::fs::create_dir_all(&outside)?;
        std::fs::create_dir_all(&home)?;
        std::fs::write(outside.join("keep"), "kept")?;
        std::os::unix::fs::symlink(&outside, home.join("link"))?;
        assert!(matches!(remove_home(&home), Ok(HomeRemoval::Removed)));
        assert!(!home.exists() && outside.join("keep").exists());
        assert!(matches!(remove_home(&home), Ok(HomeRemoval::Removed)));
        let linked = dir.join("accounts/lina");
        std::os::unix::fs::symlink(&outside, &linked)?;
        assert!(matches!(remove_home(&linked), Ok(HomeRemoval::Kept(_))));
        assert!(outside.join("keep").exists());
        std::fs::remove_dir_all(&dir)
    }
}
