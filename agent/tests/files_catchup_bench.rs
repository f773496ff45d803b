//! The files catch-up part of the benchmark (issue 10): a catch-up pass
//! over the bench's tree of small files (40,000 files of 200 B to 24 KB in
//! about 6,700 directories), when nothing changed and when 1% of the
//! files were appended to, against `rsync -a` bringing its own copy of the
//! same tree up to date.
//!
//! What is measured, honestly: both run on this machine, the page cache
//! warm (as a migration's passes run, one after the other). Navette's pass
//! goes from the target's pull over mutual TLS on 127.0.0.1 to the real
//! `FileChanges` and `FileSource` services and a real inotify journal of
//! the home. It is a converging pass, as a migration runs them while the
//! account is live: it records the files it is about to write (one
//! `fdatasync` of the record) and leaves them to the kernel's writeback,
//! as `rsync -a` does. The pass before the freeze syncs what they wrote
//! (an `fsync` of each file and of each directory a name changed in), and
//! is timed apart, as is a pass that syncs its own 1% (the freeze's
//! kind). `rsync -a` runs locally (source and target paths on one host,
//! its two processes over a pipe): no network and no TLS, which favours
//! rsync; `rsync -a --fsync` (each file written synced; not its
//! directory) runs as well, into a copy of its own. The pass itself is
//! timed, not the journal's start (before the full copy) nor the full
//! copy.
//!
//! In CI it runs on 2,000 files and checks both copies end identical to
//! the home (no timed assertion). For the figures:
//! `tests/bench-catchup.sh` (40,000 files, 3 rounds), or
//! `NAVETTE_CATCHUP_BENCH_FILES=40000 cargo test --release -p navette-agent --test
//! files_catchup_bench -- --nocapture`.

mod files_common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use files_common::*;
use navette_agent::transfer::files::catchup::{CatchUp, CatchUpReport, Mode};
use navette_agent::transfer::files::journals::Journals;
use navette_agent::transfer::files::{
    FileChangesService, FileSourceService, PullConfig, catch_up, pull_with,
};
use navette_agent::transfer::progress::Progress;

const TRANSFER: &str = "t-catchup-bench";
const JOURNAL: &str = "m-catchup-bench";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// `files` small files, six to a directory, directories a hundred to a
/// parent: the shape of the main bench's tree.
fn build(home: &Path, files: usize) -> anyhow::Result<()> {
    for i in 0..files {
        let dir = home.join(format!("d{:03}/e{:03}", i / 600, (i / 6) % 100));
        if i % 6 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let size = 200 + (i * 7919) % 24_000;
        std::fs::write(
            dir.join(format!("f{i:06}.txt")),
            pseudo_random(i as u64, size),
        )?;
    }
    Ok(())
}

/// Appends to one file in a hundred.
fn change_one_percent(home: &Path, files: usize, round: usize) -> anyhow::Result<usize> {
    let mut changed = 0;
    for i in (round % 100..files).step_by(100) {
        let path = home.join(format!("d{:03}/e{:03}/f{i:06}.txt", i / 600, (i / 6) % 100));
        let mut file = std::fs::OpenOptions::new().append(true).open(&path)?;
        std::io::Write::write_all(&mut file, format!("round {round}\n").as_bytes())?;
        changed += 1;
    }
    Ok(changed)
}

fn rsync(home: &Path, copy: &Path) -> anyhow::Result<Duration> {
    rsync_with(home, copy, &[])
}

