//! The source's reading of files for the target: block by block with the
//! blocks the target holds replaced by their hash (`ReadFile`), or whole
//! for small files (`ReadFiles`). Blocking code, run on its own thread; it
//! hands each message to `send`, which says `false` once the caller is
//! gone.
//!
//! Files are opened below the granted home without following any link; a
//! path that no longer leads to a regular file that way (removed, replaced,
//! or reached through a symbolic link) is answered as *vanished*, with no
//! data. A file whose size, modification or change time differ between the
//! start and the end of its read is flagged *changed*.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use navette_proto::v1::file_chunk::Piece;
use navette_proto::v1::{DataBlock, FileChunk, FileEnd, Hole, SameBlock, WholeFile};
use nix::errno::Errno;
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use nix::sys::stat::{FileStat, SFlag, fstat};
use nix::unistd::{Whence, lseek};

use super::beneath::Root;
use super::digest::{FileDigest, sha256};
use super::path::RelPath;
use super::scan::{Mtime, looks_sparse, open_for_reading, to_off};

/// Smallest, default and largest block a `ReadFile` is counted in.
pub const MIN_BLOCK: u64 = 64 * 1024;
pub const DEFAULT_BLOCK: u64 = 256 * 1024;
pub const MAX_BLOCK: u64 = 8 * 1024 * 1024;
/// Largest file `ReadFiles` sends whole in one message.
pub const WHOLE_FILE_MAX: u64 = 8 * 1024 * 1024;
/// How many times a small file that changes while read is read again.
const WHOLE_FILE_TRIES: u32 = 3;

/// A failure reading the source (not a vanished file).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {op}: {source}")]
pub struct ReadError {
    pub path: RelPath,
    pub op: &'static str,
    pub source: std::io::Error,
}

fn fail<'a>(path: &'a RelPath, op: &'static str) -> impl FnOnce(std::io::Error) -> ReadError + 'a {
    move |source| ReadError {
        path: path.clone(),
        op,
        source,
    }
}

fn errno_fail<'a>(path: &'a RelPath, op: &'static str) -> impl FnOnce(Errno) -> ReadError + 'a {
    move |errno| ReadError {
        path: path.clone(),
        op,
        source: errno.into(),
    }
}

/// Opens the regular file at `path`; `None` if it is not one (any more).
fn open_regular(root: &Root, path: &RelPath) -> Result<Option<(File, FileStat)>, ReadError> {
    let Some((parent, name)) = path.split_last() else {
        return Ok(None);
    };
    let gone = |errno: Errno| {
        matches!(
            errno,
            Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EISDIR | Errno::ENXIO
        )
    };
    let dir = match root.dir(&parent) {
        Ok(dir) => dir,
        Err(errno) if gone(errno) => return Ok(None),
        Err(errno) => return Err(errno_fail(path, "open directory")(errno)),
    };
    let fd: OwnedFd = match open_for_reading(dir.as_fd(), name) {
        Ok(fd) => fd,
        Err(errno) if gone(errno) => return Ok(None),
        Err(errno) => return Err(errno_fail(path, "open")(errno)),
    };
    let stat = fstat(&fd).map_err(errno_fail(path, "stat"))?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Ok(None);
    }
    Ok(Some((File::from(fd), stat)))
}

/// Whether the file changed between two observations.
fn differs(before: &FileStat, after: &FileStat) -> bool {
    before.st_size != after.st_size
        || before.st_mtime != after.st_mtime
        || before.st_mtime_nsec != after.st_mtime_nsec
        || before.st_ctime != after.st_ctime
        || before.st_ctime_nsec != after.st_ctime_nsec
}

fn chunk(piece: Piece) -> FileChunk {
    FileChunk { piece: Some(piece) }
}

