//! The platform's DNS around a migration (`Controller.dns`, `[dns]`):
//! the account's records read and their TTL lowered when the migration
//! begins ([`lower`], recorded in the run as a [`DnsPlan`], so that a
//! retry keeps the old TTLs), the freeze held back until the lowering can
//! be relied on (`migrate_kind`, with [`DnsPlan::safe_at`]), the records
//! switched from the old host's addresses to the new host's right after
//! the point of no return, and the TTLs restored ([`switch_and_restore`]).
//! Without `[dns]` nothing is changed and [`DnsSwitch::NotManaged`] says
//! so.

use super::migrate_run::{DnsPlan, MigrationRun};
use crate::agents::CallFailure;
use crate::dns::host_addresses;
use crate::model::Host;
use crate::state::Controller;
use crate::store;

/// What became of the account's DNS names at the switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsSwitch {
    /// The controller manages no DNS zone: the account's names were not
    /// changed, and point where the customer (or the platform's own
    /// tooling) points them; the old host's forwarding serves clients
    /// that still reach it.
    NotManaged,
    /// Record sets now on the new host's addresses (switched now or by an
    /// earlier try), and names no zone of the server holds.
    Switched { sets: usize, not_ours: usize },
}

fn dns_failure(error: crate::dns::DnsError) -> CallFailure {
    CallFailure::Retry(error.to_string())
}

/// Reads the account's records and lowers their TTL; `None` without
/// `[dns]`. A run that holds a plan already keeps it (its first read
/// holds the old TTLs).
pub async fn lower(
    controller: &Controller,
    run: &MigrationRun,
) -> Result<Option<DnsPlan>, CallFailure> {
    let Some(dns) = controller.dns.as_ref() else {
        return Ok(None);
    };
    if let Some(plan) = &run.dns {
        return Ok(Some(plan.clone()));
    }
    let account = {
        let client = controller
            .db
            .get()
            .await
            .map_err(|e| CallFailure::Retry(e.to_string()))?;
        store::accounts::get(&**client, &run.account)
            .await
            .map_err(|e| CallFailure::Retry(e.to_string()))?
    };
    let records = dns.read_account(&account).await.map_err(dns_failure)?;
    let lowering = dns.lower_ttl(&records).await.map_err(dns_failure)?;
    Ok(Some(DnsPlan { records, lowering }))
}

/// Points the account's records at the new host, then gives them their
/// old TTL back. Idempotent: a retry finds the sets switched already.
pub async fn switch_and_restore(
    controller: &Controller,
    run: &MigrationRun,
    source: &Host,
    target: &Host,
) -> Result<DnsSwitch, CallFailure> {
    let (Some(dns), Some(plan)) = (controller.dns.as_ref(), run.dns.as_ref()) else {
        return Ok(DnsSwitch::NotManaged);
    };
    // The names of the first read: the account's placement has moved,
    // and its new host may list its sites differently.
    let names: Vec<_> = plan
        .records
        .sets()
        .map(|set| set.name.clone())
        .chain(plan.records.not_ours.iter().cloned())
        .fold(Vec::new(), |mut names, name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names
        });
    let records = dns
        .read_names(&run.account, &names)
        .await
        .map_err(dns_failure)?;
    let from = host_addresses(&source.addresses);
    let to = host_addresses(&target.addresses);
    let report = dns
        .switch_records(&records, &from, &to)
        .await
        .map_err(dns_failure)?;
    let switched = dns
        .read_names(&run.account, &names)
        .await
        .map_err(dns_failure)?;
    dns.restore_ttl_of(&switched, &plan.lowering)
        .await
        .map_err(dns_failure)?;
    Ok(DnsSwitch::Switched {
        sets: report.switched.len() + report.already_switched.len(),
        not_ours: report.not_ours.len(),
    })
}