fn rsync_with(home: &Path, copy: &Path, options: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut from = home.as_os_str().to_owned();
    from.push("/");
    let mut to = copy.as_os_str().to_owned();
    to.push("/");
    let output = Command::new("rsync")
        .arg("-a")
        .args(options)
        .arg(&from)
        .arg(&to)
        .output()
        .context("running rsync")?;
    ensure!(
        output.status.success(),
        "rsync -a: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(started.elapsed())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn seconds(duration: Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_pass_against_rsync() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let files = env_number("NAVETTE_CATCHUP_BENCH_FILES", 2_000);
    let rounds = env_number("NAVETTE_CATCHUP_BENCH_ROUNDS", 1).max(1);
    let scratch = Scratch::new("catchup-bench")?;
    let home = scratch.join("home");
    let target = scratch.join("target");
    let rsync_copy = scratch.join("rsync-copy");
    let rsync_synced_copy = scratch.join("rsync-fsync-copy");
    build(&home, files)?;
    std::fs::create_dir_all(&rsync_copy)?;

    let grants = grant(&scratch.join("source-state"), TRANSFER, &home)?;
    let journals = Arc::new(Journals::default());
    let started = Instant::now();
    let mut epoch = journals.start(JOURNAL, "alice", &home)?.epoch;
    let journal_start = started.elapsed();
    let pki = Pki::new()?;
    let routes = tonic::service::Routes::new(FileSourceService::new(grants.clone()).into_server())
        .add_service(FileChangesService::new(grants, journals.clone()).into_server());
    let server = serve(&pki, routes).await?;
    let channel = pki.channel_as(TARGET_HOST, server.address)?;
    let config = PullConfig {
        account_user: navette_agent::transfer::files::setid::AccountUser::Nobody,
        ..PullConfig::default()
    };
    let started = Instant::now();
    let full = pull_with(
        config.clone(),
        channel.clone(),
        TRANSFER,
        &target,
        &scratch.join("state"),
        &Progress::new(TRANSFER),
    )
    .await?;
    let full_copy = started.elapsed();
    let rsync_full = rsync(&home, &rsync_copy)?;
    rsync(&home, &rsync_synced_copy)?;

    let mut sequence = 0;
    let pass = async |epoch: u64,
                      sequence: u64,
                      defer_sync: bool|
           -> anyhow::Result<(Duration, CatchUpReport)> {
        let started = Instant::now();
        let report = catch_up(
            config.clone(),
            channel.clone(),
            TRANSFER,
            &CatchUp {
                journal_id: JOURNAL.to_owned(),
                journal_epoch: epoch,
                applied_sequence: sequence,
                allow_full_comparison: false,
                defer_sync,
            },
            &target,
            &scratch.join("state"),
            &Progress::new(TRANSFER),
        )
        .await?;
        ensure!(report.mode == Mode::Journal, "{report:?}");
        Ok((started.elapsed(), report))
    };
    let (mut idle, mut idle_rsync, mut busy, mut busy_rsync, mut busy_rsync_synced) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut compared = (0, 0);
    for round in 0..rounds {
        let (time, report) = pass(epoch, sequence, true).await?;
        (epoch, sequence) = (report.journal_epoch, report.applied_sequence);
        compared.0 = report.entries_compared;
        idle.push(time);
        idle_rsync.push(rsync(&home, &rsync_copy)?);

        let changed = change_one_percent(&home, files, round)?;
        let (time, report) = pass(epoch, sequence, true).await?;
        (epoch, sequence) = (report.journal_epoch, report.applied_sequence);
        ensure!(report.files.files_sent == changed as u64, "{report:?}");
        compared.1 = report.entries_compared;
        busy.push(time);
        busy_rsync.push(rsync(&home, &rsync_copy)?);
        busy_rsync_synced.push(rsync_with(&home, &rsync_synced_copy, &["--fsync"])?);
        println!(
            "round {}: nothing changed {} / rsync {}; 1% changed {} / rsync {} / rsync --fsync {}",
            round + 1,
            seconds(idle[round]),
            seconds(idle_rsync[round]),
            seconds(busy[round]),
            seconds(busy_rsync[round]),
            seconds(busy_rsync_synced[round]),
        );
    }
    // The pass before the freeze syncs what the converging passes wrote.
    let (barrier, report) = pass(epoch, sequence, false).await?;
    (epoch, sequence) = (report.journal_epoch, report.applied_sequence);
    ensure!(report.unsynced == 0, "{report:?}");
    let barrier_synced = report.synced;
    // And a pass that syncs its own 1% as it goes (as the freeze's does).
    let changed = change_one_percent(&home, files, rounds)?;
    let (durable, report) = pass(epoch, sequence, false).await?;
    ensure!(report.files.files_sent == changed as u64, "{report:?}");
    let durable_synced = report.synced;
    rsync(&home, &rsync_copy)?;
    rsync_with(&home, &rsync_synced_copy, &["--fsync"])?;
    for copy in [&target, &rsync_copy, &rsync_synced_copy] {
        let differences = rsync_differences(&home, copy)?;
        ensure!(
            differences.is_empty(),
            "{} differs:\n{differences}",
            copy.display()
        );
    }
    let ratio = |ours: Duration, theirs: Duration| ours.as_secs_f64() / theirs.as_secs_f64();
    let (idle, idle_rsync, busy, busy_rsync, busy_rsync_synced) = (
        median(idle),
        median(idle_rsync),
        median(busy),
        median(busy_rsync),
        median(busy_rsync_synced),
    );
    println!(
        "files: {} entries ({files} files); journal started in {}; full copy {} (rsync -a {})",
        full.entries,
        seconds(journal_start),
        seconds(full_copy),
        seconds(rsync_full)
    );
    println!("| catch-up, median of {rounds} | Navette pass | rsync -a | Navette / rsync |");
    println!("|---|---|---|---|");
    println!(
        "| nothing changed ({} entries compared) | {} | {} | {:.3} |",
        compared.0,
        seconds(idle),
        seconds(idle_rsync),
        ratio(idle, idle_rsync)
    );
    println!(
        "| 1% of the files changed ({} entries compared) | {} | {} | {:.3} |",
        compared.1,
        seconds(busy),
        seconds(busy_rsync),
        ratio(busy, busy_rsync)
    );
    println!(
        "| 1% changed, against rsync -a --fsync | {} | {} | {:.3} |",
        seconds(busy),
        seconds(busy_rsync_synced),
        ratio(busy, busy_rsync_synced)
    );
    println!(
        "converging passes leave their writes unsynced (recorded first); the pass before the freeze synced the {rounds} rounds' writes ({barrier_synced} entries) in {}; a pass syncing its own 1% ({durable_synced} entries) took {}",
        seconds(barrier),
        seconds(durable),
    );
    Ok(())
}
