//! The agent's side of `navette.v1.AgentGateway`: the link to the controller
//! (mutual TLS with the agent's current certificate), the heartbeat loop
//! that also reports changed inventories, and the inventory collection loop.
//!
//! Each heartbeat's answer also carries the serials of agent certificates
//! the controller no longer accepts; they go to [`RefusedCertificates`],
//! which the agent's listener consults for every peer call.
//!
//! Owns the reconnection policy: after any failed call the channel is thrown
//! away and the next call dials again, with capped exponential backoff, so a
//! controller that was killed and restarted is found again without help.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use navette_proto::identity::CONTROLLER_SERVER_NAME;
use navette_proto::tls::{self, Identity, TlsError};
use navette_proto::v1::HeartbeatRequest;
use navette_proto::v1::agent_gateway_client::AgentGatewayClient;
use rustls::RootCertStore;
use tonic::transport::Channel;

use crate::inventory::{Collector, LatestInventory};
use crate::peer_identity::RefusedCertificates;
use crate::shutdown::Shutdown;

/// How long one call to the controller may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// First pause after a failed heartbeat; doubled after each further failure,
/// up to the heartbeat interval.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Why a call to the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The controller answered with an error, or could not be reached.
    #[error("controller {controller}: {method}: {status}")]
    Rpc {
        controller: SocketAddr,
        method: &'static str,
        status: String,
    },
    /// No answer in time.
    #[error("controller {controller}: {method}: no answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout {
        controller: SocketAddr,
        method: &'static str,
    },
    /// The TLS client could not be built.
    #[error("controller {controller}: cannot set up mutual TLS")]
    Tls {
        controller: SocketAddr,
        #[source]
        source: TlsError,
    },
}

/// The connection to the controller's `AgentGateway`.
#[derive(Debug)]
pub struct ControllerLink {
    address: SocketAddr,
    state: Mutex<LinkState>,
}

#[derive(Debug)]
struct LinkState {
    /// Presents the agent's current certificate.
    client_config: Arc<rustls::ClientConfig>,
    /// Dropped after a failure or a renewal; made again on the next call.
    channel: Option<Channel>,
}

