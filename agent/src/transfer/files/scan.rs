//! Reading a tree: every entry below a root, parents before children,
//! names sorted bytewise within a directory, without following symbolic
//! links. Both sides use it: the source to list what it serves, the target
//! to see what it already holds.
//!
//! The tree is live: an entry that vanishes while it is read is skipped,
//! not an error. Device nodes are skipped (never copied).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{Whence, lseek};

use super::beneath::{DIR_FLAGS, Root};
use super::path::RelPath;
use super::xattr::{self, XAttr};

/// What kind of entry a path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A symbolic link and its target, verbatim.
    Symlink(Vec<u8>),
    /// Another name of the inode first listed at this path.
    Hardlink(RelPath),
    Fifo,
    Socket,
}

/// A modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Mtime {
    pub sec: i64,
    pub nsec: u32,
}

impl Mtime {
    /// A time no file has (nanoseconds past a second): given to a copy's
    /// entry whose time no longer vouches for its content, so that the
    /// comparison sends it again.
    pub const UNKNOWN: Mtime = Mtime {
        sec: i64::MIN,
        nsec: u32::MAX,
    };

    pub fn of(stat: &FileStat) -> Mtime {
        Mtime {
            sec: stat.st_mtime,
            nsec: u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
        }
    }

    /// One nanosecond earlier: how a copy that may be torn is dated, so
    /// that the next refresh sees it differ from the source and sends it
    /// again.
    pub fn just_before(self) -> Mtime {
        if self.nsec > 0 {
            Mtime {
                sec: self.sec,
                nsec: self.nsec - 1,
            }
        } else {
            Mtime {
                sec: self.sec.saturating_sub(1),
                nsec: 999_999_999,
            }
        }
    }

    pub fn timespec(self) -> nix::sys::time::TimeSpec {
        nix::sys::time::TimeSpec::new(self.sec, i64::from(self.nsec))
    }
}

/// A region of a file holding data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

/// One entry of a tree, with everything that is copied about it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: RelPath,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Mtime,
    /// Regular files: length in bytes.
    pub size: u64,
    /// Sorted by name. Not read for symbolic links, hard links, fifos and
    /// sockets.
    pub xattrs: Vec<XAttr>,
    /// Sparse regular files: the regions holding data.
    pub extents: Option<Vec<Extent>>,
    /// (device, inode) on the host that read the entry.
    pub inode: (u64, u64),
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// Bytes of data (the data extents of a sparse file).
    pub fn data_bytes(&self) -> u64 {
        match &self.extents {
            Some(extents) => extents.iter().map(|e| e.length).sum(),
            None => self.size,
        }
    }
}

/// The extended attributes of regular files seen before, by inode, reused
/// while the inode's change time is the same, so that a walk of an
/// unchanged tree needs one `stat` per file instead of an open, a listing
/// and a close.
///
/// Sound because every change of an inode's attributes, mode, owner or
/// content sets its change time to the current time: an attribute read
/// when the change time was already a second old cannot have changed
/// unless the change time did. Attributes read or set more recently are
/// kept only when recorded by the writer that set them ([`record`]).
///
/// [`record`]: XattrCache::record
#[derive(Debug, Default)]
pub struct XattrCache {
    entries: Mutex<HashMap<(u64, u64), Cached>>,
}

#[derive(Clone, Debug)]
struct Cached {
    ctime: (i64, i64),
    xattrs: Vec<XAttr>,
}

/// An inode's change time.
pub fn ctime_of(stat: &FileStat) -> (i64, i64) {
    (stat.st_ctime, stat.st_ctime_nsec)
}

impl XattrCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Cached>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, inode: (u64, u64), ctime: (i64, i64)) -> Option<Vec<XAttr>> {
        self.lock()
            .get(&inode)
            .filter(|cached| cached.ctime == ctime)
            .map(|cached| cached.xattrs.clone())
    }

    /// Records the attributes a writer just gave an inode, with the change
    /// time it read back afterwards.
    pub fn record(&self, stat: &FileStat, xattrs: Vec<XAttr>) {
        self.lock().insert(
            (stat.st_dev, stat.st_ino),
            Cached {
                ctime: ctime_of(stat),
                xattrs,
            },
        );
    }

    fn replace(&self, entries: HashMap<(u64, u64), Cached>) {
        *self.lock() = entries;
    }
}

/// The current time in seconds.
fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A failure while reading a tree (vanishing entries are not failures).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {op}: {errno}")]
pub struct ScanError {
    pub path: RelPath,
    pub op: &'static str,
    pub errno: Errno,
}

