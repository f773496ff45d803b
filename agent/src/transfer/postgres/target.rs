//! What the target's superuser session does, and nothing else does: the
//! roles (global objects), the database itself, its extensions, and at the
//! end the database's properties. Every statement is built here from
//! structured fields that [`acceptance`](super::acceptance) has accepted;
//! no SQL text from the source runs in this session.
//!
//! Roles are *ensured*: created when missing, altered when present, never
//! dropped; for a copy of a named account, a role is first claimed in the
//! server's role ledger ([`super::ledger`]) and one the ledger gives
//! another account, or that exists without being any copy's, is refused;
//! a role that is a superuser on the target is refused rather
//! than given a customer's password, and the attributes that give power
//! over other roles or the server (SUPERUSER, CREATEROLE, REPLICATION,
//! BYPASSRLS) are always set off. The database is dropped and created
//! again: a copy is disposable, and a half-made one from an earlier attempt
//! must not survive. Every name is quoted here; the only values written
//! raw are settings of list type (`search_path`), after checking that they
//! are lists of identifiers.

use navette_proto::v1::{
    PostgresDatabaseProperties, PostgresExtension, PostgresMembership, PostgresRole,
    PostgresSetting,
};
use tokio_postgres::Client;

use super::error::PostgresCopyError;
use super::session::{quote_ident, quote_literal};
use crate::config::PostgresqlServer;

/// Databases a copy never replaces.
const RESERVED_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

/// Settings whose value is a list of identifiers, stored already quoted
/// (PostgreSQL's GUC_LIST_QUOTE): written back as they are.
const LIST_SETTINGS: [&str; 6] = [
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
    "unix_socket_directories",
];

/// Which roles were created and which already existed (and were altered).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolesOutcome {
    pub created: Vec<String>,
    pub updated: Vec<String>,
}

/// Runs statements on the target's maintenance connection, errors naming
/// the server and database.
pub struct Target<'a> {
    pub client: &'a Client,
    pub server: &'a PostgresqlServer,
    /// The database being copied (as named on the target), for messages.
    pub database: &'a str,
    /// The account the copy is for, if the caller names it: then roles go
    /// through the server's role ledger ([`super::ledger`]).
    pub account: Option<&'a str>,
    /// The transfer, recorded in the ledger beside the roles it claims.
    pub transfer_id: &'a str,
}

