//! The role gate: one tower layer, in front of every service on a mutually
//! authenticated listener, that reads the caller's role from its client
//! certificate and asks a policy whether that role may call the RPC.
//!
//! Handlers never parse certificates: the gate stores the [`Caller`] in the
//! request extensions, and [`caller`] reads it back.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::identity::{Role, common_name_from_der, role_from_der};

/// Decides whether `role` may call the gRPC method at `path`
/// (`/package.Service/Method`). `Err` carries the reason given to the caller.
pub type Policy = Arc<dyn Fn(&str, &Role) -> Result<(), String> + Send + Sync>;

/// The authenticated caller of a request, set by the gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The certificate's common name, e.g. `navette operator alice`.
    pub name: String,
}

/// Reads the caller the gate authenticated.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
    request.extensions().get::<Caller>().ok_or_else(|| {
        Status::unauthenticated("no authenticated caller (the role gate did not run)")
    })
}

/// Reads the role of the caller the gate authenticated.
pub fn caller_role<T>(request: &tonic::Request<T>) -> Result<&Role, Status> {
    caller(request).map(|caller| &caller.role)
}

/// The layer to give `tonic::transport::Server::builder().layer(..)`.
#[derive(Clone)]
pub struct RoleGateLayer {
    policy: Policy,
}

impl RoleGateLayer {
    pub fn new(policy: Policy) -> Self {
        RoleGateLayer { policy }
    }
}

impl<S> tower::Layer<S> for RoleGateLayer {
    type Service = RoleGate<S>;

    fn layer(&self, inner: S) -> RoleGate<S> {
        RoleGate {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RoleGate<S> {
    inner: S,
    policy: Policy,
}

/// The peer of a TLS connection, from request extensions.
fn peer(extensions: &http::Extensions) -> Result<Caller, String> {
    let info = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .ok_or("the connection is not TLS")?;
    let certs = info
        .peer_certs()
        .ok_or("no client certificate was presented")?;
    let leaf = certs.first().ok_or("no client certificate was presented")?;
    let role = role_from_der(leaf).map_err(|error| error.to_string())?;
    let name = common_name_from_der(leaf).unwrap_or_else(|| role.to_string());
    Ok(Caller { role, name })
}

impl<S, B> tower::Service<http::Request<B>> for RoleGate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let caller = match peer(request.extensions()) {
            Ok(caller) => caller,
            Err(reason) => {
                tracing::warn!(message = "refused unauthenticated call", method = %path, %reason);
                return Either::Left(ready(Ok(Status::unauthenticated(reason).into_http())));
            }
        };
        if let Err(reason) = (self.policy)(&path, &caller.role) {
            tracing::warn!(message = "refused call", method = %path, caller = %caller.name, %reason);
            return Either::Left(ready(Ok(Status::permission_denied(reason).into_http())));
        }
        request.extensions_mut().insert(caller);
        Either::Right(self.inner.call(request))
    }
}

/// The service part of a gRPC path: `navette.v1.Hosts` for
/// `/navette.v1.Hosts/ListHosts`.
pub fn service_of(path: &str) -> &str {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
}

/// Services every authenticated role may call: health and reflection.
pub fn is_public_infrastructure(service: &str) -> bool {
    service == "grpc.health.v1.Health"
        || service == "grpc.reflection.v1.ServerReflection"
        || service == "grpc.reflection.v1alpha.ServerReflection"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_is_read_from_the_path() {
        assert_eq!(
            service_of("/navette.v1.Hosts/ListHosts"),
            "navette.v1.Hosts"
        );
        assert_eq!(
            service_of("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health"
        );
        assert_eq!(service_of(""), "");
    }
}
