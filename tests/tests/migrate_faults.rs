//! *Migrate* survives `kill -9` (issue 10, item 5): the controller, the
//! source host's agent and the target host's agent are each killed in
//! each phase of a migration (copy, converge, freeze, after the point of
//! no return) and started again. Before the point of no return the
//! migration either completes or rolls back with the account serving
//! from its source; after it, it completes. Either way nothing
//! acknowledged is lost: the rows a writer committed and the lines it
//! appended to a file in the home are on the host the account ends on.
//!
//! One rig per killed daemon; its four kills hit four small accounts one
//! after the other. How each kill is timed (the test prints the phase it
//! saw just before the kill, and fails if it is not the one intended):
//!
//! - *copy*: killed as soon as `GetMigration` says `STATE_COPYING`; the
//!   account holds a 96 MB file, so the copy lasts seconds.
//! - *converge*: killed as soon as it says `STATE_CONVERGING`. The rig's
//!   controller enters the freeze only when no replication lag is left
//!   (`backlog_threshold_bytes = 0`) and measures every 2 s, and the
//!   writer keeps committing, so converging lasts as long as it writes.
//! - *freeze*: once converging, a session on the target holds the
//!   account's table locked (the subscription cannot apply, so the lag
//!   stays above zero and the freeze waits) while a 256 MB file is
//!   written into the home and the writer stops; then the lock goes. The
//!   freeze's last file pass carries that file, so the freeze lasts
//!   seconds (its deadline is raised to 60 s). Killed as soon as the
//!   freeze step recorded in the controller's state database that its
//!   freeze begins (the test waits for it inside that database). A
//!   controller killed there is followed by one that undoes that freeze
//!   and counts it missed ("the controller stopped during the freeze"),
//!   then freezes again: both are checked in the recorded attempts.
//! - *after the point of no return*: the same hold until the writer
//!   stopped, then killed as soon as it says `STATE_SWITCHED` (the old
//!   copy is kept 5 s before it is retired).
//!
//! The killed daemon is started again 2 s later. The writer writes to the
//! source's database directly, not through the account's processes, so
//! the freeze's fence does not hold it: "nothing lost" is checked for the
//! writes acknowledged before the freeze began (the recorded `frozenAt`)
//! when the migration completes, and for every acknowledged write when it
//! rolls back. In the freeze and after-the-switch scenarios the writer
//! stopped before the freeze, so that is every write.

mod support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use navette_tests::{
    Account, AccountSpec, Agent, AgentKind, Controller, ControllerSpec, PgVersion, Postgres, Rig,
};
use serde_json::{Value, json};
use support::{enrol, str_of};

/// What a rig does to the migration: kills a daemon (`kill -9`, started
/// again 2 s later), or cuts the link between the hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Controller,
    SourceAgent,
    TargetAgent,
}

impl Fault {
    fn short(self) -> &'static str {
        match self {
            Fault::Controller => "c",
            Fault::SourceAgent => "s",
            Fault::TargetAgent => "t",
        }
    }
}

/// The phase a kill is meant to hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Copy,
    Converge,
    Freeze,
    Switched,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Copy => "copy",
            Phase::Converge => "converge",
            Phase::Freeze => "freeze",
            Phase::Switched => "after the point of no return",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Phase::Copy => "copy",
            Phase::Converge => "conv",
            Phase::Freeze => "frz",
            Phase::Switched => "pnr",
        }
    }

    /// Whether `migration` (GetMigration's answer) is in this phase.
    fn seen_in(self, migration: &Value) -> bool {
        let state = str_of(migration, "state");
        match self {
            Phase::Copy => state == "STATE_COPYING",
            Phase::Converge => state == "STATE_CONVERGING",
            Phase::Freeze => {
                state == "STATE_FREEZING" && str_of(migration, "phase").starts_with("freezing")
            }
            Phase::Switched => state == "STATE_SWITCHED",
        }
    }
}

const PHASES: [Phase; 4] = [Phase::Copy, Phase::Converge, Phase::Freeze, Phase::Switched];

