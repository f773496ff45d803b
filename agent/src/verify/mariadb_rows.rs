//! `Agent/VerifyMariadbRows` (verify.proto): the rounds of a migration's
//! MariaDB rows verification on one server, built on [`super::mariadb`].
//! On the source ([`source_round`]): the binary log from the last round's
//! position to the server's position now names the touched keys, which,
//! with the pending ones, are fingerprinted; on the target
//! ([`target_compare`]): the same keys fingerprinted with its own catalog
//! and compared. A table whose keys differ is answered with all its keys
//! of the round, to be checked again (the target lags while the account
//! writes). Tables without a usable key, or named by a DDL or TRUNCATE in
//! the range, are answered as not verified, with why.

use std::collections::BTreeSet;
use std::time::Instant;

use navette_proto::v1::{
    MariadbFingerprint, MariadbKeyValue, MariadbRowKey, MariadbTableRows, VerifyMariadbRowsRequest,
    VerifyMariadbRowsResponse, mariadb_key_value,
};

use super::mariadb::{self, Fingerprints, KeyValue, TableName, VerifyError};
use crate::config::MariadbServer;
use crate::transfer::mariadb::client;

fn to_wire(key: &[KeyValue]) -> MariadbRowKey {
    use mariadb_key_value::Value;
    MariadbRowKey {
        values: key
            .iter()
            .map(|value| MariadbKeyValue {
                value: Some(match value {
                    KeyValue::Number(text) => Value::Number(text.clone()),
                    KeyValue::Temporal(text) => Value::Temporal(text.clone()),
                    KeyValue::UnixTime(text) => Value::UnixTime(text.clone()),
                    KeyValue::Bytes(bytes) => Value::Bytes(bytes.clone()),
                }),
            })
            .collect(),
    }
}

/// A key from the wire; `None` when a value is missing. Numbers and times
/// are checked again when written into a query.
fn from_wire(key: &MariadbRowKey) -> Option<Vec<KeyValue>> {
    use mariadb_key_value::Value;
    key.values
        .iter()
        .map(|value| {
            Some(match value.value.as_ref()? {
                Value::Number(text) => KeyValue::Number(text.clone()),
                Value::Temporal(text) => KeyValue::Temporal(text.clone()),
                Value::UnixTime(text) => KeyValue::UnixTime(text.clone()),
                Value::Bytes(bytes) => KeyValue::Bytes(bytes.clone()),
            })
        })
        .collect()
}

fn fingerprints_to_wire(fingerprints: &Fingerprints) -> Vec<MariadbFingerprint> {
    fingerprints
        .iter()
        .map(|(key, md5)| MariadbFingerprint {
            key: key.clone(),
            md5: md5.clone(),
        })
        .collect()
}

fn fingerprints_from_wire(fingerprints: &[MariadbFingerprint]) -> Fingerprints {
    fingerprints
        .iter()
        .map(|f| (f.key.clone(), f.md5.clone()))
        .collect()
}

fn table_of(rows: &MariadbTableRows) -> TableName {
    TableName {
        database: rows.database.clone(),
        name: rows.name.clone(),
    }
}

