//! The target's pull: one call copies the granted home of the source into
//! the target home, resuming what an earlier call left, retrying while the
//! source is unreachable for a bounded time. While it waits, the progress
//! says so (`waiting`: since the first failure, until the bound), until the
//! manifest is read again.
//!
//! One attempt: read the manifest and scan the target at the same time;
//! compare and fix the structure ([`plan`](super::plan)); receive content
//! on several streams at once (large files first, small files in batches);
//! then hard links, symbolic links, fifos, metadata, deletions of what the
//! source no longer has, and directory metadata deepest first (so that
//! nothing written afterwards disturbs a directory's time); finally
//! `syncfs`. A failed attempt leaves partial files and the journal for the
//! next one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use navette_proto::v1::file_source_client::FileSourceClient;
use navette_proto::v1::{TransferWaiting, WholeFile};
use tonic::transport::Channel;

use super::apply;
use super::beneath::Root;
use super::journal::Journal;
use super::path::RelPath;
use super::plan::{self, Plan, Sizes};
use super::receive::{self, blocking};
use super::scan::{self, Entry};
use super::setid::{AccountIds, AccountUser};
use super::shared::{Shared, Tally, target_cache};
use super::{FilesError, MAX_MESSAGE_SIZE, Problem, manifest};
use crate::ids::is_transfer_id;
use crate::transfer::outage::OUTAGE_BOUND;
use crate::transfer::progress::Progress;

/// What a pull waits for while its source does not answer (the
/// progress's `waiting`).
pub const SOURCE_FILES: &str = "source host's file service (the account's home)";

