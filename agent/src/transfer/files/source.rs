//! The source's side: `navette.v1.FileSource`, served to the target agent
//! named by the transfer's grant, over the granted home only.
//!
//! Every call starts with [`Grants::authorise`]; walking and reading run
//! on blocking threads and stream through bounded channels, so a slow
//! target slows the source down instead of filling its memory. This module
//! is the only one of the file transfer that maps errors to
//! `tonic::Status`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use navette_proto::v1::file_source_server::{FileSource, FileSourceServer};
use navette_proto::v1::{
    FileChunk, ListTreeRequest, ReadFileRequest, ReadFilesRequest, TreeEntries, WholeFiles,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::MAX_MESSAGE_SIZE;
use super::beneath::Root;
use super::ids::IdNames;
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
