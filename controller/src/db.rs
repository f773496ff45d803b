//! The controller's PostgreSQL database: the connection pool, versioned
//! schema migrations applied at start-up, and change notifications.
//!
//! The connection honours the configuration's `sslmode` (TLS through
//! rustls, trusting only the configured CA), and bounds every wait: each
//! connection attempt, the wait for a pooled connection, and each statement
//! (`statement_timeout`, lifted only for schema migrations), so a database
//! that stops answering makes requests fail fast instead of stalling.
//!
//! Migrations are SQL files embedded at build time (`migrations/NNNN_*.sql`),
//! applied in order inside one transaction each, under an advisory lock so
//! that several controllers starting together apply each once.
//!
//! Changes are announced with `NOTIFY navette_hosts` / `navette_tests` /
//! `navette_workflows` in
//! the transaction that makes them; [`listen_changes`] (and [`listen`], for
//! the workflow engine's own channel) turns those into a local broadcast, so every controller sharing the database sees every
//! change, whichever controller made it.

use std::str::FromStr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{Database, SslMode};

/// Errors opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database url is invalid: {0}")]
    Url(tokio_postgres::Error),
    #[error("database settings: {0}")]
    Settings(String),
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
    (
        3,
        "identity",
        include_str!("../migrations/0003_identity.sql"),
    ),
    (4, "copies", include_str!("../migrations/0004_copies.sql")),
    (
        5,
        "workflows",
        include_str!("../migrations/0005_workflows.sql"),
    ),
    (
        6,
        "protocols",
        include_str!("../migrations/0006_protocols.sql"),
    ),
    (
        7,
        "test_workflows",
        include_str!("../migrations/0007_test_workflows.sql"),
    ),
    (8, "sites", include_str!("../migrations/0008_sites.sql")),
    (
        9,
        "test_sites",
        include_str!("../migrations/0009_test_sites.sql"),
    ),
    (
        10,
        "addresses",
        include_str!("../migrations/0010_addresses.sql"),
    ),
    (
        11,
        "transit",
        include_str!("../migrations/0011_transit.sql"),
    ),
    (
        14,
        "migrations",
        include_str!("../migrations/0014_migrations.sql"),
    ),
    (
        17,
        "freeze_marker",
        include_str!("../migrations/0017_freeze_marker.sql"),
    ),
];

/// Arbitrary, fixed: the advisory lock that serialises schema migrations.
const MIGRATION_LOCK: i64 = 0x6e61_7665_7474_6501;

/// How to reach the database: the connection settings and the TLS client.
/// Built once from the configuration; cheap to clone.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(settings: &Database) -> Result<Connector, DbError> {
        if settings.url.contains("sslmode") {
            return Err(DbError::Settings(
                "database.url sets sslmode; remove it and set database.sslmode instead".to_owned(),
            ));
        }
        let mut config = tokio_postgres::Config::from_str(&settings.url).map_err(DbError::Url)?;
        config.connect_timeout(Duration::from_secs(
            settings.connect_attempt_timeout_secs.max(1),
        ));
        if settings.statement_timeout_secs > 0 {
            let options = format!(
                "{} -c statement_timeout={}s",
                config.get_options().unwrap_or_default(),
                settings.statement_timeout_secs
            );
            config.options(options.trim());
        }
        config.ssl_mode(match settings.sslmode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => PgSslMode::Require,
        });
        let tls = MakeRustlsConnect::new(tls_client(settings)?);
        Ok(Connector { config, tls })
    }
}

