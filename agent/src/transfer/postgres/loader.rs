//! The loader: the role every session that can run the customer's code
//! authenticates as. A customer's schema runs code when it is restored and
//! loaded: CHECK constraints and domains' checks on every row, generated
//! columns, defaults, index expressions, triggers, materialized views, and
//! the functions they call. Run by a superuser's session, such code could
//! make its own role a superuser. `SET ROLE` inside a superuser's session
//! does not prevent it (the code can `RESET ROLE`), so the copy's
//! sessions are *authenticated* as the loader instead:
//!
//! - a login role made for one database copy, `navette_load_<hash of
//!   the server and database>`, with a random password and none of
//!   SUPERUSER, CREATEDB, CREATEROLE, REPLICATION, BYPASSRLS, valid for a
//!   week at most (a loader a crash left behind stops working by itself;
//!   a copy's sessions are opened well within that);
//! - a member only of the account's own roles (accepted by
//!   [`super::acceptance`]): it can act as them (`SET ROLE`, ownership),
//!   never as more. Code that resets its role is the loader, with the
//!   account's power and nothing else;
//! - it connects like the configured user (the same socket directory or
//!   host), sending its password, so servers that require passwords
//!   accept it: pg_hba must let `navette_load_*` roles log in with a
//!   password (or trust) on that address.
//!
//! [`Loader::create`] first drops one left by an earlier attempt (its name
//! depends only on the target database, so a retry after a crash finds
//! it) and the expired loaders of other databases, and [`Loader::drop_role`] ends its sessions, gives anything it
//! still owns to the database's owner, and drops it; both are idempotent.
//! The password is never logged: the statement that sets it runs with
//! statement logging off.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::error::PostgresCopyError;
use super::session::{quote_ident, quote_literal};
use crate::config::PostgresqlServer;

/// The beginning of every loader's name; no account role may have it.
pub const LOADER_PREFIX: &str = "navette_load_";

/// A loader role on a target server.
#[derive(Clone)]
pub struct Loader {
    pub name: String,
    /// The target server as the loader reaches it: the configured server's
    /// address, the loader's name and password.
    pub server: PostgresqlServer,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Loader").field("name", &self.name).finish()
    }
}

/// `what` (e.g. "connecting"), with a hint for the operator when `server`
/// is reached as a loader: a refused login is most often pg_hba.conf.
pub fn connecting(server: &PostgresqlServer, what: &str) -> String {
    if server.user.starts_with(LOADER_PREFIX) {
        format!(
            "{what} as the copy's loader role {} (the server's pg_hba.conf must accept \
             password logins of {LOADER_PREFIX}* roles on {})",
            server.user, server.host
        )
    } else {
        what.to_owned()
    }
}

/// The loader's name for `database` on `server`: short (well under
/// PostgreSQL's 63 bytes), and the same at every attempt.
pub fn loader_name(server: &str, database: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{server}\0{database}").as_bytes(),
    );
    let hex: String = digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{LOADER_PREFIX}{hex}")
}

