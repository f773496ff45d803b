//! The target side of a database's replication, run by the target agent
//! as the server's superuser: the subscription (applying as each table's
//! owner), sequence values, and the subscription's teardown (see the
//! parent module).

use tokio_postgres::Client;

use super::source::SequenceValue;
use super::{Names, ReplicationError, connect};
use crate::config::PostgresqlServer;
use crate::transfer::postgres::session::{self, conninfo_value, quote_ident, quote_literal};

/// Where the subscription connects to.
#[derive(Clone, Debug)]
pub struct SourceEndpoint {
    /// Address (or name) and port of the source server, as the target
    /// server reaches it.
    pub host: String,
    pub port: u16,
    /// The source database.
    pub database: String,
    /// The replication role's password ([`super::source::prepare`]).
    pub password: String,
}

/// Creates (or re-points and enables) `migration_id`'s subscription on
/// `target_database`, streaming from the slot the copy started from.
pub async fn subscribe(
    server: &PostgresqlServer,
    migration_id: &str,
    target_database: &str,
    source: &SourceEndpoint,
) -> Result<(), ReplicationError> {
    let names = Names::new(migration_id, &source.database);
    let client = connect(server, target_database).await?;
    let name = server.name.as_str();
    let version = session::server_version_num(&client)
        .await
        .map_err(ReplicationError::query(name, "reading the server version"))?;
    if session::major(version) < 16 {
        // Before 16 the apply worker runs as the subscription's owner, a
        // superuser here: customer triggers would run with its power.
        return Err(ReplicationError::Refused {
            server: name.to_owned(),
            database: target_database.to_owned(),
            reason: "the target server is older than PostgreSQL 16, whose subscriptions apply as the table owner; migrate to a newer target".to_owned(),
        });
    }
    let conninfo = format!(
        "host={} port={} dbname={} user={} password={} application_name={} connect_timeout=10",
        conninfo_value(&source.host),
        source.port,
        conninfo_value(&source.database),
        conninfo_value(&names.role),
        conninfo_value(&source.password),
        conninfo_value(&names.subscription),
    );
    let quoted = quote_ident(&names.subscription);
    let sql = if subscription_exists(&client, name, &names.subscription).await? {
        format!(
            "SET log_statement = 'none'; ALTER SUBSCRIPTION {quoted} CONNECTION {}; \
             ALTER SUBSCRIPTION {quoted} ENABLE; RESET log_statement",
            quote_literal(&conninfo)
        )
    } else {
        format!(
            "SET log_statement = 'none'; CREATE SUBSCRIPTION {quoted} CONNECTION {} PUBLICATION {} \
             WITH (create_slot = false, copy_data = false, slot_name = {}, enabled = true, \
             run_as_owner = false); RESET log_statement",
            quote_literal(&conninfo),
            quote_ident(&names.publication),
            quote_literal(&names.slot),
        )
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(ReplicationError::query(name, "creating the subscription"))?;
    tracing::info!(
        message = "subscribed to the source",
        migration = %migration_id,
        server = %name,
        database = %target_database,
        subscription = %names.subscription
    );
    Ok(())
}

/// Sets `migration_id`'s subscription on `target_database` to flush each
/// transaction it applies before it confirms it to the source
/// (`synchronous_commit = on`), or not (`off`, a subscription's default).
/// Off, the source's slot moves only once the target's WAL writer flushed
/// (every `wal_writer_delay`, 200 ms by default), which is what a drain
/// inside the freeze would wait for; on, every applied transaction waits
/// for its own flush, which a busy source could outrun while converging.
/// The apply worker takes the change without restarting.
pub async fn set_apply_flush(
    server: &PostgresqlServer,
    migration_id: &str,
    target_database: &str,
    source_database: &str,
    flush_each_transaction: bool,
) -> Result<(), ReplicationError> {
    let names = Names::new(migration_id, source_database);
    let client = connect(server, target_database).await?;
    let name = server.name.as_str();
    if !subscription_exists(&client, name, &names.subscription).await? {
        return Err(ReplicationError::Refused {
            server: name.to_owned(),
            database: target_database.to_owned(),
            reason: format!(
                "no subscription {} here: subscribe first (SubscribePostgres)",
                names.subscription
            ),
        });
    }
    let value = if flush_each_transaction { "on" } else { "off" };
    client
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {} SET (synchronous_commit = '{value}')",
            quote_ident(&names.subscription)
        ))
        .await
        .map_err(ReplicationError::query(
            name,
            "setting the subscription's synchronous_commit",
        ))?;
    tracing::info!(
        message = "subscription's apply flush set",
        migration = %migration_id,
        server = %name,
        database = %target_database,
        synchronous_commit = value
    );
    Ok(())
}

async fn subscription_exists(
    client: &Client,
    server: &str,
    subscription: &str,
) -> Result<bool, ReplicationError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 \
             AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&subscription],
        )
        .await
        .map_err(ReplicationError::query(
            server,
            "looking for the subscription",
        ))?
        .is_some())
}

/// Sets the target's sequences to the source's values (those of
/// [`super::source::read_sequences`]). A sequence missing on the target is
/// an error: the copy should have made it.
pub async fn write_sequences(
    server: &PostgresqlServer,
    target_database: &str,
    values: &[SequenceValue],
) -> Result<(), ReplicationError> {
    let client = connect(server, target_database).await?;
    let name = server.name.as_str();
    for value in values {
        let what = format!("setting sequence {}.{}", value.schema, value.name);
        client
            .execute(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[
                    &session::qualified(&value.schema, &value.name),
                    &value.last_value,
                    &value.is_called,
                ],
            )
            .await
            .map_err(ReplicationError::query(name, &what))?;
    }
    Ok(())
}

/// Drops `migration_id`'s subscription of source database
/// `source_database` from `target_database`, if present, without touching
/// its slot (detached first: the source's teardown drops it, and a slot
/// already gone does not block this). The copied data stays.
pub async fn teardown(
    server: &PostgresqlServer,
    migration_id: &str,
    target_database: &str,
    source_database: &str,
) -> Result<(), ReplicationError> {
    let names = Names::new(migration_id, source_database);
    let client = connect(server, target_database).await?;
    let name = server.name.as_str();
    if subscription_exists(&client, name, &names.subscription).await? {
        let quoted = quote_ident(&names.subscription);
        for (sql, what) in [
            (
                format!("ALTER SUBSCRIPTION {quoted} DISABLE"),
                "disabling the subscription",
            ),
            (
                format!("ALTER SUBSCRIPTION {quoted} SET (slot_name = NONE)"),
                "detaching the subscription from its slot",
            ),
            (
                format!("DROP SUBSCRIPTION IF EXISTS {quoted}"),
                "dropping the subscription",
            ),
        ] {
            client
                .batch_execute(&sql)
                .await
                .map_err(ReplicationError::query(name, what))?;
        }
    }
    tracing::info!(
        message = "replication torn down on the target",
        migration = %migration_id,
        server = %name,
        database = %target_database
    );
    Ok(())
}
