//! Failures injected inside a migration's freeze (issue 10, "Must show"):
//! the link between the hosts cut, and the target's disk full. Each
//! rolls back (one freeze allowed) with the source serving, nothing
//! acknowledged lost, and the freeze's deadline respected: the freeze
//! undone, its recorded window and the time the account's group stayed
//! frozen (watched from outside, in its cgroup) all within the deadline
//! plus [`SLACK`].
//!
//! How the fault lands inside the freeze: the freeze step records in the
//! controller's state database that its freeze begins, before it freezes
//! anything; the test waits for that inside the database (no poll's
//! delay) and injects the fault at once, while the account is frozen:
//!
//! - *link cut entering the freeze*: the target host's switch port goes
//!   down (the source and the controller no longer reach it) as soon as
//!   the migration is `freezing`, while its step starts the sites on the
//!   target: a try missed with nothing frozen, not a step the engine
//!   retries in the freezing state;
//! - *link cut*: the same, once the freeze began, until it is undone;
//! - *disk full*: the target's accounts directory is a 256 MB tmpfs,
//!   filled up with one file; the freeze's last file pass (the lines the
//!   account appended since the last pass, and the files a writer adds
//!   every 100 ms) cannot be written. The filler
//!   goes once the freeze is undone, so the rollback can proceed.
//!
//! One rig, two small accounts, one after the other. A writer commits
//! numbered rows on the source (as the database's owner, so the fence
//! does not hold it) and the account's own process appends numbered
//! lines in its home ([`LineAppender`], in the account's group: the
//! freeze stops it).

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use navette_tests::load::check_lines;
use navette_tests::{
    Account, AccountSpec, AgentKind, Controller, ControllerSpec, Netns, PgVersion, Postgres,
    PsqlSession, Rig, WebServer,
};
use serde_json::{Value, json};
use support::{enrol, str_of};

/// The freeze's deadline in this rig.
const DEADLINE_MS: u64 = 3000;
/// What the checks allow past the deadline: the undo's calls to the
/// source, the engine recording the outcome, the test's own polls.
const SLACK: Duration = Duration::from_millis(2500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The target's link cut as the migration enters the freezing state,
    /// while its freeze step starts the sites on the target (nothing
    /// frozen yet).
    LinkCutEntering,
    LinkCut,
    DiskFull,
}

const FAULTS: [Fault; 3] = [Fault::LinkCutEntering, Fault::LinkCut, Fault::DiskFull];

impl Fault {
    fn account(self) -> &'static str {
        match self {
            Fault::LinkCutEntering => "nvz_early",
            Fault::LinkCut => "nvz_link",
            Fault::DiskFull => "nvz_disk",
        }
    }

    /// When it strikes: the migration's row in the controller's state
    /// database.
    fn when(self) -> &'static str {
        match self {
            Fault::LinkCutEntering => "state = 'freezing'",
            Fault::LinkCut | Fault::DiskFull => "freeze_started IS NOT NULL",
        }
    }
}

struct Platform {
    /// Dropped first: unmounted (lazily) before the rig removes its
    /// directories.
    _small_disk: Tmpfs,
    rig: Rig,
    controller: Controller,
    old: Netns,
    new: Netns,
    pg15: Postgres,
    pg18: Postgres,
    accounts: Vec<Account>,
    /// The hosts' web servers: the freeze step starts the account's
    /// sites on the target first.
    _web: Vec<WebServer>,
}

