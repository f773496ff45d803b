//! What the source streams: one table's COPY output (digested on the
//! way), the pg_dump archive, and the large objects' contents.

use futures_util::StreamExt;
use navette_proto::v1::{CopyFormat, CopyTableRequest, LargeObjectChunk, PostgresChunk};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tonic::Status;

use super::SourceError;
use super::snapshot::{check_snapshot_name, open_in_snapshot};
use crate::config::PostgresqlServer;
use crate::transfer::postgres::describe::COLUMNS;
use crate::transfer::postgres::session::{
    SESSION_SETTINGS, conninfo_value, qualified, quote_ident, quote_literal,
};
use crate::transfer::postgres::tools::PgTools;
use crate::transfer::postgres::wire::{BulkSession, WireError};
use crate::transfer::postgres::{CHUNK_BYTES, digest};

/// Large objects are read and sent in pieces of this size.
pub(super) const LARGE_OBJECT_PIECE: i32 = 1 << 20;

/// Finds a plain table of the database, in the snapshot.
pub(super) async fn find_table(
    client: &Client,
    server: &PostgresqlServer,
    database: &str,
    schema: &str,
    table: &str,
) -> Result<u32, SourceError> {
    let row = client
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r'",
            &[&schema, &table],
        )
        .await
        .map_err(|source| SourceError::Query {
            server: server.name.clone(),
            database: database.to_owned(),
            what: format!("finding table {schema}.{table}"),
            source,
        })?;
    let oid = row.map(|row| row.try_get::<_, u32>(0)).transpose();
    match oid {
        Ok(Some(oid)) => Ok(oid),
        Ok(None) => Err(SourceError::NoSuchTable {
            server: server.name.clone(),
            database: database.to_owned(),
            schema: schema.to_owned(),
            table: table.to_owned(),
        }),
        Err(source) => Err(SourceError::Query {
            server: server.name.clone(),
            database: database.to_owned(),
            what: format!("finding table {schema}.{table}"),
            source,
        }),
    }
}

/// The COPY TO statement for a request, in a session that holds the
/// snapshot.
pub(super) async fn start_copy(
    server: &PostgresqlServer,
    r: &CopyTableRequest,
) -> Result<(Client, String, digest::Format), SourceError> {
    check_snapshot_name(&r.snapshot_name)?;
    let (format, digest_format) =
        match CopyFormat::try_from(r.format).unwrap_or(CopyFormat::Unspecified) {
            CopyFormat::Unspecified | CopyFormat::Binary => ("binary", digest::Format::Binary),
            CopyFormat::Text => ("text", digest::Format::Text),
        };
    let block = |n: u64| {
        u32::try_from(n).map_err(|_| SourceError::BadRequest(format!("block {n} is out of range")))
    };
    let (first, end) = (block(r.first_block)?, block(r.end_block)?);
    let client = open_in_snapshot(server, &r.database, &r.snapshot_name).await?;
    let oid = find_table(&client, server, &r.database, &r.schema, &r.table).await?;
    let columns = client
        .query(COLUMNS, &[&vec![oid]])
        .await
        .and_then(|rows| {
            rows.iter()
                .map(|row| row.try_get::<_, String>(1).map(|c| quote_ident(&c)))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|source| SourceError::Query {
            server: server.name.clone(),
            database: r.database.clone(),
            what: format!("listing the columns of {}.{}", r.schema, r.table),
            source,
        })?
        .join(", ");
    let table = qualified(&r.schema, &r.table);
    let statement = if first == 0 && end == 0 {
        if columns.is_empty() {
            format!("COPY {table} TO STDOUT (FORMAT {format})")
        } else {
            format!("COPY {table} ({columns}) TO STDOUT (FORMAT {format})")
        }
    } else {
        let mut range = format!("ctid >= '({first},0)'::tid");
        if end != 0 {
            range.push_str(&format!(" AND ctid < '({end},0)'::tid"));
        }
        format!(
            "COPY (SELECT {columns} FROM ONLY {table} WHERE {range}) TO STDOUT (FORMAT {format})"
        )
    };
    Ok((client, statement, digest_format))
}

/// Why streaming a table stopped.
pub(super) enum CopyFailure {
    Query(tokio_postgres::Error),
    Bulk(WireError),
    Digest(digest::DigestError),
}

/// Opens a bulk session in the request's snapshot and starts `statement`
/// (a COPY TO) on it.
pub(super) async fn start_bulk_copy(
    server: &PostgresqlServer,
    r: &CopyTableRequest,
    statement: &str,
) -> Result<BulkSession, SourceError> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |source: WireError| SourceError::Bulk {
            server: server.name.clone(),
            database: r.database.clone(),
            what,
            source: Box::new(source),
        }
    };
    let mut session = BulkSession::connect(server, &r.database, SESSION_SETTINGS)
        .await
        .map_err(failed("connecting (bulk session)"))?;
    session
        .execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&r.snapshot_name)
        ))
        .await
        .map_err(|source| match source {
            // The snapshot could not be imported: its holder is gone.
            WireError::Server { .. } => SourceError::SnapshotGone {
                server: server.name.clone(),
                database: r.database.clone(),
                snapshot: r.snapshot_name.clone(),
                source: source.into(),
            },
            source => failed("importing the snapshot")(source),
        })?;
    session
        .copy_out(statement)
        .await
        .map_err(failed(&format!("COPY of table {}.{}", r.schema, r.table)))?;
    Ok(session)
}

