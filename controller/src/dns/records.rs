//! Which DNS records are an account's, and what to change in them, pure.
//!
//! An account's names are its sites' domains (as its host's agent reports
//! them) and, when the operator names a database zone, its database host
//! name `<account>.<database_zone>` ('_' in the account name becomes '-').
//! For each name, its A and its AAAA record set are the account's. This
//! module reads nothing and writes nothing: it turns record sets read from
//! the server into the UPDATE messages' prerequisites and updates, so that
//! every plan is unit-tested and every write is conditional on exactly
//! what was read (a controller working from a stale read changes nothing).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::wire::{CLASS_ANY, CLASS_IN, CLASS_NONE, Name, Record, TYPE_A, TYPE_AAAA};
use crate::model::Account;

/// The two kinds of record set an account's name has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordType {
    A,
    Aaaa,
}

impl RecordType {
    pub fn code(self) -> u16 {
        match self {
            RecordType::A => TYPE_A,
            RecordType::Aaaa => TYPE_AAAA,
        }
    }

    pub fn holds(self, address: &IpAddr) -> bool {
        matches!(
            (self, address),
            (RecordType::A, IpAddr::V4(_)) | (RecordType::Aaaa, IpAddr::V6(_))
        )
    }
}

impl std::fmt::Display for RecordType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
        })
    }
}

/// One record set as the server holds it; no addresses means it does not
/// exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSet {
    pub name: Name,
    pub rtype: RecordType,
    /// Seconds; 0 when the set does not exist.
    pub ttl: u32,
    pub addresses: BTreeSet<IpAddr>,
}

/// The account's names in one zone of the platform's DNS, with their A
/// and AAAA sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRecords {
    pub zone: Name,
    pub sets: Vec<RecordSet>,
}

/// What the platform's DNS holds for an account, as read at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecords {
    pub account: String,
    pub zones: Vec<ZoneRecords>,
    /// The account's names no zone of this server holds: the customer's
    /// DNS is elsewhere and Navette leaves them alone (the old host's
    /// forwarding serves them until the customer moves them).
    pub not_ours: Vec<Name>,
}

impl AccountRecords {
    pub fn sets(&self) -> impl Iterator<Item = &RecordSet> {
        self.zones.iter().flat_map(|zone| zone.sets.iter())
    }

    /// The record sets that point at a host with these addresses: "the
    /// records of account X pointing at host H".
    pub fn pointing_at(&self, host: &[IpAddr]) -> Vec<&RecordSet> {
        self.sets()
            .filter(|set| {
                !set.addresses.is_empty() && set.addresses.iter().all(|a| host.contains(a))
            })
            .collect()
    }
}

/// How an account's database host name is made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameRules {
    /// `<account>.<database_zone>` is the account's database host name;
    /// none when not set.
    pub database_zone: Option<Name>,
}

impl NameRules {
    /// The account's database host name, if the platform publishes one.
    pub fn database_host(&self, account: &str) -> Option<Name> {
        let zone = self.database_zone.as_ref()?;
        Name::parse(&format!("{}.{zone}", account.replace('_', "-"))).ok()
    }

    /// The account's names: its sites' domains, then its database host
    /// name, each once. A domain that is not a host name is left out and
    /// logged (the agent checks them; this is the controller's own gate).
    pub fn account_names(&self, account: &Account) -> Vec<Name> {
        let mut names = Vec::new();
        let domains = account.sites.iter().flat_map(|site| site.domains.iter());
        for domain in domains {
            match Name::parse(domain) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(message = "site domain left out of DNS updates", account = %account.name, %error);
                }
            }
        }
        if let Some(name) = self.database_host(&account.name)
            && !names.contains(&name)
        {
            names.push(name);
        }
        names
    }
}

/// One UPDATE message: a zone, what must hold, what to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneUpdate {
    pub zone: Name,
    pub prerequisites: Vec<Record>,
    pub updates: Vec<Record>,
    /// The names it changes, for messages.
    pub names: Vec<Name>,
}

