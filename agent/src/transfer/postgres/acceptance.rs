//! What the target accepts of what the source sends. The source host is
//! not trusted: a compromised old host, or a customer who was its
//! superuser, can describe any roles, memberships, settings and index
//! definitions, and put anything in its pg_dump archive. Before anything
//! is applied on the target, this module checks the description and the
//! archive's table of contents against what the target knows
//! ([`TargetFacts`]), and turns every refusal into a *finding* that names
//! what was refused and why.
//!
//! What a copy may bring:
//!
//! - **Roles**: only the account's own, which are the roles the
//!   description lists (the database's owner, grantees, owners of its
//!   objects, their groups), and, when the caller names the account, only
//!   those the target server's role ledger ([`super::ledger`]) gives that
//!   account or that do not exist there yet: a role of another customer's
//!   copy, of the operator or of the server is refused, whatever its name.
//!   Never a predefined `pg_*` role, the target server's own
//!   administrator, a name of Navette's loaders (`navette_load_*`), nor a
//!   role that already exists on the target as a superuser, with
//!   CREATEROLE, REPLICATION or BYPASSRLS, or as a member of a predefined
//!   role: a copy does not take such a role over.
//! - **Attributes**: LOGIN, INHERIT, CONNECTION LIMIT, VALID UNTIL, the
//!   password verifier, and CREATEDB (it lets a role create databases of
//!   its own, no power over anything else's); REPLICATION, BYPASSRLS and
//!   CREATEROLE are refused (SUPERUSER is never described: the source
//!   leaves superusers out, and no statement here can grant it).
//! - **Memberships**: only among the account's roles; never in a
//!   predefined role (`pg_read_all_data`, `pg_write_server_files`...).
//! - **Settings** (of roles, of roles in the database, of the database):
//!   only those the target knows and lets any user set (`pg_settings`
//!   context `user`): `session_preload_libraries`, `log_statement` and the
//!   like would run with the powers of whoever applies them, and settings
//!   the target does not know could later resolve to such a setting.
//! - **The database**: owned by one of the account's roles, privileges
//!   granted to the account's roles or PUBLIC.
//! - **Index definitions** (built as soon as each table is loaded): exactly
//!   one `CREATE [UNIQUE] INDEX <that index> ON <that table> USING ...`
//!   statement, with no statement separator, comment or escape string
//!   outside its literals ([`check_index`]); they are executed through the
//!   extended query protocol too, which refuses a second statement.
//! - **Archive entries** ([`check_archive`]): objects owned by the
//!   account's roles (or `pg_database_owner`, and the `public` schema's
//!   comment and privileges); never event triggers, procedural languages,
//!   foreign-data wrappers, user mappings, subscriptions, access methods,
//!   text search parsers or templates, security labels or database
//!   entries. Extensions are left out of the archive: the target's
//!   superuser creates them ([`super::target`]), from the target's own
//!   installation, if both the archive and the description name them.
//!
//! These checks make refusals early and clear; they are not the only
//! defence: everything of the customer's schema is restored and loaded
//! through sessions authenticated as a loader role with only the account's
//! power ([`super::loader`]), so what slips past a check can still do no
//! more than the account could.

use std::collections::{BTreeSet, HashMap};

use navette_proto::v1::{
    PostgresDatabaseDescription, PostgresIndex, PostgresSetting, PostgresTable,
};
use tokio_postgres::Client;

use super::loader::LOADER_PREFIX;

mod archive;

pub use archive::{AcceptedArchive, TocEntry, check_archive};

/// What the target knows that decides what it accepts, read by its
/// administrator session before anything is changed.
#[derive(Clone, Debug, Default)]
pub struct TargetFacts {
    /// The server's configured (super)user: never one of an account's.
    pub own_user: String,
    /// The account the copy is for, if the caller says: then only roles
    /// the target's ledger gives it, or that do not exist on the target,
    /// are its own (a role of another customer, even one the database
    /// merely refers to such as a grantee, is refused).
    pub account: Option<String>,
    /// Roles of the description that already exist on the target.
    pub existing: HashMap<String, ExistingRole>,
    /// The account the target's role ledger gives each role of the
    /// description it names ([`super::ledger`]).
    pub ledger: HashMap<String, String>,
    /// Every setting the target knows, and its `pg_settings.context`.
    pub settings: HashMap<String, String>,
}

/// A role that exists on the target already, and its powers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExistingRole {
    pub superuser: bool,
    pub create_role: bool,
    pub replication: bool,
    pub bypass_rls: bool,
    /// The predefined roles it is a member of.
    pub predefined_groups: Vec<String>,
}

