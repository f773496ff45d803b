//! The cutover's database fence and switch, through the real agent over
//! mutual TLS, on a real PostgreSQL 15 and MariaDB 10.11 (binary log in
//! ROW format) with two accounts writing numbered rows over TCP from the
//! client namespace, one acknowledged statement at a time:
//!
//! - fenced, alice's writers are held, not refused (no error, no
//!   acknowledgement while the fence stands), her readers go on, and bob's
//!   writers on the same servers keep writing;
//! - the positions taken after the fence cover every acknowledged write:
//!   checked with tools independent of Navette, a `test_decoding` slot
//!   peeked up to the LSN, and `mariadb-binlog` read up to the GTID;
//! - the switch ends the held writers (their rows are not on the source),
//!   refuses alice's new sessions with the engines' messages, spares bob;
//!   `ReleaseDatabases` lets alice in again;
//! - a fence nobody switches or releases ends by itself at its deadline,
//!   and one whose agent is killed ends at once;
//! - calls are idempotent by migration id; another migration is refused.

mod cutover_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use cutover_support::World;
use navette_proto::v1::{
    CutoverDatabase, FenceDatabasesRequest, FenceDatabasesResponse, ReleaseDatabasesRequest,
    SwitchDatabasesRequest,
};
use navette_tests::{AccountSpec, MariaDbSpec, Netns, PgVersion};

const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const NEW_HOST: &str = "192.0.2.12";

