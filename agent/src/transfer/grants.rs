//! Grants: which target host may read which of this host's data, for which
//! transfer. Kept on disk (`<state_dir>/grants/<transfer id>.json`) so that
//! a restarted source agent still serves a transfer that is resuming.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use navette_proto::gate::caller_role;
use navette_proto::identity::Role;
use serde::{Deserialize, Serialize};
use tonic::Status;

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
}

/// The grants of this host, on disk and cached.
#[derive(Debug)]
pub struct Grants {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Grant>>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Grants {
    /// Opens (and creates) `<state_dir>/grants`, loading what is there.
    pub fn open(state_dir: &Path) -> Result<Grants, GrantError> {
        let dir = state_dir.join("grants");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| GrantError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut cache = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            match serde_json::from_str::<Grant>(&text) {
                Ok(grant) => {
                    cache.insert(grant.transfer_id.clone(), grant);
                }
                Err(error) => {
                    tracing::warn!(message = "ignoring an unreadable grant", path = %path.display(), %error);
                }
            }
        }
        Ok(Grants {
            dir,
            cache: Mutex::new(cache),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a grant. Granting the same transfer again with the same
    /// content is a no-op; with another content, an error.
    pub fn insert(&self, grant: Grant) -> Result<(), GrantError> {
        if !valid_id(&grant.transfer_id) {
            return Err(GrantError::BadId(grant.transfer_id));
        }
        if let Some(existing) = self.lock().get(&grant.transfer_id) {
            return if *existing == grant {
                Ok(())
            } else {
                Err(GrantError::Conflict(grant.transfer_id))
            };
        }
        let path = self.dir.join(format!("{}.json", grant.transfer_id));
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(&grant).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(|source| GrantError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| GrantError::Io {
            path: path.clone(),
            source,
        })?;
        self.lock().insert(grant.transfer_id.clone(), grant);
        Ok(())
    }

    /// Forgets a grant (the transfer is over).
    pub fn remove(&self, transfer_id: &str) {
        self.lock().remove(transfer_id);
        if valid_id(transfer_id) {
            let _ = std::fs::remove_file(self.dir.join(format!("{transfer_id}.json")));
        }
    }

    /// The grant for `transfer_id`, if the caller of `request` is the agent
    /// of the host it was granted to. Every peer-service handler starts here.
    pub fn authorise<T>(
        &self,
        request: &tonic::Request<T>,
        transfer_id: &str,
    ) -> Result<Grant, Status> {
        let role = caller_role(request)?;
        let grant = self.lock().get(transfer_id).cloned().ok_or_else(|| {
            Status::permission_denied(format!(
                "transfer {transfer_id:?} was not granted on this host (the controller grants transfers before they start)"
            ))
        })?;
        match role {
            Role::Agent { host_id } if *host_id == grant.target_host_id => Ok(grant),
            other => Err(Status::permission_denied(format!(
                "transfer {transfer_id} was granted to host {}; the caller is {other}",
                grant.target_host_id
            ))),
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

    #[test]
    fn grants_survive_a_restart_and_name_their_one_reader() -> Result<(), GrantError> {
        let dir = std::env::temp_dir().join(format!("navette-grants-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
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
        let target = request_from(Role::Agent {
            host_id: "test-1".to_owned(),
        });
        assert!(reopened.authorise(&target, "t-1").is_ok());
        assert!(reopened.authorise(&target, "t-2").is_err());
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
        reopened.remove("t-1");
        assert!(Grants::open(&dir)?.authorise(&target, "t-1").is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
