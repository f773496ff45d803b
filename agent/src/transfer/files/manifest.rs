//! The target's reading of the source's manifest, and the checks that make
//! it a tree the target can safely build. The manifest must list the tree
//! depth first: the root first, then each directory's entries in bytewise
//! order of name, each directory's own entries right after it. So every
//! entry lies in a directory listed before it (nothing is ever created under
//! a symbolic link or a file), no path comes twice, and the check needs no
//! lookup. Hard links must name an earlier non-directory. Every owner,
//! group and ACL entry must name a user or group the target knows (ids
//! never travel by number), and set-user-id and set-group-id bits are
//! removed where the [`setid`](super::setid) rule does not keep them. A
//! manifest that fails any check is refused whole, before anything is
//! written.

use std::collections::HashMap;
use std::time::Duration;

use navette_proto::v1::ListTreeRequest;
use navette_proto::v1::file_source_client::FileSourceClient;
use tonic::transport::Channel;

use super::Problem;
use super::ids::IdMap;
use super::path::RelPath;
use super::scan::{Entry, Kind};
use super::setid::{AccountIds, SetIdRule};
use super::wire::from_wire;

/// The checked manifest, in the source's order (parents first).
#[derive(Debug, Default)]
pub struct Manifest {
    pub entries: Vec<Entry>,
    /// Entries whose set-user-id or set-group-id bits were removed.
    pub set_id_removed: u64,
    /// The first few of them, with the mode and ids the source asked for.
    pub set_id_examples: Vec<String>,
}

/// Checks entries one by one as they arrive.
#[derive(Default)]
pub struct Checker {
    /// The directories from the root to the last one listed, each with the
    /// last name listed in it.
    open: Vec<(RelPath, Option<Vec<u8>>)>,
    /// Whether the root was listed.
    started: bool,
    /// Hard links seen: (position in the manifest, first name).
    hardlinks: Vec<(usize, RelPath)>,
    listed: usize,
}

impl Checker {
    /// Accepts `entry` as the next one of the manifest, or says why not.
    pub fn accept(&mut self, entry: &Entry) -> Result<(), String> {
        let position = self.listed;
        self.listed += 1;
        if !self.started {
            if !entry.path.is_root() || entry.kind != Kind::Dir {
                return Err("the manifest does not start with the root directory".to_owned());
            }
            self.started = true;
            self.open.push((RelPath::root(), None));
            return Ok(());
        }
        if entry.path.is_root() {
            return Err("the root is listed twice".to_owned());
        }
        let parent = entry.path.parent_bytes();
        while self
            .open
            .last()
            .is_some_and(|(dir, _)| dir.as_bytes() != parent)
        {
            self.open.pop();
        }
        let Some((_, last_name)) = self.open.last_mut() else {
            return Err(
                "its parent is not a directory listed before it (or is listed out of order)"
                    .to_owned(),
            );
        };
        let name = entry.path.name();
        if last_name.as_deref().is_some_and(|last| last >= name) {
            return Err("listed twice, or out of order".to_owned());
        }
        *last_name = Some(name.to_vec());
        match &entry.kind {
            Kind::Dir => self.open.push((entry.path.clone(), None)),
            Kind::Hardlink(first) => self.hardlinks.push((position, first.clone())),
            _ => {}
        }
        Ok(())
    }

    /// Once every entry is in: hard links must name an earlier file, fifo
    /// or socket. Returns the offending link and why.
    pub fn finish(&self, entries: &[Entry]) -> Result<(), (RelPath, String)> {
        if self.hardlinks.is_empty() {
            return Ok(());
        }
        let positions: HashMap<&RelPath, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.path, i))
            .collect();
        for (position, first) in &self.hardlinks {
            let linkable = positions.get(first).is_some_and(|&at| {
                at < *position && matches!(entries[at].kind, Kind::File | Kind::Fifo | Kind::Socket)
            });
            if !linkable {
                let link = entries
                    .get(*position)
                    .map(|e| e.path.clone())
                    .unwrap_or_default();
                return Err((
                    link,
                    format!("a hard link to {first}, which is not a file listed before it"),
                ));
            }
        }
        Ok(())
    }
}

