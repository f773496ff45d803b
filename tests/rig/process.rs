//! Long-running processes of the rig: servers and daemons with log files.
//!
//! Owns: spawning a command with stdout and stderr appended to one log file,
//! killing it (SIGKILL, or a signal and a bounded wait), reaping it, and
//! starting it again with the same command line. Must not know what the
//! process is: readiness checks belong to the modules that start servers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Builds the command line of a process, again at every restart.
type CommandBuilder = dyn Fn() -> Command + Send + Sync;

/// A child process with a log file. Cheap to clone: clones share the
/// process. The [`crate::Rig`] keeps a clone of each and kills them all at
/// teardown, so dropping a handle does not stop the process.
#[derive(Clone)]
pub struct ChildProcess {
    inner: Arc<Inner>,
}

struct Inner {
    /// Names the process in errors (`postgres 15 on shared-1`).
    label: String,
    /// Where stdout and stderr go, appended across restarts.
    log: PathBuf,
    build: Box<CommandBuilder>,
    /// `None` once killed and reaped.
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("label", &self.inner.label)
            .field("log", &self.inner.log)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ChildProcess {
    /// Starts `build()` with its output appended to `log`. Prefer
    /// [`crate::Rig::spawn`], which also registers it for teardown.
    pub fn spawn(
        label: impl Into<String>,
        log: impl Into<PathBuf>,
        build: impl Fn() -> Command + Send + Sync + 'static,
    ) -> anyhow::Result<ChildProcess> {
        let process = ChildProcess {
            inner: Arc::new(Inner {
                label: label.into(),
                log: log.into(),
                build: Box::new(build),
                child: Mutex::new(None),
            }),
        };
        process.start()?;
        Ok(process)
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.inner
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start(&self) -> anyhow::Result<()> {
        let mut slot = self.child();
        if let Some(child) = slot.as_mut()
            && child.try_wait().ok().flatten().is_none()
        {
            anyhow::bail!(
                "{} is already running (pid {})",
                self.inner.label,
                child.id()
            );
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.inner.log)
            .with_context(|| format!("opening {}", self.inner.log.display()))?;
        let stderr = log.try_clone().context("duplicating the log file")?;
        let mut command = (self.inner.build)();
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}: {:?}", self.inner.label, command))?;
        *slot = Some(child);
        Ok(())
    }

    /// The label given at spawn.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// The pid, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        let mut slot = self.child();
        let child = slot.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// An error with the log tail if the process has exited.
    pub fn check_running(&self) -> anyhow::Result<()> {
        let mut slot = self.child();
        let status = match slot.as_mut() {
            None => None,
            Some(child) => match child.try_wait() {
                Ok(None) => return Ok(()),
                Ok(Some(status)) => Some(status),
                Err(_) => None,
            },
        };
        drop(slot);
        let status = status.map_or_else(|| "was stopped".to_owned(), |s| format!("exited: {s}"));
        anyhow::bail!("{} {status}; {}", self.inner.label, self.log_tail_message())
    }

    /// SIGKILLs the process and reaps it. Harmless when it is not running.
    pub fn kill9(&self) {
        let mut slot = self.child();
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` and waits up to `timeout` for the process to exit,
    /// then SIGKILLs it. Used for clean shutdowns (SIGTERM, SIGINT).
    pub fn stop_with(&self, signal: Signal, timeout: Duration) {
        let mut slot = self.child();
        let Some(mut child) = slot.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        let started = Instant::now();
        while started.elapsed() < timeout {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the process if it runs (SIGKILL), then starts the same command
    /// again, appending to the same log.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.kill9();
        self.start()
    }

    /// Starts the process again after it was stopped; an error if it runs.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.start()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.inner.log, lines)
    }

    /// "log <path> ends with: ..." for error messages.
    pub fn log_tail_message(&self) -> String {
        format!(
            "log {} ends with:\n{}",
            self.inner.log.display(),
            self.log_tail(40)
        )
    }
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("({} cannot be read)", path.display());
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
