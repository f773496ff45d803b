//! The source side of a database's replication, run by the source agent
//! as the server's superuser: readiness, the publication, replica
//! identities, the replication role, lag, drain, sequence values, and the
//! teardown of what it made (see the parent module).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{Names, ReplicationError, connect, slot};
use crate::config::PostgresqlServer;
use crate::transfer::postgres::describe::USER_SCHEMA;
use crate::transfer::postgres::session::{qualified, quote_ident, quote_literal};

/// What [`prepare`] made ready.
#[derive(Clone, Debug)]
pub struct PreparedSource {
    pub names: Names,
    /// Tables given `REPLICA IDENTITY FULL` by this call (`schema.table`).
    pub full_identity: Vec<String>,
}

/// Whether `server` can be replicated from: `Ok(())`, or why not.
pub async fn readiness(client: &Client, server: &str) -> Result<(), ReplicationError> {
    let wal_level: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(ReplicationError::query(server, "reading wal_level"))?;
    if wal_level != "logical" {
        return Err(ReplicationError::NotReady {
            server: server.to_owned(),
            reason: format!("wal_level is {wal_level}, not logical"),
        });
    }
    Ok(())
}

/// Makes `database` ready to replicate for `migration_id`, before its
/// copy: checks, replica identities, the publication of its tables.
pub async fn prepare(
    server: &PostgresqlServer,
    migration_id: &str,
    database: &str,
) -> Result<PreparedSource, ReplicationError> {
    let names = Names::new(migration_id, database);
    let client = connect(server, database).await?;
    let name = server.name.as_str();
    readiness(&client, name).await?;
    let objects: i64 = client
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(ReplicationError::query(name, "counting large objects"))?;
    if objects > 0 {
        return Err(ReplicationError::Refused {
            server: name.to_owned(),
            database: database.to_owned(),
            reason: format!(
                "the database holds {objects} large objects, which logical replication does not carry; \
                 the customer stores them in bytea columns or removes them, then the migration is retried"
            ),
        });
    }
    let full_identity = give_full_identity(&client, name).await?;
    let tables = tables(&client, name).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&names.publication],
        )
        .await
        .map_err(ReplicationError::query(name, "looking for the publication"))?
        .is_some();
    if !exists {
        let list = if tables.is_empty() {
            String::new()
        } else {
            format!(" FOR TABLE {}", tables.join(", "))
        };
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {}{list}",
                quote_ident(&names.publication)
            ))
            .await
            .map_err(ReplicationError::query(name, "creating the publication"))?;
    }
    // Before the copy's slot: every change after the copy's snapshot is
    // in it (and a few before, verified for nothing).
    crate::verify::postgres_rows::create_slot(&client, name, &names.verify_slot).await?;
    tracing::info!(
        message = "replication prepared on the source",
        migration = %migration_id,
        server = %name,
        %database,
        publication = %names.publication,
        tables = tables.len(),
        full_identity = full_identity.len()
    );
    Ok(PreparedSource {
        names,
        full_identity,
    })
}

/// Creates the replication role of `migration_id`'s replication of
/// `database` (or gives it a new password if it exists), with CONNECT on
/// the database; returns the password, for the subscription. Called after
/// the copy (the role would otherwise appear in the database's privileges
/// the copy reads).
pub async fn admit_subscriber(
    server: &PostgresqlServer,
    migration_id: &str,
    database: &str,
) -> Result<String, ReplicationError> {
    let names = Names::new(migration_id, database);
    let client = connect(server, database).await?;
    let name = server.name.as_str();
    let password = random_password().map_err(|()| ReplicationError::Refused {
        server: name.to_owned(),
        database: database.to_owned(),
        reason: "this host gives no random numbers for the replication role's password".to_owned(),
    })?;
    ensure_role(&client, name, database, &names.role, &password).await?;
    Ok(password)
}

