//! MariaDB replication for a migration: a target MariaDB (11.8) copy of an
//! account's databases kept converging with the source server (10.11)
//! while the account runs, from the copy's own snapshot, filtered to the
//! account's databases.
//!
//! Owns, per migration id:
//! - on the SOURCE server, the migration's replication user
//!   ([`ensure_source_user`], [`drop_source_user`]) and the source's
//!   current position ([`source_position`]); whether the server can be
//!   replicated at all ([`row_binlog_readiness`]);
//! - on the TARGET server, one *named* replication connection
//!   ([`connection_name`]): [`start_replica`], [`replica_status`],
//!   [`backlog`], [`drain`], [`teardown_replica`].
//!
//! # Where replication starts
//!
//! The copy ([`crate::transfer::mariadb::pull_with_options`] with
//! `snapshot_position`) reads each database's rows inside
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` and reports
//! `BINLOG_GTID_POS(binlog_snapshot_file, binlog_snapshot_position)` of that
//! very snapshot: the GTID state just after the last transaction the rows
//! contain. The target's `gtid_slave_pos` is set to it and the connection
//! uses `MASTER_USE_GTID=slave_pos`, so the first event applied is the
//! first one the rows lack: nothing twice, nothing missed. One database per
//! connection is exact; an account with several databases has one snapshot
//! per database (the copy's design), so [`start_replica`] refuses positions
//! that differ (replicating from the earliest would apply the later
//! databases' overlap twice).
//!
//! # gtid_slave_pos and multi-source replication (what the server does)
//!
//! - `gtid_slave_pos` is ONE server-wide value, one entry per replication
//!   domain, shared by every named connection: there is no per-connection
//!   GTID position. A connection started with `MASTER_USE_GTID=slave_pos`
//!   asks its source for the entries of the domains that source has.
//! - `SET GLOBAL gtid_slave_pos` is refused while any connection's SQL
//!   thread runs (error 1198), and replaces the whole value.
//! - Two connections that see the same domain id (two migrations from the
//!   same source, or two sources left at the default `gtid_domain_id=0`)
//!   update the same entry: each restart of either would resume from
//!   whichever applied last, skipping or repeating the other's events, and
//!   `gtid_ignore_duplicates=ON` would be worse (an event one connection
//!   filtered out would count as applied for the other).
//!
//! So this module runs at most ONE replication connection per target
//! server: [`start_replica`] refuses, saying which, while another
//! connection exists. Migrations onto one target server are replicated one
//! after the other. (File-and-position replication,
//! `MASTER_LOG_FILE/MASTER_LOG_POS` from `binlog_snapshot_file/position`,
//! keeps its position per connection and drains per connection with
//! `MASTER_POS_WAIT(file, pos, timeout, 'name')`: the way to lift this
//! limit if targets must take several migrations at once.)
//!
//! # Filter
//!
//! `name.replicate_do_db` lists the account's databases, and
//! `name.replicate_wild_do_table` (`db.%` each) also drops statements run
//! from an account database's default database on another database's
//! tables (`USE alice; DROP TABLE bob.t` by a source administrator). With
//! `binlog_format=ROW` every row change is filtered by its table's own
//! database, so another account's rows never arrive. Filtered-out
//! transactions still advance `gtid_slave_pos`, so the drain completes
//! even when the source's last write was someone else's.
//!
//! # Privileges on the target, triggers
//!
//! The replica's SQL thread applies row events without privilege checks,
//! like the server's own administrator; the filter above is what bounds it.
//! Row events do NOT fire the target's triggers (`slave_run_triggers_for_rbr`
//! is `NO`, checked by [`start_replica`]): a trigger ran on the source, as
//! its definer, and what it changed arrives as rows. The target's triggers
//! were created by the copy with their definer checked to be one of the
//! account's users (`transfer::mariadb::definers`), so once the account
//! writes to the target itself, they run as the customer's user, never as
//! the replica's.
//!
//! # The source's replication user
//!
//! `nvrepl_<hash of the migration id>`@`<target host address>`, with only
//! `REPLICATION SLAVE` (the binlog dump; `SELECT @@...` the replica asks
//! needs nothing), a fresh random password at each [`ensure_source_user`]
//! (the target gets it in the same call chain and only stores it in the
//! connection), `MAX_USER_CONNECTIONS 2`. It can read the server's WHOLE
//! binary log, other accounts' changes included: MariaDB has no per-database
//! binlog privilege. That is acceptable because the reader is the target
//! agent's own server, a platform host, over a link between platform hosts,
//! and the filter is applied there before anything is written; it is
//! limited by the host part (only the target's address), by its lifetime
//! (dropped at teardown, and replaced, with a new password, on retry), and
//! by TLS when the source offers it.
//!
//! # TLS
//!
//! 11.8 replicas require TLS by default. With the source's CA given
//! ([`ReplicaSpec::source_ca`]) the connection uses TLS and checks the
//! source's certificate; without it (Debian 12's 10.11 has no TLS unless an
//! operator configures certificates) `MASTER_SSL=0` is explicit.
//!
//! # Idempotence
//!
//! Every function may be retried: [`start_replica`] on an existing
//! connection only starts it again (its position is the server's, never
//! reset), [`teardown_replica`] and [`drop_source_user`] succeed when there
//! is nothing left. Teardown never touches the copy's data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::config::MariadbServer;
use crate::transfer::mariadb::client::{self, ClientError, ident, literal};

/// Prefix of every replication user and connection this module creates.
pub const USER_PREFIX: &str = "nvrepl_";
pub const CONNECTION_PREFIX: &str = "navette_";

/// Why a replication step failed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("migration id {0:?} is not usable: 1 to 48 characters among a-z, 0-9, '-' and '_'")]
    BadMigrationId(String),
    #[error("database name {0:?} cannot be replicated: it is empty or holds ',' or '`'")]
    BadDatabase(String),
    #[error(
        "MariaDB server {server}: another replication connection ({other:?}) exists; a target server replicates one migration at a time (gtid_slave_pos is one per server): finish or tear down that migration first"
    )]
    OtherConnection { server: String, other: String },
    #[error(
        "the copy's databases were snapshotted at different binlog positions ({positions}); replicate one database per migration, or copy them again"
    )]
    PositionsDiffer { positions: String },
    #[error(
        "MariaDB server {server} runs triggers for replicated row events (slave_run_triggers_for_rbr={value}): they would apply the source triggers' effects twice; set it to NO"
    )]
    TriggersForRowEvents { server: String, value: String },
    #[error(
        "MariaDB server {server}: migration {migration} has no replication connection; start it first (StartMariadbReplication)"
    )]
    NoConnection { server: String, migration: String },
    #[error(
        "MariaDB server {server}: replication of migration {migration} did not reach {position} within {seconds:.1} s (applied: {applied:?}); keep converging and try the drain again"
    )]
    DrainTimeout {
        server: String,
        migration: String,
        position: String,
        applied: String,
        seconds: f64,
    },
    #[error(
        "MariaDB server {server}: replication of migration {migration} stopped: {error}; fix the cause, then start it again (its position is kept)"
    )]
    Broken {
        server: String,
        migration: String,
        error: String,
    },
    #[error("cannot generate a password: the system's random source failed")]
    Random,
}

