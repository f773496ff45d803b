//! The snapshot the copy shares: exported by one session that holds it
//! (with ACCESS SHARE locks) for as long as the target keeps the
//! HoldSnapshot stream open (and its grant lives: a revoked or expired
//! grant ends it), and imported by every other session.

use std::time::{Duration, Instant};

use navette_proto::v1::{SnapshotHeld, SnapshotKeepAlive, SnapshotStatus, snapshot_status};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tonic::Status;

use super::SourceError;
use crate::config::PostgresqlServer;
use crate::replication::postgres::slot::ExportedSlot;
use crate::transfer::grants::SessionPermit;
use crate::transfer::postgres::describe::USER_SCHEMA;
use crate::transfer::postgres::session::{self, qualified, quote_literal};

/// How often a held snapshot says it is still there.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// The longest a snapshot is held, whatever the caller does: an old
/// snapshot holds back vacuum on the source.
pub(super) const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// How long the snapshot session waits for its ACCESS SHARE locks (a
/// customer's ALTER TABLE in progress) before giving up.
pub(super) const LOCK_TIMEOUT: &str = "30s";

/// Snapshot names look like `00000003-0000001B-1`.
pub(super) fn check_snapshot_name(name: &str) -> Result<(), SourceError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(SourceError::BadRequest(format!(
            "snapshot name {name:?} is not one PostgreSQL exports"
        )))
    }
}

pub(super) async fn connect(
    server: &PostgresqlServer,
    database: &str,
) -> Result<Client, SourceError> {
    session::connect(server, database)
        .await
        .map_err(|source| SourceError::Connect {
            server: server.name.clone(),
            database: database.to_owned(),
            source,
        })
}

/// A session in a READ ONLY repeatable-read transaction that sees
/// `snapshot` (or a fresh snapshot when it is empty).
pub(super) async fn open_in_snapshot(
    server: &PostgresqlServer,
    database: &str,
    snapshot: &str,
) -> Result<Client, SourceError> {
    let client = connect(server, database).await?;
    let mut begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;".to_owned();
    if !snapshot.is_empty() {
        check_snapshot_name(snapshot)?;
        begin.push_str(&format!(
            " SET TRANSACTION SNAPSHOT {};",
            quote_literal(snapshot)
        ));
    }
    client.batch_execute(&begin).await.map_err(|source| {
        if snapshot.is_empty() {
            SourceError::Query {
                server: server.name.clone(),
                database: database.to_owned(),
                what: "opening a read-only transaction".to_owned(),
                source,
            }
        } else {
            SourceError::SnapshotGone {
                server: server.name.clone(),
                database: database.to_owned(),
                snapshot: snapshot.to_owned(),
                source: source.into(),
            }
        }
    })?;
    Ok(client)
}

/// Opens the transaction whose snapshot the copy shares, exports it (or,
/// given `slot`, imports the snapshot the slot exported, so the copy reads
/// the database at the slot's consistent point), and takes ACCESS SHARE
/// locks on every table to copy (so no DDL changes them under the copy, as
/// pg_dump does).
pub(super) async fn export_snapshot(
    server: &PostgresqlServer,
    database: &str,
    slot: Option<&ExportedSlot>,
) -> Result<(Client, SnapshotHeld), SourceError> {
    let client = connect(server, database).await?;
    let query = |what: &str| {
        let what = what.to_owned();
        move |source| SourceError::Query {
            server: server.name.clone(),
            database: database.to_owned(),
            what,
            source,
        }
    };
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(query("opening the snapshot's transaction"))?;
    let snapshot_name: String = match slot {
        None => client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(query("exporting the snapshot"))?,
        Some(slot) => {
            check_snapshot_name(&slot.snapshot_name)?;
            client
                .batch_execute(&format!(
                    "SET TRANSACTION SNAPSHOT {}",
                    quote_literal(&slot.snapshot_name)
                ))
                .await
                .map_err(query("importing the replication slot's snapshot"))?;
            slot.snapshot_name.clone()
        }
    };
    let server_version_num = session::server_version_num(&client)
        .await
        .map_err(query("reading the server version"))?;
    let tables = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {USER_SCHEMA}"
            ),
            &[],
        )
        .await
        .map_err(query("listing the tables to lock"))?;
    let names = tables
        .iter()
        .map(|row| Ok(qualified(row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(query("listing the tables to lock"))?;
    if !names.is_empty() {
        client
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; \
                 LOCK TABLE {} IN ACCESS SHARE MODE; \
                 SET LOCAL lock_timeout = 0",
                names.join(", ")
            ))
            .await
            .map_err(query("locking the tables to copy in ACCESS SHARE mode"))?;
    }
    Ok((
        client,
        SnapshotHeld {
            snapshot_name,
            server_version_num,
            slot_name: slot.map(|s| s.slot_name.clone()).unwrap_or_default(),
            consistent_lsn: slot.map(|s| s.consistent_lsn.clone()).unwrap_or_default(),
        },
    ))
}

/// Keeps the snapshot's transaction open until the caller leaves, the
/// session dies, the grant ends (revoked or expired: `permit`, which also
/// counts the session against the grant's bound), or [`MAX_HOLD`] passes;
/// then ends it. `slot`, when the snapshot came from a replication slot,
/// is the walsender session that exported it, kept as long (the slot
/// itself stays).
pub(super) async fn keep_snapshot(
    client: Client,
    mut slot: Option<ExportedSlot>,
    sender: mpsc::Sender<Result<SnapshotStatus, Status>>,
    mut permit: SessionPermit,
    transfer_id: String,
    database: String,
) {
    let started = Instant::now();
    let mut last_sign = Instant::now();
    // The session is watched every second; the target hears every
    // KEEP_ALIVE.
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let reason = loop {
        tokio::select! {
            () = sender.closed() => break "the target closed the stream",
            why = permit.ended() => {
                let _ = sender
                    .send(Err(Status::permission_denied(format!(
                        "transfer {transfer_id}: {why}; the snapshot is released"
                    ))))
                    .await;
                break why;
            }
            _ = ticks.tick() => {}
        }
        if client.is_closed() || slot.as_mut().is_some_and(|slot| !slot.is_alive()) {
            let _ = sender
                .send(Err(Status::unavailable(
                    "the source server closed the session holding the snapshot",
                )))
                .await;
            break "the source server closed the session";
        }
        if started.elapsed() > MAX_HOLD {
            let _ = sender
                .send(Err(Status::deadline_exceeded(format!(
                    "a snapshot is held for at most {} hours",
                    MAX_HOLD.as_secs() / 3600
                ))))
                .await;
            break "held for too long";
        }
        if last_sign.elapsed() < KEEP_ALIVE {
            continue;
        }
        last_sign = Instant::now();
        let alive = SnapshotStatus {
            status: Some(snapshot_status::Status::KeepAlive(SnapshotKeepAlive {
                held_seconds: started.elapsed().as_secs(),
            })),
        };
        if sender.send(Ok(alive)).await.is_err() {
            break "the target closed the stream";
        }
    };
    let _ = client.batch_execute("ROLLBACK").await;
    drop(slot);
    tracing::info!(
        message = "released a snapshot",
        transfer = %transfer_id,
        %database,
        held_seconds = started.elapsed().as_secs(),
        reason
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exported_snapshot_names_are_accepted() {
        assert!(check_snapshot_name("00000003-0000001B-1").is_ok());
        assert!(check_snapshot_name("").is_err());
        assert!(check_snapshot_name("x'; DROP TABLE t; --").is_err());
    }
}
