//! What a MariaDB/MySQL server on this host holds: its version, the
//! storage engines it offers, the free space of its data directory, and
//! its databases with their sizes and the tables not on InnoDB, read
//! through the server's own command-line client (`mariadb --batch`), so the
//! agent needs no MySQL driver and uses the host's usual client
//! configuration (e.g. `/root/.my.cnf`).
//!
//! Reads only, and only `information_schema` and server variables. A server
//! that cannot be reached is reported as such, never as an error of the
//! whole inventory; when the second run (engines, tables, data directory)
//! fails, the databases are reported with `inspected` false. Databases
//! belong to accounts by name: `a` or `a_*` belong to account `a`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use navette_proto::v1::{
    Database, DatabaseEngine, DatabaseServer, RowBinlogReadiness, TableEngine,
};

use super::ServerFindings;
use crate::config::MariadbServer;

/// How long the client may run.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One client run, three statements: the version (one single-column row),
/// every database (single-column rows), then sizes (two-column rows). Tabs
/// separate columns; the client escapes tabs inside values.
const STATEMENTS: &str = "SELECT VERSION(); SHOW DATABASES; \
     SELECT table_schema, COALESCE(SUM(data_length+index_length),0) \
     FROM information_schema.tables GROUP BY table_schema";

/// The second run: tagged rows, one tag per kind (`datadir`, `engine`,
/// `table` schema, table, engine), so one parse reads them all.
const DETAILS_STATEMENTS: &str = "SELECT 'datadir', @@datadir; \
     SELECT 'engine', ENGINE FROM information_schema.ENGINES \
     WHERE SUPPORT IN ('YES', 'DEFAULT') ORDER BY 2; \
     SELECT 'table', TABLE_SCHEMA, TABLE_NAME, ENGINE FROM information_schema.TABLES \
     WHERE TABLE_TYPE = 'BASE TABLE' AND ENGINE IS NOT NULL AND ENGINE <> 'InnoDB' \
     AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys') \
     ORDER BY 2, 3";

/// The most tables not on InnoDB reported for one database.
const MAX_TABLES: usize = 1000;

/// What the second run printed, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    pub datadir: Option<String>,
    /// Engines tables can be created with, as the server names them.
    pub engines: Vec<String>,
    /// Per database, its base tables not on InnoDB and their engine,
    /// at most [`MAX_TABLES`] each.
    pub tables: BTreeMap<String, Vec<TableEngine>>,
}

/// Parses the `--batch --skip-column-names` output of
/// [`DETAILS_STATEMENTS`].
pub fn parse_details(output: &str) -> Result<Details, String> {
    let mut details = Details::default();
    for line in output.lines().filter(|line| !line.is_empty()) {
        let fields: Vec<String> = line.split('\t').map(unescape).collect();
        match fields.as_slice() {
            [tag, datadir] if tag == "datadir" => details.datadir = Some(datadir.clone()),
            [tag, engine] if tag == "engine" => details.engines.push(engine.clone()),
            [tag, schema, table, engine] if tag == "table" => {
                let tables = details.tables.entry(schema.clone()).or_default();
                if tables.len() < MAX_TABLES {
                    tables.push(TableEngine {
                        table: table.clone(),
                        engine: engine.clone(),
                    });
                }
            }
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    Ok(details)
}

/// Schemas of the server itself, never an account's.
const SYSTEM_SCHEMAS: [&str; 4] = ["information_schema", "performance_schema", "mysql", "sys"];

/// What the client printed, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// Full `VERSION()`, e.g. "10.11.6-MariaDB-0+deb12u1".
    pub version: String,
    /// Customer databases (system schemas left out) and their sizes in
    /// bytes; empty databases have size 0.
    pub databases: BTreeMap<String, u64>,
}

/// Parses the `--batch --skip-column-names` output of the statements the
/// agent runs: the version line, then database names, then sizes.
pub fn parse_batch_output(output: &str) -> Result<Listing, String> {
    let mut lines = output.lines();
    let version = lines
        .next()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .ok_or("the client printed no version")?
        .to_owned();
    let mut databases = BTreeMap::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let mut fields = line.split('\t');
        let name = unescape(fields.next().unwrap_or_default());
        let size = match fields.next() {
            None => 0,
            Some(size) => {
                let whole = size.split('.').next().unwrap_or_default();
                whole
                    .parse::<u64>()
                    .map_err(|_| format!("unexpected size {size:?} for database {name:?}"))?
            }
        };
        if SYSTEM_SCHEMAS.contains(&name.as_str()) {
            continue;
        }
        *databases.entry(name).or_insert(0) += size;
    }
    Ok(Listing { version, databases })
}

