//! The fingerprint of touched rows on one side (one client run per table,
//! chunked `IN` lists of literals this module writes) and the comparison
//! of two sides' fingerprints.

use std::collections::{BTreeMap, BTreeSet};

use super::{Column, KeyValue, Table, TableName, VerifyError, shown_bytes, unhex};
use crate::config::MariadbServer;
use crate::transfer::mariadb::client::{self, ident};

/// Keys per `IN` list of a fingerprint query.
const CHUNK: usize = 500;

/// The fingerprint query of `keys` of `table` (at most `CHUNK` of them
/// per call is the caller's choice): per present key, its columns' text
/// forms in hex, then the row's MD5. `shape` must come from the catalog:
/// its names are written into the query (quoted).
pub fn fingerprint_sql(
    table: &TableName,
    shape: &Table,
    keys: &[Vec<KeyValue>],
) -> Result<String, VerifyError> {
    let key = shape.key.as_ref().map_err(|reason| VerifyError::NoKey {
        table: table.clone(),
        reason: reason.clone(),
    })?;
    let key_columns: Vec<&Column> = key.iter().map(|&i| &shape.columns[i]).collect();
    let shown_keys: Vec<String> = key_columns
        .iter()
        .map(|column| format!("HEX(CAST({} AS BINARY))", ident(&column.name)))
        .collect();
    let hashed: Vec<String> = shape
        .columns
        .iter()
        .map(|column| format!("IFNULL(MD5({}), 'N')", ident(&column.name)))
        .collect();
    let names: Vec<String> = key_columns.iter().map(|c| ident(&c.name)).collect();
    let tuples: Vec<String> = keys
        .iter()
        .filter(|values| values.len() == key_columns.len())
        .map(|values| {
            let literals: Vec<String> = values
                .iter()
                .zip(&key_columns)
                .map(|(value, column)| value.literal(column))
                .collect();
            format!("({})", literals.join(", "))
        })
        .collect();
    Ok(format!(
        "SELECT {shown}, MD5(CONCAT_WS('|', {hashed})) FROM {database}.{name} \
         WHERE ({names}) IN ({tuples});\n",
        shown = shown_keys.join(", "),
        hashed = hashed.join(", "),
        database = ident(&table.database),
        name = ident(&table.name),
        names = names.join(", "),
        tuples = tuples.join(", "),
    ))
}

/// A row's fingerprints on one side: the key as the server renders it
/// (each column's text form, as bytes) to the row's MD5.
pub type Fingerprints = BTreeMap<Vec<Vec<u8>>, String>;

/// The fingerprints of `keys` of `table` on one side, in one client run.
pub async fn fingerprint(
    server: &MariadbServer,
    table: &TableName,
    shape: &Table,
    keys: &BTreeSet<Vec<KeyValue>>,
) -> Result<Fingerprints, VerifyError> {
    let keys: Vec<Vec<KeyValue>> = keys.iter().cloned().collect();
    let mut sql = String::new();
    for chunk in keys.chunks(CHUNK) {
        sql.push_str(&fingerprint_sql(table, shape, chunk)?);
    }
    if sql.is_empty() {
        return Ok(Fingerprints::new());
    }
    let width = shape.key.as_ref().map_or(0, Vec::len);
    let rows = client::query(server, &sql, None).await?;
    let mut fingerprints = Fingerprints::new();
    for row in rows {
        let parsed = (row.len() == width + 1)
            .then(|| {
                let key: Option<Vec<Vec<u8>>> = row[..width].iter().map(|h| unhex(h)).collect();
                let md5 = &row[width];
                (md5.len() == 32)
                    .then_some(())
                    .and(key)
                    .map(|key| (key, md5.clone()))
            })
            .flatten();
        let Some((key, md5)) = parsed else {
            return Err(VerifyError::Unexpected {
                server: server.name.clone(),
                what: "a fingerprint query",
                line: row.join("\t"),
            });
        };
        fingerprints.insert(key, md5);
    }
    Ok(fingerprints)
}

/// The mismatches between the source's and the target's fingerprints of
/// `table`: `shop.orders id=7 (row differs)`, `(missing on the target)`,
/// `(only on the target)`; in key order.
pub fn compare(
    table: &TableName,
    shape: &Table,
    source: &Fingerprints,
    target: &Fingerprints,
) -> Vec<String> {
    let names: Vec<&str> = match &shape.key {
        Ok(key) => key
            .iter()
            .map(|&i| shape.columns[i].name.as_str())
            .collect(),
        Err(_) => Vec::new(),
    };
    let describe = |key: &Vec<Vec<u8>>, what: &str| {
        let parts: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let shown = match std::str::from_utf8(value) {
                    Ok(text) if is_plain_number(text) => text.to_owned(),
                    _ => shown_bytes(value),
                };
                format!("{}={shown}", names.get(i).copied().unwrap_or("?"))
            })
            .collect();
        format!("{table} {} ({what})", parts.join(" "))
    };
    let keys: BTreeSet<&Vec<Vec<u8>>> = source.keys().chain(target.keys()).collect();
    keys.into_iter()
        .filter_map(|key| match (source.get(key), target.get(key)) {
            (Some(a), Some(b)) if a == b => None,
            (Some(_), Some(_)) => Some(describe(key, "row differs")),
            (Some(_), None) => Some(describe(key, "missing on the target")),
            (None, Some(_)) => Some(describe(key, "only on the target")),
            (None, None) => None,
        })
        .collect()
}

fn is_plain_number(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !digits.starts_with('.')
}
