//! The verification of a migration's copy, as agent calls: the
//! fingerprints of the paths the last catch-up pass changed taken on the
//! source, then compared on the target with its copy's (owners by name,
//! mapped by the target as a copy maps them); and the rounds of a
//! PostgreSQL database's rows, at each converge round and inside the
//! freeze ([`verify_rows`]), whose marks the migration keeps. The
//! fingerprints pass through the controller unread.

use std::time::Duration;

use navette_proto::v1;
use serde::{Deserialize, Serialize};

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

/// Where the verification of one PostgreSQL database's rows stands
/// between rounds, kept with the migration's backlog: the next round
/// moves the source's verification slot to `through_lsn` and checks the
/// `pending` keys again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsMark {
    pub through_lsn: String,
    pub pending: Vec<PendingRows>,
    /// WAL bytes the next round has to read.
    pub unread_bytes: u64,
}

/// Rows of one table that differed at the last round (the target lagged,
/// or the copy is wrong: the freeze's round says which).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRows {
    pub schema: String,
    pub name: String,
    /// Each key's column values (`None`: NULL).
    pub keys: Vec<Vec<Option<String>>>,
    pub whole: bool,
}

impl PendingRows {
    fn to_wire(&self) -> v1::TableRows {
        v1::TableRows {
            schema: self.schema.clone(),
            name: self.name.clone(),
            keys: self
                .keys
                .iter()
                .map(|key| v1::RowKey {
                    values: key
                        .iter()
                        .map(|text| v1::KeyValue { text: text.clone() })
                        .collect(),
                })
                .collect(),
            whole: self.whole,
            ..v1::TableRows::default()
        }
    }

    fn from_wire(rows: &v1::TableRows) -> PendingRows {
        PendingRows {
            schema: rows.schema.clone(),
            name: rows.name.clone(),
            keys: rows
                .keys
                .iter()
                .map(|key| key.values.iter().map(|value| value.text.clone()).collect())
                .collect(),
            whole: rows.whole,
        }
    }
}

/// One migration's database, and its place on each host.
pub struct RowsDatabase<'a> {
    pub migration_id: &'a str,
    pub database: &'a str,
    pub source_server: &'a str,
    pub target_server: &'a str,
}

/// What a round of the rows' verification came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowsVerified {
    /// The mark for the next round (the differing keys pending).
    pub mark: RowsMark,
    /// Change lines read on the source.
    pub changes: u64,
    /// Rows compared.
    pub rows: usize,
    /// What differs, in words (empty: all equal).
    pub mismatches: Vec<String>,
    /// Tables not verified, with why.
    pub unverified: Vec<String>,
}

/// A round of the verification of `database`'s rows: the source reads its
/// slot from `mark` (at most `max_changes` lines, 0 all) and fingerprints
/// the touched and pending keys, the target compares; each call at most
/// `timeout`.
pub async fn verify_rows(
    controller: &Controller,
    source: &Host,
    target: &Host,
    database: &RowsDatabase<'_>,
    mark: &RowsMark,
    max_changes: u32,
    timeout: Duration,
) -> Result<RowsVerified, CallFailure> {
    let read = agent(controller, source)?
        .verify_rows(request(
            v1::VerifyRowsRequest {
                migration_id: database.migration_id.to_owned(),
                server: database.source_server.to_owned(),
                database: database.database.to_owned(),
                advance_to: mark.through_lsn.clone(),
                max_changes,
                pending: mark.pending.iter().map(PendingRows::to_wire).collect(),
                ..v1::VerifyRowsRequest::default()
            },
            timeout,
        ))
        .await
        .map_err(|status| call_outcome(source, &status))?
        .into_inner();
    let rows = read.tables.iter().map(|table| table.keys.len()).sum();
    let unverified = read
        .tables
        .iter()
        .filter(|table| !table.unverified.is_empty())
        .map(|table| format!("{}.{}: {}", table.schema, table.name, table.unverified))
        .collect();
    let compared = agent(controller, target)?
        .verify_rows(request(
            v1::VerifyRowsRequest {
                migration_id: database.migration_id.to_owned(),
                server: database.target_server.to_owned(),
                database: database.database.to_owned(),
                compare: true,
                source: read.tables,
                ..v1::VerifyRowsRequest::default()
            },
            timeout,
        ))
        .await
        .map_err(|status| call_outcome(target, &status))?
        .into_inner();
    Ok(RowsVerified {
        mark: RowsMark {
            through_lsn: read.through_lsn,
            pending: compared
                .differing
                .iter()
                .map(PendingRows::from_wire)
                .collect(),
            unread_bytes: read.unread_bytes,
        },
        changes: read.changes,
        rows,
        mismatches: compared.mismatches,
        unverified,
    })
}

/// One key value of a MariaDB row, as the source's binary log gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MariadbKey {
    Number(String),
    Temporal(String),
    UnixTime(String),
    Bytes(Vec<u8>),
}

