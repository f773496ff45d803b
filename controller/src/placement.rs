//! Where a test copy goes, and what it is made of: pure functions from the
//! inventory (account, source host, candidate hosts) and the migration to a
//! copy plan, or the reason there is none. No I/O, so every refusal is
//! unit-tested.
//!
//! Invariant: a host's kind here is the operator's (`Host::kind`), never
//! what its agent reports, and its free space counts at most what its disk
//! could hold ([`usable_free_bytes`]): an agent cannot attract copies, and
//! the customers' credentials in them, by lying about itself.
//!
//! Invariant: free space is checked where each part of the copy lands:
//! the home on the host's homes filesystem ([`usable_free_bytes`], which
//! must hold the whole copy, as when both share one filesystem), and each
//! receiving database server's databases on that server's data directory
//! ([`server_room`]), which may be another filesystem. The data directory's
//! figure only ever refuses a host, so an agent overstating it attracts
//! nothing the homes' check would not give it.
//!
//! Invariant: a copy goes only between a source and a target whose agents
//! share a transfer protocol version ([`protocol::protocol_version`]), and its plan
//! records the highest one, which both agents then use.
//!
//! Invariant: a copy's database never goes to a server where its name, or
//! the role owning it, is already held by another account or another
//! account's copy ([`name_taken`]): two customers' `wordpress` never meet
//! on one server, and one test can never drop or take over another's copy.
//! A host may run several servers of one engine and version, and each
//! keeps its own roles and database names, so placement picks, database by
//! database, a free one ([`receiving_server`]); a host is refused only when
//! no server of it is free ([`name_collision`]). `held` counts what live
//! tests plan as well as what agents report, so two tests placed one after
//! the other pick different servers before either copy exists. The target
//! agent refuses the same again (a database that is not its copy's, a role
//! its ledger gives another account), for what placement cannot see.

pub mod migrate;

use crate::catalogue::{Migration, Software, version_matches};
use crate::error::Error;
use crate::model::{
    Account, CopyPlan, Database, DatabasePlan, DatabaseServer, Engine, Host, HostKind, HostState,
};
use crate::protocol;

/// Margin on top of the data's size: indexes rebuilt, WAL, temporary files.
const MARGIN_NUMERATOR: u64 = 5;
const MARGIN_DENOMINATOR: u64 = 4;
const MARGIN_FIXED: u64 = 64 << 20;

/// The free space placement believes: what the agent reports, but never
/// more than the disk it reports, nor than the disk an operator declared
/// for the host's class.
pub fn usable_free_bytes(host: &Host) -> u64 {
    let mut free = host.disk_free_bytes.min(host.disk_total_bytes);
    if let Some(declared) = host.declared_disk_bytes {
        free = free.min(declared);
    }
    free
}

/// Bytes of the account: home and databases.
pub fn account_bytes(account: &Account) -> (u64, u64) {
    let databases = account.databases.iter().map(|d| d.size_bytes).sum();
    (account.home_size_bytes, databases)
}

/// Disk a copy of the account needs on the target.
pub fn disk_needed(account: &Account) -> u64 {
    let (home, databases) = account_bytes(account);
    with_margin(home + databases)
}

/// Disk `bytes` of data need once copied, with the margin.
fn with_margin(bytes: u64) -> u64 {
    bytes.saturating_mul(MARGIN_NUMERATOR) / MARGIN_DENOMINATOR + MARGIN_FIXED
}

/// What one receiving database server of a host would take of a copy, and
/// the room its data directory has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRoom {
    pub engine: Engine,
    pub server: String,
    /// Its databases' size with the margin ([`disk_needed`]'s).
    pub needed_bytes: u64,
    /// Free bytes of its data directory's filesystem; `None`: not
    /// reported (an older agent), and only the homes' check applies.
    pub free_bytes: Option<u64>,
}

impl ServerRoom {
    /// Whether the data directory is known to lack room.
    pub fn short(&self) -> bool {
        self.free_bytes.is_some_and(|free| free < self.needed_bytes)
    }

    /// "PostgreSQL server main has 3.0 MiB free on its data directory;
    /// the databases it would receive need 70.0 MiB".
    pub fn describe(&self) -> String {
        format!(
            "{} server {} has {} on its data directory; the databases it would receive need {}",
            engine_name(self.engine),
            self.server,
            match self.free_bytes {
                Some(free) => format!("{} free", human_bytes(free)),
                None => "an unmeasured amount free".to_owned(),
            },
            human_bytes(self.needed_bytes)
        )
    }
}

