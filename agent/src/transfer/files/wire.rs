//! Entries on the wire: [`Entry`] to `TreeEntry` on the source (owners by
//! name), and back on the target (names mapped to local ids, a name the
//! target does not know refused, the entry's own fields checked). Whether the entries fit together as a tree is the
//! target's manifest check (`manifest`).

use navette_proto::v1::{AclId, EntryKind, Extent as WireExtent, TreeEntry, XAttr as WireXAttr};

use super::ids::{IdMap, IdNames};
use super::path::RelPath;
use super::scan::{Entry, Extent, Kind, Mtime};
use super::xattr;

/// The manifest entry for `entry`, owners named.
pub fn to_wire(entry: Entry, names: &mut IdNames) -> TreeEntry {
    let (kind, symlink_target, hardlink_to) = match entry.kind {
        Kind::File => (EntryKind::File, Vec::new(), Vec::new()),
        Kind::Dir => (EntryKind::Directory, Vec::new(), Vec::new()),
        Kind::Symlink(target) => (EntryKind::Symlink, target, Vec::new()),
        Kind::Hardlink(first) => (EntryKind::Hardlink, Vec::new(), first.into_bytes()),
        Kind::Fifo => (EntryKind::Fifo, Vec::new(), Vec::new()),
        Kind::Socket => (EntryKind::Socket, Vec::new(), Vec::new()),
    };
    let mut acl_ids = Vec::new();
    for (name, value) in &entry.xattrs {
        if !xattr::is_acl(name) {
            continue;
        }
        for (group, id) in xattr::acl_ids(value) {
            if acl_ids
                .iter()
                .any(|a: &AclId| a.group == group && a.id == id)
            {
                continue;
            }
            let name = if group {
                names.group(id)
            } else {
                names.user(id)
            };
            if let Some(name) = name {
                acl_ids.push(AclId { group, id, name });
            }
        }
    }
    TreeEntry {
        owner: names.user(entry.uid).unwrap_or_default(),
        group: names.group(entry.gid).unwrap_or_default(),
        path: entry.path.into_bytes(),
        kind: kind.into(),
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        mtime_sec: entry.mtime.sec,
        mtime_nsec: entry.mtime.nsec,
        size: entry.size,
        symlink_target,
        hardlink_to,
        xattrs: entry
            .xattrs
            .into_iter()
            .map(|(name, value)| WireXAttr { name, value })
            .collect(),
        sparse: entry.extents.is_some(),
        data_extents: entry
            .extents
            .unwrap_or_default()
            .into_iter()
            .map(|e| WireExtent {
                offset: e.offset,
                length: e.length,
            })
            .collect(),
        acl_ids,
    }
}

/// The entry a manifest line describes, in local ids. The error says why
/// the line is refused.
pub fn from_wire(wire: TreeEntry, ids: &mut IdMap) -> Result<Entry, String> {
    let path = RelPath::parse(&wire.path).map_err(str::to_owned)?;
    let kind = match EntryKind::try_from(wire.kind).unwrap_or(EntryKind::Unspecified) {
        EntryKind::File => Kind::File,
        EntryKind::Directory => Kind::Dir,
        EntryKind::Symlink => {
            if wire.symlink_target.is_empty() || wire.symlink_target.contains(&0) {
                return Err("a symbolic link with an empty or NUL-bearing target".to_owned());
            }
            Kind::Symlink(wire.symlink_target)
        }
        EntryKind::Hardlink => {
            let first = RelPath::parse(&wire.hardlink_to)
                .map_err(|reason| format!("hard link to a bad path: {reason}"))?;
            if first.is_root() {
                return Err("hard link to the root".to_owned());
            }
            Kind::Hardlink(first)
        }
        EntryKind::Fifo => Kind::Fifo,
        EntryKind::Socket => Kind::Socket,
        EntryKind::Unspecified => return Err(format!("unknown entry kind {}", wire.kind)),
    };
    if path.is_root() && kind != Kind::Dir {
        return Err("the root of the tree is not a directory".to_owned());
    }
    if wire.mtime_nsec >= 1_000_000_000 {
        return Err("a modification time with more than 10^9 nanoseconds".to_owned());
    }
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(wire.xattrs.len());
    for attribute in wire.xattrs {
        if attribute.name.is_empty() || attribute.name.contains(&0) {
            return Err("an extended attribute with an empty or NUL-bearing name".to_owned());
        }
        if !xattr::is_copied(&attribute.name) {
            continue;
        }
        let value = if xattr::is_acl(&attribute.name) {
            xattr::remap_acl(&attribute.value, |group, id| {
                let name = wire
                    .acl_ids
                    .iter()
                    .find(|a| a.group == group && a.id == id)
                    .map(|a| a.name.as_str())
                    .unwrap_or_default();
                let mapped = if group {
                    ids.gid(name, id)
                } else {
                    ids.uid(name, id)
                };
                mapped.map_err(|reason| {
                    format!(
                        "an entry of its ACL ({}): {reason}",
                        String::from_utf8_lossy(&attribute.name)
                    )
                })
            })?
        } else {
            attribute.value
        };
        xattrs.push((attribute.name, value));
    }
    xattrs.sort();
    let extents = wire.sparse.then(|| {
        wire.data_extents
            .iter()
            .map(|e| Extent {
                offset: e.offset,
                length: e.length,
            })
            .collect()
    });
    Ok(Entry {
        uid: ids
            .uid(&wire.owner, wire.uid)
            .map_err(|reason| format!("its owner: {reason}"))?,
        gid: ids
            .gid(&wire.group, wire.gid)
            .map_err(|reason| format!("its group: {reason}"))?,
        path,
        kind,
        mode: wire.mode & 0o7777,
        mtime: Mtime {
            sec: wire.mtime_sec,
            nsec: wire.mtime_nsec,
        },
        size: wire.size,
        xattrs,
        extents,
        inode: (0, 0),
    })
}
