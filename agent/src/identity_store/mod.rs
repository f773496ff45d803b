//! The agent's identity on disk and in memory: its private key, its
//! certificate, the CA it trusts and the host id it became.
//!
//! Owns `state_dir/{agent.key,agent.pem,ca.pem,host_id}` and is the only code
//! that writes them. Every file is written atomically (temporary file, fsync,
//! rename, fsync of the directory). A new key and certificate are installed
//! as a pair through `agent.key.next` / `agent.pem.next`, so a crash between
//! the two renames is rolled forward at the next start instead of leaving a
//! key that does not match its certificate.
//!
//! The checks on certificates (validity, renewal point, what the controller
//! sends back) live in the `certificate` submodule, re-exported here.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod certificate;

use chrono::{DateTime, Utc};
use navette_proto::identity::{Role, validate_host_id};
use navette_proto::tls::{self, Identity, TlsError};
use rcgen::PublicKeyData;
use rustls::RootCertStore;

pub use certificate::{
    AcceptedBundle, CertificateFacts, NewKey, Validity, accept_bundle, inspect_certificate,
    new_key_and_csr,
};

const KEY_FILE: &str = "agent.key";
const CERT_FILE: &str = "agent.pem";
const CA_FILE: &str = "ca.pem";
const HOST_ID_FILE: &str = "host_id";
const NEXT_SUFFIX: &str = ".next";

/// What can go wrong with the identity files or the controller's answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No certificate in the state directory.
    #[error("no agent certificate at {path}")]
    NotEnrolled { path: PathBuf },
    /// A file or the controller's answer is not what it must be.
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    /// PEM or rustls trouble.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Key or CSR generation failed.
    #[error("cannot generate the agent key or its certificate request")]
    KeyGeneration(#[source] rcgen::Error),
}

/// Everything `run` needs from the state directory.
#[derive(Clone, Debug)]
pub struct StoredIdentity {
    pub host_id: String,
    pub identity: Identity,
    pub roots: Arc<RootCertStore>,
    pub validity: Validity,
    /// When the certificate file was written (its modification time), i.e.
    /// when this agent obtained the certificate.
    pub obtained_at: DateTime<Utc>,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct IdentityStore {
    dir: PathBuf,
}

impl IdentityStore {
    pub fn new(dir: &Path) -> IdentityStore {
        IdentityStore {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn next_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{NEXT_SUFFIX}"))
    }

    /// The certificate file; its presence means "enrolled".
    pub fn certificate_path(&self) -> PathBuf {
        self.path(CERT_FILE)
    }

    /// Whether a certificate is installed (after rolling a half-installed
    /// pair forward).
    pub fn is_enrolled(&self) -> Result<bool, StoreError> {
        self.recover()?;
        Ok(self.certificate_path().exists())
    }

    /// Loads and checks the identity: the key matches the certificate, which
    /// names the agent of the stored host id.
    pub fn load(&self) -> Result<StoredIdentity, StoreError> {
        self.recover()?;
        let cert_path = self.certificate_path();
        if !cert_path.exists() {
            return Err(StoreError::NotEnrolled { path: cert_path });
        }
        let host_id_path = self.path(HOST_ID_FILE);
        let host_id = read(&host_id_path)?.trim().to_owned();
        validate_host_id(&host_id).map_err(|error| StoreError::Invalid {
            what: host_id_path.display().to_string(),
            message: error.to_string(),
        })?;
        let cert_pem = read(&cert_path)?;
        let key_path = self.path(KEY_FILE);
        let key_pem = read(&key_path)?;
        let what = cert_path.display().to_string();
        let facts = inspect_certificate(&cert_pem, &what)?;
        let expected = Role::Agent {
            host_id: host_id.clone(),
        };
        if facts.role != expected {
            return Err(StoreError::Invalid {
                what,
                message: format!("the certificate is for {}, not for {expected}", facts.role),
            });
        }
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|error| StoreError::Invalid {
            what: key_path.display().to_string(),
            message: format!("not a usable private key: {error}"),
        })?;
        if key.subject_public_key_info() != facts.public_key {
            return Err(StoreError::Invalid {
                what: key_path.display().to_string(),
                message: format!("the key does not match the certificate {what}"),
            });
        }
        let identity = Identity::from_pem(&cert_pem, &key_pem, &what)?;
        let roots = tls::load_ca_roots(&self.path(CA_FILE))?;
        let obtained_at = std::fs::metadata(&cert_path)
            .and_then(|metadata| metadata.modified())
            .map(DateTime::<Utc>::from)
            .unwrap_or(facts.validity.not_before);
        Ok(StoredIdentity {
            host_id,
            identity,
            roots,
            validity: facts.validity,
            obtained_at,
        })
    }

