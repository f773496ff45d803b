//! Changing the target tree, one entry at a time, always through a
//! directory fd of the [`Root`] and a plain name, never following a link.
//! New content and new links are made under a temporary name in the same
//! directory and renamed over the old entry, so the old entry is replaced
//! whole or not at all; except that a catch-up pass may write a small
//! file's new content over its old version ([`open_in_place`]), as
//! `rsync --inplace` does, where nothing reads the copy yet.
//!
//! Metadata goes on in a fixed order: owner (which clears setuid, setgid
//! and file capabilities), extended attributes, mode, modification time.
//! A mode with set-user-id or set-group-id bits (only those the
//! [`setid`](super::setid) rule kept) is read back: the kernel drops such
//! a bit silently when the agent lacks `CAP_FSETID`, and that is an error
//! here, not a quiet loss.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, mkdirat,
    mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

use super::beneath::{DIR_FLAGS, Root};
use super::digest::sha256;
use super::path::RelPath;
use super::scan::{Entry, Kind, Mtime, XattrCache};
use super::setid::SET_ID_BITS;
use super::xattr;

/// Prefix of the temporary names content and links are made under.
pub const PART_PREFIX: &str = ".navette-part-";

/// The temporary name for `path` in transfer `transfer_id`: stable, so a
/// resumed transfer finds what it had received.
pub fn part_name(transfer_id: &str, path: &RelPath) -> Vec<u8> {
    let mut input = transfer_id.as_bytes().to_vec();
    input.push(0);
    input.extend_from_slice(path.as_bytes());
    let hash = sha256(&input);
    let mut name = PART_PREFIX.as_bytes().to_vec();
    for byte in &hash[..12] {
        name.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    name
}

/// A failed operation on the target, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {op}: {source}")]
pub struct ApplyError {
    pub path: RelPath,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

impl ApplyError {
    /// Whether the error is a refusal to go through a link or a
    /// non-directory (the tree is not what it should be).
    pub fn is_unsafe(&self) -> bool {
        matches!(
            self.source.raw_os_error().map(Errno::from_raw),
            Some(Errno::ELOOP | Errno::ENOTDIR)
        )
    }
}

pub fn at<'a, E: Into<io::Error>>(
    path: &'a RelPath,
    op: &'static str,
) -> impl FnOnce(E) -> ApplyError + 'a {
    move |error| ApplyError {
        path: path.clone(),
        op,
        source: error.into(),
    }
}

/// Fails unless the mode `found` holds the set-id bits of `wanted`.
fn check_set_id(found: u32, wanted: &Entry, path: &RelPath) -> Result<(), ApplyError> {
    if wanted.mode & SET_ID_BITS == 0 || found & 0o7777 == wanted.mode {
        return Ok(());
    }
    Err(ApplyError {
        path: path.clone(),
        op: "keep set-user-id and set-group-id bits",
        source: io::Error::other(format!(
            "mode {:o} was set, and the file has mode {:o}: the agent needs CAP_FSETID \
             (see CapabilityBoundingSet= in its systemd unit)",
            wanted.mode,
            found & 0o7777
        )),
    })
}

/// Applies owner, extended attributes, mode and modification time to an
/// open file or directory.
pub fn apply_meta(
    fd: BorrowedFd<'_>,
    wanted: &Entry,
    mtime: Mtime,
    path: &RelPath,
) -> Result<(), ApplyError> {
    fchown(
        fd,
        Some(Uid::from_raw(wanted.uid)),
        Some(Gid::from_raw(wanted.gid)),
    )
    .map_err(at(path, "change owner"))?;
    xattr::set_exactly(fd, &wanted.xattrs).map_err(at(path, "set extended attributes"))?;
    fchmod(fd, Mode::from_bits_retain(wanted.mode)).map_err(at(path, "change mode"))?;
    if wanted.mode & SET_ID_BITS != 0 {
        let stat = nix::sys::stat::fstat(fd).map_err(at(path, "stat"))?;
        check_set_id(stat.st_mode, wanted, path)?;
    }
    futimens(fd, &TimeSpec::UTIME_OMIT, &mtime.timespec())
        .map_err(at(path, "set modification time"))
}

