//! Extended attributes of an open file or directory (nix has no binding
//! for them; rustix does, safely), and the POSIX ACLs stored in them.
//!
//! ACLs are `system.posix_acl_access` and `system.posix_acl_default`: a
//! little-endian header (version 2) and 8-byte entries (tag, permissions,
//! id). Named-user and named-group entries carry numeric ids, which
//! [`acl_ids`] lists and [`remap_acl`] rewrites for another host.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::XattrFlags;
use rustix::io::Errno;

/// One extended attribute: name, value.
pub type XAttr = (Vec<u8>, Vec<u8>);

pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

fn unsupported(errno: Errno) -> bool {
    errno == Errno::OPNOTSUPP || errno == Errno::NOTSUP
}

/// The attributes of `fd`, sorted by name. A file system without extended
/// attributes has none.
pub fn list(fd: BorrowedFd<'_>) -> io::Result<Vec<XAttr>> {
    let mut names = vec![0u8; 1024];
    loop {
        match rustix::fs::flistxattr(fd, &mut names[..]) {
            Ok(len) => {
                names.truncate(len);
                break;
            }
            Err(Errno::RANGE) => {
                let needed = rustix::fs::flistxattr_query(fd)?;
                names.resize(needed.max(names.len() * 2), 0);
            }
            Err(errno) if unsupported(errno) => return Ok(Vec::new()),
            Err(errno) => return Err(errno.into()),
        }
    }
    let mut attributes = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if let Some(value) = get(fd, name)? {
            attributes.push((name.to_vec(), value));
        }
    }
    attributes.sort();
    Ok(attributes)
}

/// One attribute's value; `None` when it is gone.
fn get(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; 256];
    loop {
        match rustix::fs::fgetxattr(fd, name, &mut value[..]) {
            Ok(len) => {
                value.truncate(len);
                return Ok(Some(value));
            }
            Err(Errno::RANGE) => {
                let needed = rustix::fs::fgetxattr_query(fd, name)?;
                value.resize(needed.max(value.len() * 2), 0);
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Makes the attributes of `fd` exactly `wanted` (sorted by name): removes
/// the others (an ACL inherited from a default ACL, say), sets those that
/// differ. Returns whether anything changed.
pub fn set_exactly(fd: BorrowedFd<'_>, wanted: &[XAttr]) -> io::Result<bool> {
    let current = list(fd)?;
    if current == wanted {
        return Ok(false);
    }
    for (name, _) in &current {
        if !wanted.iter().any(|(w, _)| w == name) {
            match rustix::fs::fremovexattr(fd, name.as_slice()) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
    }
    for (name, value) in wanted {
        if current.iter().any(|(n, v)| n == name && v == value) {
            continue;
        }
        rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())?;
    }
    Ok(true)
}

/// File capabilities: never given to a file on the target (a home has no
/// business granting privileges beyond its owner's, so one coming from a
/// source is not trusted), and removed if found there.
pub const CAPABILITY: &[u8] = b"security.capability";

/// Whether the target gives a file the attribute `name` from the source.
pub fn is_copied(name: &[u8]) -> bool {
    name != CAPABILITY
}

const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// Whether `name` is an attribute holding a POSIX ACL.
pub fn is_acl(name: &[u8]) -> bool {
    name == ACL_ACCESS || name == ACL_DEFAULT
}

/// The (is group, id) pairs of the named entries of an ACL value; empty if
/// the value is not an ACL this code understands.
pub fn acl_ids(value: &[u8]) -> Vec<(bool, u32)> {
    let Some(entries) = acl_entries(value) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| match u16::from_le_bytes([entry[0], entry[1]]) {
            ACL_USER => Some((false, entry_id(entry))),
            ACL_GROUP => Some((true, entry_id(entry))),
            _ => None,
        })
        .collect()
}

fn entry_id(entry: &[u8]) -> u32 {
    u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]])
}

fn acl_entries(value: &[u8]) -> Option<std::slice::ChunksExact<'_, u8>> {
    let header = value.get(..4)?;
    if u32::from_le_bytes([header[0], header[1], header[2], header[3]]) != ACL_VERSION
        || !(value.len() - 4).is_multiple_of(8)
    {
        return None;
    }
    Some(value[4..].chunks_exact(8))
}

/// The ACL `value` with the id of every named entry replaced by
/// `map(is_group, id)`, or the first error `map` returns. A value that is
/// not an understood ACL is returned unchanged.
pub fn remap_acl<E>(
    value: &[u8],
    mut map: impl FnMut(bool, u32) -> Result<u32, E>,
) -> Result<Vec<u8>, E> {
    if acl_entries(value).is_none() {
        return Ok(value.to_vec());
    }
    let mut out = value.to_vec();
    for entry in out[4..].chunks_exact_mut(8) {
        let group = match u16::from_le_bytes([entry[0], entry[1]]) {
            ACL_USER => false,
            ACL_GROUP => true,
            _ => continue,
        };
        let id = map(group, entry_id(entry))?;
        entry[4..8].copy_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut value = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            value.extend_from_slice(&tag.to_le_bytes());
            value.extend_from_slice(&perm.to_le_bytes());
            value.extend_from_slice(&id.to_le_bytes());
        }
        value
    }

    #[test]
    fn named_acl_entries_are_listed_and_remapped() {
        let undefined = u32::MAX;
        let value = acl(&[
            (0x01, 6, undefined),
            (ACL_USER, 4, 1001),
            (0x04, 4, undefined),
            (ACL_GROUP, 5, 2002),
            (0x10, 7, undefined),
            (0x20, 0, undefined),
        ]);
        assert_eq!(acl_ids(&value), vec![(false, 1001), (true, 2002)]);
        let remapped = remap_acl(&value, |group, id| {
            Ok::<_, ()>(if group { id + 1 } else { id + 10 })
        });
        assert_eq!(
            remapped.map(|r| acl_ids(&r)),
            Ok(vec![(false, 1011), (true, 2003)])
        );
        assert_eq!(
            remap_acl(&value, |group, id| if group { Err(id) } else { Ok(id) }),
            Err(2002)
        );
        assert_eq!(
            remap_acl(b"junk", |_, id| Ok::<_, ()>(id + 1)),
            Ok(b"junk".to_vec())
        );
        assert!(acl_ids(b"junk").is_empty());
    }
}