/// The account's tables the copy copies (plain and partitions), quoted.
async fn tables(client: &Client, server: &str) -> Result<Vec<String>, ReplicationError> {
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND {USER_SCHEMA} \
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(ReplicationError::query(
            server,
            "listing the tables to publish",
        ))?;
    rows.iter()
        .map(|row| Ok(qualified(row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(ReplicationError::query(
            server,
            "listing the tables to publish",
        ))
}

/// Gives `REPLICA IDENTITY FULL` to every table whose UPDATEs and DELETEs
/// could not be published otherwise (no primary key and identity
/// `DEFAULT`, or identity `NOTHING`); returns them.
async fn give_full_identity(
    client: &Client,
    server: &str,
) -> Result<Vec<String>, ReplicationError> {
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND {USER_SCHEMA} \
                 AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                      (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(ReplicationError::query(
            server,
            "listing tables without a key",
        ))?;
    let mut given = Vec::new();
    for row in rows {
        let (schema, table): (String, String) = (
            row.try_get(0)
                .map_err(ReplicationError::query(server, "reading a table"))?,
            row.try_get(1)
                .map_err(ReplicationError::query(server, "reading a table"))?,
        );
        let what = format!("giving {schema}.{table} REPLICA IDENTITY FULL");
        client
            .batch_execute(&format!(
                "SET lock_timeout = '30s'; ALTER TABLE {} REPLICA IDENTITY FULL; SET lock_timeout = 0",
                qualified(&schema, &table)
            ))
            .await
            .map_err(ReplicationError::query(server, &what))?;
        given.push(format!("{schema}.{table}"));
    }
    Ok(given)
}

/// Creates the replication role, or gives it `password` if it exists.
async fn ensure_role(
    client: &Client,
    server: &str,
    database: &str,
    role: &str,
    password: &str,
) -> Result<(), ReplicationError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(ReplicationError::query(
            server,
            "looking for the replication role",
        ))?
        .is_some();
    let until: String = client
        .query_one("SELECT (now() + interval '7 days')::text", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(ReplicationError::query(server, "reading the time"))?;
    // Only the SCRAM verifier is sent, and the statement is not logged.
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let verb = if exists { "ALTER" } else { "CREATE" };
    let sql = format!(
        "BEGIN; SET LOCAL log_statement = 'none'; SET LOCAL log_min_duration_statement = -1; \
         {verb} ROLE {quoted} LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS \
         CONNECTION LIMIT 4 VALID UNTIL {until} PASSWORD {verifier}; \
         GRANT CONNECT ON DATABASE {database} TO {quoted}; COMMIT",
        quoted = quote_ident(role),
        until = quote_literal(&until),
        verifier = quote_literal(&verifier),
        database = quote_ident(database),
    );
    let result = client.batch_execute(&sql).await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map_err(ReplicationError::query(
        server,
        "creating the replication role",
    ))
}

/// A random password: 32 hexadecimal digits (128 bits).
fn random_password() -> Result<String, ()> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| ())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The replication lag of a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lag {
    /// Bytes of WAL between the source's position and what the target
    /// confirmed having applied.
    pub bytes: u64,
    /// `pg_current_wal_lsn()`.
    pub source_lsn: String,
    /// The slot's `confirmed_flush_lsn`.
    pub confirmed_lsn: String,
}

/// The lag of `migration_id`'s replication of `database`.
pub async fn lag(
    server: &PostgresqlServer,
    migration_id: &str,
    database: &str,
) -> Result<Lag, ReplicationError> {
    let names = Names::new(migration_id, database);
    let client = connect(server, database).await?;
    slot_lag(&client, &server.name, &names.slot).await
}

async fn slot_lag(client: &Client, server: &str, slot: &str) -> Result<Lag, ReplicationError> {
    let row = client
        .query_opt(
            "SELECT greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint, \
                    pg_current_wal_lsn()::text, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(ReplicationError::query(server, "reading the slot's position"))?
        .ok_or_else(|| ReplicationError::NoSlot {
            server: server.to_owned(),
            slot: slot.to_owned(),
        })?;
    let read = ReplicationError::query(server, "reading the slot's position");
    let bytes: Option<i64> = row.try_get(0).map_err(read)?;
    let read = ReplicationError::query(server, "reading the slot's position");
    let source_lsn: String = row.try_get(1).map_err(read)?;
    let read = ReplicationError::query(server, "reading the slot's position");
    let confirmed_lsn: Option<String> = row.try_get(2).map_err(read)?;
    Ok(Lag {
        bytes: bytes.unwrap_or(0).max(0) as u64,
        source_lsn,
        confirmed_lsn: confirmed_lsn.unwrap_or_default(),
    })
}

/// Waits until the target confirmed having applied everything up to
/// `lsn` (empty: the source's current position), for at most `deadline`.
/// A WAL message is written and flushed after that position (and again
/// every second), so the slot moves past it even if the source is idle.
/// Returns the position waited for.
pub async fn drain(
    server: &PostgresqlServer,
    migration_id: &str,
    database: &str,
    lsn: &str,
    deadline: Duration,
) -> Result<String, ReplicationError> {
    let names = Names::new(migration_id, database);
    let client = connect(server, database).await?;
    let name = server.name.as_str();
    let wanted: String = if lsn.is_empty() {
        client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(ReplicationError::query(
                name,
                "reading the current position",
            ))?
    } else {
        check_lsn(lsn)?;
        lsn.to_owned()
    };
    let started = Instant::now();
    // The message is transactional and committed with a flush: the WAL
    // sender decodes only WAL flushed, and with writers fenced nothing
    // else would flush it before the source's WAL writer does (every
    // `wal_writer_delay`, 200 ms by default). The subscription skips it
    // (no `messages` option), as an empty transaction.
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .map_err(ReplicationError::query(name, "setting synchronous_commit"))?;
    let mut last_message: Option<Instant> = None;
    loop {
        if last_message.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            client
                .execute(
                    "SELECT pg_logical_emit_message(true, 'navette', 'drain')",
                    &[],
                )
                .await
                .map_err(ReplicationError::query(name, "writing a WAL message"))?;
            last_message = Some(Instant::now());
        }
        let reached: Option<bool> = client
            .query_opt(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&names.slot, &wanted],
            )
            .await
            .map_err(ReplicationError::query(name, "reading the slot's position"))?
            .ok_or_else(|| ReplicationError::NoSlot {
                server: name.to_owned(),
                slot: names.slot.clone(),
            })?
            .try_get(0)
            .map_err(ReplicationError::query(name, "reading the slot's position"))?;
        if reached == Some(true) {
            return Ok(wanted);
        }
        if started.elapsed() >= deadline {
            let lag = slot_lag(&client, name, &names.slot).await?;
            return Err(ReplicationError::DrainTimeout {
                server: name.to_owned(),
                wanted,
                applied: lag.confirmed_lsn,
                seconds: deadline.as_secs(),
            });
        }
        // A short poll: this wait is inside the freeze, and the query is
        // one row of a catalog view.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `X/Y` in hexadecimal.
pub(crate) fn check_lsn(lsn: &str) -> Result<(), ReplicationError> {
    let valid = lsn.len() <= 17
        && lsn.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
        });
    if valid {
        Ok(())
    } else {
        Err(ReplicationError::BadRequest(format!(
            "{lsn:?} is not a WAL position (like 0/1A2B3C4)"
        )))
    }
}

/// A sequence's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceValue {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// The current values of `database`'s sequences (to be read inside the
/// freeze, once writes are fenced).
pub async fn read_sequences(
    server: &PostgresqlServer,
    database: &str,
) -> Result<Vec<SequenceValue>, ReplicationError> {
    let client = connect(server, database).await?;
    let name = server.name.as_str();
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'S' AND {USER_SCHEMA} ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(ReplicationError::query(name, "listing sequences"))?;
    let mut values = Vec::with_capacity(rows.len());
    for row in rows {
        let read = ReplicationError::query(name, "reading a sequence");
        let schema: String = row.try_get(0).map_err(read)?;
        let read = ReplicationError::query(name, "reading a sequence");
        let sequence: String = row.try_get(1).map_err(read)?;
        let what = format!("reading sequence {schema}.{sequence}");
        let state = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}",
                    qualified(&schema, &sequence)
                ),
                &[],
            )
            .await
            .map_err(ReplicationError::query(name, &what))?;
        let read = ReplicationError::query(name, &what);
        let last_value: i64 = state.try_get(0).map_err(read)?;
        let read = ReplicationError::query(name, &what);
        let is_called: bool = state.try_get(1).map_err(read)?;
        values.push(SequenceValue {
            schema,
            name: sequence,
            last_value,
            is_called,
        });
    }
    Ok(values)
}