/// For each server of `host` that would receive databases of `account`
/// (as [`plan_test`] picks them), what they need and what its data
/// directory has free; in the order the host lists its servers.
pub fn server_room(
    migration: &Migration,
    account: &Account,
    source_host: &Host,
    host: &Host,
    held: &[Account],
) -> Vec<ServerRoom> {
    let mut rooms: Vec<ServerRoom> = Vec::new();
    for database in &account.databases {
        let Some(source) = source_host
            .database_servers
            .iter()
            .find(|s| s.name == database.server && s.engine == database.engine)
        else {
            continue;
        };
        let Ok(server) = receiving_server(migration, account, database, host, source, held) else {
            continue;
        };
        match rooms
            .iter_mut()
            .find(|r| r.engine == server.engine && r.server == server.name)
        {
            Some(room) => room.needed_bytes += database.size_bytes,
            None => rooms.push(ServerRoom {
                engine: server.engine,
                server: server.name.clone(),
                needed_bytes: database.size_bytes,
                free_bytes: server.data_directory_free_bytes,
            }),
        }
    }
    for room in &mut rooms {
        room.needed_bytes = with_margin(room.needed_bytes);
    }
    rooms.sort_by_key(|room| {
        host.database_servers
            .iter()
            .position(|s| s.engine == room.engine && s.name == room.server)
    });
    rooms
}

fn numbers(version: &str) -> Vec<u64> {
    version
        .split(['.', '-', ' '])
        .map_while(|part| part.parse().ok())
        .collect()
}

/// Whether `actual` is at least `minimum`, comparing the components
/// `minimum` has (so 18.1 is at least 15.18 as major versions go only when
/// called with the major).
pub fn at_least(actual: &str, minimum: &str) -> bool {
    let actual = numbers(actual);
    let minimum = numbers(minimum);
    for (a, m) in actual.iter().zip(&minimum) {
        if a != m {
            return a > m;
        }
    }
    actual.len() >= minimum.len()
}

/// The major version: 15 for PostgreSQL 15.18, 10.11 for MariaDB 10.11.6.
fn major(engine: Engine, version: &str) -> String {
    let parts: Vec<String> = numbers(version).iter().map(u64::to_string).collect();
    let keep = match engine {
        Engine::Postgresql => 1,
        Engine::Mariadb => 2,
    };
    parts.into_iter().take(keep).collect::<Vec<_>>().join(".")
}

fn engine_of(software: Software) -> Option<Engine> {
    match software {
        Software::Postgresql => Some(Engine::Postgresql),
        Software::Mariadb => Some(Engine::Mariadb),
        Software::Stack => None,
    }
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgresql => "PostgreSQL",
        Engine::Mariadb => "MariaDB",
    }
}

/// The servers of `host` that could receive a database now served by
/// `source` on the source host, for this migration: the engine, reachable,
/// and the target version (or at least the source's major); newest first,
/// then in the order the host lists them.
fn receiving_candidates<'a>(
    migration: &Migration,
    host: &'a Host,
    source: &DatabaseServer,
) -> Vec<&'a DatabaseServer> {
    let target = migration
        .target
        .versions
        .first()
        .map(String::as_str)
        .unwrap_or("");
    let mut candidates: Vec<&DatabaseServer> = host
        .database_servers
        .iter()
        .filter(|server| server.engine == source.engine && server.reachable)
        .filter(|server| {
            if engine_of(migration.target.software) == Some(source.engine) {
                version_matches(target, &server.version)
            } else {
                at_least(&server.version, &major(source.engine, &source.version))
            }
        })
        .collect();
    // Stable: servers of one version keep the host's order.
    candidates.sort_by_key(|server| std::cmp::Reverse(numbers(&server.version)));
    candidates
}

/// Why `server` of `host` cannot hold `database` of `account` without
/// meeting another account's names, if so: a database of the same name and
/// engine there, or the role owning `database` owning a database there,
/// held by another account or a copy of one (`held`: what every host
/// reports, and what live tests plan). The other account is not named: it
/// is another customer's.
fn name_taken(
    account: &Account,
    database: &Database,
    host: &Host,
    server: &DatabaseServer,
    held: &[Account],
) -> Option<String> {
    let theirs = held
        .iter()
        .filter(|other| other.host_id == host.id && other.name != account.name)
        .flat_map(|other| &other.databases)
        .filter(|d| d.engine == database.engine && d.server == server.name);
    for theirs in theirs {
        if theirs.name == database.name {
            return Some(format!(
                "a {} database named {} for another account",
                engine_name(database.engine),
                database.name
            ));
        }
        if !database.owner.is_empty() && theirs.owner == database.owner {
            return Some(format!(
                "a {} role {} owning another account's database",
                engine_name(database.engine),
                database.owner
            ));
        }
    }
    None
}

/// The server of `host` that should receive `database` of `account`, now
/// served by `source` on the source host: the first candidate
/// ([`receiving_candidates`]) where none of the database's names is held
/// by another account ([`name_taken`]). A host may run several servers of
/// one engine and version; each keeps its own roles and database names, so
/// two customers' `wordpress` go to two servers of one host. `Err` says why
/// no candidate will do (`None`: there is no candidate at all).
/// The extensions `database` uses that `server` cannot create. A server
/// that reports none (an agent older than the report) is taken to have
/// them: the copy's preflight checks again.
fn lacking_extensions<'a>(server: &DatabaseServer, database: &'a Database) -> Vec<&'a str> {
    if server.available_extensions.is_empty() {
        return Vec::new();
    }
    database
        .extensions
        .iter()
        .filter(|e| !server.available_extensions.contains(e))
        .map(String::as_str)
        .collect()
}

