//! Running an account's sites on a host, as the controller asks it: the
//! domain side of the agent API's `StartSites` and `StopSites`. On a test
//! host the test starts the sites its source's inventory lists, from the
//! copy's home, with the endpoints of the servers the copy's databases
//! landed on; deleting the test stops them. Plain data and thin calls;
//! [`super::wire`] converts to `navette.v1`.

use super::{CALL_TIMEOUT, CallFailure, call_outcome, client, wire};
use crate::model::{Host, Site};
use crate::state::Controller;

/// Where a site's code finds its databases by default (the pool's
/// environment and PHP defaults): the customer's files name no host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteDatabases {
    /// PostgreSQL: a socket directory or a host, and a port.
    pub postgres: Option<(String, u16)>,
    /// MariaDB: a host (`localhost` with a socket), a port, a socket path
    /// (empty: none).
    pub mariadb: Option<(String, u16, String)>,
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SitesSpec {
    pub account: String,
    /// The copy whose home the sites run from (a test's id); `None`: the
    /// account's own home on that host.
    pub copy_id: Option<String>,
    /// Empty: those the host's definitions list for the account.
    pub sites: Vec<Site>,
    /// `None`: the host's own first database servers.
    pub databases: Option<SiteDatabases>,
}

/// What the agent started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedSites {
    pub sites: Vec<Site>,
    /// The pool was running already (a retry): nothing was restarted.
    pub already_running: bool,
}

/// Starts `spec`'s sites on `host`. Safe to repeat.
pub async fn start_sites(
    controller: &Controller,
    host: &Host,
    spec: &SitesSpec,
) -> Result<StartedSites, CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    let mut request = tonic::Request::new(wire::start_sites_request(spec));
    request.set_timeout(CALL_TIMEOUT);
    let response = client
        .start_sites(request)
        .await
        .map_err(|status| call_outcome(host, &status))?;
    Ok(wire::started_sites(response.get_ref()))
}

/// Stops `account`'s sites on `host`; whether anything was running. Safe
/// to repeat.
pub async fn stop_sites(
    controller: &Controller,
    host: &Host,
    account: &str,
) -> Result<bool, CallFailure> {
    let mut client = client(controller, host).map_err(|e| CallFailure::Refused(e.to_string()))?;
    let mut request = tonic::Request::new(navette_proto::v1::StopSitesRequest {
        account: account.to_owned(),
    });
    request.set_timeout(CALL_TIMEOUT);
    client
        .stop_sites(request)
        .await
        .map(|response| response.get_ref().stopped)
        .map_err(|status| call_outcome(host, &status))
}
