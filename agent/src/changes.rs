//! The change journal of a home: which paths under it changed since the
//! journal started, or since its changes were last taken.
//!
//! *Migrate* copies a home while the account works, then sends what
//! changed in catch-up passes, the last one inside the freeze. A pass must
//! not walk the tree (a walk grows with the home's size, and the freeze
//! must not): it takes the journal's changes and compares only those
//! paths. The journal starts before the full copy reads the tree, so what
//! exists when a directory is first watched is the full copy's business,
//! and everything after is an event.
//!
//! Built on inotify (through `nix`): one watch per directory of the home,
//! added top-down (a directory is watched before it is listed, so an entry
//! created meanwhile is an event, never lost between the two). A directory
//! created or moved in is watched and walked at once, and all it holds is
//! recorded: its content may predate its watch. A directory renamed inside
//! the home records both names, whole.
//!
//! # Completeness at a barrier
//!
//! The kernel queues an event when the system call that made the change
//! returns. So once the account's processes are frozen, [`ChangeJournal::take`],
//! which drains the queue until the kernel has nothing more, holds every
//! change made before the freeze. A background thread drains the queue
//! meanwhile, so that it does not overflow while a long copy runs.
//!
//! # Trust
//!
//! A journal that may have missed something says so ([`Changes::untrusted`])
//! and stays so until it is started again: the kernel's queue overflowed
//! (`fs.inotify.max_queued_events`), a directory could not be watched (the
//! watch limit `fs.inotify.max_user_watches`, or no permission), or the
//! home itself was moved or deleted. Its caller then compares the whole
//! tree, before the freeze, never inside it. inotify never reports a write
//! through a shared memory mapping, nor a change made through a hard link
//! from outside the home: whoever relies on the journal must account for
//! those (the cutover does, by what it compares inside the freeze).
//!
//! Paths are relative to the home, never followed through symbolic links.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};

/// How long the drain thread waits for events before it checks whether the
/// journal was dropped.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// What a directory's watch reports: every change to an entry's content,
/// metadata or name, and the directory's own end.
fn watched_events() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_DONT_FOLLOW
        | AddWatchFlags::IN_ONLYDIR
        | IN_EXCL_UNLINK
}

/// `IN_EXCL_UNLINK` (`<sys/inotify.h>`, which `nix` does not name): no
/// events for an entry once it is unlinked, though a process still holds
/// it open (a deleted temporary file being written).
const IN_EXCL_UNLINK: AddWatchFlags = AddWatchFlags::from_bits_retain(0x0400_0000);

/// Why a journal could not start.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot start a change journal (inotify)")]
    Init(#[source] Errno),
    #[error("cannot watch {}: it is not a directory this agent can read", .0.display())]
    Root(PathBuf, #[source] Errno),
}

/// What changed since the last [`ChangeJournal::take`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Paths relative to the home, each at most once, parents before their
    /// entries. A path may name something that no longer exists (deleted,
    /// or renamed away).
    pub paths: Vec<PathBuf>,
    /// Why the journal may have missed changes, if it may have: the caller
    /// must then compare the whole tree.
    pub untrusted: Option<String>,
}

/// A running journal of one home. Dropping it stops the watching.
pub struct ChangeJournal {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    journal: Mutex<Journal>,
    stop: AtomicBool,
}

/// The watches and what they reported.
struct Journal {
    root: PathBuf,
    inotify: Inotify,
    /// Each watched directory, relative to the root ("" is the root).
    dirs: HashMap<WatchDescriptor, PathBuf>,
    changed: BTreeSet<PathBuf>,
    untrusted: Option<String>,
}

