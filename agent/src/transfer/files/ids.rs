//! Owners by name: the source names the owner and group of every entry
//! (and the ids its ACLs mention); the target maps each name to its own
//! id, and refuses a name it does not know: ids never travel by number.

use std::collections::HashMap;

use nix::unistd::{Gid, Group, Uid, User};

/// Source side: names of ids, looked up once each.
#[derive(Debug, Default)]
pub struct IdNames {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl IdNames {
    pub fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                Group::from_gid(Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

/// Target side: local ids of names, looked up once each. A name the
/// target does not know, or an id the source could not name, is refused:
/// the source's number is never used, as on the target it may be another
/// account's (or nobody's yet, and someone's later).
#[derive(Debug, Default)]
pub struct IdMap {
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
}

impl IdMap {
    /// The local uid of the user `name` (the source's `source_uid`), or
    /// why it cannot be mapped.
    pub fn uid(&mut self, name: &str, source_uid: u32) -> Result<u32, String> {
        if name.is_empty() {
            return Err(format!(
                "uid {source_uid} has no user name on the source, and users are copied by \
                 name only: give the file a user with a name on the source, then copy again"
            ));
        }
        let found = *self
            .users
            .entry(name.to_owned())
            .or_insert_with(|| User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()));
        found.ok_or_else(|| {
            format!(
                "user {name:?} does not exist on this host (the source's uid {source_uid} is \
                 not used: here it may be someone else's): create the user here, or change \
                 the file's user on the source, then copy again"
            )
        })
    }

    /// The local gid of the group `name` (the source's `source_gid`), or
    /// why it cannot be mapped.
    pub fn gid(&mut self, name: &str, source_gid: u32) -> Result<u32, String> {
        if name.is_empty() {
            return Err(format!(
                "gid {source_gid} has no group name on the source, and groups are copied by \
                 name only: give the file a group with a name on the source, then copy again"
            ));
        }
        let found = *self.groups.entry(name.to_owned()).or_insert_with(|| {
            Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        });
        found.ok_or_else(|| {
            format!(
                "group {name:?} does not exist on this host (the source's gid {source_gid} \
                 is not used: here it may be someone else's): create the group here, or \
                 change the file's group on the source, then copy again"
            )
        })
    }
}