/// Streams the file at `path` in blocks of `block` bytes (see `ReadFile`).
pub fn read_file(
    root: &Root,
    path: &RelPath,
    block: u64,
    known: &[Vec<u8>],
    send: &mut dyn FnMut(FileChunk) -> bool,
) -> Result<(), ReadError> {
    let Some((file, before)) = open_regular(root, path)? else {
        send(chunk(Piece::End(FileEnd {
            vanished: true,
            ..FileEnd::default()
        })));
        return Ok(());
    };
    let _ = posix_fadvise(
        file.as_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    let size = u64::try_from(before.st_size).unwrap_or(0);
    let sparse = looks_sparse(&before);
    let block = block.clamp(MIN_BLOCK, MAX_BLOCK);
    let mut digest = FileDigest::default();
    let mut hole_start: Option<u64> = None;
    let mut offset = 0u64;
    let mut short = false;
    while offset < size {
        let length = block.min(size - offset);
        if sparse {
            let next_data = match lseek(file.as_fd(), to_off(offset), Whence::SeekData) {
                Ok(at) => u64::try_from(at).unwrap_or(size),
                Err(Errno::ENXIO) => size,
                Err(errno) => return Err(errno_fail(path, "seek")(errno)),
            };
            if next_data >= offset + length {
                hole_start.get_or_insert(offset);
                offset = (next_data / block * block).max(offset + length).min(size);
                continue;
            }
        }
        if let Some(start) = hole_start.take() {
            digest.hole(start, offset - start);
            if !send(chunk(Piece::Hole(Hole {
                offset: start,
                length: offset - start,
            }))) {
                return Ok(());
            }
        }
        let mut data = vec![0u8; usize::try_from(length).unwrap_or(0)];
        match file.read_exact_at(&mut data, offset) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                // Shrunk while read: say so; the target reads it again.
                short = true;
                break;
            }
            Err(error) => return Err(fail(path, "read")(error)),
        }
        let hash = sha256(&data);
        digest.block(offset, length, &hash);
        let index = usize::try_from(offset / block).unwrap_or(usize::MAX);
        let piece = if known.get(index).is_some_and(|k| k[..] == hash[..]) {
            Piece::Same(SameBlock {
                offset,
                length,
                sha256: hash.to_vec(),
            })
        } else {
            Piece::Data(DataBlock {
                offset,
                data,
                sha256: hash.to_vec(),
            })
        };
        if !send(chunk(piece)) {
            return Ok(());
        }
        offset += length;
    }
    if let Some(start) = hole_start.take() {
        digest.hole(start, offset - start);
        if !send(chunk(Piece::Hole(Hole {
            offset: start,
            length: offset - start,
        }))) {
            return Ok(());
        }
    }
    let after = fstat(file.as_fd()).map_err(errno_fail(path, "stat"))?;
    let mtime = Mtime::of(&before);
    send(chunk(Piece::End(FileEnd {
        digest: digest.finish(size),
        size,
        mtime_sec: mtime.sec,
        mtime_nsec: mtime.nsec,
        changed: short || differs(&before, &after),
        vanished: false,
    })));
    Ok(())
}

/// Sends each of `paths` whole (see `ReadFiles`).
pub fn read_whole_files(
    root: &Root,
    paths: &[RelPath],
    send: &mut dyn FnMut(WholeFile) -> bool,
) -> Result<(), ReadError> {
    for (index, path) in paths.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if !send(read_whole(root, path, index)?) {
            break;
        }
    }
    Ok(())
}

/// `path` whole, as `ReadFiles` sends it, numbered `index`.
pub(super) fn read_whole(root: &Root, path: &RelPath, index: u32) -> Result<WholeFile, ReadError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let Some((mut file, before)) = open_regular(root, path)? else {
            return Ok(WholeFile {
                index,
                vanished: true,
                ..WholeFile::default()
            });
        };
        let size = u64::try_from(before.st_size).unwrap_or(0);
        let too_large = WholeFile {
            index,
            too_large: true,
            ..WholeFile::default()
        };
        if size > WHOLE_FILE_MAX {
            return Ok(too_large);
        }
        let mut data = Vec::with_capacity(usize::try_from(size + 1).unwrap_or(0));
        (&mut file)
            .take(WHOLE_FILE_MAX + 1)
            .read_to_end(&mut data)
            .map_err(fail(path, "read"))?;
        if data.len() as u64 > WHOLE_FILE_MAX {
            return Ok(too_large);
        }
        let after = fstat(file.as_fd()).map_err(errno_fail(path, "stat"))?;
        let stable = data.len() as u64 == size && !differs(&before, &after);
        if stable || tries >= WHOLE_FILE_TRIES {
            let mtime = Mtime::of(&before);
            return Ok(WholeFile {
                index,
                sha256: sha256(&data).to_vec(),
                size: data.len() as u64,
                data,
                mtime_sec: mtime.sec,
                mtime_nsec: mtime.nsec,
                changed: !stable,
                vanished: false,
                too_large: false,
            });
        }
    }
}
