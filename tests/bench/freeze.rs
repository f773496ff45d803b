//! `navette-bench-freeze`: the freeze window of *Migrate* by account size,
//! under pgbench load, against a stop-copy-start move of the same account
//! (docs/BENCHMARKS.md, "Freeze window by account size"). Figures, not a
//! pass/fail test.
//!
//! The rig of tests/tests/migrate_load.rs: a controller, an old shared host
//! (PostgreSQL 15, MariaDB 10.11, durable commits) and a new one
//! (PostgreSQL 18, MariaDB 11.8), the account's domains and database host
//! name served by Knot. For each size and run, a fresh account gets a
//! generated home (tens of thousands of files, half the size) and a
//! pgbench database (the other half; scale 1 is about 15 MB) and a site;
//! then
//!
//! - stop-copy-start: the account's sites stopped (`StopSites`),
//!   `pg_dump -Fc | pg_restore` into PostgreSQL 18, `mariadb-dump |
//!   mariadb` into 11.8, `rsync -a` of the home to the new host's disk, the
//!   sites started (`StartSites`); its downtime is the whole duration;
//! - *Migrate* with pgbench running through the DNS name the whole time;
//!   the recorded freeze window and its parts come from `GetMigration`.
//!
//! Options (environment): BENCH_SIZES ("100M 1G 5G"), BENCH_RUNS (3),
//! NAVETTE_BIN_DIR (where the agent and controller binaries are).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use navette_proto::v1::agent_client::AgentClient;
use navette_proto::v1::{StartSitesRequest, StopSitesRequest};
use navette_tests::load::{PgbenchLoad, PgbenchTarget, pgbench_init_scaled};
use navette_tests::migration_load;
use navette_tests::{
    Agent, AgentKind, Controller, ControllerSpec, MariaDb, PgSpec, PgVersion, Postgres, Rig,
    ZoneSpec, sample_domains,
};
use serde_json::{Value, json};
use support::{list, str_of};

const OLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NEW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const DB_ZONE: &str = "db.example";
const OLD_TTL: u32 = 3;

/// One size asked for: its label ("100M") and bytes.
struct Size {
    label: String,
    bytes: u64,
}

fn sizes() -> anyhow::Result<Vec<Size>> {
    let text = std::env::var("BENCH_SIZES").unwrap_or_else(|_| "100M 1G 5G".into());
    text.split_whitespace()
        .map(|label| {
            let (number, unit) = label.split_at(label.len() - 1);
            let factor: u64 = match unit {
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => bail!("BENCH_SIZES: {label} is not <number>M or <number>G"),
            };
            let n: u64 = number
                .parse()
                .with_context(|| format!("BENCH_SIZES: {label}"))?;
            Ok(Size {
                label: label.to_owned(),
                bytes: n * factor,
            })
        })
        .collect()
}

/// One measured run of one size.
struct Run {
    files: u64,
    home_bytes: u64,
    db_size: String,
    freeze_ms: u64,
    parts: BTreeMap<String, u64>,
    migrate: Duration,
    stop_copy_start: Duration,
}

