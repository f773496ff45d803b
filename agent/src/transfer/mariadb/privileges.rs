//! Users' privileges: reading `SHOW GRANTS` on the source, and deciding on
//! the target what of it to grant.
//!
//! The source describes every grant with an ON clause (global, database,
//! table, column, routine) with the database it is on; proxy and role
//! grants stay behind. The target decides ([`decide_grant`]): USAGE on
//! `*.*` is no privilege; any other global privilege, and any privilege on
//! a database that is not the account's (by name, or through a wildcard
//! that could match another account's), refuses the copy with a finding;
//! privileges on another of the account's databases are skipped when this
//! copy does not carry it; the rest is granted on the target's copy of the
//! database only (never as a wildcard), with privilege names from the
//! lists below and column names re-quoted, never as the source wrote them.

use navette_proto::v1::{MariadbGrant, MariadbGrantLevel};

use super::client::{ident, literal};

/// What a `GRANT ... ON <what>` line is about.
#[derive(Clone, Debug, PartialEq, Eq)]
enum On {
    /// `*.*`.
    Global,
    /// Anything else with an ON clause that is not understood.
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

/// The grants among `lines` (SHOW GRANTS output), each with the database
/// it is on.
pub fn grants_of(lines: &[String]) -> Vec<MariadbGrant> {
    lines
        .iter()
        .filter_map(|line| parse_grant(line))
        .filter_map(|grant| {
            let (level, database, object) = match grant.on {
                On::Global => (MariadbGrantLevel::Global, String::new(), String::new()),
                On::Database(pattern) => (MariadbGrantLevel::Database, pattern, String::new()),
                On::Object {
                    level,
                    database,
                    name,
                } => (level, database, name),
                On::Other => return None,
            };
            Some(MariadbGrant {
                privileges: grant.privileges,
                level: level.into(),
                object,
                with_grant_option: grant.with_grant_option,
                database,
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
        (None, None) if level == MariadbGrantLevel::Table => On::Global,
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

/// Privileges that exist at database level (and so in a grant on one
/// database); everything else (SUPER, FILE, PROCESS, CREATE USER...) is
/// global only.
const DATABASE_PRIVILEGES: [&str; 21] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "CREATE",
    "DROP",
    "REFERENCES",
    "INDEX",
    "ALTER",
    "CREATE TEMPORARY TABLES",
    "LOCK TABLES",
    "EXECUTE",
    "CREATE VIEW",
    "SHOW VIEW",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EVENT",
    "TRIGGER",
    "DELETE HISTORY",
    "ALL PRIVILEGES",
    "USAGE",
];

/// Privileges on one table (columns in parentheses for the first four).
const TABLE_PRIVILEGES: [&str; 14] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "REFERENCES",
    "DELETE",
    "CREATE",
    "DROP",
    "INDEX",
    "ALTER",
    "CREATE VIEW",
    "SHOW VIEW",
    "TRIGGER",
    "DELETE HISTORY",
    "ALL PRIVILEGES",
];

/// Privileges on one routine or package.
const ROUTINE_PRIVILEGES: [&str; 3] = ["EXECUTE", "ALTER ROUTINE", "ALL PRIVILEGES"];

/// What the target does with one grant the source described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantDecision {
    /// The GRANT statement, built by the target, on its copy.
    Apply(String),
    /// Not applied, and why (a grant on another of the account's
    /// databases, which this copy does not carry; USAGE, which is none).
    Skip(Option<String>),
}

/// One copy's databases, as the target sees them.
pub struct CopyScope<'a> {
    /// The account the transfer is for (from the controller, not the
    /// source).
    pub account: &'a str,
    pub source_database: &'a str,
    pub target_database: &'a str,
}

impl CopyScope<'_> {
    /// Whether `database` is one of the account's databases by name.
    fn owns(&self, database: &str) -> bool {
        crate::inventory::mariadb::account_of(database, [self.account]).is_some()
    }

    /// Whether `pattern` (a LIKE pattern) is about the account's databases:
    /// up to its first `%`, it names one of them, or starts with the
    /// account's name and `_`. An unescaped `_` is read as itself, as
    /// people mean it (`alice_shop`), although the server lets it match
    /// any character; either way the target grants on its own copy only.
    fn owns_pattern(&self, pattern: &str) -> bool {
        let mut literal = String::new();
        let mut chars = pattern.chars();
        let mut wildcard = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => literal.extend(chars.next()),
                '%' => {
                    wildcard = true;
                    break;
                }
                other => literal.push(other),
            }
        }
        if !wildcard {
            return self.owns(&literal);
        }
        literal
            .strip_prefix(self.account)
            .is_some_and(|rest| rest.starts_with('_'))
    }
}