impl TargetFacts {
    /// Reads the facts about `roles` (the names the source describes), for
    /// a copy of `account` if the caller names it.
    pub async fn read(
        admin: &Client,
        own_user: &str,
        account: Option<&str>,
        roles: &[String],
    ) -> Result<TargetFacts, tokio_postgres::Error> {
        let mut facts = TargetFacts {
            own_user: own_user.to_owned(),
            account: account.map(str::to_owned),
            ..TargetFacts::default()
        };
        for row in admin
            .query(
                "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolreplication, r.rolbypassrls, \
                        ARRAY(SELECT g.rolname::text FROM pg_auth_members m \
                              JOIN pg_roles g ON g.oid = m.roleid \
                              WHERE m.member = r.oid AND g.rolname ~ '^pg_' ORDER BY 1) \
                 FROM pg_roles r WHERE r.rolname = ANY($1)",
                &[&roles],
            )
            .await?
        {
            facts.existing.insert(
                row.try_get(0)?,
                ExistingRole {
                    superuser: row.try_get(1)?,
                    create_role: row.try_get(2)?,
                    replication: row.try_get(3)?,
                    bypass_rls: row.try_get(4)?,
                    predefined_groups: row.try_get(5)?,
                },
            );
        }
        facts.ledger = super::ledger::accounts_of(admin, roles).await?;
        for row in admin
            .query("SELECT name, context FROM pg_settings", &[])
            .await?
        {
            facts.settings.insert(row.try_get(0)?, row.try_get(1)?);
        }
        Ok(facts)
    }
}

/// The account's roles, once accepted: the only roles a copy creates,
/// alters, grants to, or lets own objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountRoles {
    pub names: BTreeSet<String>,
}

