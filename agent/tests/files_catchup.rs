//! Files catch-up (*Migrate*, converge while live): after a full copy, the
//! changes made in the home arrive with one pass that compares only the
//! paths the source's change journal names; a journal that cannot be
//! trusted (lost track, or lost with its agent) makes the pass compare the
//! whole tree, or, when that is not allowed (inside the freeze), change
//! nothing and say so; and the source's answer goes through the checks a
//! manifest does (a path under a symbolic link, an unknown owner, set-id
//! bits on an entry that is not the account's).
//!
//! The source is the real `FileSource` and `FileChanges` services over
//! mutual TLS on 127.0.0.1, with a real inotify journal of the home; the
//! hostile answers come from a made-up `FileChanges` (the real one never
//! lists such entries).

mod files_common;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, ensure};
use files_common::hostile::{entry, symlink};
use files_common::*;
use navette_agent::transfer::files::catchup::{CatchUp, CatchUpReport, Mode};
use navette_agent::transfer::files::journals::Journals;
use navette_agent::transfer::files::{
    FileChangesService, FileSourceService, FilesReport, Problem, PullConfig, catch_up, pull_with,
};
use navette_agent::transfer::grants::Grants;
use navette_agent::transfer::progress::Progress;
use navette_proto::v1::file_changes_server::{FileChanges, FileChangesServer};
use navette_proto::v1::{ChangedEntries, EntryKind, ListChangesRequest, TreeEntry, WholeFile};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const TRANSFER: &str = "t-catchup";
const JOURNAL: &str = "m-catchup";

/// A home granted for [`TRANSFER`], its journal running, copied whole.
struct Copied {
    scratch: Scratch,
    grants: Arc<Grants>,
    journals: Arc<Journals>,
    pki: Pki,
    _server: Server,
    channel: Channel,
    epoch: u64,
    full: FilesReport,
}

impl Copied {
    fn home(&self) -> std::path::PathBuf {
        self.scratch.join("home")
    }

    fn target(&self) -> std::path::PathBuf {
        self.scratch.join("target")
    }

    async fn pass(
        &self,
        epoch: u64,
        applied_sequence: u64,
        allow_full_comparison: bool,
    ) -> anyhow::Result<CatchUpReport> {
        self.pass_deferring(epoch, applied_sequence, allow_full_comparison, false)
            .await
    }

    /// A pass that leaves its writes unsynced when `defer_sync`.
    async fn pass_deferring(
        &self,
        epoch: u64,
        applied_sequence: u64,
        allow_full_comparison: bool,
        defer_sync: bool,
    ) -> anyhow::Result<CatchUpReport> {
        Ok(catch_up(
            account_config(),
            self.channel.clone(),
            TRANSFER,
            &CatchUp {
                journal_id: JOURNAL.to_owned(),
                journal_epoch: epoch,
                applied_sequence,
                allow_full_comparison,
                defer_sync,
            },
            &self.target(),
            &self.scratch.join("state"),
            &Progress::new(TRANSFER),
        )
        .await?)
    }
}

