//! The compatibility report (R2): what a migration changes for one
//! account, matched to what the account really holds. Pure functions from
//! the migration, the account, its host, the candidate hosts and what they
//! hold to a [`Report`]; no I/O and no protobuf (`api` converts the report),
//! so every finding is unit-tested.
//!
//! Invariant: the report has one [`Finding`] per incompatibility of the
//! migration, in the catalogue's order, each saying whether it applies to
//! the account ([`Applies`]) and why, item by item (which database uses
//! which extension, which role has an MD5 password...). Where the agents'
//! reports cannot tell, the finding says *not checked* and what to check by
//! hand; it never says *does not apply* without having looked.
//!
//! Invariant: a finding is [`Severity::Blocking`] only when it applies and
//! its incompatibility is `blocking` in the catalogue (the test or the
//! migration cannot succeed); any blocking finding or placement refusal
//! makes the report not `compatible`, and `TestMigration` refuses a test
//! with a blocking finding ([`blocking_findings`]) before anything is
//! copied.

mod detect;

use crate::catalogue::{Incompatibility, Migration};
use crate::model::{Account, Engine, Host};
use crate::placement;

/// How much a report line matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    /// The test or the migration cannot succeed until it is settled.
    Blocking,
}

/// Whether an incompatibility concerns the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    Yes,
    No,
    /// The agents' reports cannot tell (a manual check, or an agent that
    /// did not read it).
    NotChecked,
}

/// What one incompatibility means for the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub incompatibility_id: String,
    pub applies: Applies,
    pub severity: Severity,
    /// "{title}: applies: database shop uses pgcrypto, which ...", or
    /// "...: does not apply to this account: ...", or "...: not checked: ...".
    pub message: String,
}

/// A report line that is not an incompatibility: the placement, the disk,
/// each database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub severity: Severity,
    /// "placement", "disk", "database".
    pub topic: &'static str,
    pub message: String,
}

/// The compatibility report of one account for one migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub account: String,
    pub migration_id: String,
    /// No blocking finding, and a test host can take the copy.
    pub compatible: bool,
    pub home_size_bytes: u64,
    pub database_size_bytes: u64,
    pub disk_needed_bytes: u64,
    /// The test host placement would pick, and its usable free space.
    pub test_host: Option<(String, u64)>,
    pub notes: Vec<Note>,
    /// One per incompatibility of the migration, in the catalogue's order.
    pub findings: Vec<Finding>,
}

/// What detectors read besides the account: the servers a copy could land
/// on, and the migration's target.
pub(crate) struct Targets<'a> {
    /// "PostgreSQL 18", "MariaDB 11.8".
    pub target: String,
    /// Reachable servers of the target engine and version on online test
    /// hosts.
    pub servers: Vec<&'a crate::model::DatabaseServer>,
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgresql => "PostgreSQL",
        Engine::Mariadb => "MariaDB",
    }
}

/// The servers of test hosts (online, not draining) that run the target
/// engine and version, reachable.
fn targets<'a>(migration: &Migration, hosts: &'a [Host]) -> Targets<'a> {
    let version = migration
        .target
        .versions
        .first()
        .map(String::as_str)
        .unwrap_or("");
    let Some(engine) = migration.engine() else {
        return Targets {
            target: format!("stack {version}"),
            servers: Vec::new(),
        };
    };
    Targets {
        target: format!("{} {version}", engine_name(engine)),
        servers: hosts
            .iter()
            .filter(|h| {
                h.kind == Some(crate::model::HostKind::Test)
                    && h.state == crate::model::HostState::Online
                    && !h.draining
            })
            .flat_map(|h| &h.database_servers)
            .filter(|s| {
                s.engine == engine
                    && s.reachable
                    && crate::catalogue::version_matches(version, &s.version)
            })
            .collect(),
    }
}