/// The TTLs lowered ahead of a switch, and when the lowering can be
/// relied on: the workflow records this, waits until `safe_at`, and
/// restores the TTLs with it after the switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlLowering {
    pub lowered_ttl: u32,
    /// Each set lowered, with the TTL it had.
    pub sets: Vec<LoweredSet>,
    /// From then on, no resolver holds an answer cached with an old TTL:
    /// the write's time plus the longest old TTL. Now, when nothing needed
    /// lowering.
    pub safe_at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoweredSet {
    pub name: Name,
    pub rtype: RecordType,
    pub old_ttl: u32,
}

/// The updates that give every existing set above `lowered_ttl` that TTL,
/// its addresses unchanged, and what to record. `records` is what was read
/// before (on a retry, the first read, so the old TTLs are not lost).
pub fn plan_ttl_lowering(
    records: &AccountRecords,
    lowered_ttl: u32,
) -> (Vec<ZoneUpdate>, Vec<LoweredSet>) {
    let mut updates = Vec::new();
    let mut lowered = Vec::new();
    for zone in &records.zones {
        let sets: Vec<&RecordSet> = zone
            .sets
            .iter()
            .filter(|set| !set.addresses.is_empty() && set.ttl > lowered_ttl)
            .collect();
        if sets.is_empty() {
            continue;
        }
        let mut update = ZoneUpdate {
            zone: zone.zone.clone(),
            prerequisites: Vec::new(),
            updates: Vec::new(),
            names: Vec::new(),
        };
        for set in sets {
            push_replace(&mut update, set, &set.addresses, lowered_ttl);
            lowered.push(LoweredSet {
                name: set.name.clone(),
                rtype: set.rtype,
                old_ttl: set.ttl,
            });
        }
        updates.push(update);
    }
    (updates, lowered)
}

/// What a switch will do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchPlan {
    pub updates: Vec<ZoneUpdate>,
    /// Sets already holding the new host's addresses (a retry).
    pub already_switched: Vec<(Name, RecordType)>,
}

/// A set that points neither at the old host nor at the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub name: Name,
    pub rtype: RecordType,
    pub found: BTreeSet<IpAddr>,
}

/// Moves every set that points at the old host (`from`: any of its
/// addresses) to the new host's addresses of its family (`to`), keeping
/// its TTL; sets that do not exist stay so. A set pointing elsewhere is
/// someone else's change: the whole switch is refused, nothing planned.
pub fn plan_switch(
    records: &AccountRecords,
    from: &[IpAddr],
    to: &[IpAddr],
) -> Result<SwitchPlan, Vec<Mismatch>> {
    let mut plan = SwitchPlan::default();
    let mut mismatches = Vec::new();
    for zone in &records.zones {
        let mut update = ZoneUpdate {
            zone: zone.zone.clone(),
            prerequisites: Vec::new(),
            updates: Vec::new(),
            names: Vec::new(),
        };
        for set in zone.sets.iter().filter(|set| !set.addresses.is_empty()) {
            let target: BTreeSet<IpAddr> =
                to.iter().filter(|a| set.rtype.holds(a)).copied().collect();
            if set.addresses == target {
                plan.already_switched.push((set.name.clone(), set.rtype));
            } else if set.addresses.iter().all(|a| from.contains(a)) {
                push_replace(&mut update, set, &target, set.ttl);
            } else {
                mismatches.push(Mismatch {
                    name: set.name.clone(),
                    rtype: set.rtype,
                    found: set.addresses.clone(),
                });
            }
        }
        if !update.updates.is_empty() {
            plan.updates.push(update);
        }
    }
    if mismatches.is_empty() {
        Ok(plan)
    } else {
        Err(mismatches)
    }
}

