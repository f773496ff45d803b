//! What every part of a running controller shares.

use deadpool_postgres::Pool;
use tokio::sync::broadcast;

use crate::ca::CertificateAuthority;
use crate::catalogue::Catalogue;
use crate::config::Config;
use crate::tls::ControllerTls;

/// A running controller.
pub struct Controller {
    pub config: Config,
    /// The state database (shared with other controllers).
    pub db: Pool,
    pub ca: CertificateAuthority,
    /// Loaded and checked at start-up; immutable.
    pub catalogue: Catalogue,
    /// The controller's own certificates, renewed while it runs.
    pub tls: ControllerTls,
    /// Committed changes from every controller (see `db::listen_changes`).
    pub changes: broadcast::Sender<crate::db::Change>,
    /// This controller's name in leases (`<hostname>-<pid>-<random>`).
    pub controller_id: String,
    /// Which agent certificate is each host's current one (cached).
    pub certificates: std::sync::Arc<crate::certificates::AgentCertificates>,
    /// The platform's DNS, when `[dns] server` is set.
    pub dns: Option<crate::dns::PlatformDns>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}
