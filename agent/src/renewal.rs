//! Certificate renewal: when two thirds of the certificate's lifetime have
//! passed, a new key and CSR go to `AgentGateway/RenewCertificate` (over
//! mutual TLS with the current certificate); the new pair is stored, the
//! listener's certificate swapped and the controller link rebuilt, all
//! without a restart.
//!
//! The key never leaves the host. On failure: retry every 30 s, or sooner
//! when the certificate is about to expire, with a warning that says when it
//! expires.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use navette_proto::tls::{self, ClientAuth, ReloadableServerConfig, TlsError};
use navette_proto::v1::RenewCertificateRequest;

use crate::gateway::{ControllerLink, GatewayError};
use crate::identity_store::{self, IdentityStore, StoreError, Validity};
use crate::shutdown::Shutdown;

/// Pause between two failed renewals, unless the certificate expires sooner.
const RETRY: Duration = Duration::from_secs(30);

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    #[error("certificate renewal")]
    Gateway(#[from] GatewayError),
    #[error("certificate renewal")]
    Store(#[from] StoreError),
    #[error("certificate renewal: cannot use the new certificate")]
    Tls(#[from] TlsError),
}

/// What the renewal loop works on.
#[derive(Debug)]
pub struct Renewal {
    pub store: IdentityStore,
    pub link: Arc<ControllerLink>,
    /// The agent listener's certificate, swapped after each renewal.
    pub server_tls: ReloadableServerConfig,
    pub host_id: String,
    /// Of the certificate in use.
    pub validity: Validity,
    /// When the certificate in use was obtained.
    pub obtained_at: DateTime<Utc>,
}

impl Renewal {
    /// Renews at two thirds of each certificate's lifetime until shutdown.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        loop {
            let renew_at = self.validity.renew_at(self.obtained_at);
            tracing::info!(
                message = "certificate renewal scheduled",
                host_id = %self.host_id,
                renew_at = %renew_at.to_rfc3339(),
                expires_at = %self.validity.not_after.to_rfc3339()
            );
            let wait = (renew_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(wait) => {}
            }
            loop {
                match self.renew_once().await {
                    Ok((validity, obtained_at)) => {
                        tracing::info!(
                            message = "certificate renewed",
                            host_id = %self.host_id,
                            expires_at = %validity.not_after.to_rfc3339()
                        );
                        self.validity = validity;
                        self.obtained_at = obtained_at;
                        // Never renew twice within a second, whatever the
                        // controller's lifetimes.
                        tokio::select! {
                            () = shutdown.wait() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        break;
                    }
                    Err(error) => {
                        let now = Utc::now();
                        let error = crate::error_chain(&error);
                        let expires_at = self.validity.not_after.to_rfc3339();
                        if self.validity.is_expired_at(now) {
                            tracing::error!(
                                message = "certificate expired and could not be renewed; the controller will refuse this agent until it is enrolled again with a new join token (`enrol --force`)",
                                host_id = %self.host_id,
                                expired_at = %expires_at,
                                %error
                            );
                        } else {
                            tracing::warn!(
                                message = "certificate renewal failed; retrying",
                                host_id = %self.host_id,
                                expires_at = %expires_at,
                                %error
                            );
                        }
                        let remaining = (self.validity.not_after - now)
                            .to_std()
                            .unwrap_or(Duration::ZERO);
                        let pause = RETRY.min(remaining / 2).max(Duration::from_secs(1));
                        tokio::select! {
                            () = shutdown.wait() => return,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        }
    }

    /// One renewal: new key, signed certificate, stored, put to use.
    async fn renew_once(&self) -> Result<(Validity, DateTime<Utc>), RenewalError> {
        let key = identity_store::new_key_and_csr()?;
        let request = RenewCertificateRequest {
            csr_pem: key.csr_pem.clone(),
        };
        let bundle = self
            .link
            .call("RenewCertificate", |mut client| async move {
                client.renew_certificate(request).await
            })
            .await?;
        let accepted = identity_store::accept_bundle(bundle, &key, Some(&self.host_id))?;
        self.store.save_renewal(&key, &accepted)?;
        // Read back what was stored, so what runs is what the next start
        // will load.
        let stored = self.store.load()?;
        let server_config = tls::server_config(
            stored.roots.clone(),
            stored.identity.clone(),
            ClientAuth::Required,
        )?;
        self.server_tls.replace(server_config);
        self.link.replace_identity(stored.roots, stored.identity)?;
        Ok((stored.validity, stored.obtained_at))
    }
}
