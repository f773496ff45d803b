//! `navette-bench`: Navette's copies against the usual tools, side by side,
//! in one run, on the same machine, between two rig hosts (network
//! namespaces on a bridge). Figures, not a pass/fail test: see
//! docs/BENCHMARKS.md for the latest output.
//!
//! Navette is measured through the product itself: `Tests/TestMigration`
//! (and `RefreshTest`) on a real controller and real agents, from the call
//! to the test being ready.
//!
//! - Files: a generated tree (tens of thousands of small files and a few
//!   large ones, about 1 GB by default) copied by Navette, by `rsync -a`
//!   from an rsync daemon over TCP, and by `tar | tar` on the same
//!   filesystem (the local limit); then a re-copy with nothing changed and
//!   with 1% of the files changed, Navette (refresh) against rsync.
//! - PostgreSQL: a pgbench database (scale 50 by default) on PostgreSQL 15
//!   copied to PostgreSQL 18 by Navette, by `pg_dump -Fd -j 2` then
//!   `pg_restore -j 2` (PostgreSQL 18's tools), and by `pgcopydb clone`.
//!
//! Options (environment): NAVETTE_BENCH_SMALL_FILES (default 40000),
//! NAVETTE_BENCH_LARGE_MB (default 4 files of this size, 150),
//! NAVETTE_BENCH_PGBENCH_SCALE (50), NAVETTE_BENCH_PARTS (`files`,
//! `postgres`, or both, the default), NAVETTE_BENCH_ROUNDS (3: re-copies
//! and database copies are repeated, the tools taking turns, and the
//! medians count), NAVETTE_BIN_DIR (use release binaries: tests/bench.sh
//! does).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use navette_tests::{
    Account, AccountSpec, AgentKind, AgentSpec, ControllerSpec, Netns, PgVersion, Postgres, Rig,
};
use serde_json::json;

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    run_logged(command, what, None)
}

