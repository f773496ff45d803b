//! One large file being received: its temporary file, the hashes of the
//! blocks the target already holds (from an earlier attempt's temporary
//! file, else from the old version), and the writer that checks each piece
//! as it comes, writes it (leaving holes in sparse files), checks the file
//! digest, and renames the file into place. Blocking code.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use navette_proto::v1::file_chunk::Piece;
use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, PosixFadviseAdvice, fallocate, posix_fadvise};
use nix::sys::stat::fstat;
use nix::unistd::{Whence, lseek};
use tokio::sync::mpsc;

use super::Problem;
use super::apply::{self, at};
use super::beneath::Root;
use super::digest::{FileDigest, sha256};
use super::journal::{Journal, Partial};
use super::read::{DEFAULT_BLOCK, MAX_BLOCK};
use super::scan::{Entry, Mtime, XattrCache, looks_sparse, open_for_reading, to_off};

/// How many bytes of pieces may wait for a large file's writer.
pub const PIECES_BYTES: u64 = 4 * 1024 * 1024;

/// How much a large file's writer writes before starting its writeback.
const WRITE_BEHIND: u64 = 8 * 1024 * 1024;

/// The block size for a file of `size` bytes: 256 KiB, more for very
/// large files so that the list of known blocks stays short.
pub fn block_size(size: u64) -> u64 {
    let mut block = DEFAULT_BLOCK;
    while block < MAX_BLOCK && size / block > 32 * 1024 {
        block *= 2;
    }
    block
}

/// How one attempt at a large file ended, as the writer saw it.
pub enum Written {
    Done {
        changed: bool,
    },
    Vanished,
    /// The source saw the file change; the temporary file is kept.
    Changed,
    /// A block or the digest did not verify; the temporary file is gone.
    Mismatch(String),
    /// The stream ended early; the temporary file is kept.
    Incomplete,
}

/// Writes one large file's pieces into its temporary file.
pub struct PartWriter {
    root: Arc<Root>,
    cache: Arc<XattrCache>,
    journal: Arc<Journal>,
    transfer_id: String,
    wanted: Entry,
    dir: Arc<OwnedFd>,
    file: File,
    /// Offsets from here on were never written in this temporary file.
    fresh_from: u64,
    /// The old version, for the blocks the source says are the same.
    old: Option<File>,
    /// For each block offered as known: whether its hash came from the
    /// temporary file (already in place) or from the old version.
    from_part: Vec<bool>,
    pub block: u64,
    /// Data had arrived up to here in earlier attempts.
    prior_upto: u64,
    /// Accept a copy the source saw change (the last try).
    pub accept_changed: bool,
    /// Sync the file before renaming it into place.
    pub durable: bool,
}

impl PartWriter {
    /// Opens the temporary file and the old version and hashes the blocks
    /// they hold.
    pub fn prepare(
        root: Arc<Root>,
        cache: Arc<XattrCache>,
        journal: Arc<Journal>,
        transfer_id: String,
        wanted: Entry,
        old_regular: bool,
    ) -> Result<(PartWriter, Vec<Vec<u8>>), Problem> {
        let path = wanted.path.clone();
        let (file, part_len, dir) = apply::open_part(&root, &transfer_id, &path, false)?;
        let prior_upto = journal.partial(&path).map_or(0, |p| p.received_upto);
        journal
            .start(
                &path,
                Partial {
                    part: String::from_utf8_lossy(&apply::part_name(&transfer_id, &path))
                        .into_owned(),
                    size: wanted.size,
                    mtime_sec: wanted.mtime.sec,
                    mtime_nsec: wanted.mtime.nsec,
                    received_upto: 0,
                },
            )
            .map_err(|source| Problem::Local {
                path: journal.path().to_path_buf(),
                source,
            })?;
        let old = if old_regular {
            open_for_reading(dir.as_fd(), path.name())
                .ok()
                .map(File::from)
        } else {
            None
        };
        let block = block_size(wanted.size);
        let (known, from_part) = known_blocks(&file, part_len, old.as_ref(), wanted.size, block)
            .map_err(at(&path, "hash the blocks held"))?;
        Ok((
            PartWriter {
                root,
                cache,
                journal,
                transfer_id,
                wanted,
                dir,
                file,
                fresh_from: part_len,
                old,
                from_part,
                block,
                prior_upto,
                accept_changed: false,
                durable: true,
            },
            known,
        ))
    }

