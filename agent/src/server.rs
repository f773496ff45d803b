//! The agent's gRPC server: `navette.v1.Agent` for the controller, plus gRPC
//! health and reflection, on one listener that requires a client certificate.
//!
//! Owns the agent's authorisation policy: [`policy`] is the only place that
//! decides who may call what here, enforced by the shared role gate before
//! any handler runs; then a peer agent presenting a certificate the
//! controller revoked or superseded is refused
//! (`peer_identity::RefusedCertificateLayer`). The replication rpcs
//! (`replication::postgres`, `replication::mariadb`) are `Agent` rpcs like
//! the others: controller only. Handlers convert errors to `tonic::Status`
//! here and nowhere else (the PostgreSQL replication calls in
//! `server/replication.rs`, through `replication::postgres::status`).

use std::future::Future;
use std::net::SocketAddr;

use navette_proto::gate::{self, RoleGateLayer};
use navette_proto::identity::Role;
use navette_proto::tls::{self, ReloadableServerConfig};
use navette_proto::v1::agent_server::{self, Agent, AgentServer};
use navette_proto::v1::{
    AdmitPostgresSubscriberResponse, CatchUpFilesRequest, CatchUpFilesResponse, CatchUpMode,
    ChangeJournalRequest, ChangeJournalStatus, DrainMariadbReplicationRequest,
    DrainMariadbReplicationResponse, DrainPostgresReplicationRequest,
    DrainPostgresReplicationResponse, DropMariadbReplicationUserResponse, EnsureAddressRequest,
    EnsureAddressResponse, GetInventoryRequest, GrantTransferResponse, HostInventory,
    MariadbReplicationStatus, MariadbReplicationStatusRequest, MariadbReplicationUser,
    MariadbReplicationUserRequest, MariadbSourcePosition, MariadbSourcePositionRequest,
    PostgresReplicationLag, PostgresReplicationRequest, PostgresSequences,
    PreparePostgresReplicationResponse, RemoveCopyRequest, RemoveCopyResponse, RevokeGrantRequest,
    RevokeGrantResponse, SetPostgresApplyFlushRequest, SetPostgresApplyFlushResponse,
    SetSitesFrozenRequest, SetSitesFrozenResponse, StartChangeJournalRequest,
    StartMariadbReplicationRequest, StartSitesRequest, StartSitesResponse,
    StopChangeJournalResponse, StopMariadbReplicationRequest, StopMariadbReplicationResponse,
    StopSitesRequest, StopSitesResponse, SubscribePostgresRequest, SubscribePostgresResponse,
    TeardownPostgresReplicationRequest, TeardownPostgresReplicationResponse, TransferProgress,
    TransferSpec, WatchTransferRequest, WritePostgresSequencesRequest,
    WritePostgresSequencesResponse,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use std::sync::Arc;

mod cutover;
mod replication;
mod retire;

use crate::addresses::{self, AddressError, EnsureRequest};
use crate::config::MariadbServer;
use crate::ids::{self, FieldError, TransferId};
use crate::inventory::{Collector, LatestInventory};
use crate::peer_identity::{RefusedCertificateLayer, RefusedCertificates};
use crate::replication::mariadb::{self as mariadb_replication, ReplicationError};
use crate::sites::definitions::Site;
use crate::sites::fpm::Endpoints;
use crate::sites::{SiteHost, SitesError, StartRequest};
use crate::transfer::files::catchup::{CatchUp, CatchUpReport, Mode};
use crate::transfer::files::journals::JournalStatus;
use crate::transfer::files::{FileChangesService, FileSourceService};
use crate::transfer::grants::GrantError;
use crate::transfer::mariadb::MariadbSourceService;
use crate::transfer::postgres::PostgresSourceService;
use crate::transfer::target::{Following, TransferError, Transfers};

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("the gRPC server on {address} failed")]
    Serve {
        address: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Who may call what on an agent: health and reflection for any
/// authenticated caller, `navette.v1.Agent` for the controller only, nothing
/// else. The reason names the caller and what was required.
pub fn policy(path: &str, role: &Role) -> Result<(), String> {
    let service = gate::service_of(path);
    if gate::is_public_infrastructure(service) {
        return Ok(());
    }
    if service == agent_server::SERVICE_NAME {
        return match role {
            Role::Controller => Ok(()),
            other => Err(format!(
                "{service} is served to the controller only; the caller is {other}"
            )),
        };
    }
    if PEER_SERVICES.contains(&service) {
        // Which transfer a peer may read is checked per call, against the
        // grant the controller gave (`transfer::grants`).
        return match role {
            Role::Agent { .. } => Ok(()),
            other => Err(format!(
                "{service} is served to peer agents during a transfer; the caller is {other}"
            )),
        };
    }
    Err(format!(
        "{service:?} is not served by this agent (the caller is {role})"
    ))
}

/// The services a target agent pulls a transfer's data from.
pub const PEER_SERVICES: [&str; 4] = [
    "navette.v1.FileSource",
    "navette.v1.FileChanges",
    "navette.v1.PostgresSource",
    "navette.v1.MariadbSource",
];

/// The `navette.v1.Agent` handlers.
#[derive(Clone, Debug)]
pub struct AgentService {
    collector: Collector,
    /// Where a fresh inventory is published, so the heartbeat loop reports it.
    latest: LatestInventory,
    transfers: Arc<Transfers>,
    sites: SiteHost,
    /// The migrations' freezes, fences and forwards on this host.
    cutover: crate::cutover::Cutover,
}

impl AgentService {
    pub fn new(
        collector: Collector,
        latest: LatestInventory,
        transfers: Arc<Transfers>,
        sites: SiteHost,
    ) -> AgentService {
        let cutover = crate::cutover::Cutover::new(transfers.config());
        AgentService {
            collector,
            latest,
            transfers,
            sites,
            cutover,
        }
    }
}

/// The one place sites errors become statuses.
fn sites_status(error: SitesError) -> Status {
    let message = crate::error_chain(&error);
    match error {
        SitesError::Site(_) | SitesError::BadEndpoint { .. } => Status::invalid_argument(message),
        SitesError::DomainTaken { .. } => Status::already_exists(message),
        SitesError::UnknownCopy { .. } => Status::not_found(message),
        SitesError::NoSites { .. }
        | SitesError::NoHome { .. }
        | SitesError::Owner { .. }
        | SitesError::DocumentRoot { .. }
        | SitesError::NotRunning { .. }
        | SitesError::NoWebServerUser(_) => Status::failed_precondition(message),
        SitesError::WebServer(_) => Status::unavailable(message),
        SitesError::Fpm(_) | SitesError::Cgroup { .. } | SitesError::Io { .. } => {
            Status::internal(message)
        }
    }
}

/// Runs a blocking sites operation off the async workers.
async fn blocking<T: Send + 'static>(
    operation: impl FnOnce() -> Result<T, SitesError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(result) => result.map_err(sites_status),
        Err(error) => Err(Status::internal(format!(
            "the sites operation stopped unexpectedly: {error}"
        ))),
    }
}

