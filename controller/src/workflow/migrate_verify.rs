//! The verification inside a migration's freeze of what changed since the
//! last verification, not of the whole account: the paths the freeze's
//! last catch-up pass changed (with the directories they are in, and
//! those gone) are fingerprinted on the source and compared on the target
//! with its copy ([`agents::verify::verify_files`]); each PostgreSQL
//! database's rows changed since the last converge round, with those that
//! differed then, likewise ([`agents::verify::verify_rows`], after the
//! target drained to the fenced position, so any difference is one), and
//! each MariaDB server's from its binary log since the last round
//! ([`agents::verify::verify_mariadb_rows`]); all at once. A difference
//! means the copy is not what the source holds; the freeze then undoes
//! itself and the migration rolls back (another try would copy the same
//! way), the reason naming the paths and rows. The converge rounds of the
//! rows' verification run in the `measure` step ([`super::migrate_steps`]).

use std::time::{Duration, Instant};

use super::migrate_run::MigrationRun;
use super::migrate_steps::{mariadb_groups, postgres, rows_database};
use crate::agents::{self, CallFailure};
use crate::model::Host;
use crate::state::Controller;

/// The most mismatched paths (or rows) a reason names.
const NAMED: usize = 5;

/// What the verification found.
#[derive(Debug, Default)]
pub struct Verified {
    /// `None` all equal; else what differs, naming the paths and rows.
    pub mismatch: Option<String>,
    /// Tables whose changed rows could not be checked, with why
    /// (`database: schema.table: why` for PostgreSQL, `database.table:
    /// why` for MariaDB).
    pub unverified: Vec<String>,
}

/// What the verification found (`Err`: a call that failed, a missed
/// freeze as any other part's). Every call ends by `deadline`.
pub async fn verify_changes(
    controller: &Controller,
    source: &Host,
    target: &Host,
    run: &MigrationRun,
    changed_paths: &[Vec<u8>],
    deadline: Instant,
) -> Result<Verified, CallFailure> {
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let late = |what: &str| {
        CallFailure::Retry(format!(
            "verifying the {what} did not answer before the freeze's deadline"
        ))
    };
    let files = async {
        if changed_paths.is_empty() {
            return Ok(Vec::new());
        }
        let files = tokio::time::timeout_at(
            deadline.into(),
            agents::verify::verify_files(
                controller,
                source,
                target,
                &run.id,
                &run.account,
                changed_paths,
                left(),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(late("files")))?;
        tracing::info!(
            message = "files verified",
            migration = %run.id,
            paths = files.paths,
            mismatches = files.mismatches.len()
        );
        Ok::<_, CallFailure>(files.mismatches)
    };
    let rows = futures_util::future::try_join_all(postgres(run).map(|database| async move {
        let mark = run.rows_mark(&database.name);
        let rows = tokio::time::timeout_at(
            deadline.into(),
            agents::verify::verify_rows(
                controller,
                source,
                target,
                &rows_database(run, database),
                &mark,
                0,
                left(),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(late("rows")))?;
        tracing::info!(
            message = "rows verified",
            migration = %run.id,
            database = %database.name,
            changes = rows.changes,
            rows = rows.rows,
            mismatches = rows.mismatches.len()
        );
        for table in &rows.unverified {
            tracing::warn!(message = "rows not verified", migration = %run.id, database = %database.name, table = %table);
        }
        let named = |words: &String| format!("{}: {words}", database.name);
        Ok::<_, CallFailure>((
            rows.mismatches.iter().map(named).collect::<Vec<_>>(),
            rows.unverified.iter().map(named).collect::<Vec<_>>(),
        ))
    }));
    let groups = mariadb_groups(run).map_err(CallFailure::Refused)?;
    let mariadb = futures_util::future::try_join_all(groups.iter().map(
        |(source_server, target_server, databases)| async move {
            let mark = run.mariadb_rows_mark(source_server, databases);
            let rows = tokio::time::timeout_at(
                deadline.into(),
                agents::verify::verify_mariadb_rows(
                    controller,
                    source,
                    target,
                    &agents::verify::MariadbRowsDatabases {
                        migration_id: &run.id,
                        source_server,
                        target_server,
                        databases,
                    },
                    &mark,
                    left(),
                ),
            )
            .await
            .unwrap_or_else(|_| Err(late("MariaDB rows")))?;
            tracing::info!(
                message = "MariaDB rows verified",
                migration = %run.id,
                server = %source_server,
                rows = rows.rows,
                mismatches = rows.mismatches.len()
            );
            for table in &rows.unverified {
                tracing::warn!(message = "rows not verified", migration = %run.id, server = %source_server, table = %table);
            }
            Ok::<_, CallFailure>((rows.mismatches, rows.unverified))
        },
    ));
    let (files, rows, mariadb) = tokio::try_join!(files, rows, mariadb)?;
    let (mut differ, mut unverified) = (Vec::new(), Vec::new());
    for (mismatches, tables) in rows.into_iter().chain(mariadb) {
        differ.extend(mismatches);
        unverified.extend(tables);
    }
    let mut why = Vec::new();
    if !files.is_empty() {
        why.push(reason("files differ", &files));
    }
    if !differ.is_empty() {
        why.push(reason("rows differ", &differ));
    }
    Ok(Verified {
        mismatch: (!why.is_empty()).then(|| why.join("; ")),
        unverified,
    })
}

/// The failure's reason: the first few paths (or rows) and what differs.
fn reason(what: &str, mismatches: &[String]) -> String {
    let named = mismatches[..mismatches.len().min(NAMED)].join("; ");
    let more = mismatches.len().saturating_sub(NAMED);
    if more > 0 {
        format!("{what}: {named}; and {more} more")
    } else {
        format!("{what}: {named}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_first_paths_and_counts_the_rest() {
        let one = reason("files differ", &["www/index.php (contents)".to_owned()]);
        assert_eq!(one, "files differ: www/index.php (contents)");
        let many: Vec<String> = (0..7).map(|i| format!("f{i} (mode)")).collect();
        let why = reason("files differ", &many);
        assert!(why.contains("f4 (mode)") && !why.contains("f5"), "{why}");
        assert!(why.ends_with("and 2 more"), "{why}");
    }
}