/// Checks a migration id: it names users and connections.
pub fn check_migration_id(migration: &str) -> Result<(), ReplicationError> {
    let ok = !migration.is_empty()
        && migration.len() <= 48
        && migration
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ReplicationError::BadMigrationId(migration.to_owned()))
    }
}

/// The replication connection's name on the target: `navette_<id>`.
pub fn connection_name(migration: &str) -> Result<String, ReplicationError> {
    check_migration_id(migration)?;
    Ok(format!("{CONNECTION_PREFIX}{migration}"))
}

/// The source user's name: a hash, so that every id fits MariaDB's
/// 80-character user names and says nothing of the account.
pub fn source_user_name(migration: &str) -> Result<String, ReplicationError> {
    check_migration_id(migration)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, migration.as_bytes());
    let mut name = USER_PREFIX.to_owned();
    for byte in &digest.as_ref()[..8] {
        let _ = write!(name, "{byte:02x}");
    }
    Ok(name)
}

fn random_password() -> Result<String, ReplicationError> {
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ReplicationError::Random)?;
    Ok(bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    }))
}

/// The source's replication user for one migration, and its one-time
/// password.
#[derive(Clone, Debug)]
pub struct SourceUser {
    pub user: String,
    /// The host part: the target host's address.
    pub host: String,
    pub password: String,
}

