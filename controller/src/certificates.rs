//! Which agent certificates the controller still accepts.
//!
//! TLS proves that the Navette CA signed a certificate; it cannot know that
//! the certificate was since superseded (the host renewed or enrolled
//! again) or revoked (`Hosts/RemoveHost`). Each host has one current
//! certificate (`hosts.certificate_serial`); this module answers "is this
//! serial host h's current one?" for every call an agent makes, cheaply:
//!
//! - a host's current serial, once read from the database, is kept in
//!   memory until a change to the host's identity is announced on
//!   `NOTIFY navette_hosts` (from any controller), or the listener
//!   reconnects (everything is forgotten);
//! - a serial found not current is remembered as refused for good, with
//!   the reason first found: a certificate, once superseded, never becomes
//!   current again;
//! - the list of refused serials that agents are told about in their
//!   heartbeats is read at most every [`REFUSED_LIST_MAX_AGE`], or again
//!   after an identity change.
//!
//! Invariant: a cached answer is never newer than the database's (an entry
//! read before an invalidation is not stored after it: see `epoch`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::broadcast;

use crate::db::Change;
use crate::error::{Error, Result};
use crate::model::HostChange;
use crate::store;

/// How long the list of refused serials given to agents may be reused.
/// Certificates expire, so it is recomputed even without changes.
const REFUSED_LIST_MAX_AGE: Duration = Duration::from_secs(30);

/// Above this many remembered refused serials, the memory is cleared (they
/// are then looked up again, once each).
const MAX_REMEMBERED_REFUSED: usize = 100_000;

#[derive(Default)]
struct Cache {
    /// Host id to the serial of its current certificate.
    current: HashMap<String, String>,
    /// Serials known not to be current, with why they were refused.
    refused: HashMap<String, String>,
    /// The list given to agents, and when it was read.
    refused_list: Option<(Instant, Arc<store::hosts::PeerLists>)>,
}

/// The controller's view of which agent certificate is each host's current
/// one. Shared by every request.
#[derive(Default)]
pub struct AgentCertificates {
    cache: Mutex<Cache>,
    /// Bumped by every invalidation; an answer read from the database is
    /// stored only if no invalidation happened meanwhile.
    epoch: AtomicU64,
}

impl std::fmt::Debug for AgentCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCertificates").finish_non_exhaustive()
    }
}

impl AgentCertificates {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Accepts the certificate `serial` of host `host_id` only if it is the
    /// host's current one. The refusal says why and what to do.
    pub async fn check(&self, db: &Pool, host_id: &str, serial: &str) -> Result<()> {
        {
            let cache = self.cache();
            if cache.current.get(host_id).map(String::as_str) == Some(serial) {
                return Ok(());
            }
            if let Some(reason) = cache.refused.get(serial) {
                return Err(Error::PermissionDenied(reason.clone()));
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let client = db.get().await?;
        let current = store::hosts::current_certificate(&**client, host_id).await?;
        if current.as_deref() == Some(serial) {
            if self.epoch.load(Ordering::SeqCst) == epoch {
                self.cache()
                    .current
                    .insert(host_id.to_owned(), serial.to_owned());
            }
            return Ok(());
        }
        let refusal = store::hosts::refused_certificate(&**client, host_id, serial).await;
        if let Error::PermissionDenied(reason) = &refusal {
            let mut cache = self.cache();
            if cache.refused.len() >= MAX_REMEMBERED_REFUSED {
                cache.refused.clear();
            }
            cache.refused.insert(serial.to_owned(), reason.clone());
        }
        Err(refusal)
    }

    /// Serials of unexpired agent certificates that agents' peer ports
    /// refuse (outright, or on new connections once renewed).
    pub async fn peer_lists(&self, db: &Pool) -> Result<Arc<store::hosts::PeerLists>> {
        if let Some((read_at, list)) = &self.cache().refused_list
            && read_at.elapsed() < REFUSED_LIST_MAX_AGE
        {
            return Ok(list.clone());
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let client = db.get().await?;
        let list = Arc::new(store::hosts::peer_lists(&**client).await?);
        let mut cache = self.cache();
        if self.epoch.load(Ordering::SeqCst) == epoch {
            cache.refused_list = Some((Instant::now(), list.clone()));
        }
        Ok(list)
    }

    /// Forgets what is known of `host_id` (its identity changed).
    pub fn forget(&self, host_id: &str) {
        let mut cache = self.cache();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        cache.current.remove(host_id);
        cache.refused_list = None;
    }

    /// Forgets every current serial (changes may have been missed). Refused
    /// serials stay refused: that never changes.
    pub fn forget_all(&self) {
        let mut cache = self.cache();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        cache.current.clear();
        cache.refused_list = None;
    }

    /// Follows committed host changes (from every controller) and forgets
    /// what they make stale. Runs until the controller stops.
    pub fn spawn_invalidation(self: Arc<Self>, mut changes: broadcast::Receiver<Change>) {
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(Change::Notified { channel, payload }) if channel == "navette_hosts" => {
                        let (host_id, change) = payload.split_once(':').unwrap_or(("", ""));
                        match HostChange::parse(change) {
                            Some(
                                HostChange::Enrolled
                                | HostChange::Certificate
                                | HostChange::Removed,
                            ) => self.forget(host_id),
                            Some(_) => {}
                            None => self.forget_all(),
                        }
                    }
                    Ok(Change::Notified { .. }) => {}
                    Ok(Change::Resynchronise) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.forget_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_drops_the_current_serial_and_bumps_the_epoch() {
        let certificates = AgentCertificates::default();
        certificates
            .cache()
            .current
            .insert("test-1".into(), "01ab".into());
        certificates
            .cache()
            .refused
            .insert("0099".into(), "superseded".into());
        let before = certificates.epoch.load(Ordering::SeqCst);
        certificates.forget("test-1");
        assert!(certificates.cache().current.is_empty());
        assert!(certificates.cache().refused.contains_key("0099"));
        assert!(certificates.epoch.load(Ordering::SeqCst) > before);
        certificates
            .cache()
            .current
            .insert("test-2".into(), "02ab".into());
        certificates.forget_all();
        assert!(certificates.cache().current.is_empty());
    }
}
