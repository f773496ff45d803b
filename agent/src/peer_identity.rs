//! Which peer agents' certificates this agent refuses, and the layer that
//! refuses them on the agent's listener.
//!
//! TLS proves only that the Navette CA signed a peer's certificate. The
//! controller knows more, and sends two lists in every heartbeat's answer
//! (unexpired certificates only; see the controller's
//! `store::hosts::peer_lists`):
//! - *refused*: older than its host's latest enrolment (a reinstalled
//!   host, a stolen key) or revoked with the host (`Hosts/RemoveHost`):
//!   refused on every call;
//! - *renewed*: superseded by a routine renewal, the host's own previous
//!   key: refused on every connection made after this agent learned it, so
//!   the key cannot be used to open anything new, while a connection the
//!   host opened with it before (a transfer in flight) finishes its work.
//!   Agents dial new connections with their current certificate.
//!
//! This agent keeps both lists ([`RefusedCertificates`], also on disk, so
//! a restart does not forget them before the first heartbeat; after a
//! restart no connection predates anything) and refuses any agent
//! presenting a listed certificate, before any peer service (`FileSource`,
//! `PostgresSource`, `MariadbSource`) runs. A connection is told apart by
//! its peer's address and port, which HTTP/2 keeps for the connection's
//! life.
//!
//! Invariant: the lists are replaced whole by each answer, never merged,
//! so they only hold what the controller refuses now.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
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

/// How many connections are remembered with the certificate they
/// presented; beyond, the oldest memories go (a connection forgotten this
/// way is refused only if its certificate is then renewed: its transfer
/// then dials again, with the current certificate).
const MAX_REMEMBERED_CONNECTIONS: usize = 65_536;

/// Serials (lowercase hex) of agent certificates to refuse. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RefusedCertificates {
    lists: Arc<RwLock<Lists>>,
    /// Where the lists are kept; `None` keeps them in memory only.
    path: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Lists {
    refused: HashSet<String>,
    renewed: HashSet<String>,
    /// Connections (peer address) seen presenting a certificate accepted
    /// at the time, and which.
    seen: HashMap<SocketAddr, String>,
    /// Connections opened with a now renewed certificate before it was:
    /// they may go on.
    grandfathered: HashSet<(SocketAddr, String)>,
}

/// What the lists say of a certificate presented on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused,
    /// Renewed since; this connection is newer than the renewal.
    Renewed,
}

