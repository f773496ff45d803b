//! The rows of a migration's PostgreSQL database that changed since the
//! last verification, fingerprinted on the source and on the target and
//! compared (`Agent/VerifyRows`, verify.proto).
//!
//! The source keeps a logical slot of its own for the migration
//! ([`create_slot`], made with the replication before the copy), with the
//! `test_decoding` plugin: its lines name every committed change, each
//! with the row's replica identity (primary key, identity index, or every
//! column for `REPLICA IDENTITY FULL`). A round on the source
//! ([`source_round`]) moves the slot to where the controller recorded the
//! previous round's end, reads the lines after it (peeked, so an
//! unrecorded round is read again), gathers the touched keys per table
//! with the keys still pending, and fingerprints those rows; the target
//! ([`target_compare`]) fingerprints the same keys in its copy and lists
//! what differs. A key's fingerprint is the MD5 of its row's text form, or
//! "" when no row has it; for a table without a key, how many rows equal
//! the whole tuple. A table truncated (or whose change named no usable
//! key) is compared whole when small, and otherwise reported unverified,
//! never passed in silence.
//!
//! Both sides read in one `REPEATABLE READ READ ONLY` transaction, each
//! table as its owner (`SET LOCAL ROLE`, with the copy sessions' settings:
//! `search_path = pg_catalog`, the same text output on both sides): the
//! customer's functions (a type's equality, a policy) never run with more
//! than the customer's power. Key values are bound as parameters, parsed
//! by the column's type on each side; names and types written into the
//! queries come from each side's own catalog.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use navette_proto::v1::{KeyValue, RowKey, TableRows, VerifyRowsRequest, VerifyRowsResponse};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::postgres::{TableName, Touched, parse_change, split_table};
use crate::config::PostgresqlServer;
use crate::replication::postgres::source::check_lsn;
use crate::replication::postgres::{Names, ReplicationError, connect};
use crate::transfer::postgres::session::{qualified, quote_ident};

/// Keys per fingerprint query (each binds one parameter per key column).
const CHUNK: usize = 500;

/// The largest table compared whole (its relation's size).
const WHOLE_LIMIT_BYTES: i64 = 32 << 20;

/// The most differences a target's answer names in words.
const NAMED: usize = 20;

fn query(
    server: &str,
    what: &str,
) -> impl FnOnce(tokio_postgres::Error) -> ReplicationError + use<> {
    ReplicationError::query(server, what)
}

/// Creates the verification slot `slot` on `client`'s database, unless it
/// exists (a retry keeps it: it then names a few changes more).
pub async fn create_slot(
    client: &Client,
    server: &str,
    slot: &str,
) -> Result<(), ReplicationError> {
    if !slot_exists(client, server, slot).await? {
        client
            .execute(
                "SELECT 1 FROM pg_catalog.pg_create_logical_replication_slot($1, 'test_decoding')",
                &[&slot],
            )
            .await
            .map_err(query(server, "creating the verification slot"))?;
    }
    Ok(())
}

async fn slot_exists(client: &Client, server: &str, slot: &str) -> Result<bool, ReplicationError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query(server, "looking for the verification slot"))?
        .is_some())
}

/// A table as one side's catalog describes it.
#[derive(Debug, Clone)]
struct TableSpec {
    owner: String,
    /// The key's columns and their types (`format_type`), in order.
    key: Vec<(String, String)>,
    /// `REPLICA IDENTITY FULL`: the key is every column, rows counted.
    full: bool,
    bytes: i64,
}

impl TableSpec {
    fn key_names(&self) -> Vec<String> {
        self.key.iter().map(|(name, _)| name.clone()).collect()
    }
}

async fn table_spec(
    client: &Client,
    server: &str,
    table: &TableName,
) -> Result<Option<TableSpec>, ReplicationError> {
    let read = || {
        query(
            server,
            &format!("reading {}.{}'s key", table.schema, table.name),
        )
    };
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, pg_catalog.pg_get_userbyid(c.relowner)::text, \
                    pg_catalog.pg_relation_size(c.oid) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(read())?
    else {
        return Ok(None);
    };
    let oid: u32 = row.try_get(0).map_err(read())?;
    let identity: String = row.try_get(1).map_err(read())?;
    let owner: String = row.try_get(2).map_err(read())?;
    let bytes: i64 = row.try_get(3).map_err(read())?;
    let columns = match identity.as_str() {
        "f" => {
            client
                .query(
                    "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
                     FROM pg_catalog.pg_attribute a \
                     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                    &[&oid],
                )
                .await
        }
        "d" | "i" => {
            client
                .query(
                    "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
                     FROM pg_catalog.pg_index i \
                     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = $1 AND CASE WHEN $2 = 'd' THEN i.indisprimary ELSE i.indisreplident END \
                     ORDER BY k.ord",
                    &[&oid, &identity],
                )
                .await
        }
        _ => Ok(Vec::new()),
    }
    .map_err(read())?;
    let mut key = Vec::with_capacity(columns.len());
    for column in columns {
        key.push((
            column.try_get(0).map_err(read())?,
            column.try_get(1).map_err(read())?,
        ));
    }
    Ok(Some(TableSpec {
        owner,
        key,
        full: identity == "f",
        bytes,
    }))
}

