//! What a PostgreSQL server on this host holds: its version, the
//! extensions it can create, the free space of its data directory, and its
//! databases with owner, size, the extensions created in each, its
//! unlogged partitioned tables, the roles of its owner that still have an
//! MD5 password, and the roles that are members of each owner (to
//! attribute a database owned by, say, `wp` to its account).
//!
//! Reads only, and only the system catalogues: one connection to the
//! `postgres` database, then one short one to each database whose details
//! (`pg_extension` and `pg_class` are per database) were not read within
//! the collection's `max_age` ([`ExtensionCache`]: a periodic inventory
//! does not open a connection to every database). A server that cannot be
//! reached is reported as such, never as an error of the whole inventory;
//! a database that cannot be read (or a role that may not read
//! `pg_authid`) is reported with `inspected` false, and the compatibility
//! report says what was not checked; the copy's own preflight checks the
//! extensions again.

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

/// The unlogged partitioned tables of a database (PostgreSQL 18 refuses
/// them), as `schema.table`.
const UNLOGGED_PARTITIONED_QUERY: &str = "SELECT n.nspname::text || '.' || c.relname::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'p' AND c.relpersistence = 'u' ORDER BY 1 LIMIT 1000";

/// The roles whose stored password is an MD5 hash. Needs a role that may
/// read `pg_authid` (a superuser, as the agent's usually is).
const MD5_ROLES_QUERY: &str =
    "SELECT rolname::text FROM pg_authid WHERE rolpassword LIKE 'md5%' ORDER BY 1";

/// What is read of one database in its own connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseDetails {
    /// Created in it (plpgsql included), sorted.
    pub extensions: Vec<String>,
    /// `schema.table`, sorted, at most 1000.
    pub unlogged_partitioned_tables: Vec<String>,
    /// Whether the database could be read; when false, the rest is empty
    /// and says nothing.
    pub read: bool,
}

/// The details of each database (by server and name) as last read, and
/// when. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ExtensionCache(Arc<Mutex<ExtensionsRead>>);

/// (server, database) to when its details were read, and what they were.
type ExtensionsRead = HashMap<(String, String), (Instant, DatabaseDetails)>;