impl Target<'_> {
    async fn execute(&self, what: impl Into<String>, sql: &str) -> Result<(), PostgresCopyError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|source| PostgresCopyError::Target {
                server: self.server.name.clone(),
                database: self.database.to_owned(),
                what: what.into(),
                source,
            })
    }

    fn failed(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> PostgresCopyError {
        let (server, database, what) = (
            self.server.name.clone(),
            self.database.to_owned(),
            what.into(),
        );
        move |source| PostgresCopyError::Target {
            server,
            database,
            what,
            source,
        }
    }

    fn refused(&self, reason: String) -> PostgresCopyError {
        PostgresCopyError::Refused {
            database: self.database.to_owned(),
            reason,
        }
    }

    /// Creates or alters every role, then grants the memberships.
    pub async fn ensure_roles(
        &self,
        roles: &[PostgresRole],
        memberships: &[PostgresMembership],
    ) -> Result<RolesOutcome, PostgresCopyError> {
        let mut outcome = RolesOutcome::default();
        if self.account.is_some() {
            super::ledger::ensure(self.client)
                .await
                .map_err(self.failed("creating the role ledger"))?;
        }
        for role in roles {
            let what = format!("role {}", role.name);
            let existing = self
                .client
                .query_opt(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
                    &[&role.name],
                )
                .await
                .and_then(|row| row.map(|row| row.try_get::<_, bool>(0)).transpose())
                .map_err(|source| PostgresCopyError::Target {
                    server: self.server.name.clone(),
                    database: self.database.to_owned(),
                    what: what.clone(),
                    source,
                })?;
            match existing {
                Some(true) => {
                    return Err(self.refused(format!(
                        "role {} is a superuser on the target; the copy will not give it the account's password",
                        role.name
                    )));
                }
                Some(false) => {
                    if let Some(account) = self.account {
                        let holders = super::ledger::accounts_of(
                            self.client,
                            std::slice::from_ref(&role.name),
                        )
                        .await
                        .map_err(self.failed(format!("reading the ledger for {what}")))?;
                        if holders.get(&role.name).map(String::as_str) != Some(account) {
                            return Err(self.refused(format!(
                                "role {} already exists on the target and is not one a copy of {account} made; a copy does not take it over",
                                role.name
                            )));
                        }
                    }
                    outcome.updated.push(role.name.clone());
                }
                None => {
                    if let Some(account) = self.account {
                        let holder = super::ledger::claim(
                            self.client,
                            &role.name,
                            account,
                            self.transfer_id,
                        )
                        .await
                        .map_err(self.failed(format!("claiming {what} in the ledger")))?;
                        if holder != account {
                            return Err(self.refused(format!(
                                "role {} on the target belongs to another account's copy; a copy of {account} does not take it over",
                                role.name
                            )));
                        }
                    }
                    self.execute(
                        format!("creating {what}"),
                        &format!("CREATE ROLE {}", quote_ident(&role.name)),
                    )
                    .await?;
                    outcome.created.push(role.name.clone());
                }
            }
            let sql = alter_role(role).map_err(|reason| self.refused(reason))?;
            self.execute(format!("setting the attributes of {what}"), &sql)
                .await?;
            for setting in &role.settings {
                let value = setting_value(setting).map_err(|reason| self.refused(reason))?;
                self.execute(
                    format!("setting {} of {what}", setting.name),
                    &format!(
                        "ALTER ROLE {} SET {} TO {value}",
                        quote_ident(&role.name),
                        setting.name
                    ),
                )
                .await?;
            }
            if role.has_comment {
                self.execute(
                    format!("commenting {what}"),
                    &format!(
                        "COMMENT ON ROLE {} IS {}",
                        quote_ident(&role.name),
                        quote_literal(&role.comment)
                    ),
                )
                .await?;
            }
        }
        for membership in memberships {
            let admin = if membership.admin_option {
                " WITH ADMIN OPTION"
            } else {
                ""
            };
            self.execute(
                format!(
                    "making role {} a member of {}",
                    membership.member, membership.group
                ),
                &format!(
                    "GRANT {} TO {}{admin}",
                    quote_ident(&membership.group),
                    quote_ident(&membership.member)
                ),
            )
            .await?;
        }
        Ok(outcome)
    }

    /// Drops the database if it exists (an earlier copy), then creates it
    /// with the source's owner, encoding and locale. `target_major` is the
    /// target server's major version.
    pub async fn recreate_database(
        &self,
        properties: &PostgresDatabaseProperties,
        target_major: u32,
    ) -> Result<(), PostgresCopyError> {
        let name = self.database;
        if RESERVED_DATABASES.contains(&name) {
            return Err(self.refused(format!(
                "{name} is a system database; a copy never replaces it"
            )));
        }
        let quoted = quote_ident(name);
        let force = if target_major >= 13 {
            " WITH (FORCE)"
        } else {
            ""
        };
        self.execute(
            "dropping the copy left by an earlier attempt",
            &format!("DROP DATABASE IF EXISTS {quoted}{force}"),
        )
        .await?;
        self.execute("creating the database", &create_database(name, properties))
            .await?;
        Ok(())
    }

    /// The database's own privileges, comment, settings and connection
    /// limit, and the roles' settings in it: set once the copy is loaded,
    /// so that none of them (a connection limit, `default_transaction_read_only`,
    /// a revoked CONNECT) stands in the loader's way.
    pub async fn set_database_properties(
        &self,
        properties: &PostgresDatabaseProperties,
        roles: &[PostgresRole],
    ) -> Result<(), PostgresCopyError> {
        let quoted = quote_ident(self.database);
        self.execute(
            "setting the database's connection limit",
            &format!(
                "ALTER DATABASE {quoted} CONNECTION LIMIT {}",
                properties.connection_limit
            ),
        )
        .await?;
        if properties.has_comment {
            self.execute(
                "commenting the database",
                &format!(
                    "COMMENT ON DATABASE {quoted} IS {}",
                    quote_literal(&properties.comment)
                ),
            )
            .await?;
        }
        if properties.has_acl {
            let mut sql = format!(
                "REVOKE ALL ON DATABASE {quoted} FROM PUBLIC; \
                 REVOKE ALL ON DATABASE {quoted} FROM {};",
                quote_ident(&properties.owner)
            );
            for grant in &properties.grants {
                let privilege = match grant.privilege.as_str() {
                    p @ ("CREATE" | "CONNECT" | "TEMPORARY") => p,
                    other => {
                        return Err(self.refused(format!(
                            "unknown database privilege {other:?} on the source"
                        )));
                    }
                };
                let grantee = if grant.grantee.is_empty() {
                    "PUBLIC".to_owned()
                } else {
                    quote_ident(&grant.grantee)
                };
                let option = if grant.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                };
                sql.push_str(&format!(
                    " GRANT {privilege} ON DATABASE {quoted} TO {grantee}{option};"
                ));
            }
            self.execute("setting the database's privileges", &sql)
                .await?;
        }
        for setting in &properties.settings {
            let value = setting_value(setting).map_err(|reason| self.refused(reason))?;
            self.execute(
                format!("setting {} on the database", setting.name),
                &format!("ALTER DATABASE {quoted} SET {} TO {value}", setting.name),
            )
            .await?;
        }
        for role in roles {
            for setting in &role.database_settings {
                let value = setting_value(setting).map_err(|reason| self.refused(reason))?;
                self.execute(
                    format!(
                        "setting {} of role {} in the database",
                        setting.name, role.name
                    ),
                    &format!(
                        "ALTER ROLE {} IN DATABASE {quoted} SET {} TO {value}",
                        quote_ident(&role.name),
                        setting.name
                    ),
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// Creates the database's extensions, from the target's own installation,
/// in the schemas the source names (which the loader has created, empty,
/// just before): extensions are the operator's code, and most need a
/// superuser. `client` is a superuser session on the copy's database.
pub async fn create_extensions(
    client: &Client,
    server: &PostgresqlServer,
    database: &str,
    extensions: &[PostgresExtension],
) -> Result<(), PostgresCopyError> {
    for extension in extensions {
        let failed = |source| PostgresCopyError::Target {
            server: server.name.clone(),
            database: database.to_owned(),
            what: format!("creating extension {}", extension.name),
            source,
        };
        // A schema the extension made itself (its control file names it)
        // is not in the archive: the extension makes it again.
        let schema_exists = client
            .query_opt(
                "SELECT FROM pg_namespace WHERE nspname = $1",
                &[&extension.schema],
            )
            .await
            .map_err(failed)?
            .is_some();
        let schema = if schema_exists {
            format!(" WITH SCHEMA {}", quote_ident(&extension.schema))
        } else {
            String::new()
        };
        client
            .batch_execute(&format!(
                "CREATE EXTENSION IF NOT EXISTS {}{schema} CASCADE",
                quote_ident(&extension.name)
            ))
            .await
            .map_err(failed)?;
    }
    Ok(())
}

/// `ALTER ROLE` with every attribute the copy carries.
fn alter_role(role: &PostgresRole) -> Result<String, String> {
    let flag = |on: bool, name: &str| {
        if on {
            name.to_owned()
        } else {
            format!("NO{name}")
        }
    };
    // The powers over other roles and over the server are never granted,
    // whatever the source says (acceptance refuses a source that asks).
    let mut sql = format!(
        "ALTER ROLE {} WITH {} {} {} NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS \
         CONNECTION LIMIT {}",
        quote_ident(&role.name),
        flag(role.login, "LOGIN"),
        flag(role.inherit, "INHERIT"),
        flag(role.create_db, "CREATEDB"),
        role.connection_limit
    );
    let valid_until = if role.valid_until.is_empty() {
        "infinity"
    } else {
        role.valid_until.as_str()
    };
    sql.push_str(&format!(" VALID UNTIL {}", quote_literal(valid_until)));
    if role.password_verifier.is_empty() {
        sql.push_str(" PASSWORD NULL");
    } else if is_verifier(&role.password_verifier) {
        sql.push_str(&format!(
            " PASSWORD {}",
            quote_literal(&role.password_verifier)
        ));
    } else {
        return Err(format!(
            "role {}: its stored password is not a SCRAM-SHA-256 or MD5 verifier; it cannot be carried over",
            role.name
        ));
    }
    Ok(sql)
}

/// Whether `text` is a stored verifier PostgreSQL takes as-is (rather than
/// hashing it again as a clear-text password).
fn is_verifier(text: &str) -> bool {
    let md5 = text.len() == 35
        && text.starts_with("md5")
        && text[3..].bytes().all(|b| b.is_ascii_hexdigit());
    md5 || text.starts_with("SCRAM-SHA-256$")
}

/// The SQL value of a setting: a literal, or for list settings the stored
/// list of identifiers, checked. Checks the name too (letters, digits, `_`
/// and `.`), which is then written as it is.
fn setting_value(setting: &PostgresSetting) -> Result<String, String> {
    let name = &setting.name;
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid_name {
        return Err(format!("setting name {name:?} is not valid"));
    }
    if !LIST_SETTINGS.contains(&name.as_str()) {
        return Ok(quote_literal(&setting.value));
    }
    if identifier_list(&setting.value) {
        Ok(setting.value.clone())
    } else {
        Err(format!(
            "setting {name} = {:?} is not a list of identifiers",
            setting.value
        ))
    }
}

/// Whether `text` is a comma-separated list of plain or double-quoted
/// identifiers (PostgreSQL's stored form of list settings).
fn identifier_list(text: &str) -> bool {
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        match chars.next() {
            Some('"') => loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                    }
                    Some('"') => break,
                    Some(_) => {}
                    None => return false,
                }
            },
            Some(c) if c.is_alphabetic() || c == '_' => {
                while chars
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
                {
                    chars.next();
                }
            }
            _ => return false,
        }
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        match chars.next() {
            None => return true,
            Some(',') => {}
            Some(_) => return false,
        }
    }
}

