//! The PostgreSQL side of the fence and the switch (see the parent module
//! for why these locks and settings): one session of the agent per
//! database holding `LOCK TABLE … IN EXCLUSIVE MODE`; the position after
//! it; the switch (`CONNECTION LIMIT 0`, the account's sessions ended) and
//! its undo. Run as the server's configured superuser.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::CutoverError;
use crate::config::PostgresqlServer;
use crate::transfer::postgres::describe::USER_SCHEMA;
use crate::transfer::postgres::session::quote_ident;

/// How long a fence session waits to learn it is in a deadlock: short, so
/// that the fence, not the customer's transaction, is the one PostgreSQL
/// aborts (the process whose `deadlock_timeout` expires first runs the
/// detector and is the one cancelled).
const DEADLOCK_TIMEOUT_MS: u64 = 20;

/// One database's fence: the agent's session in its open transaction.
pub struct PgFence {
    pub server: String,
    pub database: String,
    client: Client,
    /// The session's backend, for the logs.
    pub pid: i32,
}

impl std::fmt::Debug for PgFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgFence")
            .field("server", &self.server)
            .field("database", &self.database)
            .field("pid", &self.pid)
            .finish()
    }
}

/// The database's tables (partitioned parents lock their partitions),
/// quoted.
async fn tables(
    client: &Client,
    server: &str,
    database: &str,
) -> Result<Vec<String>, CutoverError> {
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {USER_SCHEMA} \
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(CutoverError::postgres(
            server,
            database,
            "listing the tables",
        ))?;
    let mut names = Vec::with_capacity(rows.len());
    for row in rows {
        let schema: String = row.try_get(0).map_err(CutoverError::postgres(
            server,
            database,
            "listing the tables",
        ))?;
        let table: String = row.try_get(1).map_err(CutoverError::postgres(
            server,
            database,
            "listing the tables",
        ))?;
        names.push(format!("{}.{}", quote_ident(&schema), quote_ident(&table)));
    }
    Ok(names)
}

/// Fences `database`: writers to any of its tables wait, readers go on.
/// Gives up (everything released) if the transactions already writing do
/// not end within `acquire`. The server itself ends the session, and so
/// the fence, `deadline` after it was taken.
pub async fn fence(
    server: &PostgresqlServer,
    database: &str,
    migration_id: &str,
    deadline: Duration,
    acquire: Duration,
) -> Result<PgFence, CutoverError> {
    let name = server.name.as_str();
    let config = server.connection_config(
        database,
        &format!("navette-agent fence {migration_id}"),
        Duration::from_secs(10),
    );
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(CutoverError::postgres(name, database, "connecting"))?;
    tokio::spawn(async move {
        let _ended = connection.await;
    });
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(CutoverError::postgres(
            name,
            database,
            "reading the session",
        ))?;
    let tables = tables(&client, name, database).await?;
    let started = Instant::now();
    loop {
        let left = acquire
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let lock = match tables.is_empty() {
            true => String::new(),
            false => format!("LOCK TABLE {} IN EXCLUSIVE MODE;", tables.join(", ")),
        };
        let sql = format!(
            "SET lock_timeout = '{lock_ms}ms'; SET deadlock_timeout = '{DEADLOCK_TIMEOUT_MS}ms'; \
             SET idle_in_transaction_session_timeout = '{deadline_ms}ms'; BEGIN; {lock}",
            lock_ms = left.as_millis().max(1),
            deadline_ms = deadline.as_millis().max(1),
        );
        match client.batch_execute(&sql).await {
            Ok(()) => break,
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                let code = error.code().cloned();
                if code == Some(SqlState::T_R_DEADLOCK_DETECTED) && started.elapsed() < acquire {
                    tracing::debug!(message = "the fence met a deadlock and steps back", server = %name, %database);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                if code == Some(SqlState::LOCK_NOT_AVAILABLE)
                    || code == Some(SqlState::T_R_DEADLOCK_DETECTED)
                {
                    return Err(CutoverError::GaveUp(format!(
                        "PostgreSQL server {name}, database {database}: transactions writing to the account's tables did not end within {acquire:?}"
                    )));
                }
                return Err(CutoverError::postgres(name, database, "taking the fence")(
                    error,
                ));
            }
        }
    }
    tracing::info!(
        message = "database fenced",
        migration = %migration_id,
        server = %name,
        %database,
        tables = tables.len(),
        took_us = started.elapsed().as_micros() as u64
    );
    Ok(PgFence {
        server: name.to_owned(),
        database: database.to_owned(),
        client,
        pid,
    })
}

/// The server's position after its databases' fences: a WAL message
/// written, then the insert position after it (see the parent module).
pub async fn position(fence: &PgFence, migration_id: &str) -> Result<String, CutoverError> {
    let what = "reading the position after the fence";
    let row = fence
        .client
        .query_one(
            "SELECT pg_logical_emit_message(false, 'navette', $1::text)::text, \
                    pg_current_wal_insert_lsn()::text",
            &[&format!("fence {migration_id}")],
        )
        .await
        .map_err(CutoverError::postgres(&fence.server, &fence.database, what))?;
    row.try_get(1)
        .map_err(CutoverError::postgres(&fence.server, &fence.database, what))
}