fn fail<'a>(path: &'a RelPath, op: &'static str) -> impl FnOnce(Errno) -> ScanError + 'a {
    move |errno| ScanError {
        path: path.clone(),
        op,
        errno,
    }
}

/// Whether an error means "the entry changed or went away meanwhile".
fn vanished(errno: Errno) -> bool {
    matches!(errno, Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP)
}

/// Flags regular files are opened with to read their attributes or data:
/// never through a link, without updating the access time.
pub fn read_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOATIME
}

/// Opens `name` in `dir` for reading; `O_NOATIME` is dropped when the
/// caller may not use it.
pub fn open_for_reading(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    match openat(dir, name, read_flags(), Mode::empty()) {
        Err(Errno::EPERM) => openat(dir, name, read_flags() - OFlag::O_NOATIME, Mode::empty()),
        other => other,
    }
}

/// Reads the tree below `root`, calling `emit` for each entry (the root
/// itself first, with the empty path). `emit` returns `false` to stop.
/// With a `cache`, the attributes of files unchanged since an earlier walk
/// are taken from it, and it is refreshed.
///
/// Threads read ahead of the walk ([`prefetch`](super::prefetch)), so that
/// a tree not in the kernel's cache is read from disk many requests at a
/// time.
pub fn walk(
    root: &Root,
    cache: Option<&XattrCache>,
    emit: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), ScanError> {
    super::prefetch::ahead_of(root.fd(), || walk_in_order(root, cache, emit))
}

/// The walk itself, one entry after the other.
fn walk_in_order(
    root: &Root,
    cache: Option<&XattrCache>,
    emit: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), ScanError> {
    let root_path = RelPath::root();
    let root_fd = root
        .fd()
        .try_clone_to_owned()
        .map_err(|e| fail(&root_path, "dup")(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    let stat = fstat(&root_fd).map_err(fail(&root_path, "stat"))?;
    let entry = dir_entry(root_path.clone(), &root_fd, &stat)?;
    if !emit(entry) {
        return Ok(());
    }
    let mut walker = Walker {
        inodes: HashMap::new(),
        cache,
        seen: HashMap::with_capacity(cache.map_or(0, |c| c.lock().len())),
        trust_before: now_seconds() - 1,
    };
    let names = read_names(&root_fd).map_err(fail(&root_path, "read directory"))?;
    let mut stack = vec![Frame {
        fd: root_fd,
        path: root_path,
        names,
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.pop() else {
            stack.pop();
            continue;
        };
        let path = frame.path.join(&name);
        match walker.entry(frame.fd.as_fd(), &name, path)? {
            None => {}
            Some((entry, dir_fd)) => {
                let Some(dir_fd) = dir_fd else {
                    if !emit(entry) {
                        return Ok(());
                    }
                    continue;
                };
                let path = entry.path.clone();
                if !emit(entry) {
                    return Ok(());
                }
                match read_names(&dir_fd) {
                    Ok(names) => stack.push(Frame {
                        fd: dir_fd,
                        path,
                        names,
                    }),
                    Err(errno) if vanished(errno) => {}
                    Err(errno) => return Err(fail(&path, "read directory")(errno)),
                }
            }
        }
    }
    if let Some(cache) = walker.cache {
        cache.replace(walker.seen);
    }
    Ok(())
}

/// A directory being listed: its fd, its path, and the names still to
/// visit (sorted, last first).
struct Frame {
    fd: OwnedFd,
    path: RelPath,
    names: Vec<Vec<u8>>,
}

struct Walker<'c> {
    /// First path of each multiply-linked inode seen so far.
    inodes: HashMap<(u64, u64), RelPath>,
    cache: Option<&'c XattrCache>,
    /// What the cache holds after this walk.
    seen: HashMap<(u64, u64), Cached>,
    /// Attributes of inodes whose change time is older than this (in
    /// seconds) may be cached.
    trust_before: i64,
}

impl Walker<'_> {
    /// The entry `name` in `dir`, and its fd if it is a directory; `None`
    /// if it vanished or is a device.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: RelPath,
    ) -> Result<Option<(Entry, Option<OwnedFd>)>, ScanError> {
        let stat = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(errno) if vanished(errno) => return Ok(None),
            Err(errno) => return Err(fail(&path, "stat")(errno)),
        };
        let format = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
        let inode = (stat.st_dev, stat.st_ino);
        let kind = match format {
            SFlag::S_IFDIR => {
                let fd = match openat(dir, name, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(errno) if vanished(errno) => return Ok(None),
                    Err(errno) => return Err(fail(&path, "open directory")(errno)),
                };
                // The directory actually opened, in case it was replaced.
                let stat = fstat(&fd).map_err(fail(&path, "stat"))?;
                let entry = dir_entry(path, &fd, &stat)?;
                return Ok(Some((entry, Some(fd))));
            }
            SFlag::S_IFREG => {
                if stat.st_nlink > 1 {
                    if let Some(first) = self.inodes.get(&inode) {
                        return Ok(Some((
                            plain(path, Kind::Hardlink(first.clone()), &stat),
                            None,
                        )));
                    }
                    self.inodes.insert(inode, path.clone());
                }
                return self
                    .file_entry(dir, name, path, &stat)
                    .map(|e| e.map(|e| (e, None)));
            }
            SFlag::S_IFLNK => match nix::fcntl::readlinkat(dir, name) {
                Ok(target) => Kind::Symlink(std::os::unix::ffi::OsStringExt::into_vec(target)),
                Err(errno) if vanished(errno) || errno == Errno::EINVAL => return Ok(None),
                Err(errno) => return Err(fail(&path, "read link")(errno)),
            },
            SFlag::S_IFIFO => Kind::Fifo,
            SFlag::S_IFSOCK => Kind::Socket,
            _ => {
                tracing::debug!(message = "device node not copied", path = %path);
                return Ok(None);
            }
        };
        if stat.st_nlink > 1 && !matches!(kind, Kind::Symlink(_)) {
            if let Some(first) = self.inodes.get(&inode) {
                return Ok(Some((
                    plain(path, Kind::Hardlink(first.clone()), &stat),
                    None,
                )));
            }
            self.inodes.insert(inode, path.clone());
        }
        Ok(Some((plain(path, kind, &stat), None)))
    }
}