/// [`stream_copy`] on a bulk session: rows are appended to each chunk
/// straight from the protocol, and digested a chunk at a time.
pub(super) async fn stream_bulk_copy(
    mut session: BulkSession,
    format: digest::Format,
    hash: digest::RowHash,
    sender: &mpsc::Sender<Result<PostgresChunk, Status>>,
) -> Result<(), CopyFailure> {
    let mut rows = digest::RowSplitter::new(format, hash);
    loop {
        let mut data = Vec::with_capacity(CHUNK_BYTES + 64 * 1024);
        let more = session
            .read_rows(&mut data, CHUNK_BYTES)
            .await
            .map_err(CopyFailure::Bulk)?;
        rows.feed(&data).map_err(CopyFailure::Digest)?;
        if !more {
            session.execute("COMMIT").await.map_err(CopyFailure::Bulk)?;
            let digest = rows.finish().map_err(CopyFailure::Digest)?;
            if !data.is_empty() {
                let _ = sender.send(Ok(PostgresChunk { data, digest: None })).await;
            }
            let _ = sender
                .send(Ok(PostgresChunk {
                    data: Vec::new(),
                    digest: Some(digest),
                }))
                .await;
            return Ok(());
        }
        if sender
            .send(Ok(PostgresChunk { data, digest: None }))
            .await
            .is_err()
        {
            // The target left; dropping the session ends the COPY.
            return Ok(());
        }
    }
}