fn receiving_server<'a>(
    migration: &Migration,
    account: &Account,
    database: &Database,
    host: &'a Host,
    source: &DatabaseServer,
    held: &[Account],
) -> Result<&'a DatabaseServer, Option<String>> {
    let candidates = receiving_candidates(migration, host, source);
    let mut taken = None;
    for server in candidates
        .into_iter()
        .filter(|server| lacking_extensions(server, database).is_empty())
    {
        match name_taken(account, database, host, server, held) {
            None => return Ok(server),
            Some(why) => {
                taken.get_or_insert(why);
            }
        }
    }
    Err(taken)
}

/// Why `host` cannot hold the copy without meeting another account's
/// names: a database of the account for which every receiving server of
/// the host holds its name or its owner for another account. Only then is
/// the host refused; a host with one free server per database will do.
fn name_collision(
    migration: &Migration,
    account: &Account,
    source_host: &Host,
    host: &Host,
    held: &[Account],
) -> Option<String> {
    for database in &account.databases {
        let Some(source) = source_host
            .database_servers
            .iter()
            .find(|s| s.name == database.server && s.engine == database.engine)
        else {
            continue;
        };
        if let Err(Some(why)) = receiving_server(migration, account, database, host, source, held) {
            return Some(format!(
                "already holds {why} on every {} server that could receive it",
                engine_name(database.engine)
            ));
        }
    }
    None
}

/// Why `host` cannot take the copy (software), or `None` if it can.
fn missing_software(
    migration: &Migration,
    account: &Account,
    source_host: &Host,
    host: &Host,
) -> Option<String> {
    let target = migration
        .target
        .versions
        .first()
        .map(String::as_str)
        .unwrap_or("");
    if migration.target.software == Software::Stack && !version_matches(target, &host.stack_version)
    {
        return Some(format!("runs stack {}, not {target}", host.stack_version));
    }
    if let Some(engine) = engine_of(migration.target.software)
        && !host
            .database_servers
            .iter()
            .any(|s| s.engine == engine && s.reachable && version_matches(target, &s.version))
    {
        return Some(format!("runs no {} {target}", engine_name(engine)));
    }
    for database in &account.databases {
        let source = source_host
            .database_servers
            .iter()
            .find(|s| s.name == database.server && s.engine == database.engine)?;
        let candidates = receiving_candidates(migration, host, source);
        if candidates.is_empty() {
            return Some(format!(
                "has no {} server for database {} ({} or later)",
                engine_name(database.engine),
                database.name,
                major(source.engine, &source.version)
            ));
        }
        if let Some(lacking) = candidates
            .iter()
            .map(|server| lacking_extensions(server, database))
            .min_by_key(Vec::len)
            .filter(|lacking| !lacking.is_empty())
        {
            return Some(format!(
                "has no {} server with the extensions database {} uses: {} cannot be created there",
                engine_name(database.engine),
                database.name,
                lacking.join(", ")
            ));
        }
    }
    None
}

/// The server of `source_host` that holds `database`, refused unless it is
/// reported and up; `then` is what to do again once it is started
/// ("test", "refresh").
fn source_server<'a>(
    source_host: &'a Host,
    database: &Database,
    then: &str,
) -> Result<&'a DatabaseServer, Error> {
    let server = source_host
        .database_servers
        .iter()
        .find(|s| s.name == database.server && s.engine == database.engine)
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "database {} is on server {:?}, which host {} does not report",
                database.name, database.server, source_host.id
            ))
        })?;
    if !server.reachable {
        return Err(Error::FailedPrecondition(format!(
            "the {} server {:?} of database {} on host {} is down ({}); start it, then {then} again",
            engine_name(server.engine),
            server.name,
            database.name,
            source_host.id,
            if server.error.is_empty() {
                "no answer"
            } else {
                &server.error
            }
        )));
    }
    Ok(server)
}

