//! Which peer agents' certificates this agent refuses, and the layer that
//! refuses them on the agent's listener.
//!
//! TLS proves only that the Navette CA signed a peer's certificate. The
//! controller knows more: a certificate older than its host's latest
//! enrolment (a reinstalled host, a stolen key) or revoked with the host
//! (`Hosts/RemoveHost`). It sends, in every heartbeat's answer, the serials
//! of all such certificates that have not expired yet (not those only
//! superseded by a renewal: transfers in flight keep using them until they
//! expire; see the controller's `store::hosts::refused_serials`); this
//! agent keeps
//! that list ([`RefusedCertificates`], also on disk, so a restart does not
//! forget it before the first heartbeat) and refuses any agent presenting
//! one of them, before any peer service (`FileSource`, `PostgresSource`,
//! `MariadbSource`) runs.
//!
//! Invariant: the list is replaced whole by each answer, never merged, so
//! it only holds what the controller refuses now.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use navette_proto::identity::{Role, role_from_der, serial_from_der};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::identity_store::{StoreError, write_atomic};

/// The file, in the state directory, that keeps the list across restarts.
const FILE: &str = "refused-certificates";

/// Serials (lowercase hex) of agent certificates to refuse. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RefusedCertificates {
    serials: Arc<RwLock<HashSet<String>>>,
    /// Where the list is kept; `None` keeps it in memory only.
    path: Option<PathBuf>,
}

impl RefusedCertificates {
    /// The list kept in `state_dir`, empty if there is none yet.
    pub fn open(state_dir: &Path) -> RefusedCertificates {
        let path = state_dir.join(FILE);
        let serials = std::fs::read_to_string(&path)
            .map(|text| {
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        RefusedCertificates {
            serials: Arc::new(RwLock::new(serials)),
            path: Some(path),
        }
    }

    pub fn is_refused(&self, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(serial)
    }

    /// Replaces the list with the controller's latest, and keeps it on disk
    /// when it changed. Returns whether it changed.
    pub fn replace(&self, serials: &[String]) -> Result<bool, StoreError> {
        let new: HashSet<String> = serials.iter().map(|s| s.trim().to_lowercase()).collect();
        {
            let mut current = self
                .serials
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *current == new {
                return Ok(false);
            }
            current.clone_from(&new);
        }
        if let Some(path) = &self.path {
            let mut sorted: Vec<&String> = new.iter().collect();
            sorted.sort();
            let text: String = sorted.iter().map(|s| format!("{s}\n")).collect();
            write_atomic(path, text.as_bytes(), 0o644)?;
        }
        Ok(true)
    }
}

/// Refuses calls from agents whose certificate is in the list.
#[derive(Clone, Debug)]
pub struct RefusedCertificateLayer {
    refused: RefusedCertificates,
}

impl RefusedCertificateLayer {
    pub fn new(refused: RefusedCertificates) -> Self {
        RefusedCertificateLayer { refused }
    }
}

impl<S> tower::Layer<S> for RefusedCertificateLayer {
    type Service = RefusedCertificateCheck<S>;

    fn layer(&self, inner: S) -> RefusedCertificateCheck<S> {
        RefusedCertificateCheck {
            inner,
            refused: self.refused.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RefusedCertificateCheck<S> {
    inner: S,
    refused: RefusedCertificates,
}

/// Why the calling agent is refused, if it is an agent presenting a
/// refused (or unreadable) certificate.
fn refusal(extensions: &http::Extensions, refused: &RefusedCertificates) -> Option<String> {
    let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let leaf = info.peer_certs()?.first()?.clone();
    let Ok(Role::Agent { host_id }) = role_from_der(&leaf) else {
        return None;
    };
    match serial_from_der(&leaf) {
        None => Some(format!(
            "the certificate of host {host_id} has no readable serial number"
        )),
        Some(serial) if refused.is_refused(&serial) => Some(format!(
            "certificate {serial} of host {host_id} is revoked or superseded (the controller says so); that host must use its current certificate, or be enrolled again"
        )),
        Some(_) => None,
    }
}

impl<S, B> tower::Service<http::Request<B>> for RefusedCertificateCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(reason) = refusal(request.extensions(), &self.refused) {
            tracing::warn!(message = "refused a peer's certificate", method = %request.uri().path(), %reason);
            return Box::pin(std::future::ready(Ok(
                Status::permission_denied(reason).into_http()
            )));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_replaced_whole_and_survives_a_restart() -> Result<(), StoreError> {
        let dir = std::env::temp_dir().join(format!("navette-refused-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let refused = RefusedCertificates::open(&dir);
        assert!(!refused.is_refused("01aa"));
        assert!(refused.replace(&["01AA".into(), "02bb".into()])?);
        assert!(refused.is_refused("01aa"));
        assert!(!refused.replace(&["02bb".into(), "01aa".into()])?);
        let reopened = RefusedCertificates::open(&dir);
        assert!(reopened.is_refused("02bb"));
        assert!(reopened.replace(&["02bb".into()])?);
        assert!(!reopened.is_refused("01aa"));
        assert!(!RefusedCertificates::open(&dir).is_refused("01aa"));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
