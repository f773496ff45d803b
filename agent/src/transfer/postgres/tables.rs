//! The data: every table copied from the source's snapshot into the target,
//! by parallel workers, biggest first, then checksummed on both sides.
//!
//! A *unit* is one table, or one block range of a big table (source 14 or
//! later: TID range scans make each range a cheap scan). Each unit is one
//! transaction on the target, so a failed unit leaves nothing behind and is
//! simply tried again. A whole-table unit truncates the table in its
//! transaction, which lets `COPY ... FREEZE` write rows already frozen (no
//! later hint-bit or anti-wraparound rewrite of the whole table). Rows are
//! checked ([`DataCheck`]): for a copy that can be made again (a test), each
//! unit's rows as they arrive, against the source's digest, before the unit
//! commits; for any other copy, the last unit of a table to finish reads
//! the whole table back from the target and compares the digest of its
//! rows with the source's. At the same time, on a second session, it runs
//! `ANALYZE` on the table (if asked): the statistics come from a sample, so
//! they cost little next to the check and no longer wait for the end of the
//! copy (see [`restore::analyze_after_post_data`](super::restore) for what
//! must wait for the post-data section). Then the same worker builds the
//! table's indexes and attaches the keys they back (see
//! `PostgresTable.indexes`), while the other workers go on copying: big
//! tables' indexes no longer wait for the last table.
//!
//! Every session here is authenticated as the copy's loader role
//! ([`super::loader`]), and each unit loads, and each index builds, under
//! the table owner's role (`SET LOCAL ROLE`): the customer's checks,
//! defaults, generated columns and index expressions run with the
//! account's power only, even if they reset their role.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use navette_proto::v1::postgres_source_client::PostgresSourceClient;
use navette_proto::v1::{CopyFormat, CopyTableRequest, PostgresTable, RowDigest};
use prost::bytes::Bytes;
use tokio_postgres::Client;
use tonic::Code;
use tonic::transport::Channel;

mod check;

use super::digest::{self, RowHash};
use super::error::PostgresCopyError;
use super::session::{self, qualified, quote_ident};
use super::tally::Tally;
use crate::config::PostgresqlServer;

/// Each table's owner on the target, by (schema, name).
type Owners = std::collections::HashMap<(String, String), String>;

/// How many times a unit is tried.
const ATTEMPTS: usize = 3;

/// How each table's copy is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataCheck {
    /// Only COPY's own row counts.
    None,
    /// The digest of the rows the source sent against the same digest of
    /// the rows the target received and handed to `COPY FROM`, and the
    /// source's row count against COPY's: checks everything between the two
    /// servers at the cost of one pass over the bytes on each side, and
    /// trusts the target server to store what its COPY accepted. For copies
    /// that can be made again (tests).
    Stream,
    /// The digest of the rows the source sent (computed while sending, no
    /// extra scan there) against the same digest of the rows read back from
    /// the target with `COPY TO` (see [`digest`]): also checks what the
    /// target stored, for another full read of every table.
    #[default]
    RowDigest,
    /// Row count and checksum of each row's text by SQL on both sides, the
    /// source's in the snapshot (see [`checksum`](super::checksum)): independent of COPY, but
    /// a second full scan of the source and several times slower.
    Sql,
}

/// Everything the data phase of one database needs.
pub struct DataCopy<'a> {
    pub source: &'a PostgresSourceClient<Channel>,
    pub transfer_id: &'a str,
    pub source_server: &'a str,
    pub source_database: &'a str,
    pub snapshot: &'a str,
    /// The target server as the loader reaches it ([`super::loader`]):
    /// every session of the data phase is the loader's.
    pub target_server: &'a PostgresqlServer,
    pub target_database: &'a str,
    /// Parallel units.
    pub workers: usize,
    /// Tables bigger than this are split into block ranges, if `ranges`.
    pub split_bytes: u64,
    /// The source can scan block ranges (PostgreSQL 14 or later).
    pub ranges: bool,
    /// Units of at least this size are read through a bulk session on the
    /// source ([`wire`](super::wire)).
    pub bulk_bytes: u64,
    /// How each table is checked.
    pub check: DataCheck,
    /// `ANALYZE` each table once loaded, while it is checked.
    pub analyze: bool,
    /// `maintenance_work_mem` of the index builds that follow each table's
    /// load (a memory size such as `256MB`, checked by the caller).
    pub index_memory: &'a str,
    /// The transfer's row hash (its protocol version's).
    pub row_hash: RowHash,
    pub tally: &'a Tally<'a>,
}