/// [`run`], keeping the command's output in `log` (kept with the rig by
/// `NAVETTE_RIG_KEEP=1`, for a look at the tool's own timings).
fn run_logged(command: &mut Command, what: &str, log: Option<&Path>) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if let Some(log) = log {
        let mut text = output.stdout.clone();
        text.extend_from_slice(&output.stderr);
        let _ = std::fs::write(log, text);
    }
    if !output.status.success() {
        bail!(
            "{what}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn timed(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    eprint!("  {what}... ");
    let _ = std::io::stderr().flush();
    let started = Instant::now();
    f()?;
    let took = started.elapsed();
    eprintln!("{:.2} s", took.as_secs_f64());
    Ok(took)
}

/// [`timed`] for Navette's copies, also printing the CPU time the agents
/// (source and target) used: steadier than wall time on a shared machine,
/// and what the agents' own work costs beside the servers'.
fn timed_navette(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let before = agents_cpu();
    let took = timed(what, f)?;
    eprintln!(
        "    (the agents used {:.2} s of CPU)",
        agents_cpu() - before
    );
    Ok(took)
}

/// User and system CPU seconds of every running navette-agent process.
fn agents_cpu() -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0u64;
    for process in processes.flatten() {
        let Ok(stat) = std::fs::read_to_string(process.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... utime stime: fields 14 and 15, counted after
        // the command name's closing parenthesis.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if !head.ends_with("(navette-agent") {
            continue;
        }
        let fields: Vec<&str> = rest.split(' ').collect();
        let field = |n: usize| {
            fields
                .get(n)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field(11) + field(12);
    }
    total as f64 / ticks
}

/// Before each database copy: a checkpoint on both servers (so no tool
/// pays for the checkpoint that the previous one's writes, or pgbench's,
/// would trigger), then a cold page cache.
fn quiesce(source_pg: &Postgres, target_pg: &Postgres) -> anyhow::Result<()> {
    source_pg.psql("postgres", "CHECKPOINT")?;
    target_pg.psql("postgres", "CHECKPOINT")?;
    drop_caches();
    Ok(())
}

/// Drops the page cache so that every copy reads from disk alike.
fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn generate_tree(root: &Path, owner: &str, small: u64, large_mb: u64) -> anyhow::Result<u64> {
    let script = r#"
set -e
root=$1; small=$2; large=$3; owner=$4
mkdir -p "$root/site"
python3 - "$root/site" "$small" <<'PY'
import os, sys, random
root, count = sys.argv[1], int(sys.argv[2])
random.seed(42)
for i in range(count):
    d = os.path.join(root, "d%03d" % (i % 400), "e%02d" % (i % 17))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d.txt" % i), "wb") as f:
        f.write(os.urandom(random.randint(200, 24000)))
PY
mkdir -p "$root/media"
for i in 1 2 3 4; do dd if=/dev/urandom of="$root/media/big$i.bin" bs=1M count="$large" status=none; done
chown -R "$owner:$owner" "$root"
du -sb "$root" | cut -f1
"#;
    let output = Command::new("sh")
        .args(["-c", script, "generate"])
        .arg(root)
        .arg(small.to_string())
        .arg(large_mb.to_string())
        .arg(owner)
        .output()?;
    ensure!(
        output.status.success(),
        "generating the tree: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

/// What the control panel asks for.
enum Press<'a> {
    /// *Test* for `account` (`request_id` makes it idempotent).
    Test {
        request_id: &'a str,
        account: &'a str,
        migration_id: &'a str,
    },
    /// *Refresh* of test `id`.
    Refresh { id: &'a str },
}

/// Presses *Test* or *Refresh* as the control panel does (one gRPC
/// connection with the panel's certificate, no process to start), then
/// follows `WatchTest` until the copy is ready; returns the test's id.
/// What is timed is Navette's work, from the call to the ready copy.
fn press_and_wait(rig: &Rig, press: Press<'_>) -> anyhow::Result<String> {
    use navette_proto::v1::{self, test::State};
    let access = rig.controller_access()?;
    rig.run_in(rig.client(), || async move {
        let mut tests = v1::tests_client::TestsClient::new(access.channel(&access.panel)?);
        let pressed = match press {
            Press::Test {
                request_id,
                account,
                migration_id,
            } => {
                tests
                    .test_migration(v1::TestMigrationRequest {
                        request_id: request_id.to_owned(),
                        account: account.to_owned(),
                        migration_id: migration_id.to_owned(),
                        ttl_seconds: 0,
                    })
                    .await?
            }
            Press::Refresh { id } => {
                tests
                    .refresh_test(v1::RefreshTestRequest { id: id.to_owned() })
                    .await?
            }
        }
        .into_inner();
        let mut events = tests
            .watch_test(v1::WatchTestRequest {
                id: pressed.id.clone(),
            })
            .await?
            .into_inner();
        while let Some(test) = events.message().await? {
            match test.state() {
                State::Ready if test.generation >= pressed.generation => return Ok(pressed.id),
                State::Failed => bail!("test {} failed: {}", test.id, test.error),
                _ => {}
            }
        }
        bail!(
            "WatchTest of {} ended before the copy was ready",
            pressed.id
        )
    })
}

struct Row {
    what: String,
    navette: Duration,
    others: Vec<(String, Duration)>,
}

/// Which parts to run: `NAVETTE_BENCH_PARTS`, a comma-separated list of
/// `files` and `postgres` (both by default).
fn parts() -> (bool, bool) {
    let parts = std::env::var("NAVETTE_BENCH_PARTS").unwrap_or_else(|_| "files,postgres".into());
    let has = |name: &str| parts.split(',').any(|p| p.trim() == name);
    (has("files"), has("postgres"))
}

fn main() -> anyhow::Result<()> {
    let small = env_u64("NAVETTE_BENCH_SMALL_FILES", 40_000);
    let large_mb = env_u64("NAVETTE_BENCH_LARGE_MB", 150);
    let scale = env_u64("NAVETTE_BENCH_PGBENCH_SCALE", 50);
    let (with_files, with_postgres) = parts();
    ensure!(
        with_files || with_postgres,
        "NAVETTE_BENCH_PARTS names neither files nor postgres"
    );
    let rig = Rig::new("bench")?;
    let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
    rig.start_controller(&ctl, ControllerSpec::default())?;
    let source = rig.add_namespace("shared-old", SOURCE)?;
    let target = rig.add_namespace("test-1", TARGET)?;
    let source_pg = source.start_postgres(&rig, PgVersion::V15, 5432)?;
    let target_pg = target.start_postgres(&rig, PgVersion::V18, 5432)?;

    // The accounts exist before the agents' first inventory.
    let mut accounts = Vec::new();
    let files_tree = if with_files {
        let account = rig.add_account(
            &source,
            AccountSpec {
                name: "nvbench_files".into(),
                password: "bench".into(),
                pg_databases: vec![],
                mariadb_databases: vec![],
                files: false,
            },
        )?;
        eprintln!("generating {small} small files and 4 x {large_mb} MB...");
        let bytes = generate_tree(&account.home, &account.name, small, large_mb)?;
        eprintln!("tree: {:.2} GB", bytes as f64 / 1e9);
        accounts.push(account.name.clone());
        Some((account, bytes))
    } else {
        None
    };
    if with_postgres {
        let account = rig.add_account(
            &source,
            AccountSpec {
                name: "nvbench_db".into(),
                password: "bench".into(),
                pg_databases: vec!["nvbench_db".into()],
                mariadb_databases: vec![],
                files: false,
            },
        )?;
        eprintln!("pgbench -i -s {scale}...");
        run(
            PgVersion::V15
                .command("pgbench")
                .arg("-i")
                .args(["-s", &scale.to_string(), "-q", "-h"])
                .arg(source_pg.socket_dir())
                .args(["-p", "5432", "-U", "nvbench_db", "nvbench_db"]),
            "pgbench -i",
        )?;
        accounts.push(account.name.clone());
    }
    for (host, kind, stack) in [
        (&source, AgentKind::Shared, "2024.1"),
        (&target, AgentKind::Test, "2026.1"),
    ] {
        let token = rig.create_join_token(host.host(), kind)?;
        rig.start_agent(
            host,
            AgentSpec {
                kind,
                stack_version: stack.into(),
                token,
                // The first inventory is taken at start; a later one
                // would walk the 40,000 files in the middle of a timed
                // copy (warming the cache for whichever tool runs next).
                inventory_interval_secs: 3600,
                ..AgentSpec::default()
            },
        )?;
    }
    rig.wait_until(
        "inventory with the bench's accounts",
        Duration::from_secs(300),
        || {
            let listed = rig.grpcurl_json(
                "navette.v1.Accounts/ListAccounts",
                &json!({"host_id": "shared-old"}),
            )?;
            let listed = listed["accounts"].as_array().cloned().unwrap_or_default();
            Ok(accounts.iter().all(|name| {
                listed.iter().any(|a| {
                    a["name"] == name.as_str()
                        && (a["homeFiles"].as_str().is_some() || name == "nvbench_db")
                })
            }))
        },
    )?;

    let mut rows = Vec::new();
    if let Some((account, bytes)) = &files_tree {
        rows.extend(bench_files(&rig, &source, &target, account, *bytes, small)?);
    }
    if with_postgres {
        rows.push(bench_postgres(
            &rig, &target, &source_pg, &target_pg, scale,
        )?);
    }
    print_table(&rows);
    Ok(())
}

/// The file rows: initial copy, no-change re-copy, 1% changed re-copy.
fn bench_files(
    rig: &Rig,
    source: &Netns,
    target: &Netns,
    files_account: &Account,
    bytes: u64,
    small: u64,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    eprintln!("files, initial copy:");
    let copy_home = target.accounts_dir().join("nvbench_files");
    drop_caches();
    let mut test_id = String::new();
    let navette_initial = timed_navette("navette (TestMigration)", || {
        test_id = press_and_wait(
            rig,
            Press::Test {
                request_id: "bench-files",
                account: "nvbench_files",
                migration_id: "stack-2024.1-to-2026.1",
            },
        )?;
        Ok(())
    })?;
    // rsync daemon on the source, client on the target, over TCP.
    let rsync_conf = rig.dir().join("rsyncd.conf");
    std::fs::write(
        &rsync_conf,
        format!(
            "uid = root\ngid = root\nuse chroot = no\n[home]\npath = {}\nread only = yes\n",
            files_account.home.display()
        ),
    )?;
    let daemon = rig.spawn(source, "rsyncd", {
        let (source, conf) = (source.clone(), rsync_conf.clone());
        move || {
            let mut command = source.command("rsync");
            command
                .arg("--daemon")
                .arg("--no-detach")
                .arg(format!("--config={}", conf.display()))
                .arg(format!("--address={SOURCE}"));
            command
        }
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rsync_dir = target.root().join("rsync-copy");
    let rsync = |what: &str| -> anyhow::Result<Duration> {
        timed(what, || {
            run(
                target
                    .command("rsync")
                    .arg("-a")
                    .arg(format!("rsync://{SOURCE}/home/"))
                    .arg(format!("{}/", rsync_dir.display())),
                "rsync",
            )
        })
    };
    drop_caches();
    let rsync_initial = rsync("rsync -a (daemon, TCP)")?;
    let tar_dir = target.root().join("tar-copy");
    std::fs::create_dir_all(&tar_dir)?;
    drop_caches();
    let tar = timed("tar | tar (same filesystem)", || {
        run(
            Command::new("sh").arg("-c").arg(format!(
                "tar -C {} -cf - . | tar -C {} -xpf -",
                files_account.home.display(),
                tar_dir.display()
            )),
            "tar | tar",
        )
    })?;
    rows.push(Row {
        what: format!(
            "initial copy, {:.2} GB, {} files",
            bytes as f64 / 1e9,
            small + 4
        ),
        navette: navette_initial,
        others: vec![
            ("rsync -a".into(), rsync_initial),
            ("tar-to-tar pipe".into(), tar),
        ],
    });

    // Re-copies are short and vary from one run to the next: each is done
    // `rounds` times, Navette and rsync taking turns, and the medians count.
    let rounds = rounds();
    let recopy = |what: &str, change: &dyn Fn() -> anyhow::Result<()>| {
        eprintln!("files, {what}:");
        let (mut navette, mut other) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            eprintln!("  round {round} of {rounds}:");
            change()?;
            drop_caches();
            navette.push(timed_navette("  navette (RefreshTest)", || {
                press_and_wait(rig, Press::Refresh { id: &test_id }).map(drop)
            })?);
            drop_caches();
            other.push(rsync("  rsync -a")?);
        }
        Ok::<_, anyhow::Error>(Row {
            what: format!("{what}, median of {rounds}"),
            navette: median(&mut navette),
            others: vec![("rsync -a".into(), median(&mut other))],
        })
    };
    rows.push(recopy("re-copy, nothing changed", &|| Ok(()))?);
    rows.push(recopy("re-copy, 1% of the files changed", &|| {
        run(
            Command::new("sh").arg("-c").arg(format!(
                "find {} -name '*.txt' | awk 'NR % 100 == 0' | while read f; do head -c 300 /dev/urandom >> \"$f\"; done",
                files_account.home.display()
            )),
            "changing 1% of the files",
        )
    })?);
    daemon.kill9();
    let same = Command::new("diff")
        .arg("-rq")
        .arg(&files_account.home)
        .arg(&copy_home)
        .output()?;
    ensure!(
        same.status.success(),
        "the Navette copy differs: {}",
        String::from_utf8_lossy(&same.stdout)
    );
    let _ = std::fs::remove_dir_all(&rsync_dir);
    let _ = std::fs::remove_dir_all(&tar_dir);

    Ok(rows)
}

/// The PostgreSQL row: a pgbench database from 15 to 18.
fn bench_postgres(
    rig: &Rig,
    target: &Netns,
    source_pg: &Postgres,
    target_pg: &Postgres,
    scale: u64,
) -> anyhow::Result<Row> {
    eprintln!("PostgreSQL 15 -> 18, pgbench scale {scale}:");
    let db_size = source_pg.psql(
        "nvbench_db",
        "SELECT pg_size_pretty(pg_database_size('nvbench_db'))",
    )?;
    source_pg.psql("postgres", "ALTER ROLE postgres PASSWORD 'bench'")?;
    let source_url =
        format!("host={SOURCE} port=5432 user=postgres password=bench dbname=nvbench_db");
    let pgcopydb = Command::new("pgcopydb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !pgcopydb {
        eprintln!("  pgcopydb is not installed (apt-get install pgcopydb): skipped");
    }
    // Each tool copies the database `rounds` times, the tools taking turns,
    // and the median counts: one run of any tool varies by 10% here.
    let rounds = rounds();
    let (mut navette, mut dump_restore, mut clone) = (Vec::new(), Vec::new(), Vec::new());
    let mut test_id = String::new();
    for round in 1..=rounds {
        eprintln!("  round {round} of {rounds}:");
        quiesce(source_pg, target_pg)?;
        // The first round presses Test; the next ones Refresh, which copies
        // the database again whole (dropping the earlier copy first, within
        // the time counted).
        navette.push(if round == 1 {
            timed_navette("  navette (TestMigration)", || {
                test_id = press_and_wait(
                    rig,
                    Press::Test {
                        request_id: "bench-db",
                        account: "nvbench_db",
                        migration_id: "postgresql-15-to-18",
                    },
                )?;
                Ok(())
            })?
        } else {
            timed_navette("  navette (RefreshTest)", || {
                press_and_wait(rig, Press::Refresh { id: &test_id }).map(drop)
            })?
        });

        let dump_dir = target.root().join("dump");
        let _ = std::fs::remove_dir_all(&dump_dir);
        target_pg.psql("postgres", "DROP DATABASE IF EXISTS bench_dump")?;
        target_pg.psql("postgres", "CREATE DATABASE bench_dump")?;
        quiesce(source_pg, target_pg)?;
        dump_restore.push(timed(
            "  pg_dump -Fd -j 2 + pg_restore -j 2 (PostgreSQL 18 tools)",
            || {
                let mut dump = PgVersion::V18.command("pg_dump");
                dump.args(["-Fd", "-j", "2", "-f"])
                    .arg(&dump_dir)
                    .arg(&source_url);
                run(&mut target_wrap(target, dump), "pg_dump")?;
                let mut restore = PgVersion::V18.command("pg_restore");
                restore
                    .args(["-j", "2", "-h"])
                    .arg(target_pg.socket_dir())
                    .args(["-U", "postgres", "-d", "bench_dump"])
                    .arg(&dump_dir);
                run(&mut restore, "pg_restore")
            },
        )?);

        if !pgcopydb {
            continue;
        }
        let work = target.root().join("pgcopydb");
        let _ = std::fs::remove_dir_all(&work);
        target_pg.psql("postgres", "DROP DATABASE IF EXISTS bench_pgcopydb")?;
        target_pg.psql("postgres", "CREATE DATABASE bench_pgcopydb")?;
        let target_url = format!(
            "host={} port=5432 user=postgres dbname=bench_pgcopydb",
            target_pg.socket_dir().display()
        );
        quiesce(source_pg, target_pg)?;
        clone.push(timed("  pgcopydb clone", || {
            let mut command = Command::new("pgcopydb");
            command
                .args([
                    "clone",
                    "--source",
                    &source_url,
                    "--target",
                    &target_url,
                    "--dir",
                ])
                .arg(&work)
                .args([
                    "--table-jobs",
                    "2",
                    "--index-jobs",
                    "2",
                    "--no-owner",
                    "--no-acl",
                ]);
            run_logged(
                &mut target_wrap(target, command),
                "pgcopydb clone",
                Some(&target.root().join("pgcopydb.log")),
            )
        })?);
    }
    let mut others = vec![("pg_dump + pg_restore".to_owned(), median(&mut dump_restore))];
    if pgcopydb {
        others.push(("pgcopydb clone".into(), median(&mut clone)));
    }
    Ok(Row {
        what: format!(
            "pgbench scale {scale} ({}), 15 -> 18, median of {rounds}",
            db_size.trim()
        ),
        navette: median(&mut navette),
        others,
    })
}

/// How many times re-copies and database copies are measured
/// (`NAVETTE_BENCH_ROUNDS`, default 3).
fn rounds() -> usize {
    std::env::var("NAVETTE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// The middle value (of an odd count; the upper middle of an even one).
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// The side-by-side table: each tool's time, and Navette's time as a
/// fraction of it (below 1: Navette is faster).
fn print_table(rows: &[Row]) {
    println!();
    println!("| copy | Navette | other tools (Navette's time / theirs) |");
    println!("|---|---|---|");
    for row in rows {
        let others = row
            .others
            .iter()
            .map(|(name, took)| {
                format!(
                    "{name} {:.2} s ({:.2})",
                    took.as_secs_f64(),
                    row.navette.as_secs_f64() / took.as_secs_f64().max(0.001)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {:.2} s | {} |",
            row.what,
            row.navette.as_secs_f64(),
            others,
        );
    }
}

/// Runs `command` inside the target host's namespace.
fn target_wrap(target: &navette_tests::Netns, command: Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", target.name()])
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            wrapped.env(key, value);
        }
    }
    wrapped
}