/// Owner and time of an entry that cannot be opened (a symbolic link, a
/// fifo, a socket), by name in `dir`; the mode too unless it is a link.
fn apply_meta_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    wanted: &Entry,
    path: &RelPath,
) -> Result<(), ApplyError> {
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(wanted.uid)),
        Some(Gid::from_raw(wanted.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(at(path, "change owner"))?;
    if !matches!(wanted.kind, Kind::Symlink(_)) {
        fchmodat(
            dir,
            name,
            Mode::from_bits_retain(wanted.mode),
            FchmodatFlags::NoFollowSymlink,
        )
        .map_err(at(path, "change mode"))?;
        if wanted.mode & SET_ID_BITS != 0 {
            let stat =
                fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(at(path, "stat"))?;
            check_set_id(stat.st_mode, wanted, path)?;
        }
    }
    utimensat(
        dir,
        name,
        &TimeSpec::UTIME_OMIT,
        &wanted.mtime.timespec(),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(at(path, "set modification time"))
}

/// Splits a non-root path into its parent's fd and its name.
fn parent_of<'p>(
    root: &Root,
    path: &'p RelPath,
) -> Result<(std::sync::Arc<std::os::fd::OwnedFd>, &'p [u8]), ApplyError> {
    let (parent, name) = path.split_last().ok_or_else(|| ApplyError {
        path: path.clone(),
        op: "resolve",
        source: io::Error::other("the root has no parent"),
    })?;
    let dir = root
        .dir(&parent)
        .map_err(at(path, "open parent directory"))?;
    Ok((dir, name))
}

/// Removes whatever is at `path` (a whole directory tree included).
/// Nothing there is fine; returns whether something was.
pub fn remove(root: &Root, path: &RelPath) -> Result<bool, ApplyError> {
    let (dir, name) = parent_of(root, path)?;
    root.forget(path);
    remove_at(dir.as_fd(), name).map_err(at(path, "remove"))
}

fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<bool, Errno> {
    let stat = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(errno),
    };
    if stat.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
        let fd = openat(dir, name, DIR_FLAGS, Mode::empty())?;
        let mut children = Vec::new();
        let mut listing = nix::dir::Dir::from_fd(
            fd.try_clone()
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?,
        )?;
        for child in listing.iter() {
            let child = child?;
            let name = child.file_name().to_bytes();
            if name != b"." && name != b".." {
                children.push(name.to_vec());
            }
        }
        for child in children {
            remove_at(fd.as_fd(), &child)?;
        }
        match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(errno) => Err(errno),
        }
    } else {
        match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(errno) => Err(errno),
        }
    }
}

/// Creates the directory `path` (its metadata comes at the end).
pub fn make_dir(root: &Root, path: &RelPath) -> Result<(), ApplyError> {
    let (dir, name) = parent_of(root, path)?;
    match mkdirat(dir.as_fd(), name, Mode::from_bits_retain(0o700)) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => {
            // Made meanwhile: fine if it is a directory (checked by opening).
            root.dir(path).map(drop).map_err(at(path, "open directory"))
        }
        Err(errno) => Err(at(path, "create directory")(errno)),
    }
}

/// Renames the temporary `part` over `name` in `dir`.
fn put_in_place(
    dir: BorrowedFd<'_>,
    part: &[u8],
    name: &[u8],
    path: &RelPath,
) -> Result<(), ApplyError> {
    renameat(dir, part, dir, name).map_err(at(path, "rename into place"))
}

/// Clears a stale temporary name.
fn clear(dir: BorrowedFd<'_>, part: &[u8], path: &RelPath) -> Result<(), ApplyError> {
    remove_at(dir, part)
        .map(drop)
        .map_err(at(path, "remove stale temporary name"))
}

/// Whether `name` is one of the temporary names of a pull.
pub fn is_part_name(name: &[u8]) -> bool {
    name.starts_with(PART_PREFIX.as_bytes())
}

/// Makes `path` the symbolic link `wanted` describes.
pub fn place_symlink(root: &Root, transfer_id: &str, wanted: &Entry) -> Result<(), ApplyError> {
    let Kind::Symlink(target) = &wanted.kind else {
        return Ok(());
    };
    let path = &wanted.path;
    let (dir, name) = parent_of(root, path)?;
    let part = part_name(transfer_id, path);
    clear(dir.as_fd(), &part, path)?;
    symlinkat(target.as_slice(), dir.as_fd(), part.as_slice())
        .map_err(at(path, "create symbolic link"))?;
    apply_meta_at(dir.as_fd(), &part, wanted, path)?;
    put_in_place(dir.as_fd(), &part, name, path)
}