/// What the data phase did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataOutcome {
    pub rows: u64,
    /// COPY bytes received from the source.
    pub bytes: u64,
    pub tables_verified: usize,
    /// Tables that went as text (some column type cannot go in binary).
    pub text_tables: Vec<String>,
    /// Row count or checksum differences, one per table.
    pub problems: Vec<String>,
    /// What was built as soon as its table was loaded, as pg_restore's
    /// table of contents names it: (catalog OID, object OID) of indexes
    /// (`pg_class`) and constraints (`pg_constraint`).
    pub built_early: Vec<(u32, u32)>,
}

/// The catalogs of the objects in [`DataOutcome::built_early`].
pub const PG_CLASS: u32 = 1259;
pub const PG_CONSTRAINT: u32 = 2606;

/// One piece of work: a table or a block range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Index into the tables.
    pub table: usize,
    /// Both 0: the whole table. Else [first_block, end_block), end 0 = to
    /// the end.
    pub first_block: u64,
    pub end_block: u64,
    /// For scheduling, biggest first.
    pub estimated_bytes: u64,
}

impl Unit {
    fn whole(&self) -> bool {
        self.first_block == 0 && self.end_block == 0
    }
}

/// Splits the tables into units, biggest first.
pub fn plan(tables: &[PostgresTable], split_bytes: u64, workers: usize, ranges: bool) -> Vec<Unit> {
    let mut units = Vec::new();
    for (index, table) in tables.iter().enumerate() {
        let parts = if ranges && split_bytes > 0 && table.bytes > split_bytes {
            (table.bytes.div_ceil(split_bytes)).min(workers.max(1) as u64)
        } else {
            1
        };
        if parts < 2 || table.blocks < parts * 2 {
            units.push(Unit {
                table: index,
                first_block: 0,
                end_block: 0,
                estimated_bytes: table.bytes,
            });
            continue;
        }
        let step = table.blocks.div_ceil(parts);
        for part in 0..parts {
            let first_block = part * step;
            // The last range is open: rows the table gained after it was
            // measured (in the snapshot, pages can only have been added).
            let end_block = if part + 1 == parts {
                0
            } else {
                first_block + step
            };
            units.push(Unit {
                table: index,
                first_block,
                end_block,
                estimated_bytes: table.bytes / parts,
            });
        }
    }
    units.sort_by_key(|unit| std::cmp::Reverse(unit.estimated_bytes));
    units
}

/// Per-table bookkeeping shared by the workers.
struct TableState {
    /// Units not finished yet.
    remaining: AtomicUsize,
    /// Rows the target's COPY reported, over all units.
    rows: AtomicU64,
    /// The source's digests of the units, added up.
    digest: Mutex<RowDigest>,
    /// Bytes of `bytes_done` already counted for this table (capped at the
    /// table's size, so retries and COPY overhead do not overshoot).
    counted: AtomicU64,
}

