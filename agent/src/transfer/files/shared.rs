//! What the parts of one pull share: the target root and its attribute
//! cache, the journal, the client, the configuration, and the counters,
//! which feed both the transfer's [`Progress`] and the final report. A
//! file retried after a failed attempt is never counted twice.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use navette_proto::v1::file_source_client::FileSourceClient;
use tonic::transport::Channel;

use super::beneath::Root;
use super::journal::Journal;
use super::path::RelPath;
use super::pull::{FilesReport, PullConfig};
use super::receive::Received;
use super::scan::{Entry, XattrCache};
use super::setid::AccountIds;
use crate::transfer::progress::Progress;

/// Counters of one pull, across its attempts.
#[derive(Debug, Default)]
pub struct Tally {
    bytes_sent: AtomicU64,
    bytes_reused: AtomicU64,
    resent: AtomicU64,
    files_sent: AtomicU64,
    files_unchanged: AtomicU64,
    changed: AtomicU64,
    vanished: AtomicU64,
    /// Bytes counted as done per file, so a retried file is not counted twice.
    counted: Mutex<HashMap<RelPath, u64>>,
    /// Files completed in this pull.
    finished: Mutex<HashSet<RelPath>>,
    /// Files whose new content was written over the old.
    over_old: Mutex<HashSet<RelPath>>,
    /// This pull's share of the progress totals (other phases share them).
    totals: Mutex<(u64, u64)>,
}

/// Attributes of the files of recently pulled target trees (see
/// [`XattrCache`]), so that refreshing an unchanged copy costs a `stat` per
/// file on the target. Kept while the agent runs.
static TARGET_CACHES: OnceLock<Mutex<HashMap<PathBuf, Arc<XattrCache>>>> = OnceLock::new();

/// How many target trees' attribute caches are kept.
const CACHED_TARGETS: usize = 32;

pub fn target_cache(target_root: &Path) -> Arc<XattrCache> {
    let mut caches = TARGET_CACHES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !caches.contains_key(target_root) && caches.len() >= CACHED_TARGETS {
        caches.clear();
    }
    caches.entry(target_root.to_path_buf()).or_default().clone()
}

/// What every part of one pull shares.
pub struct Shared<'a> {
    pub transfer_id: String,
    pub root: Arc<Root>,
    /// Attributes of the target's files, kept up to date by the writers.
    pub cache: Arc<XattrCache>,
    pub journal: Arc<Journal>,
    pub client: FileSourceClient<Channel>,
    pub config: PullConfig,
    /// The account's user on this host (from `config.account_user`): its
    /// own entries may keep set-id bits.
    pub account: Option<AccountIds>,
    pub progress: &'a Progress,
    pub tally: Tally,
    /// Set when a stream failed: the others finish their file and stop.
    pub stop: AtomicBool,
}

impl Shared<'_> {
    /// File content arrived over the network.
    pub fn sent(&self, bytes: u64) {
        self.tally.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        self.progress.add(&self.progress.bytes_sent, bytes);
        crate::metrics::copied_bytes(crate::metrics::Engine::Files, bytes);
    }

    /// The source said the target holds these bytes already.
    pub fn reused(&self, bytes: u64) {
        self.tally.bytes_reused.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn resent(&self, bytes: u64) {
        self.tally.resent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` more of `entry` are done (counted at most up to its size).
    pub fn advanced(&self, entry: &Entry, bytes: u64) {
        let mut counted = self.tally.counted.lock().unwrap_or_else(|p| p.into_inner());
        let done = counted.entry(entry.path.clone()).or_insert(0);
        let add = bytes.min(entry.data_bytes().saturating_sub(*done));
        *done += add;
        drop(counted);
        if add > 0 {
            self.progress.add(&self.progress.bytes_done, add);
        }
    }

    /// `entry` is complete (or gone).
    pub fn finished(&self, entry: &Entry, received: &Received) {
        if !self
            .tally
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.path.clone())
        {
            return;
        }
        match received {
            Received::Done { changed, over_old } => {
                self.tally.files_sent.fetch_add(1, Ordering::Relaxed);
                if *over_old {
                    self.tally
                        .over_old
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(entry.path.clone());
                }
                crate::metrics::copied_files(1);
                if *changed {
                    self.tally.changed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Received::Vanished => {
                self.tally.vanished.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.advanced(entry, u64::MAX);
        self.progress.add(&self.progress.files_done, 1);
    }

    /// These files were found identical: (path, data bytes).
    pub fn unchanged(&self, files: &[(RelPath, u64)]) {
        let mut finished = self
            .tally
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut counted = self.tally.counted.lock().unwrap_or_else(|p| p.into_inner());
        let (mut new_files, mut unchanged, mut bytes) = (0, 0, 0);
        for (path, size) in files {
            if !finished.insert(path.clone()) {
                continue;
            }
            new_files += 1;
            // A file written by an earlier attempt of this pull is not
            // "unchanged": it was sent.
            let done = counted.entry(path.clone()).or_insert(0);
            if *done == 0 {
                unchanged += 1;
            }
            bytes += size.saturating_sub(*done);
            *done = (*size).max(*done);
        }
        drop(counted);
        drop(finished);
        self.tally
            .files_unchanged
            .fetch_add(unchanged, Ordering::Relaxed);
        self.progress.add(&self.progress.files_unchanged, unchanged);
        self.progress.add(&self.progress.files_done, new_files);
        self.progress.add(&self.progress.bytes_done, bytes);
    }

    /// Sets this pull's share of the totals to (bytes, files).
    pub fn set_totals(&self, bytes: u64, files: u64) {
        let mut totals = self.tally.totals.lock().unwrap_or_else(|p| p.into_inner());
        let adjust = |counter: &AtomicU64, old: u64, new: u64| {
            if new >= old {
                counter.fetch_add(new - old, Ordering::Relaxed);
            } else {
                counter.fetch_sub(old - new, Ordering::Relaxed);
            }
        };
        adjust(&self.progress.bytes_total, totals.0, bytes);
        adjust(&self.progress.files_total, totals.1, files);
        *totals = (bytes, files);
        drop(totals);
        self.progress.add(&self.progress.bytes_total, 0);
    }

    /// A number that grows whenever the pull gets anywhere.
    pub fn headway(&self) -> u64 {
        self.tally.bytes_sent.load(Ordering::Relaxed)
            + self.tally.bytes_reused.load(Ordering::Relaxed)
            + self
                .tally
                .finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len() as u64
    }
}

impl Tally {
    /// Copies the counters into `report`.
    pub fn fill(&self, report: &mut FilesReport) {
        report.bytes_sent = self.bytes_sent.load(Ordering::Relaxed);
        report.bytes_reused = self.bytes_reused.load(Ordering::Relaxed);
        report.resumed_bytes_resent = self.resent.load(Ordering::Relaxed);
        report.files_sent = self.files_sent.load(Ordering::Relaxed);
        report.files_unchanged = self.files_unchanged.load(Ordering::Relaxed);
        report.files_changed_during_copy = self.changed.load(Ordering::Relaxed);
        report.files_vanished = self.vanished.load(Ordering::Relaxed);
    }

    /// Files whose new content was written over the old (no name changed
    /// in their directory).
    pub fn written_over_old(&self) -> HashSet<RelPath> {
        std::mem::take(&mut *self.over_old.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Files whose content was received or found gone so far.
    pub fn content_changes(&self) -> u64 {
        self.files_sent.load(Ordering::Relaxed) + self.vanished.load(Ordering::Relaxed)
    }
}
