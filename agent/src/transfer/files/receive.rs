//! The target's receiving of file content.
//!
//! Large files come block by block (`ReadFile`) into a temporary file in
//! their directory: the target first offers the hashes of the blocks it
//! holds (from an earlier attempt's temporary file, else from the old
//! version of the file), and the source sends only the others. Small files
//! come many to a stream (`ReadFiles`), whole. Either way every block is
//! checked against its SHA-256 as it arrives, the file digest is checked
//! before the temporary file is renamed into place, and a file the source
//! saw change while reading it is read again.
//!
//! Network reading is async (here); checking and writing run on a blocking
//! thread per stream ([`part`](super::part) for large files), fed through a
//! bounded channel.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use navette_proto::v1::file_chunk::Piece;
use navette_proto::v1::{ReadFileRequest, ReadFilesRequest, WholeFile, WholeFiles};
use tokio::sync::mpsc;

use super::apply::{self, ApplyError, at};
use super::beneath::Root;
use super::digest::sha256;
use super::part::{PIECES_BYTES, PartWriter, Written};
use super::scan::{Entry, Mtime, XattrCache};
use super::shared::Shared;
use super::{Problem, path::RelPath};

/// What became of one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// In place. `changed`: it kept changing while read, and the copy is
    /// dated just before the source's time so a refresh sends it again.
    /// `over_old`: written over its old version, no name changed in its
    /// directory ([`apply::open_in_place`]).
    Done { changed: bool, over_old: bool },
    /// No longer a regular file on the source: removed here too.
    Vanished,
}

/// Receives the large (or sparse) file `wanted`; `old_regular` says the
/// target holds an older version at its path.
pub async fn receive_large(
    shared: &Shared<'_>,
    wanted: &Entry,
    old_regular: bool,
) -> Result<Received, Problem> {
    let tries = shared.config.content_tries.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= tries;
        let (mut writer, known) = {
            let root = shared.root.clone();
            let cache = shared.cache.clone();
            let journal = shared.journal.clone();
            let transfer_id = shared.transfer_id.clone();
            let wanted = wanted.clone();
            blocking(move || {
                PartWriter::prepare(root, cache, journal, transfer_id, wanted, old_regular)
            })
            .await??
        };
        writer.accept_changed = last;
        writer.durable = shared.config.durable;
        let pieces_in_flight = usize::try_from(PIECES_BYTES / writer.block)
            .unwrap_or(2)
            .max(2);
        let request = ReadFileRequest {
            transfer_id: shared.transfer_id.clone(),
            path: wanted.path.as_bytes().to_vec(),
            block_size: writer.block,
            known_blocks: known,
        };
        let mut stream = match shared.client.clone().read_file(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let _ = shared.journal.persist();
                return Err(Problem::Source(status));
            }
        };
        let (sender, receiver) = mpsc::channel::<Piece>(pieces_in_flight);
        let writing = tokio::task::spawn_blocking(move || writer.write(receiver));
        let mut failure = None;
        loop {
            match tokio::time::timeout(shared.config.stall_timeout, stream.message()).await {
                Err(_) => {
                    failure = Some(Problem::Stalled(shared.config.stall_timeout));
                    break;
                }
                Ok(Err(status)) => {
                    failure = Some(Problem::Source(status));
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    let Some(piece) = chunk.piece else {
                        failure = Some(Problem::Protocol {
                            path: wanted.path.clone(),
                            reason: "an empty chunk".to_owned(),
                        });
                        break;
                    };
                    match &piece {
                        Piece::Data(data) => {
                            shared.sent(data.data.len() as u64);
                            shared.advanced(wanted, data.data.len() as u64);
                        }
                        Piece::Same(same) => {
                            shared.reused(same.length);
                            shared.advanced(wanted, same.length);
                        }
                        Piece::Hole(_) | Piece::End(_) => {}
                    }
                    if sender.send(piece).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(sender);
        drop(stream);
        let (written, resent) = writing
            .await
            .map_err(|error| Problem::Internal(format!("file writer: {error}")))??;
        shared.resent(resent);
        match written {
            Written::Done { changed } => {
                return Ok(Received::Done {
                    changed,
                    over_old: false,
                });
            }
            Written::Vanished => {
                let root = shared.root.clone();
                let path = wanted.path.clone();
                blocking(move || apply::remove(&root, &path)).await??;
                return Ok(Received::Vanished);
            }
            Written::Changed => {
                tracing::debug!(message = "file changed while read; reading it again", path = %wanted.path);
            }
            Written::Mismatch(reason) => {
                tracing::warn!(message = "file content did not verify", path = %wanted.path, %reason, attempt);
                if last {
                    return Err(Problem::Verify {
                        path: wanted.path.clone(),
                        tries,
                        reason,
                    });
                }
            }
            Written::Incomplete => {
                let _ = shared.journal.persist();
                return Err(failure.unwrap_or_else(|| Problem::Protocol {
                    path: wanted.path.clone(),
                    reason: "the stream ended before the end of the file".to_owned(),
                }));
            }
        }
    }
}

/// Runs blocking filesystem work off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Problem::Internal(format!("blocking task: {error}")))
}

/// How one batch of small files ended.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Files to fetch one by one (grown too large, or did not verify).
    pub requeue: Vec<Entry>,
}

