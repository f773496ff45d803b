//! What the PostgreSQL copy tests (and the benchmark) share: a throwaway
//! CA and agent certificates, the real `PostgresSourceService` served over
//! mutual TLS behind the role gate inside a rig host, grants, and `pull`
//! run inside another rig host.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use navette_agent::config::PostgresqlServer;
use navette_agent::transfer::grants::{Grant, GrantedDatabase, Grants};
use navette_agent::transfer::postgres::{PostgresReport, PullOptions, pull};
use navette_agent::transfer::progress::Progress;
use navette_proto::gate::{self, RoleGateLayer};
use navette_proto::identity::{Role, agent_server_name};
use navette_proto::tls::{self, ClientAuth, Identity, ReloadableServerConfig};
use navette_proto::v1::DatabaseCopy;
use navette_proto::v1::postgres_source_server::{PostgresSource, PostgresSourceServer};
use navette_tests::{Netns, Postgres};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The port source agents serve their peer service on.
pub const PEER_PORT: u16 = 7445;

/// A throwaway CA that issues agent certificates.
pub struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_pem: String,
}

impl Pki {
    pub fn new() -> anyhow::Result<Pki> {
        tls::install_crypto_provider();
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "navette test CA");
        ca_params.distinguished_name = name;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        Ok(Pki {
            ca_params,
            ca_key,
            ca_pem,
        })
    }

    /// The certificate and key of the agent of `host_id`: role URI SAN
    /// `spiffe://navette/agent/<host>` and the DNS name peers verify.
    pub fn agent(&self, host_id: &str) -> anyhow::Result<Identity> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![agent_server_name(host_id)])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("navette agent {host_id}"));
        params.distinguished_name = name;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let role = Role::Agent {
            host_id: host_id.to_owned(),
        };
        params
            .subject_alt_names
            .push(SanType::URI(role.uri().try_into()?));
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Identity::from_pem(
            &cert.pem(),
            &key.serialize_pem(),
            host_id,
        )?)
    }

    pub fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        Ok(tls::ca_roots(&self.ca_pem, "test CA")?)
    }
}

/// Runs an async block inside `host` on a multi-threaded runtime, as the
/// agent runs (its worker threads are started from a thread that entered
/// the namespace, so their sockets belong to it too).
pub fn run_multi_threaded<F, Fut, T>(host: &Netns, make_future: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send,
{
    host.in_namespace(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("building a tokio runtime")?;
        runtime.block_on(make_future())
    })?
}

/// The agent configuration's view of a rig server (named `main`), with
/// its version's client programs.
pub fn server_config(postgres: &Postgres) -> PostgresqlServer {
    let version = postgres.version();
    PostgresqlServer {
        name: "main".to_owned(),
        host: postgres.socket_dir().display().to_string(),
        port: postgres.port(),
        user: "postgres".to_owned(),
        password: None,
        public_address: None,
        bin_dir: Some(version.bin_dir()),
        library_path: version.ld_library_path(),
    }
}

/// Grants on the source for one transfer: `databases` of server `main` to
/// `target_host`.
pub fn grants(
    state_dir: &Path,
    transfer_id: &str,
    target_host: &str,
    databases: &[&str],
) -> anyhow::Result<Arc<Grants>> {
    let grants = Grants::open(state_dir)?;
    grants.insert(Grant {
        transfer_id: transfer_id.to_owned(),
        account: "account".to_owned(),
        target_host_id: target_host.to_owned(),
        home: None,
        postgresql: databases
            .iter()
            .map(|db| GrantedDatabase {
                server: "main".to_owned(),
                database: (*db).to_owned(),
            })
            .collect(),
        mariadb: vec![],
        protocol_version: 0,
    })?;
    Ok(Arc::new(grants))
}

/// Peer services may be called by agents; the grants decide the rest.
fn peer_policy(path: &str, role: &Role) -> Result<(), String> {
    let service = gate::service_of(path);
    match role {
        Role::Agent { .. } if service == "navette.v1.PostgresSource" => Ok(()),
        other => Err(format!("{service} is not served to {other}")),
    }
}

