//! The gRPC surfaces of the controller.
//!
//! Invariant: these are the only modules that know protobuf types. Handlers
//! check and convert requests, call the domain (`store`, `enrolment`,
//! `catalogue`), and convert back; errors become `tonic::Status` in
//! [`status`] and nowhere else. Who may call what is decided in [`policy`],
//! applied by the role gate before any handler runs.

pub mod convert;
pub mod enrolment;
pub mod gateway;
pub mod operator;
pub mod panel;
pub mod policy;
pub mod tests;
pub mod workflows;

use tonic::Status;

use crate::error::Error;

/// Maps a domain error to the gRPC status the caller sees. Database and
/// internal errors are logged here with their detail and reported without
/// it.
pub fn status(error: Error) -> Status {
    match error {
        Error::NotFound { .. } => Status::not_found(error.to_string()),
        Error::InvalidArgument(message) => Status::invalid_argument(message),
        Error::FailedPrecondition(message) => Status::failed_precondition(message),
        Error::Unauthenticated(message) => Status::unauthenticated(message),
        Error::PermissionDenied(message) => Status::permission_denied(message),
        Error::AlreadyExists(message) => Status::already_exists(message),
        Error::Unavailable(message) => Status::unavailable(message),
        Error::NoRoom(message) => Status::resource_exhausted(message),
        Error::Database(_) | Error::Pool(_) => {
            tracing::error!(message = "database error", error = %error);
            Status::unavailable(
                "the controller cannot reach its database right now; retry in a moment",
            )
        }
        Error::Ca(_) | Error::Internal(_) => {
            tracing::error!(message = "internal error", error = %error);
            Status::internal(error.to_string())
        }
    }
}

/// Shorthand for handlers.
pub(crate) type Reply<T> = Result<tonic::Response<T>, Status>;

pub(crate) fn reply<T>(result: Result<T, Error>) -> Reply<T> {
    result.map(tonic::Response::new).map_err(status)
}

/// A required string field.
pub(crate) fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Error> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err(Error::InvalidArgument(format!("{field} is required")))
    } else {
        Ok(trimmed)
    }
}

/// An optional string field: empty means absent.
pub(crate) fn optional(value: &str) -> Option<&str> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then_some(trimmed)
}