/// How a pull behaves. The defaults suit a transfer between two hosts.
#[derive(Clone, Debug)]
pub struct PullConfig {
    /// Streams (files or batches of small files) in flight at once.
    pub streams: usize,
    /// Files up to this size travel whole, many per stream.
    pub small_file_max: u64,
    /// Most files, and bytes, in one batch of small files.
    pub batch_files: usize,
    pub batch_bytes: u64,
    /// How long the source may stay unreachable (with no progress) before
    /// the pull gives up. Default [`OUTAGE_BOUND`], as databases.
    pub retry_for: Duration,
    /// How long a stream may stay silent before it counts as broken.
    pub stall_timeout: Duration,
    /// How many times a file is read when it does not verify or keeps
    /// changing while read.
    pub content_tries: u32,
    /// Make everything written durable before the pull returns (fsync of
    /// large files, then one `syncfs`). Off, the copy is left to the
    /// kernel's writeback, as rsync does: for copies that may be lost with
    /// the host (a test copy), not for a migration's.
    pub durable: bool,
    /// The account's system user on this host: only its own entries keep
    /// set-user-id and set-group-id bits (see [`setid`](super::setid)). A
    /// name this host does not know: no entry keeps them.
    pub account_user: AccountUser,
    /// Write a small file's new content over its old version where
    /// [`open_in_place`](super::apply::open_in_place) allows, rather than
    /// into a temporary file renamed over it: for catch-up passes into a
    /// copy nothing serves from yet, where a half-written file is read by
    /// no one and sent again by the next pass.
    pub in_place: bool,
    /// Files whose content is sent again whatever their size and time say
    /// (written by passes whose writes this host may have lost in a
    /// restart, see [`unsynced`](super::unsynced)). A full pull only.
    pub resend: Arc<BTreeSet<RelPath>>,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            streams: 8,
            small_file_max: 1024 * 1024,
            batch_files: 1024,
            batch_bytes: 8 * 1024 * 1024,
            retry_for: OUTAGE_BOUND,
            stall_timeout: Duration::from_secs(60),
            content_tries: 3,
            durable: true,
            account_user: AccountUser::default(),
            in_place: false,
            resend: Arc::default(),
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilesReport {
    /// Entries in the source's manifest (the root included).
    pub entries: u64,
    /// Regular files (hard links not counted twice) and their data bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files whose content was received (whole, or the blocks that changed).
    pub files_sent: u64,
    /// File content received over the network.
    pub bytes_sent: u64,
    /// Bytes of received files the target already held and did not receive.
    pub bytes_reused: u64,
    /// Regular files found identical and left alone.
    pub files_unchanged: u64,
    /// Entries whose metadata alone was fixed.
    pub metadata_updated: u64,
    /// Links, fifos and sockets made.
    pub links_made: u64,
    /// Entries of the target the source no longer has, removed (a removed
    /// directory counts once).
    pub deleted: u64,
    /// Files that kept changing while read: copied as last seen and dated
    /// just before the source's time, so that a refresh sends them again.
    pub files_changed_during_copy: u64,
    /// Files listed but gone (or no longer regular files) when read.
    pub files_vanished: u64,
    /// Bytes received again because an earlier attempt or pull had
    /// received them but was interrupted before they were kept.
    pub resumed_bytes_resent: u64,
    /// Attempts that failed on a transient error and were retried.
    pub retries: u32,
    /// Entries whose set-user-id or set-group-id bits were removed, as
    /// they would have given power the account does not have here.
    pub set_id_removed: u64,
    /// The first few of them, with the mode and ids the source asked for.
    pub set_id_examples: Vec<String>,
}

/// The file-source client for a channel, with message limits that fit the
/// blocks received.
pub fn file_source_client(channel: Channel) -> FileSourceClient<Channel> {
    FileSourceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Pulls the home granted for `transfer_id` from the source at the other
/// end of `channel` into `target_root`, with the default [`PullConfig`].
pub async fn pull(
    channel: Channel,
    transfer_id: &str,
    target_root: &Path,
    state_dir: &Path,
    progress: &Progress,
) -> Result<FilesReport, FilesError> {
    pull_with(
        PullConfig::default(),
        channel,
        transfer_id,
        target_root,
        state_dir,
        progress,
    )
    .await
}

/// [`pull`] with a given configuration.
pub async fn pull_with(
    config: PullConfig,
    channel: Channel,
    transfer_id: &str,
    target_root: &Path,
    state_dir: &Path,
    progress: &Progress,
) -> Result<FilesReport, FilesError> {
    let failed = |problem: Problem| FilesError {
        transfer_id: transfer_id.to_owned(),
        problem,
    };
    progress.set_phase("files");
    let shared = open(
        config,
        channel,
        transfer_id,
        target_root,
        state_dir,
        progress,
    )
    .await?;
    tracing::info!(message = "pulling files", transfer_id, target = %target_root.display());
    let started = Instant::now();
    let mut report = FilesReport::default();
    let mut backoff = Duration::from_millis(250);
    let mut last_headway = (shared.headway(), Instant::now());
    loop {
        shared.stop.store(false, Ordering::Relaxed);
        match attempt(&shared, &mut report).await {
            Ok(()) => break,
            Err(problem) if problem.is_transient() => {
                let headway = shared.headway();
                if headway > last_headway.0 {
                    last_headway = (headway, Instant::now());
                    backoff = Duration::from_millis(250);
                }
                let quiet = last_headway.1.elapsed();
                if quiet > shared.config.retry_for {
                    let _ = shared.journal.persist();
                    progress.set_waiting(None);
                    return Err(failed(problem));
                }
                report.retries += 1;
                // Said in the progress until the manifest is read again
                // ([`attempt`] clears it): since the first failure of this
                // outage, until the bound counted from the last headway.
                let now = chrono::Utc::now();
                let since = progress
                    .waiting()
                    .filter(|waiting| waiting.what == SOURCE_FILES)
                    .and_then(|waiting| waiting.since)
                    .unwrap_or_else(|| navette_proto::timestamp(now));
                let left = shared.config.retry_for.saturating_sub(quiet);
                progress.set_waiting(Some(TransferWaiting {
                    what: SOURCE_FILES.to_owned(),
                    error: problem.to_string(),
                    since: Some(since),
                    until: Some(navette_proto::timestamp(
                        now + chrono::Duration::from_std(left).unwrap_or(chrono::Duration::MAX),
                    )),
                }));
                tracing::warn!(
                    message = "file transfer interrupted; resuming",
                    transfer_id,
                    error = %problem,
                    retry_in_ms = backoff.as_millis() as u64,
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(problem) => {
                let _ = shared.journal.persist();
                progress.set_waiting(None);
                tracing::warn!(message = "file transfer failed", transfer_id, error = %problem);
                return Err(failed(problem));
            }
        }
    }
    let _ = shared.journal.complete();
    shared.tally.fill(&mut report);
    tracing::info!(
        message = "files pulled",
        transfer_id,
        files = report.files,
        bytes = report.bytes,
        files_sent = report.files_sent,
        bytes_sent = report.bytes_sent,
        files_unchanged = report.files_unchanged,
        deleted = report.deleted,
        retries = report.retries,
        seconds = started.elapsed().as_secs_f64(),
    );
    Ok(report)
}

/// What every part of a pull or catch-up pass into `target_root` shares:
/// the resume journal, the account's ids, the opened target root.
pub(super) async fn open<'p>(
    config: PullConfig,
    channel: Channel,
    transfer_id: &str,
    target_root: &Path,
    state_dir: &Path,
    progress: &'p Progress,
) -> Result<Shared<'p>, FilesError> {
    let failed = |problem: Problem| FilesError {
        transfer_id: transfer_id.to_owned(),
        problem,
    };
    if !is_transfer_id(transfer_id) {
        return Err(failed(Problem::BadId));
    }
    let local = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Problem::Local { path, source }
    };
    let journal = Journal::open(state_dir, transfer_id)
        .map_err(|e| failed(local(&state_dir.join("transfers").join(transfer_id))(e)))?;
    let account = match config.account_user.name(target_root) {
        None => None,
        Some(name) => {
            let found = {
                let name = name.clone();
                blocking(move || AccountIds::lookup(&name))
                    .await
                    .map_err(failed)?
                    .map_err(|reason| failed(Problem::Internal(reason)))?
            };
            if found.is_none() {
                tracing::warn!(
                    message = "the account's user does not exist on this host; no entry keeps set-user-id or set-group-id bits",
                    transfer_id,
                    account_user = name,
                );
            }
            found
        }
    };
    let root = {
        let target_root = target_root.to_path_buf();
        blocking(move || {
            std::fs::create_dir_all(&target_root).map_err(local(&target_root))?;
            Root::open(&target_root).map_err(|errno| local(&target_root)(errno.into()))
        })
        .await
        .map_err(failed)?
        .map_err(failed)?
    };
    Ok(Shared {
        transfer_id: transfer_id.to_owned(),
        root: Arc::new(root),
        cache: target_cache(target_root),
        journal: Arc::new(journal),
        client: file_source_client(channel),
        config,
        account,
        progress,
        tally: Tally::default(),
        stop: AtomicBool::new(false),
    })
}

/// A unit of content work for one stream.
enum Job {
    Large(Entry, bool),
    Batch(Vec<Entry>),
    /// Small files whose content came with the changes: written, nothing
    /// read from the source.
    Sent(Vec<(Entry, WholeFile)>),
}

/// Most files of content already here written by one job.
const SENT_FILES_PER_JOB: usize = 64;

/// One attempt at the whole tree.
async fn attempt(shared: &Shared<'_>, report: &mut FilesReport) -> Result<(), Problem> {
    let started = Instant::now();
    let scanning = {
        let root = shared.root.clone();
        let cache = shared.cache.clone();
        blocking(move || scan::scan_map(&root, Some(&cache)))
    };
    let (manifest, local) = tokio::join!(
        manifest::fetch(
            &shared.client,
            &shared.transfer_id,
            shared.config.stall_timeout,
            shared.account.clone(),
        ),
        scanning
    );
    let manifest = manifest?;
    // The source answers again: whatever outage the pull waited out is over.
    if shared
        .progress
        .waiting()
        .is_some_and(|waiting| waiting.what == SOURCE_FILES)
    {
        shared.progress.set_waiting(None);
    }
    let mut local = local?.map_err(Problem::Scan)?;
    for path in shared.config.resend.iter() {
        if let Some(entry) = local.get_mut(path) {
            entry.mtime = scan::Mtime::UNKNOWN;
        }
    }
    let entries = Arc::new(manifest.entries);
    report.entries = entries.len() as u64;
    report.set_id_removed = manifest.set_id_removed;
    report.set_id_examples = manifest.set_id_examples;
    if report.set_id_removed > 0 {
        tracing::warn!(
            message = "set-user-id or set-group-id bits removed: the entries are not the account's own",
            transfer_id = shared.transfer_id,
            entries = report.set_id_removed,
            examples = ?report.set_id_examples,
        );
    }
    let files: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.kind == scan::Kind::File)
        .collect();
    report.files = files.len() as u64;
    report.bytes = files.iter().map(|e| e.data_bytes()).sum();
    shared.set_totals(report.bytes, report.files);

