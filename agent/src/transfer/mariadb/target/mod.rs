//! The target side: [`pull`] copies databases from a source agent's
//! `MariadbSource` into this host's MariaDB servers.
//!
//! For each database: describe it on the source; refuse if the "target" is
//! the source's own server and database; create or update the account's
//! users; drop and recreate the target database (a copy is disposable, the
//! source is never written); feed the dump to this host's `mariadb` client;
//! grant the privileges; then compare every table's row count and checksum
//! with those the source computed over the rows it sent, and check that
//! every view, routine, trigger and event arrived. A failed copy drops its
//! partial database. Running it again redoes it from the start.
//!
//! - `load`: the dump stream into this host's `mariadb` client, progress;
//! - `verify`: checksums and objects compared with the source's.

use navette_proto::v1::mariadb_source_client::MariadbSourceClient;
use navette_proto::v1::{DatabaseCopy, MariadbDatabaseDescription, MariadbDatabaseRequest};
use tonic::transport::Channel;

use super::catalogue::{self, CatalogueError};
use super::client::{self, ClientError, ident, literal};
use super::privileges::{PrivilegeError, ensure_user_sql, grant_sql};
use crate::config::MariadbServer;
use crate::transfer::progress::Progress;

mod load;
mod verify;

use load::load;
use verify::{verify_objects, verify_tables};

/// Schemas of the server itself: never a copy's target.
const SYSTEM_SCHEMAS: [&str; 4] = ["information_schema", "performance_schema", "mysql", "sys"];

/// What a pull did, database by database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MariadbReport {
    pub databases: Vec<DatabaseReport>,
}

/// One database copied and checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseReport {
    pub source_server: String,
    pub source_database: String,
    pub target_server: String,
    pub target_database: String,
    /// Every table, as checked on both sides (equal by construction when
    /// the pull succeeded).
    pub tables: Vec<TableCheck>,
    /// `user@host` of the users created or updated.
    pub users: Vec<String>,
    /// Grantees left on the source, with why.
    pub skipped_users: Vec<String>,
    /// Views, routines, triggers and events found on the target.
    pub objects: Vec<String>,
    /// Bytes of SQL received.
    pub bytes_received: u64,
}

/// A table's row count and checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCheck {
    pub table: String,
    pub rows: u64,
    pub checksum: String,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum MariadbCopyError {
    #[error(
        "this host has no MariaDB server named {0:?} (see the agent's [[mariadb]] configuration)"
    )]
    UnknownServer(String),
    #[error("target database name {0:?} is not allowed (empty, too long, or a system schema)")]
    BadTargetName(String),
    #[error(
        "refusing to copy {server}/{database} onto itself: the target server is the source's server and the database has the same name"
    )]
    SameDatabase { server: String, database: String },
    #[error("the source refused or failed {call} for MariaDB database {database}: {status}")]
    Source {
        call: &'static str,
        database: String,
        status: String,
    },
    #[error("MariaDB server {server}: {source}")]
    Target {
        server: String,
        #[source]
        source: ClientError,
    },
    #[error("copying the users of {database}: {source}")]
    Privileges {
        database: String,
        #[source]
        source: PrivilegeError,
    },
    #[error("checking the copy of {database} on MariaDB server {server}: {source}")]
    Check {
        server: String,
        database: String,
        #[source]
        source: Box<CatalogueError>,
    },
    #[error("loading MariaDB database {database} on server {server} failed: {detail}")]
    Load {
        server: String,
        database: String,
        detail: String,
    },
    #[error(
        "MariaDB database {database}: no checksum came for table(s) {} (created on the source during the copy? copy again)",
        .tables.join(", ")
    )]
    Incomplete {
        database: String,
        tables: Vec<String>,
    },
    #[error("MariaDB database {database}: tables differ from the source: {}", .tables.join("; "))]
    Mismatch {
        database: String,
        tables: Vec<String>,
    },
    #[error("MariaDB database {database}: missing on the target: {}", .objects.join(", "))]
    MissingObjects {
        database: String,
        objects: Vec<String>,
    },
}

impl MariadbCopyError {
    fn target(server: &MariadbServer) -> impl FnOnce(ClientError) -> MariadbCopyError {
        let server = server.name.clone();
        move |source| MariadbCopyError::Target { server, source }
    }