/// `CREATE DATABASE` with the source's owner, encoding and locale.
fn create_database(name: &str, p: &PostgresDatabaseProperties) -> String {
    let mut sql = format!(
        "CREATE DATABASE {} WITH OWNER {} TEMPLATE template0 ENCODING {}",
        quote_ident(name),
        quote_ident(&p.owner),
        quote_literal(&p.encoding)
    );
    if !p.collate.is_empty() {
        sql.push_str(&format!(" LC_COLLATE {}", quote_literal(&p.collate)));
    }
    if !p.ctype.is_empty() {
        sql.push_str(&format!(" LC_CTYPE {}", quote_literal(&p.ctype)));
    }
    match p.locale_provider.as_str() {
        "i" => {
            sql.push_str(&format!(
                " LOCALE_PROVIDER icu ICU_LOCALE {}",
                quote_literal(&p.locale)
            ));
            if !p.icu_rules.is_empty() {
                sql.push_str(&format!(" ICU_RULES {}", quote_literal(&p.icu_rules)));
            }
        }
        "b" => sql.push_str(&format!(
            " LOCALE_PROVIDER builtin BUILTIN_LOCALE {}",
            quote_literal(&p.locale)
        )),
        "c" => sql.push_str(" LOCALE_PROVIDER libc"),
        _ => {}
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role() -> PostgresRole {
        PostgresRole {
            name: "alice".to_owned(),
            login: true,
            inherit: true,
            connection_limit: -1,
            password_verifier: "SCRAM-SHA-256$4096:c2FsdA==$a:b".to_owned(),
            ..PostgresRole::default()
        }
    }

    #[test]
    fn roles_keep_their_verifier() {
        assert_eq!(
            alter_role(&role()).as_deref(),
            Ok(
                "ALTER ROLE \"alice\" WITH LOGIN INHERIT NOCREATEDB NOSUPERUSER NOCREATEROLE \
                 NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 VALID UNTIL 'infinity' \
                 PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'"
            )
        );
        let mut md5 = role();
        md5.password_verifier = format!("md5{}", "0123456789abcdef".repeat(2));
        assert!(alter_role(&md5).is_ok());
        let mut clear = role();
        clear.password_verifier = "hunter2".to_owned();
        assert!(alter_role(&clear).is_err());
        let mut none = role();
        none.password_verifier = String::new();
        assert!(alter_role(&none).is_ok_and(|sql| sql.ends_with("PASSWORD NULL")));
    }

    #[test]
    fn list_settings_must_be_identifier_lists() {
        let setting = |name: &str, value: &str| PostgresSetting {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        assert_eq!(
            setting_value(&setting("search_path", "\"$user\", public")).as_deref(),
            Ok("\"$user\", public")
        );
        assert_eq!(
            setting_value(&setting("search_path", "\"we\"\"ird\", app_1")).as_deref(),
            Ok("\"we\"\"ird\", app_1")
        );
        assert_eq!(
            setting_value(&setting("search_path", "\"\"")).as_deref(),
            Ok("\"\"")
        );
        assert!(setting_value(&setting("search_path", "public; DROP TABLE x")).is_err());
        assert!(setting_value(&setting("search_path", "\"open")).is_err());
        assert_eq!(
            setting_value(&setting("work_mem", "64MB")).as_deref(),
            Ok("'64MB'")
        );
        assert!(setting_value(&setting("bad name", "x")).is_err());
    }

    #[test]
    fn databases_are_created_with_the_source_locale() {
        let properties = PostgresDatabaseProperties {
            owner: "alice".to_owned(),
            encoding: "UTF8".to_owned(),
            collate: "C.UTF-8".to_owned(),
            ctype: "C.UTF-8".to_owned(),
            locale_provider: "c".to_owned(),
            connection_limit: -1,
            ..PostgresDatabaseProperties::default()
        };
        assert_eq!(
            create_database("shop", &properties),
            "CREATE DATABASE \"shop\" WITH OWNER \"alice\" TEMPLATE template0 ENCODING 'UTF8' \
             LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' LOCALE_PROVIDER libc"
        );
    }
}
