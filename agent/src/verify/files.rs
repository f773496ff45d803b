//! Fingerprints of the paths a migration's last catch-up pass changed, and
//! their comparison between the source and the target.
//!
//! A fingerprint holds what a copy must keep equal: the kind of entry, its
//! permission bits, owner, size, the SHA-256 of a regular file's contents
//! and a symbolic link's target. Paths are reached below the home's
//! [`Root`] without following any symbolic link. A path absent on both
//! sides is equal; absent on one side only is a mismatch.

use std::io::Read;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{SFlag, fstatat};
use ring::digest::{Context, SHA256};

use crate::transfer::files::beneath::Root;
use crate::transfer::files::path::RelPath;

/// What kind of entry a path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Nothing at this path (or a parent is not a directory).
    Absent,
    Directory,
    /// A regular file and the SHA-256 of its contents.
    File {
        sha256: [u8; 32],
    },
    /// A symbolic link and its target, never followed.
    Symlink {
        target: Vec<u8>,
    },
    /// A FIFO, socket or device: compared by kind, mode and owner only.
    Special,
}

/// What a copy must keep equal at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size in bytes (a regular file's or a link target's length).
    pub size: u64,
}

impl Fingerprint {
    fn absent() -> Fingerprint {
        Fingerprint {
            kind: EntryKind::Absent,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
        }
    }
}

/// A path whose fingerprint could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("verify {path}: {action}: {errno}")]
pub struct FingerprintError {
    pub path: String,
    pub action: &'static str,
    pub errno: Errno,
}

/// A path that differs between the source and the target, with what
/// differs, for the freeze's failure reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub path: String,
    pub differs: Vec<&'static str>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.path, self.differs.join(", "))
    }
}

/// Whether an errno means "nothing there".
fn gone(errno: Errno) -> bool {
    matches!(errno, Errno::ENOENT | Errno::ENOTDIR)
}

/// The fingerprint of `path` below `root`.
pub fn fingerprint(root: &Root, path: &RelPath) -> Result<Fingerprint, FingerprintError> {
    let fail = |action: &'static str| {
        move |errno: Errno| FingerprintError {
            path: path.to_string(),
            action,
            errno,
        }
    };
    let Some((parent, name)) = path.split_last() else {
        let stat = nix::sys::stat::fstat(root.fd()).map_err(fail("stat"))?;
        return Ok(Fingerprint {
            kind: EntryKind::Directory,
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            size: 0,
        });
    };
    let dir = match root.dir(&parent) {
        Ok(dir) => dir,
        Err(errno) if gone(errno) => return Ok(Fingerprint::absent()),
        Err(errno) => return Err(fail("open parent")(errno)),
    };
    let stat = match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(errno) if gone(errno) => return Ok(Fingerprint::absent()),
        Err(errno) => return Err(fail("stat")(errno)),
    };
    let format = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    let mut size = 0;
    let kind = match format {
        SFlag::S_IFDIR => EntryKind::Directory,
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(dir.as_fd(), name).map_err(fail("read link"))?;
            let target = std::os::unix::ffi::OsStringExt::into_vec(target);
            size = target.len() as u64;
            EntryKind::Symlink { target }
        }
        SFlag::S_IFREG => {
            let fd = root
                .open_file(path, OFlag::O_RDONLY | OFlag::O_NOATIME)
                .or_else(|_| root.open_file(path, OFlag::O_RDONLY))
                .map_err(fail("open"))?;
            let mut file = std::fs::File::from(fd);
            let mut context = Context::new(&SHA256);
            let mut buffer = vec![0u8; 1 << 16];
            loop {
                let read = file.read(&mut buffer).map_err(|error| {
                    fail("read")(Errno::from_raw(error.raw_os_error().unwrap_or(0)))
                })?;
                if read == 0 {
                    break;
                }
                size += read as u64;
                context.update(&buffer[..read]);
            }
            let mut sha256 = [0u8; 32];
            sha256.copy_from_slice(context.finish().as_ref());
            EntryKind::File { sha256 }
        }
        _ => EntryKind::Special,
    };
    Ok(Fingerprint {
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        size,
    })
}

/// The fingerprints of `paths` below `root`, in order.
pub fn fingerprints(
    root: &Root,
    paths: &[RelPath],
) -> Result<Vec<(RelPath, Fingerprint)>, FingerprintError> {
    paths
        .iter()
        .map(|path| Ok((path.clone(), fingerprint(root, path)?)))
        .collect()
}

