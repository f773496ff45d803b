//! The `Agent` service's replication calls: request fields checked, the
//! configured server looked up, then [`crate::replication::postgres`];
//! its errors become statuses through
//! [`crate::replication::postgres::status`], whose messages say what to do.

use std::time::Duration;

use navette_proto::ids::{FieldError, TransferId, free_text};
use navette_proto::v1::{
    AdmitPostgresSubscriberResponse, DrainPostgresReplicationRequest,
    DrainPostgresReplicationResponse, PostgresReplicationLag, PostgresReplicationRequest,
    PostgresSequenceValue, PostgresSequences, PreparePostgresReplicationResponse, ReplicationSide,
    SetPostgresApplyFlushRequest, SetPostgresApplyFlushResponse, SubscribePostgresRequest,
    SubscribePostgresResponse, TeardownPostgresReplicationRequest,
    TeardownPostgresReplicationResponse, VerifyRowsRequest, VerifyRowsResponse,
    WritePostgresSequencesRequest, WritePostgresSequencesResponse,
};
use tonic::Status;

use crate::config::{Config, PostgresqlServer};
use crate::replication::postgres::{Names, source, status, target};
use crate::verify::postgres_rows;

/// The default and longest drain wait.
const DRAIN_DEFAULT: Duration = Duration::from_secs(10);
const DRAIN_LONGEST: Duration = Duration::from_secs(600);

fn field_status(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// A PostgreSQL name: 1 to 63 characters of plain text.
fn name(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    free_text(field, value, 63).map_err(field_status)
}

/// The configured server `name`, after checking the migration id.
fn server<'a>(
    config: &'a Config,
    migration_id: &str,
    server: &str,
) -> Result<&'a PostgresqlServer, Status> {
    TransferId::parse("migration_id", migration_id).map_err(field_status)?;
    name("server", server)?;
    config
        .postgresql
        .iter()
        .find(|s| s.name == server)
        .ok_or_else(|| {
            Status::not_found(format!(
                "no PostgreSQL server {server:?} in this agent's configuration"
            ))
        })
}

fn checked<'a>(
    config: &'a Config,
    request: &PostgresReplicationRequest,
) -> Result<&'a PostgresqlServer, Status> {
    let found = server(config, &request.migration_id, &request.server)?;
    name("database", &request.database)?;
    Ok(found)
}

pub(super) async fn prepare(
    config: &Config,
    request: PostgresReplicationRequest,
) -> Result<PreparePostgresReplicationResponse, Status> {
    let server = checked(config, &request)?;
    let prepared = source::prepare(server, &request.migration_id, &request.database)
        .await
        .map_err(|e| status(&e))?;
    Ok(PreparePostgresReplicationResponse {
        publication: prepared.names.publication,
        slot_name: prepared.names.slot,
        full_identity_tables: prepared.full_identity,
    })
}

pub(super) async fn admit(
    config: &Config,
    request: PostgresReplicationRequest,
) -> Result<AdmitPostgresSubscriberResponse, Status> {
    let server = checked(config, &request)?;
    let password = source::admit_subscriber(server, &request.migration_id, &request.database)
        .await
        .map_err(|e| status(&e))?;
    Ok(AdmitPostgresSubscriberResponse {
        role: Names::new(&request.migration_id, &request.database).role,
        password,
    })
}

pub(super) async fn subscribe(
    config: &Config,
    request: SubscribePostgresRequest,
) -> Result<SubscribePostgresResponse, Status> {
    let server = server(config, &request.migration_id, &request.server)?;
    name("target_database", &request.target_database)?;
    name("source_database", &request.source_database)?;
    free_text("source_host", &request.source_host, 255).map_err(field_status)?;
    if request.source_host.is_empty() || request.password.is_empty() {
        return Err(Status::invalid_argument(
            "source_host and password (from AdmitPostgresSubscriber) are required",
        ));
    }
    let port = u16::try_from(request.source_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::invalid_argument("source_port must be 1 to 65535"))?;
    let endpoint = target::SourceEndpoint {
        host: request.source_host,
        port,
        database: request.source_database.clone(),
        password: request.password,
    };
    target::subscribe(
        server,
        &request.migration_id,
        &request.target_database,
        &endpoint,
    )
    .await
    .map_err(|e| status(&e))?;
    Ok(SubscribePostgresResponse {
        subscription: Names::new(&request.migration_id, &request.source_database).subscription,
    })
}