/// Undoes the client's batch escaping (`\t`, `\n`, `\0`, `\\`).
pub fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The version as reported in the inventory: `VERSION()` up to the first
/// '-' ("10.11.6-MariaDB-0+deb12u1" gives "10.11.6").
pub fn short_version(version: &str) -> String {
    version
        .split('-')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The account a database belongs to: the longest account name `a` such that
/// the database is `a` or starts with `a_`.
pub fn account_of<'a>(
    database: &str,
    accounts: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    accounts
        .into_iter()
        .filter(|account| {
            database == *account
                || database
                    .strip_prefix(account)
                    .is_some_and(|rest| rest.starts_with('_'))
        })
        .max_by_key(|account| account.len())
}

/// Inspects `server`. `public_address` is what customers connect to.
/// Databases come back with an empty owner; the caller attributes them.
pub async fn inspect(server: &MariadbServer, public_address: String) -> ServerFindings {
    let mut report = DatabaseServer {
        name: server.name.clone(),
        engine: DatabaseEngine::Mariadb.into(),
        version: String::new(),
        address: public_address,
        port: u32::from(server.port),
        reachable: false,
        error: String::new(),
        available_extensions: Vec::new(),
        data_directory_free_bytes: None,
        available_engines: Vec::new(),
        logical_replication_ready: false,
        logical_replication_reason: String::new(),
        row_binlog: None,
    };
    let mut databases = Vec::new();
    match run_client(server, STATEMENTS)
        .await
        .and_then(|out| parse_batch_output(&out))
    {
        Ok(listing) => {
            report.version = short_version(&listing.version);
            report.reachable = true;
            let details = match run_client(server, DETAILS_STATEMENTS)
                .await
                .and_then(|out| parse_details(&out))
            {
                Ok(details) => Some(details),
                Err(error) => {
                    tracing::warn!(message = "cannot read a MariaDB server's engines and tables", server = %server.name, %error);
                    None
                }
            };
            match crate::replication::mariadb::row_binlog_readiness(server).await {
                Ok(readiness) => {
                    report.row_binlog = Some(RowBinlogReadiness {
                        ready: readiness.ready,
                        reason: readiness.reason,
                    });
                }
                Err(error) => {
                    tracing::warn!(message = "cannot read a MariaDB server's binary log settings", server = %server.name, %error);
                }
            }
            if let Some(details) = &details {
                report.available_engines = details.engines.clone();
                report.data_directory_free_bytes = details.datadir.as_deref().and_then(|dir| {
                    super::system::disk_usage(std::path::Path::new(dir))
                        .map_err(|error| tracing::debug!(message = "cannot measure the data directory", server = %server.name, directory = dir, %error))
                        .ok()
                        .map(|usage| usage.free_bytes)
                });
            }
            databases = listing
                .databases
                .into_iter()
                .map(|(name, size_bytes)| Database {
                    engine: DatabaseEngine::Mariadb.into(),
                    server: server.name.clone(),
                    tables_not_innodb: details
                        .as_ref()
                        .and_then(|d| d.tables.get(&name).cloned())
                        .unwrap_or_default(),
                    inspected: details.is_some(),
                    name,
                    size_bytes,
                    owner: String::new(),
                    extensions: Vec::new(),
                    md5_password_roles: Vec::new(),
                    unlogged_partitioned_tables: Vec::new(),
                })
                .collect();
        }
        Err(error) => {
            tracing::warn!(
                message = "MariaDB server unreachable",
                server = %server.name,
                socket = %server.socket.display(),
                %error
            );
            report.error = error;
        }
    }
    ServerFindings {
        server: report,
        databases,
        owner_members: Default::default(),
    }
}

