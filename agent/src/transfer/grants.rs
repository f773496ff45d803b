//! Grants: which target host may read which of this host's data, for which
//! transfer, and until when. Kept on disk (`<state_dir>/grants/<transfer
//! id>.json`) so that a restarted source agent still serves a transfer that
//! is resuming.
//!
//! A grant ends three ways: it **expires** (every grant has an expiry,
//! capped at [`MAX_LIFETIME`] whatever the controller asks), it is
//! **revoked** (`Agent/RevokeGrant`, when the transfer ended or its test is
//! ready, failed or removed), or the agent forgets it with its state
//! directory. An ended grant is refused at once, and its snapshot sessions
//! end ([`SessionPermit::ended`]). Expired grants are swept from disk when
//! grants are opened, granted, revoked or checked. A revoked transfer id
//! leaves a tombstone (`<transfer id>.revoked`, kept [`REVOKED_KEPT`]) so a
//! late retry of its grant cannot bring it back.
//!
//! Snapshot sessions (the source transactions a target holds open, which
//! keep locks and hold back vacuum) are counted per grant and bounded by
//! [`MAX_SNAPSHOT_SESSIONS`].
//!
//! Invariant: [`Grants::authorise`] is the only way a peer call reaches
//! data, and it never answers for an ended grant.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ids::is_transfer_id;
use chrono::{DateTime, Utc};
use navette_proto::gate::caller_role;
use navette_proto::identity::Role;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::Status;

/// How long a grant lasts when the controller does not say.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest a grant lasts, whatever the controller asks: a grant is the
/// right to read a customer's live data.
pub const MAX_LIFETIME: Duration = Duration::from_secs(48 * 3600);
/// Snapshot sessions one grant may hold at once: the target copies one
/// database at a time, and a retry may open the next session before this
/// host has seen the previous one end.
pub const MAX_SNAPSHOT_SESSIONS: usize = 4;
/// How long a revoked transfer id is remembered.
pub const REVOKED_KEPT: Duration = Duration::from_secs(7 * 86_400);

/// One database a grant lets the target read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedDatabase {
    /// The database server's name in this agent's configuration.
    pub server: String,
    pub database: String,
}

/// What one transfer may read on this (source) host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub transfer_id: String,
    pub account: String,
    /// The only host whose agent may read.
    pub target_host_id: String,
    /// The account's home; `None`: no files.
    pub home: Option<PathBuf>,
    pub postgresql: Vec<GrantedDatabase>,
    pub mariadb: Vec<GrantedDatabase>,
    /// The transfer protocol version the transfer runs on (its spec's,
    /// checked when granted): the source digests rows with its hash. 0 (a
    /// grant written before versions were named): version 2.
    #[serde(default)]
    pub protocol_version: u32,
}

impl Grant {
    pub fn allows_postgresql(&self, server: &str, database: &str) -> bool {
        self.postgresql
            .iter()
            .any(|d| d.server == server && d.database == database)
    }

    pub fn allows_mariadb(&self, server: &str, database: &str) -> bool {
        self.mariadb
            .iter()
            .any(|d| d.server == server && d.database == database)
    }
}

/// A grant as kept on disk: the grant and when it ends.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    grant: Grant,
    /// Unix seconds. Grants written before grants had an expiry have none
    /// and count as expired.
    #[serde(default)]
    expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "transfer {0} was already granted with a different content; a transfer id names one transfer"
    )]
    Conflict(String),
    #[error("transfer id {0:?} is not valid: use letters, digits, '-' and '_'")]
    BadId(String),
    #[error(
        "transfer {0} was revoked on this host; a transfer id is granted once (start a new transfer)"
    )]
    Revoked(String),
}

/// The snapshot sessions of one grant.
#[derive(Debug)]
struct Sessions {
    open: usize,
    /// Set to `true` when the grant is revoked.
    ended: watch::Sender<bool>,
}

type SessionTable = Arc<Mutex<HashMap<String, Sessions>>>;

