//! Customer accounts as found on disk: each directory directly under
//! `accounts_dir` whose name is a valid account name, with its owner and the
//! size of its tree.
//!
//! Blocking code (run it in `spawn_blocking`); reads only, never follows a
//! symbolic link, never crosses into another filesystem mounted inside a
//! home, and does not fail because a file vanished during the walk (live trees
//! change while they are measured).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether `name` can be an account (and so a system user and database
/// role): `[a-z_][a-z0-9_-]{0,31}`.
pub fn is_valid_account_name(name: &str) -> bool {
    crate::ids::AccountName::is_valid(name)
}

/// An account's home directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountDir {
    pub name: String,
    pub home: PathBuf,
    /// Owner of the directory: the account's system user.
    pub uid: u32,
}

/// The account directories under `accounts_dir`, sorted by name. Entries that
/// are not directories (symbolic links included) or whose name is not a valid
/// account name are skipped.
pub fn list_account_dirs(accounts_dir: &Path) -> std::io::Result<Vec<AccountDir>> {
    let mut accounts = Vec::new();
    for entry in std::fs::read_dir(accounts_dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::debug!(message = "skipped an unreadable entry", dir = %accounts_dir.display(), %error);
                continue;
            }
        };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_valid_account_name(&name) {
            continue;
        }
        let home = entry.path();
        // Gone since read_dir listed it: not an account any more.
        let Ok(metadata) = std::fs::symlink_metadata(&home) else {
            continue;
        };
        if !metadata.is_dir() {
            continue;
        }
        accounts.push(AccountDir {
            name,
            home,
            uid: metadata.uid(),
        });
    }
    accounts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(accounts)
}

/// What a home directory holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Apparent size (`len()`) of every non-directory entry: what a copy has
    /// to transfer. Sparse files count at their apparent size, directories
    /// count nothing.
    pub bytes: u64,
    /// Number of non-directory entries (files, symbolic links, others).
    pub files: u64,
    /// Entries that could not be read (permission, I/O error) and are not
    /// counted. Entries that vanished during the walk are not counted here.
    pub unreadable: u64,
}

/// Walks the tree under `root` without following symbolic links and without
/// leaving `root`'s filesystem.
pub fn measure_tree(root: &Path) -> TreeUsage {
    let mut usage = TreeUsage::default();
    let device = match std::fs::symlink_metadata(root) {
        Ok(metadata) if metadata.is_dir() => metadata.dev(),
        Ok(metadata) => {
            usage.files = 1;
            usage.bytes = metadata.len();
            return usage;
        }
        Err(error) => {
            if error.kind() != std::io::ErrorKind::NotFound {
                usage.unreadable += 1;
            }
            return usage;
        }
    };
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(message = "cannot list a directory", dir = %dir.display(), %error);
                    usage.unreadable += 1;
                }
                continue;
            }
        };
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(_) => {
                    usage.unreadable += 1;
                    continue;
                }
            };
            let metadata = match std::fs::symlink_metadata(&path) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    usage.unreadable += 1;
                    continue;
                }
            };
            if metadata.is_dir() {
                if metadata.dev() == device {
                    pending.push(path);
                }
            } else {
                usage.files += 1;
                usage.bytes = usage.bytes.saturating_add(metadata.len());
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temporary directory, removed on
    /// drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "navette-agent-{label}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(path: &Path, bytes: usize) {
        std::fs::write(path, vec![b'x'; bytes]).expect("write test file");
    }

    #[test]
    fn account_names_follow_the_system_user_rules() {
        for good in ["alice", "_svc", "a", "web-1", "db_owner", &"a".repeat(32)] {
            assert!(is_valid_account_name(good), "{good}");
        }
        for bad in [
            "",
            "Alice",
            "1abc",
            "-a",
            "a.b",
            "lost+found",
            "é",
            &"a".repeat(33),
        ] {
            assert!(!is_valid_account_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_valid_directories_are_accounts() {
        let root = TempDir::new("accounts");
        std::fs::create_dir(root.0.join("bob")).expect("bob");
        std::fs::create_dir(root.0.join("alice")).expect("alice");
        std::fs::create_dir(root.0.join("lost+found")).expect("lost+found");
        std::fs::create_dir(root.0.join("Upper")).expect("Upper");
        write(&root.0.join("carol"), 3);
        std::os::unix::fs::symlink(root.0.join("alice"), root.0.join("dave")).expect("symlink");
        let accounts = list_account_dirs(&root.0).expect("list");
        let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(accounts[0].home, root.0.join("alice"));
        let uid = std::fs::metadata(&root.0).expect("metadata").uid();
        assert_eq!(accounts[0].uid, uid);
    }

    #[test]
    fn the_walk_counts_files_and_apparent_sizes_without_following_links() {
        let root = TempDir::new("walk");
        let home = root.0.join("alice");
        std::fs::create_dir_all(home.join("www/img")).expect("dirs");
        write(&home.join("www/index.html"), 100);
        write(&home.join("www/img/logo.png"), 1000);
        write(&home.join(".profile"), 10);
        // Links are counted as entries of their own size, never followed.
        let outside = root.0.join("outside");
        std::fs::create_dir(&outside).expect("outside");
        write(&outside.join("big"), 5000);
        std::os::unix::fs::symlink(&outside, home.join("link")).expect("symlink");
        let link_len = std::fs::symlink_metadata(home.join("link"))
            .expect("link")
            .len();
        // A sparse file counts at its apparent size.
        let sparse = std::fs::File::create(home.join("sparse")).expect("sparse");
        sparse.set_len(1 << 20).expect("set_len");

        let usage = measure_tree(&home);
        assert_eq!(usage.files, 5);
        assert_eq!(usage.bytes, 100 + 1000 + 10 + link_len + (1 << 20));
        assert_eq!(usage.unreadable, 0);
    }

    #[test]
    fn a_vanished_tree_is_empty_not_an_error() {
        let root = TempDir::new("vanished");
        let usage = measure_tree(&root.0.join("gone"));
        assert_eq!(usage, TreeUsage::default());
    }
}
