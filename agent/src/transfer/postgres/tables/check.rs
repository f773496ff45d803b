//! Checking a table once it is copied ([`DataCheck`](super::DataCheck)):
//! the rows read back from the target against the source's digest, or SQL
//! checksums on both sides.

use futures_util::StreamExt;
use navette_proto::v1::{ChecksumTableRequest, PostgresTable, RowDigest};
use tokio_postgres::Client;

use super::{DataCopy, column_list};
use crate::config::PostgresqlServer;
use crate::transfer::postgres::CHUNK_BYTES;
use crate::transfer::postgres::checksum;
use crate::transfer::postgres::digest::{self, RowHash, RowSplitter};
use crate::transfer::postgres::error::{self, PostgresCopyError};
use crate::transfer::postgres::session::{self, SESSION_SETTINGS, qualified, quote_ident};
use crate::transfer::postgres::wire::BulkSession;

/// Tables are read back in ranges of about this size, in parallel.
const READ_BACK_PART: u64 = 128 << 20;

impl DataCopy<'_> {
    /// Reads the table back from the target and compares the digest of its
    /// rows with the source's; a sentence if they differ. A big table is
    /// read as block ranges on parallel sessions (it is the last thing the
    /// data phase waits for), bulk sessions from [`DataCopy::bulk_bytes`]
    /// on.
    pub(super) async fn read_back(
        &self,
        target: &Client,
        table: &PostgresTable,
        sent: &RowDigest,
        copied_rows: u64,
    ) -> Result<Option<String>, PostgresCopyError> {
        let failed = |what: String| self.table_error(table, format!("reading back: {what}"));
        let name = qualified(&table.schema, &table.name);
        let format = digest::Format::of(table.binary);
        let parts = if self.ranges && self.workers > 1 {
            table
                .bytes
                .div_ceil(READ_BACK_PART)
                .min(self.workers as u64)
        } else {
            1
        };
        let bulk = table.bytes >= self.bulk_bytes;
        let stored = if parts < 2 {
            let statement = copy_to(table, &name, None);
            if bulk {
                read_digest_bulk(
                    self.target_server,
                    self.target_database,
                    &statement,
                    format,
                    self.row_hash,
                )
                .await
            } else {
                read_digest(target, &statement, format, self.row_hash).await
            }
            .map_err(failed)?
        } else {
            let blocks: i64 = target
                .query_one(
                    "SELECT pg_relation_size($1::text::regclass) \
                     / current_setting('block_size')::int8",
                    &[&name],
                )
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|e| failed(crate::error_chain(&e)))?;
            let step = u64::try_from(blocks).unwrap_or(0).div_ceil(parts).max(1);
            let ranges = (0..parts).map(|part| {
                let first = part * step;
                let end = if part + 1 == parts { 0 } else { first + step };
                let statement = copy_to(table, &name, Some((first, end)));
                async move {
                    if bulk {
                        return read_digest_bulk(
                            self.target_server,
                            self.target_database,
                            &statement,
                            format,
                            self.row_hash,
                        )
                        .await;
                    }
                    if part == 0 {
                        return read_digest(target, &statement, format, self.row_hash).await;
                    }
                    let session = session::connect(self.target_server, self.target_database)
                        .await
                        .map_err(|e| crate::error_chain(&e))?;
                    read_digest(&session, &statement, format, self.row_hash).await
                }
            });
            let digests = futures_util::future::try_join_all(ranges)
                .await
                .map_err(failed)?;
            let mut stored = RowDigest::default();
            for part in &digests {
                digest::merge(&mut stored, part);
            }
            stored
        };
        Ok(if stored == *sent {
            None
        } else {
            Some(format!(
                "table {}.{}: the source sent {}, the target holds {} ({copied_rows} copied)",
                table.schema,
                table.name,
                digest::describe(sent),
                digest::describe(&stored)
            ))
        })
    }

    /// Row counts and checksums on both sides; a sentence if they differ.
    pub(super) async fn verify_table(
        &self,
        target: &Client,
        table: &PostgresTable,
        copied_rows: u64,
    ) -> Result<Option<String>, PostgresCopyError> {
        let request = ChecksumTableRequest {
            transfer_id: self.transfer_id.to_owned(),
            server: self.source_server.to_owned(),
            database: self.source_database.to_owned(),
            snapshot_name: self.snapshot.to_owned(),
            schema: table.schema.clone(),
            table: table.name.clone(),
        };
        let mut source = self.source.clone();
        let (on_source, on_target) = tokio::join!(
            source.checksum_table(request),
            checksum::table_checksum(target, &table.schema, &table.name)
        );
        let on_source = on_source
            .map_err(|status| {
                let what = format!(
                    "checksum on the source: {}",
                    crate::describe_status(&status)
                );
                if error::is_transient_code(status.code()) {
                    self.transient_error(table, what)
                } else {
                    self.table_error(table, what)
                }
            })?
            .into_inner();
        let (target_rows, target_checksum) = on_target.map_err(|error| {
            self.table_error(
                table,
                format!("checksum on the target: {}", crate::error_chain(&error)),
            )
        })?;
        let name = format!("{}.{}", table.schema, table.name);
        Ok(if on_source.rows != target_rows {
            Some(format!(
                "table {name}: {} rows on the source, {target_rows} on the target ({copied_rows} copied)",
                on_source.rows
            ))
        } else if on_source.checksum != target_checksum {
            Some(format!(
                "table {name}: same row count ({target_rows}) but different contents (checksum {} on the source, {target_checksum} on the target)",
                on_source.checksum
            ))
        } else {
            None
        })
    }
}

