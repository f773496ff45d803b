//! Customer accounts on a host, laid out the way agents discover them.
//!
//! An account is: a directory under the host's `accounts_dir`
//! (`<root>/home/<name>`) owned by a system user of the same name; the
//! PostgreSQL databases owned by the role `<name>`; the MariaDB databases
//! named `<name>` or `<name>_*`, granted to `'<name>'@'%'`. Each database
//! holds a table `items (id, label, created_at)` with [`SAMPLE_ROWS`]; the
//! home holds a small PHP site ([`sample_site`]) reading them, which the
//! host's site definitions list under [`sample_domains`].
//!
//! Owns: creating all of that, idempotently. Must not delete system users:
//! they are machine-wide and shared by rigs running in parallel, so a user
//! that exists already is reused (its passwd home may point at another
//! rig's directory; nothing here depends on it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::install::{machine_lock, run_checked};
use crate::netns::Netns;
use crate::rig::{Rig, make_dir};

/// The labels of the rows in every sample table, in id order.
pub const SAMPLE_ROWS: [&str; 3] = ["apple", "banana", "cherry"];

/// What to create for an account.
#[derive(Clone, Debug, Default)]
pub struct AccountSpec {
    /// System user, PostgreSQL role and MariaDB user: 1 to 24 of `a-z0-9_`,
    /// starting with a letter.
    pub name: String,
    /// Password of the PostgreSQL role and the MariaDB user.
    pub password: String,
    /// PostgreSQL databases owned by the account's role, on the host's
    /// first PostgreSQL server.
    pub pg_databases: Vec<String>,
    /// MariaDB databases (by convention `<name>` or `<name>_*`), on the
    /// host's first MariaDB server.
    pub mariadb_databases: Vec<String>,
    /// Whether to put the sample site in the home directory. The home
    /// directory itself always exists: it is what makes an account.
    pub files: bool,
}

/// An account created on a host.
#[derive(Clone, Debug)]
pub struct Account {
    pub name: String,
    pub password: String,
    pub host: Netns,
    /// `<host root>/home/<name>`.
    pub home: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub pg_databases: Vec<String>,
    pub mariadb_databases: Vec<String>,
}

/// The sample site an account with `files` gets: (path relative to the
/// home, contents). Contents name the account, so a mix-up shows.
///
/// `www/index.php` prints the account's name, PHP's version, and the
/// `items` labels of the account's first PostgreSQL and first MariaDB
/// database (`postgresql: apple,banana,cherry`). It names no database
/// host: the pool the site runs in says where the databases are (libpq's
/// `PGHOST`/`PGPORT`, mysqli's defaults), so the same files work on any
/// host. Credentials and database names are in `private/config.php`,
/// outside the document root.
pub fn sample_site(spec: &AccountSpec) -> Vec<(String, String)> {
    let account = spec.name.as_str();
    let php_string =
        |value: &str| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
    let first = |list: &[String]| php_string(list.first().map_or("", String::as_str));
    vec![
        (
            "www/index.php".into(),
            format!(
                r#"<?php
// {account}'s home page: its items, from each of its databases.
require __DIR__ . '/../private/config.php';
header('Content-Type: text/plain');
echo "Hello from {account}\n";
echo "account: " . $db_user . "\n";
echo "php: " . PHP_VERSION . "\n";
if ($pg_database !== '') {{
    $pg = pg_connect("dbname=$pg_database user=$db_user password=$db_password");
    if ($pg === false) {{
        http_response_code(500);
        exit("postgresql: cannot connect\n");
    }}
    $labels = pg_fetch_all_columns(pg_query($pg, 'SELECT label FROM items ORDER BY id'), 0);
    echo "postgresql: " . implode(',', $labels) . "\n";
}}
if ($mariadb_database !== '') {{
    $my = new mysqli(null, $db_user, $db_password, $mariadb_database);
    $rows = $my->query('SELECT label FROM items ORDER BY id')->fetch_all();
    echo "mariadb: " . implode(',', array_column($rows, 0)) . "\n";
}}
"#
            ),
        ),
        (
            "www/about.html".into(),
            format!("<html><body><h1>About {account}</h1></body></html>\n"),
        ),
        (
            "www/assets/style.css".into(),
            "body { font-family: sans-serif; }\n".into(),
        ),
        (
            "www/uploads/2024/notes.txt".into(),
            format!("uploaded by {account}\n"),
        ),
        (
            "private/config.php".into(),
            format!(
                "<?php\n$db_user = {user};\n$db_password = {password};\n$pg_database = {pg};\n$mariadb_database = {mariadb};\n",
                user = php_string(account),
                password = php_string(&spec.password),
                pg = first(&spec.pg_databases),
                mariadb = first(&spec.mariadb_databases),
            ),
        ),
    ]
}