    fn check(
        server: &MariadbServer,
        database: &str,
    ) -> impl FnOnce(CatalogueError) -> MariadbCopyError {
        let (server, database) = (server.name.clone(), database.to_owned());
        move |source| MariadbCopyError::Check {
            server,
            database,
            source: Box::new(source),
        }
    }
}

fn source_error(call: &'static str, database: &str, status: &tonic::Status) -> MariadbCopyError {
    MariadbCopyError::Source {
        call,
        database: database.to_owned(),
        status: crate::describe_status(status),
    }
}

/// Copies every database of `copies` from the source behind `channel` into
/// this host's `target_servers`, reporting to `progress`.
pub async fn pull(
    channel: Channel,
    transfer_id: &str,
    copies: &[DatabaseCopy],
    target_servers: &[MariadbServer],
    progress: &Progress,
) -> Result<MariadbReport, MariadbCopyError> {
    let mut source = MariadbSourceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    // Describe everything first, so totals are known from the start.
    let mut planned = Vec::with_capacity(copies.len());
    for copy in copies {
        let server = target_servers
            .iter()
            .find(|server| server.name == copy.target_server)
            .ok_or_else(|| MariadbCopyError::UnknownServer(copy.target_server.clone()))?;
        check_target_name(&copy.target_database)?;
        let description = source
            .describe_database(request(transfer_id, copy))
            .await
            .map_err(|status| source_error("DescribeDatabase", &copy.source_database, &status))?
            .into_inner();
        progress.add(&progress.tables_total, description.tables.len() as u64);
        progress.add(
            &progress.bytes_total,
            description.tables.iter().map(|t| t.data_bytes).sum(),
        );
        planned.push((copy, server, description));
    }
    let mut report = MariadbReport::default();
    for (copy, server, description) in planned {
        progress.set_phase(format!("mariadb {}", copy.target_database));
        let database = copy_database(
            &mut source,
            transfer_id,
            copy,
            server,
            &description,
            progress,
        )
        .await?;
        report.databases.push(database);
    }
    Ok(report)
}

fn request(transfer_id: &str, copy: &DatabaseCopy) -> MariadbDatabaseRequest {
    MariadbDatabaseRequest {
        transfer_id: transfer_id.to_owned(),
        server: copy.source_server.clone(),
        database: copy.source_database.clone(),
    }
}

fn check_target_name(name: &str) -> Result<(), MariadbCopyError> {
    let system = SYSTEM_SCHEMAS
        .iter()
        .any(|schema| schema.eq_ignore_ascii_case(name));
    if name.is_empty() || name.chars().count() > 64 || name.contains('\0') || system {
        return Err(MariadbCopyError::BadTargetName(name.to_owned()));
    }
    Ok(())
}

async fn copy_database(
    source: &mut MariadbSourceClient<Channel>,
    transfer_id: &str,
    copy: &DatabaseCopy,
    server: &MariadbServer,
    description: &MariadbDatabaseDescription,
    progress: &Progress,
) -> Result<DatabaseReport, MariadbCopyError> {
    let database = copy.target_database.as_str();
    let own_id = catalogue::server_instance_id(server)
        .await
        .map_err(MariadbCopyError::target(server))?;
    if own_id == description.instance_id && database == copy.source_database {
        return Err(MariadbCopyError::SameDatabase {
            server: server.name.clone(),
            database: database.to_owned(),
        });
    }
    tracing::info!(
        message = "copying a MariaDB database",
        transfer_id,
        source_server = %copy.source_server,
        source_database = %copy.source_database,
        server = %server.name,
        database,
        tables = description.tables.len(),
        users = description.users.len()
    );

    // Users first: views, routines and triggers name them as definers.
    let mut setup = String::new();
    let mut users = Vec::new();
    for user in &description.users {
        setup.push_str(
            &ensure_user_sql(&user.user, &user.host, &user.create_user).map_err(|source| {
                MariadbCopyError::Privileges {
                    database: database.to_owned(),
                    source,
                }
            })?,
        );
        users.push(format!("{}@{}", user.user, user.host));
    }
    client::run(server, &setup, Some(client::SHORT))
        .await
        .map_err(MariadbCopyError::target(server))?;

    // From here on, whatever is in the target database is this copy's.
    let filled = async {
        client::run(
            server,
            &recreate_database_sql(database, description),
            Some(client::SHORT),
        )
        .await
        .map_err(MariadbCopyError::target(server))?;
        fill(source, transfer_id, copy, server, description, progress).await
    }
    .await;
    let (tables, objects, bytes_received) = match filled {
        Ok(filled) => filled,
        Err(error) => {
            drop_partial_copy(server, database, &error).await;
            return Err(error);
        }
    };
    tracing::info!(
        message = "MariaDB database copied and checked",
        transfer_id,
        server = %server.name,
        database,
        tables = tables.len(),
        bytes_received
    );
    Ok(DatabaseReport {
        source_server: copy.source_server.clone(),
        source_database: copy.source_database.clone(),
        target_server: copy.target_server.clone(),
        target_database: database.to_owned(),
        tables,
        users,
        skipped_users: description.skipped_users.clone(),
        objects,
        bytes_received,
    })
}

