//! Owners by name: the source names the owner and group of every entry
//! (and the ids its ACLs mention); the target maps each name to its own
//! id, and keeps the source's numeric id when it does not know the name.

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

/// Target side: local ids of names, looked up once each.
#[derive(Debug, Default)]
pub struct IdMap {
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
    /// Names the target did not know (their numeric ids were kept).
    pub unknown: std::collections::BTreeSet<String>,
}

impl IdMap {
    /// The local uid of `name`, else `fallback`.
    pub fn uid(&mut self, name: &str, fallback: u32) -> u32 {
        if name.is_empty() {
            return fallback;
        }
        let found = *self
            .users
            .entry(name.to_owned())
            .or_insert_with(|| User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()));
        found.unwrap_or_else(|| {
            self.unknown.insert(format!("user {name}"));
            fallback
        })
    }

    /// The local gid of `name`, else `fallback`.
    pub fn gid(&mut self, name: &str, fallback: u32) -> u32 {
        if name.is_empty() {
            return fallback;
        }
        let found = *self.groups.entry(name.to_owned()).or_insert_with(|| {
            Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        });
        found.unwrap_or_else(|| {
            self.unknown.insert(format!("group {name}"));
            fallback
        })
    }
}
