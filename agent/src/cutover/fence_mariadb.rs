//! The MariaDB side of the fence and the switch (see the parent module for
//! why these locks): one `mariadb` client of the agent per server, kept
//! running, its session holding `LOCK TABLES … READ` on every base table
//! of the account's databases there; the position after it; the switch
//! (`ACCOUNT LOCK` of the account's users, their sessions killed) and its
//! undo.
//!
//! The agent has no MySQL driver: the fence is the server's own client
//! reading statements from a pipe (`--unbuffered`, so each answer comes
//! back as soon as it exists). Its session ends, and the locks with it,
//! when the agent releases it, when the agent dies (the pipe closes, the
//! client exits), or when the server's `wait_timeout`, set to the
//! deadline, finds it idle.
//!
//! A known limit: MariaDB's metadata-lock deadlock detector may pick a
//! customer's statement rather than the fence when a transaction that
//! already wrote one of the account's tables goes on to write another the
//! fence holds (error 1213, which applications retry); PostgreSQL's side
//! avoids it with a short `deadlock_timeout`, which MariaDB's metadata
//! locks have no equivalent of.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

use super::CutoverError;
use crate::config::MariadbServer;
use crate::transfer::mariadb::ClientError;
use crate::transfer::mariadb::client::{self, SESSION_SETUP, ident, literal};
use crate::transfer::mariadb::users::is_account_user;

/// The line the fence session prints once its locks are held.
const FENCED: &str = "navette-fenced";

/// One server's fence: the client whose session holds the locks.
#[derive(Debug)]
pub struct MyFence {
    pub server: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The fence session's id (`CONNECTION_ID()`), never killed by the
    /// switch.
    pub connection_id: u64,
}

/// Whole seconds, at least 1 (the server's timeouts count seconds).
fn seconds(duration: Duration) -> u64 {
    duration.as_millis().div_ceil(1000).max(1) as u64
}

/// `databases`' base tables on `server`, as `db`.`table`.
/// The line the fence session prints after the account's tables.
const LISTED: &str = "navette-listed";

/// The query of `databases`' base tables, in hexadecimal (so that no name
/// needs the client's escapes undone), then [`LISTED`].
fn tables_query(databases: &[String]) -> String {
    let mut sql = String::new();
    if !databases.is_empty() {
        let list: Vec<String> = databases.iter().map(|d| literal(d)).collect();
        sql.push_str(&format!(
            "SELECT HEX(TABLE_SCHEMA), HEX(TABLE_NAME) FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA IN ({}) ORDER BY 1, 2;\n",
            list.join(", ")
        ));
    }
    sql.push_str(&format!("SELECT {LISTED:?};\n"));
    sql
}

/// A row of [`tables_query`] as `schema`.`table`.
fn table_of(line: &str) -> Option<String> {
    let (schema, table) = line.split_once('\t')?;
    let decode = |hex: &str| -> Option<String> {
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        String::from_utf8(bytes?).ok()
    };
    Some(format!(
        "{}.{}",
        ident(&decode(schema)?),
        ident(&decode(table)?)
    ))
}

/// Fences `databases` of `server`: writers to their tables wait, readers
/// go on. Returns the fence and `@@gtid_binlog_pos` taken under it. Gives
/// up (the session ended, nothing held) if the transactions already
/// writing do not end within `acquire`.
pub async fn fence(
    server: &MariadbServer,
    databases: &[String],
    migration_id: &str,
    deadline: Duration,
    acquire: Duration,
) -> Result<(MyFence, String), CutoverError> {
    let program = server.client.display().to_string();
    let mut command = client::batch_client(server);
    command
        .arg("--unbuffered")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ClientError::Spawn {
        program: program.clone(),
        server: server.name.clone(),
        source,
    })?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(CutoverError::Precondition(format!(
            "MariaDB server {}: the fence client has no pipes",
            server.name
        )));
    };
    let io = |source| ClientError::Io {
        program: program.clone(),
        server: server.name.clone(),
        source,
    };
    // One session lists the tables, then locks them: one client and one
    // connection.
    let setup = format!(
        "{SESSION_SETUP}SET SESSION lock_wait_timeout = {acquire_s}, SESSION wait_timeout = {deadline_s}, SESSION interactive_timeout = {deadline_s};\n{}",
        tables_query(databases),
        acquire_s = seconds(acquire),
        deadline_s = seconds(deadline),
    );
    let mut lines = BufReader::new(stdout).lines();
    let mut tables = Vec::new();
    let mut started = Instant::now();
    let answer = tokio::time::timeout(acquire + Duration::from_secs(10), async {
        stdin.write_all(setup.as_bytes()).await?;
        while let Some(line) = lines.next_line().await? {
            if line.starts_with(LISTED) {
                break;
            }
            tables.extend(table_of(&line));
        }
        let lock = match tables.is_empty() {
            true => String::new(),
            false => format!(
                "LOCK TABLES {};\n",
                tables
                    .iter()
                    .map(|t| format!("{t} READ"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        stdin
            .write_all(
                format!("{lock}SELECT {FENCED:?}, CONNECTION_ID(), @@gtid_binlog_pos;\n")
                    .as_bytes(),
            )
            .await?;
        started = Instant::now();
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(FENCED) {
                return Ok(Some(rest.to_owned()));
            }
        }
        Ok::<_, std::io::Error>(None)
    })
    .await;
    let line = match answer {
        Ok(Ok(Some(line))) => line,
        Ok(Err(error)) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(io(error).into());
        }
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            let text = text.trim().to_owned();
            if text.contains("1205") || text.contains("Lock wait timeout") || text.is_empty() {
                return Err(CutoverError::GaveUp(format!(
                    "MariaDB server {}: transactions writing to the account's tables did not end within {acquire:?}{}",
                    server.name,
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!(" ({text})")
                    }
                )));
            }
            return Err(CutoverError::MariaDb(ClientError::Failed {
                program,
                server: server.name.clone(),
                status: std::process::ExitStatus::default(),
                stderr: text,
            }));
        }
    };
    // The reader stays alive with the client: a closed stdout would end it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink).await;
    });
    let mut fields = line.split('\t').filter(|f| !f.is_empty());
    let connection_id: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    let position = fields.next().unwrap_or("").to_owned();
    tracing::info!(
        message = "MariaDB databases fenced",
        migration = %migration_id,
        server = %server.name,
        tables = tables.len(),
        %position,
        took_us = started.elapsed().as_micros() as u64
    );
    Ok((
        MyFence {
            server: server.name.clone(),
            child,
            stdin: Some(stdin),
            connection_id,
        },
        position,
    ))
}

