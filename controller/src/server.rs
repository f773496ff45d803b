//! The controller's two listeners and its background tasks.
//!
//! - the API listener: mutual TLS required, every RPC through the role gate
//!   (`api::policy`) and, for agents, the check that their certificate is
//!   their host's current one (`api::policy::AgentCertificateLayer`); panel, operator and agent-gateway services, health,
//!   reflection v1 and v1alpha (grpcurl 1.8 asks for v1alpha);
//! - the enrolment listener: TLS without client certificates, serving only
//!   enrolment, health and reflection. Client authentication is never
//!   optional on the API listener.
//!
//! Background tasks: liveness (marks silent hosts unreachable), the host
//! change listener, the renewal of the controller's own certificate, the
//! workflow engine's runner, and the transit queues' periodic service.

use std::sync::Arc;
use std::time::Duration;

use navette_proto::gate::RoleGateLayer;
use navette_proto::v1::accounts_server::AccountsServer;
use navette_proto::v1::addresses_server::AddressesServer;
use navette_proto::v1::agent_gateway_server::AgentGatewayServer;
use navette_proto::v1::catalogue_server::CatalogueServer;
use navette_proto::v1::enrolment_server::EnrolmentServer;
use navette_proto::v1::host_pools_server::HostPoolsServer;
use navette_proto::v1::hosts_server::HostsServer;
use navette_proto::v1::join_tokens_server::JoinTokensServer;
use navette_proto::v1::migrations_server::MigrationsServer;
use navette_proto::v1::reinstalls_server::ReinstallsServer;
use navette_proto::v1::tests_server::TestsServer;
use navette_proto::v1::transit_pool_server::TransitPoolServer;
use navette_proto::v1::transit_server::TransitServer;
use navette_proto::v1::workflows_server::WorkflowsServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::Server;

