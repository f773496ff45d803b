//! Reading and writing the controller's state in PostgreSQL.
//!
//! One module per table family. Functions take a `tokio_postgres`
//! client or transaction and domain types; they never see protobuf. Any
//! change to a host is announced with `pg_notify('navette_hosts', ...)` in
//! the same transaction (see `db`), so watchers on every controller see it
//! only once it is committed.

pub mod accounts;
pub mod addresses;
pub mod hosts;
pub mod migrations;
pub mod pools;
pub mod test_runs;
pub mod tokens;
pub mod transit;
pub mod workflow_counts;

use tokio_postgres::GenericClient;

use crate::error::Result;
use crate::model::HostChange;

/// Announces a change of `host_id` to every controller's watchers, once the
/// surrounding transaction commits.
pub async fn notify_host(
    client: &impl GenericClient,
    host_id: &str,
    change: HostChange,
) -> Result<()> {
    let payload = format!("{host_id}:{}", change.as_str());
    client
        .execute("SELECT pg_notify('navette_hosts', $1)", &[&payload])
        .await?;
    Ok(())
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
