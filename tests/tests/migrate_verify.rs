//! The verification inside a migration's freeze (issue 10, "Must show"):
//! a copy that differs from the source on a path the freeze's last pass
//! names, or on a PostgreSQL row changed since the last verification,
//! rolls the migration back, the reason naming the path or the row, with
//! the source serving and nothing acknowledged lost; an untampered
//! migration completes with its "verify" part recorded.
//!
//! How the tamper stays until the freeze and is verified there: once the
//! migration converges (the full copy made), the target's copy of
//! `tampered.txt` gets other bytes of the same size, its time put back, so
//! no catch-up pass rewrites it (a pass takes an equal size and time for
//! equal contents, as rsync does). A thread of the test sets the source's
//! file to the mode it already has every 10 ms: the journal names the path
//! in every pass (the freeze's last one too), and nothing a fingerprint
//! holds changes on the source. The untampered account gets the same
//! toucher.
//!
//! A row stays tampered with the same way: `profile`'s row 1 holds a
//! large `bio` stored out of line (TOAST), and a thread of the test bumps
//! its small `n` on the source every 50 ms. Once the migration converges,
//! the target's `bio` of that row is changed; replication sends each
//! update with the unchanged out-of-line value left out, so the target
//! keeps the tampered one (a real way for a copy to drift), while every
//! round of the verification finds the row touched again. MariaDB's row
//! likewise: the source's updates of its `n` are logged with a MINIMAL row
//! image (the key and the changed column), so the replica keeps the
//! tampered `bio`.
//!
//! One rig, two small accounts, one after the other. A writer commits
//! numbered rows on the source and the account's own process appends
//! numbered lines in its home ([`LineAppender`], in the account's group).

mod support;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use navette_tests::load::check_lines;
use navette_tests::{
    Account, AccountSpec, AgentKind, Controller, ControllerSpec, MariaDb, MariaDbSpec, Netns,
    PgVersion, Postgres, Rig, WebServer,
};
use serde_json::{Value, json};
use support::{enrol, str_of};

const TAMPERED: &str = "nvv_tamper";
const ROWS: &str = "nvv_rows";
const MROWS: &str = "nvv_mrows";
const CLEAN: &str = "nvv_clean";
const FILE: &str = "tampered.txt";

struct Platform {
    rig: Rig,
    controller: Controller,
    old: Netns,
    new: Netns,
    pg15: Postgres,
    pg18: Postgres,
    maria_old: MariaDb,
    maria_new: MariaDb,
    accounts: Vec<Account>,
    _web: Vec<WebServer>,
}

fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