fn median_u64(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn median_dur(values: &mut [Duration]) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Writes `files` files (sizes around `small_bytes / files`) and fills
/// the rest of `bytes` with a few large ones, owned by `owner`; returns
/// the home's size in bytes.
fn generate_home(
    home: &Path,
    owner: &str,
    files: u64,
    small_bytes: u64,
    bytes: u64,
) -> anyhow::Result<u64> {
    let script = r#"
set -e
root=$1; count=$2; small=$3; total=$4; owner=$5
python3 - "$root/data" "$count" "$small" "$total" <<'PY'
import os, sys, random
root, count, small, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(7)
avg = max(small // count, 64)
written = 0
for i in range(count):
    d = os.path.join(root, "d%03d" % (i % 300), "e%02d" % (i % 13))
    os.makedirs(d, exist_ok=True)
    n = random.randint(avg // 2, avg * 3 // 2)
    with open(os.path.join(d, "f%06d.txt" % i), "wb") as f:
        f.write(os.urandom(n))
    written += n
left = total - written
os.makedirs(os.path.join(root, "media"), exist_ok=True)
chunk = 8 << 20
i = 0
while left > 0:
    size = min(left, 256 << 20)
    with open(os.path.join(root, "media", "big%02d.bin" % i), "wb") as f:
        w = 0
        while w < size:
            n = min(chunk, size - w)
            f.write(os.urandom(n))
            w += n
    left -= size
    i += 1
PY
chown -R "$owner:$owner" "$root/data"
du -sb "$root" | cut -f1
"#;
    let output = Command::new("sh")
        .args(["-c", script, "generate"])
        .arg(home)
        .arg(files.to_string())
        .arg(small_bytes.to_string())
        .arg(bytes.to_string())
        .arg(owner)
        .output()?;
    ensure!(
        output.status.success(),
        "generating the home: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

/// Runs `first | second`; fails if either fails.
fn pipe(mut first: Command, mut second: Command, what: &str) -> anyhow::Result<()> {
    let mut a = first
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: starting the first command"))?;
    let out = a.stdout.take().context("no stdout")?;
    let b = second
        .stdin(out)
        .output()
        .with_context(|| format!("{what}: running the second command"))?;
    let a = a.wait_with_output()?;
    ensure!(
        a.status.success() && b.status.success(),
        "{what}: {}{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stdout),
        String::from_utf8_lossy(&b.stderr)
    );
    Ok(())
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    ensure!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn migrations(rig: &Rig, method: &str, request: Value) -> anyhow::Result<Value> {
    let access = rig.controller_access()?;
    rig.grpcurl_json_as(
        &access.panel,
        &format!("navette.v1.Migrations/{method}"),
        &request,
    )
}

fn sites(
    rig: &Rig,
    agent: &Agent,
    controller: &Controller,
    account: &str,
    start: bool,
) -> anyhow::Result<()> {
    rig.client().run_in(|| async {
        let channel = agent.controller_channel(controller)?;
        let mut client = AgentClient::new(channel);
        if start {
            client
                .start_sites(StartSitesRequest {
                    account: account.to_owned(),
                    ..StartSitesRequest::default()
                })
                .await
                .map(drop)
        } else {
            client
                .stop_sites(StopSitesRequest {
                    account: account.to_owned(),
                })
                .await
                .map(drop)
        }
        .map_err(|status| anyhow::anyhow!("Start/StopSites: {status:?}"))
    })
}

/// The hosts and servers every run uses.
struct Setup<'a> {
    rig: &'a Rig,
    controller: &'a Controller,
    old_agent: &'a Agent,
    pg15: &'a Postgres,
    pg18: &'a Postgres,
    maria_old: &'a MariaDb,
    maria_new: &'a MariaDb,
    new_root: &'a Path,
}

/// The stop-copy-start move of `account`'s data to the new host's servers
/// and disk (copies under other names, dropped afterwards).
fn stop_copy_start(s: &Setup, account: &navette_tests::Account) -> anyhow::Result<Duration> {
    let name = &account.name;
    let pg_db = &account.pg_databases[0];
    let maria_db = &account.mariadb_databases[0];
    let copy_pg = format!("{pg_db}_scs");
    let copy_maria = format!("{maria_db}_scs");
    let copy_home = s.new_root.join("scs").join(name);
    s.pg18
        .psql("postgres", &format!("DROP DATABASE IF EXISTS {copy_pg}"))?;
    s.pg18
        .psql("postgres", &format!("CREATE DATABASE {copy_pg}"))?;
    s.maria_new.sql(&format!(
        "DROP DATABASE IF EXISTS {copy_maria}; CREATE DATABASE {copy_maria}"
    ))?;
    let _ = std::fs::remove_dir_all(&copy_home);
    std::fs::create_dir_all(&copy_home)?;
    let _ = Command::new("sync").status();

    let started = Instant::now();
    sites(s.rig, s.old_agent, s.controller, name, false)?;
    let mut dump = PgVersion::V18.command("pg_dump");
    dump.args(["-Fc", "-h"]).arg(s.pg15.socket_dir()).args([
        "-p",
        &s.pg15.port().to_string(),
        "-U",
        "postgres",
        pg_db,
    ]);
    let mut restore = PgVersion::V18.command("pg_restore");
    restore
        .args(["--no-owner", "-h"])
        .arg(s.pg18.socket_dir())
        .args([
            "-p",
            &s.pg18.port().to_string(),
            "-U",
            "postgres",
            "-d",
            &copy_pg,
        ]);
    pipe(dump, restore, "pg_dump | pg_restore")?;
    let mut mdump = Command::new("mariadb-dump");
    mdump
        .arg("--no-defaults")
        .arg(format!("--socket={}", s.maria_old.socket().display()))
        .args(["-u", "root", "--single-transaction", maria_db]);
    let mut mload = Command::new("mariadb");
    mload
        .arg("--no-defaults")
        .arg(format!("--socket={}", s.maria_new.socket().display()))
        .args(["-u", "root", &copy_maria]);
    pipe(mdump, mload, "mariadb-dump | mariadb")?;
    run(
        Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", account.home.display()))
            .arg(format!("{}/", copy_home.display())),
        "rsync -a",
    )?;
    sites(s.rig, s.old_agent, s.controller, name, true)?;
    let took = started.elapsed();

    s.pg18
        .psql("postgres", &format!("DROP DATABASE IF EXISTS {copy_pg}"))?;
    s.maria_new
        .sql(&format!("DROP DATABASE IF EXISTS {copy_maria}"))?;
    let _ = std::fs::remove_dir_all(&copy_home);
    Ok(took)
}

fn one_run(s: &Setup, index: usize, size: &Size) -> anyhow::Result<Run> {
    let rig = s.rig;
    let name = format!("nvbf_{index}");
    let bench_db = format!("{name}_bench");
    let blog_db = format!("{name}_blog");
    let domains = sample_domains(&name);
    let old = s.pg15.host();
    let account = rig.add_account(
        old,
        navette_tests::AccountSpec {
            name: name.clone(),
            password: "bench-S3cret-9".into(),
            pg_databases: vec![bench_db.clone()],
            mariadb_databases: vec![blog_db.clone()],
            files: true,
        },
    )?;
    // Half in files, half in the pgbench database.
    let files_bytes = size.bytes / 2;
    let files = (files_bytes / 8192).clamp(10_000, 50_000);
    let small = (files_bytes / 2).min(files * 24_000);
    eprintln!("  generating {files} files, {} MB...", files_bytes >> 20);
    let home_bytes = generate_home(&account.home, &name, files, small, files_bytes)?;
    let scale = ((size.bytes / 2) / (15 << 20)).max(1) as u32;
    eprintln!("  pgbench -i -s {scale}...");
    let target = PgbenchTarget {
        host: format!("{}.{DB_ZONE}", name.replace('_', "-")),
        port: s.pg15.port(),
        user: name.clone(),
        password: account.password.clone(),
        dbname: bench_db.clone(),
    };
    pgbench_init_scaled(rig.client(), PgVersion::V15, &target, scale)?;
    s.pg15.psql(&bench_db, "VACUUM ANALYZE")?;
    let db_size = s.pg15.psql(
        &bench_db,
        &format!("SELECT pg_size_pretty(pg_database_size('{bench_db}'))"),
    )?;
    sites(rig, s.old_agent, s.controller, &name, true)?;
    rig.wait_until("the site answering", Duration::from_secs(30), || {
        Ok(old
            .http_get(rig, &domains[0], "/", Duration::from_secs(5))?
            .0
            == 200)
    })?;
    rig.wait_until(
        "the account's sites and databases in the inventory",
        Duration::from_secs(60),
        || {
            let found =
                rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": name}))?;
            Ok(list(&found, "databases").len() == 2 && !list(&found, "sites").is_empty())
        },
    )?;

    eprintln!("  stop-copy-start...");
    let stop_copy_start = stop_copy_start(s, &account)?;
    eprintln!("  stop-copy-start: {:.1} s", stop_copy_start.as_secs_f64());

    // The load's directory is per label: the last run's `stop` file and
    // logs would end this run's loop at once.
    let _ = std::fs::remove_dir_all(rig.dir().join("load").join("pgbench"));
    let pgbench = PgbenchLoad::start(rig, rig.client(), PgVersion::V15, &target, 2, 2)?;
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let migrated = (|| -> anyhow::Result<Value> {
        let answer = migrations(
            rig,
            "Migrate",
            json!({"request_id": format!("bf-{index}"), "account": name,
                   "migration_id": "postgresql-15-to-18", "acknowledge_irreversible": true}),
        )?;
        let id = str_of(&answer, "id").to_owned();
        let mut last = Value::Null;
        rig.wait_until("the migration completed", Duration::from_secs(3600), || {
            last = migrations(rig, "GetMigration", json!({"id": id}))?;
            let state = str_of(&last, "state");
            ensure!(
                !matches!(state, "STATE_FAILED" | "STATE_CANCELLED"),
                "the migration failed: {last}"
            );
            std::thread::sleep(Duration::from_millis(200));
            Ok(state == "STATE_COMPLETED")
        })
        .with_context(|| format!("last seen: {last}"))?;
        Ok(last)
    })();
    let migrate = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let tally = pgbench.stop()?;
    let migration = migrated.with_context(|| rig.log_tails(40))?;
    let window = &migration["freezeWindow"];
    let freeze_ms: u64 = window["totalMs"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .context("no freeze window recorded")?;
    let mut parts = BTreeMap::new();
    for part in list(window, "parts") {
        let part_name = str_of(&part, "name").replace(&name, "<account>");
        let ms: u64 = part["ms"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        *parts.entry(part_name).or_insert(0) += ms;
    }
    eprintln!(
        "  migrate: {:.1} s, freeze {freeze_ms} ms, parts {parts:?}, pgbench committed {} ({} runs failed)",
        migrate.as_secs_f64(),
        tally.total(),
        tally.failed_runs
    );
    ensure!(
        tally.total() > 0,
        "pgbench committed nothing during the migration"
    );
    Ok(Run {
        files,
        home_bytes,
        db_size: db_size.trim().to_owned(),
        freeze_ms,
        parts,
        migrate,
        stop_copy_start,
    })
}

fn main() -> anyhow::Result<()> {
    let sizes = sizes()?;
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rig = Rig::new("bench_freeze")?;
    let accounts = sizes.len() * runs;
    let mut zones = Vec::new();
    let mut db_records = Vec::new();
    for index in 0..accounts {
        let name = format!("nvbf_{index}");
        zones.push(ZoneSpec::new(
            &sample_domains(&name)[0],
            &[
                &format!("@ {OLD_TTL} A {OLD}"),
                &format!("www {OLD_TTL} A {OLD}"),
            ],
        ));
        db_records.push(format!("{} {OLD_TTL} A {OLD}", name.replace('_', "-")));
    }
    let records: Vec<&str> = db_records.iter().map(String::as_str).collect();
    zones.push(ZoneSpec::new(DB_ZONE, &records));
    let dns = rig.start_dns(&zones)?;
    rig.resolve_through(rig.client(), &dns)?;
    let controller = support::controller(
        &rig,
        ControllerSpec {
            extra_config: format!(
                "\n[migrations]\nrequire_recent_test = false\nretire_after_secs = 2\nforward_for_secs = 2\n\
                 [dns]\nserver = \"{addr}\"\ntsig_key_name = \"{key}\"\ntsig_secret_file = \"{secret}\"\n\
                 database_zone = \"{DB_ZONE}\"\nlowered_ttl_secs = 1\n",
                addr = dns.addr(),
                key = dns.key_name(),
                secret = dns.secret_file().display(),
            ),
            ..ControllerSpec::default()
        },
    )?;
    let old = rig.add_namespace("shared-old", OLD)?;
    let new = rig.add_namespace("shared-new", NEW)?;
    let mut spec = PgSpec::new(PgVersion::V15, 5432);
    spec.extra_conf.push("synchronous_commit = on".into());
    let pg15 = old.start_postgres_with(&rig, spec)?;
    let pg18 = new.start_postgres(&rig, PgVersion::V18, 5432)?;
    let maria_old = old.start_mariadb_with(&rig, migration_load::source_mariadb_spec())?;
    let maria_new = new.start_mariadb_with(&rig, migration_load::target_mariadb_spec())?;
    let _old_web = old.start_web_server(&rig)?;
    let _new_web = new.start_web_server(&rig)?;
    let old_agent = support::enrol(&rig, &old, AgentKind::Shared, "2024.1")?;
    let _new_agent = support::enrol(&rig, &new, AgentKind::Shared, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "shared-new"])?;
    let setup = Setup {
        rig: &rig,
        controller: &controller,
        old_agent: &old_agent,
        pg15: &pg15,
        pg18: &pg18,
        maria_old: &maria_old,
        maria_new: &maria_new,
        new_root: new.root(),
    };

    // Each size's row is printed once its runs are done.
    println!(
        "| size | files (home) | pgbench db | freeze median (ms) | min/max (ms) | parts medians (ms) | migrate total (s) | stop-copy-start (s) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut index = 0;
    for size in &sizes {
        let mut results = Vec::new();
        for round in 1..=runs {
            eprintln!("{} run {round} of {runs}:", size.label);
            results.push(one_run(&setup, index, size)?);
            index += 1;
        }
        let mut freezes: Vec<u64> = results.iter().map(|r| r.freeze_ms).collect();
        let median = median_u64(&mut freezes);
        let mut part_names: Vec<&String> = results.iter().flat_map(|r| r.parts.keys()).collect();
        part_names.sort();
        part_names.dedup();
        let parts: Vec<String> = part_names
            .iter()
            .map(|p| {
                let mut values: Vec<u64> = results
                    .iter()
                    .map(|r| r.parts.get(*p).copied().unwrap_or(0))
                    .collect();
                format!("{p} {}", median_u64(&mut values))
            })
            .collect();
        let mut migrate: Vec<Duration> = results.iter().map(|r| r.migrate).collect();
        let mut scs: Vec<Duration> = results.iter().map(|r| r.stop_copy_start).collect();
        let scs = median_dur(&mut scs);
        let first = &results[0];
        println!(
            "| {} | {} ({} MB) | {} | {median} | {}/{} | {} | {:.1} | {:.1} | {:.0}x |",
            size.label,
            first.files,
            first.home_bytes >> 20,
            first.db_size,
            freezes.first().copied().unwrap_or_default(),
            freezes.last().copied().unwrap_or_default(),
            parts.join("; "),
            median_dur(&mut migrate).as_secs_f64(),
            scs.as_secs_f64(),
            scs.as_millis() as f64 / median.max(1) as f64,
        );
    }
    Ok(())
}
