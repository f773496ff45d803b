//! Comparing the source's manifest with the target tree, and the
//! structural part of bringing the tree in line: removing what stands
//! where something of another kind must go, and creating the directories,
//! parents first. What remains to do (content, links, metadata, deletions)
//! is returned as a [`Plan`].
//!
//! A regular file whose size, modification time, owner, mode and extended
//! attributes match is left alone, unread: a refresh of an unchanged tree
//! costs two directory walks and no hashing.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::apply::{self, ApplyError};
use super::beneath::Root;
use super::path::RelPath;
use super::scan::{Entry, Kind};

/// What is left to do after the structural pass.
#[derive(Debug, Default)]
pub struct Plan {
    /// Regular files whose content is sent block by block, and whether an
    /// older version is there to take unchanged blocks from.
    pub large: Vec<(Entry, bool)>,
    /// Small regular files, sent whole, many per stream.
    pub small: Vec<Entry>,
    /// Entries whose content is right but not their metadata.
    pub metadata: Vec<Entry>,
    pub symlinks: Vec<Entry>,
    pub specials: Vec<Entry>,
    /// (path, first name of the inode).
    pub hardlinks: Vec<(RelPath, RelPath)>,
    /// Regular files found identical: (path, data bytes).
    pub unchanged: Vec<(RelPath, u64)>,
    /// Entries of the target the source does not have, deepest first.
    pub extraneous: Vec<RelPath>,
    /// Every directory, parents first, and whether its extended attributes
    /// were found equal.
    pub dirs: Vec<(Entry, bool)>,
    /// Directories found exactly as wanted (owner, mode, time, extended
    /// attributes): if the pull writes nothing, they need no settling.
    pub dirs_as_wanted: HashSet<RelPath>,
    /// Entries removed because something of another kind goes there.
    pub replaced: u64,
    /// Directories created.
    pub created: u64,
}

/// What carrying out a [`Plan`] changes, for making exactly that durable:
/// the regular files whose content or metadata it writes, and the
/// directories in which it makes, renames or removes a name or whose own
/// metadata it sets. Directories found as wanted in which nothing is named
/// anew are not in it (a catch-up pass lists every changed path's
/// ancestors).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub files: Vec<RelPath>,
    pub dirs: BTreeSet<RelPath>,
    /// Directories (not in `dirs`) changed only by new content, which
    /// arrives in a temporary file renamed into place, with those files:
    /// a directory whose files were all written over their old version
    /// instead had no name changed ([`Changes::dirs_to_sync`]).
    pub content_dirs: BTreeMap<RelPath, Vec<RelPath>>,
}

impl Changes {
    /// The directories to sync once the plan is carried out, given the
    /// files whose content was written over the old.
    pub fn dirs_to_sync<'c>(
        &'c self,
        over_old: &'c HashSet<RelPath>,
    ) -> impl Iterator<Item = &'c RelPath> + 'c {
        let renamed_into = self
            .content_dirs
            .iter()
            .filter(|(_, files)| files.iter().any(|file| !over_old.contains(file)))
            .map(|(dir, _)| dir);
        self.dirs.iter().chain(renamed_into)
    }
}

impl Plan {
    /// What carrying out this plan changes (the structural part, already
    /// done, included: a directory made or a replaced entry is named in
    /// its parent).
    pub fn changes(&self) -> Changes {
        let mut changes = Changes::default();
        let named_in = |path: &RelPath, dirs: &mut BTreeSet<RelPath>| {
            if let Some((parent, _)) = path.split_last() {
                dirs.insert(parent);
            }
        };
        // New content is renamed into its directory, unless it is written
        // over the old version: which one is known once it is written.
        for entry in self.large.iter().map(|(e, _)| e).chain(&self.small) {
            changes.files.push(entry.path.clone());
            if let Some((parent, _)) = entry.path.split_last() {
                changes
                    .content_dirs
                    .entry(parent)
                    .or_default()
                    .push(entry.path.clone());
            }
        }
        for entry in &self.metadata {
            if entry.kind == Kind::File {
                changes.files.push(entry.path.clone());
            } else {
                // Links and specials cannot be opened: their inode's
                // change goes with their directory's.
                named_in(&entry.path, &mut changes.dirs);
            }
        }
        let named = self
            .symlinks
            .iter()
            .chain(&self.specials)
            .map(|e| &e.path)
            .chain(self.hardlinks.iter().map(|(path, _)| path))
            .chain(&self.extraneous);
        for path in named {
            named_in(path, &mut changes.dirs);
        }
        for (dir, _) in &self.dirs {
            if !self.dirs_as_wanted.contains(&dir.path) {
                changes.dirs.insert(dir.path.clone());
                named_in(&dir.path, &mut changes.dirs);
            }
        }
        let dirs = &changes.dirs;
        changes.content_dirs.retain(|dir, _| !dirs.contains(dir));
        changes
    }
}