impl AccountRoles {
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// Checks the description (roles, memberships, settings, the database's
/// owner and privileges, index definitions): the account's roles, or every
/// finding.
pub fn check_description(
    description: &PostgresDatabaseDescription,
    facts: &TargetFacts,
) -> Result<AccountRoles, Vec<String>> {
    let account = AccountRoles {
        names: description.roles.iter().map(|r| r.name.clone()).collect(),
    };
    let mut findings = Vec::new();
    for role in &description.roles {
        findings.extend(check_role_name(&role.name, facts));
        for (on, attribute) in [
            (role.replication, "REPLICATION"),
            (role.bypass_rls, "BYPASSRLS"),
            (role.create_role, "CREATEROLE"),
        ] {
            if on {
                findings.push(format!(
                    "role {}: it has the {attribute} attribute on the source; a copy never grants it",
                    role.name
                ));
            }
        }
        for setting in &role.settings {
            if let Some(finding) = check_setting(setting, facts) {
                findings.push(format!("role {}: {finding}", role.name));
            }
        }
        for setting in &role.database_settings {
            if let Some(finding) = check_setting(setting, facts) {
                findings.push(format!("role {} in the database: {finding}", role.name));
            }
        }
    }
    for membership in &description.memberships {
        let what = format!(
            "membership of role {} in {}",
            membership.member, membership.group
        );
        if membership.group.starts_with("pg_") {
            findings.push(format!(
                "{what}: {} is a predefined role of PostgreSQL; a copy never grants it",
                membership.group
            ));
        } else if !account.contains(&membership.group) {
            findings.push(format!(
                "{what}: {} is not one of the account's roles",
                membership.group
            ));
        } else if !account.contains(&membership.member) {
            findings.push(format!(
                "{what}: {} is not one of the account's roles",
                membership.member
            ));
        }
    }
    let properties = description.properties.clone().unwrap_or_default();
    if !account.contains(&properties.owner) {
        findings.push(format!(
            "the database's owner {} is not one of the account's roles",
            properties.owner
        ));
    }
    for grant in &properties.grants {
        if !grant.grantee.is_empty() && !account.contains(&grant.grantee) {
            findings.push(format!(
                "the database's {} privilege for {}: not one of the account's roles",
                grant.privilege, grant.grantee
            ));
        }
    }
    for setting in &properties.settings {
        if let Some(finding) = check_setting(setting, facts) {
            findings.push(format!("the database: {finding}"));
        }
    }
    for table in &description.tables {
        for index in &table.indexes {
            if let Err(finding) = check_index(index, table) {
                findings.push(finding);
            }
        }
    }
    if findings.is_empty() {
        Ok(account)
    } else {
        Err(findings)
    }
}

/// Why the target will not create or alter a role of this name, if so.
fn check_role_name(name: &str, facts: &TargetFacts) -> Option<String> {
    if name.starts_with("pg_") {
        return Some(format!(
            "role {name}: names beginning with pg_ are PostgreSQL's predefined roles"
        ));
    }
    if name == facts.own_user {
        return Some(format!(
            "role {name} is the target server's own administrator"
        ));
    }
    if name.starts_with(LOADER_PREFIX) {
        return Some(format!(
            "role {name}: names beginning with {LOADER_PREFIX} are the copy's own"
        ));
    }
    // Whose the role is, by the target's ledger: told after the powers
    // of a role that exists, which say more.
    let not_the_accounts = facts.account.as_ref().and_then(|account| {
        match facts.ledger.get(name) {
            Some(holder) if holder != account => Some(format!(
                "role {name} on the target belongs to another account's copy; a copy of {account} does not take it over"
            )),
            None if facts.existing.contains_key(name) => Some(format!(
                "role {name} already exists on the target and no copy of {account} made it (the server's own, or another account's); a copy does not take it over"
            )),
            _ => None,
        }
    });
    let Some(existing) = facts.existing.get(name) else {
        return not_the_accounts;
    };
    let powers: Vec<&str> = [
        (existing.superuser, "SUPERUSER"),
        (existing.create_role, "CREATEROLE"),
        (existing.replication, "REPLICATION"),
        (existing.bypass_rls, "BYPASSRLS"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if !powers.is_empty() {
        return Some(format!(
            "role {name} already exists on the target with {}; a copy does not take it over",
            powers.join(", ")
        ));
    }
    if !existing.predefined_groups.is_empty() {
        return Some(format!(
            "role {name} already exists on the target as a member of {}; a copy does not take it over",
            existing.predefined_groups.join(", ")
        ));
    }
    not_the_accounts
}

/// Why a setting may not be applied on the target, if so.
fn check_setting(setting: &PostgresSetting, facts: &TargetFacts) -> Option<String> {
    match facts.settings.get(&setting.name).map(String::as_str) {
        Some("user") => None,
        Some(context) => Some(format!(
            "setting {} = {:?} is not one a user may set on the target (its context is {context}); a copy never applies it",
            setting.name, setting.value
        )),
        None => Some(format!(
            "setting {} = {:?} is unknown to the target server; a copy applies only settings any user may set",
            setting.name, setting.value
        )),
    }
}

/// Checks that an index definition from the source is exactly one
/// `CREATE [UNIQUE] INDEX <index.name> ON [ONLY] <table> USING ...`
/// statement, as `pg_get_indexdef` writes it: the index and table named
/// (quoted, or plain and folded to lower case), then nothing outside
/// literals and quoted names that could end the statement or change how
/// the rest is read (`;`, comments, `$` quoting, escape strings). A
/// finding naming the index otherwise.
pub fn check_index(index: &PostgresIndex, table: &PostgresTable) -> Result<(), String> {
    let refused = |why: &str| {
        format!(
            "index {} of table {}.{}: {why}; its definition from the source is not used: {:?}",
            index.name, table.schema, table.name, index.definition
        )
    };
    let text = index.definition.as_str();
    let rest = text
        .strip_prefix("CREATE UNIQUE INDEX ")
        .or_else(|| text.strip_prefix("CREATE INDEX "))
        .ok_or_else(|| refused("it does not begin with CREATE INDEX"))?;
    let (name, rest) = identifier(rest).ok_or_else(|| refused("no index name"))?;
    if name != index.name {
        return Err(refused("it names another index"));
    }
    let rest = rest
        .strip_prefix(" ON ")
        .ok_or_else(|| refused("no ON <table>"))?;
    let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
    let (schema, rest) = identifier(rest).ok_or_else(|| refused("no table name"))?;
    let (relation, rest) = rest
        .strip_prefix('.')
        .and_then(identifier)
        .ok_or_else(|| refused("no schema-qualified table name"))?;
    if schema != table.schema || relation != table.name {
        return Err(refused("it is on another table"));
    }
    if !rest.starts_with(" USING ") {
        return Err(refused("no USING <method>"));
    }
    single_statement(rest).map_err(|why| refused(&why))
}

/// An identifier at the start of `text` (double-quoted, or plain and
/// folded to lower case), and what follows it.
fn identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if c == '"' {
                if chars.peek().is_some_and(|(_, next)| *next == '"') {
                    chars.next();
                    name.push('"');
                    continue;
                }
                return Some((name, &quoted[at + 1..]));
            }
            name.push(c);
        }
        return None;
    }
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    if end == 0 || text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((text[..end].to_ascii_lowercase(), &text[end..]))
}

