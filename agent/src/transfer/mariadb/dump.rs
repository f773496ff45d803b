//! The dump stream of one database, produced on the source:
//!
//! 1. the schema without triggers: `mariadb-dump --no-data --skip-triggers
//!    --routines --events` (tables, views, routines, events, sequences);
//! 2. the rows: one `mariadb` session in a consistent snapshot selects every
//!    base table's row literals ([`super::rows`]); they become multi-row
//!    INSERTs, and after each table a checksum of exactly the rows sent;
//! 3. the triggers: `mariadb-dump --no-data --no-create-info --triggers`,
//!    last, so that loading the rows fires none of them.
//!
//! Asked for it (`snapshot_position`), the data session also reads the
//! binary log position of its snapshot (`binlog_snapshot_file` and
//! `binlog_snapshot_position`, which InnoDB fixes with the snapshot, turned
//! into a GTID position by `BINLOG_GTID_POS`, as `mariadb-dump --gtid
//! --master-data` does) and sends it before the first table's rows:
//! replication started there applies exactly what the rows lack.
//!
//! Reads only; chunks go to a bounded channel, so a slow target slows the
//! reading down instead of filling memory.

use std::process::Stdio;

use navette_proto::v1::{MariadbColumn, MariadbDumpChunk, MariadbTableChecksum};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::catalogue::{self, CatalogueError, TableColumns};
use super::client::{self, ClientError, SESSION_SETUP, ident};
use super::rows::{RowChecksum, insert_columns, row_literal_sql};
use crate::config::MariadbServer;

/// Largest `sql` in one chunk (gRPC's default message limit is 4 MiB).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// An INSERT statement is closed once it passes this size (the target's
/// `max_allowed_packet` is 16 MiB by default; one row may exceed it alone).
const STATEMENT_BYTES: usize = 1024 * 1024;

/// What starts the rows' part on the target: UTF-8, UTC, no checks that the
/// source already made (foreign keys, uniqueness), zero kept in
/// AUTO_INCREMENT columns, and no strict mode, so values the source holds
/// are taken as they are (the checksums show any change).
const ROWS_HEADER: &str = "\n-- Navette: the rows, read in one consistent snapshot\n\
     SET NAMES utf8mb4;\n\
     SET SESSION time_zone='+00:00';\n\
     SET SESSION sql_mode='NO_AUTO_VALUE_ON_ZERO';\n\
     SET SESSION foreign_key_checks=0;\n\
     SET SESSION unique_checks=0;\n";

const ROWS_TRAILER: &str = "SET SESSION foreign_key_checks=1;\nSET SESSION unique_checks=1;\n\
     -- Navette: end of the rows\n";

/// Marks a table's rows in the data session's output. Row literals always
/// start with '(', so a marker can never be mistaken for a row.
const TABLE_MARKER: &str = "navette-table ";
const END_MARKER: &str = "navette-end";
const SNAPSHOT_MARKER: &str = "navette-snapshot ";

/// Why a dump stopped.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("database name {0:?} cannot be given to mariadb-dump (it starts with '-')")]
    BadName(String),
    #[error(
        "the rows of database {database} on MariaDB server {server} ended early (after {tables} of {expected} tables)"
    )]
    Truncated {
        server: String,
        database: String,
        tables: usize,
        expected: usize,
    },
    /// The receiver went away: the target cancelled. Not reported.
    #[error("the target stopped reading the dump")]
    Cancelled,
    #[error(
        "MariaDB server {server} has no binary log position for the snapshot (is log_bin on, with binlog_format=ROW and a server_id? see the inventory's row_binlog_ready)"
    )]
    NoBinlog { server: String },
}

/// Where chunks go.
pub type ChunkSender = mpsc::Sender<Result<MariadbDumpChunk, tonic::Status>>;

