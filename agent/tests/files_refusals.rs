//! What the file transfer refuses: a caller that is not the granted host, a
//! transfer that was not granted, paths outside the granted home on the
//! source, and, on the target, a crafted manifest that tries to write
//! through a symbolic link or to `../x`: nothing is written outside the
//! target home.

mod files_common;

use anyhow::{Context, ensure};
use files_common::hostile::{PWNED, entry, pull_from_hostile, symlink};
use files_common::*;
use navette_agent::transfer::files::{Problem, PullConfig, file_source_client, pull};
use navette_agent::transfer::progress::Progress;
use navette_proto::v1::file_chunk::Piece;
use navette_proto::v1::{
    EntryKind, FileEnd, ListTreeRequest, ReadFileRequest, ReadFilesRequest, TreeEntry,
};
use tonic::Code;

fn code_of(error: &navette_agent::transfer::files::FilesError) -> Option<Code> {
    match &error.problem {
        Problem::Source(status) => Some(status.code()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_granted_host_reads_only_the_granted_transfer() -> anyhow::Result<()> {
    let scratch = Scratch::new("files-refuse-host")?;
    let source = scratch.join("source");
    std::fs::create_dir_all(&source)?;
    std::fs::write(source.join("file"), b"data")?;
    let pki = Pki::new()?;
    let server = serve_source(&pki, grant(&scratch.join("source-state"), "t-1", &source)?).await?;
    let target = scratch.join("target");

    let stranger = pki.channel_as("test-2", server.address)?;
    let refused = pull(
        stranger,
        "t-1",
        &target,
        &scratch.join("state"),
        &Progress::new("t-1"),
    )
    .await
    .err()
    .context("another host's agent was served")?;
    ensure!(
        code_of(&refused) == Some(Code::PermissionDenied)
            && refused
                .to_string()
                .contains("granted to host test-1; the caller is agent of host test-2"),
        "{refused}"
    );
    ensure!(!refused.is_transient(), "a refusal is not worth retrying");

    let granted_host = pki.channel_as(TARGET_HOST, server.address)?;
    let refused = pull(
        granted_host,
        "t-2",
        &target,
        &scratch.join("state"),
        &Progress::new("t-2"),
    )
    .await
    .err()
    .context("an ungranted transfer was served")?;
    ensure!(
        code_of(&refused) == Some(Code::PermissionDenied)
            && refused.to_string().contains("was not granted on this host"),
        "{refused}"
    );
    ensure!(listing(&target)?.is_empty(), "something was written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_serves_nothing_outside_the_home() -> anyhow::Result<()> {
    let scratch = Scratch::new("files-refuse-source")?;
    let home = scratch.join("home");
    let outside = scratch.join("outside");
    std::fs::create_dir_all(&home)?;
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("secret"), b"not yours")?;
    std::fs::write(home.join("ok.txt"), b"yours")?;
    std::os::unix::fs::symlink(&outside, home.join("escape"))?;
    std::os::unix::fs::symlink(outside.join("secret"), home.join("link"))?;
    let pki = Pki::new()?;
    let server = serve_source(&pki, grant(&scratch.join("source-state"), "t-1", &home)?).await?;
    let mut client = file_source_client(pki.channel_as(TARGET_HOST, server.address)?);

    for bad in [&b"../outside/secret"[..], b"/etc/passwd", b"a//b", b""] {
        let status = client
            .read_file(ReadFileRequest {
                transfer_id: "t-1".into(),
                path: bad.to_vec(),
                ..ReadFileRequest::default()
            })
            .await
            .err()
            .context("a bad path was served")?;
        ensure!(status.code() == Code::InvalidArgument, "{status:?}");
    }
    // Through a link: answered as vanished, with no data.
    for through_link in [&b"escape/secret"[..], b"link"] {
        let mut stream = client
            .read_file(ReadFileRequest {
                transfer_id: "t-1".into(),
                path: through_link.to_vec(),
                ..ReadFileRequest::default()
            })
            .await?
            .into_inner();
        let mut pieces = Vec::new();
        while let Some(chunk) = stream.message().await? {
            pieces.push(chunk.piece);
        }
        ensure!(
            matches!(
                &pieces[..],
                [Some(Piece::End(FileEnd { vanished: true, .. }))]
            ),
            "{pieces:?}"
        );
    }
    let mut stream = client
        .read_files(ReadFilesRequest {
            transfer_id: "t-1".into(),
            paths: vec![
                b"escape/secret".to_vec(),
                b"link".to_vec(),
                b"ok.txt".to_vec(),
            ],
        })
        .await?
        .into_inner();
    let mut files = Vec::new();
    while let Some(batch) = stream.message().await? {
        files.extend(batch.files);
    }
    ensure!(
        files.len() == 3
            && files[0].vanished
            && files[0].data.is_empty()
            && files[1].vanished
            && files[1].data.is_empty()
            && files[2].data == b"yours",
        "{files:?}"
    );
    // The manifest lists the links as links and does not descend.
    let mut stream = client
        .list_tree(ListTreeRequest {
            transfer_id: "t-1".into(),
        })
        .await?
        .into_inner();
    let mut paths = Vec::new();
    while let Some(batch) = stream.message().await? {
        for entry in batch.entries {
            paths.push((
                String::from_utf8_lossy(&entry.path).into_owned(),
                entry.kind(),
            ));
        }
    }
    ensure!(
        paths
            == vec![
                (String::new(), EntryKind::Directory),
                ("escape".to_owned(), EntryKind::Symlink),
                ("link".to_owned(), EntryKind::Symlink),
                ("ok.txt".to_owned(), EntryKind::File),
            ],
        "{paths:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_manifest_writes_nothing_outside_the_target_home() -> anyhow::Result<()> {
    let scratch = Scratch::new("files-refuse-crafted")?;
    let outside = scratch.join("outside");
    let target = scratch.join("home");
    let state = scratch.join("state");
    std::fs::create_dir_all(&outside)?;
    let pki = Pki::new()?;
    let root = entry(b"", EntryKind::Directory);
    let crafted: Vec<(&str, Vec<TreeEntry>)> = vec![
        (
            "a file written through a symbolic link to outside",
            vec![
                root.clone(),
                symlink(b"evil", &outside),
                entry(b"evil/x", EntryKind::File),
            ],
        ),
        (
            "a file at ../x",
            vec![root.clone(), entry(b"../x", EntryKind::File)],
        ),
        (
            "a directory then a file under ..",
            vec![
                root.clone(),
                entry(b"d", EntryKind::Directory),
                entry(b"d/../../x", EntryKind::File),
            ],
        ),
        (
            "an absolute path",
            vec![root.clone(), entry(b"/tmp/x", EntryKind::File)],
        ),
        (
            "a file under a file",
            vec![
                root.clone(),
                entry(b"f", EntryKind::File),
                entry(b"f/x", EntryKind::File),
            ],
        ),
        (
            "a hard link to a file outside",
            vec![
                root.clone(),
                TreeEntry {
                    hardlink_to: b"../../etc/passwd".to_vec(),
                    ..entry(b"h", EntryKind::Hardlink)
                },
            ],
        ),
        (
            "a child listed before its parent",
            vec![
                root.clone(),
                entry(b"late/x", EntryKind::File),
                entry(b"late", EntryKind::Directory),
            ],
        ),
        ("no root", vec![entry(b"x", EntryKind::File)]),
    ];
    for (what, entries) in crafted {
        let result =
            pull_from_hostile(&pki, PullConfig::default(), entries, &target, &state).await?;
        let Err(error) = result else {
            anyhow::bail!("{what}: accepted");
        };
        ensure!(
            matches!(error.problem, Problem::Unsafe { .. }),
            "{what}: refused for another reason: {error}"
        );
        ensure!(listing(&outside)?.is_empty(), "{what}: written outside");
        ensure!(
            listing(&target)?.is_empty(),
            "{what}: written inside: {:?}",
            listing(&target)?
        );
    }

    // A symbolic link already in the target home, where the manifest has a
    // directory: the link is replaced, never written through.
    std::os::unix::fs::symlink(&outside, target.join("evil"))?;
    std::os::unix::fs::symlink(outside.join("y"), target.join("y"))?;
    let entries = vec![
        root.clone(),
        entry(b"evil", EntryKind::Directory),
        entry(b"evil/x", EntryKind::File),
        entry(b"y", EntryKind::File),
    ];
    let report = pull_from_hostile(&pki, PullConfig::default(), entries, &target, &state).await??;
    ensure!(report.files_sent == 2, "{report:?}");
    ensure!(
        listing(&outside)?.is_empty(),
        "written through a link: {:?}",
        listing(&outside)?
    );
    ensure!(
        std::fs::symlink_metadata(target.join("evil"))?.is_dir()
            && std::fs::read(target.join("evil/x"))? == PWNED
            && std::fs::symlink_metadata(target.join("y"))?.is_file(),
        "{:?}",
        listing(&target)?
    );
    Ok(())
}
