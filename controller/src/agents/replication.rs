//! A migration's replication calls to the agents, in domain types: the
//! PostgreSQL publication, slot, subscription, lag, drain, sequences and
//! teardown (agent `replication::postgres`), and the MariaDB replication
//! user, position, connection, backlog, drain and stop (agent
//! `replication::mariadb`). Every call is named by the migration id and
//! idempotent on the agent's side, so a step run again is harmless.

use std::time::Duration;

use navette_proto::v1;

use super::{CALL_TIMEOUT, CallFailure, agent, call_outcome, request};
use crate::model::Host;
use crate::state::Controller;

/// Which side of a PostgreSQL replication a teardown is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

/// One sequence's value, carried inside the freeze.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceValue {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// The source's position, and whether it can be a replication source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MariadbPosition {
    pub gtid_position: String,
    pub ready: bool,
    pub reason: String,
}

/// A MariaDB replication connection's state on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MariadbStatus {
    pub running: bool,
    pub backlog_transactions: u64,
    pub last_error: String,
}

/// What the target's MariaDB connection replicates, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MariadbReplication {
    pub migration_id: String,
    pub target_server: String,
    pub source_address: String,
    pub source_port: u16,
    pub user: String,
    pub password: String,
    pub snapshot_positions: Vec<String>,
    pub databases: Vec<String>,
}

fn pg(migration_id: &str, server: &str, database: &str) -> v1::PostgresReplicationRequest {
    v1::PostgresReplicationRequest {
        migration_id: migration_id.to_owned(),
        server: server.to_owned(),
        database: database.to_owned(),
    }
}

/// Source: the publication and slot of one database (tables without a
/// key given REPLICA IDENTITY FULL); the slot the copy is to read from.
pub async fn prepare_postgres(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    database: &str,
) -> Result<String, CallFailure> {
    let response = agent(controller, host)?
        .prepare_postgres_replication(request(pg(migration_id, server, database), CALL_TIMEOUT))
        .await
        .map_err(|status| call_outcome(host, &status))?
        .into_inner();
    if !response.full_identity_tables.is_empty() {
        tracing::info!(message = "tables without a primary key replicate with REPLICA IDENTITY FULL", %migration_id, %database, tables = ?response.full_identity_tables);
    }
    Ok(response.slot_name)
}

/// Source: the replication role's one-time password.
pub async fn admit_postgres_subscriber(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    database: &str,
) -> Result<String, CallFailure> {
    agent(controller, host)?
        .admit_postgres_subscriber(request(pg(migration_id, server, database), CALL_TIMEOUT))
        .await
        .map(|r| r.into_inner().password)
        .map_err(|status| call_outcome(host, &status))
}

/// Where a subscription reads from.
pub struct PostgresSource<'a> {
    pub address: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub password: String,
}