/// Creates (or, on retry, gives a new password to) the migration's
/// replication user on the source `server`, allowed from `target_address`
/// only, with `REPLICATION SLAVE` only.
pub async fn ensure_source_user(
    server: &MariadbServer,
    migration: &str,
    target_address: &str,
) -> Result<SourceUser, ReplicationError> {
    let user = source_user_name(migration)?;
    let password = random_password()?;
    let account = format!("{}@{}", literal(&user), literal(target_address));
    let sql = format!(
        "CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {pw} WITH MAX_USER_CONNECTIONS 2;\n\
         ALTER USER {account} IDENTIFIED BY {pw} WITH MAX_USER_CONNECTIONS 2;\n\
         GRANT REPLICATION SLAVE ON *.* TO {account};\n",
        pw = literal(&password)
    );
    client::run(server, &sql, Some(client::SHORT)).await?;
    tracing::info!(
        message = "MariaDB replication user ready on the source",
        server = %server.name,
        migration,
        user = %user,
        host = target_address
    );
    Ok(SourceUser {
        user,
        host: target_address.to_owned(),
        password,
    })
}

/// Drops the migration's replication user on the source, from every host,
/// and ends its sessions; whether one existed. Idempotent.
pub async fn drop_source_user(
    server: &MariadbServer,
    migration: &str,
) -> Result<bool, ReplicationError> {
    let user = source_user_name(migration)?;
    let hosts = client::query(
        server,
        &format!(
            "SELECT Host FROM mysql.user WHERE User = {};\n",
            literal(&user)
        ),
        Some(client::SHORT),
    )
    .await?;
    let sessions = client::query(
        server,
        &format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = {};\n",
            literal(&user)
        ),
        Some(client::SHORT),
    )
    .await?;
    let mut sql = String::new();
    for row in &hosts {
        if let Some(host) = row.first() {
            let _ = writeln!(
                sql,
                "DROP USER IF EXISTS {}@{};",
                literal(&user),
                literal(host)
            );
        }
    }
    if !sql.is_empty() {
        client::run(server, &sql, Some(client::SHORT)).await?;
    }
    // A dropped user's sessions go on: end them (the binlog dump of a
    // replica not stopped yet). A session may end meanwhile, so a failed
    // KILL only says so.
    let ids = sessions
        .iter()
        .filter_map(|row| row.first().and_then(|id| id.parse::<u64>().ok()));
    for id in ids {
        let kill = format!("KILL CONNECTION {id};\n");
        if let Err(error) = client::run(server, &kill, Some(client::SHORT)).await {
            tracing::debug!(message = "replication session already gone", id, %error);
        }
    }
    Ok(!hosts.is_empty())
}

/// `@@gtid_binlog_pos` of the source: everything it has logged so far.
pub async fn source_position(server: &MariadbServer) -> Result<String, ReplicationError> {
    Ok(client::gtid_binlog_pos(server).await?)
}

/// Whether a source server can be replicated from: binary log on, in ROW
/// format, with a server id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Empty when ready; otherwise what an operator sets.
    pub reason: String,
}

/// Reads [`Readiness`] from the server's variables.
pub async fn row_binlog_readiness(server: &MariadbServer) -> Result<Readiness, ClientError> {
    let rows = client::query(
        server,
        "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.server_id;\n",
        Some(client::SHORT),
    )
    .await?;
    let row = rows.first().cloned().unwrap_or_default();
    let field = |index: usize| row.get(index).cloned().unwrap_or_default();
    Ok(readiness(&field(0), &field(1), &field(2)))
}

/// [`Readiness`] from `log_bin`, `binlog_format` and `server_id`.
pub fn readiness(log_bin: &str, format: &str, server_id: &str) -> Readiness {
    let mut missing = Vec::new();
    if log_bin != "1" && !log_bin.eq_ignore_ascii_case("on") {
        missing.push("the binary log is off (start mariadbd with --log-bin)".to_owned());
    }
    if !format.eq_ignore_ascii_case("row") {
        missing.push(format!(
            "binlog_format is {format} (set binlog_format=ROW: statement events cannot be filtered per database exactly)"
        ));
    }
    if server_id.is_empty() || server_id == "0" {
        missing.push("server_id is 0 (give the server a unique server_id)".to_owned());
    }
    Readiness {
        ready: missing.is_empty(),
        reason: missing.join("; "),
    }
}

