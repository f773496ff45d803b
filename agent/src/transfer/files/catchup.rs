//! The target's catch-up pass: brings a copy that matched the source's
//! home at some point up to date by comparing only the paths the source's
//! change journal names (`navette.v1.FileChanges`), never walking either
//! tree. When the journal cannot be trusted, the pass compares the whole
//! tree instead (the full [`pull`](super::pull)), and says so; when that is
//! not allowed (inside the freeze), it changes nothing and says a full
//! comparison is needed, for the caller to make before freezing again.
//!
//! The source's answer is untrusted input like a manifest, and goes
//! through the same checks before anything is written: every entry is
//! read by [`from_wire`] (owners and ACL ids by name, refused when
//! unknown here), its set-id bits go through [`SetIdRule`], and the
//! entries must form a tree: each one's parent a directory listed before
//! it in the same answer (the source lists the directories every changed
//! path is in, up to the home), hard links to an earlier file of the
//! answer, no path twice. A path under a symbolic link therefore never
//! reaches the target, and every write goes through the same
//! [`Root`](super::beneath::Root) as a full pull's. Content the source
//! sends with the answer must be of a regular file it lists, once, and is
//! written only if it verifies, as `ReadFiles`' content is. Paths gone on
//! the source are removed from the copy, only inside it (never through a
//! link).
//!
//! Then it is a pull restricted to those paths, most changed small files'
//! content in the answer (in the messages after the entries; the target's
//! entries at the same paths are read, [`Lookup`], while it comes),
//! compared and brought in line by
//! [`plan`](super::plan) and [`apply_plan`](super::pull::apply_plan),
//! except that a small file's new content is written over its old version
//! where [`open_in_place`](super::apply::open_in_place) allows: nothing
//! serves from the copy before the switch. A durable copy's pass syncs
//! what it changed one by one (the files it wrote, the directories it
//! named or removed something in: not the untouched ancestors, nor the
//! directory of a file written over its old version; on a few threads)
//! instead of the whole filesystem, whose other writers a pass inside the
//! freeze must not wait for. A pass asked to defer its sync (converging,
//! long before the switch) records the files it is about to write instead
//! ([`unsynced`](super::unsynced)), and the next pass that syncs syncs
//! them too; after a restart of this host, the record makes the pass
//! compare the whole tree and send those files again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use navette_proto::v1::file_changes_client::FileChangesClient;
use navette_proto::v1::{ChangedEntries, ListChangesRequest, WholeFile};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use tonic::transport::Channel;

use super::apply::ApplyError;
use super::beneath::Root;
use super::path::RelPath;
use super::plan::{self, Changes, Sizes};
use super::pull::{FilesReport, PullConfig, apply_plan, open, pull_with};
use super::receive::blocking;
use super::scan::{Entry, Kind, Lookup};
use super::setid::SetIdRule;
use super::unsynced::Unsynced;
use super::wire::from_wire;
use super::{FilesError, MAX_MESSAGE_SIZE, Problem, ids::IdMap};
use crate::transfer::progress::Progress;

/// Which journal a pass reads, and what the copy is known to match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    pub journal_id: String,
    /// The epoch of the previous pass's report (or the journal's start).
    pub journal_epoch: u64,
    /// The sequence of the previous pass's report (0 for the first).
    pub applied_sequence: u64,
    /// Compare the whole tree when the journal cannot be trusted.
    pub allow_full_comparison: bool,
    /// Leave what is written unsynced, recorded for the next pass without
    /// it to sync (see [`unsynced`](super::unsynced)).
    pub defer_sync: bool,
}

/// How a pass went about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only the journal's paths were compared.
    Journal,
    /// The journal could not be trusted: the whole tree was compared.
    FullComparison,
    /// The journal could not be trusted, and nothing was changed.
    FullComparisonNeeded,
}

