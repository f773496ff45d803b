//! Which MariaDB rows changed since the last verification, and their
//! fingerprints on each side, so that the freeze compares only those rows
//! (the PostgreSQL counterpart is [`super::postgres`]).
//!
//! # The three steps
//!
//! 1. [`touched_between`]: the SOURCE's binary log (ROW format) between two
//!    GTID positions, the last verification's (exclusive) and the fence's
//!    `@@gtid_binlog_pos` (inclusive), read by the server's own
//!    `mariadb-binlog --read-from-remote-server` over the socket with
//!    `--start-position`/`--stop-position` as GTID lists (the tool's own
//!    semantics: start exclusive, stop inclusive; only the domains that
//!    advanced are named, `--do-domain-ids`, since a domain whose start
//!    and stop are equal makes the tool fail). The tool's dump asks as
//!    server id 0 (the source logs `Start binlog_dump to slave_server(0)`),
//!    so it never replaces the target replica's connection; it needs the
//!    configured user's `REPLICATION SLAVE`. Its `--verbose` pseudo-SQL
//!    is parsed by [`binlog::Reader`] into [`Touched`]: per table of the
//!    requested databases, the key of each row image (before and after, so
//!    a key change touches both keys), the `@N` column positions mapped to
//!    the key columns of the [`Catalog`] (`information_schema`: the primary
//!    key, else a unique key of NOT NULL columns).
//! 2. [`fingerprint`]: per table, one `mariadb` client run on one side
//!    with chunked `IN` lists of the touched keys, returning each present
//!    key (hex of its columns' text forms) and the MD5 of the row (the MD5
//!    of each column in column order, `N` for NULL, joined by `|`). Key
//!    values go into the query as literals this module builds from checked
//!    digits or `X'hex'` bytes with the column's character set, never as
//!    the binary log's text.
//!    [`fingerprint_whole`] is the same for every row of a table (a
//!    keyless one's rows counted by MD5), for the tables marked whole
//!    that the caller chooses to compare.
//! 3. [`compare`]: the two sides' fingerprints of a table into mismatches
//!    such as `shop.orders id=7 (row differs)`.
//!
//! # Wiring
//!
//! On the SOURCE's agent: [`read_catalog`] of the account's databases,
//! [`touched_between`] from the last verification's position (the first
//! time: the copy's snapshot position) to the fence's, and [`fingerprint`]
//! of each table's touched keys. On the TARGET's agent, once its replica
//! has applied the fence's position (the drain): [`fingerprint`] of the
//! same keys with the SOURCE's [`Table`] shapes (the same columns in the
//! same order on both sides; a column the target lacks fails the query,
//! which is a mismatch to report). Then [`compare`] on either side. The
//! fence's position becomes the next verification's start.
//!
//! # Limits (reported, never skipped silently)
//!
//! - A table without a usable key (no primary key, no unique key of NOT
//!   NULL columns) or whose key has a type the binary log's text is not
//!   read for here (FLOAT, DOUBLE, BIT, SET, TIME, YEAR, spatial) is in
//!   [`Touched::whole`] with the reason, as is a table whose row line
//!   could not be read, which the catalog no longer has, or which a
//!   statement (TRUNCATE, ALTER/CREATE/DROP/RENAME TABLE, an index change,
//!   REPAIR) named in the range: the caller compares it whole or reports
//!   it as not verified.
//! - A statement of the databases whose tables cannot be told (statement-
//!   logged DML, `CREATE/DROP DATABASE`, anything unknown) is in
//!   [`Touched::notes`].
//! - The columns are the catalog's at verification time: a table changed
//!   by DDL inside the range is marked whole by that DDL's statement, and
//!   a row wider than the catalog's table marks it whole. After images
//!   without the key's columns (`binlog_row_image=MINIMAL`) keep the
//!   before image's key.
//! - `mariadb-binlog` prints statements verbatim: a statement's own text
//!   (a comment in a `CREATE TABLE`) can hold any line. Up to the next
//!   event's `# at` line, a statement's lines are read as its text (row-
//!   like lines included); a statement whose text holds a `# at` or
//!   `DELIMITER` line is attributed by its first words and the rest of its
//!   text is read as the tool's own lines. Such forged lines can add keys
//!   or whole tables, never hide a real row event (each prints its own
//!   header); a forged `use` line can make a later statement of the same
//!   session be attributed to another database (only the account's own
//!   statements, on its own tables).
//! - Strings print bytes below 0x20 as `\xHH` and everything else as it
//!   is, so `\x0a` is a newline or four characters: both readings are
//!   fingerprinted (a key that does not exist matches no row on either
//!   side); more than 64 readings of one key make the table whole.
//! - Rows are read as the server's administrator (the agent's configured
//!   user): only `SELECT` of base tables, with nothing of the customer's
//!   run (no view, no routine; generated columns' expressions are built-in
//!   functions only). The binary log read holds every account's changes:
//!   only the requested databases' are kept, in memory, and dropped.
//!
//! This room only reads; it never repairs what it finds.

