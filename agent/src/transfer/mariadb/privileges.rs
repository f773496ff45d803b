//! Users and their privileges on one database: reading `SHOW GRANTS` on the
//! source, writing `CREATE USER` and `GRANT` on the target.
//!
//! Only privileges on the copied database travel: database-level grants
//! (also those given through a wildcard such as `alice\_%`, which the
//! target gives on its copy of the database only, never as a wildcard),
//! and table, column and routine grants in that database. Global
//! privileges, proxy grants and role grants stay behind.

use navette_proto::v1::{MariadbGrant, MariadbGrantLevel};

use super::client::{ident, literal};

/// What a `GRANT ... ON <what>` line is about.
#[derive(Clone, Debug, PartialEq, Eq)]
enum On {
    /// `*.*`, `db.*` with `*` as database, proxy grants: never copied.
    Other,
    /// `` `pattern`.* `` (a LIKE pattern, `\` escapes).
    Database(String),
    /// A table or routine in a database.
    Object {
        level: MariadbGrantLevel,
        database: String,
        name: String,
    },
}

/// One parsed `SHOW GRANTS` line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GrantLine {
    privileges: String,
    on: On,
    with_grant_option: bool,
}

/// The grants among `lines` (SHOW GRANTS output) that concern `database`.
pub fn grants_on(lines: &[String], database: &str) -> Vec<MariadbGrant> {
    lines
        .iter()
        .filter_map(|line| parse_grant(line))
        .filter_map(|grant| {
            let (level, object) = match grant.on {
                On::Database(pattern) if like(database, &pattern) => {
                    (MariadbGrantLevel::Database, String::new())
                }
                On::Object {
                    level,
                    database: db,
                    name,
                } if db == database => (level, name),
                _ => return None,
            };
            Some(MariadbGrant {
                privileges: grant.privileges,
                level: level.into(),
                object,
                with_grant_option: grant.with_grant_option,
            })
        })
        .collect()
}

/// Parses `GRANT <privileges> ON <what> TO <grantee> [WITH GRANT OPTION]`;
/// `None` for lines of another shape (role grants have no ON).
fn parse_grant(line: &str) -> Option<GrantLine> {
    let rest = line.strip_prefix("GRANT ")?;
    let on_at = find_top_level(rest, " ON ")?;
    let privileges = rest[..on_at].to_owned();
    let mut target = &rest[on_at + " ON ".len()..];
    let mut level = MariadbGrantLevel::Table;
    for (keyword, kind) in [
        ("PROCEDURE ", MariadbGrantLevel::Procedure),
        ("FUNCTION ", MariadbGrantLevel::Function),
        ("PACKAGE BODY ", MariadbGrantLevel::PackageBody),
        ("PACKAGE ", MariadbGrantLevel::Package),
    ] {
        if let Some(after) = target.strip_prefix(keyword) {
            level = kind;
            target = after;
            break;
        }
    }
    let (database, after_db) = name_or_star(target)?;
    let after_dot = after_db.strip_prefix('.')?;
    let (object, after_object) = name_or_star(after_dot)?;
    let grantee = after_object.strip_prefix(" TO ")?;
    let with_grant_option = find_top_level(grantee, " WITH GRANT OPTION").is_some();
    let on = match (database, object) {
        (Some(database), None) if level == MariadbGrantLevel::Table => On::Database(database),
        (Some(database), Some(name)) => On::Object {
            level,
            database,
            name,
        },
        _ => On::Other,
    };
    Some(GrantLine {
        privileges,
        on,
        with_grant_option,
    })
}

/// Reads `` `name` `` (Some) or `*` (None) at the start of `text`; the rest.
#[allow(clippy::type_complexity)]
fn name_or_star(text: &str) -> Option<(Option<String>, &str)> {
    if let Some(rest) = text.strip_prefix('*') {
        return Some((None, rest));
    }
    let inner = text.strip_prefix('`')?;
    let mut name = String::new();
    let mut chars = inner.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '`' {
            name.push(c);
            continue;
        }
        if inner[at + 1..].starts_with('`') {
            name.push('`');
            chars.next();
            continue;
        }
        return Some((Some(name), &inner[at + 1..]));
    }
    None
}