/// Makes `path` a fifo or socket as `wanted` describes.
pub fn place_special(root: &Root, transfer_id: &str, wanted: &Entry) -> Result<(), ApplyError> {
    let kind = match wanted.kind {
        Kind::Fifo => SFlag::S_IFIFO,
        Kind::Socket => SFlag::S_IFSOCK,
        _ => return Ok(()),
    };
    let path = &wanted.path;
    let (dir, name) = parent_of(root, path)?;
    let part = part_name(transfer_id, path);
    clear(dir.as_fd(), &part, path)?;
    mknodat(
        dir.as_fd(),
        part.as_slice(),
        kind,
        Mode::from_bits_retain(0o600),
        0,
    )
    .map_err(at(path, "create special file"))?;
    apply_meta_at(dir.as_fd(), &part, wanted, path)?;
    put_in_place(dir.as_fd(), &part, name, path)
}

/// Makes `path` another name of the inode at `first`. Returns `false`
/// when `first` is not there (it vanished from the source meanwhile).
pub fn place_hardlink(
    root: &Root,
    transfer_id: &str,
    path: &RelPath,
    first: &RelPath,
) -> Result<bool, ApplyError> {
    let (first_dir, first_name) = parent_of(root, first)?;
    let (dir, name) = parent_of(root, path)?;
    let part = part_name(transfer_id, path);
    clear(dir.as_fd(), &part, path)?;
    match linkat(
        first_dir.as_fd(),
        first_name,
        dir.as_fd(),
        part.as_slice(),
        AtFlags::empty(),
    ) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(at(path, "create hard link")(errno)),
    }
    put_in_place(dir.as_fd(), &part, name, path)?;
    // Renaming over another name of the same inode does nothing, and the
    // temporary name remains.
    clear(dir.as_fd(), &part, path)?;
    Ok(true)
}

/// Fixes the metadata of an entry whose content is already right.
pub fn fix_meta(root: &Root, wanted: &Entry) -> Result<(), ApplyError> {
    let path = &wanted.path;
    match wanted.kind {
        Kind::File | Kind::Hardlink(_) => {
            let (dir, name) = parent_of(root, path)?;
            let fd = super::scan::open_for_reading(dir.as_fd(), name).map_err(at(path, "open"))?;
            apply_meta(fd.as_fd(), wanted, wanted.mtime, path)
        }
        Kind::Dir => {
            let fd = root.dir(path).map_err(at(path, "open directory"))?;
            apply_meta(fd.as_fd(), wanted, wanted.mtime, path)
        }
        Kind::Symlink(_) | Kind::Fifo | Kind::Socket => {
            let (dir, name) = parent_of(root, path)?;
            apply_meta_at(dir.as_fd(), name, wanted, path)
        }
    }
}

/// Brings a directory's metadata to `wanted`, touching only what differs
/// (`known_xattrs_equal`: the attributes were found equal before).
pub fn settle_dir(
    root: &Root,
    wanted: &Entry,
    known_xattrs_equal: bool,
) -> Result<bool, ApplyError> {
    let path = &wanted.path;
    let fd = root.dir(path).map_err(at(path, "open directory"))?;
    let stat = nix::sys::stat::fstat(&fd).map_err(at(path, "stat"))?;
    let mut changed = false;
    if stat.st_uid != wanted.uid || stat.st_gid != wanted.gid {
        fchown(
            fd.as_fd(),
            Some(Uid::from_raw(wanted.uid)),
            Some(Gid::from_raw(wanted.gid)),
        )
        .map_err(at(path, "change owner"))?;
        changed = true;
    }
    if !known_xattrs_equal || changed {
        changed |= xattr::set_exactly(fd.as_fd(), &wanted.xattrs)
            .map_err(at(path, "set extended attributes"))?;
    }
    if changed || stat.st_mode & 0o7777 != wanted.mode {
        fchmod(fd.as_fd(), Mode::from_bits_retain(wanted.mode)).map_err(at(path, "change mode"))?;
        if wanted.mode & SET_ID_BITS != 0 {
            let stat = nix::sys::stat::fstat(&fd).map_err(at(path, "stat"))?;
            check_set_id(stat.st_mode, wanted, path)?;
        }
        changed = true;
    }
    if changed || Mtime::of(&stat) != wanted.mtime {
        futimens(fd.as_fd(), &TimeSpec::UTIME_OMIT, &wanted.mtime.timespec())
            .map_err(at(path, "set modification time"))?;
        changed = true;
    }
    Ok(changed)
}