fn platform() -> anyhow::Result<Platform> {
    let rig = Rig::new("migverify")?;
    let controller = support::controller(
        &rig,
        ControllerSpec {
            extra_config: "\n[migrations]\nrequire_recent_test = false\nretire_after_secs = 5\nforward_for_secs = 5\n\
                 converge_poll_ms = 1000\nfreeze_deadline_ms = 3000\nfreeze_tries = 3\n"
                .to_owned(),
            ..ControllerSpec::default()
        },
    )?;
    let old = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let new = rig.add_namespace("shared-new", Ipv4Addr::new(192, 0, 2, 11))?;
    let web = vec![old.start_web_server(&rig)?, new.start_web_server(&rig)?];
    let (pg15, pg18, maria_old, maria_new) = std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| old.start_postgres(&rig, PgVersion::V15, 5432));
        let b = s.spawn(|| new.start_postgres(&rig, PgVersion::V18, 5432));
        let c = s.spawn(|| old.start_mariadb_with(&rig, MariaDbSpec::replication_source()));
        let d = s.spawn(|| new.start_mariadb_with(&rig, MariaDbSpec::replica_11_8()));
        Ok((
            join("pg15", a.join())?,
            join("pg18", b.join())?,
            join("mariadb 10.11", c.join())?,
            join("mariadb 11.8", d.join())?,
        ))
    })?;
    let mut accounts = Vec::new();
    for name in [TAMPERED, ROWS, MROWS, CLEAN] {
        let database = format!("{name}_db");
        let blog = has_blog(name).then(|| format!("{name}_blog"));
        let account = rig.add_account(
            &old,
            AccountSpec {
                name: name.to_owned(),
                password: format!("{name}-S3cret"),
                pg_databases: vec![database.clone()],
                mariadb_databases: blog.iter().cloned().collect(),
                files: true,
            },
        )?;
        let file = account.home.join(FILE);
        std::fs::write(&file, b"the source's own contents\n")?;
        std::os::unix::fs::chown(&file, Some(account.uid), Some(account.gid))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        accounts.push(account);
        pg15.psql(
            &database,
            &format!(
                "SET ROLE {name};
                 CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL);
                 INSERT INTO orders (item) SELECT 'seed ' || g FROM generate_series(1, 500) g;
                 CREATE TABLE profile (id int PRIMARY KEY, n int NOT NULL, bio text);
                 ALTER TABLE profile ALTER bio SET STORAGE EXTERNAL;
                 INSERT INTO profile SELECT 1, 0, string_agg(md5(g::text), '') FROM generate_series(1, 256) g;"
            ),
        )?;
        if let Some(blog) = &blog {
            maria_old.sql(&format!(
                "CREATE TABLE {blog}.profile (id INT PRIMARY KEY, n INT NOT NULL, bio TEXT);
                 INSERT INTO {blog}.profile VALUES (1, 0, REPEAT('abcdefgh', 64));"
            ))?;
        }
    }
    enrol(&rig, &old, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &new, AgentKind::Shared, "2026.1")?;
    Ok(Platform {
        rig,
        controller,
        old,
        new,
        pg15,
        pg18,
        maria_old,
        maria_new,
        accounts,
        _web: web,
    })
}

impl Platform {
    fn migrations(&self, method: &str, request: Value) -> anyhow::Result<Value> {
        let access = self.rig.controller_access()?;
        self.rig.grpcurl_json_as(
            &access.panel,
            &format!("navette.v1.Migrations/{method}"),
            &request,
        )
    }
}

/// Other bytes of the same size in the target's copy, its times put back:
/// no pass rewrites it.
fn tamper_file(path: &std::path::Path) -> anyhow::Result<()> {
    let before = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mut bytes = std::fs::read(path)?;
    for byte in bytes.iter_mut() {
        *byte = byte.to_ascii_uppercase();
    }
    std::fs::write(path, &bytes)?;
    let file = std::fs::File::options().write(true).open(path)?;
    file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(before.accessed()?)
            .set_modified(before.modified()?),
    )?;
    Ok(())
}

/// The accounts with a MariaDB database (`<name>_blog`).
fn has_blog(name: &str) -> bool {
    name == MROWS || name == CLEAN
}

/// What the test changes in the target's copy once the migration
/// converges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tamper {
    Nothing,
    File,
    Row,
    MariadbRow,
}

