//! The platform's DNS: RFC 2136 updates signed with TSIG, on the
//! authoritative server that holds the zones of accounts using the
//! platform's DNS.
//!
//! Owns: the UPDATE client ([`wire`], [`tsig`], [`client`]), the TSIG
//! secret file ([`secret`]), which records are an account's ([`records`]),
//! and the four operations a migration
//! needs, each idempotent and conditional on what was read ([`PlatformDns`]):
//! read an account's record sets, lower their TTL ahead of a switch (and
//! say when that can be relied on), switch them from one host's addresses
//! to another's, restore the TTL. Must not decide *when* (that is the
//! migration workflow's) nor touch hosts.
//!
//! Hand-rolled rather than `hickory`: Navette needs one query and one
//! UPDATE shape, and HMAC-SHA256, which `ring` (already here for rustls)
//! provides; hickory is a general DNS library with a dependency tree of
//! its own, in a build that is slow already.
//!
//! Off when `[dns] server` is not set: a platform whose DNS is not
//! Navette's to change. Then a migration relies on the old host's
//! forwarding alone.

pub mod client;
pub mod records;
pub mod secret;
pub mod tsig;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use client::DnsClient;
pub use records::{
    AccountRecords, LoweredSet, Mismatch, NameRules, RecordSet, RecordType, TtlLowering,
    ZoneRecords,
};
use records::{ZoneUpdate, plan_switch, plan_ttl_lowering, plan_ttl_restore};
use tsig::TsigKey;
pub use wire::Name;
use wire::{Message, TYPE_SOA, rcode};

use crate::config;
use crate::model::Account;

/// Errors of the platform's DNS. Each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("[dns] configuration: {0}")]
    Config(String),
    #[error(
        "{path} has mode {mode:04o}: the TSIG secret must be readable by its owner only (anyone who can read it can rewrite the platform's DNS); run `chmod 600 {path}` and start again"
    )]
    SecretExposed { path: PathBuf, mode: u32 },
    #[error(
        "cannot reach the platform's DNS server {server}: {source}; check [dns] server and that the server runs"
    )]
    Unreachable {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("the platform's DNS server {server} did not answer within {secs} s")]
    Timeout { server: SocketAddr, secs: f64 },
    #[error(
        "the platform's DNS server {server} refused Navette's TSIG key {key} ({code}): check [dns] tsig_key_name and tsig_secret_file against the key in the server's configuration, and that both clocks are right"
    )]
    Key {
        server: SocketAddr,
        key: String,
        code: &'static str,
    },
    #[error("the platform's DNS server {server} sent an answer Navette does not trust: {what}")]
    BadAnswer { server: SocketAddr, what: String },
    #[error("building a DNS request: {0}")]
    Request(String),
    #[error(
        "the platform's DNS server {server} refused the update of zone {zone} (REFUSED): its ACL must let key {key} update that zone"
    )]
    UpdateRefused {
        server: SocketAddr,
        zone: Name,
        key: String,
    },
    #[error(
        "the records of {names} in zone {zone} changed after Navette read them (the server answered {code}): nothing was written to that zone; read them again"
    )]
    ChangedMeanwhile {
        zone: Name,
        names: String,
        code: &'static str,
    },
    #[error(
        "account {account}: record sets point at neither the old host nor the new one: {}; someone else changed them, and nothing was written. Put them back on the old host's address, or take them out of the platform's DNS, and retry",
        describe(.mismatches)
    )]
    NotOnOldHost {
        account: String,
        mismatches: Vec<Mismatch>,
    },
    #[error("the platform's DNS server {server} answered {code} to {what}")]
    Server {
        server: SocketAddr,
        code: &'static str,
        what: String,
    },
}

