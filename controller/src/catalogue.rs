//! The catalogue of migrations (R1), loaded from a directory of TOML files.
//!
//! One file per migration, named after its id. Every file is checked at
//! start-up: unknown keys, missing fields, bad versions, unknown host kinds
//! or software are refused with the file, the field and the reason, and the
//! controller does not start. The loaded catalogue is immutable.
//!
//! It also answers which migrations apply to an account or a host, from the
//! software versions their host runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{Account, Database, Engine, Host, HostKind};

/// A migration definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Migration {
    pub id: String,
    pub title: String,
    pub summary: String,
    pub source: SoftwareVersions,
    pub target: SoftwareVersions,
    pub target_host_kinds: Vec<HostKind>,
    pub documentation: String,
    /// Important ones first, then in file order.
    pub incompatibilities: Vec<Incompatibility>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SoftwareVersions {
    pub software: Software,
    pub versions: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Software {
    Postgresql,
    Mariadb,
    /// The platform's software stack (reinstalls the server).
    Stack,
}

impl Software {
    pub fn as_str(self) -> &'static str {
        match self {
            Software::Postgresql => "postgresql",
            Software::Mariadb => "mariadb",
            Software::Stack => "stack",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Incompatibility {
    pub id: String,
    pub title: String,
    pub description: String,
    pub important: bool,
    /// The test or the migration cannot succeed where it applies.
    pub blocking: bool,
    /// How the compatibility report tells whether it applies to an
    /// account.
    pub detect: Detector,
}

/// How an incompatibility is found in an account (`detect` in the file).
/// Each automated one reads what the agents report
/// ([`crate::compatibility`] matches them); [`Detector::Manual`] says what
/// a person must check, and the report says it was not checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detector {
    /// `extensions`: extensions the account's databases use that no
    /// server of the target version offers (PostgreSQL).
    Extensions,
    /// `md5-passwords`: the roles of the account's databases whose stored
    /// password is an MD5 hash (PostgreSQL).
    Md5Passwords,
    /// `unlogged-partitioned-tables` (PostgreSQL).
    UnloggedPartitionedTables,
    /// `mariadb-engines`: tables whose storage engine no server of the
    /// target version offers (MariaDB).
    MariadbEngines,
    /// `every-database`: applies to every database the migration moves;
    /// nothing in the data tells more.
    EveryDatabase,
    /// `manual`: cannot be told from what agents report; `check` says what
    /// to look at by hand.
    Manual { check: String },
}

impl Detector {
    /// Every name `detect` accepts.
    pub const NAMES: [&'static str; 6] = [
        "extensions",
        "md5-passwords",
        "unlogged-partitioned-tables",
        "mariadb-engines",
        "every-database",
        "manual",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Detector::Extensions => "extensions",
            Detector::Md5Passwords => "md5-passwords",
            Detector::UnloggedPartitionedTables => "unlogged-partitioned-tables",
            Detector::MariadbEngines => "mariadb-engines",
            Detector::EveryDatabase => "every-database",
            Detector::Manual { .. } => "manual",
        }
    }

    /// The software whose migrations this detector can read, if only one.
    fn software(&self) -> Option<Software> {
        match self {
            Detector::Extensions | Detector::Md5Passwords | Detector::UnloggedPartitionedTables => {
                Some(Software::Postgresql)
            }
            Detector::MariadbEngines => Some(Software::Mariadb),
            Detector::EveryDatabase | Detector::Manual { .. } => None,
        }
    }
}

/// A catalogue file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("catalogue file {file}: {field}: {reason}")]
pub struct CatalogueError {
    pub file: PathBuf,
    /// The field concerned (`target.version`), or `file` for the whole file.
    pub field: String,
    pub reason: String,
}

/// The file format. Field names are those of the documentation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationFile {
    id: String,
    title: String,
    summary: String,
    source: SourceFile,
    target: TargetFile,
    target_host_kinds: Vec<String>,
    documentation: String,
    #[serde(default)]
    incompatibilities: Vec<IncompatibilityFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    software: Software,
    versions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    software: Software,
    version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncompatibilityFile {
    id: String,
    title: String,
    description: String,
    #[serde(default)]
    important: bool,
    #[serde(default)]
    blocking: bool,
    /// One of [`Detector::NAMES`].
    detect: String,
    /// `detect = "manual"` only: what to check by hand.
    #[serde(default)]
    check: String,
}

/// The loaded catalogue, by id.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    migrations: BTreeMap<String, Migration>,
}

