//! The server's own command-line tools, `mariadb` and `mariadb-dump`, run
//! through `tokio::process` (the agent has no MySQL driver), and the SQL
//! quoting every statement built here goes through.
//!
//! Every run names the server's socket and user explicitly and passes the
//! password in `MYSQL_PWD`, never on the command line; SQL goes in on
//! standard input (no argument-length limit, nothing in `ps`). Results come
//! back in batch mode, UTF-8 (`--default-character-set=utf8mb4`), with the
//! client's escaping undone by [`unescape`]. The same functions serve the
//! server's administrative user (the agent's configuration) and a copy's
//! loader (a `MariadbServer` with the loader's name and password).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::MariadbServer;

/// How long a short statement (catalogue reads, users, grants) may take.
pub(crate) const SHORT: Duration = Duration::from_secs(60);

/// Statements every session starts with: no surprise from the server's
/// global `sql_mode` (NO_BACKSLASH_ESCAPES would break [`literal`],
/// ANSI_QUOTES would not), and TIMESTAMP values read and written in UTC.
pub(crate) const SESSION_SETUP: &str =
    "SET SESSION sql_mode='NO_ENGINE_SUBSTITUTION', time_zone='+00:00';\n";

/// Why a tool run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot run {program} for MariaDB server {server}: {source}")]
    Spawn {
        program: String,
        server: String,
        source: std::io::Error,
    },
    #[error("{program} on MariaDB server {server}: {source}")]
    Io {
        program: String,
        server: String,
        source: std::io::Error,
    },
    #[error("{program} on MariaDB server {server} failed ({status}): {stderr}")]
    Failed {
        program: String,
        server: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{program} on MariaDB server {server} gave no answer within {seconds} s")]
    Timeout {
        program: String,
        server: String,
        seconds: u64,
    },
    #[error("{program} on MariaDB server {server} printed invalid UTF-8")]
    Utf8 { program: String, server: String },
    #[error("MariaDB server {server} answered something unexpected to {what}: {line:?}")]
    Unexpected {
        server: String,
        what: &'static str,
        line: String,
    },
}

/// The dump tool that goes with the server's configured client: `mysqldump`
/// next to a `mysql` client, `mariadb-dump` otherwise, in the same directory
/// when the client is given as a path.
pub(super) fn dump_tool(server: &MariadbServer) -> PathBuf {
    companion_tool(server, "mysqldump", "mariadb-dump")
}

/// The tool of the server's client suite: `mysql_name` next to a `mysql`
/// client, `mariadb_name` otherwise, in the client's directory when it is
/// given as a path.
pub(crate) fn companion_tool(
    server: &MariadbServer,
    mysql_name: &str,
    mariadb_name: &str,
) -> PathBuf {
    let name = match server.client.file_name().and_then(|n| n.to_str()) {
        Some("mysql") => mysql_name,
        _ => mariadb_name,
    };
    match server.client.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// A command for `program` connected to `server` (socket, user, password).
/// A copy's loader reads no option file: a `password=` of the host's
/// `[client]` section would override its own (`MYSQL_PWD` comes last).
pub(crate) fn command(server: &MariadbServer, program: &Path) -> Command {
    let mut command = connected(server, program);
    command.arg("--default-character-set=utf8mb4");
    command
}

/// [`command`] without a character set, for a tool that takes none
/// (`mariadb-binlog`).
pub(crate) fn connected(server: &MariadbServer, program: &Path) -> Command {
    let mut command = Command::new(program);
    if server.user.starts_with(super::users::LOADER_PREFIX) {
        command.arg("--no-defaults");
    }
    command
        .arg(format!("--socket={}", server.socket.display()))
        .arg(format!("--user={}", server.user))
        .kill_on_drop(true);
    match server.password.as_deref() {
        Some(password) => command.env("MYSQL_PWD", password),
        None => command.env_remove("MYSQL_PWD"),
    };
    command
}

/// A `mariadb` client in batch mode reading SQL from standard input.
pub(crate) fn batch_client(server: &MariadbServer) -> Command {
    let mut command = command(server, &server.client);
    command.args([
        "--batch",
        "--skip-column-names",
        "--connect-timeout=10",
        "--max-allowed-packet=1073741824",
    ]);
    command
}

/// Runs `sql` (after [`SESSION_SETUP`]) in one session; the rows of every
/// result, fields unescaped. `timeout`: `None` for statements whose length
/// grows with the data (checksums).
pub(crate) async fn query(
    server: &MariadbServer,
    sql: &str,
    timeout: Option<Duration>,
) -> Result<Vec<Vec<String>>, ClientError> {
    let output = run(server, sql, timeout).await?;
    Ok(output
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.split('\t').map(unescape_str).collect())
        .collect())
}

