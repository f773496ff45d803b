//! Dropping the databases of a copy on a target host (`RemoveCopy`). Only
//! ever called for databases a transfer to this host created.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_mariadb_identifier("a`b"), "`a``b`");
    }
}