pub mod binlog;
mod catalog;
mod fingerprint;
mod statement;

pub use catalog::read_catalog;
pub use fingerprint::{Fingerprints, compare, fingerprint, fingerprint_sql, fingerprint_whole};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::config::MariadbServer;
use crate::transfer::mariadb::ClientError;
use crate::transfer::mariadb::client;

/// A table: its database and name, unquoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub database: String,
    pub name: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.database, self.name)
    }
}

/// How a key column's value is read from the binary log and written into
/// a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Integer,
    Decimal,
    Enum,
    Date,
    DateTime,
    Timestamp,
    /// Strings and binary strings: their bytes.
    Bytes,
}

/// A column of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `information_schema.COLUMNS.DATA_TYPE` (`int`, `varchar`...).
    pub data_type: String,
    pub unsigned: bool,
    /// The character set of a string column; `None` for binary strings
    /// and non-strings.
    pub charset: Option<String>,
    /// `BINARY(n)`: n (its values are padded with zero bytes).
    pub fixed_binary_length: Option<usize>,
}

impl Column {
    /// How a key value of this column is read; `None` when it is not.
    pub fn kind(&self) -> Option<KeyKind> {
        Some(match self.data_type.as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => KeyKind::Integer,
            "decimal" => KeyKind::Decimal,
            "enum" => KeyKind::Enum,
            "date" => KeyKind::Date,
            "datetime" => KeyKind::DateTime,
            "timestamp" => KeyKind::Timestamp,
            "char" | "varchar" | "binary" | "varbinary" | "tinytext" | "text" | "mediumtext"
            | "longtext" | "tinyblob" | "blob" | "mediumblob" | "longblob" => KeyKind::Bytes,
            _ => return None,
        })
    }
}

/// A base table's columns, in order, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<Column>,
    /// The key's columns (indexes into `columns`), or why there is none
    /// usable.
    pub key: Result<Vec<usize>, String>,
}

impl Table {
    /// The key's columns, in the key's order; why there is no usable key
    /// (also when the key names a column the table lacks: a shape built
    /// elsewhere than [`read_catalog`]).
    pub fn key_columns(&self) -> Result<Vec<&Column>, String> {
        let key = self.key.as_ref().map_err(Clone::clone)?;
        key.iter()
            .map(|&index| {
                self.columns
                    .get(index)
                    .ok_or_else(|| format!("the key names column {index}, which the table lacks"))
            })
            .collect()
    }
}

/// The base tables of some databases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub tables: BTreeMap<TableName, Table>,
}

/// One key column's value read from the binary log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    /// An integer, decimal or enum index: checked digits, sign and point.
    Number(String),
    /// A date or datetime, `YYYY-MM-DD[ HH:MM:SS[.f]]`, checked.
    Temporal(String),
    /// A TIMESTAMP in seconds since the epoch, checked.
    UnixTime(String),
    /// A string's bytes.
    Bytes(Vec<u8>),
}