/// What differs between the source's and the target's fingerprint of one
/// path; empty when they are equal. `owner` maps the source's owner to the
/// one expected on the target (the account's user may have other ids).
pub fn differences(
    source: &Fingerprint,
    target: &Fingerprint,
    owner: impl Fn(u32, u32) -> (u32, u32),
) -> Vec<&'static str> {
    let mut differs = Vec::new();
    let same_kind = std::mem::discriminant(&source.kind) == std::mem::discriminant(&target.kind);
    if !same_kind {
        differs.push(match (&source.kind, &target.kind) {
            (_, EntryKind::Absent) => "missing on the target",
            (EntryKind::Absent, _) => "left on the target",
            _ => "kind",
        });
        return differs;
    }
    if source.kind == EntryKind::Absent {
        return differs;
    }
    if source.size != target.size {
        differs.push("size");
    }
    match (&source.kind, &target.kind) {
        (EntryKind::File { sha256: a }, EntryKind::File { sha256: b }) if a != b => {
            differs.push("contents")
        }
        (EntryKind::Symlink { target: a }, EntryKind::Symlink { target: b }) if a != b => {
            differs.push("symlink target")
        }
        _ => {}
    }
    // A link's own mode is meaningless on Linux.
    if !matches!(source.kind, EntryKind::Symlink { .. }) && source.mode != target.mode {
        differs.push("mode");
    }
    if owner(source.uid, source.gid) != (target.uid, target.gid) {
        differs.push("owner");
    }
    differs
}

/// The paths whose fingerprints differ between `source` and `target`
/// (matched by path; a path fingerprinted on one side only counts as
/// absent on the other).
pub fn compare(
    source: &[(RelPath, Fingerprint)],
    target: &[(RelPath, Fingerprint)],
    owner: impl Fn(u32, u32) -> (u32, u32),
) -> Vec<Mismatch> {
    let target: std::collections::HashMap<&RelPath, &Fingerprint> =
        target.iter().map(|(path, print)| (path, print)).collect();
    let absent = Fingerprint::absent();
    let mut mismatches = Vec::new();
    for (path, print) in source {
        let other = target.get(path).copied().unwrap_or(&absent);
        let differs = differences(print, other, &owner);
        if !differs.is_empty() {
            mismatches.push(Mismatch {
                path: path.to_string(),
                differs,
            });
        }
    }
    let seen: std::collections::HashSet<&RelPath> = source.iter().map(|(path, _)| path).collect();
    for (path, print) in &target {
        if !seen.contains(path) {
            let differs = differences(&absent, print, &owner);
            if !differs.is_empty() {
                mismatches.push(Mismatch {
                    path: path.to_string(),
                    differs,
                });
            }
        }
    }
    mismatches
}