impl ChangeJournal {
    /// Watches every directory under `root` (which must be a directory) and
    /// starts recording.
    pub fn start(root: &Path) -> Result<ChangeJournal, JournalError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(JournalError::Init)?;
        let mut journal = Journal {
            root: root.to_path_buf(),
            inotify,
            dirs: HashMap::new(),
            changed: BTreeSet::new(),
            untrusted: None,
        };
        let wd = journal
            .inotify
            .add_watch(root, watched_events())
            .map_err(|errno| JournalError::Root(root.to_path_buf(), errno))?;
        journal.dirs.insert(wd, PathBuf::new());
        journal.watch_below(Path::new(""), false);
        let shared = Arc::new(Shared {
            journal: Mutex::new(journal),
            stop: AtomicBool::new(false),
        });
        // The thread polls its own descriptor of the same inotify instance,
        // so that it waits without holding the lock `take` needs.
        let thread = nix::unistd::dup(lock(&shared.journal).inotify.as_fd())
            .ok()
            .and_then(|events| {
                let drainer = shared.clone();
                std::thread::Builder::new()
                    .name("change-journal".into())
                    .spawn(move || drain_until_stopped(&drainer, &events))
                    .ok()
            });
        if thread.is_none() {
            lock(&shared.journal).distrust("no thread could be started to read the journal");
        }
        Ok(ChangeJournal { shared, thread })
    }

    /// Every change the kernel has reported so far, and a fresh start for
    /// the next pass.
    pub fn take(&self) -> Changes {
        let mut journal = lock(&self.shared.journal);
        journal.drain();
        Changes {
            paths: std::mem::take(&mut journal.changed).into_iter().collect(),
            untrusted: journal.untrusted.clone(),
        }
    }

    /// How many paths changed since the last [`ChangeJournal::take`],
    /// without taking them (the backlog a pass would compare).
    pub fn pending(&self) -> usize {
        let mut journal = lock(&self.shared.journal);
        journal.drain();
        journal.changed.len()
    }

    /// Why the journal may have missed changes, if it may have.
    pub fn untrusted(&self) -> Option<String> {
        lock(&self.shared.journal).untrusted.clone()
    }

    /// How many directories are watched.
    pub fn watched_directories(&self) -> usize {
        lock(&self.shared.journal).dirs.len()
    }
}

impl Drop for ChangeJournal {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _joined = thread.join();
        }
    }
}

fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    journal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drains the queue whenever the kernel has events, so that it does not
/// overflow between two passes.
fn drain_until_stopped(shared: &Shared, events: &OwnedFd) {
    let wait = PollTimeout::try_from(DRAIN_WAIT).unwrap_or(PollTimeout::MAX);
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => lock(&shared.journal).drain(),
            Err(errno) => {
                lock(&shared.journal).distrust(&format!("waiting for the journal failed: {errno}"));
                return;
            }
        }
    }
}

impl Journal {
    fn distrust(&mut self, why: &str) {
        if self.untrusted.is_none() {
            tracing::warn!(
                message = "the change journal may have missed changes; the next pass compares the whole tree",
                home = %self.root.display(),
                why
            );
            self.untrusted = Some(why.to_owned());
        }
    }

