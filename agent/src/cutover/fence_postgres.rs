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

/// The switch of `database`: its connection limit before (to record), set
/// to 0 (superusers are exempt), then every non-superuser client session
/// on it ended. Returns (previous limit, sessions ended). `previous`:
/// the limit recorded by an earlier attempt, kept as it is.
pub async fn switch(
    server: &PostgresqlServer,
    database: &str,
    previous: Option<i32>,
) -> Result<(i32, u32), CutoverError> {
    let name = server.name.as_str();
    let client = crate::transfer::postgres::session::connect(server, database)
        .await
        .map_err(CutoverError::postgres(name, database, "connecting"))?;
    let limit = match previous {
        Some(limit) => limit,
        None => connection_limit(&client, name, database).await?,
    };
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} CONNECTION LIMIT 0",
            quote_ident(database)
        ))
        .await
        .map_err(CutoverError::postgres(
            name,
            database,
            "refusing new sessions",
        ))?;
    let mut ended = 0;
    // Twice: a session that passed the limit check while it changed.
    for _ in 0..2 {
        let count: i64 = client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid, 2000)) \
                 FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid \
                 WHERE a.datname = $1 AND a.backend_type = 'client backend' \
                   AND NOT r.rolsuper AND a.pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(CutoverError::postgres(
                name,
                database,
                "ending the account's sessions",
            ))?;
        ended += u32::try_from(count).unwrap_or(0);
    }
    Ok((limit, ended))
}

async fn connection_limit(
    client: &Client,
    server: &str,
    database: &str,
) -> Result<i32, CutoverError> {
    client
        .query_one(
            "SELECT datconnlimit FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(CutoverError::postgres(
            server,
            database,
            "reading the connection limit",
        ))
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
