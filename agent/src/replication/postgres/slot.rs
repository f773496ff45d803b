//! The logical replication slot a migration's copy starts from: created on
//! a replication connection with `CREATE_REPLICATION_SLOT ... LOGICAL
//! pgoutput (SNAPSHOT 'export')`, which gives, at one instant, the slot's
//! consistent point and a snapshot of the database at exactly that point.
//! A copy that reads in that snapshot and a subscription that streams from
//! that slot together see every committed change once: the snapshot holds
//! what committed before the point, the slot what committed after.
//!
//! tokio-postgres (0.7) has no replication connections, so the replication
//! command runs through the source's own `psql` on a connection opened
//! with `replication=database`. The exported snapshot lives only while that
//! walsender stays idle, so the `psql` process is kept (stdin open, no
//! second command) for as long as the snapshot is held: [`ExportedSlot`]
//! owns it, and dropping it ends the connection (the slot stays).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio_postgres::Client;

use super::{ReplicationError, check_object_name};
use crate::config::PostgresqlServer;
use crate::transfer::postgres::session::{conninfo_value, quote_ident};
use crate::transfer::postgres::tools::PgTools;

/// How long creating the slot may take: it waits for transactions running
/// when it starts to end, so a customer's long transaction delays it.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// A slot just created, and the walsender session keeping its exported
/// snapshot importable.
#[derive(Debug)]
pub struct ExportedSlot {
    pub slot_name: String,
    /// The slot's consistent point, e.g. `0/1A2B3C4`.
    pub consistent_lsn: String,
    /// What `SET TRANSACTION SNAPSHOT` takes.
    pub snapshot_name: String,
    /// The `psql` holding the replication connection; killed on drop.
    walsender: Child,
}

impl ExportedSlot {
    /// Whether the replication connection is still there (the snapshot
    /// can still be imported by a session that has not imported it yet).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.walsender.try_wait(), Ok(None))
    }
}

/// Drops `slot` on `client`'s server if it exists (ending the walsender
/// that uses it first). Harmless when it does not.
pub async fn drop_slot(client: &Client, server: &str, slot: &str) -> Result<(), ReplicationError> {
    let query = |what: &str| ReplicationError::query(server, what);
    for _ in 0..20 {
        let row = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(query("looking for the replication slot"))?;
        let Some(row) = row else { return Ok(()) };
        let pid: Option<i32> = row.try_get(0).map_err(query("reading the slot"))?;
        if let Some(pid) = pid {
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(query("ending the session using the replication slot"))?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => return Ok(()),
            // Taken again, or dropped meanwhile: look again.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Err(ReplicationError::Busy {
        server: server.to_owned(),
        what: format!("replication slot {slot} stays in use"),
    })
}

/// Creates `slot` on `database` of `server` (an earlier one of that name,
/// left by an attempt that failed, is dropped first: a slot nobody
/// streamed from yet holds nothing), and exports its snapshot.
pub async fn create_exported(
    server: &PostgresqlServer,
    client: &Client,
    tools: &PgTools,
    database: &str,
    slot: &str,
) -> Result<ExportedSlot, ReplicationError> {
    check_object_name(slot)?;
    drop_slot(client, &server.name, slot).await?;
    let failed = |message: String| ReplicationError::Slot {
        server: server.name.clone(),
        database: database.to_owned(),
        slot: slot.to_owned(),
        message,
    };
    let mut command = tools.command("psql", server);
    command
        .arg("-X")
        .arg("-A")
        .arg("-t")
        .arg("-q")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg(format!(
            "--dbname=dbname={} replication=database",
            conninfo_value(database)
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|error| {
        failed(format!(
            "cannot run {}: {error}",
            tools.program("psql").display()
        ))
    })?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(failed("no pipes to psql".to_owned()));
    };
    let statement = format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export');\n",
        quote_ident(slot)
    );
    stdin
        .write_all(statement.as_bytes())
        .await
        .map_err(|error| failed(format!("writing to psql: {error}")))?;
    stdin
        .flush()
        .await
        .map_err(|error| failed(format!("writing to psql: {error}")))?;
    // stdin stays open (moved back into the child's keeping below): psql
    // waits for a next command, and the walsender keeps the snapshot.
    let mut line = String::new();
    let read =
        tokio::time::timeout(CREATE_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
    let parsed = match read {
        Ok(Ok(n)) if n > 0 => parse_slot_line(&line),
        Ok(_) | Err(_) => None,
    };
    let Some((consistent_lsn, snapshot_name)) = parsed else {
        let _ = child.start_kill();
        let mut errors = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut errors)).await;
        let errors = errors.trim();
        return Err(failed(if errors.is_empty() {
            format!("psql answered {:?}", line.trim())
        } else {
            errors.to_owned()
        }));
    };
    child.stdin = Some(stdin);
    Ok(ExportedSlot {
        slot_name: slot.to_owned(),
        consistent_lsn,
        snapshot_name,
        walsender: child,
    })
}

/// `slot|0/1A2B3C4|00000003-00000002-1|pgoutput` gives the LSN and the
/// snapshot name.
fn parse_slot_line(line: &str) -> Option<(String, String)> {
    let fields: Vec<&str> = line.trim().split('|').collect();
    let [_, lsn, snapshot, _] = fields[..] else {
        return None;
    };
    let lsn_ok = lsn.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
    });
    let snapshot_ok =
        !snapshot.is_empty() && snapshot.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-');
    (lsn_ok && snapshot_ok).then(|| (lsn.to_owned(), snapshot.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_line_is_read() {
        assert_eq!(
            parse_slot_line("navette_x|0/1A2B3C4|00000003-00000002-1|pgoutput\n"),
            Some(("0/1A2B3C4".to_owned(), "00000003-00000002-1".to_owned()))
        );
        assert_eq!(parse_slot_line("ERROR: nope"), None);
        assert_eq!(parse_slot_line("s|0/1;x|00000003-1|pgoutput"), None);
    }
}