/// What [`start_replica`] sets up.
#[derive(Clone, Debug)]
pub struct ReplicaSpec {
    pub migration: String,
    /// The source server's address and port, as the target reaches it.
    pub source_host: String,
    pub source_port: u16,
    pub user: String,
    pub password: String,
    /// The snapshot positions the copy reported, one per database (equal,
    /// see the module documentation).
    pub snapshot_positions: Vec<String>,
    /// The account's databases: the only ones replicated.
    pub databases: Vec<String>,
    /// The source's CA certificate (PEM file on the target host): TLS with
    /// the certificate checked; `None`: no TLS (the source has none).
    pub source_ca: Option<PathBuf>,
}

/// A connection's state, from `SHOW SLAVE 'name' STATUS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub connection: String,
    pub io_running: String,
    pub sql_running: String,
    /// The server's applied GTID position (`Gtid_Slave_Pos`).
    pub applied: String,
    /// `Seconds_Behind_Master`, `None` when the server gives none.
    pub seconds_behind: Option<u64>,
    /// `Relay_Log_Space`: bytes received and not yet purged.
    pub relay_log_bytes: u64,
    /// `Last_IO_Error` and `Last_SQL_Error`, empty when none.
    pub last_error: String,
}

impl ReplicaStatus {
    fn from_row(row: &[(String, String)]) -> ReplicaStatus {
        let map: BTreeMap<&str, &str> = row.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let get = |key: &str| map.get(key).copied().unwrap_or_default().to_owned();
        let errors: Vec<String> = [get("Last_IO_Error"), get("Last_SQL_Error")]
            .into_iter()
            .filter(|e| !e.is_empty())
            .collect();
        ReplicaStatus {
            connection: get("Connection_name"),
            io_running: get("Slave_IO_Running"),
            sql_running: get("Slave_SQL_Running"),
            applied: get("Gtid_Slave_Pos"),
            seconds_behind: get("Seconds_Behind_Master").parse().ok(),
            relay_log_bytes: get("Relay_Log_Space").parse().unwrap_or(0),
            last_error: errors.join("; "),
        }
    }

    /// Both threads running.
    pub fn running(&self) -> bool {
        self.io_running == "Yes" && self.sql_running == "Yes"
    }
}

/// Every connection on the server (`SHOW ALL SLAVES STATUS`).
async fn all_connections(server: &MariadbServer) -> Result<Vec<ReplicaStatus>, ReplicationError> {
    let rows =
        client::query_named(server, "SHOW ALL SLAVES STATUS;\n", Some(client::SHORT)).await?;
    Ok(rows
        .iter()
        .map(|row| ReplicaStatus::from_row(row))
        .collect())
}

/// The migration's connection on `server`, if it exists.
pub async fn replica_status(
    server: &MariadbServer,
    migration: &str,
) -> Result<Option<ReplicaStatus>, ReplicationError> {
    let name = connection_name(migration)?;
    Ok(all_connections(server)
        .await?
        .into_iter()
        .find(|c| c.connection.eq_ignore_ascii_case(&name)))
}

/// `db.%` with LIKE's wildcards in the name escaped.
fn wild_table(database: &str) -> String {
    let escaped = database
        .replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%");
    format!("{escaped}.%")
}

