//! Loading: the dump stream fed to this host's `mariadb` client, and the
//! progress it makes.

use std::collections::HashMap;
use std::process::Stdio;

use navette_proto::v1::mariadb_source_client::MariadbSourceClient;
use navette_proto::v1::{DatabaseCopy, MariadbDatabaseDescription, MariadbTableChecksum};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

use super::{MariadbCopyError, request, source_error};
use crate::config::MariadbServer;
use crate::transfer::mariadb::client::{self, ClientError, SESSION_SETUP};
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

/// Streams the dump into this host's `mariadb` client; the checksums the
/// source sent and the bytes received.
pub(super) async fn load(
    source: &mut MariadbSourceClient<Channel>,
    transfer_id: &str,
    copy: &DatabaseCopy,
    server: &MariadbServer,
    description: &MariadbDatabaseDescription,
    progress: &Progress,
) -> Result<(Vec<MariadbTableChecksum>, u64), MariadbCopyError> {
    let database = copy.target_database.as_str();
    let mut stream = source
        .dump(request(transfer_id, copy))
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
    let mut credit = ByteCredit::new(description);
    let mut checksums = Vec::new();
    let mut received = 0u64;
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
        let size = chunk.sql.len() as u64;
        received += size;
        progress.add(&progress.bytes_sent, size);
        if let Err(error) = stdin.write_all(&chunk.sql).await {
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
        Some(task) => task.await.unwrap_or_default(),
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
    Ok((checksums, received))
}

#[cfg(test)]
mod tests {
    use super::*;
    use navette_proto::v1::MariadbTable;

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
