//! What a PostgreSQL server on this host holds: its version, the
//! extensions it can create, and its databases with owner, size and the
//! extensions created in each, and the roles that are members of each
//! owner (to attribute a database owned by, say, `wp` to its account).
//!
//! Reads only: one connection to the `postgres` database, then one short
//! one to each database whose extensions (`pg_extension` is per database)
//! were not read within the collection's `max_age` ([`ExtensionCache`]:
//! a periodic inventory does not open a connection to every database). A server that cannot be reached is reported as such, never as
//! an error of the whole inventory; a database that cannot be read reports
//! no extensions, and the copy's own preflight checks them again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use navette_proto::v1::{Database, DatabaseEngine, DatabaseServer};

use super::ServerFindings;
use crate::config::PostgresqlServer;

/// How long the whole inspection of one server may take.
const TIMEOUT: Duration = Duration::from_secs(10);

const DATABASES_QUERY: &str = "SELECT d.datname, r.rolname, pg_database_size(d.oid), \
            ARRAY(SELECT m.rolname::text FROM pg_auth_members a \
                  JOIN pg_roles m ON m.oid = a.member WHERE a.roleid = r.oid ORDER BY 1) \
     FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba \
     WHERE NOT d.datistemplate AND d.datname <> 'postgres' \
     ORDER BY d.datname";

/// The version as reported in the inventory: the first word of
/// `server_version` ("15.18 (Debian 15.18-1.pgdg120+1)" gives "15.18").
pub fn short_version(server_version: &str) -> String {
    server_version
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The extensions of each database (by server and name) as last read, and
/// when. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ExtensionCache(Arc<Mutex<ExtensionsRead>>);

/// (server, database) to when its extensions were read, and what they were.
type ExtensionsRead = HashMap<(String, String), (Instant, Vec<String>)>;

impl ExtensionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExtensionsRead> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What was read of `database` less than `max_age` ago.
    fn fresh(&self, server: &str, database: &str, max_age: Duration) -> Option<Vec<String>> {
        self.lock()
            .get(&(server.to_owned(), database.to_owned()))
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, extensions)| extensions.clone())
    }

    /// Keeps what was just read of `database`.
    fn put(&self, server: &str, database: &str, extensions: &[String]) {
        self.lock().insert(
            (server.to_owned(), database.to_owned()),
            (Instant::now(), extensions.to_vec()),
        );
    }

    /// Forgets `server`'s databases that are not in `databases` (gone).
    fn forget_gone(&self, server: &str, databases: &[Database]) {
        self.lock()
            .retain(|(s, d), _| s != server || databases.iter().any(|db| &db.name == d));
    }
}

/// Inspects `server`. `public_address` is what customers connect to; the
/// extensions of a database are read again when `extensions` has none
/// younger than `max_age`.
pub async fn inspect(
    server: &PostgresqlServer,
    public_address: String,
    extensions: &ExtensionCache,
    max_age: Duration,
) -> ServerFindings {
    let mut report = DatabaseServer {
        name: server.name.clone(),
        engine: DatabaseEngine::Postgresql.into(),
        version: String::new(),
        address: public_address,
        port: u32::from(server.port),
        reachable: false,
        error: String::new(),
        available_extensions: Vec::new(),
    };
    let result = tokio::time::timeout(TIMEOUT, query(server, extensions, max_age)).await;
    let (databases, owner_members) = match result {
        Ok(Ok(found)) => {
            report.version = found.version;
            report.available_extensions = found.available_extensions;
            report.reachable = true;
            (found.databases, found.owner_members)
        }
        Ok(Err(error)) => {
            report.error = describe(&error);
            Default::default()
        }
        Err(_) => {
            report.error = format!("no answer within {} s", TIMEOUT.as_secs());
            Default::default()
        }
    };
    if !report.reachable {
        tracing::warn!(
            message = "PostgreSQL server unreachable",
            server = %server.name,
            host = %server.host,
            port = server.port,
            error = %report.error
        );
    }
    ServerFindings {
        server: report,
        databases,
        owner_members,
    }
}

/// The error and its causes on one line ("db error: FATAL: ...").
fn describe(error: &tokio_postgres::Error) -> String {
    crate::error_chain(error)
}

