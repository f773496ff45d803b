//! Which role may call which service of the controller, and which agent
//! certificates are still good. Applied to every RPC on the mutual-TLS
//! listener: the role by `navette_proto::gate` with [`controller_policy`],
//! then the agent's certificate by [`AgentCertificateLayer`] (the host's
//! current certificate only: a superseded or revoked one is refused before
//! any handler runs).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use navette_proto::gate::{Policy, is_public_infrastructure, service_of};
use navette_proto::identity::{Role, role_from_der, serial_from_der};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::state::Controller;

/// The surfaces, and who may use them.
fn allowed(service: &str) -> Option<(&'static str, &'static [&'static str])> {
    match service {
        "navette.v1.Catalogue"
        | "navette.v1.Accounts"
        | "navette.v1.Tests"
        | "navette.v1.Transit"
        | "navette.v1.Migrations" => Some(("panel API", &["panel", "operator"])),
        "navette.v1.Hosts"
        | "navette.v1.HostPools"
        | "navette.v1.JoinTokens"
        | "navette.v1.Workflows"
        | "navette.v1.Reinstalls"
        | "navette.v1.TransitPool"
        | "navette.v1.Addresses" => Some(("operator API", &["operator"])),
        "navette.v1.AgentGateway" => Some(("agent gateway", &["agent"])),
        _ => None,
    }
}

/// Decides whether `role` may call `path`.
pub fn decide(path: &str, role: &Role) -> Result<(), String> {
    let service = service_of(path);
    if is_public_infrastructure(service) {
        return Ok(());
    }
    match allowed(service) {
        Some((_, roles)) if roles.contains(&role.kind()) => Ok(()),
        Some((surface, roles)) => Err(format!(
            "{service} is part of the {surface}, open to {}; the caller is {role}",
            roles.join(" and ")
        )),
        None => Err(format!("{service} is not served to {role}")),
    }
}

pub fn controller_policy() -> Policy {
    Arc::new(decide)
}

/// The certificate an agent called with, for handlers that need more than
/// its role (renewal: only the current certificate renews).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentedCertificate {
    /// Serial number, lowercase hex.
    pub serial: String,
}

/// Refuses calls from an agent whose certificate is not its host's current
/// one (`certificates::AgentCertificates`), and records the serial of the
/// ones it lets through as a [`PresentedCertificate`]. Other roles pass.
#[derive(Clone)]
pub struct AgentCertificateLayer {
    controller: Arc<Controller>,
}

impl AgentCertificateLayer {
    pub fn new(controller: Arc<Controller>) -> Self {
        AgentCertificateLayer { controller }
    }
}

impl<S> tower::Layer<S> for AgentCertificateLayer {
    type Service = AgentCertificateCheck<S>;

    fn layer(&self, inner: S) -> AgentCertificateCheck<S> {
        AgentCertificateCheck {
            inner,
            controller: self.controller.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AgentCertificateCheck<S> {
    inner: S,
    controller: Arc<Controller>,
}

/// The agent and certificate serial of the caller, if it is an agent.
/// Anything else (no certificate, another role) is the role gate's
/// business.
fn calling_agent(extensions: &http::Extensions) -> Option<(String, Option<String>)> {
    let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    let leaf = certs.first()?;
    match role_from_der(leaf) {
        Ok(Role::Agent { host_id }) => Some((host_id, serial_from_der(leaf))),
        _ => None,
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AgentCertificateCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some((host_id, serial)) = calling_agent(request.extensions()) else {
            return Box::pin(self.inner.call(request));
        };
        let Some(serial) = serial else {
            return Box::pin(std::future::ready(Ok(Status::unauthenticated(
                "the client certificate has no readable serial number",
            )
            .into_http())));
        };
        request.extensions_mut().insert(PresentedCertificate {
            serial: serial.clone(),
        });
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let controller = self.controller.clone();
        let method = request.uri().path().to_owned();
        Box::pin(async move {
            match controller
                .certificates
                .check(&controller.db, &host_id, &serial)
                .await
            {
                Ok(()) => inner.call(request).await,
                Err(error) => {
                    tracing::warn!(message = "refused agent certificate", %host_id, %serial, %method, %error);
                    Ok(super::status(error).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(host: &str) -> Role {
        Role::Agent {
            host_id: host.to_owned(),
        }
    }

    #[test]
    fn each_surface_is_open_to_its_roles_only() {
        assert!(decide("/navette.v1.Catalogue/ListMigrations", &Role::Panel).is_ok());
        assert!(decide("/navette.v1.Catalogue/ListMigrations", &Role::Operator).is_ok());
        assert!(decide("/navette.v1.Hosts/ListHosts", &Role::Operator).is_ok());
        assert!(decide("/navette.v1.AgentGateway/Heartbeat", &agent("a")).is_ok());

        let refused = decide("/navette.v1.Catalogue/ListMigrations", &agent("a"));
        assert_eq!(
            refused,
            Err("navette.v1.Catalogue is part of the panel API, open to panel and operator; the caller is agent of host a".to_owned())
        );
        assert!(decide("/navette.v1.Hosts/ListHosts", &Role::Panel).is_err());
        assert!(decide("/navette.v1.Workflows/CancelWorkflow", &Role::Operator).is_ok());
        assert!(decide("/navette.v1.Migrations/Migrate", &Role::Panel).is_ok());
        assert!(decide("/navette.v1.Migrations/CancelMigration", &Role::Operator).is_ok());
        assert!(decide("/navette.v1.Migrations/Migrate", &agent("a")).is_err());
        assert!(decide("/navette.v1.Workflows/ListWorkflowAudit", &Role::Panel).is_err());
        assert!(decide("/navette.v1.Addresses/MoveAddress", &Role::Operator).is_ok());
        assert!(decide("/navette.v1.Addresses/MoveAddress", &Role::Panel).is_err());
        assert!(decide("/navette.v1.Addresses/ListServerAddresses", &agent("a")).is_err());
        assert!(decide("/navette.v1.Workflows/GetWorkflow", &agent("a")).is_err());
        assert!(decide("/navette.v1.AgentGateway/Heartbeat", &Role::Operator).is_err());
        assert!(decide("/navette.v1.Agent/GetInventory", &Role::Operator).is_err());
        // The panel asks for, reads and releases transit; only operators
        // say what class a host is.
        assert!(decide("/navette.v1.Transit/RequestTransit", &Role::Panel).is_ok());
        assert!(decide("/navette.v1.Transit/ListTransitCharges", &Role::Operator).is_ok());
        assert!(decide("/navette.v1.Transit/ReleaseTransit", &agent("a")).is_err());
        assert!(
            decide(
                "/navette.v1.TransitPool/SetConfigurationClass",
                &Role::Operator
            )
            .is_ok()
        );
        assert!(
            decide(
                "/navette.v1.TransitPool/SetConfigurationClass",
                &Role::Panel
            )
            .is_err()
        );
    }

    #[test]
    fn health_and_reflection_are_open_to_every_role() {
        for role in [Role::Panel, Role::Operator, agent("a")] {
            assert!(decide("/grpc.health.v1.Health/Check", &role).is_ok());
            assert!(
                decide(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                    &role
                )
                .is_ok()
            );
        }
    }
}
