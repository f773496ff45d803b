//! The cutover of a migration on the account's SOURCE host: what the
//! controller's *Migrate* workflow calls inside the freeze, through the
//! `FreezeAccount` … `UnforwardSites` rpcs (`proto/navette/v1/cutover.proto`
//! gives their order). One room per capability:
//!
//! - [`freeze`]: every process of the account's system user moved into the
//!   account's control group and frozen there with the cgroup freezer,
//!   with a deadline; thaw.
//! - [`fence`], with [`fence_postgres`] and [`fence_mariadb`]: the
//!   account's database sessions fenced (writers held, not refused; readers go on), the
//!   position taken *after* the fence, the switch (held writers ended, new
//!   sessions refused) and its undo.
//! - [`forward`]: the old host's web server forwards the account's domains
//!   to the new host, and what the frozen pool held is answered there;
//!   undone on rollback, or ended for good once the old DNS TTL passed.
//! - [`state`]: the records on disk that let a switch and a forward be
//!   undone after an agent restart.
//!
//! # Deadlines: nothing outlives a dead controller
//!
//! A freeze and a fence are holds on a live customer: each carries a
//! deadline and ends by itself when it passes, whoever is gone. The freeze
//! is thawed by a watchdog thread of the agent ([`crate::cgroups::Frozen`])
//! and, if the agent itself died, by the next agent start
//! ([`Cutover::recover`]: the unit restarts it). The fence is released by
//! a watchdog task of the agent, and by the database servers themselves
//! if the agent stops: the PostgreSQL sessions holding the locks carry
//! `idle_in_transaction_session_timeout`, the MariaDB session
//! `wait_timeout`, both set to the deadline, and a session whose agent is
//! gone (its socket closed) is ended by the server, which releases its
//! locks. A switch and a forward have no deadline: they are the move
//! itself, done once the target holds everything; they are undone only on
//! request (`ReleaseDatabases`, `UnforwardSites`), from their records on
//! disk.
//!
//! # The fence, and why these locks (see `../shared/CUTOVER.md`)
//!
//! The goal is PgBouncer's `PAUSE` without a PgBouncer: writes *wait*
//! during the freeze instead of failing, and the position is taken after
//! the last write that can commit. The alternatives refuse instead of
//! holding: `default_transaction_read_only` (pg_easy_replicate) makes
//! writes fail, `ALTER DATABASE … ALLOW_CONNECTIONS false` and `ACCOUNT
//! LOCK` only stop *new* sessions while existing ones keep writing, and a
//! global `FLUSH TABLES WITH READ LOCK` stops every account of the server.
//! So a session of the agent takes, per database, a table lock that
//! conflicts with writes and not with reads, like gh-ost's cut-over lock:
//!
//! - PostgreSQL: `LOCK TABLE <every table of the database> IN EXCLUSIVE
//!   MODE` in an open transaction. EXCLUSIVE conflicts with the ROW
//!   EXCLUSIVE lock INSERT, UPDATE, DELETE and COPY take, and with ROW
//!   SHARE (`SELECT … FOR UPDATE`), but not with ACCESS SHARE: plain
//!   reads go on. The LOCK waits (at most the acquire timeout, then the
//!   fence gives up and says to retry) for the transactions that already
//!   wrote to end, which is the drain of in-flight work. The session sets
//!   a short `deadlock_timeout`, so that when a writer holding one table
//!   waits for another the fence already holds, the fence is the one
//!   PostgreSQL aborts (it is retried), never the customer's transaction.
//! - MariaDB: `LOCK TABLES <every base table of the databases> READ` in
//!   one statement (a second LOCK TABLES would release the first). Its
//!   metadata lock waits for the transactions that wrote those tables to
//!   end; writers then wait on it ("Waiting for table metadata lock",
//!   their `lock_wait_timeout` is a day by default) while readers go on.
//!   Other databases of the server are untouched.
//!
//! # The position after the fence
//!
//! - PostgreSQL: once every database of the server is fenced, a WAL
//!   message is written (`pg_logical_emit_message`, non-transactional) and
//!   `pg_current_wal_insert_lsn()` read after it: every commit of the
//!   account is before it, also one acknowledged with `synchronous_commit
//!   = off` and not yet written out (`pg_current_wal_lsn()`, the *write*
//!   position, could be before such a commit), and the message means the
//!   target's drain finds WAL to decode up to that position even on an
//!   idle source (`pgcopydb follow`'s lesson).
//! - MariaDB: `@@gtid_binlog_pos` once the locks are held: a transaction
//!   is written to the binary log before its engine commit, and it holds
//!   its table's metadata lock until both are done, so every write the
//!   lock waited for is in that position; the drain
//!   (`MASTER_GTID_WAIT`) needs no further event.
//!
//! # The switch, and what a refused client is told
//!
//! Writers held by the fence are *ended*, so nothing they did is
//! committed or acknowledged (their clients see a lost connection and,
//! reconnecting through the DNS name, reach the new host), and new
//! sessions are refused:
//!
//! - PostgreSQL: `ALTER DATABASE … CONNECTION LIMIT 0` on each of the
//!   account's databases (the previous limit is recorded and restored by
//!   `ReleaseDatabases`), then `pg_terminate_backend` for every
//!   non-superuser client session on them (the agent's own sessions, the
//!   replication's walsender and other accounts' databases are left
//!   alone), and one wait until all of them have left
//!   `pg_stat_activity`, so no held writer outlives the fence; one
//!   session per server does it all. A superuser is exempt from the limit, so the agent can still
//!   read the sequences and tear replication down. What the client reads
//!   is PostgreSQL's own `FATAL: too many connections for database
//!   "<name>"`: PostgreSQL 15 has no hook that lets a refusal carry a text
//!   of ours (login event triggers, which could name the new address,
//!   arrive in PostgreSQL 17; `ALLOW_CONNECTIONS false` would also lock
//!   the agent out).
//! - MariaDB: `ALTER USER … ACCOUNT LOCK` for each of the account's users
//!   (its name, or `<name>_…`, as the copy counts them) not locked
//!   already (those are recorded and unlocked by `ReleaseDatabases`),
//!   then `KILL CONNECTION USER` for each of their names, in the same
//!   client run. A refused client
//!   reads MariaDB's own `Access denied, this account is locked`: a
//!   server-wide `init_connect` could raise a message naming the new
//!   address, but it runs for every account of the server and ends the
//!   connection without showing the client the text, so it is not used.
//!
//! The new address is in the answer and in the logs; clients find it
//! through the account's database host name, which the controller moves in
//! DNS after the freeze.
//!
//! # Invariants
//!
//! - Only the named account's processes, databases, users and server
//!   blocks are touched; every name reaching SQL or a server block is
//!   checked or quoted ([`crate::transfer::postgres::session::quote_ident`],
//!   the MariaDB client's `ident`/`literal`, `sites::nginx`'s rules).
//! - Every call is idempotent by migration id; a second migration of the
//!   same account is refused while one holds a freeze, fence or forward.
//! - No customer data is written: the fence only locks, the switch only
//!   ends sessions and changes connection rights.