struct Platform {
    rig: Rig,
    controller: Controller,
    pg15: Postgres,
    pg18: Postgres,
    source_agent: Agent,
    target_agent: Agent,
    accounts: Vec<Account>,
}

fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

/// The rig's `[migrations]`: no test needed, the old copy retired (and
/// the forward ended) 5 s after the switch, the freeze entered only with no lag left (measured
/// every 2 s), and `freeze` (its deadline and tries).
fn migrations_config(freeze: &str) -> String {
    format!(
        "\n[migrations]\nrequire_recent_test = false\nretire_after_secs = 5\nforward_for_secs = 5\n\
         backlog_threshold_bytes = 0\nconverge_poll_ms = 2000\n{freeze}\n"
    )
}

fn platform(
    name: &str,
    fault: Fault,
    phases: &[Phase],
    extra_config: String,
) -> anyhow::Result<Platform> {
    let rig = Rig::new(name)?;
    let controller = support::controller(
        &rig,
        ControllerSpec {
            extra_config,
            ..ControllerSpec::default()
        },
    )?;
    let old = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let new = rig.add_namespace("shared-new", Ipv4Addr::new(192, 0, 2, 11))?;
    let (pg15, pg18) = std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| old.start_postgres(&rig, PgVersion::V15, 5432));
        let b = s.spawn(|| new.start_postgres(&rig, PgVersion::V18, 5432));
        Ok((join("pg15", a.join())?, join("pg18", b.join())?))
    })?;
    // One small account per kill, made before the agents start so that
    // their first inventory lists them.
    let mut accounts = Vec::new();
    for &phase in phases {
        let name = account_name(fault, phase);
        let database = format!("{name}_db");
        let account = rig.add_account(
            &old,
            AccountSpec {
                name: name.clone(),
                password: format!("{name}-S3cret"),
                pg_databases: vec![database.clone()],
                files: true,
                ..AccountSpec::default()
            },
        )?;
        pg15.psql(
            &database,
            &format!(
                "SET ROLE {name};
                 CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL);
                 INSERT INTO orders (item) SELECT 'seed ' || g FROM generate_series(1, 2000) g;"
            ),
        )?;
        if phase == Phase::Copy {
            support::random_file(&account.home.join("big.bin"), 96, &name)?;
        }
        accounts.push(account);
    }
    let source_agent = enrol(&rig, &old, AgentKind::Shared, "2024.1")?;
    let target_agent = enrol(&rig, &new, AgentKind::Shared, "2026.1")?;
    Ok(Platform {
        rig,
        controller,
        pg15,
        pg18,
        source_agent,
        target_agent,
        accounts,
    })
}

fn account_name(fault: Fault, phase: Phase) -> String {
    format!("nvf_{}_{}", fault.short(), phase.short())
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

    fn kill9(&self, fault: Fault) {
        match fault {
            Fault::Controller => self.controller.kill9(),
            Fault::SourceAgent => self.source_agent.kill9(),
            Fault::TargetAgent => self.target_agent.kill9(),
        }
    }

    fn restart(&self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Controller => self.controller.restart(),
            Fault::SourceAgent => self.source_agent.restart(),
            Fault::TargetAgent => self.target_agent.restart(),
        }
    }
}

