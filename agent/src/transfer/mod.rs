//! Transfers: copying an account's files and databases between hosts, agent
//! to agent.
//!
//! The controller first *grants* the source agent's data to one target host
//! for one transfer id ([`grants`]); the target agent then *pulls* it from
//! the source's peer services. Each kind of data has its own module with
//! both sides: the source's peer service and the target's pull:
//!
//! - `files`: the home tree, with full fidelity, resumable, delta on
//!   refresh, and caught up from the source's change journal (*Migrate*);
//! - `postgres`: PostgreSQL databases and roles, across major versions;
//! - `mariadb`: MariaDB/MySQL databases and users.
//!
//! [`progress`] is what every pull reports to, and what `WatchTransfer`
//! streams. [`copies`] records, on a target, what each copy created, and
//! [`removal`] finds and drops it; [`target`] runs transfers, and (in
//! `target/catch_up.rs`) the change journals and catch-up passes of a
//! migration; [`outage`] is how long a pull waits for a source it cannot
//! reach, and how it says so. [`protocol`] holds the
//! transfer protocol versions this agent speaks and what each fixes (the
//! row digest), checked on both sides of every transfer.
//!
//! Invariants: a source serves nothing without a live grant naming the
//! caller's host (grants expire, and are revoked when their transfer or
//! test ends); a target writes only into a home and databases its copy
//! created, and only inside the target home and databases of the
//! transfer's spec; every step can be repeated after a crash (transfer ids
//! make them idempotent).

pub mod copies;
pub mod files;
pub mod grants;
pub mod mariadb;
pub mod outage;
pub mod postgres;
pub mod progress;
pub mod protocol;
pub mod removal;
pub mod target;
