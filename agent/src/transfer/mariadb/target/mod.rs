//! The target side: [`pull_for_account`] copies databases from a source
//! agent's `MariadbSource` into this host's MariaDB servers, for one
//! account.
//!
//! For each database: describe it on the source; refuse if the "target" is
//! the source's own server and database; decide what of the description
//! this host accepts, and refuse the copy with findings naming everything
//! it does not, *before anything is created*: users that are not the
//! account's (by name), definitions that do not parse into known fields
//! (`users`), global privileges and privileges on databases that are not
//! the account's (`privileges`), users that already exist on the server
//! and that no copy of this account created (`ledger`). Then, as the
//! server's administrative user and only with statements Navette builds
//! from those fields: record and create or update the account's users,
//! drop and recreate the target database (a copy is disposable, the source
//! is never written), and create the per-copy loader (`loader`). The dump
//! is loaded *as the loader*, every DEFINER in it checked before the
//! loader receives it (`definers`); the loader also reads the copy back
//! for the checks. The loader is dropped, the definers of every object
//! are checked once more, and the administrative user grants the accepted
//! privileges. Every table's row count and checksum is compared with those
//! the source computed over the rows it sent, and every view, routine,
//! trigger and event must have arrived. A failed or refused copy drops its
//! partial database, the users it created and its loader. Running it again
//! redoes it from the start.
//!
//! *Invariant*: nothing the source sent runs with more than the loader's
//! privileges (the copy's database, and definers among the account's
//! users); the administrative session never executes the source's text.
//!
//! - `load`: the dump stream into the loader's `mariadb` client, progress;
//! - `verify`: checksums and objects compared with the source's.

use navette_proto::v1::mariadb_source_client::MariadbSourceClient;
use navette_proto::v1::{DatabaseCopy, MariadbDatabaseDescription, MariadbDatabaseRequest};
use tonic::transport::Channel;

use super::catalogue::{self, CatalogueError};
use super::client::{self, ClientError, ident, literal};
use super::privileges::{CopyScope, GrantDecision, decide_grant};
use super::users::{UserSpec, is_account_user, is_user_host, parse_create_user};
use crate::config::MariadbServer;
use crate::transfer::progress::Progress;

mod ledger;
mod load;
mod loader;
mod verify;

use load::load;
use verify::{verify_objects, verify_tables};

/// Schemas of the server itself: never a copy's target.
const SYSTEM_SCHEMAS: [&str; 4] = ["information_schema", "performance_schema", "mysql", "sys"];

/// What a pull did, database by database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MariadbReport {
    pub databases: Vec<DatabaseReport>,
}

/// One database copied and checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseReport {
    pub source_server: String,
    pub source_database: String,
    pub target_server: String,
    pub target_database: String,
    /// Every table, as checked on both sides (equal by construction when
    /// the pull succeeded).
    pub tables: Vec<TableCheck>,
    /// `user@host` of the users created or updated.
    pub users: Vec<String>,
    /// Grantees left on the source, with why.
    pub skipped_users: Vec<String>,
    /// Views, routines, triggers and events found on the target.
    pub objects: Vec<String>,
    /// Bytes of SQL received.
    pub bytes_received: u64,
    /// The binlog GTID position of the rows' snapshot on the source, when
    /// [`PullOptions::snapshot_position`] asked for it: where replication
    /// to this copy starts ([`crate::replication::mariadb`]).
    pub snapshot_gtid_position: Option<String>,
}

/// What a pull does beyond today's copy; `Default` is the plain copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct PullOptions {
    /// Ask the source for the binlog GTID position of each database's rows
    /// snapshot ([`DatabaseReport::snapshot_gtid_position`]).
    pub snapshot_position: bool,
}

