//! The fingerprint of touched rows on one side (one client run per table,
//! chunked `IN` lists of literals this module writes), of a whole table
//! (for the tables [`super::Touched::whole`] names), and the comparison
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
    let key_columns: Vec<&Column> = shape.key_columns().map_err(|reason| VerifyError::NoKey {
        table: table.clone(),
        reason,
    })?;
    let shown_keys: Vec<String> = key_columns
        .iter()
        .map(|column| format!("HEX(CAST({} AS BINARY))", ident(&column.name)))
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
        "SELECT {shown}, {md5} FROM {database}.{name} WHERE ({names}) IN ({tuples});\n",
        shown = shown_keys.join(", "),
        md5 = row_md5(shape),
        database = ident(&table.database),
        name = ident(&table.name),
        names = names.join(", "),
        tuples = tuples.join(", "),
    ))
}

/// The row's MD5: of each column's MD5 in column order (`N` for NULL),
/// joined by `|` (no column's value is copied whole into one string, so
/// no row is too long for `max_allowed_packet`).
fn row_md5(shape: &Table) -> String {
    let hashed: Vec<String> = shape
        .columns
        .iter()
        .map(|column| format!("IFNULL(MD5({}), 'N')", ident(&column.name)))
        .collect();
    format!("MD5(CONCAT_WS('|', {}))", hashed.join(", "))
}

/// A table's rows on one side: the key as the server renders it (each
/// column's text form, as bytes) to the row's MD5; for a table without a
/// key ([`fingerprint_whole`] only), the row's MD5 to how many rows have
/// it.
pub type Fingerprints = BTreeMap<Vec<Vec<u8>>, String>;

/// The fingerprints of every row of `table` on one side, in one client
/// run: the cost is the table's size, so the caller bounds which tables
/// it verifies whole. A keyed table's are keyed as [`fingerprint`]'s; a
/// keyless table's are its rows' MD5s, counted.
pub async fn fingerprint_whole(
    server: &MariadbServer,
    table: &TableName,
    shape: &Table,
) -> Result<Fingerprints, VerifyError> {
    let from = format!("{}.{}", ident(&table.database), ident(&table.name));
    let md5 = row_md5(shape);
    let key = match &shape.key {
        Ok(_) => Some(shape.key_columns().map_err(|reason| VerifyError::NoKey {
            table: table.clone(),
            reason,
        })?),
        Err(_) => None,
    };
    let (sql, width) = match &key {
        Some(columns) => {
            let shown: Vec<String> = columns
                .iter()
                .map(|column| format!("HEX(CAST({} AS BINARY))", ident(&column.name)))
                .collect();
            (
                format!("SELECT {}, {md5} FROM {from};\n", shown.join(", ")),
                columns.len(),
            )
        }
        None => (
            format!("SELECT {md5}, COUNT(*) FROM {from} GROUP BY 1;\n"),
            0,
        ),
    };
    let rows = client::query(server, &sql, None).await?;
    let mut fingerprints = Fingerprints::new();
    for row in rows {
        let parsed = match &key {
            Some(_) => keyed_row(&row, width),
            None => (row.len() == 2
                && is_md5(&row[0])
                && !row[1].is_empty()
                && row[1].bytes().all(|b| b.is_ascii_digit()))
            .then(|| (vec![row[0].as_bytes().to_vec()], row[1].clone())),
        };
        let Some((key, value)) = parsed else {
            return Err(unexpected(server, &row));
        };
        fingerprints.insert(key, value);
    }
    Ok(fingerprints)
}

fn is_md5(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A keyed fingerprint row: `width` hex key columns, then the MD5.
fn keyed_row(row: &[String], width: usize) -> Option<(Vec<Vec<u8>>, String)> {
    if row.len() != width + 1 || !is_md5(&row[width]) {
        return None;
    }
    let key: Option<Vec<Vec<u8>>> = row[..width].iter().map(|h| unhex(h)).collect();
    key.map(|key| (key, row[width].clone()))
}

fn unexpected(server: &MariadbServer, row: &[String]) -> VerifyError {
    VerifyError::Unexpected {
        server: server.name.clone(),
        what: "a fingerprint query",
        line: row.join("\t"),
    }
}

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
        let (key, md5) = keyed_row(&row, width).ok_or_else(|| unexpected(server, &row))?;
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
    let names: Vec<&str> = shape
        .key_columns()
        .map(|columns| columns.iter().map(|column| column.name.as_str()).collect())
        .unwrap_or_default();
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
    if shape.key.is_err() {
        // Counted row MD5s ([`fingerprint_whole`] of a keyless table).
        return keys
            .into_iter()
            .filter_map(|md5| {
                let count = |side: &Fingerprints| side.get(md5).map_or("0", String::as_str).to_owned();
                let (on_source, on_target) = (count(source), count(target));
                (on_source != on_target).then(|| {
                    format!(
                        "{table} rows with MD5 {} ({on_source} on the source, {on_target} on the target)",
                        String::from_utf8_lossy(md5.first().map_or(&[][..], Vec::as_slice))
                    )
                })
            })
            .collect();
    }
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