/// Decides what to do with `grant` of `user`@`host`: the GRANT to run on
/// the target's copy, a skip, or a finding (`Err`) that refuses the copy.
pub fn decide_grant(
    grant: &MariadbGrant,
    scope: &CopyScope<'_>,
    user: &str,
    host: &str,
) -> Result<GrantDecision, String> {
    let who = format!("{user}@{host}");
    let level = grant.level();
    let database = if grant.database.is_empty() {
        scope.source_database
    } else {
        grant.database.as_str()
    };
    let (allowed, on): (&[&str], String) = match level {
        MariadbGrantLevel::Unspecified => return Err(format!("{who}: a grant without a level")),
        MariadbGrantLevel::Global => {
            if grant.privileges.eq_ignore_ascii_case("USAGE") && !grant.with_grant_option {
                return Ok(GrantDecision::Skip(None));
            }
            let option = if grant.with_grant_option {
                " WITH GRANT OPTION"
            } else {
                ""
            };
            return Err(format!(
                "{who}: global privilege {}{option} on *.* (only privileges on the account's databases are copied)",
                grant.privileges
            ));
        }
        MariadbGrantLevel::Database => {
            if !scope.owns_pattern(database) {
                return Err(format!(
                    "{who}: privileges on database {database}, which is not account {}'s",
                    scope.account
                ));
            }
            if !like(scope.source_database, database) {
                return Ok(GrantDecision::Skip(Some(format!(
                    "{who}: privileges on {database} (not in this copy)"
                ))));
            }
            (
                &DATABASE_PRIVILEGES,
                format!("{}.*", ident(&exact_pattern(scope.target_database))),
            )
        }
        level => {
            if database != scope.source_database {
                if scope.owns(database) {
                    return Ok(GrantDecision::Skip(Some(format!(
                        "{who}: privileges on {database}.{} (not in this copy)",
                        grant.object
                    ))));
                }
                return Err(format!(
                    "{who}: privileges on {database}.{}, which is not account {}'s",
                    grant.object, scope.account
                ));
            }
            let (keyword, allowed): (&str, &[&str]) = match level {
                MariadbGrantLevel::Procedure => ("PROCEDURE ", &ROUTINE_PRIVILEGES),
                MariadbGrantLevel::Function => ("FUNCTION ", &ROUTINE_PRIVILEGES),
                MariadbGrantLevel::Package => ("PACKAGE ", &ROUTINE_PRIVILEGES),
                MariadbGrantLevel::PackageBody => ("PACKAGE BODY ", &ROUTINE_PRIVILEGES),
                _ => ("", &TABLE_PRIVILEGES),
            };
            (
                allowed,
                format!(
                    "{keyword}{}.{}",
                    ident(scope.target_database),
                    ident(&grant.object)
                ),
            )
        }
    };
    let privileges = privilege_list(&grant.privileges, allowed, level)
        .map_err(|privilege| format!("{who}: privilege {privilege} on {database}"))?;
    let option = if grant.with_grant_option {
        " WITH GRANT OPTION"
    } else {
        ""
    };
    Ok(GrantDecision::Apply(format!(
        "GRANT {privileges} ON {on} TO {}@{}{option};\n",
        literal(user),
        literal(host)
    )))
}

/// The privilege list rebuilt from known names and re-quoted column
/// names; `Err` names the first privilege that is not one of `allowed`
/// (or not a privilege at all).
fn privilege_list(
    text: &str,
    allowed: &[&str],
    level: MariadbGrantLevel,
) -> Result<String, String> {
    let mut items = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let end = find_top_level(rest, ",").unwrap_or(rest.len());
        let item = rest[..end].trim();
        rest = rest[end..]
            .strip_prefix(',')
            .unwrap_or_default()
            .trim_start();
        let (name, columns) = match item.find('(') {
            Some(open) => (item[..open].trim(), Some(&item[open..])),
            None => (item, None),
        };
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        let known = allowed
            .iter()
            .find(|privilege| privilege.eq_ignore_ascii_case(&name))
            .ok_or_else(|| name.clone())?;
        let mut built = (*known).to_owned();
        if let Some(columns) = columns {
            let column_level = level == MariadbGrantLevel::Table
                && ["SELECT", "INSERT", "UPDATE", "REFERENCES"].contains(known);
            let names = column_names(columns).filter(|_| column_level);
            let names = names.ok_or_else(|| item.to_owned())?;
            built.push_str(" (");
            built.push_str(
                &names
                    .iter()
                    .map(|column| ident(column))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            built.push(')');
        }
        items.push(built);
    }
    if items.is_empty() {
        return Err(format!("{text:?}"));
    }
    Ok(items.join(", "))
}