    let plan = {
        let root = shared.root.clone();
        let entries = entries.clone();
        let sizes = Sizes {
            small_file_max: shared.config.small_file_max,
        };
        blocking(move || plan::prepare(&root, &entries, local, sizes)).await??
    };
    apply_plan(shared, report, plan, HashMap::new(), started).await
}

/// Carries out a [`Plan`] (its structural part is done): content on
/// several streams, then links, metadata, deletions, directories, and the
/// final sync. Shared by full pulls and catch-up passes; the small files
/// of `sent` (content a pass's source sent with the changes, checked to
/// be of files of the plan's entries) are written from it, not read.
pub(super) async fn apply_plan(
    shared: &Shared<'_>,
    report: &mut FilesReport,
    plan: Plan,
    mut sent: HashMap<RelPath, WholeFile>,
    started: Instant,
) -> Result<(), Problem> {
    let structure_changed = plan.replaced + plan.created > 0;
    let content_before = shared.tally.content_changes();
    shared.unchanged(&plan.unchanged);
    let Plan {
        large,
        small,
        metadata,
        symlinks,
        specials,
        hardlinks,
        extraneous,
        dirs,
        dirs_as_wanted,
        ..
    } = plan;
    tracing::info!(
        message = "compared the source's tree with the copy",
        transfer_id = shared.transfer_id,
        large = large.len(),
        small = small.len(),
        metadata = metadata.len(),
        extraneous = extraneous.len(),
        seconds = started.elapsed().as_secs_f64(),
    );

    // Content, on several streams.
    let mut jobs: VecDeque<Job> = large
        .into_iter()
        .map(|(entry, old)| Job::Large(entry, old))
        .collect();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut here = Vec::new();
    for entry in small {
        if let Some(content) = sent.remove(&entry.path) {
            here.push((entry, content));
            if here.len() >= SENT_FILES_PER_JOB {
                jobs.push_front(Job::Sent(std::mem::take(&mut here)));
            }
            continue;
        }
        batch_bytes += entry.size;
        batch.push(entry);
        if batch.len() >= shared.config.batch_files || batch_bytes >= shared.config.batch_bytes {
            jobs.push_back(Job::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        jobs.push_back(Job::Batch(batch));
    }
    if !here.is_empty() {
        jobs.push_front(Job::Sent(here));
    }
    let queue = Mutex::new(jobs);
    let workers = (0..shared.config.streams.max(1)).map(|_| worker(shared, &queue));
    let results = futures_util::future::join_all(workers).await;
    // The first failure is the one to report (the others often follow it).
    let mut first_failure = None;
    for result in results {
        if let Err(problem) = result {
            first_failure.get_or_insert(problem);
        }
    }
    if let Some(problem) = first_failure {
        return Err(problem);
    }

    // Links, metadata, deletions, directories.
    let content_changed = shared.tally.content_changes() > content_before;
    let root = shared.root.clone();
    let transfer_id = shared.transfer_id.clone();
    let durable = shared.config.durable;
    let (links_made, metadata_updated, deleted) = blocking(move || {
        let mut links = 0u64;
        for (path, first) in &hardlinks {
            if apply::place_hardlink(&root, &transfer_id, path, first)? {
                links += 1;
            }
        }
        for entry in &symlinks {
            apply::place_symlink(&root, &transfer_id, entry)?;
            links += 1;
        }
        for entry in &specials {
            apply::place_special(&root, &transfer_id, entry)?;
            links += 1;
        }
        let mut updated = 0u64;
        for entry in &metadata {
            apply::fix_meta(&root, entry)?;
            updated += 1;
        }
        let mut deleted = 0u64;
        for path in &extraneous {
            // Temporary files of this or an earlier pull go too, uncounted.
            if apply::remove(&root, path)? && !apply::is_part_name(path.name()) {
                deleted += 1;
            }
        }
        // Directories are settled (owner, mode, attributes, then time, as
        // writing into them changed it) deepest first; when this pull
        // wrote nothing at all, those found as wanted are left alone (a
        // refresh of an unchanged tree opens none of them again).
        let wrote_nothing =
            !structure_changed && !content_changed && links + updated == 0 && extraneous.is_empty();
        let mut settled = false;
        for (entry, xattrs_equal) in dirs.iter().rev() {
            if wrote_nothing && dirs_as_wanted.contains(&entry.path) {
                continue;
            }
            settled |= apply::settle_dir(&root, entry, *xattrs_equal)?;
        }
        // Written content is durable when the pull returns. Small files
        // are not synced one by one (that would cost more than the copy):
        // one syncfs covers them all, when anything was written.
        let wrote =
            structure_changed || content_changed || settled || links + updated + deleted > 0;
        if durable && wrote {
            nix::unistd::syncfs(root.fd()).map_err(|errno| apply::ApplyError {
                path: RelPath::root(),
                op: "sync the file system",
                source: errno.into(),
            })?;
        }
        Ok::<_, apply::ApplyError>((links, updated, deleted))
    })
    .await??;
    report.links_made = links_made;
    report.metadata_updated = metadata_updated;
    report.deleted = deleted;
    Ok(())
}

/// Takes jobs off the queue until it is empty or another stream failed.
async fn worker(shared: &Shared<'_>, queue: &Mutex<VecDeque<Job>>) -> Result<(), Problem> {
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(job) = job else {
            return Ok(());
        };
        let result = match job {
            Job::Large(entry, old) => {
                receive::receive_large(shared, &entry, old)
                    .await
                    .map(|received| {
                        shared.finished(&entry, &received);
                        Vec::new()
                    })
            }
            Job::Batch(files) => receive::receive_batch(shared, files)
                .await
                .map(|outcome| outcome.requeue),
            Job::Sent(files) => receive::write_sent(shared, files)
                .await
                .map(|outcome| outcome.requeue),
        };
        match result {
            Ok(requeue) => {
                let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
                for entry in requeue {
                    // The file may be there in an older version, or not.
                    queue.push_back(Job::Large(entry, true));
                }
            }
            Err(problem) => {
                shared.stop.store(true, Ordering::Relaxed);
                return Err(problem);
            }
        }
    }
}