impl ControllerLink {
    pub fn new(
        address: SocketAddr,
        roots: Arc<RootCertStore>,
        identity: Identity,
    ) -> Result<ControllerLink, GatewayError> {
        let client_config =
            tls::client_config(roots, Some(identity)).map_err(|source| GatewayError::Tls {
                controller: address,
                source,
            })?;
        Ok(ControllerLink {
            address,
            state: Mutex::new(LinkState {
                client_config,
                channel: None,
            }),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A client on the current channel, dialling a new one if needed.
    pub fn client(&self) -> Result<AgentGatewayClient<Channel>, GatewayError> {
        let mut state = self.state();
        if let Some(channel) = &state.channel {
            return Ok(AgentGatewayClient::new(channel.clone()));
        }
        let channel = tls::channel(
            self.address,
            CONTROLLER_SERVER_NAME,
            state.client_config.clone(),
        )
        .map_err(|source| GatewayError::Tls {
            controller: self.address,
            source,
        })?;
        state.channel = Some(channel.clone());
        Ok(AgentGatewayClient::new(channel))
    }

    /// The TLS client configuration presenting the agent's current
    /// certificate, for calls to peer agents too.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.state().client_config.clone()
    }

    /// Forgets the channel: the next call dials afresh.
    pub fn reset(&self) {
        self.state().channel = None;
    }

    /// Uses a renewed certificate (and possibly rotated CA) from now on.
    pub fn replace_identity(
        &self,
        roots: Arc<RootCertStore>,
        identity: Identity,
    ) -> Result<(), GatewayError> {
        let client_config =
            tls::client_config(roots, Some(identity)).map_err(|source| GatewayError::Tls {
                controller: self.address,
                source,
            })?;
        let mut state = self.state();
        state.client_config = client_config;
        state.channel = None;
        Ok(())
    }

    /// Runs one call with a timeout; on failure the channel is dropped.
    pub async fn call<T, F, Fut>(&self, method: &'static str, call: F) -> Result<T, GatewayError>
    where
        F: FnOnce(AgentGatewayClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client()?;
        let result = match tokio::time::timeout(CALL_TIMEOUT, call(client)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => GatewayError::Rpc {
                controller: self.address,
                method,
                status: crate::describe_status(&status),
            },
            Err(_) => GatewayError::Timeout {
                controller: self.address,
                method,
            },
        };
        self.reset();
        Err(result)
    }
}

/// Capped exponential backoff.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first = first.min(max);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// What the heartbeat loop needs.
#[derive(Debug)]
pub struct Heartbeats {
    pub link: Arc<ControllerLink>,
    pub host_id: String,
    /// `advertise` (default `listen`): where the controller reaches us.
    pub agent_endpoint: String,
    pub latest: LatestInventory,
    pub interval: Duration,
    /// Where the controller's list of refused peer certificates goes.
    pub refused: RefusedCertificates,
}

impl Heartbeats {
    /// Beats every `interval` (and as soon as the inventory changes) until
    /// shutdown, retrying failures with backoff.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut changes = self.latest.subscribe();
        let mut reported_digest: Option<String> = None;
        let mut backoff = Backoff::new(FIRST_RETRY, self.interval);
        let mut failing = false;
        loop {
            let pause = match self.beat(&mut reported_digest).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(message = "controller reachable again", controller = %self.link.address());
                    }
                    failing = false;
                    backoff.reset();
                    self.interval
                }
                Err(error) => {
                    failing = true;
                    let pause = backoff.next_pause();
                    tracing::warn!(
                        message = "heartbeat failed; retrying",
                        controller = %self.link.address(),
                        host_id = %self.host_id,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        error = %crate::error_chain(&error)
                    );
                    pause
                }
            };
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(pause) => {}
                Ok(()) = changes.changed(), if !failing => {}
            }
        }
    }

    /// One heartbeat, then the inventory when the controller asks for it or
    /// when it changed since the last report.
    async fn beat(&self, reported_digest: &mut Option<String>) -> Result<(), GatewayError> {
        let current = self.latest.current();
        let request = HeartbeatRequest {
            host_id: self.host_id.clone(),
            agent_endpoint: self.agent_endpoint.clone(),
            inventory_digest: current
                .as_ref()
                .map(|collected| collected.digest.clone())
                .unwrap_or_default(),
        };
        let response = self
            .link
            .call("Heartbeat", |mut client| async move {
                client.heartbeat(request).await
            })
            .await?;
        match self.refused.replace(
            &response.refused_certificate_serials,
            &response.renewed_certificate_serials,
        ) {
            Ok(true) => tracing::info!(
                message = "refused peer certificates updated",
                host_id = %self.host_id,
                count = response.refused_certificate_serials.len()
            ),
            Ok(false) => {}
            // Still applied in memory; only the copy on disk is stale.
            Err(error) => tracing::warn!(
                message = "cannot keep the refused peer certificates on disk",
                error = %crate::error_chain(&error)
            ),
        }
        let Some(current) = current else {
            return Ok(());
        };
        if response.send_inventory || reported_digest.as_deref() != Some(current.digest.as_str()) {
            let inventory = current.inventory.clone();
            self.link
                .call("ReportInventory", |mut client| async move {
                    client.report_inventory(inventory).await
                })
                .await?;
            tracing::info!(
                message = "inventory reported",
                controller = %self.link.address(),
                host_id = %self.host_id,
                digest = %current.digest,
                accounts = current.inventory.accounts.len(),
                requested = response.send_inventory
            );
            *reported_digest = Some(current.digest.clone());
        }
        Ok(())
    }
}

/// Collects the inventory now and every `interval` until shutdown.
pub async fn collect_inventory(
    collector: Collector,
    latest: LatestInventory,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            result = collector.collect() => match result {
                Ok(collected) => {
                    tracing::debug!(message = "inventory collected", digest = %collected.digest);
                    latest.publish(collected);
                }
                Err(error) => tracing::warn!(
                    message = "inventory collection failed; keeping the previous one",
                    error = %crate::error_chain(&error)
                ),
            },
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let pauses: Vec<u128> = (0..6).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(500));
    }

    #[test]
    fn backoff_never_starts_above_its_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_millis(100));
        assert_eq!(backoff.next_pause(), Duration::from_millis(100));
    }
}
