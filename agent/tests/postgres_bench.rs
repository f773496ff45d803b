//! The PostgreSQL part of the benchmark (issue 3): a pgbench database on a
//! PostgreSQL 15 host copied to a PostgreSQL 18 host by Navette, and by
//! `pg_dump -Fd -j 2` then `pg_restore -j 2` with PostgreSQL 18's tools
//! (run on the target host, reading the source over TCP, as Navette does).
//!
//! In CI it runs at scale 1, as a smoke test of the pgbench schema. For the
//! figures: `NAVETTE_PG_BENCH_SCALE=50 cargo test -p navette-agent --test
//! postgres_bench -- --nocapture`; `NAVETTE_PG_BENCH_OUT=<file>` also writes
//! them as JSON.

mod postgres_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use navette_agent::transfer::postgres::{DataCheck, PostgresSourceService, PullOptions};
use navette_tests::{AccountSpec, PgVersion, Rig};
use postgres_support::{Pki, PullSpec, SourceAgent, grants, pull_in, same_name, server_config};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const ACCOUNT: &str = "nvpgb_alice";
const PASSWORD: &str = "bench pw";

fn run(command: &mut std::process::Command, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    ensure!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(started.elapsed())
}

#[test]
fn pgbench_database_copy_against_pg_dump_and_pg_restore() -> anyhow::Result<()> {
    let scale: u32 = std::env::var("NAVETTE_PG_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let rig = Rig::new("postgres_bench")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    rig.add_account(
        &source_host,
        AccountSpec {
            name: ACCOUNT.to_owned(),
            password: PASSWORD.to_owned(),
            pg_databases: vec![ACCOUNT.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let started = Instant::now();
    run(
        PgVersion::V15
            .command("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
            .arg(pg15.socket_dir())
            .args(["-p", "5432", "-U", ACCOUNT, ACCOUNT]),
        "pgbench -i",
    )?;
    let size = pg15.psql(
        ACCOUNT,
        "SELECT pg_size_pretty(pg_database_size(current_database()))",
    )?;
    eprintln!(
        "pgbench scale {scale}: {size}, initialised in {:.1?}",
        started.elapsed()
    );

    // Navette.
    let pki = Pki::new()?;
    let transfer_id = "t-bench";
    let service = PostgresSourceService::new(
        grants(
            &rig.dir().join("src-agent-state"),
            transfer_id,
            "dst",
            &[ACCOUNT],
        )?,
        vec![server_config(&pg15)],
    );
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;
    let navette = |options: PullOptions| -> anyhow::Result<(Duration, String)> {
        let started = Instant::now();
        let (result, _) = pull_in(PullSpec {
            target: &target_host,
            identity: pki.agent("dst")?,
            pki: &pki,
            source: &source,
            transfer_id,
            copies: vec![same_name(ACCOUNT)],
            target_servers: vec![server_config(&pg18)],
            options,
        })?;
        let elapsed = started.elapsed();
        let report = result.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
        Ok((elapsed, format!("{:?}", report.databases[0].timings)))
    };
    let split_bytes = std::env::var("NAVETTE_PG_BENCH_SPLIT_MB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(PullOptions::default().split_bytes, |mb| mb << 20);
    let base = PullOptions {
        workers: 2,
        split_bytes,
        work_dir: rig.dir().to_owned(),
        ..PullOptions::default()
    };
    let (plain, plain_steps) = navette(PullOptions {
        check: DataCheck::None,
        analyze: false,
        ..base.clone()
    })?;
    let (checked, checked_steps) = navette(base.clone())?;
    let accounts = "SELECT count(*) FROM pgbench_accounts";
    ensure!(pg15.psql(ACCOUNT, accounts)? == pg18.psql(ACCOUNT, accounts)?);

    // pg_dump -Fd -j 2, then pg_restore -j 2, PostgreSQL 18's, on the
    // target host.
    let dump_dir = target_host.root().join("bench-dump");
    let _ = std::fs::remove_dir_all(&dump_dir);
    let mut dump = target_host.command(PgVersion::V18.bin_dir().join("pg_dump"));
    if let Some(path) = PgVersion::V18.ld_library_path() {
        dump.env("LD_LIBRARY_PATH", path);
    }
    dump.env("PGPASSWORD", PASSWORD)
        .args(["-Fd", "-j", "2", "-f"])
        .arg(&dump_dir)
        .args([
            "-h",
            &SOURCE.to_string(),
            "-p",
            "5432",
            "-U",
            ACCOUNT,
            ACCOUNT,
        ]);
    let dumped = run(&mut dump, "pg_dump -Fd -j 2")?;
    pg18.psql(
        "postgres",
        &format!(
            "DROP DATABASE IF EXISTS bench_restore; CREATE DATABASE bench_restore OWNER {ACCOUNT}"
        ),
    )?;
    let mut restore = PgVersion::V18.command("pg_restore");
    restore
        .args(["-j", "2", "-h"])
        .arg(pg18.socket_dir())
        .args(["-p", "5432", "-U", "postgres", "-d", "bench_restore"])
        .arg(&dump_dir);
    let restored = run(&mut restore, "pg_restore -j 2")?;
    let tools_total = dumped + restored;

    // pgcopydb clone, if installed, on the target host too.
    let pgcopydb = if std::process::Command::new("pgcopydb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        pg18.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS bench_pgcopydb; CREATE DATABASE bench_pgcopydb OWNER {ACCOUNT}"),
        )?;
        let work = target_host.root().join("pgcopydb");
        let _ = std::fs::remove_dir_all(&work);
        let mut clone = target_host.command("pgcopydb");
        clone
            .args([
                "clone",
                "--table-jobs",
                "2",
                "--index-jobs",
                "2",
                "--no-owner",
            ])
            .arg("--source")
            .arg(format!(
                "host={SOURCE} port=5432 user={ACCOUNT} password='{PASSWORD}' dbname={ACCOUNT}"
            ))
            .arg("--target")
            .arg(format!(
                "host={} port=5432 user=postgres dbname=bench_pgcopydb",
                pg18.socket_dir().display()
            ))
            .arg("--dir")
            .arg(&work);
        Some(run(&mut clone, "pgcopydb clone")?)
    } else {
        eprintln!("pgcopydb is not installed: skipped");
        None
    };

    let ratio = |navette: Duration| tools_total.as_secs_f64() / navette.as_secs_f64();
    eprintln!(
        "\nPostgreSQL 15 -> 18, pgbench scale {scale} ({size}), 2 workers/jobs:\n\
         | method | seconds | speed-up vs pg_dump+pg_restore |\n\
         |---|---|---|\n\
         | Navette (row digests + analyze) | {:.2} | {:.2}x |\n\
         | Navette (no check, no analyze) | {:.2} | {:.2}x |\n\
         | pg_dump -Fd -j 2 + pg_restore -j 2 | {:.2} ({:.2} + {:.2}) | 1.00x |\n\
         | pgcopydb clone (2 table jobs, 2 index jobs) | {} |\n\
         steps (checked): {checked_steps}\nsteps (plain): {plain_steps}",
        checked.as_secs_f64(),
        ratio(checked),
        plain.as_secs_f64(),
        ratio(plain),
        tools_total.as_secs_f64(),
        dumped.as_secs_f64(),
        restored.as_secs_f64(),
        pgcopydb.map_or("not installed".to_owned(), |d| format!(
            "{:.2} | {:.2}x",
            d.as_secs_f64(),
            tools_total.as_secs_f64() / d.as_secs_f64()
        )),
    );
    if let Ok(path) = std::env::var("NAVETTE_PG_BENCH_OUT") {
        let figures = serde_json::json!({
            "scale": scale,
            "database_size": size,
            "navette_checked_seconds": checked.as_secs_f64(),
            "navette_plain_seconds": plain.as_secs_f64(),
            "pg_dump_seconds": dumped.as_secs_f64(),
            "pg_restore_seconds": restored.as_secs_f64(),
            "pgcopydb_seconds": pgcopydb.map(|d| d.as_secs_f64()),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
