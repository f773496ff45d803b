//! The schema archive's table of contents (`pg_restore --list`), checked
//! entry by entry: what the target restores of the source's pg_dump
//! archive, see the rules in [`super`]. An entry reads `<dump id>;
//! <catalog OID> <object OID> <kind> <schema> <tag> <owner>`; kinds are
//! matched against the known ones (names may hold spaces), the owner
//! against the account's roles.

use super::AccountRoles;

/// Kinds of archive entries never restored, and why.
const REFUSED_ENTRIES: [(&str, &str); 12] = [
    (
        "EVENT TRIGGER",
        "event triggers run for every role and need a superuser",
    ),
    (
        "PROCEDURAL LANGUAGE",
        "procedural languages come as extensions of the target, or need a superuser",
    ),
    (
        "FOREIGN DATA WRAPPER",
        "foreign-data wrappers need a superuser",
    ),
    (
        "USER MAPPING",
        "user mappings hold credentials for other servers",
    ),
    (
        "SUBSCRIPTION",
        "subscriptions connect to other servers and need a superuser",
    ),
    (
        "SUBSCRIPTION TABLE",
        "subscriptions connect to other servers and need a superuser",
    ),
    ("ACCESS METHOD", "access methods need a superuser"),
    ("TEXT SEARCH PARSER", "text search parsers need a superuser"),
    (
        "TEXT SEARCH TEMPLATE",
        "text search templates need a superuser",
    ),
    (
        "SECURITY LABEL",
        "security labels belong to the target's own policy",
    ),
    ("DATABASE", "the copy creates the database itself"),
    (
        "DATABASE PROPERTIES",
        "the copy sets the database's properties itself",
    ),
];

/// Kinds of archive entries restored (when the account owns them), longest
/// first where one begins another.
const KNOWN_ENTRIES: [&str; 53] = [
    "MATERIALIZED VIEW DATA",
    "MATERIALIZED VIEW",
    "PUBLICATION TABLES IN SCHEMA",
    "PUBLICATION TABLE",
    "PUBLICATION",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "SEQUENCE",
    "CHECK CONSTRAINT",
    "FK CONSTRAINT",
    "CONSTRAINT",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "OPERATOR",
    "DEFAULT ACL",
    "DEFAULT",
    "ACL",
    "BLOB METADATA",
    "BLOBS",
    "BLOB",
    "LARGE OBJECTS",
    "LARGE OBJECT",
    "TABLE ATTACH",
    "TABLE DATA",
    "TABLE",
    "INDEX ATTACH",
    "INDEX",
    "FOREIGN TABLE",
    "SHELL TYPE",
    "TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "AGGREGATE",
    "SCHEMA",
    "VIEW",
    "RULE",
    "TRIGGER",
    "POLICY",
    "ROW SECURITY",
    "COMMENT",
    "COLLATION",
    "CONVERSION",
    "CAST",
    "TRANSFORM",
    "STATISTICS DATA",
    "STATISTICS",
    "SERVER",
    "ENCODING",
    "STDSTRINGS",
    "SEARCHPATH",
];

/// One entry of an archive's table of contents (`pg_restore --list`):
/// `<dump id>; <catalog OID> <object OID> <kind> <schema> <tag> <owner>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// The line as pg_restore printed it (what `--use-list` reads back).
    pub line: String,
    pub catalog: u32,
    pub oid: u32,
    /// `TABLE`, `FK CONSTRAINT`...
    pub kind: String,
    /// What follows the kind: schema, tag and owner, separated by spaces
    /// (names may hold spaces too, so they are not split further).
    pub rest: String,
}

impl TocEntry {
    /// Whether this entry is an extension, or its comment: the target's
    /// superuser creates extensions, not the archive.
    pub fn is_extension(&self) -> bool {
        self.kind == "EXTENSION"
            || (self.kind == "COMMENT" && self.rest.starts_with("- EXTENSION "))
    }