/// Runs the client on `statements`; its standard output, or why it
/// failed.
async fn run_client(server: &MariadbServer, statements: &str) -> Result<String, String> {
    let mut command = tokio::process::Command::new(&server.client);
    command
        .arg(format!("--socket={}", server.socket.display()))
        .arg(format!("--user={}", server.user))
        .args([
            "--batch",
            "--skip-column-names",
            "--connect-timeout=5",
            "-e",
        ])
        .arg(statements)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match server.password.as_deref() {
        Some(password) => command.env("MYSQL_PWD", password),
        None => command.env_remove("MYSQL_PWD"),
    };
    let client = server.client.display();
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .map_err(|_| format!("{client} gave no answer within {} s", TIMEOUT.as_secs()))?
        .map_err(|error| format!("cannot run {client}: {error}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        return Err(if stderr.is_empty() {
            format!("{client} failed ({})", output.status)
        } else {
            format!("{client}: {stderr}")
        });
    }
    String::from_utf8(output.stdout).map_err(|_| format!("{client} printed invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_output_gives_version_databases_and_sizes() {
        let output = "10.11.6-MariaDB-0+deb12u1\n\
                      alice\nalice_shop\nbob_empty\ninformation_schema\nmysql\n\
                      performance_schema\nsys\n\
                      alice\t16384\nalice_shop\t49152\ninformation_schema\t0\nmysql\t2375680\n\
                      sys\t16384\n";
        let listing = parse_batch_output(output).expect("valid output");
        assert_eq!(listing.version, "10.11.6-MariaDB-0+deb12u1");
        let databases: Vec<(&str, u64)> = listing
            .databases
            .iter()
            .map(|(name, size)| (name.as_str(), *size))
            .collect();
        assert_eq!(
            databases,
            [("alice", 16384), ("alice_shop", 49152), ("bob_empty", 0)]
        );
    }

    #[test]
    fn escaped_names_and_decimal_sizes_are_read() {
        let listing =
            parse_batch_output("8.0.36\nodd\\tname\nodd\\tname\t12.0000\n").expect("valid output");
        assert_eq!(listing.databases.get("odd\tname"), Some(&12));
        assert_eq!(short_version(&listing.version), "8.0.36");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse_batch_output("").is_err());
        assert!(parse_batch_output("10.11.6\nalice\tlots\n").is_err());
    }

    #[test]
    fn details_give_datadir_engines_and_tables_by_database() {
        let output = "datadir\t/var/lib/mysql/\n\
                      engine\tAria\nengine\tInnoDB\nengine\tMyISAM\n\
                      table\talice_blog\tlogs\tCONNECT\ntable\talice_blog\tcache\tAria\n\
                      table\tbob\todd\\tname\tMyISAM\n";
        let details = parse_details(output).expect("valid output");
        assert_eq!(details.datadir.as_deref(), Some("/var/lib/mysql/"));
        assert_eq!(details.engines, ["Aria", "InnoDB", "MyISAM"]);
        let blog: Vec<(&str, &str)> = details.tables["alice_blog"]
            .iter()
            .map(|t| (t.table.as_str(), t.engine.as_str()))
            .collect();
        assert_eq!(blog, [("logs", "CONNECT"), ("cache", "Aria")]);
        assert_eq!(details.tables["bob"][0].table, "odd\tname");
        assert!(parse_details("table\tonly-two\n").is_err());
    }

    #[test]
    fn versions_stop_at_the_first_dash() {
        assert_eq!(short_version("10.11.6-MariaDB-0+deb12u1"), "10.11.6");
        assert_eq!(short_version("11.4.2-MariaDB"), "11.4.2");
    }

    #[test]
    fn unescaping_handles_every_batch_escape() {
        assert_eq!(unescape(r"a\\b\nc\0d\te"), "a\\b\nc\0d\te");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }

    #[test]
    fn databases_go_to_the_longest_matching_account() {
        let accounts = ["foo", "foo_bar", "alice"];
        assert_eq!(account_of("foo", accounts), Some("foo"));
        assert_eq!(account_of("foo_shop", accounts), Some("foo"));
        assert_eq!(account_of("foo_bar_db", accounts), Some("foo_bar"));
        assert_eq!(account_of("foobar", accounts), None);
        assert_eq!(account_of("wordpress", accounts), None);
    }

    #[tokio::test]
    async fn a_missing_client_is_reported_unreachable() {
        let server = MariadbServer {
            name: "main".into(),
            socket: "/nonexistent/mysqld.sock".into(),
            user: "root".into(),
            password: None,
            client: "/nonexistent/navette-mariadb-client".into(),
            public_address: None,
            port: 3306,
        };
        let findings = inspect(&server, "192.0.2.11".into()).await;
        assert!(!findings.server.reachable);
        assert!(
            findings
                .server
                .error
                .contains("/nonexistent/navette-mariadb-client")
        );
    }
}