/// A small tmpfs mounted over a directory, unmounted (lazily: the rig's
/// processes may still hold it) when dropped.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, megabytes: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0755")])
            .arg("tmpfs")
            .arg(at)
            .status()?;
        ensure!(status.success(), "mounting a tmpfs on {}", at.display());
        Ok(Tmpfs { at: at.to_owned() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

fn platform() -> anyhow::Result<Platform> {
    let rig = Rig::new("migfreeze")?;
    let controller = support::controller(
        &rig,
        ControllerSpec {
            extra_config: format!(
                "\n[migrations]\nrequire_recent_test = false\nretire_after_secs = 5\nforward_for_secs = 5\n\
                 converge_poll_ms = 1000\nfreeze_deadline_ms = {DEADLINE_MS}\nfreeze_tries = 1\n"
            ),
            ..ControllerSpec::default()
        },
    )?;
    let old = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let new = rig.add_namespace("shared-new", Ipv4Addr::new(192, 0, 2, 11))?;
    let small_disk = Tmpfs::mount(&new.accounts_dir(), 256)?;
    let web = vec![old.start_web_server(&rig)?, new.start_web_server(&rig)?];
    let (pg15, pg18) = std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| old.start_postgres(&rig, PgVersion::V15, 5432));
        let b = s.spawn(|| new.start_postgres(&rig, PgVersion::V18, 5432));
        Ok((join("pg15", a.join())?, join("pg18", b.join())?))
    })?;
    let mut accounts = Vec::new();
    for fault in FAULTS {
        let name = fault.account();
        let database = format!("{name}_db");
        accounts.push(rig.add_account(
            &old,
            AccountSpec {
                name: name.to_owned(),
                password: format!("{name}-S3cret"),
                pg_databases: vec![database.clone()],
                files: true,
                ..AccountSpec::default()
            },
        )?);
        pg15.psql(
            &database,
            &format!(
                "SET ROLE {name};
                 CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL);
                 INSERT INTO orders (item) SELECT 'seed ' || g FROM generate_series(1, 2000) g;"
            ),
        )?;
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
        accounts,
        _small_disk: small_disk,
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

    /// Injects `fault` inside the freeze.
    fn inject(&self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::LinkCutEntering | Fault::LinkCut => self.new.link_down(),
            Fault::DiskFull => {
                // Nearly every byte left in one call (no time for the pass
                // to slip through while a slow fill runs), the rest by
                // writing until the disk refuses: the copy may grow
                // between reading what is free and taking it (the
                // account's writer goes on until the freeze).
                let stats = nix::sys::statvfs::statvfs(&self.new.accounts_dir())
                    .context("statvfs of the target's accounts directory")?;
                let free = stats.blocks_available() * stats.fragment_size();
                let most = free.saturating_sub(FILL_MARGIN);
                std::fs::File::create(self.filler()).context("creating the filler")?;
                if most > 0 {
                    let status = std::process::Command::new("fallocate")
                        .args(["-l", &most.to_string()])
                        .arg(self.filler())
                        .status()
                        .context("fallocate")?;
                    ensure!(status.success(), "filling the target's disk");
                }
                fill_up(&self.filler_rest()).context("filling the rest of the target's disk")
            }
        }
    }

    /// Undoes `fault` once the freeze is undone.
    fn repair(&self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::LinkCutEntering | Fault::LinkCut => self.new.link_up(),
            Fault::DiskFull => {
                std::fs::remove_file(self.filler()).context("removing the filler")?;
                std::fs::remove_file(self.filler_rest()).context("removing the filler")
            }
        }
    }

    fn filler(&self) -> PathBuf {
        self.new.accounts_dir().join("filler.bin")
    }

    fn filler_rest(&self) -> PathBuf {
        self.new.accounts_dir().join("filler-rest.bin")
    }
}

/// What the disk-full fault leaves to [`fill_up`].
const FILL_MARGIN: u64 = 4 * 1024 * 1024;

