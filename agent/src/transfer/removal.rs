//! What a copy created on a target host's database servers: finding it
//! (databases that exist, logins the copy's databases depend on, roles the
//! PostgreSQL role ledger gives the account) and dropping it
//! (`RemoveCopy`, which also clears the ledger's rows of the roles it
//! drops). Only ever called for what a copy record
//! ([`super::copies`]) names, or to check what exists before a copy.
//!
//! Statements are built here from names quoted here; nothing the source
//! sent is executed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::{Config, MariadbServer};

/// `"name"` with inner quotes doubled.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `` `name` `` with inner backquotes doubled.
pub fn quote_mariadb_identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Drops `database` on the PostgreSQL server `server` of this host, ending
/// its sessions first. Absent already: fine.
pub async fn drop_postgres_database(
    config: &Config,
    server: &str,
    database: &str,
) -> Result<(), String> {
    let server = config
        .postgresql
        .iter()
        .find(|s| s.name == server)
        .ok_or_else(|| format!("no PostgreSQL server {server:?} on this host"))?;
    let (client, connection) = server
        .connection_config("postgres", "navette-agent", Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL server {}: {e}", server.name))?;
    let driver = tokio::spawn(connection);
    let result = client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_identifier(database)
        ))
        .await
        .map_err(|e| format!("dropping database {database} on {}: {e}", server.name));
    drop(client);
    let _ = driver.await;
    result
}