/// The copy plan of `account` (living on `source_host`) onto `chosen`, a
/// host placement has just found fit for it: each database to the server
/// [`receiving_server`] picks there, the pair's protocol version, and
/// whether `chosen` runs the account's sites (`runs_sites`). `then` is
/// what to do again once a source server that went down is started.
pub(crate) fn copy_plan(
    migration: &Migration,
    account: &Account,
    source_host: &Host,
    chosen: &Host,
    held: &[Account],
    runs_sites: bool,
    then: &str,
) -> Result<CopyPlan, Error> {
    let mut databases = Vec::new();
    for database in &account.databases {
        let source = source_server(source_host, database, then)?;
        let target = receiving_server(migration, account, database, chosen, source, held)
            .map_err(|_| Error::Internal("receiving server vanished".to_owned()))?;
        databases.push(DatabasePlan {
            engine: database.engine,
            name: database.name.clone(),
            owner: database.owner.clone(),
            source_server: source.name.clone(),
            target_server: target.name.clone(),
            target_address: target.address.clone(),
            target_port: target.port,
            target_version: target.version.clone(),
        });
    }
    let protocol_version =
        protocol::protocol_version(source_host, chosen).map_err(Error::Internal)?;
    Ok(CopyPlan {
        protocol_version,
        source_endpoint: source_host.agent_endpoint.clone(),
        target_endpoint: chosen.agent_endpoint.clone(),
        source_home: account.home.clone(),
        databases,
        target_address: chosen.addresses.first().cloned().unwrap_or_default(),
        runs_sites,
        sites: account.sites.clone(),
    })
}

/// Chooses the test host for a test of `migration` on `account` (living on
/// `source_host`) among `hosts`, and makes the copy plan.
pub fn plan_test(
    migration: &Migration,
    account: &Account,
    source_host: &Host,
    hosts: &[Host],
    held: &[Account],
) -> Result<(Host, CopyPlan), Error> {
    if source_host.state != HostState::Online {
        return Err(Error::Unavailable(format!(
            "the account's host {} is unreachable; a test needs it online",
            source_host.id
        )));
    }
    for database in &account.databases {
        source_server(source_host, database, "test")?;
    }
    let needed = disk_needed(account);
    let mut refusals = Vec::new();
    let mut fitting: Vec<&Host> = Vec::new();
    let mut largest_free = 0u64;
    let mut short_of_room = false;
    for host in hosts.iter().filter(|h| h.kind == Some(HostKind::Test)) {
        let free = usable_free_bytes(host);
        if host.state == HostState::Removed {
            refusals.push(format!("{} was removed", host.id));
        } else if host.state != HostState::Online {
            refusals.push(format!("{} is unreachable", host.id));
        } else if host.draining {
            refusals.push(format!("{} is draining", host.id));
        } else if let Some(why) = missing_software(migration, account, source_host, host) {
            refusals.push(format!("{} {why}", host.id));
        } else if let Err(why) = protocol::protocol_version(source_host, host) {
            refusals.push(why);
        } else if let Some(why) = name_collision(migration, account, source_host, host, held) {
            refusals.push(format!("{} {why} (retry when that test ends)", host.id));
        } else if free < needed {
            largest_free = largest_free.max(free);
            refusals.push(format!("{} has {} free", host.id, human_bytes(free)));
        } else if let Some(short) = server_room(migration, account, source_host, host, held)
            .into_iter()
            .find(ServerRoom::short)
        {
            short_of_room = true;
            refusals.push(format!("{}: {}", host.id, short.describe()));
        } else {
            fitting.push(host);
        }
    }
    let Some(chosen) = fitting.into_iter().max_by_key(|h| usable_free_bytes(h)) else {
        let detail = if refusals.is_empty() {
            "there are no test hosts".to_owned()
        } else {
            refusals.join("; ")
        };
        return Err(if largest_free > 0 || short_of_room {
            Error::NoRoom(format!(
                "no test host has room for a copy of {}: it needs {} ({detail}); retry when a test host is freed",
                account.name,
                human_bytes(needed)
            ))
        } else {
            Error::FailedPrecondition(format!(
                "no test host can receive a copy of {} for {}: {detail}",
                account.name, migration.id
            ))
        });
    };
    let plan = copy_plan(
        migration,
        account,
        source_host,
        chosen,
        held,
        chosen.serves_sites,
        "test",
    )?;
    Ok((chosen.clone(), plan))
}

/// The plan of a refresh of a test of `migration` on `account` (living on
/// `source_host`), copied before with `previous` onto `test_host`: the
/// account's databases as they are now. A database copied before keeps its
/// receiving server; one created since goes where a first placement would
/// put it ([`receiving_server`]: a server of the right version with its
/// extensions, where no other account holds its names); one dropped since
/// is left out (the test host drops its copy). The same for sites: those
/// the account has now run there (ones added since started, ones dropped
/// since stopped). Refused, naming the
/// database, when one created since cannot be received, or is on a server
/// that is down.
pub fn replan_test(
    migration: &Migration,
    account: &Account,
    source_host: &Host,
    test_host: &Host,
    held: &[Account],
    previous: &CopyPlan,
) -> Result<CopyPlan, Error> {
    let mut databases = Vec::new();
    for database in &account.databases {
        if let Some(copied) = previous.databases.iter().find(|d| {
            d.engine == database.engine
                && d.name == database.name
                && d.source_server == database.server
        }) {
            databases.push(DatabasePlan {
                owner: database.owner.clone(),
                ..copied.clone()
            });
            continue;
        }
        let source = source_server(source_host, database, "refresh")?;
        let target = receiving_server(migration, account, database, test_host, source, held)
            .map_err(|why| {
                let why = why.unwrap_or_else(|| {
                    let lacking: Vec<&str> = receiving_candidates(migration, test_host, source)
                        .iter()
                        .flat_map(|server| lacking_extensions(server, database))
                        .collect();
                    if lacking.is_empty() {
                        "no server that can receive it".to_owned()
                    } else {
                        format!("no server with the extensions it uses ({})", lacking.join(", "))
                    }
                });
                Error::FailedPrecondition(format!(
                    "{} database {} was created since the test; test host {} holds {why}; delete the test and test again",
                    engine_name(database.engine),
                    database.name,
                    test_host.id
                ))
            })?;
        databases.push(DatabasePlan {
            engine: database.engine,
            name: database.name.clone(),
            owner: database.owner.clone(),
            source_server: source.name.clone(),
            target_server: target.name.clone(),
            target_address: target.address.clone(),
            target_port: target.port,
            target_version: target.version.clone(),
        });
    }
    Ok(CopyPlan {
        databases,
        sites: account.sites.clone(),
        ..previous.clone()
    })
}

