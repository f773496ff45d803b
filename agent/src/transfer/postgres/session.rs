//! Connections to a PostgreSQL server of this host, and the few SQL text
//! helpers the copy needs (identifier and literal quoting).
//!
//! Every session the copy opens, on either side, gets the same settings
//! ([`SESSION_SETTINGS`]), so that text output (text COPY, checksums) is the
//! same on the source and on the target whatever their defaults are.

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::PostgresqlServer;

/// Settings of every copy session. Output functions depend on DateStyle,
/// IntervalStyle, extra_float_digits, bytea_output, TimeZone, lc_monetary
/// and search_path (reg* types); both sides set the same values.
/// `row_security = off` makes a non-superuser fail rather than silently
/// copy a filtered table.
pub const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 1; \
     SET bytea_output = 'hex'; \
     SET TimeZone = 'UTC'; \
     SET lc_monetary = 'C'; \
     SET standard_conforming_strings = on; \
     SET xmloption = content; \
     SET search_path = pg_catalog; \
     SET row_security = off; \
     SET statement_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0";

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a session on `database` of `server` as its configured (super)user,
/// with [`SESSION_SETTINGS`].
pub async fn connect(
    server: &PostgresqlServer,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    let config = server.connection_config(database, "navette-agent copy", CONNECT_TIMEOUT);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let server_name = server.name.clone();
    let database_name = database.to_owned();
    // The task ends by itself when the client is dropped.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(
                message = "PostgreSQL connection ended",
                server = %server_name,
                database = %database_name,
                %error
            );
        }
    });
    client.batch_execute(SESSION_SETTINGS).await?;
    Ok(client)
}

/// `"name"`, with inner quotes doubled: always quoted, so any name is safe.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `'text'` with quotes doubled (standard_conforming_strings is on in every
/// copy session, so backslashes are plain characters).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A libpq connection-string value, for `--dbname=dbname=...` (a database
/// name with `=` in it would otherwise be taken for a connection string).
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The major version of a `server_version_num` (150018 gives 15).
pub fn major(server_version_num: u32) -> u32 {
    server_version_num / 10_000
}

/// `SHOW server_version_num` as a number.
pub async fn server_version_num(client: &Client) -> Result<u32, tokio_postgres::Error> {
    let text: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await?
        .try_get(0)?;
    Ok(text.trim().parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_texts_are_quoted() {
        assert_eq!(quote_ident("items"), "\"items\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(qualified("public", "a b"), "\"public\".\"a b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "'a\\b'");
        assert_eq!(conninfo_value("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(major(150018), 15);
        assert_eq!(major(180006), 18);
    }
}