/// Releases the fence: `UNLOCK TABLES`, then the client ends (its end
/// releases the locks too, whatever happened to the statement).
pub async fn release(mut fence: MyFence) {
    if let Some(mut stdin) = fence.stdin.take() {
        let _ = stdin.write_all(b"UNLOCK TABLES;\n").await;
        drop(stdin);
    }
    match tokio::time::timeout(Duration::from_secs(2), fence.child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            let _ = fence.child.start_kill();
            let _ = fence.child.wait().await;
        }
    }
}

/// The account's users on `server`: (user, host, locked already).
async fn account_users(
    server: &MariadbServer,
    account: &str,
) -> Result<Vec<(String, String, bool)>, CutoverError> {
    let rows = client::query(
        server,
        "SELECT User, Host, IFNULL(JSON_VALUE(Priv, '$.account_locked'), 'false') FROM mysql.global_priv;\n",
        Some(client::SHORT),
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [user, host, locked] if is_account_user(user, account) => {
                Some((user.clone(), host.clone(), locked == "true"))
            }
            _ => None,
        })
        .collect())
}

/// The switch on `server`, in one client run: each of `account`'s users
/// not locked yet (`to_lock`: call [`locked_by_switch`] first and record
/// it) is locked, then every session of its users (`users`, by name) is
/// killed; the fence's (`spare`) is the agent's own user's, never theirs.
/// Twice: a session that logged in while the users were being locked.
/// Returns the sessions there were to kill.
pub async fn switch(
    server: &MariadbServer,
    account: &str,
    to_lock: &[(String, String)],
    users: &[String],
    spare: Option<u64>,
) -> Result<u32, CutoverError> {
    let mut sql = String::new();
    for (user, host) in to_lock {
        sql.push_str(&format!(
            "ALTER USER {}@{} ACCOUNT LOCK;\n",
            literal(user),
            literal(host)
        ));
    }
    sql.push_str(&format!(
        "SELECT ID, User FROM information_schema.PROCESSLIST WHERE ID <> {};\n",
        spare.unwrap_or(0)
    ));
    for _ in 0..2 {
        for user in users {
            // Every host's sessions of that user name.
            sql.push_str(&format!("KILL CONNECTION USER {};\n", literal(user)));
        }
    }
    let sessions = client::query(server, &sql, Some(client::SHORT)).await?;
    Ok(account_sessions(&sessions, account).len() as u32)
}

/// The ids among `sessions` (id, user) whose user is one of `account`'s.
fn account_sessions(sessions: &[Vec<String>], account: &str) -> Vec<u64> {
    sessions
        .iter()
        .filter_map(|row| match row.as_slice() {
            [id, user] if is_account_user(user, account) => id.parse::<u64>().ok(),
            _ => None,
        })
        .collect()
}

/// The users of `account` on `server` that a switch would lock (those not
/// locked already), and the names of all its users (whose sessions the
/// switch kills).
pub async fn locked_by_switch(
    server: &MariadbServer,
    account: &str,
) -> Result<(Vec<(String, String)>, Vec<String>), CutoverError> {
    let users = account_users(server, account).await?;
    let mut names: Vec<String> = users.iter().map(|(user, _, _)| user.clone()).collect();
    names.sort();
    names.dedup();
    let to_lock = users
        .into_iter()
        .filter(|(_, _, locked)| !locked)
        .map(|(user, host, _)| (user, host))
        .collect();
    Ok((to_lock, names))
}

/// Undoes [`switch`]: the users it locked are unlocked.
pub async fn unswitch(
    server: &MariadbServer,
    locked: &[(String, String)],
) -> Result<(), CutoverError> {
    let mut sql = String::new();
    for (user, host) in locked {
        sql.push_str(&format!(
            "ALTER USER IF EXISTS {}@{} ACCOUNT UNLOCK;\n",
            literal(user),
            literal(host)
        ));
    }
    if !sql.is_empty() {
        client::run(server, &sql, Some(client::SHORT)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_table_is_decoded_and_quoted() {
        // `shop`, `we`ird` in hexadecimal.
        assert_eq!(
            table_of("73686F70\t7765606972640A").as_deref(),
            Some("`shop`.`we``ird\n`")
        );
        assert_eq!(table_of("7A\tZZ"), None);
        assert_eq!(table_of("navette-listed"), None);
    }
}
