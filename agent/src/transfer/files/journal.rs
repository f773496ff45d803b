//! The resume journal of one transfer's files on the target:
//! `<state_dir>/transfers/<transfer id>/files.json`.
//!
//! It records, for each file whose content is being received, the
//! temporary file it goes to and how far data has arrived, so that a pull
//! that starts again (after a broken link, or an agent restart) reuses what
//! is there and can tell how much it had to receive twice. Correctness does
//! not rest on it: what a temporary file holds is offered to the source as
//! block hashes, and only blocks whose hash matches are kept. Completed
//! files need no record: they are in place, with the source's size and
//! time, and the comparison skips them. The journal goes when the pull
//! completes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::path::RelPath;

/// How many bytes may arrive between two writes of the journal.
const PERSIST_EVERY: u64 = 16 * 1024 * 1024;

/// One file being received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The temporary file, in the file's directory.
    pub part: String,
    /// The source's size and modification time when the copy started.
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Data has arrived up to this offset (in some attempt).
    pub received_upto: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct JournalFile {
    version: u32,
    /// By path, hex-encoded (paths need not be UTF-8).
    partials: BTreeMap<String, Partial>,
}

/// The journal, in memory and on disk.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: PathBuf,
    state: Mutex<(JournalFile, u64)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Journal {
    /// Opens the journal of `transfer_id` (which the caller checked is a
    /// plain id), starting empty if there is none or it is unreadable.
    pub fn open(state_dir: &Path, transfer_id: &str) -> io::Result<Journal> {
        let dir = state_dir.join("transfers").join(transfer_id);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("files.json");
        let state = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(message = "ignoring an unreadable resume journal", path = %file.display(), %error);
                JournalFile::default()
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => JournalFile::default(),
            Err(error) => return Err(error),
        };
        Ok(Journal {
            dir,
            file,
            state: Mutex::new((state, 0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (JournalFile, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is recorded about `path`.
    pub fn partial(&self, path: &RelPath) -> Option<Partial> {
        self.lock().0.partials.get(&hex(path.as_bytes())).cloned()
    }

    /// Records that `path` is being received into `part`.
    pub fn start(&self, path: &RelPath, partial: Partial) -> io::Result<()> {
        let mut state = self.lock();
        let key = hex(path.as_bytes());
        let received_upto = state
            .0
            .partials
            .get(&key)
            .map_or(0, |p| p.received_upto)
            .max(partial.received_upto);
        state.0.partials.insert(
            key,
            Partial {
                received_upto,
                ..partial
            },
        );
        self.write(&mut state)
    }

    /// Notes that data of `path` has arrived up to `upto`; written to disk
    /// every few megabytes.
    pub fn received(&self, path: &RelPath, upto: u64, bytes: u64) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(partial) = state.0.partials.get_mut(&hex(path.as_bytes())) {
            partial.received_upto = partial.received_upto.max(upto);
        }
        state.1 += bytes;
        if state.1 >= PERSIST_EVERY {
            self.write(&mut state)?;
        }
        Ok(())
    }

    /// The file is read again from the start on purpose (it changed while
    /// read): what arrives again is not a resumption's loss.
    pub fn restart(&self, path: &RelPath) {
        if let Some(partial) = self.lock().0.partials.get_mut(&hex(path.as_bytes())) {
            partial.received_upto = 0;
        }
    }

    /// `path` is in place: forget it.
    pub fn finish(&self, path: &RelPath) -> io::Result<()> {
        let mut state = self.lock();
        if state.0.partials.remove(&hex(path.as_bytes())).is_some() {
            self.write(&mut state)?;
        }
        Ok(())
    }

    /// Writes the journal now.
    pub fn persist(&self) -> io::Result<()> {
        let mut state = self.lock();
        self.write(&mut state)
    }

    fn write(&self, state: &mut (JournalFile, u64)) -> io::Result<()> {
        state.0.version = 1;
        state.1 = 0;
        let text = serde_json::to_vec_pretty(&state.0).map_err(io::Error::other)?;
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.file)
    }

    /// The pull completed: remove the journal and its directory (if empty).
    pub fn complete(&self) -> io::Result<()> {
        self.lock().0.partials.clear();
        match std::fs::remove_file(&self.file) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}