/// What the writer had acknowledged: (number, when).
#[derive(Default)]
struct Acknowledged {
    orders: Vec<(u64, SystemTime)>,
    lines: Vec<(u64, SystemTime)>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn before(writes: &[(u64, SystemTime)], at: Option<SystemTime>) -> Vec<u64> {
    writes
        .iter()
        .filter(|(_, when)| at.is_none_or(|at| *when < at))
        .map(|(n, _)| *n)
        .collect()
}

/// The md5 of a file, by `md5sum`.
fn md5(path: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("md5sum").arg(path).output()?;
    ensure!(out.status.success(), "md5sum {}", path.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// What one scenario saw, printed at the end.
struct Seen {
    fault: Fault,
    phase: Phase,
    state_at_kill: String,
    phase_at_kill: String,
    outcome: String,
    orders: usize,
    lines: usize,
    /// The freezes tried and missed, and the last one's window.
    freezes: String,
}

/// One kill: a fresh account migrates while a writer writes; `fault` is
/// killed in `phase` and started again; the outcome is checked.
fn scenario(platform: &Platform, fault: Fault, phase: Phase) -> anyhow::Result<Seen> {
    let (rig, pg15, pg18) = (&platform.rig, &platform.pg15, &platform.pg18);
    let name = account_name(fault, phase);
    let database = format!("{name}_db");
    let account = platform
        .accounts
        .iter()
        .find(|a| a.name == name)
        .with_context(|| format!("account {name}"))?;
    support::wait_account_databases(rig, &name, 1)?;

    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Acknowledged::default());
    let journal = account.home.join("journal.txt");
    let late_file = account.home.join("late.bin");
    // Its digest as written: the old home is gone once retired.
    let late_digest = std::sync::OnceLock::new();
    let (id, state_at_kill, phase_at_kill) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> anyhow::Result<()> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // A fat row, so that the lag stays above zero while the
                // writer writes.
                if pg15
                    .psql(
                        &database,
                        &format!(
                            "INSERT INTO orders (item) VALUES ('live {n}:' || repeat('x', 4000))"
                        ),
                    )
                    .is_ok()
                {
                    lock(&acknowledged).orders.push((n, SystemTime::now()));
                }
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&journal)?;
                writeln!(file, "line {n}")?;
                file.sync_all()?;
                lock(&acknowledged).lines.push((n, SystemTime::now()));
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        let killed = (|| -> anyhow::Result<(String, String, String)> {
            let started = platform.migrations(
                "Migrate",
                json!({"request_id": format!("m-{name}"), "account": name,
                       "migration_id": "postgresql-15-to-18", "acknowledge_irreversible": true}),
            )?;
            let id = str_of(&started, "id").to_owned();
            if matches!(phase, Phase::Freeze | Phase::Switched) {
                // Converging, and measured above the threshold: the next
                // measure is 2 s away. A session on the target holds the
                // table's lock, so the subscription cannot apply and the
                // lag stays above zero until the writer has stopped (and
                // the late file is whole): then the lock goes and the
                // freeze follows.
                watch_until(platform, &id, Phase::Converge, Duration::from_secs(180))?;
                platform.rig.wait_until(
                    "a backlog measured above the threshold",
                    Duration::from_secs(60),
                    || {
                        let now = platform.migrations("GetMigration", json!({"id": id}))?;
                        Ok(str_of(&now, "phase").contains("above the threshold"))
                    },
                )?;
                let hold = scope.spawn(|| {
                    pg18.psql(
                        &database,
                        "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; \
                         SELECT pg_sleep(120), 'nvf hold'; COMMIT;",
                    )
                });
                platform.rig.wait_until(
                    "the target's table locked",
                    Duration::from_secs(20),
                    || {
                        Ok(pg18.psql(
                            &database,
                            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                             WHERE c.relname = 'orders' AND l.mode = 'AccessExclusiveLock' AND l.granted",
                        )? == "1")
                    },
                )?;
                if phase == Phase::Freeze {
                    support::random_file(&late_file, 256, &name)?;
                    let _ = late_digest.set(md5(&late_file)?);
                }
                stop.store(true, Ordering::Relaxed);
                pg18.psql(
                    &database,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE query LIKE '%nvf hold%' AND pid <> pg_backend_pid()",
                )?;
                // Its psql ends with the terminated session's error.
                let _ = join("the lock's session", hold.join());
            }
            let (state, seen_phase) = if phase == Phase::Freeze {
                // Inside the freeze itself: its step recorded, in the
                // state database, that its freeze begins (seen there
                // without a poll's delay).
                support::wait_freeze_started(&platform.controller, &id, Duration::from_secs(180))?;
                (
                    "STATE_FREEZING".to_owned(),
                    "its freeze begun, as the freeze step recorded".to_owned(),
                )
            } else {
                let seen = watch_until(platform, &id, phase, Duration::from_secs(180))?;
                (
                    str_of(&seen, "state").to_owned(),
                    str_of(&seen, "phase").to_owned(),
                )
            };
            platform.kill9(fault);
            Ok((id, state, seen_phase))
        })();
        let restarted = if killed.is_ok() {
            std::thread::sleep(Duration::from_secs(2));
            platform.restart(fault)
        } else {
            Ok(())
        };
        stop.store(true, Ordering::Relaxed);
        join("the writer", writer.join())?;
        let killed = killed?;
        restarted.context("restarting the killed daemon")?;
        Ok::<_, anyhow::Error>(killed)
    })?;
    eprintln!(
        "{fault:?} in {}: it saw {state_at_kill} ({phase_at_kill})",
        phase.name()
    );

    // The outcome: completed, or (before the point of no return) rolled
    // back.
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
    let outcome = str_of(&last, "state").to_owned();
    let placed = rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": name}))?;
    let host = str_of(&placed, "hostId").to_owned();
    let acknowledged = lock(&acknowledged);
    let (server, home, frozen_at): (&Postgres, PathBuf, Option<SystemTime>) = match outcome.as_str()
    {
        "STATE_COMPLETED" => {
            ensure!(
                host == "shared-new",
                "{name}: completed, the account is placed on the target: {placed}"
            );
            let at = str_of(&last["freezeWindow"], "frozenAt");
            let at: SystemTime = chrono::DateTime::parse_from_rfc3339(at)
                .with_context(|| format!("frozenAt of {last}"))?
                .with_timezone(&chrono::Utc)
                .into();
            let home = last["progress"]["targetHome"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (pg18, PathBuf::from(home), Some(at))
        }
        _ => {
            ensure!(
                phase != Phase::Switched,
                "{name}: killed after the point of no return, the migration must complete: {last}"
            );
            ensure!(
                host == "shared-old",
                "{name}: rolled back, the account stays on its source: {placed}"
            );
            // The source serves as before: it takes a write.
            pg15.psql(
                &database,
                "INSERT INTO orders (item) VALUES ('after the rollback')",
            )?;
            let leftover = pg18.psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"),
            )?;
            ensure!(
                leftover == "0",
                "{name}: the target's partial copy is removed"
            );
            (pg15, account.home.clone(), None)
        }
    };
    let orders = before(&acknowledged.orders, frozen_at);
    ensure!(!orders.is_empty(), "{name}: the writer wrote");
    let found = support::live_orders(server, &database)?;
    for n in &orders {
        ensure!(
            found.contains(n),
            "{name} ({outcome}): order {n}, acknowledged, is on the host the account ends on"
        );
    }
    let duplicates = server.psql(
        &database,
        "SELECT count(*) - count(DISTINCT item) FROM orders",
    )?;
    ensure!(duplicates.trim() == "0", "{name}: no order twice");
    let copied = std::fs::read_to_string(home.join("journal.txt"))
        .with_context(|| format!("{name}: the journal in {}", home.display()))?;
    let lines: Vec<&str> = copied.lines().collect();
    let acknowledged_lines = before(&acknowledged.lines, frozen_at);
    for n in &acknowledged_lines {
        ensure!(
            lines.get(usize::try_from(*n).unwrap_or(usize::MAX) - 1)
                == Some(&format!("line {n}").as_str()),
            "{name} ({outcome}): line {n}, acknowledged, is in the journal on the host the account ends on, in order"
        );
    }
    if phase == Phase::Freeze && outcome == "STATE_COMPLETED" {
        ensure!(
            Some(&md5(&home.join("late.bin"))?) == late_digest.get(),
            "{name}: the file written before the freeze is whole on the target"
        );
    }
    if outcome == "STATE_COMPLETED" && matches!(phase, Phase::Freeze | Phase::Switched) {
        ensure!(
            orders.len() == acknowledged.orders.len(),
            "{name}: the writer stopped before the freeze, so every order counts"
        );
    }
    ensure!(
        pg15.psql("postgres", "SELECT count(*) FROM pg_replication_slots")? == "0",
        "{name}: no replication slot left on the source"
    );
    if fault == Fault::Controller && phase == Phase::Freeze {
        // The freeze the kill cut short is undone by the restarted
        // controller and counted missed; the next try switched.
        let missed = support::list(&last, "missedFreezes");
        ensure!(
            missed
                .iter()
                .any(|w| str_of(w, "missedBecause") == "the controller stopped during the freeze"),
            "{name}: the freeze cut short by the kill is recorded as missed: {last}"
        );
        if outcome == "STATE_COMPLETED" {
            let window = &last["freezeWindow"];
            let total: u64 = str_of(window, "totalMs").parse().unwrap_or(0);
            let parts: u64 = support::list(window, "parts")
                .iter()
                .map(|p| str_of(p, "ms").parse::<u64>().unwrap_or(0))
                .sum();
            ensure!(
                total > 0 && total <= FREEZE_DEADLINE_MS + 10_000 && parts <= total + 50,
                "{name}: the switched freeze's window ({total} ms, its parts {parts} ms) is plausible: {window}"
            );
        }
    }
    Ok(Seen {
        fault,
        phase,
        state_at_kill,
        phase_at_kill,
        outcome,
        orders: orders.len(),
        lines: acknowledged_lines.len(),
        freezes: format!(
            "{} freeze attempts, missed {:?} ms, window {} ms",
            last["freezeAttempts"],
            support::list(&last, "missedFreezes")
                .iter()
                .map(|w| format!("{} ({})", str_of(w, "totalMs"), str_of(w, "missedBecause")))
                .collect::<Vec<_>>(),
            str_of(&last["freezeWindow"], "totalMs")
        ),
    })
}