pub(super) async fn set_apply_flush(
    config: &Config,
    request: SetPostgresApplyFlushRequest,
) -> Result<SetPostgresApplyFlushResponse, Status> {
    let server = server(config, &request.migration_id, &request.server)?;
    name("target_database", &request.target_database)?;
    name("source_database", &request.source_database)?;
    target::set_apply_flush(
        server,
        &request.migration_id,
        &request.target_database,
        &request.source_database,
        request.flush_each_transaction,
    )
    .await
    .map_err(|e| status(&e))?;
    Ok(SetPostgresApplyFlushResponse {})
}

pub(super) async fn lag(
    config: &Config,
    request: PostgresReplicationRequest,
) -> Result<PostgresReplicationLag, Status> {
    let server = checked(config, &request)?;
    let lag = source::lag(server, &request.migration_id, &request.database)
        .await
        .map_err(|e| status(&e))?;
    Ok(PostgresReplicationLag {
        lag_bytes: lag.bytes,
        source_lsn: lag.source_lsn,
        confirmed_lsn: lag.confirmed_lsn,
    })
}

/// `VerifyRows`: a round on the source, or the comparison on the target
/// (`compare`); see [`crate::verify::postgres_rows`].
pub(super) async fn verify_rows(
    config: &Config,
    request: VerifyRowsRequest,
) -> Result<VerifyRowsResponse, Status> {
    let server = server(config, &request.migration_id, &request.server)?;
    name("database", &request.database)?;
    let answer = if request.compare {
        postgres_rows::target_compare(server, &request).await
    } else {
        postgres_rows::source_round(server, &request).await
    };
    answer.map_err(|e| status(&e))
}

pub(super) async fn drain(
    config: &Config,
    request: DrainPostgresReplicationRequest,
) -> Result<DrainPostgresReplicationResponse, Status> {
    let server = server(config, &request.migration_id, &request.server)?;
    name("database", &request.database)?;
    let deadline = match request.deadline_ms {
        0 => DRAIN_DEFAULT,
        ms => Duration::from_millis(u64::from(ms)).min(DRAIN_LONGEST),
    };
    let lsn = source::drain(
        server,
        &request.migration_id,
        &request.database,
        &request.lsn,
        deadline,
    )
    .await
    .map_err(|e| status(&e))?;
    Ok(DrainPostgresReplicationResponse { lsn })
}

pub(super) async fn read_sequences(
    config: &Config,
    request: PostgresReplicationRequest,
) -> Result<PostgresSequences, Status> {
    let server = checked(config, &request)?;
    let values = source::read_sequences(server, &request.database)
        .await
        .map_err(|e| status(&e))?;
    Ok(PostgresSequences {
        sequences: values
            .into_iter()
            .map(|v| PostgresSequenceValue {
                schema: v.schema,
                name: v.name,
                last_value: v.last_value,
                is_called: v.is_called,
            })
            .collect(),
    })
}

pub(super) async fn write_sequences(
    config: &Config,
    request: WritePostgresSequencesRequest,
) -> Result<WritePostgresSequencesResponse, Status> {
    let server = server(config, &request.migration_id, &request.server)?;
    name("database", &request.database)?;
    let mut values = Vec::with_capacity(request.sequences.len());
    for v in request.sequences {
        name("sequences.schema", &v.schema)?;
        name("sequences.name", &v.name)?;
        values.push(source::SequenceValue {
            schema: v.schema,
            name: v.name,
            last_value: v.last_value,
            is_called: v.is_called,
        });
    }
    target::write_sequences(server, &request.database, &values)
        .await
        .map_err(|e| status(&e))?;
    Ok(WritePostgresSequencesResponse {})
}

pub(super) async fn teardown(
    config: &Config,
    request: TeardownPostgresReplicationRequest,
) -> Result<TeardownPostgresReplicationResponse, Status> {
    let server = server(config, &request.migration_id, &request.server)?;
    name("source_database", &request.source_database)?;
    let result = match ReplicationSide::try_from(request.side) {
        Ok(ReplicationSide::Source) => {
            source::teardown(server, &request.migration_id, &request.source_database).await
        }
        Ok(ReplicationSide::Target) => {
            name("target_database", &request.target_database)?;
            target::teardown(
                server,
                &request.migration_id,
                &request.target_database,
                &request.source_database,
            )
            .await
        }
        _ => {
            return Err(Status::invalid_argument(
                "side must be REPLICATION_SIDE_SOURCE or REPLICATION_SIDE_TARGET",
            ));
        }
    };
    result.map_err(|e| status(&e))?;
    Ok(TeardownPostgresReplicationResponse {})
}