/// The answer to `VerifyFiles` for the home at `home`: without
/// `compare`, this host's fingerprints of the request's paths (the
/// source's, owners named); with it, the paths whose fingerprint here
/// differs from the request's `source` ones (the target's), the source's
/// owners mapped by name to this host's ids as a copy maps them. Only
/// reads; the error names the path that could not be read.
pub fn answer(
    home: &std::path::Path,
    request: &navette_proto::v1::VerifyFilesRequest,
) -> Result<navette_proto::v1::VerifyFilesResponse, String> {
    use navette_proto::v1::{FileFingerprint, FileKind, VerifyFilesResponse};

    use crate::transfer::files::ids::{IdMap, IdNames};

    let started = std::time::Instant::now();
    let paths: Vec<RelPath> = request
        .paths
        .iter()
        .map(|raw| {
            RelPath::parse(raw)
                .map_err(|why| format!("path {:?}: {why}", String::from_utf8_lossy(raw)))
        })
        .collect::<Result<_, _>>()?;
    let root = Root::open(home).map_err(|errno| format!("{}: {errno}", home.display()))?;
    let here = fingerprints(&root, &paths).map_err(|error| error.to_string())?;
    let elapsed = |started: std::time::Instant| {
        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
    };
    if !request.compare {
        let mut names = IdNames::default();
        let fingerprints = here
            .into_iter()
            .map(|(path, print)| {
                let (kind, sha256, link_target) = match print.kind {
                    EntryKind::Absent => (FileKind::Absent, Vec::new(), Vec::new()),
                    EntryKind::Directory => (FileKind::Directory, Vec::new(), Vec::new()),
                    EntryKind::File { sha256 } => (FileKind::File, sha256.to_vec(), Vec::new()),
                    EntryKind::Symlink { target } => (FileKind::Symlink, Vec::new(), target),
                    EntryKind::Special => (FileKind::Special, Vec::new(), Vec::new()),
                };
                let absent = kind == FileKind::Absent;
                FileFingerprint {
                    path: path.into_bytes(),
                    kind: kind.into(),
                    mode: print.mode,
                    user: if absent { None } else { names.user(print.uid) }.unwrap_or_default(),
                    group: if absent { None } else { names.group(print.gid) }.unwrap_or_default(),
                    size: print.size,
                    sha256,
                    link_target,
                    uid: print.uid,
                    gid: print.gid,
                }
            })
            .collect();
        return Ok(VerifyFilesResponse {
            fingerprints,
            mismatches: Vec::new(),
            elapsed_ms: elapsed(started),
        });
    }
    // The source's owners as this host's ids; a name unknown here maps
    // to no id anyone has, and so differs.
    let mut ids = IdMap::default();
    let mut source = Vec::with_capacity(request.source.len());
    for print in &request.source {
        let path = RelPath::parse(&print.path).map_err(|why| {
            format!(
                "source path {:?}: {why}",
                String::from_utf8_lossy(&print.path)
            )
        })?;
        let kind = match FileKind::try_from(print.kind).unwrap_or(FileKind::Unspecified) {
            FileKind::Absent => EntryKind::Absent,
            FileKind::Directory => EntryKind::Directory,
            FileKind::File => EntryKind::File {
                sha256: print
                    .sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("source path {path}: a SHA-256 is 32 bytes"))?,
            },
            FileKind::Symlink => EntryKind::Symlink {
                target: print.link_target.clone(),
            },
            FileKind::Special => EntryKind::Special,
            FileKind::Unspecified => {
                return Err(format!("source path {path}: no kind"));
            }
        };
        let (uid, gid) = if kind == EntryKind::Absent {
            (0, 0)
        } else {
            (
                ids.uid(&print.user, print.uid).unwrap_or(u32::MAX),
                ids.gid(&print.group, print.gid).unwrap_or(u32::MAX),
            )
        };
        source.push((
            path,
            Fingerprint {
                kind,
                mode: print.mode,
                uid,
                gid,
                size: print.size,
            },
        ));
    }
    let mismatches = compare(&source, &here, |uid, gid| (uid, gid))
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(VerifyFilesResponse {
        fingerprints: Vec::new(),
        mismatches,
        elapsed_ms: elapsed(started),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn same_ids(uid: u32, gid: u32) -> (u32, u32) {
        (uid, gid)
    }

    #[test]
    fn tampered_paths_are_named_and_equal_ones_are_not() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("navette-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for side in ["source", "target"] {
            std::fs::create_dir_all(dir.join(side).join("www"))?;
            std::fs::write(dir.join(side).join("www/index.php"), b"<?php echo 1;")?;
            std::fs::write(dir.join(side).join("www/same"), b"same")?;
            std::fs::write(dir.join(side).join("www/mode"), b"mode")?;
            std::os::unix::fs::symlink("index.php", dir.join(side).join("www/link"))?;
        }
        // The target's copy tampered with in ways a catch-up would not see.
        std::fs::write(dir.join("target/www/index.php"), b"<?php echo 2;")?;
        std::fs::set_permissions(
            dir.join("target/www/mode"),
            std::fs::Permissions::from_mode(0o600),
        )?;
        std::fs::remove_file(dir.join("target/www/link"))?;
        std::os::unix::fs::symlink("other.php", dir.join("target/www/link"))?;
        std::fs::write(dir.join("target/www/extra"), b"x")?;

        let paths: Vec<RelPath> = [
            "www/index.php",
            "www/same",
            "www/mode",
            "www/link",
            "www/gone",
            "www/extra",
        ]
        .iter()
        .map(|path| RelPath::parse(path.as_bytes()))
        .collect::<Result<_, _>>()?;
        let source = fingerprints(&Root::open(&dir.join("source"))?, &paths)?;
        let target = fingerprints(&Root::open(&dir.join("target"))?, &paths)?;
        let found: Vec<String> = compare(&source, &target, same_ids)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "www/index.php (contents)",
                "www/mode (mode)",
                "www/link (symlink target)",
                "www/extra (left on the target)",
            ]
        );
        // The source's owner mapped to another one on the target.
        let mapped = compare(&source[1..2], &target[1..2], |uid, gid| (uid + 1, gid));
        assert_eq!(mapped.len(), 1);
        assert_eq!(mapped[0].differs, ["owner"]);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