    /// Consumes the pieces until the end of the file or of the stream.
    /// Returns how it ended and how many bytes arrived a second time.
    pub fn write(self, mut pieces: mpsc::Receiver<Piece>) -> Result<(Written, u64), Problem> {
        let path = self.wanted.path.clone();
        let mut digest = FileDigest::default();
        let mut next = 0u64;
        let mut resent = 0u64;
        let mut unflushed = 0u64;
        while let Some(piece) = pieces.blocking_recv() {
            if unflushed >= WRITE_BEHIND {
                // Start writing back what was written so far, so that the
                // final fsync has little left to wait for.
                let _ = posix_fadvise(
                    self.file.as_fd(),
                    to_off(next - unflushed),
                    to_off(unflushed),
                    PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
                unflushed = 0;
            }
            let (offset, length) = match &piece {
                Piece::Data(data) => (data.offset, data.data.len() as u64),
                Piece::Same(same) => (same.offset, same.length),
                Piece::Hole(hole) => (hole.offset, hole.length),
                Piece::End(_) => (next, 0),
            };
            if offset != next || (!matches!(piece, Piece::End(_)) && length == 0) {
                return self.mismatch(format!(
                    "a piece at offset {offset} where {next} was expected"
                ));
            }
            let Some(end_of_piece) = offset.checked_add(length) else {
                return self.mismatch(format!("a piece of {length} bytes at offset {offset}"));
            };
            match piece {
                Piece::Data(data) => {
                    if length > MAX_BLOCK {
                        return self.mismatch(format!("a block of {length} bytes"));
                    }
                    if sha256(&data.data)[..] != data.sha256[..] {
                        return self.mismatch(format!("the block at offset {offset}"));
                    }
                    self.write_at(offset, &data.data)
                        .map_err(at(&path, "write temporary file"))?;
                    digest.block(offset, length, &data.sha256);
                    if offset < self.prior_upto {
                        resent += length.min(self.prior_upto - offset);
                    }
                    self.journal
                        .received(&path, end_of_piece, length)
                        .map_err(|source| Problem::Local {
                            path: self.journal.path().to_path_buf(),
                            source,
                        })?;
                }
                Piece::Same(same) => {
                    if offset % self.block != 0 || length > self.block {
                        return self.mismatch(format!("a same block at offset {offset}"));
                    }
                    let index = usize::try_from(offset / self.block).unwrap_or(usize::MAX);
                    match self.from_part.get(index) {
                        Some(true) => {}
                        Some(false) => {
                            if !self.copy_old(offset, length, &same.sha256)? {
                                return self.mismatch(format!(
                                    "the held block at offset {offset} changed"
                                ));
                            }
                        }
                        None => {
                            return self.mismatch(format!(
                                "a same block at offset {offset} that was not offered"
                            ));
                        }
                    }
                    digest.block(offset, length, &same.sha256);
                }
                Piece::Hole(_) => {
                    self.punch(offset, length)
                        .map_err(at(&path, "punch a hole in temporary file"))?;
                    digest.hole(offset, length);
                }
                Piece::End(end) => {
                    if end.vanished {
                        apply::drop_part(&self.root, &self.transfer_id, &path)?;
                        let _ = self.journal.finish(&path);
                        return Ok((Written::Vanished, resent));
                    }
                    if next != end.size {
                        return self
                            .mismatch(format!("the end at {next} where the size is {}", end.size));
                    }
                    if digest.finish(end.size) != end.digest {
                        return self.mismatch("the file digest".to_owned());
                    }
                    self.file
                        .set_len(end.size)
                        .map_err(at(&path, "truncate temporary file"))?;
                    if end.changed && !self.accept_changed {
                        self.journal.restart(&path);
                        return Ok((Written::Changed, resent));
                    }
                    let seen = Mtime {
                        sec: end.mtime_sec,
                        nsec: end.mtime_nsec.min(999_999_999),
                    };
                    let mtime = if end.changed {
                        seen.just_before()
                    } else {
                        seen
                    };
                    apply::finish_part(
                        self.dir.as_fd(),
                        &self.file,
                        &self.transfer_id,
                        &self.wanted,
                        mtime,
                        self.durable,
                        &self.cache,
                    )?;
                    let _ = self.journal.finish(&path);
                    return Ok((
                        Written::Done {
                            changed: end.changed,
                        },
                        resent,
                    ));
                }
            }
            next = end_of_piece;
            unflushed = unflushed.saturating_add(length);
        }
        let _ = self.journal.persist();
        Ok((Written::Incomplete, resent))
    }

    /// Drops the temporary file (its content is suspect) and reports why.
    fn mismatch(&self, what: String) -> Result<(Written, u64), Problem> {
        apply::drop_part(&self.root, &self.transfer_id, &self.wanted.path)?;
        let _ = self.journal.finish(&self.wanted.path);
        Ok((Written::Mismatch(format!("{what} did not verify")), 0))
    }

    /// Writes a block. In a sparse file, all-zero pages past what the
    /// temporary file held are left as holes.
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.wanted.extents.is_none() || offset < self.fresh_from {
            return self.file.write_all_at(data, offset);
        }
        const PAGE: usize = 4096;
        let mut start = 0;
        while start < data.len() {
            // Skip zero pages, then write the next run of non-zero pages.
            while start < data.len() && is_zero(&data[start..(start + PAGE).min(data.len())]) {
                start += PAGE;
            }
            let mut end = start;
            while end < data.len() && !is_zero(&data[end..(end + PAGE).min(data.len())]) {
                end += PAGE;
            }
            let end = end.min(data.len());
            if start < end {
                self.file
                    .write_all_at(&data[start..end], offset + start as u64)?;
            }
            start = end;
        }
        Ok(())
    }

