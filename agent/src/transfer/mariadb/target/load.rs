//! Loading: the dump stream fed, through the DEFINER check, to a `mariadb`
//! client logged in as the copy's loader, and the progress it makes.
//!
//! The client runs with `--binary-mode` (no client commands such as `\!`
//! from the stream), `--local-infile=0` (a `LOAD DATA LOCAL INFILE` in the
//! stream would otherwise make the client read a file of this host and
//! send it to the server) and `--comments` (comments reach the server as
//! they came, so what the server parses is byte for byte what was
//! checked). When the check refuses, the client is killed before it
//! receives the refused bytes: closing its input would run the statement
//! it holds.

use std::collections::HashMap;
use std::process::Stdio;

use navette_proto::v1::mariadb_source_client::MariadbSourceClient;
use navette_proto::v1::{
    DatabaseCopy, MariadbDatabaseDescription, MariadbDatabaseRequest, MariadbTableChecksum,
};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

use super::{MariadbCopyError, request, source_error};
use crate::config::MariadbServer;
use crate::transfer::mariadb::client::{self, ClientError, SESSION_SETUP};
use crate::transfer::mariadb::definers::DefinerCheck;
use crate::transfer::progress::Progress;

/// Credits `bytes_done` as a table's rows arrive, in proportion to the
/// source's estimates, so the rate and ETA move during a big table.
struct ByteCredit {
    /// Per table: (estimated bytes, estimated rows, rows seen, credited).
    tables: HashMap<String, (u64, u64, u64, u64)>,
    credited: u64,
    total: u64,
}

impl ByteCredit {
    fn new(description: &MariadbDatabaseDescription) -> ByteCredit {
        ByteCredit {
            tables: description
                .tables
                .iter()
                .map(|t| (t.name.clone(), (t.data_bytes, t.rows_estimate, 0, 0)))
                .collect(),
            credited: 0,
            total: description.tables.iter().map(|t| t.data_bytes).sum(),
        }
    }

    /// `rows` more rows of `table`; `done` when it is complete.
    fn credit(&mut self, progress: &Progress, table: &str, rows: u64, done: bool) {
        let Some((bytes, estimate, seen, credited)) = self.tables.get_mut(table) else {
            return;
        };
        *seen += rows;
        let due = if done {
            *bytes
        } else if *estimate == 0 {
            0
        } else {
            let share = u128::from(*bytes) * u128::from(*seen) / u128::from(*estimate);
            u64::try_from(share).unwrap_or(u64::MAX).min(*bytes)
        };
        if due > *credited {
            let more = due - *credited;
            *credited = due;
            self.credited += more;
            progress.add(&progress.bytes_done, more);
        }
    }

    /// Whatever estimates were not credited (tables gone since).
    fn finish(&mut self, progress: &Progress) {
        if self.total > self.credited {
            progress.add(&progress.bytes_done, self.total - self.credited);
            self.credited = self.total;
        }
    }
}

/// What ends every load: a statement of Navette's, so that comments after
/// the source's last statement are sent with it, never as a query of
/// their own.
const LOAD_END: &[u8] = b"\nDO 0;\n";

