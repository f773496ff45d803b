//! The source's side: `navette.v1.FileSource`, served to the target agent
//! named by the transfer's grant, over the granted home only; and
//! `navette.v1.FileChanges`, the changes a [journal](super::journals) of
//! that home recorded, read as entries of it for a catch-up pass, with the
//! content of the small files among them (as much as the target asks).
//!
//! Every call starts with [`Grants::authorise`]; walking and reading run
//! on blocking threads and stream through bounded channels, so a slow
//! target slows the source down instead of filling its memory. This module
//! is the only one of the file transfer that maps errors to
//! `tonic::Status`.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use navette_proto::v1::file_changes_server::{FileChanges, FileChangesServer};
use navette_proto::v1::file_source_server::{FileSource, FileSourceServer};
use navette_proto::v1::{
    ChangedEntries, FileChunk, ListChangesRequest, ListTreeRequest, ReadFileRequest,
    ReadFilesRequest, TreeEntries, TreeEntry, WholeFile, WholeFiles,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::MAX_MESSAGE_SIZE;
use super::beneath::Root;
use super::ids::IdNames;
use super::journals::Journals;
use super::path::RelPath;
use super::read;
use super::scan::{self, XattrCache};
use super::wire::to_wire;
use crate::transfer::grants::{Grant, Grants};

/// Most paths one `ReadFiles` call may ask for.
pub const MAX_PATHS_PER_CALL: usize = 4096;
/// Manifest entries per message.
const ENTRIES_PER_MESSAGE: usize = 512;
/// Small files go out in messages of about this many bytes (one file may
/// make a message larger, up to `read::WHOLE_FILE_MAX`).
const WHOLE_FILES_BYTES: usize = 1024 * 1024;
const WHOLE_FILES_PER_MESSAGE: usize = 256;

/// How many homes' attribute caches a source keeps.
const CACHED_HOMES: usize = 32;

/// The `navette.v1.FileSource` handlers.
#[derive(Clone, Debug)]
pub struct FileSourceService {
    /// Which transfer may read which home, and by whom.
    grants: Arc<Grants>,
    /// Attributes of the files of recently listed homes, so that listing
    /// an unchanged home again (a refresh) costs a `stat` per file.
    caches: Arc<Mutex<HashMap<PathBuf, Arc<XattrCache>>>>,
}

impl FileSourceService {
    pub fn new(grants: Arc<Grants>) -> FileSourceService {
        FileSourceService {
            grants,
            caches: Arc::default(),
        }
    }

    fn cache_for(&self, home: &Path) -> Arc<XattrCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        if !caches.contains_key(home) && caches.len() >= CACHED_HOMES {
            caches.clear();
        }
        caches.entry(home.to_path_buf()).or_default().clone()
    }

    /// The tonic service, with message limits that fit the blocks sent.
    pub fn into_server(self) -> FileSourceServer<FileSourceService> {
        FileSourceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

/// The home a grant serves.
fn home_of(grant: &Grant) -> Result<PathBuf, Status> {
    grant.home.clone().ok_or_else(|| {
        Status::failed_precondition(format!(
            "transfer {} grants no files (no home)",
            grant.transfer_id
        ))
    })
}

/// Opens the granted home on a blocking thread.
async fn open_home(grant: &Grant) -> Result<Arc<Root>, Status> {
    let home = home_of(grant)?;
    let transfer_id = grant.transfer_id.clone();
    tokio::task::spawn_blocking(move || {
        Root::open(&home).map(Arc::new).map_err(|errno| {
            tracing::warn!(message = "granted home not readable", transfer_id, home = %home.display(), %errno);
            Status::failed_precondition(format!(
                "transfer {transfer_id}: the home {} cannot be opened as a directory: {errno}",
                home.display()
            ))
        })
    })
    .await
    .map_err(|error| Status::internal(format!("opening the home: {error}")))?
}

fn parse_path(transfer_id: &str, bytes: &[u8]) -> Result<RelPath, Status> {
    match RelPath::parse(bytes) {
        Ok(path) if !path.is_root() => Ok(path),
        Ok(_) => Err(Status::invalid_argument(format!(
            "transfer {transfer_id}: the home itself is not a file"
        ))),
        Err(reason) => Err(Status::invalid_argument(format!(
            "transfer {transfer_id}: path {:?} refused: {reason}",
            String::from_utf8_lossy(bytes)
        ))),
    }
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl FileSource for FileSourceService {
    type ListTreeStream = Stream<TreeEntries>;

    async fn list_tree(
        &self,
        request: Request<ListTreeRequest>,
    ) -> Result<Response<Self::ListTreeStream>, Status> {
        let transfer_id = request.get_ref().transfer_id.clone();
        let grant = self.grants.authorise(&request, &transfer_id)?;
        let root = open_home(&grant).await?;
        let cache = self.cache_for(root.path());
        let (sender, receiver) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut listed: u64 = 0;
            let mut names = IdNames::default();
            let mut batch = Vec::with_capacity(ENTRIES_PER_MESSAGE);
            let walked = scan::walk(&root, Some(&cache), &mut |entry| {
                listed += 1;
                batch.push(to_wire(entry, &mut names));
                if batch.len() < ENTRIES_PER_MESSAGE {
                    return true;
                }
                let entries =
                    std::mem::replace(&mut batch, Vec::with_capacity(ENTRIES_PER_MESSAGE));
                sender.blocking_send(Ok(TreeEntries { entries })).is_ok()
            });
            let last = match walked {
                Ok(()) => {
                    tracing::info!(
                        message = "listed the home",
                        transfer_id,
                        entries = listed,
                        seconds = started.elapsed().as_secs_f64()
                    );
                    Ok(TreeEntries { entries: batch })
                }
                Err(error) => {
                    tracing::warn!(message = "listing the home failed", transfer_id, %error);
                    Err(Status::internal(format!(
                        "transfer {transfer_id}: listing the home failed: {error}"
                    )))
                }
            };
            let _ = sender.blocking_send(last);
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type ReadFileStream = Stream<FileChunk>;

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let transfer_id = request.get_ref().transfer_id.clone();
        let grant = self.grants.authorise(&request, &transfer_id)?;
        let ReadFileRequest {
            path,
            block_size,
            known_blocks,
            ..
        } = request.into_inner();
        let path = parse_path(&transfer_id, &path)?;
        let root = open_home(&grant).await?;
        let block = if block_size == 0 {
            read::DEFAULT_BLOCK
        } else {
            block_size
        };
        let block = block.clamp(read::MIN_BLOCK, read::MAX_BLOCK);
        // About 4 MiB read ahead, whatever the block size.
        let ahead = usize::try_from((4 * 1024 * 1024) / block)
            .unwrap_or(2)
            .max(2);
        let (sender, receiver) = mpsc::channel(ahead);
        tokio::task::spawn_blocking(move || {
            let read = read::read_file(&root, &path, block, &known_blocks, &mut |chunk| {
                sender.blocking_send(Ok(chunk)).is_ok()
            });
            if let Err(error) = read {
                tracing::warn!(message = "reading a file failed", transfer_id, %error);
                let _ = sender.blocking_send(Err(Status::internal(format!(
                    "transfer {transfer_id}: {error}"
                ))));
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type ReadFilesStream = Stream<WholeFiles>;

    async fn read_files(
        &self,
        request: Request<ReadFilesRequest>,
    ) -> Result<Response<Self::ReadFilesStream>, Status> {
        let transfer_id = request.get_ref().transfer_id.clone();
        let grant = self.grants.authorise(&request, &transfer_id)?;
        let ReadFilesRequest { paths, .. } = request.into_inner();
        if paths.len() > MAX_PATHS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "transfer {transfer_id}: {} paths asked in one call; at most {MAX_PATHS_PER_CALL}",
                paths.len()
            )));
        }
        let paths = paths
            .iter()
            .map(|bytes| parse_path(&transfer_id, bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let root = open_home(&grant).await?;
        let (sender, receiver) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            let mut bytes = 0;
            let read = read::read_whole_files(&root, &paths, &mut |file| {
                bytes += file.data.len();
                files.push(file);
                if bytes < WHOLE_FILES_BYTES && files.len() < WHOLE_FILES_PER_MESSAGE {
                    return true;
                }
                bytes = 0;
                let files = std::mem::take(&mut files);
                sender.blocking_send(Ok(WholeFiles { files })).is_ok()
            });
            let last = match read {
                Ok(()) => Ok(WholeFiles { files }),
                Err(error) => {
                    tracing::warn!(message = "reading files failed", transfer_id, %error);
                    Err(Status::internal(format!("transfer {transfer_id}: {error}")))
                }
            };
            let _ = sender.blocking_send(last);
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Most paths one catch-up lists; beyond, comparing the whole tree costs
/// about as much, and the answer says so.
pub const MAX_CHANGED_PATHS: usize = 100_000;

/// The `navette.v1.FileChanges` handlers: a journal's changes, as entries
/// of the granted home.
#[derive(Clone, Debug)]
pub struct FileChangesService {
    grants: Arc<Grants>,
    journals: Arc<Journals>,
}

impl FileChangesService {
    pub fn new(grants: Arc<Grants>, journals: Arc<Journals>) -> FileChangesService {
        FileChangesService { grants, journals }
    }

    pub fn into_server(self) -> FileChangesServer<FileChangesService> {
        FileChangesServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

/// The changed paths with the directories they are in, up to the home
/// (a change moves its directory's time; and the target accepts an entry
/// only below a directory listed before it), parents first.
fn with_parents(paths: &[PathBuf]) -> BTreeSet<RelPath> {
    let mut all = BTreeSet::new();
    for path in paths {
        // The journal's paths are relative names read from directories:
        // they parse, unless the kernel handed a name no path may hold.
        let Ok(path) = RelPath::parse(path.as_os_str().as_bytes()) else {
            continue;
        };
        let mut parent = path.split_last().map(|(parent, _)| parent);
        all.insert(path);
        while let Some(dir) = parent {
            parent = dir.split_last().map(|(parent, _)| parent);
            if !all.insert(dir) {
                break;
            }
        }
    }
    all
}

/// The changed paths, read.
struct Changed {
    entries: Vec<TreeEntry>,
    gone: Vec<Vec<u8>>,
    /// Why a pass cannot rest on these entries alone, if it cannot.
    untrusted: Option<String>,
    /// The regular files among `entries` that are not sparse: their
    /// position there, path and size.
    files: Vec<(u32, RelPath, u64)>,
}

/// Reads the changed paths below `root` as entries; paths gone apart. A
/// file with several names of which some did not change cannot be kept
/// linked by a pass: that is said as a reason to compare the whole tree.
fn changed_entries(
    root: &Root,
    paths: &BTreeSet<RelPath>,
    cache: &XattrCache,
) -> Result<Changed, scan::ScanError> {
    let mut lookup = scan::Lookup::new(Some(cache));
    let mut names = IdNames::default();
    let (mut entries, mut gone, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for path in paths {
        match lookup.entry(root, path)? {
            Some(entry) => {
                if entry.kind == scan::Kind::File && entry.extents.is_none() {
                    let index = u32::try_from(entries.len()).unwrap_or(u32::MAX);
                    files.push((index, entry.path.clone(), entry.size));
                }
                entries.push(to_wire(entry, &mut names));
            }
            None => gone.push(path.as_bytes().to_vec()),
        }
    }
    let untrusted = lookup.names_missing().map(|_| {
        "a file with several names (hard links) changed, and not all of its names did: \
         comparing the whole tree keeps them linked"
            .to_owned()
    });
    Ok(Changed {
        entries,
        gone,
        untrusted,
        files,
    })
}

/// Most content an answer of `ListChanges` carries, whatever is asked: the
/// rest of the message limit is for its entries.
const MAX_CONTENT_BYTES: u64 = MAX_MESSAGE_SIZE as u64 / 2;

/// Sends the content of the `files` (position in the answer, path, size
/// listed) of at most `file_max` bytes, in order, while their sizes add up
/// to at most `budget` (capped at [`MAX_CONTENT_BYTES`]), a message of
/// about [`WHOLE_FILES_BYTES`] at a time, each read on a few threads. A
/// file gone or grown too large since it was listed is left out: the
/// target reads it with `ReadFiles`, which says so. Returns the files and
/// bytes sent; stops when `send` says the target is gone.
fn send_contents(
    root: &Root,
    files: &[(u32, RelPath, u64)],
    budget: u64,
    file_max: u64,
    send: &mut dyn FnMut(Vec<WholeFile>) -> bool,
) -> Result<(u64, u64), read::ReadError> {
    let budget = budget.min(MAX_CONTENT_BYTES);
    let file_max = file_max.min(read::WHOLE_FILE_MAX);
    // What fits, by the sizes listed, in messages of about the same size.
    let (mut left, mut groups) = (budget, vec![Vec::new()]);
    let mut group_bytes = 0;
    for (index, path, size) in files {
        if *size > file_max || *size > left {
            continue;
        }
        left -= size;
        if group_bytes + size > WHOLE_FILES_BYTES as u64 && group_bytes > 0 {
            groups.push(Vec::new());
            group_bytes = 0;
        }
        group_bytes += size;
        if let Some(group) = groups.last_mut() {
            group.push((*index, path));
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, CONTENT_THREADS);
    // Sizes as read, which may have grown since the listing.
    let (mut left, mut files_sent, mut bytes_sent) = (budget, 0, 0);
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let chunk = group.len().div_ceil(threads).max(CONTENT_FILES_PER_THREAD);
        let read: Vec<Vec<WholeFile>> = std::thread::scope(|scope| {
            let readers: Vec<_> = group
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(index, path)| read::read_whole(root, path, *index))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            readers
                .into_iter()
                .map(|reader| {
                    reader.join().unwrap_or_else(|_| {
                        Err(read::ReadError {
                            path: RelPath::root(),
                            op: "read",
                            source: std::io::Error::other("a thread reading the content panicked"),
                        })
                    })
                })
                .collect::<Result<_, _>>()
        })?;
        let message: Vec<WholeFile> = read
            .into_iter()
            .flatten()
            .filter(|content| {
                let keep = !content.vanished && !content.too_large && content.size <= left;
                if keep {
                    left -= content.size;
                }
                keep
            })
            .collect();
        if message.is_empty() {
            continue;
        }
        files_sent += message.len() as u64;
        bytes_sent += message.iter().map(|c| c.size).sum::<u64>();
        if !send(message) {
            break;
        }
    }
    Ok((files_sent, bytes_sent))
}

/// Threads reading a message's content, at most; each reads at least
/// [`CONTENT_FILES_PER_THREAD`] files.
const CONTENT_THREADS: usize = 4;
const CONTENT_FILES_PER_THREAD: usize = 16;

/// An answer of one message.
fn one_message(answer: ChangedEntries) -> Response<Stream<ChangedEntries>> {
    let (sender, receiver) = mpsc::channel(1);
    let _ = sender.try_send(Ok(answer));
    Response::new(ReceiverStream::new(receiver))
}

#[tonic::async_trait]
impl FileChanges for FileChangesService {
    type ListChangesStream = Stream<ChangedEntries>;

    async fn list_changes(
        &self,
        request: Request<ListChangesRequest>,
    ) -> Result<Response<Self::ListChangesStream>, Status> {
        let transfer_id = request.get_ref().transfer_id.clone();
        let grant = self.grants.authorise(&request, &transfer_id)?;
        let ListChangesRequest {
            journal_id,
            journal_epoch,
            applied_sequence,
            content_bytes,
            content_file_max,
            ..
        } = request.into_inner();
        crate::ids::TransferId::parse("journal_id", &journal_id)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let home = home_of(&grant)?;
        let journals = self.journals.clone();
        let taken = {
            let (journal_id, transfer_id, home) =
                (journal_id.clone(), transfer_id.clone(), home.clone());
            tokio::task::spawn_blocking(move || {
                journals.take(
                    &journal_id,
                    &transfer_id,
                    &home,
                    journal_epoch,
                    applied_sequence,
                )
            })
            .await
            .map_err(|error| Status::internal(format!("taking the changes: {error}")))?
            .map_err(|error| Status::failed_precondition(error.to_string()))?
        };
        let mut answer = ChangedEntries {
            journal_epoch: taken.epoch,
            sequence: taken.sequence,
            journal_missing: taken.missing,
            untrusted: taken.untrusted.clone().unwrap_or_default(),
            ..ChangedEntries::default()
        };
        if taken.missing || taken.untrusted.is_some() {
            tracing::info!(message = "catch-up: the journal is not to be trusted", transfer_id, journal_id, missing = taken.missing, untrusted = ?taken.untrusted);
            return Ok(one_message(answer));
        }
        let paths = with_parents(&taken.paths);
        if paths.len() > MAX_CHANGED_PATHS {
            answer.untrusted = format!(
                "{} paths changed, more than a catch-up lists ({MAX_CHANGED_PATHS}): comparing the whole tree costs about as much",
                paths.len()
            );
            return Ok(one_message(answer));
        }
        let root = open_home(&grant).await?;
        // A pass reads few entries: no attributes cache is worth keeping.
        let cache = XattrCache::default();
        let sequence = taken.sequence;
        let (sender, receiver) = mpsc::channel(4);
        // The entries first, then the content as it is read: the target
        // compares while the content comes.
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let failed = |what: &str, error: String| {
                tracing::warn!(message = "reading the changed paths failed", transfer_id, what, %error);
                Status::internal(format!("transfer {transfer_id}: {what} failed: {error}"))
            };
            let Changed {
                entries,
                gone,
                untrusted,
                files,
            } = match changed_entries(&root, &paths, &cache) {
                Ok(changed) => changed,
                Err(error) => {
                    let _ = sender
                        .blocking_send(Err(failed("reading the changed paths", error.to_string())));
                    return;
                }
            };
            let listed = started.elapsed();
            let (entries_listed, gone_listed) = (entries.len(), gone.len());
            let trusted = untrusted.is_none();
            match untrusted {
                Some(why) => answer.untrusted = why,
                None => (answer.entries, answer.gone) = (entries, gone),
            }
            if sender.blocking_send(Ok(answer)).is_err() || !trusted {
                return;
            }
            let sent = send_contents(
                &root,
                &files,
                content_bytes,
                content_file_max,
                &mut |contents| {
                    sender
                        .blocking_send(Ok(ChangedEntries {
                            contents,
                            ..ChangedEntries::default()
                        }))
                        .is_ok()
                },
            );
            match sent {
                Ok((files_sent, bytes_sent)) => tracing::info!(
                    message = "listed the home's changes",
                    transfer_id,
                    journal_id,
                    sequence,
                    entries = entries_listed,
                    gone = gone_listed,
                    listed_seconds = listed.as_secs_f64(),
                    files_sent,
                    bytes_sent,
                    seconds = started.elapsed().as_secs_f64()
                ),
                Err(error) => {
                    let _ = sender
                        .blocking_send(Err(failed("reading the changed files", error.to_string())));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