/// The endpoints of a `StartSites` call, in the pool's terms.
fn endpoints_of(databases: &navette_proto::v1::SiteDatabaseEndpoints) -> Result<Endpoints, Status> {
    let port = |field: &str, value: u32| {
        u16::try_from(value)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| Status::invalid_argument(format!("{field}: {value} is not a port")))
    };
    let postgres = match databases.postgres_host.is_empty() {
        true => None,
        false => Some((
            databases.postgres_host.clone(),
            port("databases.postgres_port", databases.postgres_port)?,
        )),
    };
    let mariadb = match databases.mariadb_host.is_empty() {
        true => None,
        false => Some((
            databases.mariadb_host.clone(),
            port("databases.mariadb_port", databases.mariadb_port)?,
            databases.mariadb_socket.clone(),
        )),
    };
    Ok(Endpoints { postgres, mariadb })
}

/// A field of the call that breaks its rule (see [`crate::ids`]).
fn field_status(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The one place transfer errors become statuses.
fn transfer_status(error: TransferError) -> Status {
    match error {
        TransferError::Refused(message) => Status::failed_precondition(message),
        TransferError::Grant(GrantError::Conflict(id)) => Status::already_exists(format!(
            "transfer {id} was already granted with a different content"
        )),
        TransferError::Grant(GrantError::Revoked(id)) => Status::failed_precondition(format!(
            "transfer {id} was revoked on this host; a new copy needs a new transfer id"
        )),
        TransferError::Grant(GrantError::Io { .. }) => Status::internal(error.to_string()),
        TransferError::Grant(error) => Status::invalid_argument(error.to_string()),
        // Another copy holds what this one needs: worth retrying later.
        TransferError::Busy(message) => Status::aborted(message),
        TransferError::Copies(_) => Status::internal(error.to_string()),
        TransferError::Unknown(id) => Status::not_found(format!("no transfer {id} on this host")),
        TransferError::Io { .. } => Status::internal(error.to_string()),
    }
}

/// The one place replication errors become statuses.
fn replication_status(error: ReplicationError) -> Status {
    use crate::transfer::mariadb::ClientError;
    match error {
        ReplicationError::BadMigrationId(_) | ReplicationError::BadDatabase(_) => {
            Status::invalid_argument(error.to_string())
        }
        ReplicationError::OtherConnection { .. }
        | ReplicationError::PositionsDiffer { .. }
        | ReplicationError::TriggersForRowEvents { .. }
        | ReplicationError::NoConnection { .. }
        | ReplicationError::Broken { .. } => Status::failed_precondition(error.to_string()),
        ReplicationError::DrainTimeout { .. } => Status::deadline_exceeded(error.to_string()),
        ReplicationError::Client(ClientError::Spawn { .. } | ClientError::Timeout { .. }) => {
            Status::unavailable(error.to_string())
        }
        ReplicationError::Client(_) | ReplicationError::Random => {
            Status::internal(error.to_string())
        }
    }
}

impl AgentService {
    /// This host's MariaDB server `name`, from the agent's configuration.
    fn mariadb_server(&self, name: &str) -> Result<MariadbServer, Status> {
        self.transfers
            .config()
            .mariadb
            .iter()
            .find(|server| server.name == name)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "this host has no MariaDB server named {name:?} (see the agent's [[mariadb]] configuration)"
                ))
            })
    }
}

