//! The gRPC surfaces of the controller.
//!
//! Invariant: these are the only modules that know protobuf types. Handlers
//! check and convert requests, call the domain (`store`, `enrolment`,
//! `catalogue`), and convert back; errors become `tonic::Status` in
//! [`status`] and nowhere else. Who may call what is decided in [`policy`],
//! applied by the role gate before any handler runs.

pub mod addresses;
pub mod convert;
pub mod enrolment;
pub mod gateway;
pub mod migrations;
pub mod operator;
pub mod panel;
pub mod policy;
pub mod reinstalls;
pub mod test_runs;
pub mod transit;
pub mod watch;
pub mod workflows;

use tonic::Status;

use crate::error::Error;

/// The longest message a status carries, in bytes. gRPC C-core clients
/// cannot read more than 16 KiB of metadata; a few hundred bytes say
/// enough, and requests are checked so that none comes near it.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 400;

/// Maps a domain error to the gRPC status the caller sees. Database and
/// internal errors are logged here with their detail and reported without
/// it. Every message is capped at [`MAX_STATUS_MESSAGE_BYTES`].
pub fn status(error: Error) -> Status {
    let status = match error {
        Error::NotFound { .. } => Status::not_found(error.to_string()),
        Error::InvalidArgument(message) => Status::invalid_argument(message),
        Error::FailedPrecondition(message) => Status::failed_precondition(message),
        Error::Unauthenticated(message) => Status::unauthenticated(message),
        Error::PermissionDenied(message) => Status::permission_denied(message),
        Error::AlreadyExists(message) => Status::already_exists(message),
        Error::Unavailable(message) => Status::unavailable(message),
        Error::NoRoom(message) => Status::resource_exhausted(message),
        Error::Database(ref database) if is_data_exception(database) => {
            // A value the field rules let through and PostgreSQL refused
            // (an invalid byte sequence, a number out of range): the
            // request is at fault, and retrying it cannot help.
            tracing::warn!(message = "the database refused a value of a request", error = %error);
            Status::invalid_argument(format!(
                "a value of the request was refused by the database ({}); correct the request rather than retry it",
                database
                    .as_db_error()
                    .map(|e| e.message().to_owned())
                    .unwrap_or_default()
            ))
        }
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
    };
    capped(status)
}

/// Whether PostgreSQL refused a value (SQLSTATE class 22, "data
/// exception": invalid byte sequence, value too long, out of range).
fn is_data_exception(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| code.code().starts_with("22"))
}

/// `status` with its message cut to [`MAX_STATUS_MESSAGE_BYTES`] (on a
/// character boundary, ending with `…`).
pub fn capped(status: Status) -> Status {
    let message = status.message();
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return status;
    }
    let mut end = MAX_STATUS_MESSAGE_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Status::new(status.code(), format!("{}…", &message[..end]))
}

/// Shorthand for handlers.
pub(crate) type Reply<T> = Result<tonic::Response<T>, Status>;

pub(crate) fn reply<T>(result: Result<T, Error>) -> Reply<T> {
    result.map(tonic::Response::new).map_err(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_message_is_capped() {
        let huge = format!("account {} not found", "é".repeat(1 << 19));
        let capped = status(Error::InvalidArgument(huge));
        assert_eq!(capped.code(), tonic::Code::InvalidArgument);
        assert!(capped.message().len() <= MAX_STATUS_MESSAGE_BYTES);
        assert!(capped.message().starts_with("account éé"));
        assert!(capped.message().ends_with('…'));
        let short = status(Error::FailedPrecondition("host draining".to_owned()));
        assert_eq!(short.message(), "host draining");
    }

    #[test]
    fn a_refused_field_is_invalid_argument_naming_it() {
        let error: Error = crate::ids::AccountName::parse("account", "bruno\n")
            .expect_err("refused")
            .into();
        let status = status(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("account: "),
            "{}",
            status.message()
        );
    }
}