/// A random password: 32 hexadecimal digits (128 bits).
fn random_password() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Loader {
    /// Creates the loader of `database` (dropping one left over first), a
    /// member of `account` roles only. `admin` is a superuser session on
    /// the server's maintenance database.
    pub async fn create(
        admin: &Client,
        server: &PostgresqlServer,
        database: &str,
        account: &BTreeSet<String>,
    ) -> Result<Loader, PostgresCopyError> {
        let failed = |what: &str| {
            let what = format!("{what} the loader role");
            let (server, database) = (server.name.clone(), database.to_owned());
            move |source| PostgresCopyError::Target {
                server,
                database,
                what,
                source,
            }
        };
        let name = loader_name(&server.name, database);
        drop_role(admin, server, &name, None)
            .await
            .map_err(failed("dropping the earlier attempt's"))?;
        drop_expired(admin, server).await;
        let password = random_password().map_err(|_| PostgresCopyError::Refused {
            database: database.to_owned(),
            reason: "this host gives no random numbers for the loader's password".to_owned(),
        })?;
        let until: String = admin
            .query_one("SELECT (now() + interval '7 days')::text", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(failed("creating"))?;
        let quoted = quote_ident(&name);
        let mut sql = format!(
            "BEGIN; SET LOCAL log_statement = 'none'; SET LOCAL log_min_duration_statement = -1; \
             CREATE ROLE {quoted} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE \
             NOREPLICATION NOBYPASSRLS VALID UNTIL {} PASSWORD {}; ",
            quote_literal(&until),
            // The server stores the SCRAM verifier as sent: the password
            // itself never travels, nor reaches a log.
            quote_literal(&postgres_protocol::password::scram_sha_256(
                password.as_bytes()
            ))
        );
        for role in account {
            sql.push_str(&format!("GRANT {} TO {quoted}; ", quote_ident(role)));
        }
        sql.push_str("COMMIT");
        let created = admin.batch_execute(&sql).await;
        if created.is_err() {
            let _ = admin.batch_execute("ROLLBACK").await;
        }
        created.map_err(failed("creating"))?;
        Ok(Loader {
            server: PostgresqlServer {
                user: name.clone(),
                password: Some(password),
                ..server.clone()
            },
            name,
        })
    }

    /// Drops the loader (see [`drop_role`]).
    pub async fn drop_role(
        &self,
        admin: &Client,
        server: &PostgresqlServer,
        database: &str,
    ) -> Result<(), tokio_postgres::Error> {
        drop_role(admin, server, &self.name, Some(database)).await
    }
}

/// Drops loader `name` if it exists: ends its sessions, and in `database`
/// (if given and present) gives what it still owns to the database's
/// owner and revokes what was granted to it; then drops the role.
pub async fn drop_role(
    admin: &Client,
    server: &PostgresqlServer,
    name: &str,
    database: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let exists = admin
        .query_opt("SELECT FROM pg_roles WHERE rolname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        return Ok(());
    }
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&name],
        )
        .await?;
    let quoted = quote_ident(name);
    if let Some(database) = database {
        let present = admin
            .query_opt("SELECT FROM pg_database WHERE datname = $1", &[&database])
            .await?
            .is_some();
        if present {
            let client = super::session::connect(server, database).await?;
            client
                .batch_execute(&format!(
                    "DO $$ BEGIN EXECUTE format('REASSIGN OWNED BY %I TO %I', {name}, \
                     (SELECT pg_get_userbyid(datdba) FROM pg_database \
                      WHERE datname = current_database())); END $$; \
                     DROP OWNED BY {quoted}",
                    name = quote_literal(name)
                ))
                .await?;
        }
    }
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {quoted}"))
        .await
}

/// Drops the loaders of other databases whose validity ended (left by a
/// crash and never retried); one that still owns something somewhere is
/// left, with a warning (it can no longer log in).
async fn drop_expired(admin: &Client, server: &PostgresqlServer) {
    let expired = admin
        .query(
            "SELECT rolname::text FROM pg_roles \
             WHERE starts_with(rolname, $1) AND rolvaliduntil < now()",
            &[&LOADER_PREFIX],
        )
        .await;
    let names: Vec<String> = match expired {
        Ok(rows) => rows.iter().filter_map(|row| row.try_get(0).ok()).collect(),
        Err(error) => {
            tracing::warn!(message = "cannot list expired loader roles", server = %server.name, %error);
            return;
        }
    };
    for name in names {
        if let Err(error) = drop_role(admin, server, &name, None).await {
            tracing::warn!(
                message = "an expired loader role could not be dropped",
                server = %server.name,
                role = %name,
                error = %crate::error_chain(&error)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_names_are_short_stable_and_distinct() {
        let name = loader_name("main", "alice_shop");
        assert_eq!(name, loader_name("main", "alice_shop"));
        assert_ne!(name, loader_name("main", "alice_blog"));
        assert_ne!(name, loader_name("other", "alice_shop"));
        assert!(name.starts_with(LOADER_PREFIX) && name.len() == LOADER_PREFIX.len() + 16);
        let password = random_password().expect("random");
        assert_eq!(password.len(), 32);
        assert_ne!(password, random_password().expect("random"));
    }
}
