//! # navette-controller
//!
//! The control plane: a gRPC daemon with its state in PostgreSQL that knows
//! every host and account, publishes the catalogue of migrations, and drives
//! the host agents over mutual TLS.
//!
//! ## Layout
//!
//! - [`config`]: the configuration file and its defaults.
//! - [`ca`]: the certificate authority: CA files, every certificate Navette
//!   issues, the join-token key. The only module that writes roles into
//!   certificates.
//! - [`tls`]: the controller's own certificate, issued at start and renewed.
//! - [`db`]: connection pool, schema migrations, change notifications.
//! - [`store`]: queries, one module per table family; domain types in and
//!   out, never protobuf.
//! - [`model`]: the domain types.
//! - [`ids`]: the rule of every request field and the typed identifiers
//!   (`AccountName`, `HostId`, `RequestId`, `TestId`...) that `api`
//!   handlers parse once and pass on; a broken rule is `INVALID_ARGUMENT`
//!   naming the field.
//! - [`catalogue`]: migration definitions from TOML files, checked at start
//!   (each incompatibility names its detector), and which migrations apply
//!   to an account or host.
//! - [`compatibility`]: the compatibility report, pure: each
//!   incompatibility of a migration matched to what the account holds
//!   (applies, does not apply, not checked, and why), blocking findings,
//!   and the room each part of a copy needs where it lands.
//! - [`enrolment`]: join tokens, enrolment and renewal of agent certificates.
//! - [`certificates`]: which agent certificate is each host's current one,
//!   cached and invalidated by change notifications; every other is refused.
//! - [`agents`]: calls from the controller to agents, in domain types
//!   ([`agents::transfer`], [`agents::sites`], [`agents::addresses`], a
//!   migration's [`agents::replication`] and the named actions of its
//!   freeze and switch, [`agents::cutover`], its verification,
//!   [`agents::verify`], the old copy's retirement after a check of the
//!   new one, [`agents::retire`]); [`agents::wire`] converts them to and
//!   from the agent API.
//! - [`engine`]: the durable workflow engine shared by every kind of
//!   workflow: one table family (state, step, lease and fencing token,
//!   inbox, audit trail), a pure transition per kind, one runner per
//!   controller; points of no return, parents and children.
//! - [`workflow`]: the kinds of workflow run on the engine.
//!   [`workflow::test_flow`] is the test's pure transition function
//!   (commands, its timer and step outcomes in, what to record out);
//!   [`workflow::test_kind`] is the test as an engine kind (its steps
//!   through `agents`: grant, copy, sites, remove; its `tests` row written
//!   with every transition);
//!   [`workflow::test_events`] turns the panel's commands into inbox
//!   events. [`workflow::migrate_kind`] is *Migrate* as an engine kind
//!   (its pure transition, the switch its point of no return), its state
//!   [`workflow::migrate_run`], its steps [`workflow::migrate_steps`]
//!   (the verification inside the freeze [`workflow::migrate_verify`]),
//!   the platform DNS around it [`workflow::migrate_dns`].
//! - [`placement`]: where a test copy goes and what it is made of, pure:
//!   the test host, each database's receiving server, the account's sites
//!   (run there when the test host serves sites), and room where each
//!   part lands (the homes' filesystem, each receiving server's data
//!   directory); [`placement::migrate`], the shared host a migration goes
//!   to, and what keeps an account's servers from replicating.
//! - [`transit`]: the transit pool (R9): configuration classes, requests
//!   served at once or queued first come first served per class under a
//!   per-class advisory lock, the release (refused while the transit host
//!   holds accounts or, as the address moves record them, the server's
//!   addresses; then its agent's wipe) and the charges
//!   ([`transit::billing`], pure integer arithmetic).
//! - [`addresses`]: IP rerouting: moving a dedicated server's or VPS's
//!   addresses to a transit host and back, make-before-break, on shared
//!   layer 2 or routed by the provider ([`addresses::provider`], a
//!   pluggable HTTP failover API with a documented contract); who may
//!   receive them ([`addresses::check_destination`]: the server itself, or
//!   the transit host of its active transit allocation); every move
//!   recorded with its operation id (`store::addresses`).
//! - [`protocol`]: the transfer protocol version a source and a target are
//!   paired on (the highest both agents speak), or why they cannot be.
//! - [`reinstall`]: the reinstall hand-off: a workflow kind that checks
//!   the server is empty, mints a one-time join token bound to its host
//!   id, runs the configured provisioner (an executable with a documented
//!   contract) and waits for the host to enrol again on the new stack, or
//!   leaves it stuck with the reason for an operator to retry, mark done
//!   or abort.
//! - [`api`]: the gRPC services. With `agents` (its client calls and
//!   `agents::wire`), the only modules that know protobuf; errors become
//!   `tonic::Status` in `api::status` only (messages capped at 400 bytes);
//!   `api::policy` decides which role
//!   may call what.
//! - [`server`]: listeners and background tasks.
//! - [`metrics`]: Prometheus metrics (the runner's counters, workflows by
//!   kind and state) and their `/metrics` endpoint, off unless configured.
//! - [`notify`]: systemd readiness.
//! - [`dns`]: the platform's authoritative DNS: RFC 2136 updates signed
//!   with TSIG (HMAC-SHA256), which record sets are an account's (its
//!   sites' domains, its database host name), and the operations a move
//!   calls: read, lower the TTL ahead of time, switch from one host's
//!   addresses to another's on a prerequisite of what was read, restore
//!   the TTL. Off unless `[dns] server` is set; decides nothing about when.
//!
//! Invariants: agents never touch this database; every change to a host is
//! announced in the transaction that commits it; several controllers may
//! share one database (schema migrations under an advisory lock, liveness
//! updates idempotent, change notifications through PostgreSQL).