/// Builds a home with every kind of entry, starts its journal (before the
/// copy reads the tree, as a migration does), then copies it whole.
async fn copied(name: &str) -> anyhow::Result<Copied> {
    let scratch = Scratch::new(name)?;
    let home = scratch.join("home");
    build_tree(&home)?;
    let grants = grant(&scratch.join("source-state"), TRANSFER, &home)?;
    let journals = Arc::new(Journals::default());
    let epoch = journals.start(JOURNAL, "alice", &home)?.epoch;
    let pki = Pki::new()?;
    let routes = tonic::service::Routes::new(FileSourceService::new(grants.clone()).into_server())
        .add_service(FileChangesService::new(grants.clone(), journals.clone()).into_server());
    let server = serve(&pki, routes).await?;
    let channel = pki.channel_as(TARGET_HOST, server.address)?;
    let full = pull_with(
        account_config(),
        channel.clone(),
        TRANSFER,
        &scratch.join("target"),
        &scratch.join("state"),
        &Progress::new(TRANSFER),
    )
    .await?;
    let differences = rsync_differences(&home, &scratch.join("target"))?;
    ensure!(
        differences.is_empty(),
        "the full copy differs:\n{differences}"
    );
    Ok(Copied {
        scratch,
        grants,
        journals,
        pki,
        _server: server,
        channel,
        epoch,
        full,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_with_one_pass_that_compares_only_them() -> anyhow::Result<()> {
    let copy = copied("catchup-changes").await?;
    let home = copy.home();
    // A create, a modification, a deletion, a directory renamed (with a
    // file inside) and a chmod.
    std::fs::write(home.join("www/new.html"), b"<p>new</p>\n")?;
    std::fs::write(home.join("www/index.html"), b"<h1>hello again</h1>\n")?;
    std::fs::remove_file(home.join("secret.txt"))?;
    std::fs::rename(home.join("www/cgi"), home.join("www/bin"))?;
    std::fs::set_permissions(
        home.join("many/0001.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;

    let pass = copy.pass(copy.epoch, 0, true).await?;
    ensure!(
        pass.mode == Mode::Journal && pass.untrusted.is_none(),
        "{pass:?}"
    );
    // The journal's seven paths (many/0001.txt, secret.txt, www/bin,
    // www/bin/run.sh, www/cgi, www/index.html, www/new.html) and the
    // three directories they are in (the home, many, www): ten entries of
    // a tree of more than three hundred.
    ensure!(
        pass.entries_compared == 10 && copy.full.entries > 300,
        "compared {} entries of {}",
        pass.entries_compared,
        copy.full.entries
    );
    ensure!(
        pass.files.files_sent == 3 && pass.files.deleted == 2 && pass.files.metadata_updated >= 1,
        "{:?}",
        pass.files
    );
    let differences = rsync_differences(&home, &copy.target())?;
    ensure!(differences.is_empty(), "the copy differs:\n{differences}");

    // Nothing changed since: the next pass compares nothing at all.
    let idle = copy
        .pass(pass.journal_epoch, pass.applied_sequence, true)
        .await?;
    ensure!(
        idle.mode == Mode::Journal && idle.entries_compared == 0,
        "{idle:?}"
    );
    // A pass that did not complete is answered again: naming the older
    // sequence gets the changes since it again.
    std::fs::write(home.join("many/0002.txt"), b"changed\n")?;
    let changed = copy
        .pass(idle.journal_epoch, idle.applied_sequence, true)
        .await?;
    let again = copy
        .pass(idle.journal_epoch, idle.applied_sequence, true)
        .await?;
    // The file, its directory and the home.
    ensure!(
        changed.entries_compared == 3 && again.entries_compared == 3,
        "{changed:?} then {again:?}"
    );
    ensure!(rsync_differences(&home, &copy.target())?.is_empty());

    // The content comes with the changes: a pass from the real
    // `FileChanges` alone (no `FileSource` to read files from) brings a
    // new and a changed file.
    std::fs::write(home.join("www/later.html"), b"<p>later</p>\n")?;
    std::fs::write(home.join("many/0003.txt"), b"changed with the changes\n")?;
    let alone = serve(
        &copy.pki,
        tonic::service::Routes::new(
            FileChangesService::new(copy.grants.clone(), copy.journals.clone()).into_server(),
        ),
    )
    .await?;
    let pass = catch_up(
        account_config(),
        copy.pki.channel_as(TARGET_HOST, alone.address)?,
        TRANSFER,
        &CatchUp {
            journal_id: JOURNAL.to_owned(),
            journal_epoch: again.journal_epoch,
            applied_sequence: again.applied_sequence,
            allow_full_comparison: false,
            defer_sync: false,
        },
        &copy.target(),
        &copy.scratch.join("state"),
        &Progress::new(TRANSFER),
    )
    .await?;
    ensure!(
        pass.mode == Mode::Journal && pass.files.files_sent == 2,
        "{pass:?}"
    );
    let differences = rsync_differences(&home, &copy.target())?;
    ensure!(differences.is_empty(), "the copy differs:\n{differences}");
    Ok(())
}

/// A small file's new content is written over its old version (the same
/// inode, nothing renamed in its directory), shorter or longer, unless the
/// copy's file has another name: writing through it would change that
/// name's content too, so the content then arrives in a file of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_content_goes_over_the_old_unless_the_file_has_another_name() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let copy = copied("catchup-in-place").await?;
    let (home, target) = (copy.home(), copy.target());
    let inode = |path: &Path| -> anyhow::Result<u64> { Ok(std::fs::metadata(path)?.ino()) };
    let index_inode = inode(&target.join("www/index.html"))?;
    let secret_inode = inode(&target.join("secret.txt"))?;
    // A name the source does not have, on the copy's inode of 0003.txt.
    let old_0003 = std::fs::read(target.join("many/0003.txt"))?;
    std::fs::hard_link(target.join("many/0003.txt"), target.join("linked-0003"))?;

    std::fs::write(home.join("www/index.html"), b"<h1>hi</h1>\n")?;
    std::fs::write(
        home.join("secret.txt"),
        b"private, and much longer than before\n",
    )?;
    std::fs::write(home.join("many/0003.txt"), b"new content\n")?;
    let pass = copy.pass(copy.epoch, 0, true).await?;
    ensure!(
        pass.mode == Mode::Journal && pass.files.files_sent == 3,
        "{pass:?}"
    );
    ensure!(
        inode(&target.join("www/index.html"))? == index_inode
            && inode(&target.join("secret.txt"))? == secret_inode,
        "a changed file with one name was not written over its old version"
    );
    ensure!(
        std::fs::read(target.join("linked-0003"))? == old_0003,
        "the copy's other name of many/0003.txt changed with it"
    );
    ensure!(inode(&target.join("many/0003.txt"))? != inode(&target.join("linked-0003"))?);
    // The extra name is the test's own: removing it must not leave its
    // trace on the copy's root, whose time the pass set to the home's.
    let root_time = std::fs::metadata(&target)?.modified()?;
    std::fs::remove_file(target.join("linked-0003"))?;
    std::fs::File::open(&target)?.set_modified(root_time)?;
    let differences = rsync_differences(&home, &target)?;
    ensure!(differences.is_empty(), "the copy differs:\n{differences}");
    Ok(())
}

/// What the copy's record of unsynced writes holds: its boot line and
/// the paths, hex-decoded.
fn unsynced_record(copy: &Copied) -> anyhow::Result<Option<(String, Vec<String>)>> {
    let file = copy
        .scratch
        .join("state/transfers")
        .join(TRANSFER)
        .join("unsynced");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let mut lines = text.lines();
    let boot = lines.next().context("an empty record")?.to_owned();
    let paths = lines
        .map(|line| {
            let (kind, hex) = line.split_once(' ').context("a line without a kind")?;
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<_, _>>()?;
            Ok(format!("{kind} {}", String::from_utf8(bytes)?))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Some((boot, paths)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_left_unsynced_are_synced_by_the_next_durable_pass_or_sent_again_after_a_restart()
-> anyhow::Result<()> {
    let copy = copied("catchup-deferred").await?;
    let (home, target) = (copy.home(), copy.target());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;

    // Converging: two passes leave their writes unsynced, and say so.
    std::fs::write(home.join("www/index.html"), b"<h1>first</h1>\n")?;
    std::fs::write(home.join("www/new.html"), b"<p>new</p>\n")?;
    let first = copy.pass_deferring(copy.epoch, 0, true, true).await?;
    ensure!(
        first.mode == Mode::Journal && first.synced == 0 && first.unsynced == 2,
        "{first:?}"
    );
    let (recorded_boot, paths) = unsynced_record(&copy)?.context("no record of the writes")?;
    ensure!(
        recorded_boot == format!("boot {}", boot.trim()),
        "{recorded_boot}"
    );
    ensure!(
        paths.contains(&"f www/index.html".to_owned())
            && paths.contains(&"f www/new.html".to_owned())
            // Renamed into it: a name changed there.
            && paths.contains(&"d www".to_owned()),
        "{paths:?}"
    );
    std::fs::write(home.join("many/0004.txt"), b"second\n")?;
    let second = copy
        .pass_deferring(first.journal_epoch, first.applied_sequence, true, true)
        .await?;
    ensure!(second.unsynced == 3 && second.synced == 0, "{second:?}");
    let differences = rsync_differences(&home, &target)?;
    ensure!(differences.is_empty(), "the copy differs:\n{differences}");

    // The pass before the freeze syncs them all, with nothing of its own
    // to write, and forgets them.
    let barrier = copy
        .pass(second.journal_epoch, second.applied_sequence, true)
        .await?;
    ensure!(
        barrier.mode == Mode::Journal
            && barrier.files.files_sent == 0
            && barrier.synced >= 3
            && barrier.unsynced == 0,
        "{barrier:?}"
    );
    ensure!(unsynced_record(&copy)?.is_none(), "the record stayed");

    // A pass writes, then this host restarts before anything syncs it:
    // the copy's file comes back with its new size and time and the old
    // bytes (as a filesystem without a journal may bring it back).
    let content = b"<h1>third, and lost</h1>\n";
    std::fs::write(home.join("www/index.html"), content)?;
    let third = copy
        .pass_deferring(barrier.journal_epoch, barrier.applied_sequence, true, true)
        .await?;
    ensure!(third.unsynced == 1, "{third:?}");
    let record = copy
        .scratch
        .join("state/transfers")
        .join(TRANSFER)
        .join("unsynced");
    let text = std::fs::read_to_string(&record)?;
    std::fs::write(
        &record,
        text.replace(boot.trim(), "00000000-0000-0000-0000-000000000000"),
    )?;
    let copied_file = target.join("www/index.html");
    let time = std::fs::metadata(&copied_file)?.modified()?;
    std::fs::write(&copied_file, vec![b'?'; content.len()])?;
    std::fs::File::options()
        .write(true)
        .open(&copied_file)?
        .set_modified(time)?;
    ensure!(
        rsync_differences(&home, &target)?.is_empty(),
        "the lost write shows in size or time: the test would not test the record"
    );

    // Inside the freeze: nothing is written, and the pass says why.
    let frozen = copy
        .pass(third.journal_epoch, third.applied_sequence, false)
        .await?;
    ensure!(
        frozen.mode == Mode::FullComparisonNeeded
            && frozen
                .untrusted
                .as_deref()
                .is_some_and(|why| why.contains("restarted")),
        "{frozen:?}"
    );
    ensure!(std::fs::read(&copied_file)? != content);
    // Before the freeze: the whole tree is compared and the recorded file
    // sent again, though its size and time matched.
    let full = copy
        .pass(frozen.journal_epoch, frozen.applied_sequence, true)
        .await?;
    ensure!(
        full.mode == Mode::FullComparison && full.files.files_sent == 1,
        "{full:?}"
    );
    ensure!(
        std::fs::read(&copied_file)? == content,
        "the file whose write was lost was not sent again"
    );
    ensure!(unsynced_record(&copy)?.is_none(), "the record stayed");
    let differences = rsync_differences(&home, &target)?;
    ensure!(differences.is_empty(), "the copy differs:\n{differences}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_journal_makes_the_pass_compare_the_whole_tree() -> anyhow::Result<()> {
    let copy = copied("catchup-untrusted").await?;
    let home = copy.home();
    let target = copy.target();
    std::fs::write(home.join("data/added.txt"), b"added while untrusted\n")?;
    std::fs::remove_file(home.join("many/0007.txt"))?;
    // The home moved away and back: the journal cannot tell what happened
    // meanwhile, and says so.
    let moved = home.with_extension("moved");
    std::fs::rename(&home, &moved)?;
    std::fs::rename(&moved, &home)?;
    std::fs::write(home.join("many/0008.txt"), b"after\n")?;

    // Inside the freeze: no full comparison; nothing is written.
    let before = listing(&target)?;
    let frozen = copy.pass(copy.epoch, 0, false).await?;
    ensure!(
        frozen.mode == Mode::FullComparisonNeeded
            && frozen
                .untrusted
                .as_deref()
                .is_some_and(|why| why.contains("lost track"))
            && frozen.journal_epoch == copy.epoch,
        "{frozen:?}"
    );
    ensure!(
        listing(&target)? == before,
        "a pass that may not compare the whole tree wrote"
    );

    // Before the freeze: the whole tree is compared, and the copy is the
    // home's.
    let full = copy
        .pass(frozen.journal_epoch, frozen.applied_sequence, true)
        .await?;
    ensure!(
        full.mode == Mode::FullComparison
            && full.untrusted.is_some()
            // One file added, one removed: as many entries as at first.
            && full.entries_compared == copy.full.entries
            && full.journal_epoch != copy.epoch,
        "{full:?}"
    );
    let differences = rsync_differences(&home, &target)?;
    ensure!(differences.is_empty(), "the copy differs:\n{differences}");

    // From there on the new journal is trusted.
    std::fs::write(home.join("data/later.txt"), b"later\n")?;
    let next = copy
        .pass(full.journal_epoch, full.applied_sequence, true)
        .await?;
    ensure!(
        next.mode == Mode::Journal && next.entries_compared == 3,
        "{next:?}"
    );
    ensure!(rsync_differences(&home, &target)?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_lost_with_its_agent_is_never_trusted_again() -> anyhow::Result<()> {
    let copy = copied("catchup-lost").await?;
    let home = copy.home();
    // The source agent restarts: its journal is gone, and a change made
    // before it is started again is in no journal.
    ensure!(copy.journals.stop(JOURNAL));
    std::fs::write(home.join("www/while-down.html"), b"unseen\n")?;
    let missing = copy.pass(copy.epoch, 0, true).await?;
    ensure!(
        missing.mode == Mode::FullComparisonNeeded && missing.journal_missing,
        "{missing:?}"
    );
    let restarted = copy.journals.start(JOURNAL, "alice", &home)?;
    ensure!(restarted.epoch != copy.epoch);
    // The pass names the epoch the copy matched: not the new one.
    let full = copy
        .pass(missing.journal_epoch, missing.applied_sequence, true)
        .await?;
    ensure!(
        full.mode == Mode::FullComparison
            && full.journal_epoch == restarted.epoch
            && full
                .untrusted
                .as_deref()
                .is_some_and(|why| why.contains("epoch")),
        "{full:?}"
    );
    ensure!(
        target_has(&copy.target(), "www/while-down.html"),
        "the change made while no journal ran was not copied"
    );
    ensure!(rsync_differences(&home, &copy.target())?.is_empty());
    Ok(())
}

fn target_has(target: &Path, path: &str) -> bool {
    target.join(path).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_id_bits_on_a_foreign_file_are_removed_as_in_a_full_copy() -> anyhow::Result<()> {
    let copy = copied("catchup-setid").await?;
    let home = copy.home();
    // Root's set-user-id program appears in the home, and one of the
    // account's own: only the account's keeps its bit.
    let (uid, _) = ensure_user()?;
    let own_gid = user_primary_gid()?;
    std::fs::write(home.join("root-tool"), b"root's\n")?;
    std::fs::set_permissions(
        home.join("root-tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )?;
    std::fs::write(home.join("own-tool"), b"the account's\n")?;
    nix::unistd::chown(
        &home.join("own-tool"),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(own_gid)),
    )?;
    std::fs::set_permissions(
        home.join("own-tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )?;
    let pass = copy.pass(copy.epoch, 0, true).await?;
    ensure!(pass.mode == Mode::Journal, "{pass:?}");
    ensure!(
        pass.files.set_id_removed == 1
            && pass.files.set_id_examples.len() == 1
            && pass.files.set_id_examples[0].starts_with("root-tool"),
        "{:?}",
        pass.files
    );
    let mode = |path: &str| -> anyhow::Result<u32> {
        use std::os::unix::fs::PermissionsExt;
        Ok(std::fs::symlink_metadata(copy.target().join(path))?
            .permissions()
            .mode()
            & 0o7777)
    };
    ensure!(
        mode("root-tool")? == 0o755,
        "root's set-user-id bit was kept"
    );
    ensure!(
        mode("own-tool")? == 0o4755,
        "the account's own bit was lost"
    );
    Ok(())
}

/// A hostile source's `FileChanges`: answers whatever it is given, one
/// message after the other.
#[derive(Clone)]
struct HostileChanges {
    answers: Vec<ChangedEntries>,
}

#[tonic::async_trait]
impl FileChanges for HostileChanges {
    type ListChangesStream = tokio_stream::Iter<std::vec::IntoIter<Result<ChangedEntries, Status>>>;

    async fn list_changes(
        &self,
        _request: Request<ListChangesRequest>,
    ) -> Result<Response<Self::ListChangesStream>, Status> {
        let answers: Vec<_> = self.answers.iter().cloned().map(Ok).collect();
        Ok(Response::new(tokio_stream::iter(answers)))
    }
}

/// A pass into `target` from a source answering `entries` and `gone`.
async fn pass_from_hostile(
    pki: &Pki,
    entries: Vec<TreeEntry>,
    gone: Vec<Vec<u8>>,
    target: &Path,
    state: &Path,
) -> anyhow::Result<Result<CatchUpReport, navette_agent::transfer::files::FilesError>> {
    let answer = ChangedEntries {
        entries,
        gone,
        ..ChangedEntries::default()
    };
    pass_answered(pki, answer, target, state).await
}

/// A pass into `target` from a source that answers `answer` (its epoch
/// and sequence set here) and serves no `FileSource`: nothing can be read
/// but what the answer carries.
async fn pass_answered(
    pki: &Pki,
    answer: ChangedEntries,
    target: &Path,
    state: &Path,
) -> anyhow::Result<Result<CatchUpReport, navette_agent::transfer::files::FilesError>> {
    pass_streamed(pki, vec![answer], target, state).await
}

/// As [`pass_answered`], the answer in several messages.
async fn pass_streamed(
    pki: &Pki,
    mut answers: Vec<ChangedEntries>,
    target: &Path,
    state: &Path,
) -> anyhow::Result<Result<CatchUpReport, navette_agent::transfer::files::FilesError>> {
    if let Some(first) = answers.first_mut() {
        (first.journal_epoch, first.sequence) = (7, 1);
    }
    let hostile = HostileChanges { answers };
    let server = serve(
        pki,
        tonic::service::Routes::new(FileChangesServer::new(hostile)),
    )
    .await?;
    let channel = pki.channel_as(TARGET_HOST, server.address)?;
    Ok(catch_up(
        PullConfig::default(),
        channel,
        "t-hostile",
        &CatchUp {
            journal_id: "m-hostile".to_owned(),
            journal_epoch: 7,
            applied_sequence: 0,
            allow_full_comparison: true,
            defer_sync: false,
        },
        target,
        state,
        &Progress::new("t-hostile"),
    )
    .await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_catch_up_is_refused_before_anything_is_written() -> anyhow::Result<()> {
    let scratch = Scratch::new("catchup-hostile")?;
    let outside = scratch.join("outside");
    let target = scratch.join("target");
    std::fs::create_dir_all(&outside)?;
    std::fs::create_dir_all(&target)?;
    std::fs::write(target.join("kept.txt"), b"the copy's\n")?;
    // The copy holds a symbolic link out of it (the account's own, copied
    // as a link, never followed).
    std::os::unix::fs::symlink(&outside, target.join("evil"))?;
    let pki = Pki::new()?;
    let root = || entry(b"", EntryKind::Directory);
    // (what, entries, paths gone, the reason the refusal gives)
    type Case = (&'static str, Vec<TreeEntry>, Vec<Vec<u8>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "a file under a link listed in the same answer",
            vec![
                root(),
                symlink(b"evil", &outside),
                entry(b"evil/x", EntryKind::File),
            ],
            vec![],
            "its parent is not a directory listed before it",
        ),
        (
            "a file under the copy's link, its parent not listed",
            vec![root(), entry(b"evil/x", EntryKind::File)],
            vec![],
            "its parent is not a directory listed before it",
        ),
        (
            "a path gone above the copy",
            vec![root()],
            vec![b"../outside".to_vec()],
            "'..'",
        ),
        (
            "an owner this host does not know",
            vec![
                root(),
                TreeEntry {
                    owner: "nobody-here-at-all".to_owned(),
                    ..entry(b"new.txt", EntryKind::File)
                },
            ],
            vec![],
            "does not exist on this host",
        ),
        (
            "a hard link to a file outside the answer",
            vec![
                root(),
                TreeEntry {
                    hardlink_to: b"kept.txt".to_vec(),
                    ..entry(b"link", EntryKind::Hardlink)
                },
            ],
            vec![],
            "not a file listed before it",
        ),
        (
            "the home itself gone",
            vec![],
            vec![Vec::new()],
            "the home itself",
        ),
    ];
    let before = listing(&target)?;
    for (what, entries, gone, reason) in cases {
        let refused = pass_from_hostile(&pki, entries, gone, &target, &scratch.join("state"))
            .await?
            .err()
            .with_context(|| format!("{what}: accepted"))?;
        ensure!(
            matches!(&refused.problem, Problem::Unsafe { reason: r, .. } if r.contains(reason)),
            "{what}: {refused}"
        );
        ensure!(listing(&target)? == before, "{what}: the copy changed");
        ensure!(listing(&outside)?.is_empty(), "{what}: written outside");
    }
    // A path gone on the source under the copy's link is not in the copy:
    // nothing outside it is removed.
    std::fs::write(outside.join("secret"), b"not the copy's\n")?;
    let pass = pass_from_hostile(
        &pki,
        vec![root()],
        vec![b"evil/secret".to_vec()],
        &target,
        &scratch.join("state"),
    )
    .await??;
    ensure!(pass.files.deleted == 0, "{pass:?}");
    ensure!(outside.join("secret").exists(), "removed through the link");
    Ok(())
}

/// Content as the source sends it with the changes, for entry `index`.
fn content(index: u32, data: &[u8]) -> WholeFile {
    WholeFile {
        index,
        data: data.to_vec(),
        sha256: ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .to_vec(),
        size: data.len() as u64,
        mtime_sec: 1_700_000_000,
        ..WholeFile::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_sent_with_the_changes_is_written_only_for_the_files_listed() -> anyhow::Result<()>
{
    let scratch = Scratch::new("catchup-content")?;
    let target = scratch.join("target");
    std::fs::create_dir_all(target.join("sub"))?;
    std::fs::write(target.join("kept.txt"), b"the copy's\n")?;
    let pki = Pki::new()?;
    let state = scratch.join("state");
    let data = b"new content, sent with the changes\n";
    let listed = || {
        vec![
            entry(b"", EntryKind::Directory),
            TreeEntry {
                size: data.len() as u64,
                mode: 0o644,
                ..entry(b"new.txt", EntryKind::File)
            },
            entry(b"sub", EntryKind::Directory),
        ]
    };
    // (what, content sent, the path and reason the refusal gives)
    let cases = [
        (
            "content for a directory",
            vec![content(2, data)],
            "sub",
            "content was sent for it, and it is not a regular file of the answer",
        ),
        (
            "content for an entry not listed",
            vec![content(9, data)],
            "entry 9",
            "content was sent for it",
        ),
        (
            "content sent twice",
            vec![content(1, data), content(1, data)],
            "new.txt",
            "its content was sent twice",
        ),
    ];
    let before = listing(&target)?;
    for (what, contents, path, reason) in cases {
        let answer = ChangedEntries {
            entries: listed(),
            contents,
            ..ChangedEntries::default()
        };
        let refused = pass_answered(&pki, answer, &target, &state)
            .await?
            .err()
            .with_context(|| format!("{what}: accepted"))?;
        ensure!(
            matches!(&refused.problem, Problem::Unsafe { path: p, reason: r } if p == path && r.contains(reason)),
            "{what}: {refused}"
        );
        ensure!(listing(&target)? == before, "{what}: the copy changed");
    }
    // After the first message, content only; and no more than asked.
    let later = |message: ChangedEntries| {
        vec![
            ChangedEntries {
                entries: listed(),
                ..ChangedEntries::default()
            },
            message,
        ]
    };
    let streamed: [(&str, Vec<ChangedEntries>, &str); 2] = [
        (
            "entries after the first message",
            later(ChangedEntries {
                entries: listed(),
                ..ChangedEntries::default()
            }),
            "entries came after the first message",
        ),
        (
            "more content than asked",
            later(ChangedEntries {
                contents: vec![content(1, &vec![b'x'; 17 * 1024 * 1024])],
                ..ChangedEntries::default()
            }),
            "more content than the",
        ),
    ];
    for (what, answers, reason) in streamed {
        let refused = pass_streamed(&pki, answers, &target, &state)
            .await?
            .err()
            .with_context(|| format!("{what}: accepted"))?;
        ensure!(
            matches!(&refused.problem, Problem::Protocol { reason: r, .. } if r.contains(reason)),
            "{what}: {refused}"
        );
        ensure!(listing(&target)? == before, "{what}: the copy changed");
    }
    // Content that does not match its digest is not written: the pass
    // would read the file again, from a source that serves no file.
    let mut corrupt = content(1, data);
    corrupt.data[0] ^= 1;
    let answer = ChangedEntries {
        entries: listed(),
        contents: vec![corrupt],
        ..ChangedEntries::default()
    };
    let failed = pass_answered(&pki, answer, &target, &state)
        .await?
        .err()
        .context("content that does not verify: accepted")?;
    ensure!(matches!(&failed.problem, Problem::Source(_)), "{failed}");
    ensure!(!target.join("new.txt").exists(), "written unverified");
    // Sent right, in a message after the entries, it is written from the
    // answer alone (the source serves no file to read it from), with the
    // time it was read at.
    let answers = later(ChangedEntries {
        contents: vec![content(1, data)],
        ..ChangedEntries::default()
    });
    let pass = pass_streamed(&pki, answers, &target, &state).await??;
    ensure!(pass.files.files_sent == 1, "{pass:?}");
    ensure!(std::fs::read(target.join("new.txt"))? == data, "content");
    let written = std::fs::symlink_metadata(target.join("new.txt"))?;
    ensure!(
        std::os::unix::fs::MetadataExt::mtime(&written) == 1_700_000_000,
        "time: {written:?}"
    );
    ensure!(
        std::fs::read(target.join("kept.txt"))? == b"the copy's\n",
        "kept.txt"
    );
    Ok(())
}