/// Drops `database` on the MariaDB server `server` of this host.
pub async fn drop_mariadb_database(
    config: &Config,
    server: &str,
    database: &str,
) -> Result<(), String> {
    let server: &MariadbServer = config
        .mariadb
        .iter()
        .find(|s| s.name == server)
        .ok_or_else(|| format!("no MariaDB server {server:?} on this host"))?;
    let mut command = tokio::process::Command::new(&server.client);
    command
        .arg(format!("--socket={}", server.socket.display()))
        .arg(format!("--user={}", server.user))
        .arg("--batch")
        .arg("-e")
        .arg(format!(
            "DROP DATABASE IF EXISTS {}",
            quote_mariadb_identifier(database)
        ))
        .kill_on_drop(true);
    if let Some(password) = server.password.as_deref().filter(|p| !p.is_empty()) {
        command.env("MYSQL_PWD", password);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .map_err(|_| format!("dropping database {database} on {}: no answer", server.name))?
        .map_err(|e| format!("running {}: {e}", server.client.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "dropping database {database} on {}: {}",
            server.name,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn postgres_server<'a>(
    config: &'a Config,
    server: &str,
) -> Result<&'a crate::config::PostgresqlServer, String> {
    config
        .postgresql
        .iter()
        .find(|s| s.name == server)
        .ok_or_else(|| format!("no PostgreSQL server {server:?} on this host"))
}

/// A session as the agent's configured user on the `postgres` database,
/// with the task driving it.
async fn postgres_session(
    config: &Config,
    server: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), String> {
    let server = postgres_server(config, server)?;
    let (client, connection) = server
        .connection_config("postgres", "navette-agent", Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL server {}: {e}", server.name))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// Whether `database` exists on the PostgreSQL server `server`.
pub async fn postgres_database_exists(
    config: &Config,
    server: &str,
    database: &str,
) -> Result<bool, String> {
    let (client, driver) = postgres_session(config, server).await?;
    let found = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map(|row| row.is_some())
        .map_err(|e| format!("PostgreSQL server {server}: looking for database {database}: {e}"));
    drop(client);
    let _ = driver.await;
    found
}

/// Every role of the PostgreSQL server `server`.
pub async fn postgres_roles(config: &Config, server: &str) -> Result<BTreeSet<String>, String> {
    let (client, driver) = postgres_session(config, server).await?;
    let roles = client
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .map(|rows| rows.iter().map(|row| row.get::<_, String>(0)).collect())
        .map_err(|e| format!("PostgreSQL server {server}: listing roles: {e}"));
    drop(client);
    let _ = driver.await;
    roles
}

/// The roles `databases` need: their owners, every role that owns an
/// object in them or holds a privilege on them or in them (`pg_shdepend`),
/// and the roles those are members of or have as members. Never a
/// superuser, a predefined role or a bootstrap role.
const ROLES_OF_DATABASES: &str = "
WITH dbs AS (SELECT oid, datdba FROM pg_database WHERE datname::text = ANY($1)),
tied AS (
    SELECT datdba AS oid FROM dbs
    UNION SELECT d.refobjid FROM pg_shdepend d, dbs
     WHERE d.refclassid = 'pg_authid'::regclass
       AND (d.dbid = dbs.oid
            OR (d.dbid = 0 AND d.classid = 'pg_database'::regclass AND d.objid = dbs.oid))),
near AS (
    SELECT oid FROM tied
    UNION SELECT m.roleid FROM pg_auth_members m JOIN tied t ON m.member = t.oid
    UNION SELECT m.member FROM pg_auth_members m JOIN tied t ON m.roleid = t.oid)
SELECT r.rolname::text FROM pg_roles r JOIN near n ON n.oid = r.oid
 WHERE r.oid >= 16384 AND NOT r.rolsuper AND r.rolname NOT LIKE 'pg\\_%'";

/// The roles `databases` of `server` need (see [`ROLES_OF_DATABASES`]).
pub async fn postgres_roles_of(
    config: &Config,
    server: &str,
    databases: &[String],
) -> Result<BTreeSet<String>, String> {
    let (client, driver) = postgres_session(config, server).await?;
    let roles = client
        .query(ROLES_OF_DATABASES, &[&databases])
        .await
        .map(|rows| rows.iter().map(|row| row.get::<_, String>(0)).collect())
        .map_err(|e| format!("PostgreSQL server {server}: finding the copy's roles: {e}"));
    drop(client);
    let _ = driver.await;
    roles
}

/// The roles the role ledger of the PostgreSQL server `server`
/// ([`crate::transfer::postgres::ledger`]) gives `account`, with the
/// transfer that claimed each. A server without a ledger it can trust
/// gives none.
pub async fn postgres_ledger_roles(
    config: &Config,
    server: &str,
    account: &str,
) -> Result<BTreeMap<String, String>, String> {
    let (client, driver) = postgres_session(config, server).await?;
    let roles = async {
        let exists: bool = client
            .query_one(crate::transfer::postgres::ledger::TRUSTED, &[])
            .await?
            .try_get(0)?;
        if !exists {
            return Ok(BTreeMap::new());
        }
        client
            .query(
                "SELECT role, transfer FROM navette.copy_roles WHERE account = $1",
                &[&account],
            )
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<BTreeMap<String, String>, tokio_postgres::Error>>()
    }
    .await
    .map_err(|e| format!("PostgreSQL server {server}: reading the role ledger: {e}"));
    drop(client);
    let _ = driver.await;
    roles
}

/// What dropping a login did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginDrop {
    Dropped,
    /// Kept, and why.
    Kept(String),
}

/// Drops `role` on the PostgreSQL server `server`, unless objects or
/// privileges outside the copy still depend on it (PostgreSQL refuses the
/// drop then, and the role is kept). Absent already: dropped. Once
/// dropped, the role ledger forgets that `account` had it, so another
/// account's copy may use the name.
pub async fn drop_postgres_role(
    config: &Config,
    server: &str,
    role: &str,
    account: &str,
) -> Result<LoginDrop, String> {
    if role.starts_with("pg_") || role == "postgres" {
        return Ok(LoginDrop::Kept(format!(
            "{role} is a role of the server itself"
        )));
    }
    let (client, driver) = postgres_session(config, server).await?;
    let mut result = client
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_identifier(role)))
        .await;
    if result.is_ok() {
        result = crate::transfer::postgres::ledger::forget(&client, role, account).await;
    }
    drop(client);
    let _ = driver.await;
    match result {
        Ok(()) => Ok(LoginDrop::Dropped),
        Err(error)
            if error.code()
                == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) =>
        {
            let detail = error
                .as_db_error()
                .and_then(|e| e.detail())
                .unwrap_or("objects depend on it")
                .replace('\n', "; ");
            Ok(LoginDrop::Kept(format!(
                "objects outside the copy still need it ({detail})"
            )))
        }
        Err(error) => Err(format!(
            "PostgreSQL server {server}: dropping role {role}: {error}"
        )),
    }
}

fn mariadb_server<'a>(config: &'a Config, server: &str) -> Result<&'a MariadbServer, String> {
    config
        .mariadb
        .iter()
        .find(|s| s.name == server)
        .ok_or_else(|| format!("no MariaDB server {server:?} on this host"))
}