/// A table's row count and checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCheck {
    pub table: String,
    pub rows: u64,
    pub checksum: String,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum MariadbCopyError {
    #[error(
        "this host has no MariaDB server named {0:?} (see the agent's [[mariadb]] configuration)"
    )]
    UnknownServer(String),
    #[error("target database name {0:?} is not allowed (empty, too long, or a system schema)")]
    BadTargetName(String),
    #[error(
        "refusing to copy {server}/{database} onto itself: the target server is the source's server and the database has the same name"
    )]
    SameDatabase { server: String, database: String },
    #[error("the source refused or failed {call} for MariaDB database {database}: {status}")]
    Source {
        call: &'static str,
        database: String,
        status: String,
    },
    #[error("MariaDB server {server}: {source}")]
    Target {
        server: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "MariaDB database {database}: the copy was refused and nothing of it is left on this host: {}",
        .findings.join("; ")
    )]
    Refused {
        database: String,
        /// What was refused, each naming the user, privilege, definer or
        /// object.
        findings: Vec<String>,
    },
    #[error("MariaDB server {server}: the loader user for {database}: {detail}")]
    Loader {
        server: String,
        database: String,
        detail: String,
    },
    #[error("checking the copy of {database} on MariaDB server {server}: {source}")]
    Check {
        server: String,
        database: String,
        #[source]
        source: Box<CatalogueError>,
    },
    #[error("loading MariaDB database {database} on server {server} failed: {detail}")]
    Load {
        server: String,
        database: String,
        detail: String,
    },
    #[error(
        "MariaDB database {database}: no checksum came for table(s) {} (created on the source during the copy? copy again)",
        .tables.join(", ")
    )]
    Incomplete {
        database: String,
        tables: Vec<String>,
    },
    #[error("MariaDB database {database}: tables differ from the source: {}", .tables.join("; "))]
    Mismatch {
        database: String,
        tables: Vec<String>,
    },
    #[error("MariaDB database {database}: missing on the target: {}", .objects.join(", "))]
    MissingObjects {
        database: String,
        objects: Vec<String>,
    },
}

impl MariadbCopyError {
    fn target(server: &MariadbServer) -> impl FnOnce(ClientError) -> MariadbCopyError {
        let server = server.name.clone();
        move |source| MariadbCopyError::Target { server, source }
    }

    fn check(
        server: &MariadbServer,
        database: &str,
    ) -> impl FnOnce(CatalogueError) -> MariadbCopyError {
        let (server, database) = (server.name.clone(), database.to_owned());
        move |source| MariadbCopyError::Check {
            server,
            database,
            source: Box::new(source),
        }
    }
}

fn source_error(call: &'static str, database: &str, status: &tonic::Status) -> MariadbCopyError {
    MariadbCopyError::Source {
        call,
        database: database.to_owned(),
        status: crate::describe_status(status),
    }
}

/// [`pull_for_account`] for a caller that does not name the account: the
/// account is taken from the name of the first source database, up to its
/// first `_` (`alice_shop` gives `alice`), the widest account the name can
/// belong to. Callers that know the account (the transfer's spec does)
/// call [`pull_for_account`].
pub async fn pull(
    channel: Channel,
    transfer_id: &str,
    copies: &[DatabaseCopy],
    target_servers: &[MariadbServer],
    progress: &Progress,
) -> Result<MariadbReport, MariadbCopyError> {
    let first = copies
        .first()
        .map(|copy| copy.source_database.as_str())
        .unwrap_or_default();
    let account = match first.find('_') {
        Some(at) if at > 0 => &first[..at],
        _ => first,
    };
    pull_for_account(
        channel,
        transfer_id,
        account,
        copies,
        target_servers,
        progress,
    )
    .await
}

/// Copies every database of `copies` of `account` from the source behind
/// `channel` into this host's `target_servers`, reporting to `progress`.
/// `account` is the transfer's (the controller's word, not the source's):
/// only its users are created.
pub async fn pull_for_account(
    channel: Channel,
    transfer_id: &str,
    account: &str,
    copies: &[DatabaseCopy],
    target_servers: &[MariadbServer],
    progress: &Progress,
) -> Result<MariadbReport, MariadbCopyError> {
    pull_with_options(
        channel,
        transfer_id,
        account,
        copies,
        target_servers,
        progress,
        PullOptions::default(),
    )
    .await
}

/// [`pull_for_account`] with `options` (the snapshot's binlog position for
/// replication).
pub async fn pull_with_options(
    channel: Channel,
    transfer_id: &str,
    account: &str,
    copies: &[DatabaseCopy],
    target_servers: &[MariadbServer],
    progress: &Progress,
    options: PullOptions,
) -> Result<MariadbReport, MariadbCopyError> {
    let mut source = MariadbSourceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    // Describe everything first, so totals are known from the start.
    let mut planned = Vec::with_capacity(copies.len());
    for copy in copies {
        let server = target_servers
            .iter()
            .find(|server| server.name == copy.target_server)
            .ok_or_else(|| MariadbCopyError::UnknownServer(copy.target_server.clone()))?;
        check_target_name(&copy.target_database)?;
        let description = source
            .describe_database(request(transfer_id, copy))
            .await
            .map_err(|status| source_error("DescribeDatabase", &copy.source_database, &status))?
            .into_inner();
        let scope = CopyScope {
            account,
            source_database: &copy.source_database,
            target_database: &copy.target_database,
        };
        let plan = plan(&description, &scope).map_err(|findings| MariadbCopyError::Refused {
            database: copy.target_database.clone(),
            findings,
        })?;
        progress.add(&progress.tables_total, description.tables.len() as u64);
        progress.add(
            &progress.bytes_total,
            description.tables.iter().map(|t| t.data_bytes).sum(),
        );
        planned.push((copy, server, description, plan));
    }
    let mut report = MariadbReport::default();
    for (copy, server, description, plan) in planned {
        progress.set_phase(format!("mariadb {}", copy.target_database));
        let target = Target {
            transfer_id,
            account,
            copy,
            server,
            description: &description,
            plan: &plan,
            options,
        };
        let database = copy_database(&mut source, &target, progress).await?;
        report.databases.push(database);
    }
    Ok(report)
}

