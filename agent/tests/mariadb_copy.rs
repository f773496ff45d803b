//! A MariaDB copy between two rig hosts, over real gRPC with mutual TLS,
//! while a customer writes to the source (see `mariadb_support` for the
//! hosts and the account's database). Afterwards:
//!
//! - every table's row count and checksum match, and `mariadb-dump` of the
//!   rows (a tool independent of Navette's checksum) prints the same on
//!   both sides; the trigger did not fire during the load;
//! - `SHOW CREATE` of every table, view, routine, trigger, event and
//!   sequence is the same on both sides;
//! - the account's users log in to the TARGET over TCP with their ORIGINAL
//!   passwords and have exactly their privileges; another account's
//!   grantee is not copied;
//! - the target's general log shows that the tables, rows and routines
//!   were created by the copy's loader user, not by root, and no loader is
//!   left afterwards; the server's record says the users are the
//!   account's copies';
//! - the writer never saw an error, and wrote while the copy ran;
//! - progress counted every table and byte;
//! - a second pull once writes stopped starts afresh and matches the
//!   source's live checksums (`MariadbSource.Checksum`).

mod mariadb_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use mariadb_support::{
    ACCOUNT, BUSY_TABLE, PASSWORD, QUIET_TABLES, RO_PASSWORD, RO_USER, SOURCE_ADDR, TARGET_ADDR,
    TARGET_HOST, TRANSFER, World, customer_sql, loaders_left, rows_dump, schema_of,
};
use navette_agent::transfer::mariadb::{MariadbReport, TableCheck};
use navette_agent::transfer::progress::Progress;
use navette_proto::v1::MariadbChecksumRequest;
use navette_proto::v1::mariadb_source_client::MariadbSourceClient;
use navette_tests::Netns;

/// A customer inserting into the source over TCP, one connection per row,
/// until stopped; counts rows and keeps the first error.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Writer {
    fn start(client: &Netns) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let client = client.clone();
        let thread = {
            let (stop, written) = (stop.clone(), written.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = written.load(Ordering::Relaxed);
                    let sql = format!("INSERT INTO visits (page, at) VALUES ('/page/{n}', NOW(3))");
                    let output = customer_sql(&client, SOURCE_ADDR, ACCOUNT, PASSWORD, &sql);
                    match output {
                        Ok(_) => {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => return Some(format!("{error:#}")),
                    }
                }
                None
            })
        };
        Writer {
            stop,
            written,
            thread: Some(thread),
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops the writer; its first error, if any.
    fn stop(&mut self) -> Option<String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(error)) => error,
            Some(Err(_)) => Some("the writer panicked".to_owned()),
            None => None,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn report_table<'a>(report: &'a MariadbReport, table: &str) -> anyhow::Result<&'a TableCheck> {
    report
        .databases
        .first()
        .and_then(|database| database.tables.iter().find(|t| t.table == table))
        .with_context(|| format!("table {table} is not in the report"))
}