    /// Makes a region a hole, where the temporary file may hold data.
    fn punch(&self, offset: u64, length: u64) -> std::io::Result<()> {
        if offset >= self.fresh_from {
            return Ok(());
        }
        let length = length.min(self.fresh_from - offset);
        match fallocate(
            self.file.as_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            to_off(offset),
            to_off(length),
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EOPNOTSUPP) => {
                let zeros = vec![0u8; usize::try_from(length.min(MAX_BLOCK)).unwrap_or(0)];
                let mut at = offset;
                while at < offset + length {
                    let n = (offset + length - at).min(zeros.len() as u64);
                    self.file
                        .write_all_at(&zeros[..usize::try_from(n).unwrap_or(0)], at)?;
                    at += n;
                }
                Ok(())
            }
            Err(errno) => Err(errno.into()),
        }
    }

    /// Copies a block from the old version, checking it still has the
    /// hash that was offered. `false` if it does not.
    fn copy_old(&self, offset: u64, length: u64, expected: &[u8]) -> Result<bool, Problem> {
        let Some(old) = &self.old else {
            return Ok(false);
        };
        let mut buffer = vec![0u8; usize::try_from(length).unwrap_or(0)];
        if old.read_exact_at(&mut buffer, offset).is_err() {
            return Ok(false);
        }
        if sha256(&buffer)[..] != expected[..] {
            return Ok(false);
        }
        self.write_at(offset, &buffer)
            .map_err(at(&self.wanted.path, "write temporary file"))?;
        Ok(true)
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// The hashes of the blocks the target holds for a file of `size` bytes:
/// from the temporary file where it covers the block, else from the old
/// version. Blocks that are holes in a sparse copy are not offered.
fn known_blocks(
    part: &File,
    part_len: u64,
    old: Option<&File>,
    size: u64,
    block: u64,
) -> Result<(Vec<Vec<u8>>, Vec<bool>), Errno> {
    let old_len = match old {
        Some(old) => u64::try_from(fstat(old.as_fd())?.st_size).unwrap_or(0),
        None => 0,
    };
    let mut known = Vec::new();
    let mut from_part = Vec::new();
    if part_len == 0 && old_len == 0 {
        return Ok((known, from_part));
    }
    let part_sparse = looks_sparse(&fstat(part.as_fd())?);
    let old_sparse = match old {
        Some(old) => looks_sparse(&fstat(old.as_fd())?),
        None => false,
    };
    let mut buffer = vec![0u8; usize::try_from(block).unwrap_or(0)];
    // Nothing is held past the longer of the two files.
    let held = size.min(part_len.max(old_len));
    let mut offset = 0u64;
    while offset < held {
        let length = block.min(size - offset);
        let end = offset + length;
        let (file, sparse, is_part) = if end <= part_len {
            (Some(part), part_sparse, true)
        } else if end <= old_len {
            (old, old_sparse, false)
        } else {
            (None, false, false)
        };
        let mut hash = Vec::new();
        if let Some(file) = file
            && (!sparse || has_data(file, offset, length)?)
        {
            let buffer = &mut buffer[..usize::try_from(length).unwrap_or(0)];
            file.read_exact_at(buffer, offset)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)))?;
            hash = sha256(buffer).to_vec();
        }
        known.push(hash);
        from_part.push(is_part);
        offset = end;
    }
    while known.last().is_some_and(Vec::is_empty) {
        known.pop();
        from_part.pop();
    }
    Ok((known, from_part))
}

/// Whether a region of a file holds any data (`SEEK_DATA`).
fn has_data(file: &File, offset: u64, length: u64) -> Result<bool, Errno> {
    match lseek(file.as_fd(), to_off(offset), Whence::SeekData) {
        Ok(at) => Ok(u64::try_from(at).unwrap_or(u64::MAX) < offset + length),
        Err(Errno::ENXIO) => Ok(false),
        Err(errno) => Err(errno),
    }
}