impl DataCopy<'_> {
    /// Copies (and checks) every table.
    pub async fn run(&self, tables: &[PostgresTable]) -> Result<DataOutcome, PostgresCopyError> {
        let units = plan(tables, self.split_bytes, self.workers, self.ranges);
        let states: Vec<TableState> = tables
            .iter()
            .enumerate()
            .map(|(index, _)| TableState {
                remaining: AtomicUsize::new(units.iter().filter(|u| u.table == index).count()),
                rows: AtomicU64::new(0),
                digest: Mutex::new(RowDigest::default()),
                counted: AtomicU64::new(0),
            })
            .collect();
        let workers = self.workers.max(1).min(units.len());
        let queue = Mutex::new(units.into_iter().collect::<VecDeque<_>>());
        let outcome = Mutex::new(DataOutcome {
            text_tables: tables
                .iter()
                .filter(|t| !t.binary)
                .map(|t| format!("{}.{}", t.schema, t.name))
                .collect(),
            ..DataOutcome::default()
        });
        let owners = self.table_owners().await?;
        let work = (0..workers).map(|_| self.worker(tables, &states, &queue, &outcome, &owners));
        futures_util::future::try_join_all(work).await?;
        Ok(outcome.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    fn table_error(&self, table: &PostgresTable, what: String) -> PostgresCopyError {
        PostgresCopyError::Table {
            database: self.target_database.to_owned(),
            table: format!("{}.{}", table.schema, table.name),
            what,
            transient: false,
        }
    }

    /// A table error after which copying the database again may succeed.
    fn transient_error(&self, table: &PostgresTable, what: String) -> PostgresCopyError {
        PostgresCopyError::Table {
            database: self.target_database.to_owned(),
            table: format!("{}.{}", table.schema, table.name),
            what,
            transient: true,
        }
    }

    /// A new session on the target database; `what` names it in errors.
    async fn connect_target(
        &self,
        what: &str,
    ) -> Result<tokio_postgres::Client, PostgresCopyError> {
        session::connect(self.target_server, self.target_database)
            .await
            .map_err(|source| PostgresCopyError::Target {
                server: self.target_server.name.clone(),
                database: self.target_database.to_owned(),
                what: super::loader::connecting(self.target_server, what),
                source,
            })
    }

    /// Each table's owner on the target (as pre-data made it): units load
    /// and indexes build under the owner's role.
    async fn table_owners(&self) -> Result<Owners, PostgresCopyError> {
        let target = self
            .connect_target("connecting (to read table owners)")
            .await?;
        let rows = target
            .query(
                "SELECT n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p')",
                &[],
            )
            .await
            .map_err(|source| PostgresCopyError::Target {
                server: self.target_server.name.clone(),
                database: self.target_database.to_owned(),
                what: "reading table owners".to_owned(),
                source,
            })?;
        let mut owners = Owners::new();
        for row in rows {
            let read = |index| {
                row.try_get::<_, String>(index)
                    .map_err(|source| PostgresCopyError::Target {
                        server: self.target_server.name.clone(),
                        database: self.target_database.to_owned(),
                        what: "reading table owners".to_owned(),
                        source,
                    })
            };
            owners.insert((read(0)?, read(1)?), read(2)?);
        }
        Ok(owners)
    }

    async fn worker(
        &self,
        tables: &[PostgresTable],
        states: &[TableState],
        queue: &Mutex<VecDeque<Unit>>,
        outcome: &Mutex<DataOutcome>,
        owners: &Owners,
    ) -> Result<(), PostgresCopyError> {
        let target = self.connect_target("connecting").await?;
        // A copy is disposable until verified: no need to wait for each
        // commit to reach the disk. Index builds sort in memory.
        let _ = target
            .batch_execute(&format!(
                "SET synchronous_commit = off; SET maintenance_work_mem = '{}'",
                self.index_memory
            ))
            .await;
        let analyzer = if self.analyze {
            Some(self.connect_target("connecting (to analyze)").await?)
        } else {
            None
        };
        loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some(unit) = next else {
                return Ok(());
            };
            let (Some(table), Some(state)) = (tables.get(unit.table), states.get(unit.table))
            else {
                continue;
            };
            let Some(owner) = owners.get(&(table.schema.clone(), table.name.clone())) else {
                return Err(self.table_error(
                    table,
                    "the schema restored on the target has no such table".to_owned(),
                ));
            };
            let mut attempt = 0;
            let unit_started = std::time::Instant::now();
            let (rows, bytes, sent) = loop {
                attempt += 1;
                match self.copy_unit(&target, table, owner, state, &unit).await {
                    Ok(done) => break done,
                    Err(Failure::Retry(what)) if attempt < ATTEMPTS => {
                        tracing::warn!(
                            message = "table copy interrupted; trying again",
                            database = %self.target_database,
                            table = %format!("{}.{}", table.schema, table.name),
                            attempt,
                            error = %what
                        );
                        tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
                    }
                    Err(Failure::Retry(what) | Failure::Restart(what)) => {
                        return Err(self.transient_error(table, what));
                    }
                    Err(Failure::Fatal(what)) => return Err(self.table_error(table, what)),
                }
            };
            tracing::debug!(
                message = "unit copied",
                database = %self.target_database,
                table = %format!("{}.{}", table.schema, table.name),
                first_block = unit.first_block,
                end_block = unit.end_block,
                rows,
                bytes,
                seconds = unit_started.elapsed().as_secs_f64()
            );
            state.rows.fetch_add(rows, Ordering::Relaxed);
            digest::merge(
                &mut state.digest.lock().unwrap_or_else(|p| p.into_inner()),
                &sent,
            );
            {
                let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
                outcome.rows += rows;
                outcome.bytes += bytes;
            }
            if state.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
                continue;
            }
            // The table's last unit: count the rest of its size as done,
            // and check it.
            let counted = state.counted.swap(table.bytes, Ordering::AcqRel);
            self.tally.done(table.bytes.saturating_sub(counted));
            let copied = state.rows.load(Ordering::Relaxed);
            let check_started = std::time::Instant::now();
            let sent = *state.digest.lock().unwrap_or_else(|p| p.into_inner());
            let check = async {
                // Free: the rows the source sent against the rows COPY
                // loaded.
                if sent.rows != copied {
                    return Ok(Some(format!(
                        "table {}.{}: the source sent {} rows, the target loaded {copied}",
                        table.schema, table.name, sent.rows
                    )));
                }
                match self.check {
                    // Stream: each unit's rows were checked as they arrived.
                    DataCheck::None | DataCheck::Stream => Ok(None),
                    DataCheck::RowDigest => self.read_back(&target, table, &sent, copied).await,
                    DataCheck::Sql => self.verify_table(&target, table, copied).await,
                }
            };
            let analyze = async {
                let Some(analyzer) = &analyzer else {
                    return Ok(());
                };
                analyzer
                    .batch_execute(&format!(
                        "ANALYZE {}",
                        qualified(&table.schema, &table.name)
                    ))
                    .await
                    .map_err(|error| {
                        self.table_error(
                            table,
                            format!("analyzing: {}", crate::error_chain(&error)),
                        )
                    })
            };
            let (problem, analyzed) = tokio::join!(check, analyze);
            let problem = problem?;
            analyzed?;
            tracing::debug!(
                message = "table copied",
                database = %self.target_database,
                table = %format!("{}.{}", table.schema, table.name),
                rows = copied,
                check = ?self.check,
                check_seconds = check_started.elapsed().as_secs_f64()
            );
            let built = if problem.is_none() {
                self.build_indexes(&target, table, owner).await
            } else {
                Vec::new()
            };
            {
                let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
                outcome.built_early.extend(built);
                match problem {
                    Some(problem) => outcome.problems.push(problem),
                    None if self.check != DataCheck::None => outcome.tables_verified += 1,
                    None => {}
                }
            }
            self.tally.table_done();
        }
    }

    /// Copies one unit in one target transaction; (rows, bytes, the
    /// source's digest of the rows).
    async fn copy_unit(
        &self,
        target: &Client,
        table: &PostgresTable,
        owner: &str,
        state: &TableState,
        unit: &Unit,
    ) -> Result<(u64, u64, RowDigest), Failure> {
        let request = CopyTableRequest {
            transfer_id: self.transfer_id.to_owned(),
            server: self.source_server.to_owned(),
            database: self.source_database.to_owned(),
            snapshot_name: self.snapshot.to_owned(),
            schema: table.schema.clone(),
            table: table.name.clone(),
            format: if table.binary {
                CopyFormat::Binary
            } else {
                CopyFormat::Text
            }
            .into(),
            first_block: unit.first_block,
            end_block: unit.end_block,
            bulk: unit.estimated_bytes >= self.bulk_bytes,
        };
        let mut stream = self
            .source
            .clone()
            .copy_table(request)
            .await
            .map_err(Failure::from_status)?
            .into_inner();
        let name = qualified(&table.schema, &table.name);
        let columns = column_list(table);
        let format = if table.binary { "binary" } else { "text" };
        // As the table's owner: its checks and defaults run with the
        // owner's power (and the session's, the loader's, is no more).
        let role = format!("BEGIN; SET LOCAL ROLE {}", quote_ident(owner));
        let (begin, freeze) = if unit.whole() {
            (format!("{role}; TRUNCATE ONLY {name}"), ", FREEZE")
        } else {
            (role, "")
        };
        let sql_failed = |what: &str| {
            let what = what.to_owned();
            move |error: tokio_postgres::Error| {
                Failure::Fatal(format!("{what}: {}", crate::error_chain(&error)))
            }
        };
        target
            .batch_execute(&begin)
            .await
            .map_err(sql_failed("starting the target transaction"))?;
        let result = async {
            let sink = target
                .copy_in::<_, Bytes>(&format!(
                    "COPY {name}{columns} FROM STDIN (FORMAT {format}{freeze})"
                ))
                .await
                .map_err(sql_failed("starting COPY on the target"))?;
            let mut sink = std::pin::pin!(sink);
            let mut bytes = 0u64;
            let mut sent = None;
            let mut received = (self.check == DataCheck::Stream)
                .then(|| digest::RowSplitter::new(digest::Format::of(table.binary), self.row_hash));
            while let Some(chunk) = stream.message().await.map_err(Failure::from_status)? {
                if chunk.digest.is_some() {
                    sent = chunk.digest;
                }
                if chunk.data.is_empty() {
                    continue;
                }
                if let Some(received) = &mut received {
                    received.feed(&chunk.data).map_err(|error| {
                        Failure::Retry(format!("the rows received are malformed: {error}"))
                    })?;
                }
                let length = chunk.data.len() as u64;
                sink.send(Bytes::from(chunk.data))
                    .await
                    .map_err(sql_failed("writing into the target"))?;
                bytes += length;
                self.count(table, state, length);
            }
            let Some(sent) = sent else {
                // Dropping the sink unfinished aborts the COPY.
                return Err(Failure::Retry(
                    "the source's stream ended without its digest: it was cut short".to_owned(),
                ));
            };
            if let Some(received) = received {
                // Checked before COMMIT: rows that differ from what the
                // source sent are never kept.
                digest::check_received(received, &sent).map_err(Failure::Retry)?;
            }
            let rows = sink
                .as_mut()
                .finish()
                .await
                .map_err(sql_failed("finishing COPY on the target"))?;
            target
                .batch_execute("COMMIT")
                .await
                .map_err(sql_failed("committing on the target"))?;
            Ok((rows, bytes, sent))
        }
        .await;
        if result.is_err() {
            let _ = target.batch_execute("ROLLBACK").await;
        }
        result
    }

    /// Builds the table's indexes (and attaches the PRIMARY KEY and UNIQUE
    /// constraints they back) as soon as it is loaded, while other tables
    /// still copy; what it built, for the post-data section to skip. An
    /// index that fails here is left to the post-data section, which then
    /// reports the error if it fails there too.
    ///
    /// The definition comes from the source: it was checked to be one
    /// `CREATE INDEX` on this table ([`check_index`](super::acceptance::check_index)),
    /// and it is sent through the extended query protocol, which refuses a
    /// second statement, under the table owner's role.
    async fn build_indexes(
        &self,
        target: &Client,
        table: &PostgresTable,
        owner: &str,
    ) -> Vec<(u32, u32)> {
        let mut built = Vec::new();
        let name = qualified(&table.schema, &table.name);
        for index in &table.indexes {
            let started = std::time::Instant::now();
            if let Err(finding) = super::acceptance::check_index(index, table) {
                tracing::warn!(message = "index definition refused", %finding);
                continue;
            }
            let constraint = match index.constraint_type.as_str() {
                "p" => Some("PRIMARY KEY"),
                "u" => Some("UNIQUE"),
                _ => None,
            };
            let attach = constraint.map(|kind| {
                let timing = match (index.deferrable, index.deferred) {
                    (true, true) => " DEFERRABLE INITIALLY DEFERRED",
                    (true, false) => " DEFERRABLE",
                    _ => "",
                };
                let index_name = quote_ident(&index.name);
                format!(
                    "ALTER TABLE ONLY {name} ADD CONSTRAINT {index_name} {kind} USING INDEX {index_name}{timing}"
                )
            });
            // One transaction: the index and its constraint come together,
            // or neither does.
            let result = async {
                target
                    .batch_execute(&format!("BEGIN; SET LOCAL ROLE {}", quote_ident(owner)))
                    .await?;
                target.execute(index.definition.as_str(), &[]).await?;
                if let Some(attach) = &attach {
                    target.execute(attach.as_str(), &[]).await?;
                }
                target.batch_execute("COMMIT").await
            }
            .await;
            match result {
                Ok(()) => {
                    built.push((PG_CLASS, index.oid));
                    if constraint.is_some() {
                        built.push((PG_CONSTRAINT, index.constraint_oid));
                    }
                    tracing::debug!(
                        message = "index built",
                        database = %self.target_database,
                        table = %format!("{}.{}", table.schema, table.name),
                        index = %index.name,
                        seconds = started.elapsed().as_secs_f64()
                    );
                }
                Err(error) => {
                    let _ = target.batch_execute("ROLLBACK").await;
                    tracing::info!(
                        message = "index left to the post-data section",
                        database = %self.target_database,
                        table = %format!("{}.{}", table.schema, table.name),
                        index = %index.name,
                        error = %crate::error_chain(&error)
                    );
                }
            }
        }
        built
    }

    /// Adds `length` bytes to the progress, within the table's size.
    fn count(&self, table: &PostgresTable, state: &TableState, length: u64) {
        self.tally.sent(length);
        let before = state
            .counted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |counted| {
                Some((counted + length).min(table.bytes))
            })
            .unwrap_or(table.bytes);
        let added = (before + length).min(table.bytes) - before.min(table.bytes);
        if added > 0 {
            self.tally.done(added);
        }
    }
}

