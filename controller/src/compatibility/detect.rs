//! One function per detector of the catalogue ([`Detector`]): from the
//! account's databases that the migration moves, and the target servers,
//! to whether the incompatibility applies and why, naming each database,
//! role, table and extension concerned. Pure.

use std::collections::BTreeSet;

use super::{Applies, Targets};
use crate::catalogue::{Detector, Incompatibility, Migration};
use crate::model::{Account, Database, Engine, Host};

/// Whether `incompatibility` applies to `account`, and why.
pub(super) fn run(
    incompatibility: &Incompatibility,
    migration: &Migration,
    account: &Account,
    source: &Host,
    targets: &Targets<'_>,
) -> (Applies, String) {
    let moved: Vec<&Database> = account
        .databases
        .iter()
        .filter(|d| migration.moves_database(d, source))
        .collect();
    let engine = migration.engine();
    if let (Some(engine), true) = (engine, moved.is_empty())
        && !matches!(incompatibility.detect, Detector::Manual { .. })
    {
        return (
            Applies::No,
            format!(
                "this account has no {} database on a server this migration upgrades",
                super::engine_name(engine)
            ),
        );
    }
    match &incompatibility.detect {
        Detector::Manual { check } => (Applies::NotChecked, format!("check by hand {check}")),
        Detector::EveryDatabase => (
            Applies::Yes,
            format!(
                "it concerns every database moved to {}: {}",
                targets.target,
                names(&moved)
            ),
        ),
        Detector::Extensions => extensions(&moved, targets),
        Detector::Md5Passwords => md5_passwords(&moved),
        Detector::UnloggedPartitionedTables => unlogged_partitioned_tables(&moved),
        Detector::MariadbEngines => mariadb_engines(&moved, targets),
    }
}