/// Streams `database` into `sender`; see the module documentation.
pub async fn dump(
    server: &MariadbServer,
    database: &str,
    snapshot_position: bool,
    sender: &ChunkSender,
) -> Result<(), DumpError> {
    if database.starts_with('-') {
        return Err(DumpError::BadName(database.to_owned()));
    }
    // The tables whose rows are copied are those that exist before the
    // schema is dumped; a table created meanwhile is copied empty.
    let tables = catalogue::base_tables(server, database).await?;
    run_dump_tool(
        server,
        database,
        &[
            "--no-data",
            "--skip-triggers",
            "--routines",
            "--events",
            "--single-transaction",
            "--skip-lock-tables",
            "--no-create-db",
            "--no-tablespaces",
            "--skip-dump-date",
        ],
        sender,
    )
    .await?;
    dump_rows(server, database, &tables, snapshot_position, sender).await?;
    run_dump_tool(
        server,
        database,
        &[
            "--no-data",
            "--no-create-info",
            "--triggers",
            "--skip-routines",
            "--skip-events",
            "--single-transaction",
            "--skip-lock-tables",
            "--no-tablespaces",
            "--skip-dump-date",
        ],
        sender,
    )
    .await
}

async fn send(sender: &ChunkSender, chunk: MariadbDumpChunk) -> Result<(), DumpError> {
    sender
        .send(Ok(chunk))
        .await
        .map_err(|_| DumpError::Cancelled)
}

fn sql_chunk(sql: Vec<u8>) -> MariadbDumpChunk {
    MariadbDumpChunk {
        sql,
        ..MariadbDumpChunk::default()
    }
}

/// Runs `mariadb-dump ARGS database` and streams its output as it comes.
async fn run_dump_tool(
    server: &MariadbServer,
    database: &str,
    args: &[&str],
    sender: &ChunkSender,
) -> Result<(), DumpError> {
    let program = client::dump_tool(server);
    let program_name = program.display().to_string();
    let mut command = client::command(server, &program);
    command
        .args(args)
        .arg(database)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ClientError::Spawn {
        program: program_name.clone(),
        server: server.name.clone(),
        source,
    })?;
    let stderr = collect_stderr(child.stderr.take());
    let io = |source| ClientError::Io {
        program: program_name.clone(),
        server: server.name.clone(),
        source,
    };
    if let Some(mut stdout) = child.stdout.take() {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let read = stdout.read(&mut buffer).await.map_err(io)?;
            if read == 0 {
                break;
            }
            send(sender, sql_chunk(buffer[..read].to_vec())).await?;
        }
    }
    let status = child.wait().await.map_err(io)?;
    if !status.success() {
        return Err(ClientError::Failed {
            program: program_name,
            server: server.name.clone(),
            status,
            stderr: stderr.await.unwrap_or_default(),
        }
        .into());
    }
    Ok(())
}

/// Reads a child's stderr to the end in the background (at most 64 KiB
/// kept), so a chatty child never blocks on a full pipe.
fn collect_stderr(
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = Vec::new();
        if let Some(mut stderr) = stderr {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = stderr.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                if text.len() < 64 * 1024 {
                    text.extend_from_slice(&buffer[..read]);
                }
            }
        }
        String::from_utf8_lossy(&text).trim().to_owned()
    })
}

/// The data session's script: the snapshot, then each table's marker and
/// row literals.
fn rows_script(database: &str, tables: &[TableColumns], snapshot_position: bool) -> String {
    let mut sql = format!(
        "{SESSION_SETUP}SET SESSION net_write_timeout=3600;\n\
         SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n\
         START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;\n"
    );
    if snapshot_position {
        // The session's status holds the binlog position InnoDB took with
        // the snapshot; '!' when the binlog is off, '' when it holds no
        // transaction yet.
        sql.push_str(&format!(
            "SELECT CONCAT('{SNAPSHOT_MARKER}', IFNULL(BINLOG_GTID_POS(\
             (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = 'BINLOG_SNAPSHOT_FILE'), \
             (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = 'BINLOG_SNAPSHOT_POSITION')), '!'));\n"
        ));
    }
    for (index, table) in tables.iter().enumerate() {
        sql.push_str(&format!(
            "SELECT '{TABLE_MARKER}{index}';\nSELECT {} FROM {}.{};\n",
            row_literal_sql(&table.columns),
            ident(database),
            ident(&table.name)
        ));
    }
    sql.push_str(&format!("SELECT '{END_MARKER}';\nCOMMIT;\n"));
    sql
}