use crate::api::addresses::AddressesApi;
use crate::api::enrolment::EnrolmentApi;
use crate::api::gateway::GatewayApi;
use crate::api::migrations::MigrationsApi;
use crate::api::operator::OperatorApi;
use crate::api::panel::PanelApi;
use crate::api::policy::{AgentCertificateLayer, controller_policy};
use crate::api::reinstalls::ReinstallsApi;
use crate::api::test_runs::TestsApi;
use crate::api::transit::TransitApi;
use crate::api::workflows::WorkflowsApi;
use crate::state::Controller;
use crate::store;

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address} ({listener}): {source}")]
    Bind {
        address: std::net::SocketAddr,
        listener: &'static str,
        source: std::io::Error,
    },
    #[error("gRPC server ({listener}): {source}")]
    Serve {
        listener: &'static str,
        source: tonic::transport::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

fn reflection(names: &[&str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(navette_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for name in names {
        builder = builder.with_service_name(*name);
    }
    builder
}

/// Binds both listeners (so that readiness can be announced when this
/// returns) and returns the future that serves them until `shutdown`.
pub async fn bind(
    controller: Arc<Controller>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<impl Future<Output = Result<(), ServeError>>, ServeError> {
    let config = &controller.config.listen;
    let api_listener = TcpListener::bind(config.api)
        .await
        .map_err(|source| ServeError::Bind {
            address: config.api,
            listener: "api",
            source,
        })?;
    let enrolment_listener = TcpListener::bind(config.enrolment)
        .await
        .map_err(|source| ServeError::Bind {
            address: config.enrolment,
            listener: "enrolment",
            source,
        })?;
    tracing::info!(message = "listening", api = %config.api, enrolment = %config.enrolment);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CatalogueServer<PanelApi>>().await;
    health.set_serving::<AccountsServer<PanelApi>>().await;
    health.set_serving::<TestsServer<TestsApi>>().await;
    health
        .set_serving::<MigrationsServer<MigrationsApi>>()
        .await;
    health.set_serving::<HostsServer<OperatorApi>>().await;
    health.set_serving::<HostPoolsServer<OperatorApi>>().await;
    health.set_serving::<JoinTokensServer<OperatorApi>>().await;
    health.set_serving::<WorkflowsServer<WorkflowsApi>>().await;
    health
        .set_serving::<ReinstallsServer<ReinstallsApi>>()
        .await;
    health.set_serving::<TransitServer<TransitApi>>().await;
    health.set_serving::<TransitPoolServer<TransitApi>>().await;
    health.set_serving::<AddressesServer<AddressesApi>>().await;
    health.set_serving::<AgentGatewayServer<GatewayApi>>().await;
    health.set_serving::<EnrolmentServer<EnrolmentApi>>().await;

    let api_names = [
        CatalogueServer::<PanelApi>::NAME,
        AccountsServer::<PanelApi>::NAME,
        TestsServer::<TestsApi>::NAME,
        MigrationsServer::<MigrationsApi>::NAME,
        HostsServer::<OperatorApi>::NAME,
        HostPoolsServer::<OperatorApi>::NAME,
        JoinTokensServer::<OperatorApi>::NAME,
        WorkflowsServer::<WorkflowsApi>::NAME,
        ReinstallsServer::<ReinstallsApi>::NAME,
        TransitServer::<TransitApi>::NAME,
        TransitPoolServer::<TransitApi>::NAME,
        AddressesServer::<AddressesApi>::NAME,
        AgentGatewayServer::<GatewayApi>::NAME,
    ];
    let enrolment_names = [EnrolmentServer::<EnrolmentApi>::NAME];

    let c = &controller;
    let api = Server::builder()
        .layer(RoleGateLayer::new(controller_policy()))
        .layer(AgentCertificateLayer::new(controller.clone()))
        .add_service(health_service.clone())
        .add_service(reflection(&api_names).build_v1()?)
        .add_service(reflection(&api_names).build_v1alpha()?)
        .add_service(CatalogueServer::new(PanelApi(c.clone())))
        .add_service(AccountsServer::new(PanelApi(c.clone())))
        .add_service(TestsServer::new(TestsApi(c.clone())))
        .add_service(MigrationsServer::new(MigrationsApi(c.clone())))
        .add_service(HostsServer::new(OperatorApi(c.clone())))
        .add_service(HostPoolsServer::new(OperatorApi(c.clone())))
        .add_service(JoinTokensServer::new(OperatorApi(c.clone())))
        .add_service(WorkflowsServer::new(WorkflowsApi(c.clone())))
        .add_service(ReinstallsServer::new(ReinstallsApi(c.clone())))
        .add_service(TransitServer::new(TransitApi(c.clone())))
        .add_service(TransitPoolServer::new(TransitApi(c.clone())))
        .add_service(AddressesServer::new(AddressesApi(c.clone())))
        .add_service(AgentGatewayServer::new(GatewayApi(c.clone())))
        .serve_with_incoming_shutdown(
            navette_proto::tls::incoming(api_listener, controller.tls.api.clone(), "api"),
            wait_for(shutdown.clone()),
        );
    let enrolment = Server::builder()
        .add_service(health_service)
        .add_service(reflection(&enrolment_names).build_v1()?)
        .add_service(reflection(&enrolment_names).build_v1alpha()?)
        .add_service(EnrolmentServer::new(EnrolmentApi(c.clone())))
        .serve_with_incoming_shutdown(
            navette_proto::tls::incoming(
                enrolment_listener,
                controller.tls.enrolment.clone(),
                "enrolment",
            ),
            wait_for(shutdown),
        );
    Ok(async move {
        let (api, enrolment) = tokio::join!(api, enrolment);
        api.map_err(|source| ServeError::Serve {
            listener: "api",
            source,
        })?;
        enrolment.map_err(|source| ServeError::Serve {
            listener: "enrolment",
            source,
        })
    })
}

async fn wait_for(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Marks hosts unreachable when their heartbeats stop. Every controller runs
/// it; the update is idempotent.
pub fn spawn_liveness(controller: Arc<Controller>) {
    let timeout = Duration::from_secs(controller.config.hosts.heartbeat_timeout_secs.max(1));
    let period = (timeout / 3).max(Duration::from_millis(500));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = async {
                let client = controller.db.get().await?;
                store::hosts::mark_unreachable(&**client, timeout).await
            }
            .await;
            match result {
                Ok(ids) => {
                    for host_id in ids {
                        tracing::warn!(message = "host unreachable: no heartbeat", %host_id, timeout_secs = timeout.as_secs());
                    }
                }
                Err(error) => tracing::warn!(message = "liveness check failed", %error),
            }
        }
    });
}

/// How often every controller serves the transit queues by itself (a
/// request, a release and a class change serve them at once; this catches
/// a transit host that came back online or was undrained).
const TRANSIT_QUEUE_PERIOD: Duration = Duration::from_secs(10);

/// Serves the transit queues now and then (`transit::allocate`).
pub fn spawn_transit_queue(controller: Arc<Controller>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(TRANSIT_QUEUE_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match crate::transit::allocate::serve_every_queue(&controller).await {
                Ok(served) if !served.is_empty() => {
                    tracing::info!(message = "transit queues served", allocations = ?served);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(message = "serving the transit queues failed", %error),
            }
        }
    });
}

/// Starts the workflow engine's runner over the kinds the controller
/// runs (the test, [`crate::workflow::test_kind`]; the migration,
/// [`crate::workflow::migrate_kind`]; the reinstall,
/// [`crate::reinstall::kind`]), woken by its own
/// listener on `navette_workflows`.
pub fn spawn_workflow_engine(controller: &Arc<Controller>) -> Result<(), crate::db::DbError> {
    let registry = crate::engine::Registry::new()
        .register(crate::workflow::test_kind::TestKind::new(
            controller.clone(),
        ))
        .register(crate::reinstall::ReinstallKind::new(controller.clone()))
        .register(crate::workflow::migrate_kind::MigrateKind::new(
            controller.clone(),
        ));
    let (changes, _) = tokio::sync::broadcast::channel(1024);
    crate::db::listen(
        &controller.config.database,
        &[crate::engine::CHANNEL],
        changes.clone(),
    )?;
    crate::engine::Runner::new(
        controller.db.clone(),
        registry,
        controller.controller_id.clone(),
        crate::engine::RunnerConfig::default(),
    )
    .spawn(&changes);
    Ok(())
}

/// Renews the controller's own certificate two thirds into its life.
pub fn spawn_certificate_renewal(controller: Arc<Controller>) {
    tokio::spawn(async move {
        loop {
            let wait = (controller.tls.renew_at(&controller.config.tls) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1));
            tokio::time::sleep(wait).await;
            if let Err(error) = controller.tls.renew(&controller.ca, &controller.config.tls) {
                tracing::error!(message = "renewing the controller certificate failed; retrying in a minute", %error);
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    });
}