/// Gives the lowered sets their old TTL back, addresses as read now.
pub fn plan_ttl_restore(records: &AccountRecords, lowering: &TtlLowering) -> Vec<ZoneUpdate> {
    let mut updates = Vec::new();
    for zone in &records.zones {
        let mut update = ZoneUpdate {
            zone: zone.zone.clone(),
            prerequisites: Vec::new(),
            updates: Vec::new(),
            names: Vec::new(),
        };
        for set in zone.sets.iter().filter(|set| !set.addresses.is_empty()) {
            let old = lowering
                .sets
                .iter()
                .find(|lowered| lowered.name == set.name && lowered.rtype == set.rtype);
            if let Some(old) = old
                && set.ttl != old.old_ttl
            {
                push_replace(&mut update, set, &set.addresses, old.old_ttl);
            }
        }
        if !update.updates.is_empty() {
            updates.push(update);
        }
    }
    updates
}

/// Adds to `update`: "`set` holds exactly what was read", then "replace it
/// with `addresses` at `ttl`".
fn push_replace(update: &mut ZoneUpdate, set: &RecordSet, addresses: &BTreeSet<IpAddr>, ttl: u32) {
    update.prerequisites.extend(prerequisite(set));
    update.updates.push(Record {
        owner: set.name.as_str().to_owned(),
        rtype: set.rtype.code(),
        class: CLASS_ANY,
        ttl: 0,
        rdata: Vec::new(),
    });
    update.updates.extend(
        addresses
            .iter()
            .map(|address| Record::address(&set.name, *address, ttl)),
    );
    if !update.names.contains(&set.name) {
        update.names.push(set.name.clone());
    }
}