impl KeyValue {
    /// The value as an SQL literal for `column`.
    fn literal(&self, column: &Column) -> String {
        match self {
            KeyValue::Number(digits) => digits.clone(),
            KeyValue::Temporal(text) => format!("'{text}'"),
            KeyValue::UnixTime(seconds) => format!("FROM_UNIXTIME({seconds})"),
            KeyValue::Bytes(bytes) => {
                let hex = hex(bytes);
                match column.charset.as_deref() {
                    Some(charset) => format!("_{charset} X'{hex}'"),
                    None => format!("X'{hex}'"),
                }
            }
        }
    }

    /// As a person reads it: `7`, `'it\'s'`, `X'00ff'`.
    pub fn shown(&self) -> String {
        match self {
            KeyValue::Number(text) => text.clone(),
            KeyValue::Temporal(text) | KeyValue::UnixTime(text) => format!("'{text}'"),
            KeyValue::Bytes(bytes) => shown_bytes(bytes),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Printable UTF-8 as `'text'` (`'` and `\` escaped), anything else as
/// `X'hex'`.
pub(super) fn shown_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => {
            format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        _ => format!("X'{}'", hex(bytes)),
    }
}

/// The rows a range of the binary log touched in the requested databases.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Each touched key, its values in the key's column order.
    pub keys: BTreeMap<TableName, BTreeSet<Vec<KeyValue>>>,
    /// Tables to compare whole or report as not verified, with why.
    pub whole: BTreeMap<TableName, String>,
    /// What of the databases could not be tied to a table.
    pub notes: Vec<String>,
}

impl Touched {
    /// Marks `table` whole (the first reason is kept).
    pub fn mark_whole(&mut self, table: &TableName, reason: String) {
        self.whole.entry(table.clone()).or_insert(reason);
    }

    fn add_keys(&mut self, table: &TableName, keys: Vec<Vec<KeyValue>>) {
        self.keys.entry(table.clone()).or_default().extend(keys);
    }
}

/// Why a verification step failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("GTID position {0:?} is not a list of domain-server-sequence numbers")]
    BadPosition(String),
    #[error(
        "GTID position {to:?} is behind {from:?} in domain {domain}: the positions are swapped or from different servers"
    )]
    Backwards {
        from: String,
        to: String,
        domain: u32,
    },
    #[error("cannot run {program} for MariaDB server {server}: {source}")]
    Spawn {
        program: String,
        server: String,
        source: std::io::Error,
    },
    #[error("{program} on MariaDB server {server} failed ({status}): {stderr}")]
    Binlog {
        program: String,
        server: String,
        status: String,
        stderr: String,
    },
    #[error("table {table} has no usable key: {reason}")]
    NoKey { table: TableName, reason: String },
    #[error("MariaDB server {server} answered something unexpected to {what}: {line:?}")]
    Unexpected {
        server: String,
        what: &'static str,
        line: String,
    },
}

/// `domain -> (server, sequence)` of a GTID position; checked.
fn gtid_domains(position: &str) -> Result<BTreeMap<u32, (u32, u64)>, VerifyError> {
    let bad = || VerifyError::BadPosition(position.to_owned());
    let mut domains = BTreeMap::new();
    for gtid in position.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut parts = gtid.split('-');
        let (Some(domain), Some(server), Some(sequence), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let domain: u32 = domain.parse().map_err(|_| bad())?;
        let server: u32 = server.parse().map_err(|_| bad())?;
        let sequence: u64 = sequence.parse().map_err(|_| bad())?;
        if domains.insert(domain, (server, sequence)).is_some() {
            return Err(bad());
        }
    }
    Ok(domains)
}

/// What the binary log tool is told for the range `(from, to]`: the
/// start and stop GTID lists and the domains, of the domains that advanced;
/// `None` when none did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogRange {
    /// Empty: the advanced domains have no start (read from the first log).
    pub start: String,
    pub stop: String,
    pub domains: String,
}

/// The [`BinlogRange`] of `(from, to]`.
pub fn binlog_range(from: &str, to: &str) -> Result<Option<BinlogRange>, VerifyError> {
    let start = gtid_domains(from)?;
    let stop = gtid_domains(to)?;
    let (mut starts, mut stops, mut domains) = (Vec::new(), Vec::new(), Vec::new());
    for (&domain, &(server, sequence)) in &stop {
        match start.get(&domain) {
            Some(&(_, before)) if before == sequence => continue,
            Some(&(_, before)) if before > sequence => {
                return Err(VerifyError::Backwards {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    domain,
                });
            }
            Some(&(start_server, before)) => {
                starts.push(format!("{domain}-{start_server}-{before}"))
            }
            None => {}
        }
        stops.push(format!("{domain}-{server}-{sequence}"));
        domains.push(domain.to_string());
    }
    Ok((!stops.is_empty()).then(|| BinlogRange {
        start: starts.join(","),
        stop: stops.join(","),
        domains: domains.join(","),
    }))
}

/// The keys the source `server`'s binary log touched in `databases`
/// between GTID positions `from` (exclusive: the last verification's) and
/// `to` (inclusive: the fence's `@@gtid_binlog_pos`), with `catalog`
/// ([`read_catalog`] of the same databases) for the key columns.
pub async fn touched_between(
    server: &MariadbServer,
    databases: &[String],
    catalog: &Catalog,
    from: &str,
    to: &str,
) -> Result<Touched, VerifyError> {
    let Some(range) = binlog_range(from, to)? else {
        return Ok(Touched::default());
    };
    // The tool needs a log file to name; with a GTID start it is not where
    // reading starts, without one (a domain new since `from`) it is.
    let logs = client::query(server, "SHOW BINARY LOGS;\n", Some(client::SHORT)).await?;
    let first_log = logs
        .first()
        .and_then(|row| row.first())
        .cloned()
        .ok_or_else(|| VerifyError::Unexpected {
            server: server.name.clone(),
            what: "SHOW BINARY LOGS",
            line: String::new(),
        })?;
    let tool = client::companion_tool(server, "mysqlbinlog", "mariadb-binlog");
    let program = tool.display().to_string();
    let mut command = client::connected(server, &tool);
    command
        .arg("--read-from-remote-server")
        .args([
            "--base64-output=DECODE-ROWS",
            "--verbose",
            "--skip-annotate-row-events",
            "--to-last-log",
        ])
        .arg(format!("--stop-position={}", range.stop))
        .arg(format!("--do-domain-ids={}", range.domains));
    if !range.start.is_empty() {
        command.arg(format!("--start-position={}", range.start));
    }
    command
        .arg(&first_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| VerifyError::Spawn {
        program: program.clone(),
        server: server.name.clone(),
        source,
    })?;
    let io = |source: std::io::Error| VerifyError::Spawn {
        program: program.clone(),
        server: server.name.clone(),
        source,
    };
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io(std::io::Error::other("no pipes")));
    };
    let wanted: BTreeSet<String> = databases.iter().cloned().collect();
    let mut reader = binlog::Reader::new(&wanted, catalog);
    let read_lines = async {
        let mut lines = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            if lines.read_until(b'\n', &mut line).await? == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            reader.line(text);
        }
    };
    let read_errors = async {
        let mut text = Vec::new();
        stderr.read_to_end(&mut text).await.map(|_| text)
    };
    let (lines, errors) = tokio::join!(read_lines, read_errors);
    lines.map_err(io)?;
    let errors = errors.map_err(io)?;
    let status = child.wait().await.map_err(io)?;
    let stderr = String::from_utf8_lossy(&errors).trim().to_owned();
    // The tool exits 0 when the log ends before the stop position (a
    // position from another server, a log reset): only a warning says so.
    if !status.success() || incomplete(&stderr) {
        return Err(VerifyError::Binlog {
            program,
            server: server.name.clone(),
            status: status.to_string(),
            stderr,
        });
    }
    Ok(reader.finish())
}

/// Whether the tool's standard error says it did not read the whole range.
fn incomplete(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|line| line.starts_with("ERROR") || line.contains("Did not reach stop position"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, data_type: &str, charset: Option<&str>) -> Column {
        Column {
            name: name.into(),
            data_type: data_type.into(),
            unsigned: false,
            charset: charset.map(str::to_owned),
            fixed_binary_length: None,
        }
    }

    /// `shop.orders (id INT UNSIGNED PRIMARY KEY, note TEXT)` and
    /// ``we`ird db`.`li"nes t` (`order` INT, `k` q` VARCHAR, v BLOB)``.
    fn catalog() -> Catalog {
        let mut catalog = Catalog::default();
        let mut id = column("id", "int", None);
        id.unsigned = true;
        catalog.tables.insert(
            TableName {
                database: "shop".into(),
                name: "orders".into(),
            },
            Table {
                columns: vec![id, column("note", "text", Some("utf8mb4"))],
                key: Ok(vec![0]),
            },
        );
        catalog.tables.insert(
            TableName {
                database: "we`ird db".into(),
                name: "li\"nes t".into(),
            },
            Table {
                columns: vec![
                    column("order", "int", None),
                    column("k` q", "varchar", Some("utf8mb4")),
                    column("v", "blob", None),
                ],
                key: Ok(vec![0, 1]),
            },
        );
        catalog.tables.insert(
            TableName {
                database: "shop".into(),
                name: "log".into(),
            },
            Table {
                columns: vec![column("at", "text", Some("utf8mb4"))],
                key: Err("no primary key".into()),
            },
        );
        catalog
    }

    /// Lines as `mariadb-binlog` 10.11 printed them for the integration
    /// test's kind of changes (the weird table's newline and backslash,
    /// the unsigned id, a key change, a DDL, another database).
    const CAPTURED: &[u8] = b"# at 413
#261202 16:29:20 server id 1  end_log_pos 1507 CRC32 0x6788c20d \tTable_map: `shop`.`orders` mapped to number 18
# at 489
#261202 16:29:20 server id 1  end_log_pos 1615 CRC32 0xe84b0d4e \tWrite_rows: table id 18 flags: STMT_END_F
### INSERT INTO `shop`.`orders`
### SET
###   @1=-1 (4294967295)
###   @2='it's a \\ test\\x0aline2\\x09'
# Number of rows: 1
# at 859
#261202 16:29:20 server id 1  end_log_pos 2116 CRC32 0xd7aa2fac \tTable_map: `we``ird db`.`li\"nes t` mapped to number 22
# at 920
#261202 16:29:20 server id 1  end_log_pos 2178 CRC32 0x8ba92e56 \tWrite_rows: table id 22 flags: STMT_END_F
### INSERT INTO `we``ird db`.`li\"nes t`
### SET
###   @1=7
###   @2='a'b\\x0ac'
###   @3='\xde\xad\xbe\xef'
### INSERT INTO `we``ird db`.`li\"nes t`
### SET
###   @1=7
###   @2='\xc3\xa9'
###   @3=NULL
# Number of rows: 2
# at 1131
#261202 16:29:20 server id 1  end_log_pos 2567 CRC32 0xbdde6a30 \tUpdate_rows: table id 18 flags: STMT_END_F
### UPDATE `shop`.`orders`
### WHERE
###   @1=1
###   @2='x'
### SET
###   @1=2
###   @2=NULL
### DELETE FROM `other`.`orders`
### WHERE
###   @1=9
# Number of rows: 1
# at 1442
#261202 16:29:20 server id 1  end_log_pos 2816 CRC32 0x036aca13 \tWrite_rows: table id 19 flags: STMT_END_F
### INSERT INTO `shop`.`log`
### SET
###   @1='now'
# at 1555
#261202 16:29:20 server id 1  end_log_pos 3001 CRC32 0x870092dd \tQuery\tthread_id=5\texec_time=0\terror_code=0\txid=13
SET TIMESTAMP=1796228960/*!*/;
/*!\\C utf8mb3 *//*!*/;
SET @@session.collation_database=DEFAULT/*!*/;
use `shop`/*!*/;
ALTER TABLE t2 ADD COLUMN z INT
/*!*/;
# at 1600
#261202 16:29:20 server id 1  end_log_pos 3100 CRC32 0x870092dd \tQuery\tthread_id=5\texec_time=0\terror_code=0\txid=13
INSERT INTO orders SELECT 1
/*!*/;
";

    #[test]
    fn captured_lines_give_the_touched_keys() {
        let catalog = catalog();
        let databases: BTreeSet<String> = ["shop".to_owned(), "we`ird db".to_owned()].into();
        let mut reader = binlog::Reader::new(&databases, &catalog);
        for line in CAPTURED.split(|&b| b == b'\n') {
            reader.line(line);
        }
        let touched = reader.finish();
        let orders = TableName {
            database: "shop".into(),
            name: "orders".into(),
        };
        let ids: Vec<&Vec<KeyValue>> = touched.keys[&orders].iter().collect();
        assert_eq!(
            ids,
            [
                &vec![KeyValue::Number("1".into())],
                &vec![KeyValue::Number("2".into())],
                &vec![KeyValue::Number("4294967295".into())],
            ]
        );
        let weird = TableName {
            database: "we`ird db".into(),
            name: "li\"nes t".into(),
        };
        let keys: Vec<Vec<KeyValue>> = touched.keys[&weird].iter().cloned().collect();
        let seven = KeyValue::Number("7".into());
        assert_eq!(
            keys,
            [
                vec![seven.clone(), KeyValue::Bytes(b"a'b\nc".to_vec())],
                vec![seven.clone(), KeyValue::Bytes(b"a'b\\x0ac".to_vec())],
                vec![seven, KeyValue::Bytes("é".as_bytes().to_vec())],
            ]
        );
        assert!(!touched.keys.keys().any(|t| t.database == "other"));
        let log = TableName {
            database: "shop".into(),
            name: "log".into(),
        };
        assert_eq!(
            touched.whole.get(&log).map(String::as_str),
            Some("no primary key")
        );
        let t2 = TableName {
            database: "shop".into(),
            name: "t2".into(),
        };
        assert_eq!(
            touched.whole.get(&t2).map(String::as_str),
            Some("ALTER TABLE in the binary log")
        );
        assert_eq!(touched.notes.len(), 1, "{:?}", touched.notes);
        assert!(touched.notes[0].contains("INSERT INTO orders SELECT 1"));
    }

    /// `shop.typed`'s row as 10.11 printed it: a key of each kind (DATE,
    /// DATETIME(3), TIMESTAMP, DECIMAL, ENUM, BINARY(4), latin1 CHAR,
    /// BIGINT UNSIGNED), and the literals written for it.
    #[test]
    fn every_kind_of_key_is_read_and_written() -> Result<(), VerifyError> {
        let kinds = [
            ("d", "date", None),
            ("dt", "datetime", None),
            ("ts", "timestamp", None),
            ("amount", "decimal", None),
            ("e", "enum", None),
            ("bin", "binary", None),
            ("ch", "char", Some("latin1")),
            ("big", "bigint", None),
            ("n", "int", None),
        ];
        let mut columns: Vec<Column> = kinds
            .iter()
            .map(|(name, data_type, charset)| column(name, data_type, *charset))
            .collect();
        columns[5].fixed_binary_length = Some(4);
        columns[7].unsigned = true;
        let typed = TableName {
            database: "shop".into(),
            name: "typed".into(),
        };
        let mut catalog = Catalog::default();
        catalog.tables.insert(
            typed.clone(),
            Table {
                columns,
                key: Ok((0..8).collect()),
            },
        );
        let databases: BTreeSet<String> = ["shop".to_owned()].into();
        let mut reader = binlog::Reader::new(&databases, &catalog);
        for line in [
            &b"### INSERT INTO `shop`.`typed`"[..],
            b"### SET",
            b"###   @1='2024:01:02'",
            b"###   @2='2024-01-02 03:04:05.125'",
            b"###   @3=1714979289",
            b"###   @4=-12.50",
            b"###   @5=2",
            b"###   @6='ab'",
            b"###   @7='\xe9'",
            b"###   @8=-1 (18446744073709551615)",
            b"###   @9=1",
            b"# Number of rows: 1",
        ] {
            reader.line(line);
        }
        let touched = reader.finish();
        let keys: Vec<&Vec<KeyValue>> = touched.keys[&typed].iter().collect();
        assert_eq!(
            keys,
            [&vec![
                KeyValue::Temporal("2024-01-02".into()),
                KeyValue::Temporal("2024-01-02 03:04:05.125".into()),
                KeyValue::UnixTime("1714979289".into()),
                KeyValue::Number("-12.50".into()),
                KeyValue::Number("2".into()),
                KeyValue::Bytes(b"ab\0\0".to_vec()),
                KeyValue::Bytes(vec![0xe9]),
                KeyValue::Number("18446744073709551615".into()),
            ]]
        );
        let keys: Vec<Vec<KeyValue>> = touched.keys[&typed].iter().cloned().collect();
        let sql = fingerprint_sql(&typed, &catalog.tables[&typed], &keys)?;
        assert!(
            sql.ends_with(
                "IN (('2024-01-02', '2024-01-02 03:04:05.125', FROM_UNIXTIME(1714979289), -12.50, 2, \
                 X'61620000', _latin1 X'e9', 18446744073709551615));\n"
            ),
            "{sql}"
        );
        Ok(())
    }

    /// A statement's own text that looks like row lines is read as the
    /// statement; one holding a `# at` line is still attributed by its
    /// first words; a MINIMAL after image keeps the before image's key.
    #[test]
    fn statement_text_is_not_rows_and_minimal_images_keep_their_key() {
        let catalog = catalog();
        let databases: BTreeSet<String> = ["shop".to_owned()].into();
        let mut reader = binlog::Reader::new(&databases, &catalog);
        let lines: &[&[u8]] = &[
            b"# at 538",
            b"#261202 16:29:36 server id 1  end_log_pos 3327 CRC32 0xe54ac2d7 \tQuery\tthread_id=7\texec_time=0\terror_code=0\txid=24",
            b"use `shop`/*!*/;",
            b"CREATE TABLE t2 (a int primary key) COMMENT 'x",
            b"### INSERT INTO `shop`.`orders`",
            b"### SET",
            b"###   @1=666",
            b"'",
            b"/*!*/;",
            b"# at 697",
            b"#261202 16:29:36 server id 1  end_log_pos 3327 CRC32 0xe54ac2d7 \tQuery\tthread_id=7\texec_time=0\terror_code=0\txid=25",
            b"ALTER TABLE t3 COMMENT 'a",
            b"# at 12",
            b"'",
            b"/*!*/;",
            b"# at 739",
            b"#261202 16:29:36 server id 1  end_log_pos 3500 CRC32 0xc75ff535 \tUpdate_rows: table id 25 flags: STMT_END_F",
            b"### UPDATE `shop`.`orders`",
            b"### WHERE",
            b"###   @1=5",
            b"### SET",
            b"###   @2='minimal'",
            b"# at 800",
            b"DELIMITER ;",
            b"# End of log file",
            b"ROLLBACK /* added by mysqlbinlog */;",
        ];
        for line in lines {
            reader.line(line);
        }
        let touched = reader.finish();
        let table = |name: &str| TableName {
            database: "shop".into(),
            name: name.into(),
        };
        let orders: Vec<&Vec<KeyValue>> = touched.keys[&table("orders")].iter().collect();
        assert_eq!(orders, [&vec![KeyValue::Number("5".into())]]);
        assert_eq!(
            touched.whole.keys().collect::<Vec<_>>(),
            [&table("t2"), &table("t3")]
        );
        assert!(touched.notes.is_empty(), "{:?}", touched.notes);
    }

    #[test]
    fn an_unreadable_key_marks_the_table_whole() {
        let catalog = catalog();
        let databases: BTreeSet<String> = ["shop".to_owned()].into();
        let mut reader = binlog::Reader::new(&databases, &catalog);
        for line in [
            &b"### INSERT INTO `shop`.`orders`"[..],
            b"### SET",
            b"###   @1=seven",
            b"###   @2='x'",
            b"### DELETE FROM `shop`.`gone`",
            b"### WHERE",
            b"###   @1=1",
            b"### UPDATE `shop`.`orders`",
            b"### WHERE",
            b"###   @1=1",
            b"###   @2=NULL",
            b"### SET",
            b"###   garbage",
        ] {
            reader.line(line);
        }
        let touched = reader.finish();
        let orders = TableName {
            database: "shop".into(),
            name: "orders".into(),
        };
        assert!(touched.whole[&orders].contains("could not be read"));
        let gone = TableName {
            database: "shop".into(),
            name: "gone".into(),
        };
        assert!(touched.whole[&gone].contains("catalog"));
    }

    #[test]
    fn ranges_name_only_the_domains_that_moved() -> Result<(), VerifyError> {
        assert_eq!(binlog_range("0-1-5", "0-1-5")?, None);
        assert_eq!(
            binlog_range("0-1-5,1-1-3", "0-2-9,1-1-3,2-1-1")?,
            Some(BinlogRange {
                start: "0-1-5".into(),
                stop: "0-2-9,2-1-1".into(),
                domains: "0,2".into(),
            })
        );
        assert!(matches!(
            binlog_range("0-1-9", "0-1-5"),
            Err(VerifyError::Backwards { domain: 0, .. })
        ));
        assert!(matches!(
            binlog_range("0-1-5; DROP", "0-1-9"),
            Err(VerifyError::BadPosition(_))
        ));
        Ok(())
    }

    #[test]
    fn the_query_quotes_names_and_writes_keys_as_literals() -> Result<(), VerifyError> {
        let catalog = catalog();
        let weird = TableName {
            database: "we`ird db".into(),
            name: "li\"nes t".into(),
        };
        let keys = vec![vec![
            KeyValue::Number("7".into()),
            KeyValue::Bytes(b"x'); DROP TABLE t; --".to_vec()),
        ]];
        let sql = fingerprint_sql(&weird, &catalog.tables[&weird], &keys)?;
        assert_eq!(
            sql,
            "SELECT HEX(CAST(`order` AS BINARY)), HEX(CAST(`k`` q` AS BINARY)), \
             MD5(CONCAT_WS('|', IFNULL(MD5(`order`), 'N'), IFNULL(MD5(`k`` q`), 'N'), IFNULL(MD5(`v`), 'N'))) \
             FROM `we``ird db`.`li\"nes t` WHERE (`order`, `k`` q`) IN \
             ((7, _utf8mb4 X'7827293b2044524f50205441424c4520743b202d2d'));\n"
        );
        Ok(())
    }

    #[test]
    fn mismatches_name_the_row() {
        let catalog = catalog();
        let weird = TableName {
            database: "we`ird db".into(),
            name: "li\"nes t".into(),
        };
        let key = |n: &str, k: &[u8]| vec![n.as_bytes().to_vec(), k.to_vec()];
        let source: Fingerprints = [
            (key("7", b"a"), "0".repeat(32)),
            (key("7", b"b\n"), "1".repeat(32)),
            (key("8", b"it's"), "2".repeat(32)),
        ]
        .into();
        let target: Fingerprints = [
            (key("7", b"a"), "0".repeat(32)),
            (key("7", b"b\n"), "f".repeat(32)),
            (key("9", b"z"), "3".repeat(32)),
        ]
        .into();
        assert_eq!(
            compare(&weird, &catalog.tables[&weird], &source, &target),
            [
                "we`ird db.li\"nes t order=7 k` q=X'620a' (row differs)",
                "we`ird db.li\"nes t order=8 k` q='it\\'s' (missing on the target)",
                "we`ird db.li\"nes t order=9 k` q='z' (only on the target)",
            ]
        );
        let log = TableName {
            database: "shop".into(),
            name: "log".into(),
        };
        let md5 = |c: &str| vec![c.repeat(32).into_bytes()];
        let source: Fingerprints = [(md5("a"), "2".to_owned()), (md5("b"), "1".to_owned())].into();
        let target: Fingerprints = [(md5("a"), "1".to_owned()), (md5("b"), "1".to_owned())].into();
        assert_eq!(
            compare(&log, &catalog.tables[&log], &source, &target),
            [format!(
                "shop.log rows with MD5 {} (2 on the source, 1 on the target)",
                "a".repeat(32)
            )]
        );
    }
}
