//! The cutover's records on disk, under `<state_dir>/cutover/`: what a
//! switch changed on the database servers and what a forward replaced in
//! the web server, so that `ReleaseDatabases` and `UnforwardSites` can undo
//! them after an agent restart. A record is written *before* the change it
//! describes (undoing a change that was never made is harmless: it
//! restores the value recorded), atomically (temporary file, rename), and
//! removed once undone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CutoverError;

/// What `SwitchDatabases` changed for one account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRecord {
    pub migration_id: String,
    pub account: String,
    /// (server, database, connection limit before the switch).
    pub postgres: Vec<(String, String, i32)>,
    /// (server, user, host) locked by the switch (not locked before).
    pub mariadb: Vec<(String, String, String)>,
}

/// What `ForwardSites` replaced for one account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRecord {
    pub migration_id: String,
    pub account: String,
    pub new_address: String,
    pub new_port: u16,
    pub domains: Vec<String>,
    /// The account's own server blocks, (file name, text), as they were.
    pub blocks: Vec<(String, String)>,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cutover")
}

/// `<state_dir>/cutover/<kind>-<account>.json` (account names are checked
/// before any call gets here).
pub fn path(state_dir: &Path, kind: &str, account: &str) -> PathBuf {
    dir(state_dir).join(format!("{kind}-{account}.json"))
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CutoverError + 'a {
    move |source| CutoverError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The record at `path`, if any.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, CutoverError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|error| {
            CutoverError::Precondition(format!(
                "the cutover record {} is damaged ({error}); an operator checks it, then removes it",
                path.display()
            ))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CutoverError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `record` at `path`, atomically.
pub fn write<T: Serialize>(path: &Path, record: &T) -> Result<(), CutoverError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let text = serde_json::to_string_pretty(record).unwrap_or_default();
    let temporary = path.with_extension("json.new");
    std::fs::write(&temporary, text).map_err(io("writing", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io("renaming into place", path))
}

/// Removes the record at `path`; nothing to do if it is gone.
pub fn remove(path: &Path) -> Result<(), CutoverError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CutoverError::Io {
            what: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_round_trip_and_goes() -> Result<(), CutoverError> {
        let state = std::env::temp_dir().join(format!("navette-cutover-{}", std::process::id()));
        let at = path(&state, "switch", "alice");
        assert_eq!(read::<SwitchRecord>(&at)?, None);
        let record = SwitchRecord {
            migration_id: "m-1".into(),
            account: "alice".into(),
            postgres: vec![("main".into(), "alice_shop".into(), -1)],
            mariadb: vec![("main".into(), "alice".into(), "%".into())],
        };
        write(&at, &record)?;
        assert_eq!(read::<SwitchRecord>(&at)?, Some(record));
        remove(&at)?;
        remove(&at)?;
        assert_eq!(read::<SwitchRecord>(&at)?, None);
        let _ = std::fs::remove_dir_all(&state);
        Ok(())
    }
}
