//! The agent's systemd unit lets a copy do what it needs: a home with a
//! setgid directory (and the account's own setuid file) copies into a
//! target that runs under the unit's own restrictions, and keeps its bits.
//!
//! systemd is not PID 1 here, so the test applies the unit's restrictions
//! itself: it reads `systemd/navette-agent.service`, re-runs this test
//! binary as the agent under `setpriv` with the unit's
//! `CapabilityBoundingSet=` and `NoNewPrivileges=` (the child checks
//! `/proc/self/status` that they hold) and the unit's `UMask=`, and that
//! child serves the source and pulls the copy, as a source and a target
//! agent do. Every other setting of the unit's `[Service]` section must be
//! one this file knows does not change what a copy can do, with the
//! reason beside it; a setting it does not know (a system call filter, a
//! set-id restriction, a `User=`) fails the test until it is applied here
//! too.

mod files_common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use files_common::*;
use navette_agent::transfer::files::{PullConfig, pull_with};
use navette_agent::transfer::progress::Progress;

/// Set in the child: the scratch directory it copies in.
const CHILD_ENV: &str = "NAVETTE_FILES_UNIT_CHILD";
/// This test's name, for the child to run it alone.
const TEST_NAME: &str = "a_home_with_a_setgid_directory_copies_under_the_agent_units_restrictions";

/// Settings of `[Service]` that do not change what a file copy can do
/// (the home is under neither /usr, /boot nor /etc; the copy uses no
/// device, no kernel tunable, no real-time scheduling, no executable
/// memory, no address family other than AF_INET/AF_INET6/AF_UNIX).
const HARMLESS: &[(&str, &str)] = &[
    ("Type", "how systemd learns the agent is up"),
    ("NotifyAccess", "how systemd learns the agent is up"),
    ("ExecStart", "the agent's command line"),
    ("Restart", "restarts after exit"),
    ("RestartSec", "restarts after exit"),
    ("TimeoutStartSec", "start and stop timeouts"),
    ("TimeoutStopSec", "start and stop timeouts"),
    ("StateDirectory", "the agent's own state directory"),
    ("StateDirectoryMode", "the agent's own state directory"),
    (
        "ConfigurationDirectory",
        "the agent's configuration directory",
    ),
    ("RuntimeDirectory", "the sites' run directory under /run"),
    (
        "RuntimeDirectoryMode",
        "the sites' run directory under /run",
    ),
    (
        "RuntimeDirectoryPreserve",
        "the sites' run directory under /run",
    ),
    (
        "ReadWritePaths",
        "makes the web server's server blocks writable: it only widens",
    ),
    ("LimitNOFILE", "raises the open-file limit"),
    (
        "ProtectSystem",
        "read-only /usr, /boot and /etc (full), not homes",
    ),
    ("PrivateTmp", "a private /tmp, not homes"),
    (
        "PrivateDevices",
        "no device nodes; fifos and sockets need no CAP_MKNOD",
    ),
    ("ProtectKernelTunables", "read-only /proc/sys and /sys"),
    ("ProtectKernelModules", "no module loading"),
    ("ProtectKernelLogs", "no kernel log"),
    ("ProtectClock", "no clock changes"),
    ("ProtectHostname", "no hostname changes"),
    (
        "RestrictAddressFamilies",
        "a copy uses AF_INET/AF_INET6 (checked below)",
    ),
    ("RestrictRealtime", "no real-time scheduling"),
    ("LockPersonality", "no personality changes"),
    ("MemoryDenyWriteExecute", "no writable executable memory"),
    ("SystemCallArchitectures", "native system calls only"),
];

/// The capability names of linux/capability.h, by number.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What the test applies from the unit.
#[derive(Debug)]
struct Restrictions {
    /// `CapabilityBoundingSet=`, as names.
    capabilities: Vec<String>,
    no_new_privileges: bool,
    umask: u32,
}

impl Restrictions {
    /// The bounding set as a mask of capability numbers.
    fn capability_mask(&self) -> anyhow::Result<u64> {
        let mut mask = 0u64;
        for name in &self.capabilities {
            let number = CAPABILITIES
                .iter()
                .position(|known| known == name)
                .with_context(|| format!("unknown capability {name} in the unit"))?;
            mask |= 1 << number;
        }
        Ok(mask)
    }