/// Streams the dump into a `mariadb` client logged in to `server` (the
/// loader's session), every DEFINER in it one of `definers`; the checksums
/// the source sent, the bytes received, and the snapshot's binlog GTID
/// position when `snapshot_position` asked the source for it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn load(
    source: &mut MariadbSourceClient<Channel>,
    transfer_id: &str,
    snapshot_position: bool,
    copy: &DatabaseCopy,
    server: &MariadbServer,
    description: &MariadbDatabaseDescription,
    definers: Vec<(String, String)>,
    progress: &Progress,
) -> Result<(Vec<MariadbTableChecksum>, u64, Option<String>), MariadbCopyError> {
    let database = copy.target_database.as_str();
    let mut stream = source
        .dump(MariadbDatabaseRequest {
            snapshot_position,
            ..request(transfer_id, copy)
        })
        .await
        .map_err(|status| source_error("Dump", &copy.source_database, &status))?
        .into_inner();
    let program = server.client.display().to_string();
    let mut command = client::command(server, &server.client);
    command
        .args([
            "--batch",
            // No client commands (`\!` would run a shell) from the stream.
            "--binary-mode",
            "--local-infile=0",
            "--comments",
            "--connect-timeout=10",
            "--max-allowed-packet=1073741824",
        ])
        .arg(format!("--database={database}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| MariadbCopyError::Target {
        server: server.name.clone(),
        source: ClientError::Spawn {
            program: program.clone(),
            server: server.name.clone(),
            source,
        },
    })?;
    let stderr = child.stderr.take().map(|mut stderr| {
        tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut text).await;
            String::from_utf8_lossy(&text).trim().to_owned()
        })
    });
    let load_error = |detail: String| MariadbCopyError::Load {
        server: server.name.clone(),
        database: database.to_owned(),
        detail,
    };
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| load_error("the client has no standard input".to_owned()))?;
    let mut check = DefinerCheck::new(definers);
    let refused = |finding: String| MariadbCopyError::Refused {
        database: database.to_owned(),
        findings: vec![finding],
    };
    let mut credit = ByteCredit::new(description);
    let mut checksums = Vec::new();
    let mut received = 0u64;
    let mut snapshot_gtid_position = None;
    let mut write_failed = None;
    let _ = stdin.write_all(SESSION_SETUP.as_bytes()).await;
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(status) => {
                let _ = child.kill().await;
                return Err(source_error("Dump", &copy.source_database, &status));
            }
        };
        if snapshot_position && !chunk.snapshot_gtid_position.is_empty() {
            snapshot_gtid_position = Some(chunk.snapshot_gtid_position.clone());
        }
        let size = chunk.sql.len() as u64;
        received += size;
        progress.add(&progress.bytes_sent, size);
        crate::metrics::copied_bytes(crate::metrics::Engine::Mariadb, size);
        let passed = match check.feed(&chunk.sql) {
            Ok(passed) => passed,
            Err(finding) => {
                let _ = child.kill().await;
                return Err(refused(finding));
            }
        };
        if let Err(error) = stdin.write_all(&passed).await {
            // The client stopped: its stderr says why.
            write_failed = Some(error);
            break;
        }
        if !chunk.table.is_empty() {
            let done = chunk.table_done.is_some();
            credit.credit(progress, &chunk.table, chunk.rows, done);
        }
        if let Some(done) = chunk.table_done {
            if !description.tables.iter().any(|t| t.name == done.table) {
                progress.add(&progress.tables_total, 1);
            }
            progress.add(&progress.tables_done, 1);
            checksums.push(done);
        }
    }
    if write_failed.is_none() {
        let rest = match check.finish() {
            Ok(rest) => rest,
            Err(finding) => {
                let _ = child.kill().await;
                return Err(refused(finding));
            }
        };
        if let Err(error) = stdin.write_all(&[rest.as_slice(), LOAD_END].concat()).await {
            write_failed = Some(error);
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .await
        .map_err(|source| MariadbCopyError::Target {
            server: server.name.clone(),
            source: ClientError::Io {
                program: program.clone(),
                server: server.name.clone(),
                source,
            },
        })?;
    let stderr = match stderr {
        Some(task) => shorten(&task.await.unwrap_or_default()),
        None => String::new(),
    };
    if !status.success() {
        return Err(load_error(format!("{program} exited ({status}): {stderr}")));
    }
    if let Some(error) = write_failed {
        return Err(load_error(format!(
            "writing to {program}: {error}; {stderr}"
        )));
    }
    credit.finish(progress);
    Ok((checksums, received, snapshot_gtid_position))
}

/// The client's complaint, at most about 3 KiB: it echoes the failed
/// statement, which may be a 1 MiB INSERT; the error line is at the end.
fn shorten(stderr: &str) -> String {
    const HEAD: usize = 1024;
    const TAIL: usize = 2048;
    if stderr.len() <= HEAD + TAIL {
        return stderr.to_owned();
    }
    let mut head = HEAD;
    while !stderr.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = stderr.len() - TAIL;
    while !stderr.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} [... {} bytes ...] {}",
        &stderr[..head],
        tail - head,
        &stderr[tail..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use navette_proto::v1::MariadbTable;

    #[test]
    fn long_complaints_keep_their_start_and_their_error_line() {
        let long = format!(
            "--------------\nINSERT {}\nERROR 1142 (42000) at line 9: denied",
            "é".repeat(4000)
        );
        let short = shorten(&long);
        assert!(short.len() < 3200 && short.ends_with("denied") && short.starts_with("-----"));
        assert_eq!(shorten("ERROR 1"), "ERROR 1");
    }

    #[test]
    fn bytes_are_credited_as_rows_arrive_and_never_beyond_the_estimate() {
        let progress = Progress::new("t-1");
        let description = MariadbDatabaseDescription {
            tables: vec![MariadbTable {
                name: "big".into(),
                rows_estimate: 100,
                data_bytes: 1000,
                ..MariadbTable::default()
            }],
            ..MariadbDatabaseDescription::default()
        };
        let mut credit = ByteCredit::new(&description);
        credit.credit(&progress, "big", 50, false);
        assert_eq!(progress.snapshot().bytes_done, 500);
        credit.credit(&progress, "big", 500, false);
        assert_eq!(progress.snapshot().bytes_done, 1000);
        credit.credit(&progress, "big", 0, true);
        credit.credit(&progress, "unknown", 10, true);
        credit.finish(&progress);
        assert_eq!(progress.snapshot().bytes_done, 1000);
    }
}
