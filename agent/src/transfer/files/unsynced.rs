//! What a copy's catch-up passes wrote and did not sync yet:
//! `<state_dir>/transfers/<transfer id>/unsynced`.
//!
//! A migration's converging passes leave what they write to the kernel's
//! writeback, as `rsync -a` does: syncing each file costs a flush of the
//! device's cache, and nothing serves from the copy before the switch.
//! A durable pass (the one before the freeze, and the freeze's own) syncs
//! what they wrote along with its own changes, then forgets them.
//!
//! Until then a restart of this host may have lost any of those writes,
//! while the file's size and time, written apart from its data, say it
//! is up to date (a file written over its old version, on a filesystem
//! without a journal, can come back with its new time and old blocks).
//! So the files a pass is about to write are recorded first, durably,
//! with the host's boot id; the directories it changed are recorded after
//! (what a restart loses of them, a full comparison sees). A pass that
//! finds the record of an earlier boot does not trust the copy at those
//! files: it compares the whole tree and sends them again whatever they
//! look like ([`PullConfig::resend`](super::PullConfig::resend)).
//!
//! The record is a log of lines, appended to: `boot <id>` first, then
//! `f <hex path>` for a file, `d <hex path>` for a directory. A line cut
//! short by a crash was never followed by the writes it announced.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::path::RelPath;

/// The record's file name in the transfer's state directory.
const FILE: &str = "unsynced";

/// This boot of the host (`/proc/sys/kernel/random/boot_id`): page-cache
/// contents written under it are still there while it is the same.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// The record of one copy, as read when a pass starts.
#[derive(Debug)]
pub struct Unsynced {
    file: PathBuf,
    boot: String,
    /// The boot the record was written under, when there is one.
    recorded_boot: Option<String>,
    pub files: BTreeSet<RelPath>,
    pub dirs: BTreeSet<RelPath>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Unsynced {
    /// Reads the record of `transfer_id`'s copy (none is an empty one).
    pub fn open(state_dir: &Path, transfer_id: &str) -> io::Result<Unsynced> {
        let file = state_dir.join("transfers").join(transfer_id).join(FILE);
        let mut record = Unsynced {
            boot: boot_id()?,
            file,
            recorded_boot: None,
            files: BTreeSet::new(),
            dirs: BTreeSet::new(),
        };
        let text = match std::fs::read(&record.file) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(record),
            Err(error) => return Err(error),
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let Some((kind, value)) = line.split_once(' ') else {
                continue;
            };
            if kind == "boot" {
                record.recorded_boot.get_or_insert_with(|| value.to_owned());
                continue;
            }
            let Some(path) = unhex(value).and_then(|raw| RelPath::parse(&raw).ok()) else {
                continue;
            };
            match kind {
                "f" => record.files.insert(path),
                "d" => record.dirs.insert(path),
                _ => false,
            };
        }
        // A record cut short before its boot line announced nothing.
        if record.recorded_boot.is_none() {
            record.files.clear();
            record.dirs.clear();
        }
        Ok(record)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Files written under an earlier boot of this host and never synced:
    /// their content may be lost whatever their size and time say.
    pub fn lost_with_a_restart(&self) -> bool {
        self.recorded_boot
            .as_ref()
            .is_some_and(|boot| *boot != self.boot && !self.files.is_empty())
    }

    /// Nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    /// Records `files` before they are written: durable when it returns.
    pub fn record_files<'p>(
        &mut self,
        files: impl IntoIterator<Item = &'p RelPath>,
    ) -> io::Result<()> {
        let new: Vec<&RelPath> = files
            .into_iter()
            .filter(|path| !self.files.contains(*path))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.append(new.iter().map(|path| ('f', *path)), true)?;
        self.files.extend(new.into_iter().cloned());
        Ok(())
    }

    /// Records directories a pass changed (not synced: a restart's losses
    /// among them are seen by a full comparison).
    pub fn record_dirs<'p>(
        &mut self,
        dirs: impl IntoIterator<Item = &'p RelPath>,
    ) -> io::Result<()> {
        let new: Vec<&RelPath> = dirs
            .into_iter()
            .filter(|path| !self.dirs.contains(*path))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.append(new.iter().map(|path| ('d', *path)), false)?;
        self.dirs.extend(new.into_iter().cloned());
        Ok(())
    }

    fn append<'p>(
        &mut self,
        lines: impl Iterator<Item = (char, &'p RelPath)>,
        sync: bool,
    ) -> io::Result<()> {
        let creating = self.recorded_boot.is_none();
        let mut text = String::new();
        if creating {
            text.push_str(&format!("boot {}\n", self.boot));
        }
        for (kind, path) in lines {
            text.push_str(&format!("{kind} {}\n", hex(path.as_bytes())));
        }
        let dir = self.file.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.file)?;
        file.write_all(text.as_bytes())?;
        if sync {
            file.sync_data()?;
            if creating {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        self.recorded_boot.get_or_insert_with(|| self.boot.clone());
        Ok(())
    }

    /// What was recorded is synced (or sent again and synced): forget it.
    /// Not synced itself: a record that comes back after a crash only
    /// makes the next pass send its files again.
    pub fn clear(&mut self) -> io::Result<()> {
        match std::fs::remove_file(&self.file) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        self.recorded_boot = None;
        self.files.clear();
        self.dirs.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(path: &str) -> RelPath {
        RelPath::parse(path.as_bytes()).expect("a valid path")
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("navette-unsynced-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_record_of_this_boot_is_read_back_and_cleared() {
        let state = scratch("this-boot");
        let mut record = Unsynced::open(&state, "t-1").expect("opened");
        assert!(record.is_empty() && !record.lost_with_a_restart());
        let odd = RelPath::parse(b"www/caf\xe9 menu.txt").expect("a valid path");
        record
            .record_files([&path("www/index.html"), &odd])
            .expect("recorded");
        record.record_dirs([&path("www")]).expect("recorded");
        let again = Unsynced::open(&state, "t-1").expect("opened");
        assert_eq!(
            again.files,
            BTreeSet::from([path("www/index.html"), odd.clone()])
        );
        assert_eq!(again.dirs, BTreeSet::from([path("www")]));
        assert!(!again.lost_with_a_restart());
        record.clear().expect("cleared");
        assert!(Unsynced::open(&state, "t-1").expect("opened").is_empty());
        let _ = std::fs::remove_dir_all(&state);
    }

    #[test]
    fn a_record_of_another_boot_says_its_files_may_be_lost() {
        let state = scratch("other-boot");
        let file = state.join("transfers/t-2").join(FILE);
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("made");
        // Written under another boot, the last line cut short.
        std::fs::write(
            &file,
            format!(
                "boot 00000000-0000-0000-0000-000000000000\nf {}\nd 7777\nf 6",
                hex(b"a/b")
            ),
        )
        .expect("written");
        let record = Unsynced::open(&state, "t-2").expect("opened");
        assert!(record.lost_with_a_restart());
        assert_eq!(record.files, BTreeSet::from([path("a/b")]));
        assert_eq!(record.dirs, BTreeSet::from([path("ww")]));
        let _ = std::fs::remove_dir_all(&state);
    }
}