/// RFC 2136 section 2.4: "RRset exists (value dependent)" with exactly
/// the addresses read, or "RRset does not exist" for an empty set.
pub fn prerequisite(set: &RecordSet) -> Vec<Record> {
    if set.addresses.is_empty() {
        return vec![Record {
            owner: set.name.as_str().to_owned(),
            rtype: set.rtype.code(),
            class: CLASS_NONE,
            ttl: 0,
            rdata: Vec::new(),
        }];
    }
    set.addresses
        .iter()
        .map(|address| Record {
            class: CLASS_IN,
            ..Record::address(&set.name, *address, 0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Site;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const OLD: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    const NEW: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
    const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    fn set(
        name: &str,
        ttl: u32,
        addresses: &[IpAddr],
    ) -> Result<RecordSet, Box<dyn std::error::Error>> {
        Ok(RecordSet {
            name: Name::parse(name)?,
            rtype: RecordType::A,
            ttl,
            addresses: addresses.iter().copied().collect(),
        })
    }

    fn records(sets: Vec<RecordSet>) -> Result<AccountRecords, Box<dyn std::error::Error>> {
        Ok(AccountRecords {
            account: "alice".into(),
            zones: vec![ZoneRecords {
                zone: Name::parse("alice.example")?,
                sets,
            }],
            not_ours: Vec::new(),
        })
    }

    #[test]
    fn an_accounts_names_are_its_domains_and_its_database_host() -> TestResult {
        let rules = NameRules {
            database_zone: Some(Name::parse("db.example")?),
        };
        let account = Account {
            name: "alice_shop".into(),
            host_id: "h".into(),
            home: "/home/alice_shop".into(),
            uid: 1000,
            home_size_bytes: 0,
            home_files: 0,
            databases: Vec::new(),
            updated_at: std::time::SystemTime::UNIX_EPOCH.into(),
            copy_of_test: None,
            sites: vec![
                Site {
                    domains: vec!["alice.example".into(), "WWW.alice.example".into()],
                    document_root: "www".into(),
                    runtime: "php".into(),
                },
                Site {
                    domains: vec!["alice.example".into(), "bad;name".into()],
                    document_root: "blog".into(),
                    runtime: "php".into(),
                },
            ],
        };
        let names: Vec<String> = rules
            .account_names(&account)
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            names,
            [
                "alice.example.",
                "www.alice.example.",
                "alice-shop.db.example."
            ]
        );
        assert_eq!(NameRules::default().database_host("alice"), None);
        Ok(())
    }

    #[test]
    fn lowering_rewrites_only_sets_above_the_lowered_ttl_on_what_was_read() -> TestResult {
        let read = records(vec![
            set("alice.example", 3600, &[OLD])?,
            set("www.alice.example", 30, &[OLD])?,
            set("ftp.alice.example", 0, &[])?,
        ])?;
        let (updates, lowered) = plan_ttl_lowering(&read, 60);
        assert_eq!(updates.len(), 1);
        let update = &updates[0];
        assert_eq!(update.names, vec![Name::parse("alice.example")?]);
        // Prerequisite: exactly the address read, class IN, TTL 0.
        assert_eq!(update.prerequisites.len(), 1);
        assert_eq!(
            (update.prerequisites[0].class, update.prerequisites[0].ttl),
            (CLASS_IN, 0)
        );
        assert_eq!(update.prerequisites[0].ip(), Some(OLD));
        // Delete the set, add it back at 60 s.
        assert_eq!(update.updates[0].class, CLASS_ANY);
        assert_eq!(
            (update.updates[1].ip(), update.updates[1].ttl),
            (Some(OLD), 60)
        );
        assert_eq!(lowered[0].old_ttl, 3600);
        Ok(())
    }

    #[test]
    fn a_switch_moves_what_points_at_the_old_host_and_refuses_the_rest() -> TestResult {
        let read = records(vec![
            set("alice.example", 60, &[OLD])?,
            set("www.alice.example", 60, &[NEW])?,
        ])?;
        let plan = plan_switch(&read, &[OLD], &[NEW]).map_err(|m| format!("{m:?}"))?;
        assert_eq!(
            plan.already_switched,
            vec![(Name::parse("www.alice.example")?, RecordType::A)]
        );
        assert_eq!(plan.updates.len(), 1);
        let adds: Vec<_> = plan.updates[0]
            .updates
            .iter()
            .filter(|r| r.class == CLASS_IN)
            .collect();
        assert_eq!((adds[0].ip(), adds[0].ttl), (Some(NEW), 60));
        // A retry after it was done plans nothing.
        let done = records(vec![
            set("alice.example", 60, &[NEW])?,
            set("www.alice.example", 60, &[NEW])?,
        ])?;
        let again = plan_switch(&done, &[OLD], &[NEW]).map_err(|m| format!("{m:?}"))?;
        assert!(again.updates.is_empty());
        // Someone pointed a name elsewhere: refused as a whole.
        let changed = records(vec![
            set("alice.example", 60, &[OLD])?,
            set("www.alice.example", 60, &[ELSEWHERE])?,
        ])?;
        let mismatches = plan_switch(&changed, &[OLD], &[NEW])
            .err()
            .unwrap_or_default();
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].name, Name::parse("www.alice.example")?);
        Ok(())
    }

    #[test]
    fn restoring_gives_back_the_old_ttl_on_the_current_addresses() -> TestResult {
        let lowering = TtlLowering {
            lowered_ttl: 60,
            sets: vec![LoweredSet {
                name: Name::parse("alice.example")?,
                rtype: RecordType::A,
                old_ttl: 3600,
            }],
            safe_at: SystemTime::UNIX_EPOCH,
        };
        let now = records(vec![
            set("alice.example", 60, &[NEW])?,
            set("www.alice.example", 60, &[NEW])?,
        ])?;
        let updates = plan_ttl_restore(&now, &lowering);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].names, vec![Name::parse("alice.example")?]);
        assert_eq!(updates[0].prerequisites[0].ip(), Some(NEW));
        assert_eq!(updates[0].updates[1].ttl, 3600);
        let restored = records(vec![set("alice.example", 3600, &[NEW])?])?;
        assert!(plan_ttl_restore(&restored, &lowering).is_empty());
        Ok(())
    }
}
