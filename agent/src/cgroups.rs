//! Each account's processes in a control group of their own, which the
//! agent can freeze, thaw and empty.
//!
//! An account's sites (its PHP pool, its cron jobs) run in
//! `<hierarchy>/<base>/<account>`. *Migrate*'s cutover freezes that group
//! for about a second while the last changes are sent: frozen processes
//! keep their connections and the kernel keeps accepting new ones into
//! their listening sockets' backlog, so clients wait instead of failing
//! (checked on the rig: see `../shared/RIG.md`, "Freezing an account's
//! processes"). *Test* starts the copy's sites in a group on the test host
//! and empties it when the test goes.
//!
//! Two kinds of hierarchy, the same operations:
//! - cgroup v2 (Debian 12's default, `/sys/fs/cgroup`): `cgroup.freeze`,
//!   confirmed by `frozen 1` in `cgroup.events`; `cgroup.kill` empties;
//! - cgroup v1's `freezer` controller (`/sys/fs/cgroup/freezer`):
//!   `freezer.state` goes `FREEZING` then `FROZEN`; emptying sends SIGKILL
//!   to each process of a frozen group, then thaws it so they die.
//!
//! Invariants: a group is only ever named after a valid account name, under
//! the agent's own base directory; every operation is idempotent (freezing
//! a frozen group, thawing a thawed one, creating one that exists, removing
//! one that is gone); a freeze is bounded: [`AccountGroup::freeze_for`]
//! returns a guard that thaws the group when dropped or when its deadline
//! passes, whichever comes first, so an interrupted cutover never leaves a
//! customer's sites frozen, and [`AccountGroups::thaw_all`] (run when the
//! agent starts) thaws what a crash left frozen.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::inventory::accounts::is_valid_account_name;

/// How often a freeze or a thaw in progress is checked.
const POLL: Duration = Duration::from_micros(200);

/// Which kind of hierarchy the groups live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2: `cgroup.freeze`, `cgroup.events`, `cgroup.kill`.
    V2,
    /// cgroup v1's freezer controller: `freezer.state`.
    V1Freezer,
}

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup hierarchy with a freezer under {}: neither cgroup v2 (cgroup.controllers) nor cgroup v1's freezer controller is mounted",
        .0.display()
    )]
    NoFreezer(PathBuf),
    #[error("{0:?} is not an account name")]
    BadAccount(String),
    #[error("{what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the processes of {account} did not freeze within {waited:?}; the group was thawed again"
    )]
    FreezeTimeout { account: String, waited: Duration },
    #[error("{account}'s group still holds {left} processes: stop them before removing it")]
    NotEmpty { account: String, left: usize },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The agent's groups: one directory of a hierarchy, one group per account
/// below it.
#[derive(Clone, Debug)]
pub struct AccountGroups {
    hierarchy: Hierarchy,
    base: PathBuf,
}

impl AccountGroups {
    /// The groups under `<mount>/<base>` of the hierarchy found at `mount`
    /// (`/sys/fs/cgroup`: v2 if it is a cgroup2 mount, else v1's freezer
    /// below it). Creates the base directory if needed.
    pub fn open(mount: &Path, base: &str) -> Result<AccountGroups, CgroupError> {
        let (hierarchy, root) = if mount.join("cgroup.controllers").exists() {
            (Hierarchy::V2, mount.to_path_buf())
        } else if mount.join("freezer").join("freezer.state").exists()
            || mount.join("freezer").join("cgroup.procs").exists()
        {
            (Hierarchy::V1Freezer, mount.join("freezer"))
        } else {
            return Err(CgroupError::NoFreezer(mount.to_path_buf()));
        };
        Self::at(hierarchy, &root.join(base))
    }

    /// The groups under `base`, a directory of a `hierarchy` mount.
    pub fn at(hierarchy: Hierarchy, base: &Path) -> Result<AccountGroups, CgroupError> {
        create_dir(base)?;
        Ok(AccountGroups {
            hierarchy,
            base: base.to_path_buf(),
        })
    }

    pub fn hierarchy(&self) -> Hierarchy {
        self.hierarchy
    }

