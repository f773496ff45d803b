//! The verification inside a migration's freeze, as agent calls: the
//! fingerprints of the paths the last catch-up pass changed taken on the
//! source, then compared on the target with its copy's (owners by name,
//! mapped by the target as a copy maps them). The fingerprints pass
//! through the controller unread.

use std::time::Duration;

use navette_proto::v1;

use super::{CallFailure, agent, call_outcome, request};
use crate::model::Host;
use crate::state::Controller;

/// What comparing the files came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesVerified {
    /// Paths compared.
    pub paths: usize,
    /// Each path that differs, with what differs (empty: all equal).
    pub mismatches: Vec<String>,
}

/// Fingerprints `paths` of `account`'s home on `source`, then has
/// `target` compare its copy's with them; each call at most `timeout`.
pub async fn verify_files(
    controller: &Controller,
    source: &Host,
    target: &Host,
    migration_id: &str,
    account: &str,
    paths: &[Vec<u8>],
    timeout: Duration,
) -> Result<FilesVerified, CallFailure> {
    let ask = |source: Vec<v1::FileFingerprint>, compare| v1::VerifyFilesRequest {
        migration_id: migration_id.to_owned(),
        account: account.to_owned(),
        paths: paths.to_vec(),
        source,
        compare,
    };
    let fingerprints = agent(controller, source)?
        .verify_files(request(ask(Vec::new(), false), timeout))
        .await
        .map_err(|status| call_outcome(source, &status))?
        .into_inner()
        .fingerprints;
    let mismatches = agent(controller, target)?
        .verify_files(request(ask(fingerprints, true), timeout))
        .await
        .map_err(|status| call_outcome(target, &status))?
        .into_inner()
        .mismatches;
    Ok(FilesVerified {
        paths: paths.len(),
        mismatches,
    })
}