/// Where `needle` first occurs outside quotes, backquotes and parentheses.
fn find_top_level(text: &str, needle: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && open == '\'' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            continue;
        }
        match c {
            '`' | '\'' | '"' => quote = Some(c),
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 && text[at..].starts_with(needle) => return Some(at),
            _ => {}
        }
    }
    None
}

/// SQL LIKE with `\` as escape, as the server matches database-level grants.
pub fn like(value: &str, pattern: &str) -> bool {
    fn matches(value: &[char], pattern: &[char]) -> bool {
        match pattern.split_first() {
            None => value.is_empty(),
            Some(('%', rest)) => (0..=value.len()).any(|skip| matches(&value[skip..], rest)),
            Some(('_', rest)) => !value.is_empty() && matches(&value[1..], rest),
            Some(('\\', rest)) if !rest.is_empty() => {
                value.first() == rest.first() && matches(&value[1..], &rest[1..])
            }
            Some((c, rest)) => value.first() == Some(c) && matches(&value[1..], rest),
        }
    }
    let value: Vec<char> = value.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    matches(&value, &pattern)
}

/// A database name as a grant pattern matching only itself.
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

/// Why a user or grant from the source is not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivilegeError {
    #[error("SHOW CREATE USER for {user}@{host} does not start with CREATE USER {expected}")]
    CreateUser {
        user: String,
        host: String,
        expected: String,
    },
    #[error("SHOW CREATE USER for {user}@{host} holds more than one statement")]
    SeveralStatements { user: String, host: String },
    #[error("privileges {privileges:?} for {user}@{host} are not a privilege list")]
    Privileges {
        user: String,
        host: String,
        privileges: String,
    },
    #[error("grant for {user}@{host} has no level")]
    Level { user: String, host: String },
}

/// `CREATE USER IF NOT EXISTS` and `ALTER USER` statements that make the
/// target's user what `SHOW CREATE USER` printed on the source (same
/// password hash, TLS requirements and limits), whether it exists or not.
pub fn ensure_user_sql(
    user: &str,
    host: &str,
    create_user: &str,
) -> Result<String, PrivilegeError> {
    let grantee = format!("{}@{}", ident(user), ident(host));
    let expected = format!("CREATE USER {grantee}");
    let options = create_user
        .strip_prefix(&expected)
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
        .ok_or_else(|| PrivilegeError::CreateUser {
            user: user.to_owned(),
            host: host.to_owned(),
            expected: expected.clone(),
        })?;
    if find_top_level(options, ";").is_some() {
        return Err(PrivilegeError::SeveralStatements {
            user: user.to_owned(),
            host: host.to_owned(),
        });
    }
    Ok(format!(
        "CREATE USER IF NOT EXISTS {grantee}{options};\nALTER USER {grantee}{options};\n"
    ))
}

/// The GRANT statement giving `grant` to `user`@`host` on `database` (the
/// target's name for the database).
pub fn grant_sql(
    grant: &MariadbGrant,
    database: &str,
    user: &str,
    host: &str,
) -> Result<String, PrivilegeError> {
    if !is_privilege_list(&grant.privileges) {
        return Err(PrivilegeError::Privileges {
            user: user.to_owned(),
            host: host.to_owned(),
            privileges: grant.privileges.clone(),
        });
    }
    let on = match grant.level() {
        MariadbGrantLevel::Unspecified => {
            return Err(PrivilegeError::Level {
                user: user.to_owned(),
                host: host.to_owned(),
            });
        }
        MariadbGrantLevel::Database => format!("{}.*", ident(&exact_pattern(database))),
        level => {
            let keyword = match level {
                MariadbGrantLevel::Procedure => "PROCEDURE ",
                MariadbGrantLevel::Function => "FUNCTION ",
                MariadbGrantLevel::Package => "PACKAGE ",
                MariadbGrantLevel::PackageBody => "PACKAGE BODY ",
                _ => "",
            };
            format!("{keyword}{}.{}", ident(database), ident(&grant.object))
        }
    };
    let option = if grant.with_grant_option {
        " WITH GRANT OPTION"
    } else {
        ""
    };
    Ok(format!(
        "GRANT {} ON {on} TO {}@{}{option};\n",
        grant.privileges,
        literal(user),
        literal(host)
    ))
}