/// A connection's state as the API reports it.
fn to_status_proto(
    status: mariadb_replication::ReplicaStatus,
    backlog_transactions: u64,
) -> MariadbReplicationStatus {
    MariadbReplicationStatus {
        running: status.running(),
        connection: status.connection,
        applied_gtid_position: status.applied,
        backlog_transactions,
        seconds_behind: status.seconds_behind,
        relay_log_bytes: status.relay_log_bytes,
        last_error: status.last_error,
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_inventory(
        &self,
        request: Request<GetInventoryRequest>,
    ) -> Result<Response<HostInventory>, Status> {
        let mut measure = std::collections::HashSet::new();
        for account in &request.get_ref().measure_homes {
            if !crate::inventory::accounts::is_valid_account_name(account) {
                return Err(Status::invalid_argument(format!(
                    "measure_homes: {} is not an account name",
                    navette_proto::ids::quote(account)
                )));
            }
            measure.insert(account.clone());
        }
        match self.collector.collect_measuring(measure).await {
            Ok(collected) => {
                let inventory = collected.inventory.clone();
                self.latest.publish(collected);
                Ok(Response::new(inventory))
            }
            Err(error) => {
                let error = crate::error_chain(&error);
                tracing::warn!(message = "inventory requested but not collected", %error);
                Err(Status::unavailable(format!(
                    "inventory not collected: {error}"
                )))
            }
        }
    }

    async fn grant_transfer(
        &self,
        request: Request<TransferSpec>,
    ) -> Result<Response<GrantTransferResponse>, Status> {
        ids::check_spec("", request.get_ref()).map_err(field_status)?;
        self.transfers
            .grant(request.get_ref())
            .map_err(transfer_status)?;
        Ok(Response::new(GrantTransferResponse {}))
    }

    async fn start_transfer(
        &self,
        request: Request<TransferSpec>,
    ) -> Result<Response<TransferProgress>, Status> {
        ids::check_spec("", request.get_ref()).map_err(field_status)?;
        self.transfers
            .start(request.into_inner())
            .map(Response::new)
            .map_err(transfer_status)
    }

    type WatchTransferStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<TransferProgress, Status>> + Send>,
    >;

    async fn watch_transfer(
        &self,
        request: Request<WatchTransferRequest>,
    ) -> Result<Response<Self::WatchTransferStream>, Status> {
        TransferId::parse("transfer_id", &request.get_ref().transfer_id).map_err(field_status)?;
        let following = self
            .transfers
            .follow(&request.get_ref().transfer_id)
            .map_err(transfer_status)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            match following {
                Following::Finished(done) => {
                    let _ = sender.send(Ok(*done)).await;
                }
                Following::Running(progress) => {
                    let mut changed = progress.subscribe();
                    let mut sent_at = tokio::time::Instant::now();
                    loop {
                        let finished = progress.is_finished();
                        if sender.send(Ok(progress.snapshot())).await.is_err() || finished {
                            return;
                        }
                        // At most five progress updates a second, but the
                        // end is sent as soon as it comes.
                        let next = sent_at + std::time::Duration::from_millis(200);
                        loop {
                            if changed.changed().await.is_err() {
                                let _ = sender.send(Ok(progress.snapshot())).await;
                                return;
                            }
                            if progress.is_finished() || tokio::time::Instant::now() >= next {
                                break;
                            }
                        }
                        sent_at = tokio::time::Instant::now();
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn remove_copy(
        &self,
        request: Request<RemoveCopyRequest>,
    ) -> Result<Response<RemoveCopyResponse>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        ids::check_spec("spec.", &spec).map_err(field_status)?;
        let logins = self
            .transfers
            .remove_copy(&spec)
            .await
            .map_err(transfer_status)?;
        Ok(Response::new(RemoveCopyResponse {
            logins_dropped: logins.dropped,
            logins_kept: logins.kept,
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<RevokeGrantRequest>,
    ) -> Result<Response<RevokeGrantResponse>, Status> {
        TransferId::parse("transfer_id", &request.get_ref().transfer_id).map_err(field_status)?;
        let revoked = self
            .transfers
            .revoke_grant(&request.get_ref().transfer_id)
            .map_err(transfer_status)?;
        Ok(Response::new(RevokeGrantResponse { revoked }))
    }

    async fn start_sites(
        &self,
        request: Request<StartSitesRequest>,
    ) -> Result<Response<StartSitesResponse>, Status> {
        let request = request.into_inner();
        ids::AccountName::parse("account", &request.account).map_err(field_status)?;
        let copy_id = match request.copy_id.is_empty() {
            true => None,
            false => {
                TransferId::parse("copy_id", &request.copy_id).map_err(field_status)?;
                Some(request.copy_id.clone())
            }
        };
        let sites = request
            .sites
            .iter()
            .map(|site| Site::from_proto(&request.account, site))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                crate::metrics::sites_operation("start", "refused");
                tracing::warn!(message = "sites refused", account = %request.account, %error);
                sites_status(error.into())
            })?;
        let endpoints = request
            .databases
            .as_ref()
            .map(endpoints_of)
            .transpose()
            .inspect_err(|_| crate::metrics::sites_operation("start", "refused"))?;
        let start = StartRequest {
            account: request.account,
            copy_id,
            sites,
            endpoints,
        };
        let sites = self.sites.clone();
        let started = blocking(move || sites.start(start)).await?;
        Ok(Response::new(StartSitesResponse {
            sites: started.sites.iter().map(Site::to_proto).collect(),
            already_running: started.already_running,
        }))
    }

    async fn stop_sites(
        &self,
        request: Request<StopSitesRequest>,
    ) -> Result<Response<StopSitesResponse>, Status> {
        let account = request.into_inner().account;
        ids::AccountName::parse("account", &account).map_err(field_status)?;
        let sites = self.sites.clone();
        let stopped = blocking(move || sites.stop(&account)).await?;
        Ok(Response::new(StopSitesResponse { stopped }))
    }

    async fn set_sites_frozen(
        &self,
        request: Request<SetSitesFrozenRequest>,
    ) -> Result<Response<SetSitesFrozenResponse>, Status> {
        let request = request.into_inner();
        ids::AccountName::parse("account", &request.account).map_err(field_status)?;
        let sites = self.sites.clone();
        let longest = std::time::Duration::from_millis(u64::from(request.max_frozen_ms));
        let took =
            blocking(move || sites.set_frozen(&request.account, request.frozen, longest)).await?;
        Ok(Response::new(SetSitesFrozenResponse {
            took_ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
        }))
    }

    async fn prepare_postgres_replication(
        &self,
        request: Request<PostgresReplicationRequest>,
    ) -> Result<Response<PreparePostgresReplicationResponse>, Status> {
        let config = self.transfers.config();
        replication::prepare(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn admit_postgres_subscriber(
        &self,
        request: Request<PostgresReplicationRequest>,
    ) -> Result<Response<AdmitPostgresSubscriberResponse>, Status> {
        let config = self.transfers.config();
        replication::admit(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn subscribe_postgres(
        &self,
        request: Request<SubscribePostgresRequest>,
    ) -> Result<Response<SubscribePostgresResponse>, Status> {
        let config = self.transfers.config();
        replication::subscribe(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_postgres_apply_flush(
        &self,
        request: Request<SetPostgresApplyFlushRequest>,
    ) -> Result<Response<SetPostgresApplyFlushResponse>, Status> {
        let config = self.transfers.config();
        replication::set_apply_flush(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_postgres_replication_lag(
        &self,
        request: Request<PostgresReplicationRequest>,
    ) -> Result<Response<PostgresReplicationLag>, Status> {
        let config = self.transfers.config();
        replication::lag(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn drain_postgres_replication(
        &self,
        request: Request<DrainPostgresReplicationRequest>,
    ) -> Result<Response<DrainPostgresReplicationResponse>, Status> {
        let config = self.transfers.config();
        replication::drain(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn read_postgres_sequences(
        &self,
        request: Request<PostgresReplicationRequest>,
    ) -> Result<Response<PostgresSequences>, Status> {
        let config = self.transfers.config();
        replication::read_sequences(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn write_postgres_sequences(
        &self,
        request: Request<WritePostgresSequencesRequest>,
    ) -> Result<Response<WritePostgresSequencesResponse>, Status> {
        let config = self.transfers.config();
        replication::write_sequences(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn teardown_postgres_replication(
        &self,
        request: Request<TeardownPostgresReplicationRequest>,
    ) -> Result<Response<TeardownPostgresReplicationResponse>, Status> {
        let config = self.transfers.config();
        replication::teardown(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn ensure_mariadb_replication_user(
        &self,
        request: Request<MariadbReplicationUserRequest>,
    ) -> Result<Response<MariadbReplicationUser>, Status> {
        let ask = request.into_inner();
        let server = self.mariadb_server(&ask.server)?;
        // A host part with a wildcard would let any host in.
        let address: std::net::IpAddr = ask.target_address.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "target_address {:?} is not an IP address (the target host's address)",
                ask.target_address
            ))
        })?;
        let user = mariadb_replication::ensure_source_user(
            &server,
            &ask.migration_id,
            &address.to_string(),
        )
        .await
        .map_err(replication_status)?;
        Ok(Response::new(MariadbReplicationUser {
            user: user.user,
            host: user.host,
            password: user.password,
        }))
    }

    async fn drop_mariadb_replication_user(
        &self,
        request: Request<MariadbReplicationUserRequest>,
    ) -> Result<Response<DropMariadbReplicationUserResponse>, Status> {
        let ask = request.into_inner();
        let server = self.mariadb_server(&ask.server)?;
        let dropped = mariadb_replication::drop_source_user(&server, &ask.migration_id)
            .await
            .map_err(replication_status)?;
        Ok(Response::new(DropMariadbReplicationUserResponse {
            dropped,
        }))
    }

    async fn get_mariadb_source_position(
        &self,
        request: Request<MariadbSourcePositionRequest>,
    ) -> Result<Response<MariadbSourcePosition>, Status> {
        let server = self.mariadb_server(&request.get_ref().server)?;
        let readiness = mariadb_replication::row_binlog_readiness(&server)
            .await
            .map_err(|error| replication_status(error.into()))?;
        let gtid_position = mariadb_replication::source_position(&server)
            .await
            .map_err(replication_status)?;
        Ok(Response::new(MariadbSourcePosition {
            gtid_position,
            row_binlog_ready: readiness.ready,
            row_binlog_reason: readiness.reason,
        }))
    }

    async fn start_mariadb_replication(
        &self,
        request: Request<StartMariadbReplicationRequest>,
    ) -> Result<Response<MariadbReplicationStatus>, Status> {
        let ask = request.into_inner();
        let server = self.mariadb_server(&ask.server)?;
        let source_port = u16::try_from(ask.source_port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!("source_port {} is not a port", ask.source_port))
            })?;
        if ask.source_host.is_empty() || ask.user.is_empty() {
            return Err(Status::invalid_argument(
                "source_host and user are required (EnsureMariadbReplicationUser on the source gives the user)",
            ));
        }
        if ask.databases.is_empty() {
            return Err(Status::invalid_argument(
                "databases is empty: name the account's databases to replicate",
            ));
        }
        let spec = mariadb_replication::ReplicaSpec {
            migration: ask.migration_id,
            source_host: ask.source_host,
            source_port,
            user: ask.user,
            password: ask.password,
            snapshot_positions: ask.snapshot_gtid_positions,
            databases: ask.databases,
            source_ca: (!ask.source_ca_path.is_empty()).then(|| ask.source_ca_path.into()),
        };
        let status = mariadb_replication::start_replica(&server, &spec)
            .await
            .map_err(replication_status)?;
        Ok(Response::new(to_status_proto(status, 0)))
    }

    async fn get_mariadb_replication_status(
        &self,
        request: Request<MariadbReplicationStatusRequest>,
    ) -> Result<Response<MariadbReplicationStatus>, Status> {
        let ask = request.into_inner();
        let server = self.mariadb_server(&ask.server)?;
        let backlog =
            mariadb_replication::backlog(&server, &ask.migration_id, &ask.source_gtid_position)
                .await
                .map_err(replication_status)?;
        Ok(Response::new(to_status_proto(
            backlog.status,
            backlog.transactions,
        )))
    }

    async fn drain_mariadb_replication(
        &self,
        request: Request<DrainMariadbReplicationRequest>,
    ) -> Result<Response<DrainMariadbReplicationResponse>, Status> {
        let ask = request.into_inner();
        let server = self.mariadb_server(&ask.server)?;
        if ask.source_gtid_position.is_empty() || ask.timeout_ms == 0 {
            return Err(Status::invalid_argument(
                "source_gtid_position (GetMariadbSourcePosition after the fence) and timeout_ms are required",
            ));
        }
        let waited = mariadb_replication::drain(
            &server,
            &ask.migration_id,
            &ask.source_gtid_position,
            std::time::Duration::from_millis(u64::from(ask.timeout_ms)),
        )
        .await
        .map_err(replication_status)?;
        Ok(Response::new(DrainMariadbReplicationResponse {
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn stop_mariadb_replication(
        &self,
        request: Request<StopMariadbReplicationRequest>,
    ) -> Result<Response<StopMariadbReplicationResponse>, Status> {
        let ask = request.into_inner();
        let server = self.mariadb_server(&ask.server)?;
        let removed = mariadb_replication::teardown_replica(&server, &ask.migration_id)
            .await
            .map_err(replication_status)?;
        Ok(Response::new(StopMariadbReplicationResponse { removed }))
    }

    async fn freeze_account(
        &self,
        request: Request<navette_proto::v1::FreezeAccountRequest>,
    ) -> Result<Response<navette_proto::v1::FreezeAccountResponse>, Status> {
        cutover::freeze(&self.cutover, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn thaw_account(
        &self,
        request: Request<navette_proto::v1::ThawAccountRequest>,
    ) -> Result<Response<navette_proto::v1::ThawAccountResponse>, Status> {
        cutover::thaw(&self.cutover, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn fence_databases(
        &self,
        request: Request<navette_proto::v1::FenceDatabasesRequest>,
    ) -> Result<Response<navette_proto::v1::FenceDatabasesResponse>, Status> {
        cutover::fence(&self.cutover, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn switch_databases(
        &self,
        request: Request<navette_proto::v1::SwitchDatabasesRequest>,
    ) -> Result<Response<navette_proto::v1::SwitchDatabasesResponse>, Status> {
        cutover::switch(&self.cutover, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn release_databases(
        &self,
        request: Request<navette_proto::v1::ReleaseDatabasesRequest>,
    ) -> Result<Response<navette_proto::v1::ReleaseDatabasesResponse>, Status> {
        cutover::release(&self.cutover, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn forward_sites(
        &self,
        request: Request<navette_proto::v1::ForwardSitesRequest>,
    ) -> Result<Response<navette_proto::v1::ForwardSitesResponse>, Status> {
        cutover::forward(&self.cutover, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn retire_account(
        &self,
        request: Request<navette_proto::v1::RetireAccountRequest>,
    ) -> Result<Response<navette_proto::v1::RetireAccountResponse>, Status> {
        retire::retire_account(&self.cutover, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn unforward_sites(
        &self,
        request: Request<navette_proto::v1::UnforwardSitesRequest>,
    ) -> Result<Response<navette_proto::v1::UnforwardSitesResponse>, Status> {
        cutover::unforward(&self.cutover, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn wipe_transit(
        &self,
        request: Request<navette_proto::v1::WipeTransitRequest>,
    ) -> Result<Response<navette_proto::v1::WipeTransitResponse>, Status> {
        use crate::transit::wipe::{self, WipeError};
        let ask = request.into_inner();
        TransferId::parse("allocation_id", &ask.allocation_id).map_err(field_status)?;
        let wiped = wipe::wipe(&self.transfers, &self.sites, &ask.allocation_id, &ask.addresses)
            .await
            .map_err(|error| {
                tracing::warn!(message = "transit wipe did not finish", allocation_id = %ask.allocation_id, %error);
                match error {
                    WipeError::BadAllocationId(_) => Status::invalid_argument(error.to_string()),
                    WipeError::AddressesHeld(_) => Status::failed_precondition(error.to_string()),
                    WipeError::Copy {
                        source: TransferError::Refused(_),
                        ..
                    } => Status::failed_precondition(error.to_string()),
                    WipeError::Addresses(_) | WipeError::Sites { .. } | WipeError::Copy { .. } => {
                        Status::internal(error.to_string())
                    }
                }
            })?;
        Ok(Response::new(navette_proto::v1::WipeTransitResponse {
            copies_removed: wiped.copies_removed,
            sites_stopped: wiped.sites_stopped,
            logins_dropped: wiped.logins_dropped,
            logins_kept: wiped.logins_kept,
        }))
    }

    async fn ensure_address(
        &self,
        request: Request<EnsureAddressRequest>,
    ) -> Result<Response<EnsureAddressResponse>, Status> {
        let ask = request.into_inner();
        let request = EnsureRequest::parse(
            &ask.operation_id,
            &ask.address,
            ask.prefix_length,
            ask.held,
            ask.announce,
        )
        .map_err(address_status)?;
        let config = self.transfers.config();
        let ensured = {
            let request = request.clone();
            match tokio::task::spawn_blocking(move || addresses::ensure(&config, &request)).await {
                Ok(result) => result.map_err(address_status)?,
                Err(error) => {
                    return Err(Status::internal(format!(
                        "the address operation stopped unexpectedly: {error}"
                    )));
                }
            }
        };
        if let Some(repeats) = ensured.repeats.clone() {
            tokio::task::spawn_blocking(move || repeats.send());
        }
        if ensured.changed {
            // The inventory lists the host's addresses: report the change
            // now rather than at the next inventory tick.
            let (collector, latest) = (self.collector.clone(), self.latest.clone());
            tokio::spawn(async move {
                match collector.collect().await {
                    Ok(collected) => latest.publish(collected),
                    Err(error) => {
                        tracing::warn!(message = "inventory not refreshed after an address change", error = %crate::error_chain(&error));
                    }
                }
            });
        }
        Ok(Response::new(EnsureAddressResponse {
            operation_id: request.operation_id,
            changed: ensured.changed,
            interface: ensured.interface,
            announcements_sent: ensured.announcements_sent,
        }))
    }

    async fn start_change_journal(
        &self,
        request: Request<StartChangeJournalRequest>,
    ) -> Result<Response<ChangeJournalStatus>, Status> {
        let ask = request.into_inner();
        TransferId::parse("migration_id", &ask.migration_id).map_err(field_status)?;
        ids::AccountName::parse("account", &ask.account).map_err(field_status)?;
        let status = self
            .transfers
            .start_journal(&ask.migration_id, &ask.account)
            .await
            .map_err(transfer_status)?;
        Ok(Response::new(journal_status(status)))
    }

    async fn get_change_journal(
        &self,
        request: Request<ChangeJournalRequest>,
    ) -> Result<Response<ChangeJournalStatus>, Status> {
        let migration_id = request.into_inner().migration_id;
        TransferId::parse("migration_id", &migration_id).map_err(field_status)?;
        let status = match self.transfers.journal_status(&migration_id) {
            Some(status) => journal_status(status),
            None => ChangeJournalStatus {
                migration_id,
                journal_missing: true,
                ..ChangeJournalStatus::default()
            },
        };
        Ok(Response::new(status))
    }

    async fn stop_change_journal(
        &self,
        request: Request<ChangeJournalRequest>,
    ) -> Result<Response<StopChangeJournalResponse>, Status> {
        let migration_id = request.into_inner().migration_id;
        TransferId::parse("migration_id", &migration_id).map_err(field_status)?;
        let stopped = self.transfers.stop_journal(&migration_id);
        Ok(Response::new(StopChangeJournalResponse { stopped }))
    }

    async fn catch_up_files(
        &self,
        request: Request<CatchUpFilesRequest>,
    ) -> Result<Response<CatchUpFilesResponse>, Status> {
        let ask = request.into_inner();
        let spec = ask
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        ids::check_spec("spec.", &spec).map_err(field_status)?;
        TransferId::parse("journal_id", &ask.journal_id).map_err(field_status)?;
        let pass = CatchUp {
            journal_id: ask.journal_id,
            journal_epoch: ask.journal_epoch,
            applied_sequence: ask.applied_sequence,
            allow_full_comparison: ask.allow_full_comparison,
            defer_sync: ask.defer_sync,
        };
        let report = self
            .transfers
            .catch_up_files(spec, pass)
            .await
            .map_err(transfer_status)?;
        Ok(Response::new(catch_up_response(report)))
    }

    async fn verify_rows(
        &self,
        request: Request<navette_proto::v1::VerifyRowsRequest>,
    ) -> Result<Response<navette_proto::v1::VerifyRowsResponse>, Status> {
        let config = self.transfers.config();
        replication::verify_rows(&config, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn verify_mariadb_rows(
        &self,
        request: Request<navette_proto::v1::VerifyMariadbRowsRequest>,
    ) -> Result<Response<navette_proto::v1::VerifyMariadbRowsResponse>, Status> {
        let ask = request.into_inner();
        TransferId::parse("migration_id", &ask.migration_id).map_err(field_status)?;
        let server = self.mariadb_server(&ask.server)?;
        let answer = if ask.compare {
            crate::verify::mariadb_rows::target_compare(&server, &ask).await
        } else {
            crate::verify::mariadb_rows::source_round(&server, &ask).await
        };
        answer
            .map(Response::new)
            .map_err(|error| crate::verify::mariadb_rows::status(&error))
    }

    async fn verify_files(
        &self,
        request: Request<navette_proto::v1::VerifyFilesRequest>,
    ) -> Result<Response<navette_proto::v1::VerifyFilesResponse>, Status> {
        let ask = request.into_inner();
        TransferId::parse("migration_id", &ask.migration_id).map_err(field_status)?;
        if !crate::ids::AccountName::is_valid(&ask.account) {
            return Err(Status::invalid_argument(format!(
                "account: {:?} is not an account name",
                ask.account
            )));
        }
        let home = self.transfers.target_home(&ask.account);
        let answer = tokio::task::spawn_blocking(move || crate::verify::files::answer(&home, &ask))
            .await
            .map_err(|error| Status::internal(format!("verifying the files: {error}")))?
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(answer))
    }
}

/// The one place address errors become statuses.
fn address_status(error: AddressError) -> Status {
    let message = crate::error_chain(&error);
    match error {
        AddressError::BadOperationId(_) | AddressError::BadAddress { .. } => {
            Status::invalid_argument(message)
        }
        AddressError::NoInterface { .. } | AddressError::Interface { .. } => {
            Status::failed_precondition(message)
        }
        AddressError::Netlink { .. } | AddressError::Announce(_) => Status::internal(message),
    }
}

fn journal_status(status: JournalStatus) -> ChangeJournalStatus {
    ChangeJournalStatus {
        migration_id: status.migration_id,
        account: status.account,
        epoch: status.epoch,
        journal_missing: false,
        watched_directories: status.watched_directories,
        pending_paths: status.pending_paths,
        untrusted: status.untrusted.unwrap_or_default(),
    }
}

fn catch_up_response(report: CatchUpReport) -> CatchUpFilesResponse {
    let mode = match report.mode {
        Mode::Journal => CatchUpMode::Journal,
        Mode::FullComparison => CatchUpMode::FullComparison,
        Mode::FullComparisonNeeded => CatchUpMode::FullComparisonNeeded,
    };
    CatchUpFilesResponse {
        mode: mode.into(),
        untrusted: report.untrusted.unwrap_or_default(),
        journal_missing: report.journal_missing,
        journal_epoch: report.journal_epoch,
        applied_sequence: report.applied_sequence,
        entries_compared: report.entries_compared,
        files_sent: report.files.files_sent,
        bytes_sent: report.files.bytes_sent,
        deleted: report.files.deleted,
        metadata_updated: report.files.metadata_updated,
        links_made: report.files.links_made,
        set_id_removed: report.files.set_id_removed,
        set_id_examples: report.files.set_id_examples,
        elapsed_ms: u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        changed_paths: report
            .changed
            .iter()
            .map(|path| path.as_bytes().to_vec())
            .collect(),
        entries_synced: report.synced,
        files_unsynced: report.unsynced,
    }
}

/// Binds the agent's listener.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind { address, source })
}

/// Serves on `listener` until `shutdown` completes. New connections use the
/// newest certificate in `tls_config`.
pub async fn serve(
    listener: TcpListener,
    tls_config: ReloadableServerConfig,
    service: AgentService,
    refused: RefusedCertificates,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let address = listener.local_addr().map_err(|source| ServerError::Bind {
        address: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<AgentService>>()
        .await;
    let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .map_err(ServerError::Reflection)?;
    let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .map_err(ServerError::Reflection)?;
    let incoming = tls::incoming(listener, tls_config, "agent");
    let policy: gate::Policy = std::sync::Arc::new(policy);
    let grants = service.transfers.grants();
    let config = service.transfers.config();
    let mariadb_source = MariadbSourceService::new(grants.clone(), config.mariadb.clone());
    let file_source = FileSourceService::new(grants.clone());
    let file_changes = FileChangesService::new(grants.clone(), service.transfers.journals());
    let postgres_source = PostgresSourceService::new(grants.clone(), config.postgresql.clone());
    tonic::transport::Server::builder()
        .layer(RoleGateLayer::new(policy))
        .layer(RefusedCertificateLayer::new(refused))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AgentServer::new(service))
        .add_service(mariadb_source.into_server())
        .add_service(file_source.into_server())
        .add_service(file_changes.into_server())
        .add_service(postgres_source.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|source| ServerError::Serve { address, source })
}

/// Reflection knowing every Navette type, but listing only what this
/// listener serves (not the controller's services, whose descriptors share
/// the file set).
fn reflection(reflection_service: &str) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(navette_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(agent_server::SERVICE_NAME)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name(reflection_service);
    for peer in PEER_SERVICES {
        builder = builder.with_service_name(peer);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_may_call_the_agent_service() {
        assert!(policy("/navette.v1.Agent/GetInventory", &Role::Controller).is_ok());
    }

    #[test]
    fn a_peer_agent_is_refused_with_who_and_why() {
        let peer = Role::Agent {
            host_id: "shared-2".into(),
        };
        let reason = policy("/navette.v1.Agent/GetInventory", &peer).expect_err("peer agent");
        assert_eq!(
            reason,
            "navette.v1.Agent is served to the controller only; the caller is agent of host shared-2"
        );
        assert!(policy("/navette.v1.Agent/GetInventory", &Role::Operator).is_err());
        // The replication rpcs: the controller only, like every Agent rpc.
        for rpc in [
            "StartMariadbReplication",
            "EnsureMariadbReplicationUser",
            "StartChangeJournal",
            "CatchUpFiles",
        ] {
            let path = format!("/navette.v1.Agent/{rpc}");
            assert!(policy(&path, &Role::Controller).is_ok());
            assert!(policy(&path, &peer).is_err());
            assert!(policy(&path, &Role::Panel).is_err());
        }
        assert!(policy("/navette.v1.Agent/GetInventory", &Role::Panel).is_err());
        // A journal's changes are read by the target agent, per grant.
        assert!(policy("/navette.v1.FileChanges/ListChanges", &peer).is_ok());
        assert!(policy("/navette.v1.FileChanges/ListChanges", &Role::Panel).is_err());
    }

    #[test]
    fn health_and_reflection_are_open_to_every_role() {
        for role in [Role::Panel, Role::Operator, Role::Controller] {
            assert!(policy("/grpc.health.v1.Health/Check", &role).is_ok());
            assert!(
                policy(
                    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                    &role
                )
                .is_ok()
            );
            assert!(
                policy(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                    &role
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn other_services_are_refused() {
        let reason = policy("/navette.v1.Hosts/ListHosts", &Role::Controller).expect_err("hosts");
        assert!(reason.contains("navette.v1.Hosts"), "{reason}");
        assert!(reason.contains("controller"), "{reason}");
    }
}