/// What a pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatchUpReport {
    pub mode: Mode,
    /// Why the journal was not trusted.
    pub untrusted: Option<String>,
    /// No journal runs on the source under that id.
    pub journal_missing: bool,
    /// What the next pass names.
    pub journal_epoch: u64,
    pub applied_sequence: u64,
    /// Entries compared with the copy (changed paths, the directories they
    /// are in, and paths gone; or the whole manifest for a full comparison).
    pub entries_compared: u64,
    /// A journal pass's paths: changed, the directories they are in, and
    /// gone (what the freeze verifies). Empty for a full comparison.
    pub changed: Vec<RelPath>,
    /// What was sent, written and removed (as a pull reports it).
    pub files: FilesReport,
    /// Entries synced by this pass (its changes and those left unsynced
    /// before it).
    pub synced: u64,
    /// Files written by passes that deferred their sync, not synced yet.
    pub unsynced: u64,
    pub elapsed: Duration,
}

/// The file-changes client for a channel, with message limits that fit a
/// large answer.
pub fn file_changes_client(channel: Channel) -> FileChangesClient<Channel> {
    FileChangesClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// The answer's entries and paths gone, checked.
struct Checked {
    entries: Vec<Entry>,
    gone: Vec<RelPath>,
    /// Content in the answer's first message, not checked yet (see
    /// [`contents_checked`]).
    contents: Vec<WholeFile>,
}

/// The answer's entries and paths gone, checked: owners mapped, set-id
/// bits the rule does not keep removed, and every entry's parent a
/// directory listed before it. The error names the path and why.
fn checked(answer: ChangedEntries, rule: &mut SetIdRule) -> Result<Checked, Problem> {
    let ChangedEntries {
        entries: wire,
        gone,
        contents: sent,
        ..
    } = answer;
    let refused = |path: &[u8], reason: String| Problem::Unsafe {
        path: String::from_utf8_lossy(path).into_owned(),
        reason,
    };
    let mut ids = IdMap::default();
    let mut gone_paths = Vec::with_capacity(gone.len());
    let mut gone_set = HashSet::with_capacity(gone.len());
    for raw in gone {
        let path = RelPath::parse(&raw).map_err(|reason| refused(&raw, reason.to_owned()))?;
        if path.is_root() {
            return Err(refused(
                &raw,
                "the home itself is listed as gone".to_owned(),
            ));
        }
        if !gone_set.insert(path.clone()) {
            return Err(refused(&raw, "listed twice as gone".to_owned()));
        }
        gone_paths.push(path);
    }
    let mut listed: HashMap<RelPath, Kind> = HashMap::with_capacity(wire.len());
    let mut entries = Vec::with_capacity(wire.len());
    let mut last: Option<RelPath> = None;
    for line in wire {
        let raw = line.path.clone();
        let mut entry = from_wire(line, &mut ids).map_err(|reason| refused(&raw, reason))?;
        if last.as_ref().is_some_and(|last| *last >= entry.path) {
            return Err(refused(&raw, "listed twice, or out of order".to_owned()));
        }
        if gone_set.contains(&entry.path) {
            return Err(refused(
                &raw,
                "listed both as changed and as gone".to_owned(),
            ));
        }
        if let Some((parent, _)) = entry.path.split_last()
            && listed.get(&parent) != Some(&Kind::Dir)
        {
            return Err(refused(
                &raw,
                "its parent is not a directory listed before it in the changes".to_owned(),
            ));
        }
        if let Kind::Hardlink(first) = &entry.kind
            && !matches!(
                listed.get(first),
                Some(Kind::File | Kind::Fifo | Kind::Socket)
            )
        {
            return Err(refused(
                &raw,
                format!("a hard link to {first}, which is not a file listed before it"),
            ));
        }
        rule.apply(&mut entry);
        listed.insert(entry.path.clone(), entry.kind.clone());
        last = Some(entry.path.clone());
        entries.push(entry);
    }
    Ok(Checked {
        entries,
        gone: gone_paths,
        contents: sent,
    })
}

/// The rest of the answer: content only, up to what was asked in all
/// (`first`, from the first message, included).
async fn more_contents(
    answers: &mut tonic::Streaming<ChangedEntries>,
    first: Vec<WholeFile>,
    stall: Duration,
) -> Result<Vec<WholeFile>, Problem> {
    let mut contents = first;
    let mut bytes: u64 = 0;
    let mut count = |sent: &[WholeFile]| {
        bytes += sent.iter().map(|c| c.data.len() as u64).sum::<u64>();
        match bytes > PASS_CONTENT_BYTES {
            true => Err(Problem::Protocol {
                path: RelPath::root(),
                reason: format!(
                    "the source sent more content than the {PASS_CONTENT_BYTES} bytes asked"
                ),
            }),
            false => Ok(()),
        }
    };
    count(&contents)?;
    loop {
        let more = match tokio::time::timeout(stall, answers.message()).await {
            Err(_) => return Err(Problem::Stalled(stall)),
            Ok(Err(status)) => return Err(Problem::Source(status)),
            Ok(Ok(None)) => return Ok(contents),
            Ok(Ok(Some(more))) => more,
        };
        if !more.entries.is_empty() || !more.gone.is_empty() {
            return Err(Problem::Protocol {
                path: RelPath::root(),
                reason: "entries came after the first message of the changes".to_owned(),
            });
        }
        count(&more.contents)?;
        contents.extend(more.contents);
    }
}

/// The content sent, by path: each must be of a regular file among the
/// `entries`, and come once. The error names the entry and why.
fn contents_checked(
    entries: &[Entry],
    sent: Vec<WholeFile>,
) -> Result<HashMap<RelPath, WholeFile>, Problem> {
    let refused = |path: &[u8], reason: String| Problem::Unsafe {
        path: String::from_utf8_lossy(path).into_owned(),
        reason,
    };
    let mut contents = HashMap::with_capacity(sent.len());
    for content in sent {
        let listed = entries.get(content.index as usize);
        let Some(file) = listed.filter(|entry| entry.kind == Kind::File) else {
            let named = listed.map_or_else(
                || format!("entry {}", content.index).into_bytes(),
                |entry| entry.path.as_bytes().to_vec(),
            );
            return Err(refused(
                &named,
                "content was sent for it, and it is not a regular file of the answer".to_owned(),
            ));
        };
        if contents.insert(file.path.clone(), content).is_some() {
            return Err(refused(
                file.path.as_bytes(),
                "its content was sent twice".to_owned(),
            ));
        }
    }
    Ok(contents)
}

/// One catch-up pass of the home granted for `transfer_id` into
/// `target_root`, which must hold a complete copy of it (a full pull that
/// succeeded, and every pass since). See the module's documentation.
pub async fn catch_up(
    config: PullConfig,
    channel: Channel,
    transfer_id: &str,
    request: &CatchUp,
    target_root: &Path,
    state_dir: &Path,
    progress: &Progress,
) -> Result<CatchUpReport, FilesError> {
    let started = Instant::now();
    let failed = |problem: Problem| FilesError {
        transfer_id: transfer_id.to_owned(),
        problem,
    };
    if !crate::ids::is_transfer_id(&request.journal_id) {
        return Err(failed(Problem::BadId));
    }
    if !target_root.is_dir() {
        return Err(failed(Problem::Internal(format!(
            "{} holds no copy: a catch-up pass follows a full copy",
            target_root.display()
        ))));
    }
    let mut client = file_changes_client(channel.clone());
    let stall = config.stall_timeout;
    let mut answers = tokio::time::timeout(
        stall,
        client.list_changes(ListChangesRequest {
            transfer_id: transfer_id.to_owned(),
            journal_id: request.journal_id.clone(),
            journal_epoch: request.journal_epoch,
            applied_sequence: request.applied_sequence,
            content_bytes: PASS_CONTENT_BYTES,
            content_file_max: config.small_file_max,
        }),
    )
    .await
    .map_err(|_| failed(Problem::Stalled(stall)))?
    .map_err(|status| failed(Problem::Source(status)))?
    .into_inner();
    let answer = tokio::time::timeout(stall, answers.message())
        .await
        .map_err(|_| failed(Problem::Stalled(stall)))?
        .map_err(|status| failed(Problem::Source(status)))?
        .ok_or_else(|| {
            failed(Problem::Protocol {
                path: RelPath::root(),
                reason: "the source ended the changes without a message".to_owned(),
            })
        })?;
    let listed = started.elapsed();
    let local = |path: &Path| {
        let path = path.to_path_buf();
        move |source| failed(Problem::Local { path, source })
    };
    // What earlier passes wrote without syncing: after a restart of this
    // host, the copy cannot be trusted at those files.
    let durable = config.durable;
    let mut unsynced = match durable {
        true => Some(Unsynced::open(state_dir, transfer_id).map_err(local(state_dir))?),
        false => None,
    };
    let lost = unsynced
        .as_ref()
        .filter(|record| record.lost_with_a_restart())
        .map(|record| {
            format!(
                "this host restarted while files written by earlier passes ({}) were not synced to its disk (their content may be lost whatever their size and time say): they are sent again",
                record.files.len()
            )
        });
    let (journal_epoch, sequence) = (answer.journal_epoch, answer.sequence);
    let report = |mode, files: FilesReport, compared| CatchUpReport {
        mode,
        untrusted: None,
        journal_missing: false,
        journal_epoch,
        applied_sequence: sequence,
        entries_compared: compared,
        changed: Vec::new(),
        files,
        synced: 0,
        unsynced: 0,
        elapsed: started.elapsed(),
    };
    if answer.journal_missing || !answer.untrusted.is_empty() || lost.is_some() {
        let why = if answer.journal_missing {
            format!(
                "no change journal {} runs on the source (never started, stopped, or lost when its agent restarted): start it again, then pass again",
                request.journal_id
            )
        } else if !answer.untrusted.is_empty() {
            answer.untrusted.clone()
        } else {
            lost.clone().unwrap_or_default()
        };
        // Without a journal running, a full comparison now would not make
        // the next pass trustworthy: the journal must start first.
        if !request.allow_full_comparison || answer.journal_missing {
            tracing::warn!(
                message = "catch-up: a full comparison is needed",
                transfer_id,
                journal_id = request.journal_id,
                why
            );
            return Ok(CatchUpReport {
                untrusted: Some(why),
                journal_missing: answer.journal_missing,
                // Named again by the next pass, which then cannot trust the
                // journal either, and compares the whole tree.
                journal_epoch: request.journal_epoch,
                applied_sequence: request.applied_sequence,
                ..report(Mode::FullComparisonNeeded, FilesReport::default(), 0)
            });
        }
        tracing::warn!(
            message = "catch-up: the journal is not trusted; comparing the whole tree",
            transfer_id,
            journal_id = request.journal_id,
            why
        );
        // A durable full pull ends with the filesystem synced: what was
        // recorded unsynced is then on disk, or was sent again.
        let resend = unsynced
            .as_ref()
            .filter(|record| record.lost_with_a_restart())
            .map(|record| record.files.clone())
            .unwrap_or_default();
        let files = pull_with(
            PullConfig {
                resend: resend.into(),
                ..config
            },
            channel,
            transfer_id,
            target_root,
            state_dir,
            progress,
        )
        .await?;
        if let Some(record) = &mut unsynced {
            record.clear().map_err(local(record.path()))?;
        }
        let entries = files.entries;
        return Ok(CatchUpReport {
            untrusted: Some(why),
            ..report(Mode::FullComparison, files, entries)
        });
    }

    // Made durable below, entry by entry: `syncfs` would flush every
    // other write waiting on the filesystem too (other accounts' on a
    // shared host), which a pass of a few paths must not wait for. Or
    // recorded, for a later pass to sync.
    let defer = request.defer_sync;
    // A pass moves few files: in small batches, so that they are written
    // on several streams at once rather than one after the other.
    // Nothing serves from the copy before the switch: a small file's new
    // content is written over its old version (see `open_in_place`).
    let config = PullConfig {
        durable: false,
        in_place: true,
        batch_files: config.batch_files.min(PASS_BATCH_FILES),
        ..config
    };
    let shared = open(
        config,
        channel,
        transfer_id,
        target_root,
        state_dir,
        progress,
    )
    .await?;
    let mut rule = SetIdRule::new(shared.account.clone());
    let Checked {
        entries,
        gone,
        contents,
    } = checked(answer, &mut rule).map_err(failed)?;
    let mut files = FilesReport {
        entries: entries.len() as u64,
        set_id_removed: rule.removed,
        set_id_examples: rule.examples,
        ..FilesReport::default()
    };
    if files.set_id_removed > 0 {
        tracing::warn!(
            message = "set-user-id or set-group-id bits removed: the entries are not the account's own",
            transfer_id,
            entries = files.set_id_removed,
            examples = ?files.set_id_examples,
        );
    }
    let compared = (entries.len() + gone.len()) as u64;
    let changed: Vec<RelPath> = entries
        .iter()
        .map(|e| e.path.clone())
        .chain(gone.iter().cloned())
        .collect();
    let regular: Vec<&Entry> = entries.iter().filter(|e| e.kind == Kind::File).collect();
    files.files = regular.len() as u64;
    files.bytes = regular.iter().map(|e| e.data_bytes()).sum();
    shared.set_totals(files.bytes, files.files);
    // The copy's entries at the same paths, and nothing else, read while
    // the rest of the content comes.
    let looked_up = {
        let root = shared.root.clone();
        let cache = shared.cache.clone();
        let mut paths = changed.clone();
        paths.sort();
        blocking(move || -> Result<_, Problem> {
            let mut lookup = Lookup::new(Some(&*cache));
            let mut local = BTreeMap::new();
            for path in paths {
                if let Some(entry) = lookup.entry(&root, &path)? {
                    local.insert(path, entry);
                }
            }
            Ok(local)
        })
    };
    let (local, contents) = tokio::join!(looked_up, more_contents(&mut answers, contents, stall));
    let local = local.map_err(failed)?.map_err(failed)?;
    let contents = contents_checked(&entries, contents.map_err(failed)?).map_err(failed)?;
    let (plan, changes, unsynced) = {
        let root = shared.root.clone();
        let sizes = Sizes {
            small_file_max: shared.config.small_file_max,
        };
        blocking(move || -> Result<_, Problem> {
            let plan = plan::prepare(&root, &entries, local, sizes).map_err(Problem::Apply)?;
            // The files about to be written, on disk before they are.
            let changes = unsynced.is_some().then(|| plan.changes());
            if let (Some(record), Some(changes)) = (&mut unsynced, &changes) {
                record
                    .record_files(&changes.files)
                    .map_err(|source| Problem::Local {
                        path: record.path().to_path_buf(),
                        source,
                    })?;
            }
            Ok((plan, changes, unsynced))
        })
        .await
        .map_err(failed)?
        .map_err(failed)?
    };
    let planned = started.elapsed();
    apply_plan(&shared, &mut files, plan, contents, started)
        .await
        .map_err(failed)?;
    let applied = started.elapsed();
    let (mut synced, mut left_unsynced) = (0, 0);
    if let (Some(changes), Some(mut record)) = (changes, unsynced) {
        let root = shared.root.clone();
        let over_old = shared.tally.written_over_old();
        (synced, left_unsynced) = blocking(move || -> Result<(u64, u64), Problem> {
            let record_path = record.path().to_path_buf();
            let at_record = |source| Problem::Local {
                path: record_path.clone(),
                source,
            };
            if defer {
                record
                    .record_dirs(changes.dirs_to_sync(&over_old))
                    .map_err(at_record)?;
                return Ok((0, record.files.len() as u64));
            }
            let synced =
                sync_changes(&root, &changes, &over_old, &record).map_err(Problem::Apply)?;
            record.clear().map_err(at_record)?;
            Ok((synced, 0))
        })
        .await
        .map_err(failed)?
        .map_err(failed)?;
    }
    let _ = shared.journal.complete();
    shared.tally.fill(&mut files);
    tracing::info!(
        message = "caught up from the journal",
        transfer_id,
        journal_id = request.journal_id,
        sequence,
        entries_compared = compared,
        listed_ms = listed.as_millis() as u64,
        compared_ms = planned.as_millis() as u64,
        applied_ms = applied.as_millis() as u64,
        synced,
        unsynced = left_unsynced,
        files_sent = files.files_sent,
        bytes_sent = files.bytes_sent,
        deleted = files.deleted,
        seconds = started.elapsed().as_secs_f64(),
    );
    Ok(CatchUpReport {
        changed,
        synced,
        unsynced: left_unsynced,
        ..report(Mode::Journal, files, compared)
    })
}

/// Most small files in one batch of a pass.
const PASS_BATCH_FILES: usize = 16;

/// How much of the changed small files' content a pass asks to come with
/// the changes (one message, no round trip per batch); the rest is read
/// in batches.
const PASS_CONTENT_BYTES: u64 = 16 * 1024 * 1024;

/// How many threads sync a pass's entries: concurrent `fsync`s share the
/// filesystem's journal commits.
const SYNC_THREADS: usize = 8;

/// Makes what the pass changed durable, with what earlier passes left
/// unsynced (`record`): each file written and each directory in which a
/// name was made or removed or whose metadata was set (not the untouched
/// ancestors the source lists, nor the directory of a file written over
/// its old version, `over_old`: each `fsync` costs a write to the device
/// and a flush of its cache, even with nothing to write). Through the
/// root, never following a link; an entry gone meanwhile is not an error.
/// Returns how many entries it synced.
fn sync_changes(
    root: &Root,
    changes: &Changes,
    over_old: &HashSet<RelPath>,
    record: &Unsynced,
) -> Result<u64, ApplyError> {
    let files: BTreeSet<&RelPath> = changes.files.iter().chain(&record.files).collect();
    let dirs: BTreeSet<&RelPath> = changes.dirs_to_sync(over_old).chain(&record.dirs).collect();
    let wanted: Vec<(&RelPath, bool)> = files
        .into_iter()
        .map(|path| (path, false))
        .chain(dirs.into_iter().map(|path| (path, true)))
        .collect();
    let chunk = wanted.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = wanted
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .try_for_each(|(path, is_dir)| sync_one(root, path, *is_dir))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker.join().unwrap_or_else(|_| {
                Err(ApplyError {
                    path: RelPath::root(),
                    op: "sync",
                    source: std::io::Error::other("a thread syncing the entries panicked"),
                })
            })
        })
    })?;
    Ok(wanted.len() as u64)
}

fn sync_one(root: &Root, path: &RelPath, is_dir: bool) -> Result<(), ApplyError> {
    let synced = if is_dir {
        root.dir(path).and_then(|fd| nix::unistd::fsync(fd.as_fd()))
    } else {
        root.open_file(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK)
            .and_then(|fd| nix::unistd::fsync(fd.as_fd()))
    };
    match synced {
        Ok(()) | Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(()),
        Err(errno) => Err(ApplyError {
            path: path.clone(),
            op: "sync",
            source: errno.into(),
        }),
    }
}