    /// Whether this entry is the publication a migration's replication
    /// made on the source (`navette_m_<hash>`, see
    /// [`crate::replication::postgres::Names`]), or one of its tables: the
    /// platform's, not the account's, and never restored (a source naming
    /// its own publication so only loses it on the copy).
    pub fn is_migration_publication(&self) -> bool {
        self.kind.starts_with("PUBLICATION")
            && self
                .rest
                .split(' ')
                .nth(1)
                .is_some_and(|name| name.starts_with("navette_m_"))
    }
}

/// The archive's entries the target restores, once checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptedArchive {
    /// Comment lines of the table of contents, kept at the top of lists.
    pub header: String,
    /// Entries to restore, in the archive's order (extensions left out).
    pub entries: Vec<TocEntry>,
    /// The extensions the archive creates: the target's superuser creates
    /// those the description lists too, and no other.
    pub extensions: Vec<String>,
}

impl AcceptedArchive {
    /// A table of contents for `pg_restore --use-list` with the entries
    /// `keep` accepts.
    pub fn list(&self, keep: impl Fn(&TocEntry) -> bool) -> String {
        let mut text = self.header.clone();
        for entry in self.entries.iter().filter(|e| keep(e)) {
            text.push_str(&entry.line);
            text.push('\n');
        }
        text
    }
}

/// Checks an archive's table of contents: the entries to restore, or
/// every finding.
pub fn check_archive(toc: &str, account: &AccountRoles) -> Result<AcceptedArchive, Vec<String>> {
    let mut accepted = AcceptedArchive::default();
    let mut findings = Vec::new();
    for line in toc.lines() {
        if line.starts_with(';') || line.trim().is_empty() {
            accepted.header.push_str(line);
            accepted.header.push('\n');
            continue;
        }
        let entry = match parse_entry(line) {
            Ok(entry) => entry,
            Err(finding) => {
                findings.push(finding);
                continue;
            }
        };
        if entry.is_extension() {
            if entry.kind == "EXTENSION" {
                let name = entry.rest.strip_prefix("- ").unwrap_or(&entry.rest);
                accepted.extensions.push(name.trim_end().to_owned());
            }
            continue;
        }
        if entry.is_migration_publication() {
            continue;
        }
        if let Some((_, why)) = REFUSED_ENTRIES.iter().find(|(kind, _)| *kind == entry.kind) {
            findings.push(format!(
                "the schema's {} {}: {why}; not restored",
                entry.kind, entry.rest
            ));
            continue;
        }
        if let Some(finding) = check_owner(&entry, account) {
            findings.push(finding);
            continue;
        }
        accepted.entries.push(entry);
    }
    if findings.is_empty() {
        Ok(accepted)
    } else {
        Err(findings)
    }
}

