//! Naming rigs, proving who owns one, and removing what dead rigs left.
//!
//! Owns: the prefix (`nv` + 5 hex digits) every name of a rig starts with,
//! the owner file in the rig directory (pid and start time of the test
//! process, so a reused pid is not mistaken for the owner), and the teardown
//! primitives (kill what runs in a namespace, delete it) shared by
//! [`crate::Rig`]'s `Drop` and the sweep of stale rigs.
//!
//! Ordering invariant, which makes the sweep safe against rigs being created
//! at the same moment: a rig's directory and owner file are created under the
//! machine-wide lock *before* any of its namespaces, and its namespaces are
//! deleted *before* its directory. So a namespace `nvXXXXX-*` whose directory
//! is missing, or whose owner is dead, belongs to nobody.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where every rig's working directory lives.
pub const RIGS_ROOT: &str = "/tmp/navette-rig";
/// File in a rig directory naming the test process that owns it.
const OWNER_FILE: &str = "owner";
/// File in a rig directory kept with `NAVETTE_RIG_KEEP=1`: never swept.
pub(crate) const KEEP_FILE: &str = "kept";

/// A fresh, hard-to-collide hex string of `digits` digits (pid, time, a
/// counter and std's random hasher keys).
pub fn unique_hex(digits: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    let hex = format!("{:016x}", hasher.finish());
    hex[..digits.min(16)].to_owned()
}

/// True for names made by [`claim_rig_dir`]: `nv` and 5 lowercase hex digits.
pub fn is_rig_prefix(prefix: &str) -> bool {
    prefix.len() == 7
        && prefix.starts_with("nv")
        && prefix[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Creates a new rig directory with its owner file. The caller holds the
/// machine-wide lock.
pub(crate) fn claim_rig_dir(test_name: &str) -> anyhow::Result<(String, PathBuf)> {
    let root = Path::new(RIGS_ROOT);
    fs::create_dir_all(root).with_context(|| format!("creating {RIGS_ROOT}"))?;
    crate::rig::set_mode(root, 0o755)?;
    for _ in 0..100 {
        let prefix = format!("nv{}", unique_hex(5));
        let dir = root.join(&prefix);
        match fs::create_dir(&dir) {
            Ok(()) => {
                crate::rig::set_mode(&dir, 0o755)?;
                let pid = std::process::id();
                let start = process_start_time(pid).unwrap_or_default();
                fs::write(
                    dir.join(OWNER_FILE),
                    format!("pid={pid}\nstart={start}\ntest={test_name}\n"),
                )
                .with_context(|| format!("writing the owner file in {}", dir.display()))?;
                return Ok((prefix, dir));
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("creating {}", dir.display()));
            }
        }
    }
    anyhow::bail!("could not find a free rig name under {RIGS_ROOT}")
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// since boot. `None` when there is no such process.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields resume after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named in a rig's owner file is still running.
fn owner_alive(rig_dir: &Path) -> bool {
    let Ok(owner) = fs::read_to_string(rig_dir.join(OWNER_FILE)) else {
        return false;
    };
    let field = |key: &str| {
        owner
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    let (Some(pid), Some(start)) = (field("pid"), field("start")) else {
        return false;
    };
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    process_start_time(pid) == Some(start)
}

/// Removes the rigs of test processes that died without tearing down: their
/// namespaces (after killing what runs inside) and their directories. The
/// caller holds the machine-wide lock.
pub(crate) fn sweep_stale() {
    let namespaces = list_namespaces();
    let mut dead = Vec::new();
    if let Ok(entries) = fs::read_dir(RIGS_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if !is_rig_prefix(&name) || dir.join(KEEP_FILE).exists() || owner_alive(&dir) {
                continue;
            }
            dead.push((name, Some(dir)));
        }
    }
    for namespace in &namespaces {
        let Some((prefix, _)) = namespace.split_once('-') else {
            continue;
        };
        if !is_rig_prefix(prefix) || dead.iter().any(|(name, _)| name == prefix) {
            continue;
        }
        let dir = Path::new(RIGS_ROOT).join(prefix);
        if !dir.exists() || (!dir.join(KEEP_FILE).exists() && !owner_alive(&dir)) {
            dead.push((prefix.to_owned(), None));
        }
    }
    for (prefix, dir) in dead {
        let mine: Vec<&String> = namespaces
            .iter()
            .filter(|namespace| namespace.starts_with(&format!("{prefix}-")))
            .collect();
        eprintln!(
            "navette rig: sweeping stale rig {prefix} ({} namespaces)",
            mine.len()
        );
        for namespace in &mine {
            kill_namespace_processes(namespace);
        }
        for namespace in &mine {
            wait_namespace_empty(namespace, Duration::from_secs(2));
            delete_namespace(namespace);
        }
        if let Some(dir) = dir
            && let Err(error) = fs::remove_dir_all(&dir)
        {
            eprintln!(
                "navette rig: could not remove stale {}: {error}",
                dir.display()
            );
        }
    }
}

/// Every named network namespace (`ip netns list`).
pub fn list_namespaces() -> Vec<String> {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Pids whose network namespace is `namespace` (`ip netns pids`), never
/// this process.
pub fn namespace_pids(namespace: &str) -> Vec<i32> {
    let Ok(output) = Command::new("ip")
        .args(["netns", "pids", namespace])
        .output()
    else {
        return Vec::new();
    };
    let me = i32::try_from(std::process::id()).unwrap_or_default();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .filter(|pid| *pid != me)
        .collect()
}

/// SIGKILLs every process inside `namespace`.
pub fn kill_namespace_processes(namespace: &str) {
    for pid in namespace_pids(namespace) {
        if let Err(error) = kill(Pid::from_raw(pid), Signal::SIGKILL)
            && error != nix::errno::Errno::ESRCH
        {
            eprintln!("navette rig: kill -9 {pid} in {namespace}: {error}");
        }
    }
}

/// Waits (bounded) until no process is left in `namespace`, so that files
/// are no longer written when the directory is removed.
pub fn wait_namespace_empty(namespace: &str, timeout: Duration) {
    let started = Instant::now();
    while !namespace_pids(namespace).is_empty() && started.elapsed() < timeout {
        kill_namespace_processes(namespace);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ip netns del`, logging failures.
pub fn delete_namespace(namespace: &str) {
    // `ip netns exec` files (the resolver configuration of `dns`), which
    // `ip netns del` leaves behind.
    let etc = std::path::Path::new(crate::dns::NETNS_ETC).join(namespace);
    if etc.exists()
        && let Err(error) = std::fs::remove_dir_all(&etc)
    {
        eprintln!("navette rig: removing {}: {error}", etc.display());
    }
    match Command::new("ip")
        .args(["netns", "del", namespace])
        .output()
    {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !stderr.contains("No such file") {
                eprintln!("navette rig: ip netns del {namespace}: {}", stderr.trim());
            }
        }
        Err(error) => eprintln!("navette rig: ip netns del {namespace}: {error}"),
    }
}