impl Walker<'_> {
    /// A regular file: its attributes and, if sparse, its data extents.
    fn file_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: RelPath,
        stat: &FileStat,
    ) -> Result<Option<Entry>, ScanError> {
        let inode = (stat.st_dev, stat.st_ino);
        let ctime = ctime_of(stat);
        let sparse = looks_sparse(stat);
        if !sparse && let Some(xattrs) = self.cache.and_then(|c| c.lookup(inode, ctime)) {
            let mut entry = plain(path, Kind::File, stat);
            entry.xattrs = xattrs.clone();
            self.seen.insert(inode, Cached { ctime, xattrs });
            return Ok(Some(entry));
        }
        let fd = match open_for_reading(dir, name) {
            Ok(fd) => fd,
            Err(errno) if vanished(errno) => return Ok(None),
            Err(errno) => return Err(fail(&path, "open")(errno)),
        };
        let mut entry = plain(path, Kind::File, stat);
        entry.xattrs =
            xattr::list(fd.as_fd()).map_err(|e| io_fail(&entry.path, "list attributes", e))?;
        if self.cache.is_some() && !sparse && ctime.0 < self.trust_before {
            self.seen.insert(
                inode,
                Cached {
                    ctime,
                    xattrs: entry.xattrs.clone(),
                },
            );
        }
        if sparse {
            let extents =
                data_extents(fd.as_fd(), entry.size).map_err(fail(&entry.path, "seek"))?;
            if extents.iter().map(|e| e.length).sum::<u64>() < entry.size {
                entry.extents = Some(extents);
            }
        }
        Ok(Some(entry))
    }
}

/// An entry with what `stat` says and no attributes.
fn plain(path: RelPath, kind: Kind, stat: &FileStat) -> Entry {
    Entry {
        path,
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        mtime: Mtime::of(stat),
        size: u64::try_from(stat.st_size).unwrap_or(0),
        xattrs: Vec::new(),
        extents: None,
        inode: (stat.st_dev, stat.st_ino),
    }
}

fn dir_entry(path: RelPath, fd: &OwnedFd, stat: &FileStat) -> Result<Entry, ScanError> {
    let mut entry = plain(path, Kind::Dir, stat);
    entry.size = 0;
    entry.xattrs =
        xattr::list(fd.as_fd()).map_err(|e| io_fail(&entry.path, "list attributes", e))?;
    Ok(entry)
}

fn io_fail(path: &RelPath, op: &'static str, error: std::io::Error) -> ScanError {
    ScanError {
        path: path.clone(),
        op,
        errno: Errno::from_raw(error.raw_os_error().unwrap_or(0)),
    }
}

