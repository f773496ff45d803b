//! The controller's own certificates: it issues itself a serving and client
//! certificate from its CA at start-up and renews it while running, so no
//! controller certificate file needs rotating.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use navette_proto::tls::{
    ClientAuth, ReloadableServerConfig, ca_roots, client_config, server_config,
};
use rustls::RootCertStore;

use crate::ca::CertificateAuthority;
use crate::config::Tls;
use crate::error::{Error, Result};

pub struct ControllerTls {
    roots: Arc<RootCertStore>,
    /// Mutual TLS: panel, operators, agents.
    pub api: ReloadableServerConfig,
    /// TLS without client certificates: enrolment only.
    pub enrolment: ReloadableServerConfig,
    /// For calls to agents.
    client: RwLock<Arc<rustls::ClientConfig>>,
    not_after: RwLock<chrono::DateTime<chrono::Utc>>,
}

struct Configs {
    api: Arc<rustls::ServerConfig>,
    enrolment: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    not_after: chrono::DateTime<chrono::Utc>,
}

fn tls_error(error: navette_proto::tls::TlsError) -> Error {
    Error::Internal(format!("TLS configuration: {error}"))
}

fn issue(ca: &CertificateAuthority, roots: &Arc<RootCertStore>, config: &Tls) -> Result<Configs> {
    let lifetime = Duration::from_secs(config.controller_certificate_ttl_secs.max(60));
    let (identity, not_after) = ca.controller_identity(&config.server_names, lifetime)?;
    Ok(Configs {
        api: server_config(roots.clone(), identity.clone(), ClientAuth::Required)
            .map_err(tls_error)?,
        enrolment: server_config(roots.clone(), identity.clone(), ClientAuth::None)
            .map_err(tls_error)?,
        client: client_config(roots.clone(), Some(identity)).map_err(tls_error)?,
        not_after,
    })
}

impl ControllerTls {
    pub fn new(ca: &CertificateAuthority, config: &Tls) -> Result<ControllerTls> {
        let roots = ca_roots(ca.certificate_pem(), "CA certificate").map_err(tls_error)?;
        let configs = issue(ca, &roots, config)?;
        Ok(ControllerTls {
            api: ReloadableServerConfig::new(configs.api),
            enrolment: ReloadableServerConfig::new(configs.enrolment),
            client: RwLock::new(configs.client),
            not_after: RwLock::new(configs.not_after),
            roots,
        })
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        match self.client.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn not_after(&self) -> chrono::DateTime<chrono::Utc> {
        match self.not_after.read() {
            Ok(at) => *at,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Issues a fresh certificate and swaps it in for new connections.
    pub fn renew(&self, ca: &CertificateAuthority, config: &Tls) -> Result<()> {
        let configs = issue(ca, &self.roots, config)?;
        self.api.replace(configs.api);
        self.enrolment.replace(configs.enrolment);
        match self.client.write() {
            Ok(mut client) => *client = configs.client,
            Err(poisoned) => *poisoned.into_inner() = configs.client,
        }
        match self.not_after.write() {
            Ok(mut at) => *at = configs.not_after,
            Err(poisoned) => *poisoned.into_inner() = configs.not_after,
        }
        tracing::info!(message = "controller certificate renewed", not_after = %configs.not_after);
        Ok(())
    }

    /// When to renew: two thirds into the certificate's life.
    pub fn renew_at(&self, config: &Tls) -> chrono::DateTime<chrono::Utc> {
        let lifetime = chrono::Duration::seconds(
            i64::try_from(config.controller_certificate_ttl_secs).unwrap_or(i64::MAX / 4),
        );
        self.not_after() - lifetime / 3
    }
}