/// A round on the source.
pub async fn source_round(
    server: &MariadbServer,
    ask: &VerifyMariadbRowsRequest,
) -> Result<VerifyMariadbRowsResponse, VerifyError> {
    let started = Instant::now();
    let to = client::gtid_binlog_pos(server).await?;
    // Nothing logged since the last round and nothing pending: no catalog
    // or binary log to read.
    if ask.pending.is_empty() && mariadb::binlog_range(&ask.from_gtid, &to)?.is_none() {
        return Ok(VerifyMariadbRowsResponse {
            through_gtid: to,
            elapsed_ms: started.elapsed().as_millis() as u64,
            ..VerifyMariadbRowsResponse::default()
        });
    }
    let catalog = mariadb::read_catalog(server, &ask.databases).await?;
    let mut touched =
        mariadb::touched_between(server, &ask.databases, &catalog, &ask.from_gtid, &to).await?;
    for pending in &ask.pending {
        let table = table_of(pending);
        if !pending.unverified.is_empty() {
            touched.mark_whole(&table, pending.unverified.clone());
        }
        let keys: Vec<Vec<KeyValue>> = pending.keys.iter().filter_map(from_wire).collect();
        touched.keys.entry(table).or_default().extend(keys);
    }
    let mut tables = Vec::new();
    for (table, reason) in &touched.whole {
        tables.push(MariadbTableRows {
            database: table.database.clone(),
            name: table.name.clone(),
            unverified: reason.clone(),
            ..MariadbTableRows::default()
        });
    }
    for (table, keys) in &touched.keys {
        if touched.whole.contains_key(table) || keys.is_empty() {
            continue;
        }
        let mut rows = MariadbTableRows {
            database: table.database.clone(),
            name: table.name.clone(),
            keys: keys.iter().map(|key| to_wire(key)).collect(),
            ..MariadbTableRows::default()
        };
        match catalog.tables.get(table) {
            None => rows.unverified = "not a table of the source any more".to_owned(),
            Some(shape) => {
                let found = mariadb::fingerprint(server, table, shape, keys).await?;
                rows.fingerprints = fingerprints_to_wire(&found);
            }
        }
        tables.push(rows);
    }
    Ok(VerifyMariadbRowsResponse {
        tables,
        through_gtid: to,
        notes: touched.notes,
        elapsed_ms: started.elapsed().as_millis() as u64,
        ..VerifyMariadbRowsResponse::default()
    })
}

/// On the target: the source's tables' keys fingerprinted with this
/// side's catalog, and compared.
pub async fn target_compare(
    server: &MariadbServer,
    ask: &VerifyMariadbRowsRequest,
) -> Result<VerifyMariadbRowsResponse, VerifyError> {
    let started = Instant::now();
    if ask.source.iter().all(|rows| !rows.unverified.is_empty()) {
        return Ok(VerifyMariadbRowsResponse::default());
    }
    let catalog = mariadb::read_catalog(server, &ask.databases).await?;
    let mut mismatches = Vec::new();
    let mut differing = Vec::new();
    for source in ask.source.iter().filter(|rows| rows.unverified.is_empty()) {
        let table = table_of(source);
        let keys: BTreeSet<Vec<KeyValue>> = source.keys.iter().filter_map(from_wire).collect();
        let found = match catalog.tables.get(&table) {
            None => Err(format!("{table} (not on the target)")),
            Some(shape) => match mariadb::fingerprint(server, &table, shape, &keys).await {
                Ok(found) => Ok(mariadb::compare(
                    &table,
                    shape,
                    &fingerprints_from_wire(&source.fingerprints),
                    &found,
                )),
                // A column the copy lacks, a key it cannot take.
                Err(VerifyError::Client(error)) => {
                    Err(format!("{table} (cannot be read on the target: {error})"))
                }
                Err(error) => return Err(error),
            },
        };
        let differs = match found {
            Ok(words) => words,
            Err(why) => vec![why],
        };
        if !differs.is_empty() {
            mismatches.extend(differs);
            differing.push(MariadbTableRows {
                database: source.database.clone(),
                name: source.name.clone(),
                keys: source.keys.clone(),
                ..MariadbTableRows::default()
            });
        }
    }
    Ok(VerifyMariadbRowsResponse {
        mismatches,
        differing,
        elapsed_ms: started.elapsed().as_millis() as u64,
        ..VerifyMariadbRowsResponse::default()
    })
}

/// The status a verification error is answered with: a position that
/// cannot be read is the caller's; the rest may pass (retry).
pub fn status(error: &VerifyError) -> tonic::Status {
    let message = crate::error_chain(error);
    match error {
        VerifyError::BadPosition(_) | VerifyError::Backwards { .. } => {
            tonic::Status::failed_precondition(message)
        }
        _ => tonic::Status::unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cross_the_wire_unchanged() {
        let key = vec![
            KeyValue::Number("-7".into()),
            KeyValue::Temporal("2026-12-02 10:00:00".into()),
            KeyValue::UnixTime("1764669600".into()),
            KeyValue::Bytes(b"it's\n".to_vec()),
        ];
        assert_eq!(from_wire(&to_wire(&key)), Some(key));
        assert_eq!(
            from_wire(&MariadbRowKey {
                values: vec![MariadbKeyValue { value: None }]
            }),
            None
        );
    }
}