/// The rustls client for the database: trusts only `ca_file`; checks the
/// server's name only for `verify-full`.
fn tls_client(settings: &Database) -> Result<rustls::ClientConfig, DbError> {
    if settings.sslmode == SslMode::Disable {
        // Never used: tokio-postgres does not start TLS with sslmode=disable.
        return Ok(rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth());
    }
    let roots = match &settings.ca_file {
        Some(path) => navette_proto::tls::load_ca_roots(path)
            .map_err(|error| DbError::Settings(format!("database.ca_file: {error}")))?,
        None => {
            return Err(DbError::Settings(format!(
                "database.sslmode = {:?} needs database.ca_file, the CA that signed the database server's certificate",
                settings.sslmode
            )));
        }
    };
    let verifier = rustls::client::WebPkiServerVerifier::builder(roots)
        .build()
        .map_err(|error| DbError::Settings(format!("database.ca_file: {error}")))?;
    let builder = rustls::ClientConfig::builder();
    let config = if settings.sslmode == SslMode::VerifyFull {
        builder.with_webpki_verifier(verifier).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// For `prefer` and `require`: the certificate must chain to the
/// configured CA, whatever name it carries (as libpq's `verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Opens the pool, waiting up to `database.connect_timeout_secs` for the
/// server at start-up.
pub async fn connect(settings: &Database) -> Result<Pool, DbError> {
    let connector = Connector::new(settings)?;
    let connect_timeout = Duration::from_secs(settings.connect_timeout_secs);
    let attempt = Duration::from_secs(settings.connect_attempt_timeout_secs.max(1));
    let manager = Manager::from_config(
        connector.config.clone(),
        connector.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(
            settings.pool_wait_timeout_secs.max(1),
        )))
        .create_timeout(Some(attempt))
        .recycle_timeout(Some(attempt))
        .build()?;
    let started = Instant::now();
    loop {
        match pool.get().await {
            Ok(_) => return Ok(pool),
            Err(error) if started.elapsed() < connect_timeout => {
                let error = error_chain(&error);
                tracing::warn!(message = "waiting for the database", %error);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => {
                return Err(DbError::Unavailable {
                    waited: started.elapsed(),
                    last: error_chain(&error),
                });
            }
        }
    }
}

/// An error with its causes (a TLS refusal says why the certificate was
/// refused, not only that the handshake failed).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
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
    // Waiting for another controller's migration, and migrating, may take
    // longer than any request should: no statement timeout until done
    // (RESET restores the connection's configured one).
    client.batch_execute("SET statement_timeout = 0").await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_pending(&mut client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    client.batch_execute("RESET statement_timeout").await?;
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
pub const CHANNELS: [&str; 3] = ["navette_hosts", "navette_tests", "navette_migrations"];

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
pub fn listen_changes(
    settings: &Database,
    changes: broadcast::Sender<Change>,
) -> Result<(), DbError> {
    listen(settings, &CHANNELS, changes)
}

/// [`listen_changes`] for other `channels`, on a connection of their own:
/// the workflow engine's (`navette_workflows`, busy while workflows run)
/// do not crowd the broadcast that host watchers read.
pub fn listen(
    settings: &Database,
    channels: &'static [&'static str],
    changes: broadcast::Sender<Change>,
) -> Result<(), DbError> {
    let connector = Connector::new(settings)?;
    tokio::spawn(async move {
        loop {
            if let Err(error) = listen_once(&connector, channels, &changes).await {
                tracing::warn!(message = "change listener lost its connection; reconnecting", ?channels, %error);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(())
}

async fn listen_once(
    connector: &Connector,
    channels: &[&str],
    changes: &broadcast::Sender<Change>,
) -> Result<(), DbError> {
    let (client, mut connection) = connector.config.connect(connector.tls.clone()).await?;
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
    for channel in channels {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(text: &str) -> Result<Connector, String> {
        navette_proto::tls::install_crypto_provider();
        let config = crate::config::Config::parse(
            &format!("[database]\n{text}\n"),
            std::path::Path::new("c.toml"),
        )
        .map_err(|e| e.to_string())?;
        Connector::new(&config.database).map_err(|e| e.to_string())
    }

    fn refusal(text: &str) -> String {
        connector(text).err().unwrap_or_default()
    }

    #[test]
    fn every_statement_is_bounded_unless_told_otherwise() -> Result<(), String> {
        let bounded = connector("url = \"host=/run/pg options='-c search_path=a'\"")?;
        let options = bounded.config.get_options().unwrap_or_default();
        assert!(options.contains("search_path=a"), "{options}");
        assert!(options.contains("statement_timeout=30s"), "{options}");
        assert_eq!(
            bounded.config.get_connect_timeout(),
            Some(&Duration::from_secs(10))
        );
        let unbounded = connector("url = \"host=/run/pg\"\nstatement_timeout_secs = 0")?;
        assert_eq!(unbounded.config.get_options(), None);
        Ok(())
    }

    #[test]
    fn tls_settings_that_cannot_work_are_refused_by_name() {
        let error = refusal("url = \"host=db sslmode=require\"");
        assert!(error.contains("set database.sslmode instead"), "{error}");
        let error = refusal("url = \"host=db\"\nsslmode = \"require\"");
        assert!(error.contains("needs database.ca_file"), "{error}");
        let error =
            refusal("url = \"host=db\"\nsslmode = \"verify-full\"\nca_file = \"/nonexistent.pem\"");
        assert!(error.contains("database.ca_file"), "{error}");
    }
}