impl ExtensionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExtensionsRead> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What was read of `database` less than `max_age` ago.
    fn fresh(&self, server: &str, database: &str, max_age: Duration) -> Option<DatabaseDetails> {
        self.lock()
            .get(&(server.to_owned(), database.to_owned()))
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, details)| details.clone())
    }

    /// Keeps what was just read of `database`.
    fn put(&self, server: &str, database: &str, details: &DatabaseDetails) {
        self.lock().insert(
            (server.to_owned(), database.to_owned()),
            (Instant::now(), details.clone()),
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
        data_directory_free_bytes: None,
        available_engines: Vec::new(),
        logical_replication_ready: false,
        logical_replication_reason: "the server could not be asked".to_owned(),
        row_binlog: None,
    };
    let result = tokio::time::timeout(TIMEOUT, query(server, extensions, max_age)).await;
    let (databases, owner_members) = match result {
        Ok(Ok(found)) => {
            report.version = found.version;
            report.available_extensions = found.available_extensions;
            report.data_directory_free_bytes = found.data_directory_free_bytes;
            report.reachable = true;
            match found.logical_replication {
                Ok(()) => {
                    report.logical_replication_ready = true;
                    report.logical_replication_reason = String::new();
                }
                Err(reason) => report.logical_replication_reason = reason,
            }
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

/// Whether a server with these settings can be the source of a
/// migration's logical replication (see `crate::replication::postgres`),
/// or why not and what to change.
pub fn logical_replication_readiness(
    wal_level: &str,
    max_replication_slots: i32,
    max_wal_senders: i32,
) -> Result<(), String> {
    let mut missing = Vec::new();
    if wal_level != "logical" {
        missing.push(format!("wal_level is {wal_level}, not logical"));
    }
    if max_replication_slots < 1 {
        missing.push("max_replication_slots is 0".to_owned());
    }
    if max_wal_senders < 1 {
        missing.push("max_wal_senders is 0".to_owned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: an operator sets wal_level = logical (and at least one replication slot and WAL sender) in postgresql.conf and restarts the server",
            missing.join(", ")
        ))
    }
}

/// What one inspection found.
struct Found {
    version: String,
    available_extensions: Vec<String>,
    data_directory_free_bytes: Option<u64>,
    /// Whether a migration can replicate from the server, or why not.
    logical_replication: Result<(), String>,
    databases: Vec<Database>,
    /// The members of each database owner.
    owner_members: HashMap<String, Vec<String>>,
}

/// The first column of every row, as text.
fn texts(rows: &[tokio_postgres::Row]) -> Result<Vec<String>, tokio_postgres::Error> {
    rows.iter().map(|row| row.try_get::<_, String>(0)).collect()
}

/// What is read of `database` in its own connection; not `read` if it
/// cannot be (it may refuse connections).
async fn details_of(server: &PostgresqlServer, database: &str) -> DatabaseDetails {
    let config = server.connection_config(database, "navette-agent", Duration::from_secs(2));
    let read = async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        let read = async {
            let extensions = client
                .query("SELECT extname::text FROM pg_extension ORDER BY 1", &[])
                .await?;
            let unlogged = client.query(UNLOGGED_PARTITIONED_QUERY, &[]).await?;
            Ok::<_, tokio_postgres::Error>(DatabaseDetails {
                extensions: texts(&extensions)?,
                unlogged_partitioned_tables: texts(&unlogged)?,
                read: true,
            })
        }
        .await;
        drop(client);
        connection.abort();
        read
    };
    match read.await {
        Ok(details) => details,
        Err(error) => {
            tracing::debug!(message = "cannot read a database's details", server = %server.name, database, error = %describe(&error));
            DatabaseDetails::default()
        }
    }
}

/// Free bytes of the filesystem holding the server's data directory, if
/// the agent can see it: the server is reached over a Unix socket or a
/// loopback address (so the path is one of this host), and
/// `data_directory` is readable (a superuser or `pg_read_all_settings`).
async fn data_directory_free_bytes(
    client: &tokio_postgres::Client,
    server: &PostgresqlServer,
) -> Option<u64> {
    let local = server.uses_socket()
        || server.host == "localhost"
        || server
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    if !local {
        return None;
    }
    let directory: String = match client.query_one("SHOW data_directory", &[]).await {
        Ok(row) => row.try_get(0).ok()?,
        Err(error) => {
            tracing::debug!(message = "cannot read the data directory", server = %server.name, error = %describe(&error));
            return None;
        }
    };
    match super::system::disk_usage(std::path::Path::new(&directory)) {
        Ok(usage) => Some(usage.free_bytes),
        Err(error) => {
            tracing::debug!(message = "cannot measure the data directory", server = %server.name, directory, %error);
            None
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
        let data_directory_free_bytes = data_directory_free_bytes(&client, server).await;
        let settings = client
            .query_one(
                "SELECT current_setting('wal_level'), \
                        current_setting('max_replication_slots')::int, \
                        current_setting('max_wal_senders')::int",
                &[],
            )
            .await?;
        let logical_replication = logical_replication_readiness(
            &settings.try_get::<_, String>(0)?,
            settings.try_get(1)?,
            settings.try_get(2)?,
        );
        // A role that may not read pg_authid reports no MD5 roles, and
        // its databases as not inspected.
        let md5_roles = match client.query(MD5_ROLES_QUERY, &[]).await {
            Ok(rows) => Some(texts(&rows)?),
            Err(error) => {
                tracing::debug!(message = "cannot read which roles have MD5 passwords", server = %server.name, error = %describe(&error));
                None
            }
        };
        let mut databases = Vec::new();
        let mut owner_members = HashMap::new();
        for row in client.query(DATABASES_QUERY, &[]).await? {
            let name: String = row.try_get(0)?;
            let owner: String = row.try_get(1)?;
            let size: i64 = row.try_get(2)?;
            let members: Vec<String> = row.try_get(3)?;
            let details = match cache.fresh(&server.name, &name, max_age) {
                Some(details) => details,
                None => {
                    let read = details_of(server, &name).await;
                    cache.put(&server.name, &name, &read);
                    read
                }
            };
            let md5_password_roles = md5_roles
                .as_deref()
                .map(|md5| owner_roles_with_md5(&owner, &members, md5))
                .unwrap_or_default();
            owner_members.insert(owner.clone(), members);
            databases.push(Database {
                engine: DatabaseEngine::Postgresql.into(),
                server: server.name.clone(),
                name,
                size_bytes: u64::try_from(size).unwrap_or(0),
                owner,
                extensions: details.extensions,
                md5_password_roles,
                unlogged_partitioned_tables: details.unlogged_partitioned_tables,
                tables_not_innodb: Vec::new(),
                inspected: details.read && md5_roles.is_some(),
            });
        }
        cache.forget_gone(&server.name, &databases);
        Ok(Found {
            version: short_version(&version),
            available_extensions,
            data_directory_free_bytes,
            logical_replication,
            databases,
            owner_members,
        })
    }
    .await;
    drop(client);
    connection.abort();
    result
}

/// The most roles reported for one database (the controller refuses a
/// longer list).
const MAX_MD5_ROLES: usize = 1000;

/// The roles of a database's owner (the owner and its direct `members`)
/// that are in `md5` (the server's roles with an MD5 password), sorted; at
/// most [`MAX_MD5_ROLES`].
fn owner_roles_with_md5(owner: &str, members: &[String], md5: &[String]) -> Vec<String> {
    let mut roles: Vec<String> = std::iter::once(owner)
        .chain(members.iter().map(String::as_str))
        .filter(|role| md5.iter().any(|m| m == role))
        .map(str::to_owned)
        .collect();
    roles.sort();
    roles.dedup();
    roles.truncate(MAX_MD5_ROLES);
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_its_first_word() {
        assert_eq!(short_version("15.18 (Debian 15.18-1.pgdg120+1)"), "15.18");
        assert_eq!(logical_replication_readiness("logical", 10, 10), Ok(()));
        let reason = logical_replication_readiness("replica", 10, 0)
            .err()
            .unwrap_or_default();
        assert!(reason.starts_with("wal_level is replica, not logical, max_wal_senders is 0:"));
        assert_eq!(short_version("18.1"), "18.1");
        assert_eq!(short_version(""), "");
    }

    #[test]
    fn extensions_are_reused_while_young_and_forgotten_with_their_database() {
        let cache = ExtensionCache::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(cache.fresh("main", "shop", hour), None);
        let read = DatabaseDetails {
            extensions: vec!["pgcrypto".to_owned()],
            unlogged_partitioned_tables: vec!["public.events".to_owned()],
            read: true,
        };
        cache.put("main", "shop", &read);
        assert_eq!(cache.fresh("main", "shop", hour), Some(read));
        assert_eq!(cache.fresh("main", "shop", Duration::ZERO), None);
        assert_eq!(cache.fresh("pg5433", "shop", hour), None);
        cache.put("pg5433", "shop", &DatabaseDetails::default());
        cache.forget_gone("main", &[]);
        assert_eq!(cache.fresh("main", "shop", hour), None);
        assert_eq!(
            cache.fresh("pg5433", "shop", hour),
            Some(DatabaseDetails::default())
        );
    }

    #[test]
    fn md5_roles_are_the_owners_and_its_members_only() {
        let md5 = ["alice".to_owned(), "bob".to_owned(), "wp_ro".to_owned()];
        assert_eq!(
            owner_roles_with_md5("wp", &["wp_ro".into(), "carol".into()], &md5),
            ["wp_ro"]
        );
        assert_eq!(owner_roles_with_md5("alice", &[], &md5), ["alice"]);
        assert!(owner_roles_with_md5("carol", &[], &md5).is_empty());
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