/// Migrates `name` (its target copy tampered with as `tamper` says) to its
/// end; GetMigration's last answer, and what was acknowledged.
fn migrate(platform: &Platform, name: &str, tamper: Tamper) -> anyhow::Result<Value> {
    let tampered = tamper != Tamper::Nothing;
    let (rig, pg15) = (&platform.rig, &platform.pg15);
    let database = format!("{name}_db");
    let account = platform
        .accounts
        .iter()
        .find(|a| a.name == name)
        .with_context(|| format!("account {name}"))?;
    support::wait_account_databases(rig, name, 1 + usize::from(has_blog(name)))?;
    let lines = support::account_lines(rig, &platform.old, account)?;
    let stop = AtomicBool::new(false);
    let orders: Mutex<Vec<(u64, SystemTime)>> = Mutex::new(Vec::new());
    let source_file = account.home.join(FILE);
    let id = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if pg15
                    .psql(
                        &database,
                        &format!("INSERT INTO orders (item) VALUES ('live {n}:')"),
                    )
                    .is_ok()
                {
                    orders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((n, SystemTime::now()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // The mode it has: the journal names the path, nothing changes.
        // Once a completed migration's grace period ends, the old home is
        // removed: the file going then is not the toucher's error.
        let toucher = scope.spawn(|| -> anyhow::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                match std::fs::set_permissions(&source_file, std::fs::Permissions::from_mode(0o644))
                {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                    result => result.with_context(|| format!("chmod {}", source_file.display()))?,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        // Row 1's small column, again and again (errors once the old
        // database is retired are not the bumper's).
        // In MariaDB, logged with the changed column only (a MINIMAL row
        // image): the replica keeps the rest of the row as it has it.
        let bumper = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = pg15.psql(&database, "UPDATE profile SET n = n + 1 WHERE id = 1");
                if has_blog(name) {
                    let _ = platform.maria_old.sql(&format!(
                        "SET SESSION binlog_row_image = 'MINIMAL'; \
                         UPDATE {name}_blog.profile SET n = n + 1 WHERE id = 1"
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let driven = (|| -> anyhow::Result<String> {
            let started = platform.migrations(
                "Migrate",
                json!({"request_id": format!("m-{name}"), "account": name,
                       "migration_id": "postgresql-15-to-18", "acknowledge_irreversible": true}),
            )?;
            let id = str_of(&started, "id").to_owned();
            if tampered {
                support::wait_migration_row(
                    &platform.controller,
                    &id,
                    "state = 'converging'",
                    Duration::from_secs(240),
                )?;
                match tamper {
                    Tamper::File => {
                        tamper_file(&platform.new.accounts_dir().join(name).join(FILE))?
                    }
                    Tamper::Row => {
                        platform.pg18.psql(
                            &database,
                            "UPDATE profile SET bio = upper(bio) WHERE id = 1",
                        )?;
                    }
                    Tamper::MariadbRow => {
                        platform.maria_new.sql(&format!(
                            "SET SESSION sql_log_bin = 0; \
                             UPDATE {name}_blog.profile SET bio = UPPER(bio) WHERE id = 1"
                        ))?;
                    }
                    Tamper::Nothing => {}
                }
            }
            let mut last = Value::Null;
            rig.wait_until(
                &format!("migration {id} of {name} ends"),
                Duration::from_secs(300),
                || {
                    last = platform.migrations("GetMigration", json!({"id": id}))?;
                    Ok(matches!(
                        str_of(&last, "state"),
                        "STATE_COMPLETED" | "STATE_FAILED" | "STATE_CANCELLED"
                    ))
                },
            )
            .with_context(|| format!("last seen: {last}"))?;
            Ok(id)
        })();
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
        let _ = bumper.join();
        join("the toucher", toucher.join())?;
        driven
    })?;
    let lines_acknowledged = lines.stop().context("stopping the line appender")?;
    let last = platform.migrations("GetMigration", json!({"id": id}))?;

    // Nothing acknowledged lost, wherever the account now lives.
    let (server, home) = if tampered {
        (&platform.pg15, account.home.clone())
    } else {
        (&platform.pg18, platform.new.accounts_dir().join(name))
    };
    // Rolled back: every order; moved: those before the freeze (the
    // writer is a superuser, whom the switch does not refuse on the old
    // host).
    let frozen_at: Option<SystemTime> = if tampered {
        None
    } else {
        let window = &last["freezeWindow"];
        Some(
            chrono::DateTime::parse_from_rfc3339(str_of(window, "frozenAt"))
                .with_context(|| format!("frozenAt: {last}"))?
                .with_timezone(&chrono::Utc)
                .into(),
        )
    };
    let acknowledged: Vec<u64> = orders
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, at)| frozen_at.is_none_or(|frozen| *at < frozen))
        .map(|(n, _)| *n)
        .collect();
    ensure!(!acknowledged.is_empty(), "{name}: the writer wrote");
    let found = support::live_orders(server, &database)?;
    for n in &acknowledged {
        ensure!(
            found.contains(n),
            "{name}: order {n}, acknowledged, is where the account lives"
        );
    }
    let content = std::fs::read_to_string(home.join("lines.txt"))
        .with_context(|| format!("reading {name}'s lines"))?;
    check_lines(&content, &lines_acknowledged)
        .with_context(|| format!("{name}: the lines the account appended"))?;
    eprintln!(
        "{name}: {} orders and {} lines checked",
        acknowledged.len(),
        lines_acknowledged.numbers.len()
    );
    Ok(last)
}

fn verify_ms(window: &Value) -> Option<String> {
    support::list(window, "parts")
        .iter()
        .find(|part| str_of(part, "name") == "verify")
        .map(|part| match str_of(part, "ms") {
            "" => "0".to_owned(),
            ms => ms.to_owned(),
        })
}

/// A migration rolled back by its verification: failed, the reason
/// naming each of `named`, one freeze (not tried again), the account on
/// its source, thawed, writable, the target's copy removed.
fn rolled_back(
    platform: &Platform,
    name: &str,
    last: &Value,
    named: &[&str],
) -> anyhow::Result<()> {
    ensure!(
        str_of(last, "state") == "STATE_FAILED",
        "{name}: the tampered copy rolls back: {last}"
    );
    let error = str_of(last, "error");
    ensure!(
        named.iter().all(|part| error.contains(part)),
        "{name}: the reason names {named:?}: {last}"
    );
    let missed = support::list(last, "missedFreezes");
    ensure!(
        missed.len() == 1,
        "{name}: one freeze, undone at its verification, not tried again: {last}"
    );
    eprintln!("{name} rolled back: {error}");
    let placed = platform
        .rig
        .grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": name}))?;
    ensure!(
        str_of(&placed, "hostId") == "shared-old",
        "{name}: rolled back, the account stays on its source: {placed}"
    );
    ensure!(
        !support::group_frozen(&support::account_cgroup(&platform.old, name)),
        "{name}: the account's group is thawed on the source"
    );
    platform.pg15.psql(
        &format!("{name}_db"),
        "INSERT INTO orders (item) VALUES ('after the rollback')",
    )?;
    ensure!(
        platform.pg18.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}_db'"),
        )? == "0",
        "{name}: the target's copy is removed"
    );
    Ok(())
}

/// A copy tampered with (a file, a row) rolls back naming what differs,
/// the source serving; an untampered one completes, verified.
#[test]
fn a_copy_that_differs_inside_the_freeze_rolls_back() -> anyhow::Result<()> {
    let platform = platform()?;
    support::wait_online_with_inventory(&platform.rig, &["shared-old", "shared-new"])?;

    let last = migrate(&platform, TAMPERED, Tamper::File)?;
    rolled_back(&platform, TAMPERED, &last, &[FILE, "contents"])?;
    let source_bytes = std::fs::read(
        platform
            .accounts
            .iter()
            .find(|a| a.name == TAMPERED)
            .context("account")?
            .home
            .join(FILE),
    )?;
    ensure!(
        source_bytes == b"the source's own contents\n",
        "the source's file is untouched"
    );

    let last = migrate(&platform, ROWS, Tamper::Row)?;
    rolled_back(
        &platform,
        ROWS,
        &last,
        &["rows differ", "profile id=\"1\" (row differs)"],
    )?;
    let bio = platform.pg15.psql(
        &format!("{ROWS}_db"),
        "SELECT bio = lower(bio) FROM profile WHERE id = 1",
    )?;
    ensure!(bio == "t", "the source's row is untouched");

    let last = migrate(&platform, MROWS, Tamper::MariadbRow)?;
    rolled_back(
        &platform,
        MROWS,
        &last,
        &["rows differ", "profile id=1 (row differs)"],
    )?;
    let bio = platform.maria_old.sql(&format!(
        "SELECT CAST(bio AS BINARY) = CAST(LOWER(bio) AS BINARY) FROM {MROWS}_blog.profile WHERE id = 1"
    ))?;
    ensure!(
        bio.trim() == "1",
        "the source's MariaDB row is untouched: {bio}"
    );

    let last = migrate(&platform, CLEAN, Tamper::Nothing)?;
    ensure!(
        str_of(&last, "state") == "STATE_COMPLETED",
        "the untampered migration completes: {last}"
    );
    let window = &last["freezeWindow"];
    let verified =
        verify_ms(window).with_context(|| format!("the freeze records its verify part: {last}"))?;
    eprintln!(
        "completed: freeze window {} ms, verify {verified} ms; parts: {}",
        str_of(window, "totalMs"),
        window["parts"]
    );
    Ok(())
}
