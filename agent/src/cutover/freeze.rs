//! Freezing an account: every process of its system user, not only its
//! sites, stopped by the cgroup freezer for at most a deadline.
//!
//! The sites' pool already runs in the account's group
//! ([`crate::sites`]); what the customer started otherwise (a shell, a
//! cron job, a daemon of its own, under another group) is found by its
//! uid in `/proc` (real, effective, saved or filesystem uid) and moved into
//! the account's group first, so that one freeze stops them all. The moves
//! race with forks, so the group is swept again once frozen: a process
//! moved into a frozen group is frozen by the kernel on arrival (v1's
//! freezer and cgroup v2 both make a new member conform to the group's
//! state), and the freeze is complete when no process of the uid is
//! outside and the group reads frozen.
//!
//! Only processes in the agent's network namespace count (see
//! [`processes_of`]).
//!
//! Moving a process between groups of the freezer hierarchy changes
//! nothing else for it (v1: only that hierarchy; v2: the account's group
//! has no controller of its own). Root's processes, the web server's and
//! other accounts' are never moved: only the account's uid, never 0.
//!
//! The freeze is held by a [`Frozen`] guard: thawed by [`thaw`], or by its
//! watchdog at the deadline. An explicit thaw puts the processes it moved
//! back into the groups they came from.

use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use super::{Cutover, CutoverError, lock};
use crate::cgroups::{AccountGroup, AccountGroups, Frozen, Hierarchy};

/// How long the kernel may take to freeze the account's processes.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);
/// Sweeps for stragglers after the freeze.
const SWEEPS: usize = 5;

/// A freeze in force.
#[derive(Debug)]
pub struct AccountFreeze {
    pub migration_id: String,
    pub deadline: Instant,
    frozen: Frozen,
    /// The processes moved into the account's group and where they were,
    /// to be put back at the thaw (so that emptying the sites' group
    /// later, `StopSites`, never kills the customer's own shells).
    moved: Vec<(u32, Option<PathBuf>)>,
}

impl AccountFreeze {
    fn in_force(&self) -> bool {
        !self.frozen.is_thawed() && Instant::now() < self.deadline
    }
}

/// What [`freeze`] did.
#[derive(Clone, Debug)]
pub struct FreezeOutcome {
    pub took: Duration,
    pub moved: u32,
    pub frozen: u32,
    pub remaining: Duration,
    pub already: bool,
}

/// The network namespace of `/proc/<pid>` (`self` for the agent).
fn network_namespace(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// The processes of this host one of whose uids (real, effective, saved,
/// filesystem) is `uid`, from `/proc`. "Of this host": in the agent's
/// network namespace, where the account's sites, shells and cron jobs
/// run; a process of the same uid in another network namespace belongs
/// to something else (a container, or, on the test rig, where hosts are
/// network namespaces of one machine, another host's copy of the
/// account) and is left alone.
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let host = network_namespace("self");
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| host.is_none() || network_namespace(&pid.to_string()) == host)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .is_some_and(|status| has_uid(&status, uid))
        })
        .collect()
}

/// Whether a `/proc/<pid>/status` text has `uid` among its `Uid:` fields.
fn has_uid(status: &str, uid: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .is_some_and(|uids| uids.split_whitespace().any(|u| u.parse() == Ok(uid)))
}

/// The group of the freezer hierarchy rooted at `root` that `pid` is in,
/// from `/proc/<pid>/cgroup` (`0::/path` under cgroup v2, the `freezer`
/// line under v1).
fn group_of(pid: u32, root: &Path, hierarchy: Hierarchy) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match hierarchy {
            Hierarchy::V2 => controllers.is_empty(),
            Hierarchy::V1Freezer => controllers.split(',').any(|c| c == "freezer"),
        };
        wanted.then(|| path.trim_start_matches('/').to_owned())
    })?;
    let group = root.join(relative);
    group.join("cgroup.procs").exists().then_some(group)
}