/// Streams COPY output in chunks of about [`CHUNK_BYTES`], digesting the
/// rows as they go; the last message carries the digest.
pub(super) async fn stream_copy(
    client: &Client,
    statement: &str,
    format: digest::Format,
    hash: digest::RowHash,
    sender: &mpsc::Sender<Result<PostgresChunk, Status>>,
) -> Result<(), CopyFailure> {
    let stream = client
        .copy_out(statement)
        .await
        .map_err(CopyFailure::Query)?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = digest::RowSplitter::new(format, hash);
    let mut buffer = Vec::with_capacity(CHUNK_BYTES + 64 * 1024);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(CopyFailure::Query)?;
        rows.feed(&piece).map_err(CopyFailure::Digest)?;
        buffer.extend_from_slice(&piece);
        if buffer.len() >= CHUNK_BYTES {
            let data = std::mem::replace(&mut buffer, Vec::with_capacity(CHUNK_BYTES + 64 * 1024));
            if sender
                .send(Ok(PostgresChunk { data, digest: None }))
                .await
                .is_err()
            {
                // The target left; dropping the session ends the COPY.
                return Ok(());
            }
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(CopyFailure::Query)?;
    let digest = rows.finish().map_err(CopyFailure::Digest)?;
    if !buffer.is_empty() {
        let _ = sender
            .send(Ok(PostgresChunk {
                data: buffer,
                digest: None,
            }))
            .await;
    }
    let _ = sender
        .send(Ok(PostgresChunk {
            data: Vec::new(),
            digest: Some(digest),
        }))
        .await;
    Ok(())
}

/// Runs pg_dump (pre-data and post-data, custom format) in the snapshot and
/// streams its output.
pub(super) async fn dump(
    server: &PostgresqlServer,
    database: &str,
    snapshot: &str,
    tools: &PgTools,
    sender: &mpsc::Sender<Result<PostgresChunk, Status>>,
) -> Result<(), SourceError> {
    let failed = |message: String| SourceError::Dump {
        server: server.name.clone(),
        database: database.to_owned(),
        message,
        interrupted: false,
    };
    let mut command = tools.command("pg_dump", server);
    command
        .arg("--format=custom")
        .arg("--section=pre-data")
        .arg("--section=post-data")
        .arg("--no-subscriptions")
        .arg(format!("--snapshot={snapshot}"))
        .arg("--lock-wait-timeout=30000")
        .arg(format!("--dbname=dbname={}", conninfo_value(database)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|error| {
        failed(format!(
            "cannot run {}: {error}",
            tools.program("pg_dump").display()
        ))
    })?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(failed("no pipes to pg_dump".to_owned()));
    };
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = stdout
            .read(&mut buffer)
            .await
            .map_err(|error| failed(format!("reading its output: {error}")))?;
        if read == 0 {
            break;
        }
        let data = buffer[..read].to_vec();
        if sender
            .send(Ok(PostgresChunk { data, digest: None }))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    let exit = child
        .wait()
        .await
        .map_err(|error| failed(format!("waiting for it: {error}")))?;
    let errors = errors.await.unwrap_or_default();
    if !exit.success() {
        // Whether it was cut short (the server restarted, the snapshot's
        // holder ended) rather than refused: the snapshot is gone.
        return Err(SourceError::Dump {
            server: server.name.clone(),
            database: database.to_owned(),
            message: format!("{exit}: {}", errors.trim()),
            interrupted: open_in_snapshot(server, database, snapshot).await.is_err(),
        });
    }
    Ok(())
}

/// Streams every large object, in oid order, with its SHA-256.
pub(super) async fn stream_large_objects(
    client: &Client,
    sender: &mpsc::Sender<Result<LargeObjectChunk, Status>>,
) -> Result<(), tokio_postgres::Error> {
    let oids: Vec<u32> = client
        .query("SELECT oid FROM pg_largeobject_metadata ORDER BY oid", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let piece = client.prepare("SELECT lo_get($1, $2, $3)").await?;
    for oid in oids {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut offset: i64 = 0;
        loop {
            let data: Vec<u8> = client
                .query_one(&piece, &[&oid, &offset, &LARGE_OBJECT_PIECE])
                .await?
                .try_get(0)?;
            digest.update(&data);
            let length = data.len();
            let last = length < usize::try_from(LARGE_OBJECT_PIECE).unwrap_or(usize::MAX);
            let chunk = LargeObjectChunk {
                oid,
                offset: u64::try_from(offset).unwrap_or(0),
                data,
                last,
                sha256: if last {
                    digest.clone().finish().as_ref().to_vec()
                } else {
                    Vec::new()
                },
            };
            if sender.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
            if last {
                break;
            }
            offset += i64::try_from(length).unwrap_or(0);
        }
    }
    client.batch_execute("COMMIT").await
}