/// Writes to `path` until the filesystem has no byte left (ENOSPC), in
/// smaller and smaller pieces.
fn fill_up(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let zeros = vec![0u8; 64 * 1024];
    for piece in [64 * 1024, 4096, 1] {
        loop {
            match file.write_all(&zeros[..piece]) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

/// A transaction of the account's database holding its table's write
/// lock (as an INSERT does) until committed.
fn write_in_flight(pg15: &Postgres, database: &str) -> anyhow::Result<PsqlSession> {
    let mut session = pg15.psql_session(database)?;
    session.send(
        "SET application_name = 'write-in-flight'; BEGIN; LOCK TABLE orders IN ROW EXCLUSIVE MODE;",
    )?;
    let started = Instant::now();
    loop {
        let held = pg15.psql(
            database,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'write-in-flight' AND l.mode = 'RowExclusiveLock' \
             AND l.granted AND l.relation = 'orders'::regclass",
        )?;
        if held == "1" {
            return Ok(session);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the write in flight did not take its lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one scenario saw, printed at the end.
struct Seen {
    fault: Fault,
    undone_after: Duration,
    frozen_longest: Duration,
    missed: String,
    orders: usize,
    lines: usize,
}

fn scenario(platform: &Platform, fault: Fault) -> anyhow::Result<Seen> {
    let (rig, pg15, pg18) = (&platform.rig, &platform.pg15, &platform.pg18);
    let name = fault.account();
    let database = format!("{name}_db");
    let account = platform
        .accounts
        .iter()
        .find(|a| a.name == name)
        .with_context(|| format!("account {name}"))?;
    support::wait_account_databases(rig, name, 1)?;
    let group = support::account_cgroup(&platform.old, name);
    let lines = support::account_lines(rig, &platform.old, account)?;
    let lines_file = account.home.join("lines.txt");
    let frozen = support::FrozenWatch::start(group);

    let stop = AtomicBool::new(false);
    let orders: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let (id, undone_after) = std::thread::scope(|scope| {
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
                    orders.lock().unwrap_or_else(|p| p.into_inner()).push(n);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // New files in the home, 256 KB every 100 ms, owned by the
        // account: each freeze's last pass has files to create on the
        // target.
        let chunks = scope.spawn(|| -> anyhow::Result<()> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let path = account.home.join(format!("chunk-{n}.bin"));
                std::fs::write(&path, vec![u8::try_from(n % 251).unwrap_or(0); 256 << 10])
                    .with_context(|| format!("writing {}", path.display()))?;
                std::os::unix::fs::chown(&path, Some(account.uid), Some(account.gid))
                    .with_context(|| format!("chown {}", path.display()))?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        });
        let injected = (|| -> anyhow::Result<(String, Duration)> {
            let started = platform.migrations(
                "Migrate",
                json!({"request_id": format!("m-{name}"), "account": name,
                       "migration_id": "postgresql-15-to-18", "acknowledge_irreversible": true}),
            )?;
            let id = str_of(&started, "id").to_owned();
            // The disk fills while a write of the account's is in flight
            // as the freeze begins: the fence waits for it (as for any
            // customer's), so the freeze's last file pass comes after the
            // disk is full. Without it, the pass can be done before the
            // fill is.
            let in_flight = match fault {
                Fault::DiskFull => {
                    support::wait_migration_row(
                        &platform.controller,
                        &id,
                        "state = 'freezing'",
                        Duration::from_secs(240),
                    )?;
                    Some(write_in_flight(pg15, &database)?)
                }
                _ => None,
            };
            support::wait_migration_row(
                &platform.controller,
                &id,
                fault.when(),
                Duration::from_secs(240),
            )?;
            let at = Instant::now();
            platform.inject(fault)?;
            if let Some(mut write) = in_flight {
                write.send("COMMIT;")?;
                write.finish().context("the write in flight")?;
            }
            let undone = rig.wait_until(
                "the freeze undone with the fault in place",
                Duration::from_secs(60),
                || {
                    let now = platform.migrations("GetMigration", json!({"id": id}))?;
                    Ok(str_of(&now, "state") != "STATE_FREEZING")
                },
            );
            let undone_after = at.elapsed();
            let repaired = platform.repair(fault);
            undone.context("the freeze with the fault in place")?;
            repaired?;
            Ok((id, undone_after))
        })();
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
        let injected = injected?;
        join("the files writer", chunks.join())?;
        Ok::<_, anyhow::Error>(injected)
    })?;
    let lines_acknowledged = lines.stop().context("stopping the line appender")?;

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
    // One freeze allowed: the one the fault hit is missed, and the
    // migration rolls back.
    ensure!(
        str_of(&last, "state") == "STATE_FAILED",
        "{name}: the freeze {fault:?} hit rolls back: {last}"
    );
    let missed = support::list(&last, "missedFreezes");
    ensure!(
        missed.len() == 1,
        "{name}: one freeze tried and missed: {last}"
    );
    let deadline = Duration::from_millis(DEADLINE_MS);
    // proto3 JSON leaves a zero out.
    let recorded = match str_of(&missed[0], "totalMs") {
        "" => Duration::ZERO,
        ms => Duration::from_millis(ms.parse().unwrap_or(u64::MAX)),
    };
    ensure!(
        recorded <= deadline + SLACK,
        "{name}: the missed freeze is recorded within its deadline ({} ms) plus {} ms: {last}",
        DEADLINE_MS,
        SLACK.as_millis()
    );
    ensure!(
        undone_after <= deadline + SLACK,
        "{name}: the freeze was undone {} ms after the fault, past its deadline of {DEADLINE_MS} ms",
        undone_after.as_millis()
    );
    let frozen_longest = frozen.longest();
    drop(frozen);
    if fault != Fault::LinkCutEntering {
        ensure!(
            frozen_longest > Duration::ZERO,
            "{name}: the account's group was seen frozen"
        );
    }
    ensure!(
        frozen_longest <= deadline + SLACK,
        "{name}: the account stayed frozen {} ms, past its deadline of {DEADLINE_MS} ms",
        frozen_longest.as_millis()
    );

    // The source serves as before: placed there, its group thawed, its
    // database takes a write; the target's copy is gone.
    let placed = rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": name}))?;
    ensure!(
        str_of(&placed, "hostId") == "shared-old",
        "{name}: rolled back, the account stays on its source: {placed}"
    );
    ensure!(
        !support::group_frozen(&support::account_cgroup(&platform.old, name)),
        "{name}: the account's group is thawed on the source"
    );
    pg15.psql(
        &database,
        "INSERT INTO orders (item) VALUES ('after the rollback')",
    )?;
    ensure!(
        pg18.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"),
        )? == "0",
        "{name}: the target's partial copy is removed"
    );
    ensure!(
        pg15.psql(&database, "SELECT count(*) FROM pg_replication_slots")? == "0",
        "{name}: no replication slot left on the source"
    );
    // Nothing acknowledged lost.
    let acknowledged = orders.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(!acknowledged.is_empty(), "{name}: the writer wrote");
    let found = support::live_orders(pg15, &database)?;
    for n in &acknowledged {
        ensure!(
            found.contains(n),
            "{name}: order {n}, acknowledged, is on the source"
        );
    }
    let content = std::fs::read_to_string(&lines_file)
        .with_context(|| format!("reading {}", lines_file.display()))?;
    check_lines(&content, &lines_acknowledged)
        .with_context(|| format!("{name}: the lines the account appended, on the source"))?;
    Ok(Seen {
        fault,
        undone_after,
        frozen_longest,
        missed: format!(
            "{} ms ({})",
            str_of(&missed[0], "totalMs"),
            str_of(&missed[0], "missedBecause")
        ),
        orders: acknowledged.len(),
        lines: lines_acknowledged.numbers.len(),
    })
}

/// The link between the hosts cut (entering the freeze, and inside it),
/// then the target's disk full inside it: rolled back within the
/// deadline, nothing lost.
#[test]
fn failures_inside_the_freeze_roll_back_within_its_deadline() -> anyhow::Result<()> {
    let platform = platform()?;
    support::wait_online_with_inventory(&platform.rig, &["shared-old", "shared-new"])?;
    for fault in FAULTS {
        let s = scenario(&platform, fault).with_context(|| format!("{fault:?} in the freeze"))?;
        eprintln!(
            "{:?} in the freeze: undone {} ms after the fault, frozen {} ms at most (deadline {DEADLINE_MS} ms); missed freeze {}; {} orders and {} lines checked",
            s.fault,
            s.undone_after.as_millis(),
            s.frozen_longest.as_millis(),
            s.missed,
            s.orders,
            s.lines
        );
    }
    Ok(())
}
