//! A pull whose link is cut resumes without starting over: within the same
//! call when the link comes back in time, or in the next call (as after an
//! agent restart) from the partial file and the journal left behind.

mod files_common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::ensure;
use files_common::*;
use navette_agent::transfer::files::{PullConfig, SOURCE_FILES, pull, pull_with};
use navette_agent::transfer::outage::OUTAGE_BOUND;
use navette_agent::transfer::progress::Progress;
use navette_proto::v1::TransferWaiting;

const BIG: u64 = 64 * 1024 * 1024;

fn build(home: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(home.join("small"))?;
    std::fs::write(home.join("big.bin"), pseudo_random(42, BIG as usize))?;
    for i in 0..200u64 {
        std::fs::write(home.join(format!("small/{i}.txt")), pseudo_random(i, 3000))?;
    }
    Ok(())
}

/// Cuts the relay once `progress` shows `bytes` received; restores it
/// after `down` unless `down` is `None`. What the progress said the pull
/// waited for while the link was down, with when the cut was made.
fn cut_when(
    relay: Arc<Relay>,
    progress: Arc<Progress>,
    bytes: u64,
    down: Option<Duration>,
) -> tokio::task::JoinHandle<(Option<TransferWaiting>, chrono::DateTime<chrono::Utc>)> {
    tokio::spawn(async move {
        while progress.bytes_sent.load(Ordering::Relaxed) < bytes {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        relay.cut();
        let cut_at = chrono::Utc::now();
        let mut seen = None;
        if let Some(down) = down {
            let until = tokio::time::Instant::now() + down;
            while tokio::time::Instant::now() < until {
                if seen.is_none() {
                    seen = progress.snapshot().waiting;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            relay.restore();
        }
        (seen, cut_at)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_link_is_resumed_within_the_same_pull() -> anyhow::Result<()> {
    let scratch = Scratch::new("files-resume-link")?;
    let source = scratch.join("source");
    let target = scratch.join("target");
    build(&source)?;
    let pki = Pki::new()?;
    let server = serve_source(
        &pki,
        grant(&scratch.join("source-state"), "t-cut", &source)?,
    )
    .await?;
    let relay = Arc::new(Relay::start(server.address).await?);
    let channel = pki.channel_as(TARGET_HOST, relay.address)?;
    let progress = Arc::new(Progress::new("t-cut"));
    let cutter = cut_when(
        relay.clone(),
        progress.clone(),
        BIG * 2 / 5,
        Some(Duration::from_millis(700)),
    );
    let report = pull(channel, "t-cut", &target, &scratch.join("state"), &progress).await?;
    let (waiting, cut_at) = cutter.await?;
    eprintln!("{report:?}");
    ensure!(report.retries >= 1, "the link was never cut: {report:?}");
    // While the link was down, the progress said what the pull waited
    // for, since when and until when; once through, it no longer does.
    let Some(waiting) = waiting else {
        anyhow::bail!("the progress never said the pull was waiting for its source");
    };
    eprintln!("waiting while cut: {waiting:?}");
    ensure!(waiting.what == SOURCE_FILES, "{waiting:?}");
    ensure!(!waiting.error.is_empty(), "{waiting:?}");
    let time = |at: &Option<prost_types::Timestamp>| {
        at.as_ref()
            .and_then(navette_proto::from_timestamp)
            .ok_or_else(|| anyhow::anyhow!("a time is missing: {waiting:?}"))
    };
    let (since, until) = (time(&waiting.since)?, time(&waiting.until)?);
    ensure!(
        since >= cut_at - chrono::Duration::seconds(1)
            && since <= cut_at + chrono::Duration::seconds(1),
        "the outage began with the cut at {cut_at}: {waiting:?}"
    );
    ensure!(
        until > since && until <= since + chrono::Duration::from_std(OUTAGE_BOUND)?,
        "the pull keeps trying at most the outage bound: {waiting:?}"
    );
    ensure!(
        progress.snapshot().waiting.is_none(),
        "the pull got through but still says it waits: {:?}",
        progress.snapshot().waiting
    );
    ensure!(
        report.resumed_bytes_resent < BIG / 8,
        "{} bytes sent twice",
        report.resumed_bytes_resent
    );
    ensure!(
        report.bytes_sent < report.bytes + BIG / 8,
        "started over: {report:?}"
    );
    let differences = rsync_differences(&source, &target)?;
    ensure!(differences.is_empty(), "rsync sees:\n{differences}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_that_gave_up_is_continued_by_the_next_one() -> anyhow::Result<()> {
    let scratch = Scratch::new("files-resume-restart")?;
    let source = scratch.join("source");
    let target = scratch.join("target");
    let state = scratch.join("state");
    build(&source)?;
    let pki = Pki::new()?;
    let server = serve_source(
        &pki,
        grant(&scratch.join("source-state"), "t-restart", &source)?,
    )
    .await?;
    let relay = Arc::new(Relay::start(server.address).await?);
    let channel = pki.channel_as(TARGET_HOST, relay.address)?;

    // The link goes down for good at 40%: the pull gives up.
    let progress = Arc::new(Progress::new("t-restart"));
    let cutter = cut_when(relay.clone(), progress.clone(), BIG * 2 / 5, None);
    let config = PullConfig {
        retry_for: Duration::from_secs(1),
        ..PullConfig::default()
    };
    let failed = pull_with(
        config,
        channel.clone(),
        "t-restart",
        &target,
        &state,
        &progress,
    )
    .await;
    cutter.await?;
    let error = match failed {
        Ok(report) => anyhow::bail!("the pull did not notice the cut: {report:?}"),
        Err(error) => error,
    };
    ensure!(error.is_transient(), "{error}");
    let received_before = progress.bytes_sent.load(Ordering::Relaxed);
    ensure!(
        state.join("transfers/t-restart/files.json").exists(),
        "no journal left for the next pull"
    );
    let parts = listing(&target)?
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".navette-part-"))
        .count();
    ensure!(parts >= 1, "no partial file left for the next pull");

    // The link is back; a new pull (as after an agent restart) continues.
    relay.restore();
    let report = pull(
        channel,
        "t-restart",
        &target,
        &state,
        &Progress::new("again"),
    )
    .await?;
    eprintln!("received before: {received_before}; then {report:?}");
    ensure!(
        report.bytes_reused >= received_before.saturating_sub(BIG / 8).min(BIG / 4),
        "the partial file was not reused: {report:?}"
    );
    ensure!(
        report.bytes_sent + received_before < report.bytes + BIG / 8,
        "started over: {report:?}"
    );
    ensure!(
        report.resumed_bytes_resent < BIG / 8,
        "{} bytes sent twice",
        report.resumed_bytes_resent
    );
    let differences = rsync_differences(&source, &target)?;
    ensure!(differences.is_empty(), "rsync sees:\n{differences}");
    ensure!(
        !state.join("transfers/t-restart").exists(),
        "the journal outlived the pull"
    );
    Ok(())
}