/// A customer writing numbered rows, one acknowledged statement at a
/// time, reconnecting after an error; what it saw.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits until it acknowledges more than it has now.
    fn wait_progress(&self, what: &str, timeout: Duration) -> anyhow::Result<()> {
        let before = self.acked();
        let started = Instant::now();
        while self.acked() <= before {
            ensure!(
                started.elapsed() < timeout,
                "{what}: no write acknowledged within {timeout:?} (errors: {:?})",
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn shared() -> (Arc<AtomicBool>, Arc<AtomicU64>, Arc<Mutex<Vec<String>>>) {
        (Arc::default(), Arc::default(), Arc::default())
    }

    /// PostgreSQL: `INSERT INTO log (n)` over TCP as the account.
    fn postgres(client: &Netns, connection: String) -> Writer {
        let (stop, acked, errors) = Writer::shared();
        let (netns, flag, count, seen) =
            (client.clone(), stop.clone(), acked.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let _ = netns.run_in(|| async move {
                let mut n = 0u64;
                while !flag.load(Ordering::Acquire) {
                    let session =
                        match tokio_postgres::connect(&connection, tokio_postgres::NoTls).await {
                            Ok((session, connection)) => {
                                tokio::spawn(connection);
                                session
                            }
                            Err(error) => {
                                push(
                                    &seen,
                                    format!("connect: {}", navette_agent::error_chain(&error)),
                                );
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                    while !flag.load(Ordering::Acquire) {
                        let next = (n + 1) as i64;
                        match session
                            .execute("INSERT INTO log (n) VALUES ($1)", &[&next])
                            .await
                        {
                            Ok(_) => {
                                n += 1;
                                count.store(n, Ordering::Release);
                            }
                            Err(error) => {
                                push(
                                    &seen,
                                    format!(
                                        "insert {next}: {}",
                                        navette_agent::error_chain(&error)
                                    ),
                                );
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                Ok(())
            });
        });
        Writer {
            stop,
            acked,
            errors,
            thread: Some(thread),
        }
    }

    /// MariaDB: `INSERT INTO log (n)` through a `mariadb` client in the
    /// client namespace, each insert followed by an acknowledgement line.
    fn mariadb(client: &Netns, user: &str, password: &str, database: &str) -> Writer {
        let (stop, acked, errors) = Writer::shared();
        let (netns, flag, count, seen) =
            (client.clone(), stop.clone(), acked.clone(), errors.clone());
        let (user, password, database) =
            (user.to_owned(), password.to_owned(), database.to_owned());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Acquire) {
                let spawned = netns
                    .command("mariadb")
                    .args([
                        "--no-defaults",
                        "--batch",
                        "--skip-column-names",
                        "--unbuffered",
                    ])
                    .arg(format!("--host={HOST}"))
                    .arg(format!("--user={user}"))
                    .arg(format!("--password={password}"))
                    .args(["--connect-timeout=5", "--database", &database])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn();
                let mut child: Child = match spawned {
                    Ok(child) => child,
                    Err(error) => {
                        push(&seen, format!("spawn: {error}"));
                        return;
                    }
                };
                let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take())
                else {
                    return;
                };
                let mut lines = BufReader::new(stdout).lines();
                while !flag.load(Ordering::Acquire) {
                    let next = n + 1;
                    if writeln!(
                        stdin,
                        "INSERT INTO log (n) VALUES ({next}); SELECT 'ack', {next};"
                    )
                    .is_err()
                    {
                        break;
                    }
                    match lines.next() {
                        Some(Ok(line)) if line == format!("ack\t{next}") => {
                            n = next;
                            count.store(n, Ordering::Release);
                        }
                        _ => break,
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                drop(stdin);
                let _ = child.kill();
                let mut text = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut text);
                }
                let _ = child.wait();
                if !flag.load(Ordering::Acquire) {
                    push(&seen, format!("insert {}: {}", n + 1, text.trim()));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Writer {
            stop,
            acked,
            errors,
            thread: Some(thread),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn push(errors: &Mutex<Vec<String>>, error: String) {
    if let Ok(mut errors) = errors.lock() {
        errors.push(error);
    }
}

fn databases(pg: &str, my: &str) -> (Vec<CutoverDatabase>, Vec<CutoverDatabase>) {
    (
        vec![CutoverDatabase {
            server: "main".into(),
            database: pg.into(),
        }],
        vec![CutoverDatabase {
            server: "main".into(),
            database: my.into(),
        }],
    )
}

#[test]
fn fenced_writers_wait_the_position_covers_them_and_the_switch_ends_them() -> anyhow::Result<()> {
    let world = World::new("cutover_fence")?;
    let host = world.rig.add_namespace("old-1", HOST)?;
    let pg = host.start_postgres(&world.rig, PgVersion::V15, 5432)?;
    let my = host.start_mariadb_with(&world.rig, MariaDbSpec::replication_source())?;
    let mut accounts = Vec::new();
    for name in ["cutalice", "cutbob"] {
        accounts.push(world.rig.add_account(
            &host,
            AccountSpec {
                name: name.into(),
                password: format!("{name}-secret"),
                pg_databases: vec![format!("{name}_pg")],
                mariadb_databases: vec![format!("{name}_shop")],
                files: false,
            },
        )?);
        pg.psql(
            &format!("{name}_pg"),
            &format!("SET ROLE {name}; CREATE TABLE log (n bigint PRIMARY KEY, at timestamptz DEFAULT now());"),
        )?;
        my.sql(&format!(
            "CREATE TABLE {name}_shop.log (n BIGINT PRIMARY KEY, at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB;"
        ))?;
    }
    let agent = world.agent(&host, "old-1")?;
    // An independent witness of the WAL: a test_decoding slot made now.
    pg.psql(
        "cutalice_pg",
        "SELECT pg_create_logical_replication_slot('cutover_witness', 'test_decoding');",
    )?;

    let client = world.rig.client();
    let alice_pg = Writer::postgres(
        client,
        pg.tcp_config("cutalice", "cutalice-secret", "cutalice_pg"),
    );
    let bob_pg = Writer::postgres(
        client,
        pg.tcp_config("cutbob", "cutbob-secret", "cutbob_pg"),
    );
    let alice_my = Writer::mariadb(client, "cutalice", "cutalice-secret", "cutalice_shop");
    let bob_my = Writer::mariadb(client, "cutbob", "cutbob-secret", "cutbob_shop");
    for writer in [&alice_pg, &bob_pg, &alice_my, &bob_my] {
        writer.wait_progress("before the fence", Duration::from_secs(20))?;
    }
    std::thread::sleep(Duration::from_millis(300));

    let (postgres, mariadb) = databases("cutalice_pg", "cutalice_shop");
    let fence_request = |migration: &str, deadline_ms: u32| FenceDatabasesRequest {
        migration_id: migration.into(),
        account: "cutalice".into(),
        postgres: postgres.clone(),
        mariadb: mariadb.clone(),
        deadline_ms,
        acquire_timeout_ms: 3000,
    };
    let fence = |request: FenceDatabasesRequest| -> anyhow::Result<Result<FenceDatabasesResponse, tonic::Status>> {
        world.call(&agent, async move |c| c.fence_databases(request).await.map(|r| r.into_inner()))
    };
    let fenced = fence(fence_request("m-cut-1", 20_000))?
        .map_err(|s| anyhow::anyhow!("FenceDatabases: {s:?}"))?;
    eprintln!("fenced in {} µs: {fenced:?}", fenced.took_us);
    let lsn = fenced
        .postgres
        .first()
        .map(|p| p.lsn.clone())
        .context("no PostgreSQL position")?;
    let gtid = fenced
        .mariadb
        .first()
        .map(|p| p.gtid_position.clone())
        .context("no MariaDB position")?;
    ensure!(!lsn.is_empty() && !gtid.is_empty(), "{fenced:?}");

    // Held: alice's writers acknowledge nothing and see no error; bob's go on.
    std::thread::sleep(Duration::from_millis(200));
    let (held_pg, held_my) = (alice_pg.acked(), alice_my.acked());
    let (errors_pg, errors_my) = (alice_pg.errors().len(), alice_my.errors().len());
    bob_pg.wait_progress(
        "bob's PostgreSQL writer during the fence",
        Duration::from_secs(5),
    )?;
    bob_my.wait_progress(
        "bob's MariaDB writer during the fence",
        Duration::from_secs(5),
    )?;
    std::thread::sleep(Duration::from_millis(1000));
    ensure!(
        alice_pg.acked() == held_pg && alice_my.acked() == held_my,
        "a fenced write was acknowledged: PostgreSQL {held_pg} then {}, MariaDB {held_my} then {}",
        alice_pg.acked(),
        alice_my.acked()
    );
    ensure!(
        alice_pg.errors().len() == errors_pg && alice_my.errors().len() == errors_my,
        "a fenced writer was refused: {:?} {:?}",
        alice_pg.errors(),
        alice_my.errors()
    );
    // Readers go on: what is committed is what was acknowledged.
    let rows_pg: u64 = pg
        .psql("cutalice_pg", "SELECT count(*) FROM log")?
        .trim()
        .parse()?;
    let rows_my: u64 = my
        .sql("SELECT count(*) FROM cutalice_shop.log")?
        .trim()
        .parse()?;
    ensure!(
        rows_pg == held_pg && rows_my == held_my,
        "rows {rows_pg}/{rows_my}, acknowledged {held_pg}/{held_my}"
    );
    eprintln!("held: PostgreSQL writer at {held_pg}, MariaDB writer at {held_my}; bob wrote on");

    // Idempotent; another migration is refused.
    let again = fence(fence_request("m-cut-1", 20_000))??;
    ensure!(
        again.already_fenced
            && again.postgres == fenced.postgres
            && again.mariadb == fenced.mariadb,
        "{again:?}"
    );
    let other = fence(fence_request("m-cut-other", 20_000))?
        .expect_err("a second migration fenced the account");
    ensure!(
        other.code() == tonic::Code::FailedPrecondition && other.message().contains("m-cut-1"),
        "{other:?}"
    );

    // The positions cover every acknowledged write (tools of the engines).
    let decoded = pg.psql(
        "cutalice_pg",
        &format!("SELECT data FROM pg_logical_slot_peek_changes('cutover_witness', '{lsn}', NULL)"),
    )?;
    let decoded_pg: Vec<u64> = decoded
        .lines()
        .filter(|l| l.starts_with("table public.log: INSERT:"))
        .filter_map(|l| {
            l.split("n[bigint]:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ensure!(
        (1..=held_pg).all(|n| decoded_pg.contains(&n)),
        "the WAL up to {lsn} lacks acknowledged rows: {} decoded, {held_pg} acknowledged",
        decoded_pg.len()
    );
    let binlog = mariadb_binlog(&my, &gtid)?;
    let decoded_my = binlog_inserts(&binlog, "cutalice_shop");
    ensure!(
        (1..=held_my).all(|n| decoded_my.contains(&n)),
        "the binary log up to {gtid} lacks acknowledged rows: {} decoded, {held_my} acknowledged",
        decoded_my.len()
    );
    eprintln!("the positions {lsn} and {gtid} cover all {held_pg} and {held_my} acknowledged rows");

    // The switch: held writers ended, their rows not on the source; new
    // sessions refused; bob untouched.
    let switched = world.call(&agent, async |c| {
        c.switch_databases(SwitchDatabasesRequest {
            migration_id: "m-cut-1".into(),
            account: "cutalice".into(),
            new_address: NEW_HOST.into(),
            postgres: postgres.clone(),
            mariadb: mariadb.clone(),
        })
        .await
        .map(|r| r.into_inner())
    })??;
    eprintln!("switched: {switched:?}");
    ensure!(switched.ended_sessions >= 2, "{switched:?}");
    world
        .rig
        .wait_until("alice's refusals", Duration::from_secs(10), || {
            let pg_refused = alice_pg
                .errors()
                .iter()
                .any(|e| e.contains("too many connections for database"));
            let my_refused = alice_my.errors().iter().any(|e| e.contains("locked"));
            Ok(pg_refused && my_refused)
        })?;
    eprintln!(
        "alice's writers saw: {:?} / {:?}",
        alice_pg.errors(),
        alice_my.errors()
    );
    ensure!(
        alice_pg.acked() == held_pg && alice_my.acked() == held_my,
        "a held write was acknowledged at the switch"
    );
    let after_pg = pg.psql(
        "cutalice_pg",
        &format!("SELECT count(*) FROM log WHERE n > {held_pg}"),
    )?;
    let after_my = my.sql(&format!(
        "SELECT count(*) FROM cutalice_shop.log WHERE n > {held_my}"
    ))?;
    ensure!(
        after_pg.trim() == "0" && after_my.trim() == "0",
        "a held write is on the source: {after_pg} {after_my}"
    );
    bob_pg.wait_progress(
        "bob's PostgreSQL writer after the switch",
        Duration::from_secs(5),
    )?;
    bob_my.wait_progress(
        "bob's MariaDB writer after the switch",
        Duration::from_secs(5),
    )?;

    // Rollback: alice writes again.
    let released = world.call(&agent, async |c| {
        c.release_databases(ReleaseDatabasesRequest {
            migration_id: "m-cut-1".into(),
            account: "cutalice".into(),
        })
        .await
        .map(|r| r.into_inner())
    })??;
    ensure!(released.unswitched, "{released:?}");
    alice_pg.wait_progress(
        "alice's PostgreSQL writer after the release",
        Duration::from_secs(10),
    )?;
    alice_my.wait_progress(
        "alice's MariaDB writer after the release",
        Duration::from_secs(10),
    )?;
    let again = world.call(&agent, async |c| {
        c.release_databases(ReleaseDatabasesRequest {
            migration_id: "m-cut-1".into(),
            account: "cutalice".into(),
        })
        .await
        .map(|r| r.into_inner())
    })??;
    ensure!(!again.unfenced && !again.unswitched, "{again:?}");

    // A fence nobody confirms ends by itself at its deadline.
    let short = fence(fence_request("m-cut-2", 1500))??;
    let taken = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let held = (alice_pg.acked(), alice_my.acked());
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        (alice_pg.acked(), alice_my.acked()) == held,
        "the short fence did not hold"
    );
    alice_pg.wait_progress(
        "alice's PostgreSQL writer after the deadline",
        Duration::from_secs(10),
    )?;
    alice_my.wait_progress(
        "alice's MariaDB writer after the deadline",
        Duration::from_secs(10),
    )?;
    eprintln!(
        "a {} ms fence ended by itself; writers resumed {:?} after it was taken ({short:?})",
        1500,
        taken.elapsed()
    );
    ensure!(
        taken.elapsed() >= Duration::from_millis(1400),
        "released before its deadline"
    );

    // The agent killed while it fences: the servers end its sessions,
    // and the writers go on without waiting for any deadline.
    fence(fence_request("m-cut-3", 30_000))??;
    std::thread::sleep(Duration::from_millis(300));
    let held = (alice_pg.acked(), alice_my.acked());
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        (alice_pg.acked(), alice_my.acked()) == held,
        "the third fence did not hold"
    );
    let killed = Instant::now();
    agent.kill9();
    alice_pg.wait_progress(
        "alice's PostgreSQL writer after the agent died",
        Duration::from_secs(10),
    )?;
    alice_my.wait_progress(
        "alice's MariaDB writer after the agent died",
        Duration::from_secs(10),
    )?;
    eprintln!(
        "with the agent killed, the fence ended within {:?} (its deadline was 30 s)",
        killed.elapsed()
    );

    pg.psql(
        "cutalice_pg",
        "SELECT pg_drop_replication_slot('cutover_witness');",
    )?;
    drop((alice_pg, bob_pg, alice_my, bob_my));
    Ok(())
}

/// `mariadb-binlog -v` of `server`'s binary logs up to `gtid`.
fn mariadb_binlog(server: &navette_tests::MariaDb, gtid: &str) -> anyhow::Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(server.data_dir())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("mysql-bin.") && n[10..].bytes().all(|b| b.is_ascii_digit())
            })
        })
        .collect();
    files.sort();
    let output = std::process::Command::new("mariadb-binlog")
        .arg("--no-defaults")
        .arg("-v")
        .arg(format!("--stop-position={gtid}"))
        .args(&files)
        .output()
        .context("running mariadb-binlog")?;
    ensure!(
        output.status.success(),
        "mariadb-binlog: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The `n` of every row `binlog` inserts into `database`.`log`.
fn binlog_inserts(binlog: &str, database: &str) -> Vec<u64> {
    let header = format!("### INSERT INTO `{database}`.`log`");
    let mut found = Vec::new();
    let mut lines = binlog.lines();
    while let Some(line) = lines.next() {
        if line.trim() == header {
            for next in lines.by_ref() {
                if let Some(value) = next.trim().strip_prefix("###   @1=") {
                    if let Ok(n) = value.trim().parse() {
                        found.push(n);
                    }
                    break;
                }
            }
        }
    }
    found
}
