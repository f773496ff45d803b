//! *Migrate* end to end (R4, R5): an account with files, a PostgreSQL 15
//! database (a table with a key, one without, a sequence) and a MariaDB
//! 10.11 database (a table with a key, one without) moves to a shared host
//! running PostgreSQL 18 and MariaDB 11.8 while a writer keeps adding rows
//! and lines. The copy is durable,
//! PostgreSQL converges by logical replication from the copy's own slot
//! snapshot and MariaDB by replication from the copy's GTID position; the
//! freeze drains both, carries the sequences and the last file changes,
//! and the switch places the account on the new host. Every write
//! acknowledged before the freeze began is on the new host, once; the
//! freeze window and its parts are recorded and printed, and so is the
//! MariaDB table without a key, whose rows the migration could not verify
//! by key and names as such; the cancel that
//! follows the point of no return is refused.
//!
//! A second account's migration, cancelled while it copies, rolls back:
//! the source keeps serving with nothing lost, the target's copy and the
//! replication objects are removed, and the account stays where it was.

mod support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use navette_tests::{
    AccountSpec, AgentKind, ControllerSpec, MariaDb, MariaDbSpec, PgVersion, Postgres, Rig,
};
use serde_json::{Value, json};
use support::{enrol, list, str_of};

const ALICE: &str = "nvm_alice";
const SHOP: &str = "nvm_alice_shop";
const BLOG: &str = "nvm_alice_blog";
const CARL: &str = "nvm_carl";
const CARL_DB: &str = "nvm_carl_db";

fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

fn migrations(rig: &Rig, method: &str, request: Value) -> anyhow::Result<Value> {
    let access = rig.controller_access()?;
    rig.grpcurl_json_as(
        &access.panel,
        &format!("navette.v1.Migrations/{method}"),
        &request,
    )
}

/// Waits until migration `id` is in `state`; fails early if it failed.
fn wait_for(rig: &Rig, id: &str, state: &str, timeout: Duration) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    rig.wait_until(&format!("migration {id} {state}"), timeout, || {
        last = migrations(rig, "GetMigration", json!({"id": id}))?;
        let now = str_of(&last, "state");
        if now == "STATE_FAILED" && state != "STATE_FAILED" {
            anyhow::bail!("the migration failed: {}", str_of(&last, "error"));
        }
        Ok(now == state)
    })
    .with_context(|| format!("last seen: {last}"))?;
    Ok(last)
}

/// Writes acknowledged while the migration ran: (number, when).
#[derive(Default)]
struct Acknowledged {
    orders: Vec<(u64, SystemTime)>,
    posts: Vec<(u64, SystemTime)>,
    lines: Vec<(u64, SystemTime)>,
}

fn before(writes: &[(u64, SystemTime)], at: SystemTime) -> Vec<u64> {
    writes
        .iter()
        .filter(|(_, when)| *when < at)
        .map(|(n, _)| *n)
        .collect()
}

/// The numbers in `column` of `table` on PostgreSQL `server`, sorted.
fn pg_numbers(server: &Postgres, sql: &str) -> anyhow::Result<Vec<u64>> {
    let out = server.psql(SHOP, sql)?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn table_fingerprint(server: &Postgres, table: &str) -> anyhow::Result<String> {
    server.psql(
        SHOP,
        &format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') FROM {table} t"
        ),
    )
}

