//! The controller's PostgreSQL database: the connection pool, versioned
//! schema migrations applied at start-up, and change notifications.
//!
//! Migrations are SQL files embedded at build time (`migrations/NNNN_*.sql`),
//! applied in order inside one transaction each, under an advisory lock so
//! that several controllers starting together apply each once.
//!
//! Changes are announced with `NOTIFY navette_hosts` / `navette_tests` in
//! the transaction that makes them; [`listen_changes`] turns those into a
//! local broadcast, so every controller sharing the database sees every
//! change, whichever controller made it.

use std::str::FromStr;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

/// Errors opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database url is invalid: {0}")]
    Url(tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("database did not accept connections within {waited:?}: {last}")]
    Unavailable { waited: Duration, last: String },
    #[error("schema migration {version} ({name}): {source}")]
    Migration {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("database: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Checkout(#[from] deadpool_postgres::PoolError),
}

/// The schema, in order. Never edit a migration that has shipped: add one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "foundation",
        include_str!("../migrations/0001_foundation.sql"),
    ),
    (2, "tests", include_str!("../migrations/0002_tests.sql")),
    (4, "copies", include_str!("../migrations/0004_copies.sql")),
];

/// Arbitrary, fixed: the advisory lock that serialises schema migrations.
const MIGRATION_LOCK: i64 = 0x6e61_7665_7474_6501;

/// Opens the pool, waiting up to `connect_timeout` for the server.
pub async fn connect(
    url: &str,
    pool_size: usize,
    connect_timeout: Duration,
) -> Result<Pool, DbError> {
    let pg_config = tokio_postgres::Config::from_str(url).map_err(DbError::Url)?;
    let manager = Manager::from_config(
        pg_config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager).max_size(pool_size).build()?;
    let started = Instant::now();
    loop {
        match pool.get().await {
            Ok(_) => return Ok(pool),
            Err(error) if started.elapsed() < connect_timeout => {
                tracing::warn!(message = "waiting for the database", %error);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => {
                return Err(DbError::Unavailable {
                    waited: started.elapsed(),
                    last: error.to_string(),
                });
            }
        }
    }
}

/// Applies the migrations this database has not seen yet.
pub async fn migrate(pool: &Pool) -> Result<Vec<i32>, DbError> {
    let mut client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .or_else(ignore_concurrent_create)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_pending(&mut client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

/// Two controllers creating `schema_migrations` at once: one loses with a
/// unique violation on the catalog, and the table exists all the same.
fn ignore_concurrent_create(error: tokio_postgres::Error) -> Result<(), tokio_postgres::Error> {
    match error.code() {
        Some(code) if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => Ok(()),
        _ => Err(error),
    }
}

async fn apply_pending(client: &mut deadpool_postgres::Client) -> Result<Vec<i32>, DbError> {
    let applied: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut done = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let failed = |source| DbError::Migration {
            version,
            name,
            source,
        };
        let transaction = client.transaction().await?;
        transaction.batch_execute(sql).await.map_err(failed)?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&version, &name],
            )
            .await
            .map_err(failed)?;
        transaction.commit().await.map_err(failed)?;
        tracing::info!(message = "applied schema migration", version, name);
        done.push(version);
    }
    Ok(done)
}

/// The notification channels the controller listens to.
pub const CHANNELS: [&str; 2] = ["navette_hosts", "navette_tests"];

/// A committed change, from any controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `NOTIFY <channel>, <payload>`.
    Notified { channel: String, payload: String },
    /// The listener reconnected: anything may have changed meanwhile.
    Resynchronise,
}

/// Keeps a dedicated connection listening on [`CHANNELS`] and broadcasts
/// what arrives. Reconnects on failure; runs until the process ends.
pub fn listen_changes(url: String, changes: broadcast::Sender<Change>) {
    tokio::spawn(async move {
        loop {
            if let Err(error) = listen_once(&url, &changes).await {
                tracing::warn!(message = "host change listener lost its connection; reconnecting", %error);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn listen_once(url: &str, changes: &broadcast::Sender<Change>) -> Result<(), DbError> {
    let config = tokio_postgres::Config::from_str(url).map_err(DbError::Url)?;
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    let _ = sender.send(Change::Notified {
                        channel: note.channel().to_owned(),
                        payload: note.payload().to_owned(),
                    });
                }
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });
    for channel in CHANNELS {
        client.batch_execute(&format!("LISTEN {channel}")).await?;
    }
    // Whatever changed while we were not listening.
    let _ = changes.send(Change::Resynchronise);
    while let Some(change) = receiver.recv().await {
        let _ = changes.send(change);
    }
    match driver.await {
        Ok(result) => result.map_err(DbError::from),
        Err(_) => Ok(()),
    }
}
