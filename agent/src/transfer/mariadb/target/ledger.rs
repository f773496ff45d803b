//! Which users of a MariaDB server copies created, and for which account:
//! the table `mysql.navette_copy_users` on the server itself.
//!
//! The record lives with the users it describes (a server restored from a
//! backup, or wiped, takes its record along), in the server's own schema,
//! which the inventory never lists as an account's database and customers
//! cannot read. A row is written *before* its user is created, so a crash
//! in between leaves a row for a user that does not exist, which the next
//! copy of the same account simply creates; it never leaves a user Navette
//! created without a row.
//!
//! *Invariant*: a copy may create or alter a user only if the user does not
//! exist on the server, or a row says a copy of the same account created
//! it. `root`, the server's own users and other customers' users are
//! therefore never touched, whatever the source names.

use std::collections::BTreeMap;

use crate::config::MariadbServer;
use crate::transfer::mariadb::client::{self, ClientError, literal};

const TABLE: &str = "mysql.navette_copy_users";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS mysql.navette_copy_users (\
     User VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
     Host VARCHAR(255) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL, \
     Account VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
     Transfer VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
     Created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
     PRIMARY KEY (User, Host)) ENGINE=Aria \
     COMMENT='users created by Navette copies, by account';\n";

/// What the server says about one user a copy wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// The user exists on the server.
    pub exists: bool,
    /// The account whose copy created it, if a copy did.
    pub created_for: Option<String>,
}

fn condition(users: &[(String, String)]) -> String {
    users
        .iter()
        .map(|(user, host)| {
            format!(
                "(User = {} AND LOWER(Host) = LOWER({}))",
                literal(user),
                literal(host)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// What the server knows about each of `users`, by `(user, lowercase
/// host)`.
pub async fn known(
    server: &MariadbServer,
    users: &[(String, String)],
) -> Result<BTreeMap<(String, String), Known>, ClientError> {
    let mut found: BTreeMap<(String, String), Known> = users
        .iter()
        .map(|(user, host)| ((user.clone(), host.to_ascii_lowercase()), Known::default()))
        .collect();
    if users.is_empty() {
        return Ok(found);
    }
    let condition = condition(users);
    let rows = client::query(
        server,
        &format!(
            "SELECT 'U', User, LOWER(Host) FROM mysql.user WHERE {condition};\n\
             SELECT 'T', COUNT(*) FROM information_schema.TABLES \
               WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME = 'navette_copy_users';\n"
        ),
        Some(client::SHORT),
    )
    .await?;
    let mut ledger = false;
    for row in &rows {
        match row.as_slice() {
            [kind, user, host] if kind == "U" => {
                if let Some(known) = found.get_mut(&(user.clone(), host.clone())) {
                    known.exists = true;
                }
            }
            [kind, count] if kind == "T" => ledger = count != "0",
            _ => {
                return Err(ClientError::Unexpected {
                    server: server.name.clone(),
                    what: "the users of a copy",
                    line: row.join("\t"),
                });
            }
        }
    }
    if ledger {
        let rows = client::query(
            server,
            &format!("SELECT User, LOWER(Host), Account FROM {TABLE} WHERE {condition};\n"),
            Some(client::SHORT),
        )
        .await?;
        for row in rows {
            let [user, host, account] = row.as_slice() else {
                continue;
            };
            if let Some(known) = found.get_mut(&(user.clone(), host.clone())) {
                known.created_for = Some(account.clone());
            }
        }
    }
    Ok(found)
}

/// Records that a copy of `account` (transfer `transfer_id`) creates
/// `users`; rows already there are kept.
pub async fn record(
    server: &MariadbServer,
    account: &str,
    transfer_id: &str,
    users: &[(String, String)],
) -> Result<(), ClientError> {
    let mut sql = String::from(CREATE_TABLE);
    for (user, host) in users {
        sql.push_str(&format!(
            "INSERT IGNORE INTO {TABLE} (User, Host, Account, Transfer) VALUES ({}, {}, {}, {});\n",
            literal(user),
            literal(&host.to_ascii_lowercase()),
            literal(account),
            literal(transfer_id)
        ));
    }
    client::run(server, &sql, Some(client::SHORT))
        .await
        .map(drop)
}

/// Drops `users` (which this copy created) and their rows.
pub async fn drop_users(
    server: &MariadbServer,
    users: &[(String, String)],
) -> Result<(), ClientError> {
    if users.is_empty() {
        return Ok(());
    }
    let mut sql = String::new();
    for (user, host) in users {
        sql.push_str(&format!(
            "DROP USER IF EXISTS {}@{};\n",
            literal(user),
            literal(host)
        ));
    }
    sql.push_str(CREATE_TABLE);
    sql.push_str(&format!(
        "DELETE FROM {TABLE} WHERE {};\n",
        condition(users)
    ));
    client::run(server, &sql, Some(client::SHORT))
        .await
        .map(drop)
}

/// Drops every user the server's record says copies of `account` created,
/// and their rows: what removing the account's last copy from this server
/// leaves of its logins (nothing). The users, `user@host`.
pub async fn drop_account_users(
    server: &MariadbServer,
    account: &str,
) -> Result<Vec<String>, ClientError> {
    let ledger = client::query(
        server,
        "SELECT COUNT(*) FROM information_schema.TABLES \
           WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME = 'navette_copy_users';\n",
        Some(client::SHORT),
    )
    .await?;
    if ledger
        .first()
        .and_then(|row| row.first())
        .is_none_or(|count| count == "0")
    {
        return Ok(Vec::new());
    }
    let rows = client::query(
        server,
        &format!(
            "SELECT User, Host FROM {TABLE} WHERE Account = {};\n",
            literal(account)
        ),
        Some(client::SHORT),
    )
    .await?;
    let users: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [user, host] => Some((user.clone(), host.clone())),
            _ => None,
        })
        .collect();
    drop_users(server, &users).await?;
    Ok(users
        .into_iter()
        .map(|(user, host)| format!("{user}@{host}"))
        .collect())
}