/// What the target accepted of a description: the users' definitions and
/// the GRANT statements it builds.
struct Plan {
    users: Vec<UserSpec>,
    grants: Vec<String>,
    /// Grantees and grants not copied, with why.
    skipped: Vec<String>,
}

impl Plan {
    /// `(user, host)` of the account's users copied here: the only
    /// definers the dump may name.
    fn accounts(&self) -> Vec<(String, String)> {
        self.users
            .iter()
            .map(|user| (user.user.clone(), user.host.clone()))
            .collect()
    }
}

/// Decides what of `description` this host accepts; every finding that
/// refuses it.
fn plan(
    description: &MariadbDatabaseDescription,
    scope: &CopyScope<'_>,
) -> Result<Plan, Vec<String>> {
    let mut findings = Vec::new();
    let mut plan = Plan {
        users: Vec::new(),
        grants: Vec::new(),
        skipped: description.skipped_users.clone(),
    };
    for user in &description.users {
        let who = format!("{}@{}", user.user, user.host);
        if !is_account_user(&user.user, scope.account) {
            findings.push(format!(
                "user {who} is not one of account {}'s users",
                scope.account
            ));
            continue;
        }
        if !is_user_host(&user.host) {
            findings.push(format!("user {who}: {:?} is not a host", user.host));
            continue;
        }
        match parse_create_user(&user.user, &user.host, &user.create_user) {
            Ok(spec) => plan.users.push(spec),
            Err(why) => findings.push(format!("user {who}: {why}")),
        }
        for grant in &user.grants {
            match decide_grant(grant, scope, &user.user, &user.host) {
                Ok(GrantDecision::Apply(sql)) => plan.grants.push(sql),
                Ok(GrantDecision::Skip(why)) => plan.skipped.extend(why),
                Err(finding) => findings.push(finding),
            }
        }
    }
    if findings.is_empty() {
        Ok(plan)
    } else {
        Err(findings)
    }
}

/// One database's copy, as decided.
struct Target<'a> {
    transfer_id: &'a str,
    account: &'a str,
    copy: &'a DatabaseCopy,
    server: &'a MariadbServer,
    description: &'a MariadbDatabaseDescription,
    plan: &'a Plan,
    options: PullOptions,
}

/// Drops the MariaDB users that copies of `account` created on `server`
/// (as the server's record, `mysql.navette_copy_users`, says), and only
/// those: for the removal of the account's last copy from this host. The
/// users dropped, `user@host`. Idempotent.
pub async fn remove_account_users(
    server: &MariadbServer,
    account: &str,
) -> Result<Vec<String>, MariadbCopyError> {
    ledger::drop_account_users(server, account)
        .await
        .map_err(MariadbCopyError::target(server))
}

fn request(transfer_id: &str, copy: &DatabaseCopy) -> MariadbDatabaseRequest {
    MariadbDatabaseRequest {
        transfer_id: transfer_id.to_owned(),
        server: copy.source_server.clone(),
        database: copy.source_database.clone(),
        snapshot_position: false,
    }
}

fn check_target_name(name: &str) -> Result<(), MariadbCopyError> {
    let system = SYSTEM_SCHEMAS
        .iter()
        .any(|schema| schema.eq_ignore_ascii_case(name));
    if name.is_empty() || name.chars().count() > 64 || name.contains('\0') || system {
        return Err(MariadbCopyError::BadTargetName(name.to_owned()));
    }
    Ok(())
}

