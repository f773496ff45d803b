//! Transfer protocol versions: what each one means, which ones this agent
//! speaks, and the check both sides of a transfer make on the version its
//! spec names (`TransferSpec.protocol_version`, chosen by the controller as
//! the highest version the source and the target both report).
//!
//! A version fixes what a source and a target must compute alike for a
//! copy to be checked. So far one thing changed incompatibly: the row
//! digest of PostgreSQL tables ([`digest`](super::postgres::digest)).
//!
//! - **1**: rows hashed by the fold of 64-bit words with MurmurHash3's
//!   finaliser ([`RowHash::Fold`]), what agents computed before the digest
//!   moved to XXH3.
//! - **2**: rows hashed with XXH3-64 ([`RowHash::Xxh3`]).
//!
//! An agent speaks every version in [`SPOKEN`], as a source and as a
//! target, so a fleet upgrades one host at a time: a new agent still copies
//! with a peer one version back. Files (SHA-256 blocks) and MariaDB (SHA-256
//! of values) have not changed and are the same in every version.
//!
//! Invariant: a transfer whose spec names a version this agent does not
//! speak is refused before anything is granted or pulled, with a message
//! naming the version and the ones spoken; every digest of a transfer is
//! computed with its version's hash, on both sides.

use crate::transfer::postgres::digest::RowHash;

/// Every version this build speaks, ascending.
pub const SPOKEN: &[u32] = &[1, 2];

/// The version a spec without one means (a controller from before
/// versions were named): what agents of that time computed.
pub const UNNAMED: u32 = 2;

/// The row hash of `version`, if this build knows it.
pub fn row_hash(version: u32) -> Option<RowHash> {
    match version {
        1 => Some(RowHash::Fold),
        2 => Some(RowHash::Xxh3),
        _ => None,
    }
}

/// `1, 2` for messages.
pub fn list(versions: &[u32]) -> String {
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The version a transfer runs on, and its row hash, if this agent speaks
/// it (`spoken`: its configured set, see [`crate::config::Testing`]); a
/// sentence saying what to do otherwise. `version` 0 is [`UNNAMED`].
pub fn check(
    transfer_id: &str,
    version: u32,
    spoken: &[u32],
    host_id: &str,
) -> Result<(u32, RowHash), String> {
    let version = if version == 0 { UNNAMED } else { version };
    match row_hash(version) {
        Some(hash) if spoken.contains(&version) => Ok((version, hash)),
        _ => Err(format!(
            "transfer {transfer_id} uses transfer protocol version {version}, but the agent of host {host_id} (version {}) speaks only {}; the controller pairs hosts on a version both speak: let it choose again, or upgrade this host's agent",
            env!("CARGO_PKG_VERSION"),
            list(spoken)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spoken_version_has_a_row_hash() {
        for version in SPOKEN {
            assert!(row_hash(*version).is_some(), "version {version}");
        }
        assert!(SPOKEN.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(SPOKEN.contains(&UNNAMED));
    }

    #[test]
    fn a_transfer_runs_on_its_version_s_hash() {
        assert_eq!(check("t-g1", 1, SPOKEN, "h"), Ok((1, RowHash::Fold)));
        assert_eq!(check("t-g1", 2, SPOKEN, "h"), Ok((2, RowHash::Xxh3)));
        // A controller from before versions: today's digest.
        assert_eq!(check("t-g1", 0, SPOKEN, "h"), Ok((2, RowHash::Xxh3)));
    }

    #[test]
    fn a_version_not_spoken_is_refused_with_what_is() {
        let refused = check("t-g1", 2, &[1], "shared-1").expect_err("only 1 is spoken");
        assert!(
            refused.contains("transfer t-g1 uses transfer protocol version 2")
                && refused.contains("host shared-1")
                && refused.contains("speaks only 1;"),
            "{refused}"
        );
        let unknown = check("t-g1", 3, SPOKEN, "test-1").expect_err("3 does not exist yet");
        assert!(unknown.contains("speaks only 1, 2"), "{unknown}");
    }
}