/// Privilege names, commas, and column lists of backquoted names: nothing
/// that could end the statement.
fn is_privilege_list(text: &str) -> bool {
    let mut in_name = false;
    !text.is_empty()
        && text.chars().all(|c| {
            if c == '`' {
                in_name = !in_name;
                return true;
            }
            in_name || c.is_ascii_alphanumeric() || matches!(c, ' ' | ',' | '(' | ')' | '_')
        })
        && !in_name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn only_grants_on_the_database_are_kept() {
        let shown = lines(
            "GRANT USAGE ON *.* TO `alice_ro`@`%` IDENTIFIED BY PASSWORD '*B279'\n\
             GRANT SELECT ON `alice\\_%`.* TO `alice_ro`@`%`\n\
             GRANT SELECT (`id`, `name`) ON `alice`.`customers` TO `alice_ro`@`%`\n\
             GRANT EXECUTE ON PROCEDURE `alice`.`add_order` TO `alice_ro`@`%` WITH GRANT OPTION\n\
             GRANT ALL PRIVILEGES ON `bob`.* TO `alice_ro`@`%`\n\
             GRANT `reporting` TO `alice_ro`@`%`\n\
             GRANT PROXY ON ''@'%' TO `alice_ro`@`%`",
        );
        let on_alice = grants_on(&shown, "alice");
        assert_eq!(
            on_alice,
            vec![
                MariadbGrant {
                    privileges: "SELECT (`id`, `name`)".into(),
                    level: MariadbGrantLevel::Table.into(),
                    object: "customers".into(),
                    with_grant_option: false,
                },
                MariadbGrant {
                    privileges: "EXECUTE".into(),
                    level: MariadbGrantLevel::Procedure.into(),
                    object: "add_order".into(),
                    with_grant_option: true,
                },
            ]
        );
        let on_shop = grants_on(&shown, "alice_shop");
        assert_eq!(on_shop.len(), 1);
        assert_eq!(on_shop[0].level(), MariadbGrantLevel::Database);
        assert!(grants_on(&shown, "alicexshop").is_empty());
    }

    #[test]
    fn like_follows_the_servers_rules() {
        assert!(like("alice_shop", "alice\\_%"));
        assert!(like("alice_shop", "alice_shop"));
        assert!(like("alicexshop", "alice_shop"));
        assert!(!like("alicexshop", "alice\\_shop"));
        assert!(like("anything", "%"));
        assert!(!like("alice", "alice\\_%"));
    }

    #[test]
    fn grants_name_the_target_database_exactly() -> Result<(), PrivilegeError> {
        let database = MariadbGrant {
            privileges: "ALL PRIVILEGES".into(),
            level: MariadbGrantLevel::Database.into(),
            object: String::new(),
            with_grant_option: false,
        };
        assert_eq!(
            grant_sql(&database, "alice_copy", "alice", "%")?,
            "GRANT ALL PRIVILEGES ON `alice\\_copy`.* TO 'alice'@'%';\n"
        );
        let procedure = MariadbGrant {
            privileges: "EXECUTE".into(),
            level: MariadbGrantLevel::Procedure.into(),
            object: "add_order".into(),
            with_grant_option: true,
        };
        assert_eq!(
            grant_sql(&procedure, "alice", "alice_ro", "%")?,
            "GRANT EXECUTE ON PROCEDURE `alice`.`add_order` TO 'alice_ro'@'%' WITH GRANT OPTION;\n"
        );
        let sneaky = MariadbGrant {
            privileges: "SELECT ON *.* TO x; DROP DATABASE mysql; GRANT SELECT".into(),
            ..database
        };
        assert!(grant_sql(&sneaky, "alice", "alice", "%").is_err());
        Ok(())
    }

    #[test]
    fn users_are_created_or_updated_with_the_same_hash() -> Result<(), PrivilegeError> {
        let shown = "CREATE USER `alice`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122'";
        assert_eq!(
            ensure_user_sql("alice", "%", shown)?,
            "CREATE USER IF NOT EXISTS `alice`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122';\n\
             ALTER USER `alice`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122';\n"
        );
        assert!(ensure_user_sql("bob", "%", shown).is_err());
        assert!(
            ensure_user_sql(
                "alice",
                "%",
                "CREATE USER `alice`@`%` IDENTIFIED BY PASSWORD 'x'; DROP DATABASE mysql"
            )
            .is_err()
        );
        Ok(())
    }
}
