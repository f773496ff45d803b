//! Why a PostgreSQL copy failed, on the target side, with the server,
//! database and table concerned.

use std::path::PathBuf;

/// A failed copy. Every variant names the database (as named on the
/// target) and, where there is one, the table or object.
#[derive(Debug, thiserror::Error)]
pub enum PostgresCopyError {
    /// The copy names a server this (target) agent does not have.
    #[error("PostgreSQL server {server:?} is not configured on this host")]
    UnknownTargetServer { server: String },
    /// The target server refused a statement or could not be reached.
    #[error("target PostgreSQL server {server}, database {database}: {what}")]
    Target {
        server: String,
        database: String,
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The source agent answered a call with an error.
    #[error("source database {database} (server {server}): {what}: {status}")]
    Source {
        server: String,
        database: String,
        what: String,
        status: String,
        /// The link or the snapshot was lost: a new attempt may succeed.
        transient: bool,
    },
    /// Copying or checking one table failed.
    #[error("database {database}, table {table}: {what}")]
    Table {
        database: String,
        table: String,
        what: String,
        /// The link or the snapshot was lost: a new attempt may succeed.
        transient: bool,
    },
    /// pg_restore failed.
    #[error("database {database}: {program} failed: {message}")]
    Tool {
        database: String,
        program: String,
        message: String,
    },
    /// A work file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The copy cannot be made as asked (versions, missing extensions,
    /// target is the source...); nothing was changed.
    #[error("database {database}: {reason}")]
    Refused { database: String, reason: String },
    /// The source sent what the target does not accept (roles outside the
    /// account, powers, settings, archive entries...: see
    /// `acceptance`); nothing was applied on the target.
    #[error(
        "database {database}: the target refuses what the source sent, and applied none of it: {}",
        findings.join("; ")
    )]
    NotAccepted {
        database: String,
        findings: Vec<String>,
    },
    /// The copy differs from the source.
    #[error("database {database}: the copy does not match the source: {}", problems.join("; "))]
    Mismatch {
        database: String,
        problems: Vec<String>,
    },
    /// The source stopped holding the snapshot before the copy ended.
    #[error(
        "source database {database}: the snapshot was released before the copy ended ({reason}); the copy must start again"
    )]
    SnapshotLost { database: String, reason: String },
    /// The source stayed unreachable for longer than a copy waits
    /// ([`crate::transfer::outage`]); `last` is the last failure.
    #[error(
        "database {database}: {what} stayed unreachable for {lasted_seconds} s, longer than the {bound_seconds} s a copy waits; check that the source host's agent and PostgreSQL server run, then copy again"
    )]
    Unreachable {
        database: String,
        what: String,
        lasted_seconds: u64,
        bound_seconds: u64,
        #[source]
        last: Box<PostgresCopyError>,
    },
}

impl PostgresCopyError {
    /// A source agent's error answer to a call.
    pub fn from_source(
        server: &str,
        database: &str,
        what: &str,
        status: &tonic::Status,
    ) -> PostgresCopyError {
        PostgresCopyError::Source {
            server: server.to_owned(),
            database: database.to_owned(),
            what: what.to_owned(),
            status: crate::describe_status(status),
            transient: is_transient_code(status.code()),
        }
    }

    /// Whether copying the database again, with a new snapshot, may
    /// succeed: the link broke, the source's server could not be reached
    /// or cut the session (it is restarting), or the source lost the
    /// snapshot. An [`Unreachable`](PostgresCopyError::Unreachable) copy
    /// already waited as long as it may.
    pub fn is_transient(&self) -> bool {
        match self {
            PostgresCopyError::SnapshotLost { .. } => true,
            PostgresCopyError::Source { transient, .. }
            | PostgresCopyError::Table { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Codes that say the link broke (UNAVAILABLE, CANCELLED...), that the
/// source's server cannot be reached now (UNAVAILABLE: the source agent
/// answers so for a server that is down, starting or shutting down), or
/// that the snapshot is gone (FAILED_PRECONDITION), rather than a refusal.
pub fn is_transient_code(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::FailedPrecondition
    )
}
