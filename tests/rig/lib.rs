//! # navette-tests: the multi-host test rig
//!
//! Navette's end-to-end tests run real hosts on one machine: every host is a
//! Linux network namespace with its own address from 192.0.2.0/24, plugged
//! into a bridge that stands for the data-centre network, with its own root
//! directory, real PostgreSQL and MariaDB servers, real customer accounts,
//! and the real `navette-agent`; the real `navette-controller` runs in a
//! namespace of its own; operators' calls go through the real `grpcurl`.
//! Everything needs root, as the machines the project tests on give.
//!
//! ```text
//!   <prefix>-sw   bridge br0 ──┬── veth ── <prefix>-ctl    192.0.2.2   controller + its PostgreSQL 15
//!                              ├── veth ── <prefix>-<host> 192.0.2.x   agent, PostgreSQL, MariaDB, accounts
//!                              └── veth ── <prefix>-net    192.0.2.254 the client (tests, grpcurl)
//! ```
//!
//! # Layout
//!
//! - [`rig`]: [`Rig`], one per test: the unique prefix, the working
//!   directory `/tmp/navette-rig/<prefix>/`, the switch and client
//!   namespaces, and the teardown that leaves nothing behind (also on panic);
//! - [`sweep`]: naming a rig, its owner file, and removing what crashed
//!   test processes left behind;
//! - [`install`]: running `tests/setup.sh` once per process and finding the
//!   prebuilt Navette binaries;
//! - [`netns`]: [`Netns`], a host: commands inside it, running Rust code
//!   (tokio, tonic, tokio-postgres) inside it, cutting its link;
//! - [`process`]: [`ChildProcess`], a long-running server with a log file,
//!   that can be killed and restarted;
//! - [`postgres`], [`mariadb`]: database servers in a host;
//! - [`accounts`]: customer accounts (system user, home with a sample site,
//!   databases) the way agents discover them;
//! - [`controller`], [`agent`]: Navette's own daemons, their config files,
//!   certificates and join tokens;
//! - [`web`]: a host's web stack: its nginx, the site definitions the
//!   agent reads, the PHP (8.2, or 8.4 chrooted) its pools run, and HTTP
//!   requests by domain name from the client namespace;
//! - [`grpcurl`]: the operator's and panel's client;
//! - [`load`]: customers' clients under load while an account moves
//!   (pgbench, a MariaDB writer, a process appending to a file in the
//!   home, an HTTP loop), each keeping a tally of what it was told;
//! - [`migration_load`]: *Migrate* under load, shared by
//!   `tests/migrate_load.rs` and the platform: the account, its DNS zones,
//!   the four clients, following the migration with `WatchMigration`,
//!   and what the clients' tallies come to on the new host;
//! - [`dns`]: the platform's authoritative DNS (knotd on host `dns`,
//!   192.0.2.53, a TSIG key allowed to update its zones), `kdig` and
//!   `knsupdate` from a host, and resolution through it for programs run
//!   with `ip netns exec` (`/etc/netns/<namespace>/resolv.conf`);
//! - [`reinstall`]: the rig's provisioner: `provisioner.sh` (what the
//!   controller runs) hands each request to the test through a spool
//!   directory, and [`Rig::reinstall_host`] wipes a host and brings it
//!   back on PostgreSQL 18 and MariaDB 11.8 with a new agent enrolled with
//!   the request's token;
//! - [`router`]: the internet side for IP rerouting: a router namespace
//!   between the bridge and a client standing for the internet, the
//!   provider's failover API stand-in (`provider_standin.py`), a TCP
//!   service on the hosts, and a client connecting in a loop that
//!   measures the longest time it could not;
//! - [`rerouting`]: the IP rerouting scenario the address tests and their
//!   benchmark share (a dedicated server, a transit host, a shared host
//!   behind the router; moves through the operator API; the client's
//!   gaps);
//! - [`scrape`]: a plain HTTP GET of a daemon's `/metrics` (the rig turns
//!   them on: the controller's on port 9464, each agent's on 9465).
//!
//! Invariants: the rig only uses addresses from 192.0.2.0/24 (and, for
//! [`router`], 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32); every name it
//! creates (namespace, interface, directory) starts with the rig's prefix;
//! a namespace's `/etc/netns/<namespace>/` goes with the namespace;
//! it never builds anything (tests use binaries built beforehand with
//! `cargo build --bins`); it never deletes system users (they are shared by
//! rigs running in parallel).

pub mod accounts;
pub mod agent;
pub mod controller;
pub mod dns;
pub mod grpcurl;
pub mod install;
pub mod load;
pub mod mariadb;
pub mod migration_load;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod reinstall;
pub mod rerouting;
pub mod rig;
pub mod router;
pub mod scrape;
pub mod sweep;
pub mod web;

use std::future::Future;
use std::time::{Duration, Instant};

pub use accounts::{Account, AccountSpec, SAMPLE_ROWS, sample_domains};
pub use agent::{Agent, AgentKind, AgentSpec};
pub use controller::{CertPair, Controller, ControllerAccess, ControllerSpec, ReinstallSection};
pub use dns::{DnsServer, ZoneSpec};
pub use grpcurl::JoinTokenSpec;
pub use mariadb::{MariaDb, MariaDbRelease, MariaDbSpec};
pub use netns::Netns;
pub use postgres::{PgSpec, PgVersion, Postgres, PsqlSession};
pub use process::ChildProcess;
pub use reinstall::{ProvisionRequest, Provisioner};
pub use rig::Rig;
pub use router::{ProbeReport, Prober, Router};
pub use scrape::{Sample, Scrape};
pub use web::WebServer;

/// How often [`wait_until`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` until it answers `Ok(true)`, for at most `timeout`.
///
/// `Ok(false)` and errors both mean "not yet" (a server that is still
/// starting refuses connections); the last error is part of the timeout
/// message, with `what` (say, "host shared-1 online").
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if started.elapsed() >= timeout {
            return Err(timeout_error(what, timeout, last_error));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// [`wait_until`] for async checks, inside [`Netns::run_in`].
pub async fn wait_until_async<Fut>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Fut,
) -> anyhow::Result<()>
where
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if started.elapsed() >= timeout {
            return Err(timeout_error(what, timeout, last_error));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn timeout_error(what: &str, timeout: Duration, last: Option<anyhow::Error>) -> anyhow::Error {
    match last {
        Some(error) => {
            anyhow::anyhow!("timed out after {timeout:?} waiting for {what}; last error: {error:#}")
        }
        None => anyhow::anyhow!(
            "timed out after {timeout:?} waiting for {what} (the condition stayed false)"
        ),
    }
}