/// `@@gtid_binlog_pos`: everything the server has logged so far.
pub(crate) async fn gtid_binlog_pos(server: &MariadbServer) -> Result<String, ClientError> {
    let rows = query(server, "SELECT @@GLOBAL.gtid_binlog_pos;\n", Some(SHORT)).await?;
    Ok(rows
        .first()
        .and_then(|row| row.first())
        .cloned()
        .unwrap_or_default())
}

/// Runs `sql` (after [`SESSION_SETUP`]) and returns standard output.
pub(crate) async fn run(
    server: &MariadbServer,
    sql: &str,
    timeout: Option<Duration>,
) -> Result<String, ClientError> {
    run_with_args(server, sql, timeout, &[]).await
}

/// Runs one statement whose result has many columns (`SHOW SLAVE ...
/// STATUS`): each row as (column name, value) pairs, values unescaped.
pub(crate) async fn query_named(
    server: &MariadbServer,
    sql: &str,
    timeout: Option<Duration>,
) -> Result<Vec<Vec<(String, String)>>, ClientError> {
    let output = run_with_args(server, sql, timeout, &["--column-names"]).await?;
    let mut lines = output.lines().filter(|line| !line.is_empty());
    let names: Vec<String> = match lines.next() {
        Some(header) => header.split('\t').map(unescape_str).collect(),
        None => return Ok(Vec::new()),
    };
    Ok(lines
        .map(|line| {
            names
                .iter()
                .cloned()
                .zip(line.split('\t').map(unescape_str))
                .collect()
        })
        .collect())
}

async fn run_with_args(
    server: &MariadbServer,
    sql: &str,
    timeout: Option<Duration>,
    args: &[&str],
) -> Result<String, ClientError> {
    let program = server.client.display().to_string();
    let mut command = batch_client(server);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ClientError::Spawn {
        program: program.clone(),
        server: server.name.clone(),
        source,
    })?;
    let io = |source| ClientError::Io {
        program: program.clone(),
        server: server.name.clone(),
        source,
    };
    let script = format!("{SESSION_SETUP}{sql}");
    let stdin = child.stdin.take();
    // Written while the output is read: a client whose output pipe is full
    // stops reading its input.
    let write = async move {
        if let Some(mut stdin) = stdin {
            // A client that dies early closes its end: its exit status and
            // stderr say why, so a failed write is not the error to report.
            let _ = stdin.write_all(script.as_bytes()).await;
        }
    };
    let work = async {
        let ((), output) = tokio::join!(write, child.wait_with_output());
        output.map_err(io)
    };
    let output = match timeout {
        Some(limit) => {
            tokio::time::timeout(limit, work)
                .await
                .map_err(|_| ClientError::Timeout {
                    program: program.clone(),
                    server: server.name.clone(),
                    seconds: limit.as_secs(),
                })??
        }
        None => work.await?,
    };
    if !output.status.success() {
        return Err(ClientError::Failed {
            program,
            server: server.name.clone(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| ClientError::Utf8 {
        program,
        server: server.name.clone(),
    })
}

/// Undoes the batch client's escaping (`\t`, `\n`, `\0`, `\\`) in place.
pub(super) fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'0') => out.push(0),
            Some(&other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    out
}

fn unescape_str(field: &str) -> String {
    crate::inventory::mariadb::unescape(field)
}

/// An identifier in backquotes: `` `a``b` ``.
pub(crate) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal, safe under the session's `sql_mode` ([`SESSION_SETUP`]
/// and the dump's own settings both leave backslash escapes on).
pub(crate) fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1a}' => out.push_str("\\Z"),
            other => out.push(other),
        }
    }
    out.push('\'');
    out
}

/// An account `'user'@'host'` for CREATE USER, GRANT and SHOW.
pub(super) fn account(user: &str, host: &str) -> String {
    format!("{}@{}", literal(user), literal(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_it_must() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal("it's a \\ \n"), r"'it\'s a \\ \n'");
        assert_eq!(account("alice", "%"), "'alice'@'%'");
    }

    #[test]
    fn batch_escapes_are_undone() {
        assert_eq!(unescape(br"a\tb\\c\nd\0"), b"a\tb\\c\nd\0");
        assert_eq!(unescape(b"end\\"), b"end\\");
    }

    #[test]
    fn the_dump_tool_goes_with_the_client() {
        let mut server = MariadbServer {
            name: "main".into(),
            socket: "/run/mysqld/mysqld.sock".into(),
            user: "root".into(),
            password: None,
            client: "mariadb".into(),
            public_address: None,
            port: 3306,
        };
        assert_eq!(dump_tool(&server), PathBuf::from("mariadb-dump"));
        server.client = "/opt/mysql/bin/mysql".into();
        assert_eq!(
            dump_tool(&server),
            PathBuf::from("/opt/mysql/bin/mysqldump")
        );
    }
}