    /// `account`'s group, created if it does not exist.
    pub fn ensure(&self, account: &str) -> Result<AccountGroup, CgroupError> {
        if !is_valid_account_name(account) {
            return Err(CgroupError::BadAccount(account.to_owned()));
        }
        let path = self.base.join(account);
        create_dir(&path)?;
        Ok(AccountGroup {
            hierarchy: self.hierarchy,
            account: account.to_owned(),
            path,
        })
    }

    /// Thaws every group left frozen (by a crash in a cutover); returns the
    /// accounts thawed.
    pub fn thaw_all(&self) -> Result<Vec<String>, CgroupError> {
        let mut thawed = Vec::new();
        let entries = std::fs::read_dir(&self.base).map_err(io_error("listing", &self.base))?;
        for entry in entries.flatten() {
            let Some(account) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_valid_account_name(&account) || !entry.path().is_dir() {
                continue;
            }
            let group = self.ensure(&account)?;
            if group.is_frozen()? {
                group.thaw()?;
                tracing::warn!(message = "thawed an account left frozen", %account);
                thawed.push(account);
            }
        }
        Ok(thawed)
    }
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(CgroupError::Io {
            what: "creating the control group",
            path: path.to_path_buf(),
            source: error,
        }),
    }
}

/// One account's group.
#[derive(Clone, Debug)]
pub struct AccountGroup {
    hierarchy: Hierarchy,
    account: String,
    path: PathBuf,
}