/// Target: the subscription from the copy's slot.
pub async fn subscribe_postgres(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    target_database: &str,
    source: PostgresSource<'_>,
) -> Result<(), CallFailure> {
    agent(controller, host)?
        .subscribe_postgres(request(
            v1::SubscribePostgresRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                target_database: target_database.to_owned(),
                source_host: source.address.to_owned(),
                source_port: u32::from(source.port),
                source_database: source.database.to_owned(),
                password: source.password,
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}

/// Target: whether the subscription flushes each transaction it applies
/// before confirming it (see `SetPostgresApplyFlush`).
pub async fn set_postgres_apply_flush(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    database: &str,
    flush_each_transaction: bool,
) -> Result<(), CallFailure> {
    agent(controller, host)?
        .set_postgres_apply_flush(request(
            v1::SetPostgresApplyFlushRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                target_database: database.to_owned(),
                source_database: database.to_owned(),
                flush_each_transaction,
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}

/// Source: WAL bytes the target has not confirmed applying.
pub async fn postgres_lag(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    database: &str,
) -> Result<u64, CallFailure> {
    agent(controller, host)?
        .get_postgres_replication_lag(request(pg(migration_id, server, database), CALL_TIMEOUT))
        .await
        .map(|r| r.into_inner().lag_bytes)
        .map_err(|status| call_outcome(host, &status))
}

/// Source: waits until the target applied `lsn` (the fence's position;
/// empty: the source's current position, a WAL message written first so
/// an idle source cannot stall it), at most `deadline`; the position
/// reached.
pub async fn drain_postgres(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    database: &str,
    lsn: &str,
    deadline: Duration,
) -> Result<String, CallFailure> {
    let deadline_ms = u32::try_from(deadline.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    agent(controller, host)?
        .drain_postgres_replication(request(
            v1::DrainPostgresReplicationRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                database: database.to_owned(),
                lsn: lsn.to_owned(),
                deadline_ms,
            },
            deadline + Duration::from_secs(2),
        ))
        .await
        .map(|r| r.into_inner().lsn)
        .map_err(|status| call_outcome(host, &status))
}

/// Source: the sequences' values now.
pub async fn read_postgres_sequences(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    database: &str,
) -> Result<Vec<SequenceValue>, CallFailure> {
    agent(controller, host)?
        .read_postgres_sequences(request(pg(migration_id, server, database), CALL_TIMEOUT))
        .await
        .map(|r| {
            r.into_inner()
                .sequences
                .into_iter()
                .map(|s| SequenceValue {
                    schema: s.schema,
                    name: s.name,
                    last_value: s.last_value,
                    is_called: s.is_called,
                })
                .collect()
        })
        .map_err(|status| call_outcome(host, &status))
}

/// Target: the sequences set to `values`.
pub async fn write_postgres_sequences(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    database: &str,
    values: &[SequenceValue],
) -> Result<(), CallFailure> {
    agent(controller, host)?
        .write_postgres_sequences(request(
            v1::WritePostgresSequencesRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                database: database.to_owned(),
                sequences: values
                    .iter()
                    .map(|s| v1::PostgresSequenceValue {
                        schema: s.schema.clone(),
                        name: s.name.clone(),
                        last_value: s.last_value,
                        is_called: s.is_called,
                    })
                    .collect(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}

/// Either side: what the replication made there dropped (the customer's
/// data stays).
pub async fn teardown_postgres(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    side: Side,
    source_database: &str,
    target_database: &str,
) -> Result<(), CallFailure> {
    let side = match side {
        Side::Source => v1::ReplicationSide::Source,
        Side::Target => v1::ReplicationSide::Target,
    };
    agent(controller, host)?
        .teardown_postgres_replication(request(
            v1::TeardownPostgresReplicationRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                side: side.into(),
                source_database: source_database.to_owned(),
                target_database: target_database.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}

/// Source: the migration's replication user, reachable from
/// `target_address` only; (user, one-time password).
pub async fn ensure_mariadb_user(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    target_address: &str,
) -> Result<(String, String), CallFailure> {
    agent(controller, host)?
        .ensure_mariadb_replication_user(request(
            v1::MariadbReplicationUserRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                target_address: target_address.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| {
            let user = r.into_inner();
            (user.user, user.password)
        })
        .map_err(|status| call_outcome(host, &status))
}

/// Source: the replication user dropped, with its sessions.
pub async fn drop_mariadb_user(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
) -> Result<(), CallFailure> {
    agent(controller, host)?
        .drop_mariadb_replication_user(request(
            v1::MariadbReplicationUserRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                target_address: String::new(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}

/// Source: the server's binlog position, and whether it can replicate.
pub async fn mariadb_position(
    controller: &Controller,
    host: &Host,
    server: &str,
) -> Result<MariadbPosition, CallFailure> {
    agent(controller, host)?
        .get_mariadb_source_position(request(
            v1::MariadbSourcePositionRequest {
                server: server.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| {
            let position = r.into_inner();
            MariadbPosition {
                gtid_position: position.gtid_position,
                ready: position.row_binlog_ready,
                reason: position.row_binlog_reason,
            }
        })
        .map_err(|status| call_outcome(host, &status))
}

/// Target: the migration's named replication connection, started from
/// the copy's snapshot positions.
pub async fn start_mariadb(
    controller: &Controller,
    host: &Host,
    replication: &MariadbReplication,
) -> Result<(), CallFailure> {
    agent(controller, host)?
        .start_mariadb_replication(request(
            v1::StartMariadbReplicationRequest {
                migration_id: replication.migration_id.clone(),
                server: replication.target_server.clone(),
                source_host: replication.source_address.clone(),
                source_port: u32::from(replication.source_port),
                user: replication.user.clone(),
                password: replication.password.clone(),
                snapshot_gtid_positions: replication.snapshot_positions.clone(),
                databases: replication.databases.clone(),
                source_ca_path: String::new(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}

/// Target: the connection's state, its backlog measured against the
/// source's `source_gtid_position`.
pub async fn mariadb_status(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    source_gtid_position: &str,
) -> Result<MariadbStatus, CallFailure> {
    agent(controller, host)?
        .get_mariadb_replication_status(request(
            v1::MariadbReplicationStatusRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                source_gtid_position: source_gtid_position.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(|r| {
            let status = r.into_inner();
            MariadbStatus {
                running: status.running,
                backlog_transactions: status.backlog_transactions,
                last_error: status.last_error,
            }
        })
        .map_err(|status| call_outcome(host, &status))
}

/// Target: waits until the connection applied `source_gtid_position`, at
/// most `deadline`.
pub async fn drain_mariadb(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
    source_gtid_position: &str,
    deadline: Duration,
) -> Result<(), CallFailure> {
    let timeout_ms = u32::try_from(deadline.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    agent(controller, host)?
        .drain_mariadb_replication(request(
            v1::DrainMariadbReplicationRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
                source_gtid_position: source_gtid_position.to_owned(),
                timeout_ms,
            },
            deadline + Duration::from_secs(2),
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}

/// Target: the connection removed (the copy's data stays).
pub async fn stop_mariadb(
    controller: &Controller,
    host: &Host,
    migration_id: &str,
    server: &str,
) -> Result<(), CallFailure> {
    agent(controller, host)?
        .stop_mariadb_replication(request(
            v1::StopMariadbReplicationRequest {
                migration_id: migration_id.to_owned(),
                server: server.to_owned(),
            },
            CALL_TIMEOUT,
        ))
        .await
        .map(drop)
        .map_err(|status| call_outcome(host, &status))
}
