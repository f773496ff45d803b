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
    /// Host changes from every controller, as `host_id:change` (see
    /// `db::listen_host_changes`); an empty string means "resynchronise".
    pub host_changes: broadcast::Sender<String>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}