/// `'text'` for MariaDB, backslashes and quotes escaped.
pub fn quote_mariadb_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs `sql` with the server's client as the agent's configured user; the
/// rows, tab-separated columns.
async fn mariadb_query(server: &MariadbServer, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let mut command = tokio::process::Command::new(&server.client);
    command
        .arg(format!("--socket={}", server.socket.display()))
        .arg(format!("--user={}", server.user))
        .args(["--batch", "--skip-column-names", "--raw", "-e", sql])
        .kill_on_drop(true);
    if let Some(password) = server.password.as_deref().filter(|p| !p.is_empty()) {
        command.env("MYSQL_PWD", password);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .map_err(|_| format!("MariaDB server {}: no answer within 60 s", server.name))?
        .map_err(|e| format!("running {}: {e}", server.client.display()))?;
    if !output.status.success() {
        return Err(format!(
            "MariaDB server {}: {}",
            server.name,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect())
}

/// Whether `database` exists on the MariaDB server `server`.
pub async fn mariadb_database_exists(
    config: &Config,
    server: &str,
    database: &str,
) -> Result<bool, String> {
    let server = mariadb_server(config, server)?;
    let rows = mariadb_query(
        server,
        &format!(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
            quote_mariadb_literal(database)
        ),
    )
    .await?;
    Ok(!rows.is_empty())
}

/// Every user of the MariaDB server `server`, as (user, host).
pub async fn mariadb_users(
    config: &Config,
    server: &str,
) -> Result<BTreeSet<(String, String)>, String> {
    let server = mariadb_server(config, server)?;
    let rows = mariadb_query(server, "SELECT User, Host FROM mysql.user").await?;
    Ok(rows
        .into_iter()
        .filter(|row| row.len() == 2)
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect())
}

/// `Db IN (...)` for the grant tables: each name as written and with its
/// `_` and `%` escaped, as `GRANT ... ON \`a_b\`.*` may store it either way.
fn grant_db_list(databases: &[String]) -> String {
    let mut names = Vec::new();
    for database in databases {
        names.push(quote_mariadb_literal(database));
        names.push(quote_mariadb_literal(
            &database.replace('_', "\\_").replace('%', "\\%"),
        ));
    }
    if names.is_empty() {
        names.push("''".to_owned());
    }
    names.join(", ")
}

const GRANT_TABLES: [&str; 4] = [
    "mysql.db",
    "mysql.tables_priv",
    "mysql.columns_priv",
    "mysql.procs_priv",
];

/// The users holding privileges on `databases` of `server` (the grant
/// tables), as (user, host). Never the server's own accounts.
pub async fn mariadb_users_of(
    config: &Config,
    server: &str,
    databases: &[String],
) -> Result<BTreeSet<(String, String)>, String> {
    let server = mariadb_server(config, server)?;
    let list = grant_db_list(databases);
    let sql = GRANT_TABLES
        .iter()
        .map(|table| format!("SELECT User, Host FROM {table} WHERE Db IN ({list})"))
        .collect::<Vec<_>>()
        .join(" UNION ");
    let rows = mariadb_query(server, &sql).await?;
    Ok(rows
        .into_iter()
        .filter(|row| row.len() == 2 && !is_mariadb_system_user(&row[0]))
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect())
}

fn is_mariadb_system_user(user: &str) -> bool {
    user.is_empty() || user == "root" || user.starts_with("mysql.") || user == "mariadb.sys"
}

/// Drops the MariaDB user `'user'@'host'` of `server`, unless it still
/// holds privileges on a database other than `own_databases` (the copy's,
/// dropped already): another copy or another account needs it then.
pub async fn drop_mariadb_user(
    config: &Config,
    server: &str,
    user: &str,
    host: &str,
    own_databases: &[String],
) -> Result<LoginDrop, String> {
    let server = mariadb_server(config, server)?;
    if is_mariadb_system_user(user) || user == server.user {
        return Ok(LoginDrop::Kept(format!(
            "{user} is an account of the server itself"
        )));
    }
    let list = grant_db_list(own_databases);
    let elsewhere = GRANT_TABLES
        .iter()
        .map(|table| {
            format!(
                "SELECT Db FROM {table} WHERE User = {} AND Host = {} AND Db NOT IN ({list})",
                quote_mariadb_literal(user),
                quote_mariadb_literal(host)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ");
    let others = mariadb_query(server, &elsewhere).await?;
    if !others.is_empty() {
        let names: Vec<&str> = others
            .iter()
            .filter_map(|row| row.first().map(String::as_str))
            .collect();
        return Ok(LoginDrop::Kept(format!(
            "it holds privileges on other databases ({})",
            names.join(", ")
        )));
    }
    mariadb_query(
        server,
        &format!(
            "DROP USER IF EXISTS {}@{}",
            quote_mariadb_literal(user),
            quote_mariadb_literal(host)
        ),
    )
    .await?;
    Ok(LoginDrop::Dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_mariadb_identifier("a`b"), "`a``b`");
        assert_eq!(quote_mariadb_literal("a'b\\"), "'a\\'b\\\\'");
    }

    #[test]
    fn grant_tables_are_searched_for_both_spellings_of_a_name() {
        assert_eq!(grant_db_list(&["a_b".to_owned()]), "'a_b', 'a\\\\_b'");
    }
}