/// The domains of an account's sample site: `<name>.example` and
/// `www.<name>.example` (names are `a-z0-9_`; '_' becomes '-').
pub fn sample_domains(account: &str) -> Vec<String> {
    let label = account.replace('_', "-");
    vec![format!("{label}.example"), format!("www.{label}.example")]
}

fn valid_identifier(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

impl Rig {
    /// Creates (or completes) an account on `host`: system user, home,
    /// sample site, PostgreSQL role and databases, MariaDB user and
    /// databases. Start the host's database servers first.
    pub fn add_account(&self, host: &Netns, spec: AccountSpec) -> anyhow::Result<Account> {
        let name = spec.name.as_str();
        if !valid_identifier(name, 24) {
            bail!("account name {name:?}: use 1 to 24 of a-z, 0-9, '_', starting with a letter");
        }
        for db in spec.pg_databases.iter().chain(&spec.mariadb_databases) {
            if !valid_identifier(db, 48) {
                bail!(
                    "account {name}: database name {db:?}: use a-z, 0-9, '_', starting with a letter"
                );
            }
        }
        let what = format!("account {name} on host {}", host.host);
        // Find the servers first: nothing is created when one is missing.
        let servers = self.servers(host);
        let postgres = match spec.pg_databases.is_empty() {
            true => None,
            false => Some(
                servers
                    .postgres
                    .first()
                    .with_context(|| format!("{what}: host has no PostgreSQL; start one first"))?,
            ),
        };
        let mariadb = match spec.mariadb_databases.is_empty() {
            true => None,
            false => Some(
                servers
                    .mariadb
                    .first()
                    .with_context(|| format!("{what}: host has no MariaDB; start one first"))?,
            ),
        };
        let home = host.accounts_dir().join(name);
        let (uid, gid) = ensure_system_user(name, &home).with_context(|| what.clone())?;
        make_dir(&home, 0o750)?;
        if spec.files {
            for (path, contents) in sample_site(&spec) {
                let path = home.join(path);
                if let Some(parent) = path.parent() {
                    make_dir(parent, 0o755)?;
                }
                std::fs::write(&path, contents)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let link = home.join("www/latest-notes.txt");
            if !link.exists() {
                std::os::unix::fs::symlink("uploads/2024/notes.txt", &link)
                    .with_context(|| format!("linking {}", link.display()))?;
            }
            crate::web::write_site_definition(host, name, &sample_domains(name), "www")?;
        }
        chown_tree(&home, uid, gid)?;
        if let Some(postgres) = postgres {
            create_pg(postgres, &spec).with_context(|| what.clone())?;
        }
        if let Some(mariadb) = mariadb {
            create_mariadb(mariadb, &spec).with_context(|| what.clone())?;
        }
        Ok(Account {
            name: spec.name,
            password: spec.password,
            host: host.clone(),
            home,
            uid,
            gid,
            pg_databases: spec.pg_databases,
            mariadb_databases: spec.mariadb_databases,
        })
    }
}

/// Creates the system user unless it exists (under the machine-wide lock:
/// parallel useradd calls fight over /etc/passwd's lock).
fn ensure_system_user(name: &str, home: &Path) -> anyhow::Result<(u32, u32)> {
    let lookup = || -> anyhow::Result<Option<(u32, u32)>> {
        let user = nix::unistd::User::from_name(name)
            .with_context(|| format!("looking up user {name}"))?;
        Ok(user.map(|user| (user.uid.as_raw(), user.gid.as_raw())))
    };
    if let Some(ids) = lookup()? {
        return Ok(ids);
    }
    let _lock = machine_lock()?;
    if let Some(ids) = lookup()? {
        return Ok(ids);
    }
    let mut useradd = Command::new("useradd");
    useradd
        .args([
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg("--home-dir")
        .arg(home)
        .arg(name);
    run_checked(&mut useradd, &format!("creating system user {name}"))?;
    lookup()?.with_context(|| format!("user {name} missing right after useradd"))
}

/// chown -R, not following symlinks.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))?
        {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn create_pg(postgres: &crate::Postgres, spec: &AccountSpec) -> anyhow::Result<()> {
    let name = &spec.name;
    let password = sql_literal(&spec.password);
    postgres.psql(
        "postgres",
        &format!(
            "SELECT format('CREATE ROLE %I', {role}) \
             WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role}) \\gexec\n\
             ALTER ROLE \"{name}\" LOGIN PASSWORD {password};\n",
            role = sql_literal(name),
        ),
    )?;
    for db in &spec.pg_databases {
        postgres.psql(
            "postgres",
            &format!(
                "SELECT format('CREATE DATABASE %I OWNER %I', {db_literal}, {role}) \
                 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {db_literal}) \\gexec\n",
                db_literal = sql_literal(db),
                role = sql_literal(name),
            ),
        )?;
        let rows: Vec<String> = SAMPLE_ROWS
            .iter()
            .map(|label| format!("({})", sql_literal(label)))
            .collect();
        postgres.psql(
            db,
            &format!(
                "SET ROLE \"{name}\";\n\
                 CREATE TABLE IF NOT EXISTS items (\
                   id serial PRIMARY KEY, \
                   label text NOT NULL, \
                   created_at timestamptz NOT NULL DEFAULT now());\n\
                 INSERT INTO items (label) SELECT label FROM (VALUES {rows}) AS v(label) \
                   WHERE NOT EXISTS (SELECT FROM items);\n",
                rows = rows.join(", "),
            ),
        )?;
    }
    Ok(())
}

fn create_mariadb(mariadb: &crate::MariaDb, spec: &AccountSpec) -> anyhow::Result<()> {
    let name = &spec.name;
    let password = sql_literal(&spec.password.replace('\\', "\\\\"));
    let mut sql = format!(
        "CREATE USER IF NOT EXISTS '{name}'@'%' IDENTIFIED BY {password};\n\
         ALTER USER '{name}'@'%' IDENTIFIED BY {password};\n"
    );
    let rows: Vec<String> = SAMPLE_ROWS
        .iter()
        .enumerate()
        .map(|(index, label)| format!("({}, {})", index + 1, sql_literal(label)))
        .collect();
    for db in &spec.mariadb_databases {
        // In GRANT, '_' in a database name is a wildcard unless escaped.
        let grant_db = db.replace('_', "\\_");
        sql.push_str(&format!(
            "CREATE DATABASE IF NOT EXISTS `{db}`;\n\
             GRANT ALL PRIVILEGES ON `{grant_db}`.* TO '{name}'@'%';\n\
             CREATE TABLE IF NOT EXISTS `{db}`.items (\
               id INT AUTO_INCREMENT PRIMARY KEY, \
               label VARCHAR(100) NOT NULL, \
               created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB;\n\
             INSERT IGNORE INTO `{db}`.items (id, label) VALUES {rows};\n",
            rows = rows.join(", "),
        ));
    }
    mariadb.sql(&sql).map(drop)
}

/// Puts in `home` one of every kind of entry a home can hold, owned by
/// `user`: nested directories, files of several modes, a setgid and a
/// sticky directory, relative and absolute symlinks, a hard link, an empty
/// file, a sparse file (64 MiB with two small data extents), a name that
/// is not UTF-8, a user extended attribute, a POSIX ACL, and fixed mtimes.
pub fn add_fidelity_tree(home: &Path, user: &str) -> anyhow::Result<()> {
    let script = r#"
set -e
cd "$1"; u="$2"
mkdir -p tree/deep/deeper tree/setgid tree/sticky
printf 'plain\n' > tree/plain.txt
printf 'secret\n' > tree/secret.txt; chmod 600 tree/secret.txt
printf '#!/bin/sh\necho hi\n' > tree/run.sh; chmod 755 tree/run.sh
printf 'deep\n' > tree/deep/deeper/file.txt
: > tree/empty
ln -s ../plain.txt tree/deep/relative-link
ln -s /etc/hostname tree/absolute-link
ln tree/plain.txt tree/hardlink.txt
chmod 2775 tree/setgid; chmod 1777 tree/sticky
printf 'start' | dd of=tree/sparse.bin bs=1 seek=0 conv=notrunc status=none
printf 'end' | dd of=tree/sparse.bin bs=1M seek=63 conv=notrunc status=none
truncate -s 64M tree/sparse.bin
printf 'latin-1\n' > "$(printf 'tree/caf\351.txt')"
setfattr -n user.origin -v navette-test tree/plain.txt
setfacl -m u:nobody:r tree/secret.txt
chown -hR "$u:$u" tree
touch -h -d '2021-02-03 04:05:06' tree/deep/relative-link
touch -d '2022-03-04 05:06:07' tree/plain.txt tree/deep/deeper/file.txt tree/deep/deeper tree/deep
"#;
    run_checked(
        Command::new("sh")
            .args(["-c", script, "fidelity"])
            .arg(home)
            .arg(user),
        &format!("building the fidelity tree in {}", home.display()),
    )?;
    Ok(())
}