async fn copy_database(
    source: &mut MariadbSourceClient<Channel>,
    target: &Target<'_>,
    progress: &Progress,
) -> Result<DatabaseReport, MariadbCopyError> {
    let (copy, server, description) = (target.copy, target.server, target.description);
    let database = copy.target_database.as_str();
    let own_id = catalogue::server_instance_id(server)
        .await
        .map_err(MariadbCopyError::target(server))?;
    if own_id == description.instance_id && database == copy.source_database {
        return Err(MariadbCopyError::SameDatabase {
            server: server.name.clone(),
            database: database.to_owned(),
        });
    }
    tracing::info!(
        message = "copying a MariaDB database",
        transfer_id = target.transfer_id,
        account = target.account,
        source_server = %copy.source_server,
        source_database = %copy.source_database,
        server = %server.name,
        database,
        tables = description.tables.len(),
        users = target.plan.users.len()
    );

    // Users this server already has must be this account's copies'.
    let wanted = target.plan.accounts();
    let known = ledger::known(server, &wanted)
        .await
        .map_err(MariadbCopyError::target(server))?;
    let mut findings = Vec::new();
    let mut created = Vec::new();
    for (user, host) in &wanted {
        let known = known
            .get(&(user.clone(), host.to_ascii_lowercase()))
            .cloned()
            .unwrap_or_default();
        match (known.exists, known.created_for) {
            (false, _) => created.push((user.clone(), host.clone())),
            (true, Some(account)) if account == target.account => {}
            (true, Some(account)) => findings.push(format!(
                "user {user}@{host} already exists on this server, created by a copy of account {account}"
            )),
            (true, None) => findings.push(format!(
                "user {user}@{host} already exists on this server and no copy of account {} created it",
                target.account
            )),
        }
    }
    if !findings.is_empty() {
        return Err(MariadbCopyError::Refused {
            database: database.to_owned(),
            findings,
        });
    }

    // From here on, undo on failure: the users created now, the database.
    let outcome = async {
        ledger::record(server, target.account, target.transfer_id, &wanted)
            .await
            .map_err(MariadbCopyError::target(server))?;
        // Users first: views, routines and triggers name them as definers.
        let setup: String = target.plan.users.iter().map(UserSpec::ensure_sql).collect();
        if !setup.is_empty() {
            client::run(server, &setup, Some(client::SHORT))
                .await
                .map_err(MariadbCopyError::target(server))?;
        }
        client::run(
            server,
            &recreate_database_sql(database, description),
            Some(client::SHORT),
        )
        .await
        .map_err(MariadbCopyError::target(server))?;
        fill(source, target, progress).await
    }
    .await;
    let (tables, objects, bytes_received, snapshot_gtid_position) = match outcome {
        Ok(filled) => filled,
        Err(error) => {
            drop_partial_copy(server, database, &created, &error).await;
            return Err(error);
        }
    };
    tracing::info!(
        message = "MariaDB database copied and checked",
        transfer_id = target.transfer_id,
        server = %server.name,
        database,
        tables = tables.len(),
        bytes_received
    );
    Ok(DatabaseReport {
        source_server: copy.source_server.clone(),
        source_database: copy.source_database.clone(),
        target_server: copy.target_server.clone(),
        target_database: database.to_owned(),
        tables,
        users: wanted
            .iter()
            .map(|(user, host)| format!("{user}@{host}"))
            .collect(),
        skipped_users: target.plan.skipped.clone(),
        objects,
        bytes_received,
        snapshot_gtid_position,
    })
}

/// Loads the dump as the copy's loader and checks the copy with it, drops
/// the loader, checks the definers, and grants the privileges: the tables
/// as checked, the objects found, the bytes received.
async fn fill(
    source: &mut MariadbSourceClient<Channel>,
    target: &Target<'_>,
    progress: &Progress,
) -> Result<(Vec<TableCheck>, Vec<String>, u64, Option<String>), MariadbCopyError> {
    let (copy, server, description) = (target.copy, target.server, target.description);
    let database = copy.target_database.as_str();
    let loader_error = |detail: String| MariadbCopyError::Loader {
        server: server.name.clone(),
        database: database.to_owned(),
        detail,
    };
    let name = loader::loader_name(target.transfer_id, &server.name, database);
    let loaded = async {
        let loader = loader::create(server, &name, database)
            .await
            .map_err(|error| loader_error(error.to_string()))?;
        let session = &loader.session;
        let definers = target.plan.accounts();
        let (checksums, bytes_received, position) = load(
            source,
            target.transfer_id,
            target.options.snapshot_position,
            copy,
            session,
            description,
            definers,
            progress,
        )
        .await?;
        let tables = verify_tables(session, database, &checksums).await?;
        Ok::<_, MariadbCopyError>((tables, bytes_received, position))
    }
    .await;
    // Whatever happened, the loader goes.
    let dropped = loader::drop_loader(server, &name).await;
    let (tables, bytes_received, position) = loaded?;
    dropped.map_err(|error| loader_error(format!("cannot drop {name}: {error}")))?;

    check_definers(server, database, &target.plan.accounts()).await?;
    let objects = verify_objects(server, database, description).await?;
    // Grants last: table and routine grants need their objects.
    let grants: String = target.plan.grants.concat();
    if !grants.is_empty() {
        client::run(server, &grants, Some(client::SHORT))
            .await
            .map_err(MariadbCopyError::target(server))?;
    }
    Ok((tables, objects, bytes_received, position))
}