fn parse_entry(line: &str) -> Result<TocEntry, String> {
    let malformed = || format!("the schema archive's entry {line:?} cannot be read; not restored");
    let (_, after_id) = line.split_once("; ").ok_or_else(malformed)?;
    let mut words = after_id.splitn(3, ' ');
    let catalog = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(malformed)?;
    let oid = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(malformed)?;
    let described = words.next().ok_or_else(malformed)?;
    let kind = KNOWN_ENTRIES
        .iter()
        .chain(REFUSED_ENTRIES.iter().map(|(kind, _)| kind))
        .chain(["EXTENSION"].iter())
        .filter(|kind| {
            described
                .strip_prefix(**kind)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .max_by_key(|kind| kind.len())
        .ok_or_else(|| {
            format!("the schema's entry {described:?} is of a kind the copy does not restore")
        })?;
    Ok(TocEntry {
        line: line.to_owned(),
        catalog,
        oid,
        kind: (*kind).to_owned(),
        rest: described[kind.len() + 1..].to_owned(),
    })
}

/// Why an entry's owner is not acceptable, if so. The owner ends the line:
/// the longest of the account's roles the line ends with, or none (an
/// empty owner: casts, transforms, which the loader can create only if the
/// account owns what they concern).
fn check_owner(entry: &TocEntry, account: &AccountRoles) -> Option<String> {
    let owned_by_account = account
        .names
        .iter()
        .map(String::as_str)
        .chain(["pg_database_owner"])
        .any(|role| entry.rest.ends_with(&format!(" {role}")));
    if owned_by_account || entry.rest.ends_with(' ') {
        return None;
    }
    // The public schema's own comment and privileges: it exists in every
    // database, owned by its owner (pg_database_owner, or a superuser
    // before PostgreSQL 15).
    let public_schema = match entry.kind.as_str() {
        "SCHEMA" => entry.rest.starts_with("- public "),
        "COMMENT" | "ACL" => entry.rest.starts_with("- SCHEMA public "),
        _ => false,
    };
    if public_schema {
        return None;
    }
    let owner = entry.rest.rsplit(' ').next().unwrap_or_default();
    Some(format!(
        "the schema's {} {}: owned by {owner}, not one of the account's roles; not restored",
        entry.kind, entry.rest
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_s_publication_is_left_out_and_others_are_checked() {
        let account = AccountRoles {
            names: ["alice".to_owned()].into(),
        };
        let toc = "9; 6104 16800 PUBLICATION - navette_m_0123456789abcdef postgres\n\
                   10; 6106 16801 PUBLICATION TABLE s navette_m_0123456789abcdef t postgres\n\
                   11; 6104 16802 PUBLICATION - alice_pub alice\n";
        let accepted = check_archive(toc, &account).expect("accepted");
        let kinds: Vec<&str> = accepted.entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["PUBLICATION"]);
        assert!(accepted.entries[0].rest.contains("alice_pub"));
        let foreign = "12; 6104 16803 PUBLICATION - other_pub postgres\n";
        assert!(check_archive(foreign, &account).is_err());
    }

    #[test]
    fn archive_entries_are_the_account_s_objects() {
        let account = AccountRoles {
            names: ["alice".to_owned(), "alice ro".to_owned()].into(),
        };
        let toc = ";\n; Archive created at 2026-12-01\n;\n\
                   8; 2615 16620 SCHEMA - s alice\n\
                   2; 3079 16387 EXTENSION - citext \n\
                   3537; 0 0 COMMENT - EXTENSION citext \n\
                   334; 1255 16621 FUNCTION s esc(integer) alice\n\
                   217; 1259 16622 TABLE s t alice ro\n\
                   3539; 0 0 COMMENT - SCHEMA public pg_database_owner\n\
                   3388; 1259 16628 INDEX s odd name alice\n";
        let accepted = check_archive(toc, &account).expect("accepted");
        let kinds: Vec<&str> = accepted.entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(accepted.extensions, ["citext"]);
        assert_eq!(kinds, ["SCHEMA", "FUNCTION", "TABLE", "COMMENT", "INDEX"]);
        let schemas = accepted.list(|e| e.kind == "SCHEMA");
        assert!(schemas.starts_with(";\n; Archive created"));
        assert!(schemas.ends_with("8; 2615 16620 SCHEMA - s alice\n"));
        assert!(!schemas.contains("FUNCTION"));

        let hostile = format!(
            "{toc}\
             400; 3466 16700 EVENT TRIGGER - grab postgres\n\
             401; 2612 16701 PROCEDURAL LANGUAGE - plperlu postgres\n\
             402; 1255 16702 FUNCTION public f() bob\n\
             403; 1259 16703 TABLE s u evil alice\n\
             404; 0 0 WEIRD THING - x alice\n"
        );
        let findings = check_archive(&hostile, &account).expect_err("refused");
        let expected = [
            "the schema's EVENT TRIGGER - grab postgres: event triggers",
            "the schema's PROCEDURAL LANGUAGE - plperlu postgres: procedural languages",
            "the schema's FUNCTION public f() bob: owned by bob",
            "the schema's entry \"WEIRD THING - x alice\" is of a kind",
        ];
        for text in expected {
            assert!(
                findings.iter().any(|f| f.starts_with(text)),
                "no finding {text:?} in {findings:#?}"
            );
        }
        // An owner whose name ends like an account role's ("evil alice")
        // reads as owned by the account here; the loader, which is no
        // member of "evil alice", could not give it the object anyway.
        assert_eq!(findings.len(), expected.len(), "{findings:#?}");
    }
}