/// Receives `files` (small, not sparse) in one `ReadFiles` stream.
pub async fn receive_batch(
    shared: &Shared<'_>,
    files: Vec<Entry>,
) -> Result<BatchOutcome, Problem> {
    let request = ReadFilesRequest {
        transfer_id: shared.transfer_id.clone(),
        paths: files.iter().map(|f| f.path.as_bytes().to_vec()).collect(),
    };
    let mut stream = shared
        .client
        .clone()
        .read_files(request)
        .await
        .map_err(Problem::Source)?
        .into_inner();
    let (sender, mut receiver) = mpsc::channel::<WholeFiles>(4);
    let root = shared.root.clone();
    let cache = shared.cache.clone();
    let transfer_id = shared.transfer_id.clone();
    let in_place = shared.config.in_place;
    let batch = files.clone();
    let writing = tokio::task::spawn_blocking(move || {
        let mut outcome = BatchOutcome::default();
        let mut results = Vec::new();
        while let Some(message) = receiver.blocking_recv() {
            for file in message.files {
                let file_index = file.index as usize;
                let Some(wanted) = batch.get(file_index) else {
                    return Err(Problem::Protocol {
                        path: RelPath::root(),
                        reason: format!("a file numbered {} that was not asked for", file.index),
                    });
                };
                match write_whole(&root, &cache, &transfer_id, wanted, file, in_place)? {
                    Some(received) => results.push((file_index, received)),
                    None => outcome.requeue.push(wanted.clone()),
                }
            }
        }
        Ok((outcome, results))
    });
    let mut failure = None;
    loop {
        match tokio::time::timeout(shared.config.stall_timeout, stream.message()).await {
            Err(_) => {
                failure = Some(Problem::Stalled(shared.config.stall_timeout));
                break;
            }
            Ok(Err(status)) => {
                failure = Some(Problem::Source(status));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(batch))) => {
                shared.sent(batch.files.iter().map(|f| f.data.len() as u64).sum());
                if sender.send(batch).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(sender);
    drop(stream);
    let (outcome, results) = writing
        .await
        .map_err(|error| Problem::Internal(format!("file writer: {error}")))??;
    for (index, received) in &results {
        if let Some(wanted) = files.get(*index) {
            shared.finished(wanted, received);
        }
    }
    match failure {
        Some(problem) => Err(problem),
        None => Ok(outcome),
    }
}

/// Writes small files whose content the source already sent (with a
/// pass's changes), as a batch received: through [`write_whole`].
pub async fn write_sent(
    shared: &Shared<'_>,
    files: Vec<(Entry, WholeFile)>,
) -> Result<BatchOutcome, Problem> {
    shared.sent(files.iter().map(|(_, f)| f.data.len() as u64).sum());
    let root = shared.root.clone();
    let cache = shared.cache.clone();
    let transfer_id = shared.transfer_id.clone();
    let in_place = shared.config.in_place;
    let (outcome, results) = blocking(move || {
        let mut outcome = BatchOutcome::default();
        let mut results = Vec::with_capacity(files.len());
        for (wanted, file) in files {
            match write_whole(&root, &cache, &transfer_id, &wanted, file, in_place)? {
                Some(received) => results.push((wanted, received)),
                None => outcome.requeue.push(wanted),
            }
        }
        Ok::<_, ApplyError>((outcome, results))
    })
    .await??;
    for (wanted, received) in &results {
        shared.finished(wanted, received);
    }
    Ok(outcome)
}

/// Writes one whole small file (over its old version when `in_place` and
/// [`apply::open_in_place`] allows it); `None` if it must be fetched again
/// on its own (too large now, or it did not verify).
fn write_whole(
    root: &Root,
    cache: &XattrCache,
    transfer_id: &str,
    wanted: &Entry,
    file: WholeFile,
    in_place: bool,
) -> Result<Option<Received>, ApplyError> {
    let path = &wanted.path;
    if file.vanished {
        apply::remove(root, path)?;
        return Ok(Some(Received::Vanished));
    }
    if file.too_large {
        return Ok(None);
    }
    if file.data.len() as u64 != file.size || sha256(&file.data)[..] != file.sha256[..] {
        tracing::warn!(message = "small file did not verify; fetching it again", path = %path);
        return Ok(None);
    }
    let seen = Mtime {
        sec: file.mtime_sec,
        nsec: file.mtime_nsec.min(999_999_999),
    };
    let mtime = if file.changed {
        seen.just_before()
    } else {
        seen
    };
    let over = in_place
        .then(|| apply::open_in_place(root, path))
        .transpose()?
        .flatten();
    let over_old = over.is_some();
    if let Some(old) = over {
        old.write_all_at(&file.data, 0)
            .map_err(at(path, "write in place"))?;
        old.set_len(file.data.len() as u64)
            .map_err(at(path, "set the length"))?;
        apply::apply_meta(old.as_fd(), wanted, mtime, path)?;
        if let Ok(stat) = nix::sys::stat::fstat(old.as_fd()) {
            cache.record(&stat, wanted.xattrs.clone());
        }
    } else {
        let (part, _, dir) = apply::open_part(root, transfer_id, path, true)?;
        part.write_all_at(&file.data, 0)
            .map_err(at(path, "write temporary file"))?;
        apply::finish_part(dir.as_fd(), &part, transfer_id, wanted, mtime, false, cache)?;
    }
    Ok(Some(Received::Done {
        changed: file.changed,
        over_old,
    }))
}
