//! `Agent/WipeTransit`: a released transit host forgets the allocation.
//!
//! What Navette puts on a transit host for an allocation is named after
//! it: a copy made there for allocation `a0123…` has the copy id `a0123…`
//! or `a0123…-<suffix>` ([`belongs_to`]). The wipe removes exactly those
//! copies, each with its sites (stopped, unless an account of that name
//! lives on the host as itself), its home, its databases and the logins it
//! created, through the copy removal every test uses
//! (`transfer::target::Transfers::remove_copy`, which keeps a login
//! another copy still records). It touches nothing else: not an account
//! that lives here, not a test's copy, not another allocation's.
//!
//! Addresses are not removed here: moving an address away is the address
//! moves' job (one ledger of which host holds what). The wipe refuses,
//! before removing anything, while an address the controller says the
//! allocation held is still on the host ([`still_held`]).
//!
//! Idempotent: a repeated wipe finds no copy of the allocation left and
//! removes nothing; a wipe interrupted half-way removes the rest.

use std::path::Path;

use navette_proto::v1::TransferSpec;

use crate::sites::{SiteHost, SitesError};
use crate::transfer::copies::CopyRecord;
use crate::transfer::target::{TransferError, Transfers};

/// Why a wipe did not finish.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    #[error("allocation id {0:?} is not a valid id (a-z, 0-9 and '-')")]
    BadAllocationId(String),
    #[error(
        "the addresses {} are still on this host; move them back to their server before the wipe",
        .0.join(", ")
    )]
    AddressesHeld(Vec<String>),
    #[error("cannot list this host's addresses: {0}")]
    Addresses(String),
    #[error("stopping the sites of copy {copy_id} ({account}): {source}")]
    Sites {
        copy_id: String,
        account: String,
        source: SitesError,
    },
    #[error("removing copy {copy_id}: {source}")]
    Copy {
        copy_id: String,
        source: TransferError,
    },
}

/// What a wipe removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wiped {
    pub copies_removed: Vec<String>,
    pub sites_stopped: Vec<String>,
    pub logins_dropped: Vec<String>,
    pub logins_kept: Vec<String>,
}

/// Whether copy `copy_id` was made for allocation `allocation_id`: named
/// after it, alone or followed by `-` and a suffix (never a mere prefix:
/// `a1` does not own `a12`).
pub fn belongs_to(copy_id: &str, allocation_id: &str) -> bool {
    copy_id == allocation_id
        || copy_id
            .strip_prefix(allocation_id)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Of the addresses the allocation held, those still on the host.
pub fn still_held(held: &[String], host_addresses: &[String]) -> Vec<String> {
    held.iter()
        .filter(|address| host_addresses.contains(address))
        .cloned()
        .collect()
}

/// Whether `account` lives on the host as itself: a home of its name in
/// the accounts directory that no copy holds. Its sites are then its own,
/// and a wipe leaves them running.
fn lives_here(accounts_dir: &Path, account: &str, copies: &[CopyRecord]) -> bool {
    let home = accounts_dir.join(account);
    home.exists()
        && !copies
            .iter()
            .any(|copy| copy.home.as_deref() == Some(home.as_path()))
}

/// Removes what this host holds for `allocation_id` (see the module's doc).
pub async fn wipe(
    transfers: &Transfers,
    sites: &SiteHost,
    allocation_id: &str,
    held_addresses: &[String],
) -> Result<Wiped, WipeError> {
    if !crate::ids::is_transfer_id(allocation_id) {
        return Err(WipeError::BadAllocationId(allocation_id.to_owned()));
    }
    let addresses = crate::inventory::system::host_addresses()
        .map_err(|error| WipeError::Addresses(error.to_string()))?;
    let remaining = still_held(held_addresses, &addresses);
    if !remaining.is_empty() {
        return Err(WipeError::AddressesHeld(remaining));
    }
    let records = transfers.copy_records();
    let accounts_dir = transfers.config().accounts_dir.clone();
    let mut wiped = Wiped::default();
    for record in records
        .iter()
        .filter(|r| belongs_to(&r.copy_id, allocation_id))
    {
        if !lives_here(&accounts_dir, &record.account, &records) {
            let account = record.account.clone();
            let host = sites.clone();
            let stopped = tokio::task::spawn_blocking(move || host.stop(&account))
                .await
                .map_err(|error| WipeError::Copy {
                    copy_id: record.copy_id.clone(),
                    source: TransferError::Refused(format!(
                        "stopping its sites stopped unexpectedly: {error}"
                    )),
                })?
                .map_err(|source| WipeError::Sites {
                    copy_id: record.copy_id.clone(),
                    account: record.account.clone(),
                    source,
                })?;
            if stopped {
                wiped.sites_stopped.push(record.account.clone());
            }
        }
        let spec = TransferSpec {
            transfer_id: record.copy_id.clone(),
            copy_id: record.copy_id.clone(),
            account: record.account.clone(),
            target_host_id: transfers.host_id().to_owned(),
            ..TransferSpec::default()
        };
        let logins = transfers
            .remove_copy(&spec)
            .await
            .map_err(|source| WipeError::Copy {
                copy_id: record.copy_id.clone(),
                source,
            })?;
        tracing::info!(message = "transit copy wiped", allocation_id, copy_id = %record.copy_id, account = %record.account);
        wiped.copies_removed.push(record.copy_id.clone());
        wiped.logins_dropped.extend(logins.dropped);
        wiped.logins_kept.extend(logins.kept);
    }
    Ok(wiped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copies_named_after_the_allocation_belong_to_it() {
        assert!(belongs_to("a0123", "a0123"));
        assert!(belongs_to("a0123-nvk-alice", "a0123"));
        assert!(!belongs_to("a01234", "a0123"));
        assert!(!belongs_to("t0123", "a0123"));
        assert!(!belongs_to("x-a0123", "a0123"));
    }

    #[test]
    fn addresses_still_held_are_those_on_the_host() {
        let held = vec!["192.0.2.200".to_owned(), "192.0.2.201".to_owned()];
        let host = vec!["192.0.2.20".to_owned(), "192.0.2.201".to_owned()];
        assert_eq!(still_held(&held, &host), vec!["192.0.2.201"]);
        assert!(still_held(&[], &host).is_empty());
    }

    #[test]
    fn an_account_living_here_keeps_its_sites() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("navette-wipe-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("nvk_alice"))?;
        std::fs::create_dir_all(dir.join("nvk_bob.a01"))?;
        let copies = vec![CopyRecord {
            copy_id: "a01".to_owned(),
            account: "nvk_bob".to_owned(),
            home: Some(dir.join("nvk_bob.a01")),
            ..CopyRecord::default()
        }];
        let alice = lives_here(&dir, "nvk_alice", &copies);
        let bob = lives_here(&dir, "nvk_bob", &copies);
        std::fs::remove_dir_all(&dir)?;
        assert!(alice);
        assert!(!bob);
        Ok(())
    }
}