/// Moves every process of `uid` not in `group` into it; the processes
/// moved and the groups they came from (a process that ended meanwhile is
/// not counted).
fn sweep(
    group: &AccountGroup,
    uid: u32,
    root: &Path,
    hierarchy: Hierarchy,
) -> Result<Vec<(u32, Option<PathBuf>)>, CutoverError> {
    let members = group.processes()?;
    let mut moved = Vec::new();
    for pid in processes_of(uid) {
        if members.contains(&pid) {
            continue;
        }
        let origin = group_of(pid, root, hierarchy);
        match group.add_process(pid) {
            Ok(()) => moved.push((pid, origin)),
            // Gone between the listing and the move.
            Err(_) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(moved)
}

/// The account's uid: its system user, never root.
fn account_uid(account: &str) -> Result<u32, CutoverError> {
    let user = nix::unistd::User::from_name(account)
        .map_err(|errno| {
            CutoverError::Precondition(format!(
                "account {account}: looking up its system user: {errno}"
            ))
        })?
        .ok_or_else(|| {
            CutoverError::Precondition(format!("account {account} has no system user on this host"))
        })?;
    if user.uid.is_root() {
        return Err(CutoverError::Precondition(format!(
            "account {account}'s user is root: its processes are not frozen"
        )));
    }
    Ok(user.uid.as_raw())
}

/// Moves each process of `moved` still alive back into the group it came
/// from. Best effort: a process that cannot go back stays in the account's
/// group, which harms nothing but a later emptying of that group.
fn put_back(moved: &[(u32, Option<PathBuf>)]) {
    for (pid, origin) in moved {
        let Some(origin) = origin else { continue };
        let procs = origin.join("cgroup.procs");
        if let Err(error) = std::fs::write(&procs, pid.to_string())
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            tracing::warn!(message = "a process stays in the account's group", pid, group = %origin.display(), %error);
        }
    }
}

impl Cutover {
    /// The root of the freezer hierarchy the account groups are in (as
    /// [`AccountGroups::open`] finds it).
    fn hierarchy_root(&self, groups: &AccountGroups) -> PathBuf {
        let mount = &self.config.sites.cgroup_mount;
        match groups.hierarchy() {
            Hierarchy::V2 => mount.clone(),
            Hierarchy::V1Freezer => mount.join("freezer"),
        }
    }

    fn groups(&self) -> Result<AccountGroups, CutoverError> {
        let sites = &self.config.sites;
        Ok(AccountGroups::open(
            &sites.cgroup_mount,
            &sites.cgroup_base,
        )?)
    }

    /// Freezes every process of `account`'s user for `migration_id`, for
    /// at most `deadline`. Idempotent: the same migration's freeze in force
    /// is returned as it is (its deadline is not extended); another's is
    /// refused.
    pub fn freeze(
        &self,
        migration_id: &str,
        account: &str,
        deadline: Duration,
    ) -> Result<FreezeOutcome, CutoverError> {
        let mut freezes = lock(&self.freezes);
        if let Some(existing) = freezes.get(account)
            && existing.in_force()
        {
            if existing.migration_id != migration_id {
                return Err(CutoverError::OtherMigration {
                    account: account.to_owned(),
                    what: "frozen",
                    other: existing.migration_id.clone(),
                });
            }
            let group = self.groups()?.ensure(account)?;
            return Ok(FreezeOutcome {
                took: Duration::ZERO,
                moved: 0,
                frozen: group.processes()?.len() as u32,
                remaining: existing.deadline.saturating_duration_since(Instant::now()),
                already: true,
            });
        }
        let uid = account_uid(account)?;
        let groups = self.groups()?;
        let (root, hierarchy) = (self.hierarchy_root(&groups), groups.hierarchy());
        let group = groups.ensure(account)?;
        let started = Instant::now();
        let mut moved = sweep(&group, uid, &root, hierarchy)?;
        let frozen = group.freeze_for(FREEZE_TIMEOUT, deadline)?;
        // Stragglers forked during the first sweep: frozen on arrival.
        for _ in 0..SWEEPS {
            let more = sweep(&group, uid, &root, hierarchy)?;
            let done = more.is_empty();
            moved.extend(more);
            if done {
                break;
            }
        }
        let settle = Instant::now();
        while !group.is_frozen()? {
            if settle.elapsed() > FREEZE_TIMEOUT {
                drop(frozen);
                return Err(CutoverError::Precondition(format!(
                    "account {account}: the processes moved into its group did not freeze within {FREEZE_TIMEOUT:?}; thawed again"
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let took = started.elapsed();
        let count = group.processes()?.len() as u32;
        tracing::info!(
            message = "account frozen",
            migration = %migration_id,
            %account,
            took_us = took.as_micros() as u64,
            moved = moved.len(),
            frozen = count,
            deadline_ms = deadline.as_millis() as u64
        );
        freezes.insert(
            account.to_owned(),
            AccountFreeze {
                migration_id: migration_id.to_owned(),
                deadline: started + deadline,
                frozen,
                moved: moved.clone(),
            },
        );
        Ok(FreezeOutcome {
            took,
            moved: u32::try_from(moved.len()).unwrap_or(u32::MAX),
            frozen: count,
            remaining: deadline.saturating_sub(took),
            already: false,
        })
    }

    /// Thaws `account` if `migration_id` froze it; `None` when nothing of
    /// this migration was frozen (thawed already, or the deadline ended
    /// it). Another migration's freeze is refused. With `end_processes`
    /// (after the switch) every process of the group is sent SIGKILL
    /// while frozen, so none of them writes into the old copy again, and
    /// none is put back where it came from.
    pub fn thaw(
        &self,
        migration_id: &str,
        account: &str,
        end_processes: bool,
    ) -> Result<Option<Duration>, CutoverError> {
        let mut freezes = lock(&self.freezes);
        match freezes.get(account) {
            Some(existing) if existing.migration_id != migration_id && existing.in_force() => {
                Err(CutoverError::OtherMigration {
                    account: account.to_owned(),
                    what: "frozen",
                    other: existing.migration_id.clone(),
                })
            }
            Some(existing) if existing.migration_id == migration_id => {
                let Some(freeze) = freezes.remove(account) else {
                    return Ok(None);
                };
                let was_in_force = freeze.in_force();
                if end_processes {
                    let group = self.groups()?.ensure(account)?;
                    let mut ended = 0u32;
                    for pid in group.processes()? {
                        if let Ok(pid) = i32::try_from(pid)
                            && nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            )
                            .is_ok()
                        {
                            ended += 1;
                        }
                    }
                    tracing::info!(message = "the account's processes on the old copy ended", migration = %migration_id, %account, ended);
                } else {
                    // Back first: a process joining a thawed group thaws,
                    // and one that ran in the account's group could fork
                    // there.
                    put_back(&freeze.moved);
                }
                let took = freeze.frozen.thaw()?;
                tracing::info!(message = "account thawed", migration = %migration_id, %account, took_us = took.as_micros() as u64);
                Ok(was_in_force.then_some(took))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_uid_field_counts() {
        let status = "Name:\tsh\nUid:\t1001\t1001\t1001\t1001\nGid:\t1001\t1001\t1001\t1001\n";
        assert!(has_uid(status, 1001));
        assert!(!has_uid(status, 100));
        let setuid = "Uid:\t0\t1002\t1002\t0\n";
        assert!(has_uid(setuid, 1002));
        assert!(!has_uid("Name:\tx\n", 0));
    }
}
