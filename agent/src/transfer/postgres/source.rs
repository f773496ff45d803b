//! The source side: `navette.v1.PostgresSource`, served by the agent of the
//! host whose databases are copied, to the one target host a grant names.
//!
//! Every call authorises first (the grant for its transfer id must name the
//! caller's host, and the server and database asked for), then reads, and
//! only reads: sessions are READ ONLY transactions that import the snapshot
//! [`hold_snapshot`](PostgresSource::hold_snapshot) exported, and `pg_dump`
//! runs with that snapshot. The locks taken are ACCESS SHARE (what every
//! SELECT takes): the customer's reads and writes go on; only DDL on the
//! copied tables waits until the copy ends, as with pg_dump.
//!
//! Table rows are digested with the hash of the grant's transfer protocol
//! version ([`crate::transfer::protocol`]), the one the target checks with.
//!
//! This module alone turns its errors into `tonic::Status` ([`status`]).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use navette_proto::v1::postgres_source_server::{PostgresSource, PostgresSourceServer};
use navette_proto::v1::{
    ChecksumTableRequest, CopyLargeObjectsRequest, CopyTableRequest, DescribeDatabaseRequest,
    DescribeScope, DumpSchemaRequest, HoldSnapshotRequest, LargeObjectChunk, PostgresChunk,
    PostgresDatabaseDescription, SnapshotMethod, SnapshotStatus, TableChecksum, snapshot_status,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

mod snapshot;
mod streams;

use snapshot::{check_snapshot_name, export_snapshot, keep_snapshot, open_in_snapshot};
use streams::{
    CopyFailure, dump, find_table, start_bulk_copy, start_copy, stream_bulk_copy, stream_copy,
    stream_large_objects,
};

use super::describe::CatalogError;
use super::digest::RowHash;
use super::session;
use super::tools::PgTools;
use super::wire::{BulkSession, WireError};
use super::{checksum, describe, schema_objects};
use crate::config::PostgresqlServer;
use crate::replication::postgres::slot;
use crate::transfer::grants::Grants;
use crate::transfer::protocol;

/// Why a source call failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The server could not be reached.
    #[error("PostgreSQL server {server}, database {database}: cannot connect")]
    Connect {
        server: String,
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query failed.
    #[error("PostgreSQL server {server}, database {database}: {what}")]
    Query {
        server: String,
        database: String,
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The table asked for is not one the copy reads.
    #[error(
        "PostgreSQL server {server}, database {database}: no table {schema}.{table} to copy (not a plain table of the database)"
    )]
    NoSuchTable {
        server: String,
        database: String,
        schema: String,
        table: String,
    },
    /// The snapshot cannot be imported: the HoldSnapshot stream that kept
    /// it ended (or the session holding it died).
    #[error(
        "PostgreSQL server {server}, database {database}: snapshot {snapshot} is no longer held"
    )]
    SnapshotGone {
        server: String,
        database: String,
        snapshot: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bulk session (big tables' COPY) failed.
    #[error("PostgreSQL server {server}, database {database}: {what}")]
    Bulk {
        server: String,
        database: String,
        what: String,
        #[source]
        source: Box<WireError>,
    },
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// pg_dump could not run or failed.
    #[error("pg_dump of server {server}, database {database}: {message}")]
    Dump {
        server: String,
        database: String,
        message: String,
        /// It failed and the snapshot could no longer be imported: the
        /// server went away (a restart) or the snapshot's holder ended, so
        /// a new copy may succeed.
        interrupted: bool,
    },
    /// Asked for something this agent does not do (yet).
    #[error("{0}")]
    Unsupported(String),
}

impl SourceError {
    fn query(server: &PostgresqlServer, database: &str, error: CatalogError) -> SourceError {
        SourceError::Query {
            server: server.name.clone(),
            database: database.to_owned(),
            what: error.what,
            source: error.source,
        }
    }
}

/// The status a source error is answered with. A snapshot that no longer
/// exists (its HoldSnapshot stream ended) is FAILED_PRECONDITION, so the
/// target copies the database again rather than retrying the call. A
/// server that cannot serve now (down, starting, shutting down, the
/// session cut) is UNAVAILABLE, which the target waits out
/// ([`crate::transfer::outage`]); a server's refusal of the agent's login
/// is PERMISSION_DENIED, which it does not.
pub fn status(error: &SourceError) -> Status {
    use tokio_postgres::error::SqlState;
    let message = crate::error_chain(error);
    let by_sqlstate = |code: Option<&str>| match code {
        // No SQLSTATE: the session was lost.
        None => Status::unavailable(message.clone()),
        Some(code) if code == SqlState::LOCK_NOT_AVAILABLE.code() || server_unavailable(code) => {
            Status::unavailable(message.clone())
        }
        Some(_) => Status::internal(message.clone()),
    };
    match error {
        SourceError::Connect { source, .. } => match source.code().map(SqlState::code) {
            // Refused by the server's authentication rules (pg_hba, a
            // password): the agent's configuration must change.
            Some(code) if code.starts_with("28") => Status::permission_denied(message),
            Some(code) if code == SqlState::INVALID_CATALOG_NAME.code() => {
                Status::not_found(message)
            }
            _ => Status::unavailable(message),
        },
        SourceError::SnapshotGone { .. } => Status::failed_precondition(message),
        SourceError::Query { source, .. } => by_sqlstate(source.code().map(SqlState::code)),
        SourceError::Bulk { source, .. } => by_sqlstate(source.code()),
        SourceError::NoSuchTable { .. } => Status::not_found(message),
        SourceError::BadRequest(_) => Status::invalid_argument(message),
        SourceError::Dump {
            interrupted: true, ..
        } => Status::unavailable(message),
        SourceError::Dump { .. } => Status::internal(message),
        SourceError::Unsupported(_) => Status::unimplemented(message),
    }
}

/// SQLSTATEs of a server that cannot serve now but will again: shutting
/// down (`57P01 admin_shutdown`, `57P02 crash_shutdown`), starting up or
/// in recovery (`57P03 cannot_connect_now`), out of connection slots
/// (`53300 too_many_connections`), or a broken connection (class 08).
fn server_unavailable(code: &str) -> bool {
    use tokio_postgres::error::SqlState;
    code.starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .iter()
        .any(|state| state.code() == code)
}

/// The session a table's COPY is read from.
enum CopySession {
    /// The one that found the table (small tables).
    Client(tokio_postgres::Client),
    /// A bulk session ([`wire`](super::wire)).
    Bulk(BulkSession),
}

/// The PostgresSource handlers.
#[derive(Clone, Debug)]
pub struct PostgresSourceService {
    grants: Arc<Grants>,
    /// This host's PostgreSQL servers, from the agent configuration.
    servers: Vec<PostgresqlServer>,
    /// pg_dump per server name, overriding the configuration's `bin_dir`;
    /// servers with neither use [`PgTools::locate`] of their version.
    tools: BTreeMap<String, PgTools>,
}

impl PostgresSourceService {
    pub fn new(grants: Arc<Grants>, servers: Vec<PostgresqlServer>) -> PostgresSourceService {
        PostgresSourceService {
            grants,
            servers,
            tools: BTreeMap::new(),
        }
    }

    /// Runs `pg_dump` for `server` from `tools` rather than from the
    /// server's configured `bin_dir` or where the distribution installs it.
    pub fn with_tools(mut self, server: &str, tools: PgTools) -> PostgresSourceService {
        self.tools.insert(server.to_owned(), tools);
        self
    }

    /// The tonic service to add to the agent's router.
    pub fn into_server(self) -> PostgresSourceServer<PostgresSourceService> {
        PostgresSourceServer::new(self)
    }

    /// The grant must name the caller, the server and the database.
    fn authorise<T>(
        &self,
        request: &Request<T>,
        transfer_id: &str,
        server: &str,
        database: &str,
    ) -> Result<PostgresqlServer, Status> {
        self.authorise_grant(request, transfer_id, server, database)
            .map(|(server, _)| server)
    }

    /// [`Self::authorise`], with the row hash of the grant's transfer
    /// protocol version (refused if this build no longer knows it).
    fn authorise_grant<T>(
        &self,
        request: &Request<T>,
        transfer_id: &str,
        server: &str,
        database: &str,
    ) -> Result<(PostgresqlServer, RowHash), Status> {
        let grant = self.grants.authorise(request, transfer_id)?;
        let version = match grant.protocol_version {
            0 => protocol::UNNAMED,
            version => version,
        };
        let hash = protocol::row_hash(version).ok_or_else(|| {
            Status::failed_precondition(format!(
                "transfer {transfer_id} was granted on transfer protocol version {version}, which this agent (version {}) no longer speaks; start the test again",
                env!("CARGO_PKG_VERSION")
            ))
        })?;
        if !grant.allows_postgresql(server, database) {
            return Err(Status::permission_denied(format!(
                "transfer {transfer_id} does not grant database {database:?} of PostgreSQL server {server:?}"
            )));
        }
        self.servers
            .iter()
            .find(|s| s.name == server)
            .cloned()
            .map(|server| (server, hash))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no PostgreSQL server {server:?} is configured on this host"
                ))
            })
    }
}

type ChunkStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<PostgresChunk, Status>> + Send>>;

#[tonic::async_trait]
impl PostgresSource for PostgresSourceService {
    type HoldSnapshotStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotStatus, Status>> + Send>>;

    async fn hold_snapshot(
        &self,
        request: Request<HoldSnapshotRequest>,
    ) -> Result<Response<Self::HoldSnapshotStream>, Status> {
        let r = request.get_ref();
        let server = self.authorise(&request, &r.transfer_id, &r.server, &r.database)?;
        // Counted against the grant's bound until the session ends.
        let (_, permit) = self.grants.open_session(&request, &r.transfer_id)?;
        let r = request.into_inner();
        let slot = match SnapshotMethod::try_from(r.method).unwrap_or(SnapshotMethod::Unspecified) {
            SnapshotMethod::Unspecified | SnapshotMethod::Transaction => None,
            SnapshotMethod::ReplicationSlot => {
                let tools = self.tools_for(&server, &r.database).await?;
                let admin = snapshot::connect(&server, &r.database)
                    .await
                    .map_err(|e| status(&e))?;
                let created =
                    slot::create_exported(&server, &admin, &tools, &r.database, &r.slot_name)
                        .await
                        .map_err(|e| crate::replication::postgres::status(&e))?;
                Some(created)
            }
        };
        let (client, held) = export_snapshot(&server, &r.database, slot.as_ref())
            .await
            .map_err(|e| status(&e))?;
        tracing::info!(
            message = "holding a snapshot",
            transfer = %r.transfer_id,
            server = %server.name,
            database = %r.database,
            snapshot = %held.snapshot_name
        );
        let (sender, receiver) = mpsc::channel(4);
        let first = SnapshotStatus {
            status: Some(snapshot_status::Status::Held(held)),
        };
        if sender.send(Ok(first)).await.is_err() {
            return Err(Status::cancelled("the caller left"));
        }
        tokio::spawn(keep_snapshot(
            client,
            slot,
            sender,
            permit,
            r.transfer_id,
            r.database,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn describe_database(
        &self,
        request: Request<DescribeDatabaseRequest>,
    ) -> Result<Response<PostgresDatabaseDescription>, Status> {
        let r = request.get_ref();
        let server = self.authorise(&request, &r.transfer_id, &r.server, &r.database)?;
        let r = request.into_inner();
        let described = async {
            let client = open_in_snapshot(&server, &r.database, &r.snapshot_name).await?;
            let scope = DescribeScope::try_from(r.scope).unwrap_or(DescribeScope::Full);
            let mut description = match scope {
                DescribeScope::SchemaObjects => Ok(PostgresDatabaseDescription::default()),
                DescribeScope::Preflight => describe::describe(&client, true).await,
                DescribeScope::Full | DescribeScope::Copy => {
                    describe::describe(&client, false).await
                }
            }
            .map_err(|e| SourceError::query(&server, &r.database, e))?;
            if matches!(scope, DescribeScope::Full | DescribeScope::SchemaObjects) {
                description.schema_objects = schema_objects::read(&client)
                    .await
                    .map_err(|e| SourceError::query(&server, &r.database, e))?;
            }
            let _ = client.batch_execute("COMMIT").await;
            Ok::<_, SourceError>(description)
        }
        .await;
        described.map(Response::new).map_err(|error| status(&error))
    }

    type DumpSchemaStream = ChunkStream;

    async fn dump_schema(
        &self,
        request: Request<DumpSchemaRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let r = request.get_ref();
        let server = self.authorise(&request, &r.transfer_id, &r.server, &r.database)?;
        let r = request.into_inner();
        check_snapshot_name(&r.snapshot_name).map_err(|e| status(&e))?;
        let tools = self.tools_for(&server, &r.database).await?;
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(error) = dump(&server, &r.database, &r.snapshot_name, &tools, &sender).await
            {
                tracing::warn!(message = "schema dump failed", error = %crate::error_chain(&error));
                let _ = sender.send(Err(status(&error))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    type CopyTableStream = ChunkStream;

    async fn copy_table(
        &self,
        request: Request<CopyTableRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let r = request.get_ref();
        let (server, hash) =
            self.authorise_grant(&request, &r.transfer_id, &r.server, &r.database)?;
        let r = request.into_inner();
        // Connect and start COPY before answering, so that a bad table or a
        // lost snapshot is the call's status rather than a stream error.
        let (client, statement, format) = start_copy(&server, &r).await.map_err(|e| status(&e))?;
        // A big table is read through a bulk session in the same snapshot
        // (the session that found the table is no longer needed).
        let copy = if r.bulk {
            CopySession::Bulk(
                start_bulk_copy(&server, &r, &statement)
                    .await
                    .map_err(|e| status(&e))?,
            )
        } else {
            CopySession::Client(client)
        };
        let (sender, receiver) = mpsc::channel(8);
        tokio::spawn(async move {
            let streamed = match copy {
                CopySession::Bulk(session) => {
                    stream_bulk_copy(session, format, hash, &sender).await
                }
                CopySession::Client(client) => {
                    stream_copy(&client, &statement, format, hash, &sender).await
                }
            };
            if let Err(error) = streamed {
                let error = match error {
                    CopyFailure::Bulk(source) => SourceError::Bulk {
                        server: server.name.clone(),
                        database: r.database.clone(),
                        what: format!("COPY of table {}.{}", r.schema, r.table),
                        source: Box::new(source),
                    },
                    CopyFailure::Query(source) => SourceError::Query {
                        server: server.name.clone(),
                        database: r.database.clone(),
                        what: format!("COPY of table {}.{}", r.schema, r.table),
                        source,
                    },
                    CopyFailure::Digest(error) => SourceError::BadRequest(format!(
                        "COPY of table {}.{}: {error}",
                        r.schema, r.table
                    )),
                };
                tracing::warn!(message = "table copy failed", error = %crate::error_chain(&error));
                let _ = sender.send(Err(status(&error))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn checksum_table(
        &self,
        request: Request<ChecksumTableRequest>,
    ) -> Result<Response<TableChecksum>, Status> {
        let r = request.get_ref();
        let server = self.authorise(&request, &r.transfer_id, &r.server, &r.database)?;
        let r = request.into_inner();
        let result = async {
            check_snapshot_name(&r.snapshot_name)?;
            let client = open_in_snapshot(&server, &r.database, &r.snapshot_name).await?;
            find_table(&client, &server, &r.database, &r.schema, &r.table).await?;
            let (rows, checksum) = checksum::table_checksum(&client, &r.schema, &r.table)
                .await
                .map_err(|source| SourceError::Query {
                    server: server.name.clone(),
                    database: r.database.clone(),
                    what: format!("checksum of table {}.{}", r.schema, r.table),
                    source,
                })?;
            let _ = client.batch_execute("COMMIT").await;
            Ok::<_, SourceError>(TableChecksum { rows, checksum })
        }
        .await;
        result.map(Response::new).map_err(|e| status(&e))
    }

    type CopyLargeObjectsStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<LargeObjectChunk, Status>> + Send>>;

    async fn copy_large_objects(
        &self,
        request: Request<CopyLargeObjectsRequest>,
    ) -> Result<Response<Self::CopyLargeObjectsStream>, Status> {
        let r = request.get_ref();
        let server = self.authorise(&request, &r.transfer_id, &r.server, &r.database)?;
        let r = request.into_inner();
        check_snapshot_name(&r.snapshot_name).map_err(|e| status(&e))?;
        let client = open_in_snapshot(&server, &r.database, &r.snapshot_name)
            .await
            .map_err(|e| status(&e))?;
        let (sender, receiver) = mpsc::channel(8);
        tokio::spawn(async move {
            if let Err(source) = stream_large_objects(&client, &sender).await {
                let error = SourceError::Query {
                    server: server.name.clone(),
                    database: r.database.clone(),
                    what: "reading large objects".to_owned(),
                    source,
                };
                let _ = sender.send(Err(status(&error))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl PostgresSourceService {
    /// The configured tools for `server`, else those of its major version.
    async fn tools_for(
        &self,
        server: &PostgresqlServer,
        database: &str,
    ) -> Result<PgTools, Status> {
        if let Some(tools) = self.tools.get(&server.name) {
            return Ok(tools.clone());
        }
        if let Some(tools) = PgTools::configured(server) {
            return Ok(tools);
        }
        let client = session::connect(server, database).await.map_err(|source| {
            status(&SourceError::Connect {
                server: server.name.clone(),
                database: database.to_owned(),
                source,
            })
        })?;
        let version = session::server_version_num(&client)
            .await
            .map_err(|source| {
                status(&SourceError::Query {
                    server: server.name.clone(),
                    database: database.to_owned(),
                    what: "reading the server version".to_owned(),
                    source,
                })
            })?;
        Ok(PgTools::locate(session::major(version)))
    }
}