fn names(databases: &[&Database]) -> String {
    databases
        .iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The databases whose details the agent did not read, as a reason the
/// check is incomplete; `None` when it read them all.
fn not_inspected(databases: &[&Database]) -> Option<String> {
    let unread: Vec<&Database> = databases.iter().copied().filter(|d| !d.inspected).collect();
    (!unread.is_empty()).then(|| {
        format!(
            "the agent of the account's host did not read database {} (an agent older than this check, or a database that refuses its connections)",
            names(&unread)
        )
    })
}

/// What no target server offers, among `wanted`, compared case-blind when
/// `fold` (MariaDB engine names), exactly otherwise.
fn offered_anywhere(offered: &[&Vec<String>], wanted: &str, fold: bool) -> bool {
    offered.iter().any(|list| {
        list.iter().any(|o| {
            if fold {
                o.eq_ignore_ascii_case(wanted)
            } else {
                o == wanted
            }
        })
    })
}

/// Why the target servers cannot be compared with, if so.
fn no_target(targets: &Targets<'_>, offered: &[&Vec<String>], what: &str) -> Option<String> {
    if targets.servers.is_empty() {
        return Some(format!(
            "no test host runs a reachable {} server now, so what it offers is unknown",
            targets.target
        ));
    }
    offered.is_empty().then(|| {
        format!(
            "no {} test server reports the {what} it offers (agents older than this check)",
            targets.target
        )
    })
}

fn extensions(moved: &[&Database], targets: &Targets<'_>) -> (Applies, String) {
    let offered: Vec<&Vec<String>> = targets
        .servers
        .iter()
        .map(|s| &s.available_extensions)
        .filter(|list| !list.is_empty())
        .collect();
    if let Some(why) = no_target(targets, &offered, "extensions") {
        return (Applies::NotChecked, why);
    }
    let mut lacking = Vec::new();
    let mut used = BTreeSet::new();
    for database in moved {
        used.extend(database.extensions.iter().map(String::as_str));
        let nowhere: Vec<&str> = database
            .extensions
            .iter()
            .map(String::as_str)
            .filter(|e| !offered_anywhere(&offered, e, false))
            .collect();
        for extension in &nowhere {
            lacking.push(format!(
                "database {} uses {extension}, which no {} test host offers",
                database.name, targets.target
            ));
        }
        // A copy needs them all on one server, as placement does.
        let together = offered
            .iter()
            .any(|list| database.extensions.iter().all(|e| list.contains(e)));
        if nowhere.is_empty() && !together {
            lacking.push(format!(
                "database {} uses {}, which no single {} test server offers together",
                database.name,
                database.extensions.join(", "),
                targets.target
            ));
        }
    }
    if !lacking.is_empty() {
        return (Applies::Yes, lacking.join("; "));
    }
    if let Some(why) = not_inspected(moved) {
        return (Applies::NotChecked, why);
    }
    (
        Applies::No,
        if used.is_empty() {
            format!("its databases ({}) use no extension", names(moved))
        } else {
            format!(
                "every extension its databases use ({}) is offered by the {} test hosts",
                used.into_iter().collect::<Vec<_>>().join(", "),
                targets.target
            )
        },
    )
}

fn md5_passwords(moved: &[&Database]) -> (Applies, String) {
    let mut roles: Vec<(String, Vec<&str>)> = Vec::new();
    for database in moved {
        for role in &database.md5_password_roles {
            match roles.iter_mut().find(|(r, _)| r == role) {
                Some((_, of)) => of.push(&database.name),
                None => roles.push((role.clone(), vec![&database.name])),
            }
        }
    }
    if !roles.is_empty() {
        let roles: Vec<String> = roles
            .into_iter()
            .map(|(role, of)| {
                format!(
                    "role {role} (of database {}) still has an MD5 password",
                    of.join(", ")
                )
            })
            .collect();
        return (Applies::Yes, roles.join("; "));
    }
    if let Some(why) = not_inspected(moved) {
        return (Applies::NotChecked, why);
    }
    (
        Applies::No,
        format!(
            "no role of its databases ({}: their owners and the owners' members) has an MD5 password",
            names(moved)
        ),
    )
}

fn unlogged_partitioned_tables(moved: &[&Database]) -> (Applies, String) {
    let tables: Vec<String> = moved
        .iter()
        .flat_map(|d| {
            d.unlogged_partitioned_tables.iter().map(move |t| {
                format!(
                    "table {t} of database {} is an unlogged partitioned table",
                    d.name
                )
            })
        })
        .collect();
    if !tables.is_empty() {
        return (Applies::Yes, tables.join("; "));
    }
    if let Some(why) = not_inspected(moved) {
        return (Applies::NotChecked, why);
    }
    (
        Applies::No,
        format!(
            "its databases ({}) have no unlogged partitioned table",
            names(moved)
        ),
    )
}

fn mariadb_engines(moved: &[&Database], targets: &Targets<'_>) -> (Applies, String) {
    let offered: Vec<&Vec<String>> = targets
        .servers
        .iter()
        .filter(|s| s.engine == Engine::Mariadb)
        .map(|s| &s.available_engines)
        .filter(|list| !list.is_empty())
        .collect();
    if let Some(why) = no_target(targets, &offered, "storage engines") {
        return (Applies::NotChecked, why);
    }
    let mut lacking = Vec::new();
    let mut used = BTreeSet::new();
    for database in moved {
        for table in &database.tables_not_innodb {
            used.insert(table.engine.as_str());
            if !offered_anywhere(&offered, &table.engine, true) {
                lacking.push(format!(
                    "table {}.{} uses engine {}, which no {} test host offers",
                    database.name, table.table, table.engine, targets.target
                ));
            }
        }
    }
    if !lacking.is_empty() {
        return (Applies::Yes, lacking.join("; "));
    }
    if let Some(why) = not_inspected(moved) {
        return (Applies::NotChecked, why);
    }
    (
        Applies::No,
        if used.is_empty() {
            format!(
                "every table of its databases ({}) uses InnoDB",
                names(moved)
            )
        } else {
            format!(
                "every engine its tables use (InnoDB, {}) is offered by the {} test hosts",
                used.into_iter().collect::<Vec<_>>().join(", "),
                targets.target
            )
        },
    )
}