/// The rows of one table on their way into chunks.
struct TableRows<'a> {
    name: &'a str,
    columns: &'a [MariadbColumn],
    insert_header: String,
    checksum: RowChecksum,
    /// SQL not sent yet.
    pending: Vec<u8>,
    /// Rows that end in `pending`.
    pending_rows: u64,
    /// Size of the open INSERT statement, 0 when none is open.
    statement: usize,
}

impl<'a> TableRows<'a> {
    fn new(table: &'a TableColumns) -> TableRows<'a> {
        TableRows {
            name: &table.name,
            columns: &table.columns,
            insert_header: format!(
                "INSERT INTO {} {} VALUES ",
                ident(&table.name),
                insert_columns(&table.columns)
            ),
            checksum: RowChecksum::default(),
            pending: Vec::with_capacity(CHUNK_BYTES * 2),
            pending_rows: 0,
            statement: 0,
        }
    }

    async fn add(&mut self, literal: &[u8], sender: &ChunkSender) -> Result<(), DumpError> {
        self.checksum.add(literal);
        if self.statement == 0 {
            self.pending
                .extend_from_slice(self.insert_header.as_bytes());
            self.statement = self.insert_header.len();
        } else {
            self.pending.push(b',');
            self.statement += 1;
        }
        self.pending.extend_from_slice(literal);
        self.statement += literal.len();
        self.pending_rows += 1;
        if self.statement >= STATEMENT_BYTES {
            self.pending.extend_from_slice(b";\n");
            self.statement = 0;
        }
        if self.pending.len() >= CHUNK_BYTES {
            self.flush(None, sender).await?;
        }
        Ok(())
    }

    /// Sends what is pending in chunks of at most [`CHUNK_BYTES`]; the last
    /// carries the row count and `done`.
    async fn flush(
        &mut self,
        done: Option<MariadbTableChecksum>,
        sender: &ChunkSender,
    ) -> Result<(), DumpError> {
        let pending = std::mem::take(&mut self.pending);
        let mut pieces = pending.chunks(CHUNK_BYTES).peekable();
        if pieces.peek().is_none() && done.is_none() {
            return Ok(());
        }
        let mut done = done;
        loop {
            let piece = pieces.next().unwrap_or_default();
            let last = pieces.peek().is_none();
            send(
                sender,
                MariadbDumpChunk {
                    sql: piece.to_vec(),
                    table: self.name.to_owned(),
                    rows: if last { self.pending_rows } else { 0 },
                    table_done: if last { done.take() } else { None },
                    ..MariadbDumpChunk::default()
                },
            )
            .await?;
            if last {
                break;
            }
        }
        self.pending_rows = 0;
        self.pending = Vec::with_capacity(CHUNK_BYTES * 2);
        Ok(())
    }

    async fn finish(mut self, sender: &ChunkSender) -> Result<(), DumpError> {
        if self.statement > 0 {
            self.pending.extend_from_slice(b";\n");
            self.statement = 0;
        }
        let done = self.checksum.finish(self.name, self.columns);
        self.flush(Some(done), sender).await
    }
}

/// Step 2: every table's rows, in one consistent snapshot.
async fn dump_rows(
    server: &MariadbServer,
    database: &str,
    tables: &[TableColumns],
    snapshot_position: bool,
    sender: &ChunkSender,
) -> Result<(), DumpError> {
    send(sender, sql_chunk(ROWS_HEADER.as_bytes().to_vec())).await?;
    let program = server.client.display().to_string();
    let mut command = client::batch_client(server);
    command
        .arg("--quick")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ClientError::Spawn {
        program: program.clone(),
        server: server.name.clone(),
        source,
    })?;
    let stderr = collect_stderr(child.stderr.take());
    // Written while the output is read: a long script must not wait for a
    // reader that waits for it.
    let script = rows_script(database, tables, snapshot_position);
    let mut stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(script.as_bytes()).await;
        }
    });
    let io = |source| ClientError::Io {
        program: program.clone(),
        server: server.name.clone(),
        source,
    };
    let mut current: Option<TableRows<'_>> = None;
    let mut tables_done = 0usize;
    let mut ended = false;
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::with_capacity(CHUNK_BYTES, stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).await.map_err(io)? == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.first() == Some(&b'(') {
                let literal = client::unescape(&line);
                match current.as_mut() {
                    Some(table) => table.add(&literal, sender).await?,
                    None => {
                        return Err(ClientError::Unexpected {
                            server: server.name.clone(),
                            what: "the rows of a table (a row before any table)",
                            line: String::from_utf8_lossy(&line).chars().take(80).collect(),
                        }
                        .into());
                    }
                }
                continue;
            }
            if let Some(table) = current.take() {
                table.finish(sender).await?;
                tables_done += 1;
            }
            let text = String::from_utf8_lossy(&line);
            if text == END_MARKER {
                ended = true;
            } else if let Some(position) = text.strip_prefix(SNAPSHOT_MARKER) {
                // An empty position (no transaction logged yet) is valid:
                // replication then starts at the log's beginning.
                if !snapshot_position || position == "!" {
                    return Err(DumpError::NoBinlog {
                        server: server.name.clone(),
                    });
                }
                send(
                    sender,
                    MariadbDumpChunk {
                        snapshot_gtid_position: position.to_owned(),
                        ..MariadbDumpChunk::default()
                    },
                )
                .await?;
            } else if let Some(table) = text
                .strip_prefix(TABLE_MARKER)
                .and_then(|index| index.parse::<usize>().ok())
                .and_then(|index| tables.get(index))
            {
                current = Some(TableRows::new(table));
            } else {
                return Err(ClientError::Unexpected {
                    server: server.name.clone(),
                    what: "the rows of a table",
                    line: text.chars().take(80).collect(),
                }
                .into());
            }
        }
    }
    let _ = writer.await;
    let status = child.wait().await.map_err(io)?;
    if !status.success() {
        return Err(ClientError::Failed {
            program,
            server: server.name.clone(),
            status,
            stderr: stderr.await.unwrap_or_default(),
        }
        .into());
    }
    if !ended || tables_done != tables.len() {
        return Err(DumpError::Truncated {
            server: server.name.clone(),
            database: database.to_owned(),
            tables: tables_done,
            expected: tables.len(),
        });
    }
    send(sender, sql_chunk(ROWS_TRAILER.as_bytes().to_vec())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use navette_proto::v1::MariadbColumnEncoding;

    fn table(name: &str) -> TableColumns {
        TableColumns {
            name: name.to_owned(),
            columns: vec![MariadbColumn {
                name: "id".to_owned(),
                encoding: MariadbColumnEncoding::Number.into(),
            }],
        }
    }

    #[test]
    fn the_script_marks_every_table_inside_one_snapshot() {
        let script = rows_script("alice", &[table("a"), table("b")], false);
        let snapshot = script
            .find("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .unwrap_or(usize::MAX);
        let first = script.find("SELECT 'navette-table 0'").unwrap_or(0);
        assert!(snapshot < first);
        assert!(script.contains("FROM `alice`.`b`;"));
        assert!(script.ends_with("SELECT 'navette-end';\nCOMMIT;\n"));
    }

    #[tokio::test]
    async fn big_rows_are_cut_into_chunks_and_the_last_one_closes_the_table()
    -> Result<(), DumpError> {
        let (sender, mut receiver) = mpsc::channel(64);
        let table = table("t");
        let mut rows = TableRows::new(&table);
        let big = format!("({})", "9".repeat(CHUNK_BYTES * 2));
        rows.add(big.as_bytes(), &sender).await?;
        rows.add(b"(1)", &sender).await?;
        rows.finish(&sender).await?;
        drop(sender);
        let mut chunks = Vec::new();
        while let Some(Ok(chunk)) = receiver.recv().await {
            chunks.push(chunk);
        }
        assert!(chunks.iter().all(|chunk| chunk.sql.len() <= CHUNK_BYTES));
        let sql: Vec<u8> = chunks.iter().flat_map(|c| c.sql.clone()).collect();
        let text = String::from_utf8_lossy(&sql);
        assert!(text.starts_with("INSERT INTO `t` (`id`) VALUES (999"));
        assert!(text.ends_with("),(1);\n"));
        assert_eq!(chunks.iter().map(|c| c.rows).sum::<u64>(), 2);
        let done = chunks.last().and_then(|c| c.table_done.clone());
        assert_eq!(done.map(|d| d.rows), Some(2));
        Ok(())
    }
}