/// Polls GetMigration as fast as grpcurl answers until the migration is
/// in `phase`; fails if it ends or goes past it first.
fn watch_until(
    platform: &Platform,
    id: &str,
    phase: Phase,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let order = |state: &str| match state {
        "STATE_PREPARING" => 0,
        "STATE_COPYING" => 1,
        "STATE_REPLICATING" => 2,
        "STATE_CONVERGING" => 3,
        "STATE_FREEZING" => 4,
        "STATE_SWITCHED" => 5,
        _ => 6,
    };
    let wanted = match phase {
        Phase::Copy => 1,
        Phase::Converge => 3,
        Phase::Freeze => 4,
        Phase::Switched => 5,
    };
    loop {
        let now = platform.migrations("GetMigration", json!({"id": id}))?;
        if phase.seen_in(&now) {
            return Ok(now);
        }
        let state = str_of(&now, "state");
        // A missed freeze goes back to converging: wait for the next.
        if order(state) > wanted && !(phase == Phase::Freeze && state == "STATE_FREEZING") {
            bail!(
                "migration {id} went past {} before it was seen: {now}",
                phase.name()
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "migration {id} did not reach {} in time: {now}",
                phase.name()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The freeze's deadline in these rigs: long, so that a kill lands inside
/// a freeze.
const FREEZE_DEADLINE_MS: u64 = 60_000;

fn run(name: &str, fault: Fault) -> anyhow::Result<()> {
    let platform = platform(
        name,
        fault,
        &PHASES,
        migrations_config(&format!("freeze_deadline_ms = {FREEZE_DEADLINE_MS}")),
    )?;
    support::wait_online_with_inventory(&platform.rig, &["shared-old", "shared-new"])?;
    let mut seen = Vec::new();
    for phase in PHASES {
        seen.push(
            scenario(&platform, fault, phase)
                .with_context(|| format!("{fault:?} in {}", phase.name()))?,
        );
    }
    for s in &seen {
        eprintln!(
            "{:?} in {}: seen {} ({}); outcome {}; {} orders and {} lines checked; {}",
            s.fault,
            s.phase.name(),
            s.state_at_kill,
            s.phase_at_kill,
            s.outcome,
            s.orders,
            s.lines,
            s.freezes
        );
    }
    Ok(())
}

#[test]
fn a_migration_survives_the_controller_killed_in_each_phase() -> anyhow::Result<()> {
    run("migfault_ctl", Fault::Controller)
}

#[test]
fn a_migration_survives_the_source_agent_killed_in_each_phase() -> anyhow::Result<()> {
    run("migfault_src", Fault::SourceAgent)
}

#[test]
fn a_migration_survives_the_target_agent_killed_in_each_phase() -> anyhow::Result<()> {
    run("migfault_tgt", Fault::TargetAgent)
}
