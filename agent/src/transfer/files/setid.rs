//! Which set-user-id and set-group-id bits a copy keeps. A copy must never
//! give the account (or whoever controls the source) power it does not
//! have on the target: a set-user-id file of root or of another account
//! runs as them, a set-group-id file runs with a group the account is not
//! in.
//!
//! The rule, checked on every manifest entry before anything is written,
//! in the target's own ids (owners already mapped by name):
//! - set-user-id survives only on an entry owned by the account's user,
//!   and never when that user is uid 0;
//! - set-group-id survives only on an entry owned by the account's user
//!   whose group is the user's primary group or one the user belongs to on
//!   the target (never gid 0). A setgid directory of the account (new
//!   files inherit its group) is kept by the same rule;
//! - nothing else keeps either bit: entries of uid 0, of another user, of
//!   a group the account is not in, and every entry when the target does
//!   not know the account's user.
//!
//! So a copy keeps exactly what the account's user could set by itself on
//! the target (an owner may set set-user-id on its own files, and
//! set-group-id only with a group it is in: the kernel clears it
//! otherwise), less gid 0: a copy hands no one a power the account does
//! not already hold here.
//!
//! A removed bit is counted and named in the pull's report and log, never
//! silent. Owns: this rule. Does not touch the tree: it edits the entries
//! the target will apply.

use std::collections::BTreeSet;
use std::ffi::CString;

use nix::unistd::{Gid, User, getgrouplist};

use super::scan::Entry;

/// The set-user-id and set-group-id bits of a mode.
pub const SET_ID_BITS: u32 = 0o6000;
const SET_UID: u32 = 0o4000;
const SET_GID: u32 = 0o2000;

/// Examples of removed bits kept for the report (the count is exact).
const EXAMPLES: usize = 10;

/// Whose entries may keep set-id bits in a pull.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccountUser {
    /// The system user named like the target home's last component: the
    /// target puts the copy of account `A` at `<accounts_dir>/A`, and an
    /// account is the system user of the same name.
    #[default]
    TargetHomeName,
    /// The system user of this name.
    Named(String),
    /// Nobody's: no entry keeps either bit.
    Nobody,
}

impl AccountUser {
    /// The user's name for a copy into `target_root`, if any.
    pub fn name(&self, target_root: &std::path::Path) -> Option<String> {
        match self {
            AccountUser::TargetHomeName => target_root
                .file_name()
                .and_then(|name| name.to_str())
                .map(str::to_owned),
            AccountUser::Named(name) => Some(name.clone()),
            AccountUser::Nobody => None,
        }
    }
}

/// The account's user on the target: its uid and every group it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountIds {
    pub uid: u32,
    /// The primary group and the supplementary ones.
    pub gids: BTreeSet<u32>,
}

impl AccountIds {
    /// The ids of the system user `name` on this host, `None` if there is
    /// no such user.
    pub fn lookup(name: &str) -> Result<Option<AccountIds>, String> {
        let user =
            User::from_name(name).map_err(|errno| format!("looking up user {name:?}: {errno}"))?;
        let Some(user) = user else {
            return Ok(None);
        };
        let c_name =
            CString::new(name).map_err(|_| format!("user name {name:?} holds a NUL byte"))?;
        let groups = getgrouplist(&c_name, user.gid)
            .map_err(|errno| format!("listing the groups of user {name:?}: {errno}"))?;
        let gids = groups
            .into_iter()
            .chain(std::iter::once(user.gid))
            .map(Gid::as_raw)
            .collect();
        Ok(Some(AccountIds {
            uid: user.uid.as_raw(),
            gids,
        }))
    }
}

/// The rule for one pull, and what it removed.
#[derive(Debug, Default)]
pub struct SetIdRule {
    /// The account's user; `None`: no entry keeps either bit.
    account: Option<AccountIds>,
    /// Entries whose bits were removed.
    pub removed: u64,
    /// The first few, as "path (mode 4755, uid 0, gid 0)".
    pub examples: Vec<String>,
}

impl SetIdRule {
    pub fn new(account: Option<AccountIds>) -> SetIdRule {
        SetIdRule {
            account,
            ..SetIdRule::default()
        }
    }

    /// The set-id bits an entry owned by `uid`:`gid` may keep.
    pub fn allowed(&self, uid: u32, gid: u32) -> u32 {
        let Some(account) = &self.account else {
            return 0;
        };
        if account.uid == 0 || uid != account.uid {
            return 0;
        }
        if gid != 0 && account.gids.contains(&gid) {
            SET_UID | SET_GID
        } else {
            SET_UID
        }
    }

    /// Removes from `entry` the bits it may not keep, and records it.
    pub fn apply(&mut self, entry: &mut Entry) {
        let refused = entry.mode & SET_ID_BITS & !self.allowed(entry.uid, entry.gid);
        if refused == 0 {
            return;
        }
        self.removed += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(format!(
                "{} (mode {:o}, uid {}, gid {})",
                entry.path, entry.mode, entry.uid, entry.gid
            ));
        }
        entry.mode &= !refused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::files::path::RelPath;
    use crate::transfer::files::scan::{Kind, Mtime};

    fn entry(mode: u32, uid: u32, gid: u32) -> Result<Entry, &'static str> {
        Ok(Entry {
            path: RelPath::parse(b"x")?,
            kind: Kind::File,
            mode,
            uid,
            gid,
            mtime: Mtime::default(),
            size: 0,
            xattrs: Vec::new(),
            extents: None,
            inode: (0, 0),
        })
    }

    fn kept(rule: &mut SetIdRule, mode: u32, uid: u32, gid: u32) -> Result<u32, &'static str> {
        let mut e = entry(mode, uid, gid)?;
        rule.apply(&mut e);
        Ok(e.mode)
    }

    #[test]
    fn only_the_accounts_own_entries_keep_set_id_bits() -> Result<(), &'static str> {
        let account = AccountIds {
            uid: 1001,
            gids: [1001, 33].into_iter().collect(),
        };
        let mut rule = SetIdRule::new(Some(account));
        let cases = [
            // (mode, uid, gid, mode kept)
            (0o4755, 1001, 1001, 0o4755),
            (0o2775, 1001, 1001, 0o2775),
            (0o6755, 1001, 33, 0o6755),
            (0o6755, 1001, 2000, 0o4755),
            (0o2755, 1001, 0, 0o0755),
            (0o4755, 0, 0, 0o0755),
            (0o6755, 0, 1001, 0o0755),
            (0o4755, 1002, 1001, 0o0755),
            (0o1777, 0, 0, 0o1777),
            (0o0644, 0, 0, 0o0644),
        ];
        for (mode, uid, gid, wanted) in cases {
            if kept(&mut rule, mode, uid, gid)? != wanted {
                return Err("a set-id bit was kept or removed against the rule");
            }
        }
        if rule.removed != 5 || rule.examples.len() != 5 {
            return Err("the removed bits were not all counted");
        }
        Ok(())
    }

    #[test]
    fn without_the_accounts_user_and_for_root_nothing_keeps_them() -> Result<(), &'static str> {
        let mut unknown = SetIdRule::new(None);
        let mut root = SetIdRule::new(Some(AccountIds {
            uid: 0,
            gids: [0].into_iter().collect(),
        }));
        for rule in [&mut unknown, &mut root] {
            for (uid, gid) in [(0, 0), (1001, 1001)] {
                if kept(rule, 0o6755, uid, gid)? != 0o0755 {
                    return Err("a set-id bit survived with no account user to own it");
                }
            }
        }
        Ok(())
    }
}
