//! Before anything is changed on the target: each database of the transfer
//! is described (outside any snapshot) and checked: versions (the target
//! must run the same major version or a newer one), extensions the target
//! lacks, client programs, and that the target is not the source itself.

use std::sync::atomic::AtomicU64;

use navette_proto::v1::postgres_source_client::PostgresSourceClient;
use navette_proto::v1::{DatabaseCopy, DescribeScope, PostgresDatabaseDescription};
use tonic::transport::Channel;

use super::{PullOptions, connect, describe_request, source_error, target_error};
use crate::config::PostgresqlServer;
use crate::transfer::postgres::error::PostgresCopyError;
use crate::transfer::postgres::restore;
use crate::transfer::postgres::session;
use crate::transfer::postgres::tools::PgTools;

/// One database to copy, checked.
pub(super) struct Planned<'a> {
    pub(super) copy: &'a DatabaseCopy,
    pub(super) server: &'a PostgresqlServer,
    pub(super) tools: PgTools,
    pub(super) target_version: u32,
    /// What this database adds to the progress totals now (first from the
    /// description outside the snapshot, then from the one in it).
    pub(super) counted_tables: AtomicU64,
    pub(super) counted_bytes: AtomicU64,
}

/// Checks one copy before anything is changed.
pub(super) async fn preflight<'a>(
    source: &PostgresSourceClient<Channel>,
    transfer_id: &str,
    copy: &'a DatabaseCopy,
    target_servers: &'a [PostgresqlServer],
    options: &PullOptions,
) -> Result<Planned<'a>, PostgresCopyError> {
    let refused = |reason: String| PostgresCopyError::Refused {
        database: copy.target_database.clone(),
        reason,
    };
    // The index builds of the data phase use it too, in SQL.
    restore::check_memory_size(&copy.target_database, &options.maintenance_work_mem)?;
    let server = target_servers
        .iter()
        .find(|s| s.name == copy.target_server)
        .ok_or_else(|| PostgresCopyError::UnknownTargetServer {
            server: copy.target_server.clone(),
        })?;
    // The source's description and the target's facts, at the same time.
    let describe = async {
        source
            .clone()
            .describe_database(describe_request(
                transfer_id,
                copy,
                "",
                DescribeScope::Preflight,
            ))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| source_error(copy, "describing the database", &status))
    };
    let failed = |what: &str| target_error(server, &copy.target_database, what);
    let inspect_target = async {
        let admin = connect(server, "postgres", &copy.target_database).await?;
        let target_version = session::server_version_num(&admin)
            .await
            .map_err(failed("reading the server version"))?;
        let system_identifier: String = admin
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(failed("reading the system identifier"))?;
        let available: Vec<String> = admin
            .query("SELECT name FROM pg_available_extensions", &[])
            .await
            .and_then(|rows| rows.iter().map(|row| row.try_get(0)).collect())
            .map_err(failed("listing available extensions"))?;
        Ok::<_, PostgresCopyError>((target_version, system_identifier, available))
    };
    let (description, (target_version, system_identifier, available)) =
        tokio::try_join!(describe, inspect_target)?;
    let (source_major, target_major) = (
        session::major(description.server_version_num),
        session::major(target_version),
    );
    if source_major > target_major {
        return Err(refused(format!(
            "the source runs PostgreSQL {source_major}, the target {target_major}: a copy only goes to the same or a newer version"
        )));
    }
    if system_identifier == description.system_identifier
        && copy.source_database == copy.target_database
    {
        return Err(refused(
            "the target server is the source server itself; a copy would replace the original"
                .to_owned(),
        ));
    }
    let missing: Vec<String> = description
        .extensions
        .iter()
        .filter(|e| !available.contains(&e.name))
        .map(|e| e.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(refused(format!(
            "the target server lacks extensions the database uses: {}",
            missing.join(", ")
        )));
    }
    let tools = options
        .tools
        .get(&server.name)
        .cloned()
        .or_else(|| PgTools::configured(server))
        .unwrap_or_else(|| PgTools::locate(target_major));
    let tools_major = tools.major_version("pg_restore").await.map_err(|error| {
        refused(format!(
            "no usable pg_restore in {}: {error}",
            tools.describe()
        ))
    })?;
    if tools_major < source_major {
        return Err(refused(format!(
            "pg_restore in {} is version {tools_major}; the source's archives need {source_major} or newer",
            tools.describe()
        )));
    }
    Ok(Planned {
        copy,
        server,
        tools,
        target_version,
        counted_tables: AtomicU64::new(description.tables.len() as u64),
        counted_bytes: AtomicU64::new(totals(&description)),
    })
}

/// The bytes a description counts for progress: tables and large objects.
pub(super) fn totals(description: &PostgresDatabaseDescription) -> u64 {
    description.tables.iter().map(|t| t.bytes).sum::<u64>() + description.large_object_bytes
}