/// Releases the fence: the transaction rolls back, held writers go on.
pub async fn release(fence: PgFence) {
    if let Err(error) = fence.client.batch_execute("ROLLBACK").await {
        // The session is gone already (deadline, server restart): so is
        // its lock.
        tracing::debug!(message = "fence session already ended", server = %fence.server, database = %fence.database, %error);
    }
}

/// How long the switch waits for the sessions it ended to be gone before
/// it fails (and may be retried): a backend leaves at its next interrupt
/// check, so this is only reached by a server in trouble.
const TERMINATION_WAIT: Duration = Duration::from_secs(5);

/// One server's session for the switch, connected to one of the account's
/// databases (superusers pass `CONNECTION LIMIT 0`, so it stays usable).
pub async fn switch_session(
    server: &PostgresqlServer,
    database: &str,
) -> Result<Client, CutoverError> {
    crate::transfer::postgres::session::connect(server, database)
        .await
        .map_err(CutoverError::postgres(&server.name, database, "connecting"))
}

/// The connection limits of `databases` now, in their order.
pub async fn connection_limits(
    client: &Client,
    server: &str,
    databases: &[String],
) -> Result<Vec<i32>, CutoverError> {
    let what = "reading the connection limits";
    let rows = client
        .query(
            "SELECT datname, datconnlimit FROM pg_database WHERE datname = ANY($1)",
            &[&databases],
        )
        .await
        .map_err(CutoverError::postgres(server, &databases.join(", "), what))?;
    let mut limits = Vec::with_capacity(databases.len());
    for database in databases {
        let row = rows
            .iter()
            .find(|row| {
                row.try_get::<_, String>(0)
                    .is_ok_and(|name| name == *database)
            })
            .ok_or_else(|| {
                CutoverError::Precondition(format!(
                    "PostgreSQL server {server} has no database {database:?}"
                ))
            })?;
        limits.push(
            row.try_get(1)
                .map_err(CutoverError::postgres(server, database, what))?,
        );
    }
    Ok(limits)
}

/// The switch of `databases` on one server, on its [`switch_session`]:
/// `CONNECTION LIMIT 0` for each (superusers are exempt), then every
/// non-superuser client session on them ended, and waited for until gone
/// (so no held writer outlives the fence). Twice: a session that passed
/// the limit check while it changed. Returns the sessions ended.
pub async fn switch(
    client: &Client,
    server: &str,
    databases: &[String],
) -> Result<u32, CutoverError> {
    let listed = databases.join(", ");
    let alter: String = databases
        .iter()
        .map(|database| {
            format!(
                "ALTER DATABASE {} CONNECTION LIMIT 0;",
                quote_ident(database)
            )
        })
        .collect();
    client
        .batch_execute(&alter)
        .await
        .map_err(CutoverError::postgres(
            server,
            &listed,
            "refusing new sessions",
        ))?;
    let mut ended = 0;
    for _ in 0..2 {
        // Signalled without waiting (`pg_terminate_backend`'s own wait
        // checks each backend in turn, every 100 ms); then one wait for
        // them all.
        let pids: Vec<i32> = client
            .query(
                "WITH s AS MATERIALIZED ( \
                   SELECT a.pid FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid \
                   WHERE a.datname = ANY($1) AND a.backend_type = 'client backend' \
                     AND NOT r.rolsuper AND a.pid <> pg_backend_pid()) \
                 SELECT pid FROM s WHERE pg_terminate_backend(pid)",
                &[&databases],
            )
            .await
            .and_then(|rows| rows.iter().map(|row| row.try_get(0)).collect())
            .map_err(CutoverError::postgres(
                server,
                &listed,
                "ending the account's sessions",
            ))?;
        wait_gone(client, server, &listed, &pids).await?;
        ended += pids.len() as u32;
    }
    Ok(ended)
}

/// Waits until none of `pids` is a backend any more: a backend leaves
/// `pg_stat_activity` after its transaction was aborted.
async fn wait_gone(
    client: &Client,
    server: &str,
    databases: &str,
    pids: &[i32],
) -> Result<(), CutoverError> {
    if pids.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(CutoverError::postgres(
                server,
                databases,
                "waiting for the ended sessions to go",
            ))?;
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() >= TERMINATION_WAIT {
            return Err(CutoverError::Precondition(format!(
                "PostgreSQL server {server}, databases {databases}: {left} ended session(s) still there after {TERMINATION_WAIT:?}; retry the switch"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Undoes [`switch`]: the connection limit back to `previous`.
pub async fn unswitch(
    server: &PostgresqlServer,
    database: &str,
    previous: i32,
) -> Result<(), CutoverError> {
    let name = server.name.as_str();
    let client = crate::transfer::postgres::session::connect(server, database)
        .await
        .map_err(CutoverError::postgres(name, database, "connecting"))?;
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} CONNECTION LIMIT {previous}",
            quote_ident(database)
        ))
        .await
        .map_err(CutoverError::postgres(
            name,
            database,
            "accepting sessions again",
        ))
}