    /// Stores what `enrol` obtained.
    pub fn save_enrolment(&self, key: &NewKey, bundle: &AcceptedBundle) -> Result<(), StoreError> {
        self.ensure_dir()?;
        write_atomic(&self.path(CA_FILE), bundle.ca_pem.as_bytes(), 0o644)?;
        write_atomic(
            &self.path(HOST_ID_FILE),
            format!("{}\n", bundle.host_id).as_bytes(),
            0o644,
        )?;
        self.install_pair(key, bundle)
    }

    /// Stores a renewed certificate and its new key (and the CA, which the
    /// controller may have rotated).
    pub fn save_renewal(&self, key: &NewKey, bundle: &AcceptedBundle) -> Result<(), StoreError> {
        write_atomic(&self.path(CA_FILE), bundle.ca_pem.as_bytes(), 0o644)?;
        self.install_pair(key, bundle)
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StoreError::Io {
                action: "create the state directory",
                path: self.dir.clone(),
                source,
            })
    }

    fn install_pair(&self, key: &NewKey, bundle: &AcceptedBundle) -> Result<(), StoreError> {
        let (key_next, cert_next) = (self.next_path(KEY_FILE), self.next_path(CERT_FILE));
        write_atomic(&key_next, key.key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert_next, bundle.certificate_pem.as_bytes(), 0o644)?;
        self.recover()
    }

    /// Finishes a pair installation a crash interrupted. The `.next`
    /// certificate is written after the `.next` key, so: with a `.next`
    /// certificate, both new files are complete and are moved in (the key
    /// may already be); with only a `.next` key, the old pair is intact and
    /// the stray key is removed.
    fn recover(&self) -> Result<(), StoreError> {
        let (key_next, cert_next) = (self.next_path(KEY_FILE), self.next_path(CERT_FILE));
        if cert_next.exists() {
            if key_next.exists() {
                rename(&key_next, &self.path(KEY_FILE))?;
            }
            rename(&cert_next, &self.certificate_path())?;
            sync_dir(&self.dir)?;
        } else if key_next.exists() {
            std::fs::remove_file(&key_next).map_err(|source| StoreError::Io {
                action: "remove",
                path: key_next.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, StoreError> {
    std::fs::read_to_string(path).map_err(|source| StoreError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|source| StoreError::Io {
        action: "rename into place",
        path: from.to_owned(),
        source,
    })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| StoreError::Io {
            action: "sync the directory",
            path: dir.to_owned(),
            source,
        })
}

/// Writes `bytes` to `path` atomically with permission `mode`: readers see
/// the old content or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "navette-agent-store-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn atomic_writes_replace_content_with_the_given_mode() {
        let dir = temp_dir("atomic");
        let path = dir.join("agent.key");
        write_atomic(&path, b"old", 0o600).expect("first write");
        write_atomic(&path, b"new", 0o600).expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join("agent.key.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_half_installed_pair_is_rolled_forward_and_a_stray_key_removed() {
        let dir = temp_dir("recover");
        let store = IdentityStore::new(&dir);
        std::fs::write(dir.join("agent.key"), "old key").expect("old key");
        std::fs::write(dir.join("agent.pem"), "old cert").expect("old cert");
        // Crash after the new key was moved in, before the certificate.
        std::fs::write(dir.join("agent.key"), "new key").expect("new key");
        std::fs::write(dir.join("agent.pem.next"), "new cert").expect("next cert");
        assert!(store.is_enrolled().expect("recover"));
        assert_eq!(
            std::fs::read_to_string(dir.join("agent.pem")).expect("cert"),
            "new cert"
        );
        assert!(!dir.join("agent.pem.next").exists());
        // Crash before the new certificate was written: the old pair stays.
        std::fs::write(dir.join("agent.key.next"), "stray key").expect("stray");
        assert!(store.is_enrolled().expect("recover"));
        assert_eq!(
            std::fs::read_to_string(dir.join("agent.key")).expect("key"),
            "new key"
        );
        assert!(!dir.join("agent.key.next").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
