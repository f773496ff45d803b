//! A copy never gains privilege on the target. A crafted manifest (a
//! compromised source) that names owner `root` with mode 04755, a setgid
//! directory of root, a set-id file of another user or of a group the
//! account is not in: the target keeps no such bit, and says how many it
//! removed. The account's own setuid file and setgid directory keep
//! theirs. An owner, group or ACL entry the target does not know by name
//! is refused with nothing written, never mapped by number.

mod files_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, ensure};
use files_common::hostile::{entry, pull_from_hostile};
use files_common::*;
use navette_agent::transfer::files::setid::AccountUser;
use navette_agent::transfer::files::{Problem, PullConfig};
use navette_proto::v1::{AclId, EntryKind, TreeEntry, XAttr};

fn owned(path: &[u8], kind: EntryKind, owner: &str, group: &str, mode: u32) -> TreeEntry {
    TreeEntry {
        owner: owner.to_owned(),
        group: group.to_owned(),
        mode,
        ..entry(path, kind)
    }
}

fn mode_of(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .mode()
        & 0o7777)
}

/// Every entry below `root` with a set-user-id or set-group-id bit.
fn set_id_entries(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for path in listing(root)? {
        if mode_of(&path)? & 0o6000 != 0 {
            found.push(path.strip_prefix(root)?.display().to_string());
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_id_bits_survive_only_on_the_accounts_own_entries() -> anyhow::Result<()> {
    let scratch = Scratch::new("files-privilege-setid")?;
    let target = scratch.join("home").join(USER);
    let state = scratch.join("state");
    ensure_user()?;
    let own_group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(user_primary_gid()?))?
        .context("the test user's primary group")?
        .name;
    let user_groups = nix::unistd::getgrouplist(
        &std::ffi::CString::new(USER)?,
        nix::unistd::Gid::from_raw(user_primary_gid()?),
    )?;
    let foreign = nix::unistd::Group::from_name(GROUP)?.context("the test group")?;
    ensure!(
        !user_groups.contains(&foreign.gid),
        "{USER} is in {GROUP}: this test needs a group the account is not in"
    );
    let pki = Pki::new()?;
    let manifest = vec![
        owned(b"", EntryKind::Directory, USER, &own_group, 0o755),
        owned(
            b"acct-setgid-dir",
            EntryKind::Directory,
            USER,
            &own_group,
            0o2775,
        ),
        owned(
            b"acct-setgid-dir/new",
            EntryKind::Directory,
            USER,
            &own_group,
            0o755,
        ),
        owned(b"acct-setuid", EntryKind::File, USER, &own_group, 0o4755),
        owned(
            b"foreign-group-setgid",
            EntryKind::File,
            USER,
            GROUP,
            0o2755,
        ),
        owned(
            b"other-user-setuid",
            EntryKind::File,
            "nobody",
            &own_group,
            0o4755,
        ),
        owned(
            b"root-setgid-dir",
            EntryKind::Directory,
            "root",
            "root",
            0o2775,
        ),
        owned(b"root-setuid", EntryKind::File, "root", "root", 0o4755),
        owned(
            b"root-setuid-setgid",
            EntryKind::File,
            "root",
            &own_group,
            0o6755,
        ),
        owned(b"sticky", EntryKind::Directory, "root", "root", 0o1777),
    ];

    // The copy of the account's home, where the agent puts it (a home
    // named after the account, the default): only its own entries keep
    // the bits.
    let report = pull_from_hostile(
        &pki,
        PullConfig::default(),
        manifest.clone(),
        &target,
        &state,
    )
    .await??;
    let wanted = [
        ("acct-setgid-dir", 0o2775),
        ("acct-setgid-dir/new", 0o755),
        ("acct-setuid", 0o4755),
        ("foreign-group-setgid", 0o755),
        ("other-user-setuid", 0o755),
        ("root-setgid-dir", 0o775),
        ("root-setuid", 0o755),
        ("root-setuid-setgid", 0o755),
        ("sticky", 0o1777),
    ];
    for (path, mode) in wanted {
        let found = mode_of(&target.join(path))?;
        ensure!(found == mode, "{path}: mode {found:o}, wanted {mode:o}");
    }
    ensure!(
        set_id_entries(&target)? == ["acct-setgid-dir", "acct-setuid"],
        "{:?}",
        set_id_entries(&target)?
    );
    ensure!(report.set_id_removed == 5, "{report:?}");
    ensure!(
        report
            .set_id_examples
            .iter()
            .any(|e| e.starts_with("root-setuid (mode 4755, uid 0, gid 0)")),
        "the report does not say which entries lost their bits: {report:?}"
    );

    // A copy that is nobody's keeps no bit at all, and takes away those an
    // earlier copy kept.
    let nobody = PullConfig {
        account_user: AccountUser::Nobody,
        ..PullConfig::default()
    };
    let report = pull_from_hostile(&pki, nobody, manifest.clone(), &target, &state).await??;
    ensure!(
        set_id_entries(&target)?.is_empty(),
        "{:?}",
        set_id_entries(&target)?
    );
    ensure!(report.set_id_removed == 7, "{report:?}");

    // An account whose user is root is no exception: uid 0 keeps nothing.
    let as_root = PullConfig {
        account_user: AccountUser::Named("root".to_owned()),
        ..PullConfig::default()
    };
    let report = pull_from_hostile(&pki, as_root, manifest, &target, &state).await??;
    ensure!(
        set_id_entries(&target)?.is_empty(),
        "{:?}",
        set_id_entries(&target)?
    );
    ensure!(report.set_id_removed == 7, "{report:?}");
    Ok(())
}

/// An ACL (`system.posix_acl_access`) granting read to uid `id`.
fn acl_for_user(id: u32) -> Vec<u8> {
    let undefined = u32::MAX;
    let mut value = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, undefined),
        (0x02, 4, id),
        (0x04, 4, undefined),
        (0x10, 4, undefined),
        (0x20, 0, undefined),
    ] {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&id.to_le_bytes());
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_target_does_not_know_are_refused_with_nothing_written() -> anyhow::Result<()> {
    let scratch = Scratch::new("files-privilege-names")?;
    let target = scratch.join("home");
    let state = scratch.join("state");
    ensure_user()?;
    let pki = Pki::new()?;
    const NO_USER: &str = "navette-no-such-user";
    const NO_GROUP: &str = "navette-no-such-group";
    ensure!(
        nix::unistd::User::from_name(NO_USER)?.is_none()
            && nix::unistd::Group::from_name(NO_GROUP)?.is_none(),
        "{NO_USER} or {NO_GROUP} exists on this machine"
    );
    // Entries that are fine, then the one the target cannot map: nothing
    // at all may be written, the fine entries included.
    let fine = vec![
        entry(b"", EntryKind::Directory),
        entry(b"www", EntryKind::Directory),
        entry(b"www/index.html", EntryKind::File),
    ];
    let acl = TreeEntry {
        xattrs: vec![XAttr {
            name: b"system.posix_acl_access".to_vec(),
            value: acl_for_user(4242),
        }],
        acl_ids: vec![AclId {
            group: false,
            id: 4242,
            name: NO_USER.to_owned(),
        }],
        ..entry(b"www/shared.txt", EntryKind::File)
    };
    let cases: Vec<(&str, TreeEntry, &str)> = vec![
        (
            "an unknown owner",
            owned(b"www/x", EntryKind::File, NO_USER, "root", 0o644),
            NO_USER,
        ),
        (
            "an unknown group",
            owned(b"www/x", EntryKind::File, "root", NO_GROUP, 0o644),
            NO_GROUP,
        ),
        (
            "an owner the source could not name",
            TreeEntry {
                uid: 4242,
                ..owned(b"www/x", EntryKind::File, "", "root", 0o644)
            },
            "uid 4242",
        ),
        ("an ACL naming an unknown user", acl, NO_USER),
        (
            "a directory of an unknown owner",
            owned(b"www/y", EntryKind::Directory, NO_USER, "root", 0o755),
            NO_USER,
        ),
    ];
    for (what, bad, name) in cases {
        let path = String::from_utf8_lossy(&bad.path).into_owned();
        let mut manifest = fine.clone();
        manifest.push(bad);
        let result = pull_from_hostile(&pki, account_config(), manifest, &target, &state).await?;
        let Err(error) = result else {
            anyhow::bail!("{what}: accepted");
        };
        let Problem::Unsafe { path: at, reason } = &error.problem else {
            anyhow::bail!("{what}: refused for another reason: {error}");
        };
        ensure!(
            *at == path && reason.contains(name),
            "{what}: the refusal does not name {path} and {name}: {error}"
        );
        ensure!(
            !error.is_transient(),
            "{what}: a refusal is not worth retrying"
        );
        ensure!(
            listing(&target)?.is_empty(),
            "{what}: written: {:?}",
            listing(&target)?
        );
    }
    // The unknown root owner: refused too, nothing written.
    let result = pull_from_hostile(
        &pki,
        account_config(),
        vec![owned(b"", EntryKind::Directory, NO_USER, "root", 0o755)],
        &target,
        &state,
    )
    .await?;
    ensure!(
        matches!(&result, Err(e) if e.to_string().contains(NO_USER)),
        "{result:?}"
    );
    ensure!(listing(&target)?.is_empty(), "{:?}", listing(&target)?);
    Ok(())
}