    /// Reads every queued event.
    fn drain(&mut self) {
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => return,
                Ok(events) => {
                    for event in events {
                        self.apply(event);
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    self.distrust(&format!("reading the journal failed: {errno}"));
                    return;
                }
            }
        }
    }

    fn apply(&mut self, event: InotifyEvent) {
        let mask = event.mask;
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            self.distrust(
                "the kernel's event queue overflowed (raise fs.inotify.max_queued_events)",
            );
            return;
        }
        let Some(dir) = self.dirs.get(&event.wd).cloned() else {
            // A watch removed meanwhile (its directory went).
            return;
        };
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&event.wd);
            return;
        }
        if mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF) {
            if dir.as_os_str().is_empty() {
                self.distrust("the home itself was moved or deleted");
            }
            // A directory below: its parent reports the name that went.
            return;
        }
        let Some(name) = event.name.as_deref() else {
            // An event on the directory itself (its metadata).
            self.changed.insert(dir);
            return;
        };
        let path = dir.join(name);
        let is_dir = mask.contains(AddWatchFlags::IN_ISDIR);
        if is_dir && mask.contains(AddWatchFlags::IN_MOVED_FROM) {
            // Its watches now follow it wherever it went; they are mapped
            // again if it comes back under the home (IN_MOVED_TO), and
            // forgotten here, so events never carry the old name.
            self.forget_below(&path);
        }
        if is_dir && mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
            self.changed.insert(path.clone());
            self.watch(&path, true);
            return;
        }
        self.changed.insert(path);
    }

    /// Watches `rel` and everything below it; with `record`, every entry
    /// found is recorded as changed (they may predate the watches).
    fn watch(&mut self, rel: &Path, record: bool) {
        let absolute = self.root.join(rel);
        match self.inotify.add_watch(&absolute, watched_events()) {
            Ok(wd) => {
                self.dirs.insert(wd, rel.to_path_buf());
                self.watch_below(rel, record);
            }
            // Gone again, or not a directory any more: its parent's events
            // tell.
            Err(Errno::ENOENT | Errno::ENOTDIR) => {}
            Err(Errno::ENOSPC) => self
                .distrust("the inotify watch limit is reached (raise fs.inotify.max_user_watches)"),
            Err(errno) => self.distrust(&format!("cannot watch {}: {errno}", rel.display())),
        }
    }

    /// Lists `rel` (already watched) and watches its subdirectories; with
    /// `record`, every entry found is recorded as changed.
    fn watch_below(&mut self, rel: &Path, record: bool) {
        let absolute = self.root.join(rel);
        let entries = match std::fs::read_dir(&absolute) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                self.distrust(&format!("cannot list {}: {error}", absolute.display()));
                return;
            }
        };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            if record {
                self.changed.insert(child.clone());
            }
            // `file_type` does not follow symbolic links.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.watch(&child, record);
            }
        }
    }

    /// Forgets the watches of `rel` and below (moved away).
    fn forget_below(&mut self, rel: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, dir)| dir.starts_with(rel))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            // Moved out of the home, its watches would report changes
            // elsewhere: stop them (an error means the kernel already did).
            let _removed = self.inotify.rm_watch(wd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "navette-changes-{label}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temporary directory can be made");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn paths(changes: &Changes) -> Vec<String> {
        changes
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn every_kind_of_change_is_recorded_once_and_taking_starts_afresh()
    -> Result<(), Box<dyn std::error::Error>> {
        let home = TempDir::new("kinds");
        let root = &home.0;
        std::fs::create_dir_all(root.join("www/img"))?;
        std::fs::write(root.join("www/index.php"), "v1")?;
        std::fs::write(root.join("www/img/logo.png"), "png")?;
        std::fs::write(root.join("notes.txt"), "n")?;
        std::fs::write(root.join("old-name"), "o")?;
        let journal = ChangeJournal::start(root)?;
        assert_eq!(journal.watched_directories(), 3);
        assert_eq!(journal.take(), Changes::default(), "nothing yet");

        std::fs::write(root.join("www/index.php"), "v2 and more")?;
        std::fs::write(root.join("www/index.php"), "v3")?;
        std::fs::set_permissions(
            root.join("www/img/logo.png"),
            std::fs::Permissions::from_mode(0o600),
        )?;
        std::fs::remove_file(root.join("notes.txt"))?;
        std::fs::rename(root.join("old-name"), root.join("www/new-name"))?;
        std::fs::write(root.join("fresh.txt"), "f")?;
        let changes = journal.take();
        assert_eq!(changes.untrusted, None);
        assert_eq!(
            paths(&changes),
            [
                "fresh.txt",
                "notes.txt",
                "old-name",
                "www/img/logo.png",
                "www/index.php",
                "www/new-name"
            ]
        );
        assert_eq!(journal.take(), Changes::default(), "taken once");
        Ok(())
    }

    #[test]
    fn a_new_directory_and_what_it_already_holds_are_recorded_and_watched()
    -> Result<(), Box<dyn std::error::Error>> {
        let home = TempDir::new("newdir");
        let root = &home.0;
        let journal = ChangeJournal::start(root)?;
        // Made in one go: the deeper entries may exist before the journal
        // hears of the top directory.
        std::fs::create_dir_all(root.join("a/b/c"))?;
        std::fs::write(root.join("a/b/c/deep.txt"), "d")?;
        let changes = journal.take();
        assert_eq!(paths(&changes), ["a", "a/b", "a/b/c", "a/b/c/deep.txt"]);
        assert_eq!(journal.watched_directories(), 4);
        // And it is watched from now on.
        std::fs::write(root.join("a/b/c/later.txt"), "l")?;
        assert_eq!(paths(&journal.take()), ["a/b/c/later.txt"]);
        Ok(())
    }

    #[test]
    fn a_renamed_directory_reports_under_its_new_name() -> Result<(), Box<dyn std::error::Error>> {
        let home = TempDir::new("rename");
        let root = &home.0;
        std::fs::create_dir_all(root.join("site/assets"))?;
        std::fs::write(root.join("site/assets/app.js"), "js")?;
        let journal = ChangeJournal::start(root)?;
        std::fs::rename(root.join("site"), root.join("site-v2"))?;
        assert_eq!(
            paths(&journal.take()),
            ["site", "site-v2", "site-v2/assets", "site-v2/assets/app.js"]
        );
        std::fs::write(root.join("site-v2/assets/app.js"), "js2")?;
        assert_eq!(paths(&journal.take()), ["site-v2/assets/app.js"]);
        Ok(())
    }

    #[test]
    fn a_directory_moved_out_of_the_home_is_forgotten() -> Result<(), Box<dyn std::error::Error>> {
        let home = TempDir::new("moveout");
        let outside = TempDir::new("outside");
        let root = &home.0;
        std::fs::create_dir_all(root.join("tmp/cache"))?;
        let journal = ChangeJournal::start(root)?;
        std::fs::rename(root.join("tmp"), outside.0.join("tmp"))?;
        assert_eq!(paths(&journal.take()), ["tmp"]);
        std::fs::write(outside.0.join("tmp/cache/x"), "x")?;
        assert_eq!(
            journal.take(),
            Changes::default(),
            "not the home's any more"
        );
        assert_eq!(journal.watched_directories(), 1);
        Ok(())
    }

    #[test]
    fn symbolic_links_are_recorded_not_followed() -> Result<(), Box<dyn std::error::Error>> {
        let home = TempDir::new("links");
        let elsewhere = TempDir::new("elsewhere");
        let root = &home.0;
        let journal = ChangeJournal::start(root)?;
        std::os::unix::fs::symlink(&elsewhere.0, root.join("link"))?;
        std::fs::write(elsewhere.0.join("secret"), "s")?;
        assert_eq!(paths(&journal.take()), ["link"]);
        assert_eq!(journal.watched_directories(), 1);
        Ok(())
    }

    #[test]
    fn a_home_moved_away_makes_the_journal_untrusted() -> Result<(), Box<dyn std::error::Error>> {
        let home = TempDir::new("gone");
        let root = &home.0;
        std::fs::create_dir_all(root.join("h"))?;
        let journal = ChangeJournal::start(&root.join("h"))?;
        std::fs::rename(root.join("h"), root.join("h2"))?;
        let changes = journal.take();
        assert!(
            changes
                .untrusted
                .as_deref()
                .is_some_and(|why| why.contains("moved or deleted")),
            "{changes:?}"
        );
        Ok(())
    }

    #[test]
    fn changes_made_while_nobody_takes_them_are_kept_by_the_drain_thread()
    -> Result<(), Box<dyn std::error::Error>> {
        let home = TempDir::new("drain");
        let root = &home.0;
        let journal = ChangeJournal::start(root)?;
        // Three events a file: far more than the kernel queues
        // (fs.inotify.max_queued_events is 16384 by default).
        for i in 0..20_000 {
            std::fs::write(root.join(format!("f{i}")), "x")?;
        }
        let changes = journal.take();
        assert_eq!(changes.untrusted, None);
        assert_eq!(changes.paths.len(), 20_000);
        Ok(())
    }
}