/// `15`, `10.11`, `2024.1`: numbers separated by dots.
pub fn is_version(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|part| {
            !part.is_empty() && part.len() <= 9 && part.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Whether `actual` (e.g. `15.18`) is of version `wanted` (e.g. `15`).
pub fn version_matches(wanted: &str, actual: &str) -> bool {
    let mut actual_parts = actual.split(['.', '-', ' ']);
    wanted
        .split('.')
        .all(|part| actual_parts.next().is_some_and(|a| a == part))
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl Catalogue {
    /// Loads every `*.toml` file of `dir`.
    pub fn load(dir: &Path) -> Result<Catalogue, CatalogueError> {
        let entries = std::fs::read_dir(dir).map_err(|error| CatalogueError {
            file: dir.to_owned(),
            field: "directory".to_owned(),
            reason: error.to_string(),
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        let mut catalogue = Catalogue::default();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|error| CatalogueError {
                file: file.clone(),
                field: "file".to_owned(),
                reason: error.to_string(),
            })?;
            let migration = parse(&text, &file)?;
            if catalogue.migrations.contains_key(&migration.id) {
                return Err(CatalogueError {
                    file,
                    field: "id".to_owned(),
                    reason: format!("migration {:?} is defined twice", migration.id),
                });
            }
            catalogue.migrations.insert(migration.id.clone(), migration);
        }
        Ok(catalogue)
    }

    pub fn get(&self, id: &str) -> Option<&Migration> {
        self.migrations.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Migration> {
        self.migrations.values()
    }

    pub fn len(&self) -> usize {
        self.migrations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty()
    }

    /// Migrations that apply to `account`, living on `host`.
    pub fn for_account<'a>(
        &'a self,
        account: &'a Account,
        host: &'a Host,
    ) -> impl Iterator<Item = &'a Migration> {
        self.all()
            .filter(move |m| m.applies_to_account(account, host))
    }

    /// Migrations that apply to `host` or to some account on it.
    pub fn for_host<'a>(&'a self, host: &'a Host) -> impl Iterator<Item = &'a Migration> {
        self.all().filter(move |m| m.applies_to_host(host))
    }
}

impl Migration {
    fn source_matches(&self, version: &str) -> bool {
        self.source
            .versions
            .iter()
            .any(|wanted| version_matches(wanted, version))
    }

    /// The database engine the migration upgrades; `None` for a stack
    /// migration.
    pub fn engine(&self) -> Option<Engine> {
        match self.source.software {
            Software::Postgresql => Some(Engine::Postgresql),
            Software::Mariadb => Some(Engine::Mariadb),
            Software::Stack => None,
        }
    }

    /// Whether the host runs the source software at a source version.
    pub fn applies_to_host(&self, host: &Host) -> bool {
        match self.engine() {
            None => self.source_matches(&host.stack_version),
            Some(engine) => host
                .database_servers
                .iter()
                .any(|server| server.engine == engine && self.source_matches(&server.version)),
        }
    }

    /// Whether the migration upgrades `database` of an account on `host`:
    /// of the migration's engine, on a server at a source version.
    pub fn moves_database(&self, database: &Database, host: &Host) -> bool {
        self.engine().is_some_and(|engine| {
            database.engine == engine
                && host.database_servers.iter().any(|server| {
                    server.name == database.server
                        && server.engine == engine
                        && self.source_matches(&server.version)
                })
        })
    }

    /// Whether the account uses what the migration changes: for a database
    /// migration, a database on a server at a source version; for a stack
    /// migration, a host at a source version.
    pub fn applies_to_account(&self, account: &Account, host: &Host) -> bool {
        match self.engine() {
            None => self.source_matches(&host.stack_version),
            Some(engine) => account.databases.iter().any(|database| {
                database.engine == engine
                    && host.database_servers.iter().any(|server| {
                        server.name == database.server
                            && server.engine == engine
                            && self.source_matches(&server.version)
                    })
            }),
        }
    }
}

/// The detector `name` names, with `check` for a manual one, if it can
/// read migrations of `software`; else why not.
fn detector(name: &str, check: &str, software: Software) -> Result<Detector, String> {
    let detect = match name {
        "extensions" => Detector::Extensions,
        "md5-passwords" => Detector::Md5Passwords,
        "unlogged-partitioned-tables" => Detector::UnloggedPartitionedTables,
        "mariadb-engines" => Detector::MariadbEngines,
        "every-database" => Detector::EveryDatabase,
        "manual" if check.trim().is_empty() => {
            return Err(
                "detect = \"manual\" needs `check`: what to check by hand, shown as not checked"
                    .to_owned(),
            );
        }
        "manual" => Detector::Manual {
            check: check.trim().to_owned(),
        },
        other => {
            return Err(format!(
                "unknown detector {other:?} (one of {})",
                Detector::NAMES.join(", ")
            ));
        }
    };
    if let Some(wanted) = detect.software()
        && wanted != software
    {
        return Err(format!(
            "detector {name:?} reads {} databases, and this migration moves {}",
            wanted.as_str(),
            software.as_str()
        ));
    }
    if detect == Detector::EveryDatabase && software == Software::Stack {
        return Err(
            "detector \"every-database\" is for database migrations; a stack migration moves no database by itself"
                .to_owned(),
        );
    }
    Ok(detect)
}

/// Parses and checks one definition; `file` names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Migration, CatalogueError> {
    let error = |field: &str, reason: String| CatalogueError {
        file: file.to_owned(),
        field: field.to_owned(),
        reason,
    };
    let raw: MigrationFile = toml::from_str(text).map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|span| {
                format!(
                    " (line {})",
                    text[..span.start.min(text.len())].lines().count().max(1)
                )
            })
            .unwrap_or_default();
        error("file", format!("{}{line}", e.message()))
    })?;
    if !is_identifier(&raw.id) {
        return Err(error(
            "id",
            format!(
                "{:?} is not an id: use lowercase letters, digits, '-' and '.'",
                raw.id
            ),
        ));
    }
    if file.file_stem().and_then(|s| s.to_str()) != Some(raw.id.as_str()) {
        return Err(error(
            "id",
            format!("{:?} must match the file name ({}.toml)", raw.id, raw.id),
        ));
    }
    for (field, value) in [
        ("title", &raw.title),
        ("summary", &raw.summary),
        ("documentation", &raw.documentation),
    ] {
        if value.trim().is_empty() {
            return Err(error(field, "must not be empty".to_owned()));
        }
    }
    if raw.source.versions.is_empty() {
        return Err(error(
            "source.versions",
            "list at least one version".to_owned(),
        ));
    }
    for (index, version) in raw.source.versions.iter().enumerate() {
        if !is_version(version) {
            return Err(error(
                &format!("source.versions[{index}]"),
                format!(
                    "{version:?} is not a version (numbers separated by dots, e.g. 15 or 10.11)"
                ),
            ));
        }
    }
    if !is_version(&raw.target.version) {
        return Err(error(
            "target.version",
            format!(
                "{:?} is not a version (numbers separated by dots, e.g. 18 or 11.4)",
                raw.target.version
            ),
        ));
    }
    if raw.target.software != raw.source.software {
        return Err(error(
            "target.software",
            format!(
                "{} differs from source.software {}; a migration upgrades one piece of software",
                raw.target.software.as_str(),
                raw.source.software.as_str()
            ),
        ));
    }
    if raw.target_host_kinds.is_empty() {
        return Err(error(
            "target_host_kinds",
            "list at least one host kind".to_owned(),
        ));
    }
    let mut kinds = Vec::new();
    for (index, kind) in raw.target_host_kinds.iter().enumerate() {
        let parsed = HostKind::parse(kind).ok_or_else(|| {
            error(
                &format!("target_host_kinds[{index}]"),
                format!("{kind:?} is not a host kind (shared, dedicated, vps, transit, test)"),
            )
        })?;
        kinds.push(parsed);
    }
    let mut incompatibilities = Vec::new();
    for (index, item) in raw.incompatibilities.into_iter().enumerate() {
        let field = |name: &str| format!("incompatibilities[{index}].{name}");
        if !is_identifier(&item.id) {
            return Err(error(&field("id"), format!("{:?} is not an id", item.id)));
        }
        if incompatibilities
            .iter()
            .any(|i: &Incompatibility| i.id == item.id)
        {
            return Err(error(&field("id"), format!("{:?} appears twice", item.id)));
        }
        if item.title.trim().is_empty() || item.description.trim().is_empty() {
            return Err(error(
                &field("title"),
                "title and description must not be empty".to_owned(),
            ));
        }
        let detect =
            detector(&item.detect, &item.check, raw.source.software).map_err(|reason| {
                error(
                    &field("detect"),
                    format!("incompatibility {:?}: {reason}", item.id),
                )
            })?;
        if !item.check.trim().is_empty() && !matches!(detect, Detector::Manual { .. }) {
            return Err(error(
                &field("check"),
                format!(
                    "incompatibility {:?}: `check` is for detect = \"manual\" only; {} is detected from the inventory",
                    item.id, item.detect
                ),
            ));
        }
        if item.blocking && matches!(detect, Detector::Manual { .. } | Detector::EveryDatabase) {
            return Err(error(
                &field("blocking"),
                format!(
                    "incompatibility {:?}: only an automated detector can block (detect = {:?} would block every account)",
                    item.id, item.detect
                ),
            ));
        }
        incompatibilities.push(Incompatibility {
            id: item.id,
            title: item.title,
            description: item.description,
            // What blocks is important.
            important: item.important || item.blocking,
            blocking: item.blocking,
            detect,
        });
    }
    // Important ones first; stable, so file order within each group.
    incompatibilities.sort_by_key(|i| !i.important);
    Ok(Migration {
        id: raw.id,
        title: raw.title,
        summary: raw.summary,
        source: SoftwareVersions {
            software: raw.source.software,
            versions: raw.source.versions,
        },
        target: SoftwareVersions {
            software: raw.target.software,
            versions: vec![raw.target.version],
        },
        target_host_kinds: kinds,
        documentation: raw.documentation,
        incompatibilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "pg"
title = "PostgreSQL 15 to 18"
summary = "s"
target_host_kinds = ["shared", "test"]
documentation = "d"
[source]
software = "postgresql"
versions = ["15"]
[target]
software = "postgresql"
version = "18"
[[incompatibilities]]
id = "minor"
title = "t"
description = "d"
detect = "manual"
check = "your scripts"
[[incompatibilities]]
id = "major"
title = "t"
description = "d"
important = true
detect = "md5-passwords"
[[incompatibilities]]
id = "fatal"
title = "t"
description = "d"
blocking = true
detect = "extensions"
"#;

    fn parse_pg(text: &str) -> Result<Migration, CatalogueError> {
        parse(text, Path::new("catalogue/pg.toml"))
    }

    #[test]
    fn a_good_file_loads_with_important_incompatibilities_first() -> Result<(), CatalogueError> {
        let migration = parse_pg(GOOD)?;
        let ids: Vec<&str> = migration
            .incompatibilities
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, ["major", "fatal", "minor"]);
        assert_eq!(migration.incompatibilities[1].detect, Detector::Extensions);
        assert!(
            migration.incompatibilities[1].blocking && migration.incompatibilities[1].important
        );
        assert_eq!(
            migration.incompatibilities[2].detect,
            Detector::Manual {
                check: "your scripts".into()
            }
        );
        assert_eq!(migration.target.versions, vec!["18".to_owned()]);
        Ok(())
    }

    fn refusal(text: &str) -> String {
        match parse_pg(text) {
            Ok(_) => String::from("accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_missing_field_is_named() {
        let message = refusal(&GOOD.replace("title = \"PostgreSQL 15 to 18\"\n", ""));
        assert!(message.contains("catalogue/pg.toml"), "{message}");
        assert!(message.contains("missing field `title`"), "{message}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let message =
            refusal(&GOOD.replace("summary = \"s\"", "summary = \"s\"\ncolour = \"red\""));
        assert!(message.contains("unknown field `colour`"), "{message}");
    }

    #[test]
    fn a_bad_version_is_named() {
        let message = refusal(&GOOD.replace("version = \"18\"", "version = \"eighteen\""));
        assert!(message.contains("target.version"), "{message}");
        assert!(
            message.contains("\"eighteen\" is not a version"),
            "{message}"
        );
        let message =
            refusal(&GOOD.replace("versions = [\"15\"]", "versions = [\"15\", \"1..2\"]"));
        assert!(message.contains("source.versions[1]"), "{message}");
    }

    #[test]
    fn each_incompatibility_says_how_it_is_detected() {
        // Missing: named with the file.
        let message = refusal(&GOOD.replace("detect = \"md5-passwords\"\n", ""));
        assert!(
            message.contains("catalogue/pg.toml") && message.contains("missing field `detect`"),
            "{message}"
        );
        // Unknown: the file, the item and the id, and what is known.
        let message = refusal(&GOOD.replace("\"md5-passwords\"", "\"md5-paswords\""));
        assert!(
            message.contains("catalogue/pg.toml: incompatibilities[1].detect: incompatibility \"major\": unknown detector \"md5-paswords\"")
                && message.contains("unlogged-partitioned-tables"),
            "{message}"
        );
        // Manual without saying what to check by hand.
        let message = refusal(&GOOD.replace("check = \"your scripts\"\n", ""));
        assert!(
            message.contains("incompatibility \"minor\": detect = \"manual\" needs `check`"),
            "{message}"
        );
        // `check` on an automated detector.
        let message = refusal(&GOOD.replace(
            "detect = \"extensions\"",
            "detect = \"extensions\"\ncheck = \"x\"",
        ));
        assert!(message.contains("incompatibilities[2].check"), "{message}");
        // A detector of another engine's databases.
        let message = refusal(&GOOD.replace("\"extensions\"", "\"mariadb-engines\""));
        assert!(
            message.contains("detector \"mariadb-engines\" reads mariadb databases, and this migration moves postgresql"),
            "{message}"
        );
        // Blocking what nothing detects would block every account.
        let message = refusal(&GOOD.replace(
            "detect = \"manual\"",
            "detect = \"manual\"\nblocking = true",
        ));
        assert!(
            message.contains("incompatibilities[0].blocking: incompatibility \"minor\": only an automated detector can block"),
            "{message}"
        );
    }

    #[test]
    fn the_id_must_match_the_file_name() {
        let message = refusal(&GOOD.replace("id = \"pg\"", "id = \"other\""));
        assert!(message.contains("must match the file name"), "{message}");
    }

    #[test]
    fn versions_match_by_prefix_of_components() {
        assert!(version_matches("15", "15.18"));
        assert!(version_matches("10.11", "10.11.6"));
        assert!(!version_matches("1", "15.2"));
        assert!(!version_matches("10.11", "10.1"));
        assert!(version_matches("2024.1", "2024.1"));
    }

    #[test]
    fn shipped_catalogue_loads() -> Result<(), CatalogueError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue");
        let catalogue = Catalogue::load(&dir)?;
        assert!(catalogue.get("postgresql-15-to-18").is_some());
        assert!(catalogue.len() >= 3);
        // The blocking findings of the shipped migrations are automated.
        let blocking: Vec<(&str, &str)> = catalogue
            .all()
            .flat_map(|m| &m.incompatibilities)
            .filter(|i| i.blocking)
            .map(|i| (i.id.as_str(), i.detect.name()))
            .collect();
        assert!(
            blocking.contains(&("extensions-not-offered", "extensions"))
                && blocking
                    .contains(&("unlogged-partitioned-tables", "unlogged-partitioned-tables"))
                && blocking.contains(&("engines-not-offered", "mariadb-engines")),
            "{blocking:?}"
        );
        Ok(())
    }
}