/// A MariaDB table whose rows differed at the last round, with its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MariadbPending {
    pub database: String,
    pub name: String,
    pub keys: Vec<Vec<MariadbKey>>,
}

/// Where the verification of the account's databases on one MariaDB
/// server stands between rounds: the next round reads the source's binary
/// log after `through_gtid` and checks the `pending` tables' keys again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MariadbRowsMark {
    pub through_gtid: String,
    pub pending: Vec<MariadbPending>,
}

fn key_to_wire(key: &[MariadbKey]) -> v1::MariadbRowKey {
    use v1::mariadb_key_value::Value;
    v1::MariadbRowKey {
        values: key
            .iter()
            .map(|value| v1::MariadbKeyValue {
                value: Some(match value {
                    MariadbKey::Number(text) => Value::Number(text.clone()),
                    MariadbKey::Temporal(text) => Value::Temporal(text.clone()),
                    MariadbKey::UnixTime(text) => Value::UnixTime(text.clone()),
                    MariadbKey::Bytes(bytes) => Value::Bytes(bytes.clone()),
                }),
            })
            .collect(),
    }
}

fn key_from_wire(key: &v1::MariadbRowKey) -> Option<Vec<MariadbKey>> {
    use v1::mariadb_key_value::Value;
    key.values
        .iter()
        .map(|value| {
            Some(match value.value.as_ref()? {
                Value::Number(text) => MariadbKey::Number(text.clone()),
                Value::Temporal(text) => MariadbKey::Temporal(text.clone()),
                Value::UnixTime(text) => MariadbKey::UnixTime(text.clone()),
                Value::Bytes(bytes) => MariadbKey::Bytes(bytes.clone()),
            })
        })
        .collect()
}

/// The account's databases on one MariaDB server of each host.
pub struct MariadbRowsDatabases<'a> {
    pub migration_id: &'a str,
    pub source_server: &'a str,
    pub target_server: &'a str,
    pub databases: &'a [String],
}

/// What a round of a MariaDB server's rows verification came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MariadbRowsVerified {
    pub mark: MariadbRowsMark,
    /// Rows compared.
    pub rows: usize,
    pub mismatches: Vec<String>,
    /// Tables not verified, with why, and what could not be tied to one.
    pub unverified: Vec<String>,
}

/// A round of the verification of `databases`' MariaDB rows: the source
/// reads its binary log after `mark` and fingerprints the touched and
/// pending keys, the target compares; each call at most `timeout`.
pub async fn verify_mariadb_rows(
    controller: &Controller,
    source: &Host,
    target: &Host,
    databases: &MariadbRowsDatabases<'_>,
    mark: &MariadbRowsMark,
    timeout: Duration,
) -> Result<MariadbRowsVerified, CallFailure> {
    let read = agent(controller, source)?
        .verify_mariadb_rows(request(
            v1::VerifyMariadbRowsRequest {
                migration_id: databases.migration_id.to_owned(),
                server: databases.source_server.to_owned(),
                databases: databases.databases.to_vec(),
                from_gtid: mark.through_gtid.clone(),
                pending: mark
                    .pending
                    .iter()
                    .map(|pending| v1::MariadbTableRows {
                        database: pending.database.clone(),
                        name: pending.name.clone(),
                        keys: pending.keys.iter().map(|key| key_to_wire(key)).collect(),
                        ..v1::MariadbTableRows::default()
                    })
                    .collect(),
                ..v1::VerifyMariadbRowsRequest::default()
            },
            timeout,
        ))
        .await
        .map_err(|status| call_outcome(source, &status))?
        .into_inner();
    let rows = read.tables.iter().map(|table| table.keys.len()).sum();
    let mut unverified: Vec<String> = read
        .tables
        .iter()
        .filter(|table| !table.unverified.is_empty())
        .map(|table| format!("{}.{}: {}", table.database, table.name, table.unverified))
        .collect();
    unverified.extend(read.notes.iter().cloned());
    let compared = agent(controller, target)?
        .verify_mariadb_rows(request(
            v1::VerifyMariadbRowsRequest {
                migration_id: databases.migration_id.to_owned(),
                server: databases.target_server.to_owned(),
                databases: databases.databases.to_vec(),
                compare: true,
                source: read.tables,
                ..v1::VerifyMariadbRowsRequest::default()
            },
            timeout,
        ))
        .await
        .map_err(|status| call_outcome(target, &status))?
        .into_inner();
    Ok(MariadbRowsVerified {
        mark: MariadbRowsMark {
            through_gtid: read.through_gtid,
            pending: compared
                .differing
                .iter()
                .map(|table| MariadbPending {
                    database: table.database.clone(),
                    name: table.name.clone(),
                    keys: table.keys.iter().filter_map(key_from_wire).collect(),
                })
                .collect(),
        },
        rows,
        mismatches: compared.mismatches,
        unverified,
    })
}
