//! Reaching the filesystem below a root directory without ever leaving it.
//!
//! A [`Root`] is an open directory. Directories below it are opened one
//! component at a time with `O_DIRECTORY | O_NOFOLLOW`, each relative to the
//! one before, so a path can neither climb out (paths are [`RelPath`]s: no
//! `..`) nor pass through a symbolic link: a link where a directory is
//! expected fails with `ELOOP`, anything else with `ENOTDIR`. Every other
//! operation then works on one plain name relative to such a directory fd,
//! with the `*at` calls that do not follow a final symbolic link.
//!
//! Opened directories are cached by path; whoever replaces or removes a
//! directory must call [`Root::forget`].

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::path::RelPath;

/// Flags every directory below a root is opened with.
pub const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// How many directory fds a root keeps open at most.
const CACHE_LIMIT: usize = 2048;

/// An open directory that every operation stays below.
#[derive(Debug)]
pub struct Root {
    /// For messages only; never used to reach the filesystem after opening.
    path: PathBuf,
    fd: Arc<OwnedFd>,
    /// Directories below the root opened so far, by path.
    dirs: Mutex<HashMap<RelPath, Arc<OwnedFd>>>,
}

impl Root {
    /// Opens `path`, which must be a directory and not a symbolic link.
    pub fn open(path: &Path) -> Result<Root, Errno> {
        let fd = nix::fcntl::open(path, DIR_FLAGS, Mode::empty())?;
        Ok(Root {
            path: path.to_path_buf(),
            fd: Arc::new(fd),
            dirs: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<RelPath, Arc<OwnedFd>>> {
        self.dirs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The directory at `path`, opened component by component without
    /// following any symbolic link.
    pub fn dir(&self, path: &RelPath) -> Result<Arc<OwnedFd>, Errno> {
        if path.is_root() {
            return Ok(self.fd.clone());
        }
        if let Some(fd) = self.cache().get(path) {
            return Ok(fd.clone());
        }
        // Walk up to the nearest directory already open, then down again.
        let mut missing = vec![path.clone()];
        let mut base = self.fd.clone();
        while let Some((parent, _)) = missing.last().and_then(RelPath::split_last) {
            if parent.is_root() {
                break;
            }
            if let Some(fd) = self.cache().get(&parent) {
                base = fd.clone();
                break;
            }
            missing.push(parent);
        }
        while let Some(next) = missing.pop() {
            let fd = Arc::new(openat(base.as_fd(), next.name(), DIR_FLAGS, Mode::empty())?);
            let mut cache = self.cache();
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(next, fd.clone());
            base = fd;
        }
        Ok(base)
    }

    /// Forgets the cached fds of `path` and everything below it (call after
    /// removing or replacing it).
    pub fn forget(&self, path: &RelPath) {
        self.cache().retain(|cached, _| !cached.starts_with(path));
    }

    /// Opens the non-directory at `path` with `flags` (plus `O_NOFOLLOW`
    /// and `O_CLOEXEC`), its parents resolved as in [`Root::dir`].
    pub fn open_file(&self, path: &RelPath, flags: OFlag) -> Result<OwnedFd, Errno> {
        let Some((parent, name)) = path.split_last() else {
            return Err(Errno::EISDIR);
        };
        let dir = self.dir(&parent)?;
        openat(
            dir.as_fd(),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_links_are_never_crossed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("navette-beneath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/real"))?;
        std::fs::create_dir_all(dir.join("outside"))?;
        std::fs::write(dir.join("outside/secret"), b"x")?;
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("root/link"))?;
        let root = Root::open(&dir.join("root"))?;
        assert!(root.dir(&RelPath::parse(b"real")?).is_ok());
        let refused = |errno: Option<Errno>| matches!(errno, Some(Errno::ELOOP | Errno::ENOTDIR));
        assert!(refused(root.dir(&RelPath::parse(b"link")?).err()));
        assert!(refused(
            root.open_file(&RelPath::parse(b"link/secret")?, OFlag::O_RDONLY)
                .err()
        ));
        assert!(Root::open(&dir.join("root/link")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
