//! Checking a copy on the target: every table's row count and checksum
//! against those the source sent, every view, routine, trigger and event by
//! name.

use std::collections::BTreeSet;

use navette_proto::v1::{MariadbDatabaseDescription, MariadbTableChecksum};

use super::{MariadbCopyError, TableCheck};
use crate::config::MariadbServer;
use crate::transfer::mariadb::catalogue::{self, TableColumns};
use crate::transfer::mariadb::client;
use crate::transfer::mariadb::rows::checksum_sql;

/// Computes every table's checksum on the target with the encodings the
/// source used, and compares.
pub(super) async fn verify_tables(
    server: &MariadbServer,
    database: &str,
    expected: &[MariadbTableChecksum],
) -> Result<Vec<TableCheck>, MariadbCopyError> {
    // Every table of the copy must have come with its checksum.
    let unchecked: Vec<String> = catalogue::base_tables(server, database)
        .await
        .map_err(MariadbCopyError::check(server, database))?
        .into_iter()
        .map(|table| table.name)
        .filter(|name| !expected.iter().any(|checksum| checksum.table == *name))
        .collect();
    if !unchecked.is_empty() {
        return Err(MariadbCopyError::Incomplete {
            database: database.to_owned(),
            tables: unchecked,
        });
    }
    if expected.is_empty() {
        return Ok(Vec::new());
    }
    let tables: Vec<TableColumns> = expected
        .iter()
        .map(|checksum| TableColumns {
            name: checksum.table.clone(),
            columns: checksum.columns.clone(),
        })
        .collect();
    let mut sql = String::new();
    for table in &tables {
        sql.push_str(&checksum_sql(database, &table.name, &table.columns));
        sql.push_str(";\n");
    }
    let rows = client::query(server, &sql, None)
        .await
        .map_err(MariadbCopyError::target(server))?;
    let actual = catalogue::compare_shape(server, &tables, &rows)
        .map_err(MariadbCopyError::check(server, database))?;
    let mut differences = Vec::new();
    for (want, have) in expected.iter().zip(&actual) {
        if want.rows != have.rows || want.checksum != have.checksum {
            differences.push(format!(
                "{}: source {} rows (checksum {}), target {} rows (checksum {})",
                want.table, want.rows, want.checksum, have.rows, have.checksum
            ));
        }
    }
    if !differences.is_empty() {
        return Err(MariadbCopyError::Mismatch {
            database: database.to_owned(),
            tables: differences,
        });
    }
    Ok(actual
        .into_iter()
        .map(|checksum| TableCheck {
            table: checksum.table,
            rows: checksum.rows,
            checksum: checksum.checksum,
        })
        .collect())
}

/// Checks that every view, routine, trigger and event of the source exists
/// on the target; the target's list.
pub(super) async fn verify_objects(
    server: &MariadbServer,
    database: &str,
    description: &MariadbDatabaseDescription,
) -> Result<Vec<String>, MariadbCopyError> {
    let present: BTreeSet<String> = catalogue::object_names(server, database)
        .await
        .map_err(MariadbCopyError::check(server, database))?
        .into_iter()
        .collect();
    let wanted = description
        .views
        .iter()
        .map(|name| format!("view {name}"))
        .chain(description.routines.iter().map(|r| format!("routine {r}")))
        .chain(description.triggers.iter().map(|t| format!("trigger {t}")))
        .chain(description.events.iter().map(|e| format!("event {e}")));
    let missing: Vec<String> = wanted.filter(|name| !present.contains(name)).collect();
    if !missing.is_empty() {
        return Err(MariadbCopyError::MissingObjects {
            database: database.to_owned(),
            objects: missing,
        });
    }
    Ok(present.into_iter().collect())
}
