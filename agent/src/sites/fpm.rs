//! An account's PHP-FPM master: its configuration, and starting, reloading
//! and stopping it.
//!
//! One master per account, daemonised, with its pid file, socket, log and
//! private temporary directory in the account's run directory
//! (`<run_dir>/<account>/`). It starts inside the account's control group
//! (a shell joins the group, then execs the FPM program), so it and every
//! worker it forks freeze with the account. Its one pool runs as the
//! account's uid and gid (numbers, never names: a chrooted FPM has another
//! user database), listens on a socket only the web server's user may
//! connect to, and is confined by `open_basedir` to the home and the
//! private tmp. Its environment and PHP defaults say where the databases
//! are, so the customer's code needs no host name.
//!
//! A master outlives the agent: a restarted agent finds it by its pid file
//! (and checks that the pid is an FPM master) and leaves it running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How long a master gets to finish its requests when stopped before the
/// account's group is emptied.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where one account's pool lives.
#[derive(Clone, Debug)]
pub struct PoolPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub pid_file: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub tmp: PathBuf,
}

impl PoolPaths {
    pub fn new(run_dir: &Path, account: &str) -> PoolPaths {
        let dir = run_dir.join(account);
        PoolPaths {
            config: dir.join("php-fpm.conf"),
            pid_file: dir.join("php-fpm.pid"),
            socket: dir.join("php-fpm.sock"),
            log: dir.join("php-fpm.log"),
            tmp: dir.join("tmp"),
            dir,
        }
    }
}

/// The databases the pool's code reaches by default, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// libpq's `PGHOST` (a socket directory or a host) and `PGPORT`.
    pub postgres: Option<(String, u16)>,
    /// mysqli's default host, port and socket.
    pub mariadb: Option<(String, u16, String)>,
}

/// Whether `value` may go into an FPM configuration line as it is.
pub fn is_plain_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 1024
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
}

/// What the pool runs as and how it is reached.
#[derive(Clone, Debug)]
pub struct PoolSpec<'a> {
    pub account: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a Path,
    pub web_uid: u32,
    pub web_gid: u32,
    pub endpoints: &'a Endpoints,
}

/// The master's configuration. Every value is a number, a path the agent
/// made from checked parts, or passed [`is_plain_value`].
pub fn render(paths: &PoolPaths, spec: &PoolSpec<'_>) -> String {
    let PoolSpec {
        account,
        uid,
        gid,
        home,
        web_uid,
        web_gid,
        endpoints,
    } = spec;
    let (home, tmp) = (home.display(), paths.tmp.display());
    let mut text = format!(
        "; PHP-FPM of account {account}, written by navette-agent (StartSites). Do not edit.\n\
         [global]\n\
         pid = {pid}\n\
         error_log = {log}\n\
         daemonize = yes\n\
         \n\
         [{account}]\n\
         user = {uid}\n\
         group = {gid}\n\
         listen = {socket}\n\
         listen.owner = {web_uid}\n\
         listen.group = {web_gid}\n\
         listen.mode = 0600\n\
         pm = ondemand\n\
         pm.max_children = 8\n\
         pm.process_idle_timeout = 60s\n\
         security.limit_extensions = .php\n\
         catch_workers_output = yes\n\
         clear_env = yes\n\
         env[TMPDIR] = {tmp}\n\
         php_admin_value[open_basedir] = {home}/:{tmp}/\n\
         php_admin_value[sys_temp_dir] = {tmp}\n\
         php_admin_value[upload_tmp_dir] = {tmp}\n\
         php_admin_value[session.save_path] = {tmp}\n",
        pid = paths.pid_file.display(),
        log = paths.log.display(),
        socket = paths.socket.display(),
    );
    if let Some((host, port)) = &endpoints.postgres {
        text.push_str(&format!("env[PGHOST] = {host}\nenv[PGPORT] = {port}\n"));
    }
    if let Some((host, port, socket)) = &endpoints.mariadb {
        text.push_str(&format!(
            "php_admin_value[mysqli.default_host] = {host}\n\
             php_admin_value[mysqli.default_port] = {port}\n"
        ));
        if !socket.is_empty() {
            text.push_str(&format!(
                "php_admin_value[mysqli.default_socket] = {socket}\n\
                 php_admin_value[pdo_mysql.default_socket] = {socket}\n"
            ));
        }
    }
    text
}

/// The pid in `pid_file`, if it names a live process; else why not.
pub fn read_pid(pid_file: &Path) -> Result<Pid, String> {
    let text = std::fs::read_to_string(pid_file).map_err(|error| error.to_string())?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not a pid", text.trim()))?;
    if pid <= 1 {
        return Err(format!("{pid} is not a pid to signal"));
    }
    if !Path::new("/proc").join(pid.to_string()).exists() {
        return Err(format!("process {pid} is gone"));
    }
    Ok(Pid::from_raw(pid))
}

/// The running master of this pool, if any: the pid file names a live
/// process whose title is an FPM master's.
pub fn running_master(paths: &PoolPaths) -> Option<Pid> {
    let pid = read_pid(&paths.pid_file).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("php-fpm: master process")
        .then_some(pid)
}