/// Reads and checks the manifest of `transfer_id`; `account` is the
/// account's user on this host, whose own entries may keep set-id bits.
pub async fn fetch(
    client: &FileSourceClient<Channel>,
    transfer_id: &str,
    stall: Duration,
    account: Option<AccountIds>,
) -> Result<Manifest, Problem> {
    let mut stream = client
        .clone()
        .list_tree(ListTreeRequest {
            transfer_id: transfer_id.to_owned(),
        })
        .await
        .map_err(Problem::Source)?
        .into_inner();
    let mut ids = IdMap::default();
    let mut set_ids = SetIdRule::new(account);
    let mut checker = Checker::default();
    let mut entries = Vec::new();
    loop {
        let batch = match tokio::time::timeout(stall, stream.message()).await {
            Err(_) => return Err(Problem::Stalled(stall)),
            Ok(Err(status)) => return Err(Problem::Source(status)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(batch))) => batch,
        };
        for wire in batch.entries {
            let raw = wire.path.clone();
            let refused = |reason: String| Problem::Unsafe {
                path: String::from_utf8_lossy(&raw).into_owned(),
                reason,
            };
            let mut entry = from_wire(wire, &mut ids).map_err(refused)?;
            checker.accept(&entry).map_err(refused)?;
            set_ids.apply(&mut entry);
            entries.push(entry);
        }
    }
    checker
        .finish(&entries)
        .map_err(|(path, reason)| Problem::Unsafe {
            path: path.to_string(),
            reason,
        })?;
    if entries.is_empty() {
        return Err(Problem::Unsafe {
            path: String::new(),
            reason: "the manifest is empty (not even the root)".to_owned(),
        });
    }
    Ok(Manifest {
        entries,
        set_id_removed: set_ids.removed,
        set_id_examples: set_ids.examples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::files::scan::Mtime;

    fn entry(path: &[u8], kind: Kind) -> Result<Entry, &'static str> {
        Ok(Entry {
            path: RelPath::parse(path)?,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Mtime::default(),
            size: 0,
            xattrs: Vec::new(),
            extents: None,
            inode: (0, 0),
        })
    }

    fn check(entries: &[Entry]) -> Result<(), String> {
        let mut checker = Checker::default();
        for entry in entries {
            checker.accept(entry)?;
        }
        checker.finish(entries).map_err(|(_, reason)| reason)
    }

    #[test]
    fn a_depth_first_tree_is_accepted() -> Result<(), String> {
        let tree = [
            entry(b"", Kind::Dir)?,
            entry(b"a", Kind::Dir)?,
            entry(b"a/b", Kind::Dir)?,
            entry(b"a/b/f", Kind::File)?,
            entry(b"a/c", Kind::Symlink(b"/etc".to_vec()))?,
            entry(b"a-z", Kind::File)?,
            entry(b"z", Kind::Hardlink(RelPath::parse(b"a/b/f")?))?,
        ];
        check(&tree)
    }

    #[test]
    fn entries_under_links_files_or_out_of_order_are_refused() -> Result<(), String> {
        let root = entry(b"", Kind::Dir)?;
        let refused = [
            vec![entry(b"x", Kind::File)?],
            vec![
                root.clone(),
                entry(b"evil", Kind::Symlink(b"/tmp".to_vec()))?,
                entry(b"evil/x", Kind::File)?,
            ],
            vec![
                root.clone(),
                entry(b"f", Kind::File)?,
                entry(b"f/x", Kind::File)?,
            ],
            vec![
                root.clone(),
                entry(b"d/x", Kind::File)?,
                entry(b"d", Kind::Dir)?,
            ],
            vec![
                root.clone(),
                entry(b"a", Kind::File)?,
                entry(b"a", Kind::File)?,
            ],
            vec![
                root.clone(),
                entry(b"b", Kind::File)?,
                entry(b"a", Kind::File)?,
            ],
            vec![
                root.clone(),
                entry(b"d", Kind::Dir)?,
                entry(b"e", Kind::Dir)?,
                entry(b"d/late", Kind::File)?,
            ],
            vec![root.clone(), root.clone()],
            vec![
                root.clone(),
                entry(b"l", Kind::Hardlink(RelPath::parse(b"m")?))?,
                entry(b"m", Kind::File)?,
            ],
            vec![
                root.clone(),
                entry(b"d", Kind::Dir)?,
                entry(b"l", Kind::Hardlink(RelPath::parse(b"d")?))?,
            ],
        ];
        for (i, entries) in refused.iter().enumerate() {
            if check(entries).is_ok() {
                return Err(format!("case {i} was accepted"));
            }
        }
        Ok(())
    }
}
