//! The `Agent` service's `RetireAccount` (`retire.proto`): request fields
//! checked, then [`crate::retire`]; its errors become statuses through
//! [`crate::cutover::CutoverError::status`].

use navette_proto::ids::{AccountName, FieldError, TransferId, free_text};
use navette_proto::v1::{RetireAccountRequest, RetireAccountResponse};
use tonic::Status;

use crate::cutover::Cutover;

fn field_status(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

pub(super) async fn retire_account(
    cutover: &Cutover,
    request: RetireAccountRequest,
) -> Result<RetireAccountResponse, Status> {
    TransferId::parse("migration_id", &request.migration_id).map_err(field_status)?;
    AccountName::parse("account", &request.account).map_err(field_status)?;
    let mut mariadb = Vec::new();
    for database in &request.mariadb {
        for (name, value) in [
            ("server", &database.server),
            ("database", &database.database),
        ] {
            if value.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "mariadb.{name} is required"
                )));
            }
            free_text(&format!("mariadb.{name}"), value, 64).map_err(field_status)?;
        }
        mariadb.push((database.server.clone(), database.database.clone()));
    }
    let retired = crate::retire::retire(cutover, &request.migration_id, &request.account, &mariadb)
        .await
        .map_err(|e| e.status())?;
    Ok(RetireAccountResponse {
        removed: retired.removed,
        kept: retired.kept,
        already: retired.already,
    })
}