/// The grants of this host, on disk and cached.
#[derive(Debug)]
pub struct Grants {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Stored>>,
    /// Revoked transfer ids, with when (unix seconds).
    revoked: Mutex<HashMap<String, i64>>,
    sessions: SessionTable,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn when(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| unix.to_string())
}

impl Grants {
    /// Opens (and creates) `<state_dir>/grants`, loading what is there and
    /// sweeping what has ended.
    pub fn open(state_dir: &Path) -> Result<Grants, GrantError> {
        let dir = state_dir.join("grants");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| GrantError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut cache = HashMap::new();
        let mut revoked = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_owned();
            match extension {
                "json" => {
                    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                    match serde_json::from_str::<Stored>(&text) {
                        Ok(stored) => {
                            cache.insert(stored.grant.transfer_id.clone(), stored);
                        }
                        Err(error) => {
                            tracing::warn!(message = "ignoring an unreadable grant", path = %path.display(), %error);
                        }
                    }
                }
                "revoked" if is_transfer_id(&stem) => {
                    let at = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<i64>().ok())
                        .unwrap_or(0);
                    revoked.insert(stem, at);
                }
                _ => {}
            }
        }
        let grants = Grants {
            dir,
            cache: Mutex::new(cache),
            revoked: Mutex::new(revoked),
            sessions: SessionTable::default(),
        };
        grants.sweep();
        Ok(grants)
    }

    fn grant_path(&self, transfer_id: &str) -> PathBuf {
        self.dir.join(format!("{transfer_id}.json"))
    }

    fn tombstone_path(&self, transfer_id: &str) -> PathBuf {
        self.dir.join(format!("{transfer_id}.revoked"))
    }

    fn write(path: &Path, bytes: &[u8]) -> Result<(), GrantError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|source| GrantError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, path).map_err(|source| GrantError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Records a grant that lasts [`DEFAULT_LIFETIME`]. See
    /// [`Grants::insert_until`].
    pub fn insert(&self, grant: Grant) -> Result<(), GrantError> {
        self.insert_until(grant, None)
    }

    /// Records a grant until `expires_at` (at most [`MAX_LIFETIME`] from
    /// now; `None`: [`DEFAULT_LIFETIME`]). Granting the same transfer again
    /// with the same content is a no-op that keeps the first expiry; with
    /// another content, an error; after a revocation, an error.
    pub fn insert_until(
        &self,
        grant: Grant,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), GrantError> {
        if !is_transfer_id(&grant.transfer_id) {
            return Err(GrantError::BadId(grant.transfer_id));
        }
        self.sweep();
        if lock(&self.revoked).contains_key(&grant.transfer_id) {
            return Err(GrantError::Revoked(grant.transfer_id));
        }
        if let Some(existing) = lock(&self.cache).get(&grant.transfer_id) {
            return if existing.grant == grant {
                Ok(())
            } else {
                Err(GrantError::Conflict(grant.transfer_id))
            };
        }
        let now = Utc::now().timestamp();
        let latest = now.saturating_add(seconds(MAX_LIFETIME));
        let expires_at = expires_at
            .map(|t| t.timestamp())
            .unwrap_or_else(|| now.saturating_add(seconds(DEFAULT_LIFETIME)))
            .min(latest);
        let stored = Stored { grant, expires_at };
        let text = serde_json::to_vec_pretty(&stored).unwrap_or_default();
        Self::write(&self.grant_path(&stored.grant.transfer_id), &text)?;
        lock(&self.cache).insert(stored.grant.transfer_id.clone(), stored);
        Ok(())
    }

    /// Forgets a grant without a tombstone (tests and tools; the controller
    /// revokes, see [`Grants::revoke`]).
    pub fn remove(&self, transfer_id: &str) {
        lock(&self.cache).remove(transfer_id);
        if is_transfer_id(transfer_id) {
            let _ = std::fs::remove_file(self.grant_path(transfer_id));
        }
        self.end_sessions(transfer_id);
    }

    /// Ends `transfer_id`'s grant now: later calls are refused, its open
    /// snapshot sessions end, and the id cannot be granted again. `true`
    /// when a live grant was revoked; revoking again, or a transfer never
    /// granted here, is fine (`false`).
    pub fn revoke(&self, transfer_id: &str) -> Result<bool, GrantError> {
        if !is_transfer_id(transfer_id) {
            return Err(GrantError::BadId(transfer_id.to_owned()));
        }
        let now = Utc::now().timestamp();
        let tombstone = self.tombstone_path(transfer_id);
        if !lock(&self.revoked).contains_key(transfer_id) {
            Self::write(&tombstone, now.to_string().as_bytes())?;
            lock(&self.revoked).insert(transfer_id.to_owned(), now);
        }
        let live = lock(&self.cache)
            .remove(transfer_id)
            .is_some_and(|stored| stored.expires_at > now);
        let path = self.grant_path(transfer_id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(GrantError::Io { path, source }),
        }
        self.end_sessions(transfer_id);
        self.sweep();
        Ok(live)
    }

    fn end_sessions(&self, transfer_id: &str) {
        if let Some(sessions) = lock(&self.sessions).get(transfer_id) {
            sessions.ended.send_replace(true);
        }
    }

    /// Removes expired grants and old tombstones, from memory and disk.
    pub fn sweep(&self) {
        let now = Utc::now().timestamp();
        let expired: Vec<String> = lock(&self.cache)
            .iter()
            .filter(|(_, stored)| stored.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::info!(message = "grant expired; removed", transfer_id = %id);
            lock(&self.cache).remove(&id);
            let _ = std::fs::remove_file(self.grant_path(&id));
            self.end_sessions(&id);
        }
        let forgotten: Vec<String> = lock(&self.revoked)
            .iter()
            .filter(|(_, at)| at.saturating_add(seconds(REVOKED_KEPT)) <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in forgotten {
            lock(&self.revoked).remove(&id);
            let _ = std::fs::remove_file(self.tombstone_path(&id));
        }
    }

    /// The live grant of `transfer_id`, with its expiry (unix seconds).
    fn live(&self, transfer_id: &str) -> Result<Stored, Status> {
        if lock(&self.revoked).contains_key(transfer_id) {
            return Err(Status::permission_denied(format!(
                "transfer {transfer_id:?} was revoked on this host (its transfer or test ended); the controller grants a new transfer for a new copy"
            )));
        }
        let stored = lock(&self.cache).get(transfer_id).cloned();
        match stored {
            None => Err(Status::permission_denied(format!(
                "transfer {transfer_id:?} was not granted on this host (the controller grants transfers before they start)"
            ))),
            Some(stored) if stored.expires_at <= Utc::now().timestamp() => {
                self.sweep();
                Err(Status::permission_denied(format!(
                    "the grant of transfer {transfer_id} expired at {}; the controller grants a new transfer for a new copy",
                    when(stored.expires_at)
                )))
            }
            Some(stored) => Ok(stored),
        }
    }

    /// The grant for `transfer_id`, if it is live and the caller of
    /// `request` is the agent of the host it was granted to. Every
    /// peer-service handler starts here.
    pub fn authorise<T>(
        &self,
        request: &tonic::Request<T>,
        transfer_id: &str,
    ) -> Result<Grant, Status> {
        let role = caller_role(request)?;
        // Peers are not trusted to send a short, clean id: it is checked
        // before it is looked up or quoted back.
        crate::ids::TransferId::parse("transfer_id", transfer_id)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let stored = self.live(transfer_id)?;
        match role {
            Role::Agent { host_id } if *host_id == stored.grant.target_host_id => Ok(stored.grant),
            other => Err(Status::permission_denied(format!(
                "transfer {transfer_id} was granted to host {}; the caller is {other}",
                stored.grant.target_host_id
            ))),
        }
    }

    /// Authorises like [`Grants::authorise`], and counts one more snapshot
    /// session of the grant, refused beyond [`MAX_SNAPSHOT_SESSIONS`]. The
    /// session is counted until the permit is dropped; the permit says when
    /// the grant ends ([`SessionPermit::ended`]).
    pub fn open_session<T>(
        &self,
        request: &tonic::Request<T>,
        transfer_id: &str,
    ) -> Result<(Grant, SessionPermit), Status> {
        let grant = self.authorise(request, transfer_id)?;
        let expires_at = self.live(transfer_id)?.expires_at;
        let mut table = lock(&self.sessions);
        let sessions = table
            .entry(transfer_id.to_owned())
            .or_insert_with(|| Sessions {
                open: 0,
                ended: watch::Sender::new(false),
            });
        if sessions.open >= MAX_SNAPSHOT_SESSIONS {
            return Err(Status::resource_exhausted(format!(
                "transfer {transfer_id} already holds {} snapshot sessions on this host, the most one grant may hold at once; close one (end its HoldSnapshot stream) before opening another",
                sessions.open
            )));
        }
        sessions.open += 1;
        let permit = SessionPermit {
            transfer_id: transfer_id.to_owned(),
            table: self.sessions.clone(),
            ended: sessions.ended.subscribe(),
            expires_at,
        };
        Ok((grant, permit))
    }

    /// Snapshot sessions `transfer_id` holds now.
    pub fn open_sessions(&self, transfer_id: &str) -> usize {
        lock(&self.sessions)
            .get(transfer_id)
            .map_or(0, |sessions| sessions.open)
    }
}

/// One snapshot session of a grant: counted while this lives.
#[derive(Debug)]
pub struct SessionPermit {
    transfer_id: String,
    table: SessionTable,
    ended: watch::Receiver<bool>,
    /// The grant's expiry, unix seconds.
    expires_at: i64,
}

impl SessionPermit {
    /// Waits until the grant ends (revoked or expired); says which.
    pub async fn ended(&mut self) -> &'static str {
        let left = self.expires_at.saturating_sub(Utc::now().timestamp());
        let expiry = tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0)));
        tokio::select! {
            revoked = self.ended.wait_for(|ended| *ended) => {
                if revoked.is_ok() { "the grant was revoked" } else { "the grant was forgotten" }
            }
            () = expiry => "the grant expired",
        }
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut table = lock(&self.table);
        if let Some(sessions) = table.get_mut(&self.transfer_id) {
            sessions.open = sessions.open.saturating_sub(1);
            if sessions.open == 0 {
                table.remove(&self.transfer_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str) -> Grant {
        Grant {
            transfer_id: id.to_owned(),
            account: "alice".to_owned(),
            target_host_id: "test-1".to_owned(),
            home: Some(PathBuf::from("/home/alice")),
            postgresql: vec![GrantedDatabase {
                server: "main".to_owned(),
                database: "alice".to_owned(),
            }],
            mariadb: vec![],
            protocol_version: 2,
        }
    }

    fn request_from(role: Role) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        request
            .extensions_mut()
            .insert(navette_proto::gate::Caller {
                name: role.to_string(),
                role,
            });
        request
    }

    fn target() -> tonic::Request<()> {
        request_from(Role::Agent {
            host_id: "test-1".to_owned(),
        })
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("navette-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn grants_survive_a_restart_and_name_their_one_reader() -> Result<(), GrantError> {
        let dir = scratch("grants");
        let grants = Grants::open(&dir)?;
        grants.insert(grant("t-1"))?;
        grants.insert(grant("t-1"))?;
        let mut other = grant("t-1");
        other.account = "bob".to_owned();
        assert!(matches!(grants.insert(other), Err(GrantError::Conflict(_))));
        assert!(matches!(
            grants.insert(grant("../x")),
            Err(GrantError::BadId(_))
        ));

        let reopened = Grants::open(&dir)?;
        assert!(reopened.authorise(&target(), "t-1").is_ok());
        assert!(reopened.authorise(&target(), "t-2").is_err());
        let stranger = request_from(Role::Agent {
            host_id: "shared-9".to_owned(),
        });
        let refused = reopened
            .authorise(&stranger, "t-1")
            .err()
            .map(|s| s.message().to_owned());
        assert_eq!(
            refused.as_deref(),
            Some("transfer t-1 was granted to host test-1; the caller is agent of host shared-9")
        );
        // A peer's megabyte of id is refused by its rule, quoted short.
        let huge = "t".repeat(1 << 20);
        let refused = reopened.authorise(&target(), &huge).err();
        assert_eq!(
            refused.as_ref().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
        assert!(refused.is_some_and(|s| s.message().len() < 200));
        reopened.remove("t-1");
        assert!(Grants::open(&dir)?.authorise(&target(), "t-1").is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn an_expired_grant_is_refused_and_swept_from_disk() -> Result<(), GrantError> {
        let dir = scratch("grants-expiry");
        let grants = Grants::open(&dir)?;
        let past = Utc::now() - chrono::Duration::seconds(1);
        grants.insert_until(grant("t-old"), Some(past))?;
        let refused = grants.authorise(&target(), "t-old").err();
        assert!(
            refused
                .as_ref()
                .is_some_and(|s| s.message().contains("expired")),
            "{refused:?}"
        );
        assert!(!dir.join("grants/t-old.json").exists(), "swept from disk");
        // An expiry beyond the cap is cut to it.
        let far = Utc::now() + chrono::Duration::days(365);
        grants.insert_until(grant("t-far"), Some(far))?;
        let text = std::fs::read_to_string(dir.join("grants/t-far.json")).unwrap_or_default();
        let stored: Option<Stored> = serde_json::from_str(&text).ok();
        let cap = Utc::now().timestamp() + seconds(MAX_LIFETIME);
        assert!(stored.is_some_and(|s| s.expires_at <= cap));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_revoked_grant_is_refused_for_good_and_revoking_is_idempotent() -> Result<(), GrantError> {
        let dir = scratch("grants-revoke");
        let grants = Grants::open(&dir)?;
        grants.insert(grant("t-1"))?;
        assert!(grants.revoke("t-1")?);
        assert!(!grants.revoke("t-1")?);
        assert!(!grants.revoke("t-never")?);
        let refused = grants.authorise(&target(), "t-1").err();
        assert!(refused.is_some_and(|s| s.message().contains("revoked")));
        assert!(matches!(
            grants.insert(grant("t-1")),
            Err(GrantError::Revoked(_))
        ));
        // A restart remembers the revocation.
        let reopened = Grants::open(&dir)?;
        assert!(matches!(
            reopened.insert(grant("t-1")),
            Err(GrantError::Revoked(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn snapshot_sessions_are_bounded_and_end_with_the_grant() -> Result<(), GrantError> {
        let dir = scratch("grants-sessions");
        let grants = Grants::open(&dir)?;
        grants.insert(grant("t-1"))?;
        let mut permits = Vec::new();
        for _ in 0..MAX_SNAPSHOT_SESSIONS {
            let opened = grants.open_session(&target(), "t-1");
            assert!(opened.is_ok(), "{opened:?}");
            if let Ok((_, permit)) = opened {
                permits.push(permit);
            }
        }
        let refused = grants.open_session(&target(), "t-1").err();
        assert!(
            refused
                .as_ref()
                .is_some_and(|s| s.code() == tonic::Code::ResourceExhausted
                    && s.message().contains("snapshot sessions")),
            "{refused:?}"
        );
        permits.pop();
        assert_eq!(grants.open_sessions("t-1"), MAX_SNAPSHOT_SESSIONS - 1);
        assert!(grants.open_session(&target(), "t-1").is_ok());
        grants.revoke("t-1")?;
        let ended = tokio::time::timeout(Duration::from_secs(5), permits[0].ended()).await;
        assert_eq!(ended.ok(), Some("the grant was revoked"));
        drop(permits);
        assert_eq!(grants.open_sessions("t-1"), 0);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