    /// The bounding set as `setpriv --bounding-set` takes it.
    fn setpriv_bounding_set(&self) -> String {
        let mut set = vec!["-all".to_owned()];
        for name in &self.capabilities {
            let short = name.trim_start_matches("CAP_").to_ascii_lowercase();
            set.push(format!("+{short}"));
        }
        set.join(",")
    }
}

/// Reads the `[Service]` settings of the agent's unit, and the ones the
/// test applies. Fails on a setting it does not know.
fn unit_restrictions() -> anyhow::Result<Restrictions> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/navette-agent.service");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut section = String::new();
    let mut service: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section != "[Service]" {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .with_context(|| format!("{}: not a setting: {line}", path.display()))?;
        service
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    let single = |key: &str| -> Option<&str> {
        service
            .get(key)
            .and_then(|values| values.last())
            .map(String::as_str)
    };
    let mut applied = vec![
        "CapabilityBoundingSet",
        "NoNewPrivileges",
        "UMask",
        "RestrictSUIDSGID",
    ];
    applied.extend(HARMLESS.iter().map(|(key, _)| *key));
    for key in service.keys() {
        ensure!(
            applied.contains(&key.as_str()),
            "the agent's unit sets {key}=, which this test neither applies nor knows to be \
             harmless to a copy: apply it to the child here, or add it to HARMLESS with the reason"
        );
    }
    // Set-id restrictions would forbid what a copy must do: say so.
    if let Some(value) = single("RestrictSUIDSGID") {
        ensure!(
            value == "no",
            "the agent's unit sets RestrictSUIDSGID={value}: that filter forbids setting a \
             setgid bit, so an account's setgid directory cannot be copied"
        );
    }
    if let Some(families) = single("RestrictAddressFamilies") {
        ensure!(
            families.split_whitespace().any(|f| f == "AF_INET")
                && families.split_whitespace().any(|f| f == "AF_INET6"),
            "the unit forbids the address families a copy uses: {families}"
        );
    }
    let mut capabilities = Vec::new();
    for value in service
        .get("CapabilityBoundingSet")
        .context("the agent's unit sets no CapabilityBoundingSet=")?
    {
        ensure!(
            !value.starts_with('~'),
            "this test reads only a positive CapabilityBoundingSet=, not {value}"
        );
        capabilities.extend(value.split_whitespace().map(str::to_owned));
    }
    let umask = match single("UMask") {
        None => 0o022,
        Some(value) => u32::from_str_radix(value, 8).with_context(|| format!("UMask={value}"))?,
    };
    Ok(Restrictions {
        capabilities,
        no_new_privileges: single("NoNewPrivileges") == Some("yes"),
        umask,
    })
}

fn mode_of(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .mode()
        & 0o7777)
}

/// One test, two roles: run normally it prepares a home and starts
/// itself as the restricted agent; run as that child (with [`CHILD_ENV`])
/// it copies the home.
#[test]
fn a_home_with_a_setgid_directory_copies_under_the_agent_units_restrictions() -> anyhow::Result<()>
{
    let restrictions = unit_restrictions()?;
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => restricted_copy(&restrictions, &PathBuf::from(dir)),
        None => prepare_and_check(&restrictions),
    }
}

