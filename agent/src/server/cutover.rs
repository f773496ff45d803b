//! The `Agent` service's cutover calls (`cutover.proto`): request fields
//! checked, then [`crate::cutover`]; its errors become statuses through
//! [`crate::cutover::CutoverError::status`]. Blocking work (the freezer,
//! the web server) runs off the async workers.

use navette_proto::ids::{AccountName, FieldError, TransferId, free_text};
use navette_proto::v1::{
    CutoverDatabase, FenceDatabasesRequest, FenceDatabasesResponse, FencePosition,
    ForwardSitesRequest, ForwardSitesResponse, FreezeAccountRequest, FreezeAccountResponse,
    ReleaseDatabasesRequest, ReleaseDatabasesResponse, SwitchDatabasesRequest,
    SwitchDatabasesResponse, ThawAccountRequest, ThawAccountResponse, UnforwardSitesRequest,
    UnforwardSitesResponse,
};
use tonic::Status;

use crate::cutover::fence::Databases;
use crate::cutover::{Cutover, CutoverError, DEFAULT_ACQUIRE, DEFAULT_DEADLINE, bounded};

fn field_status(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The migration id and the account, checked.
fn ids(migration_id: &str, account: &str) -> Result<(), Status> {
    TransferId::parse("migration_id", migration_id).map_err(field_status)?;
    AccountName::parse("account", account).map_err(field_status)?;
    Ok(())
}

fn databases(
    postgres: &[CutoverDatabase],
    mariadb: &[CutoverDatabase],
) -> Result<Databases, Status> {
    let check = |field: &str, list: &[CutoverDatabase]| {
        list.iter()
            .map(|d| {
                for (name, value) in [("server", &d.server), ("database", &d.database)] {
                    if value.is_empty() {
                        return Err(Status::invalid_argument(format!(
                            "{field}.{name} is required"
                        )));
                    }
                    free_text(&format!("{field}.{name}"), value, 64).map_err(field_status)?;
                }
                Ok((d.server.clone(), d.database.clone()))
            })
            .collect::<Result<Vec<_>, Status>>()
    };
    Ok(Databases {
        postgres: check("postgres", postgres)?,
        mariadb: check("mariadb", mariadb)?,
    })
}

fn millis(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CutoverError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| e.status()),
        Err(error) => Err(Status::internal(format!(
            "the cutover operation stopped unexpectedly: {error}"
        ))),
    }
}

pub(super) async fn freeze(
    cutover: &Cutover,
    request: FreezeAccountRequest,
) -> Result<FreezeAccountResponse, Status> {
    ids(&request.migration_id, &request.account)?;
    let deadline = bounded(request.deadline_ms, DEFAULT_DEADLINE);
    let cutover = cutover.clone();
    let outcome =
        blocking(move || cutover.freeze(&request.migration_id, &request.account, deadline)).await?;
    Ok(FreezeAccountResponse {
        took_us: micros(outcome.took),
        moved_processes: outcome.moved,
        frozen_processes: outcome.frozen,
        remaining_ms: millis(outcome.remaining),
        already_frozen: outcome.already,
    })
}

pub(super) async fn thaw(
    cutover: &Cutover,
    request: ThawAccountRequest,
) -> Result<ThawAccountResponse, Status> {
    ids(&request.migration_id, &request.account)?;
    let cutover = cutover.clone();
    let took = blocking(move || {
        cutover.thaw(
            &request.migration_id,
            &request.account,
            request.end_processes,
        )
    })
    .await?;
    Ok(ThawAccountResponse {
        thawed: took.is_some(),
        took_us: took.map_or(0, micros),
    })
}

pub(super) async fn fence(
    cutover: &Cutover,
    request: FenceDatabasesRequest,
) -> Result<FenceDatabasesResponse, Status> {
    ids(&request.migration_id, &request.account)?;
    let databases = databases(&request.postgres, &request.mariadb)?;
    let deadline = bounded(request.deadline_ms, DEFAULT_DEADLINE);
    let acquire = bounded(request.acquire_timeout_ms, DEFAULT_ACQUIRE).min(deadline);
    let outcome = cutover
        .fence(
            &request.migration_id,
            &request.account,
            &databases,
            deadline,
            acquire,
        )
        .await
        .map_err(|e| e.status())?;
    let positions = |list: Vec<(String, String)>, lsn: bool| -> Vec<FencePosition> {
        list.into_iter()
            .map(|(server, position)| FencePosition {
                server,
                lsn: if lsn { position.clone() } else { String::new() },
                gtid_position: if lsn { String::new() } else { position },
            })
            .collect()
    };
    Ok(FenceDatabasesResponse {
        postgres: positions(outcome.postgres_positions, true),
        mariadb: positions(outcome.mariadb_positions, false),
        took_us: micros(outcome.took),
        remaining_ms: millis(outcome.remaining),
        already_fenced: outcome.already,
    })
}

pub(super) async fn switch(
    cutover: &Cutover,
    request: SwitchDatabasesRequest,
) -> Result<SwitchDatabasesResponse, Status> {
    ids(&request.migration_id, &request.account)?;
    let databases = databases(&request.postgres, &request.mariadb)?;
    if request.new_address.parse::<std::net::IpAddr>().is_err() {
        free_text("new_address", &request.new_address, 253).map_err(field_status)?;
    }
    let outcome = cutover
        .switch(
            &request.migration_id,
            &request.account,
            &request.new_address,
            &databases,
        )
        .await
        .map_err(|e| e.status())?;
    Ok(SwitchDatabasesResponse {
        ended_sessions: outcome.ended_sessions,
        postgres_refusal: outcome.postgres_refusal,
        mariadb_refusal: outcome.mariadb_refusal,
    })
}

pub(super) async fn release(
    cutover: &Cutover,
    request: ReleaseDatabasesRequest,
) -> Result<ReleaseDatabasesResponse, Status> {
    ids(&request.migration_id, &request.account)?;
    let (unfenced, unswitched) = cutover
        .release(&request.migration_id, &request.account)
        .await
        .map_err(|e| e.status())?;
    Ok(ReleaseDatabasesResponse {
        unfenced,
        unswitched,
    })
}

pub(super) async fn forward(
    cutover: &Cutover,
    request: ForwardSitesRequest,
) -> Result<ForwardSitesResponse, Status> {
    ids(&request.migration_id, &request.account)?;
    let port = match request.new_port {
        0 => 80,
        port => u16::try_from(port)
            .map_err(|_| Status::invalid_argument(format!("new_port: {port} is not a port")))?,
    };
    let cutover = cutover.clone();
    let outcome = blocking(move || {
        cutover.forward(
            &request.migration_id,
            &request.account,
            &request.new_address,
            port,
        )
    })
    .await?;
    Ok(ForwardSitesResponse {
        domains: outcome.domains,
        already_forwarded: outcome.already,
    })
}

pub(super) async fn unforward(
    cutover: &Cutover,
    request: UnforwardSitesRequest,
) -> Result<UnforwardSitesResponse, Status> {
    ids(&request.migration_id, &request.account)?;
    let cutover = cutover.clone();
    if request.end_for_good {
        let ended =
            blocking(move || cutover.end_forward(&request.migration_id, &request.account)).await?;
        return Ok(UnforwardSitesResponse {
            restored: ended,
            pool_started: false,
        });
    }
    let (restored, pool_started) =
        blocking(move || cutover.unforward(&request.migration_id, &request.account)).await?;
    Ok(UnforwardSitesResponse {
        restored,
        pool_started,
    })
}