/// Sets up and starts the migration's connection on the target `server`;
/// on an existing connection only starts it (see the module
/// documentation). Its status afterwards.
pub async fn start_replica(
    server: &MariadbServer,
    spec: &ReplicaSpec,
) -> Result<ReplicaStatus, ReplicationError> {
    let name = connection_name(&spec.migration)?;
    for database in &spec.databases {
        if database.is_empty() || database.contains(',') || database.contains('`') {
            return Err(ReplicationError::BadDatabase(database.clone()));
        }
    }
    let connections = all_connections(server).await?;
    if let Some(other) = connections
        .iter()
        .find(|c| !c.connection.eq_ignore_ascii_case(&name))
    {
        return Err(ReplicationError::OtherConnection {
            server: server.name.clone(),
            other: other.connection.clone(),
        });
    }
    let triggers = client::query(
        server,
        "SELECT @@GLOBAL.slave_run_triggers_for_rbr;\n",
        Some(client::SHORT),
    )
    .await?;
    let value = triggers
        .first()
        .and_then(|row| row.first())
        .cloned()
        .unwrap_or_default();
    if !value.eq_ignore_ascii_case("no") {
        return Err(ReplicationError::TriggersForRowEvents {
            server: server.name.clone(),
            value,
        });
    }
    let quoted = literal(&name);
    if connections.is_empty() {
        let mut positions: Vec<&String> = spec.snapshot_positions.iter().collect();
        positions.sort();
        positions.dedup();
        if positions.len() > 1 {
            return Err(ReplicationError::PositionsDiffer {
                positions: positions
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" / "),
            });
        }
        let position = positions.first().map(|p| p.as_str()).unwrap_or_default();
        let tls = match &spec.source_ca {
            Some(ca) => format!(
                "MASTER_SSL=1, MASTER_SSL_CA={}, MASTER_SSL_VERIFY_SERVER_CERT=1",
                literal(&ca.display().to_string())
            ),
            // 11.8 requires TLS by default; a source without certificates
            // (Debian 12's default) would leave the connection "Connecting"
            // forever: plain, on the link between platform hosts.
            None => "MASTER_SSL=0".to_owned(),
        };
        let wild: Vec<String> = spec.databases.iter().map(|db| wild_table(db)).collect();
        let sql = format!(
            "SET GLOBAL gtid_slave_pos = {position};\n\
             CHANGE MASTER {quoted} TO MASTER_HOST={host}, MASTER_PORT={port}, \
             MASTER_USER={user}, MASTER_PASSWORD={password}, \
             MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, {tls};\n\
             SET GLOBAL {conn}.replicate_do_db = {dbs};\n\
             SET GLOBAL {conn}.replicate_wild_do_table = {wild};\n",
            position = literal(position),
            host = literal(&spec.source_host),
            port = spec.source_port,
            user = literal(&spec.user),
            password = literal(&spec.password),
            conn = ident(&name),
            dbs = literal(&spec.databases.join(",")),
            wild = literal(&wild.join(",")),
        );
        client::run(server, &sql, Some(client::SHORT)).await?;
        tracing::info!(
            message = "MariaDB replication connection set up",
            server = %server.name,
            migration = %spec.migration,
            position,
            databases = %spec.databases.join(",")
        );
    } else {
        // A retry: a new password (the source user's was replaced).
        let sql = format!(
            "STOP SLAVE {quoted};\nCHANGE MASTER {quoted} TO MASTER_PASSWORD={};\n",
            literal(&spec.password)
        );
        client::run(server, &sql, Some(client::SHORT)).await?;
    }
    client::run(
        server,
        &format!("START SLAVE {quoted};\n"),
        Some(client::SHORT),
    )
    .await?;
    replica_status(server, &spec.migration)
        .await?
        .ok_or_else(|| ReplicationError::NoConnection {
            server: server.name.clone(),
            migration: spec.migration.clone(),
        })
}

/// How far the target is behind the source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Transactions the source has logged and the target has not applied
    /// (GTID sequence numbers, summed over the source's domains).
    pub transactions: u64,
    pub seconds_behind: Option<u64>,
    pub relay_log_bytes: u64,
    pub status: ReplicaStatus,
}

/// `domain -> seq_no` of a GTID position ("0-1-42,1-5-7").
fn by_domain(position: &str) -> BTreeMap<u64, u64> {
    position
        .split(',')
        .filter_map(|gtid| {
            let mut parts = gtid.trim().split('-');
            let domain = parts.next()?.parse().ok()?;
            let _server = parts.next()?;
            let seq = parts.next()?.parse().ok()?;
            Some((domain, seq))
        })
        .collect()
}

/// Transactions in `source` not yet in `applied`.
pub fn transactions_behind(source: &str, applied: &str) -> u64 {
    let applied = by_domain(applied);
    by_domain(source)
        .iter()
        .map(|(domain, seq)| seq.saturating_sub(applied.get(domain).copied().unwrap_or(0)))
        .sum()
}