/// Drops what [`prepare`] and the copy's slot made for `migration_id` on
/// `database`: the slot (ending its walsender), the verification's slot,
/// the publication, the role. Each only if present. The replica identities given stay (they
/// change no data, and the source's copy is soon retired).
pub async fn teardown(
    server: &PostgresqlServer,
    migration_id: &str,
    database: &str,
) -> Result<(), ReplicationError> {
    let names = Names::new(migration_id, database);
    let client = connect(server, database).await?;
    let name = server.name.as_str();
    slot::drop_slot(&client, name, &names.slot).await?;
    slot::drop_slot(&client, name, &names.verify_slot).await?;
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(&names.publication)
        ))
        .await
        .map_err(ReplicationError::query(name, "dropping the publication"))?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&names.role])
        .await
        .map_err(ReplicationError::query(
            name,
            "looking for the replication role",
        ))?
        .is_some();
    if exists {
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&names.role],
            )
            .await
            .map_err(ReplicationError::query(
                name,
                "ending the replication role's sessions",
            ))?;
        client
            .batch_execute(&format!(
                "REVOKE ALL ON DATABASE {db} FROM {role}; DROP ROLE IF EXISTS {role}",
                db = quote_ident(database),
                role = quote_ident(&names.role)
            ))
            .await
            .map_err(ReplicationError::query(
                name,
                "dropping the replication role",
            ))?;
    }
    tracing::info!(
        message = "replication torn down on the source",
        migration = %migration_id,
        server = %name,
        %database
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_checked() {
        assert!(check_lsn("0/1A2B3C4").is_ok());
        assert!(check_lsn("0/1A2B3C4'; DROP").is_err());
        assert!(check_lsn("").is_err());
    }
}