/// ` (a, b)` for COPY, or nothing for a table without columns.
fn column_list(table: &PostgresTable) -> String {
    if table.columns.is_empty() {
        return String::new();
    }
    let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
    format!(" ({})", columns.join(", "))
}

/// Why a unit failed.
enum Failure {
    /// The stream broke: try the unit again.
    Retry(String),
    /// The snapshot is gone: only a new copy of the database can succeed.
    Restart(String),
    Fatal(String),
}

impl Failure {
    fn from_status(status: tonic::Status) -> Failure {
        let what = format!("from the source: {}", crate::describe_status(&status));
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => {
                Failure::Retry(what)
            }
            Code::FailedPrecondition | Code::DeadlineExceeded => Failure::Restart(what),
            _ => Failure::Fatal(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, bytes: u64, blocks: u64) -> PostgresTable {
        PostgresTable {
            schema: "public".to_owned(),
            name: name.to_owned(),
            bytes,
            blocks,
            binary: true,
            ..PostgresTable::default()
        }
    }

    #[test]
    fn big_tables_are_split_into_block_ranges_biggest_first() {
        let tables = [table("small", 10, 1), table("big", 1000, 100)];
        let units = plan(&tables, 300, 4, true);
        assert_eq!(units.len(), 5);
        let big: Vec<(u64, u64)> = units
            .iter()
            .filter(|u| u.table == 1)
            .map(|u| (u.first_block, u.end_block))
            .collect();
        assert_eq!(big, vec![(0, 25), (25, 50), (50, 75), (75, 0)]);
        assert_eq!(units.last().map(|u| u.table), Some(0));
        assert!(units.last().is_some_and(Unit::whole));
    }

    #[test]
    fn without_range_scans_tables_go_whole() {
        let tables = [table("big", 1000, 100)];
        assert_eq!(plan(&tables, 300, 4, false).len(), 1);
        assert_eq!(plan(&tables, 300, 1, true).len(), 1);
        assert_eq!(plan(&[table("tiny", 1000, 3)], 300, 4, true).len(), 1);
    }
}