fn describe(mismatches: &[Mismatch]) -> String {
    mismatches
        .iter()
        .map(|m| {
            let found: Vec<String> = m.found.iter().map(IpAddr::to_string).collect();
            format!("{} {} ({})", m.name, m.rtype, found.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a switch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchReport {
    /// Sets rewritten to the new host's addresses now.
    pub switched: Vec<(Name, RecordType)>,
    /// Sets that held the new host's addresses already (a retry).
    pub already_switched: Vec<(Name, RecordType)>,
    /// The account's names no zone of the server holds.
    pub not_ours: Vec<Name>,
}

/// The platform's DNS server, as the controller talks to it.
#[derive(Clone, Debug)]
pub struct PlatformDns {
    client: DnsClient,
    rules: NameRules,
    /// The TTL [`PlatformDns::lower_ttl`] gives an account's records.
    pub lowered_ttl: u32,
}

impl PlatformDns {
    /// The configured server, or `None` when `[dns] server` is not set.
    /// Reads the TSIG secret file (owner-only mode, like `ca.key`).
    pub fn from_config(config: &config::Dns) -> Result<Option<PlatformDns>, DnsError> {
        let Some(server) = config.server else {
            return Ok(None);
        };
        let missing =
            |key: &str| DnsError::Config(format!("`server` is set, so `{key}` must be too"));
        let key_name = config
            .tsig_key_name
            .as_deref()
            .ok_or_else(|| missing("tsig_key_name"))?;
        let key_name =
            Name::parse(key_name).map_err(|e| DnsError::Config(format!("tsig_key_name: {e}")))?;
        if config.tsig_algorithm != "hmac-sha256" {
            return Err(DnsError::Config(format!(
                "tsig_algorithm {:?}: only \"hmac-sha256\" is offered",
                config.tsig_algorithm
            )));
        }
        let secret_file = config
            .tsig_secret_file
            .as_deref()
            .ok_or_else(|| missing("tsig_secret_file"))?;
        let secret = secret::read_secret(secret_file)?;
        let database_zone = config
            .database_zone
            .as_deref()
            .map(Name::parse)
            .transpose()
            .map_err(|e| DnsError::Config(format!("database_zone: {e}")))?;
        if config.lowered_ttl_secs == 0 {
            return Err(DnsError::Config(
                "lowered_ttl_secs must be at least 1".into(),
            ));
        }
        Ok(Some(PlatformDns::new(
            server,
            TsigKey::new(key_name, &secret),
            NameRules { database_zone },
            config.lowered_ttl_secs,
            Duration::from_secs(config.timeout_secs.max(1)),
        )))
    }

    pub fn new(
        server: SocketAddr,
        key: TsigKey,
        rules: NameRules,
        lowered_ttl: u32,
        timeout: Duration,
    ) -> PlatformDns {
        PlatformDns {
            client: DnsClient {
                server,
                key,
                timeout,
            },
            rules,
            lowered_ttl,
        }
    }

    pub fn rules(&self) -> &NameRules {
        &self.rules
    }

    /// The account's record sets as the server holds them now.
    pub async fn read_account(&self, account: &Account) -> Result<AccountRecords, DnsError> {
        self.read_names(&account.name, &self.rules.account_names(account))
            .await
    }

    /// The A and AAAA sets of `names`, grouped by the zone that holds them.
    pub async fn read_names(
        &self,
        account: &str,
        names: &[Name],
    ) -> Result<AccountRecords, DnsError> {
        let mut records = AccountRecords {
            account: account.to_owned(),
            zones: Vec::new(),
            not_ours: Vec::new(),
        };
        for name in names {
            let Some(zone) = self.zone_of(name).await? else {
                records.not_ours.push(name.clone());
                continue;
            };
            let mut sets = Vec::new();
            for rtype in [RecordType::A, RecordType::Aaaa] {
                sets.push(self.read_set(name, rtype).await?);
            }
            match records.zones.iter_mut().find(|z| z.zone == zone) {
                Some(existing) => existing.sets.extend(sets),
                None => records.zones.push(ZoneRecords { zone, sets }),
            }
        }
        Ok(records)
    }

    /// One record set and its TTL (an empty set when there is none).
    pub async fn read_set(&self, name: &Name, rtype: RecordType) -> Result<RecordSet, DnsError> {
        let answer = self
            .client
            .exchange(Message::query(0, name, rtype.code()))
            .await?;
        if answer.rcode != rcode::NOERROR && answer.rcode != rcode::NXDOMAIN {
            return Err(self.server_error(answer.rcode, format!("the query for {name} {rtype}")));
        }
        let mut set = RecordSet {
            name: name.clone(),
            rtype,
            ttl: 0,
            addresses: Default::default(),
        };
        for record in answer
            .answers
            .iter()
            .filter(|r| r.owner == name.as_str() && r.rtype == rtype.code())
        {
            if let Some(address) = record.ip() {
                set.addresses.insert(address);
                set.ttl = set.ttl.max(record.ttl);
            }
        }
        Ok(set)
    }

    /// The zone of this server that holds `name`, from its SOA answer:
    /// the SOA itself for a zone's apex, the one in the authority section
    /// below it; none when the server does not serve it (REFUSED, NOTAUTH,
    /// or a delegation elsewhere).
    pub async fn zone_of(&self, name: &Name) -> Result<Option<Name>, DnsError> {
        let answer = self
            .client
            .exchange(Message::query(0, name, TYPE_SOA))
            .await?;
        match answer.rcode {
            rcode::NOERROR | rcode::NXDOMAIN => {}
            rcode::REFUSED | rcode::NOTAUTH => return Ok(None),
            code => return Err(self.server_error(code, format!("the SOA query for {name}"))),
        }
        let soa = answer
            .answers
            .iter()
            .chain(&answer.authority)
            .find(|r| r.rtype == TYPE_SOA && answer.authoritative);
        Ok(soa
            .and_then(|record| Name::parse(&record.owner).ok())
            .filter(|zone| name.is_within(zone)))
    }

    /// Lowers to [`PlatformDns::lowered_ttl`] the TTL of every set in
    /// `before` above it, each write conditional on the addresses read.
    /// Pass the first read on a retry: the old TTLs come from it. The
    /// answer's `safe_at` is when the lowered TTL can be relied on.
    pub async fn lower_ttl(&self, before: &AccountRecords) -> Result<TtlLowering, DnsError> {
        let (updates, sets) = plan_ttl_lowering(before, self.lowered_ttl);
        let longest = sets.iter().map(|set| set.old_ttl).max().unwrap_or(0);
        for update in &updates {
            // On a retry after a first attempt that wrote, this writes the
            // same again: the prerequisite compares addresses, not TTLs.
            self.send(update).await?;
        }
        tracing::info!(
            message = "DNS TTLs lowered",
            account = %before.account,
            sets = sets.len(),
            lowered_ttl = self.lowered_ttl,
            longest_old_ttl = longest,
        );
        Ok(TtlLowering {
            lowered_ttl: self.lowered_ttl,
            sets,
            safe_at: SystemTime::now() + Duration::from_secs(u64::from(longest)),
        })
    }

    /// Points the account's sets that point at `from` (any of the old
    /// host's addresses) at `to` (the new host's addresses, of each set's
    /// family). Refused as a whole, nothing written, when a set points
    /// elsewhere; a set already on `to` is left as it is, so a retry of a
    /// switch that was done changes nothing.
    pub async fn switch(
        &self,
        account: &Account,
        from: &[IpAddr],
        to: &[IpAddr],
    ) -> Result<SwitchReport, DnsError> {
        let records = self.read_account(account).await?;
        self.switch_records(&records, from, to).await
    }

    /// [`PlatformDns::switch`] on sets read already.
    pub async fn switch_records(
        &self,
        records: &AccountRecords,
        from: &[IpAddr],
        to: &[IpAddr],
    ) -> Result<SwitchReport, DnsError> {
        let plan = plan_switch(records, from, to).map_err(|mismatches| DnsError::NotOnOldHost {
            account: records.account.clone(),
            mismatches,
        })?;
        let mut report = SwitchReport {
            already_switched: plan.already_switched,
            not_ours: records.not_ours.clone(),
            ..SwitchReport::default()
        };
        for update in &plan.updates {
            self.send(update).await?;
            for record in update.updates.iter().filter(|r| r.class == wire::CLASS_ANY) {
                if let (Ok(name), Some(rtype)) =
                    (Name::parse(&record.owner), record_type(record.rtype))
                {
                    report.switched.push((name, rtype));
                }
            }
        }
        tracing::info!(
            message = "DNS records switched",
            account = %records.account,
            switched = report.switched.len(),
            already_switched = report.already_switched.len(),
            not_ours = report.not_ours.len(),
        );
        Ok(report)
    }

    /// Gives the lowered sets their old TTL back (on whatever addresses
    /// they hold now). Idempotent.
    pub async fn restore_ttl(
        &self,
        account: &Account,
        lowering: &TtlLowering,
    ) -> Result<(), DnsError> {
        let records = self.read_account(account).await?;
        self.restore_ttl_of(&records, lowering).await
    }

    /// [`PlatformDns::restore_ttl`] on sets read already.
    pub async fn restore_ttl_of(
        &self,
        records: &AccountRecords,
        lowering: &TtlLowering,
    ) -> Result<(), DnsError> {
        for update in plan_ttl_restore(records, lowering) {
            self.send(&update).await?;
        }
        Ok(())
    }

    /// Sends one UPDATE; an error unless the server applied it.
    async fn send(&self, update: &ZoneUpdate) -> Result<(), DnsError> {
        let message = Message::update(
            0,
            &update.zone,
            update.prerequisites.clone(),
            update.updates.clone(),
        );
        let answer = self.client.exchange(message).await?;
        let names = || {
            update
                .names
                .iter()
                .map(Name::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match answer.rcode {
            rcode::NOERROR => Ok(()),
            code @ (rcode::NXRRSET | rcode::YXRRSET | rcode::NXDOMAIN | rcode::YXDOMAIN) => {
                Err(DnsError::ChangedMeanwhile {
                    zone: update.zone.clone(),
                    names: names(),
                    code: rcode::name(code),
                })
            }
            rcode::REFUSED => Err(DnsError::UpdateRefused {
                server: self.client.server,
                zone: update.zone.clone(),
                key: self.client.key.name.to_string(),
            }),
            code => Err(self.server_error(
                code,
                format!("the update of {} in zone {}", names(), update.zone),
            )),
        }
    }

    fn server_error(&self, code: u16, what: String) -> DnsError {
        DnsError::Server {
            server: self.client.server,
            code: rcode::name(code),
            what,
        }
    }
}

/// A host's addresses as its inventory lists them, for
/// [`PlatformDns::switch`]: the ones that parse, loopback and link-local
/// left out (no record points there).
pub fn host_addresses(inventory_addresses: &[String]) -> Vec<IpAddr> {
    inventory_addresses
        .iter()
        .filter_map(|text| text.split('/').next()?.parse::<IpAddr>().ok())
        .filter(|address| match address {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
            }
        })
        .collect()
}

fn record_type(code: u16) -> Option<RecordType> {
    match code {
        wire::TYPE_A => Some(RecordType::A),
        wire::TYPE_AAAA => Some(RecordType::Aaaa),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_keep_what_records_can_point_at() {
        let listed: Vec<String> = [
            "192.0.2.10",
            "127.0.0.1",
            "2001:db8::10/64",
            "fe80::1",
            "eth0",
        ]
        .map(String::from)
        .to_vec();
        let kept: Vec<String> = host_addresses(&listed)
            .iter()
            .map(IpAddr::to_string)
            .collect();
        assert_eq!(kept, ["192.0.2.10", "2001:db8::10"]);
    }
}
