//! MariaDB servers in a host (Debian's 10.11).
//!
//! Owns: `mariadb-install-db` into `<host root>/mysql/<port>`, starting
//! `mariadbd` inside the host's namespace (socket in
//! `<host root>/run/mysqld/`, listening on the host's address), readiness,
//! and an SQL helper for `root` over the socket. Every server starts with
//! `--no-defaults`: nothing of the machine's `/etc/mysql` leaks in.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::install::{run_checked, run_with_input};
use crate::netns::Netns;
use crate::process::ChildProcess;
use crate::rig::{Rig, make_dir_owned};

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a server; `Default` is port 3306 on the host's address.
#[derive(Clone, Debug)]
pub struct MariaDbSpec {
    pub port: u16,
    /// `--bind-address`; `None` means the host's address.
    pub bind_address: Option<String>,
    /// Extra `mariadbd` options (`"--log-bin=mysql-bin"`).
    pub extra_args: Vec<String>,
}

impl Default for MariaDbSpec {
    fn default() -> Self {
        MariaDbSpec {
            port: 3306,
            bind_address: None,
            extra_args: Vec::new(),
        }
    }
}

/// A MariaDB server running in a host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MariaDb {
    host: Netns,
    port: u16,
    data_dir: PathBuf,
    socket: PathBuf,
    process: ChildProcess,
}

impl Netns {
    /// Starts MariaDB on port 3306 of this host's address.
    pub fn start_mariadb(&self, rig: &Rig) -> anyhow::Result<MariaDb> {
        self.start_mariadb_with(rig, MariaDbSpec::default())
    }

    /// Installs the system tables (unless the data directory exists), starts
    /// `mariadbd` and waits until it answers.
    pub fn start_mariadb_with(&self, rig: &Rig, spec: MariaDbSpec) -> anyhow::Result<MariaDb> {
        let data_dir = self.root.join("mysql").join(spec.port.to_string());
        let run_dir = self.root.join("run").join("mysqld");
        make_dir_owned(&run_dir, 0o755, "mysql")?;
        // The first server of a host gets the conventional socket name.
        let socket = if spec.port == 3306 {
            run_dir.join("mysqld.sock")
        } else {
            run_dir.join(format!("mysqld-{}.sock", spec.port))
        };
        let what = format!("MariaDB on host {}", self.host);
        // A temporary directory of its own: a starting mariadbd deletes the
        // `#sql*` files it finds in its tmpdir, which would break another
        // instance's bootstrap running at the same time.
        let tmp_dir = self.root.join("mysql").join(format!("tmp-{}", spec.port));
        make_dir_owned(&tmp_dir, 0o700, "mysql")?;
        if !data_dir.join("mysql").exists() {
            make_dir_owned(&data_dir, 0o700, "mysql")?;
            let mut install = Command::new("mariadb-install-db");
            install
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data_dir.display()))
                .arg(format!("--tmpdir={}", tmp_dir.display()))
                .args(["--user=mysql", "--auth-root-authentication-method=normal"])
                .args(["--skip-test-db", "--skip-name-resolve"]);
            run_checked(&mut install, &format!("{what}: mariadb-install-db"))?;
        }
        let bind = spec
            .bind_address
            .clone()
            .unwrap_or_else(|| self.addr.to_string());
        let process = {
            let (netns, data_dir, socket) = (self.clone(), data_dir.clone(), socket.clone());
            let tmp_dir = tmp_dir.clone();
            let pid_file = run_dir.join(format!("mysqld-{}.pid", spec.port));
            let port = spec.port;
            let extra = spec.extra_args.clone();
            rig.spawn(self, &format!("mariadb-{port}"), move || {
                let mut command = netns.command("mariadbd");
                command
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", data_dir.display()))
                    .arg(format!("--socket={}", socket.display()))
                    .arg(format!("--tmpdir={}", tmp_dir.display()))
                    .arg(format!("--pid-file={}", pid_file.display()))
                    .arg(format!("--port={port}"))
                    .arg(format!("--bind-address={bind}"))
                    .args(["--user=mysql", "--skip-name-resolve", "--skip-log-bin"])
                    .args([
                        "--innodb-buffer-pool-size=32M",
                        "--innodb-flush-log-at-trx-commit=0",
                    ])
                    .args(["--innodb-doublewrite=0", "--character-set-server=utf8mb4"])
                    .args(&extra);
                command
            })?
        };
        let server = MariaDb {
            host: self.clone(),
            port: spec.port,
            data_dir,
            socket,
            process,
        };
        server.wait_ready().with_context(|| what.clone())?;
        rig.register_mariadb(self, server.clone());
        Ok(server)
    }
}

impl MariaDb {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host's address the server listens on.
    pub fn address(&self) -> Ipv4Addr {
        self.host.addr
    }

    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The server's unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// Runs `sql` as `root` over the socket (`mariadb --batch
    /// --skip-column-names`); returns the output without its final newline.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let mut command = Command::new("mariadb");
        command
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-u", "root", "--batch", "--skip-column-names"]);
        let what = format!("mariadb on host {}", self.host.host);
        let output = run_with_input(&mut command, sql, &what)?;
        Ok(output.trim_end_matches('\n').to_owned())
    }

    /// `SELECT VERSION()` ("10.11.6-MariaDB-0+deb12u1").
    pub fn server_version(&self) -> anyhow::Result<String> {
        self.sql("SELECT VERSION()")
    }

    /// Waits until the server answers a ping on its socket; an error with
    /// the log tail if it exits or takes longer than 30 s.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.process.check_running()?;
            let answered = Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-u", "root", "--connect-timeout=1", "ping"])
                .output()
                .context("running mariadb-admin")?
                .status
                .success();
            if answered {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} does not answer after {READY_TIMEOUT:?}; {}",
                    self.process.label(),
                    self.process.log_tail_message()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clean shutdown (SIGTERM), SIGKILL after 15 s.
    pub fn stop(&self) {
        self.process
            .stop_with(Signal::SIGTERM, Duration::from_secs(15));
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill9(&self) {
        self.process.kill9();
    }

    /// Starts the server again after [`MariaDb::stop`] or
    /// [`MariaDb::kill9`], and waits until it is ready.
    pub fn start(&self) -> anyhow::Result<()> {
        self.process.start_again()?;
        self.wait_ready()
    }

    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.start()
    }
}