/// `schema.name` for people.
fn display(table: &TableName) -> String {
    format!("{}.{}", table.schema, table.name)
}

fn to_key(values: &[Option<String>]) -> RowKey {
    RowKey {
        values: values
            .iter()
            .map(|text| KeyValue { text: text.clone() })
            .collect(),
    }
}

fn from_key(key: &RowKey) -> Vec<Option<String>> {
    key.values.iter().map(|value| value.text.clone()).collect()
}

/// One round on the source: the slot moved to `advance_to`, its lines
/// read (at most `max_changes`, 0 all), the touched and pending keys
/// fingerprinted.
pub async fn source_round(
    server: &PostgresqlServer,
    ask: &VerifyRowsRequest,
) -> Result<VerifyRowsResponse, ReplicationError> {
    let started = Instant::now();
    let name = server.name.as_str();
    let slot = Names::new(&ask.migration_id, &ask.database).verify_slot;
    let client = connect(server, &ask.database).await?;
    if !slot_exists(&client, name, &slot).await? {
        return Err(ReplicationError::NoSlot {
            server: name.to_owned(),
            slot,
        });
    }
    if !ask.advance_to.is_empty() {
        check_lsn(&ask.advance_to)?;
        client
            .execute(
                "SELECT pg_catalog.pg_replication_slot_advance(slot_name, $2::text::pg_lsn) \
                 FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
                &[&slot, &ask.advance_to],
            )
            .await
            .map_err(query(name, "moving the verification slot"))?;
    }
    // Everything committed up to here is in the lines read below.
    let flushed: String = client
        .query_one("SELECT pg_catalog.pg_current_wal_flush_lsn()::text", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(query(name, "reading the flushed position"))?;
    let cap: Option<i32> =
        (ask.max_changes > 0).then(|| i32::try_from(ask.max_changes).unwrap_or(i32::MAX));
    let rows = client
        .query(
            "SELECT lsn::text, data FROM pg_catalog.pg_logical_slot_peek_changes(\
             $1, NULL, $2, 'include-xids', '0', 'skip-empty-xacts', '1')",
            &[&slot, &cap],
        )
        .await
        .map_err(query(name, "reading the verification slot"))?;
    let capped = cap.is_some_and(|cap| rows.len() >= cap as usize);
    let through_lsn = match rows.last() {
        Some(last) if capped => last
            .try_get(0)
            .map_err(query(name, "reading the verification slot"))?,
        _ => flushed,
    };
    let mut changes = Vec::new();
    let mut whole: BTreeSet<TableName> = BTreeSet::new();
    for row in &rows {
        let line: String = row
            .try_get(1)
            .map_err(query(name, "reading the verification slot"))?;
        match parse_change(&line) {
            Ok(Some(change)) => changes.push(change),
            Ok(None) => {}
            Err(error) => match split_table(&error.table) {
                Some((schema, name)) => {
                    whole.insert(TableName { schema, name });
                }
                None => {
                    return Err(ReplicationError::BadRequest(format!(
                        "a change of the verification slot could not be read ({error}); the rows are not verified"
                    )));
                }
            },
        }
    }
    let mut specs: BTreeMap<TableName, Option<TableSpec>> = BTreeMap::new();
    for table in changes
        .iter()
        .map(|change| &change.table)
        .chain(whole.iter())
    {
        if !specs.contains_key(table) {
            let spec = table_spec(&client, name, table).await?;
            specs.insert(table.clone(), spec);
        }
    }
    let mut touched = Touched {
        whole,
        ..Touched::default()
    };
    for change in &changes {
        let key = specs
            .get(&change.table)
            .and_then(|spec| spec.as_ref())
            .map(TableSpec::key_names);
        touched.add(change, key.as_deref());
    }
    for pending in &ask.pending {
        let table = TableName {
            schema: pending.schema.clone(),
            name: pending.name.clone(),
        };
        if !specs.contains_key(&table) {
            let spec = table_spec(&client, name, &table).await?;
            specs.insert(table.clone(), spec);
        }
        if pending.whole {
            touched.whole.insert(table.clone());
        }
        let keys = touched.keys.entry(table).or_default();
        keys.extend(pending.keys.iter().map(from_key));
    }
    let mut wanted: BTreeMap<TableName, TableRows> = BTreeMap::new();
    for (table, keys) in touched.keys {
        let rows = wanted.entry(table.clone()).or_insert_with(|| TableRows {
            schema: table.schema.clone(),
            name: table.name.clone(),
            ..TableRows::default()
        });
        rows.keys = keys.iter().map(|key| to_key(key)).collect();
    }
    for table in touched.whole {
        let rows = wanted.entry(table.clone()).or_insert_with(|| TableRows {
            schema: table.schema.clone(),
            name: table.name.clone(),
            ..TableRows::default()
        });
        rows.whole = true;
    }
    let tables = fingerprint_all(&client, name, &specs, wanted.into_values().collect()).await?;
    let unread: i64 = client
        .query_one(
            "SELECT greatest(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), $1::text::pg_lsn), 0)::bigint",
            &[&through_lsn],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(query(name, "reading the current position"))?;
    Ok(VerifyRowsResponse {
        tables,
        through_lsn,
        unread_bytes: unread.max(0) as u64,
        changes: changes.len() as u64,
        mismatches: Vec::new(),
        differing: Vec::new(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Fingerprints each of `tables` (keys and `whole` set, fingerprints
/// empty) with `specs` from this side's catalog, in one snapshot.
async fn fingerprint_all(
    client: &Client,
    server: &str,
    specs: &BTreeMap<TableName, Option<TableSpec>>,
    mut tables: Vec<TableRows>,
) -> Result<Vec<TableRows>, ReplicationError> {
    if tables.is_empty() {
        return Ok(tables);
    }
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(query(server, "starting the verification's snapshot"))?;
    for rows in &mut tables {
        let table = TableName {
            schema: rows.schema.clone(),
            name: rows.name.clone(),
        };
        let Some(Some(spec)) = specs.get(&table) else {
            rows.unverified = "not a table on this server any more".to_owned();
            rows.keys.clear();
            rows.whole = false;
            continue;
        };
        rows.key_columns = spec.key_names();
        client
            .batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(&spec.owner)))
            .await
            .map_err(query(
                server,
                &format!("becoming {}'s owner", display(&table)),
            ))?;
        if rows.whole {
            if spec.bytes > WHOLE_LIMIT_BYTES {
                rows.unverified = format!(
                    "changed without a key (truncated, or a change naming no key) and {} MB: not compared whole inside the freeze",
                    spec.bytes >> 20
                );
            } else {
                rows.whole_fingerprint = whole_fingerprint(client, server, &table).await?;
            }
        }
        if spec.key.is_empty() {
            rows.keys.clear();
        }
        let keys: Vec<Vec<Option<String>>> = rows.keys.iter().map(from_key).collect();
        rows.fingerprints = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            let found = key_fingerprints(client, server, &table, spec, chunk).await?;
            rows.fingerprints.extend(found);
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(query(server, "ending the verification's snapshot"))?;
    Ok(tables)
}

/// The whole table's row count and the MD5 of its rows in byte order.
async fn whole_fingerprint(
    client: &Client,
    server: &str,
    table: &TableName,
) -> Result<String, ReplicationError> {
    client
        .query_one(
            &format!(
                "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, E'\\n' \
                 ORDER BY t::text COLLATE \"C\")), '') FROM {} AS t",
                qualified(&table.schema, &table.name)
            ),
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(query(server, &format!("fingerprinting {}", display(table))))
}

/// The query fingerprinting `keys` keys of a table with `spec`: per key,
/// in order, the MD5 of its row's text (NULL: no such row) or, for a
/// table without a key, how many rows have exactly that text form in
/// every column. Each key value is a text parameter cast to its column's
/// type.
fn fingerprint_sql(table: &TableName, spec: &TableSpec, keys: usize) -> String {
    let width = spec.key.len();
    let mut tuples = Vec::with_capacity(keys);
    for row in 0..keys {
        let parameter = |column: usize| row * width + column + 1;
        let values: Vec<String> = spec
            .key
            .iter()
            .enumerate()
            .map(|(column, (_, type_name))| {
                let p = parameter(column);
                if spec.full {
                    format!(
                        "CASE WHEN ${p}::text IS NULL THEN NULL ELSE format('%s', (${p}::text)::{type_name}) END"
                    )
                } else {
                    format!("(${p}::text)::{type_name}")
                }
            })
            .collect();
        if spec.full {
            tuples.push(format!(
                "({}, ARRAY[{}]::text[])",
                row + 1,
                values.join(", ")
            ));
        } else {
            tuples.push(format!("({}, {})", row + 1, values.join(", ")));
        }
    }
    let relation = qualified(&table.schema, &table.name);
    if spec.full {
        let columns: Vec<String> = spec
            .key
            .iter()
            .map(|(name, _)| {
                let column = format!("t.{}", quote_ident(name));
                format!("CASE WHEN {column} IS NULL THEN NULL ELSE format('%s', {column}) END")
            })
            .collect();
        format!(
            "SELECT v.i, count(t.ctid)::text FROM (VALUES {tuples}) AS v(i, k) \
             LEFT JOIN {relation} AS t ON ARRAY[{columns}]::text[] = v.k \
             GROUP BY v.i ORDER BY v.i",
            tuples = tuples.join(", "),
            columns = columns.join(", "),
        )
    } else {
        let aliases: Vec<String> = (1..=width).map(|n| format!("k{n}")).collect();
        let on: Vec<String> = spec
            .key
            .iter()
            .zip(&aliases)
            .map(|((name, _), alias)| format!("t.{} = v.{alias}", quote_ident(name)))
            .collect();
        format!(
            "SELECT v.i, md5(t::text) FROM (VALUES {tuples}) AS v(i, {aliases}) \
             LEFT JOIN {relation} AS t ON {on} ORDER BY v.i",
            tuples = tuples.join(", "),
            aliases = aliases.join(", "),
            on = on.join(" AND "),
        )
    }
}

async fn key_fingerprints(
    client: &Client,
    server: &str,
    table: &TableName,
    spec: &TableSpec,
    keys: &[Vec<Option<String>>],
) -> Result<Vec<String>, ReplicationError> {
    let what = || format!("fingerprinting rows of {}", display(table));
    let width = spec.key.len();
    // A key of another width (a pending one from before a schema change)
    // cannot be looked up: its row counts as absent.
    let blank: Vec<Option<String>> = vec![None; width];
    let values: Vec<&Option<String>> = keys
        .iter()
        .flat_map(|key| {
            if key.len() == width {
                key.iter().collect::<Vec<_>>()
            } else {
                blank.iter().collect()
            }
        })
        .collect();
    let parameters: Vec<&(dyn ToSql + Sync)> = values
        .iter()
        .map(|value| *value as &(dyn ToSql + Sync))
        .collect();
    let rows = client
        .query(&fingerprint_sql(table, spec, keys.len()), &parameters)
        .await
        .map_err(query(server, &what()))?;
    let mut found = vec![String::new(); keys.len()];
    for row in rows {
        let index: i32 = row.try_get(0).map_err(query(server, &what()))?;
        let fingerprint: Option<String> = row.try_get(1).map_err(query(server, &what()))?;
        if let Some(slot) = usize::try_from(index - 1)
            .ok()
            .and_then(|at| found.get_mut(at))
        {
            *slot = fingerprint.unwrap_or_default();
        }
    }
    if spec.full {
        // No row equal: a count of 0, as on the side that has none.
        for count in &mut found {
            if count == "0" {
                count.clear();
            }
        }
    }
    Ok(found)
}

/// On the target: the same keys fingerprinted in its copy and compared
/// with the source's.
pub async fn target_compare(
    server: &PostgresqlServer,
    ask: &VerifyRowsRequest,
) -> Result<VerifyRowsResponse, ReplicationError> {
    let started = Instant::now();
    let name = server.name.as_str();
    let client = connect(server, &ask.database).await?;
    let mut specs: BTreeMap<TableName, Option<TableSpec>> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut differing = Vec::new();
    let mut asked = Vec::new();
    let mut asked_from: Vec<&TableRows> = Vec::new();
    for source in &ask.source {
        if !source.unverified.is_empty() {
            continue;
        }
        let table = TableName {
            schema: source.schema.clone(),
            name: source.name.clone(),
        };
        let spec = table_spec(&client, name, &table).await?;
        let differs = match &spec {
            None => Some(format!("{} (not on the target)", display(&table))),
            Some(spec) if spec.key_names() != source.key_columns => Some(format!(
                "{} (its key is ({}) on the source, ({}) on the target)",
                display(&table),
                source.key_columns.join(", "),
                spec.key_names().join(", ")
            )),
            Some(_) => None,
        };
        if let Some(why) = differs {
            mismatches.push(why);
            differing.push(TableRows {
                schema: source.schema.clone(),
                name: source.name.clone(),
                whole: true,
                ..TableRows::default()
            });
            continue;
        }
        specs.insert(table, spec);
        asked.push(TableRows {
            schema: source.schema.clone(),
            name: source.name.clone(),
            keys: source.keys.clone(),
            whole: source.whole,
            ..TableRows::default()
        });
        asked_from.push(source);
    }
    let ours = fingerprint_all(&client, name, &specs, asked).await?;
    for (mine, theirs) in ours.iter().zip(asked_from) {
        let full = specs
            .get(&TableName {
                schema: mine.schema.clone(),
                name: mine.name.clone(),
            })
            .and_then(|spec| spec.as_ref())
            .is_some_and(|spec| spec.full);
        let table = display(&TableName {
            schema: mine.schema.clone(),
            name: mine.name.clone(),
        });
        let mut differs = TableRows {
            schema: mine.schema.clone(),
            name: mine.name.clone(),
            ..TableRows::default()
        };
        if theirs.whole && mine.whole_fingerprint != theirs.whole_fingerprint {
            let count = |fingerprint: &str| {
                fingerprint
                    .split_once(':')
                    .map(|(count, _)| count.to_owned())
                    .unwrap_or_default()
            };
            mismatches.push(format!(
                "{table} (the table differs: {} rows on the source, {} on the target)",
                count(&theirs.whole_fingerprint),
                count(&mine.whole_fingerprint)
            ));
            differs.whole = true;
        }
        for ((key, source), target) in theirs
            .keys
            .iter()
            .zip(&theirs.fingerprints)
            .zip(&mine.fingerprints)
        {
            if source == target {
                continue;
            }
            let how = match (source.is_empty(), target.is_empty()) {
                (false, true) => "not on the target".to_owned(),
                (true, false) => "only on the target".to_owned(),
                _ if full => format!("{source} such rows on the source, {target} on the target"),
                _ => "row differs".to_owned(),
            };
            mismatches.push(format!(
                "{table} {} ({how})",
                key_words(&theirs.key_columns, key)
            ));
            differs.keys.push(key.clone());
        }
        if differs.whole || !differs.keys.is_empty() {
            differing.push(differs);
        }
    }
    let total = mismatches.len();
    if total > NAMED {
        mismatches.truncate(NAMED);
        mismatches.push(format!("and {} more rows", total - NAMED));
    }
    Ok(VerifyRowsResponse {
        tables: Vec::new(),
        through_lsn: String::new(),
        unread_bytes: 0,
        changes: 0,
        mismatches,
        differing,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// `id=7, at='2026-12-02'` (long values cut).
fn key_words(columns: &[String], key: &RowKey) -> String {
    let words: Vec<String> = columns
        .iter()
        .zip(&key.values)
        .take(4)
        .map(|(column, value)| match &value.text {
            None => format!("{column}=NULL"),
            Some(text) if text.chars().count() > 24 => {
                format!("{column}={:?}…", text.chars().take(24).collect::<String>())
            }
            Some(text) => format!("{column}={text:?}"),
        })
        .collect();
    let more = if columns.len() > 4 { ", …" } else { "" };
    format!("{}{more}", words.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &[(&str, &str)], full: bool) -> TableSpec {
        TableSpec {
            owner: "o".into(),
            key: key
                .iter()
                .map(|(name, type_name)| ((*name).to_owned(), (*type_name).to_owned()))
                .collect(),
            full,
            bytes: 0,
        }
    }

    #[test]
    fn keyed_and_keyless_queries() {
        let table = TableName {
            schema: "public".into(),
            name: "orders".into(),
        };
        let keyed = fingerprint_sql(&table, &spec(&[("id", "integer")], false), 2);
        assert_eq!(
            keyed,
            "SELECT v.i, md5(t::text) FROM (VALUES (1, ($1::text)::integer), (2, ($2::text)::integer)) \
             AS v(i, k1) LEFT JOIN \"public\".\"orders\" AS t ON t.\"id\" = v.k1 ORDER BY v.i"
        );
        let keyless = fingerprint_sql(&table, &spec(&[("a", "integer"), ("b", "text")], true), 1);
        assert!(
            keyless.contains(
                "ARRAY[CASE WHEN t.\"a\" IS NULL THEN NULL ELSE format('%s', t.\"a\") END"
            ),
            "{keyless}"
        );
        assert!(keyless.contains("($2::text)::text"), "{keyless}");
        assert!(keyless.contains("GROUP BY v.i"), "{keyless}");
    }

    #[test]
    fn keys_are_named_for_people() {
        let key = to_key(&[Some("7".into()), None]);
        assert_eq!(
            key_words(&["id".into(), "note".into()], &key),
            "id=\"7\", note=NULL"
        );
    }
}
