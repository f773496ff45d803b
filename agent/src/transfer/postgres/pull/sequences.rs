//! Sequence values: set on the target from the source's, then read back.

use navette_proto::v1::PostgresDatabaseDescription;
use tokio_postgres::Client;

use super::target_error;
use crate::config::PostgresqlServer;
use crate::transfer::postgres::error::PostgresCopyError;
use crate::transfer::postgres::session::qualified;

/// Sets every sequence to the source's value.
pub(super) async fn set_sequences(
    client: &Client,
    server: &PostgresqlServer,
    database: &str,
    description: &PostgresDatabaseDescription,
) -> Result<(), PostgresCopyError> {
    let statement = client
        .prepare("SELECT pg_catalog.setval($1::text::regclass, $2, $3)")
        .await
        .map_err(target_error(server, database, "preparing to set sequences"))?;
    for sequence in &description.sequences {
        let name = qualified(&sequence.schema, &sequence.name);
        client
            .query_one(
                &statement,
                &[&name, &sequence.last_value, &sequence.is_called],
            )
            .await
            .map_err(target_error(
                server,
                database,
                &format!("setting sequence {}.{}", sequence.schema, sequence.name),
            ))?;
    }
    Ok(())
}

/// Sequence values on the target against the source's; a sentence per
/// difference.
pub(super) async fn check_sequences(
    client: &Client,
    server: &PostgresqlServer,
    database: &str,
    description: &PostgresDatabaseDescription,
) -> Result<Vec<String>, PostgresCopyError> {
    let mut problems = Vec::new();
    for sequence in &description.sequences {
        let what = format!("reading sequence {}.{}", sequence.schema, sequence.name);
        let row = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}",
                    qualified(&sequence.schema, &sequence.name)
                ),
                &[],
            )
            .await
            .map_err(target_error(server, database, &what))?;
        let value: i64 = row
            .try_get(0)
            .map_err(target_error(server, database, &what))?;
        let called: bool = row
            .try_get(1)
            .map_err(target_error(server, database, &what))?;
        if (value, called) != (sequence.last_value, sequence.is_called) {
            problems.push(format!(
                "sequence {}.{}: {} (called: {}) on the source, {value} (called: {called}) on the target",
                sequence.schema, sequence.name, sequence.last_value, sequence.is_called
            ));
        }
    }
    Ok(problems)
}