fn prepare_and_check(restrictions: &Restrictions) -> anyhow::Result<()> {
    let scratch = Scratch::new("files-unit")?;
    let home = scratch.join("source/home/nvfiles");
    let (uid, foreign_gid) = ensure_user()?;
    let own_gid = user_primary_gid()?;
    let chown = |path: &Path, gid: u32| -> anyhow::Result<()> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )?;
        Ok(())
    };
    let chmod = |path: &Path, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    // The account's home: a setgid upload folder of its own group (a new
    // directory in it inherits the bit), its own setuid tool, a fifo; and
    // a setuid file of root and a setgid directory of a group the account
    // is not in, which the copy must not keep.
    std::fs::create_dir_all(home.join("uploads"))?;
    chown(&home, own_gid)?;
    chown(&home.join("uploads"), own_gid)?;
    chmod(&home.join("uploads"), 0o2775)?;
    std::fs::create_dir(home.join("uploads/2026"))?;
    ensure!(
        mode_of(&home.join("uploads/2026"))? & 0o2000 != 0,
        "the new directory did not inherit the setgid bit on the source"
    );
    chown(&home.join("uploads/2026"), own_gid)?;
    chmod(&home.join("uploads/2026"), 0o2750)?;
    std::fs::write(home.join("uploads/2026/photo.jpg"), pseudo_random(3, 5000))?;
    chown(&home.join("uploads/2026/photo.jpg"), own_gid)?;
    std::fs::create_dir(home.join("bin"))?;
    std::fs::write(home.join("bin/tool"), b"#!/bin/sh\necho tool\n")?;
    chown(&home.join("bin/tool"), own_gid)?;
    chmod(&home.join("bin/tool"), 0o4755)?;
    nix::unistd::mkfifo(
        &home.join("pipe"),
        nix::sys::stat::Mode::from_bits_retain(0o640),
    )?;
    std::fs::write(home.join("root-tool"), b"not the account's\n")?;
    chmod(&home.join("root-tool"), 0o4755)?;
    std::fs::create_dir(home.join("foreign"))?;
    chown(&home.join("foreign"), foreign_gid)?;
    chmod(&home.join("foreign"), 0o2775)?;

    let exe = std::env::current_exe()?;
    let mut command = Command::new("setpriv");
    command.arg(format!(
        "--bounding-set={}",
        restrictions.setpriv_bounding_set()
    ));
    if restrictions.no_new_privileges {
        command.arg("--no-new-privs");
    }
    command
        .arg("--")
        .arg(&exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &scratch.0);
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success() && said.contains("1 passed"),
        "the restricted copy failed:\n{said}"
    );

    let target = scratch.join("target/home").join(USER);
    let wanted = [
        ("uploads", 0o2775),
        ("uploads/2026", 0o2750),
        ("uploads/2026/photo.jpg", 0o644),
        ("bin/tool", 0o4755),
        ("pipe", 0o640),
        ("root-tool", 0o755),
        ("foreign", 0o775),
    ];
    for (path, mode) in wanted {
        let found = mode_of(&target.join(path))?;
        ensure!(
            found == mode,
            "{path}: mode {found:o} on the target, wanted {mode:o}"
        );
    }
    let uploads = std::fs::metadata(target.join("uploads"))?;
    ensure!(
        uploads.uid() == uid && uploads.gid() == own_gid,
        "uploads is owned by {}:{}",
        uploads.uid(),
        uploads.gid()
    );
    ensure!(
        std::fs::read(target.join("uploads/2026/photo.jpg"))? == pseudo_random(3, 5000),
        "the photo's content differs"
    );
    Ok(())
}

/// The child: checks the restrictions hold, then serves the source and
/// pulls the copy, as the source and the target agent do.
fn restricted_copy(restrictions: &Restrictions, scratch: &Path) -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<&str> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("{name} in /proc/self/status"))
    };
    let mask = restrictions.capability_mask()?;
    for name in ["CapBnd:", "CapEff:", "CapPrm:"] {
        let found = u64::from_str_radix(field(name)?, 16)?;
        ensure!(
            found == mask,
            "{name} {found:x}, the unit's bounding set is {mask:x}"
        );
    }
    if restrictions.no_new_privileges {
        ensure!(field("NoNewPrivs:")? == "1", "no_new_privs is not set");
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_retain(restrictions.umask));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let source = scratch.join("source/home/nvfiles");
        let target = scratch.join("target/home").join(USER);
        let pki = Pki::new()?;
        let grants = grant(&scratch.join("source-state"), "t-unit", &source)?;
        let server = serve_source(&pki, grants).await?;
        let channel = pki.channel_as(TARGET_HOST, server.address)?;
        // As the agent pulls: into the home named after the account.
        let report = pull_with(
            PullConfig::default(),
            channel,
            "t-unit",
            &target,
            &scratch.join("target-state"),
            &Progress::new("t-unit"),
        )
        .await?;
        eprintln!("restricted copy: {report:?}");
        if report.set_id_removed != 2 {
            bail!("root-tool and foreign should have lost their bits: {report:?}");
        }
        Ok(())
    })
}