/// `COPY ... TO STDOUT` of a table, or of a block range of it.
fn copy_to(table: &PostgresTable, name: &str, range: Option<(u64, u64)>) -> String {
    let format = if table.binary { "binary" } else { "text" };
    match range {
        None => format!(
            "COPY {name}{} TO STDOUT (FORMAT {format})",
            column_list(table)
        ),
        Some((first, end)) => {
            let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
            let mut filter = format!("ctid >= '({first},0)'::tid");
            if end != 0 {
                filter.push_str(&format!(" AND ctid < '({end},0)'::tid"));
            }
            format!(
                "COPY (SELECT {} FROM ONLY {name} WHERE {filter}) TO STDOUT (FORMAT {format})",
                columns.join(", ")
            )
        }
    }
}

/// The digest of what a `COPY ... TO STDOUT` statement outputs.
async fn read_digest(
    client: &Client,
    statement: &str,
    format: digest::Format,
    hash: RowHash,
) -> Result<RowDigest, String> {
    let stream = client
        .copy_out(statement)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = RowSplitter::new(format, hash);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| crate::error_chain(&e))?;
        rows.feed(&piece).map_err(|e| e.to_string())?;
    }
    rows.finish().map_err(|e| e.to_string())
}

/// [`read_digest`] through a bulk session ([`wire`](crate::transfer::postgres::wire)), for big
/// tables: rows are digested a chunk at a time, straight from the protocol.
async fn read_digest_bulk(
    server: &PostgresqlServer,
    database: &str,
    statement: &str,
    format: digest::Format,
    hash: RowHash,
) -> Result<RowDigest, String> {
    let mut session = BulkSession::connect(server, database, SESSION_SETTINGS)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    session
        .copy_out(statement)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let mut rows = RowSplitter::new(format, hash);
    let mut buffer = Vec::with_capacity(CHUNK_BYTES + (64 << 10));
    loop {
        buffer.clear();
        let more = session
            .read_rows(&mut buffer, CHUNK_BYTES)
            .await
            .map_err(|e| crate::error_chain(&e))?;
        rows.feed(&buffer).map_err(|e| e.to_string())?;
        if !more {
            return rows.finish().map_err(|e| e.to_string());
        }
    }
}
