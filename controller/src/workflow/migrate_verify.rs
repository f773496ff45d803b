//! The verification inside a migration's freeze of what changed since the
//! last verification, not of the whole account: the paths the freeze's
//! last catch-up pass changed (with the directories they are in, and
//! those gone) are fingerprinted on the source and compared on the target
//! with its copy ([`agents::verify`]). A difference means the copy is not
//! what the source holds; the freeze then undoes itself and the migration
//! rolls back (another try would copy the same way), the reason naming
//! the paths. PostgreSQL rows and MariaDB are not verified yet.

use std::time::{Duration, Instant};

use crate::agents::{self, CallFailure};
use crate::model::Host;
use crate::state::Controller;

/// The most mismatched paths a reason names.
const NAMED: usize = 5;

/// What the verification found: `Ok(None)` all equal, `Ok(Some(why))` a
/// mismatch (`why` names the paths), `Err` a call that failed (a missed
/// freeze, as any other part's). Every call ends by `deadline`.
pub async fn verify_changes(
    controller: &Controller,
    source: &Host,
    target: &Host,
    migration_id: &str,
    account: &str,
    changed_paths: &[Vec<u8>],
    deadline: Instant,
) -> Result<Option<String>, CallFailure> {
    if changed_paths.is_empty() {
        return Ok(None);
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let files = tokio::time::timeout_at(
        deadline.into(),
        agents::verify::verify_files(
            controller,
            source,
            target,
            migration_id,
            account,
            changed_paths,
            left,
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(CallFailure::Retry(
            "verifying the files did not answer before the freeze's deadline".to_owned(),
        ))
    })?;
    tracing::info!(
        message = "files verified",
        migration = migration_id,
        paths = files.paths,
        mismatches = files.mismatches.len()
    );
    if files.mismatches.is_empty() {
        return Ok(None);
    }
    Ok(Some(reason(&files.mismatches)))
}

/// The failure's reason: the first few paths and what differs.
fn reason(mismatches: &[String]) -> String {
    let named = mismatches[..mismatches.len().min(NAMED)].join("; ");
    let more = mismatches.len().saturating_sub(NAMED);
    if more > 0 {
        format!("files differ: {named}; and {more} more")
    } else {
        format!("files differ: {named}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_first_paths_and_counts_the_rest() {
        let one = reason(&["www/index.php (contents)".to_owned()]);
        assert_eq!(one, "files differ: www/index.php (contents)");
        let many: Vec<String> = (0..7).map(|i| format!("f{i} (mode)")).collect();
        let why = reason(&many);
        assert!(why.contains("f4 (mode)") && !why.contains("f5"), "{why}");
        assert!(why.ends_with("and 2 more"), "{why}");
    }
}