/// `` (`a`, `b`) `` as names; `None` for anything else.
fn column_names(text: &str) -> Option<Vec<String>> {
    let mut inner = text.strip_prefix('(')?.strip_suffix(')')?.trim();
    let mut names = Vec::new();
    loop {
        let (name, after) = name_or_star(inner)?;
        names.push(name?);
        let after = after.trim_start();
        if after.is_empty() {
            return Some(names);
        }
        inner = after.strip_prefix(',')?.trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    fn grant(
        level: MariadbGrantLevel,
        database: &str,
        object: &str,
        privileges: &str,
    ) -> MariadbGrant {
        MariadbGrant {
            privileges: privileges.into(),
            level: level.into(),
            object: object.into(),
            with_grant_option: false,
            database: database.into(),
        }
    }

    const SCOPE: CopyScope<'static> = CopyScope {
        account: "alice",
        source_database: "alice_shop",
        target_database: "alice_shop",
    };

    #[test]
    fn every_grant_is_described_with_its_database() {
        let shown = lines(
            "GRANT RELOAD ON *.* TO `alice_ro`@`%` IDENTIFIED BY PASSWORD '*B279'\n\
             GRANT SELECT ON `alice\\_%`.* TO `alice_ro`@`%`\n\
             GRANT SELECT (`id`, `name`) ON `alice`.`customers` TO `alice_ro`@`%`\n\
             GRANT EXECUTE ON PROCEDURE `alice`.`add_order` TO `alice_ro`@`%` WITH GRANT OPTION\n\
             GRANT `reporting` TO `alice_ro`@`%`\n\
             GRANT PROXY ON ''@'%' TO `alice_ro`@`%`",
        );
        let described = grants_of(&shown);
        assert_eq!(
            described,
            vec![
                grant(MariadbGrantLevel::Global, "", "", "RELOAD"),
                grant(MariadbGrantLevel::Database, "alice\\_%", "", "SELECT"),
                grant(
                    MariadbGrantLevel::Table,
                    "alice",
                    "customers",
                    "SELECT (`id`, `name`)"
                ),
                MariadbGrant {
                    with_grant_option: true,
                    ..grant(
                        MariadbGrantLevel::Procedure,
                        "alice",
                        "add_order",
                        "EXECUTE"
                    )
                },
            ]
        );
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
    fn the_copys_own_grants_are_granted_on_the_copy_only() -> Result<(), String> {
        let scope = CopyScope {
            target_database: "alice_copy",
            ..SCOPE
        };
        let on_wildcard = grant(
            MariadbGrantLevel::Database,
            "alice\\_%",
            "",
            "ALL PRIVILEGES",
        );
        assert_eq!(
            decide_grant(&on_wildcard, &scope, "alice", "%")?,
            GrantDecision::Apply(
                "GRANT ALL PRIVILEGES ON `alice\\_copy`.* TO 'alice'@'%';\n".into()
            )
        );
        let columns = grant(
            MariadbGrantLevel::Table,
            "alice_shop",
            "t",
            "select (`id`,`a``b`), INSERT",
        );
        assert_eq!(
            decide_grant(&columns, &scope, "alice_ro", "%")?,
            GrantDecision::Apply(
                "GRANT SELECT (`id`, `a``b`), INSERT ON `alice_copy`.`t` TO 'alice_ro'@'%';\n"
                    .into()
            )
        );
        let procedure = MariadbGrant {
            with_grant_option: true,
            ..grant(MariadbGrantLevel::Procedure, "", "add_order", "EXECUTE")
        };
        assert_eq!(
            decide_grant(&procedure, &scope, "alice_ro", "%")?,
            GrantDecision::Apply(
                "GRANT EXECUTE ON PROCEDURE `alice_copy`.`add_order` TO 'alice_ro'@'%' WITH GRANT OPTION;\n".into()
            )
        );
        let usage = grant(MariadbGrantLevel::Global, "", "", "USAGE");
        assert_eq!(
            decide_grant(&usage, &scope, "alice", "%")?,
            GrantDecision::Skip(None)
        );
        let other_own = grant(MariadbGrantLevel::Database, "alice_blog", "", "SELECT");
        assert!(matches!(
            decide_grant(&other_own, &scope, "alice", "%")?,
            GrantDecision::Skip(Some(_))
        ));
        Ok(())
    }

    #[test]
    fn global_privileges_and_other_accounts_databases_are_refused() {
        for (refused, names) in [
            (
                grant(MariadbGrantLevel::Global, "", "", "SUPER, FILE"),
                "global privilege SUPER, FILE",
            ),
            (
                MariadbGrant {
                    with_grant_option: true,
                    ..grant(MariadbGrantLevel::Global, "", "", "USAGE")
                },
                "USAGE WITH GRANT OPTION on *.*",
            ),
            (
                grant(MariadbGrantLevel::Database, "bob", "", "SELECT"),
                "database bob,",
            ),
            (
                grant(MariadbGrantLevel::Database, "%", "", "SELECT"),
                "database %,",
            ),
            (
                grant(MariadbGrantLevel::Database, "alice%", "", "SELECT"),
                "database alice%,",
            ),
            (
                grant(MariadbGrantLevel::Table, "bob", "secrets", "SELECT"),
                "bob.secrets",
            ),
            (
                grant(MariadbGrantLevel::Database, "alice_shop", "", "PROCESS"),
                "privilege PROCESS",
            ),
            (
                grant(
                    MariadbGrantLevel::Database,
                    "alice_shop",
                    "",
                    "SELECT ON *.* TO x; DROP DATABASE mysql; GRANT SELECT",
                ),
                "privilege",
            ),
            (
                grant(MariadbGrantLevel::Function, "alice_shop", "f", "SELECT"),
                "privilege SELECT",
            ),
        ] {
            let decided = decide_grant(&refused, &SCOPE, "alice", "%");
            assert!(
                decided.as_ref().is_err_and(|finding| finding.contains(names) && finding.starts_with("alice@%")),
                "{refused:?}: {decided:?}"
            );
        }
    }
}
