//! The target's hold on the source's snapshot: the HoldSnapshot stream,
//! read in the background so that a lost snapshot is noticed.

use navette_proto::v1::postgres_source_client::PostgresSourceClient;
use navette_proto::v1::{DatabaseCopy, HoldSnapshotRequest, SnapshotMethod, snapshot_status};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::source_error;
use crate::transfer::postgres::error::PostgresCopyError;

/// The source's snapshot, held while this lives (dropping it closes the
/// stream, and the source ends the transaction).
pub(super) struct HeldSnapshot {
    pub(super) name: String,
    pub(super) server_version_num: u32,
    /// From a replication slot: its name and consistent point.
    pub(super) slot_name: String,
    pub(super) consistent_lsn: String,
    /// Reads keep-alives; ends (with why) when the stream does.
    pub(super) watcher: JoinHandle<String>,
}

impl HeldSnapshot {
    pub(super) async fn open(
        source: &PostgresSourceClient<Channel>,
        transfer_id: &str,
        copy: &DatabaseCopy,
        slot: Option<&String>,
    ) -> Result<HeldSnapshot, PostgresCopyError> {
        let what = "opening the snapshot";
        let mut stream = source
            .clone()
            .hold_snapshot(HoldSnapshotRequest {
                transfer_id: transfer_id.to_owned(),
                server: copy.source_server.clone(),
                database: copy.source_database.clone(),
                method: match slot {
                    Some(_) => SnapshotMethod::ReplicationSlot.into(),
                    None => SnapshotMethod::Transaction.into(),
                },
                slot_name: slot.cloned().unwrap_or_default(),
            })
            .await
            .map_err(|status| source_error(copy, what, &status))?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|status| source_error(copy, what, &status))?;
        let Some(snapshot_status::Status::Held(held)) = first.and_then(|m| m.status) else {
            return Err(PostgresCopyError::SnapshotLost {
                database: copy.target_database.clone(),
                reason: "the source did not name a snapshot".to_owned(),
            });
        };
        let watcher = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return "the source ended the stream".to_owned(),
                    Err(status) => return crate::describe_status(&status),
                }
            }
        });
        Ok(HeldSnapshot {
            name: held.snapshot_name,
            server_version_num: held.server_version_num,
            slot_name: held.slot_name,
            consistent_lsn: held.consistent_lsn,
            watcher,
        })
    }

    /// An error if the source stopped holding the snapshot.
    pub(super) async fn check(&mut self, database: &str) -> Result<(), PostgresCopyError> {
        if !self.watcher.is_finished() {
            return Ok(());
        }
        let reason = (&mut self.watcher)
            .await
            .unwrap_or_else(|error| format!("the snapshot's watcher failed: {error}"));
        Err(PostgresCopyError::SnapshotLost {
            database: database.to_owned(),
            reason,
        })
    }
}

impl Drop for HeldSnapshot {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}