/// The finding of `incompatibility` for `account`.
fn finding(
    incompatibility: &Incompatibility,
    migration: &Migration,
    account: &Account,
    source: &Host,
    targets: &Targets<'_>,
) -> Finding {
    let (applies, text) = detect::run(incompatibility, migration, account, source, targets);
    let severity = match applies {
        Applies::Yes if incompatibility.blocking => Severity::Blocking,
        Applies::Yes | Applies::NotChecked if incompatibility.important => Severity::Warning,
        _ => Severity::Info,
    };
    let text = match applies {
        Applies::Yes if incompatibility.blocking => {
            format!("applies, and the test cannot succeed until it is settled: {text}")
        }
        Applies::Yes => format!("applies: {text}"),
        Applies::No => format!("does not apply to this account: {text}"),
        Applies::NotChecked => format!("not checked: {text}"),
    };
    Finding {
        incompatibility_id: incompatibility.id.clone(),
        applies,
        severity,
        message: format!("{}: {text}", incompatibility.title),
    }
}

/// Every incompatibility of `migration`, matched to `account` (on
/// `source`), against what the test hosts among `hosts` offer.
pub fn findings(
    migration: &Migration,
    account: &Account,
    source: &Host,
    hosts: &[Host],
) -> Vec<Finding> {
    let targets = targets(migration, hosts);
    migration
        .incompatibilities
        .iter()
        .map(|i| finding(i, migration, account, source, &targets))
        .collect()
}

/// The findings that keep a test of `migration` on `account` from
/// succeeding; `TestMigration` refuses while there is one.
pub fn blocking_findings(
    migration: &Migration,
    account: &Account,
    source: &Host,
    hosts: &[Host],
) -> Vec<Finding> {
    findings(migration, account, source, hosts)
        .into_iter()
        .filter(|f| f.severity == Severity::Blocking)
        .collect()
}

/// The report of `migration` for `account` (living on `source`), with the
/// test host placement would choose among `hosts` (`held`: what every host
/// holds, see [`placement::plan_test`]).
pub fn report(
    migration: &Migration,
    account: &Account,
    source: &Host,
    hosts: &[Host],
    held: &[Account],
) -> Report {
    let (home, databases) = placement::account_bytes(account);
    let needed = placement::disk_needed(account);
    let mut notes = Vec::new();
    let placed = placement::plan_test(migration, account, source, hosts, held);
    let test_host = match &placed {
        Ok((host, _)) => Some((host.id.clone(), placement::usable_free_bytes(host))),
        Err(error) => {
            notes.push(Note {
                severity: Severity::Blocking,
                topic: "placement",
                message: error.to_string(),
            });
            None
        }
    };
    notes.push(Note {
        severity: Severity::Info,
        topic: "disk",
        message: format!(
            "the copy needs {} on the target ({} of files, {} of databases, with a margin){}",
            placement::human_bytes(needed),
            placement::human_bytes(home),
            placement::human_bytes(databases),
            match &placed {
                Ok((host, _)) => format!(
                    "; {} has {} free for the home",
                    host.id,
                    placement::human_bytes(placement::usable_free_bytes(host))
                ),
                Err(_) => String::new(),
            }
        ),
    });
    if let Ok((host, _)) = &placed {
        for room in placement::server_room(migration, account, source, host, held) {
            notes.push(Note {
                severity: Severity::Info,
                topic: "disk",
                message: format!("on {}, {}", host.id, room.describe()),
            });
        }
    }
    for database in &account.databases {
        notes.push(Note {
            severity: Severity::Info,
            topic: "database",
            message: format!(
                "{} database {} ({}) is copied with the same name, owner and password{}",
                engine_name(database.engine),
                database.name,
                placement::human_bytes(database.size_bytes),
                if database.extensions.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; it uses extensions {}, each needed on the receiving server",
                        database.extensions.join(", ")
                    )
                }
            ),
        });
    }
    // What *Migrate* will refuse until an operator sets it once on the
    // account's host (a test does not need it).
    for blocker in placement::migrate::replication_blockers(account, source) {
        notes.push(Note {
            severity: Severity::Warning,
            topic: "replication",
            message: format!("Migrate is refused until then: {blocker}"),
        });
    }
    let findings = findings(migration, account, source, hosts);
    let compatible = placed.is_ok() && findings.iter().all(|f| f.severity != Severity::Blocking);
    Report {
        account: account.name.clone(),
        migration_id: migration.id.clone(),
        compatible,
        home_size_bytes: home,
        database_size_bytes: databases,
        disk_needed_bytes: needed,
        test_host,
        notes,
        findings,
    }
}

#[cfg(test)]
mod tests;