pub mod addresses;
pub mod agents;
pub mod api;
pub mod ca;
pub mod catalogue;
pub mod certificates;
pub mod compatibility;
pub mod config;
pub mod db;
pub mod dns;
pub mod engine;
pub mod enrolment;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod placement;
pub mod protocol;
pub mod reinstall;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod transit;
pub mod workflow;

use std::sync::Arc;

use anyhow::Context;

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let catalogue = catalogue::Catalogue::load(&config.catalogue.dir)?;
    tracing::info!(message = "catalogue loaded", migrations = catalogue.len(), dir = %config.catalogue.dir.display());
    let ca = ca::CertificateAuthority::load(&config.tls.ca_dir)?;
    let tls = tls::ControllerTls::new(&ca, &config.tls)?;
    let dns = dns::PlatformDns::from_config(&config.dns)?;
    if let Some(dns) = &dns {
        tracing::info!(message = "platform DNS updates on", server = ?config.dns.server, lowered_ttl = dns.lowered_ttl);
    }
    let db = db::connect(&config.database).await?;
    let applied = db::migrate(&db)
        .await
        .context("migrating the database schema")?;
    if !applied.is_empty() {
        tracing::info!(message = "database schema up to date", applied = ?applied);
    }
    let (changes, _) = tokio::sync::broadcast::channel(1024);
    let certificates = Arc::new(certificates::AgentCertificates::default());
    certificates.clone().spawn_invalidation(changes.subscribe());
    db::listen_changes(&config.database, changes.clone())?;
    let controller = Arc::new(state::Controller {
        config,
        db,
        ca,
        catalogue,
        tls,
        changes,
        controller_id: controller_id(),
        certificates,
        dns,
    });

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = server::bind(controller.clone(), stopped).await?;
    if let Some(listener) = metrics::bind(&controller).await? {
        metrics::spawn_serving(controller.clone(), listener, stop.subscribe());
    }
    server::spawn_liveness(controller.clone());
    server::spawn_transit_queue(controller.clone());
    server::spawn_certificate_renewal(controller.clone());
    server::spawn_workflow_engine(&controller)?;
    notify::ready();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(message = "shutting down");
        notify::stopping();
        let _ = stop.send(true);
    });
    Box::pin(serving).await?;
    Ok(())
}

/// A name for this controller process, unique among controllers sharing
/// the database: it owns leases on workflow steps.
fn controller_id() -> String {
    use ring::rand::SecureRandom;
    let host = nix_hostname().unwrap_or_else(|| "controller".to_owned());
    let mut random = [0u8; 3];
    let _ = ring::rand::SystemRandom::new().fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{}-{random}", std::process::id())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