/// Why the master could not be started, reloaded or stopped.
#[derive(Debug, thiserror::Error)]
pub enum FpmError {
    #[error("cannot run the FPM program {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the FPM of account {account} did not start ({status}): {output}")]
    Failed {
        account: String,
        status: String,
        output: String,
    },
    #[error("signalling the FPM of account {account} (pid {pid}): {errno}")]
    Signal {
        account: String,
        pid: i32,
        errno: nix::errno::Errno,
    },
}

/// Starts the master with `fpm_command` inside the group whose
/// `cgroup.procs` is `procs`; returns once it has daemonised and listens.
pub fn start(
    account: &str,
    fpm_command: &[String],
    paths: &PoolPaths,
    procs: &Path,
) -> Result<Pid, FpmError> {
    let program = fpm_command.first().cloned().unwrap_or_default();
    // Its output goes to a file, not a pipe: the daemon keeps what it
    // inherited, and a pipe would never reach its end.
    let output_path = paths.dir.join("php-fpm.start.log");
    let output = std::fs::File::create(&output_path).map_err(|source| FpmError::Spawn {
        program: program.clone(),
        source,
    })?;
    let errors = output.try_clone().map_err(|source| FpmError::Spawn {
        program: program.clone(),
        source,
    })?;
    // The shell moves itself into the group, then becomes FPM: the master
    // and all it forks belong to the account's group from their first
    // instruction.
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0" && exec "$@""#)
        .arg(procs)
        .args(fpm_command)
        .arg("--fpm-config")
        .arg(&paths.config)
        .stdin(std::process::Stdio::null())
        .stdout(output)
        .stderr(errors)
        .status()
        .map_err(|source| FpmError::Spawn {
            program: program.clone(),
            source,
        })?;
    let failed = |status: String| {
        let mut text = std::fs::read_to_string(&output_path)
            .unwrap_or_default()
            .trim()
            .to_owned();
        if let Ok(log) = std::fs::read_to_string(&paths.log) {
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            text.push_str(&format!(
                " (log {}: {})",
                paths.log.display(),
                tail.join(" | ")
            ));
        }
        FpmError::Failed {
            account: account.to_owned(),
            status,
            output: text,
        }
    };
    if !status.success() {
        return Err(failed(status.to_string()));
    }
    let started = Instant::now();
    loop {
        if let Some(pid) = running_master(paths)
            && paths.socket.exists()
        {
            return Ok(pid);
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err(failed("exited 0 but no master runs".to_owned()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Has a running master read its configuration again (SIGUSR2: workers
/// finish their requests and are replaced).
pub fn reload(account: &str, pid: Pid) -> Result<(), FpmError> {
    signal(account, pid, Signal::SIGUSR2)
}

fn signal(account: &str, pid: Pid, signal: Signal) -> Result<(), FpmError> {
    nix::sys::signal::kill(pid, signal).map_err(|errno| FpmError::Signal {
        account: account.to_owned(),
        pid: pid.as_raw(),
        errno,
    })
}

/// Asks the master to stop gracefully (SIGQUIT) and waits for it, at most
/// [`STOP_GRACE`]; returns whether it stopped by itself (the caller
/// empties the account's group either way).
pub fn stop(account: &str, pid: Pid) -> Result<bool, FpmError> {
    signal(account, pid, Signal::SIGQUIT)?;
    let started = Instant::now();
    while started.elapsed() < STOP_GRACE {
        if !Path::new("/proc").join(pid.to_string()).exists() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_runs_as_the_account_and_knows_its_databases() {
        let paths = PoolPaths::new(Path::new("/run/sites"), "alice");
        let endpoints = Endpoints {
            postgres: Some(("/run/postgresql".into(), 5432)),
            mariadb: Some(("localhost".into(), 3306, "/run/mysqld/mysqld.sock".into())),
        };
        let text = render(
            &paths,
            &PoolSpec {
                account: "alice",
                uid: 1001,
                gid: 1002,
                home: Path::new("/home/alice"),
                web_uid: 33,
                web_gid: 33,
                endpoints: &endpoints,
            },
        );
        for line in [
            "user = 1001",
            "group = 1002",
            "listen = /run/sites/alice/php-fpm.sock",
            "listen.owner = 33",
            "listen.mode = 0600",
            "php_admin_value[open_basedir] = /home/alice/:/run/sites/alice/tmp/",
            "env[PGHOST] = /run/postgresql",
            "php_admin_value[mysqli.default_socket] = /run/mysqld/mysqld.sock",
            "daemonize = yes",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn values_with_syntax_are_not_plain() {
        assert!(is_plain_value("192.0.2.10"));
        assert!(is_plain_value("/run/mysqld/mysqld.sock"));
        for bad in ["a\nuser = 0", "a b", "a;b", "", "x\"", "a=b"] {
            assert!(!is_plain_value(bad), "{bad:?}");
        }
    }
}