/// The backlog of the migration's connection against the source's
/// `source_position` ([`source_position`]).
pub async fn backlog(
    server: &MariadbServer,
    migration: &str,
    source_position: &str,
) -> Result<Backlog, ReplicationError> {
    let status =
        replica_status(server, migration)
            .await?
            .ok_or_else(|| ReplicationError::NoConnection {
                server: server.name.clone(),
                migration: migration.to_owned(),
            })?;
    Ok(Backlog {
        transactions: transactions_behind(source_position, &status.applied),
        seconds_behind: status.seconds_behind,
        relay_log_bytes: status.relay_log_bytes,
        status,
    })
}

/// Waits until the target has applied `source_position` (taken on the
/// source after its writes were fenced), for at most `deadline`:
/// `MASTER_GTID_WAIT`. A broken connection fails at once, with its error.
/// The time the wait took.
pub async fn drain(
    server: &MariadbServer,
    migration: &str,
    source_position: &str,
    deadline: Duration,
) -> Result<Duration, ReplicationError> {
    let started = Instant::now();
    let status =
        replica_status(server, migration)
            .await?
            .ok_or_else(|| ReplicationError::NoConnection {
                server: server.name.clone(),
                migration: migration.to_owned(),
            })?;
    if !status.running() && !status.last_error.is_empty() {
        return Err(ReplicationError::Broken {
            server: server.name.clone(),
            migration: migration.to_owned(),
            error: status.last_error,
        });
    }
    let seconds = deadline.as_secs_f64();
    let rows = client::query(
        server,
        &format!(
            "SELECT MASTER_GTID_WAIT({}, {seconds:.3});\n",
            literal(source_position)
        ),
        Some(deadline + client::SHORT),
    )
    .await?;
    let answer = rows
        .first()
        .and_then(|row| row.first())
        .cloned()
        .unwrap_or_default();
    if answer == "0" {
        return Ok(started.elapsed());
    }
    let status = replica_status(server, migration).await?.unwrap_or_default();
    if !status.last_error.is_empty() {
        return Err(ReplicationError::Broken {
            server: server.name.clone(),
            migration: migration.to_owned(),
            error: status.last_error,
        });
    }
    Err(ReplicationError::DrainTimeout {
        server: server.name.clone(),
        migration: migration.to_owned(),
        position: source_position.to_owned(),
        applied: status.applied,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Stops and removes the migration's connection on the target
/// (`STOP SLAVE`, `RESET SLAVE ALL`: its relay logs and settings); whether
/// one existed. The copy's databases are untouched. Idempotent.
pub async fn teardown_replica(
    server: &MariadbServer,
    migration: &str,
) -> Result<bool, ReplicationError> {
    let name = connection_name(migration)?;
    if replica_status(server, migration).await?.is_none() {
        return Ok(false);
    }
    let quoted = literal(&name);
    client::run(
        server,
        &format!("STOP SLAVE {quoted};\nRESET SLAVE {quoted} ALL;\n"),
        Some(client::SHORT),
    )
    .await?;
    tracing::info!(
        message = "MariaDB replication connection removed",
        server = %server.name,
        migration
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_counts_transactions_per_domain() {
        assert_eq!(transactions_behind("0-1-50", "0-1-42"), 8);
        assert_eq!(transactions_behind("0-1-50,1-3-9", "0-1-50"), 9);
        assert_eq!(transactions_behind("0-1-50", "0-1-50,2-2-4"), 0);
        assert_eq!(transactions_behind("", ""), 0);
    }

    #[test]
    fn readiness_names_what_is_missing() {
        assert!(readiness("1", "ROW", "1").ready);
        let off = readiness("0", "MIXED", "0");
        assert!(!off.ready);
        assert!(off.reason.contains("--log-bin"));
        assert!(off.reason.contains("binlog_format=ROW"));
        assert!(off.reason.contains("server_id"));
    }

    #[test]
    fn names_are_checked_and_bounded() {
        assert!(connection_name("Mig 1").is_err());
        assert!(connection_name("").is_err());
        assert_eq!(connection_name("m-1").ok().as_deref(), Some("navette_m-1"));
        let user = source_user_name("m-1").unwrap_or_default();
        assert!(user.starts_with(USER_PREFIX) && user.len() == USER_PREFIX.len() + 16);
        assert_eq!(wild_table("a_b"), "a\\_b.%");
    }
}