/// Whether a file has fewer blocks allocated than its length needs.
pub fn looks_sparse(stat: &FileStat) -> bool {
    let allocated = u64::try_from(stat.st_blocks)
        .unwrap_or(0)
        .saturating_mul(512);
    allocated < u64::try_from(stat.st_size).unwrap_or(0)
}

/// The regions of the file holding data, by `SEEK_DATA`/`SEEK_HOLE`.
pub fn data_extents(fd: BorrowedFd<'_>, size: u64) -> Result<Vec<Extent>, Errno> {
    let mut extents = Vec::new();
    let mut offset: u64 = 0;
    while offset < size {
        let start = match lseek(fd, to_off(offset), Whence::SeekData) {
            Ok(start) => u64::try_from(start).unwrap_or(size),
            Err(Errno::ENXIO) => break,
            Err(errno) => return Err(errno),
        };
        if start >= size {
            break;
        }
        let end = match lseek(fd, to_off(start), Whence::SeekHole) {
            Ok(end) => u64::try_from(end).unwrap_or(size).min(size),
            Err(Errno::ENXIO) => size,
            Err(errno) => return Err(errno),
        };
        if end <= start {
            break;
        }
        extents.push(Extent {
            offset: start,
            length: end - start,
        });
        offset = end;
    }
    Ok(extents)
}

/// A file offset for the C API.
pub fn to_off(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// The names in a directory, sorted, last first (popped in order).
fn read_names(fd: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let dup = fd
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    // Rewind: the duplicate shares the position of a directory read before.
    lseek(&dup, 0, Whence::SeekSet)?;
    let mut dir = nix::dir::Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

/// Reads single paths below a root, as a walk would list them, without
/// walking: a catch-up pass reads only the paths a change journal names.
/// Paths must be looked up parents first (bytewise order): a regular file
/// with several names is listed whole at the first of them looked up, and
/// as a [`Kind::Hardlink`] to it at the others, as in a walk.
pub struct Lookup<'c> {
    walker: Walker<'c>,
    /// Names found so far of each inode with several, and its link count.
    names: HashMap<(u64, u64), (nix::libc::nlink_t, nix::libc::nlink_t)>,
}

impl<'c> Lookup<'c> {
    /// A lookup reading attributes from `cache` (never refreshing it).
    pub fn new(cache: Option<&'c XattrCache>) -> Lookup<'c> {
        Lookup {
            walker: Walker {
                inodes: HashMap::new(),
                cache,
                seen: HashMap::new(),
                trust_before: now_seconds() - 1,
            },
            names: HashMap::new(),
        }
    }

    /// The entry at `path`, `None` if nothing is there (or only through a
    /// symbolic link, which is not below the root), or a device.
    pub fn entry(&mut self, root: &Root, path: &RelPath) -> Result<Option<Entry>, ScanError> {
        let Some((parent, name)) = path.split_last() else {
            let stat = fstat(root.fd()).map_err(fail(path, "stat"))?;
            let fd = root
                .fd()
                .try_clone_to_owned()
                .map_err(|e| io_fail(path, "dup", e))?;
            return dir_entry(RelPath::root(), &fd, &stat).map(Some);
        };
        let dir = match root.dir(&parent) {
            Ok(dir) => dir,
            Err(errno) if vanished(errno) => return Ok(None),
            Err(errno) => return Err(fail(path, "open parent directory")(errno)),
        };
        let found = self.walker.entry(dir.as_fd(), name, path.clone())?;
        let Some((entry, _)) = found else {
            return Ok(None);
        };
        if entry.kind != Kind::Dir
            && let Ok(stat) = fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            && stat.st_nlink > 1
            && !matches!(entry.kind, Kind::Symlink(_))
        {
            let counted = self.names.entry(entry.inode).or_insert((0, stat.st_nlink));
            counted.0 += 1;
        }
        Ok(Some(entry))
    }

    /// A file with several names of which fewer were looked up than it
    /// has: a copy of the names looked up alone would not keep it linked
    /// to the others.
    pub fn names_missing(&self) -> Option<(u64, u64)> {
        // (device, inode) of such a file.
        self.names
            .iter()
            .find(|(_, (found, links))| found < links)
            .map(|(inode, _)| *inode)
    }
}

/// Reads the whole tree below `root` into a map, for the target's
/// comparison.
pub fn scan_map(
    root: &Root,
    cache: Option<&XattrCache>,
) -> Result<std::collections::BTreeMap<RelPath, Entry>, ScanError> {
    let mut entries = std::collections::BTreeMap::new();
    walk(root, cache, &mut |entry| {
        entries.insert(entry.path.clone(), entry);
        true
    })?;
    Ok(entries)
}