/// The source agent's peer service, running in a rig host until dropped.
pub struct SourceAgent {
    pub address: SocketAddr,
    pub host_id: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl SourceAgent {
    /// Serves `service` on `<host address>:PEER_PORT` inside `host`, with
    /// the agent certificate of `host`, requiring client certificates.
    /// Normally the real `PostgresSourceService`; a test of what a target
    /// accepts may wrap it to play a compromised source.
    pub fn start<S: PostgresSource>(
        host: &Netns,
        address: Ipv4Addr,
        service: S,
        pki: &Pki,
    ) -> anyhow::Result<SourceAgent> {
        let identity = pki.agent(host.host())?;
        let roots = pki.roots()?;
        let config = tls::server_config(roots, identity, ClientAuth::Required)?;
        let socket = SocketAddr::from((address, PEER_PORT));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let netns = host.clone();
        let thread = std::thread::spawn(move || {
            run_multi_threaded(&netns, || async move {
                let listener = match tokio::net::TcpListener::bind(socket).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = ready.send(Err(anyhow::anyhow!("binding {socket}: {error}")));
                        return Ok(());
                    }
                };
                let _ = ready.send(Ok(()));
                let incoming = tls::incoming(listener, ReloadableServerConfig::new(config), "peer");
                tonic::transport::Server::builder()
                    .layer(RoleGateLayer::new(Arc::new(peer_policy)))
                    .add_service(PostgresSourceServer::new(service))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .context("serving the peer service")
            })
        });
        is_ready
            .recv_timeout(Duration::from_secs(10))
            .context("the source agent did not start")??;
        Ok(SourceAgent {
            address: socket,
            host_id: host.host().to_owned(),
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for SourceAgent {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a target needs to pull from a source agent.
pub struct PullSpec<'a> {
    pub target: &'a Netns,
    /// The certificate the target presents (normally its own host's).
    pub identity: Identity,
    pub pki: &'a Pki,
    pub source: &'a SourceAgent,
    pub transfer_id: &'a str,
    pub copies: Vec<DatabaseCopy>,
    pub target_servers: Vec<PostgresqlServer>,
    pub options: PullOptions,
}

/// Runs `pull` inside the target host; the report and the final progress.
pub fn pull_in(
    spec: PullSpec<'_>,
) -> anyhow::Result<(
    Result<PostgresReport, navette_agent::transfer::postgres::PostgresCopyError>,
    navette_proto::v1::TransferProgress,
)> {
    let roots = spec.pki.roots()?;
    let config = tls::client_config(roots, Some(spec.identity))?;
    let source = (spec.source.address, agent_server_name(&spec.source.host_id));
    run_multi_threaded(spec.target, || async move {
        let channel = tls::channel(source.0, &source.1, config)?;
        let progress = Progress::new(spec.transfer_id);
        let result = pull(
            channel,
            spec.transfer_id,
            &spec.copies,
            &spec.target_servers,
            &spec.options,
            &progress,
        )
        .await;
        Ok((result, progress.snapshot()))
    })
}

/// One database of server `main` to the same name on server `main`.
pub fn same_name(database: &str) -> DatabaseCopy {
    DatabaseCopy {
        source_server: "main".to_owned(),
        source_database: database.to_owned(),
        target_server: "main".to_owned(),
        target_database: database.to_owned(),
    }
}

/// The real source service, altered as a flaky link or a compromised source
/// agent would: each snapshot it is asked to hold is counted, each
/// description is passed through `tamper` before it is sent, and with
/// `cut_copies` every table's copy fails as a cut link does.
pub struct AlteredSource {
    pub inner: navette_agent::transfer::postgres::PostgresSourceService,
    /// Snapshots asked for.
    pub snapshots: Arc<std::sync::atomic::AtomicU32>,
    pub tamper: fn(&mut navette_proto::v1::PostgresDatabaseDescription),
    pub cut_copies: bool,
}

impl AlteredSource {
    /// `inner` as it is: no tampering, no cut.
    pub fn new(inner: navette_agent::transfer::postgres::PostgresSourceService) -> AlteredSource {
        AlteredSource {
            inner,
            snapshots: Arc::default(),
            tamper: |_| {},
            cut_copies: false,
        }
    }
}

#[tonic::async_trait]
impl PostgresSource for AlteredSource {
    type HoldSnapshotStream =
        <navette_agent::transfer::postgres::PostgresSourceService as PostgresSource>::HoldSnapshotStream;
    type DumpSchemaStream =
        <navette_agent::transfer::postgres::PostgresSourceService as PostgresSource>::DumpSchemaStream;
    type CopyTableStream =
        <navette_agent::transfer::postgres::PostgresSourceService as PostgresSource>::CopyTableStream;
    type CopyLargeObjectsStream =
        <navette_agent::transfer::postgres::PostgresSourceService as PostgresSource>::CopyLargeObjectsStream;

    async fn hold_snapshot(
        &self,
        request: tonic::Request<navette_proto::v1::HoldSnapshotRequest>,
    ) -> Result<tonic::Response<Self::HoldSnapshotStream>, tonic::Status> {
        self.snapshots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.hold_snapshot(request).await
    }

    async fn describe_database(
        &self,
        request: tonic::Request<navette_proto::v1::DescribeDatabaseRequest>,
    ) -> Result<tonic::Response<navette_proto::v1::PostgresDatabaseDescription>, tonic::Status>
    {
        let mut answer = self.inner.describe_database(request).await?;
        (self.tamper)(answer.get_mut());
        Ok(answer)
    }

    async fn dump_schema(
        &self,
        request: tonic::Request<navette_proto::v1::DumpSchemaRequest>,
    ) -> Result<tonic::Response<Self::DumpSchemaStream>, tonic::Status> {
        self.inner.dump_schema(request).await
    }

    async fn copy_table(
        &self,
        request: tonic::Request<navette_proto::v1::CopyTableRequest>,
    ) -> Result<tonic::Response<Self::CopyTableStream>, tonic::Status> {
        if self.cut_copies {
            return Err(tonic::Status::unavailable("the link was cut"));
        }
        self.inner.copy_table(request).await
    }

    async fn checksum_table(
        &self,
        request: tonic::Request<navette_proto::v1::ChecksumTableRequest>,
    ) -> Result<tonic::Response<navette_proto::v1::TableChecksum>, tonic::Status> {
        self.inner.checksum_table(request).await
    }

    async fn copy_large_objects(
        &self,
        request: tonic::Request<navette_proto::v1::CopyLargeObjectsRequest>,
    ) -> Result<tonic::Response<Self::CopyLargeObjectsStream>, tonic::Status> {
        self.inner.copy_large_objects(request).await
    }
}
