//! `navette-agent run`: loads the identity, binds the Agent listener, tells
//! systemd it is ready, and runs the server, the heartbeat, inventory and
//! renewal loops until the shutdown signal.
//!
//! Owns the wiring and the order of start and stop, nothing else: each
//! piece lives in its own module.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use navette_proto::tls::{self, ClientAuth, ReloadableServerConfig, TlsError};
use tracing::Instrument;

use crate::config::Config;
use crate::gateway::{self, ControllerLink, GatewayError, Heartbeats};
use crate::identity_store::{IdentityStore, StoreError};
use crate::inventory::{Collector, LatestInventory};
use crate::peer_identity::RefusedCertificates;
use crate::renewal::Renewal;
use crate::server::{self, AgentService, ServerError};
use crate::transfer::grants::Grants;
use crate::transfer::target::Transfers;
use crate::{notify, shutdown};

/// How long the server and loops get to finish after the shutdown signal.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "not enrolled: run `navette-agent --config {} enrol --token <token>` first",
        config.display()
    )]
    NotEnrolled { config: PathBuf },
    #[error(
        "the agent certificate expired at {}: get a new join token and run `navette-agent --config {} enrol --force --token <token>`",
        expired_at.to_rfc3339(), config.display()
    )]
    Expired {
        config: PathBuf,
        expired_at: DateTime<Utc>,
    },
    #[error("cannot load the agent identity")]
    Identity(#[source] StoreError),
    #[error("cannot set up mutual TLS for the agent listener")]
    Tls(#[source] TlsError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot open the transfer grants")]
    Grants(#[source] crate::transfer::grants::GrantError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Runs the agent until `stop` completes.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> Result<(), RunError> {
    let config = Arc::new(config);
    let store = IdentityStore::new(&config.state_dir);
    let stored = match store.load() {
        Ok(stored) => stored,
        Err(StoreError::NotEnrolled { .. }) => {
            return Err(RunError::NotEnrolled {
                config: config.path.clone(),
            });
        }
        Err(error) => return Err(RunError::Identity(error)),
    };
    if stored.validity.is_expired_at(Utc::now()) {
        return Err(RunError::Expired {
            config: config.path.clone(),
            expired_at: stored.validity.not_after,
        });
    }
    let host_id = stored.host_id.clone();
    let span = tracing::info_span!("agent", host_id = %host_id);
    run_enrolled(config, store, stored, stop)
        .instrument(span)
        .await
}

async fn run_enrolled(
    config: Arc<Config>,
    store: IdentityStore,
    stored: crate::identity_store::StoredIdentity,
    stop: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let host_id = stored.host_id.clone();
    let server_tls = ReloadableServerConfig::new(
        tls::server_config(
            stored.roots.clone(),
            stored.identity.clone(),
            ClientAuth::Required,
        )
        .map_err(RunError::Tls)?,
    );
    let link = Arc::new(ControllerLink::new(
        config.controller,
        stored.roots.clone(),
        stored.identity.clone(),
    )?);
    let latest = LatestInventory::default();
    let collector = Collector::new(config.clone(), host_id.clone());

    let listener = server::bind(config.listen).await?;
    let local_address = listener.local_addr().unwrap_or(config.listen);
    let metrics = match config.metrics.listen {
        Some(address) => Some(crate::metrics::bind(address).await?),
        None => None,
    };
    tracing::info!(
        message = "agent started",
        host_id = %host_id,
        listen = %local_address,
        advertise = %config.advertise(),
        controller = %config.controller,
        certificate_expires_at = %stored.validity.not_after.to_rfc3339(),
        version = env!("CARGO_PKG_VERSION"),
        metrics = ?config.metrics.listen
    );
    match notify::notify_ready() {
        Ok(true) => tracing::debug!(message = "told systemd the agent is ready"),
        Ok(false) => {}
        Err(error) => tracing::warn!(
            message = "cannot tell systemd the agent is ready",
            error = %crate::error_chain(&error)
        ),
    }

    let refused = RefusedCertificates::open(&config.state_dir);
    let (trigger, shutdown) = shutdown::channel();
    let mut tasks = tokio::task::JoinSet::new();
    let current = tracing::Span::current();
    tasks.spawn(
        Heartbeats {
            link: link.clone(),
            host_id: host_id.clone(),
            agent_endpoint: config.advertise().to_string(),
            latest: latest.clone(),
            interval: Duration::from_secs(config.heartbeat_interval_secs),
            refused: refused.clone(),
        }
        .run(shutdown.clone())
        .instrument(current.clone()),
    );
    tasks.spawn(
        gateway::collect_inventory(
            collector.clone(),
            latest.clone(),
            Duration::from_secs(config.inventory_interval_secs),
            shutdown.clone(),
        )
        .instrument(current.clone()),
    );
    tasks.spawn(
        Renewal {
            store,
            link: link.clone(),
            server_tls: server_tls.clone(),
            host_id: host_id.clone(),
            validity: stored.validity,
            obtained_at: stored.obtained_at,
        }
        .run(shutdown.clone())
        .instrument(current.clone()),
    );

    if let Some(listener) = metrics {
        tasks.spawn(
            crate::metrics::serve(listener, shutdown.clone().wait_owned())
                .instrument(current.clone()),
        );
    }

    let grants = Arc::new(Grants::open(&config.state_dir).map_err(RunError::Grants)?);
    let transfers = Arc::new(Transfers::new(
        host_id.clone(),
        config.clone(),
        grants,
        link.clone(),
    ));
    // Sites already running stay running; a freeze a crash left is thawed.
    let sites = crate::sites::SiteHost::new(config.clone());
    {
        let sites = sites.clone();
        let _adopted = tokio::task::spawn_blocking(move || sites.adopt()).await;
    }
    // A freeze a stopped agent left (its deadline died with it) is thawed.
    {
        let cutover = crate::cutover::Cutover::new(config.clone());
        let _recovered = tokio::task::spawn_blocking(move || cutover.recover()).await;
    }
    let serving = server::serve(
        listener,
        server_tls,
        AgentService::new(collector, latest, transfers, sites),
        refused,
        shutdown.clone().wait_owned(),
    );
    tokio::pin!(serving);
    let result = tokio::select! {
        result = &mut serving => result,
        () = stop => {
            tracing::info!(message = "shutting down", host_id = %host_id);
            trigger.fire();
            match tokio::time::timeout(STOP_GRACE, &mut serving).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(message = "connections still open after the grace period; closing them");
                    Ok(())
                }
            }
        }
    };
    trigger.fire();
    let stopped = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        tasks.abort_all();
    }
    tracing::info!(message = "agent stopped", host_id = %host_id);
    result.map_err(RunError::from)
}
