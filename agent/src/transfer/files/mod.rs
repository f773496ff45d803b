//! Files: an account's home tree, copied from a source agent to a target
//! agent with full fidelity (regular files, directories, symbolic links,
//! hard links, fifos and sockets; owners by name, modes, modification
//! times, extended attributes and POSIX ACLs; sparse files; names that are
//! not UTF-8), resumable, verified, and sending only what changed on a
//! refresh.
//!
//! # Layout
//!
//! Shared by both sides:
//! - [`path`]: paths below a root, as checked bytes (no `..`, no absolute).
//! - [`beneath`]: reaching the filesystem below a root directory fd without
//!   ever crossing a symbolic link.
//! - [`scan`]: reading a tree, parents first, without following links.
//! - [`xattr`]: extended attributes and the ids inside POSIX ACLs;
//!   [`ids`]: owners by name; [`setid`]: which set-user-id and
//!   set-group-id bits a copy keeps.
//! - [`digest`]: the block and file checksums; [`wire`]: entries to and
//!   from `navette.v1.TreeEntry`.
//!
//! Source: [`source`] (the `FileSource` gRPC service, authorised by the
//! transfer's grant, and `FileChanges`, a journal's changes as entries,
//! with the small files' content)
//! and [`read`] (reading blocks and whole files); [`journals`], the
//! change journals of homes being migrated, by migration, with their
//! epochs and the paths sent but not yet confirmed.
//!
//! Target: [`pull`] (the entry point, its attempts and retries),
//! [`shared`] (what an attempt's parts share, and the counters),
//! [`manifest`] (the checks that make the manifest a tree that can be built
//! safely), [`plan`] (comparison, structural changes, and what a plan
//! changes), [`receive`] (content streams) and [`part`] (one large file:
//! delta, verification, rename into place), [`apply`] (every change made
//! to the target tree) and [`journal`] (what a resumed pull picks up);
//! [`catchup`], a pass that compares only the paths a source's journal
//! names, with the same checks as a manifest's (a small file's new content
//! written over its old version, [`apply::open_in_place`]), or the whole
//! tree when the journal cannot be trusted; [`unsynced`], what passes
//! wrote without syncing (recorded with the boot before it is written),
//! for the next durable pass to sync, or to send again after a restart.
//!
//! # Invariants
//!
//! - The source serves only the granted home, to the granted host, and
//!   never follows a symbolic link: files are opened component by component
//!   with `O_NOFOLLOW`.
//! - The target changes nothing outside the target root: every operation
//!   goes through a directory fd opened below the root without following
//!   links, on one plain name; a manifest entry whose parent is not a
//!   directory listed before it is refused before anything is written.
//! - Content is renamed into place only after every block and the whole
//!   file verified (SHA-256); a torn copy of a file that changed while read
//!   is dated so that the next refresh sends it again.
//! - A copy never gains privilege on the target: owners, groups and ACL
//!   entries are mapped by name, and a name the target does not know is
//!   refused (never mapped by number); set-user-id and set-group-id bits
//!   survive only on entries of the account's own user (and groups it is
//!   in), never on uid 0's or another user's, and each removal is
//!   reported. Both are decided on the manifest, before anything is
//!   written.
//! - Every step can be repeated: a pull after a failed one continues where
//!   it stopped.
//! - A file a catch-up pass writes is recorded durably before it is
//!   written, until a sync covers it: a copy's size and time never vouch
//!   for content a restart of its host may have lost.

pub mod apply;
pub mod beneath;
pub mod catchup;
pub mod digest;
pub mod ids;
pub mod journal;
pub mod journals;
pub mod manifest;
pub mod part;
pub mod path;
pub mod plan;
pub mod prefetch;
pub mod pull;
pub mod read;
pub mod receive;
pub mod scan;
pub mod setid;
pub mod shared;
pub mod source;
pub mod unsynced;
pub mod wire;
pub mod xattr;

use std::path::PathBuf;
use std::time::Duration;

pub use catchup::{CatchUp, CatchUpReport, catch_up};
pub use pull::{FilesReport, PullConfig, SOURCE_FILES, file_source_client, pull, pull_with};
pub use source::{FileChangesService, FileSourceService};

/// Largest gRPC message either side accepts: a block of the largest size,
/// or the list of known blocks of a very large file, with room to spare.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// A pull that failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("transfer {transfer_id}: {problem}")]
pub struct FilesError {
    pub transfer_id: String,
    #[source]
    pub problem: Problem,
}

impl FilesError {
    /// Whether trying again later may succeed (the source was unreachable).
    pub fn is_transient(&self) -> bool {
        self.problem.is_transient()
    }
}

/// What went wrong in a pull.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("the transfer id is not valid: use letters, digits, '-' and '_'")]
    BadId,
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the source answered: {}", crate::describe_status(.0))]
    Source(tonic::Status),
    #[error("the source sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("the source's manifest was refused at {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
    #[error("{path}: the content did not verify after {tries} tries: {reason}")]
    Verify {
        path: path::RelPath,
        tries: u32,
        reason: String,
    },
    #[error("{path}: the source sent a malformed stream: {reason}")]
    Protocol { path: path::RelPath, reason: String },
    #[error("reading the target tree: {0}")]
    Scan(#[from] scan::ScanError),
    #[error("in the target tree: {0}")]
    Apply(#[from] apply::ApplyError),
    #[error("{0}")]
    Internal(String),
}

impl Problem {
    /// Whether the failure is the link's or the source's availability, and
    /// a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Problem::Stalled(_) => true,
            Problem::Source(status) => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::Aborted
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
            ),
            _ => false,
        }
    }
}