pub mod fence;
pub mod fence_mariadb;
pub mod fence_postgres;
pub mod forward;
pub mod freeze;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::Config;

/// A hold's deadline when the caller gives none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// The longest deadline a caller may ask for.
pub const LONGEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long the fence may wait for transactions in flight, by default.
pub const DEFAULT_ACQUIRE: Duration = Duration::from_secs(2);

/// `requested` (milliseconds, 0: `default`), bounded by [`LONGEST_DEADLINE`].
pub fn bounded(requested_ms: u32, default: Duration) -> Duration {
    match requested_ms {
        0 => default,
        ms => Duration::from_millis(u64::from(ms)).min(LONGEST_DEADLINE),
    }
}

/// Why a cutover step was refused or failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    /// Input the call should not have sent.
    #[error("{0}")]
    BadRequest(String),
    /// The account is held by another migration.
    #[error(
        "account {account} is {what} for migration {other}: finish or roll back that migration first"
    )]
    OtherMigration {
        account: String,
        what: &'static str,
        other: String,
    },
    /// A precondition on the host.
    #[error("{0}")]
    Precondition(String),
    /// The fence could not be taken in time; everything taken is released.
    #[error("{0}; nothing is held: try again later")]
    GaveUp(String),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    WebServer(#[from] crate::sites::nginx::WebServerError),
    #[error(transparent)]
    Fpm(#[from] crate::sites::fpm::FpmError),
    #[error(transparent)]
    MariaDb(#[from] crate::transfer::mariadb::ClientError),
    #[error("PostgreSQL server {server}, database {database}: {what}")]
    Postgres {
        server: String,
        database: String,
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CutoverError {
    pub(crate) fn postgres(
        server: &str,
        database: &str,
        what: &str,
    ) -> impl FnOnce(tokio_postgres::Error) -> CutoverError + use<> {
        let (server, database, what) = (server.to_owned(), database.to_owned(), what.to_owned());
        move |source| CutoverError::Postgres {
            server,
            database,
            what,
            source,
        }
    }

    /// The gRPC status of this error (the one place it is decided).
    pub fn status(&self) -> tonic::Status {
        let message = crate::error_chain(self);
        match self {
            CutoverError::BadRequest(_) => tonic::Status::invalid_argument(message),
            CutoverError::OtherMigration { .. } | CutoverError::Precondition(_) => {
                tonic::Status::failed_precondition(message)
            }
            CutoverError::GaveUp(_) => tonic::Status::aborted(message),
            CutoverError::Postgres { source, .. } if source.is_closed() => {
                tonic::Status::unavailable(message)
            }
            CutoverError::WebServer(_) => tonic::Status::unavailable(message),
            _ => tonic::Status::internal(message),
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cutover holds in force on this host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cutover {
    pub(crate) config: Arc<Config>,
    /// Freezes by account.
    pub(crate) freezes: Arc<Mutex<HashMap<String, freeze::AccountFreeze>>>,
    /// Fences by account (a tokio mutex: a switch and a release await
    /// under it; taking a fence does not hold it).
    pub(crate) fences: Arc<tokio::sync::Mutex<HashMap<String, fence::Fence>>>,
}

impl Cutover {
    pub fn new(config: Arc<Config>) -> Cutover {
        Cutover {
            config,
            freezes: Arc::default(),
            fences: Arc::default(),
        }
    }

    /// At agent start: thaws every account group a crash left frozen (a
    /// freeze never outlives the agent that kept its deadline). Fences
    /// need nothing: their sessions ended with the agent. Logs; never
    /// fails the agent.
    pub fn recover(&self) {
        let sites = &self.config.sites;
        match crate::cgroups::AccountGroups::open(&sites.cgroup_mount, &sites.cgroup_base)
            .and_then(|groups| groups.thaw_all())
        {
            Ok(thawed) if thawed.is_empty() => {}
            Ok(thawed) => {
                tracing::warn!(message = "thawed accounts a stopped agent left frozen", accounts = ?thawed)
            }
            Err(error) => {
                tracing::debug!(message = "no account groups to recover", error = %crate::error_chain(&error))
            }
        }
    }
}