#[test]
fn an_account_migrates_to_postgresql_18_and_mariadb_11_8_with_nothing_acknowledged_lost()
-> anyhow::Result<()> {
    let rig = Rig::new("migrate")?;
    let _controller = support::controller(
        &rig,
        ControllerSpec {
            // The operator relaxed the test policy for this platform; the
            // old copy is retired, and the old host's forward ended, two
            // seconds after the switch.
            extra_config: "\n[migrations]\nrequire_recent_test = false\nretire_after_secs = 2\nforward_for_secs = 2\n"
                .to_owned(),
            ..ControllerSpec::default()
        },
    )?;
    let old = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let new = rig.add_namespace("shared-new", Ipv4Addr::new(192, 0, 2, 11))?;
    let (pg15, pg18, maria_old, maria_new): (Postgres, Postgres, MariaDb, MariaDb) =
        std::thread::scope(|s| -> anyhow::Result<_> {
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
    let alice = rig.add_account(
        &old,
        AccountSpec {
            name: ALICE.into(),
            password: "alice-S3cret".into(),
            pg_databases: vec![SHOP.into()],
            mariadb_databases: vec![BLOG.into()],
            files: true,
        },
    )?;
    let carl = rig.add_account(
        &old,
        AccountSpec {
            name: CARL.into(),
            password: "carl-S3cret".into(),
            pg_databases: vec![CARL_DB.into()],
            files: true,
            ..AccountSpec::default()
        },
    )?;
    pg15.psql(
        SHOP,
        &format!(
            "SET ROLE {ALICE};
             CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL);
             INSERT INTO orders (item) SELECT 'seed ' || g FROM generate_series(1, 5000) g;
             CREATE TABLE tally (k int, v text);
             INSERT INTO tally SELECT g, 'row ' || g FROM generate_series(1, 300) g;"
        ),
    )?;
    maria_old.sql(&format!(
        "CREATE TABLE {BLOG}.posts (id INT PRIMARY KEY AUTO_INCREMENT, n INT NOT NULL);
         INSERT INTO {BLOG}.posts (n) VALUES (0);
         CREATE TABLE {BLOG}.hits (n INT);"
    ))?;
    pg15.psql(
        CARL_DB,
        &format!(
            "SET ROLE {CARL};
             CREATE TABLE notes (id bigserial PRIMARY KEY, body text);
             INSERT INTO notes (body) SELECT repeat('n', 200) FROM generate_series(1, 200000) g;"
        ),
    )?;
    support::random_file(&carl.home.join("big.bin"), 64, CARL)?;
    enrol(&rig, &old, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &new, AgentKind::Shared, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "shared-new"])?;
    rig.wait_until(
        "the accounts' databases in the inventory",
        Duration::from_secs(30),
        || {
            let account =
                rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ALICE}))?;
            Ok(list(&account, "databases").len() == 2)
        },
    )?;

    // A writer adds numbered orders, posts and lines, and changes the table
    // without a key, until the migration leaves its copy.
    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Acknowledged::default());
    let journal = alice.home.join("journal.txt");
    let (migration, old_tally) = std::thread::scope(|scope| -> anyhow::Result<(Value, String)> {
        let writer = scope.spawn(|| -> anyhow::Result<()> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if pg15
                    .psql(
                        SHOP,
                        &format!(
                            "INSERT INTO orders (item) VALUES ('live {n}');
                             UPDATE tally SET v = v || '!' WHERE k = {};
                             DELETE FROM tally WHERE k = {};",
                            n % 300 + 1,
                            (n * 7) % 300 + 1
                        ),
                    )
                    .is_ok()
                {
                    lock(&acknowledged).orders.push((n, SystemTime::now()));
                }
                if maria_old
                    .sql(&format!(
                        "INSERT INTO {BLOG}.posts (n) VALUES ({n}); INSERT INTO {BLOG}.hits VALUES ({n})"
                    ))
                    .is_ok()
                {
                    lock(&acknowledged).posts.push((n, SystemTime::now()));
                }
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&journal)?;
                writeln!(file, "line {n}")?;
                file.sync_all()?;
                lock(&acknowledged).lines.push((n, SystemTime::now()));
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        let started = migrations(
            &rig,
            "Migrate",
            json!({"request_id": "m-alice", "account": ALICE, "migration_id": "postgresql-15-to-18",
                   "acknowledge_irreversible": true}),
        );
        let watched = started.and_then(|started| {
            let id = str_of(&started, "id").to_owned();
            ensure!(
                str_of(&started, "targetHostId") == "shared-new",
                "placed on the shared PostgreSQL 18 host: {started}"
            );
            rig.wait_until("the copy is over", Duration::from_secs(180), || {
                let now = migrations(&rig, "GetMigration", json!({"id": id}))?;
                let state = str_of(&now, "state");
                ensure!(
                    state != "STATE_FAILED" && state != "STATE_ROLLING_BACK",
                    "the migration failed: {now}"
                );
                Ok(!matches!(state, "STATE_PREPARING" | "STATE_COPYING"))
            })?;
            Ok(id)
        });
        stop.store(true, Ordering::Relaxed);
        join("the writer", writer.join())?;
        let id = watched?;
        // The old table as the writer left it: the retirement drops it.
        let old_tally = table_fingerprint(&pg15, "tally")?;
        let completed = wait_for(&rig, &id, "STATE_COMPLETED", Duration::from_secs(180))?;
        Ok((completed, old_tally))
    })?;
    let id = str_of(&migration, "id").to_owned();
    let window = &migration["freezeWindow"];
    let total_ms: u64 = window["totalMs"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    eprintln!("freeze window: {total_ms} ms; parts: {}", window["parts"]);
    eprintln!(
        "freeze attempts: {}, missed: {}",
        migration["freezeAttempts"], migration["missedFreezes"]
    );
    ensure!(
        !list(window, "parts").is_empty() && !str_of(window, "frozenAt").is_empty(),
        "the freeze window is recorded with its parts: {migration}"
    );
    let frozen_at: SystemTime = chrono::DateTime::parse_from_rfc3339(str_of(window, "frozenAt"))
        .context("frozenAt")?
        .with_timezone(&chrono::Utc)
        .into();

    // The account lives on the new host.
    let account = rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ALICE}))?;
    ensure!(
        str_of(&account, "hostId") == "shared-new",
        "the account is placed on the target: {account}"
    );

    // Every write acknowledged before the freeze is on the new host, once.
    let acknowledged = lock(&acknowledged);
    let orders = before(&acknowledged.orders, frozen_at);
    ensure!(
        !orders.is_empty(),
        "the writer wrote while the migration ran"
    );
    let on_target = pg_numbers(
        &pg18,
        "SELECT substr(item, 6) FROM orders WHERE item LIKE 'live %' ORDER BY 1",
    )?;
    let duplicates = pg18.psql(SHOP, "SELECT count(*) - count(DISTINCT item) FROM orders")?;
    ensure!(
        duplicates.trim() == "0",
        "no order is on the new host twice"
    );
    for n in &orders {
        ensure!(
            on_target.contains(n),
            "order {n}, acknowledged before the freeze, is on the new host"
        );
    }
    ensure!(
        old_tally == table_fingerprint(&pg18, "tally")?,
        "the table without a key, updated and deleted from during the migration, is the same on the new host"
    );
    // The sequence was carried: the new host takes a new order.
    pg18.psql(
        SHOP,
        "INSERT INTO orders (item) VALUES ('after the switch')",
    )?;
    let posts = before(&acknowledged.posts, frozen_at);
    let posts_on_target: Vec<u64> = maria_new
        .sql(&format!("SELECT n FROM {BLOG}.posts ORDER BY n"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let hits_on_target: Vec<u64> = maria_new
        .sql(&format!("SELECT n FROM {BLOG}.hits ORDER BY n"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for n in &posts {
        ensure!(
            posts_on_target.contains(n) && hits_on_target.contains(n),
            "post {n} and its hit, acknowledged before the freeze, are on MariaDB 11.8"
        );
    }
    // The table without a key is carried, but its rows cannot be
    // verified by key: the migration says so, naming it and why.
    let unverified: Vec<String> = list(&migration["backlog"], "unverifiedTables")
        .into_iter()
        .chain(list(window, "unverifiedTables"))
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    eprintln!("tables not verified: {unverified:?}");
    ensure!(
        unverified
            .iter()
            .any(|t| t.starts_with(&format!("{BLOG}.hits: ")) && t.contains("no primary key")),
        "the migration names {BLOG}.hits as not verified, and why: {migration}"
    );
    ensure!(
        !unverified.iter().any(|t| t.contains("posts")),
        "a table with a key is verified: {unverified:?}"
    );
    let home = migration["progress"]["targetHome"]
        .as_str()
        .unwrap_or_default();
    let copied = std::fs::read_to_string(std::path::Path::new(home).join("journal.txt"))
        .with_context(|| format!("the journal in the new home {home}"))?;
    let lines: Vec<&str> = copied.lines().collect();
    for n in before(&acknowledged.lines, frozen_at) {
        ensure!(
            lines.get(usize::try_from(n).unwrap_or(usize::MAX) - 1)
                == Some(&format!("line {n}").as_str()),
            "line {n} is on the new host, in order"
        );
    }
    eprintln!(
        "written before the freeze: {} orders, {} posts, {} lines",
        orders.len(),
        posts.len(),
        before(&acknowledged.lines, frozen_at).len()
    );
    // Replication is torn down on both sides.
    ensure!(
        pg15.psql("postgres", "SELECT count(*) FROM pg_replication_slots")? == "0",
        "no slot left on the old host"
    );
    ensure!(
        pg15.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{SHOP}'")
        )? == "0",
        "the old copy's database is retired from the old host"
    );
    ensure!(
        pg18.psql(SHOP, "SELECT count(*) FROM pg_subscription")? == "0",
        "no subscription left on the new host"
    );
    // Past the point of no return, a cancel is refused with the reason.
    let access = rig.controller_access()?;
    let body = json!({"id": id}).to_string();
    let output = rig.grpcurl_as(
        &access.panel,
        &[
            "-d",
            &body,
            &access.api.to_string(),
            "navette.v1.Migrations/CancelMigration",
        ],
    )?;
    support::expect_refusal(
        &output,
        "FailedPrecondition",
        "passed its point of no return",
    )?;
    drop(acknowledged);

    // Carl's migration is cancelled while it copies: it rolls back.
    let before_rows = pg15.psql(CARL_DB, "SELECT count(*) FROM notes")?;
    let started = migrations(
        &rig,
        "Migrate",
        json!({"request_id": "m-carl", "account": CARL, "migration_id": "postgresql-15-to-18",
               "acknowledge_irreversible": true}),
    )?;
    let carl_id = str_of(&started, "id").to_owned();
    wait_for(&rig, &carl_id, "STATE_COPYING", Duration::from_secs(60))?;
    migrations(&rig, "CancelMigration", json!({"id": carl_id}))?;
    let cancelled = wait_for(&rig, &carl_id, "STATE_CANCELLED", Duration::from_secs(180))?;
    eprintln!("cancelled: {}", str_of(&cancelled, "phase"));
    let account = rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": CARL}))?;
    ensure!(
        str_of(&account, "hostId") == "shared-old",
        "carl stays on his host: {account}"
    );
    ensure!(
        pg15.psql(CARL_DB, "SELECT count(*) FROM notes")? == before_rows,
        "carl's database on the source is whole"
    );
    pg15.psql(CARL_DB, "INSERT INTO notes (body) VALUES ('still serving')")?;
    ensure!(
        carl.home.join("big.bin").exists(),
        "carl's files on the source are there"
    );
    let leftover = pg18.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{CARL_DB}'"),
    )?;
    ensure!(
        leftover == "0",
        "the target's partial copy of carl's database is removed"
    );
    ensure!(
        pg15.psql(CARL_DB, "SELECT count(*) FROM pg_replication_slots")? == "0",
        "no slot left for the cancelled migration"
    );
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
