//! The controller's error type. Each variant says what went wrong in words a
//! caller can act on; `api::status` maps them to gRPC codes in one place.

/// Errors of the controller's operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing named does not exist.
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is valid but the current state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The credentials presented (join token) are not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A request id was reused for a different request.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not enough room (disk, hosts) to do it now.
    #[error("{0}")]
    NoRoom(String),
    /// A host or dependency cannot be reached now; retrying may work.
    #[error("{0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("database: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("certificate authority: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
