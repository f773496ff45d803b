//! # navette-agent
//!
//! The daemon that runs on every host of the platform (shared, dedicated,
//! VPS, transit and test servers). It enrols once with a join token, then
//! reports heartbeats and its host's inventory to the controller over mutual
//! TLS, serves `navette.v1.Agent` to the controller, and renews its
//! short-lived certificate by itself.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration file, its defaults and checks.
//! - [`identity_store`]: the key, certificate, CA and host id on disk
//!   (atomic writes), the CSR, and the checks on the controller's answers.
//! - [`enrol`]: `navette-agent enrol`, the token-for-certificate exchange.
//! - [`daemon`]: `navette-agent run`, which wires the pieces below together
//!   and stops them in order.
//! - [`server`]: the `navette.v1.Agent` gRPC service, health and reflection,
//!   and the agent's authorisation [`server::policy`].
//! - [`gateway`]: the link to the controller's `AgentGateway`, the heartbeat
//!   and inventory loops, and the reconnection backoff.
//! - [`peer_identity`]: the peer certificates the controller says to refuse
//!   (superseded or revoked), and the layer refusing them on the listener.
//! - [`renewal`]: certificate renewal at two thirds of its lifetime (counted
//!   from when the agent obtained it: controllers backdate `not_before`).
//! - [`ids`]: the identifiers calls carry (transfer and copy ids, account
//!   names, host ids), checked where a call arrives, with the rules shared
//!   with the controller (`navette_proto::ids`).
//! - [`transfer`]: transfers as a source (grants, the file, PostgreSQL and
//!   MariaDB source services, the change journals of homes being migrated)
//!   and as a target (pulls, catch-up passes, copies, removal).
//! - [`transit`]: on a transit host, the wipe of what Navette put there
//!   for one allocation once it is released (the copies named after it,
//!   with their sites, homes, databases and logins; nothing else).
//! - [`replication`]: a target copy of an account's databases kept
//!   converging with the source while it runs (*Migrate*), one module per
//!   engine: [`replication::postgres`], logical replication from the
//!   copy's own snapshot (publication, slot, subscription, lag, drain,
//!   sequences, teardown); [`replication::mariadb`], a named replication
//!   connection per migration from the copy's snapshot position, filtered
//!   to the account's databases (backlog, drain, teardown, the source's
//!   replication user).
//! - [`verify`]: verification of a migration's copy, of what changed since
//!   the last verification: [`verify::files`], the fingerprints of the
//!   paths a catch-up pass changed and their comparison between the two
//!   sides (`VerifyFiles`); [`verify::postgres`], the touched keys read
//!   from `test_decoding` lines, and [`verify::postgres_rows`], the
//!   verification slot, its rounds and the rows' fingerprints on each side
//!   (`VerifyRows`, served through `server/replication.rs`);
//!   [`verify::mariadb`], the touched keys read from the binary log between
//!   two GTID positions and their fingerprints, and
//!   [`verify::mariadb_rows`], its rounds on each side (`VerifyMariadbRows`).
//! - [`inventory`]: what the host holds (addresses, disk, accounts, database
//!   servers and databases), one small module per part.
//! - [`addresses`]: IP rerouting on this host: an address held or not
//!   held (netlink, IPv6 with `nodad`), and announced when taken
//!   (gratuitous ARP, unsolicited neighbour advertisement), idempotent,
//!   each call carrying the move's operation id.
//! - [`cgroups`]: each account's processes in a control group of their
//!   own (cgroup v2, or v1's freezer): freeze with a deadline, thaw, empty.
//! - [`sites`]: each account's sites: their definitions (the host's
//!   configuration), their FPM pool in the account's control group, their
//!   server blocks in the host's web server; start, stop, freeze, thaw.
//! - [`cutover`]: a migration's cutover on the source host, each step
//!   idempotent by migration id and bounded by a deadline where it holds
//!   the customer: [`cutover::freeze`] (every process of the account's
//!   user frozen in its group), [`cutover::fence`] (writers held on the
//!   account's PostgreSQL and MariaDB databases, the position after the
//!   fence, the switch that ends and refuses the account's sessions),
//!   [`cutover::forward`] (the old host's sites forwarded to the new one,
//!   held requests answered there; undone, or ended for good later).
//! - [`retire`]: on the old host at a migration's grace period's end, the
//!   old copy's databases and home removed, only what the agent's own
//!   switch record of that migration backs; idempotent.
//! - [`changes`]: the change journal of a home (inotify): what changed
//!   since the last catch-up pass, without walking the tree (run per
//!   migration by `transfer::files::journals`).
//! - [`metrics`]: Prometheus metrics (bytes and files copied, transfers
//!   running and ended) and their `/metrics` endpoint, off unless
//!   configured.
//! - [`notify`]: `READY=1` to systemd.
//! - [`shutdown`]: one trigger, many waiters.
//!
//! # Invariants
//!
//! - The agent never talks to the controller's database; it only calls the
//!   controller's gRPC services.
//! - Inventory code only reads the host; host-changing code (copies,
//!   addresses) lives in its own modules behind small functions.
//! - Only [`server`] maps errors to `tonic::Status`; only [`server::policy`]
//!   decides who may call the agent.
//! - The private key never leaves the host and is written with mode 0600.

pub mod addresses;
pub mod cgroups;
pub mod changes;
pub mod config;
pub mod cutover;
pub mod daemon;
pub mod enrol;
pub mod gateway;
pub mod identity_store;
pub mod ids;
pub mod inventory;
pub mod metrics;
pub mod notify;
pub mod peer_identity;
pub mod renewal;
pub mod replication;
pub mod retire;
pub mod server;
pub mod shutdown;
pub mod sites;
pub mod transfer;
pub mod transit;
pub mod verify;

pub use daemon::{RunError, run};

/// An error and its causes on one line, `outer: inner: innermost`. A cause
/// whose text the previous message already ends with is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A gRPC status as a person reads it: code, message, and the transport
/// error behind it if any (tonic often repeats the cause in the message, so
/// a message the cause already says is left out).
pub fn describe_status(status: &tonic::Status) -> String {
    let code = status.code();
    let message = status.message();
    match std::error::Error::source(status).map(error_chain) {
        Some(cause) if message.is_empty() || cause.contains(message) => {
            format!("{code:?}: {cause}")
        }
        Some(cause) => format!("{code:?}: {message}: {cause}"),
        None if message.is_empty() => format!("{code:?}"),
        None => format!("{code:?}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn the_chain_is_printed_once() {
        let error = Outer(Middle(std::io::Error::other("disk on fire")));
        assert_eq!(error_chain(&error), "outer: middle: disk on fire");
    }

    #[test]
    fn statuses_show_code_and_message() {
        let status = tonic::Status::permission_denied("the join token was already used");
        assert_eq!(
            describe_status(&status),
            "PermissionDenied: the join token was already used"
        );
    }
}
