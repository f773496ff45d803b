//! Warming the kernel's caches ahead of a tree walk.
//!
//! A walk ([`scan::walk`](super::scan::walk)) reads one entry after the
//! other; on a cold cache every `stat` waits for the disk, one request at a
//! time. While it runs, a few threads list directories and `stat` their
//! entries in roughly the walk's order, so that the disk serves many
//! requests at once and the walk finds most inodes already in memory.
//! Measured on the rig's disk with 47,000 entries: a cold walk alone
//! 0.68 s; the same entries read by 8 threads 0.28 s.
//!
//! Owns nothing but its threads; what it reads is thrown away, and every
//! error is ignored (the walk reports its own). It opens directories the
//! way the walk does (relative to their parent, never through a link) and
//! never opens anything else, so it cannot reach outside the root either.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use nix::fcntl::{AtFlags, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};

use super::beneath::DIR_FLAGS;

/// Threads that read ahead of a walk.
pub const THREADS: usize = 8;

/// A directory to read: its parent (kept open while some of its
/// subdirectories wait) and its name there; the root has no parent.
struct Pending {
    parent: Option<Arc<OwnedFd>>,
    name: Vec<u8>,
}

/// Directories waiting to be read, and how many threads are reading one.
#[derive(Default)]
struct Queue {
    dirs: Vec<Pending>,
    busy: usize,
}

/// The shared state of one read-ahead.
pub struct Prefetch {
    /// The tree's root, opened by this module.
    root: Option<Arc<OwnedFd>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Prefetch {
    /// A read-ahead of the tree below `root` (a directory fd).
    pub fn new(root: BorrowedFd<'_>) -> Prefetch {
        // An open of its own: a duplicate of `root` would share its
        // directory position with the walk, which would then list some
        // names twice and miss others.
        let root = openat(root, ".", DIR_FLAGS, Mode::empty())
            .ok()
            .map(Arc::new);
        let mut queue = Queue::default();
        if root.is_some() {
            queue.dirs.push(Pending {
                parent: None,
                name: Vec::new(),
            });
        }
        Prefetch {
            root,
            queue: Mutex::new(queue),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the read-ahead: threads return as soon as they finish the
    /// directory they are reading.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _guard = self.lock();
        self.wake.notify_all();
    }

    /// One thread's work: reads queued directories until the tree is done
    /// or [`stop`](Prefetch::stop) is called.
    pub fn run(&self) {
        loop {
            let pending = {
                let mut queue = self.lock();
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(pending) = queue.dirs.pop() {
                        queue.busy += 1;
                        break pending;
                    }
                    if queue.busy == 0 {
                        self.wake.notify_all();
                        return;
                    }
                    queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
            };
            self.read(pending);
            let mut queue = self.lock();
            queue.busy -= 1;
            self.wake.notify_all();
        }
    }

    /// Opens and lists one directory, stats its entries, and queues its
    /// subdirectories, first names last so that they are taken first, as
    /// the walk goes. The queue holds names, not open directories: open
    /// fds stay few however wide or deep the tree.
    fn read(&self, pending: Pending) {
        let dir = match &pending.parent {
            None => self.root.clone(),
            Some(parent) => openat(
                parent.as_fd(),
                pending.name.as_slice(),
                DIR_FLAGS,
                Mode::empty(),
            )
            .ok()
            .map(Arc::new),
        };
        drop(pending);
        let Some(dir) = dir else { return };
        let Ok(listing) = openat(dir.as_fd(), ".", DIR_FLAGS, Mode::empty()) else {
            return;
        };
        let Ok(names) = names(listing) else { return };
        let mut subdirs = Vec::new();
        for name in names {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(stat) = fstatat(dir.as_fd(), name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
                subdirs.push(name);
            }
        }
        if subdirs.is_empty() {
            return;
        }
        let mut queue = self.lock();
        for name in subdirs.into_iter().rev() {
            queue.dirs.push(Pending {
                parent: Some(dir.clone()),
                name,
            });
        }
        self.wake.notify_all();
    }
}

/// The names in a directory (opened by this module: nobody else reads
/// from its position), sorted.
fn names(dir: OwnedFd) -> Result<Vec<Vec<u8>>, nix::errno::Errno> {
    let mut listing = nix::dir::Dir::from_fd(dir)?;
    let mut names: Vec<Vec<u8>> = listing
        .iter()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_bytes().to_vec())
        .filter(|name| name != b"." && name != b"..")
        .collect();
    names.sort_unstable();
    Ok(names)
}

/// Runs `walk` on this thread while [`THREADS`] threads read ahead of it
/// below `root`; returns what `walk` returns once every thread is done.
pub fn ahead_of<T>(root: BorrowedFd<'_>, walk: impl FnOnce() -> T) -> T {
    let prefetch = Prefetch::new(root);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            // Best effort: a thread the system will not give is one fewer
            // reading ahead, not a failed walk.
            let _ = std::thread::Builder::new()
                .name("navette-readahead".to_owned())
                .spawn_scoped(scope, || prefetch.run());
        }
        let result = walk();
        prefetch.stop();
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_whole_tree_and_stops_by_itself() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("navette-prefetch-{}", std::process::id()));
        for i in 0..300 {
            std::fs::create_dir_all(dir.join(format!("a{}/b{}", i % 7, i % 13)))?;
            std::fs::write(dir.join(format!("a{}/b{}/f{i}", i % 7, i % 13)), b"x")?;
        }
        std::os::unix::fs::symlink("/", dir.join("a0/escape"))?;
        // A deep chain: the queue holds names, so depth costs no stack.
        let mut deep = dir.join("deep");
        for _ in 0..60 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep)?;
        // A root too big for one directory read, so that a walk and the
        // threads reading it at once would interleave if they shared it.
        for i in 0..3000 {
            std::fs::write(
                dir.join(format!("top-level-file-with-a-long-name-{i:05}")),
                b"",
            )?;
        }
        let root = nix::fcntl::open(&dir, DIR_FLAGS, Mode::empty())?;
        // Without a walk to wait for, the threads end when the tree is read.
        let prefetch = Prefetch::new(root.as_fd());
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| prefetch.run());
            }
        });
        let queue = prefetch.lock();
        assert!(queue.dirs.is_empty() && queue.busy == 0);
        drop(queue);
        // Stopped early, ahead_of still returns the walk's result.
        assert_eq!(ahead_of(root.as_fd(), || 42), 42);
        // A walk with threads reading ahead lists every entry exactly once.
        let tree = super::super::beneath::Root::open(&dir)?;
        for _ in 0..20 {
            let mut paths = Vec::new();
            super::super::scan::walk(&tree, None, &mut |entry| {
                paths.push(entry.path);
                true
            })?;
            let listed = paths.len();
            paths.sort();
            paths.dedup();
            // The root, 7 + 7 * 13 directories, 3,300 files, a link, and
            // 61 directories of the deep chain.
            assert_eq!((listed, paths.len()), (3461, 3461));
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