impl AccountGroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` (and, from now on, what it starts) into the group.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(io_error("writing", &procs))
    }

    /// The processes in the group.
    pub fn processes(&self) -> Result<Vec<u32>, CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs).map_err(io_error("reading", &procs))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Whether the group is frozen (all its processes stopped by the
    /// kernel). A freeze still in progress is not frozen.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self.hierarchy {
            Hierarchy::V2 => {
                let events = self.path.join("cgroup.events");
                let text =
                    std::fs::read_to_string(&events).map_err(io_error("reading", &events))?;
                Ok(text.lines().any(|line| line.trim() == "frozen 1"))
            }
            Hierarchy::V1Freezer => Ok(self.v1_state()? == "FROZEN"),
        }
    }

    fn v1_state(&self) -> Result<String, CgroupError> {
        let state = self.path.join("freezer.state");
        Ok(std::fs::read_to_string(&state)
            .map_err(io_error("reading", &state))?
            .trim()
            .to_owned())
    }

    /// Asks the kernel to freeze (`true`) or thaw (`false`) the group.
    fn request(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value) = match (self.hierarchy, frozen) {
            (Hierarchy::V2, true) => ("cgroup.freeze", "1"),
            (Hierarchy::V2, false) => ("cgroup.freeze", "0"),
            (Hierarchy::V1Freezer, true) => ("freezer.state", "FROZEN"),
            (Hierarchy::V1Freezer, false) => ("freezer.state", "THAWED"),
        };
        let path = self.path.join(file);
        std::fs::write(&path, value).map_err(io_error("writing", &path))
    }

    /// Freezes the group and waits until the kernel says it is frozen, at
    /// most `timeout` (then thaws it again and fails). Returns how long the
    /// freeze took. Prefer [`AccountGroup::freeze_for`], which also bounds
    /// how long the group stays frozen.
    pub fn freeze(&self, timeout: Duration) -> Result<Duration, CgroupError> {
        let started = Instant::now();
        self.request(true)?;
        loop {
            if self.is_frozen()? {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                self.thaw()?;
                return Err(CgroupError::FreezeTimeout {
                    account: self.account.clone(),
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Thaws the group (nothing to do if it is not frozen); returns how long
    /// it took.
    pub fn thaw(&self) -> Result<Duration, CgroupError> {
        let started = Instant::now();
        self.request(false)?;
        loop {
            let thawed = match self.hierarchy {
                Hierarchy::V2 => !self.is_frozen()?,
                Hierarchy::V1Freezer => self.v1_state()? == "THAWED",
            };
            if thawed {
                return Ok(started.elapsed());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Freezes the group for at most `longest`: the guard thaws it when
    /// dropped, when [`Frozen::thaw`] is called, or when `longest` has
    /// passed, whichever comes first.
    pub fn freeze_for(&self, timeout: Duration, longest: Duration) -> Result<Frozen, CgroupError> {
        let took = self.freeze(timeout)?;
        let thawed = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (group, thawed) = (self.clone(), thawed.clone());
            std::thread::Builder::new()
                .name("freeze-deadline".into())
                .spawn(move || {
                    let deadline = Instant::now() + longest;
                    while Instant::now() < deadline {
                        if thawed.load(Ordering::Acquire) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5).min(longest));
                    }
                    if !thawed.swap(true, Ordering::AcqRel) {
                        tracing::warn!(
                            message = "a freeze reached its deadline; the account is thawed",
                            account = %group.account,
                            longest = ?longest
                        );
                        if let Err(error) = group.thaw() {
                            tracing::error!(message = "thawing at the deadline failed", account = %group.account, %error);
                        }
                    }
                })
        };
        if let Err(error) = watchdog {
            // No deadline can be kept: do not stay frozen.
            self.thaw()?;
            return Err(CgroupError::Io {
                what: "starting the freeze deadline for",
                path: self.path.clone(),
                source: error,
            });
        }
        Ok(Frozen {
            group: self.clone(),
            thawed,
            took,
        })
    }

    /// Kills every process of the group and waits until it is empty, at
    /// most `timeout`.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let started = Instant::now();
        match self.hierarchy {
            Hierarchy::V2 => {
                let kill = self.path.join("cgroup.kill");
                std::fs::write(&kill, "1").map_err(io_error("writing", &kill))?;
            }
            Hierarchy::V1Freezer => {
                // Frozen, nothing can fork meanwhile; the kills are taken
                // when the group thaws.
                self.freeze(timeout)?;
                for pid in self.processes()? {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _gone = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                self.thaw()?;
            }
        }
        while !self.processes()?.is_empty() {
            if started.elapsed() > timeout {
                return Err(CgroupError::NotEmpty {
                    account: self.account.clone(),
                    left: self.processes()?.len(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Removes the group, which must be empty; nothing to do if it is gone.
    pub fn remove(&self) -> Result<(), CgroupError> {
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) if error.raw_os_error() == Some(nix::libc::EBUSY) => {
                Err(CgroupError::NotEmpty {
                    account: self.account.clone(),
                    left: self.processes().map(|p| p.len()).unwrap_or(0),
                })
            }
            Err(error) => Err(CgroupError::Io {
                what: "removing the control group",
                path: self.path.clone(),
                source: error,
            }),
        }
    }
}

/// A frozen group; thawed when dropped, at the latest at its deadline.
#[derive(Debug)]
pub struct Frozen {
    group: AccountGroup,
    thawed: Arc<AtomicBool>,
    took: Duration,
}

impl Frozen {
    /// How long the kernel took to freeze the group.
    pub fn took(&self) -> Duration {
        self.took
    }

    /// Whether the freeze has ended (thawed, or its deadline passed).
    pub fn is_thawed(&self) -> bool {
        self.thawed.load(Ordering::Acquire)
    }

    /// Thaws now; returns how long the thaw took (zero if the deadline
    /// already thawed it).
    pub fn thaw(self) -> Result<Duration, CgroupError> {
        self.thaw_once()
    }

    fn thaw_once(&self) -> Result<Duration, CgroupError> {
        if self.thawed.swap(true, Ordering::AcqRel) {
            return Ok(Duration::ZERO);
        }
        self.group.thaw()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(error) = self.thaw_once() {
            tracing::error!(message = "thawing a frozen account failed", account = %self.group.account, %error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A process appending to a file as fast as it can, in its own group
    /// under a base of this test's own.
    struct Writer {
        child: Child,
        file: PathBuf,
        groups: AccountGroups,
        group: AccountGroup,
    }

    impl Writer {
        fn start(hierarchy: Hierarchy, label: &str) -> Result<Writer, Box<dyn std::error::Error>> {
            let mount = match hierarchy {
                // Pure v2 (Debian 12), or the v2 half of a hybrid mount
                // (the rig's machines).
                Hierarchy::V2 if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() => {
                    PathBuf::from("/sys/fs/cgroup")
                }
                Hierarchy::V2 => PathBuf::from("/sys/fs/cgroup/unified"),
                Hierarchy::V1Freezer => PathBuf::from("/sys/fs/cgroup/freezer"),
            };
            let base = mount.join(format!("navette-test-{label}-{}", std::process::id()));
            let groups = AccountGroups::at(hierarchy, &base)?;
            let group = groups.ensure("nvcg_alice")?;
            let file =
                std::env::temp_dir().join(format!("navette-cg-{label}-{}", std::process::id()));
            let child = Command::new("sh")
                .arg("-c")
                .arg("while :; do echo x >> \"$0\"; done")
                .arg(&file)
                .spawn()?;
            group.add_process(child.id())?;
            Ok(Writer {
                child,
                file,
                groups,
                group,
            })
        }

        fn written(&self) -> u64 {
            std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0)
        }

        /// Whether the file grows within a while.
        fn grows(&self) -> bool {
            let before = self.written();
            std::thread::sleep(Duration::from_millis(150));
            self.written() > before
        }
    }

    impl Drop for Writer {
        fn drop(&mut self) {
            let _ = self.group.thaw();
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = self.group.remove();
            let _ = std::fs::remove_dir(&self.groups.base);
            let _ = std::fs::remove_file(&self.file);
        }
    }

    fn freeze_and_thaw(hierarchy: Hierarchy, label: &str) -> TestResult {
        let writer = Writer::start(hierarchy, label)?;
        let group = &writer.group;
        assert_eq!(group.processes()?, [writer.child.id()]);
        std::thread::sleep(Duration::from_millis(50));
        assert!(writer.grows(), "the writer writes");

        let took = group.freeze(Duration::from_secs(5))?;
        assert!(group.is_frozen()?);
        assert!(!writer.grows(), "a frozen writer writes nothing");
        // Idempotent.
        group.freeze(Duration::from_secs(5))?;
        eprintln!("{hierarchy:?}: frozen in {took:?}");
        let thawed = group.thaw()?;
        eprintln!("{hierarchy:?}: thawed in {thawed:?}");
        assert!(!group.is_frozen()?);
        assert!(writer.grows(), "a thawed writer writes again");
        group.thaw()?;

        // A bounded freeze thaws by itself at its deadline...
        let frozen = group.freeze_for(Duration::from_secs(5), Duration::from_millis(300))?;
        assert!(group.is_frozen()?);
        std::thread::sleep(Duration::from_millis(600));
        assert!(!group.is_frozen()?, "thawed at the deadline");
        assert_eq!(frozen.thaw()?, Duration::ZERO);
        // ...and when its guard goes.
        let frozen = group.freeze_for(Duration::from_secs(5), Duration::from_secs(60))?;
        drop(frozen);
        assert!(!group.is_frozen()?, "thawed when the guard went");

        // What a crash left frozen is thawed at start.
        group.freeze(Duration::from_secs(5))?;
        assert_eq!(writer.groups.thaw_all()?, ["nvcg_alice"]);
        assert!(writer.grows());

        // A group with processes cannot be removed; emptied, it can.
        assert!(matches!(group.remove(), Err(CgroupError::NotEmpty { .. })));
        group.kill_all(Duration::from_secs(5))?;
        assert!(group.processes()?.is_empty());
        group.remove()?;
        group.remove()?;
        Ok(())
    }

    #[test]
    fn an_account_freezes_and_thaws_under_cgroup_v1() -> TestResult {
        freeze_and_thaw(Hierarchy::V1Freezer, "v1")
    }

    #[test]
    fn an_account_freezes_and_thaws_under_cgroup_v2() -> TestResult {
        freeze_and_thaw(Hierarchy::V2, "v2")
    }

    #[test]
    fn groups_are_named_only_after_accounts() -> TestResult {
        let base = std::env::temp_dir().join(format!("navette-cg-names-{}", std::process::id()));
        let groups = AccountGroups::at(Hierarchy::V2, &base)?;
        for bad in ["../etc", "", "a/b", "Alice", ".."] {
            assert!(
                matches!(groups.ensure(bad), Err(CgroupError::BadAccount(_))),
                "{bad:?}"
            );
        }
        std::fs::remove_dir(&base)?;
        Ok(())
    }
}