/// Tells small files from large ones.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub small_file_max: u64,
}

fn same_meta(wanted: &Entry, local: &Entry, local_xattrs: &[super::xattr::XAttr]) -> bool {
    wanted.mode == local.mode
        && wanted.uid == local.uid
        && wanted.gid == local.gid
        && wanted.mtime == local.mtime
        && wanted.xattrs == local_xattrs
}

fn is_regular(kind: &Kind) -> bool {
    matches!(kind, Kind::File | Kind::Hardlink(_))
}

/// Removes `path` from the local view, with everything below it.
fn forget_local(local: &mut BTreeMap<RelPath, Entry>, path: &RelPath) {
    local.remove(path);
    let below: Vec<RelPath> = local
        .range(path.descendants())
        .map(|(p, _)| p.clone())
        .collect();
    for p in below {
        local.remove(&p);
    }
}

/// Compares `manifest` (checked: parents first, paths valid) with `local`
/// (the target as scanned), fixes the structure, and returns the rest.
pub fn prepare(
    root: &Root,
    manifest: &[Entry],
    mut local: BTreeMap<RelPath, Entry>,
    sizes: Sizes,
) -> Result<Plan, ApplyError> {
    let mut plan = Plan::default();
    let mut rewritten: HashSet<RelPath> = HashSet::new();
    let mut wanted_paths: HashSet<&RelPath> = HashSet::with_capacity(manifest.len());
    for wanted in manifest {
        wanted_paths.insert(&wanted.path);
        let here = local.get(&wanted.path);
        // Something of an incompatible kind is in the way: remove it now.
        let in_the_way = match (&wanted.kind, here.map(|l| &l.kind)) {
            (_, None) => false,
            (Kind::Dir, Some(kind)) => *kind != Kind::Dir,
            (_, Some(kind)) => *kind == Kind::Dir,
        };
        if in_the_way && !wanted.path.is_root() {
            apply::remove(root, &wanted.path)?;
            forget_local(&mut local, &wanted.path);
            plan.replaced += 1;
        }
        let here = local.get(&wanted.path);
        match &wanted.kind {
            Kind::Dir => {
                let xattrs_equal = match here {
                    Some(l) => {
                        if same_meta(wanted, l, &l.xattrs) {
                            plan.dirs_as_wanted.insert(wanted.path.clone());
                        }
                        l.xattrs == wanted.xattrs
                    }
                    None => {
                        apply::make_dir(root, &wanted.path)?;
                        plan.created += 1;
                        false
                    }
                };
                plan.dirs.push((wanted.clone(), xattrs_equal));
            }
            Kind::File => {
                let held = here.filter(|l| is_regular(&l.kind));
                let xattrs = held.map(|l| match &l.kind {
                    Kind::Hardlink(first) => local
                        .get(first)
                        .map(|f| f.xattrs.as_slice())
                        .unwrap_or_default(),
                    _ => l.xattrs.as_slice(),
                });
                match (held, xattrs) {
                    (Some(l), Some(xattrs)) if l.size == wanted.size && l.mtime == wanted.mtime => {
                        if same_meta(wanted, l, xattrs) {
                            plan.unchanged
                                .push((wanted.path.clone(), wanted.data_bytes()));
                        } else {
                            plan.metadata.push(wanted.clone());
                        }
                    }
                    _ => {
                        rewritten.insert(wanted.path.clone());
                        let old_regular = held.is_some_and(|l| l.size > 0);
                        if wanted.size > sizes.small_file_max || wanted.extents.is_some() {
                            plan.large.push((wanted.clone(), old_regular));
                        } else {
                            plan.small.push(wanted.clone());
                        }
                    }
                }
            }
            Kind::Hardlink(first) => {
                let linked = here
                    .filter(|l| is_regular(&l.kind))
                    .is_some_and(|l| local.get(first).is_some_and(|f| f.inode == l.inode))
                    && !rewritten.contains(first);
                if !linked {
                    plan.hardlinks.push((wanted.path.clone(), first.clone()));
                }
            }
            Kind::Symlink(_) => match here {
                // Same kind and same target.
                Some(l) if l.kind == wanted.kind => {
                    if l.uid != wanted.uid || l.gid != wanted.gid || l.mtime != wanted.mtime {
                        plan.metadata.push(wanted.clone());
                    }
                }
                _ => plan.symlinks.push(wanted.clone()),
            },
            Kind::Fifo | Kind::Socket => match here {
                Some(l) if l.kind == wanted.kind => {
                    if !same_meta(wanted, l, &[]) {
                        plan.metadata.push(wanted.clone());
                    }
                }
                _ => plan.specials.push(wanted.clone()),
            },
        }
    }
    // Descendants sort after their ancestors: walking backwards removes
    // children before their directory.
    plan.extraneous = local
        .keys()
        .rev()
        .filter(|path| !wanted_paths.contains(path))
        .cloned()
        .collect();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: self::path(path),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime: Default::default(),
            size: 10,
            xattrs: Vec::new(),
            extents: None,
            inode: (0, 0),
        }
    }

    fn path(path: &str) -> RelPath {
        RelPath::parse(path.as_bytes()).expect("a valid path")
    }

    fn paths(list: &[&str]) -> Vec<RelPath> {
        list.iter().map(|p| path(p)).collect()
    }

    /// A pass lists every changed path's ancestors: only the directories a
    /// name changed in are kept (`a/b`, where `a/b/f`'s new content is
    /// renamed in, unless it was written over the old; `a/c`, holding the
    /// link whose owner changes; `a`, where `a/gone` is removed; the root,
    /// where `n` is made; `n` itself), and of files only those written
    /// (`a/b/f`, and `a/c/g` for its metadata).
    #[test]
    fn the_changes_leave_out_ancestors_found_as_wanted() {
        let mut plan = Plan::default();
        for dir in ["", "a", "a/b", "a/c", "n"] {
            plan.dirs.push((entry(dir, Kind::Dir), true));
        }
        for dir in ["", "a", "a/b", "a/c"] {
            plan.dirs_as_wanted.insert(path(dir));
        }
        plan.small.push(entry("a/b/f", Kind::File));
        plan.metadata.push(entry("a/c/g", Kind::File));
        plan.metadata
            .push(entry("a/c/l", Kind::Symlink(b"g".to_vec())));
        plan.extraneous.push(path("a/gone"));
        let changes = plan.changes();
        assert_eq!(changes.files, paths(&["a/b/f", "a/c/g"]));
        let mut dirs: Vec<RelPath> = changes.dirs_to_sync(&HashSet::new()).cloned().collect();
        dirs.sort();
        // "n" was made (not found as wanted), and named in the root.
        assert_eq!(dirs, paths(&["", "a", "a/b", "a/c", "n"]));
        // Written over its old version, "a/b/f" named nothing in "a/b".
        let over_old = HashSet::from([path("a/b/f")]);
        let mut dirs: Vec<RelPath> = changes.dirs_to_sync(&over_old).cloned().collect();
        dirs.sort();
        assert_eq!(dirs, paths(&["", "a", "a/c", "n"]));
    }

    #[test]
    fn a_plan_that_writes_nothing_changes_nothing() {
        let mut plan = Plan::default();
        plan.dirs.push((entry("", Kind::Dir), true));
        plan.dirs_as_wanted.insert(RelPath::root());
        plan.unchanged.push((path("f"), 10));
        assert_eq!(plan.changes(), Changes::default());
    }
}