/// Whether the tail of an index definition is one statement's worth of
/// text: outside standard string literals and quoted names, no `;`, no
/// comment, no `$` (dollar quoting) and no escape string (`E'...'`, whose
/// backslashes could hide a closing quote); every literal closed.
fn single_statement(text: &str) -> Result<(), String> {
    let mut chars = text.chars().peekable();
    let mut previous = ' ';
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                if c == '\'' && matches!(previous, 'E' | 'e') {
                    return Err("it holds an escape string (E'...')".to_owned());
                }
                loop {
                    match chars.next() {
                        Some(q) if q == c => {
                            if chars.peek() == Some(&c) {
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        Some(_) => {}
                        None => return Err("a literal or name is not closed".to_owned()),
                    }
                }
                previous = c;
                continue;
            }
            ';' => return Err("it holds a second statement (;)".to_owned()),
            '$' => return Err("it holds dollar quoting ($)".to_owned()),
            '-' if chars.peek() == Some(&'-') => return Err("it holds a comment (--)".to_owned()),
            '/' if chars.peek() == Some(&'*') => return Err("it holds a comment (/*)".to_owned()),
            '\\' => return Err("it holds a backslash outside a literal".to_owned()),
            _ => {}
        }
        previous = c;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use navette_proto::v1::{PostgresDatabaseProperties, PostgresMembership, PostgresRole};

    fn table() -> PostgresTable {
        PostgresTable {
            schema: "shop".to_owned(),
            name: "Orders".to_owned(),
            ..PostgresTable::default()
        }
    }

    fn index(name: &str, definition: &str) -> PostgresIndex {
        PostgresIndex {
            name: name.to_owned(),
            definition: definition.to_owned(),
            ..PostgresIndex::default()
        }
    }

    #[test]
    fn index_definitions_are_one_statement_on_their_table() {
        let ok = [
            (
                "orders_pkey",
                "CREATE UNIQUE INDEX orders_pkey ON shop.\"Orders\" USING btree (id)",
            ),
            (
                "odd \"name\"",
                "CREATE INDEX \"odd \"\"name\"\"\" ON ONLY shop.\"Orders\" USING btree (lower(name)) \
                 WHERE (note <> 'a;b -- c $1 \\ E''x''')",
            ),
        ];
        for (name, definition) in ok {
            assert_eq!(
                check_index(&index(name, definition), &table()),
                Ok(()),
                "{definition}"
            );
        }
        let refused = [
            (
                "i",
                "CREATE INDEX i ON shop.\"Orders\" USING btree (id); ALTER ROLE x SUPERUSER",
                "second statement",
            ),
            (
                "i",
                "CREATE INDEX i ON shop.\"Orders\" USING btree (id);",
                "second statement",
            ),
            (
                "i",
                "CREATE INDEX i ON shop.other USING btree (id)",
                "another table",
            ),
            (
                "i",
                "CREATE INDEX j ON shop.\"Orders\" USING btree (id)",
                "another index",
            ),
            ("i", "ALTER ROLE x SUPERUSER", "CREATE INDEX"),
            (
                "i",
                "CREATE INDEX i ON shop.\"Orders\" USING btree ((E'\\'' || x))",
                "escape string",
            ),
            (
                "i",
                "CREATE INDEX i ON shop.\"Orders\" USING btree (f($$;$$))",
                "dollar",
            ),
            (
                "i",
                "CREATE INDEX i ON shop.\"Orders\" USING btree (id) -- x",
                "comment",
            ),
            (
                "i",
                "CREATE INDEX i ON shop.\"Orders\" USING btree ('open)",
                "not closed",
            ),
        ];
        for (name, definition, why) in refused {
            let finding = check_index(&index(name, definition), &table()).expect_err(definition);
            assert!(finding.contains(why), "{definition}: {finding}");
            assert!(
                finding.contains(&format!("index {name} of table shop.Orders")),
                "{finding}"
            );
        }
    }

    fn facts() -> TargetFacts {
        TargetFacts {
            own_user: "postgres".to_owned(),
            account: None,
            existing: HashMap::new(),
            ledger: HashMap::new(),
            settings: [
                ("search_path", "user"),
                ("work_mem", "user"),
                ("session_preload_libraries", "superuser"),
            ]
            .into_iter()
            .map(|(name, context)| (name.to_owned(), context.to_owned()))
            .collect(),
        }
    }

    fn description() -> PostgresDatabaseDescription {
        PostgresDatabaseDescription {
            properties: Some(PostgresDatabaseProperties {
                owner: "alice".to_owned(),
                ..PostgresDatabaseProperties::default()
            }),
            roles: vec![
                PostgresRole {
                    name: "alice".to_owned(),
                    create_db: true,
                    settings: vec![PostgresSetting {
                        name: "search_path".to_owned(),
                        value: "shop".to_owned(),
                    }],
                    ..PostgresRole::default()
                },
                PostgresRole {
                    name: "alice_ro".to_owned(),
                    ..PostgresRole::default()
                },
            ],
            memberships: vec![PostgresMembership {
                group: "alice".to_owned(),
                member: "alice_ro".to_owned(),
                admin_option: false,
            }],
            ..PostgresDatabaseDescription::default()
        }
    }

    #[test]
    fn the_account_s_own_roles_are_accepted() {
        let account = check_description(&description(), &facts()).expect("accepted");
        assert_eq!(
            account.names.iter().map(String::as_str).collect::<Vec<_>>(),
            ["alice", "alice_ro"]
        );
    }

    #[test]
    fn powers_memberships_and_settings_from_the_source_are_refused() {
        let mut sent = description();
        sent.roles[1].replication = true;
        sent.roles[0].settings.push(PostgresSetting {
            name: "session_preload_libraries".to_owned(),
            value: "evil".to_owned(),
        });
        sent.roles[0].settings.push(PostgresSetting {
            name: "evil.placeholder".to_owned(),
            value: "x".to_owned(),
        });
        sent.memberships.push(PostgresMembership {
            group: "pg_read_all_data".to_owned(),
            member: "alice".to_owned(),
            admin_option: false,
        });
        sent.memberships.push(PostgresMembership {
            group: "bob".to_owned(),
            member: "alice".to_owned(),
            admin_option: false,
        });
        sent.roles.push(PostgresRole {
            name: "pg_monitor".to_owned(),
            ..PostgresRole::default()
        });
        sent.roles.push(PostgresRole {
            name: "postgres".to_owned(),
            ..PostgresRole::default()
        });
        let mut target = facts();
        target.existing.insert(
            "alice_ro".to_owned(),
            ExistingRole {
                bypass_rls: true,
                ..ExistingRole::default()
            },
        );
        let findings = check_description(&sent, &target).expect_err("refused");
        let expected = [
            "role alice_ro: it has the REPLICATION attribute",
            "role alice: setting session_preload_libraries = \"evil\" is not one a user may set",
            "role alice: setting evil.placeholder = \"x\" is unknown to the target",
            "membership of role alice in pg_read_all_data: pg_read_all_data is a predefined role",
            "membership of role alice in bob: bob is not one of the account's roles",
            "role pg_monitor: names beginning with pg_",
            "role postgres is the target server's own administrator",
            "role alice_ro already exists on the target with BYPASSRLS",
        ];
        for text in expected {
            assert!(
                findings.iter().any(|f| f.starts_with(text)),
                "no finding {text:?} in {findings:#?}"
            );
        }
        assert_eq!(findings.len(), expected.len(), "{findings:#?}");
    }

    #[test]
    fn roles_the_ledger_gives_another_account_are_refused() {
        let mut target = facts();
        target.account = Some("alice".to_owned());
        // Roles new to the target are the account's, whatever their name.
        let mut sent = description();
        sent.roles.push(PostgresRole {
            name: "wp".to_owned(),
            ..PostgresRole::default()
        });
        assert!(check_description(&sent, &target).is_ok());
        // A role an earlier copy of alice made is alice's again.
        target
            .existing
            .insert("wp".to_owned(), ExistingRole::default());
        target.ledger.insert("wp".to_owned(), "alice".to_owned());
        assert!(check_description(&sent, &target).is_ok());
        // Bob's copy's role, and a role nobody's copy made, are refused.
        target.ledger.insert("wp".to_owned(), "bob".to_owned());
        target
            .existing
            .insert("alice_ro".to_owned(), ExistingRole::default());
        let findings = check_description(&sent, &target).expect_err("refused");
        assert_eq!(
            findings,
            [
                "role alice_ro already exists on the target and no copy of alice made it (the server's own, or another account's); a copy does not take it over",
                "role wp on the target belongs to another account's copy; a copy of alice does not take it over"
            ]
        );
    }
}