#[test]
fn an_account_database_is_copied_with_its_users_objects_and_checksums() -> anyhow::Result<()> {
    let world = World::new("mariadb_copy")?;
    let (source_db, target_db) = (&world.source_db, &world.target_db);
    let source_rows_before = rows_dump(source_db, &QUIET_TABLES)?;

    // The copy, while a customer writes to the source.
    let mut writer = Writer::start(world.rig.client());
    world
        .rig
        .wait_until("the writer's first rows", Duration::from_secs(20), || {
            Ok(writer.written() >= 3)
        })?;
    let written_before = writer.written();
    // Every statement the target's server runs during the copy, with its
    // session's user.
    target_db.sql("SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1")?;
    let progress = Progress::new(TRANSFER);
    let started = std::time::Instant::now();
    let report = world.pull(ACCOUNT, &progress)??;
    let took = started.elapsed();
    let written_during = writer.written() - written_before;
    if let Some(error) = writer.stop() {
        bail!("the writer saw an error during the copy: {error}");
    }
    ensure!(
        written_during > 0,
        "the writer wrote nothing while the copy ran; the test proves nothing"
    );
    target_db.sql("SET GLOBAL general_log = 0")?;
    let database = report
        .databases
        .first()
        .context("no database in the report")?;

    // The customer's tables, rows and routines were created by the copy's
    // loader, never by root; the loader is gone.
    let loaders = target_db.sql(
        "SELECT SUBSTRING_INDEX(user_host, '[', 1), COUNT(*) FROM mysql.general_log \
         WHERE command_type = 'Query' AND (argument LIKE 'INSERT INTO `big` %' \
           OR argument LIKE '%CREATE TABLE `customers`%' \
           OR argument LIKE '%PROCEDURE `place_order`%' \
           OR argument LIKE '%TRIGGER `orders_audit`%') \
         GROUP BY 1",
    )?;
    eprintln!("the load's statements ran as: {loaders:?}");
    let sessions: Vec<(&str, u64)> = loaders
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(user, count)| (user, count.parse().unwrap_or(0)))
        .collect();
    ensure!(
        sessions.len() == 1 && sessions[0].0.starts_with("navette_load_") && sessions[0].1 >= 4,
        "the load ran as {sessions:?}, not as one loader user"
    );
    ensure!(
        loaders_left(target_db)?.is_empty(),
        "loader users left: {:?}",
        loaders_left(target_db)?
    );
    let recorded = target_db.sql(
        "SELECT CONCAT(User, '@', Host, ' ', Account) FROM mysql.navette_copy_users ORDER BY 1",
    )?;
    ensure!(
        recorded == format!("{ACCOUNT}@% {ACCOUNT}\n{RO_USER}@% {ACCOUNT}"),
        "the server's record of copied users: {recorded:?}"
    );
    eprintln!(
        "copied {} tables, {} bytes of SQL in {took:.2?}; {written_during} rows written meanwhile",
        database.tables.len(),
        database.bytes_received,
    );

    // Counts and checksums: the pull compared them; the report has them all.
    let mut tables: Vec<&str> = database.tables.iter().map(|t| t.table.as_str()).collect();
    tables.sort_unstable();
    let mut expected: Vec<&str> = QUIET_TABLES.iter().copied().chain([BUSY_TABLE]).collect();
    expected.sort_unstable();
    ensure!(tables == expected, "tables checked: {tables:?}");
    ensure!(report_table(&report, "big")?.rows == 200_000);
    ensure!(
        report_table(&report, "audit")?.rows == 3,
        "the trigger fired during the load"
    );
    let busy_rows = report_table(&report, BUSY_TABLE)?.rows;
    ensure!(
        busy_rows > written_before && busy_rows <= written_before + written_during + 1,
        "visits: {busy_rows} rows copied, {written_before} written before the copy, {written_during} during"
    );
    // The same rows, as an independent tool sees them.
    ensure!(
        rows_dump(target_db, &QUIET_TABLES)? == source_rows_before,
        "mariadb-dump prints different rows on the target"
    );
    ensure!(
        rows_dump(source_db, &QUIET_TABLES)? == source_rows_before,
        "the source's rows changed"
    );
    // The same schema, object by object.
    let (source_schema, target_schema) = (schema_of(source_db)?, schema_of(target_db)?);
    ensure!(source_schema.len() == target_schema.len());
    for (on_source, on_target) in source_schema.iter().zip(&target_schema) {
        ensure!(
            on_source == on_target,
            "schema differs:\n source: {on_source}\n target: {on_target}"
        );
    }
    for object in [
        "view customer_totals",
        "view big_summary",
        "routine PROCEDURE place_order",
        "routine FUNCTION with_vat",
        "trigger orders_audit",
        "event purge_audit",
    ] {
        ensure!(
            database.objects.iter().any(|o| o == object),
            "{object} missing from {:?}",
            database.objects
        );
    }
    // Progress counted it all.
    let snapshot = progress.snapshot();
    ensure!(
        snapshot.phase == format!("mariadb {ACCOUNT}"),
        "phase {:?}",
        snapshot.phase
    );
    ensure!(
        snapshot.tables_total == 8 && snapshot.tables_done == 8,
        "{snapshot:?}"
    );
    ensure!(
        snapshot.bytes_done == snapshot.bytes_total && snapshot.bytes_total > 0,
        "{snapshot:?}"
    );
    ensure!(
        snapshot.bytes_sent == database.bytes_received,
        "{snapshot:?}"
    );

    // Users: same names, same passwords, same privileges, on the target.
    ensure!(
        database.users == [format!("{ACCOUNT}@%"), format!("{RO_USER}@%")],
        "users {:?}",
        database.users
    );
    ensure!(
        database
            .skipped_users
            .iter()
            .any(|s| s.starts_with("mdbbob@%")),
        "skipped {:?}",
        database.skipped_users
    );
    let client = world.rig.client();
    let names = customer_sql(
        client,
        TARGET_ADDR,
        ACCOUNT,
        PASSWORD,
        "SELECT name FROM customers ORDER BY id",
    )?;
    ensure!(
        names.lines().next() == Some("Zoë 😀 Ünïcödé"),
        "alice reads {names:?}"
    );
    customer_sql(
        client,
        TARGET_ADDR,
        ACCOUNT,
        PASSWORD,
        "CALL place_order(3, 1.00)",
    )?;
    let totals = customer_sql(
        client,
        TARGET_ADDR,
        RO_USER,
        RO_PASSWORD,
        "SELECT orders FROM customer_totals WHERE id = 1",
    )?;
    ensure!(totals == "2", "the read-only user reads {totals:?}");
    customer_sql(
        client,
        TARGET_ADDR,
        RO_USER,
        RO_PASSWORD,
        "SELECT id, name FROM customers",
    )?;
    let denied = customer_sql(
        client,
        TARGET_ADDR,
        RO_USER,
        RO_PASSWORD,
        "SELECT email FROM customers",
    );
    ensure!(
        denied
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("denied")),
        "the read-only user read a column it has no grant on: {denied:?}"
    );
    let bob = customer_sql(client, TARGET_ADDR, "mdbbob", "bob-pw", "SELECT 1");
    ensure!(bob.is_err(), "another account's grantee was copied");
    let wrong = customer_sql(client, TARGET_ADDR, ACCOUNT, "not the password", "SELECT 1");
    ensure!(wrong.is_err(), "a wrong password was accepted");

    // Once writes stopped, a second pull starts afresh and matches the
    // source as it is now.
    let again = world.pull(ACCOUNT, &Progress::new(TRANSFER))??;
    let live = world.target.run_in(|| async {
        let channel = world.channel(TARGET_HOST)?;
        let live = MariadbSourceClient::new(channel)
            .checksum(MariadbChecksumRequest {
                transfer_id: TRANSFER.to_owned(),
                server: "main".to_owned(),
                database: ACCOUNT.to_owned(),
                tables: Vec::new(),
            })
            .await?
            .into_inner();
        Ok(live)
    })?;
    let again = again
        .databases
        .first()
        .context("no database in the second report")?;
    ensure!(
        live.tables.len() == again.tables.len(),
        "{} live checksums for {} tables",
        live.tables.len(),
        again.tables.len()
    );
    for live in &live.tables {
        let copied = again
            .tables
            .iter()
            .find(|t| t.table == live.table)
            .with_context(|| format!("{} not copied again", live.table))?;
        ensure!(
            (copied.rows, &copied.checksum) == (live.rows, &live.checksum),
            "{}: live source {} rows {}, copy {} rows {}",
            live.table,
            live.rows,
            live.checksum,
            copied.rows,
            copied.checksum
        );
    }
    ensure!(
        customer_sql(
            client,
            TARGET_ADDR,
            ACCOUNT,
            PASSWORD,
            "SELECT COUNT(*) FROM orders"
        )? == "3",
        "the second pull did not start from a fresh database"
    );
    Ok(())
}
