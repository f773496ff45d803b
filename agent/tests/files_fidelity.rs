//! A home with every kind of entry is pulled from a real `FileSource` over
//! mutual TLS; `rsync -aHAX` then sees nothing to change (the account's
//! own setgid directory and setuid file keep their bits). A refresh sends
//! only what changed, and a refresh of an unchanged tree sends nothing.

mod files_common;

use std::os::unix::fs::MetadataExt;

use anyhow::ensure;
use files_common::*;
use navette_agent::transfer::files::pull_with;
use navette_agent::transfer::progress::Progress;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_home_is_copied_with_full_fidelity_then_refreshed_with_only_its_changes()
-> anyhow::Result<()> {
    let scratch = Scratch::new("files-fidelity")?;
    let source = scratch.join("source/home/alice");
    let target = scratch.join("target/home/alice");
    let state = scratch.join("target-state");
    build_tree(&source)?;
    let pki = Pki::new()?;
    let grants = grant(&scratch.join("source-state"), "t-fidelity", &source)?;
    let server = serve_source(&pki, grants).await?;
    let channel = pki.channel_as(TARGET_HOST, server.address)?;

    // The first copy.
    let progress = Progress::new("t-fidelity");
    let first = pull_with(
        account_config(),
        channel.clone(),
        "t-fidelity",
        &target,
        &state,
        &progress,
    )
    .await?;
    eprintln!("first copy: {first:?}");
    let differences = rsync_differences(&source, &target)?;
    ensure!(
        differences.is_empty(),
        "after the copy, rsync sees:\n{differences}"
    );
    // The account's own set-id entries keep their bits.
    let mode_of = |path: &str| -> anyhow::Result<u32> {
        Ok(std::fs::symlink_metadata(target.join(path))?.mode() & 0o7777)
    };
    ensure!(
        mode_of("setgid")? == 0o2775 && mode_of("setuid-tool")? == 0o4755,
        "the account's setgid directory and setuid file lost their bits"
    );
    ensure!(first.set_id_removed == 0, "{first:?}");
    let sparse = std::fs::metadata(target.join("disk.img"))?;
    ensure!(
        sparse.len() == 100 * 1024 * 1024 && sparse.blocks() * 512 <= 1024 * 1024,
        "the sparse file is no longer sparse: {} blocks",
        sparse.blocks()
    );
    ensure!(first.files_unchanged == 0, "{first:?}");
    ensure!(first.files_sent == first.files, "{first:?}");
    let data_bytes = first.bytes;
    ensure!(
        first.bytes_sent >= data_bytes && first.bytes_sent < data_bytes + 1024 * 1024,
        "the first copy sent {} bytes for {} bytes of data (holes are not sent)",
        first.bytes_sent,
        data_bytes
    );
    let snapshot = progress.snapshot();
    ensure!(
        snapshot.phase == "files"
            && snapshot.files_done == snapshot.files_total
            && snapshot.bytes_done == snapshot.bytes_total
            && snapshot.bytes_total == data_bytes,
        "{snapshot:?}"
    );
    ensure!(
        !state.join("transfers/t-fidelity").exists(),
        "the journal outlived the pull"
    );

    // Nothing changed: nothing is sent.
    let unchanged = pull_with(
        account_config(),
        channel.clone(),
        "t-fidelity",
        &target,
        &state,
        &Progress::new("t"),
    )
    .await?;
    eprintln!("unchanged: {unchanged:?}");
    ensure!(
        unchanged.bytes_sent == 0
            && unchanged.files_sent == 0
            && unchanged.files_unchanged == first.files
            && unchanged.deleted == 0
            && unchanged.metadata_updated == 0,
        "{unchanged:?}"
    );

    // 1% of the small files change, the big file grows, one file goes,
    // one comes, one changes mode only.
    for i in [3, 150, 299] {
        std::fs::write(
            source.join(format!("many/{i:04}.txt")),
            pseudo_random(9000 + i, 5000),
        )?;
    }
    {
        use std::io::Write;
        let mut big = std::fs::OpenOptions::new()
            .append(true)
            .open(source.join("data/big.bin"))?;
        big.write_all(&pseudo_random(77, 1024 * 1024))?;
    }
    std::fs::remove_file(source.join("many/0010.txt"))?;
    std::fs::write(source.join("www/new.html"), b"new page\n")?;
    std::fs::set_permissions(
        source.join("many/0020.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )?;
    let refresh = pull_with(
        account_config(),
        channel.clone(),
        "t-fidelity",
        &target,
        &state,
        &Progress::new("t"),
    )
    .await?;
    eprintln!("refresh: {refresh:?}");
    let differences = rsync_differences(&source, &target)?;
    ensure!(
        differences.is_empty(),
        "after the refresh, rsync sees:\n{differences}"
    );
    ensure!(
        refresh.files_sent == 5,
        "3 changed, 1 grown, 1 new: {refresh:?}"
    );
    ensure!(
        refresh.files_unchanged == refresh.files - 5 - 1,
        "all but the 5 sent and the one whose mode changed: {refresh:?}"
    );
    ensure!(
        refresh.metadata_updated == 1 && refresh.deleted == 1,
        "{refresh:?}"
    );
    // The grown file: only its last (partial) block and the new data.
    ensure!(
        refresh.bytes_sent <= 3 * 5000 + 9 + 1024 * 1024 + 256 * 1024,
        "the refresh sent {} bytes",
        refresh.bytes_sent
    );
    ensure!(refresh.bytes_reused >= 19 * 1024 * 1024, "{refresh:?}");

    // Changes made to the copy itself are undone by a refresh, attributes
    // alone included (the target's attribute cache must notice them).
    set_xattr(&target.join("many/0100.txt"), "user.tampered", b"1")?;
    std::fs::set_permissions(
        target.join("www/index.html"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    std::fs::write(target.join("www/extra.html"), b"not on the source\n")?;
    let repaired = pull_with(
        account_config(),
        channel.clone(),
        "t-fidelity",
        &target,
        &state,
        &Progress::new("t"),
    )
    .await?;
    eprintln!("repaired: {repaired:?}");
    let differences = rsync_differences(&source, &target)?;
    ensure!(
        differences.is_empty(),
        "after the repair, rsync sees:\n{differences}"
    );
    ensure!(
        repaired.bytes_sent == 0 && repaired.metadata_updated == 2 && repaired.deleted == 1,
        "{repaired:?}"
    );

    // Only directories changed in the copy: a refresh that writes nothing
    // else still puts their mode and time back.
    std::fs::set_permissions(
        target.join("www"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let touched = std::process::Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(target.join("many"))
        .status()?;
    ensure!(touched.success(), "touch failed");
    let settled = pull_with(
        account_config(),
        channel.clone(),
        "t-fidelity",
        &target,
        &state,
        &Progress::new("t"),
    )
    .await?;
    let differences = rsync_differences(&source, &target)?;
    ensure!(
        differences.is_empty(),
        "after a refresh of changed directories, rsync sees:\n{differences}"
    );
    ensure!(
        settled.bytes_sent == 0 && settled.metadata_updated == 0 && settled.deleted == 0,
        "nothing but directories to fix: {settled:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_during_the_copy_is_copied_again_by_the_next_refresh() -> anyhow::Result<()>
{
    let scratch = Scratch::new("files-live")?;
    let source = scratch.join("source");
    let target = scratch.join("target");
    std::fs::create_dir_all(source.join("logs"))?;
    for i in 0..50 {
        std::fs::write(
            source.join(format!("logs/old-{i}.log")),
            pseudo_random(i, 4000),
        )?;
    }
    std::fs::write(
        source.join("logs/access.log"),
        pseudo_random(1, 8 * 1024 * 1024),
    )?;
    let pki = Pki::new()?;
    let grants = grant(&scratch.join("source-state"), "t-live", &source)?;
    let server = serve_source(&pki, grants).await?;
    let channel = pki.channel_as(TARGET_HOST, server.address)?;

    // A writer appends to the log all along the first copy, and never
    // sees an error.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let log = source.join("logs/access.log");
        std::thread::spawn(move || -> std::io::Result<u64> {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(log)?;
            let mut lines = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all(b"GET /index.html 200\n")?;
                lines += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Ok(lines)
        })
    };
    let state = scratch.join("state");
    let during = pull_with(
        account_config(),
        channel.clone(),
        "t-live",
        &target,
        &state,
        &Progress::new("t"),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lines = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let during = during?;
    eprintln!("during: {during:?}");
    ensure!(lines > 0, "the writer wrote nothing");
    ensure!(during.files_sent == 51, "{during:?}");

    let after = pull_with(
        account_config(),
        channel.clone(),
        "t-live",
        &target,
        &state,
        &Progress::new("t"),
    )
    .await?;
    let differences = rsync_differences(&source, &target)?;
    ensure!(
        differences.is_empty(),
        "after the refresh, rsync sees:\n{differences}"
    );
    ensure!(
        after.files_sent == 1 && after.files_unchanged == 50,
        "only the log is sent again: {after:?}"
    );
    Ok(())
}