/// What one inspection found.
struct Found {
    version: String,
    available_extensions: Vec<String>,
    databases: Vec<Database>,
    /// The members of each database owner.
    owner_members: HashMap<String, Vec<String>>,
}

/// The extensions created in `database` (plpgsql included), sorted; empty
/// if the database cannot be read (it may refuse connections).
async fn extensions_of(server: &PostgresqlServer, database: &str) -> Vec<String> {
    let config = server.connection_config(database, "navette-agent", Duration::from_secs(2));
    let read = async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        let rows = client
            .query("SELECT extname::text FROM pg_extension ORDER BY 1", &[])
            .await;
        drop(client);
        connection.abort();
        rows?
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()
    };
    match read.await {
        Ok(extensions) => extensions,
        Err(error) => {
            tracing::debug!(message = "cannot read a database's extensions", server = %server.name, database, error = %describe(&error));
            Vec::new()
        }
    }
}

async fn query(
    server: &PostgresqlServer,
    cache: &ExtensionCache,
    max_age: Duration,
) -> Result<Found, tokio_postgres::Error> {
    let config = server.connection_config("postgres", "navette-agent", Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let server_name = server.name.clone();
    let connection = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(message = "PostgreSQL connection ended", server = %server_name, %error);
        }
    });
    let result = async {
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await?
            .try_get(0)?;
        let available_extensions = client
            .query(
                "SELECT name::text FROM pg_available_extensions ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut databases = Vec::new();
        let mut owner_members = HashMap::new();
        for row in client.query(DATABASES_QUERY, &[]).await? {
            let name: String = row.try_get(0)?;
            let owner: String = row.try_get(1)?;
            let size: i64 = row.try_get(2)?;
            let members: Vec<String> = row.try_get(3)?;
            owner_members.insert(owner.clone(), members);
            let extensions = match cache.fresh(&server.name, &name, max_age) {
                Some(extensions) => extensions,
                None => {
                    let read = extensions_of(server, &name).await;
                    cache.put(&server.name, &name, &read);
                    read
                }
            };
            databases.push(Database {
                engine: DatabaseEngine::Postgresql.into(),
                server: server.name.clone(),
                name,
                size_bytes: u64::try_from(size).unwrap_or(0),
                owner,
                extensions,
            });
        }
        cache.forget_gone(&server.name, &databases);
        Ok(Found {
            version: short_version(&version),
            available_extensions,
            databases,
            owner_members,
        })
    }
    .await;
    drop(client);
    connection.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_its_first_word() {
        assert_eq!(short_version("15.18 (Debian 15.18-1.pgdg120+1)"), "15.18");
        assert_eq!(short_version("18.1"), "18.1");
        assert_eq!(short_version(""), "");
    }

    #[test]
    fn extensions_are_reused_while_young_and_forgotten_with_their_database() {
        let cache = ExtensionCache::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(cache.fresh("main", "shop", hour), None);
        cache.put("main", "shop", &["pgcrypto".to_owned()]);
        assert_eq!(
            cache.fresh("main", "shop", hour),
            Some(vec!["pgcrypto".to_owned()])
        );
        assert_eq!(cache.fresh("main", "shop", Duration::ZERO), None);
        assert_eq!(cache.fresh("pg5433", "shop", hour), None);
        cache.put("pg5433", "shop", &[]);
        cache.forget_gone("main", &[]);
        assert_eq!(cache.fresh("main", "shop", hour), None);
        assert_eq!(cache.fresh("pg5433", "shop", hour), Some(vec![]));
    }

    #[tokio::test]
    async fn a_missing_server_is_reported_unreachable() {
        let server = PostgresqlServer {
            name: "main".into(),
            host: "/nonexistent/navette-pg".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            public_address: None,
            bin_dir: None,
            library_path: None,
        };
        let findings = inspect(
            &server,
            "192.0.2.11".into(),
            &ExtensionCache::default(),
            Duration::ZERO,
        )
        .await;
        assert!(!findings.server.reachable);
        assert!(!findings.server.error.is_empty());
        assert_eq!(findings.server.address, "192.0.2.11");
        assert_eq!(findings.server.port, 5432);
        assert!(findings.databases.is_empty());
    }
}