impl RefusedCertificates {
    /// The lists kept in `state_dir`, empty if there are none yet. The file
    /// holds one serial a line, `renewed <serial>` for a renewed one.
    pub fn open(state_dir: &Path) -> RefusedCertificates {
        let path = state_dir.join(FILE);
        let mut lists = Lists::default();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match line.strip_prefix("renewed ") {
                    Some(serial) => lists.renewed.insert(serial.trim().to_owned()),
                    None => lists.refused.insert(line.to_owned()),
                };
            }
        }
        RefusedCertificates {
            lists: Arc::new(RwLock::new(lists)),
            path: Some(path),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Lists> {
        self.lists
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Lists> {
        self.lists
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `serial`, presented on the connection from `peer`, may call;
    /// an accepted one is remembered with its connection.
    pub fn verdict(&self, serial: &str, peer: Option<SocketAddr>) -> Verdict {
        {
            let lists = self.read();
            if lists.refused.contains(serial) {
                return Verdict::Refused;
            }
            if lists.renewed.contains(serial) {
                let old_connection = peer
                    .is_some_and(|peer| lists.grandfathered.contains(&(peer, serial.to_owned())));
                return if old_connection {
                    Verdict::Accepted
                } else {
                    Verdict::Renewed
                };
            }
            if peer.is_none_or(|peer| lists.seen.get(&peer).is_some_and(|s| s == serial)) {
                return Verdict::Accepted;
            }
        }
        if let Some(peer) = peer {
            let mut lists = self.write();
            if lists.seen.len() >= MAX_REMEMBERED_CONNECTIONS {
                lists.seen.clear();
            }
            lists.seen.insert(peer, serial.to_owned());
        }
        Verdict::Accepted
    }

    /// Replaces the lists with the controller's latest, and keeps them on
    /// disk when they changed. Connections seen with a certificate newly
    /// renewed may go on. Returns whether anything changed.
    pub fn replace(&self, refused: &[String], renewed: &[String]) -> Result<bool, StoreError> {
        let normal = |list: &[String]| -> HashSet<String> {
            list.iter().map(|s| s.trim().to_lowercase()).collect()
        };
        let (refused, renewed) = (normal(refused), normal(renewed));
        let text = {
            let mut lists = self.write();
            if lists.refused == refused && lists.renewed == renewed {
                return Ok(false);
            }
            let newly: Vec<(SocketAddr, String)> = lists
                .seen
                .iter()
                .filter(|(_, serial)| renewed.contains(*serial) && !lists.renewed.contains(*serial))
                .map(|(peer, serial)| (*peer, serial.clone()))
                .collect();
            for (peer, serial) in newly {
                lists.seen.remove(&peer);
                lists.grandfathered.insert((peer, serial));
            }
            lists
                .grandfathered
                .retain(|(_, serial)| renewed.contains(serial) && !refused.contains(serial));
            lists.refused.clone_from(&refused);
            lists.renewed.clone_from(&renewed);
            let mut lines: Vec<String> = refused.iter().cloned().collect();
            lines.extend(renewed.iter().map(|s| format!("renewed {s}")));
            lines.sort();
            lines.iter().map(|l| format!("{l}\n")).collect::<String>()
        };
        if let Some(path) = &self.path {
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
    let Some(serial) = serial_from_der(&leaf) else {
        return Some(format!(
            "the certificate of host {host_id} has no readable serial number"
        ));
    };
    match refused.verdict(&serial, info.get_ref().remote_addr()) {
        Verdict::Accepted => None,
        Verdict::Refused => Some(format!(
            "certificate {serial} of host {host_id} is revoked or superseded (the controller says so); that host must use its current certificate, or be enrolled again"
        )),
        Verdict::Renewed => Some(format!(
            "certificate {serial} of host {host_id} was superseded by a renewal: new connections must present the host's current certificate"
        )),
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
        assert_eq!(refused.verdict("01aa", None), Verdict::Accepted);
        assert!(refused.replace(&["01AA".into(), "02bb".into()], &["03cc".into()])?);
        assert_eq!(refused.verdict("01aa", None), Verdict::Refused);
        assert!(!refused.replace(&["02bb".into(), "01aa".into()], &["03cc".into()])?);
        let reopened = RefusedCertificates::open(&dir);
        assert_eq!(reopened.verdict("02bb", None), Verdict::Refused);
        assert_eq!(reopened.verdict("03cc", None), Verdict::Renewed);
        assert!(reopened.replace(&["02bb".into()], &[])?);
        assert_eq!(reopened.verdict("01aa", None), Verdict::Accepted);
        assert_eq!(
            RefusedCertificates::open(&dir).verdict("01aa", None),
            Verdict::Accepted
        );
        assert_eq!(
            RefusedCertificates::open(&dir).verdict("03cc", None),
            Verdict::Accepted
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_renewed_certificate_keeps_only_the_connections_it_opened_before()
    -> Result<(), Box<dyn std::error::Error>> {
        let lists = RefusedCertificates::default();
        let transfer: SocketAddr = "192.0.2.11:40001".parse()?;
        let later: SocketAddr = "192.0.2.11:40002".parse()?;
        let other: SocketAddr = "192.0.2.12:40003".parse()?;
        // A transfer's connection made with the host's first key.
        assert_eq!(lists.verdict("0a01", Some(transfer)), Verdict::Accepted);
        assert_eq!(lists.verdict("0b01", Some(other)), Verdict::Accepted);
        // The host renews: its first key is listed as renewed.
        assert!(lists.replace(&[], &["0a01".into()])?);
        assert_eq!(lists.verdict("0a01", Some(transfer)), Verdict::Accepted);
        assert_eq!(lists.verdict("0a01", Some(later)), Verdict::Renewed);
        assert_eq!(lists.verdict("0a01", None), Verdict::Renewed);
        assert_eq!(lists.verdict("0b01", Some(other)), Verdict::Accepted);
        // The same answer again changes nothing; the transfer goes on.
        assert!(!lists.replace(&[], &["0a01".into()])?);
        assert_eq!(lists.verdict("0a01", Some(transfer)), Verdict::Accepted);
        // Re-enrolled (refused outright): even the old connection stops.
        assert!(lists.replace(&["0a01".into()], &[])?);
        assert_eq!(lists.verdict("0a01", Some(transfer)), Verdict::Refused);
        Ok(())
    }
}
