//! The `server_addresses` and `address_moves` tables: where each moved
//! address of a server is held, and every move (IP rerouting,
//! `crate::addresses`).
//!
//! Invariants: `held_by_host_id` changes only in the statement that marks
//! a move done; at most one move per address is `running` (a unique
//! index), so two controllers cannot move one address at once; moves are
//! never deleted.

use tokio_postgres::{GenericClient, Row};

use crate::config::RerouteMode;
use crate::error::{Error, Result};
use crate::model::Time;

/// A recorded address of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedAddress {
    pub address: String,
    pub server_host_id: String,
    pub prefix_length: u8,
    pub held_by_host_id: String,
}

/// How a move ended, or that it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    Running,
    Done,
    Failed,
}

impl MoveOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveOutcome::Running => "running",
            MoveOutcome::Done => "done",
            MoveOutcome::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<MoveOutcome> {
        match text {
            "running" => Ok(MoveOutcome::Running),
            "done" => Ok(MoveOutcome::Done),
            "failed" => Ok(MoveOutcome::Failed),
            other => Err(Error::Internal(format!(
                "unknown move outcome {other:?} in database"
            ))),
        }
    }
}

/// One move of an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressMove {
    pub operation_id: String,
    pub address: String,
    pub server_host_id: String,
    pub from_host_id: String,
    pub to_host_id: String,
    pub mode: RerouteMode,
    pub requested_by: String,
    pub requested_at: Time,
    pub finished_at: Option<Time>,
    pub outcome: MoveOutcome,
    pub error: String,
    pub provider_ms: u32,
}

fn recorded_from(row: &Row) -> RecordedAddress {
    let prefix: i32 = row.get("prefix_length");
    RecordedAddress {
        address: row.get("address"),
        server_host_id: row.get("server_host_id"),
        prefix_length: u8::try_from(prefix).unwrap_or(0),
        held_by_host_id: row.get("held_by_host_id"),
    }
}

const MOVE_COLUMNS: &str = "operation_id, address, server_host_id, from_host_id, to_host_id,
    mode, requested_by, requested_at, finished_at, outcome, error, provider_ms";

fn move_from(row: &Row) -> Result<AddressMove> {
    let mode: String = row.get("mode");
    let outcome: String = row.get("outcome");
    let provider_ms: i32 = row.get("provider_ms");
    Ok(AddressMove {
        operation_id: row.get("operation_id"),
        address: row.get("address"),
        server_host_id: row.get("server_host_id"),
        from_host_id: row.get("from_host_id"),
        to_host_id: row.get("to_host_id"),
        mode: RerouteMode::parse(&mode)
            .ok_or_else(|| Error::Internal(format!("unknown mode {mode:?} in database")))?,
        requested_by: row.get("requested_by"),
        requested_at: row.get("requested_at"),
        finished_at: row.get("finished_at"),
        outcome: MoveOutcome::parse(&outcome)?,
        error: row.get("error"),
        provider_ms: u32::try_from(provider_ms).unwrap_or(0),
    })
}

/// The recorded address, locked until the transaction ends.
pub async fn lock(client: &impl GenericClient, address: &str) -> Result<Option<RecordedAddress>> {
    let row = client
        .query_opt(
            "SELECT address, server_host_id, prefix_length, held_by_host_id
             FROM server_addresses WHERE address = $1 FOR UPDATE",
            &[&address],
        )
        .await?;
    Ok(row.as_ref().map(recorded_from))
}

/// Records `address` as `server`'s, held by the server (its first move).
pub async fn record(
    client: &impl GenericClient,
    address: &str,
    server: &str,
    prefix_length: u8,
) -> Result<RecordedAddress> {
    let row = client
        .query_one(
            "INSERT INTO server_addresses (address, server_host_id, prefix_length, held_by_host_id)
             VALUES ($1, $2, $3, $2)
             ON CONFLICT (address) DO UPDATE SET address = EXCLUDED.address
             RETURNING address, server_host_id, prefix_length, held_by_host_id",
            &[&address, &server, &i32::from(prefix_length)],
        )
        .await?;
    Ok(recorded_from(&row))
}

/// Every recorded address of `server`.
pub async fn of_server(client: &impl GenericClient, server: &str) -> Result<Vec<RecordedAddress>> {
    let rows = client
        .query(
            "SELECT address, server_host_id, prefix_length, held_by_host_id
             FROM server_addresses WHERE server_host_id = $1 ORDER BY address",
            &[&server],
        )
        .await?;
    Ok(rows.iter().map(recorded_from).collect())
}

/// Every recorded address of `server`, each with its moves (oldest
/// first).
pub async fn of_server_with_moves(
    client: &impl GenericClient,
    server: &str,
) -> Result<Vec<(RecordedAddress, Vec<AddressMove>)>> {
    let mut listed = Vec::new();
    for address in of_server(client, server).await? {
        let moves = moves(client, &address.address).await?;
        listed.push((address, moves));
    }
    Ok(listed)
}

/// Every recorded address (of any server).
pub async fn all_addresses(client: &impl GenericClient) -> Result<Vec<String>> {
    let rows = client
        .query("SELECT address FROM server_addresses", &[])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The moves of `address`, oldest first.
pub async fn moves(client: &impl GenericClient, address: &str) -> Result<Vec<AddressMove>> {
    let sql = format!(
        "SELECT {MOVE_COLUMNS} FROM address_moves WHERE address = $1 ORDER BY requested_at, operation_id"
    );
    let rows = client.query(&sql, &[&address]).await?;
    rows.iter().map(move_from).collect()
}

/// Starts a move (outcome `running`).
pub async fn start_move(client: &impl GenericClient, started: &AddressMove) -> Result<AddressMove> {
    let sql = format!(
        "INSERT INTO address_moves (operation_id, address, server_host_id, from_host_id,
             to_host_id, mode, requested_by, outcome)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'running')
         RETURNING {MOVE_COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &started.operation_id,
                &started.address,
                &started.server_host_id,
                &started.from_host_id,
                &started.to_host_id,
                &started.mode.as_str(),
                &started.requested_by,
            ],
        )
        .await?;
    move_from(&row)
}

/// Ends a running move. Done: the address is now held by its target.
pub async fn finish_move(
    client: &impl GenericClient,
    operation_id: &str,
    outcome: MoveOutcome,
    error: &str,
    provider_ms: u32,
) -> Result<AddressMove> {
    let sql = format!(
        "UPDATE address_moves SET outcome = $2, error = $3, provider_ms = $4, finished_at = now()
         WHERE operation_id = $1 AND outcome = 'running'
         RETURNING {MOVE_COLUMNS}"
    );
    let provider_ms = i32::try_from(provider_ms).unwrap_or(i32::MAX);
    let row = client
        .query_opt(
            &sql,
            &[&operation_id, &outcome.as_str(), &error, &provider_ms],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "running address move",
            id: operation_id.to_owned(),
        })?;
    let ended = move_from(&row)?;
    if outcome == MoveOutcome::Done {
        client
            .execute(
                "UPDATE server_addresses SET held_by_host_id = $2, updated_at = now()
                 WHERE address = $1",
                &[&ended.address, &ended.to_host_id],
            )
            .await?;
    }
    Ok(ended)
}