/// Refuses the copy unless every view, routine, trigger and event of
/// `database` has one of `allowed` as its definer (the dump's clauses were
/// checked on the way in; this also catches an object that named none and
/// would belong to the dropped loader).
async fn check_definers(
    server: &MariadbServer,
    database: &str,
    allowed: &[(String, String)],
) -> Result<(), MariadbCopyError> {
    let db = literal(database);
    let rows = client::query(
        server,
        &format!(
            "SELECT 'view', TABLE_NAME, DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db};\n\
             SELECT 'routine', ROUTINE_NAME, DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db};\n\
             SELECT 'trigger', TRIGGER_NAME, DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {db};\n\
             SELECT 'event', EVENT_NAME, DEFINER FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db};\n"
        ),
        Some(client::SHORT),
    )
    .await
    .map_err(MariadbCopyError::target(server))?;
    let findings: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let [kind, name, definer] = row.as_slice() else {
                return Some(format!("unexpected object row {:?}", row.join(" ")));
            };
            let accepted = definer.rsplit_once('@').is_some_and(|(user, host)| {
                allowed
                    .iter()
                    .any(|(u, h)| u == user && h.eq_ignore_ascii_case(host))
            });
            (!accepted).then(|| {
                format!("{kind} {name} has DEFINER {definer}, which is not one of the account's users copied here")
            })
        })
        .collect();
    if findings.is_empty() {
        Ok(())
    } else {
        Err(MariadbCopyError::Refused {
            database: database.to_owned(),
            findings,
        })
    }
}

/// Drops what a failed copy made: its database (never called before the
/// copy recreated it or refused, so never on anything but the copy) and
/// the users it created.
async fn drop_partial_copy(
    server: &MariadbServer,
    database: &str,
    created: &[(String, String)],
    error: &MariadbCopyError,
) {
    tracing::warn!(
        message = "MariaDB copy failed; dropping the partial copy",
        server = %server.name,
        database,
        users = created.len(),
        %error
    );
    let drop = format!("DROP DATABASE IF EXISTS {};\n", ident(database));
    if let Err(drop_error) = client::run(server, &drop, Some(client::SHORT)).await {
        tracing::warn!(
            message = "cannot drop the partial copy",
            server = %server.name,
            database,
            error = %drop_error
        );
    }
    if let Err(drop_error) = ledger::drop_users(server, created).await {
        tracing::warn!(
            message = "cannot drop the users of a failed copy",
            server = %server.name,
            database,
            error = %drop_error
        );
    }
}

fn recreate_database_sql(database: &str, description: &MariadbDatabaseDescription) -> String {
    let mut create = format!("CREATE DATABASE {}", ident(database));
    if !description.character_set.is_empty() {
        create.push_str(&format!(
            " CHARACTER SET {}",
            literal(&description.character_set)
        ));
    }
    if !description.collation.is_empty() {
        create.push_str(&format!(" COLLATE {}", literal(&description.collation)));
    }
    format!("DROP DATABASE IF EXISTS {};\n{create};\n", ident(database))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_schemas_and_odd_names_are_never_targets() {
        for name in ["mysql", "INFORMATION_SCHEMA", "sys", "", "a\0b"] {
            assert!(check_target_name(name).is_err(), "{name:?}");
        }
        assert!(check_target_name(&"x".repeat(65)).is_err());
        assert!(check_target_name("alice_shop").is_ok());
    }

    #[test]
    fn the_database_is_recreated_with_the_sources_character_set() {
        let description = MariadbDatabaseDescription {
            character_set: "utf8mb4".into(),
            collation: "utf8mb4_unicode_ci".into(),
            ..MariadbDatabaseDescription::default()
        };
        assert_eq!(
            recreate_database_sql("alice", &description),
            "DROP DATABASE IF EXISTS `alice`;\n\
             CREATE DATABASE `alice` CHARACTER SET 'utf8mb4' COLLATE 'utf8mb4_unicode_ci';\n"
        );
    }
}
