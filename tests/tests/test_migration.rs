//! The *Test* button end to end (R2, R3): an account on a PostgreSQL 15 host
//! with every kind of file, two PostgreSQL databases and a MariaDB database
//! is duplicated onto a PostgreSQL 18 test host while it keeps serving; the
//! copy is faithful (rsync finds nothing to change, tables and schemas
//! match) and usable with the account's own credentials; a refresh sends
//! only the changes; delete and expiry remove the copy; bad requests are
//! refused before anything is copied.

mod support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::accounts::add_fidelity_tree;
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Postgres, Rig};
use serde_json::{Value, json};
use support::{enrol, list, panel, str_of};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TEST_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

/// The result of a server start on another thread.
fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

/// `rsync -aHAX --dry-run --itemize-changes`: what rsync would still change
/// to make `copy` like `original` (empty when they are the same).
fn rsync_differences(original: &Path, copy: &Path) -> anyhow::Result<String> {
    let output = Command::new("rsync")
        .args([
            "-aHAX",
            "--numeric-ids",
            "--dry-run",
            "--itemize-changes",
            "--delete",
        ])
        .arg(format!("{}/", original.display()))
        .arg(format!("{}/", copy.display()))
        .output()?;
    ensure!(
        output.status.success(),
        "rsync: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every user table of `db` with its row count and a content checksum.
fn table_fingerprints(server: &Postgres, db: &str) -> anyhow::Result<Vec<String>> {
    let tables = server.psql(
        db,
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )?;
    let mut fingerprints = Vec::new();
    for table in tables.lines().filter(|l| !l.is_empty()) {
        let row = server.psql(
            db,
            &format!(
                "SELECT count(*) || ' ' || coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '-')
                 FROM {table} t"
            ),
        )?;
        fingerprints.push(format!("{table} {}", row.trim()));
    }
    Ok(fingerprints)
}

/// The schema of `db` as PostgreSQL 18's pg_dump writes it, without
/// comments, settings and the dump's random restrict key: object for
/// object comparable between servers of different versions.
fn schema(server: &Postgres, db: &str) -> anyhow::Result<Vec<String>> {
    let output = PgVersion::V18
        .command("pg_dump")
        .arg("-h")
        .arg(server.socket_dir())
        .args([
            "-p",
            &server.port().to_string(),
            "-U",
            "postgres",
            "--schema-only",
            db,
        ])
        .output()?;
    ensure!(
        output.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| {
            !l.is_empty() && !l.starts_with("--") && !l.starts_with("SET ") && !l.starts_with("\\")
        })
        .filter(|l| !l.starts_with("SELECT pg_catalog.set_config"))
        .map(unqualified)
        .collect();
    lines.sort();
    Ok(lines)
}

/// A view body's line without `table.` qualifiers: PostgreSQL 16 and later
/// print view definitions without them, older servers with them; the view
/// is the same. Statement lines (CREATE, ALTER...) are kept as they are.
fn unqualified(line: &str) -> String {
    let statement = ["CREATE", "ALTER", "COMMENT", "GRANT", "REVOKE"]
        .iter()
        .any(|word| line.trim_start().starts_with(word));
    if statement {
        return line.to_owned();
    }
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = (chars[i].is_ascii_lowercase() || chars[i] == '_')
            && (i == 0
                || !(chars[i - 1].is_ascii_alphanumeric()
                    || chars[i - 1] == '_'
                    || chars[i - 1] == '.'));
        if starts_word {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let qualifies = j + 1 < chars.len()
                && chars[j] == '.'
                && (chars[j + 1].is_ascii_lowercase() || chars[j + 1] == '_');
            if qualifies {
                i = j + 1;
                continue;
            }
            out.extend(&chars[i..j]);
            i = j;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[test]
fn a_test_duplicates_the_account_faithfully_and_can_be_refreshed_and_deleted() -> anyhow::Result<()>
{
    let rig = Rig::new("test_migration")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", SOURCE)?;
    let test_host = rig.add_namespace("test-1", TEST_HOST)?;
    let (source_pg, target_pg, source_maria, target_maria) =
        std::thread::scope(|s| -> anyhow::Result<_> {
            let a = s.spawn(|| shared.start_postgres(&rig, PgVersion::V15, 5432));
            let b = s.spawn(|| test_host.start_postgres(&rig, PgVersion::V18, 5432));
            let c = s.spawn(|| shared.start_mariadb(&rig));
            let d = s.spawn(|| test_host.start_mariadb_11_8(&rig));
            Ok((
                join("pg15", a.join())?,
                join("pg18", b.join())?,
                join("mariadb", c.join())?,
                join("mariadb", d.join())?,
            ))
        })?;
    let alice = rig.add_account(
        &shared,
        AccountSpec {
            name: "nvt_alice".into(),
            password: "alice-S3cret".into(),
            pg_databases: vec!["nvt_alice".into(), "nvt_alice_shop".into()],
            mariadb_databases: vec!["nvt_alice_blog".into()],
            files: true,
        },
    )?;
    add_fidelity_tree(&alice.home, &alice.name)?;
    // Some real content: a sequence moved on, a view, a function, a trigger.
    source_pg.psql(
        "nvt_alice_shop",
        "SET ROLE nvt_alice;
         CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, placed timestamptz DEFAULT now(), note jsonb);
         INSERT INTO orders (item, note) SELECT 'item ' || g, jsonb_build_object('n', g) FROM generate_series(1, 20000) g;
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE id > 100;
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.placed := now(); RETURN NEW; END $$;
         CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
         CREATE INDEX orders_item ON orders (item);
         COMMENT ON TABLE orders IS 'what customers bought';",
    )?;
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "test-1"])?;
    rig.wait_until(
        "alice's databases in the inventory",
        Duration::from_secs(30),
        || {
            let account = rig.grpcurl_json(
                "navette.v1.Accounts/GetAccount",
                &json!({"name": "nvt_alice"}),
            )?;
            Ok(list(&account, "databases").len() == 3)
        },
    )?;

    // Bad requests are refused at once, with the reason.
    let refused = |request: Value, code: &str, reason: &str| -> anyhow::Result<()> {
        let access = rig.controller_access()?;
        let body = request.to_string();
        let output = rig.grpcurl_as(
            &access.panel,
            &[
                "-d",
                &body,
                &access.api.to_string(),
                "navette.v1.Tests/TestMigration",
            ],
        )?;
        support::expect_refusal(&output, code, reason)
    };
    refused(
        json!({"request_id": "r-x1", "account": "nobody", "migration_id": "postgresql-15-to-18"}),
        "NotFound",
        "account \"nobody\" not found",
    )?;
    refused(
        json!({"request_id": "r-x2", "account": "nvt_alice", "migration_id": "oracle-upgrade"}),
        "NotFound",
        "migration \"oracle-upgrade\" not found",
    )?;

    // The report says what the migration touches.
    let report = panel(
        &rig,
        "GetCompatibilityReport",
        json!({"account": "nvt_alice", "migration_id": "postgresql-15-to-18"}),
    )?;
    ensure!(
        report["compatible"] == json!(true) && str_of(&report, "testHostId") == "test-1",
        "report: {report}"
    );
    ensure!(
        list(&report, "items")
            .iter()
            .any(|i| str_of(i, "incompatibilityId") == "safe-search-path-maintenance"),
        "the report lists the catalogue's incompatibilities: {report}"
    );

    // A writer keeps the account busy during the copy.
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let test = std::thread::scope(|scope| -> anyhow::Result<Value> {
        let writer = scope.spawn(|| -> anyhow::Result<()> {
            let log = alice.home.join("www/uploads/access.log");
            while !stop.load(Ordering::Relaxed) {
                source_pg.psql(
                    "nvt_alice_shop",
                    "INSERT INTO orders (item) VALUES ('during the copy')",
                )?;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?;
                writeln!(file, "GET / 200")?;
                writes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        let started = panel(
            &rig,
            "TestMigration",
            json!({"request_id": "r-1", "account": "nvt_alice", "migration_id": "postgresql-15-to-18"}),
        );
        let result = started.and_then(|started| {
            // A retried request gives the same test.
            let again = panel(&rig, "TestMigration", json!({"request_id": "r-1", "account": "nvt_alice", "migration_id": "postgresql-15-to-18"}))?;
            ensure!(str_of(&again, "id") == str_of(&started, "id"), "a retry returns the same test");
            let id = str_of(&started, "id").to_owned();
            support::wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(120))
        });
        stop.store(true, Ordering::Relaxed);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .context("the writer saw an error")?;
        result
    })?;
    ensure!(writes.load(Ordering::Relaxed) > 0, "the writer wrote");
    let id = str_of(&test, "id").to_owned();
    let connection = &test["connection"];
    let copy_home = Path::new(str_of(connection, "home")).to_path_buf();
    ensure!(
        copy_home.starts_with(test_host.root()),
        "the copy is on the test host: {connection}"
    );

    // Faithful: files, tables, schemas.
    let differences = rsync_differences(&alice.home, &copy_home)?;
    let differences: Vec<&str> = differences
        .lines()
        .filter(|l| !l.contains("access.log"))
        .collect();
    ensure!(
        differences.is_empty(),
        "rsync would still change: {differences:#?}"
    );
    for db in ["nvt_alice", "nvt_alice_shop"] {
        // The writer wrote to orders during the copy: its copy is the
        // snapshot; compare the other tables, and orders up to that point.
        let source = table_fingerprints(&source_pg, db)?;
        let target = table_fingerprints(&target_pg, db)?;
        for (s, t) in source.iter().zip(&target) {
            if !s.starts_with("public.orders ") {
                ensure!(s == t, "{db}: {s} vs {t}");
            }
        }
        ensure!(
            source.len() == target.len(),
            "{db}: tables {source:?} vs {target:?}"
        );
        let (source_schema, target_schema) = (schema(&source_pg, db)?, schema(&target_pg, db)?);
        let only_source: Vec<&String> = source_schema
            .iter()
            .filter(|l| !target_schema.contains(l))
            .collect();
        let only_target: Vec<&String> = target_schema
            .iter()
            .filter(|l| !source_schema.contains(l))
            .collect();
        ensure!(
            only_source.is_empty() && only_target.is_empty(),
            "{db}: schemas differ: only on the source {only_source:#?}, only on the copy {only_target:#?}"
        );
    }
    let copied_orders: i64 = target_pg
        .psql("nvt_alice_shop", "SELECT count(*) FROM orders")?
        .trim()
        .parse()?;
    ensure!(copied_orders >= 20000, "orders copied: {copied_orders}");
    let source_blog = source_maria.sql("CHECKSUM TABLE nvt_alice_blog.items")?;
    let target_blog = target_maria.sql("CHECKSUM TABLE nvt_alice_blog.items")?;
    ensure!(
        source_blog == target_blog,
        "MariaDB table: {source_blog} vs {target_blog}"
    );

    // Usable with the account's own credentials, at the address given.
    let databases = list(connection, "databases");
    ensure!(
        databases.len() == 3,
        "three databases to connect to: {connection}"
    );
    for endpoint in &databases {
        let (address, port, user, name) = (
            str_of(endpoint, "address"),
            endpoint["port"].as_u64().unwrap_or(0),
            str_of(endpoint, "user"),
            str_of(endpoint, "name"),
        );
        ensure!(
            address == TEST_HOST.to_string(),
            "the copy answers on the test host: {endpoint}"
        );
        let output = if str_of(endpoint, "engine") == "DATABASE_ENGINE_POSTGRESQL" {
            rig.client()
                .command("psql")
                .env("PGPASSWORD", &alice.password)
                .args([
                    "-h",
                    address,
                    "-p",
                    &port.to_string(),
                    "-U",
                    user,
                    "-d",
                    name,
                    "-A",
                    "-t",
                    "-c",
                    "SELECT label FROM items ORDER BY id",
                ])
                .output()?
        } else {
            rig.client()
                .command("mariadb")
                .args([
                    "-h",
                    address,
                    "-P",
                    &port.to_string(),
                    "-u",
                    user,
                    &format!("-p{}", alice.password),
                    name,
                    "-N",
                    "-e",
                    "SELECT label FROM items ORDER BY id",
                ])
                .output()?
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success() && stdout.contains("apple") && stdout.contains("cherry"),
            "{name} as {user} at {address}:{port}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let version = target_pg.psql("nvt_alice", "SHOW server_version")?;
    ensure!(
        version.starts_with("18."),
        "the copy runs PostgreSQL 18: {version}"
    );
    let maria_version = target_maria.server_version()?;
    ensure!(
        maria_version.starts_with("11.8."),
        "the MariaDB copy runs MariaDB 11.8: {maria_version}"
    );

    // Refresh: only what changed travels.
    std::fs::write(alice.home.join("www/new-page.html"), "<p>new</p>\n")?;
    std::fs::write(alice.home.join("www/about.html"), "<p>changed</p>\n")?;
    source_pg.psql(
        "nvt_alice",
        "UPDATE items SET label = 'apricot' WHERE label = 'apple'",
    )?;
    let refreshing = panel(&rig, "RefreshTest", json!({"id": id}))?;
    ensure!(
        str_of(&refreshing, "state") == "STATE_REFRESHING",
        "refresh: {refreshing}"
    );
    let refreshed = support::wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(120))?;
    ensure!(
        refreshed["generation"] == json!(2),
        "a second copy: {refreshed}"
    );
    let progress = &refreshed["progress"];
    let number = |name: &str| {
        progress[name]
            .as_str()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ensure!(
        number("filesUnchanged") > 10,
        "unchanged files are not sent again: {progress}"
    );
    ensure!(
        number("bytesSent") < 64 << 20,
        "the sparse 64 MiB file is not sent again: {progress}"
    );
    let differences = rsync_differences(&alice.home, &copy_home)?;
    ensure!(
        differences.lines().all(|l| l.contains("access.log")),
        "after refresh rsync would change: {differences}"
    );
    ensure!(
        target_pg
            .psql(
                "nvt_alice",
                "SELECT count(*) FROM items WHERE label = 'apricot'"
            )?
            .trim()
            == "1",
        "refreshed rows"
    );

    // Delete: the copy goes, the account stays.
    panel(&rig, "DeleteTest", json!({"id": id}))?;
    support::wait_for_test(&rig, &id, "STATE_DELETED", Duration::from_secs(60))?;
    ensure!(!copy_home.exists(), "the copy's home is removed");
    ensure!(
        target_pg
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'nvt_alice%'"
            )?
            .trim()
            == "0",
        "copied databases dropped"
    );
    ensure!(
        alice.home.join("tree/plain.txt").exists(),
        "the account is untouched"
    );
    ensure!(
        source_pg
            .psql("nvt_alice", "SELECT count(*) FROM items")?
            .trim()
            == "3",
        "source rows untouched"
    );

    // Expiry: a short-lived test removes itself.
    let short = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-2", "account": "nvt_alice", "migration_id": "postgresql-15-to-18", "ttl_seconds": 3}),
    )?;
    let short_id = str_of(&short, "id").to_owned();
    support::wait_for_test(&rig, &short_id, "STATE_READY", Duration::from_secs(120))?;
    support::wait_for_test(&rig, &short_id, "STATE_DELETED", Duration::from_secs(60))?;
    ensure!(!copy_home.exists(), "the expired copy is removed");

    // The MariaDB migration runs on its target version: the blog's rows
    // are on the test host's MariaDB 11.8, under the customer's own login.
    let maria = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-3", "account": "nvt_alice", "migration_id": "mariadb-10.11-to-11.8"}),
    )?;
    let maria_id = str_of(&maria, "id").to_owned();
    let ready = support::wait_for_test(&rig, &maria_id, "STATE_READY", Duration::from_secs(120))?;
    let blog = list(&ready["connection"], "databases")
        .iter()
        .find(|d| str_of(d, "name") == "nvt_alice_blog")
        .cloned()
        .with_context(|| format!("the blog in the MariaDB test's connection: {ready}"))?;
    ensure!(
        blog["port"].as_u64() == Some(u64::from(target_maria.port()))
            && str_of(&blog, "address") == target_maria.address().to_string(),
        "the blog is on the test host's MariaDB 11.8: {blog}"
    );
    let rows = target_maria.sql("SELECT label FROM nvt_alice_blog.items ORDER BY id")?;
    let source_rows = source_maria.sql("SELECT label FROM nvt_alice_blog.items ORDER BY id")?;
    ensure!(
        rows == source_rows && !rows.is_empty(),
        "the blog's rows on 11.8: {rows:?}, on the source: {source_rows:?}"
    );
    panel(&rig, "DeleteTest", json!({"id": maria_id}))?;
    support::wait_for_test(&rig, &maria_id, "STATE_DELETED", Duration::from_secs(60))?;
    Ok(())
}
