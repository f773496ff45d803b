//! Paths inside a copied tree: raw bytes (names need not be UTF-8),
//! relative to the tree's root, and checked once so that nothing downstream
//! can be handed an absolute path, a `..` or an empty component.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A path below a tree root: `/`-separated components, none empty, `.` or
/// `..`, no NUL byte. The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelPath(Vec<u8>);

/// Longest path accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;
/// Longest name accepted (Linux's NAME_MAX).
const MAX_NAME: usize = 255;

impl RelPath {
    /// The root of the tree.
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// Checks `bytes` as a path below the root; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<RelPath, &'static str> {
        if bytes.is_empty() {
            return Ok(RelPath::root());
        }
        if bytes.len() > MAX_PATH {
            return Err("the path is longer than 4096 bytes");
        }
        if bytes[0] == b'/' {
            return Err("the path is absolute");
        }
        if bytes.contains(&0) {
            return Err("the path contains a NUL byte");
        }
        for component in bytes.split(|&b| b == b'/') {
            match component {
                b"" => return Err("the path has an empty component"),
                b"." => return Err("the path has a '.' component"),
                b".." => return Err("the path has a '..' component"),
                name if name.len() > MAX_NAME => {
                    return Err("a component of the path is longer than 255 bytes");
                }
                _ => {}
            }
        }
        Ok(RelPath(bytes.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path's components, none for the root.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// How many components deep the path is (0 for the root).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|&&b| b == b'/').count() + 1
        }
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(slash) => Some((RelPath(self.0[..slash].to_vec()), &self.0[slash + 1..])),
            None => Some((RelPath::root(), &self.0[..])),
        }
    }

    /// The parent directory's path, as bytes (empty for the root and for
    /// entries of the root).
    pub fn parent_bytes(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(slash) => &self.0[..slash],
            None => &[],
        }
    }

    /// The last component; empty for the root.
    pub fn name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(slash) => &self.0[slash + 1..],
            None => &self.0,
        }
    }

    /// This path with one more component, which must be a single valid name
    /// (as read from a directory).
    pub fn join(&self, name: &[u8]) -> RelPath {
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        RelPath(bytes)
    }

    /// Whether `self` is `ancestor` or lies below it.
    pub fn starts_with(&self, ancestor: &RelPath) -> bool {
        ancestor.0.is_empty()
            || (self.0.starts_with(&ancestor.0)
                && (self.0.len() == ancestor.0.len() || self.0[ancestor.0.len()] == b'/'))
    }

    /// The range of paths strictly below this one, in bytewise order (for
    /// ordered maps): from `self/` up to, not including, `self0` (`'0'`
    /// follows `'/'`).
    pub fn descendants(&self) -> std::ops::Range<RelPath> {
        let mut low = self.0.clone();
        let mut high = self.0.clone();
        if !self.0.is_empty() {
            low.push(b'/');
            high.push(b'0');
        } else {
            low = vec![1];
            high = vec![0xff; MAX_PATH + 1];
        }
        RelPath(low)..RelPath(high)
    }

    /// As a relative `Path`, for messages and for joining to a root that is
    /// trusted (never used to reach the filesystem on the receiving side).
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// `root/self`, for error messages.
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.0.is_empty() {
            root.to_path_buf()
        } else {
            root.join(self.as_path())
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_path())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            write!(f, "{}", self.as_path().display())
        }
    }
}

/// Whether `name` is one component that may be created in a directory.
pub fn is_plain_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && name.len() <= MAX_NAME
        && !name.contains(&b'/')
        && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_paths_are_refused() {
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"a//b",
            b"a/",
            b"./a",
            b"a/.",
            b"a\0b",
        ] {
            assert!(
                RelPath::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn names_need_not_be_utf8() -> Result<(), &'static str> {
        let path = RelPath::parse(b"dir/caf\xe9")?;
        assert_eq!(path.depth(), 2);
        let (parent, name) = path.split_last().ok_or("no parent")?;
        assert_eq!(parent.as_bytes(), b"dir");
        assert_eq!(name, b"caf\xe9");
        assert_eq!(parent.join(name), path);
        assert!(path.starts_with(&parent));
        assert!(!RelPath::parse(b"dirt")?.starts_with(&parent));
        assert_eq!(RelPath::root().join(b"a").as_bytes(), b"a");
        Ok(())
    }
}
