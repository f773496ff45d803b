//! The source side: `navette.v1.MariadbSource`, served by the agent of the
//! host that holds the databases, called by the target host's agent.
//!
//! Every call first authorises: the transfer must be granted on this host
//! to the caller's host ([`Grants::authorise`]), and the grant must name the
//! server and database asked for. This module is where source-side errors
//! become `tonic::Status`. Reads only.

use std::sync::Arc;

use navette_proto::v1::mariadb_source_server::{MariadbSource, MariadbSourceServer};
use navette_proto::v1::{
    MariadbChecksumRequest, MariadbChecksums, MariadbDatabaseDescription, MariadbDatabaseRequest,
    MariadbDumpChunk,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::catalogue::{self, CatalogueError};
use super::client::ClientError;
use super::dump::{self, DumpError};
use crate::config::MariadbServer;
use crate::transfer::grants::{Grant, Grants};

/// How many chunks may wait for the network: with [`dump::CHUNK_BYTES`],
/// at most 2 MiB per dump in memory.
const DUMP_QUEUE: usize = 8;

/// `navette.v1.MariadbSource` on a source host.
#[derive(Clone, Debug)]
pub struct MariadbSourceService {
    /// Which transfers may read what, and by whom.
    grants: Arc<Grants>,
    /// This host's MariaDB servers, by the names grants use.
    servers: Vec<MariadbServer>,
}

impl MariadbSourceService {
    pub fn new(grants: Arc<Grants>, servers: Vec<MariadbServer>) -> MariadbSourceService {
        MariadbSourceService { grants, servers }
    }

    /// The tonic service, ready for `Server::add_service`.
    pub fn into_server(self) -> MariadbSourceServer<MariadbSourceService> {
        MariadbSourceServer::new(self)
    }

    /// The grant and the server for a call on `server`/`database`.
    fn authorise<T>(
        &self,
        request: &Request<T>,
        transfer_id: &str,
        server: &str,
        database: &str,
    ) -> Result<(Grant, MariadbServer), Status> {
        let grant = self.grants.authorise(request, transfer_id)?;
        if !grant.allows_mariadb(server, database) {
            tracing::warn!(
                message = "refused a MariaDB database outside the grant",
                transfer_id,
                server,
                database
            );
            return Err(Status::permission_denied(format!(
                "transfer {transfer_id} does not grant MariaDB database {database} on server {server}"
            )));
        }
        let config = self
            .servers
            .iter()
            .find(|candidate| candidate.name == server)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "this host has no MariaDB server named {server:?} (see the agent's [[mariadb]] configuration)"
                ))
            })?;
        Ok((grant, config))
    }
}

/// Client error codes meaning "the server is not there": cannot connect
/// through the socket (2002) or TCP (2003), connection gone (2006, 2013).
const UNREACHABLE: [&str; 4] = ["ERROR 2002", "ERROR 2003", "ERROR 2006", "ERROR 2013"];

fn client_status(error: &ClientError) -> Status {
    match error {
        ClientError::Spawn { .. } | ClientError::Timeout { .. } => {
            Status::unavailable(error.to_string())
        }
        ClientError::Failed { stderr, .. }
            if UNREACHABLE.iter().any(|code| stderr.contains(code)) =>
        {
            Status::unavailable(error.to_string())
        }
        _ => Status::internal(error.to_string()),
    }
}

fn catalogue_status(error: &CatalogueError) -> Status {
    match error {
        CatalogueError::Client(client) => client_status(client),
        CatalogueError::NoDatabase { .. } | CatalogueError::NoTable { .. } => {
            Status::not_found(error.to_string())
        }
    }
}

fn dump_status(error: &DumpError) -> Status {
    match error {
        DumpError::Catalogue(catalogue) => catalogue_status(catalogue),
        DumpError::Client(client) => client_status(client),
        DumpError::BadName(_) => Status::invalid_argument(error.to_string()),
        DumpError::Truncated { .. } => Status::aborted(error.to_string()),
        DumpError::Cancelled => Status::cancelled(error.to_string()),
        DumpError::NoBinlog { .. } => Status::failed_precondition(error.to_string()),
    }
}

#[tonic::async_trait]
impl MariadbSource for MariadbSourceService {
    async fn describe_database(
        &self,
        request: Request<MariadbDatabaseRequest>,
    ) -> Result<Response<MariadbDatabaseDescription>, Status> {
        let ask = request.get_ref();
        let (grant, server) =
            self.authorise(&request, &ask.transfer_id, &ask.server, &ask.database)?;
        let description = catalogue::describe(&server, &ask.database, &grant.account)
            .await
            .map_err(|error| {
                tracing::warn!(
                    message = "cannot describe a MariaDB database",
                    transfer_id = %ask.transfer_id,
                    server = %ask.server,
                    database = %ask.database,
                    %error
                );
                catalogue_status(&error)
            })?;
        Ok(Response::new(description))
    }

    type DumpStream = ReceiverStream<Result<MariadbDumpChunk, Status>>;

    async fn dump(
        &self,
        request: Request<MariadbDatabaseRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        let ask = request.get_ref().clone();
        let (_, server) = self.authorise(&request, &ask.transfer_id, &ask.server, &ask.database)?;
        // A dump holds a consistent snapshot on the server: it counts
        // against the grant's bound, and ends when the grant does.
        let (_, mut permit) = self.grants.open_session(&request, &ask.transfer_id)?;
        let (sender, receiver) = mpsc::channel(DUMP_QUEUE);
        tokio::spawn(async move {
            tracing::info!(
                message = "MariaDB dump started",
                transfer_id = %ask.transfer_id,
                server = %ask.server,
                database = %ask.database
            );
            let outcome = tokio::select! {
                outcome = dump::dump(&server, &ask.database, ask.snapshot_position, &sender) => outcome,
                why = permit.ended() => {
                    tracing::info!(
                        message = "MariaDB dump stopped: its grant ended",
                        transfer_id = %ask.transfer_id,
                        database = %ask.database,
                        why
                    );
                    let _ = sender
                        .send(Err(Status::permission_denied(format!(
                            "transfer {}: {why}; ask the controller for a new transfer",
                            ask.transfer_id
                        ))))
                        .await;
                    return;
                }
            };
            drop(permit);
            match outcome {
                Ok(()) => tracing::info!(
                    message = "MariaDB dump sent",
                    transfer_id = %ask.transfer_id,
                    server = %ask.server,
                    database = %ask.database
                ),
                Err(DumpError::Cancelled) => tracing::info!(
                    message = "MariaDB dump cancelled by the target",
                    transfer_id = %ask.transfer_id,
                    database = %ask.database
                ),
                Err(error) => {
                    tracing::warn!(
                        message = "MariaDB dump failed",
                        transfer_id = %ask.transfer_id,
                        server = %ask.server,
                        database = %ask.database,
                        %error
                    );
                    let _ = sender.send(Err(dump_status(&error))).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn checksum(
        &self,
        request: Request<MariadbChecksumRequest>,
    ) -> Result<Response<MariadbChecksums>, Status> {
        let ask = request.get_ref();
        let (_, server) = self.authorise(&request, &ask.transfer_id, &ask.server, &ask.database)?;
        let tables = catalogue::checksums(&server, &ask.database, &ask.tables)
            .await
            .map_err(|error| catalogue_status(&error))?;
        Ok(Response::new(MariadbChecksums { tables }))
    }
}