/// Loads the dump, grants the privileges, and checks the copy: the tables
/// as checked, the objects found, the bytes received.
async fn fill(
    source: &mut MariadbSourceClient<Channel>,
    transfer_id: &str,
    copy: &DatabaseCopy,
    server: &MariadbServer,
    description: &MariadbDatabaseDescription,
    progress: &Progress,
) -> Result<(Vec<TableCheck>, Vec<String>, u64), MariadbCopyError> {
    let database = copy.target_database.as_str();
    let (checksums, bytes_received) =
        load(source, transfer_id, copy, server, description, progress).await?;

    // Grants last: table and routine grants need their objects.
    let mut grants = String::new();
    for user in &description.users {
        for grant in &user.grants {
            grants.push_str(&grant_sql(grant, database, &user.user, &user.host).map_err(
                |source| MariadbCopyError::Privileges {
                    database: database.to_owned(),
                    source,
                },
            )?);
        }
    }
    if !grants.is_empty() {
        client::run(server, &grants, Some(client::SHORT))
            .await
            .map_err(MariadbCopyError::target(server))?;
    }

    let tables = verify_tables(server, database, &checksums).await?;
    let objects = verify_objects(server, database, description).await?;
    Ok((tables, objects, bytes_received))
}

/// Drops the target database of a failed copy (never called before the
/// copy recreated it, so never on anything but the copy).
async fn drop_partial_copy(server: &MariadbServer, database: &str, error: &MariadbCopyError) {
    tracing::warn!(
        message = "MariaDB copy failed; dropping the partial copy",
        server = %server.name,
        database,
        %error
    );
    let drop = format!("DROP DATABASE IF EXISTS {};\n", ident(database));
    if let Err(drop_error) = client::run(server, &drop, Some(client::SHORT)).await {
        tracing::warn!(
            message = "cannot drop the partial copy",
            server = %server.name,
            database,
            error = %drop_error
        );
    }
}

fn recreate_database_sql(database: &str, description: &MariadbDatabaseDescription) -> String {
    let mut create = format!("CREATE DATABASE {}", ident(database));
    if !description.character_set.is_empty() {
        create.push_str(&format!(
            " CHARACTER SET {}",
            literal(&description.character_set)
        ));
    }
    if !description.collation.is_empty() {
        create.push_str(&format!(" COLLATE {}", literal(&description.collation)));
    }
    format!("DROP DATABASE IF EXISTS {};\n{create};\n", ident(database))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_schemas_and_odd_names_are_never_targets() {
        for name in ["mysql", "INFORMATION_SCHEMA", "sys", "", "a\0b"] {
            assert!(check_target_name(name).is_err(), "{name:?}");
        }
        assert!(check_target_name(&"x".repeat(65)).is_err());
        assert!(check_target_name("alice_shop").is_ok());
    }

    #[test]
    fn the_database_is_recreated_with_the_sources_character_set() {
        let description = MariadbDatabaseDescription {
            character_set: "utf8mb4".into(),
            collation: "utf8mb4_unicode_ci".into(),
            ..MariadbDatabaseDescription::default()
        };
        assert_eq!(
            recreate_database_sql("alice", &description),
            "DROP DATABASE IF EXISTS `alice`;\n\
             CREATE DATABASE `alice` CHARACTER SET 'utf8mb4' COLLATE 'utf8mb4_unicode_ci';\n"
        );
    }
}