/// 1.5 GiB, 12.0 MiB...
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{SoftwareVersions, parse};
    use std::path::Path;

    fn migration() -> Migration {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue/postgresql-15-to-18.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        parse(&text, &path).unwrap_or_else(|_| Migration {
            id: "postgresql-15-to-18".into(),
            title: String::new(),
            summary: String::new(),
            source: SoftwareVersions {
                software: Software::Postgresql,
                versions: vec!["15".into()],
            },
            target: SoftwareVersions {
                software: Software::Postgresql,
                versions: vec!["18".into()],
            },
            target_host_kinds: vec![HostKind::Test],
            documentation: String::new(),
            incompatibilities: vec![],
        })
    }

    fn server(name: &str, engine: Engine, version: &str, reachable: bool) -> DatabaseServer {
        DatabaseServer {
            name: name.into(),
            engine,
            version: version.into(),
            address: "192.0.2.12".into(),
            port: if engine == Engine::Postgresql {
                5432
            } else {
                3306
            },
            reachable,
            error: if reachable {
                String::new()
            } else {
                "connection refused".into()
            },
            available_extensions: Vec::new(),
            data_directory_free_bytes: None,
            available_engines: Vec::new(),
            replication_ready: true,
            replication_reason: String::new(),
        }
    }

    fn host(id: &str, kind: HostKind, servers: Vec<DatabaseServer>, free: u64) -> Host {
        Host {
            id: id.into(),
            kind: Some(kind),
            reported_kind: Some(kind),
            declared_disk_bytes: None,
            certificate_serial: None,
            removed: None,
            state: HostState::Online,
            draining: false,
            pool: None,
            stack_version: "2024.1".into(),
            agent_version: String::new(),
            agent_endpoint: format!("{id}:7445"),
            addresses: vec!["192.0.2.12".into()],
            disk_total_bytes: free * 2,
            disk_free_bytes: free,
            database_servers: servers,
            account_count: 0,
            enrolled_at: None,
            last_heartbeat_at: None,
            inventory_updated_at: None,
            certificate_expires_at: None,
            source_protocols: vec![1, 2],
            target_protocols: vec![1, 2],
            serves_sites: false,
        }
    }

    fn alice() -> Account {
        Account {
            name: "alice".into(),
            host_id: "shared-old".into(),
            home: "/home/alice".into(),
            uid: 1000,
            home_size_bytes: 100 << 20,
            home_files: 10,
            copy_of_test: None,
            sites: Vec::new(),
            databases: vec![
                Database {
                    engine: Engine::Postgresql,
                    server: "main".into(),
                    name: "alice".into(),
                    size_bytes: 10 << 20,
                    owner: "alice".into(),
                    extensions: vec!["plpgsql".into()],
                    md5_password_roles: Vec::new(),
                    unlogged_partitioned_tables: Vec::new(),
                    tables_not_innodb: Vec::new(),
                    inspected: true,
                },
                Database {
                    engine: Engine::Mariadb,
                    server: "main".into(),
                    name: "alice_blog".into(),
                    size_bytes: 1 << 20,
                    owner: "alice".into(),
                    extensions: Vec::new(),
                    md5_password_roles: Vec::new(),
                    unlogged_partitioned_tables: Vec::new(),
                    tables_not_innodb: Vec::new(),
                    inspected: true,
                },
            ],
            updated_at: chrono::Utc::now(),
        }
    }

    fn source() -> Host {
        host(
            "shared-old",
            HostKind::Shared,
            vec![
                server("main", Engine::Postgresql, "15.18", true),
                server("main", Engine::Mariadb, "10.11.6", true),
            ],
            1 << 40,
        )
    }

    fn test_host(free: u64) -> Host {
        host(
            "test-1",
            HostKind::Test,
            vec![
                server("main", Engine::Postgresql, "18.6", true),
                server("main", Engine::Mariadb, "10.11.6", true),
            ],
            free,
        )
    }

    #[test]
    fn a_copy_goes_only_where_its_extensions_can_be_created() -> Result<(), Error> {
        let mut account = alice();
        account.databases[0].extensions = vec!["pgcrypto".into(), "plpgsql".into()];
        let with = |available: &[&str]| {
            let mut host = test_host(20 << 30);
            host.database_servers[0].available_extensions =
                available.iter().map(|e| (*e).to_owned()).collect();
            host
        };
        // The PostgreSQL 18 server cannot create pgcrypto: refused up
        // front, naming the extension and the database.
        let text = plan_test(
            &migration(),
            &account,
            &source(),
            &[with(&["plpgsql"])],
            &[],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            text.contains("test-1 has no PostgreSQL server with the extensions database alice uses: pgcrypto cannot be created there"),
            "{text}"
        );
        // Where it can, the copy goes.
        let (chosen, _) = plan_test(
            &migration(),
            &account,
            &source(),
            &[with(&["pgcrypto", "plpgsql"])],
            &[],
        )?;
        assert_eq!(chosen.id, "test-1");
        // A server that reports no extensions (an older agent) is not
        // refused on this ground: the copy's preflight checks again.
        plan_test(&migration(), &account, &source(), &[with(&[])], &[])?;
        Ok(())
    }

    #[test]
    fn the_copy_goes_to_the_test_host_with_the_target_and_room() -> Result<(), Error> {
        let (chosen, plan) = plan_test(
            &migration(),
            &alice(),
            &source(),
            &[source(), test_host(10 << 30)],
            &[],
        )?;
        assert_eq!(chosen.id, "test-1");
        assert_eq!(plan.databases.len(), 2);
        assert!(plan.databases.iter().all(|d| d.target_server == "main"));
        assert_eq!(plan.databases[0].target_version, "18.6");
        Ok(())
    }

    #[test]
    fn a_full_test_host_is_refused_before_copying() {
        let error = plan_test(
            &migration(),
            &alice(),
            &source(),
            &[test_host(50 << 20)],
            &[],
        )
        .err();
        assert!(
            matches!(&error, Some(Error::NoRoom(m)) if m.contains("needs") && m.contains("test-1 has 50.0 MiB free")),
            "{error:?}"
        );
    }

    #[test]
    fn a_host_without_the_target_version_is_not_a_candidate() {
        let old = host(
            "test-old",
            HostKind::Test,
            vec![server("main", Engine::Postgresql, "15.18", true)],
            1 << 40,
        );
        let error = plan_test(&migration(), &alice(), &source(), &[old], &[]).err();
        assert!(
            matches!(&error, Some(Error::FailedPrecondition(m)) if m.contains("test-old runs no PostgreSQL 18")),
            "{error:?}"
        );
    }

    #[test]
    fn a_source_database_that_is_down_is_named() {
        let mut down = source();
        down.database_servers[1] = server("main", Engine::Mariadb, "10.11.6", false);
        let error = plan_test(&migration(), &alice(), &down, &[test_host(10 << 30)], &[]).err();
        assert!(
            matches!(&error, Some(Error::FailedPrecondition(m)) if m.contains("MariaDB server \"main\"") && m.contains("is down")),
            "{error:?}"
        );
    }

    #[test]
    fn the_operators_kind_decides_not_the_agents_report() -> Result<(), Error> {
        // Enrolled as a shared host; its agent claims to be a test host.
        let mut liar = test_host(1 << 50);
        liar.id = "liar".into();
        liar.kind = Some(HostKind::Shared);
        liar.reported_kind = Some(HostKind::Test);
        let error = plan_test(&migration(), &alice(), &source(), &[liar.clone()], &[]).err();
        assert!(
            matches!(&error, Some(Error::FailedPrecondition(m)) if m.contains("there are no test hosts")),
            "{error:?}"
        );
        assert!(
            liar.warnings()
                .iter()
                .any(|w| w.contains("reports kind test"))
        );
        let (chosen, _) = plan_test(
            &migration(),
            &alice(),
            &source(),
            &[liar, test_host(10 << 30)],
            &[],
        )?;
        assert_eq!(chosen.id, "test-1");
        Ok(())
    }

    #[test]
    fn reported_free_space_counts_at_most_the_disk() -> Result<(), Error> {
        // A petabyte free on a 100 GiB disk declared 20 GiB: 20 GiB counts.
        let mut boaster = test_host(1 << 50);
        boaster.id = "boaster".into();
        boaster.disk_total_bytes = 100 << 30;
        boaster.declared_disk_bytes = Some(20 << 30);
        assert_eq!(usable_free_bytes(&boaster), 20 << 30);
        assert_eq!(boaster.warnings().len(), 2, "{:?}", boaster.warnings());
        let honest = test_host(30 << 30);
        let (chosen, _) = plan_test(
            &migration(),
            &alice(),
            &source(),
            &[boaster.clone(), honest],
            &[],
        )?;
        assert_eq!(chosen.id, "test-1");
        // Free space above the reported disk counts as the disk.
        boaster.declared_disk_bytes = None;
        boaster.disk_total_bytes = 1 << 30;
        assert_eq!(usable_free_bytes(&boaster), 1 << 30);
        Ok(())
    }

    /// Bob's account, on another old host, with the same database and
    /// role names as alice's.
    fn bob_like_alice() -> Account {
        let mut bob = alice();
        bob.name = "bob".into();
        bob.host_id = "shared-other".into();
        bob
    }

    #[test]
    fn another_accounts_names_keep_a_copy_off_a_host() -> Result<(), Error> {
        // Alice's copy is on test-1 (test-1's PostgreSQL 18 server "main").
        let mut alice_copy = alice();
        alice_copy.host_id = "test-1".into();
        alice_copy.copy_of_test = Some("t-alice".into());
        let held = vec![alice(), alice_copy];
        let mut test_2 = test_host(10 << 30);
        test_2.id = "test-2".into();
        // Bob's copy goes elsewhere, although test-1 has more room.
        let (chosen, _) = plan_test(
            &migration(),
            &bob_like_alice(),
            &source(),
            &[source(), test_host(20 << 30), test_2],
            &held,
        )?;
        assert_eq!(chosen.id, "test-2");
        // With test-1 alone, bob is refused before anything is copied, with
        // the name, and without naming alice.
        let error = plan_test(
            &migration(),
            &bob_like_alice(),
            &source(),
            &[source(), test_host(20 << 30)],
            &held,
        )
        .err();
        let text = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains(
                "test-1 already holds a PostgreSQL database named alice for another account"
            ),
            "{text}"
        );
        // A shared role alone is a collision too.
        let mut carol = bob_like_alice();
        carol.name = "carol".into();
        for database in &mut carol.databases {
            database.name = format!("carol_{}", database.name);
        }
        let text = plan_test(
            &migration(),
            &carol,
            &source(),
            &[source(), test_host(20 << 30)],
            &held,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            text.contains("role alice owning another account's database"),
            "{text}"
        );
        // Alice's own copy is no collision for alice.
        let (chosen, _) = plan_test(
            &migration(),
            &alice(),
            &source(),
            &[source(), test_host(20 << 30)],
            &held,
        )?;
        assert_eq!(chosen.id, "test-1");
        Ok(())
    }

    #[test]
    fn a_second_server_of_the_same_version_takes_the_colliding_names() -> Result<(), Error> {
        // test-1 runs two PostgreSQL 18 and two MariaDB servers; alice's
        // copy is on the "main" ones.
        let mut two_servers = test_host(20 << 30);
        two_servers
            .database_servers
            .insert(1, server("pg5433", Engine::Postgresql, "18.6", true));
        two_servers
            .database_servers
            .push(server("mariadb3307", Engine::Mariadb, "10.11.6", true));
        let mut alice_copy = alice();
        alice_copy.host_id = "test-1".into();
        alice_copy.copy_of_test = Some("t-alice".into());
        let held = vec![alice(), alice_copy.clone()];
        let (chosen, plan) = plan_test(
            &migration(),
            &bob_like_alice(),
            &source(),
            &[source(), two_servers.clone()],
            &held,
        )?;
        assert_eq!(chosen.id, "test-1");
        let servers: Vec<&str> = plan
            .databases
            .iter()
            .map(|d| d.target_server.as_str())
            .collect();
        assert_eq!(servers, ["pg5433", "mariadb3307"]);
        // Alice alone still goes to the first server.
        let (_, plan) = plan_test(
            &migration(),
            &alice(),
            &source(),
            &[source(), two_servers.clone()],
            &[alice()],
        )?;
        assert!(plan.databases.iter().all(|d| d.target_server == "main"));
        // With both servers taken (bob's copy planned on pg5433), carol
        // with the same names is refused, saying every server is taken.
        let mut bob_copy = bob_like_alice();
        bob_copy.host_id = "test-1".into();
        bob_copy.copy_of_test = Some("t-bob".into());
        for (database, server) in bob_copy.databases.iter_mut().zip(servers) {
            database.server = server.into();
        }
        let mut carol = bob_like_alice();
        carol.name = "carol".into();
        let text = plan_test(
            &migration(),
            &carol,
            &source(),
            &[source(), two_servers],
            &[alice(), alice_copy, bob_copy],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            text.contains(
                "test-1 already holds a PostgreSQL database named alice for another account on every PostgreSQL server that could receive it"
            ),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn a_copy_goes_only_where_a_protocol_version_is_shared() -> Result<(), Error> {
        let mut old_source = source();
        old_source.source_protocols = vec![1];
        let mut newer = test_host(20 << 30);
        newer.target_protocols = vec![2];
        let mut today = test_host(10 << 30);
        today.id = "test-2".into();
        // test-1 has more room, but speaks nothing the source speaks.
        let (chosen, plan) = plan_test(
            &migration(),
            &alice(),
            &old_source,
            &[newer.clone(), today],
            &[],
        )?;
        assert_eq!((chosen.id.as_str(), plan.protocol_version), ("test-2", 1));
        // Alone, it is refused up front, naming both hosts' versions.
        let text = plan_test(&migration(), &alice(), &old_source, &[newer], &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            text.contains("test-1 shares no transfer protocol version with shared-old")
                && text.contains("protocol versions 1 as a source")
                && text.contains("protocol versions 2 as a target"),
            "{text}"
        );
        // Two hosts of today's build: the newest version.
        let (_, plan) = plan_test(
            &migration(),
            &alice(),
            &source(),
            &[test_host(20 << 30)],
            &[],
        )?;
        assert_eq!(plan.protocol_version, 2);
        Ok(())
    }

    #[test]
    fn a_data_directory_without_room_refuses_its_host_naming_server_need_and_free()
    -> Result<(), Error> {
        // The homes' filesystem has room; the PostgreSQL 18 server's data
        // directory, on a filesystem of its own, has 3 MiB.
        let mut account = alice();
        account.databases[0].size_bytes = 40 << 20;
        let mut small = test_host(20 << 30);
        small.database_servers[0].data_directory_free_bytes = Some(3 << 20);
        let error = plan_test(&migration(), &account, &source(), &[small.clone()], &[]).err();
        assert!(
            matches!(&error, Some(Error::NoRoom(m)) if m.contains(
                "test-1: PostgreSQL server main has 3.0 MiB free on its data directory; the databases it would receive need 114.0 MiB"
            )),
            "{error:?}"
        );
        // What the report shows for it.
        let rooms = server_room(&migration(), &account, &source(), &small, &[]);
        assert_eq!(
            rooms
                .iter()
                .map(|r| (r.server.as_str(), r.needed_bytes, r.free_bytes, r.short()))
                .collect::<Vec<_>>(),
            [
                ("main", (40 << 20) * 5 / 4 + (64 << 20), Some(3 << 20), true),
                ("main", (1 << 20) * 5 / 4 + (64 << 20), None, false),
            ]
        );
        // With room there (or unmeasured, from an older agent), it goes.
        small.database_servers[0].data_directory_free_bytes = Some(1 << 30);
        let (chosen, _) = plan_test(&migration(), &account, &source(), &[small], &[])?;
        assert_eq!(chosen.id, "test-1");
        Ok(())
    }

    #[test]
    fn versions_compare_by_components() {
        assert!(at_least("18.6", "15"));
        assert!(at_least("10.11.6", "10.11"));
        assert!(!at_least("10.6.1", "10.11"));
        assert!(!at_least("15.2", "18"));
    }

    #[test]
    fn a_refresh_plans_the_databases_the_account_has_now() -> Result<(), Error> {
        // Bob's copy holds "shop" on test-1's server "main"; a second
        // PostgreSQL 18 server "second" is free.
        let mut test_1 = test_host(20 << 30);
        test_1
            .database_servers
            .push(server("second", Engine::Postgresql, "18.6", true));
        let (_, before) = plan_test(&migration(), &alice(), &source(), &[test_1.clone()], &[])?;
        let mut carol = alice();
        carol.name = "carol".into();
        carol.host_id = "test-1".into();
        carol.databases[0].name = "shop".into();
        carol.databases[0].owner = "carol".into();
        // Since the test, alice dropped her MariaDB database and created
        // "shop" (whose name carol holds on "main") and "notes".
        let mut now = alice();
        now.databases.truncate(1);
        for name in ["shop", "notes"] {
            let mut created = now.databases[0].clone();
            created.name = name.into();
            now.databases.push(created);
        }
        let after = replan_test(&migration(), &now, &source(), &test_1, &[carol], &before)?;
        let placed: Vec<(&str, &str)> = after
            .databases
            .iter()
            .map(|d| (d.name.as_str(), d.target_server.as_str()))
            .collect();
        assert_eq!(
            placed,
            [("alice", "main"), ("shop", "second"), ("notes", "main")],
            "the copied one stays, new ones placed as at creation, the dropped one gone"
        );
        assert_eq!(
            (after.protocol_version, &after.source_home),
            (before.protocol_version, &before.source_home)
        );
        // A new database the test host cannot create: refused, naming it.
        let mut needs_postgis = now.clone();
        needs_postgis.databases[2].extensions = vec!["postgis".into()];
        let mut plain = test_1.clone();
        for server in &mut plain.database_servers {
            server.available_extensions = vec!["plpgsql".into()];
        }
        let text = replan_test(
            &migration(),
            &needs_postgis,
            &source(),
            &plain,
            &[],
            &before,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            text.contains("database notes was created since the test") && text.contains("postgis"),
            "{text}"
        );
        Ok(())
    }
}
