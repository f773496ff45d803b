//! The per-copy loader: a MariaDB user created for one database's load,
//! holding only what the load needs, and dropped at its end.
//!
//! `navette_load_<12 hex digits>`@`localhost`, named after the transfer,
//! the server and the database (so a retry finds and drops a stale one
//! before anything else), with a random password that lives only in this
//! process and in the client's environment. It holds ALL PRIVILEGES on the
//! copy's database (never GRANT OPTION) and `SET USER`, so that the views,
//! routines, triggers and events keep their definers; the dump is checked
//! clause by clause before it reaches the loader (`definers`), so the only
//! definers it ever sets are the account's users copied here.
//!
//! Statements here are built by Navette from the loader's name, which
//! Navette chose, and the target database's name (quoted); they run as the
//! server's administrative user. Dropping is idempotent.
//!
//! Loaders left by an agent that stopped mid-load (no session can use them:
//! their password died with the process) are swept when the next loader is
//! created on the same server: every `navette_load_*` user this process is
//! not using is dropped. Only this host's agent creates loaders on its
//! servers, so the process knows which are in use ([`IN_USE`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use ring::rand::{SecureRandom, SystemRandom};

use crate::config::MariadbServer;
use crate::transfer::mariadb::client::{self, ClientError, ident, literal};
use crate::transfer::mariadb::users::LOADER_PREFIX;

/// Loaders this process created and has not dropped: (server socket,
/// name).
static IN_USE: Mutex<BTreeSet<(PathBuf, String)>> = Mutex::new(BTreeSet::new());

fn in_use(server: &MariadbServer, name: &str) -> (PathBuf, String) {
    (server.socket.clone(), name.to_owned())
}

/// A loader user that exists on the server, and how to log in as it.
pub struct Loader {
    /// The server as the loader sees it: same socket, the loader's name
    /// and password.
    pub session: MariadbServer,
}

/// The loader's user name for `database` of `transfer_id` on `server`.
pub fn loader_name(transfer_id: &str, server: &str, database: &str) -> String {
    let text = format!("{transfer_id}\0{server}\0{database}");
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut name = LOADER_PREFIX.to_owned();
    for byte in &digest.as_ref()[..6] {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// `'name'@'localhost'`.
fn grantee(name: &str) -> String {
    format!("{}@'localhost'", literal(name))
}

/// Why a loader could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("no random password for the loader: the system's random source failed")]
    Random,
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A database grant pattern matching only `database`.
fn exact_pattern(database: &str) -> String {
    let mut out = String::with_capacity(database.len());
    for c in database.chars() {
        if matches!(c, '_' | '%' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Creates the loader for `database` afresh (a stale one of an earlier
/// attempt is dropped first).
pub async fn create(
    server: &MariadbServer,
    name: &str,
    database: &str,
) -> Result<Loader, LoaderError> {
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| LoaderError::Random)?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Ok(mut active) = IN_USE.lock() {
        active.insert(in_use(server, name));
    }
    sweep(server).await?;
    let who = grantee(name);
    let sql = format!(
        "DROP USER IF EXISTS {who};\n\
         CREATE USER {who} IDENTIFIED BY {password} WITH MAX_USER_CONNECTIONS 4;\n\
         GRANT ALL PRIVILEGES ON {db}.* TO {who};\n\
         GRANT SET USER ON *.* TO {who};\n",
        password = literal(&password),
        db = ident(&exact_pattern(database)),
    );
    client::run(server, &sql, Some(client::SHORT)).await?;
    Ok(Loader {
        session: MariadbServer {
            user: name.to_owned(),
            password: Some(password),
            ..server.clone()
        },
    })
}

/// Drops the loaders of `server` that this process does not use.
async fn sweep(server: &MariadbServer) -> Result<(), ClientError> {
    let rows = client::query(
        server,
        "SELECT User FROM mysql.user WHERE User LIKE 'navette\\_load\\_%' AND Host = 'localhost';\n",
        Some(client::SHORT),
    )
    .await?;
    for row in rows {
        let Some(name) = row.first() else {
            continue;
        };
        let used = IN_USE
            .lock()
            .map(|active| active.contains(&in_use(server, name)))
            .unwrap_or(true);
        if !used {
            tracing::info!(message = "dropping a stale loader", server = %server.name, loader = %name);
            drop_loader(server, name).await?;
        }
    }
    Ok(())
}

/// Drops the loader `name`, ending its sessions first; absent: fine.
pub async fn drop_loader(server: &MariadbServer, name: &str) -> Result<(), ClientError> {
    let sessions = client::query(
        server,
        &format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = {};\n",
            literal(name)
        ),
        Some(client::SHORT),
    )
    .await?;
    for row in sessions {
        if let Some(id) = row
            .first()
            .filter(|id| id.chars().all(|c| c.is_ascii_digit()))
        {
            // The session may have ended meanwhile: then KILL fails, and
            // that is what was wanted.
            let kill = format!("KILL CONNECTION {id};\n");
            let _ = client::run(server, &kill, Some(client::SHORT)).await;
        }
    }
    client::run(
        server,
        &format!("DROP USER IF EXISTS {};\n", grantee(name)),
        Some(client::SHORT),
    )
    .await?;
    if let Ok(mut active) = IN_USE.lock() {
        active.remove(&in_use(server, name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaders_name_is_stable_short_and_navettes() {
        let name = loader_name("t-1", "main", "alice");
        assert_eq!(name, loader_name("t-1", "main", "alice"));
        assert_ne!(name, loader_name("t-2", "main", "alice"));
        assert!(
            name.starts_with("navette_load_") && name.len() == 25,
            "{name}"
        );
        assert_eq!(exact_pattern("a_b%"), "a\\_b\\%");
    }
}