/// Opens (creating if needed) the temporary file for `path`'s content,
/// read-write, never through a link. Returns the file and its length (the
/// bytes a previous attempt left there).
pub fn open_part(
    root: &Root,
    transfer_id: &str,
    path: &RelPath,
    truncate: bool,
) -> Result<(std::fs::File, u64, std::sync::Arc<std::os::fd::OwnedFd>), ApplyError> {
    let (dir, _) = parent_of(root, path)?;
    let part = part_name(transfer_id, path);
    let mut flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if truncate {
        flags |= OFlag::O_TRUNC;
    }
    let fd = match openat(
        dir.as_fd(),
        part.as_slice(),
        flags,
        Mode::from_bits_retain(0o600),
    ) {
        Err(Errno::ELOOP | Errno::EISDIR | Errno::ENXIO | Errno::EWOULDBLOCK) => {
            // Something else sits at the temporary name: clear it.
            clear(dir.as_fd(), &part, path)?;
            openat(
                dir.as_fd(),
                part.as_slice(),
                flags,
                Mode::from_bits_retain(0o600),
            )
        }
        other => other,
    }
    .map_err(at(path, "open temporary file"))?;
    let stat = nix::sys::stat::fstat(&fd).map_err(at(path, "stat temporary file"))?;
    if stat.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(at(path, "open temporary file")(Errno::EINVAL));
    }
    let length = u64::try_from(stat.st_size).unwrap_or(0);
    Ok((std::fs::File::from(fd), length, dir))
}

/// Opens the regular file at `path` for its new content to be written
/// over the old, when that can be done: a regular file with no other name
/// (writing through a hard link would change its other names too), which
/// the agent may write. `None` otherwise (nothing there, or it is busy,
/// immutable or linked): the content then goes through a temporary file.
///
/// Writing over the old content keeps the file's blocks where they are,
/// instead of allocating a new inode and freeing the old one's blocks
/// (each freed block is discarded on a filesystem mounted with `discard`).
/// A write cut short leaves a file whose modification time is the time of
/// the write, which no source has: the next comparison sends it again.
pub fn open_in_place(root: &Root, path: &RelPath) -> Result<Option<std::fs::File>, ApplyError> {
    let fd = match root.open_file(path, OFlag::O_RDWR | OFlag::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(
            Errno::ENOENT
            | Errno::ELOOP
            | Errno::EISDIR
            | Errno::ENXIO
            | Errno::EWOULDBLOCK
            | Errno::ETXTBSY
            | Errno::EACCES
            | Errno::EPERM
            | Errno::EROFS,
        ) => return Ok(None),
        Err(errno) => return Err(at(path, "open for writing in place")(errno)),
    };
    let stat = nix::sys::stat::fstat(&fd).map_err(at(path, "stat"))?;
    let regular = stat.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits();
    Ok((regular && stat.st_nlink == 1).then(|| std::fs::File::from(fd)))
}

/// Gives the finished temporary file of `path` its metadata, makes it
/// durable if asked, renames it into place, and records its attributes in
/// `cache`.
pub fn finish_part(
    dir: BorrowedFd<'_>,
    file: &std::fs::File,
    transfer_id: &str,
    wanted: &Entry,
    mtime: Mtime,
    durable: bool,
    cache: &XattrCache,
) -> Result<(), ApplyError> {
    let path = &wanted.path;
    apply_meta(file.as_fd(), wanted, mtime, path)?;
    if durable {
        file.sync_all().map_err(at(path, "sync"))?;
    }
    let part = part_name(transfer_id, path);
    put_in_place(dir, &part, path.name(), path)?;
    if let Ok(stat) = nix::sys::stat::fstat(file.as_fd()) {
        cache.record(&stat, wanted.xattrs.clone());
    }
    Ok(())
}

/// Removes the temporary file of `path`, if any.
pub fn drop_part(root: &Root, transfer_id: &str, path: &RelPath) -> Result<(), ApplyError> {
    let (dir, _) = parent_of(root, path)?;
    clear(dir.as_fd(), &part_name(transfer_id, path), path)
}
